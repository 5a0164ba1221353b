//! Avro's binary encoding read straight into columns.
//!
//! A [`Plan`] is made once per writer schema and target columns: it pairs each field of
//! the writer's record with the column it fills (or none: the value is skipped) and
//! picks how the value is kept (a primitive, a struct, JSON text). Records are then
//! read one after another into growable columns, with no allocation per value; a record
//! that fails is rolled back, so it costs only itself. At the end the columns are cast
//! to the declared types in one pass each.

use std::sync::Arc;

use arrow::array::{
    make_array, new_null_array, Array, ArrayRef, BinaryArray, BooleanArray, Decimal128Array,
    Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Fields, SchemaRef};

use super::schema::Node;
use crate::decode::fits;

/// The most items of an array or map block beyond one per byte left (items that take no
/// bytes: nulls).
const MAX_EMPTY_ITEMS: u64 = 1 << 16;

/// A cursor over one record's bytes.
pub struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "the record ends early: {n} bytes needed at byte {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A zigzag-encoded variable-length `long`.
    pub(super) fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or("the record ends inside a number")?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn int(&mut self) -> Result<i32, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("{v} is out of range for an Avro int"))
    }

    /// A length or count: never negative.
    pub(super) fn len(&mut self) -> Result<usize, String> {
        let v = self.long()?;
        usize::try_from(v).map_err(|_| format!("a negative length {v}"))
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    pub(super) fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "a string that is not UTF-8".to_string())
    }

    fn branch<'n>(&mut self, branches: &'n [Node]) -> Result<&'n Node, String> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| branches.get(i))
            .ok_or_else(|| {
                format!(
                    "union branch {i} does not exist ({} branches)",
                    branches.len()
                )
            })
    }

    /// Reads the blocks of an array or map, calling `item` for each element.
    pub(super) fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.long()?;
            }
            // Items take a byte or more, but for nulls: a count far beyond the record's
            // size is garbage, not a reason to loop for ever.
            if count.unsigned_abs() > self.remaining() as u64 + MAX_EMPTY_ITEMS {
                return Err(format!(
                    "a block of {count} items in {} bytes",
                    self.remaining()
                ));
            }
            for _ in 0..count.unsigned_abs() {
                item(self)?;
            }
        }
    }
}

/// Reads past one value of `node`.
pub fn skip(node: &Node, input: &mut Input<'_>) -> Result<(), String> {
    match node {
        Node::Null => {}
        Node::Boolean => {
            input.take(1)?;
        }
        Node::Int(_) | Node::Long(_) | Node::Enum(_) => {
            input.long()?;
        }
        Node::Float => {
            input.take(4)?;
        }
        Node::Double => {
            input.take(8)?;
        }
        Node::Bytes(_) | Node::String => {
            input.bytes()?;
        }
        Node::Fixed { size, .. } => {
            input.take(*size)?;
        }
        Node::Record(r) => {
            for (_, f) in &r.fields {
                skip(f, input)?;
            }
        }
        Node::Array(items) => input.blocks(|i| skip(items, i))?,
        Node::Map(values) => input.blocks(|i| {
            i.bytes()?;
            skip(values, i)
        })?,
        Node::Union(branches) => {
            let b = input.branch(branches)?;
            skip(b, input)?;
        }
    }
    Ok(())
}

/// Big-endian two's complement bytes (Avro's decimal) as an i128.
fn decimal(bytes: &[u8]) -> Result<i128, String> {
    if bytes.len() > 16 {
        return Err(format!(
            "a decimal of {} bytes does not fit 38 digits",
            bytes.len()
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut v: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        v = (v << 8) | i128::from(*b);
    }
    Ok(v)
}

/// Appends `v` as JSON text (records and maps as objects, unions as their value).
fn render(node: &Node, input: &mut Input<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Write;
    let json_str = |s: &str, out: &mut Vec<u8>| {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(out, s);
    };
    match node {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Boolean => {
            let b = input.take(1)?[0] != 0;
            out.extend_from_slice(if b { b"true" } else { b"false" });
        }
        Node::Int(_) | Node::Long(_) => {
            let _ = write!(out, "{}", input.long()?);
        }
        Node::Float | Node::Double => {
            let v = if *node == Node::Float {
                f64::from(f32::from_le_bytes(
                    input.take(4)?.try_into().unwrap_or_default(),
                ))
            } else {
                f64::from_le_bytes(input.take(8)?.try_into().unwrap_or_default())
            };
            if v.is_finite() {
                let _ = write!(out, "{v}");
            } else {
                out.extend_from_slice(b"null");
            }
        }
        Node::Bytes(d) => {
            let b = input.bytes()?;
            render_bytes(b, *d, out)?;
        }
        Node::Fixed { size, decimal } => {
            let b = input.take(*size)?;
            render_bytes(b, *decimal, out)?;
        }
        Node::String => json_str(input.str()?, out),
        Node::Enum(symbols) => {
            let i = input.long()?;
            let s = usize::try_from(i)
                .ok()
                .and_then(|i| symbols.get(i))
                .ok_or_else(|| format!("enum symbol {i} does not exist"))?;
            json_str(s, out);
        }
        Node::Record(r) => {
            out.push(b'{');
            for (i, (name, f)) in r.fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(name, out);
                out.push(b':');
                render(f, input, out)?;
            }
            out.push(b'}');
        }
        Node::Array(items) => {
            out.push(b'[');
            let mut first = true;
            input.blocks(|i| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                render(items, i, out)
            })?;
            out.push(b']');
        }
        Node::Map(values) => {
            out.push(b'{');
            let mut first = true;
            input.blocks(|i| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                json_str(i.str()?, out);
                out.push(b':');
                render(values, i, out)
            })?;
            out.push(b'}');
        }
        Node::Union(branches) => {
            let b = input.branch(branches)?;
            render(b, input, out)?;
        }
    }
    Ok(())
}

/// Bytes as JSON: a decimal as a number, other bytes as PostgreSQL's `\x` hex text.
fn render_bytes(b: &[u8], decimal_of: Option<(u8, i8)>, out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Write;
    match decimal_of {
        Some((_, scale)) => {
            let v = decimal(b)?;
            let digits = v.unsigned_abs().to_string();
            let scale = scale.max(0) as usize;
            if v < 0 {
                out.push(b'-');
            }
            if scale == 0 {
                out.extend_from_slice(digits.as_bytes());
            } else {
                let padded = format!("{digits:0>width$}", width = scale + 1);
                let (int, frac) = padded.split_at(padded.len() - scale);
                let _ = write!(out, "{int}.{frac}");
            }
        }
        None => {
            out.extend_from_slice(b"\"\\\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out.push(b'"');
        }
    }
    Ok(())
}

/// How a column keeps the values it reads.
#[derive(Debug, Clone)]
enum Data {
    /// No writer field feeds the column: NULLs.
    Absent,
    Bool(Vec<bool>),
    /// `int` and what it means (int32, date32, time32).
    I32(Vec<i32>, DataType),
    /// `long` and what it means (int64, time64, timestamps).
    I64(Vec<i64>, DataType),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Variable-length values: each value's end in `bytes`. `Str` also holds enum
    /// symbols; `Json` holds nested values rendered as JSON text.
    Bin {
        ends: Vec<usize>,
        bytes: Vec<u8>,
    },
    Str {
        ends: Vec<usize>,
        bytes: Vec<u8>,
    },
    Json {
        ends: Vec<usize>,
        bytes: Vec<u8>,
    },
    Dec(Vec<i128>, u8, i8),
    Struct(Box<StructCol>),
}

/// One column being filled: which rows are valid, the values, and the declared type.
#[derive(Debug, Clone)]
pub struct Col {
    valid: Vec<bool>,
    data: Data,
    target: DataType,
}

/// A record read into struct columns: the writer's fields in order, each with the
/// child column it fills.
#[derive(Debug, Clone)]
pub struct StructCol {
    fields: Vec<(Node, Option<usize>)>,
    /// Children no writer field fills.
    absent: Vec<usize>,
    children: Vec<Col>,
    target_fields: Fields,
}

impl StructCol {
    /// Pairs a writer record's fields with `target` by name (exact, then ignoring case).
    fn new(writer: &[(String, Node)], target: &Fields, path: &str) -> Result<Self, String> {
        let mut slots: Vec<Option<usize>> = vec![None; writer.len()];
        let mut children = Vec::with_capacity(target.len());
        let mut absent = Vec::new();
        for (t, field) in target.iter().enumerate() {
            let found = writer
                .iter()
                .position(|(n, _)| n == field.name())
                .or_else(|| {
                    writer
                        .iter()
                        .position(|(n, _)| n.eq_ignore_ascii_case(field.name()))
                });
            let name = if path.is_empty() {
                field.name().clone()
            } else {
                format!("{path}.{}", field.name())
            };
            match found {
                Some(w) if slots[w].is_none() => {
                    slots[w] = Some(t);
                    children.push(Col::new(&writer[w].1, field.data_type(), &name)?);
                }
                _ => {
                    absent.push(t);
                    children.push(Col::absent(field.data_type()));
                }
            }
        }
        Ok(Self {
            fields: writer.iter().map(|(_, n)| n.clone()).zip(slots).collect(),
            absent,
            children,
            target_fields: target.clone(),
        })
    }

    fn read(&mut self, input: &mut Input<'_>) -> Result<(), String> {
        for (node, slot) in &self.fields {
            match slot {
                Some(c) => self.children[*c].read(node, input)?,
                None => skip(node, input)?,
            }
        }
        for c in &self.absent {
            self.children[*c].push_null();
        }
        Ok(())
    }

    fn truncate(&mut self, n: usize) {
        for c in &mut self.children {
            c.truncate(n);
        }
    }

    fn push_null(&mut self) {
        for c in &mut self.children {
            c.push_null();
        }
    }

    fn finish(self, nulls: Option<NullBuffer>) -> Result<StructArray, String> {
        let children = self
            .children
            .into_iter()
            .map(Col::finish)
            .collect::<Result<Vec<_>, _>>()?;
        StructArray::try_new(self.target_fields, children, nulls).map_err(|e| e.to_string())
    }
}

fn ends_push(ends: &mut Vec<usize>, bytes: &mut Vec<u8>, value: &[u8]) {
    bytes.extend_from_slice(value);
    ends.push(bytes.len());
}

fn offsets(ends: &[usize]) -> Result<OffsetBuffer<i32>, String> {
    let mut o = Vec::with_capacity(ends.len() + 1);
    o.push(0i32);
    for e in ends {
        o.push(i32::try_from(*e).map_err(|_| "more than 2 GiB of text in one batch")?);
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(o)))
}

impl Col {
    fn absent(target: &DataType) -> Self {
        Self {
            valid: Vec::new(),
            data: Data::Absent,
            target: target.clone(),
        }
    }

    /// How a writer field of type `node` fills a column of type `target` (`name` for
    /// messages).
    fn new(node: &Node, target: &DataType, name: &str) -> Result<Self, String> {
        let base = node.nullable_of().unwrap_or(node);
        let unfit = || {
            format!(
                "column {name} is {} in the Avro schema and cannot be read as {target}",
                base.describe()
            )
        };
        let data = if let DataType::Struct(fields) = target {
            match base {
                Node::Record(r) => Data::Struct(Box::new(StructCol::new(&r.fields, fields, name)?)),
                _ => return Err(unfit()),
            }
        } else if base.is_nested() || matches!(base, Node::Union(_)) {
            if *target != DataType::Utf8 {
                return Err(format!("{}; read it as JSONB or TEXT", unfit()));
            }
            Data::Json {
                ends: Vec::new(),
                bytes: Vec::new(),
            }
        } else {
            let Some(natural) = base.arrow_type() else {
                return Ok(Self::absent(target));
            };
            if !fits(&natural, target) {
                return Err(unfit());
            }
            match base {
                Node::Boolean => Data::Bool(Vec::new()),
                Node::Int(_) => Data::I32(Vec::new(), natural),
                Node::Long(_) => Data::I64(Vec::new(), natural),
                Node::Float => Data::F32(Vec::new()),
                Node::Double => Data::F64(Vec::new()),
                Node::Bytes(Some((p, s)))
                | Node::Fixed {
                    decimal: Some((p, s)),
                    ..
                } => Data::Dec(Vec::new(), *p, *s),
                Node::Bytes(None) | Node::Fixed { decimal: None, .. } => Data::Bin {
                    ends: Vec::new(),
                    bytes: Vec::new(),
                },
                Node::String | Node::Enum(_) => Data::Str {
                    ends: Vec::new(),
                    bytes: Vec::new(),
                },
                _ => return Err(unfit()),
            }
        };
        Ok(Self {
            valid: Vec::new(),
            data,
            target: target.clone(),
        })
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    fn push_null(&mut self) {
        self.valid.push(false);
        match &mut self.data {
            Data::Absent => {}
            Data::Bool(v) => v.push(false),
            Data::I32(v, _) => v.push(0),
            Data::I64(v, _) => v.push(0),
            Data::F32(v) => v.push(0.0),
            Data::F64(v) => v.push(0.0),
            Data::Bin { ends, bytes } | Data::Str { ends, bytes } | Data::Json { ends, bytes } => {
                ends.push(bytes.len())
            }
            Data::Dec(v, _, _) => v.push(0),
            Data::Struct(s) => s.push_null(),
        }
    }

    fn truncate(&mut self, n: usize) {
        if self.valid.len() <= n {
            return;
        }
        self.valid.truncate(n);
        match &mut self.data {
            Data::Absent => {}
            Data::Bool(v) => v.truncate(n),
            Data::I32(v, _) => v.truncate(n),
            Data::I64(v, _) => v.truncate(n),
            Data::F32(v) => v.truncate(n),
            Data::F64(v) => v.truncate(n),
            Data::Bin { ends, bytes } | Data::Str { ends, bytes } | Data::Json { ends, bytes } => {
                ends.truncate(n);
                bytes.truncate(ends.last().copied().unwrap_or(0));
            }
            Data::Dec(v, _, _) => v.truncate(n),
            Data::Struct(s) => s.truncate(n),
        }
    }

    /// Reads one value of `node` (the writer's type for this column).
    fn read(&mut self, node: &Node, input: &mut Input<'_>) -> Result<(), String> {
        let node = match node {
            Node::Null => {
                self.push_null();
                return Ok(());
            }
            Node::Union(branches) if !matches!(self.data, Data::Json { .. }) => {
                let b = input.branch(branches)?;
                return self.read(b, input);
            }
            Node::Union(branches) => {
                // JSON text of a union: SQL NULL for its null branch.
                let b = input.branch(branches)?;
                if *b == Node::Null {
                    self.push_null();
                    return Ok(());
                }
                b
            }
            n => n,
        };
        match (&mut self.data, node) {
            (Data::Absent, _) => {
                skip(node, input)?;
                self.valid.push(false);
                return Ok(());
            }
            (Data::Bool(v), Node::Boolean) => v.push(input.take(1)?[0] != 0),
            (Data::I32(v, _), Node::Int(_)) => v.push(input.int()?),
            (Data::I64(v, _), Node::Long(_)) => v.push(input.long()?),
            (Data::F32(v), Node::Float) => v.push(f32::from_le_bytes(
                input.take(4)?.try_into().unwrap_or_default(),
            )),
            (Data::F64(v), Node::Double) => v.push(f64::from_le_bytes(
                input.take(8)?.try_into().unwrap_or_default(),
            )),
            (Data::Bin { ends, bytes }, Node::Bytes(None)) => {
                ends_push(ends, bytes, input.bytes()?)
            }
            (Data::Bin { ends, bytes }, Node::Fixed { size, .. }) => {
                ends_push(ends, bytes, input.take(*size)?)
            }
            (Data::Str { ends, bytes }, Node::String) => {
                ends_push(ends, bytes, input.str()?.as_bytes())
            }
            (Data::Str { ends, bytes }, Node::Enum(symbols)) => {
                let i = input.long()?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| format!("enum symbol {i} does not exist"))?;
                ends_push(ends, bytes, s.as_bytes())
            }
            (Data::Dec(v, _, _), Node::Bytes(Some(_))) => v.push(decimal(input.bytes()?)?),
            (Data::Dec(v, _, _), Node::Fixed { size, .. }) => v.push(decimal(input.take(*size)?)?),
            (Data::Json { ends, bytes }, n) => {
                render(n, input, bytes)?;
                ends.push(bytes.len());
            }
            (Data::Struct(s), Node::Record(_)) => s.read(input)?,
            (_, n) => {
                return Err(format!(
                    "an Avro {} where the schema's plan expects another type",
                    n.describe()
                ))
            }
        }
        self.valid.push(true);
        Ok(())
    }

    fn finish(self) -> Result<ArrayRef, String> {
        let len = self.len();
        let nulls = if self.valid.iter().all(|v| *v) {
            None
        } else {
            Some(NullBuffer::from(self.valid))
        };
        let natural: ArrayRef = match self.data {
            Data::Absent => return Ok(new_null_array(&self.target, len)),
            Data::Bool(v) => Arc::new(BooleanArray::new(v.into(), nulls)),
            Data::I32(v, ty) => retype(Arc::new(Int32Array::new(v.into(), nulls)), ty)?,
            Data::I64(v, ty) => retype(Arc::new(Int64Array::new(v.into(), nulls)), ty)?,
            Data::F32(v) => Arc::new(Float32Array::new(v.into(), nulls)),
            Data::F64(v) => Arc::new(Float64Array::new(v.into(), nulls)),
            Data::Bin { ends, bytes } => Arc::new(
                BinaryArray::try_new(offsets(&ends)?, Buffer::from_vec(bytes), nulls)
                    .map_err(|e| e.to_string())?,
            ),
            Data::Str { ends, bytes } | Data::Json { ends, bytes } => Arc::new(
                StringArray::try_new(offsets(&ends)?, Buffer::from_vec(bytes), nulls)
                    .map_err(|e| e.to_string())?,
            ),
            Data::Dec(v, p, s) => Arc::new(
                Decimal128Array::new(v.into(), nulls)
                    .with_precision_and_scale(p, s)
                    .map_err(|e| e.to_string())?,
            ),
            Data::Struct(s) => return Ok(Arc::new(s.finish(nulls)?)),
        };
        if natural.data_type() == &self.target {
            return Ok(natural);
        }
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        cast_with_options(&natural, &self.target, &options).map_err(|e| e.to_string())
    }
}

/// The same values under a logical type of the same width (date32 over int32, say).
fn retype(array: ArrayRef, ty: DataType) -> Result<ArrayRef, String> {
    if array.data_type() == &ty {
        return Ok(array);
    }
    let data = array
        .to_data()
        .into_builder()
        .data_type(ty)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(make_array(data))
}

/// How records of one writer schema read into the target columns.
#[derive(Debug, Clone)]
pub struct Plan {
    top: Top,
    schema: SchemaRef,
}

#[derive(Debug, Clone)]
enum Top {
    /// A record: its fields by name.
    Record(StructCol),
    /// Any other type (a key schema of `"string"`, say): the only column.
    Single(Node, Col),
}

impl Plan {
    pub fn new(writer: &Node, schema: &SchemaRef) -> Result<Self, String> {
        let top = match writer {
            Node::Record(r) => Top::Record(StructCol::new(&r.fields, schema.fields(), "")?),
            other if schema.fields().len() == 1 => {
                let f = schema.field(0);
                Top::Single(other.clone(), Col::new(other, f.data_type(), f.name())?)
            }
            other => {
                return Err(format!(
                    "the Avro schema is a {}, not a record: it can fill one column, not {}",
                    other.describe(),
                    schema.fields().len()
                ))
            }
        };
        Ok(Self {
            top,
            schema: Arc::clone(schema),
        })
    }

    /// Empty columns to read a run of records into.
    pub fn start(&self) -> Rows {
        Rows {
            top: self.top.clone(),
            schema: Arc::clone(&self.schema),
            len: 0,
        }
    }
}

/// Rows being read under one [`Plan`].
pub struct Rows {
    top: Top,
    schema: SchemaRef,
    len: usize,
}

impl Rows {
    /// Reads one record (all of `payload`); on error nothing of it is kept.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut input = Input::new(payload);
        self.read(&mut input, |input| match input.remaining() {
            0 => Ok(()),
            n => Err(format!(
                "{n} bytes left after the Avro value: it does not match its schema"
            )),
        })
    }

    /// Reads the record that starts at `input`'s position, leaving it after the record
    /// (records one after another, as in a container file's block).
    pub fn push_from(&mut self, input: &mut Input<'_>) -> Result<(), String> {
        self.read(input, |_| Ok(()))
    }

    fn read(
        &mut self,
        input: &mut Input<'_>,
        after: impl FnOnce(&Input<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let read = match &mut self.top {
            Top::Record(s) => s.read(input),
            Top::Single(node, col) => col.read(node, input),
        };
        let result = read.and_then(|()| after(input));
        if result.is_err() {
            match &mut self.top {
                Top::Record(s) => s.truncate(self.len),
                Top::Single(_, col) => col.truncate(self.len),
            }
        } else {
            self.len += 1;
        }
        result
    }

    /// The rows as a batch; an error when a value does not fit its declared type.
    pub fn finish(self) -> Result<RecordBatch, String> {
        let columns = match self.top {
            Top::Record(s) => s.finish(None)?.into_parts().1,
            Top::Single(_, col) => vec![col.finish()?],
        };
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(self.len));
        RecordBatch::try_new_with_options(self.schema, columns, &options).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Field, Int64Type, Schema};

    /// Avro's zigzag varint of `v`.
    fn long(v: i64, out: &mut Vec<u8>) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        long(s.len() as i64, out);
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn fields_by_name_skipped_absent_and_nullable() {
        let writer = Node::parse(
            r#"{"type": "record", "name": "r", "fields": [
                {"name": "skipped", "type": {"type": "array", "items": "string"}},
                {"name": "id", "type": "long"},
                {"name": "name", "type": ["null", "string"]},
                {"name": "tags", "type": {"type": "map", "values": "int"}}
            ]}"#,
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("ID", DataType::Int64, true),
            Field::new("missing", DataType::Float64, true),
            Field::new("tags", DataType::Utf8, true),
        ]));
        let plan = Plan::new(&writer, &schema).unwrap();
        let mut rows = plan.start();
        for (i, name) in [(1, Some("a")), (-2, None)] {
            let mut p = Vec::new();
            long(2, &mut p); // two array items, then the end
            string("x", &mut p);
            string("y", &mut p);
            long(0, &mut p);
            long(i, &mut p);
            match name {
                Some(n) => {
                    long(1, &mut p);
                    string(n, &mut p);
                }
                None => long(0, &mut p),
            }
            long(-1, &mut p); // a block of one entry, with its byte size
            long(3, &mut p);
            string("k", &mut p);
            long(7, &mut p);
            long(0, &mut p);
            rows.push(&p).unwrap();
        }
        // A record cut short costs only itself, and so does a block count no record holds.
        assert!(rows.push(&[2, 2, b'x']).is_err());
        let mut huge = Vec::new();
        long(i64::MAX / 4, &mut huge);
        assert!(rows.push(&huge).unwrap_err().contains("items in"));
        let b = rows.finish().unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(0).as_string::<i32>().value(0), "a");
        assert!(b.column(0).is_null(1));
        let ids: Vec<i64> = b.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, vec![1, -2]);
        assert_eq!(b.column(2).null_count(), 2);
        assert_eq!(b.column(3).as_string::<i32>().value(1), r#"{"k":7}"#);
    }

    #[test]
    fn decimals_and_misfits() {
        assert_eq!(decimal(&[0xff, 0x85]).unwrap(), -123);
        assert_eq!(decimal(&[0x30, 0x39]).unwrap(), 12345);
        let mut out = Vec::new();
        render_bytes(&[0xff, 0x85], Some((5, 2)), &mut out).unwrap();
        assert_eq!(out, b"-1.23");
        let writer = Node::parse(
            r#"{"type": "record", "name": "r", "fields": [
            {"name": "s", "type": "string"}]}"#,
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Boolean, true)]));
        let e = Plan::new(&writer, &schema).unwrap_err();
        assert!(e.contains("column s is string"), "{e}");
    }
}
