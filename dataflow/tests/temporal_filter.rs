//! Temporal filters, incremental equals recompute: random inserts and deletes of rows
//! (k, ts) go through one or two temporal filters (`ts > now - a`, `ts <= now + b`, ...)
//! epoch by epoch while the clock moves (sometimes backwards, which must not move the
//! filters back), with 1 to 3 workers and a restart from committed state midway. After
//! every epoch the output must equal the rows that pass every condition at the largest
//! clock seen so far. Rows without a time never pass.

mod common;

use common::{col, rows_of, schema, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;
use proptest::prelude::*;
use sabot_dataflow::ops::temporal_filter::{TemporalFilterSpec, TimeBound};
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

/// One condition: `ts <bound> now + offset`.
type Condition = (TimeBound, i64);

fn bound() -> impl Strategy<Value = TimeBound> {
    prop_oneof![
        Just(TimeBound::Above { inclusive: false }),
        Just(TimeBound::Above { inclusive: true }),
        Just(TimeBound::Below { inclusive: false }),
        Just(TimeBound::Below { inclusive: true }),
    ]
}

fn passes(b: TimeBound, ts: i64, t: i64) -> bool {
    match b {
        TimeBound::Above { inclusive } => ts > t || (inclusive && ts == t),
        TimeBound::Below { inclusive } => ts < t || (inclusive && ts == t),
    }
}

fn plan(conditions: &[Condition]) -> StreamPlan {
    let input = schema(&["k", "ts"]);
    let clock = Arc::new(Schema::new(vec![Field::new(
        "now",
        DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
        false,
    )]));
    let mut nodes = vec![PlanNode {
        kind: NodeKind::Source {
            relation: "ev".into(),
        },
        inputs: vec![],
        schema: Arc::clone(&input),
        state_tables: vec![],
    }];
    for (i, (b, offset)) in conditions.iter().enumerate() {
        let now: Arc<dyn PhysicalExpr> =
            Arc::new(CastExpr::new(col("now", 0), DataType::Int64, None));
        let now_expr = Arc::new(BinaryExpr::new(
            now,
            Operator::Plus,
            Arc::new(Literal::new(ScalarValue::Int64(Some(*offset)))),
        ));
        nodes.push(PlanNode {
            kind: NodeKind::TemporalFilter(TemporalFilterSpec {
                row_expr: col("ts", 1),
                bound: *b,
                now_expr,
                now_schema: Arc::clone(&clock),
                input_schema: Arc::clone(&input),
                text: format!("ts {} now + {offset}", b.symbol()),
            }),
            inputs: vec![i],
            schema: Arc::clone(&input),
            state_tables: vec![10 + i as u32],
        });
    }
    nodes.push(PlanNode {
        kind: NodeKind::Materialize,
        inputs: vec![nodes.len() - 1],
        schema: input,
        state_tables: vec![1],
    });
    StreamPlan { nodes }
}

fn recompute(rows: &BTreeMap<usize, Row>, conditions: &[Condition], clock: i64) -> Vec<Row> {
    let mut out: Vec<Row> = rows
        .values()
        .filter(|r| {
            r[1].is_some_and(|ts| {
                conditions
                    .iter()
                    .all(|(b, offset)| passes(*b, ts, clock + offset))
            })
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// Per epoch: the clock's step, then set row slot `id` to (k, ts), or delete it.
type Epoch = (i64, Vec<(usize, Option<(i64, Option<i64>)>)>);

fn epochs() -> impl Strategy<Value = Vec<Epoch>> {
    proptest::collection::vec(
        (
            prop_oneof![8 => 0i64..6, 1 => -10i64..0],
            proptest::collection::vec(
                (
                    0usize..12,
                    proptest::option::weighted(
                        0.75,
                        (0i64..3, proptest::option::weighted(0.95, 0i64..80)),
                    ),
                ),
                0..6,
            ),
        ),
        1..14,
    )
}

fn batch(rows: &[Row]) -> RecordBatch {
    let cols: Vec<ArrayRef> = (0..2)
        .map(|c| Arc::new(rows.iter().map(|r| r[c]).collect::<Int64Array>()) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema(&["k", "ts"]), cols).unwrap()
}

fn run(
    e: Vec<Epoch>,
    conditions: Vec<Condition>,
    workers: usize,
    restart: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = plan(&conditions);
    let mut flow = Dataflow::try_new(plan.clone(), workers).unwrap();
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    let mut clock = 20i64;
    let mut latest = i64::MIN;
    for (n, (step, ops)) in e.into_iter().enumerate() {
        clock += step;
        latest = latest.max(clock);
        flow.set_clock(Some(clock));
        let mut changes = Vec::new();
        for (id, row) in ops {
            if let Some(old) = rows.remove(&id) {
                changes.push(ChangeBatch::deletes(batch(&[old])));
            }
            if let Some((k, ts)) = row {
                let r = vec![Some(k), ts];
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
            &recompute(&rows, &conditions, latest),
            "epoch {} at clock {} (largest {}) with {} workers",
            n,
            clock,
            latest,
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
    fn temporal_filters_equal_recompute(
        e in epochs(),
        conditions in proptest::collection::vec((bound(), -15i64..15), 1..=2),
        workers in 1usize..=3,
        restart in 0usize..14,
    ) {
        run(e, conditions, workers, restart)?;
    }
}

/// A view that keeps rows until the clock passes them runs epochs on its own: it says
/// so while it holds such rows, and stops once they are all gone.
#[test]
fn time_driven_while_rows_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut flow =
        Dataflow::try_new(plan(&[(TimeBound::Above { inclusive: false }, 0)]), 2).unwrap();
    assert!(!flow.time_driven());
    flow.set_clock(Some(10));
    let rows = vec![vec![Some(1), Some(15)], vec![Some(2), Some(30)]];
    let deltas = [("ev".to_string(), vec![ChangeBatch::inserts(batch(&rows))])].into();
    let mut b = EpochBatch::new(1);
    flow.run_epoch(&deltas, &mut b).unwrap();
    store.commit(b).unwrap();
    assert!(flow.time_driven());
    assert_eq!(rows_of(&flow.snapshot_batch().unwrap()).len(), 2);
    flow.set_clock(Some(20));
    let mut b = EpochBatch::new(2);
    flow.run_epoch(&Default::default(), &mut b).unwrap();
    store.commit(b).unwrap();
    assert_eq!(
        rows_of(&flow.snapshot_batch().unwrap()),
        vec![vec![Some(2), Some(30)]]
    );
    assert!(flow.time_driven());
    flow.set_clock(Some(40));
    let mut b = EpochBatch::new(3);
    flow.run_epoch(&Default::default(), &mut b).unwrap();
    store.commit(b).unwrap();
    assert!(rows_of(&flow.snapshot_batch().unwrap()).is_empty());
    assert!(!flow.time_driven());
}
