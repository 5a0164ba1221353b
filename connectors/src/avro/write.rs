//! Rows written as Avro for sinks: a record schema made from the relation's columns,
//! registered with the schema registry, and each row's value in Avro's binary encoding
//! behind the wire-format header (a zero byte and the schema id).
//!
//! Every field is a `["null", T]` union with default null, so consumers may read with
//! a schema that adds fields. Names that Avro does not allow (`count(*)`) have the
//! characters it refuses replaced with `_`.

use std::collections::HashSet;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Decimal128Array, Float32Array,
    Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Fields, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit,
};
use serde_json::{json, Value};

use crate::error::{ConnectorError, Result};

/// A name Avro accepts: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The Avro type of a column (without the null branch); records for structs, named
/// `name`.
fn avro_type(column: &str, ty: &DataType, name: &str) -> Result<Value> {
    Ok(match ty {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => json!("long"),
        DataType::Float16 | DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Decimal128(p, s) => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s})
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
        DataType::Date32 | DataType::Date64 => json!({"type": "int", "logicalType": "date"}),
        DataType::Time32(_) | DataType::Time64(_) => {
            json!({"type": "long", "logicalType": "time-micros"})
        }
        DataType::Timestamp(_, Some(_)) => {
            json!({"type": "long", "logicalType": "timestamp-micros"})
        }
        DataType::Timestamp(_, None) => {
            json!({"type": "long", "logicalType": "local-timestamp-micros"})
        }
        DataType::Struct(fields) => record_schema(name, fields)?,
        other => {
            return Err(ConnectorError::Schema(format!(
                "column {column} is {other}, which ENCODE AVRO cannot write yet"
            )))
        }
    })
}

/// A record schema named `name` with a nullable field per column.
pub fn record_schema(name: &str, fields: &Fields) -> Result<Value> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let field_name = avro_name(f.name());
        if !seen.insert(field_name.clone()) {
            return Err(ConnectorError::Schema(format!(
                "columns {} and another are both {field_name} in Avro: rename one",
                f.name()
            )));
        }
        let ty = avro_type(f.name(), f.data_type(), &format!("{name}_{field_name}"))?;
        out.push(json!({"name": field_name, "type": ["null", ty], "default": null}));
    }
    Ok(json!({"type": "record", "name": avro_name(name), "namespace": "sabot", "fields": out}))
}

/// The schema of Debezium envelopes over rows of `fields`: `before` and `after` share
/// the row record `name`.
pub fn debezium_schema(name: &str, fields: &Fields) -> Result<Value> {
    let row = record_schema(name, fields)?;
    let row_name = format!("sabot.{}", avro_name(name));
    Ok(json!({
        "type": "record", "name": format!("{}_envelope", avro_name(name)), "namespace": "sabot",
        "fields": [
            {"name": "before", "type": ["null", row], "default": null},
            {"name": "after", "type": ["null", row_name], "default": null},
            {"name": "op", "type": ["null", "string"], "default": null},
        ]
    }))
}

/// A column's values in the representation Avro writes, read row by row.
enum Column {
    Bool(BooleanArray),
    Int(Int32Array),
    Long(Int64Array),
    Float(Float32Array),
    Double(Float64Array),
    Str(StringArray),
    Bytes(BinaryArray),
    Decimal(Decimal128Array),
    Record(Option<NullBuffer>, Vec<Column>),
}

impl Column {
    fn new(array: &ArrayRef) -> Result<Self> {
        let to = |ty: &DataType| cast(array, ty);
        Ok(match array.data_type() {
            DataType::Boolean => Column::Bool(array.as_boolean().clone()),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16 => {
                Column::Int(to(&DataType::Int32)?.as_primitive::<Int32Type>().clone())
            }
            DataType::Date32 | DataType::Date64 => {
                let days = to(&DataType::Date32)?;
                Column::Int(
                    cast(&days, &DataType::Int32)?
                        .as_primitive::<Int32Type>()
                        .clone(),
                )
            }
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => {
                Column::Long(to(&DataType::Int64)?.as_primitive::<Int64Type>().clone())
            }
            DataType::Time32(_) | DataType::Time64(_) => {
                let micros = to(&DataType::Time64(TimeUnit::Microsecond))?;
                Column::Long(
                    cast(&micros, &DataType::Int64)?
                        .as_primitive::<Int64Type>()
                        .clone(),
                )
            }
            DataType::Timestamp(_, tz) => {
                let micros = to(&DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
                Column::Long(
                    cast(&micros, &DataType::Int64)?
                        .as_primitive::<Int64Type>()
                        .clone(),
                )
            }
            DataType::Float16 | DataType::Float32 => Column::Float(
                to(&DataType::Float32)?
                    .as_primitive::<Float32Type>()
                    .clone(),
            ),
            DataType::Float64 => Column::Double(array.as_primitive::<Float64Type>().clone()),
            DataType::Decimal128(_, _) => Column::Decimal(
                array
                    .as_primitive::<arrow::datatypes::Decimal128Type>()
                    .clone(),
            ),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Column::Str(to(&DataType::Utf8)?.as_string::<i32>().clone())
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                Column::Bytes(to(&DataType::Binary)?.as_binary::<i32>().clone())
            }
            DataType::Struct(_) => {
                let s: &StructArray = array.as_struct();
                Column::Record(
                    s.nulls().cloned(),
                    s.columns().iter().map(Column::new).collect::<Result<_>>()?,
                )
            }
            other => {
                return Err(ConnectorError::Write(format!(
                    "ENCODE AVRO cannot write {other}"
                )))
            }
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Bool(a) => a.is_null(row),
            Column::Int(a) => a.is_null(row),
            Column::Long(a) => a.is_null(row),
            Column::Float(a) => a.is_null(row),
            Column::Double(a) => a.is_null(row),
            Column::Str(a) => a.is_null(row),
            Column::Bytes(a) => a.is_null(row),
            Column::Decimal(a) => a.is_null(row),
            Column::Record(nulls, _) => nulls.as_ref().is_some_and(|n| n.is_null(row)),
        }
    }

    /// Appends row `row` as a `["null", T]` union.
    fn write_nullable(&self, row: usize, out: &mut Vec<u8>) {
        if self.is_null(row) {
            long(0, out);
        } else {
            long(1, out);
            self.write(row, out);
        }
    }

    fn write(&self, row: usize, out: &mut Vec<u8>) {
        match self {
            Column::Bool(a) => out.push(u8::from(a.value(row))),
            Column::Int(a) => long(i64::from(a.value(row)), out),
            Column::Long(a) => long(a.value(row), out),
            Column::Float(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            Column::Double(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            Column::Str(a) => bytes(a.value(row).as_bytes(), out),
            Column::Bytes(a) => bytes(a.value(row), out),
            Column::Decimal(a) => bytes(&decimal_bytes(a.value(row)), out),
            Column::Record(_, children) => {
                for c in children {
                    c.write_nullable(row, out);
                }
            }
        }
    }
}

/// Avro's zigzag varint.
pub(super) fn long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(super) fn bytes(b: &[u8], out: &mut Vec<u8>) {
    long(b.len() as i64, out);
    out.extend_from_slice(b);
}

/// The shortest big-endian two's complement bytes of `v` (Avro's decimal).
fn decimal_bytes(v: i128) -> Vec<u8> {
    let all = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (all[start], all[start + 1]);
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    all[start..].to_vec()
}

/// Writes rows under one registered schema.
#[derive(Debug, Clone)]
pub struct AvroEncoder {
    id: u32,
}

impl AvroEncoder {
    pub fn new(id: u32) -> Self {
        Self { id }
    }

    /// Each row of `batch` as a record in the wire format.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let columns = columns(batch)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        let mut buf = Vec::new();
        for row in 0..batch.num_rows() {
            buf.clear();
            buf.push(0);
            buf.extend_from_slice(&self.id.to_be_bytes());
            for c in &columns {
                c.write_nullable(row, &mut buf);
            }
            out.push(buf.clone());
        }
        Ok(out)
    }
}

fn columns(batch: &RecordBatch) -> Result<Vec<Column>> {
    batch.columns().iter().map(Column::new).collect()
}

/// The rows of `batch`, one Avro record after another (as a container file's block holds
/// them), under [`record_schema`] of its columns.
pub fn datums(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    let columns = columns(batch)?;
    for row in 0..batch.num_rows() {
        for c in &columns {
            c.write_nullable(row, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::read::Plan;
    use super::super::schema::Node;
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn round_trip_through_the_reader() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)])) as ArrayRef,
            ),
            (
                "count(*)",
                Arc::new(StringArray::from(vec![Some("a"), Some(""), None])) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(
                    Decimal128Array::from(vec![Some(12345), Some(-1), Some(i128::from(i64::MIN))])
                        .with_precision_and_scale(38, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
        ])
        .unwrap();
        let schema = record_schema("out", batch.schema().fields()).unwrap();
        assert_eq!(schema["fields"][1]["name"], "count___");
        let rows = AvroEncoder::new(7).encode(&batch).unwrap();
        assert_eq!(&rows[0][..5], &[0, 0, 0, 0, 7]);
        let writer = Node::parse(&schema.to_string()).unwrap();
        let target = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("count___", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(38, 2), true),
        ]));
        let plan = Plan::new(&writer, &target).unwrap();
        let mut read = plan.start();
        for r in &rows {
            read.push(&r[5..]).unwrap();
        }
        let back = read.finish().unwrap();
        assert_eq!(back.columns(), batch.columns());
        assert_eq!(decimal_bytes(-1), vec![0xff]);
        assert_eq!(decimal_bytes(128), vec![0x00, 0x80]);
    }
}
