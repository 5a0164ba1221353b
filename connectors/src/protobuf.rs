//! `ENCODE PROTOBUF (message = 'pkg.Msg', schema.location = 'file:///path/set.pb')`:
//! each record is one serialized message, described by a compiled descriptor set
//! (`protoc --include_imports --descriptor_set_out=set.pb x.proto`).
//!
//! `ENCODE PROTOBUF (schema.registry = 'http://...', message = 'pkg.Msg')`: records in
//! Confluent's wire format (a zero byte, the schema id, the message indexes, the
//! message). Each schema is fetched once by id in its serialized form
//! (`?format=serialized`: `FileDescriptorProto`s, with the files it references), and
//! the message indexes pick the record's message type. The well-known
//! `google/protobuf` types that registries leave out of references (Timestamp,
//! Duration, Empty, the wrappers) are built in. `message` names the message that
//! columns are derived from when none are declared (else the schema's first).
//!
//! Columns are matched to the message's fields by name. Scalars read as their SQL types
//! (`uint64` as NUMERIC, enums as their value's name), `google.protobuf.Timestamp` as
//! TIMESTAMPTZ, and other messages and repeated fields as JSON text. A field that is
//! absent reads as NULL when the field has presence (proto2, `optional`, oneof members,
//! messages) and as its default otherwise, as protobuf specifies. When a field occurs
//! several times the last occurrence wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{
    new_null_array, ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use serde_json::Value;

use crate::avro::registry::{Registry, RegistryError};
use crate::avro::registry_of;
use crate::decode::{fits, Record};
use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source_errors::SourceErrors;

/// How deep nested messages may go when rendered as JSON.
const MAX_DEPTH: usize = 64;

/// One field's value on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// Reads a message's fields in wire order.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or("the message ends inside a varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.bytes.len() - self.pos {
            return Err(format!(
                "the message ends early: {n} bytes needed at byte {}",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next field number and value; `None` at the end.
    fn field(&mut self) -> std::result::Result<Option<(u32, Wire<'a>)>, String> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| "a field number out of range")?;
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().unwrap_or_default(),
            )),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
                Wire::Len(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or_default(),
            )),
            3 | 4 => return Err("groups (wire types 3 and 4) are not supported".into()),
            w => return Err(format!("wire type {w} does not exist")),
        };
        Ok(Some((number, value)))
    }
}

/// A field's scalar type, or the message or enum it holds (indexes into [`Pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Double,
    Float,
    Int64,
    UInt64,
    Int32,
    Fixed64,
    Fixed32,
    Bool,
    String,
    Bytes,
    UInt32,
    SFixed32,
    SFixed64,
    SInt32,
    SInt64,
    Enum(usize),
    Message(usize),
}

#[derive(Debug, Clone)]
struct FieldDesc {
    name: String,
    number: u32,
    kind: Kind,
    repeated: bool,
    /// Absent reads as NULL (otherwise as the type's default).
    presence: bool,
}

#[derive(Debug, Clone)]
struct MessageDesc {
    name: String,
    fields: Vec<FieldDesc>,
}

#[derive(Debug, Clone)]
struct EnumDesc {
    values: Vec<(i32, String)>,
}

/// The messages and enums of a descriptor set, by full name (`pkg.Outer.Inner`).
#[derive(Debug, Default)]
struct Pool {
    messages: Vec<MessageDesc>,
    enums: Vec<EnumDesc>,
}

/// A field of a descriptor before its type name is resolved.
struct RawField {
    desc: FieldDesc,
    type_code: u64,
    type_name: String,
}

fn utf8(b: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a descriptor string that is not UTF-8".to_string())
}

impl Pool {
    /// Parses a serialized `FileDescriptorSet`.
    fn parse(set: &[u8]) -> std::result::Result<Pool, String> {
        let mut files = Vec::new();
        let mut r = Reader::new(set);
        while let Some((n, v)) = r.field()? {
            if let (1, Wire::Len(file)) = (n, v) {
                files.push(file);
            }
        }
        Self::from_files(&files)
    }

    /// The messages and enums of serialized `FileDescriptorProto`s, with the well-known
    /// types of `google/protobuf` that none of them defines.
    fn from_files(files: &[&[u8]]) -> std::result::Result<Pool, String> {
        let mut raw_messages: Vec<(String, Vec<RawField>)> = Vec::new();
        let mut enums: Vec<(String, EnumDesc)> = Vec::new();
        for file in files {
            parse_file(file, &mut raw_messages, &mut enums)?;
        }
        for (name, fields) in well_known() {
            if !raw_messages.iter().any(|(n, _)| *n == name) {
                raw_messages.push((name, fields));
            }
        }
        let message_index: HashMap<String, usize> = raw_messages
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        let enum_index: HashMap<String, usize> = enums
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        let mut messages = Vec::with_capacity(raw_messages.len());
        for (name, fields) in raw_messages {
            let mut out = Vec::with_capacity(fields.len());
            for mut f in fields {
                let target = f.type_name.trim_start_matches('.');
                f.desc.kind = match f.type_code {
                    1 => Kind::Double,
                    2 => Kind::Float,
                    3 => Kind::Int64,
                    4 => Kind::UInt64,
                    5 => Kind::Int32,
                    6 => Kind::Fixed64,
                    7 => Kind::Fixed32,
                    8 => Kind::Bool,
                    9 => Kind::String,
                    11 => Kind::Message(*message_index.get(target).ok_or_else(|| {
                        format!("message {target} (field {} of {name}) is not in the descriptor set; compile it with --include_imports", f.desc.name)
                    })?),
                    12 => Kind::Bytes,
                    13 => Kind::UInt32,
                    14 => Kind::Enum(*enum_index.get(target).ok_or_else(|| {
                        format!("enum {target} (field {} of {name}) is not in the descriptor set", f.desc.name)
                    })?),
                    15 => Kind::SFixed32,
                    16 => Kind::SFixed64,
                    17 => Kind::SInt32,
                    18 => Kind::SInt64,
                    10 => return Err(format!("field {} of {name} is a group, which is not supported", f.desc.name)),
                    t => return Err(format!("field {} of {name} has unknown type {t}", f.desc.name)),
                };
                if matches!(f.desc.kind, Kind::Message(_)) {
                    f.desc.presence = !f.desc.repeated;
                }
                out.push(f.desc);
            }
            messages.push(MessageDesc { name, fields: out });
        }
        Ok(Pool {
            messages,
            enums: enums.into_iter().map(|(_, e)| e).collect(),
        })
    }

    fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim_start_matches('.');
        self.messages.iter().position(|m| m.name == name)
    }

    fn is_timestamp(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Message(m) if self.messages[m].name == "google.protobuf.Timestamp")
    }

    /// The Arrow type a field reads as, and whether it is JSON text.
    fn arrow_type(&self, f: &FieldDesc) -> (DataType, bool) {
        if f.repeated {
            return (DataType::Utf8, true);
        }
        let ty = match f.kind {
            Kind::Double => DataType::Float64,
            Kind::Float => DataType::Float32,
            Kind::Int64 | Kind::SInt64 | Kind::SFixed64 | Kind::UInt32 | Kind::Fixed32 => {
                DataType::Int64
            }
            Kind::UInt64 | Kind::Fixed64 => DataType::Decimal128(20, 0),
            Kind::Int32 | Kind::SInt32 | Kind::SFixed32 => DataType::Int32,
            Kind::Bool => DataType::Boolean,
            Kind::String | Kind::Enum(_) => DataType::Utf8,
            Kind::Bytes => DataType::Binary,
            Kind::Message(_) if self.is_timestamp(f.kind) => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
            Kind::Message(_) => return (DataType::Utf8, true),
        };
        (ty, false)
    }
}

/// The well-known messages a schema registry leaves out of a schema's references
/// (`google/protobuf/timestamp.proto` and the like): their fields, as `protoc` compiles
/// them.
fn well_known() -> Vec<(String, Vec<RawField>)> {
    let field = |name: &str, number: u32, type_code: u64| RawField {
        desc: FieldDesc {
            name: name.to_string(),
            number,
            kind: Kind::Bool,
            repeated: false,
            presence: false,
        },
        type_code,
        type_name: String::new(),
    };
    let mut out = vec![
        (
            "google.protobuf.Timestamp".to_string(),
            vec![field("seconds", 1, 3), field("nanos", 2, 5)],
        ),
        (
            "google.protobuf.Duration".to_string(),
            vec![field("seconds", 1, 3), field("nanos", 2, 5)],
        ),
        ("google.protobuf.Empty".to_string(), Vec::new()),
    ];
    for (name, type_code) in [
        ("DoubleValue", 1),
        ("FloatValue", 2),
        ("Int64Value", 3),
        ("UInt64Value", 4),
        ("Int32Value", 5),
        ("BoolValue", 8),
        ("StringValue", 9),
        ("BytesValue", 12),
        ("UInt32Value", 13),
    ] {
        out.push((
            format!("google.protobuf.{name}"),
            vec![field("value", 1, type_code)],
        ));
    }
    out
}

/// The full name of the message that Confluent's message indexes point at in
/// `file` (a serialized `FileDescriptorProto`): the first index picks a top-level
/// message, each next one a message nested in the last.
fn message_at(file: &[u8], indexes: &[u64]) -> std::result::Result<String, String> {
    let mut package = String::new();
    let mut messages = Vec::new();
    let mut r = Reader::new(file);
    while let Some((n, v)) = r.field()? {
        match (n, v) {
            (2, Wire::Len(b)) => package = utf8(b)?,
            (4, Wire::Len(b)) => messages.push(b),
            _ => {}
        }
    }
    let mut scope = package;
    for (depth, &i) in indexes.iter().enumerate() {
        let body = usize::try_from(i)
            .ok()
            .and_then(|i| messages.get(i).copied())
            .ok_or_else(|| {
                format!(
                    "message index {i} (at depth {depth}) is not in the schema ({} messages there)",
                    messages.len()
                )
            })?;
        let (mut name, mut nested) = (String::new(), Vec::new());
        let mut r = Reader::new(body);
        while let Some((n, v)) = r.field()? {
            match (n, v) {
                (1, Wire::Len(b)) => name = utf8(b)?,
                (3, Wire::Len(b)) => nested.push(b),
                _ => {}
            }
        }
        scope = qualified(&scope, &name);
        messages = nested;
    }
    Ok(scope)
}

/// Reads a `FileDescriptorProto`'s messages (nested ones too) and enums.
fn parse_file(
    file: &[u8],
    messages: &mut Vec<(String, Vec<RawField>)>,
    enums: &mut Vec<(String, EnumDesc)>,
) -> std::result::Result<(), String> {
    let mut package = String::new();
    let mut proto3 = false;
    let mut bodies = Vec::new();
    let mut enum_bodies = Vec::new();
    let mut r = Reader::new(file);
    while let Some((n, v)) = r.field()? {
        match (n, v) {
            (2, Wire::Len(b)) => package = utf8(b)?,
            (4, Wire::Len(b)) => bodies.push(b),
            (5, Wire::Len(b)) => enum_bodies.push(b),
            (12, Wire::Len(b)) => proto3 = b == b"proto3",
            _ => {}
        }
    }
    for b in enum_bodies {
        parse_enum(b, &package, enums)?;
    }
    for b in bodies {
        parse_message(b, &package, proto3, messages, enums)?;
    }
    Ok(())
}

fn qualified(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

fn parse_enum(
    body: &[u8],
    scope: &str,
    enums: &mut Vec<(String, EnumDesc)>,
) -> std::result::Result<(), String> {
    let mut name = String::new();
    let mut values = Vec::new();
    let mut r = Reader::new(body);
    while let Some((n, v)) = r.field()? {
        match (n, v) {
            (1, Wire::Len(b)) => name = utf8(b)?,
            (2, Wire::Len(b)) => {
                let (mut vname, mut number) = (String::new(), 0i32);
                let mut vr = Reader::new(b);
                while let Some((vn, vv)) = vr.field()? {
                    match (vn, vv) {
                        (1, Wire::Len(s)) => vname = utf8(s)?,
                        (2, Wire::Varint(x)) => number = x as i32,
                        _ => {}
                    }
                }
                values.push((number, vname));
            }
            _ => {}
        }
    }
    enums.push((qualified(scope, &name), EnumDesc { values }));
    Ok(())
}

fn parse_message(
    body: &[u8],
    scope: &str,
    proto3: bool,
    messages: &mut Vec<(String, Vec<RawField>)>,
    enums: &mut Vec<(String, EnumDesc)>,
) -> std::result::Result<(), String> {
    let mut name = String::new();
    let mut fields = Vec::new();
    let mut nested = Vec::new();
    let mut nested_enums = Vec::new();
    let mut r = Reader::new(body);
    while let Some((n, v)) = r.field()? {
        match (n, v) {
            (1, Wire::Len(b)) => name = utf8(b)?,
            (2, Wire::Len(b)) => fields.push(parse_field(b, proto3)?),
            (3, Wire::Len(b)) => nested.push(b),
            (4, Wire::Len(b)) => nested_enums.push(b),
            _ => {}
        }
    }
    let full = qualified(scope, &name);
    for b in nested_enums {
        parse_enum(b, &full, enums)?;
    }
    for b in nested {
        parse_message(b, &full, proto3, messages, enums)?;
    }
    messages.push((full, fields));
    Ok(())
}

fn parse_field(body: &[u8], proto3: bool) -> std::result::Result<RawField, String> {
    let mut f = RawField {
        desc: FieldDesc {
            name: String::new(),
            number: 0,
            kind: Kind::Bool,
            repeated: false,
            presence: !proto3,
        },
        type_code: 0,
        type_name: String::new(),
    };
    let mut r = Reader::new(body);
    while let Some((n, v)) = r.field()? {
        match (n, v) {
            (1, Wire::Len(b)) => f.desc.name = utf8(b)?,
            (3, Wire::Varint(x)) => f.desc.number = x as u32,
            (4, Wire::Varint(x)) => f.desc.repeated = x == 3,
            (5, Wire::Varint(x)) => f.type_code = x,
            (6, Wire::Len(b)) => f.type_name = utf8(b)?,
            // A oneof member, or proto3 `optional`: it has presence.
            (9, Wire::Varint(_)) | (17, Wire::Varint(1)) => f.desc.presence = true,
            _ => {}
        }
    }
    if f.desc.repeated {
        f.desc.presence = false;
    }
    Ok(f)
}

/// A decoded scalar, borrowed from the record or the descriptors where it can be.
#[derive(Debug)]
enum Val<'a> {
    Null,
    I64(i64),
    U64(u64),
    F64(f64),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Text(String),
    Bytes(&'a [u8]),
    Micros(i64),
}

fn zigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

impl Pool {
    /// One occurrence of a scalar field.
    fn scalar<'a>(&'a self, kind: Kind, w: Wire<'a>) -> std::result::Result<Val<'a>, String> {
        let bad = || format!("a {kind:?} field with the wrong wire type");
        Ok(match (kind, w) {
            (Kind::Double, Wire::Fixed64(x)) => Val::F64(f64::from_bits(x)),
            (Kind::Float, Wire::Fixed32(x)) => Val::F32(f32::from_bits(x)),
            (Kind::Int64, Wire::Varint(x)) => Val::I64(x as i64),
            (Kind::UInt64, Wire::Varint(x)) | (Kind::Fixed64, Wire::Fixed64(x)) => Val::U64(x),
            (Kind::Int32, Wire::Varint(x)) => Val::I64(i64::from(x as i32)),
            (Kind::UInt32, Wire::Varint(x)) => Val::I64(i64::from(x as u32)),
            (Kind::Fixed32, Wire::Fixed32(x)) => Val::I64(i64::from(x)),
            (Kind::SFixed32, Wire::Fixed32(x)) => Val::I64(i64::from(x as i32)),
            (Kind::SFixed64, Wire::Fixed64(x)) => Val::I64(x as i64),
            (Kind::SInt32 | Kind::SInt64, Wire::Varint(x)) => Val::I64(zigzag(x)),
            (Kind::Bool, Wire::Varint(x)) => Val::Bool(x != 0),
            (Kind::String, Wire::Len(b)) => {
                Val::Str(std::str::from_utf8(b).map_err(|_| "a string that is not UTF-8")?)
            }
            (Kind::Bytes, Wire::Len(b)) => Val::Bytes(b),
            (Kind::Enum(e), Wire::Varint(x)) => {
                let number = x as i32;
                match self.enums[e].values.iter().find(|(n, _)| *n == number) {
                    Some((_, name)) => Val::Str(name),
                    None => Val::Text(number.to_string()),
                }
            }
            (Kind::Message(_), Wire::Len(b)) if self.is_timestamp(kind) => {
                let (mut seconds, mut nanos) = (0i64, 0i64);
                let mut r = Reader::new(b);
                while let Some((n, v)) = r.field()? {
                    match (n, v) {
                        (1, Wire::Varint(x)) => seconds = x as i64,
                        (2, Wire::Varint(x)) => nanos = i64::from(x as i32),
                        _ => {}
                    }
                }
                Val::Micros(
                    seconds
                        .checked_mul(1_000_000)
                        .and_then(|s| s.checked_add(nanos / 1000))
                        .ok_or("a timestamp out of range")?,
                )
            }
            _ => return Err(bad()),
        })
    }

    /// The default of an absent field without presence.
    fn default_of(&self, kind: Kind) -> Val<'_> {
        match kind {
            Kind::Double => Val::F64(0.0),
            Kind::Float => Val::F32(0.0),
            Kind::UInt64 | Kind::Fixed64 => Val::U64(0),
            Kind::Bool => Val::Bool(false),
            Kind::String => Val::Str(""),
            Kind::Bytes => Val::Bytes(b""),
            Kind::Enum(e) => match self.enums[e].values.iter().find(|(n, _)| *n == 0) {
                Some((_, name)) => Val::Str(name),
                None => Val::Text("0".into()),
            },
            Kind::Message(_) => Val::Null,
            _ => Val::I64(0),
        }
    }

    /// A value as JSON (messages as objects, repeated fields as arrays).
    fn json(&self, kind: Kind, w: Wire<'_>, depth: usize) -> std::result::Result<Value, String> {
        if let (Kind::Message(m), Wire::Len(b)) = (kind, w) {
            if !self.is_timestamp(kind) {
                return self.message_json(m, b, depth + 1);
            }
        }
        Ok(match self.scalar(kind, w)? {
            Val::Null => Value::Null,
            Val::I64(x) | Val::Micros(x) => x.into(),
            Val::U64(x) => x.into(),
            Val::F64(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
            Val::F32(x) => {
                serde_json::Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number)
            }
            Val::Bool(b) => b.into(),
            Val::Str(s) => s.into(),
            Val::Text(s) => s.into(),
            Val::Bytes(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("\\x{hex}").into()
            }
        })
    }

    fn message_json(
        &self,
        m: usize,
        bytes: &[u8],
        depth: usize,
    ) -> std::result::Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("messages nested more than {MAX_DEPTH} deep"));
        }
        let desc = &self.messages[m];
        let mut out = serde_json::Map::new();
        let mut r = Reader::new(bytes);
        while let Some((n, w)) = r.field()? {
            let Some(f) = desc.fields.iter().find(|f| f.number == n) else {
                continue;
            };
            if f.repeated {
                let entry = out
                    .entry(f.name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = entry {
                    self.push_repeated(f.kind, w, items, depth)?;
                }
            } else {
                out.insert(f.name.clone(), self.json(f.kind, w, depth)?);
            }
        }
        Ok(Value::Object(out))
    }

    /// One occurrence of a repeated field: a value, or a packed run of numbers.
    fn push_repeated(
        &self,
        kind: Kind,
        w: Wire<'_>,
        items: &mut Vec<Value>,
        depth: usize,
    ) -> std::result::Result<(), String> {
        let packable = !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_));
        match w {
            Wire::Len(b) if packable => {
                let mut r = Reader::new(b);
                while r.pos < b.len() {
                    let item = match kind {
                        Kind::Double | Kind::Fixed64 | Kind::SFixed64 => Wire::Fixed64(
                            u64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default()),
                        ),
                        Kind::Float | Kind::Fixed32 | Kind::SFixed32 => Wire::Fixed32(
                            u32::from_le_bytes(r.take(4)?.try_into().unwrap_or_default()),
                        ),
                        _ => Wire::Varint(r.varint()?),
                    };
                    items.push(self.json(kind, item, depth)?);
                }
            }
            w => items.push(self.json(kind, w, depth)?),
        }
        Ok(())
    }
}

/// A column being filled.
enum Builder {
    Absent,
    I32(Int32Builder),
    I64(Int64Builder),
    U64(Decimal128Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Ts(TimestampMicrosecondBuilder),
}

impl Builder {
    fn for_type(ty: &DataType) -> Builder {
        match ty {
            DataType::Int32 => Builder::I32(Int32Builder::new()),
            DataType::Int64 => Builder::I64(Int64Builder::new()),
            DataType::Decimal128(_, _) => Builder::U64(Decimal128Builder::new()),
            DataType::Float32 => Builder::F32(Float32Builder::new()),
            DataType::Float64 => Builder::F64(Float64Builder::new()),
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Binary => Builder::Bin(BinaryBuilder::new()),
            DataType::Timestamp(_, _) => Builder::Ts(TimestampMicrosecondBuilder::new()),
            _ => Builder::Str(StringBuilder::new()),
        }
    }

    fn push(&mut self, v: &Val<'_>) -> std::result::Result<(), String> {
        match (self, v) {
            (Builder::Absent, _) => {}
            (Builder::I32(b), Val::Null) => b.append_null(),
            (Builder::I64(b), Val::Null) => b.append_null(),
            (Builder::U64(b), Val::Null) => b.append_null(),
            (Builder::F32(b), Val::Null) => b.append_null(),
            (Builder::F64(b), Val::Null) => b.append_null(),
            (Builder::Bool(b), Val::Null) => b.append_null(),
            (Builder::Str(b), Val::Null) => b.append_null(),
            (Builder::Bin(b), Val::Null) => b.append_null(),
            (Builder::Ts(b), Val::Null) => b.append_null(),
            (Builder::I32(b), Val::I64(x)) => b.append_value(
                i32::try_from(*x).map_err(|_| format!("{x} is out of range for int"))?,
            ),
            (Builder::I64(b), Val::I64(x)) => b.append_value(*x),
            (Builder::U64(b), Val::U64(x)) => b.append_value(i128::from(*x)),
            (Builder::F32(b), Val::F32(x)) => b.append_value(*x),
            (Builder::F64(b), Val::F64(x)) => b.append_value(*x),
            (Builder::Bool(b), Val::Bool(x)) => b.append_value(*x),
            (Builder::Str(b), Val::Str(s)) => b.append_value(s),
            (Builder::Str(b), Val::Text(s)) => b.append_value(s),
            (Builder::Bin(b), Val::Bytes(x)) => b.append_value(x),
            (Builder::Ts(b), Val::Micros(x)) => b.append_value(*x),
            (_, v) => return Err(format!("a value {v:?} for a column of another type")),
        }
        Ok(())
    }

    fn finish(self, natural: &DataType, len: usize) -> std::result::Result<ArrayRef, String> {
        let e = |e: arrow::error::ArrowError| e.to_string();
        Ok(match self {
            Builder::Absent => new_null_array(natural, len),
            Builder::I32(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::U64(mut b) => Arc::new(b.finish().with_precision_and_scale(20, 0).map_err(e)?),
            Builder::F32(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::Bin(mut b) => Arc::new(b.finish()),
            Builder::Ts(mut b) => Arc::new(b.finish().with_timezone("+00:00")),
        })
    }
}

/// A target column: the message field that fills it and the type it reads as.
struct Slot {
    field: Option<usize>,
    natural: DataType,
}

/// One message type of a pool: how records of it decode.
struct MessageType {
    pool: Arc<Pool>,
    message: usize,
    /// The message's fields by number (positions in its descriptor).
    by_number: HashMap<u32, usize>,
}

impl MessageType {
    fn new(pool: Arc<Pool>, message: usize) -> Self {
        let by_number = pool.messages[message]
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.number, i))
            .collect();
        Self {
            pool,
            message,
            by_number,
        }
    }

    /// The columns the message's fields read as (all nullable), each with whether it
    /// holds JSON text.
    fn columns(&self) -> Vec<(Field, bool)> {
        self.pool.messages[self.message]
            .fields
            .iter()
            .map(|f| {
                let (ty, json) = self.pool.arrow_type(f);
                (Field::new(&f.name, ty, true), json)
            })
            .collect()
    }

    /// The message field (by name) of each column of `target`, checked to fit.
    fn slots(&self, target: &SchemaRef) -> Result<Vec<Slot>> {
        let fields = &self.pool.messages[self.message].fields;
        target
            .fields()
            .iter()
            .map(|t| {
                let found = fields.iter().position(|f| f.name == *t.name()).or_else(|| {
                    fields
                        .iter()
                        .position(|f| f.name.eq_ignore_ascii_case(t.name()))
                });
                let Some(i) = found else {
                    return Ok(Slot {
                        field: None,
                        natural: t.data_type().clone(),
                    });
                };
                let (natural, _) = self.pool.arrow_type(&fields[i]);
                if !fits(&natural, t.data_type()) {
                    return Err(ConnectorError::Schema(format!(
                        "column {} is {natural} in message {} and cannot be read as {}",
                        t.name(),
                        self.pool.messages[self.message].name,
                        t.data_type()
                    )));
                }
                Ok(Slot {
                    field: Some(i),
                    natural,
                })
            })
            .collect()
    }

    /// Checks that messages can fill `target`.
    fn check(&self, target: &SchemaRef) -> Result<()> {
        self.slots(target).map(|_| ())
    }

    /// The values of one message for each slot.
    fn row<'a>(
        &'a self,
        slots: &[Slot],
        bytes: &'a [u8],
        last: &mut [Option<Wire<'a>>],
        out: &mut Vec<Val<'a>>,
    ) -> std::result::Result<(), String> {
        let fields = &self.pool.messages[self.message].fields;
        last.fill(None);
        // Pass 1: frame the message, remembering each field's last occurrence.
        let mut r = Reader::new(bytes);
        while let Some((n, w)) = r.field()? {
            if let Some(&i) = self.by_number.get(&n) {
                last[i] = Some(w);
            }
        }
        out.clear();
        for s in slots {
            let Some(i) = s.field else {
                out.push(Val::Null);
                continue;
            };
            let f = &fields[i];
            let v = if f.repeated {
                let mut items = Vec::new();
                let mut r = Reader::new(bytes);
                while let Some((n, w)) = r.field()? {
                    if n == f.number {
                        self.pool.push_repeated(f.kind, w, &mut items, 0)?;
                    }
                }
                Val::Text(Value::Array(items).to_string())
            } else {
                match last[i] {
                    None if f.presence => Val::Null,
                    None => self.pool.default_of(f.kind),
                    Some(w)
                        if s.natural == DataType::Utf8 && matches!(f.kind, Kind::Message(_)) =>
                    {
                        Val::Text(self.pool.json(f.kind, w, 0)?.to_string())
                    }
                    Some(w) => self.pool.scalar(f.kind, w)?,
                }
            };
            out.push(v);
        }
        Ok(())
    }

    /// Decodes `records` into rows of `schema`, with the offset of each row's record;
    /// bad records are logged to `errors` and left out.
    fn decode(
        &self,
        schema: &SchemaRef,
        buf: &[u8],
        records: &[Record],
        split: &str,
        errors: &SourceErrors,
    ) -> Result<(RecordBatch, Vec<u64>)> {
        match self.decode_batch(schema, buf, records, split, errors) {
            Err(ConnectorError::Arrow(_)) if records.len() > 1 => {}
            Err(ConnectorError::Arrow(e)) => {
                // One record whose value does not fit its declared column.
                let r = &records[0];
                errors.record(split, r.offset, &e.to_string(), &buf[r.start..r.end]);
                return Ok((RecordBatch::new_empty(Arc::clone(schema)), Vec::new()));
            }
            other => return other,
        }
        // A value did not fit its declared column: find it, record by record.
        let mut batches = Vec::new();
        let mut kept = Vec::new();
        for r in records {
            let (b, k) = self.decode(schema, buf, std::slice::from_ref(r), split, errors)?;
            batches.push(b);
            kept.extend(k);
        }
        Ok((arrow::compute::concat_batches(schema, &batches)?, kept))
    }

    fn decode_batch(
        &self,
        schema: &SchemaRef,
        buf: &[u8],
        records: &[Record],
        split: &str,
        errors: &SourceErrors,
    ) -> Result<(RecordBatch, Vec<u64>)> {
        let slots = self.slots(schema)?;
        let mut builders: Vec<Builder> = slots
            .iter()
            .map(|s| {
                if s.field.is_some() {
                    Builder::for_type(&s.natural)
                } else {
                    Builder::Absent
                }
            })
            .collect();
        let mut last = vec![None; self.pool.messages[self.message].fields.len()];
        let mut values = Vec::with_capacity(slots.len());
        let mut kept = Vec::with_capacity(records.len());
        for r in records {
            let bytes = &buf[r.start..r.end];
            let pushed = self
                .row(&slots, bytes, &mut last, &mut values)
                .and_then(|()| {
                    // Check every value fits before appending any: a row goes in whole.
                    for (b, v) in builders.iter().zip(&values) {
                        if let (Builder::I32(_), Val::I64(x)) = (b, v) {
                            i32::try_from(*x)
                                .map_err(|_| format!("{x} is out of range for int"))?;
                        }
                    }
                    for (b, v) in builders.iter_mut().zip(&values) {
                        b.push(v)?;
                    }
                    Ok(())
                });
            match pushed {
                Ok(()) => kept.push(r.offset),
                Err(e) => {
                    errors.record(split, r.offset, &e, bytes);
                    tracing::warn!(split, offset = r.offset, error = %e, "skipped a malformed record");
                }
            }
        }
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let columns = builders
            .into_iter()
            .zip(&slots)
            .zip(schema.fields())
            .map(|((b, s), f)| {
                let natural = b
                    .finish(&s.natural, kept.len())
                    .map_err(ConnectorError::Schema)?;
                if natural.data_type() == f.data_type() {
                    Ok(natural)
                } else {
                    Ok(cast_with_options(&natural, f.data_type(), &options)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(kept.len()));
        Ok((
            RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)?,
            kept,
        ))
    }
}

/// Where the message types come from.
enum Source {
    /// A descriptor set file (`schema.location`) and the `message` named.
    File { ty: MessageType, location: String },
    /// A schema registry: records in Confluent's wire format.
    Registry(RegistrySource),
}

/// A registry's schemas by id, and the message types records point at.
struct RegistrySource {
    registry: Registry,
    /// The `message` option: the message that columns are derived from.
    message: Option<String>,
    /// Each schema's files (its own first), or why there are none.
    writers: Mutex<HashMap<u32, Fetched>>,
    /// Message types by schema id and message indexes.
    types: Mutex<TypeCache>,
}

/// A schema's files (its own first), or why there are none.
type Fetched = std::result::Result<Arc<Vec<Vec<u8>>>, String>;

type TypeCache = HashMap<(u32, Vec<u64>), std::result::Result<Arc<MessageType>, String>>;

/// The schema id, message indexes and payload of a record in Confluent's Protobuf wire
/// format: a zero byte, the id (4 bytes, big-endian), the message indexes (a zigzag
/// varint count, then that many zigzag varints; a lone 0 stands for `[0]`), the message.
fn wire_header(record: &[u8]) -> std::result::Result<(u32, Vec<u64>, usize), String> {
    let [0, a, b, c, d, rest @ ..] = record else {
        return Err(
            "not in the schema registry's wire format (no magic byte and schema id)".into(),
        );
    };
    let id = u32::from_be_bytes([*a, *b, *c, *d]);
    let mut r = Reader::new(rest);
    let count = zigzag(r.varint()?);
    let indexes = if count == 0 {
        vec![0]
    } else {
        if !(0..=64).contains(&count) {
            return Err(format!("{count} message indexes"));
        }
        (0..count)
            .map(|_| {
                let i = zigzag(r.varint()?);
                u64::try_from(i).map_err(|_| format!("a negative message index {i}"))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?
    };
    Ok((id, indexes, 5 + r.pos))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegistrySource {
    /// The files of schema `id`, fetched once; `Unavailable` when the registry is away.
    fn writer(&self, id: u32) -> Result<Fetched> {
        if let Some(w) = lock(&self.writers).get(&id) {
            return Ok(w.clone());
        }
        let fetched = match self.registry.protobuf_by_id(id) {
            Ok(files) => Ok(Arc::new(files)),
            Err(RegistryError::Unavailable(m)) => return Err(ConnectorError::Unavailable(m)),
            Err(RegistryError::NotFound(m) | RegistryError::Bad(m)) => Err(m),
        };
        lock(&self.writers).insert(id, fetched.clone());
        Ok(fetched)
    }

    /// The message type of records with schema `id` and message `indexes`.
    fn message_type(
        &self,
        id: u32,
        indexes: &[u64],
    ) -> Result<std::result::Result<Arc<MessageType>, String>> {
        let key = (id, indexes.to_vec());
        if let Some(t) = lock(&self.types).get(&key) {
            return Ok(t.clone());
        }
        let ty = self.writer(id)?.and_then(|files| {
            let main = files.first().ok_or("a schema without files")?;
            let name = message_at(main, indexes)?;
            let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
            let pool = Pool::from_files(&refs)?;
            let index = pool
                .find(&name)
                .ok_or_else(|| format!("message {name} is not in the schema"))?;
            Ok(Arc::new(MessageType::new(Arc::new(pool), index)))
        });
        let ty = ty.map_err(|e: String| format!("schema id {id}: {e}"));
        lock(&self.types).insert(key, ty.clone());
        Ok(ty)
    }
}

/// `ENCODE PROTOBUF`, from a descriptor set or a schema registry.
pub struct ProtobufFormat {
    source: Source,
}

impl std::fmt::Debug for ProtobufFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::File { ty, location } => f
                .debug_struct("ProtobufFormat")
                .field("message", &ty.pool.messages[ty.message].name)
                .field("location", location)
                .finish(),
            Source::Registry(r) => f
                .debug_struct("ProtobufFormat")
                .field("registry", &r.registry)
                .field("message", &r.message)
                .finish(),
        }
    }
}

impl ProtobufFormat {
    /// `message` and `schema.location` (a `file://` URL or an absolute path to a
    /// descriptor set), or `schema.registry` (with `schema.registry.username`,
    /// `schema.registry.password`, and `message` optional: the message that columns are
    /// derived from).
    pub fn from_options(options: &Options) -> Result<Self> {
        if options.get("schema.registry").is_some() {
            if options.get("schema.location").is_some() {
                return Err(ConnectorError::Options(
                    "ENCODE PROTOBUF takes schema.location or schema.registry, not both".into(),
                ));
            }
            return Ok(Self {
                source: Source::Registry(RegistrySource {
                    registry: registry_of(options)?,
                    message: options.get("message").map(str::to_string),
                    writers: Mutex::new(HashMap::new()),
                    types: Mutex::new(HashMap::new()),
                }),
            });
        }
        let message = options.get("message").ok_or_else(|| {
            ConnectorError::Options("ENCODE PROTOBUF needs message = 'package.Message'".into())
        })?;
        let location = options.get("schema.location").ok_or_else(|| {
            ConnectorError::Options(
                "ENCODE PROTOBUF needs schema.location = 'file:///path/to/descriptor_set.pb' (protoc --include_imports --descriptor_set_out) or schema.registry = 'http://host:port'".into(),
            )
        })?;
        let path = location.strip_prefix("file://").unwrap_or(location);
        if !path.starts_with('/') {
            return Err(ConnectorError::Options(format!(
                "schema.location must be file:///absolute/path or an absolute path, not '{location}'"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            ConnectorError::Options(format!("cannot read the descriptor set {path}: {e}"))
        })?;
        let pool = Pool::parse(&bytes)
            .map_err(|e| ConnectorError::Options(format!("descriptor set {path}: {e}")))?;
        let index = pool.find(message).ok_or_else(|| {
            ConnectorError::Options(format!(
                "message {message} is not in the descriptor set {path}"
            ))
        })?;
        Ok(Self {
            source: Source::File {
                ty: MessageType::new(Arc::new(pool), index),
                location: location.to_string(),
            },
        })
    }

    /// Whether records carry their schema's id (a schema registry).
    pub fn is_registry(&self) -> bool {
        matches!(self.source, Source::Registry(_))
    }

    /// The latest schema of `subject` in the registry (its serialized files, its own
    /// first); `None` when the registry has no such subject or this is not a registry.
    pub fn latest(&self, subject: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let Source::Registry(r) = &self.source else {
            return Ok(None);
        };
        match r.registry.protobuf_latest(subject) {
            Ok(files) => Ok(Some(files)),
            Err(RegistryError::NotFound(_)) => Ok(None),
            Err(RegistryError::Unavailable(m)) => Err(ConnectorError::Unavailable(m)),
            Err(RegistryError::Bad(m)) => Err(ConnectorError::Options(m)),
        }
    }

    /// The message type columns are derived from: the descriptor set's `message`, or in
    /// `files` (a registry schema) the `message` named, else the first one.
    fn columns_type(&self, files: &[Vec<u8>]) -> Result<MessageType> {
        let r = match &self.source {
            Source::File { ty, .. } => {
                return Ok(MessageType::new(Arc::clone(&ty.pool), ty.message))
            }
            Source::Registry(r) => r,
        };
        let schema = |e: String| ConnectorError::Schema(e);
        let main = files
            .first()
            .ok_or_else(|| schema("a schema without files".into()))?;
        let name = match &r.message {
            Some(m) => m.trim_start_matches('.').to_string(),
            None => message_at(main, &[0]).map_err(schema)?,
        };
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let pool = Pool::from_files(&refs).map_err(schema)?;
        let index = pool
            .find(&name)
            .ok_or_else(|| schema(format!("message {name} is not in the schema")))?;
        Ok(MessageType::new(Arc::new(pool), index))
    }

    /// The columns the message's fields read as (all nullable), each with whether it
    /// holds JSON text. `files`: for a registry, the schema to take them from.
    pub fn columns(&self, files: &[Vec<u8>]) -> Result<Vec<(Field, bool)>> {
        Ok(self.columns_type(files)?.columns())
    }

    /// Checks that messages can fill `target` (for a registry, messages of `files`).
    pub fn check(&self, target: &SchemaRef, files: &[Vec<u8>]) -> Result<()> {
        self.columns_type(files)?.check(target)
    }

    /// Fetches the schemas `records` need: [`ConnectorError::Unavailable`] when the
    /// registry cannot be reached, so that a caller can put the records back before
    /// anything of them is applied.
    pub fn prepare<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let Source::Registry(r) = &self.source else {
            return Ok(());
        };
        for record in records {
            if let Ok((id, indexes, _)) = wire_header(record) {
                // A schema the registry lacks is the record's fault: decode logs it.
                let _known = r.message_type(id, &indexes)?;
            }
        }
        Ok(())
    }

    /// Decodes `records` into rows of `schema`, with the offset of each row's record;
    /// bad records are logged to `errors` and left out. [`ConnectorError::Unavailable`]
    /// when a schema could not be fetched: nothing was logged, and the records should
    /// be read again later.
    pub fn decode(
        &self,
        schema: &SchemaRef,
        buf: &[u8],
        records: &[Record],
        split: &str,
        errors: &SourceErrors,
    ) -> Result<(RecordBatch, Vec<u64>)> {
        let r = match &self.source {
            Source::File { ty, .. } => return ty.decode(schema, buf, records, split, errors),
            Source::Registry(r) => r,
        };
        // Every schema first: an unreachable registry must leave no trace (no record
        // logged as bad), as the records will be read again.
        self.prepare(records.iter().map(|rec| &buf[rec.start..rec.end]))?;
        // Runs of records of one message type decode together.
        let mut batches = Vec::new();
        let mut kept = Vec::with_capacity(records.len());
        let mut run: Vec<Record> = Vec::new();
        let mut run_type: Option<Arc<MessageType>> = None;
        let mut flush = |run: &mut Vec<Record>, ty: &Option<Arc<MessageType>>| -> Result<()> {
            if let (Some(ty), false) = (ty, run.is_empty()) {
                let (b, k) = ty.decode(schema, buf, run, split, errors)?;
                batches.push(b);
                kept.extend(k);
            }
            run.clear();
            Ok(())
        };
        for rec in records {
            let bytes = &buf[rec.start..rec.end];
            let ty = wire_header(bytes).and_then(|(id, indexes, at)| {
                match r.message_type(id, &indexes) {
                    Ok(Ok(ty)) => Ok(Ok((ty, at))),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Ok(Err(e)),
                }
            });
            let (ty, at) = match ty {
                Ok(Ok(found)) => found,
                // The registry is away: nothing of this poll is kept.
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    errors.record(split, rec.offset, &e, bytes);
                    tracing::warn!(split, offset = rec.offset, error = %e, "skipped a malformed record");
                    continue;
                }
            };
            if !run_type.as_ref().is_some_and(|t| Arc::ptr_eq(t, &ty)) {
                flush(&mut run, &run_type)?;
                run_type = Some(ty);
            }
            run.push(Record {
                offset: rec.offset,
                start: rec.start + at,
                end: rec.end,
            });
        }
        flush(&mut run, &run_type)?;
        Ok(match batches.len() {
            0 => (RecordBatch::new_empty(Arc::clone(schema)), kept),
            1 => (batches.swap_remove(0), kept),
            _ => (arrow::compute::concat_batches(schema, &batches)?, kept),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_reading() {
        // Field 1 varint 150, field 2 "hi", field 3 fixed32 1.
        let msg = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 0, 0, 0];
        let mut r = Reader::new(&msg);
        assert!(matches!(r.field().unwrap(), Some((1, Wire::Varint(150)))));
        assert!(matches!(r.field().unwrap(), Some((2, Wire::Len(b"hi")))));
        assert!(matches!(r.field().unwrap(), Some((3, Wire::Fixed32(1)))));
        assert!(r.field().unwrap().is_none());
        assert!(Reader::new(&[0x12, 0x05, b'a']).field().is_err());
        assert!(Reader::new(&[0x0b]).field().unwrap_err().contains("groups"));
        assert!(Reader::new(&[0x08, 0x80]).field().is_err());
        assert_eq!(zigzag(1), -1);
        assert_eq!(zigzag(4), 2);
    }

    #[test]
    fn descriptor_errors_are_reported() {
        // A set whose file has a message with a field of an unknown message type.
        let field = [
            &[0x0a, 0x01, b'f', 0x18, 0x01, 0x28, 0x0b, 0x32, 0x04][..],
            b".x.Y",
        ]
        .concat();
        let mut message = vec![0x0a, 0x01, b'M', 0x12, field.len() as u8];
        message.extend_from_slice(&field);
        let mut file = vec![0x12, 0x01, b'p', 0x22, message.len() as u8];
        file.extend_from_slice(&message);
        let mut set = vec![0x0a, file.len() as u8];
        set.extend_from_slice(&file);
        let e = Pool::parse(&set).unwrap_err();
        assert!(
            e.contains("message x.Y (field f of p.M) is not in the descriptor set"),
            "{e}"
        );
    }
}
