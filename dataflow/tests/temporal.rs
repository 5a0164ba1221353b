//! Temporal join against a model: each left row (append-only) is joined with the right
//! side's rows as of the end of its epoch's right-side changes; later right changes do
//! not revise it. Random left inserts and right inserts/updates/deletes, 1 to 3 workers,
//! a restart from committed state midway, inner and LEFT joins.

mod common;

use common::{col, rows_of, schema, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use proptest::prelude::*;
use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

fn plan(kind: JoinKind) -> StreamPlan {
    let left = schema(&["id", "k"]);
    let right = schema(&["k", "v"]);
    let out = schema(&["id", "k", "k2", "v"]);
    let source = |name: &str, schema: &SchemaRef| PlanNode {
        kind: NodeKind::Source {
            relation: name.into(),
        },
        inputs: vec![],
        schema: Arc::clone(schema),
        state_tables: vec![],
    };
    StreamPlan {
        nodes: vec![
            source("l", &left),
            source("r", &right),
            PlanNode {
                kind: NodeKind::Join(JoinSpec {
                    kind,
                    nulls_equal: false,
                    left_keys: vec![col("k", 1)],
                    right_keys: vec![col("k", 0)],
                    left_schema: left,
                    right_schema: right,
                    output_schema: Arc::clone(&out),
                    filter: None,
                    temporal: true,
                    intervals: vec![],
                    offload: None,
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

fn batch(schema: SchemaRef, rows: &[(Option<i64>, Option<i64>)]) -> RecordBatch {
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()) as ArrayRef,
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
        ],
    )
    .unwrap()
}

/// One epoch: left rows (id, k), and right changes: set right row `slot` to (k, v) or
/// delete it.
type Epoch = (Vec<Option<i64>>, Vec<(usize, Option<(Option<i64>, i64)>)>);

fn epochs() -> impl Strategy<Value = Vec<Epoch>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(proptest::option::weighted(0.9, 0i64..4), 0..6),
            proptest::collection::vec(
                (
                    0usize..5,
                    proptest::option::weighted(
                        0.7,
                        (proptest::option::weighted(0.9, 0i64..4), 0i64..100),
                    ),
                ),
                0..4,
            ),
        ),
        1..10,
    )
}

fn run(
    kind: JoinKind,
    epochs: Vec<Epoch>,
    workers: usize,
    restart: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = plan(kind);
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    // The right side: slot → (k, v); the expected output so far.
    let mut right: BTreeMap<usize, (Option<i64>, i64)> = BTreeMap::new();
    let mut want: Vec<Row> = Vec::new();
    let mut next_id = 0;
    for (e, (left_keys, changes)) in epochs.into_iter().enumerate() {
        let mut right_delta: Vec<ChangeBatch> = Vec::new();
        let rs = schema(&["k", "v"]);
        for (slot, row) in changes {
            if let Some((k, v)) = right.remove(&slot) {
                right_delta.push(ChangeBatch::deletes(batch(
                    Arc::clone(&rs),
                    &[(k, Some(v))],
                )));
            }
            if let Some((k, v)) = row {
                right.insert(slot, (k, v));
                right_delta.push(ChangeBatch::inserts(batch(
                    Arc::clone(&rs),
                    &[(k, Some(v))],
                )));
            }
        }
        let left_rows: Vec<(Option<i64>, Option<i64>)> = left_keys
            .into_iter()
            .map(|k| {
                next_id += 1;
                (Some(next_id), k)
            })
            .collect();
        for (id, k) in &left_rows {
            let matches: Vec<i64> = right
                .values()
                .filter(|(rk, _)| k.is_some() && rk == k)
                .map(|(_, v)| *v)
                .collect();
            for v in &matches {
                want.push(vec![*id, *k, *k, Some(*v)]);
            }
            if matches.is_empty() && kind == JoinKind::Left {
                want.push(vec![*id, *k, None, None]);
            }
        }
        want.sort();
        let deltas = [
            (
                "l".to_string(),
                vec![ChangeBatch::inserts(batch(
                    schema(&["id", "k"]),
                    &left_rows,
                ))],
            ),
            ("r".to_string(), right_delta),
        ]
        .into();
        let mut b = EpochBatch::new(e as u64 + 1);
        flow.run_epoch(&deltas, &mut b).unwrap();
        store.commit(b).unwrap();
        prop_assert_eq!(
            &rows_of(&flow.snapshot_batch().unwrap()),
            &want,
            "epoch {} with {} workers",
            e,
            workers
        );
        // Left rows are looked up, never kept.
        prop_assert_eq!(store.scan(1).unwrap().len(), 0);
        if e == restart {
            flow = Dataflow::try_new(plan.clone(), workers).unwrap();
            flow.restore(&store).unwrap();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn temporal_inner_join(e in epochs(), workers in 1usize..=3, restart in 0usize..10) {
        run(JoinKind::Inner, e, workers, restart)?;
    }

    #[test]
    fn temporal_left_join(e in epochs(), workers in 1usize..=3, restart in 0usize..10) {
        run(JoinKind::Left, e, workers, restart)?;
    }
}
