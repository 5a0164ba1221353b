//! Turning records (Kafka messages, lines of a file) into Arrow batches: JSON objects or
//! CSV lines, decoded a whole poll at a time, with bad records isolated and logged.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::avro::AvroFormat;
use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::protobuf::ProtobufFormat;
use crate::source_errors::SourceErrors;

/// How a record's bytes encode a row.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// One JSON object per record; fields by column name, missing ones NULL.
    Json,
    /// One CSV line per record; fields by column position.
    Csv { delimiter: u8 },
    /// Records as they are, in the columns of [`raw_schema`], for a consumer that
    /// decodes them itself (tables with `FORMAT UPSERT` or `FORMAT DEBEZIUM`).
    Raw,
    /// Avro in the Confluent wire format, schemas from a registry.
    Avro(Arc<AvroFormat>),
    /// Serialized protobuf messages of one type, from a descriptor set.
    Protobuf(Arc<ProtobufFormat>),
    /// Parquet files (whole files, not records: the filesystem connector reads them).
    Parquet,
    /// Avro object container files (`ENCODE AVRO` without a registry): each file's
    /// header holds its writer schema.
    AvroFile,
}

/// `key` and `value` bytes (either may be NULL, e.g. a Kafka tombstone), the record's
/// offset in its split, and its timestamp (ms since 1970, when it has one).
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("offset", DataType::UInt64, false),
        Field::new("timestamp", DataType::Int64, true),
    ]))
}

/// Byte ranges of a buffer as a binary column (`None`: NULL).
pub fn binary_column(buf: &[u8], ranges: &[Option<(usize, usize)>]) -> ArrayRef {
    Arc::new(BinaryArray::from_iter(
        ranges.iter().map(|r| r.map(|(s, e)| &buf[s..e])),
    ))
}

/// A batch of [`raw_schema`]: `keys[i]` are byte ranges of `key_buf`, `values[i]` of
/// `buf`.
pub fn raw_batch(
    key_buf: &[u8],
    keys: &[Option<(usize, usize)>],
    buf: &[u8],
    values: &[Option<(usize, usize)>],
    offsets: Vec<u64>,
    timestamps: Vec<Option<i64>>,
) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        raw_schema(),
        vec![
            binary_column(key_buf, keys),
            binary_column(buf, values),
            Arc::new(UInt64Array::from(offsets)),
            Arc::new(Int64Array::from(timestamps)),
        ],
    )?)
}

impl Encoding {
    pub fn is_json(&self) -> bool {
        matches!(self, Encoding::Json)
    }

    pub fn is_raw(&self) -> bool {
        matches!(self, Encoding::Raw)
    }

    pub fn is_avro(&self) -> bool {
        matches!(self, Encoding::Avro(_))
    }

    pub fn is_protobuf(&self) -> bool {
        matches!(self, Encoding::Protobuf(_))
    }

    pub fn is_parquet(&self) -> bool {
        matches!(self, Encoding::Parquet)
    }

    /// Whether the encoding is of whole files (Parquet, Avro containers), read by the
    /// filesystem connector itself, rather than of records.
    pub fn is_whole_file(&self) -> bool {
        matches!(self, Encoding::Parquet | Encoding::AvroFile)
    }

    /// An error when the encoding is not of records one at a time (Kafka messages).
    pub fn check_records(&self) -> Result<()> {
        match self {
            Encoding::Parquet => Err(ConnectorError::Options(
                "ENCODE PARQUET reads files (connector = 'filesystem' or 's3'), not Kafka records"
                    .into(),
            )),
            Encoding::AvroFile => Err(ConnectorError::Options(
                "schema.registry = 'http://host:port' is needed for ENCODE AVRO over Kafka (records carry the id of their schema there)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// `ENCODE JSON`, `ENCODE CSV (delimiter = ',', without_header = 'false')`,
    /// `ENCODE AVRO (schema.registry = '...')` or `ENCODE PROTOBUF (message = '...',
    /// schema.location = '...')`; the format options are read from `options`. Returns the encoding and, for CSV,
    /// whether each file starts with a header line.
    pub fn from_format(encode: &str, options: &Options) -> Result<(Self, bool)> {
        match encode.to_ascii_uppercase().as_str() {
            "JSON" => Ok((Encoding::Json, false)),
            "AVRO" if options.get("schema.registry").is_none() => Ok((Encoding::AvroFile, false)),
            "AVRO" => Ok((
                Encoding::Avro(Arc::new(AvroFormat::from_options(options)?)),
                false,
            )),
            "PARQUET" => Ok((Encoding::Parquet, false)),
            "PROTOBUF" => Ok((
                Encoding::Protobuf(Arc::new(ProtobufFormat::from_options(options)?)),
                false,
            )),
            "CSV" => {
                let delimiter = match options.get("delimiter") {
                    None => b',',
                    Some(d) if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
                    Some("\\t") => b'\t',
                    Some(d) => {
                        return Err(ConnectorError::Options(format!(
                            "delimiter must be one ASCII character, not '{d}'"
                        )))
                    }
                };
                let without_header = match options.get("without_header") {
                    None => false,
                    Some(v) if v.eq_ignore_ascii_case("true") => true,
                    Some(v) if v.eq_ignore_ascii_case("false") => false,
                    Some(v) => {
                        return Err(ConnectorError::Options(format!(
                            "without_header must be 'true' or 'false', not '{v}'"
                        )))
                    }
                };
                Ok((Encoding::Csv { delimiter }, !without_header))
            }
            other => Err(ConnectorError::Options(format!(
                "ENCODE {other} is not supported yet (JSON, CSV, AVRO, PROTOBUF and PARQUET are)"
            ))),
        }
    }
}

/// Whether values decoded as `from` may fill a column of type `to`: the same kind of value
/// (numbers as numbers, times as times), or anything as text.
pub(crate) fn fits(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let same_kind = from == to
        || *to == Utf8
        || (from.is_numeric() && to.is_numeric())
        || (matches!(from, Date32 | Timestamp(..)) && matches!(to, Date32 | Timestamp(..)))
        || (matches!(from, Time32(_) | Time64(_)) && matches!(to, Time32(_) | Time64(_)));
    same_kind && arrow::compute::can_cast_types(from, to)
}

/// One record: its position (an offset within its split) and its bytes in a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub offset: u64,
    pub start: usize,
    pub end: usize,
}

/// Decodes `records` (byte ranges of `buf`, each followed by a newline in `buf`) into one
/// batch. Tries the whole buffer at once; when that fails, decodes record by record and
/// logs each bad one to `errors` (as `split`/offset) instead of returning it.
pub fn decode_records(
    encoding: &Encoding,
    schema: &SchemaRef,
    buf: &[u8],
    records: &[Record],
    split: &str,
    errors: &SourceErrors,
) -> Result<RecordBatch> {
    Ok(decode_records_with_offsets(encoding, schema, buf, records, split, errors)?.0)
}

/// [`decode_records`], also returning the offset of each decoded row's record.
pub fn decode_records_with_offsets(
    encoding: &Encoding,
    schema: &SchemaRef,
    buf: &[u8],
    records: &[Record],
    split: &str,
    errors: &SourceErrors,
) -> Result<(RecordBatch, Vec<u64>)> {
    if records.is_empty() {
        return Ok((RecordBatch::new_empty(Arc::clone(schema)), Vec::new()));
    }
    if let Encoding::Avro(avro) = encoding {
        return avro.decode(schema, buf, records, split, errors);
    }
    if let Encoding::Protobuf(proto) = encoding {
        return proto.decode(schema, buf, records, split, errors);
    }
    if encoding.is_raw() {
        let ranges: Vec<Option<(usize, usize)>> =
            records.iter().map(|r| Some((r.start, r.end))).collect();
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        let batch = raw_batch(
            &[],
            &vec![None; records.len()],
            buf,
            &ranges,
            offsets.clone(),
            vec![None; records.len()],
        )?;
        return Ok((batch, offsets));
    }
    let shape_ok = |r: &Record| match encoding {
        Encoding::Json => is_object(&buf[r.start..r.end]),
        Encoding::Csv { .. }
        | Encoding::Raw
        | Encoding::Avro(_)
        | Encoding::Protobuf(_)
        | Encoding::Parquet
        | Encoding::AvroFile => true,
    };
    if records.iter().all(shape_ok) {
        let whole = &buf[records[0].start..records[records.len() - 1].end];
        if let Ok(batch) = decode(encoding, schema, whole, records.len()) {
            return Ok((batch, records.iter().map(|r| r.offset).collect()));
        }
    }
    let mut rows = Vec::with_capacity(records.len());
    let mut kept = Vec::with_capacity(records.len());
    for r in records {
        let bytes = &buf[r.start..r.end];
        let decoded = if shape_ok(r) {
            decode(encoding, schema, bytes, 1)
        } else {
            Err("not a JSON object".to_string())
        };
        match decoded {
            Ok(b) => {
                rows.push(b);
                kept.push(r.offset);
            }
            Err(e) => {
                errors.record(split, r.offset, &e, bytes);
                tracing::warn!(split, offset = r.offset, error = %e, "skipped a malformed record");
            }
        }
    }
    Ok((arrow::compute::concat_batches(schema, &rows)?, kept))
}

/// Whether a payload starts like a JSON object (rows are decoded from objects).
fn is_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Decodes exactly `rows` rows from `bytes`; an error when there are more or fewer or a
/// value does not fit its column.
fn decode(
    encoding: &Encoding,
    schema: &SchemaRef,
    bytes: &[u8],
    rows: usize,
) -> Result<RecordBatch, String> {
    let batch = match encoding {
        Encoding::Json => {
            let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
                .with_batch_size(rows + 1)
                .build_decoder()
                .map_err(|e| e.to_string())?;
            let read = decoder.decode(bytes).map_err(|e| e.to_string())?;
            if read != bytes.len() {
                return Err("more JSON values than records".to_string());
            }
            decoder.flush().map_err(|e| e.to_string())?
        }
        Encoding::Raw
        | Encoding::Avro(_)
        | Encoding::Protobuf(_)
        | Encoding::Parquet
        | Encoding::AvroFile => {
            return Err("raw, Avro, Protobuf and Parquet records are not decoded here".to_string())
        }
        Encoding::Csv { delimiter } => {
            let mut decoder = arrow::csv::ReaderBuilder::new(Arc::clone(schema))
                .with_header(false)
                .with_delimiter(*delimiter)
                .with_batch_size(rows + 1)
                .build_decoder();
            let mut rest = bytes;
            loop {
                let read = decoder.decode(rest).map_err(|e| e.to_string())?;
                if read == 0 {
                    break;
                }
                rest = &rest[read..];
            }
            // The end of input completes a last line without a newline.
            decoder.decode(&[]).map_err(|e| e.to_string())?;
            decoder.flush().map_err(|e| e.to_string())?
        }
    }
    .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    if batch.num_rows() != rows {
        return Err(format!(
            "{} rows where {rows} were expected",
            batch.num_rows()
        ));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn records(lines: &[&str]) -> (Vec<u8>, Vec<Record>) {
        let mut buf = Vec::new();
        let mut recs = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let start = buf.len();
            buf.extend_from_slice(l.as_bytes());
            recs.push(Record {
                offset: i as u64,
                start,
                end: buf.len(),
            });
            buf.push(b'\n');
        }
        (buf, recs)
    }

    #[test]
    fn json_bad_records_cost_only_themselves() {
        let errors = SourceErrors::new(10);
        let (buf, recs) = records(&[
            r#"{"id": 1, "name": "a"}"#,
            "[1]",
            r#"{"id": "x"}"#,
            r#"{"id": 4}"#,
            r#"{"id": 5}{"id": 6}"#,
        ]);
        let b = decode_records(&Encoding::Json, &schema(), &buf, &recs, "0", &errors).unwrap();
        let ids: Vec<i64> = b.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, vec![1, 4]);
        let e = errors.entries();
        assert_eq!(
            e.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
    }

    #[test]
    fn csv_by_position() {
        let errors = SourceErrors::new(10);
        let (buf, recs) = records(&["1,a", "2,\"b,c\"", "x,d", "4,"]);
        let b = decode_records(
            &Encoding::Csv { delimiter: b',' },
            &schema(),
            &buf,
            &recs,
            "f",
            &errors,
        )
        .unwrap();
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.column(1).as_string::<i32>().value(1), "b,c");
        assert!(b.column(1).is_null(2) || b.column(1).as_string::<i32>().value(2).is_empty());
        assert_eq!(errors.entries()[0].offset, 2);
    }
}
