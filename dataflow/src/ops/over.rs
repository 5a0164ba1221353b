//! Window functions over partitions (`f(...) OVER (PARTITION BY p ORDER BY o ROWS ...)`):
//! LAG/LEAD, ROW_NUMBER/RANK, running and sliding aggregates, anything DataFusion
//! evaluates as a window expression.
//!
//! The operator keeps each partition's rows in order. A change to a partition can change
//! the results of its other rows (a running sum changes for every later row, LAG for the
//! next one), so for each partition touched in an epoch it evaluates the window
//! functions over the partition's rows before and after the epoch, with DataFusion's own
//! window expressions over one Arrow batch per partition, and emits the difference
//! between the two result sets. The cost of a change is the size of its partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::WindowExpr;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::codec::{ordered_row_key, split_ordered_row};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::row::{Partitioner, RowCodec};

/// The fixed settings of a window-function node.
#[derive(Debug, Clone)]
pub struct OverSpec {
    /// PARTITION BY expressions over the input (none: one partition).
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    /// ORDER BY expressions over the input with their direction, shared by all functions.
    pub order: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
    /// The window functions, evaluated over one partition's rows in order.
    pub functions: Vec<Arc<dyn WindowExpr>>,
    pub input_schema: SchemaRef,
    /// The input columns, then one column per function.
    pub output_schema: SchemaRef,
}

impl OverSpec {
    pub fn partition_columns(&self, data: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.partition
            .iter()
            .map(|e| Ok(e.evaluate(data)?.into_array(data.num_rows())?))
            .collect()
    }

    pub fn partition_codec(&self) -> Result<RowCodec> {
        RowCodec::new(
            self.partition
                .iter()
                .map(|e| e.data_type(&self.input_schema))
                .collect::<Result<Vec<_>, _>>()?,
        )
    }
}

/// A partition's rows: (order key, row) → multiplicity.
type Part = BTreeMap<(Vec<u8>, Vec<u8>), i64>;

pub struct OverOp {
    spec: OverSpec,
    partition_codec: RowCodec,
    order_codec: RowCodec,
    row_codec: RowCodec,
    output_codec: RowCodec,
    table: StateTableId,
    parts: HashMap<Vec<u8>, Part>,
    /// Partitions touched this epoch → their result rows before it.
    before: HashMap<Vec<u8>, HashMap<Vec<u8>, i64>>,
    /// State entries changed this epoch: (partition, order key, row).
    dirty: HashSet<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl OverOp {
    pub fn try_new(spec: OverSpec, table: StateTableId) -> Result<Self> {
        let order_types = spec
            .order
            .iter()
            .map(|(e, _)| e.data_type(&spec.input_schema))
            .collect::<Result<Vec<_>, _>>()?;
        let order_options = spec.order.iter().map(|(_, o)| *o).collect();
        Ok(Self {
            partition_codec: spec.partition_codec()?,
            order_codec: RowCodec::with_options(order_types, order_options)?,
            row_codec: RowCodec::for_schema(&spec.input_schema)?,
            output_codec: RowCodec::for_schema(&spec.output_schema)?,
            spec,
            table,
            parts: HashMap::new(),
            before: HashMap::new(),
            dirty: HashSet::new(),
        })
    }

    /// The result rows of one partition (encoded output rows → multiplicity).
    fn results(&self, part: Option<&Part>) -> Result<HashMap<Vec<u8>, i64>> {
        let mut out = HashMap::new();
        let Some(part) = part.filter(|p| !p.is_empty()) else {
            return Ok(out);
        };
        // Each copy of a row is a row of the partition.
        let rows: Vec<&[u8]> = part
            .iter()
            .flat_map(|((_, row), n)| {
                std::iter::repeat_n(row.as_slice(), usize::try_from(*n).unwrap_or(0))
            })
            .collect();
        if rows.is_empty() {
            return Ok(out);
        }
        let n = rows.len();
        let mut columns = self.row_codec.decode(rows)?;
        let batch = batch_with_schema(&self.spec.input_schema, columns.clone(), n)?;
        for f in &self.spec.functions {
            let values = f.evaluate(&batch)?;
            let ty = self
                .spec
                .output_schema
                .field(columns.len())
                .data_type()
                .clone();
            columns.push(if values.data_type() == &ty {
                values
            } else {
                arrow::compute::cast(&values, &ty)?
            });
        }
        let encoded = self.output_codec.encode(&columns)?;
        for i in 0..n {
            *out.entry(encoded.row(i).data().to_vec()).or_insert(0) += 1;
        }
        Ok(out)
    }
}

impl Operator for OverOp {
    fn state_rows(&self) -> usize {
        self.parts.values().map(BTreeMap::len).sum()
    }

    fn name(&self) -> &'static str {
        "OverWindow"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let data = batch.data();
        let keys = if self.partition_codec.is_empty() {
            None
        } else {
            Some(
                self.partition_codec
                    .encode(&self.spec.partition_columns(data)?)?,
            )
        };
        let order_cols = self
            .spec
            .order
            .iter()
            .map(|(e, _)| Ok(e.evaluate(data)?.into_array(data.num_rows())?))
            .collect::<Result<Vec<_>>>()?;
        let orders = if self.order_codec.is_empty() {
            None
        } else {
            Some(self.order_codec.encode(&order_cols)?)
        };
        let rows = self.row_codec.encode(data.columns())?;
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 {
                continue;
            }
            let key: &[u8] = keys.as_ref().map(|k| k.row(i).data()).unwrap_or(&[]);
            if !self.before.contains_key(key) {
                let before = self.results(self.parts.get(key))?;
                self.before.insert(key.to_vec(), before);
            }
            let order = orders
                .as_ref()
                .map(|o| o.row(i).data().to_vec())
                .unwrap_or_default();
            let slot = (order.clone(), rows.row(i).data().to_vec());
            let part = self.parts.entry(key.to_vec()).or_default();
            let count = part.get(&slot).copied().unwrap_or(0) + w;
            if count == 0 {
                part.remove(&slot);
            } else {
                part.insert(slot.clone(), count);
            }
            self.dirty.insert((key.to_vec(), slot.0, slot.1));
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let mut diff: HashMap<Vec<u8>, i64> = HashMap::new();
        for (key, before) in std::mem::take(&mut self.before) {
            for (row, n) in before {
                *diff.entry(row).or_insert(0) -= n;
            }
            for (row, n) in self.results(self.parts.get(&key))? {
                *diff.entry(row).or_insert(0) += n;
            }
        }
        for (key, order, row) in std::mem::take(&mut self.dirty) {
            let count = self
                .parts
                .get(&key)
                .and_then(|p| p.get(&(order.clone(), row.clone())))
                .copied();
            let k = ordered_row_key(&key, &order, &row);
            match count {
                Some(c) if c < 0 => {
                    return Err(DataflowError::Internal(format!(
                        "window row multiplicity would become {c}"
                    )))
                }
                Some(c) => state.put(self.table, &k, &c.to_le_bytes()),
                None => state.delete(self.table, &k),
            }
        }
        self.parts.retain(|_, p| !p.is_empty());
        let changes: Vec<(&Vec<u8>, i64)> = diff
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(r, n)| (r, *n))
            .collect();
        if !changes.is_empty() {
            let columns = self
                .output_codec
                .decode(changes.iter().map(|(r, _)| r.as_slice()))?;
            let data = batch_with_schema(&self.spec.output_schema, columns, changes.len())?;
            out.push(ChangeBatch::try_new(
                data,
                changes.iter().map(|(_, n)| *n).collect(),
            )?);
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
        for (k, v) in entries {
            let (key, order, row, count) = split_ordered_row(k, v)?;
            if !partitioner.owns(key) {
                continue;
            }
            self.parts
                .entry(key.to_vec())
                .or_default()
                .insert((order.to_vec(), row.to_vec()), count);
        }
        Ok(())
    }
}
