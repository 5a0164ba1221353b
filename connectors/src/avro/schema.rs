//! Avro schemas: parsed from their JSON form into a tree of [`Node`]s, and the Arrow
//! type each node reads as.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use serde_json::Value;

/// The time zone Sabot's `TIMESTAMPTZ` columns carry.
const UTC: &str = "+00:00";

/// A resolved Avro schema: named types are inlined where they are referenced.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Boolean,
    Int(IntKind),
    Long(LongKind),
    Float,
    Double,
    /// `bytes`, or a `decimal` over bytes (precision, scale).
    Bytes(Option<(u8, i8)>),
    String,
    /// `fixed` of `size` bytes, or a `decimal` over them.
    Fixed {
        size: usize,
        decimal: Option<(u8, i8)>,
    },
    Enum(Arc<[String]>),
    Record(Arc<Record>),
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
}

/// What an `int` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    Plain,
    /// Days since 1970-01-01.
    Date,
    TimeMillis,
}

/// What a `long` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongKind {
    Plain,
    TimeMicros,
    /// An instant (`timestamp-*`, `utc` true) or a wall-clock time (`local-timestamp-*`).
    Timestamp {
        unit: TimeUnit,
        utc: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub fields: Vec<(String, Node)>,
}

impl Node {
    /// Parses a schema from its JSON text.
    pub fn parse(text: &str) -> Result<Node, String> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| format!("the Avro schema is not JSON: {e}"))?;
        Parser::default().node(&json, "")
    }

    /// The branch of a `["null", T]` union that is not null, when that is its shape.
    pub fn nullable_of(&self) -> Option<&Node> {
        match self {
            Node::Union(branches) if branches.len() == 2 => match (&branches[0], &branches[1]) {
                (Node::Null, t) | (t, Node::Null) if *t != Node::Null => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether values of this node are read as JSON text (records, arrays, maps and
    /// unions of several types, outside a struct column).
    pub fn is_nested(&self) -> bool {
        match self {
            Node::Record(_) | Node::Array(_) | Node::Map(_) => true,
            Node::Union(_) => self.nullable_of().is_none_or(Node::is_nested),
            _ => false,
        }
    }

    /// The Arrow type a value of this node naturally reads as; nested values read as
    /// JSON text. `None` for `null`, which carries no value.
    pub fn arrow_type(&self) -> Option<DataType> {
        Some(match self {
            Node::Null => return None,
            Node::Boolean => DataType::Boolean,
            Node::Int(IntKind::Plain) => DataType::Int32,
            Node::Int(IntKind::Date) => DataType::Date32,
            Node::Int(IntKind::TimeMillis) => DataType::Time32(TimeUnit::Millisecond),
            Node::Long(LongKind::Plain) => DataType::Int64,
            Node::Long(LongKind::TimeMicros) => DataType::Time64(TimeUnit::Microsecond),
            Node::Long(LongKind::Timestamp { unit, utc }) => {
                DataType::Timestamp(*unit, utc.then(|| UTC.into()))
            }
            Node::Float => DataType::Float32,
            Node::Double => DataType::Float64,
            Node::Bytes(Some((p, s)))
            | Node::Fixed {
                decimal: Some((p, s)),
                ..
            } => DataType::Decimal128(*p, *s),
            Node::Bytes(None) | Node::Fixed { decimal: None, .. } => DataType::Binary,
            Node::String | Node::Enum(_) => DataType::Utf8,
            Node::Union(_) => match self.nullable_of() {
                Some(t) if !t.is_nested() => return t.arrow_type(),
                _ => DataType::Utf8,
            },
            Node::Record(_) | Node::Array(_) | Node::Map(_) => DataType::Utf8,
        })
    }

    /// The Avro type's name, for messages.
    pub fn describe(&self) -> String {
        match self {
            Node::Null => "null".into(),
            Node::Boolean => "boolean".into(),
            Node::Int(_) => "int".into(),
            Node::Long(_) => "long".into(),
            Node::Float => "float".into(),
            Node::Double => "double".into(),
            Node::Bytes(_) => "bytes".into(),
            Node::String => "string".into(),
            Node::Fixed { size, .. } => format!("fixed({size})"),
            Node::Enum(_) => "enum".into(),
            Node::Record(r) => format!("record {}", r.name),
            Node::Array(_) => "array".into(),
            Node::Map(_) => "map".into(),
            Node::Union(_) => match self.nullable_of() {
                Some(t) => t.describe(),
                None => "union".into(),
            },
        }
    }
}

/// Parses schema JSON, remembering named types (records, enums, fixed) by full name.
#[derive(Default)]
struct Parser {
    named: HashMap<String, Node>,
    /// Records being defined: a reference to one of these is a recursive type.
    open: Vec<String>,
}

fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace.filter(|n| !n.is_empty()).unwrap_or(enclosing) {
        "" => name.to_string(),
        ns => format!("{ns}.{name}"),
    }
}

fn namespace_of(full: &str) -> &str {
    full.rsplit_once('.').map_or("", |(ns, _)| ns)
}

impl Parser {
    fn node(&mut self, json: &Value, namespace: &str) -> Result<Node, String> {
        match json {
            Value::String(name) => self.named_or_primitive(name, namespace),
            Value::Array(branches) => {
                let nodes = branches
                    .iter()
                    .map(|b| self.node(b, namespace))
                    .collect::<Result<Vec<_>, _>>()?;
                if nodes.is_empty() {
                    return Err("an Avro union has no branches".into());
                }
                Ok(Node::Union(nodes))
            }
            Value::Object(obj) => {
                let ty = obj
                    .get("type")
                    .ok_or_else(|| format!("an Avro schema object without \"type\": {json}"))?;
                let Value::String(ty) = ty else {
                    // {"type": {...}} or {"type": [...]}: the type is nested.
                    return self.node(ty, namespace);
                };
                let str_field = |key: &str| obj.get(key).and_then(Value::as_str);
                let logical = str_field("logicalType");
                let name_of = |what: &str| -> Result<String, String> {
                    let name = str_field("name")
                        .ok_or_else(|| format!("an Avro {what} without a name"))?;
                    Ok(full_name(name, str_field("namespace"), namespace))
                };
                let decimal = || -> Option<(u8, i8)> {
                    let p = obj.get("precision")?.as_u64()?;
                    let s = obj.get("scale").and_then(Value::as_u64).unwrap_or(0);
                    (1..=38).contains(&p).then_some(())?;
                    (s <= p).then_some((p as u8, s as i8))
                };
                match ty.as_str() {
                    "record" | "error" => {
                        let name = name_of("record")?;
                        let fields = obj
                            .get("fields")
                            .and_then(Value::as_array)
                            .ok_or_else(|| format!("Avro record {name} has no fields array"))?;
                        self.open.push(name.clone());
                        let inner = namespace_of(&name).to_string();
                        let mut parsed = Vec::with_capacity(fields.len());
                        for f in fields {
                            let fname = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                                format!("a field of Avro record {name} has no name")
                            })?;
                            let fty = f.get("type").ok_or_else(|| {
                                format!("field {fname} of Avro record {name} has no type")
                            })?;
                            parsed.push((fname.to_string(), self.node(fty, &inner)?));
                        }
                        self.open.pop();
                        let node = Node::Record(Arc::new(Record {
                            name: name.clone(),
                            fields: parsed,
                        }));
                        self.named.insert(name, node.clone());
                        Ok(node)
                    }
                    "enum" => {
                        let name = name_of("enum")?;
                        let symbols = obj
                            .get("symbols")
                            .and_then(Value::as_array)
                            .ok_or_else(|| format!("Avro enum {name} has no symbols"))?
                            .iter()
                            .map(|s| s.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                format!("Avro enum {name} has a symbol that is not a string")
                            })?;
                        let node = Node::Enum(symbols.into());
                        self.named.insert(name, node.clone());
                        Ok(node)
                    }
                    "fixed" => {
                        let name = name_of("fixed")?;
                        let size = obj
                            .get("size")
                            .and_then(Value::as_u64)
                            .ok_or_else(|| format!("Avro fixed {name} has no size"))?
                            as usize;
                        let decimal = if logical == Some("decimal") {
                            decimal()
                        } else {
                            None
                        };
                        let node = Node::Fixed { size, decimal };
                        self.named.insert(name, node.clone());
                        Ok(node)
                    }
                    "array" => {
                        let items = obj.get("items").ok_or("an Avro array without items")?;
                        Ok(Node::Array(Box::new(self.node(items, namespace)?)))
                    }
                    "map" => {
                        let values = obj.get("values").ok_or("an Avro map without values")?;
                        Ok(Node::Map(Box::new(self.node(values, namespace)?)))
                    }
                    primitive => {
                        let base = self.named_or_primitive(primitive, namespace)?;
                        Ok(match (base, logical) {
                            (Node::Int(_), Some("date")) => Node::Int(IntKind::Date),
                            (Node::Int(_), Some("time-millis")) => Node::Int(IntKind::TimeMillis),
                            (Node::Long(_), Some("time-micros")) => {
                                Node::Long(LongKind::TimeMicros)
                            }
                            (Node::Long(_), Some(l)) => match timestamp(l) {
                                Some((unit, utc)) => Node::Long(LongKind::Timestamp { unit, utc }),
                                None => Node::Long(LongKind::Plain),
                            },
                            (Node::Bytes(_), Some("decimal")) => Node::Bytes(decimal()),
                            // Unknown logical types read as their underlying type, as the
                            // Avro specification says.
                            (base, _) => base,
                        })
                    }
                }
            }
            other => Err(format!("not an Avro schema: {other}")),
        }
    }

    fn named_or_primitive(&self, name: &str, namespace: &str) -> Result<Node, String> {
        Ok(match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int(IntKind::Plain),
            "long" => Node::Long(LongKind::Plain),
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes(None),
            "string" => Node::String,
            _ => {
                let candidates = [full_name(name, None, namespace), name.to_string()];
                for c in &candidates {
                    if self.open.contains(c) {
                        return Err(format!(
                            "Avro type {c} refers to itself: recursive types are not supported"
                        ));
                    }
                    if let Some(n) = self.named.get(c) {
                        return Ok(n.clone());
                    }
                }
                return Err(format!("unknown Avro type {name}"));
            }
        })
    }
}

/// The unit and whether it is an instant, for the `timestamp-*` logical types.
fn timestamp(logical: &str) -> Option<(TimeUnit, bool)> {
    Some(match logical {
        "timestamp-millis" => (TimeUnit::Millisecond, true),
        "timestamp-micros" => (TimeUnit::Microsecond, true),
        "timestamp-nanos" => (TimeUnit::Nanosecond, true),
        "local-timestamp-millis" => (TimeUnit::Millisecond, false),
        "local-timestamp-micros" => (TimeUnit::Microsecond, false),
        "local-timestamp-nanos" => (TimeUnit::Nanosecond, false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_types_namespaces_and_logical_types() {
        let text = r#"{
          "type": "record", "name": "Bid", "namespace": "nexmark",
          "fields": [
            {"name": "auction", "type": "long"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "other", "type": ["null", "Kind"]},
            {"name": "same", "type": ["null", "nexmark.Kind"]},
            {"name": "tags", "type": {"type": "array", "items": "string"}}
          ]
        }"#;
        let Node::Record(r) = Node::parse(text).unwrap() else {
            panic!("a record")
        };
        assert_eq!(r.name, "nexmark.Bid");
        let types: Vec<Option<DataType>> = r.fields.iter().map(|(_, n)| n.arrow_type()).collect();
        assert_eq!(
            types,
            vec![
                Some(DataType::Int64),
                Some(DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))),
                Some(DataType::Date32),
                Some(DataType::Decimal128(10, 2)),
                Some(DataType::Utf8),
                Some(DataType::Utf8),
                Some(DataType::Utf8),
                Some(DataType::Utf8),
            ]
        );
        assert!(r.fields[7].1.is_nested());
        assert!(!r.fields[5].1.is_nested());
    }

    #[test]
    fn recursive_and_unknown_types_are_errors() {
        let recursive = r#"{"type": "record", "name": "List", "fields": [
            {"name": "next", "type": ["null", "List"]}]}"#;
        assert!(Node::parse(recursive).unwrap_err().contains("recursive"));
        assert!(Node::parse(r#""Nope""#)
            .unwrap_err()
            .contains("unknown Avro type"));
        assert!(Node::parse("{").is_err());
    }
}
