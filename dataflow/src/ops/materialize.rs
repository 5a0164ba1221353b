//! Materialize: keeps the multiset of rows of a view and emits its consolidated change
//! per epoch (the changelog that views built on this view consume).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::row::{Partitioner, RowCodec};

pub struct MaterializeOp {
    schema: SchemaRef,
    codec: RowCodec,
    table: StateTableId,
    /// Row → multiplicity (always > 0).
    rows: HashMap<Vec<u8>, i64>,
    /// Row → net change during the current epoch.
    delta: HashMap<Vec<u8>, i64>,
}

impl MaterializeOp {
    pub fn try_new(schema: SchemaRef, table: StateTableId) -> Result<Self> {
        Ok(Self {
            codec: RowCodec::for_schema(&schema)?,
            schema,
            table,
            rows: HashMap::new(),
            delta: HashMap::new(),
        })
    }

    fn build(&self, rows: &[(&[u8], i64)]) -> Result<(RecordBatch, Vec<i64>)> {
        let weights = rows.iter().map(|(_, w)| *w).collect();
        if self.schema.fields().is_empty() {
            let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
            return Ok((
                RecordBatch::try_new_with_options(Arc::clone(&self.schema), vec![], &options)?,
                weights,
            ));
        }
        let columns = self.codec.decode(rows.iter().map(|(r, _)| *r))?;
        Ok((
            RecordBatch::try_new(Arc::clone(&self.schema), columns)?,
            weights,
        ))
    }
}

impl Operator for MaterializeOp {
    fn state_rows(&self) -> usize {
        self.rows.len()
    }

    fn name(&self) -> &'static str {
        "Materialize"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let weights = batch.weights().values();
        if self.codec.is_empty() {
            for w in weights.iter() {
                *self.delta.entry(Vec::new()).or_insert(0) += w;
            }
            return Ok(());
        }
        let rows = self.codec.encode(batch.data().columns())?;
        for (i, row) in rows.iter().enumerate() {
            let w = weights[i];
            if w == 0 {
                continue;
            }
            match self.delta.get_mut(row.as_ref()) {
                Some(d) => *d += w,
                None => {
                    self.delta.insert(row.as_ref().to_vec(), w);
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
        let delta = std::mem::take(&mut self.delta);
        let mut changed: Vec<(&[u8], i64)> = Vec::new();
        for (row, d) in &delta {
            if *d == 0 {
                continue;
            }
            let count = self.rows.get(row).copied().unwrap_or(0) + d;
            if count < 0 {
                return Err(DataflowError::Internal(format!(
                    "view row multiplicity would become {count}"
                )));
            }
            if count == 0 {
                self.rows.remove(row);
                state.delete(self.table, row);
            } else {
                self.rows.insert(row.clone(), count);
                state.put(self.table, row, &count.to_le_bytes());
            }
            changed.push((row.as_slice(), *d));
        }
        if !changed.is_empty() {
            let (data, weights) = self.build(&changed)?;
            out.push(ChangeBatch::try_new(data, Int64Array::from(weights))?);
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
            if !partitioner.owns(k) {
                continue;
            }
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::Corrupt("view row count is not 8 bytes".into()))?;
            self.rows.insert(k.clone(), i64::from_le_bytes(bytes));
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Option<RecordBatch>> {
        let rows: Vec<(&[u8], i64)> = self.rows.iter().map(|(r, c)| (r.as_slice(), *c)).collect();
        let (data, counts) = self.build(&rows)?;
        if counts.iter().all(|c| *c == 1) {
            return Ok(Some(data));
        }
        // Repeat rows by multiplicity.
        let total: i64 = counts.iter().sum();
        let mut idx = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for (i, c) in counts.iter().enumerate() {
            for _ in 0..*c {
                idx.push(i as u32);
            }
        }
        let idx = UInt32Array::from(idx);
        if data.num_columns() == 0 {
            let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(idx.len()));
            return Ok(Some(RecordBatch::try_new_with_options(
                Arc::clone(&self.schema),
                vec![],
                &options,
            )?));
        }
        Ok(Some(arrow::compute::take_record_batch(&data, &idx)?))
    }
}
