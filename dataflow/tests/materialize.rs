//! Materialize, both modes: after every epoch the view's rows (read from its chunks) must
//! equal the multiset of everything that went in, its changelog must add up to what
//! went in, and a restart from the committed state (with the same or another number of
//! workers) must read the same rows. Epoch sizes vary from one row to thousands, so
//! chunks are merged and (keyed) compacted many times over a run.

mod common;

use common::{rows_of, schema, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use proptest::prelude::*;
use sabot_dataflow::{ChangeBatch, Dataflow, NodeKind, PlanNode, StreamPlan};
use sabot_storage::{EpochBatch, Store};

fn plan(kind: NodeKind) -> StreamPlan {
    let s = schema(&["a", "b"]);
    StreamPlan {
        nodes: vec![
            PlanNode {
                kind: NodeKind::Source {
                    relation: "in".into(),
                },
                inputs: vec![],
                schema: Arc::clone(&s),
                state_tables: vec![],
            },
            PlanNode {
                kind,
                inputs: vec![0],
                schema: s,
                state_tables: vec![1],
            },
        ],
    }
}

fn change(schema: &SchemaRef, rows: &[(Row, i64)]) -> ChangeBatch {
    let cols: Vec<ArrayRef> = (0..2)
        .map(|c| Arc::new(rows.iter().map(|r| r.0[c]).collect::<Int64Array>()) as ArrayRef)
        .collect();
    let data = RecordBatch::try_new(Arc::clone(schema), cols).unwrap();
    ChangeBatch::try_new(data, Int64Array::from_iter_values(rows.iter().map(|r| r.1))).unwrap()
}

/// The rows of a model multiset, sorted, each as often as its count.
fn expand(model: &BTreeMap<Row, i64>) -> Vec<Row> {
    model
        .iter()
        .flat_map(|(r, c)| std::iter::repeat_n(r.clone(), *c as usize))
        .collect()
}

/// Net change per row of a changelog (rows whose change nets to 0 left out).
fn net(changes: &[ChangeBatch]) -> BTreeMap<Row, i64> {
    let mut out: BTreeMap<Row, i64> = BTreeMap::new();
    for c in changes {
        let rows = {
            // rows_of sorts; keep the batch order to pair rows with weights.
            let b = c.data();
            let cols: Vec<&Int64Array> = (0..b.num_columns())
                .map(|i| b.column(i).as_any().downcast_ref::<Int64Array>().unwrap())
                .collect();
            (0..b.num_rows())
                .map(|r| {
                    cols.iter()
                        .map(|col| {
                            use arrow::array::Array;
                            col.is_valid(r).then(|| col.value(r))
                        })
                        .collect::<Row>()
                })
                .collect::<Vec<_>>()
        };
        for (r, w) in rows.into_iter().zip(c.weights().values().iter()) {
            *out.entry(r).or_insert(0) += w;
        }
    }
    out.retain(|_, w| *w != 0);
    out
}

/// One epoch of changes: `rows` rows drawn from a small domain (so rows repeat, die and
/// come back), as (row index in the domain, weight).
fn epoch_strategy(retract: bool) -> impl Strategy<Value = Epoch> {
    let weight = if retract {
        prop_oneof![3 => Just(1i64), 1 => Just(2i64), 3 => Just(-1i64)].boxed()
    } else {
        prop_oneof![6 => Just(1i64), 1 => Just(2i64), 1 => Just(3i64)].boxed()
    };
    let size = prop_oneof![3 => 0usize..4, 2 => 4usize..60, 1 => 200usize..3000];
    // Keyed views also lose most of their rows at once now and then (every `purge`-th
    // row is retracted), so old chunks empty out and get compacted.
    let purge = if retract {
        prop_oneof![4 => Just(0usize), 1 => 1usize..4].boxed()
    } else {
        Just(0usize).boxed()
    };
    (
        size.prop_flat_map(move |n| proptest::collection::vec((any::<u16>(), weight.clone()), n)),
        purge,
    )
        .prop_map(|(changes, purge)| Epoch { changes, purge })
}

#[derive(Debug, Clone)]
struct Epoch {
    /// (row index in the domain, weight)
    changes: Vec<(u16, i64)>,
    /// Retract one count of every `purge`-th row of the view (0: none).
    purge: usize,
}

/// Row `i` of a domain of `size` rows.
fn domain_row(i: u16, size: u16) -> Row {
    let i = i % size.max(1);
    let a = i64::from(i % 64);
    // Some NULLs, so they round-trip through chunks, blobs and the row encoding.
    let b = if i.is_multiple_of(17) {
        None
    } else {
        Some(i64::from(i / 64))
    };
    vec![Some(a), b]
}

fn run(
    kind: NodeKind,
    retract: bool,
    epochs: Vec<Epoch>,
    domain: u16,
    workers: usize,
    restart_at: usize,
    restart_workers: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = schema(&["a", "b"]);
    let mut flow = Dataflow::try_new(plan(kind.clone()), workers).unwrap();
    let mut model: BTreeMap<Row, i64> = BTreeMap::new();
    for (e, ops) in epochs.iter().enumerate() {
        // Keep the model a multiset: a retraction only of a row that is there.
        let mut rows = Vec::new();
        let mut want_delta: BTreeMap<Row, i64> = BTreeMap::new();
        let purged: Vec<(Row, i64)> = if ops.purge == 0 {
            Vec::new()
        } else {
            model
                .keys()
                .step_by(ops.purge)
                .map(|r| (r.clone(), -1))
                .collect()
        };
        for (row, w) in purged {
            *model.entry(row.clone()).or_insert(0) += w;
            *want_delta.entry(row.clone()).or_insert(0) += w;
            rows.push((row, w));
        }
        model.retain(|_, c| *c != 0);
        for (i, w) in &ops.changes {
            let row = domain_row(*i, domain);
            let have = model.get(&row).copied().unwrap_or(0);
            let w = if retract && have + w < 0 { 1 } else { *w };
            *model.entry(row.clone()).or_insert(0) += w;
            *want_delta.entry(row.clone()).or_insert(0) += w;
            rows.push((row, w));
        }
        model.retain(|_, c| *c != 0);
        want_delta.retain(|_, c| *c != 0);
        // Several batches per epoch, as sources send them; every third epoch in two
        // runs under the same epoch number, as a backfill's steps and the epoch that
        // commits them are.
        let batches: Vec<ChangeBatch> = rows.chunks(97).map(|c| change(&s, c)).collect();
        let runs: Vec<Vec<ChangeBatch>> = if e.is_multiple_of(3) && batches.len() > 1 {
            let mut first = batches;
            let second = first.split_off(first.len() / 2);
            vec![first, second]
        } else {
            vec![batches]
        };
        let mut b = EpochBatch::new(e as u64 + 1);
        let mut out = Vec::new();
        for run in runs {
            let deltas = HashMap::from([("in".to_string(), run)]);
            out.extend(flow.run_epoch(&deltas, &mut b).unwrap());
        }
        store.commit(b).unwrap();
        prop_assert_eq!(net(&out), want_delta, "changelog of epoch {}", e);
        let want = expand(&model);
        prop_assert_eq!(
            &rows_of(&flow.snapshot_batch().unwrap()),
            &want,
            "epoch {} with {} workers",
            e,
            workers
        );
        if e == restart_at {
            flow = Dataflow::try_new(plan(kind.clone()), restart_workers).unwrap();
            flow.restore(&store).unwrap();
            prop_assert_eq!(
                &rows_of(&flow.snapshot_batch().unwrap()),
                &want,
                "after a restart at epoch {} on {} workers",
                e,
                restart_workers
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn keyed_rows_equal_the_multiset(
        epochs in proptest::collection::vec(epoch_strategy(true), 1..40),
        domain in prop_oneof![Just(8u16), Just(300), Just(5000)],
        workers in 1usize..4,
        restart_at in 0usize..40,
        restart_workers in 1usize..4,
    ) {
        run(NodeKind::Materialize, true, epochs, domain, workers, restart_at, restart_workers)?;
    }

    #[test]
    fn append_only_rows_equal_the_multiset(
        epochs in proptest::collection::vec(epoch_strategy(false), 1..40),
        domain in prop_oneof![Just(8u16), Just(300), Just(5000)],
        workers in 1usize..4,
        restart_at in 0usize..40,
        restart_workers in 1usize..4,
    ) {
        run(NodeKind::MaterializeAppendOnly, false, epochs, domain, workers, restart_at, restart_workers)?;
    }
}

/// State written by the keyed format (how earlier versions stored every view) is read
/// by an append-only view after an upgrade, and its later epochs add to it.
#[test]
fn append_only_reads_rows_stored_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = schema(&["a", "b"]);
    let rows: Vec<(Row, i64)> = (0..500u16).map(|i| (domain_row(i, 256), 1)).collect();
    let mut keyed = Dataflow::try_new(plan(NodeKind::Materialize), 2).unwrap();
    let deltas = HashMap::from([("in".to_string(), vec![change(&s, &rows)])]);
    let mut b = EpochBatch::new(1);
    keyed.run_epoch(&deltas, &mut b).unwrap();
    store.commit(b).unwrap();
    let before = rows_of(&keyed.snapshot_batch().unwrap());
    assert_eq!(before.len(), 500);

    let mut append = Dataflow::try_new(plan(NodeKind::MaterializeAppendOnly), 3).unwrap();
    append.restore(&store).unwrap();
    assert_eq!(rows_of(&append.snapshot_batch().unwrap()), before);
    let mut b = EpochBatch::new(2);
    append.run_epoch(&deltas, &mut b).unwrap();
    store.commit(b).unwrap();
    let mut want = before.clone();
    want.extend(before.iter().cloned());
    want.sort();
    assert_eq!(rows_of(&append.snapshot_batch().unwrap()), want);

    let mut again = Dataflow::try_new(plan(NodeKind::MaterializeAppendOnly), 1).unwrap();
    again.restore(&store).unwrap();
    assert_eq!(rows_of(&again.snapshot_batch().unwrap()), want);
}

/// An append-only view refuses a retraction (the planner gave it a plan that retracts):
/// an error, not wrong rows.
#[test]
fn append_only_refuses_a_retraction() {
    let s = schema(&["a", "b"]);
    let mut flow = Dataflow::try_new(plan(NodeKind::MaterializeAppendOnly), 1).unwrap();
    let deltas = HashMap::from([(
        "in".to_string(),
        vec![change(&s, &[(vec![Some(1), Some(2)], -1)])],
    )]);
    let err = flow
        .run_epoch(&deltas, &mut EpochBatch::new(1))
        .unwrap_err();
    assert!(err.to_string().contains("retraction"), "{err}");
}
