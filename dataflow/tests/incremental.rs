//! Incremental equals recompute: random insert/update/delete streams go through each
//! stateful operator epoch by epoch; after every epoch the view's contents must equal the
//! same query evaluated from scratch over the current input. Runs with 1 and 2 workers,
//! and restarts the dataflow from its committed state midway.

mod common;

use common::{col, rows_of, schema, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::Operator as BinOp;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;
use proptest::prelude::*;
use sabot_dataflow::ops::aggregate::{AggCall, AggKind, AggregateSpec, Offload};
use sabot_dataflow::ops::filter::FilterOffload;
use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
use sabot_dataflow::ops::partial::Kernel;
use sabot_dataflow::ops::topn::TopNSpec;
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

fn batch(schema: &SchemaRef, rows: &[Row]) -> RecordBatch {
    let cols: Vec<ArrayRef> = (0..schema.fields().len())
        .map(|c| Arc::new(rows.iter().map(|r| r[c]).collect::<Int64Array>()) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::clone(schema), cols).unwrap()
}

/// One change to a keyed input: set `id` to `row` (None deletes it).
#[derive(Debug, Clone)]
struct Op {
    input: usize,
    id: i64,
    row: Option<(Option<i64>, Option<i64>)>,
}

fn op_strategy(inputs: usize) -> impl Strategy<Value = Op> {
    (
        0..inputs,
        0i64..12,
        proptest::option::weighted(
            0.75,
            (
                proptest::option::weighted(0.9, 0i64..4),
                proptest::option::weighted(0.85, -5i64..20),
            ),
        ),
    )
        .prop_map(|(input, id, row)| Op { input, id, row })
}

/// `id → (k, v)`
type Keyed = BTreeMap<i64, (Option<i64>, Option<i64>)>;

/// Keyed inputs and the changelog of each epoch.
struct Inputs {
    state: Vec<Keyed>,
    schema: SchemaRef,
}

impl Inputs {
    fn new(n: usize) -> Self {
        Self {
            state: vec![BTreeMap::new(); n],
            schema: schema(&["id", "k", "v"]),
        }
    }

    /// Applies ops, returning each input's change batches for the epoch.
    fn apply(&mut self, ops: &[Op]) -> Vec<Vec<ChangeBatch>> {
        let mut out = vec![Vec::new(); self.state.len()];
        for op in ops {
            let st = &mut self.state[op.input];
            let old = st.get(&op.id).copied();
            if let Some((k, v)) = old {
                out[op.input].push(ChangeBatch::deletes(batch(
                    &self.schema,
                    &[vec![Some(op.id), k, v]],
                )));
                st.remove(&op.id);
            }
            if let Some((k, v)) = op.row {
                out[op.input].push(ChangeBatch::inserts(batch(
                    &self.schema,
                    &[vec![Some(op.id), k, v]],
                )));
                st.insert(op.id, (k, v));
            }
        }
        out
    }

    fn rows(&self, input: usize) -> Vec<Row> {
        self.state[input]
            .iter()
            .map(|(id, (k, v))| vec![Some(*id), *k, *v])
            .collect()
    }
}

/// Runs `epochs` through `plan` (sources named in0, in1, ...), comparing with `recompute`
/// after each epoch; restarts from the store after epoch `restart_at`.
fn check(
    plan: StreamPlan,
    inputs: usize,
    epochs: Vec<Vec<Op>>,
    workers: usize,
    restart_at: usize,
    recompute: impl Fn(&Inputs) -> Vec<Row>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    let mut data = Inputs::new(inputs);
    for (e, ops) in epochs.iter().enumerate() {
        let changes = data.apply(ops);
        let deltas = changes
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("in{i}"), c))
            .collect();
        let mut b = EpochBatch::new(e as u64 + 1);
        flow.run_epoch(&deltas, &mut b).unwrap();
        store.commit(b).unwrap();
        let got = rows_of(&flow.snapshot_batch().unwrap());
        let mut want = recompute(&data);
        want.sort();
        prop_assert_eq!(&got, &want, "epoch {} with {} workers", e, workers);
        if e == restart_at {
            flow = Dataflow::try_new(plan.clone(), workers).unwrap();
            flow.restore(&store).unwrap();
            let again = rows_of(&flow.snapshot_batch().unwrap());
            prop_assert_eq!(&again, &want, "after restart at epoch {}", e);
        }
    }
    Ok(())
}

fn source(i: usize) -> PlanNode {
    PlanNode {
        kind: NodeKind::Source {
            relation: format!("in{i}"),
        },
        inputs: vec![],
        schema: schema(&["id", "k", "v"]),
        state_tables: vec![],
    }
}

fn materialize(input: usize, schema: SchemaRef, table: u32) -> PlanNode {
    PlanNode {
        kind: NodeKind::Materialize,
        inputs: vec![input],
        schema,
        state_tables: vec![table],
    }
}

/// source → projection of the aggregate's inputs → aggregate → materialize.
fn project_aggregate(
    pre_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pre_schema: SchemaRef,
    spec: AggregateSpec,
    out: SchemaRef,
) -> StreamPlan {
    StreamPlan {
        nodes: vec![
            source(0),
            PlanNode {
                kind: NodeKind::Project { exprs: pre_exprs },
                inputs: vec![0],
                schema: pre_schema,
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::Aggregate(spec),
                inputs: vec![1],
                schema: Arc::clone(&out),
                state_tables: vec![1, 3],
            },
            materialize(2, out, 2),
        ],
    }
}

/// SELECT k, count(*), count(v), sum(v), min(v), max(v), sum(v) FILTER (WHERE v > 5),
/// bool_and(v > 10), count(DISTINCT v), sum(DISTINCT v) FILTER (WHERE v > 5)
/// FROM in0 GROUP BY k
fn aggregate_plan(global: bool, append_only_input: bool) -> StreamPlan {
    let cols = ["c", "cv", "s", "mn", "mx", "sf", "ba", "cd", "sdf"];
    let (group_count, out) = if global {
        (0, schema(&cols))
    } else {
        (1, schema(&[&["k"][..], &cols[..]].concat()))
    };
    let one: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Int64(Some(1))));
    let gt = |n: i64| -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(
            col("v", 2),
            BinOp::Gt,
            Arc::new(Literal::new(ScalarValue::Int64(Some(n)))),
        ))
    };
    // [k,] v, 1, v > 5 (a FILTER), v > 10 (a BOOL_AND argument)
    let mut pre_exprs = vec![col("v", 2), one, gt(5), gt(10)];
    let mut pre_fields = vec![
        Field::new("v", DataType::Int64, true),
        Field::new("one", DataType::Int64, true),
        Field::new("v_gt_5", DataType::Boolean, true),
        Field::new("v_gt_10", DataType::Boolean, true),
    ];
    if !global {
        pre_exprs.insert(0, col("k", 1));
        pre_fields.insert(0, Field::new("k", DataType::Int64, true));
    }
    let pre_schema: SchemaRef = Arc::new(Schema::new(pre_fields));
    let v = group_count;
    let spec = AggregateSpec {
        group_count,
        calls: vec![
            AggCall::new(AggKind::Count, v + 1, None),
            AggCall::new(AggKind::Count, v, None),
            AggCall::new(AggKind::Sum, v, None),
            AggCall::new(AggKind::Min, v, None),
            AggCall::new(AggKind::Max, v, None),
            AggCall::new(AggKind::Sum, v, Some(v + 2)),
            AggCall::new(AggKind::BoolAnd, v + 3, None),
            AggCall {
                distinct: true,
                ..AggCall::new(AggKind::Count, v, None)
            },
            AggCall {
                distinct: true,
                ..AggCall::new(AggKind::Sum, v, Some(v + 2))
            },
        ],
        input_schema: Arc::clone(&pre_schema),
        output_schema: Arc::clone(&out),
        emit_on_window_close: false,
        append_only_input,
        offload: None,
    };
    project_aggregate(pre_exprs, pre_schema, spec, out)
}

fn aggregate_recompute(global: bool) -> impl Fn(&Inputs) -> Vec<Row> {
    move |d: &Inputs| {
        let mut groups: BTreeMap<Option<i64>, Vec<Option<i64>>> = BTreeMap::new();
        for r in d.rows(0) {
            groups
                .entry(if global { None } else { r[1] })
                .or_default()
                .push(r[2]);
        }
        if global && groups.is_empty() {
            groups.insert(None, vec![]);
        }
        groups
            .into_iter()
            .map(|(k, vs)| {
                let nn: Vec<i64> = vs.iter().flatten().copied().collect();
                let mut row = if global { vec![] } else { vec![k] };
                row.push(Some(vs.len() as i64));
                row.push(Some(nn.len() as i64));
                row.push((!nn.is_empty()).then(|| nn.iter().sum()));
                row.push(nn.iter().min().copied());
                row.push(nn.iter().max().copied());
                let filtered: Vec<i64> = nn.iter().copied().filter(|x| *x > 5).collect();
                row.push((!filtered.is_empty()).then(|| filtered.iter().sum()));
                row.push((!nn.is_empty()).then(|| i64::from(nn.iter().all(|x| *x > 10))));
                let distinct: std::collections::BTreeSet<i64> = nn.iter().copied().collect();
                row.push(Some(distinct.len() as i64));
                let big: Vec<i64> = distinct.into_iter().filter(|x| *x > 5).collect();
                row.push((!big.is_empty()).then(|| big.iter().sum()));
                row
            })
            .collect()
    }
}

/// The aggregate summing batches per key (the GPU's path) rather than row by row:
/// SELECT k, count(*), count(v), sum(v), sum(v) FILTER (WHERE v > 5),
/// sum(CAST(v AS DOUBLE)), sum(v * 4000000000) FROM in0 GROUP BY k
/// (the last one's values need more than the low 32 bits).
fn partial_sum_plan(kernel: Kernel, min_rows: usize, append_only_input: bool) -> StreamPlan {
    let out = schema(&["k", "c", "cv", "s", "sf", "sd", "sb"]);
    let lit =
        |n: i64| -> Arc<dyn PhysicalExpr> { Arc::new(Literal::new(ScalarValue::Int64(Some(n)))) };
    let pre_exprs: Vec<Arc<dyn PhysicalExpr>> = vec![
        col("k", 1),
        col("v", 2),
        lit(1),
        Arc::new(BinaryExpr::new(col("v", 2), BinOp::Gt, lit(5))),
        Arc::new(CastExpr::new(col("v", 2), DataType::Float64, None)),
        Arc::new(BinaryExpr::new(
            col("v", 2),
            BinOp::Multiply,
            lit(4_000_000_000),
        )),
    ];
    let pre_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("one", DataType::Int64, true),
        Field::new("v_gt_5", DataType::Boolean, true),
        Field::new("vd", DataType::Float64, true),
        Field::new("vb", DataType::Int64, true),
    ]));
    let mut out_fields: Vec<Field> = out.fields().iter().map(|f| f.as_ref().clone()).collect();
    out_fields[5] = Field::new("sd", DataType::Float64, true);
    let out: SchemaRef = Arc::new(Schema::new(out_fields));
    let spec = AggregateSpec {
        group_count: 1,
        calls: vec![
            AggCall::new(AggKind::Count, 2, None),
            AggCall::new(AggKind::Count, 1, None),
            AggCall::new(AggKind::Sum, 1, None),
            AggCall::new(AggKind::Sum, 1, Some(3)),
            AggCall::new(AggKind::Sum, 4, None),
            AggCall::new(AggKind::Sum, 5, None),
        ],
        input_schema: Arc::clone(&pre_schema),
        output_schema: Arc::clone(&out),
        emit_on_window_close: false,
        append_only_input,
        offload: Some(Offload { kernel, min_rows }),
    };
    assert!(spec.offload_calls().is_ok());
    project_aggregate(pre_exprs, pre_schema, spec, out)
}

fn partial_sum_recompute(d: &Inputs) -> Vec<Row> {
    let mut groups: BTreeMap<Option<i64>, Vec<Option<i64>>> = BTreeMap::new();
    for r in d.rows(0) {
        groups.entry(r[1]).or_default().push(r[2]);
    }
    groups
        .into_iter()
        .map(|(k, vs)| {
            let nn: Vec<i64> = vs.iter().flatten().copied().collect();
            let sum = |xs: Vec<i64>| (!xs.is_empty()).then(|| xs.iter().sum::<i64>());
            vec![
                k,
                Some(vs.len() as i64),
                Some(nn.len() as i64),
                sum(nn.clone()),
                sum(nn.iter().copied().filter(|x| *x > 5).collect()),
                sum(nn.clone()),
                sum(nn.iter().map(|x| x * 4_000_000_000).collect()),
            ]
        })
        .collect()
}

/// SELECT a.id, a.v, b.id, b.v FROM in0 a JOIN in1 b ON a.k = b.k WHERE a.v < b.v
fn join_plan() -> StreamPlan {
    let side = schema(&["id", "k", "v"]);
    let out = schema(&["id", "k", "v", "id2", "k2", "v2"]);
    let spec = JoinSpec {
        kind: JoinKind::Inner,
        nulls_equal: false,
        left_keys: vec![col("k", 1)],
        right_keys: vec![col("k", 1)],
        left_schema: Arc::clone(&side),
        right_schema: side,
        output_schema: Arc::clone(&out),
        temporal: false,
        intervals: vec![],
        filter: None,
        offload: None,
    };
    let pred: Arc<dyn PhysicalExpr> =
        Arc::new(BinaryExpr::new(col("v", 2), BinOp::Lt, col("v2", 5)));
    let proj = schema(&["id", "v", "id2", "v2"]);
    StreamPlan {
        nodes: vec![
            source(0),
            source(1),
            PlanNode {
                kind: NodeKind::Join(spec),
                inputs: vec![0, 1],
                schema: Arc::clone(&out),
                state_tables: vec![1, 2],
            },
            PlanNode {
                kind: NodeKind::Filter { predicate: pred },
                inputs: vec![2],
                schema: out,
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::Project {
                    exprs: vec![col("id", 0), col("v", 2), col("id2", 3), col("v2", 5)],
                },
                inputs: vec![3],
                schema: Arc::clone(&proj),
                state_tables: vec![],
            },
            materialize(4, proj, 3),
        ],
    }
}

fn join_recompute(d: &Inputs) -> Vec<Row> {
    let mut out = Vec::new();
    for a in d.rows(0) {
        for b in d.rows(1) {
            let keys_match = matches!((a[1], b[1]), (Some(x), Some(y)) if x == y);
            let less = matches!((a[2], b[2]), (Some(x), Some(y)) if x < y);
            if keys_match && less {
                out.push(vec![a[0], a[2], b[0], b[2]]);
            }
        }
    }
    out
}

/// `join_plan` with the epoch's deltas of both sides joined with each other in one batch
/// join (on the GPU in a device run, else the CPU's reference for it).
fn gpu_join_plan(min_rows: usize) -> StreamPlan {
    let mut plan = join_plan();
    let NodeKind::Join(spec) = &mut plan.nodes[2].kind else {
        unreachable!("join_plan's third node is its join")
    };
    spec.offload = Some(Offload {
        kernel: common::kernel(),
        min_rows,
    });
    plan
}

/// `in0 <kind> JOIN in1 ON in0.k = in1.k`, all columns of the sides it outputs.
fn kind_join_plan(kind: JoinKind, nulls_equal: bool) -> StreamPlan {
    keyed_join_plan(kind, nulls_equal, true, false)
}

/// As `kind_join_plan`; without keys (`keyed == false`) every pair of rows matches;
/// `filtered` adds `AND in0.v < in1.v` to the join condition.
fn keyed_join_plan(kind: JoinKind, nulls_equal: bool, keyed: bool, filtered: bool) -> StreamPlan {
    let side = schema(&["id", "k", "v"]);
    let out = match kind {
        JoinKind::LeftSemi | JoinKind::LeftAnti | JoinKind::RightSemi | JoinKind::RightAnti => {
            Arc::clone(&side)
        }
        _ => schema(&["id", "k", "v", "id2", "k2", "v2"]),
    };
    let spec = JoinSpec {
        kind,
        nulls_equal,
        left_keys: if keyed { vec![col("k", 1)] } else { vec![] },
        right_keys: if keyed { vec![col("k", 1)] } else { vec![] },
        left_schema: Arc::clone(&side),
        right_schema: side,
        output_schema: Arc::clone(&out),
        temporal: false,
        intervals: vec![],
        filter: filtered.then(|| {
            Arc::new(BinaryExpr::new(col("v", 2), BinOp::Lt, col("v2", 5))) as Arc<dyn PhysicalExpr>
        }),
        offload: None,
    };
    StreamPlan {
        nodes: vec![
            source(0),
            source(1),
            PlanNode {
                kind: NodeKind::Join(spec),
                inputs: vec![0, 1],
                schema: Arc::clone(&out),
                state_tables: vec![1, 2],
            },
            materialize(2, out, 3),
        ],
    }
}

/// Nested-loop evaluation of `kind_join_plan` from scratch, with SQL's NULL semantics.
fn kind_join_recompute(kind: JoinKind, nulls_equal: bool) -> impl Fn(&Inputs) -> Vec<Row> {
    keyed_join_recompute(kind, nulls_equal, true, false)
}

fn keyed_join_recompute(
    kind: JoinKind,
    nulls_equal: bool,
    keyed: bool,
    filtered: bool,
) -> impl Fn(&Inputs) -> Vec<Row> {
    move |d: &Inputs| {
        let (l, r) = (d.rows(0), d.rows(1));
        let matches = |a: &Row, b: &Row| {
            let keys = !keyed
                || match (a[1], b[1]) {
                    (Some(x), Some(y)) => x == y,
                    (None, None) => nulls_equal,
                    _ => false,
                };
            keys && (!filtered || matches!((a[2], b[2]), (Some(x), Some(y)) if x < y))
        };
        let nulls: Row = vec![None; 3];
        let mut out = Vec::new();
        match kind {
            JoinKind::LeftSemi | JoinKind::LeftAnti => {
                let semi = kind == JoinKind::LeftSemi;
                out.extend(
                    l.iter()
                        .filter(|a| r.iter().any(|b| matches(a, b)) == semi)
                        .cloned(),
                );
            }
            JoinKind::RightSemi | JoinKind::RightAnti => {
                let semi = kind == JoinKind::RightSemi;
                out.extend(
                    r.iter()
                        .filter(|b| l.iter().any(|a| matches(a, b)) == semi)
                        .cloned(),
                );
            }
            _ => {
                for a in &l {
                    for b in &r {
                        if matches(a, b) {
                            out.push([a.clone(), b.clone()].concat());
                        }
                    }
                }
                if matches!(kind, JoinKind::Left | JoinKind::Full) {
                    for a in l.iter().filter(|a| !r.iter().any(|b| matches(a, b))) {
                        out.push([a.clone(), nulls.clone()].concat());
                    }
                }
                if matches!(kind, JoinKind::Right | JoinKind::Full) {
                    for b in r.iter().filter(|b| !l.iter().any(|a| matches(a, b))) {
                        out.push([nulls.clone(), b.clone()].concat());
                    }
                }
            }
        }
        out
    }
}

fn join_kind() -> impl Strategy<Value = JoinKind> {
    prop_oneof![
        Just(JoinKind::Left),
        Just(JoinKind::Right),
        Just(JoinKind::Full),
        Just(JoinKind::LeftSemi),
        Just(JoinKind::LeftAnti),
        Just(JoinKind::RightSemi),
        Just(JoinKind::RightAnti),
    ]
}

/// SELECT k, v + 1 FROM in0 WHERE v > 3 (duplicates kept)
fn filter_plan() -> StreamPlan {
    let out = schema(&["k", "v1"]);
    let gt: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        col("v", 2),
        BinOp::Gt,
        Arc::new(Literal::new(ScalarValue::Int64(Some(3)))),
    ));
    let plus: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        col("v", 2),
        BinOp::Plus,
        Arc::new(Literal::new(ScalarValue::Int64(Some(1)))),
    ));
    StreamPlan {
        nodes: vec![
            source(0),
            PlanNode {
                kind: NodeKind::Filter { predicate: gt },
                inputs: vec![0],
                schema: schema(&["id", "k", "v"]),
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::Project {
                    exprs: vec![col("k", 1), plus],
                },
                inputs: vec![1],
                schema: Arc::clone(&out),
                state_tables: vec![],
            },
            materialize(2, out, 1),
        ],
    }
}

/// `filter_plan` with the predicate on the GPU path (buffered runs, weights carried
/// along): `(v > 3 OR k IN (1, 2)) AND NOT (id % 5 = 0) AND v IS NOT NULL`.
fn gpu_filter_plan(kernel: Kernel, min_rows: usize) -> StreamPlan {
    let lit =
        |n: i64| -> Arc<dyn PhysicalExpr> { Arc::new(Literal::new(ScalarValue::Int64(Some(n)))) };
    let bin = |l, op, r| -> Arc<dyn PhysicalExpr> { Arc::new(BinaryExpr::new(l, op, r)) };
    let in_list: Arc<dyn PhysicalExpr> = Arc::new(
        datafusion::physical_expr::expressions::InListExpr::try_new(
            col("k", 1),
            vec![lit(1), lit(2)],
            false,
            &schema(&["id", "k", "v"]),
        )
        .unwrap(),
    );
    let predicate = bin(
        bin(
            bin(bin(col("v", 2), BinOp::Gt, lit(3)), BinOp::Or, in_list),
            BinOp::And,
            Arc::new(datafusion::physical_expr::expressions::NotExpr::new(bin(
                bin(col("id", 0), BinOp::Modulo, lit(5)),
                BinOp::Eq,
                lit(0),
            ))),
        ),
        BinOp::And,
        Arc::new(datafusion::physical_expr::expressions::IsNotNullExpr::new(
            col("v", 2),
        )),
    );
    let offload =
        FilterOffload::try_new(kernel, min_rows, &predicate, &schema(&["id", "k", "v"])).unwrap();
    let mut plan = filter_plan();
    plan.nodes[1].kind = NodeKind::GpuFilter { predicate, offload };
    plan
}

fn gpu_filter_recompute(d: &Inputs) -> Vec<Row> {
    d.rows(0)
        .into_iter()
        .filter(|r| {
            let v = r[2];
            let k = r[1];
            let any = matches!(v, Some(v) if v > 3) || matches!(k, Some(1 | 2));
            any && r[0].is_some_and(|id| id % 5 != 0) && v.is_some()
        })
        .map(|r| vec![r[1], r[2].map(|v| v + 1)])
        .collect()
}

fn filter_recompute(d: &Inputs) -> Vec<Row> {
    d.rows(0)
        .into_iter()
        .filter(|r| matches!(r[2], Some(v) if v > 3))
        .map(|r| vec![r[1], r[2].map(|v| v + 1)])
        .collect()
}

/// SELECT *, row_number() OVER (PARTITION BY k ORDER BY v DESC NULLS FIRST, id) FROM in0
/// keeping positions offset+1 ..= offset+limit (without PARTITION BY when `partitioned` is
/// false; without the row number column when `row_number` is false).
fn topn_plan(
    partitioned: bool,
    row_number: bool,
    offset: usize,
    limit: usize,
    append_only_input: bool,
) -> StreamPlan {
    let input = schema(&["id", "k", "v"]);
    let out = if row_number {
        schema(&["id", "k", "v", "rn"])
    } else {
        Arc::clone(&input)
    };
    let desc = arrow::compute::SortOptions {
        descending: true,
        nulls_first: true,
    };
    let spec = TopNSpec {
        partition: if partitioned {
            vec![col("k", 1)]
        } else {
            vec![]
        },
        order: vec![(col("v", 2), desc), (col("id", 0), Default::default())],
        offset,
        limit,
        row_number,
        input_schema: input,
        output_schema: Arc::clone(&out),
        append_only_input,
    };
    StreamPlan {
        nodes: vec![
            source(0),
            PlanNode {
                kind: NodeKind::TopN(spec),
                inputs: vec![0],
                schema: Arc::clone(&out),
                state_tables: vec![1],
            },
            materialize(1, out, 2),
        ],
    }
}

fn topn_recompute(
    partitioned: bool,
    row_number: bool,
    offset: usize,
    limit: usize,
) -> impl Fn(&Inputs) -> Vec<Row> {
    move |d: &Inputs| {
        let mut parts: BTreeMap<Option<i64>, Vec<Row>> = BTreeMap::new();
        for r in d.rows(0) {
            parts
                .entry(if partitioned { r[1] } else { None })
                .or_default()
                .push(r);
        }
        let mut out = Vec::new();
        for (_, mut rows) in parts {
            // v DESC NULLS FIRST, then id ascending.
            rows.sort_by(|a, b| match (a[2], b[2]) {
                (None, None) => a[0].cmp(&b[0]),
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => y.cmp(&x).then(a[0].cmp(&b[0])),
            });
            for (i, mut r) in rows.into_iter().enumerate().skip(offset).take(limit) {
                if row_number {
                    r.push(Some(i as i64 + 1));
                }
                out.push(r);
            }
        }
        out
    }
}

/// Epochs that only insert rows, each under an id of its own (an append-only input).
fn append_epochs() -> impl Strategy<Value = Vec<Vec<Op>>> {
    let row = (
        proptest::option::weighted(0.9, 0i64..4),
        proptest::option::weighted(0.85, -5i64..20),
    );
    proptest::collection::vec(proptest::collection::vec(row, 0..12), 1..14).prop_map(|epochs| {
        let mut id = 0;
        epochs
            .into_iter()
            .map(|rows| {
                rows.into_iter()
                    .map(|row| {
                        id += 1;
                        Op {
                            input: 0,
                            id,
                            row: Some(row),
                        }
                    })
                    .collect()
            })
            .collect()
    })
}

fn epochs(inputs: usize) -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op_strategy(inputs), 0..25), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn aggregate_by_key(e in epochs(1), workers in 1usize..=2, restart in 0usize..12) {
        check(aggregate_plan(false, false), 1, e, workers, restart, aggregate_recompute(false))?;
    }

    #[test]
    fn global_aggregate(e in epochs(1), workers in 1usize..=2, restart in 0usize..12) {
        check(aggregate_plan(true, false), 1, e, workers, restart, aggregate_recompute(true))?;
    }

    #[test]
    fn join_with_residual_filter(e in epochs(2), workers in 1usize..=2, restart in 0usize..12) {
        check(join_plan(), 2, e, workers, restart, join_recompute)?;
    }

    #[test]
    fn join_on_the_gpu_path(min_rows in prop_oneof![Just(1usize), Just(6)], e in epochs(2), workers in 1usize..=2, restart in 0usize..12) {
        check(gpu_join_plan(min_rows), 2, e, workers, restart, join_recompute)?;
    }

    #[test]
    fn outer_semi_anti_joins(kind in join_kind(), nulls_equal in any::<bool>(), e in epochs(2), workers in 1usize..=2, restart in 0usize..12) {
        check(kind_join_plan(kind, nulls_equal), 2, e, workers, restart, kind_join_recompute(kind, nulls_equal))?;
    }

    #[test]
    fn joins_without_keys(kind in prop_oneof![Just(JoinKind::Inner), Just(JoinKind::Left), Just(JoinKind::Full), Just(JoinKind::LeftAnti)], e in epochs(2), workers in 1usize..=2, restart in 0usize..12) {
        check(keyed_join_plan(kind, false, false, false), 2, e, workers, restart, keyed_join_recompute(kind, false, false, false))?;
    }

    #[test]
    fn joins_with_a_condition_beyond_keys(kind in join_kind(), keyed in any::<bool>(), e in epochs(2), workers in 1usize..=2, restart in 0usize..12) {
        check(keyed_join_plan(kind, false, keyed, true), 2, e, workers, restart, keyed_join_recompute(kind, false, keyed, true))?;
    }

    #[test]
    fn top_n(partitioned in any::<bool>(), row_number in any::<bool>(), offset in 0usize..3, limit in 1usize..4, e in epochs(1), workers in 1usize..=2, restart in 0usize..12) {
        check(topn_plan(partitioned, row_number, offset, limit, false), 1, e, workers, restart, topn_recompute(partitioned, row_number, offset, limit))?;
    }

    // Over an input that only adds rows, MIN/MAX keep one value and DISTINCT calls a set.
    #[test]
    fn aggregate_over_append_only_input(global in any::<bool>(), e in append_epochs(), workers in 1usize..=3, restart in 0usize..14) {
        check(aggregate_plan(global, true), 1, e, workers, restart, aggregate_recompute(global))?;
    }

    // Over an input that only adds rows, a partition keeps its first offset + limit rows:
    // in one state entry up to 8 rows, in one entry per row beyond.
    #[test]
    fn top_n_over_append_only_input(partitioned in any::<bool>(), row_number in any::<bool>(), offset in 0usize..3, limit in prop_oneof![0usize..4, 6usize..10], e in append_epochs(), workers in 1usize..=3, restart in 0usize..14) {
        check(topn_plan(partitioned, row_number, offset, limit, true), 1, e, workers, restart, topn_recompute(partitioned, row_number, offset, limit))?;
    }

    #[test]
    fn aggregate_by_partial_sums(min_rows in prop_oneof![Just(1usize), Just(4)], e in epochs(1), workers in 1usize..=2, restart in 0usize..12) {
        check(partial_sum_plan(common::kernel(), min_rows, false), 1, e, workers, restart, partial_sum_recompute)?;
    }

    #[test]
    fn aggregate_by_partial_sums_over_append_only_input(e in append_epochs(), workers in 1usize..=3, restart in 0usize..14) {
        check(partial_sum_plan(common::kernel(), 1, true), 1, e, workers, restart, partial_sum_recompute)?;
    }

    #[test]
    fn filter_on_the_gpu_path(min_rows in prop_oneof![Just(1usize), Just(4)], e in epochs(1), workers in 1usize..=2, restart in 0usize..12) {
        check(gpu_filter_plan(common::kernel(), min_rows), 1, e, workers, restart, gpu_filter_recompute)?;
    }

    #[test]
    fn filter_project_materialize(e in epochs(1), workers in 1usize..=2, restart in 0usize..12) {
        check(filter_plan(), 1, e, workers, restart, filter_recompute)?;
    }
}
