//! Inner equi-join of two changelogs.
//!
//! Each side keeps the multiset of its rows indexed by join key. A change ΔA on the left
//! is joined with the right side's current rows, then added to the left state; a change
//! ΔB on the right is joined with the (already updated) left rows. Processed in that
//! order within an epoch this yields ΔA⋈B + A⋈ΔB + ΔA⋈ΔB, the exact change of A⋈B.
//! Rows with a NULL in any key column never match and are not kept.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::ChangeBatch;
use crate::codec::{join_prefixed, split_prefixed};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::row::{Partitioner, RowCodec};

/// The fixed settings of a join.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub left_schema: SchemaRef,
    pub right_schema: SchemaRef,
    /// Left columns followed by right columns.
    pub output_schema: SchemaRef,
}

impl JoinSpec {
    /// The common type each key pair is compared in (the left expression's type).
    pub fn key_types(&self) -> Result<Vec<DataType>> {
        self.left_keys
            .iter()
            .map(|e| Ok(e.data_type(&self.left_schema)?))
            .collect()
    }

    /// Evaluates the key columns of a batch arriving on `port`, cast to the key types.
    pub fn key_columns(&self, port: usize, data: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let exprs = if port == 0 { &self.left_keys } else { &self.right_keys };
        let types = self.key_types()?;
        exprs
            .iter()
            .zip(types)
            .map(|(e, t)| {
                let a = e.evaluate(data)?.into_array(data.num_rows())?;
                Ok(if a.data_type() == &t { a } else { cast(&a, &t)? })
            })
            .collect()
    }
}

#[derive(Default)]
struct Side {
    /// Join key → row → multiplicity.
    rows: HashMap<Vec<u8>, HashMap<Vec<u8>, i64>>,
    dirty: HashSet<(Vec<u8>, Vec<u8>)>,
}

pub struct JoinOp {
    spec: JoinSpec,
    key_codec: RowCodec,
    row_codecs: [RowCodec; 2],
    tables: [StateTableId; 2],
    sides: [Side; 2],
}

impl JoinOp {
    pub fn try_new(spec: JoinSpec, tables: [StateTableId; 2]) -> Result<Self> {
        Ok(Self {
            key_codec: RowCodec::new(spec.key_types()?)?,
            row_codecs: [
                RowCodec::for_schema(&spec.left_schema)?,
                RowCodec::for_schema(&spec.right_schema)?,
            ],
            spec,
            tables,
            sides: [Side::default(), Side::default()],
        })
    }
}

impl Operator for JoinOp {
    fn name(&self) -> &'static str {
        "HashJoin"
    }

    fn on_data(&mut self, port: usize, batch: ChangeBatch, out: &mut Vec<ChangeBatch>) -> Result<()> {
        if port > 1 {
            return Err(DataflowError::Internal(format!("join has no port {port}")));
        }
        let data = batch.data();
        let key_cols = self.spec.key_columns(port, data)?;
        let keys = self.key_codec.encode(&key_cols)?;
        let rows = self.row_codecs[port].encode(data.columns())?;
        let weights = batch.weights().values();
        let (left, right) = self.sides.split_at_mut(1);
        let (mine, other) = if port == 0 {
            (&mut left[0], &right[0])
        } else {
            (&mut right[0], &left[0])
        };

        let mut idx: Vec<u32> = Vec::new();
        let mut matched: Vec<&[u8]> = Vec::new();
        let mut out_weights: Vec<i64> = Vec::new();
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 || key_cols.iter().any(|c| c.is_null(i)) {
                continue;
            }
            let key = keys.row(i);
            if let Some(others) = other.rows.get(key.data()) {
                for (r, c) in others {
                    idx.push(i as u32);
                    matched.push(r.as_slice());
                    out_weights.push(w * c);
                }
            }
        }
        if !idx.is_empty() {
            let mine_cols = arrow::compute::take_record_batch(data, &UInt32Array::from(idx))?;
            let other_cols = self.row_codecs[1 - port].decode(matched)?;
            let columns: Vec<ArrayRef> = if port == 0 {
                mine_cols.columns().iter().cloned().chain(other_cols).collect()
            } else {
                other_cols.into_iter().chain(mine_cols.columns().iter().cloned()).collect()
            };
            let data = RecordBatch::try_new(Arc::clone(&self.spec.output_schema), columns)?;
            out.push(ChangeBatch::try_new(data, out_weights.into())?);
        }

        for (i, &w) in weights.iter().enumerate() {
            if w == 0 || key_cols.iter().any(|c| c.is_null(i)) {
                continue;
            }
            let key = keys.row(i).data();
            let row = rows.row(i).data();
            let bucket = match mine.rows.get_mut(key) {
                Some(b) => b,
                None => mine.rows.entry(key.to_vec()).or_default(),
            };
            let now = match bucket.get_mut(row) {
                Some(c) => {
                    *c += w;
                    *c
                }
                None => {
                    bucket.insert(row.to_vec(), w);
                    w
                }
            };
            if now == 0 {
                bucket.remove(row);
                if bucket.is_empty() {
                    mine.rows.remove(key);
                }
            }
            mine.dirty.insert((key.to_vec(), row.to_vec()));
        }
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: u64, state: &mut StateWriter, _out: &mut Vec<ChangeBatch>) -> Result<()> {
        for (side, table) in self.sides.iter_mut().zip(self.tables) {
            for (key, row) in side.dirty.drain() {
                let count = side.rows.get(&key).and_then(|b| b.get(&row)).copied();
                let state_key = join_prefixed(&key, &row);
                match count {
                    Some(c) if c < 0 => {
                        return Err(DataflowError::Internal(format!(
                            "join row multiplicity would become {c}"
                        )))
                    }
                    Some(c) => state.put(table, &state_key, &c.to_le_bytes()),
                    None => state.delete(table, &state_key),
                }
            }
        }
        Ok(())
    }

    fn state_tables(&self) -> Vec<StateTableId> {
        self.tables.to_vec()
    }

    fn restore(
        &mut self,
        table: StateTableId,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        let side = if table == self.tables[0] { 0 } else { 1 };
        let s = &mut self.sides[side];
        for (k, v) in entries {
            let (key, row) = split_prefixed(k)?;
            if !partitioner.owns(key) {
                continue;
            }
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::Corrupt("join row count is not 8 bytes".into()))?;
            s.rows
                .entry(key.to_vec())
                .or_default()
                .insert(row.to_vec(), i64::from_le_bytes(bytes));
        }
        Ok(())
    }
}
