//! ASOF joins, incremental equals recompute: random inserts and deletes on both sides
//! (k, ts, v) go through an ASOF join (inner or LEFT, each of `>= > <= <`) epoch by
//! epoch, with 1 to 3 workers and a restart from committed state midway. After every
//! epoch the output must equal the join computed from scratch: each left row with the
//! right row of its key whose time is closest on the condition's side (ties: the
//! largest row for `>=`/`>`, the smallest for `<=`/`<`, NULLs first), NULLs when there is
//! none in a LEFT join. NULL keys and times match nothing.

mod common;

use common::{col, rows_of, schema, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use proptest::prelude::*;
use sabot_dataflow::ops::asof::{AsofMatch, AsofSpec};
use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

fn matching() -> impl Strategy<Value = AsofMatch> {
    prop_oneof![
        Just(AsofMatch::AtOrBefore),
        Just(AsofMatch::Before),
        Just(AsofMatch::AtOrAfter),
        Just(AsofMatch::After),
    ]
}

fn plan(m: AsofMatch, outer: bool) -> StreamPlan {
    let left = schema(&["k", "ts", "v"]);
    let right = schema(&["k2", "ts2", "w"]);
    let out = schema(&["k", "ts", "v", "k2", "ts2", "w"]);
    let source = |relation: &str, s: &arrow::datatypes::SchemaRef| PlanNode {
        kind: NodeKind::Source {
            relation: relation.into(),
        },
        inputs: vec![],
        schema: Arc::clone(s),
        state_tables: vec![],
    };
    StreamPlan {
        nodes: vec![
            source("l", &left),
            source("r", &right),
            PlanNode {
                kind: NodeKind::AsofJoin(AsofSpec {
                    join: JoinSpec {
                        kind: if outer {
                            JoinKind::Left
                        } else {
                            JoinKind::Inner
                        },
                        nulls_equal: false,
                        left_keys: vec![col("k", 0)],
                        right_keys: vec![col("k2", 0)],
                        left_schema: Arc::clone(&left),
                        right_schema: Arc::clone(&right),
                        output_schema: Arc::clone(&out),
                        filter: None,
                        temporal: false,
                        intervals: vec![],
                        offload: None,
                    },
                    left_time: col("ts", 1),
                    right_time: col("ts2", 1),
                    matching: m,
                }),
                inputs: vec![0, 1],
                schema: Arc::clone(&out),
                state_tables: vec![1, 2],
            },
            PlanNode {
                kind: NodeKind::Materialize,
                inputs: vec![2],
                schema: out,
                state_tables: vec![3],
            },
        ],
    }
}

fn recompute(
    left: &BTreeMap<usize, Row>,
    right: &BTreeMap<usize, Row>,
    m: AsofMatch,
    outer: bool,
) -> Vec<Row> {
    let mut out = Vec::new();
    for l in left.values() {
        let candidates = right.values().filter(|r| {
            let (Some(lk), Some(lt), Some(rk), Some(rt)) = (l[0], l[1], r[0], r[1]) else {
                return false;
            };
            lk == rk
                && match m {
                    AsofMatch::AtOrBefore => lt >= rt,
                    AsofMatch::Before => lt > rt,
                    AsofMatch::AtOrAfter => lt <= rt,
                    AsofMatch::After => lt < rt,
                }
        });
        let best = match m {
            AsofMatch::AtOrBefore | AsofMatch::Before => {
                candidates.max_by_key(|r| (r[1], (*r).clone()))
            }
            AsofMatch::AtOrAfter | AsofMatch::After => {
                candidates.min_by_key(|r| (r[1], (*r).clone()))
            }
        };
        match best {
            Some(r) => out.push(l.iter().chain(r.iter()).copied().collect()),
            None if outer => out.push(l.iter().copied().chain([None, None, None]).collect()),
            None => {}
        }
    }
    out.sort();
    out
}

/// Per epoch: set slot `id` of side `right?` to (k, ts, v), or delete it.
type Epoch = Vec<(bool, usize, Option<(Option<i64>, Option<i64>, i64)>)>;

fn epochs() -> impl Strategy<Value = Vec<Epoch>> {
    proptest::collection::vec(
        proptest::collection::vec(
            (
                any::<bool>(),
                0usize..10,
                proptest::option::weighted(
                    0.75,
                    (
                        proptest::option::weighted(0.95, 0i64..3),
                        proptest::option::weighted(0.95, 0i64..20),
                        0i64..3,
                    ),
                ),
            ),
            0..8,
        ),
        1..12,
    )
}

fn batch(rows: &[Row], names: &[&str]) -> RecordBatch {
    let cols: Vec<ArrayRef> = (0..3)
        .map(|c| Arc::new(rows.iter().map(|r| r[c]).collect::<Int64Array>()) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema(names), cols).unwrap()
}

fn run(
    e: Vec<Epoch>,
    m: AsofMatch,
    outer: bool,
    workers: usize,
    restart: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = plan(m, outer);
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    let mut sides: [BTreeMap<usize, Row>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let names = [["k", "ts", "v"], ["k2", "ts2", "w"]];
    for (n, ops) in e.into_iter().enumerate() {
        let mut changes: [Vec<ChangeBatch>; 2] = [Vec::new(), Vec::new()];
        for (is_right, id, row) in ops {
            let s = usize::from(is_right);
            if let Some(old) = sides[s].remove(&id) {
                changes[s].push(ChangeBatch::deletes(batch(&[old], &names[s])));
            }
            if let Some((k, ts, v)) = row {
                let r = vec![k, ts, Some(v)];
                sides[s].insert(id, r.clone());
                changes[s].push(ChangeBatch::inserts(batch(&[r], &names[s])));
            }
        }
        let [l, r] = changes;
        let deltas = [("l".to_string(), l), ("r".to_string(), r)].into();
        let mut b = EpochBatch::new(n as u64 + 1);
        flow.run_epoch(&deltas, &mut b).unwrap();
        store.commit(b).unwrap();
        let got = rows_of(&flow.snapshot_batch().unwrap());
        prop_assert_eq!(
            &got,
            &recompute(&sides[0], &sides[1], m, outer),
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
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn asof_joins_equal_recompute(
        e in epochs(),
        m in matching(),
        outer in any::<bool>(),
        workers in 1usize..=3,
        restart in 0usize..12,
    ) {
        run(e, m, outer, workers, restart)?;
    }
}
