//! Tables fed by a connector: `CREATE TABLE t (..., PRIMARY KEY (k)) WITH (connector =
//! 'kafka', ...) FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON | AVRO`.
//!
//! Each epoch, before the table's changes are taken, [`Ingest::poll`] reads the splits'
//! raw records and applies them to the table, and writes each split's offset into the
//! table's offsets state table, in the same epoch batch as the rows: after a crash the
//! table and its offsets agree, so every record counts exactly once.
//!
//! - `FORMAT PLAIN`: each record is a row (JSON or CSV); with a primary key a row replaces
//!   the row with the same key.
//! - `FORMAT UPSERT ENCODE JSON`: the value is the row; a record with no value (a Kafka
//!   tombstone) deletes the row whose key is the record's key, a JSON object of the key
//!   columns.
//! - `FORMAT DEBEZIUM ENCODE JSON`: Debezium envelopes `{"before", "after", "op"}`, plain
//!   or wrapped in `{"schema": ..., "payload": {...}}`; `c`, `r` and `u` upsert `after`,
//!   `d` deletes the key of `before`; tombstones are ignored.
//!
//! `ENCODE AVRO (schema.registry = '...')` works with all three: values, keys and
//! envelopes are Avro in the registry's wire format, read by field name.
//!
//! The filesystem and s3 connectors also read whole files, `FORMAT PLAIN ENCODE PARQUET`
//! and `ENCODE AVRO` container files (no registry): the split decodes their rows.
//!
//! Records that cannot be decoded are skipped and kept in the table's error log. When the
//! schema registry cannot be reached, a split's records are put back and read again the
//! next epoch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{
    DataType, Field, Fields, Int64Type, Schema, SchemaRef, TimestampMicrosecondType, UInt64Type,
};
use sabot_connectors::decode::{decode_records_with_offsets, raw_schema, Encoding, Record};
use sabot_connectors::filesystem::FilesystemConfig;
use sabot_connectors::kafka::{Include, KafkaConfig};
use sabot_connectors::source_errors::{SourceErrors, DEFAULT_KEPT};
use sabot_connectors::{ConnectorError, Options, Split};
use sabot_dataflow::ops::connector::MAX_ROWS_PER_EPOCH;
use sabot_dataflow::TableState;
use sabot_sql::Format;
use sabot_storage::{StateTableId, StateWriter};

use crate::error::{PlanError, Result};

/// How a connector table reads its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Plain,
    Upsert,
    Debezium,
}

pub struct Ingest {
    splits: Vec<Box<dyn Split>>,
    /// The offset last written for each split.
    written: Vec<Option<u64>>,
    format: TableFormat,
    encoding: Encoding,
    /// The table's columns: the decoded ones, then the INCLUDEd ones.
    schema: SchemaRef,
    /// The columns records decode into.
    value_schema: SchemaRef,
    /// Record metadata added after the decoded columns (`INCLUDE key AS k`).
    includes: Vec<Include>,
    /// The primary key columns, as a schema (what an upsert key decodes into).
    key_schema: SchemaRef,
    /// Debezium's envelope over the table's columns.
    envelope: SchemaRef,
    offsets_table: StateTableId,
    errors: Arc<SourceErrors>,
    wants_more: bool,
}

fn options_error(e: ConnectorError) -> PlanError {
    match e {
        ConnectorError::Options(m) if m.starts_with("ENCODE") => PlanError::user("0A000", m),
        ConnectorError::Schema(m) => PlanError::user("42804", m),
        ConnectorError::Unavailable(m) => PlanError::user("08000", m),
        other => PlanError::user("22023", other.to_string()),
    }
}

impl Ingest {
    /// Checks the connector, format and key of `CREATE TABLE name (...) WITH (...)`.
    /// `schema` ends with the columns of `include` (kind, name).
    pub fn try_new(
        options: &[(String, String)],
        format: Option<&Format>,
        schema: SchemaRef,
        pk: &[usize],
        offsets_table: StateTableId,
        include: &[(String, Option<String>)],
    ) -> Result<Self> {
        let options = Options::new(options.iter().cloned());
        let format_options = Options::new(format.map(|f| f.options.clone()).unwrap_or_default());
        let table_format = match format.map_or("PLAIN", |f| f.format.as_str()) {
            "PLAIN" => TableFormat::Plain,
            "UPSERT" => TableFormat::Upsert,
            "DEBEZIUM" => TableFormat::Debezium,
            other => {
                return Err(PlanError::user(
                    "0A000",
                    format!("FORMAT {other} is not supported (PLAIN, UPSERT, DEBEZIUM are)"),
                ))
            }
        };
        let encode = format.map_or("JSON", |f| f.encode.as_str());
        let (encoding, header) =
            Encoding::from_format(encode, &format_options).map_err(options_error)?;
        format_options.check_all_used().map_err(options_error)?;

        if table_format != TableFormat::Plain {
            if encoding.is_whole_file() {
                return Err(PlanError::user(
                    "0A000",
                    format!("FORMAT UPSERT and DEBEZIUM read records (Kafka messages, lines), not ENCODE {encode} files; use FORMAT PLAIN"),
                ));
            }
            if !encoding.is_json() && !encoding.is_avro() {
                return Err(PlanError::user(
                    "0A000",
                    format!("FORMAT UPSERT and DEBEZIUM read JSON or AVRO, not ENCODE {encode}"),
                ));
            }
            if pk.is_empty() {
                return Err(PlanError::user(
                    "42P16",
                    "FORMAT UPSERT and FORMAT DEBEZIUM need a PRIMARY KEY: it says which row a change replaces",
                ));
            }
        }
        let connector = options
            .get("connector")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let includes = include
            .iter()
            .map(|(kind, _)| {
                Include::parse(kind)
                    .ok_or_else(|| PlanError::user("42601", format!("unknown INCLUDE {kind}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if !includes.is_empty() && connector != "kafka" {
            return Err(PlanError::user(
                "0A000",
                "INCLUDE applies to kafka tables and sources only",
            ));
        }
        let decoded = schema.fields().len() - includes.len().min(schema.fields().len());
        if pk.iter().any(|k| *k >= decoded) {
            return Err(PlanError::user(
                "0A000",
                "an INCLUDEd column cannot be part of the primary key yet",
            ));
        }
        let value_schema = Arc::new(schema.project(&(0..decoded).collect::<Vec<_>>())?);
        let (splits, errors): (Vec<Box<dyn Split>>, Arc<SourceErrors>) = match connector.as_str() {
            "kafka" => {
                if header {
                    return Err(PlanError::user(
                        "22023",
                        "Kafka records have no header line: use ENCODE CSV (without_header = 'true')",
                    ));
                }
                encoding.check_records().map_err(options_error)?;
                let c = KafkaConfig::from_options(&options, raw_schema(), Encoding::Raw)
                    .map_err(options_error)?;
                let splits = c
                    .splits()
                    .map_err(options_error)?
                    .into_iter()
                    .map(|s| Box::new(s) as Box<dyn Split>)
                    .collect();
                (splits, Arc::new(SourceErrors::new(DEFAULT_KEPT)))
            }
            "filesystem" | "posix_fs" | "s3" => {
                // Whole files (Parquet, Avro) are decoded by the split; records (lines)
                // come raw and are decoded here.
                let (columns, read_as) = if encoding.is_whole_file() {
                    (Arc::clone(&value_schema), encoding.clone())
                } else if encoding.is_avro() || encoding.is_protobuf() {
                    (raw_schema(), encoding.clone())
                } else {
                    (raw_schema(), Encoding::Raw)
                };
                let c = if connector == "s3" {
                    FilesystemConfig::from_s3_options(&options, columns, read_as, header)
                } else {
                    FilesystemConfig::from_options(&options, columns, read_as, header)
                }
                .map_err(options_error)?;
                let splits = c
                    .splits()
                    .into_iter()
                    .map(|s| Box::new(s) as Box<dyn Split>)
                    .collect();
                (splits, Arc::clone(&c.errors))
            }
            "nexmark" | "datagen" => {
                return Err(PlanError::user(
                    "0A000",
                    format!("a table cannot read the {connector} generator yet; use CREATE SOURCE"),
                ))
            }
            other => {
                return Err(PlanError::user(
                    "22023",
                    format!("unknown connector '{other}' for a table (kafka, filesystem, s3)"),
                ))
            }
        };
        options.check_all_used().map_err(options_error)?;
        if let Encoding::Protobuf(proto) = &encoding {
            // With a registry, against the topic's latest schema when it has one (later
            // schemas are checked as their records come).
            let subject = format!("{}-value", options.get("topic").unwrap_or_default());
            let files = if proto.is_registry() {
                proto.latest(&subject).map_err(options_error)?
            } else {
                Some(Vec::new())
            };
            if let Some(files) = files {
                proto.check(&value_schema, &files).map_err(options_error)?;
            }
        }
        let key_schema = Arc::new(Schema::new(
            pk.iter()
                .map(|i| schema.field(*i).as_ref().clone().with_nullable(true))
                .collect::<Vec<Field>>(),
        ));
        let row_fields: Fields = value_schema
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        let change = vec![
            Field::new("before", DataType::Struct(row_fields.clone()), true),
            Field::new("after", DataType::Struct(row_fields), true),
            Field::new("op", DataType::Utf8, true),
        ];
        let mut envelope = change.clone();
        envelope.push(Field::new(
            "payload",
            DataType::Struct(Fields::from(change)),
            true,
        ));
        let written = vec![None; splits.len()];
        Ok(Self {
            splits,
            written,
            format: table_format,
            encoding,
            schema,
            value_schema,
            includes,
            key_schema,
            envelope: Arc::new(Schema::new(envelope)),
            offsets_table,
            errors,
            wants_more: false,
        })
    }

    pub fn errors(&self) -> Arc<SourceErrors> {
        Arc::clone(&self.errors)
    }

    pub fn offsets_table(&self) -> StateTableId {
        self.offsets_table
    }

    /// Whether a split had more records than one epoch takes.
    pub fn wants_more(&self) -> bool {
        self.wants_more
    }

    /// Continues each split after the committed offsets (key: split index, u32 BE).
    pub fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        for (k, v) in entries {
            let index = k
                .as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| PlanError::Internal("bad split index in a table's offsets".into()))?;
            let offset = v
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| PlanError::Internal("bad offset in a table's offsets".into()))?;
            if let Some(s) = self.splits.get_mut(index as usize) {
                s.seek(offset);
                self.written[index as usize] = Some(offset);
            }
        }
        Ok(())
    }

    /// Reads what the splits have for this epoch, applies it to `table` and writes the
    /// new offsets into `state`.
    pub fn poll(&mut self, table: &mut TableState, state: &mut StateWriter) -> Result<()> {
        self.wants_more = false;
        for i in 0..self.splits.len() {
            let before = self.splits[i].offset();
            let Some(raw) = self.splits[i]
                .next_batch(MAX_ROWS_PER_EPOCH)
                .map_err(|e| PlanError::user("08000", e.to_string()))?
            else {
                continue;
            };
            if raw.num_rows() >= MAX_ROWS_PER_EPOCH && !self.splits[i].caught_up() {
                self.wants_more = true;
            }
            if raw.num_rows() > 0 {
                if let Err(e) = self.prepare(&raw) {
                    // The schema registry is away: these records wait for it.
                    tracing::warn!(split = i, error = %e, "connector table: cannot decode records yet; retrying");
                    self.splits[i].seek(before);
                    continue;
                }
                self.apply(i, &raw, table)?;
            }
            let offset = self.splits[i].offset();
            if self.written[i] != Some(offset) {
                state.put(
                    self.offsets_table,
                    &(i as u32).to_be_bytes(),
                    &offset.to_le_bytes(),
                );
                self.written[i] = Some(offset);
            }
        }
        Ok(())
    }

    /// Fetches the Avro or Protobuf schemas `raw`'s records need, before any of them is
    /// applied.
    fn prepare(&self, raw: &RecordBatch) -> Result<(), ConnectorError> {
        if self.encoding.is_whole_file() {
            return Ok(());
        }
        let keys = raw.column(0).as_binary::<i32>();
        let values = raw.column(1).as_binary::<i32>();
        if let Encoding::Protobuf(proto) = &self.encoding {
            // FORMAT PLAIN only.
            return proto.prepare(values.iter().flatten());
        }
        let Encoding::Avro(avro) = &self.encoding else {
            return Ok(());
        };
        match self.format {
            TableFormat::Plain => avro.prepare(&self.value_schema, values.iter().flatten()),
            TableFormat::Upsert => {
                avro.prepare(&self.value_schema, values.iter().flatten())?;
                let deletes = (0..raw.num_rows())
                    .filter(|i| values.is_null(*i) && keys.is_valid(*i))
                    .map(|i| keys.value(i));
                avro.prepare(&self.key_schema, deletes)
            }
            TableFormat::Debezium => avro.prepare(&self.envelope, values.iter().flatten()),
        }
    }

    /// Applies one split's raw records, in order.
    fn apply(&self, split: usize, raw: &RecordBatch, table: &mut TableState) -> Result<()> {
        if self.encoding.is_whole_file() {
            // Parquet and Avro files (FORMAT PLAIN): the split decoded the rows and
            // skipped the files it could not read.
            return self.upsert(table, raw.clone());
        }
        let keys = raw.column(0).as_binary::<i32>();
        let values = raw.column(1).as_binary::<i32>();
        let offsets = raw.column(2).as_primitive::<arrow::datatypes::UInt64Type>();
        let split_name = split.to_string();
        match self.format {
            TableFormat::Plain => {
                let all: Vec<u32> = (0..raw.num_rows() as u32).collect();
                let (rows, kept) = self.decode_with_offsets(
                    &self.encoding,
                    &self.value_schema,
                    values,
                    offsets,
                    &all,
                    &split_name,
                )?;
                self.upsert(table, self.with_includes(rows, &kept, raw, split)?)
            }
            TableFormat::Upsert => {
                let kinds: Vec<bool> = (0..raw.num_rows()).map(|i| values.is_valid(i)).collect();
                for (is_upsert, run) in runs(&kinds) {
                    if is_upsert {
                        let (rows, kept) = self.decode_with_offsets(
                            &self.encoding,
                            &self.value_schema,
                            values,
                            offsets,
                            &run,
                            &split_name,
                        )?;
                        self.upsert(table, self.with_includes(rows, &kept, raw, split)?)?;
                    } else {
                        let k = self.decode(
                            &self.encoding,
                            &self.key_schema,
                            keys,
                            offsets,
                            &run,
                            &split_name,
                        )?;
                        self.delete(table, k.columns())?;
                    }
                }
                Ok(())
            }
            TableFormat::Debezium => {
                let present: Vec<u32> = (0..raw.num_rows() as u32)
                    .filter(|i| values.is_valid(*i as usize))
                    .collect();
                let (env, env_offsets) = self.decode_with_offsets(
                    &self.encoding,
                    &self.envelope,
                    values,
                    offsets,
                    &present,
                    &split_name,
                )?;
                self.apply_debezium(&env, &env_offsets, raw, split, table)
            }
        }
    }

    /// Decodes the byte strings at `rows` of `column` (NULLs and bad ones are logged and
    /// left out).
    fn decode(
        &self,
        encoding: &Encoding,
        schema: &SchemaRef,
        column: &arrow::array::BinaryArray,
        offsets: &arrow::array::UInt64Array,
        rows: &[u32],
        split: &str,
    ) -> Result<RecordBatch> {
        Ok(self
            .decode_with_offsets(encoding, schema, column, offsets, rows, split)?
            .0)
    }

    /// [`Ingest::decode`], with the offset of each decoded row's record.
    fn decode_with_offsets(
        &self,
        encoding: &Encoding,
        schema: &SchemaRef,
        column: &arrow::array::BinaryArray,
        offsets: &arrow::array::UInt64Array,
        rows: &[u32],
        split: &str,
    ) -> Result<(RecordBatch, Vec<u64>)> {
        let mut buf = Vec::new();
        let mut records = Vec::with_capacity(rows.len());
        for &i in rows {
            let i = i as usize;
            if column.is_null(i) {
                self.errors.record(
                    split,
                    offsets.value(i),
                    "the record has no key or value",
                    b"",
                );
                continue;
            }
            let start = buf.len();
            buf.extend_from_slice(column.value(i));
            records.push(Record {
                offset: offsets.value(i),
                start,
                end: buf.len(),
            });
            buf.push(b'\n');
        }
        decode_records_with_offsets(encoding, schema, &buf, &records, split, &self.errors)
            .map_err(|e| PlanError::user("22000", e.to_string()))
    }

    /// `rows` (decoded from the records at `offsets` of `raw`, split `split`) followed by
    /// the INCLUDEd columns.
    fn with_includes(
        &self,
        rows: RecordBatch,
        offsets: &[u64],
        raw: &RecordBatch,
        split: usize,
    ) -> Result<RecordBatch> {
        if self.includes.is_empty() {
            return Ok(rows);
        }
        let raw_offsets = raw.column(2).as_primitive::<UInt64Type>().values();
        let idx = offsets
            .iter()
            .map(|o| {
                raw_offsets
                    .binary_search(o)
                    .map(|i| i as u32)
                    .map_err(|_| PlanError::Internal(format!("record {o} is not in its poll")))
            })
            .collect::<Result<Vec<u32>>>()?;
        let idx = UInt32Array::from(idx);
        let mut columns = rows.columns().to_vec();
        for include in &self.includes {
            columns.push(match include {
                Include::Key => take(raw.column(0), &idx, None)?,
                Include::Partition => Arc::new(Int32Array::from(vec![split as i32; idx.len()])),
                Include::Offset => cast(&take(raw.column(2), &idx, None)?, &DataType::Int64)?,
                Include::Timestamp => {
                    let ms = take(raw.column(3), &idx, None)?;
                    Arc::new(
                        ms.as_primitive::<Int64Type>()
                            .unary::<_, TimestampMicrosecondType>(|v| v.saturating_mul(1000))
                            .with_timezone("+00:00"),
                    )
                }
            });
        }
        let fields: Vec<Field> = rows
            .schema()
            .fields()
            .iter()
            .chain(self.schema.fields().iter().skip(rows.num_columns()))
            .map(|f| f.as_ref().clone())
            .collect();
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    fn upsert(&self, table: &mut TableState, rows: RecordBatch) -> Result<()> {
        let rows = conform(rows, &self.schema)?;
        if table.primary_key().is_empty() {
            table.insert(rows)?;
            return Ok(());
        }
        let skipped = table.upsert(rows)?;
        if skipped > 0 {
            tracing::warn!(skipped, "connector table: rows with a NULL key skipped");
        }
        Ok(())
    }

    fn delete(&self, table: &mut TableState, keys: &[ArrayRef]) -> Result<()> {
        let keys: Vec<ArrayRef> = keys
            .iter()
            .zip(table.primary_key().to_vec())
            .map(|(k, i)| Ok(cast(k, self.schema.field(i).data_type())?))
            .collect::<Result<_>>()?;
        table.delete_keys(&keys)?;
        Ok(())
    }

    fn apply_debezium(
        &self,
        env: &RecordBatch,
        offsets: &[u64],
        raw: &RecordBatch,
        split_index: usize,
        table: &mut TableState,
    ) -> Result<()> {
        let split = split_index.to_string();
        let split = split.as_str();
        // The envelope's fields, from the top level or from `payload`.
        let payload = env.column(3).as_struct();
        let pick = |top: usize| -> ArrayRef {
            let direct = env.column(top);
            if direct.null_count() == 0 || payload.null_count() == payload.len() {
                return Arc::clone(direct);
            }
            let nested = payload.column(top);
            arrow::compute::kernels::zip::zip(
                &arrow::compute::is_not_null(direct)
                    .unwrap_or_else(|_| arrow::array::BooleanArray::from(vec![true; direct.len()])),
                direct,
                nested,
            )
            .unwrap_or_else(|_| Arc::clone(direct))
        };
        let before = pick(0);
        let after = pick(1);
        let op = pick(2);
        let op = op.as_string::<i32>();
        // true: upsert `after`; false: delete `before`; other ops are skipped.
        let mut kinds = Vec::with_capacity(env.num_rows());
        let mut keep = Vec::with_capacity(env.num_rows());
        for i in 0..env.num_rows() {
            let kind = match op.is_valid(i).then(|| op.value(i)) {
                Some("c" | "r" | "u") if after.is_valid(i) => Some(true),
                Some("d") if before.is_valid(i) => Some(false),
                _ => None,
            };
            if let Some(k) = kind {
                kinds.push(k);
                keep.push(i as u32);
            } else {
                let op = if op.is_valid(i) { op.value(i) } else { "" };
                self.errors.record(
                    split,
                    offsets.get(i).copied().unwrap_or(0),
                    "a Debezium change without a known op (c, r, u, d) and its row",
                    op.as_bytes(),
                );
            }
        }
        for (is_upsert, run) in runs(&kinds) {
            let idx = UInt32Array::from(run.iter().map(|r| keep[*r as usize]).collect::<Vec<_>>());
            let side = if is_upsert { &after } else { &before };
            let rows = take(side.as_ref(), &idx, None)?;
            let rows = RecordBatch::from(rows.as_struct().clone());
            if is_upsert {
                let kept: Vec<u64> = run
                    .iter()
                    .map(|r| offsets[keep[*r as usize] as usize])
                    .collect();
                self.upsert(table, self.with_includes(rows, &kept, raw, split_index)?)?;
            } else {
                let keys: Vec<ArrayRef> = table
                    .primary_key()
                    .iter()
                    .map(|i| Arc::clone(rows.column(*i)))
                    .collect();
                self.delete(table, &keys)?;
            }
        }
        Ok(())
    }
}

/// Consecutive runs of equal kinds: (kind, positions).
fn runs(kinds: &[bool]) -> Vec<(bool, Vec<u32>)> {
    let mut out: Vec<(bool, Vec<u32>)> = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        match out.last_mut() {
            Some((kind, run)) if kind == k => run.push(i as u32),
            _ => out.push((*k, vec![i as u32])),
        }
    }
    out
}

/// `rows` under the table's schema (same columns in order; types cast). Rows with a NULL
/// in a NOT NULL column are left out (and logged).
fn conform(rows: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut valid: Option<arrow::array::BooleanArray> = None;
    for (c, f) in rows.columns().iter().zip(schema.fields()) {
        if !f.is_nullable() && c.null_count() > 0 {
            let here = arrow::compute::is_not_null(c)?;
            valid = Some(match valid {
                None => here,
                Some(v) => arrow::compute::and(&v, &here)?,
            });
        }
    }
    let rows = match valid {
        Some(v) => {
            let dropped = v.len() - v.true_count();
            tracing::warn!(
                dropped,
                "connector table: rows with NULL in a NOT NULL column skipped"
            );
            arrow::compute::filter_record_batch(&rows, &v)?
        }
        None => rows,
    };
    let columns = rows
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            Ok(if c.data_type() == f.data_type() {
                Arc::clone(c)
            } else {
                cast(c, f.data_type())?
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_keep_order() {
        assert_eq!(
            runs(&[true, true, false, true]),
            vec![(true, vec![0, 1]), (false, vec![2]), (true, vec![3])]
        );
        assert!(runs(&[]).is_empty());
    }
}
