//! Helpers shared by the dataflow tests: Int64 schemas, column references, a batch's
//! rows as sorted vectors for comparing with a model, epochs of out-of-order events, and
//! the keys a state table holds entries for.

#![allow(dead_code)]

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use proptest::prelude::*;
use sabot_storage::{StateTableId, Store};

pub type Row = Vec<Option<i64>>;

/// Where offloaded operators run in these tests: the process's GPU when one is here (a
/// device run, `SABOT_GPU_LIBRARY` set), else the CPU's reference kernels.
pub fn kernel() -> sabot_dataflow::ops::partial::Kernel {
    use sabot_dataflow::ops::partial::Kernel;
    match sabot_gpu::init(None) {
        Ok(g) => Kernel::Gpu(g),
        Err(_) => Kernel::Cpu,
    }
}

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

/// Epochs of events `(ts, k, v)`: event time starts at 100 and drifts forward by a step
/// from `step` each epoch; each event's time is the drift plus one from `dt` (negative:
/// behind it), its `k` and `v` from their ranges, up to `rows` events per epoch.
pub fn drifting_epochs(
    step: Range<i64>,
    dt: Range<i64>,
    k: Range<i64>,
    v: Range<i64>,
    rows: Range<usize>,
) -> impl Strategy<Value = Vec<Vec<(i64, i64, i64)>>> {
    proptest::collection::vec((step, proptest::collection::vec((dt, k, v), rows)), 1..14).prop_map(
        |epochs| {
            let mut base = 100;
            epochs
                .into_iter()
                .map(|(step, events)| {
                    base += step;
                    events
                        .into_iter()
                        .map(|(dt, k, v)| (base + dt, k, v))
                        .collect()
                })
                .collect()
        },
    )
}

/// The distinct keys (group, partition, session key) that state table `table` holds
/// entries for, its entries being keyed `len (u32, little endian) ++ key ++ ...`.
pub fn keys_in_state(store: &Store, table: StateTableId) -> std::collections::BTreeSet<Vec<u8>> {
    store
        .scan(table)
        .unwrap()
        .into_iter()
        .map(|(k, _)| {
            let len = u32::from_le_bytes(k[..4].try_into().unwrap()) as usize;
            k[..4 + len].to_vec()
        })
        .collect()
}
