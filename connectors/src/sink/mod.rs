//! Sinks: where the changes of a view go.
//!
//! A sink sees each committed epoch's consolidated changes of one view (rows with
//! weights: +n inserts n copies, -n deletes n copies) and writes them in two phases
//! around the checkpoint that commits the epoch:
//!
//! 1. [`SinkWriter::prepare`] before the checkpoint: the epoch's output is made durable
//!    where readers do not see it yet;
//! 2. [`SinkWriter::commit`] once the checkpoint is durable: the output becomes visible.
//!
//! After a crash, [`SinkWriter::recover`] is told the last committed epoch: output
//! prepared for it or earlier is made visible, output prepared for a later epoch (whose
//! checkpoint never committed, so its changes will be computed again) is thrown away.
//! Each change therefore reaches readers exactly once.

pub mod blackhole;
pub mod filesystem;
pub mod kafka;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray, UInt32Array};
use arrow::buffer::NullBuffer;
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow_json::writer::LineDelimited;
use arrow_json::WriterBuilder;

use crate::error::{ConnectorError, Result};

/// How changes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// Inserted rows only. With `force_append_only` deletes are dropped; without it the
    /// planner only allows views that never delete.
    Plain { force_append_only: bool },
    /// Debezium-style envelopes: `{"before": null, "after": {...}, "op": "c"}` for an
    /// insert, `{"before": {...}, "after": null, "op": "d"}` for a delete.
    Debezium,
    /// Keyed records (Kafka only): the key's last row in the epoch, or a tombstone.
    Upsert,
}

/// Writes one view's changes; see the module docs for the protocol.
pub trait SinkWriter: Send + Sync {
    /// Makes `changes` (the epoch's rows and weights) durable but not yet visible. A
    /// sink that cannot keep them durable itself returns bytes (an outbox entry) that the
    /// engine commits with the epoch and hands back to [`SinkWriter::recover`].
    fn prepare(
        &mut self,
        epoch: u64,
        changes: &[(RecordBatch, Int64Array)],
    ) -> Result<Option<Vec<u8>>>;

    /// Makes what `prepare` wrote for `epoch` (and anything still undelivered) visible:
    /// its checkpoint is committed. An error stops the sink; trouble that may pass (a
    /// broker away) is kept for a later call instead.
    fn commit(&mut self, epoch: u64) -> Result<()>;

    /// Runs before the first write. After a restart whose last committed epoch is
    /// `committed`: publishes prepared output of epochs up to it and discards the rest;
    /// `outbox` holds the entries of committed epochs not yet reported delivered. A new
    /// sink passes 0, discarding what a sink whose creation never committed left.
    fn recover(&mut self, committed: u64, outbox: Vec<(u64, Vec<u8>)>) -> Result<()>;

    /// Epochs delivered since the last call: their outbox entries can go.
    fn delivered(&mut self) -> Vec<u64> {
        Vec::new()
    }

    /// Whether committed output still waits for delivery (`commit` should be retried).
    fn undelivered(&self) -> bool {
        false
    }
}

/// JSON lines and, for each line, the row of the batch it came from.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub rows: Vec<u32>,
}

impl Encoded {
    /// Each line without its newline.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty())
    }
}

/// The rows changes expand to in `format` (a row of weight ±n, n times), and whether
/// each is an insert. FORMAT PLAIN refuses deletes unless `force_append_only`, which drops
/// them.
fn expand(format: SinkFormat, weights: &Int64Array) -> Result<(Vec<u32>, Vec<bool>)> {
    let mut rows = Vec::new();
    let mut inserted = Vec::new();
    for (i, w) in weights.values().iter().enumerate() {
        match format {
            SinkFormat::Plain { force_append_only } => {
                if *w < 0 && !force_append_only {
                    return Err(ConnectorError::Write(
                        "a FORMAT PLAIN sink received a delete; use FORMAT DEBEZIUM or force_append_only = 'true'".into(),
                    ));
                }
                for _ in 0..(*w).max(0) {
                    rows.push(i as u32);
                    inserted.push(true);
                }
            }
            SinkFormat::Debezium | SinkFormat::Upsert => {
                for _ in 0..w.unsigned_abs() {
                    rows.push(i as u32);
                    inserted.push(*w > 0);
                }
            }
        }
    }
    Ok((rows, inserted))
}

/// The changes in the order a sink writes them: for `FORMAT DEBEZIUM`, every delete of
/// the epoch before any insert, so an update reads as the old row's delete, then the new
/// row's insert (a consumer keyed by the row's key ends with the new row); other formats
/// as they are.
pub fn in_write_order(
    format: SinkFormat,
    changes: &[(RecordBatch, Int64Array)],
) -> std::borrow::Cow<'_, [(RecordBatch, Int64Array)]> {
    if format != SinkFormat::Debezium {
        return std::borrow::Cow::Borrowed(changes);
    }
    let part = |keep: fn(i64) -> i64| {
        changes
            .iter()
            .map(move |(b, w)| (b.clone(), w.unary::<_, arrow::datatypes::Int64Type>(keep)))
    };
    std::borrow::Cow::Owned(part(|w| w.min(0)).chain(part(|w| w.max(0))).collect())
}

/// The columns of a Debezium envelope over rows of `fields`.
pub fn debezium_fields(fields: &Fields) -> Fields {
    Fields::from(vec![
        Field::new("before", DataType::Struct(fields.clone()), true),
        Field::new("after", DataType::Struct(fields.clone()), true),
        Field::new("op", DataType::Utf8, false),
    ])
}

/// Debezium envelopes of `rows` (already expanded): `after` and op `c` for an insert,
/// `before` and op `d` for a delete.
fn debezium_batch(rows: &RecordBatch, inserted: &[bool]) -> Result<RecordBatch> {
    let fields: Fields = rows.schema().fields().clone();
    let columns: Vec<ArrayRef> = rows.columns().to_vec();
    let deleted: Vec<bool> = inserted.iter().map(|i| !i).collect();
    let row_struct = |valid: Vec<bool>| -> Result<ArrayRef> {
        Ok(Arc::new(StructArray::try_new(
            fields.clone(),
            columns.clone(),
            Some(NullBuffer::from(valid)),
        )?))
    };
    let before = row_struct(deleted)?;
    let after = row_struct(inserted.to_vec())?;
    let op: ArrayRef = Arc::new(StringArray::from_iter_values(inserted.iter().map(|i| {
        if *i {
            "c"
        } else {
            "d"
        }
    })));
    let schema = Arc::new(Schema::new(debezium_fields(&fields)));
    Ok(RecordBatch::try_new(schema, vec![before, after, op])?)
}

/// Encodes changes as JSON lines in `format`; weights expand into that many lines.
pub fn encode_json(
    format: SinkFormat,
    batch: &RecordBatch,
    weights: &Int64Array,
) -> Result<Encoded> {
    if format == SinkFormat::Upsert {
        return Err(ConnectorError::Write(
            "FORMAT UPSERT records are keyed, not JSON lines".into(),
        ));
    }
    let mut out = Vec::new();
    let Some((records, rows)) = records(format, batch, weights)? else {
        return Ok(Encoded {
            bytes: out,
            rows: Vec::new(),
        });
    };
    write_lines(&mut out, &records)?;
    Ok(Encoded { bytes: out, rows })
}

/// The records changes are written as in `format` (FORMAT PLAIN: the rows, a row of
/// weight n n times; FORMAT DEBEZIUM: envelopes), each with the row of `batch` it came
/// from; `None` when there are none. Every encoding writes these.
pub fn records(
    format: SinkFormat,
    batch: &RecordBatch,
    weights: &Int64Array,
) -> Result<Option<(RecordBatch, Vec<u32>)>> {
    let (indices, inserted) = expand(format, weights)?;
    if indices.is_empty() {
        return Ok(None);
    }
    let rows = take_record_batch(batch, &UInt32Array::from(indices.clone()))?;
    let records = match format {
        SinkFormat::Debezium => debezium_batch(&rows, &inserted)?,
        _ => rows,
    };
    Ok(Some((records, indices)))
}

fn write_lines(out: &mut Vec<u8>, batch: &RecordBatch) -> Result<()> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(out);
    writer.write(batch)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("k", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
            (
                "v",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn plain_repeats_by_weight_and_refuses_deletes() {
        let out = encode_json(
            SinkFormat::Plain {
                force_append_only: false,
            },
            &batch(),
            &Int64Array::from(vec![2, 1]),
        )
        .unwrap();
        assert_eq!(out.rows, vec![0, 0, 1]);
        assert_eq!(
            String::from_utf8(out.bytes).unwrap(),
            "{\"k\":1,\"v\":\"a\"}\n{\"k\":1,\"v\":\"a\"}\n{\"k\":2,\"v\":null}\n"
        );
        assert!(encode_json(
            SinkFormat::Plain {
                force_append_only: false
            },
            &batch(),
            &Int64Array::from(vec![1, -1]),
        )
        .is_err());
        let forced = encode_json(
            SinkFormat::Plain {
                force_append_only: true,
            },
            &batch(),
            &Int64Array::from(vec![1, -1]),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(forced.bytes).unwrap(),
            "{\"k\":1,\"v\":\"a\"}\n"
        );
    }

    #[test]
    fn debezium_envelopes() {
        let out = encode_json(
            SinkFormat::Debezium,
            &batch(),
            &Int64Array::from(vec![1, -1]),
        )
        .unwrap();
        assert_eq!(out.lines().count(), 2);
        assert_eq!(
            String::from_utf8(out.bytes).unwrap(),
            "{\"before\":null,\"after\":{\"k\":1,\"v\":\"a\"},\"op\":\"c\"}\n\
             {\"before\":{\"k\":2,\"v\":null},\"after\":null,\"op\":\"d\"}\n"
        );
    }
}
