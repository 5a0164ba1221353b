//! Top-N per partition over a changelog: `ORDER BY ... LIMIT n OFFSET m`,
//! `ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) ... WHERE rn <= n` and
//! `DISTINCT ON`.
//!
//! Each partition keeps all its rows ordered by `(order key, row)`: the order key is the
//! row's ORDER BY values in Arrow's order-preserving encoding (with each column's
//! direction and NULL placement), and the whole row breaks ties, so the order is total
//! and the same on every worker and after a restart. When a partition is first touched
//! in an epoch its current output is noted; at the barrier the new output is compared
//! with it and only the difference is emitted.
//!
//! State: one entry per kept row, `ordered_row_key(partition, order key, row)` →
//! multiplicity, so an epoch writes only the rows it changed. A small top-N over an
//! input that only adds rows (`ROW_NUMBER() ... <= 1` deduplication, top 3 per key)
//! instead keeps one entry per partition holding its few rows: a new first row is one
//! write under a short key, not a write and a delete under two keys as long as the rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::AHashMap as HashMap;
use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::codec::{ordered_row_key, split_ordered_key, split_ordered_row, Reader, Writer};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::ops::watermark::{behind_watermarks, raise};
use crate::row::{Partitioner, RowCodec};

/// The fixed settings of a top-N.
#[derive(Debug, Clone)]
pub struct TopNSpec {
    /// Partition expressions over the input (none: one partition).
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    /// Order expressions over the input, with direction and NULL placement.
    pub order: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
    /// Rows skipped at the start of each partition.
    pub offset: usize,
    /// Rows kept per partition after the offset.
    pub limit: usize,
    /// Whether the output has one more column: the row's 1-based position in its
    /// partition (`ROW_NUMBER()`, UInt64).
    pub row_number: bool,
    pub input_schema: SchemaRef,
    /// The input columns, then the row number if `row_number`.
    pub output_schema: SchemaRef,
    /// The input only ever adds rows (the planner proves it): a row pushed out of a
    /// partition's first `offset + limit` can never come back, so it is not kept. A
    /// retraction arriving anyway is refused as a bug.
    pub append_only_input: bool,
}

impl TopNSpec {
    fn types(
        exprs: impl Iterator<Item = Arc<dyn PhysicalExpr>>,
        schema: &SchemaRef,
    ) -> Result<Vec<DataType>> {
        exprs.map(|e| Ok(e.data_type(schema)?)).collect()
    }

    /// Evaluates the partition columns of a batch.
    pub fn partition_columns(&self, data: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.partition
            .iter()
            .map(|e| Ok(e.evaluate(data)?.into_array(data.num_rows())?))
            .collect()
    }

    fn order_columns(&self, data: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.order
            .iter()
            .map(|(e, _)| Ok(e.evaluate(data)?.into_array(data.num_rows())?))
            .collect()
    }

    /// The codec of the partition key.
    pub fn partition_codec(&self) -> Result<RowCodec> {
        RowCodec::new(Self::types(
            self.partition.iter().cloned(),
            &self.input_schema,
        )?)
    }
}

/// A partition's rows: (order key, row) → multiplicity.
type Rows = BTreeMap<(Vec<u8>, Vec<u8>), i64>;

/// A partition's output: (row, row number or 0) → multiplicity.
type Output = HashMap<(Vec<u8>, u64), i64>;

/// The most rows (`offset + limit`) a partition over an append-only input keeps in one
/// state entry; more, and each row is an entry of its own.
const PACKED_ROWS: usize = 8;

pub struct TopNOp {
    spec: TopNSpec,
    partition_codec: RowCodec,
    order_codec: RowCodec,
    row_codec: RowCodec,
    table: StateTableId,
    partitions: HashMap<Vec<u8>, Rows>,
    /// Partitions touched this epoch → their output before the epoch.
    before: HashMap<Vec<u8>, Output>,
    /// Entries changed this epoch, as their state keys ([`ordered_row_key`]); unused
    /// when `packed`.
    dirty: Vec<Vec<u8>>,
    /// One state entry per partition: its key → `(len ++ order key, len ++ row,
    /// multiplicity (i64))...`.
    packed: bool,
    /// Per partition expression: the watermark of its input column (plain columns only).
    watermarks: Vec<Option<ScalarValue>>,
    purged_at: Vec<Option<ScalarValue>>,
}

impl TopNOp {
    pub fn try_new(spec: TopNSpec, table: StateTableId) -> Result<Self> {
        let order_types = TopNSpec::types(
            spec.order.iter().map(|(e, _)| Arc::clone(e)),
            &spec.input_schema,
        )?;
        let options = spec.order.iter().map(|(_, o)| *o).collect();
        Ok(Self {
            partition_codec: spec.partition_codec()?,
            order_codec: RowCodec::with_options(order_types, options)?,
            row_codec: RowCodec::for_schema(&spec.input_schema)?,
            watermarks: vec![None; spec.partition.len()],
            purged_at: vec![None; spec.partition.len()],
            packed: spec.append_only_input && spec.offset.saturating_add(spec.limit) <= PACKED_ROWS,
            spec,
            table,
            partitions: HashMap::new(),
            before: HashMap::new(),
            dirty: Vec::new(),
        })
    }

    /// The rows a partition outputs now, with their row numbers (0 without them).
    fn output(&self, partition: &[u8]) -> Output {
        let mut out = Output::new();
        let Some(rows) = self.partitions.get(partition) else {
            return out;
        };
        let end = self.spec.offset.saturating_add(self.spec.limit);
        let mut position = 0usize;
        for ((_, row), &count) in rows {
            if position >= end {
                break;
            }
            let count = usize::try_from(count).unwrap_or(0);
            let first = position.max(self.spec.offset);
            let last = (position + count).min(end);
            if last > first {
                if self.spec.row_number {
                    for p in first..last {
                        out.insert((row.clone(), p as u64 + 1), 1);
                    }
                } else {
                    *out.entry((row.clone(), 0)).or_insert(0) += (last - first) as i64;
                }
            }
            position += count;
        }
        out
    }
}

impl TopNOp {
    /// Drops the partitions whose key lies behind a watermark (a window's top-N once the
    /// window closed): no row can reach them any more, and their output stays as it is.
    fn purge_behind_watermarks(&mut self, state: &mut StateWriter) -> Result<()> {
        if self.watermarks == self.purged_at || self.partitions.is_empty() {
            return Ok(());
        }
        self.purged_at = self.watermarks.clone();
        let keys: Vec<Vec<u8>> = self.partitions.keys().cloned().collect();
        let columns = self
            .partition_codec
            .decode(keys.iter().map(Vec::as_slice))?;
        let watermarks: Vec<Option<&ScalarValue>> =
            self.watermarks.iter().map(Option::as_ref).collect();
        let Some(behind) = behind_watermarks(&columns, &watermarks)? else {
            return Ok(());
        };
        for (key, _) in keys.iter().zip(behind).filter(|(_, b)| *b) {
            if let Some(rows) = self.partitions.remove(key) {
                if self.packed {
                    state.delete(self.table, key);
                    continue;
                }
                for (order, row) in rows.keys() {
                    state.delete(self.table, &ordered_row_key(key, order, row));
                }
            }
        }
        Ok(())
    }
}

impl Operator for TopNOp {
    fn state_rows(&self) -> usize {
        self.partitions.values().map(BTreeMap::len).sum()
    }

    fn name(&self) -> &'static str {
        "TopN"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let data = batch.data();
        let partitions = if self.partition_codec.is_empty() {
            None
        } else {
            Some(
                self.partition_codec
                    .encode(&self.spec.partition_columns(data)?)?,
            )
        };
        let orders = self.order_codec.encode(&self.spec.order_columns(data)?)?;
        let rows = self.row_codec.encode(data.columns())?;
        let append_only = self.spec.append_only_input;
        let end = self.spec.offset.saturating_add(self.spec.limit);
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 {
                continue;
            }
            let partition: &[u8] = partitions.as_ref().map(|p| p.row(i).data()).unwrap_or(&[]);
            if append_only {
                if w < 0 {
                    return Err(DataflowError::Internal(
                        "a retraction reached a top-N over an append-only input".into(),
                    ));
                }
                // A row after the last of a full partition's first `end` rows changes
                // nothing, now or later.
                let beyond = end == 0
                    || match self.partitions.get(partition) {
                        Some(bucket) if bucket.len() >= end => {
                            bucket.last_key_value().is_some_and(|((o, r), _)| {
                                (orders.row(i).data(), rows.row(i).data())
                                    > (o.as_slice(), r.as_slice())
                            })
                        }
                        _ => false,
                    };
                if beyond {
                    continue;
                }
            }
            if !self.before.contains_key(partition) {
                let output = self.output(partition);
                self.before.insert(partition.to_vec(), output);
            }
            let (order, row) = (orders.row(i).data(), rows.row(i).data());
            if !self.packed {
                self.dirty.push(ordered_row_key(partition, order, row));
            }
            let bucket = match self.partitions.get_mut(partition) {
                Some(b) => b,
                None => self.partitions.entry(partition.to_vec()).or_default(),
            };
            let entry = (order.to_vec(), row.to_vec());
            match bucket.get_mut(&entry) {
                Some(count) => {
                    *count += w;
                    if *count == 0 {
                        bucket.remove(&entry);
                        if bucket.is_empty() {
                            self.partitions.remove(partition);
                        }
                    }
                }
                None => {
                    bucket.insert(entry, w);
                    if append_only {
                        // Entries past the first `end` hold rows past position `end`
                        // (each entry holds at least one row): they can never be output
                        // again.
                        while bucket.len() > end {
                            if let Some(((order, row), _)) = bucket.pop_last() {
                                if !self.packed {
                                    self.dirty.push(ordered_row_key(partition, &order, &row));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        // The lookup key, its buffers reused from entry to entry.
        let mut entry: (Vec<u8>, Vec<u8>) = Default::default();
        for key in std::mem::take(&mut self.dirty) {
            let (partition, order, row) = split_ordered_key(&key)?;
            entry.0.clear();
            entry.0.extend_from_slice(order);
            entry.1.clear();
            entry.1.extend_from_slice(row);
            match self.partitions.get(partition).and_then(|p| p.get(&entry)) {
                Some(c) if *c < 0 => {
                    return Err(DataflowError::Internal(format!(
                        "top-N row multiplicity would become {c}"
                    )))
                }
                Some(c) => state.put(self.table, &key, &c.to_le_bytes()),
                None => state.delete(self.table, &key),
            }
        }
        let mut diff: Output = HashMap::new();
        let mut packed = Writer::default();
        for (partition, before) in std::mem::take(&mut self.before) {
            if self.packed {
                match self.partitions.get(&partition) {
                    Some(rows) => {
                        for ((order, row), count) in rows {
                            packed.bytes(order).bytes(row).i64(*count);
                        }
                        state.put(self.table, &partition, &packed.take());
                    }
                    None => state.delete(self.table, &partition),
                }
            }
            for (k, w) in before {
                *diff.entry(k).or_insert(0) -= w;
            }
            for (k, w) in self.output(&partition) {
                *diff.entry(k).or_insert(0) += w;
            }
        }
        diff.retain(|_, w| *w != 0);
        if diff.is_empty() {
            return self.purge_behind_watermarks(state);
        }
        let rows: Vec<(Vec<u8>, u64, i64)> =
            diff.into_iter().map(|((r, n), w)| (r, n, w)).collect();
        let mut columns = self
            .row_codec
            .decode(rows.iter().map(|(r, _, _)| r.as_slice()))?;
        if self.spec.row_number {
            columns.push(Arc::new(
                rows.iter().map(|(_, n, _)| *n).collect::<UInt64Array>(),
            ));
        }
        let data = batch_with_schema(&self.spec.output_schema, columns, rows.len())?;
        out.push(ChangeBatch::try_new(
            data,
            rows.iter().map(|(_, _, w)| *w).collect::<Vec<i64>>().into(),
        )?);
        self.purge_behind_watermarks(state)
    }

    fn on_watermark(&mut self, _port: usize, column: usize, value: &ScalarValue) -> Result<()> {
        for (e, slot) in self.spec.partition.iter().zip(&mut self.watermarks) {
            if e.downcast_ref::<Column>().map(Column::index) == Some(column) {
                raise(slot, value);
            }
        }
        Ok(())
    }

    fn state_tables(&self) -> Vec<StateTableId> {
        vec![self.table]
    }

    fn restore(
        &mut self,
        _table: StateTableId,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        if self.packed {
            for (partition, v) in entries {
                if !partitioner.owns(partition) {
                    continue;
                }
                let mut rows = Rows::new();
                let mut r = Reader::new(v);
                while !r.is_empty() {
                    let order = r.bytes()?.to_vec();
                    let row = r.bytes()?.to_vec();
                    rows.insert((order, row), r.i64()?);
                }
                self.partitions.insert(partition.clone(), rows);
            }
            return Ok(());
        }
        for (k, v) in entries {
            let (partition, order, row, count) = split_ordered_row(k, v)?;
            if !partitioner.owns(partition) {
                continue;
            }
            self.partitions
                .entry(partition.to_vec())
                .or_default()
                .insert((order.to_vec(), row.to_vec()), count);
        }
        Ok(())
    }
}
