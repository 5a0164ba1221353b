//! ASOF joins: each left row joined with the one right row of its key whose time is the
//! closest on the given side of its own (`l.ts >= r.ts`: the latest right row at or
//! before it), or with NULLs in an `ASOF LEFT JOIN` when there is none.
//!
//! The operator keeps both sides by key and time, and each left row's current match.
//! A right row added or removed at time `t` can only change the match of left rows
//! between `t` and the nearest right time beyond it (on the side the condition looks
//! from): at the barrier the operator
//! recomputes the match of those left rows and of the left rows that changed, and emits
//! the difference. Among right rows with the same time the match is the last (for
//! `>=`/`>`) or first (for `<=`/`<`) in the order of their encoded rows, which for
//! plain values is ascending value order, NULLs first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use ahash::AHashMap as HashMap;
use arrow::array::{Array, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take;
use datafusion::physical_expr::PhysicalExpr;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::codec::{split_timed_row, timed_row_key};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::ops::join::{JoinKind, JoinSpec};
use crate::ops::watermark::time_ints;
use crate::row::{Partitioner, RowCodec};

/// How the left row's time relates to its match's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsofMatch {
    /// `l >= r`: the latest right row at or before the left row.
    AtOrBefore,
    /// `l > r`: the latest right row strictly before.
    Before,
    /// `l <= r`: the earliest right row at or after.
    AtOrAfter,
    /// `l < r`: the earliest right row strictly after.
    After,
}

impl AsofMatch {
    pub fn symbol(self) -> &'static str {
        match self {
            AsofMatch::AtOrBefore => ">=",
            AsofMatch::Before => ">",
            AsofMatch::AtOrAfter => "<=",
            AsofMatch::After => "<",
        }
    }

    fn looks_back(self) -> bool {
        matches!(self, AsofMatch::AtOrBefore | AsofMatch::Before)
    }
}

/// The fixed settings of an ASOF join. `join` holds the equality keys, the schemas and
/// the kind (`Inner` or `Left`); its filter, temporal flag and intervals are unused.
#[derive(Debug, Clone)]
pub struct AsofSpec {
    pub join: JoinSpec,
    /// The time of a left row, over the left schema.
    pub left_time: Arc<dyn PhysicalExpr>,
    /// The time of a right row, over the right schema (same type as the left one).
    pub right_time: Arc<dyn PhysicalExpr>,
    pub matching: AsofMatch,
}

/// The times of `data`'s rows by `e`, as integers.
fn times(e: &Arc<dyn PhysicalExpr>, data: &RecordBatch) -> Result<Int64Array> {
    time_ints(&e.evaluate(data)?.into_array(data.num_rows())?)
}

/// A left row's place: its count and its match (right time, right row).
#[derive(Debug, Clone, Default, PartialEq)]
struct LeftEntry {
    count: i64,
    matched: Option<(i64, Vec<u8>)>,
}

/// Rows of one key by time, then encoded row.
type ByTime<V> = BTreeMap<i64, BTreeMap<Vec<u8>, V>>;

/// Left rows (time, row) → their place.
type Places = HashMap<(i64, Vec<u8>), LeftEntry>;

/// One output change: left row, right row (None: NULLs), weight.
type OutRow = (Vec<u8>, Option<Vec<u8>>, i64);

pub struct AsofJoinOp {
    spec: AsofSpec,
    key_codec: RowCodec,
    left_codec: RowCodec,
    right_codec: RowCodec,
    tables: [StateTableId; 2],
    left: HashMap<Vec<u8>, ByTime<LeftEntry>>,
    right: HashMap<Vec<u8>, ByTime<i64>>,
    /// Left rows changed this epoch, by key → their place before it.
    before: HashMap<Vec<u8>, Places>,
    /// Right times changed this epoch, by key.
    right_changed: HashMap<Vec<u8>, BTreeSet<i64>>,
    /// State entries changed this epoch: (side, key, time, row).
    dirty: BTreeSet<(usize, Vec<u8>, i64, Vec<u8>)>,
    /// Output of left rows that cannot match (NULL key or time) in a LEFT join.
    passthrough: Vec<ChangeBatch>,
}

/// The match of a left row at `time` among `rows`.
fn best(rows: Option<&ByTime<i64>>, time: i64, m: AsofMatch) -> Option<(i64, Vec<u8>)> {
    let rows = rows?;
    let (t, group) = match m {
        AsofMatch::AtOrBefore => rows.range(..=time).next_back(),
        AsofMatch::Before => rows.range(..time).next_back(),
        AsofMatch::AtOrAfter => rows.range(time..).next(),
        AsofMatch::After => rows.range((Bound::Excluded(time), Bound::Unbounded)).next(),
    }?;
    let row = if m.looks_back() {
        group.keys().next_back()
    } else {
        group.keys().next()
    }?;
    Some((*t, row.clone()))
}

impl AsofJoinOp {
    pub fn try_new(spec: AsofSpec, tables: [StateTableId; 2]) -> Result<Self> {
        Ok(Self {
            key_codec: RowCodec::new(spec.join.key_types()?)?,
            left_codec: RowCodec::for_schema(&spec.join.left_schema)?,
            right_codec: RowCodec::for_schema(&spec.join.right_schema)?,
            spec,
            tables,
            left: HashMap::new(),
            right: HashMap::new(),
            before: HashMap::new(),
            right_changed: HashMap::new(),
            dirty: BTreeSet::new(),
            passthrough: Vec::new(),
        })
    }

    fn outer(&self) -> bool {
        self.spec.join.kind == JoinKind::Left
    }

    /// The output rows for `changes`: left columns, then right columns (NULL where the
    /// left row has no match).
    fn build(&self, changes: &[OutRow]) -> Result<ChangeBatch> {
        let mut columns = self
            .left_codec
            .decode(changes.iter().map(|c| c.0.as_slice()))?;
        let matched: Vec<&[u8]> = changes.iter().filter_map(|c| c.1.as_deref()).collect();
        let right = self.right_codec.decode(matched)?;
        let mut next = 0u32;
        let idx: UInt32Array = changes
            .iter()
            .map(|c| {
                c.1.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        for a in &right {
            columns.push(take(a.as_ref(), &idx, None)?);
        }
        let data = batch_with_schema(&self.spec.join.output_schema, columns, changes.len())?;
        ChangeBatch::try_new(data, changes.iter().map(|c| c.2).collect())
    }

    /// The left rows of `key` whose match a change of the right rows at `changed` may
    /// have moved: for each changed time `t`, those from `t` to the next right time
    /// beyond it (both included: a strict condition matches across the next time).
    fn reached(&self, key: &[u8], changed: &BTreeSet<i64>) -> Vec<(i64, Vec<u8>)> {
        let Some(left) = self.left.get(key) else {
            return Vec::new();
        };
        let right = self.right.get(key);
        let mut out = Vec::new();
        for &t in changed {
            let range = if self.spec.matching.looks_back() {
                let until = right.and_then(|r| {
                    r.range((Bound::Excluded(t), Bound::Unbounded))
                        .map(|(u, _)| *u)
                        .next()
                });
                (
                    Bound::Included(t),
                    until.map_or(Bound::Unbounded, Bound::Included),
                )
            } else {
                let from = right.and_then(|r| r.range(..t).map(|(u, _)| *u).next_back());
                (
                    from.map_or(Bound::Unbounded, Bound::Included),
                    Bound::Included(t),
                )
            };
            for (lt, rows) in left.range(range) {
                out.extend(rows.keys().map(|r| (*lt, r.clone())));
            }
        }
        out
    }
}

impl Operator for AsofJoinOp {
    fn state_rows(&self) -> usize {
        let left: usize = self
            .left
            .values()
            .flat_map(|t| t.values())
            .map(BTreeMap::len)
            .sum();
        let right: usize = self
            .right
            .values()
            .flat_map(|t| t.values())
            .map(BTreeMap::len)
            .sum();
        left + right
    }

    fn name(&self) -> &'static str {
        "AsofJoin"
    }

    fn on_data(
        &mut self,
        port: usize,
        batch: ChangeBatch,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let data = batch.data();
        let key_arrays = self.spec.join.key_columns(port, data)?;
        let keys = self.key_codec.encode(&key_arrays)?;
        let time = if port == 0 {
            &self.spec.left_time
        } else {
            &self.spec.right_time
        };
        let ts = times(time, data)?;
        let codec = if port == 0 {
            &self.left_codec
        } else {
            &self.right_codec
        };
        let rows = codec.encode(data.columns())?;
        let mut unmatched: Vec<u32> = Vec::new();
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 {
                continue;
            }
            // SQL equality: a NULL key matches nothing.
            if ts.is_null(i) || key_arrays.iter().any(|k| k.is_null(i)) {
                if port == 0 {
                    unmatched.push(i as u32);
                }
                continue;
            }
            let key = keys.row(i).data().to_vec();
            let t = ts.value(i);
            let row = rows.row(i).data().to_vec();
            if port == 0 {
                let entries = self.left.entry(key.clone()).or_default();
                let slot = entries
                    .entry(t)
                    .or_default()
                    .entry(row.clone())
                    .or_default();
                self.before
                    .entry(key.clone())
                    .or_default()
                    .entry((t, row.clone()))
                    .or_insert_with(|| slot.clone());
                slot.count += w;
            } else {
                *self
                    .right
                    .entry(key.clone())
                    .or_default()
                    .entry(t)
                    .or_default()
                    .entry(row.clone())
                    .or_default() += w;
                self.right_changed.entry(key.clone()).or_default().insert(t);
            }
            self.dirty.insert((port, key, t, row));
        }
        if self.outer() && !unmatched.is_empty() {
            let part = batch.take(&UInt32Array::from(unmatched))?;
            let enc = self.left_codec.encode(part.data().columns())?;
            let changes: Vec<OutRow> = part
                .weights()
                .values()
                .iter()
                .enumerate()
                .map(|(i, w)| (enc.row(i).data().to_vec(), None, *w))
                .collect();
            let built = self.build(&changes)?;
            self.passthrough.push(built);
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        out.append(&mut self.passthrough);
        // Right rows whose count fell to zero go before any match is looked up.
        for (side, key, t, row) in &self.dirty {
            if *side != 1 {
                continue;
            }
            let Some(r) = self.right.get_mut(key) else {
                continue;
            };
            if let Some(g) = r.get_mut(t) {
                if g.get(row) == Some(&0) {
                    g.remove(row);
                }
                if g.is_empty() {
                    r.remove(t);
                }
            }
            if r.is_empty() {
                self.right.remove(key);
            }
        }
        let mut keys: BTreeSet<Vec<u8>> = self.before.keys().cloned().collect();
        keys.extend(self.right_changed.keys().cloned());
        let outer = self.outer();
        let mut changes: Vec<OutRow> = Vec::new();
        for key in keys {
            let mut before = self.before.remove(&key).unwrap_or_default();
            if let Some(changed) = self.right_changed.remove(&key) {
                let left = self.left.get(&key);
                for slot in self.reached(&key, &changed) {
                    before.entry(slot).or_insert_with_key(|(t, row)| {
                        left.and_then(|l| l.get(t))
                            .and_then(|g| g.get(row))
                            .cloned()
                            .unwrap_or_default()
                    });
                }
            }
            let right = self.right.get(&key);
            let mut updates = Vec::with_capacity(before.len());
            for ((t, row), old) in before {
                let count = self
                    .left
                    .get(&key)
                    .and_then(|l| l.get(&t))
                    .and_then(|g| g.get(&row))
                    .map_or(0, |e| e.count);
                let matched = if count == 0 {
                    None
                } else {
                    best(right, t, self.spec.matching)
                };
                let visible = |m: &Option<(i64, Vec<u8>)>| outer || m.is_some();
                if old.matched == matched {
                    if count != old.count && visible(&matched) {
                        changes.push((
                            row.clone(),
                            matched.as_ref().map(|m| m.1.clone()),
                            count - old.count,
                        ));
                    }
                } else {
                    if old.count != 0 && visible(&old.matched) {
                        changes.push((
                            row.clone(),
                            old.matched.as_ref().map(|m| m.1.clone()),
                            -old.count,
                        ));
                    }
                    if count != 0 && visible(&matched) {
                        changes.push((row.clone(), matched.as_ref().map(|m| m.1.clone()), count));
                    }
                }
                updates.push((t, row, count, matched));
            }
            if let Some(left) = self.left.get_mut(&key) {
                for (t, row, count, matched) in updates {
                    let Some(group) = left.get_mut(&t) else {
                        continue;
                    };
                    if count == 0 {
                        group.remove(&row);
                        if group.is_empty() {
                            left.remove(&t);
                        }
                    } else if let Some(e) = group.get_mut(&row) {
                        e.matched = matched;
                    }
                }
                if left.is_empty() {
                    self.left.remove(&key);
                }
            }
        }
        for (side, key, t, row) in std::mem::take(&mut self.dirty) {
            let k = timed_row_key(&key, t, &row);
            let count = if side == 0 {
                self.left
                    .get(&key)
                    .and_then(|l| l.get(&t))
                    .and_then(|g| g.get(&row))
                    .map(|e| e.count)
            } else {
                self.right
                    .get(&key)
                    .and_then(|r| r.get(&t))
                    .and_then(|g| g.get(&row))
                    .copied()
            };
            match count {
                Some(c) if c < 0 => {
                    return Err(DataflowError::Internal(format!(
                        "ASOF join row multiplicity would become {c}"
                    )))
                }
                Some(c) if c > 0 => state.put(self.tables[side], &k, &c.to_le_bytes()),
                _ => state.delete(self.tables[side], &k),
            }
        }
        if !changes.is_empty() {
            out.push(self.build(&changes)?);
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
        let side = usize::from(table == self.tables[1]);
        for (k, v) in entries {
            let (key, t, row, count) = split_timed_row(k, v)?;
            if !partitioner.owns(key) {
                continue;
            }
            if side == 0 {
                self.left
                    .entry(key.to_vec())
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(
                        row.to_vec(),
                        LeftEntry {
                            count,
                            matched: None,
                        },
                    );
            } else {
                self.right
                    .entry(key.to_vec())
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(row.to_vec(), count);
            }
        }
        // Matches follow from both sides: recomputed once both are loaded (the right
        // table is restored after the left one).
        if side == 1 {
            let m = self.spec.matching;
            for (key, left) in self.left.iter_mut() {
                let right = self.right.get(key);
                for (t, group) in left.iter_mut() {
                    for e in group.values_mut() {
                        e.matched = best(right, *t, m);
                    }
                }
            }
        }
        Ok(())
    }
}
