//! Join benchmark: `SELECT a.id, a.k, b.id, b.v FROM a JOIN b ON a.k = b.k` with N rows on
//! each side (default 2M) over K keys (default 1M, so about N²/K pairs), arriving in
//! batches of B rows (default 100K) through Sabot's join operator. Both sides arrive in
//! the same epoch (a bulk load: everything is a delta of both sides) or, with `halves`
//! as the fourth argument, half of each side in a first epoch and the rest in a second,
//! timed (then the second epoch's deltas also meet the first's stored rows). In the same
//! run:
//!
//! - `cpu-rows`: the CPU's per-row path (what runs without a GPU);
//! - `cpu-batch`: the epoch's deltas joined with each other in one batch join, on the
//!   CPU (the reference the GPU is checked against);
//! - `gpu-batch`: the same with libcudf finding the pairs, transfers included (only where
//!   `SABOT_GPU_LIBRARY` loads and finds a device);
//! - `gpu-join`: libcudf's inner join of the two key columns alone, for reference.
//!
//! Each prints one JSON line for the timed epoch: input rows, output rows, seconds, input
//! rows/s (the operator runs on one worker thread, so per core = rows/s). Every operator
//! run's whole output is checked against the others by its row count and a weighted
//! checksum.
//!
//! `cargo run --release -p sabot-dataflow --example join_bench -- [N] [K] [B] [halves]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
use sabot_dataflow::ops::partial::{Kernel, Offload};
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::EpochBatch;

mod bench_common;

use bench_common::arg;

fn plan(side: &SchemaRef, offload: Option<Offload>) -> StreamPlan {
    let out: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("k", DataType::Int64, true),
        Field::new("id2", DataType::Int64, true),
        Field::new("k2", DataType::Int64, true),
    ]));
    let key = || -> Vec<Arc<dyn PhysicalExpr>> { vec![Arc::new(Column::new("k", 1))] };
    let spec = JoinSpec {
        kind: JoinKind::Inner,
        nulls_equal: false,
        left_keys: key(),
        right_keys: key(),
        left_schema: Arc::clone(side),
        right_schema: Arc::clone(side),
        output_schema: Arc::clone(&out),
        filter: None,
        temporal: false,
        intervals: vec![],
        offload,
    };
    let source = |relation: &str| PlanNode {
        kind: NodeKind::Source {
            relation: relation.into(),
        },
        inputs: vec![],
        schema: Arc::clone(side),
        state_tables: vec![],
    };
    StreamPlan {
        nodes: vec![
            source("a"),
            source("b"),
            PlanNode {
                kind: NodeKind::Join(spec),
                inputs: vec![0, 1],
                schema: Arc::clone(&out),
                state_tables: vec![1, 2],
            },
            // Passes the join's changes on and keeps nothing: the join alone is timed.
            PlanNode {
                kind: NodeKind::Emit { keyed: false },
                inputs: vec![2],
                schema: out,
                state_tables: vec![],
            },
        ],
    }
}

fn report(name: &str, rows: usize, out: usize, secs: f64, note: &str) {
    let rate = rows as f64 / secs;
    bench_common::print_line(&format!(
            "{{\"run\": \"{name}\", \"rows\": {rows}, \"output_rows\": {out}, \"seconds\": {secs:.3}, \"rows_per_s\": {rate:.0}, \"rows_per_s_per_core\": {rate:.0}, \"note\": \"{note}\"}}"
    ));
}

/// Output rows and a checksum of the weighted pairs (ids of both sides).
fn summary(out: &[ChangeBatch]) -> (i64, i64) {
    let mut rows = 0i64;
    let mut sum = 0i64;
    for b in out {
        let (a, z) = (
            b.data().column(0).as_primitive::<Int64Type>(),
            b.data().column(2).as_primitive::<Int64Type>(),
        );
        for (i, w) in b.weights().values().iter().enumerate() {
            rows += w;
            sum = sum.wrapping_add(w.wrapping_mul(a.value(i).wrapping_mul(1_000_003) ^ z.value(i)));
        }
    }
    (rows, sum)
}

fn run(name: &str, side: &SchemaRef, epochs: &[Deltas], offload: Option<Offload>) -> (i64, i64) {
    let mut flow = Dataflow::try_new(plan(side, offload), 1).expect("plan");
    let mut out = Vec::new();
    let (mut secs, mut rows, mut produced_rows) = (0.0, 0, 0);
    for (e, deltas) in epochs.iter().enumerate() {
        // With two epochs only the second is timed.
        let timed = e + 1 == epochs.len();
        let start = Instant::now();
        let mut epoch = EpochBatch::new(e as u64 + 1);
        let produced = flow.run_epoch(deltas, &mut epoch).expect("epoch");
        if timed {
            secs = start.elapsed().as_secs_f64();
            rows = deltas.values().flatten().map(ChangeBatch::num_rows).sum();
            produced_rows = summary(&produced).0;
        }
        out.extend(produced);
    }
    let s = summary(&out);
    report(
        name,
        rows,
        produced_rows as usize,
        secs,
        "the last epoch through the join operator, 1 worker",
    );
    s
}

type Deltas = HashMap<String, Vec<ChangeBatch>>;

fn main() {
    let n = arg(1, 2_000_000);
    let keys = arg(2, 1_000_000).max(1) as u64;
    let batch_rows = arg(3, 100_000).max(1);
    let halves = std::env::args().nth(4).is_some_and(|a| a == "halves");
    let side: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
    ]));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut batches = |first_id: usize| -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut done = 0;
        while done < n {
            let len = batch_rows.min(n - done);
            let ids: Int64Array = (done..done + len).map(|i| (first_id + i) as i64).collect();
            let k: Int64Array = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % keys) as i64
                })
                .collect();
            let cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(k)];
            out.push(RecordBatch::try_new(Arc::clone(&side), cols).expect("batch"));
            done += len;
        }
        out
    };
    let (a, b) = (batches(0), batches(n));
    let deltas = |a: &[RecordBatch], b: &[RecordBatch]| -> Deltas {
        let inserts = |v: &[RecordBatch]| v.iter().cloned().map(ChangeBatch::inserts).collect();
        HashMap::from([("a".to_string(), inserts(a)), ("b".to_string(), inserts(b))])
    };
    let epochs: Vec<Deltas> = if halves {
        let (ha, hb) = (a.len() / 2, b.len() / 2);
        vec![deltas(&a[..ha], &b[..hb]), deltas(&a[ha..], &b[hb..])]
    } else {
        vec![deltas(&a, &b)]
    };
    let whole = |kernel| {
        Some(Offload {
            kernel,
            min_rows: 1,
        })
    };
    let cpu = run("cpu-rows", &side, &epochs, None);
    let batch = run("cpu-batch", &side, &epochs, whole(Kernel::Cpu));
    assert_eq!(cpu, batch, "cpu-batch differs from cpu-rows");
    if let Some(gpu) = bench_common::gpu() {
        let device = gpu.device().name.clone();
        let on_gpu = run(
            "gpu-batch",
            &side,
            &epochs,
            whole(Kernel::Gpu(Arc::clone(&gpu))),
        );
        assert_eq!(cpu, on_gpu, "gpu-batch differs from cpu-rows");
        // libcudf alone: the two whole key columns, copied from host memory.
        let all = |v: &[RecordBatch]| arrow::compute::concat_batches(&side, v).expect("concat");
        let (l, r) = (all(&a), all(&b));
        let start = Instant::now();
        let (li, _) = gpu.inner_join(&l, &[1], &r, &[1]).expect("join");
        report(
            "gpu-join",
            2 * n,
            li.len(),
            start.elapsed().as_secs_f64(),
            &device,
        );
    }
}
