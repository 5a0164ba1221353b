//! Helpers shared by the dataflow tests: Int64 schemas, column references, and a batch's
//! rows as sorted vectors for comparing with a model.

#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;

pub type Row = Vec<Option<i64>>;

/// A schema of nullable BIGINT columns.
pub fn schema(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Int64, true))
            .collect::<Vec<_>>(),
    ))
}

pub fn col(name: &str, i: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, i))
}

/// The rows of `b` (every column cast to BIGINT), sorted.
pub fn rows_of(b: &RecordBatch) -> Vec<Row> {
    let columns: Vec<_> = b
        .columns()
        .iter()
        .map(|c| arrow::compute::cast(c, &DataType::Int64).expect("cast to BIGINT"))
        .collect();
    let mut out: Vec<Row> = (0..b.num_rows())
        .map(|r| {
            columns
                .iter()
                .map(|c| {
                    c.is_valid(r)
                        .then(|| c.as_primitive::<Int64Type>().value(r))
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}
