//! Session windows, incremental equals recompute: random inserts and deletes of rows
//! (key, time, value) go through the session operator epoch by epoch, with 1 to 3
//! workers and a restart from committed state midway. After every epoch the output must
//! equal the sessions computed from scratch over the current rows: per key, rows sorted
//! by time, a new session where the distance to the previous row reaches the gap, each
//! row tagged [first time, last time + gap). Rows without a time get no window.

mod common;

use common::{rows_of, schema, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use proptest::prelude::*;
use sabot_dataflow::ops::session::SessionSpec;
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

fn plan(gap: i64, keyed: bool) -> StreamPlan {
    let input = schema(&["k", "ts", "v"]);
    let out = schema(&["k", "ts", "v", "window_start", "window_end"]);
    StreamPlan {
        nodes: vec![
            PlanNode {
                kind: NodeKind::Source {
                    relation: "ev".into(),
                },
                inputs: vec![],
                schema: Arc::clone(&input),
                state_tables: vec![],
            },
            PlanNode {
                kind: NodeKind::Session(SessionSpec {
                    time: 1,
                    gap,
                    keys: if keyed { vec![0] } else { vec![] },
                    input_schema: input,
                    output_schema: Arc::clone(&out),
                }),
                inputs: vec![0],
                schema: Arc::clone(&out),
                state_tables: vec![1],
            },
            PlanNode {
                kind: NodeKind::Materialize,
                inputs: vec![1],
                schema: out,
                state_tables: vec![2],
            },
        ],
    }
}

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(250))]

    #[test]
    fn sessions_equal_recompute(e in epochs(), gap in 1i64..15, keyed in any::<bool>(), workers in 1usize..=3, restart in 0usize..12) {
        run(e, gap, keyed, workers, restart)?;
    }
}
