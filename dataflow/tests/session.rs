//! Session windows, incremental equals recompute: random inserts and deletes of rows
//! (key, time, value) go through the session operator epoch by epoch, with 1 to 3
//! workers and a restart from committed state midway. After every epoch the output must
//! equal the sessions computed from scratch over the current rows: per key, rows sorted
//! by time, a new session where the distance to the previous row reaches the gap, each
//! row tagged [first time, last time + gap). Rows without a time get no window.
//!
//! A second test sends inserts only, through `WATERMARK FOR ts AS ts - delay`, with the
//! operator told its input only adds rows (state in chunks per epoch): the output must
//! equal the sessions of the rows kept (late rows dropped), and the state must hold
//! something for exactly the keys that have a session still open.

mod common;

use common::{rows_of, schema, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use proptest::prelude::*;
use sabot_dataflow::ops::session::SessionSpec;
use sabot_dataflow::ops::watermark::WatermarkSpec;
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

fn plan(gap: i64, keyed: bool) -> StreamPlan {
    session_plan(gap, keyed, None)
}

/// Source `ev` → (with `delay`: a watermark filter `ts - delay`, and the session told its
/// input only adds rows) → session window → materialize.
fn session_plan(gap: i64, keyed: bool, delay: Option<i64>) -> StreamPlan {
    use datafusion::logical_expr::Operator as BinOp;
    use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
    use datafusion::scalar::ScalarValue;
    let input = schema(&["k", "ts", "v"]);
    let out = schema(&["k", "ts", "v", "window_start", "window_end"]);
    let mut nodes = vec![PlanNode {
        kind: NodeKind::Source {
            relation: "ev".into(),
        },
        inputs: vec![],
        schema: Arc::clone(&input),
        state_tables: vec![],
    }];
    if let Some(delay) = delay {
        nodes.push(PlanNode {
            kind: NodeKind::WatermarkFilter(WatermarkSpec {
                column: 1,
                expr: Arc::new(BinaryExpr::new(
                    common::col("ts", 1),
                    BinOp::Minus,
                    Arc::new(Literal::new(ScalarValue::Int64(Some(delay)))),
                )),
                text: format!("ts - {delay}"),
            }),
            inputs: vec![0],
            schema: Arc::clone(&input),
            state_tables: vec![3],
        });
    }
    nodes.push(PlanNode {
        kind: NodeKind::Session(SessionSpec {
            time: 1,
            gap,
            keys: if keyed { vec![0] } else { vec![] },
            input_schema: input,
            output_schema: Arc::clone(&out),
            append_only_input: delay.is_some(),
        }),
        inputs: vec![nodes.len() - 1],
        schema: Arc::clone(&out),
        state_tables: vec![SESSION_TABLE],
    });
    nodes.push(PlanNode {
        kind: NodeKind::Materialize,
        inputs: vec![nodes.len() - 1],
        schema: out,
        state_tables: vec![2],
    });
    StreamPlan { nodes }
}

const SESSION_TABLE: u32 = 1;

fn recompute(rows: &BTreeMap<usize, Row>, gap: i64, keyed: bool) -> Vec<Row> {
    let mut by_key: BTreeMap<Option<i64>, Vec<&Row>> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rows.values() {
        if r[1].is_none() {
            out.push(vec![r[0], r[1], r[2], None, None]);
            continue;
        }
        by_key
            .entry(if keyed { r[0] } else { None })
            .or_default()
            .push(r);
    }
    for (_, mut rs) in by_key {
        rs.sort_by_key(|r| r[1]);
        let mut i = 0;
        while i < rs.len() {
            let mut j = i;
            while j + 1 < rs.len() && rs[j + 1][1].unwrap() - rs[j][1].unwrap() < gap {
                j += 1;
            }
            let (start, end) = (rs[i][1].unwrap(), rs[j][1].unwrap() + gap);
            for r in &rs[i..=j] {
                out.push(vec![r[0], r[1], r[2], Some(start), Some(end)]);
            }
            i = j + 1;
        }
    }
    out.sort();
    out
}

/// Per epoch: set row slot `id` to (k, ts, v), or delete it.
type Epoch = Vec<(usize, Option<(i64, Option<i64>, i64)>)>;

fn epochs() -> impl Strategy<Value = Vec<Epoch>> {
    proptest::collection::vec(
        proptest::collection::vec(
            (
                0usize..14,
                proptest::option::weighted(
                    0.75,
                    (0i64..3, proptest::option::weighted(0.95, 0i64..60), 0i64..5),
                ),
            ),
            0..6,
        ),
        1..12,
    )
}

fn batch(rows: &[Row]) -> RecordBatch {
    let cols: Vec<ArrayRef> = (0..3)
        .map(|c| Arc::new(rows.iter().map(|r| r[c]).collect::<Int64Array>()) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema(&["k", "ts", "v"]), cols).unwrap()
}

fn run(
    e: Vec<Epoch>,
    gap: i64,
    keyed: bool,
    workers: usize,
    restart: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = plan(gap, keyed);
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    for (n, ops) in e.into_iter().enumerate() {
        let mut changes = Vec::new();
        for (id, row) in ops {
            if let Some(old) = rows.remove(&id) {
                changes.push(ChangeBatch::deletes(batch(&[old])));
            }
            if let Some((k, ts, v)) = row {
                let r = vec![Some(k), ts, Some(v)];
                rows.insert(id, r.clone());
                changes.push(ChangeBatch::inserts(batch(&[r])));
            }
        }
        let deltas = [("ev".to_string(), changes)].into();
        let mut b = EpochBatch::new(n as u64 + 1);
        flow.run_epoch(&deltas, &mut b).unwrap();
        store.commit(b).unwrap();
        let got = rows_of(&flow.snapshot_batch().unwrap());
        prop_assert_eq!(
            &got,
            &recompute(&rows, gap, keyed),
            "epoch {} with {} workers",
            n,
            workers
        );
        if n == restart {
            flow = Dataflow::try_new(plan.clone(), workers).unwrap();
            flow.restore(&store).unwrap();
        }
    }
    Ok(())
}

/// Epochs of inserts (k, ts, v), time drifting forward, each up to 12 behind the drift.
fn append_epochs() -> impl Strategy<Value = Vec<Vec<(i64, i64, i64)>>> {
    common::drifting_epochs(0..10, -12..4, 0..3, 0..5, 0..8).prop_map(|epochs| {
        epochs
            .into_iter()
            .map(|rows| rows.into_iter().map(|(ts, k, v)| (k, ts, v)).collect())
            .collect()
    })
}

fn run_append_only(
    e: Vec<Vec<(i64, i64, i64)>>,
    gap: i64,
    keyed: bool,
    delay: i64,
    workers: usize,
    restart: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = session_plan(gap, keyed, Some(delay));
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    let mut kept: BTreeMap<usize, Row> = BTreeMap::new();
    let mut watermark: Option<i64> = None;
    for (n, inserts) in e.into_iter().enumerate() {
        let mut newest = None;
        for &(k, ts, v) in &inserts {
            if watermark.is_none_or(|w| ts >= w) {
                kept.insert(kept.len(), vec![Some(k), Some(ts), Some(v)]);
                newest = newest.max(Some(ts - delay));
            }
        }
        watermark = watermark.max(newest);
        let rows: Vec<Row> = inserts
            .iter()
            .map(|&(k, ts, v)| vec![Some(k), Some(ts), Some(v)])
            .collect();
        let deltas = [("ev".to_string(), vec![ChangeBatch::inserts(batch(&rows))])].into();
        let mut b = EpochBatch::new(n as u64 + 1);
        flow.run_epoch(&deltas, &mut b).unwrap();
        store.commit(b).unwrap();
        let want = recompute(&kept, gap, keyed);
        prop_assert_eq!(
            &rows_of(&flow.snapshot_batch().unwrap()),
            &want,
            "epoch {} with {} workers",
            n,
            workers
        );
        // Keys with a session not ended before the watermark, and only those, are in
        // the state.
        let open: std::collections::BTreeSet<Option<i64>> = want
            .iter()
            .filter(|r| watermark.is_none_or(|w| r[4].is_some_and(|end| end >= w)))
            .map(|r| if keyed { r[0] } else { None })
            .collect();
        let in_state = common::keys_in_state(&store, SESSION_TABLE);
        prop_assert_eq!(in_state.len(), open.len(), "keys kept after epoch {}", n);
        // The rows of sessions still open, and no others, are held (one entry per
        // distinct row), also as restored.
        let open_rows = want
            .iter()
            .filter(|r| watermark.is_none_or(|w| r[4].is_some_and(|end| end >= w)))
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        let held = |flow: &Dataflow| -> u64 {
            flow.operator_stats()
                .iter()
                .filter(|s| s.operator == "SessionWindow")
                .map(|s| s.state_rows)
                .sum()
        };
        prop_assert_eq!(held(&flow), open_rows, "rows held after epoch {}", n);
        if n == restart {
            flow = Dataflow::try_new(plan.clone(), workers).unwrap();
            flow.restore(&store).unwrap();
            prop_assert_eq!(held(&flow), open_rows, "rows restored after epoch {}", n);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(250))]

    #[test]
    fn sessions_equal_recompute(e in epochs(), gap in 1i64..15, keyed in any::<bool>(), workers in 1usize..=3, restart in 0usize..12) {
        run(e, gap, keyed, workers, restart)?;
    }

    #[test]
    fn append_only_sessions_behind_a_watermark(e in append_epochs(), gap in 1i64..8, keyed in any::<bool>(), delay in 0i64..6, workers in 1usize..=3, restart in 0usize..14) {
        run_append_only(e, gap, keyed, delay, workers, restart)?;
    }
}
