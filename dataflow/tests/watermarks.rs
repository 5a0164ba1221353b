//! Watermarks, late rows and EMIT ON WINDOW CLOSE against a model computed from scratch.
//!
//! Random out-of-order events go through
//! `SELECT (ts / 10) * 10 AS ws, k, count(*), sum(v), count(DISTINCT v) FROM ev GROUP BY
//! ws, k` over a source with `WATERMARK FOR ts AS ts - delay`, epoch by epoch, with 1 to 3
//! workers and a restart from the committed state midway, the aggregate told that its
//! input only adds rows or not (its DISTINCT values are kept one way or the other). After every epoch:
//! - the rows dropped as late are exactly those behind the watermark of the epoch before;
//! - updating as rows arrive, the view equals the query over the rows kept;
//! - emitting on window close, it equals that result restricted to the closed windows,
//!   and it only ever inserts;
//! - either way the aggregate's state (groups and DISTINCT values) holds only the windows
//!   still open.

mod common;

use common::{col, rows_of, schema, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::logical_expr::Operator as BinOp;
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;
use proptest::prelude::*;
use sabot_dataflow::ops::aggregate::{AggCall, AggKind, AggregateSpec};
use sabot_dataflow::ops::watermark::WatermarkSpec;
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

const WINDOW: i64 = 10;
const AGG_TABLE: u32 = 2;
const DISTINCT_TABLE: u32 = 9;

fn lit(v: i64) -> Arc<dyn PhysicalExpr> {
    Arc::new(Literal::new(ScalarValue::Int64(Some(v))))
}

fn bin(l: Arc<dyn PhysicalExpr>, op: BinOp, r: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(l, op, r))
}

fn plan(delay: i64, eowc: bool, append_only: bool) -> StreamPlan {
    let ev = schema(&["ts", "k", "v"]);
    let pre = schema(&["ws", "k", "v"]);
    let out = schema(&["ws", "k", "n", "s", "d"]);
    let ws = bin(
        bin(col("ts", 0), BinOp::Divide, lit(WINDOW)),
        BinOp::Multiply,
        lit(WINDOW),
    );
    StreamPlan {
        nodes: vec![
            PlanNode {
                kind: NodeKind::Source {
                    relation: "ev".into(),
                },
                inputs: vec![],
                schema: Arc::clone(&ev),
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::WatermarkFilter(WatermarkSpec {
                    column: 0,
                    expr: bin(col("ts", 0), BinOp::Minus, lit(delay)),
                    text: format!("ts - {delay}"),
                }),
                inputs: vec![0],
                schema: Arc::clone(&ev),
                state_tables: vec![1],
            },
            PlanNode {
                kind: NodeKind::Project {
                    exprs: vec![ws, col("k", 1), col("v", 2)],
                },
                inputs: vec![1],
                schema: Arc::clone(&pre),
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::Aggregate(AggregateSpec {
                    group_count: 2,
                    calls: vec![
                        AggCall::new(AggKind::Count, 2, None),
                        AggCall::new(AggKind::Sum, 2, None),
                        AggCall {
                            distinct: true,
                            ..AggCall::new(AggKind::Count, 2, None)
                        },
                    ],
                    input_schema: pre,
                    output_schema: Arc::clone(&out),
                    emit_on_window_close: eowc,
                    append_only_input: append_only,
                    offload: None,
                }),
                inputs: vec![2],
                schema: Arc::clone(&out),
                state_tables: vec![AGG_TABLE, DISTINCT_TABLE],
            },
            PlanNode {
                kind: NodeKind::Materialize,
                inputs: vec![3],
                schema: out,
                state_tables: vec![3],
            },
        ],
    }
}

/// The model: which rows are kept, the watermark, and the windows' results.
#[derive(Default)]
struct Model {
    watermark: Option<i64>,
    late: u64,
    /// (window start, k) → (count, sum, the values)
    groups: BTreeMap<(i64, i64), (i64, i64, BTreeSet<i64>)>,
}

impl Model {
    fn epoch(&mut self, rows: &[(i64, i64, i64)], delay: i64) {
        let mut newest = None;
        for &(ts, k, v) in rows {
            if self.watermark.is_some_and(|w| ts < w) {
                self.late += 1;
                continue;
            }
            newest = newest.max(Some(ts - delay));
            let g = self.groups.entry((ts / WINDOW * WINDOW, k)).or_default();
            g.0 += 1;
            g.1 += v;
            g.2.insert(v);
        }
        self.watermark = self.watermark.max(newest);
    }

    /// Windows starting before this are closed.
    fn closed_before(&self) -> Option<i64> {
        self.watermark.map(|w| w / WINDOW * WINDOW)
    }

    fn result(&self, only_closed: bool) -> Vec<Row> {
        let closed = self.closed_before();
        self.groups
            .iter()
            .filter(|((ws, _), _)| !only_closed || closed.is_some_and(|c| *ws < c))
            .map(|((ws, k), (n, s, d))| {
                vec![
                    Some(*ws),
                    Some(*k),
                    Some(*n),
                    Some(*s),
                    Some(d.len() as i64),
                ]
            })
            .collect()
    }

    fn open_groups(&self) -> usize {
        let closed = self.closed_before();
        self.groups
            .keys()
            .filter(|(ws, _)| closed.is_none_or(|c| *ws >= c))
            .count()
    }
}

/// Epochs of events: event time drifts forward, each event up to 15 behind the drift.
fn epochs() -> impl Strategy<Value = Vec<Vec<(i64, i64, i64)>>> {
    common::drifting_epochs(0..12, -15..5, 0..3, -5..20, 0..12)
}

/// `plan` with a filter on the GPU path (`ts IS NOT NULL`: every row passes) right after
/// the watermark filter: it holds the epoch's rows back until its barrier, every run
/// however small, which must change nothing the watermarks decide downstream.
fn with_buffering_filter(mut plan: StreamPlan) -> StreamPlan {
    use datafusion::physical_expr::expressions::IsNotNullExpr;
    use sabot_dataflow::ops::filter::FilterOffload;
    let ev = Arc::clone(&plan.nodes[0].schema);
    let predicate: Arc<dyn PhysicalExpr> = Arc::new(IsNotNullExpr::new(col("ts", 0)));
    let offload = FilterOffload::try_new(common::kernel(), 1, &predicate, &ev).unwrap();
    for node in &mut plan.nodes {
        for input in &mut node.inputs {
            if *input >= 2 {
                *input += 1;
            }
        }
    }
    plan.nodes.insert(
        2,
        PlanNode {
            kind: NodeKind::GpuFilter { predicate, offload },
            inputs: vec![1],
            schema: ev,
            state_tables: vec![],
        },
    );
    plan.nodes[3].inputs = vec![2];
    plan
}

#[allow(clippy::too_many_arguments)]
fn run(
    events: Vec<Vec<(i64, i64, i64)>>,
    delay: i64,
    eowc: bool,
    append_only: bool,
    buffered: bool,
    workers: usize,
    restart_at: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = if buffered {
        with_buffering_filter(plan(delay, eowc, append_only))
    } else {
        plan(delay, eowc, append_only)
    };
    let ev = Arc::clone(&plan.nodes[0].schema);
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    let mut model = Model::default();
    for (e, rows) in events.iter().enumerate() {
        model.epoch(rows, delay);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
        ];
        let data = RecordBatch::try_new(Arc::clone(&ev), columns).unwrap();
        let deltas = [("ev".to_string(), vec![ChangeBatch::inserts(data)])].into();
        let mut b = EpochBatch::new(e as u64 + 1);
        let changes = flow.run_epoch(&deltas, &mut b).unwrap();
        store.commit(b).unwrap();
        if eowc {
            for c in &changes {
                prop_assert!(
                    c.weights().values().iter().all(|w| *w > 0),
                    "emitting on window close retracted a row"
                );
            }
        }
        let got = rows_of(&flow.snapshot_batch().unwrap());
        prop_assert_eq!(
            &got,
            &model.result(eowc),
            "epoch {} with {} workers",
            e,
            workers
        );
        let status = flow.watermark_status();
        prop_assert_eq!(status.len(), 1);
        prop_assert_eq!(
            status[0].late_rows,
            model.late,
            "late rows after epoch {}",
            e
        );
        prop_assert_eq!(
            status[0].value.clone(),
            model.watermark.map(|w| ScalarValue::Int64(Some(w)))
        );
        let open = store.scan(AGG_TABLE).unwrap().len();
        prop_assert_eq!(open, model.open_groups(), "groups kept after epoch {}", e);
        // The groups with DISTINCT values in state.
        let with_values = common::keys_in_state(&store, DISTINCT_TABLE);
        prop_assert_eq!(
            with_values.len(),
            model.open_groups(),
            "DISTINCT values kept after epoch {}",
            e
        );
        if e == restart_at {
            flow = Dataflow::try_new(plan.clone(), workers).unwrap();
            flow.restore(&store).unwrap();
            prop_assert_eq!(flow.watermark_status(), status);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn windows_update_as_rows_arrive(e in epochs(), delay in 0i64..8, append_only in any::<bool>(), buffered in any::<bool>(), workers in 1usize..=3, restart in 0usize..14) {
        run(e, delay, false, append_only, buffered, workers, restart)?;
    }

    #[test]
    fn windows_emit_on_close(e in epochs(), delay in 0i64..8, append_only in any::<bool>(), buffered in any::<bool>(), workers in 1usize..=3, restart in 0usize..14) {
        run(e, delay, true, append_only, buffered, workers, restart)?;
    }
}

#[test]
fn a_window_is_emitted_once_when_the_watermark_passes_its_end() {
    // ts 101 and 105 in window 100; 112 moves the watermark (delay 2) to 110: closed.
    let epochs = vec![vec![(101, 0, 1), (105, 0, 2)], vec![(112, 0, 4)]];
    run(epochs, 2, true, true, false, 1, usize::MAX).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut flow = Dataflow::try_new(plan(2, true, true), 2).unwrap();
    let ev = schema(&["ts", "k", "v"]);
    let mut emitted = Vec::new();
    for (e, rows) in [vec![101, 105], vec![109], vec![112], vec![104, 130]]
        .into_iter()
        .enumerate()
    {
        let n = rows.len();
        let data = RecordBatch::try_new(
            Arc::clone(&ev),
            vec![
                Arc::new(Int64Array::from(rows)) as ArrayRef,
                Arc::new(Int64Array::from(vec![0; n])),
                Arc::new(Int64Array::from(vec![1; n])),
            ],
        )
        .unwrap();
        let deltas = [("ev".to_string(), vec![ChangeBatch::inserts(data)])].into();
        let mut b = EpochBatch::new(e as u64 + 1);
        for c in flow.run_epoch(&deltas, &mut b).unwrap() {
            emitted.extend(rows_of(c.data()));
        }
        store.commit(b).unwrap();
    }
    // Window 100 closes in the third epoch with its three rows; 104 came late.
    assert_eq!(
        emitted,
        vec![
            vec![Some(100), Some(0), Some(3), Some(3), Some(1)],
            vec![Some(110), Some(0), Some(1), Some(1), Some(1)],
        ]
    );
    assert_eq!(flow.watermark_status()[0].late_rows, 1);
}

/// Appends a source `name` of (ts, k, v) and its `WATERMARK FOR ts AS ts - delay` filter
/// (state table `table`); returns the filter's node.
fn watermarked_source(nodes: &mut Vec<PlanNode>, name: &str, table: u32, delay: i64) -> usize {
    let ev = schema(&["ts", "k", "v"]);
    nodes.push(PlanNode {
        kind: NodeKind::Source {
            relation: name.into(),
        },
        inputs: vec![],
        schema: Arc::clone(&ev),
        state_tables: vec![],
    });
    nodes.push(PlanNode {
        kind: NodeKind::WatermarkFilter(WatermarkSpec {
            column: 0,
            expr: bin(col("ts", 0), BinOp::Minus, lit(delay)),
            text: format!("ts - {delay}"),
        }),
        inputs: vec![nodes.len() - 1],
        schema: ev,
        state_tables: vec![table],
    });
    nodes.len() - 1
}

/// Window join: `SELECT * FROM (SELECT ws, k, v FROM a) <kind> JOIN (SELECT ws, k, v
/// FROM b) USING (ws, k)`, each side a source with `WATERMARK FOR ts AS ts - delay`.
fn window_join_plan(
    delay: i64,
    kind: sabot_dataflow::ops::join::JoinKind,
    batched: bool,
) -> StreamPlan {
    use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
    let side = schema(&["ws", "k", "v"]);
    let out = if matches!(kind, JoinKind::LeftSemi | JoinKind::LeftAnti) {
        Arc::clone(&side)
    } else {
        schema(&["ws", "k", "v", "ws2", "k2", "v2"])
    };
    let ws = || {
        bin(
            bin(col("ts", 0), BinOp::Divide, lit(WINDOW)),
            BinOp::Multiply,
            lit(WINDOW),
        )
    };
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let filtered = watermarked_source(&mut nodes, name, 10 + i as u32, delay);
        nodes.push(PlanNode {
            kind: NodeKind::Project {
                exprs: vec![ws(), col("k", 1), col("v", 2)],
            },
            inputs: vec![filtered],
            schema: Arc::clone(&side),
            state_tables: vec![],
        });
    }
    nodes.push(PlanNode {
        kind: NodeKind::Join(JoinSpec {
            kind,
            nulls_equal: false,
            left_keys: vec![col("ws", 0), col("k", 1)],
            right_keys: vec![col("ws", 0), col("k", 1)],
            left_schema: Arc::clone(&side),
            right_schema: side,
            output_schema: Arc::clone(&out),
            temporal: false,
            intervals: vec![],
            filter: None,
            offload: batched_join(batched && kind == JoinKind::Inner),
        }),
        inputs: vec![2, 5],
        schema: Arc::clone(&out),
        state_tables: vec![JOIN_TABLES[0], JOIN_TABLES[1]],
    });
    nodes.push(PlanNode {
        kind: NodeKind::Materialize,
        inputs: vec![6],
        schema: out,
        state_tables: vec![22],
    });
    StreamPlan { nodes }
}

const JOIN_TABLES: [u32; 2] = [20, 21];

/// With `batched`, an inner join's epoch deltas are joined with each other in one batch
/// join (the GPU path; the CPU's reference kernel without a GPU), every run however small.
fn batched_join(batched: bool) -> Option<sabot_dataflow::ops::partial::Offload> {
    batched.then(|| sabot_dataflow::ops::partial::Offload {
        kernel: common::kernel(),
        min_rows: 1,
    })
}

/// One side of the window join: its rows kept (late ones dropped) and its watermark.
#[derive(Default)]
struct SideModel {
    watermark: Option<i64>,
    rows: Vec<(i64, i64, i64)>,
}

impl SideModel {
    fn epoch(&mut self, rows: &[(i64, i64, i64)], delay: i64) {
        let mut newest = None;
        for &r in rows {
            if self.watermark.is_some_and(|w| r.0 < w) {
                continue;
            }
            newest = newest.max(Some(r.0 - delay));
            self.rows.push(r);
        }
        self.watermark = self.watermark.max(newest);
    }

    /// Distinct (window, k, v) rows whose window the other side's watermark has not
    /// passed: the rows the join must still keep.
    fn kept_against(&self, other: &SideModel) -> usize {
        let closed = other.watermark.map(|w| w / WINDOW * WINDOW);
        let mut distinct: Vec<(i64, i64, i64)> = self
            .rows
            .iter()
            .map(|r| (r.0 / WINDOW * WINDOW, r.1, r.2))
            .filter(|r| closed.is_none_or(|c| r.0 >= c))
            .collect();
        distinct.sort();
        distinct.dedup();
        distinct.len()
    }

    /// Distinct (window, k, v) rows whose window not both watermarks have passed: what an
    /// outer, semi or anti join must still keep.
    fn kept_unless_both_passed(&self, a: &SideModel, b: &SideModel) -> usize {
        let closed = match (a.watermark, b.watermark) {
            (Some(x), Some(y)) => Some(x.min(y) / WINDOW * WINDOW),
            _ => None,
        };
        let mut distinct: Vec<(i64, i64, i64)> = self
            .rows
            .iter()
            .map(|r| (r.0 / WINDOW * WINDOW, r.1, r.2))
            .filter(|r| closed.is_none_or(|c| r.0 >= c))
            .collect();
        distinct.sort();
        distinct.dedup();
        distinct.len()
    }
}

/// The window join of the kept rows, computed from scratch.
fn window_join_model(
    ma: &SideModel,
    mb: &SideModel,
    kind: sabot_dataflow::ops::join::JoinKind,
) -> Vec<Row> {
    use sabot_dataflow::ops::join::JoinKind;
    let w = |r: &(i64, i64, i64)| (r.0 / WINDOW * WINDOW, r.1, r.2);
    let matches = |x: &(i64, i64, i64), y: &(i64, i64, i64)| w(x).0 == w(y).0 && x.1 == y.1;
    let full = |x: Option<(i64, i64, i64)>, y: Option<(i64, i64, i64)>| -> Row {
        let side = |r: Option<(i64, i64, i64)>| {
            r.map_or([None, None, None], |r| [Some(r.0), Some(r.1), Some(r.2)])
        };
        side(x.map(|x| w(&x)))
            .into_iter()
            .chain(side(y.map(|y| w(&y))))
            .collect()
    };
    let mut want: Vec<Row> = Vec::new();
    for x in &ma.rows {
        let n = mb.rows.iter().filter(|y| matches(x, y)).count();
        match kind {
            JoinKind::LeftSemi if n > 0 => want.push(full(Some(*x), None)[..3].to_vec()),
            JoinKind::LeftAnti if n == 0 => want.push(full(Some(*x), None)[..3].to_vec()),
            JoinKind::Inner | JoinKind::Left | JoinKind::Full => {
                for y in mb.rows.iter().filter(|y| matches(x, y)) {
                    want.push(full(Some(*x), Some(*y)));
                }
                if n == 0 && kind != JoinKind::Inner {
                    want.push(full(Some(*x), None));
                }
            }
            _ => {}
        }
    }
    if kind == JoinKind::Full {
        for y in &mb.rows {
            if !ma.rows.iter().any(|x| matches(x, y)) {
                want.push(full(None, Some(*y)));
            }
        }
    }
    want.sort();
    want
}

fn join_kind() -> impl Strategy<Value = sabot_dataflow::ops::join::JoinKind> {
    use sabot_dataflow::ops::join::JoinKind;
    prop_oneof![
        Just(JoinKind::Inner),
        Just(JoinKind::Left),
        Just(JoinKind::Full),
        Just(JoinKind::LeftSemi),
        Just(JoinKind::LeftAnti),
    ]
}

fn events_batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(&["ts", "k", "v"]),
        vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()) as ArrayRef,
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
        ],
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The join equals the join of the rows kept on each side. An inner join keeps only
    /// rows of windows the other side's watermark has not passed; outer, semi and anti
    /// joins those of windows not both watermarks have passed.
    #[test]
    fn window_join_purges_closed_windows(a in epochs(), b in epochs(), delay in 0i64..8, workers in 1usize..=3, restart in 0usize..14, kind in join_kind(), batched in any::<bool>()) {
        use sabot_dataflow::ops::join::JoinKind;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plan = window_join_plan(delay, kind, batched);
        let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
        let (mut ma, mut mb) = (SideModel::default(), SideModel::default());
        let n = a.len().max(b.len());
        let none = Vec::new();
        for e in 0..n {
            let (ra, rb) = (a.get(e).unwrap_or(&none), b.get(e).unwrap_or(&none));
            ma.epoch(ra, delay);
            mb.epoch(rb, delay);
            let deltas = [
                ("a".to_string(), vec![ChangeBatch::inserts(events_batch(ra))]),
                ("b".to_string(), vec![ChangeBatch::inserts(events_batch(rb))]),
            ]
            .into();
            let mut batch = EpochBatch::new(e as u64 + 1);
            flow.run_epoch(&deltas, &mut batch).unwrap();
            store.commit(batch).unwrap();
            let want = window_join_model(&ma, &mb, kind);
            let got = rows_of(&flow.snapshot_batch().unwrap());
            prop_assert_eq!(&got, &want, "{:?} join, epoch {} with {} workers", kind, e, workers);
            let (kept_a, kept_b) = if kind == JoinKind::Inner {
                (ma.kept_against(&mb), mb.kept_against(&ma))
            } else {
                (ma.kept_unless_both_passed(&ma, &mb), mb.kept_unless_both_passed(&ma, &mb))
            };
            prop_assert_eq!(store.scan(JOIN_TABLES[0]).unwrap().len(), kept_a, "left rows kept after epoch {} ({:?})", e, kind);
            prop_assert_eq!(store.scan(JOIN_TABLES[1]).unwrap().len(), kept_b, "right rows kept after epoch {} ({:?})", e, kind);
            if e == restart {
                flow = Dataflow::try_new(plan.clone(), workers).unwrap();
                flow.restore(&store).unwrap();
            }
        }
    }
}

/// Interval join: `a JOIN b ON a.k = b.k AND a.ts BETWEEN b.ts - 5 AND b.ts + 3`, each
/// side with `WATERMARK FOR ts AS ts - delay`. Left rows with `ts` below the right
/// watermark less 5 can match no right row to come, right rows below the left watermark
/// less 3 no left row to come: both are dropped from the state.
fn interval_join_plan(delay: i64, batched: bool) -> StreamPlan {
    use sabot_dataflow::ops::join::{IntervalBound, JoinKind, JoinSpec};
    let ev = schema(&["ts", "k", "v"]);
    let out = schema(&["ts", "k", "v", "ts2", "k2", "v2"]);
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        watermarked_source(&mut nodes, name, 10 + i as u32, delay);
    }
    let within = bin(
        bin(
            col("ts", 0),
            BinOp::GtEq,
            bin(col("ts2", 3), BinOp::Minus, lit(5)),
        ),
        BinOp::And,
        bin(
            col("ts", 0),
            BinOp::LtEq,
            bin(col("ts2", 3), BinOp::Plus, lit(3)),
        ),
    );
    nodes.push(PlanNode {
        kind: NodeKind::Join(JoinSpec {
            kind: JoinKind::Inner,
            nulls_equal: false,
            left_keys: vec![col("k", 1)],
            right_keys: vec![col("k", 1)],
            left_schema: Arc::clone(&ev),
            right_schema: ev,
            output_schema: Arc::clone(&out),
            filter: None,
            temporal: false,
            intervals: vec![
                IntervalBound {
                    left: 0,
                    right: 0,
                    left_lower: true,
                    offset: 5,
                },
                IntervalBound {
                    left: 0,
                    right: 0,
                    left_lower: false,
                    offset: 3,
                },
            ],
            offload: batched_join(batched),
        }),
        inputs: vec![1, 3],
        schema: Arc::clone(&out),
        state_tables: vec![JOIN_TABLES[0], JOIN_TABLES[1]],
    });
    nodes.push(PlanNode {
        kind: NodeKind::Filter { predicate: within },
        inputs: vec![4],
        schema: Arc::clone(&out),
        state_tables: vec![],
    });
    nodes.push(PlanNode {
        kind: NodeKind::Materialize,
        inputs: vec![5],
        schema: out,
        state_tables: vec![22],
    });
    StreamPlan { nodes }
}

/// Distinct rows of `side` not ruled out by the other side's watermark less `offset`.
fn kept_within(side: &SideModel, other: &SideModel, offset: i64) -> usize {
    let mut rows: Vec<(i64, i64, i64)> = side
        .rows
        .iter()
        .filter(|r| other.watermark.is_none_or(|w| r.0 >= w - offset))
        .copied()
        .collect();
    rows.sort();
    rows.dedup();
    rows.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn interval_join_purges_rows_out_of_reach(a in epochs(), b in epochs(), delay in 0i64..8, workers in 1usize..=3, restart in 0usize..14, batched in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plan = interval_join_plan(delay, batched);
        let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
        let (mut ma, mut mb) = (SideModel::default(), SideModel::default());
        let none = Vec::new();
        for e in 0..a.len().max(b.len()) {
            let (ra, rb) = (a.get(e).unwrap_or(&none), b.get(e).unwrap_or(&none));
            ma.epoch(ra, delay);
            mb.epoch(rb, delay);
            let deltas = [
                ("a".to_string(), vec![ChangeBatch::inserts(events_batch(ra))]),
                ("b".to_string(), vec![ChangeBatch::inserts(events_batch(rb))]),
            ]
            .into();
            let mut batch = EpochBatch::new(e as u64 + 1);
            flow.run_epoch(&deltas, &mut batch).unwrap();
            store.commit(batch).unwrap();
            let mut want: Vec<Row> = Vec::new();
            for x in &ma.rows {
                for y in &mb.rows {
                    if x.1 == y.1 && x.0 >= y.0 - 5 && x.0 <= y.0 + 3 {
                        want.push([x.0, x.1, x.2, y.0, y.1, y.2].into_iter().map(Some).collect());
                    }
                }
            }
            want.sort();
            let got = rows_of(&flow.snapshot_batch().unwrap());
            prop_assert_eq!(&got, &want, "epoch {} with {} workers", e, workers);
            prop_assert_eq!(store.scan(JOIN_TABLES[0]).unwrap().len(), kept_within(&ma, &mb, 5), "left rows kept after epoch {}", e);
            prop_assert_eq!(store.scan(JOIN_TABLES[1]).unwrap().len(), kept_within(&mb, &ma, 3), "right rows kept after epoch {}", e);
            if e == restart {
                flow = Dataflow::try_new(plan.clone(), workers).unwrap();
                flow.restore(&store).unwrap();
            }
        }
    }
}

/// Top-1 per window: `SELECT ws, k, v FROM (... ROW_NUMBER() OVER (PARTITION BY ws ORDER
/// BY v DESC, k) ...) WHERE rn = 1` over the watermarked source: each closed window's
/// rows leave the state, its top row stays in the view. Told that its input only adds
/// rows, the top-N keeps one state entry per open window instead of one per row.
fn top_per_window_plan(delay: i64, append_only: bool) -> StreamPlan {
    use arrow::compute::SortOptions;
    use sabot_dataflow::ops::topn::TopNSpec;
    let side = schema(&["ws", "k", "v"]);
    let mut nodes = Vec::new();
    let filtered = watermarked_source(&mut nodes, "ev", 1, delay);
    nodes.push(PlanNode {
        kind: NodeKind::Project {
            exprs: vec![
                bin(
                    bin(col("ts", 0), BinOp::Divide, lit(WINDOW)),
                    BinOp::Multiply,
                    lit(WINDOW),
                ),
                col("k", 1),
                col("v", 2),
            ],
        },
        inputs: vec![filtered],
        schema: Arc::clone(&side),
        state_tables: vec![],
    });
    let desc = SortOptions {
        descending: true,
        nulls_first: false,
    };
    nodes.push(PlanNode {
        kind: NodeKind::TopN(TopNSpec {
            partition: vec![col("ws", 0)],
            order: vec![(col("v", 2), desc), (col("k", 1), SortOptions::default())],
            offset: 0,
            limit: 1,
            row_number: false,
            input_schema: Arc::clone(&side),
            output_schema: Arc::clone(&side),
            append_only_input: append_only,
        }),
        inputs: vec![2],
        schema: Arc::clone(&side),
        state_tables: vec![AGG_TABLE],
    });
    nodes.push(PlanNode {
        kind: NodeKind::Materialize,
        inputs: vec![3],
        schema: side,
        state_tables: vec![3],
    });
    StreamPlan { nodes }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn top_n_per_window_purges_closed_windows(e in epochs(), delay in 0i64..8, append_only in any::<bool>(), workers in 1usize..=3, restart in 0usize..14) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plan = top_per_window_plan(delay, append_only);
        let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
        let mut side = SideModel::default();
        for (n, rows) in e.iter().enumerate() {
            side.epoch(rows, delay);
            let deltas = [("ev".to_string(), vec![ChangeBatch::inserts(events_batch(rows))])].into();
            let mut batch = EpochBatch::new(n as u64 + 1);
            flow.run_epoch(&deltas, &mut batch).unwrap();
            store.commit(batch).unwrap();
            // Per window the row with the largest v, then the smallest k.
            let mut best: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            for r in &side.rows {
                let ws = r.0 / WINDOW * WINDOW;
                let cand = (r.2, r.1);
                best.entry(ws)
                    .and_modify(|b| {
                        if cand.0 > b.0 || (cand.0 == b.0 && cand.1 < b.1) {
                            *b = cand;
                        }
                    })
                    .or_insert(cand);
            }
            let want: Vec<Row> = best
                .into_iter()
                .map(|(ws, (v, k))| vec![Some(ws), Some(k), Some(v)])
                .collect();
            prop_assert_eq!(&rows_of(&flow.snapshot_batch().unwrap()), &want, "epoch {} with {} workers", n, workers);
            let closed = side.watermark.map(|w| w / WINDOW * WINDOW);
            let mut open: Vec<(i64, i64, i64)> = side
                .rows
                .iter()
                .map(|r| (r.0 / WINDOW * WINDOW, r.1, r.2))
                .filter(|r| closed.is_none_or(|c| r.0 >= c))
                .collect();
            open.sort();
            open.dedup();
            if append_only {
                open.dedup_by_key(|r| r.0);
            }
            prop_assert_eq!(store.scan(AGG_TABLE).unwrap().len(), open.len(), "entries kept after epoch {}", n);
            if n == restart {
                flow = Dataflow::try_new(plan.clone(), workers).unwrap();
                flow.restore(&store).unwrap();
            }
        }
    }
}

#[test]
fn explain_dot_draws_every_node_and_edge() {
    let plan = window_join_plan(2, sabot_dataflow::ops::join::JoinKind::Inner, false);
    let dot = plan.explain_dot(2);
    assert!(dot.starts_with("digraph dataflow {\n"), "{dot}");
    assert!(dot.ends_with("}\n"), "{dot}");
    for i in 0..plan.nodes.len() {
        assert!(
            dot.contains(&format!("  n{i} [label=\"")),
            "node {i} in {dot}"
        );
    }
    let edges: usize = plan.nodes.iter().map(|n| n.inputs.len()).sum();
    assert_eq!(dot.matches(" -> ").count(), edges, "{dot}");
    // The join and the materialization are fed through hash exchanges.
    assert_eq!(dot.matches("[label=\"hash\"]").count(), 3, "{dot}");
    assert!(dot.contains("WatermarkFilter: ts >= watermark"), "{dot}");
    // With one worker there is no exchange.
    assert_eq!(plan.explain_dot(1).matches("[label=\"hash\"]").count(), 0);
}
