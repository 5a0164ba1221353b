//! Equi-joins of two changelogs: inner, left/right/full outer, semi and anti.
//!
//! Each side keeps the multiset of its rows indexed by join key, and per key the total
//! multiplicity. A change ΔA on the left is joined with the right side's current rows,
//! then added to the left state; a change ΔB on the right is joined with the (already
//! updated) left rows. Processed in that order this yields ΔA⋈B + A⋈ΔB + ΔA⋈ΔB, the
//! exact change of A⋈B.
//!
//! A preserved side (the left of a LEFT join, both of a FULL join) also produces its rows
//! padded with NULLs while their key has no match; semi and anti joins produce the
//! preserved side's rows while their key has (semi) or lacks (anti) a match. Both are
//! driven by the other side's per-key total crossing zero: when it goes 0 → n every
//! preserved row at the key retracts its padded (or anti) row, n → 0 brings it back.
//! Rows with a NULL in a key column never match: kept only if their side is preserved,
//! and then always padded (or anti).
//!
//! An inner equi-join with an offload ([`JoinSpec::offload_check`]) holds the epoch's
//! changes of both sides until the barrier (before the watermarks' purges, which see
//! the same state as without it) and splits the same change the other way: ΔA⋈B and A⋈ΔB against the stored rows as
//! they were before the epoch, row by row, and ΔA⋈ΔB in one batch join of the two runs
//! (on the GPU: the key columns go to the device, the matching row pairs come back and
//! the rows are gathered here). When both sides change a lot in one epoch (a backfill,
//! a bulk load) that last term is most of the output.

use std::sync::Arc;

use ahash::AHashMap as HashMap;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::kernels::numeric;
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::Rows;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::ChangeBatch;
use crate::codec::{join_prefixed, split_prefixed};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::ops::partial::{gpu_error, gpu_key_type, GpuHealth, Kernel, Offload, RunBuffer};
use crate::ops::watermark::{behind_watermarks, raise};
use crate::row::{Partitioner, RowCodec};

/// Which rows a join produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    /// Left rows without a match, padded with NULLs, as well.
    Left,
    Right,
    Full,
    /// Left rows with at least one match, once each; left columns only.
    LeftSemi,
    /// Left rows without a match; left columns only.
    LeftAnti,
    RightSemi,
    RightAnti,
}

impl JoinKind {
    /// Whether unmatched rows of side `side` (0 left, 1 right) are output padded.
    fn pads(self, side: usize) -> bool {
        matches!(
            (self, side),
            (JoinKind::Left | JoinKind::Full, 0) | (JoinKind::Right | JoinKind::Full, 1)
        )
    }

    /// For semi and anti joins: the side whose rows are output, and whether rows with a
    /// match (semi) or without (anti) are.
    fn filtering(self) -> Option<(usize, bool)> {
        match self {
            JoinKind::LeftSemi => Some((0, true)),
            JoinKind::LeftAnti => Some((0, false)),
            JoinKind::RightSemi => Some((1, true)),
            JoinKind::RightAnti => Some((1, false)),
            _ => None,
        }
    }
}

/// The fixed settings of a join.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub kind: JoinKind,
    /// Whether NULL keys match each other (INTERSECT / EXCEPT); otherwise a row with a
    /// NULL in a key column matches nothing, as in SQL's `=`.
    pub nulls_equal: bool,
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub left_schema: SchemaRef,
    pub right_schema: SchemaRef,
    /// Left columns followed by right columns (semi/anti: the output side's columns).
    pub output_schema: SchemaRef,
    /// A further condition on pairs with equal keys (`ON a.k = b.k AND a.v < b.v`), over
    /// the left columns followed by the right columns. Inner joins filter their output
    /// instead; for the other kinds the condition decides what counts as a match.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// A temporal join (`JOIN t FOR SYSTEM_TIME AS OF PROCTIME()`): each left row is
    /// joined with the right side as it is when the row arrives, and later changes to
    /// the right side do not revise the output. The left side must be append-only
    /// (the planner checks), so left rows are not kept. Inner and left joins only.
    pub temporal: bool,
    /// Time bounds of an inner join's condition between a left and a right column
    /// (`a.ts BETWEEN b.ts - INTERVAL '10' SECOND AND b.ts`): with watermarks they tell
    /// which stored rows no row still to come can match (see [`IntervalBound`]).
    pub intervals: Vec<IntervalBound>,
    /// An inner join whose epoch deltas are joined with each other in one batch join (on
    /// the GPU, see [`JoinSpec::offload_check`]); `None`: every change row by row.
    pub offload: Option<Offload>,
}

/// A bound of an inner join's condition on a left and a right time column, in the
/// columns' unit: `left >= right - offset` (`left_lower`) or `left <= right + offset`.
///
/// With `left >= right - offset`, every right row still to come has `right` at least its
/// side's watermark `w`, so a stored left row with `left < w - offset` matches none of
/// them; with `left <= right + offset`, i.e. `right >= left - offset`, a stored right row
/// with `right < w - offset` (`w` the left side's watermark) matches no left row to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalBound {
    pub left: usize,
    pub right: usize,
    pub left_lower: bool,
    pub offset: i64,
}

impl JoinSpec {
    /// Whether the epoch's changes of both sides can be joined with each other in one
    /// batch join (ΔA ⋈ ΔB; each side's changes still meet the other's stored rows row by
    /// row): an inner equi-join (its other conditions, time bounds included, are a filter
    /// after it), not temporal, NULL keys matching nothing, and keys of types the GPU
    /// compares exactly as the CPU does. `Err` says why not.
    pub fn offload_check(&self) -> std::result::Result<(), String> {
        if self.kind != JoinKind::Inner {
            return Err(format!("a {:?} join", self.kind));
        }
        if self.temporal {
            return Err("a temporal join".into());
        }
        if self.filter.is_some() {
            return Err("a join condition beyond its keys".into());
        }
        if self.nulls_equal {
            return Err("NULL keys that match each other".into());
        }
        if self.left_keys.is_empty() {
            return Err("a join without keys".into());
        }
        for t in self.key_types().map_err(|e| e.to_string())? {
            if !gpu_key_type(&t) {
                return Err(format!("join key type {t}"));
            }
        }
        Ok(())
    }

    /// The common type each key pair is compared in (the left expression's type).
    pub fn key_types(&self) -> Result<Vec<DataType>> {
        self.left_keys
            .iter()
            .map(|e| Ok(e.data_type(&self.left_schema)?))
            .collect()
    }

    /// Evaluates the key columns of a batch arriving on `port`, cast to the key types.
    pub fn key_columns(&self, port: usize, data: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let exprs = if port == 0 {
            &self.left_keys
        } else {
            &self.right_keys
        };
        let types = self.key_types()?;
        exprs
            .iter()
            .zip(types)
            .map(|(e, t)| {
                let a = e.evaluate(data)?.into_array(data.num_rows())?;
                Ok(if a.data_type() == &t {
                    a
                } else {
                    cast(&a, &t)?
                })
            })
            .collect()
    }
}

/// The rows of one side at one join key.
#[derive(Default)]
struct Bucket {
    /// Row → multiplicity.
    rows: HashMap<Vec<u8>, i64>,
    /// The rows' total multiplicity.
    total: i64,
    /// Rows changed this epoch (a row changed twice is here twice), written at the
    /// barrier. While it has any, the bucket stays, even empty.
    changed: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Side {
    /// Join key → its rows. A key's rows, their total and what changed are found with
    /// one lookup: a change costs a lookup of its key and one of its row, nothing more.
    buckets: HashMap<Vec<u8>, Bucket>,
    /// With a join filter: join key → row → how many rows of the other side it matches.
    matched: HashMap<Vec<u8>, HashMap<Vec<u8>, i64>>,
    /// Keys with changed rows this epoch, each once.
    dirty: Vec<Vec<u8>>,
}

impl Side {
    fn total(&self, key: &[u8]) -> i64 {
        self.buckets.get(key).map_or(0, |b| b.total)
    }

    /// The rows at `key` (possibly none, until the barrier drops an emptied bucket).
    fn rows_at(&self, key: &[u8]) -> Option<&HashMap<Vec<u8>, i64>> {
        self.buckets.get(key).map(|b| &b.rows)
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn matched_count(&self, key: &[u8], row: &[u8]) -> i64 {
        self.matched
            .get(key)
            .and_then(|m| m.get(row))
            .copied()
            .unwrap_or(0)
    }

    /// Sets a stored row's match count; forgets it once the row is gone.
    fn set_matched(&mut self, key: &[u8], row: &[u8], count: i64) {
        let stored = self.rows_at(key).is_some_and(|b| b.contains_key(row));
        if stored && count != 0 {
            match self.matched.get_mut(key) {
                Some(m) => {
                    m.insert(row.to_vec(), count);
                }
                None => {
                    self.matched
                        .entry(key.to_vec())
                        .or_default()
                        .insert(row.to_vec(), count);
                }
            }
        } else if let Some(m) = self.matched.get_mut(key) {
            m.remove(row);
            if m.is_empty() {
                self.matched.remove(key);
            }
        }
    }

    /// Adds `w` copies of `row` at `key`; returns the key's total before the change.
    fn add(&mut self, key: &[u8], row: &[u8], w: i64) -> i64 {
        if w == 0 {
            return self.total(key);
        }
        let bucket = match self.buckets.get_mut(key) {
            Some(b) => b,
            None => self.buckets.entry(key.to_vec()).or_default(),
        };
        let before = bucket.total;
        bucket.total += w;
        match bucket.rows.get_mut(row) {
            Some(c) => {
                *c += w;
                if *c == 0 {
                    bucket.rows.remove(row);
                }
            }
            None => {
                bucket.rows.insert(row.to_vec(), w);
            }
        }
        if bucket.changed.is_empty() {
            self.dirty.push(key.to_vec());
        }
        bucket.changed.push(row.to_vec());
        before
    }

    /// Drops the rows at `key` (a purge, after the barrier wrote the epoch's changes);
    /// returns them.
    fn remove_key(&mut self, key: &[u8]) -> Option<HashMap<Vec<u8>, i64>> {
        self.matched.remove(key);
        self.buckets.remove(key).map(|b| b.rows)
    }

    /// Writes the epoch's changed rows (their multiplicity, or a delete), drops the
    /// buckets left empty, and returns the keys that changed.
    fn write_changes(
        &mut self,
        table: StateTableId,
        state: &mut StateWriter,
    ) -> Result<Vec<Vec<u8>>> {
        let keys = std::mem::take(&mut self.dirty);
        for key in &keys {
            let Some(bucket) = self.buckets.get_mut(key) else {
                continue;
            };
            let mut changed = std::mem::take(&mut bucket.changed);
            if changed.len() > 1 {
                changed.sort_unstable();
                changed.dedup();
            }
            for row in changed {
                let state_key = join_prefixed(key, &row);
                match bucket.rows.get(&row).copied() {
                    Some(c) if c < 0 => {
                        return Err(DataflowError::Internal(format!(
                            "join row multiplicity would become {c}"
                        )))
                    }
                    Some(c) => state.put(table, &state_key, &c.to_le_bytes()),
                    None => state.delete(table, &state_key),
                }
            }
            if bucket.rows.is_empty() {
                self.buckets.remove(key);
            }
        }
        Ok(keys)
    }
}

/// A batch's join keys, computed once for every step that needs them.
struct BatchKeys {
    /// The key columns, cast to the key types.
    columns: Vec<ArrayRef>,
    /// Their row encoding; `None` for a join without keys (a cross join), where every
    /// row has the empty key.
    encoded: Option<Rows>,
    /// Whether NULL keys match each other.
    nulls_equal: bool,
}

impl BatchKeys {
    fn key(&self, i: usize) -> &[u8] {
        self.encoded.as_ref().map_or(&[], |k| k.row(i).data())
    }

    /// Whether row `i` matches nothing: a NULL in a key column, where NULLs do not match.
    fn unmatchable(&self, i: usize) -> bool {
        !self.nulls_equal && self.columns.iter().any(|c| c.is_null(i))
    }
}

/// Output rows of one epoch step, gathered by shape and built column-wise at the end.
#[derive(Default)]
struct Pending<'a> {
    /// (row of the batch, stored row of the other side, weight)
    matched: (Vec<u32>, Vec<&'a [u8]>, Vec<i64>),
    /// Rows of the batch alone (padded, or semi/anti output).
    batch_alone: (Vec<u32>, Vec<i64>),
    /// Stored rows of the other side alone (their padding or semi/anti state flipped).
    stored_alone: (Vec<Vec<u8>>, Vec<i64>),
}

pub struct JoinOp {
    spec: JoinSpec,
    key_codec: RowCodec,
    row_codecs: [RowCodec; 2],
    tables: [StateTableId; 2],
    sides: [Side; 2],
    /// With a join filter: left columns followed by right columns.
    pair_schema: SchemaRef,
    /// Per side, per input column: its watermark.
    watermarks: [Vec<Option<ScalarValue>>; 2],
    /// The watermarks the last purge used.
    purged_at: [Vec<Option<ScalarValue>>; 2],
    /// A temporal join's left batches of the epoch: joined at the barrier, after the
    /// right side's changes of the same epoch.
    stashed: Vec<ChangeBatch>,
    /// With an offload: each side's changes held back until the barrier.
    pending: [RunBuffer; 2],
    gpu_health: GpuHealth,
}

/// Which halves of a change's step to do: join it with the other side's stored rows,
/// store it on its own side, or both (see [`JoinOp::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Both,
    Probe,
    Store,
}

impl JoinOp {
    pub fn try_new(spec: JoinSpec, tables: [StateTableId; 2]) -> Result<Self> {
        if spec.offload.is_some() {
            spec.offload_check().map_err(|why| {
                DataflowError::Internal(format!(
                    "join planned for a batch join it cannot take: {why}"
                ))
            })?;
        }
        let pair_schema = Arc::new(arrow::datatypes::Schema::new(
            spec.left_schema
                .fields()
                .iter()
                .chain(spec.right_schema.fields().iter())
                .cloned()
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            pair_schema,
            key_codec: RowCodec::new(spec.key_types()?)?,
            row_codecs: [
                RowCodec::for_schema(&spec.left_schema)?,
                RowCodec::for_schema(&spec.right_schema)?,
            ],
            watermarks: [
                vec![None; spec.left_schema.fields().len()],
                vec![None; spec.right_schema.fields().len()],
            ],
            purged_at: [
                vec![None; spec.left_schema.fields().len()],
                vec![None; spec.right_schema.fields().len()],
            ],
            spec,
            tables,
            sides: [Side::default(), Side::default()],
            stashed: Vec::new(),
            pending: [RunBuffer::default(), RunBuffer::default()],
            gpu_health: GpuHealth::default(),
        })
    }
}

impl JoinOp {
    fn batch_keys(&self, port: usize, data: &RecordBatch) -> Result<BatchKeys> {
        let columns = self.spec.key_columns(port, data)?;
        let encoded = if self.key_codec.is_empty() {
            None
        } else {
            Some(self.key_codec.encode(&columns)?)
        };
        Ok(BatchKeys {
            columns,
            encoded,
            nulls_equal: self.spec.nulls_equal,
        })
    }

    /// A temporal join's left batch against the right side's current rows: matched
    /// pairs, and for a LEFT join the rows without a match padded. Left rows are not
    /// stored.
    fn temporal_lookup(&self, batch: &ChangeBatch, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let data = batch.data();
        let keys = self.batch_keys(0, data)?;
        let right = &self.sides[1];
        let mut p = Pending::default();
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 {
                continue;
            }
            let matched = (!keys.unmatchable(i))
                .then(|| right.rows_at(keys.key(i)))
                .flatten();
            match matched {
                Some(others) if !others.is_empty() => {
                    for (r, c) in others {
                        p.matched.0.push(i as u32);
                        p.matched.1.push(r.as_slice());
                        p.matched.2.push(w * c);
                    }
                }
                _ if self.spec.kind.pads(0) => {
                    p.batch_alone.0.push(i as u32);
                    p.batch_alone.1.push(w);
                }
                _ => {}
            }
        }
        emit(&self.spec, &self.row_codecs, 0, data, p, out)
    }

    /// A temporal join's right-side change: stored, nothing emitted.
    fn temporal_update(&mut self, batch: &ChangeBatch) -> Result<()> {
        let data = batch.data();
        let keys = self.batch_keys(1, data)?;
        let rows = self.row_codecs[1].encode(data.columns())?;
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 || keys.unmatchable(i) {
                continue;
            }
            self.sides[1].add(keys.key(i), rows.row(i).data(), w);
        }
        Ok(())
    }

    /// Whether a watermark seen so far (or an interval bound) lets a purge drop rows:
    /// without one, no purge runs and the keys touched need not be noted. (A watermark
    /// arriving later is a watermark that advanced: that purge looks at every key.)
    fn purge_possible(&self) -> bool {
        if !self.spec.intervals.is_empty() {
            return true;
        }
        let keyed = |side: usize| {
            let keys = if side == 0 {
                &self.spec.left_keys
            } else {
                &self.spec.right_keys
            };
            keys.iter().any(|k| {
                k.downcast_ref::<Column>()
                    .and_then(|c| self.watermarks[side].get(c.index()))
                    .is_some_and(Option::is_some)
            })
        };
        if self.spec.kind == JoinKind::Inner {
            keyed(0) || keyed(1)
        } else {
            keyed(0) && keyed(1)
        }
    }

    /// An inner join keyed on a column with a watermark on the other side drops the rows
    /// whose key lies behind it: no row still to come on the other side can match them.
    /// `touched`: per side, the keys changed this epoch. When no watermark advanced only
    /// they are checked (a row can arrive behind the other side's watermark).
    fn purge_behind_watermarks(
        &mut self,
        state: &mut StateWriter,
        touched: [Vec<Vec<u8>>; 2],
    ) -> Result<()> {
        let advanced = self.watermarks != self.purged_at;
        self.purged_at = self.watermarks.clone();
        let columns = |keys: &[Arc<dyn PhysicalExpr>]| -> Vec<Option<usize>> {
            keys.iter()
                .map(|k| k.downcast_ref::<Column>().map(Column::index))
                .collect()
        };
        let key_columns = [
            columns(&self.spec.left_keys),
            columns(&self.spec.right_keys),
        ];
        if self.spec.kind != JoinKind::Inner {
            return self.purge_final_keys(state, &key_columns, advanced, &touched);
        }
        for (side, touched) in touched.iter().enumerate() {
            let other = 1 - side;
            // Per key position: the other side's watermark on its key column.
            let thresholds: Vec<Option<&ScalarValue>> = key_columns[other]
                .iter()
                .map(|c| c.and_then(|c| self.watermarks[other].get(c)?.as_ref()))
                .collect();
            if thresholds.iter().all(Option::is_none) || self.sides[side].is_empty() {
                continue;
            }
            let keys: Vec<Vec<u8>> = if advanced {
                self.sides[side].buckets.keys().cloned().collect()
            } else {
                let rows = &self.sides[side].buckets;
                touched
                    .iter()
                    .filter(|k| rows.contains_key(*k))
                    .cloned()
                    .collect()
            };
            if keys.is_empty() {
                continue;
            }
            let decoded = self.key_codec.decode(keys.iter().map(Vec::as_slice))?;
            let Some(behind) = behind_watermarks(&decoded, &thresholds)? else {
                continue;
            };
            let s = &mut self.sides[side];
            for (key, _) in keys.iter().zip(behind).filter(|(_, b)| *b) {
                for row in s.remove_key(key).iter().flat_map(|rows| rows.keys()) {
                    state.delete(self.tables[side], &join_prefixed(key, row));
                }
            }
        }
        for bound in self.spec.intervals.clone() {
            self.purge_outside_interval(bound, advanced, &touched, state)?;
        }
        Ok(())
    }

    /// Outer, semi and anti joins: a key behind the watermarks of both sides' key columns
    /// gets no row on either side any more, so its output is final and both sides' rows
    /// of it go. (Behind one side's only, a row still to come on the other side needs
    /// them: to be padded with NULLs, or to decide a semi or anti join.)
    fn purge_final_keys(
        &mut self,
        state: &mut StateWriter,
        key_columns: &[Vec<Option<usize>>; 2],
        advanced: bool,
        touched: &[Vec<Vec<u8>>; 2],
    ) -> Result<()> {
        let thresholds: [Vec<Option<&ScalarValue>>; 2] = [0, 1].map(|side| {
            key_columns[side]
                .iter()
                .map(|c| c.and_then(|c| self.watermarks[side].get(c)?.as_ref()))
                .collect()
        });
        if thresholds.iter().any(|t| t.iter().all(Option::is_none)) {
            return Ok(());
        }
        let mut keys: Vec<Vec<u8>> = if advanced {
            self.sides
                .iter()
                .flat_map(|s| s.buckets.keys().cloned())
                .collect()
        } else {
            touched.iter().flatten().cloned().collect()
        };
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        let decoded = self.key_codec.decode(keys.iter().map(Vec::as_slice))?;
        let (Some(left), Some(right)) = (
            behind_watermarks(&decoded, &thresholds[0])?,
            behind_watermarks(&decoded, &thresholds[1])?,
        ) else {
            return Ok(());
        };
        for (i, key) in keys.iter().enumerate() {
            if !(left[i] && right[i]) {
                continue;
            }
            for (side, s) in self.sides.iter_mut().enumerate() {
                for row in s.remove_key(key).iter().flat_map(|rows| rows.keys()) {
                    state.delete(self.tables[side], &join_prefixed(key, row));
                }
            }
        }
        Ok(())
    }

    /// Drops the stored rows that `bound` and the other side's watermark rule out.
    fn purge_outside_interval(
        &mut self,
        bound: IntervalBound,
        advanced: bool,
        touched: &[Vec<Vec<u8>>; 2],
        state: &mut StateWriter,
    ) -> Result<()> {
        // Which side loses rows, its column, and the other side's watermark column.
        let (side, column, other_column) = if bound.left_lower {
            (0, bound.left, bound.right)
        } else {
            (1, bound.right, bound.left)
        };
        let Some(wm) = self.watermarks[1 - side]
            .get(other_column)
            .and_then(Option::as_ref)
        else {
            return Ok(());
        };
        let Some(threshold) =
            crate::ops::watermark::scalar_to_i64(wm)?.map(|w| w.saturating_sub(bound.offset))
        else {
            return Ok(());
        };
        let s = &self.sides[side];
        let keys: Vec<&Vec<u8>> = if advanced {
            s.buckets.keys().collect()
        } else {
            touched[side]
                .iter()
                .filter(|k| s.buckets.contains_key(*k))
                .collect()
        };
        let stored: Vec<(&Vec<u8>, &Vec<u8>)> = keys
            .iter()
            .flat_map(|k| {
                s.rows_at(k)
                    .into_iter()
                    .flatten()
                    .map(move |(r, _)| (*k, r))
            })
            .collect();
        if stored.is_empty() {
            return Ok(());
        }
        let decoded = self.row_codecs[side].decode(stored.iter().map(|(_, r)| r.as_slice()))?;
        let times = cast(&decoded[column], &DataType::Int64)?;
        let times = times
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| DataflowError::Internal("interval column is not a time".into()))?;
        let gone: Vec<(Vec<u8>, Vec<u8>)> = stored
            .iter()
            .enumerate()
            .filter(|(i, _)| times.is_valid(*i) && times.value(*i) < threshold)
            .map(|(_, (k, r))| ((*k).clone(), (*r).clone()))
            .collect();
        let s = &mut self.sides[side];
        for (key, row) in gone {
            let Some(bucket) = s.buckets.get_mut(&key) else {
                continue;
            };
            let Some(count) = bucket.rows.remove(&row) else {
                continue;
            };
            bucket.total -= count;
            if bucket.rows.is_empty() {
                s.buckets.remove(&key);
            }
            if let Some(m) = s.matched.get_mut(&key) {
                m.remove(&row);
                if m.is_empty() {
                    s.matched.remove(&key);
                }
            }
            state.delete(self.tables[side], &join_prefixed(&key, &row));
        }
        Ok(())
    }

    /// The join with a filter. Each stored row also keeps how many rows of the other side
    /// it matches (equal key and the filter true), counted with multiplicity. A change is
    /// tested against the other side's rows at its key only: it produces its pairs, its
    /// own padded (or semi/anti) row while it has no match, and flips the padded (or
    /// semi/anti) row of each other-side row whose match count crosses zero. Rows with a
    /// NULL key never match and are handled as without a filter.
    fn on_data_filtered(
        &mut self,
        port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let data = batch.data();
        let keys = self.batch_keys(port, data)?;
        let rows = self.row_codecs[port].encode(data.columns())?;
        let weights = batch.weights().values();
        let other_port = 1 - port;
        let kind = self.spec.kind;
        // Whether this side's rows come out alone while unmatched (padded or anti) or
        // while matched (semi); the same for the other side's rows.
        let alone = |side: usize| -> Option<bool> {
            match kind.filtering() {
                Some((s, want_match)) if s == side => Some(want_match),
                Some(_) => None,
                None => kind.pads(side).then_some(false),
            }
        };
        let (mine_alone, other_alone) = (alone(port), alone(other_port));
        let pairs_out = kind.filtering().is_none();

        // Batch rows by key, in batch order.
        let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
        let mut p = Pending::default();
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            if keys.unmatchable(i) {
                if mine_alone == Some(false) {
                    p.batch_alone.0.push(i as u32);
                    p.batch_alone.1.push(w);
                }
                continue;
            }
            by_key.entry(keys.key(i)).or_default().push(i);
        }
        let mut flips: Vec<(Vec<u8>, i64)> = Vec::new();
        let mut pairs: (Vec<u32>, Vec<Vec<u8>>, Vec<i64>) = Default::default();
        for (key, idx) in by_key {
            let others: Vec<(Vec<u8>, i64)> = self.sides[other_port]
                .rows_at(key)
                .map(|m| m.iter().map(|(r, c)| (r.clone(), *c)).collect())
                .unwrap_or_default();
            let mask = if others.is_empty() {
                Vec::new()
            } else {
                let mine = take_record_batch(
                    data,
                    &UInt32Array::from_iter_values(idx.iter().map(|i| *i as u32)),
                )?;
                let theirs =
                    self.row_codecs[other_port].decode(others.iter().map(|(r, _)| r.as_slice()))?;
                self.pair_mask(port, mine.columns(), &theirs)?
            };
            for (n, &i) in idx.iter().enumerate() {
                let w = weights[i];
                let row = rows.row(i).data();
                let mut matches = 0i64;
                for (o, (r, c)) in others.iter().enumerate() {
                    if !mask.get(n * others.len() + o).copied().unwrap_or(false) {
                        continue;
                    }
                    matches += c;
                    if pairs_out {
                        pairs.0.push(i as u32);
                        pairs.1.push(r.clone());
                        pairs.2.push(w * c);
                    }
                    let count = self.sides[other_port].matched_count(key, r);
                    let after = count + w;
                    self.sides[other_port].set_matched(key, r, after);
                    if let Some(want_match) = other_alone {
                        if (count > 0) != (after > 0) {
                            // Gained a match: a semi row appears, a padded or anti row goes.
                            let gained = after > 0;
                            flips.push((r.clone(), if gained == want_match { *c } else { -c }));
                        }
                    }
                }
                if mine_alone.is_some_and(|want_match| (matches > 0) == want_match) {
                    p.batch_alone.0.push(i as u32);
                    p.batch_alone.1.push(w);
                }
                self.sides[port].add(key, row, w);
                self.sides[port].set_matched(key, row, matches);
            }
        }
        p.matched = (
            pairs.0,
            pairs.1.iter().map(Vec::as_slice).collect(),
            pairs.2,
        );
        let (rows_alone, w_alone): (Vec<Vec<u8>>, Vec<i64>) = flips.into_iter().unzip();
        p.stored_alone = (rows_alone, w_alone);
        emit(&self.spec, &self.row_codecs, port, data, p, out)
    }

    /// The filter over every pair of `mine` (rows on `port`) × `theirs` (the other
    /// side), mine-major: entry `n * theirs.len() + o` is pair (n, o).
    fn pair_mask(&self, port: usize, mine: &[ArrayRef], theirs: &[ArrayRef]) -> Result<Vec<bool>> {
        let filter = self
            .spec
            .filter
            .as_ref()
            .ok_or_else(|| DataflowError::Internal("filtered join without a filter".into()))?;
        let (m, t) = (
            mine.first().map_or(0, |c| c.len()),
            theirs.first().map_or(0, |c| c.len()),
        );
        let n = m * t;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mi: UInt32Array = (0..n).map(|p| (p / t) as u32).collect();
        let ti: UInt32Array = (0..n).map(|p| (p % t) as u32).collect();
        let spread = |cols: &[ArrayRef], idx: &UInt32Array| -> Result<Vec<ArrayRef>> {
            cols.iter()
                .map(|c| Ok(arrow::compute::take(c, idx, None)?))
                .collect()
        };
        let (left, right) = if port == 0 {
            (spread(mine, &mi)?, spread(theirs, &ti)?)
        } else {
            (spread(theirs, &ti)?, spread(mine, &mi)?)
        };
        let pairs = RecordBatch::try_new(
            Arc::clone(&self.pair_schema),
            left.into_iter().chain(right).collect(),
        )?;
        let mask = filter.evaluate(&pairs)?.into_array(n)?;
        let mask = mask
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .ok_or_else(|| DataflowError::Internal("join filter is not boolean".into()))?;
        Ok((0..n).map(|p| mask.is_valid(p) && mask.value(p)).collect())
    }

    /// Joins the changes held back for the offload. When both sides have some and
    /// together at least `min_rows`: ΔA ⋈ ΔB in one batch join by the kernel, ΔA against
    /// B's stored rows and ΔB against A's (both as before the epoch) row by row, then both
    /// stored. Otherwise, or when the GPU fails (nothing was emitted or stored yet), each
    /// batch takes both steps in turn, as without an offload.
    fn flush_pending(&mut self, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let (left, left_rows) = self.pending[0].take();
        let (right, right_rows) = self.pending[1].take();
        let Some(offload) = self.spec.offload.clone() else {
            return Ok(());
        };
        let rows = left_rows + right_rows;
        if left_rows > 0 && right_rows > 0 && rows >= offload.min_rows && self.gpu_health.usable() {
            let l = ChangeBatch::concat(&left[0].schema(), &left)?;
            let r = ChangeBatch::concat(&right[0].schema(), &right)?;
            let (lk, rk) = (self.batch_keys(0, l.data())?, self.batch_keys(1, r.data())?);
            match self.delta_join(&offload.kernel, [&l, &r], [&lk, &rk]) {
                Ok(both) => {
                    self.gpu_health.succeeded("HashJoin", rows);
                    // An inner join's probe of an empty side finds nothing.
                    if !self.sides[1].is_empty() {
                        self.step(0, &l, &lk, Step::Probe, out)?;
                    }
                    if !self.sides[0].is_empty() {
                        self.step(1, &r, &rk, Step::Probe, out)?;
                    }
                    self.step(0, &l, &lk, Step::Store, out)?;
                    self.step(1, &r, &rk, Step::Store, out)?;
                    out.extend(both);
                    return Ok(());
                }
                Err(DataflowError::Gpu {
                    cpu_can_take_over: true,
                    message,
                }) => self.gpu_health.failed("HashJoin", &message, rows),
                Err(e) => return Err(e),
            }
        }
        for (port, batches) in [(0, &left), (1, &right)] {
            for b in batches {
                let keys = self.batch_keys(port, b.data())?;
                self.step(port, b, &keys, Step::Both, out)?;
            }
        }
        Ok(())
    }

    /// ΔA ⋈ ΔB: the pairs of a left and a right change with equal keys (none NULL), as
    /// left columns then right columns, weighted by the product of the two weights. The
    /// kernel finds the pairs from the key columns alone; the rows are gathered here.
    fn delta_join(
        &self,
        kernel: &Kernel,
        [left, right]: [&ChangeBatch; 2],
        keys: [&BatchKeys; 2],
    ) -> Result<Option<ChangeBatch>> {
        let (li, ri) = match kernel {
            Kernel::Gpu(gpu) => {
                let [l, r] = keys.map(|k| key_batch(k.columns.clone()));
                let (l, r) = (l?, r?);
                let on: Vec<usize> = (0..l.num_columns()).collect();
                let (li, ri) = gpu.inner_join(&l, &on, &r, &on).map_err(gpu_error)?;
                let index = |a: &dyn Array| -> Result<UInt32Array> {
                    Ok(cast(a, &DataType::UInt32)?.as_primitive().clone())
                };
                (index(&li)?, index(&ri)?)
            }
            Kernel::Cpu => cpu_pairs(keys[0], keys[1]),
        };
        if li.is_empty() {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = take_record_batch(left.data(), &li)?
            .columns()
            .iter()
            .chain(take_record_batch(right.data(), &ri)?.columns())
            .cloned()
            .collect();
        let weights = numeric::mul(
            &arrow::compute::take(left.weights(), &li, None)?,
            &arrow::compute::take(right.weights(), &ri, None)?,
        )?;
        let data = RecordBatch::try_new(Arc::clone(&self.spec.output_schema), columns)?;
        let joined = ChangeBatch::try_new(data, weights.as_primitive::<Int64Type>().clone())?;
        // A zero weight on either side (a change that cancelled out) pairs into nothing.
        let nonzero =
            arrow::compute::kernels::cmp::neq(joined.weights(), &Int64Array::new_scalar(0))?;
        let joined = if nonzero.true_count() == joined.num_rows() {
            joined
        } else {
            joined.filter(&nonzero)?
        };
        Ok((!joined.is_empty()).then_some(joined))
    }

    /// A change on `port` as a join step (`part`: both halves, or one): its rows joined
    /// with the other side's stored rows (pairs, padded rows, semi/anti rows), then
    /// stored on its own side, flipping the other side's padded or semi/anti rows whose
    /// key's total crosses zero. The probe alone suits inner joins only (they flip
    /// nothing), for the batch join of the epoch's deltas.
    fn step(
        &mut self,
        port: usize,
        batch: &ChangeBatch,
        keys: &BatchKeys,
        part: Step,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let kind = self.spec.kind;
        let data = batch.data();
        // Rows are encoded only to be stored.
        let rows = match part {
            Step::Probe => None,
            _ => Some(self.row_codecs[port].encode(data.columns())?),
        };
        let weights = batch.weights().values();
        let other_port = 1 - port;
        let (left, right) = self.sides.split_at_mut(1);
        let (mine, other) = if port == 0 {
            (&mut left[0], &mut right[0])
        } else {
            (&mut right[0], &mut left[0])
        };
        let filtering = kind.filtering();
        let mut p = Pending::default();

        if part != Step::Store {
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                let null_key = keys.unmatchable(i);
                let key = keys.key(i);
                let matches = if null_key { 0 } else { other.total(key) };
                match filtering {
                    // Semi/anti: rows of the output side come out per their match state.
                    Some((side, want_match)) if side == port => {
                        if (matches > 0) == want_match {
                            p.batch_alone.0.push(i as u32);
                            p.batch_alone.1.push(w);
                        }
                    }
                    Some(_) => {}
                    None => {
                        if let Some(others) = (!null_key).then(|| other.rows_at(key)).flatten() {
                            for (r, c) in others {
                                p.matched.0.push(i as u32);
                                p.matched.1.push(r.as_slice());
                                p.matched.2.push(w * c);
                            }
                        }
                        if kind.pads(port) && matches == 0 {
                            p.batch_alone.0.push(i as u32);
                            p.batch_alone.1.push(w);
                        }
                    }
                }
            }
        }
        // The other side's rows at keys whose total crosses zero flip their padded or
        // semi/anti row. Totals change as the batch is applied row by row.
        let flips_other = match filtering {
            Some((side, _)) => side == other_port,
            None => kind.pads(other_port),
        };
        let mut flips: Vec<(Vec<u8>, i64)> = Vec::new();
        if let Some(rows) = &rows {
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                if keys.unmatchable(i) {
                    continue;
                }
                let key = keys.key(i);
                let row = rows.row(i).data();
                let before = mine.add(key, row, w);
                let after = before + w;
                if flips_other && ((before == 0) != (after == 0)) {
                    // 0 → n: the other side's rows gained a match; n → 0: they lost it.
                    let gained = before == 0;
                    let sign = match filtering {
                        Some((_, true)) => {
                            if gained {
                                1
                            } else {
                                -1
                            }
                        }
                        _ => {
                            if gained {
                                -1
                            } else {
                                1
                            }
                        }
                    };
                    if let Some(others) = other.rows_at(key) {
                        for (r, c) in others {
                            flips.push((r.clone(), sign * c));
                        }
                    }
                }
            }
        }
        for (r, w) in flips {
            p.stored_alone.0.push(r);
            p.stored_alone.1.push(w);
        }
        emit(&self.spec, &self.row_codecs, port, data, p, out)
    }

    /// After a restart: every stored row's match count, from the restored rows.
    fn rebuild_match_counts(&mut self) -> Result<()> {
        let keys: Vec<Vec<u8>> = self.sides[0].buckets.keys().cloned().collect();
        for key in keys {
            let side_rows = |s: &Side| -> Vec<(Vec<u8>, i64)> {
                s.rows_at(&key)
                    .map(|m| m.iter().map(|(r, c)| (r.clone(), *c)).collect())
                    .unwrap_or_default()
            };
            let (left, right) = (side_rows(&self.sides[0]), side_rows(&self.sides[1]));
            let mask = if right.is_empty() {
                Vec::new()
            } else {
                let l = self.row_codecs[0].decode(left.iter().map(|(r, _)| r.as_slice()))?;
                let r = self.row_codecs[1].decode(right.iter().map(|(r, _)| r.as_slice()))?;
                self.pair_mask(0, &l, &r)?
            };
            let mut right_counts = vec![0i64; right.len()];
            for (n, (lrow, lc)) in left.iter().enumerate() {
                let mut count = 0;
                for (o, (_, rc)) in right.iter().enumerate() {
                    if mask.get(n * right.len() + o).copied().unwrap_or(false) {
                        count += rc;
                        right_counts[o] += lc;
                    }
                }
                self.sides[0].set_matched(&key, lrow, count);
            }
            for ((rrow, _), count) in right.iter().zip(right_counts) {
                self.sides[1].set_matched(&key, rrow, count);
            }
        }
        Ok(())
    }
}

/// Key columns as a batch for the GPU.
fn key_batch(columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("k{i}"), c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The CPU's reference for the GPU's batch join: (left row, right row) for every pair
/// with equal keys, none NULL, compared as the join's row encoding compares them.
fn cpu_pairs(left: &BatchKeys, right: &BatchKeys) -> (UInt32Array, UInt32Array) {
    let rows = |k: &BatchKeys| k.columns.first().map_or(0, |c| c.len());
    let mut by_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
    for i in (0..rows(right)).filter(|i| !right.unmatchable(*i)) {
        by_key.entry(right.key(i)).or_default().push(i as u32);
    }
    let (mut li, mut ri) = (Vec::new(), Vec::new());
    for i in (0..rows(left)).filter(|i| !left.unmatchable(*i)) {
        for &r in by_key.get(left.key(i)).into_iter().flatten() {
            li.push(i as u32);
            ri.push(r);
        }
    }
    (li.into(), ri.into())
}

/// Builds the output batches of one step.
fn emit(
    spec: &JoinSpec,
    row_codecs: &[RowCodec; 2],
    port: usize,
    data: &RecordBatch,
    p: Pending<'_>,
    out: &mut Vec<ChangeBatch>,
) -> Result<()> {
    let other_port = 1 - port;
    let schema = &spec.output_schema;
    let side_schema = |s: usize| {
        if s == 0 {
            &spec.left_schema
        } else {
            &spec.right_schema
        }
    };
    let nulls = |s: usize, n: usize| -> Vec<ArrayRef> {
        side_schema(s)
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), n))
            .collect()
    };
    // Puts the two sides' columns in output order (semi/anti: only the output side).
    let assemble = |cols: [Vec<ArrayRef>; 2]| -> Vec<ArrayRef> {
        match spec.kind.filtering() {
            Some((side, _)) => cols[side].clone(),
            None => {
                let [l, r] = cols;
                l.into_iter().chain(r).collect()
            }
        }
    };
    let (idx, matched, w) = p.matched;
    if !idx.is_empty() {
        let mine = take_record_batch(data, &UInt32Array::from(idx))?
            .columns()
            .to_vec();
        let theirs = row_codecs[other_port].decode(matched)?;
        let cols = if port == 0 {
            [mine, theirs]
        } else {
            [theirs, mine]
        };
        out.push(ChangeBatch::try_new(
            RecordBatch::try_new(Arc::clone(schema), assemble(cols))?,
            w.into(),
        )?);
    }
    let (idx, w) = p.batch_alone;
    if !idx.is_empty() {
        let n = idx.len();
        let mine = take_record_batch(data, &UInt32Array::from(idx))?
            .columns()
            .to_vec();
        let pad = nulls(other_port, n);
        let cols = if port == 0 { [mine, pad] } else { [pad, mine] };
        out.push(ChangeBatch::try_new(
            RecordBatch::try_new(Arc::clone(schema), assemble(cols))?,
            w.into(),
        )?);
    }
    let (stored, w) = p.stored_alone;
    if !stored.is_empty() {
        let n = stored.len();
        let theirs = row_codecs[other_port].decode(stored.iter().map(Vec::as_slice))?;
        let pad = nulls(port, n);
        let cols = if port == 0 {
            [pad, theirs]
        } else {
            [theirs, pad]
        };
        out.push(ChangeBatch::try_new(
            RecordBatch::try_new(Arc::clone(schema), assemble(cols))?,
            w.into(),
        )?);
    }
    Ok(())
}

impl Operator for JoinOp {
    fn state_rows(&self) -> usize {
        self.sides
            .iter()
            .map(|s| s.buckets.values().map(|b| b.rows.len()).sum::<usize>())
            .sum()
    }

    fn name(&self) -> &'static str {
        "HashJoin"
    }

    fn on_data(
        &mut self,
        port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        if port > 1 {
            return Err(DataflowError::Internal(format!("join has no port {port}")));
        }
        if self.spec.temporal {
            if port == 0 {
                self.stashed.push(batch);
                return Ok(());
            }
            return self.temporal_update(&batch);
        }
        if self.spec.offload.is_some() {
            if self.pending[port].push(batch) {
                self.flush_pending(out)?;
            }
            return Ok(());
        }
        if self.spec.filter.is_some() {
            return self.on_data_filtered(port, batch, out);
        }
        let keys = self.batch_keys(port, batch.data())?;
        self.step(port, &batch, &keys, Step::Both, out)
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        for batch in std::mem::take(&mut self.stashed) {
            self.temporal_lookup(&batch, out)?;
        }
        self.flush_pending(out)?;
        let mut touched: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        // Keys touched matter only to a purge.
        let purging = self.purge_possible();
        for ((side, table), touched) in self.sides.iter_mut().zip(self.tables).zip(&mut touched) {
            let changed = side.write_changes(table, state)?;
            if purging {
                *touched = changed;
            }
        }
        for t in &mut touched {
            t.sort_unstable();
            t.dedup();
        }
        self.purge_behind_watermarks(state, touched)
    }

    fn on_watermark(&mut self, port: usize, column: usize, value: &ScalarValue) -> Result<()> {
        if let Some(slot) = self
            .watermarks
            .get_mut(port)
            .and_then(|w| w.get_mut(column))
        {
            raise(slot, value);
        }
        Ok(())
    }

    fn state_tables(&self) -> Vec<StateTableId> {
        self.tables.to_vec()
    }

    fn restore(
        &mut self,
        table: StateTableId,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        let side = if table == self.tables[0] { 0 } else { 1 };
        let s = &mut self.sides[side];
        for (k, v) in entries {
            let (key, row) = split_prefixed(k)?;
            if !partitioner.owns(key) {
                continue;
            }
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::Corrupt("join row count is not 8 bytes".into()))?;
            let count = i64::from_le_bytes(bytes);
            let bucket = s.buckets.entry(key.to_vec()).or_default();
            bucket.rows.insert(row.to_vec(), count);
            bucket.total += count;
        }
        // Match counts are not stored: once both sides are back, they are recomputed.
        if side == 1 && self.spec.filter.is_some() {
            self.rebuild_match_counts()?;
        }
        Ok(())
    }
}
