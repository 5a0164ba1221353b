//! Group-by SUM benchmark: `SELECT k, count(*), sum(v) FROM t GROUP BY k` over N rows
//! (default 50M) with K keys (default 10K), arriving in batches of B rows (default 1M),
//! all in one epoch, through Sabot's aggregate operator. In the same run:
//!
//! - `cpu-rows`: the CPU's per-row path (what runs without a GPU);
//! - `cpu-partial`: per-key partial sums of the epoch's input, computed on the CPU;
//! - `gpu-partial`: the same partial sums by libcudf on the GPU (keys, values and weights
//!   sent as they are, the summands computed on the device), transfers included
//!   (only where `SABOT_GPU_LIBRARY` loads and finds a device);
//! - `gpu-groupby`, `gpu-streaming`: libcudf alone through the shim (one group-by of the
//!   whole input copied from host memory; `streaming_groupby` batch by batch), for
//!   reference.
//!
//! Each prints one JSON line: rows, seconds, rows/s, and rows/s per core (the operator
//! runs on one worker thread, so per core = rows/s for the operator runs). The results of
//! every operator run are checked against each other.
//!
//! `cargo run --release -p sabot-dataflow --example groupby_bench -- [N] [K] [B]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sabot_dataflow::ops::aggregate::{AggCall, AggKind, AggregateSpec, Offload};
use sabot_dataflow::ops::partial::{sum_inputs, CallInput, CallKind, Kernel};
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::EpochBatch;

mod bench_common;

use bench_common::arg;

fn plan(schema: &SchemaRef, offload: Option<Offload>) -> StreamPlan {
    let out: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("s", DataType::Int64, true),
    ]));
    let spec = AggregateSpec {
        group_count: 1,
        calls: vec![
            AggCall::new(AggKind::Count, 1, None),
            AggCall::new(AggKind::Sum, 1, None),
        ],
        input_schema: Arc::clone(schema),
        output_schema: Arc::clone(&out),
        emit_on_window_close: false,
        append_only_input: true,
        offload,
    };
    StreamPlan {
        nodes: vec![
            PlanNode {
                kind: NodeKind::Source {
                    relation: "t".into(),
                },
                inputs: vec![],
                schema: Arc::clone(schema),
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::Aggregate(spec),
                inputs: vec![0],
                schema: Arc::clone(&out),
                state_tables: vec![1, 2],
            },
            PlanNode {
                kind: NodeKind::Materialize,
                inputs: vec![1],
                schema: out,
                state_tables: vec![3],
            },
        ],
    }
}

fn report(name: &str, rows: usize, secs: f64, note: &str) {
    let rate = rows as f64 / secs;
    bench_common::print_line(&format!(
            "{{\"run\": \"{name}\", \"rows\": {rows}, \"seconds\": {secs:.3}, \"rows_per_s\": {rate:.0}, \"rows_per_s_per_core\": {rate:.0}, \"note\": \"{note}\"}}"
    ));
}

/// The view's rows, sorted by key.
fn sorted(b: &RecordBatch) -> Vec<(i64, i64, i64)> {
    let col = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
    let (k, n, s) = (col(0), col(1), col(2));
    let mut v: Vec<_> = (0..b.num_rows())
        .map(|i| (k.value(i), n.value(i), s.value(i)))
        .collect();
    v.sort_unstable();
    v
}

fn run(
    name: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    offload: Option<Offload>,
) -> Vec<(i64, i64, i64)> {
    let mut flow = Dataflow::try_new(plan(schema, offload), 1).expect("plan");
    let deltas: HashMap<String, Vec<ChangeBatch>> = HashMap::from([(
        "t".to_string(),
        batches.iter().cloned().map(ChangeBatch::inserts).collect(),
    )]);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let start = Instant::now();
    let mut epoch = EpochBatch::new(1);
    flow.run_epoch(&deltas, &mut epoch).expect("epoch");
    let secs = start.elapsed().as_secs_f64();
    report(
        name,
        rows,
        secs,
        "one epoch through the aggregate operator, 1 worker",
    );
    sorted(&flow.snapshot_batch().expect("snapshot"))
}

fn main() {
    let n = arg(1, 50_000_000);
    let keys = arg(2, 10_000) as u64;
    let batch_rows = arg(3, 1_000_000).max(1);
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let mut batches = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut done = 0;
    while done < n {
        let len = batch_rows.min(n - done);
        let mut k = Vec::with_capacity(len);
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            k.push((x % keys) as i64);
            v.push(((x >> 20) % 1000) as i64);
        }
        let cols: Vec<ArrayRef> =
            vec![Arc::new(Int64Array::from(k)), Arc::new(Int64Array::from(v))];
        batches.push(RecordBatch::try_new(Arc::clone(&schema), cols).expect("batch"));
        done += len;
    }
    let whole = |kernel| {
        Some(Offload {
            kernel,
            min_rows: 1,
        })
    };
    let cpu = run("cpu-rows", &schema, &batches, None);
    let partial = run("cpu-partial", &schema, &batches, whole(Kernel::Cpu));
    // Of which: building the summand columns the kernel groups (on the host; the GPU
    // path computes them on the device), over the run of 4M rows the operator buffers at
    // most.
    let calls = [
        CallInput {
            kind: CallKind::Count,
            arg: 1,
            filter: None,
        },
        CallInput {
            kind: CallKind::Int,
            arg: 1,
            filter: None,
        },
    ];
    let start = Instant::now();
    for chunk in batches.chunks((1usize << 22).div_ceil(batch_rows)) {
        let data = arrow::compute::concat_batches(&schema, chunk).expect("concat");
        let w = Int64Array::from(vec![1i64; data.num_rows()]);
        sum_inputs(&data, &w, 1, &calls).expect("summands");
    }
    report(
        "cpu-summands",
        n,
        start.elapsed().as_secs_f64(),
        "concat + summand columns only",
    );
    assert_eq!(cpu, partial, "cpu-partial differs from cpu-rows");
    if let Some(gpu) = bench_common::gpu() {
        let device = gpu.device().name.clone();
        let on_gpu = run(
            "gpu-partial",
            &schema,
            &batches,
            whole(Kernel::Gpu(Arc::clone(&gpu))),
        );
        assert_eq!(cpu, on_gpu, "gpu-partial differs from cpu-rows");
        // libcudf alone: the whole input in one group-by (copied from host memory).
        let all = arrow::compute::concat_batches(&schema, &batches).expect("concat");
        let aggs = [
            sabot_gpu::Agg {
                kind: sabot_gpu::AggKind::CountAll,
                column: 1,
            },
            sabot_gpu::Agg {
                kind: sabot_gpu::AggKind::Sum,
                column: 1,
            },
        ];
        let start = Instant::now();
        let out = gpu.group_by(&all, &[0], &aggs).expect("group-by");
        report("gpu-groupby", n, start.elapsed().as_secs_f64(), &device);
        assert_eq!(out.num_rows(), cpu.len());
        let start = Instant::now();
        let mut sg = gpu
            .streaming_group_by(&[0], &aggs, batch_rows.max(keys as usize))
            .expect("streaming group-by");
        for b in &batches {
            sg.aggregate(b).expect("aggregate");
        }
        let out = sg.finalize().expect("finalize");
        report("gpu-streaming", n, start.elapsed().as_secs_f64(), &device);
        assert_eq!(out.num_rows(), cpu.len());
    }
}
