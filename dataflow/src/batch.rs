//! Changelog batches: the Z-set representation of change.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::SchemaRef;

use crate::error::{DataflowError, Result};

/// A batch of changes: each row of `data` is inserted `weights[i]` times (deleted when
/// negative). An update is a −1 of the old row and a +1 of the new one.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    data: RecordBatch,
    weights: Int64Array,
}

impl ChangeBatch {
    /// Builds a batch; `weights` must have one non-null value per row.
    pub fn try_new(data: RecordBatch, weights: Int64Array) -> Result<Self> {
        if weights.len() != data.num_rows() || weights.null_count() > 0 {
            return Err(DataflowError::Internal(format!(
                "change batch with {} rows and {} weights ({} null)",
                data.num_rows(),
                weights.len(),
                weights.null_count()
            )));
        }
        Ok(Self { data, weights })
    }

    /// Every row inserted once.
    pub fn inserts(data: RecordBatch) -> Self {
        let weights = Int64Array::from_value(1, data.num_rows());
        Self { data, weights }
    }

    /// Every row deleted once.
    pub fn deletes(data: RecordBatch) -> Self {
        let weights = Int64Array::from_value(-1, data.num_rows());
        Self { data, weights }
    }

    pub fn data(&self) -> &RecordBatch {
        &self.data
    }

    pub fn weights(&self) -> &Int64Array {
        &self.weights
    }

    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.data.num_rows() == 0
    }

    /// Keeps the rows where `mask` is true (null counts as false).
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self> {
        let mask = if mask.null_count() > 0 {
            arrow::compute::prep_null_mask_filter(mask)
        } else {
            mask.clone()
        };
        let data = filter_record_batch(&self.data, &mask)?;
        let weights = arrow::compute::filter(&self.weights, &mask)?;
        let weights = downcast_weights(&weights)?;
        Ok(Self { data, weights })
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &UInt32Array) -> Result<Self> {
        let data = take_record_batch(&self.data, indices)?;
        let weights = arrow::compute::take(&self.weights, indices, None)?;
        let weights = downcast_weights(&weights)?;
        Ok(Self { data, weights })
    }

    /// Same rows and weights under other columns (of the same length).
    pub fn with_data(&self, data: RecordBatch) -> Result<Self> {
        Self::try_new(data, self.weights.clone())
    }

    /// Concatenates batches of one schema into one.
    pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<Self> {
        let data = concat_batches(schema, batches.iter().map(|b| &b.data))?;
        let weights: Vec<&dyn Array> = batches.iter().map(|b| &b.weights as &dyn Array).collect();
        let weights = if weights.is_empty() {
            Arc::new(Int64Array::from(Vec::<i64>::new())) as ArrayRef
        } else {
            arrow::compute::concat(&weights)?
        };
        Self::try_new(data, downcast_weights(&weights)?)
    }
}

/// A batch of `rows` rows under `schema`, casting each column whose type differs from its
/// field's (a union's inputs, an aggregate's natural result types). Works for zero columns.
pub fn batch_with_schema(
    schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                arrow::compute::cast(&c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

fn downcast_weights(a: &ArrayRef) -> Result<Int64Array> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataflowError::Internal("weights are not Int64".into()))
}
