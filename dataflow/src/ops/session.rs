//! Session windows: per partition key, rows whose event times lie less than `gap` apart
//! form one session `[first ts, last ts + gap)`. Each output row is an input row with its
//! session's `window_start` and `window_end`.
//!
//! A row can join two sessions into one, or (when deleted) split one, so earlier rows
//! change windows: the operator keeps each key's rows ordered by time and, for every key
//! touched in an epoch, emits the difference between its rows' assignments before and
//! after the epoch. With a watermark on the time column, sessions that end before it can
//! no longer change (a row still to come is no earlier than the watermark, so it lies at
//! least `gap` after their last row): their rows are dropped from the state. For the same
//! reason every row still to come out has a `window_end` above the watermark, which is
//! the watermark of the output's `window_end` column.
//!
//! State: under retractions one entry per row, `timed_row_key(key, time, row)` →
//! multiplicity. Over an input that only adds rows, one entry per key and epoch holds
//! the rows the epoch added (`chunk_key`); purging writes the time before which a key's
//! rows are gone (`cut_key`) and deletes the chunks wholly before it, so an epoch writes
//! a few entries per key, not one per row with the row in its key.

use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::common::ScalarValue;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::codec::{join_prefixed, split_prefixed, split_timed_row, timed_row_key, Reader, Writer};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::ops::watermark::scalar_to_i64;
use crate::row::{Partitioner, RowCodec};

/// The fixed settings of a session window.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The input column holding the event time (a timestamp).
    pub time: usize,
    /// The largest distance between neighbouring rows of a session, exclusive, in the
    /// time column's unit.
    pub gap: i64,
    /// Input columns whose values partition the sessions (none: one partition).
    pub keys: Vec<usize>,
    pub input_schema: SchemaRef,
    /// The input columns, then `window_start` and `window_end` (the time column's type).
    pub output_schema: SchemaRef,
    /// The input only ever adds rows (the planner proves it): state is kept in chunks
    /// per epoch. A retraction arriving anyway is refused as a bug.
    pub append_only_input: bool,
}

impl SessionSpec {
    pub fn key_columns(&self, data: &RecordBatch) -> Vec<ArrayRef> {
        self.keys
            .iter()
            .map(|k| Arc::clone(data.column(*k)))
            .collect()
    }

    pub fn key_codec(&self) -> Result<RowCodec> {
        RowCodec::new(
            self.keys
                .iter()
                .map(|k| self.input_schema.field(*k).data_type().clone())
                .collect(),
        )
    }
}

/// A key's rows: (event time, encoded row) → multiplicity.
type Rows = BTreeMap<(i64, Vec<u8>), i64>;

/// An output row: the encoded input row, its window (None: no time, no window), weight.
type OutRow<'a> = (&'a [u8], Option<(i64, i64)>, i64);

/// One row's place: (time, row, window start, window end) and its multiplicity.
type Assigned = ((i64, Vec<u8>, i64, i64), i64);

pub struct SessionOp {
    spec: SessionSpec,
    key_codec: RowCodec,
    row_codec: RowCodec,
    table: StateTableId,
    keys: HashMap<Vec<u8>, Rows>,
    /// Keys touched this epoch → their rows' assignments before it.
    before: HashMap<Vec<u8>, Vec<Assigned>>,
    /// State entries changed this epoch: (key, time, row); under retractions only.
    dirty: HashSet<(Vec<u8>, i64, Vec<u8>)>,
    /// Over append-only input: per key, the rows added this epoch, each as `time (i64)
    /// ++ len ++ row ++ multiplicity (i64)`, and their latest time.
    fresh: HashMap<Vec<u8>, (Writer, i64)>,
    /// Over append-only input: per key, its chunks in state (epoch → latest time in it).
    chunks: HashMap<Vec<u8>, BTreeMap<u64, i64>>,
    watermark: Option<i64>,
    purged_at: Option<i64>,
}

/// The state key of the rows a key gained in `epoch` (append-only input).
fn chunk_key(key: &[u8], epoch: u64) -> Vec<u8> {
    let mut rest = [0u8; 9];
    rest[1..].copy_from_slice(&epoch.to_be_bytes());
    join_prefixed(key, &rest)
}

/// The state key of the time before which a key's rows are gone (append-only input).
fn cut_key(key: &[u8]) -> Vec<u8> {
    join_prefixed(key, &[1])
}

/// The time of the first row whose session has not ended before `wm`, the rows before
/// it being in sessions that did; `None` when every session did. Only rows up to the
/// first session still open are read.
fn first_open(rows: &Rows, gap: i64, wm: i64) -> Option<i64> {
    let mut start: Option<i64> = None;
    let mut prev: Option<i64> = None;
    for (ts, _) in rows.keys() {
        match prev {
            Some(p) if ts.saturating_sub(p) < gap => {}
            Some(p) => {
                if p.saturating_add(gap) >= wm {
                    return start;
                }
                start = Some(*ts);
            }
            None => start = Some(*ts),
        }
        prev = Some(*ts);
    }
    match prev {
        Some(p) if p.saturating_add(gap) >= wm => start,
        _ => None,
    }
}

/// Each row of `rows` with its session, in time order.
fn assign(rows: &Rows, gap: i64) -> Vec<Assigned> {
    let mut out: Vec<Assigned> = Vec::with_capacity(rows.len());
    let mut start = 0;
    let mut prev: Option<i64> = None;
    let mut session_from = 0;
    let close = |out: &mut Vec<Assigned>, from: usize, start: i64, last: i64| {
        let end = last.saturating_add(gap);
        for a in &mut out[from..] {
            a.0 .2 = start;
            a.0 .3 = end;
        }
    };
    for ((ts, row), count) in rows {
        match prev {
            Some(p) if ts.saturating_sub(p) < gap => {}
            Some(p) => {
                close(&mut out, session_from, start, p);
                session_from = out.len();
                start = *ts;
            }
            None => start = *ts,
        }
        out.push(((*ts, row.clone(), 0, 0), *count));
        prev = Some(*ts);
    }
    if let Some(p) = prev {
        close(&mut out, session_from, start, p);
    }
    out
}

impl SessionOp {
    pub fn try_new(spec: SessionSpec, table: StateTableId) -> Result<Self> {
        Ok(Self {
            key_codec: spec.key_codec()?,
            row_codec: RowCodec::for_schema(&spec.input_schema)?,
            spec,
            table,
            keys: HashMap::new(),
            before: HashMap::new(),
            dirty: HashSet::new(),
            fresh: HashMap::new(),
            chunks: HashMap::new(),
            watermark: None,
            purged_at: None,
        })
    }

    fn time_type(&self) -> &DataType {
        self.spec.input_schema.field(self.spec.time).data_type()
    }

    /// Output rows: the decoded input rows with their windows (NULL windows where
    /// `window` is None), with weights.
    fn build(&self, rows: &[OutRow<'_>]) -> Result<ChangeBatch> {
        let mut columns = self.row_codec.decode(rows.iter().map(|r| r.0))?;
        let ty = self.time_type().clone();
        for pick in [|w: (i64, i64)| w.0, |w: (i64, i64)| w.1] {
            let ints: Int64Array = rows.iter().map(|r| r.1.map(pick)).collect();
            columns.push(cast(&(Arc::new(ints) as ArrayRef), &ty)?);
        }
        let data = batch_with_schema(&self.spec.output_schema, columns, rows.len())?;
        ChangeBatch::try_new(data, rows.iter().map(|r| r.2).collect())
    }

    /// Drops the rows of sessions that ended before the watermark.
    fn purge(&mut self, state: &mut StateWriter) {
        let Some(wm) = self.watermark else { return };
        if self.purged_at == Some(wm) {
            return;
        }
        self.purged_at = Some(wm);
        let gap = self.spec.gap;
        let mut emptied = Vec::new();
        for (key, rows) in &mut self.keys {
            let gone = match first_open(rows, gap, wm) {
                Some(open) => {
                    let kept = rows.split_off(&(open, Vec::new()));
                    std::mem::replace(rows, kept)
                }
                None => std::mem::take(rows),
            };
            if gone.is_empty() {
                continue;
            }
            if rows.is_empty() {
                emptied.push(key.clone());
            }
            if !self.spec.append_only_input {
                for (ts, row) in gone.keys() {
                    state.delete(self.table, &timed_row_key(key, *ts, row));
                }
                continue;
            }
            let Some(chunks) = self.chunks.get_mut(key) else {
                continue;
            };
            if rows.is_empty() {
                self.chunks.remove(key);
                state.delete_prefix(self.table, &join_prefixed(key, &[]));
                continue;
            }
            // Every row gone is before the cut, every row kept or still to come at or
            // after it: a row to come lies at or after the watermark, and a gone row's
            // session ended before it.
            let cut = gone
                .last_key_value()
                .map_or(i64::MIN, |((ts, _), _)| ts.saturating_add(1));
            // Chunks wholly before the cut go; the others are read from it on.
            chunks.retain(|epoch, latest| {
                let keep = *latest >= cut;
                if !keep {
                    state.delete(self.table, &chunk_key(key, *epoch));
                }
                keep
            });
            state.put(self.table, &cut_key(key), &cut.to_le_bytes());
        }
        for k in emptied {
            self.keys.remove(&k);
        }
    }
}

impl Operator for SessionOp {
    fn state_rows(&self) -> usize {
        self.keys.values().map(BTreeMap::len).sum()
    }

    fn name(&self) -> &'static str {
        "SessionWindow"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let data = batch.data();
        let keys = if self.key_codec.is_empty() {
            None
        } else {
            Some(self.key_codec.encode(&self.spec.key_columns(data))?)
        };
        let times = cast(data.column(self.spec.time), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let rows = self.row_codec.encode(data.columns())?;
        let mut untimed: Vec<u32> = Vec::new();
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 {
                continue;
            }
            if times.is_null(i) {
                // No time, no session: passed on with NULL windows.
                untimed.push(i as u32);
                continue;
            }
            if w < 0 && self.spec.append_only_input {
                return Err(DataflowError::Internal(
                    "a retraction reached a session window over an append-only input".into(),
                ));
            }
            let key: &[u8] = keys.as_ref().map(|k| k.row(i).data()).unwrap_or(&[]);
            let ts = times.value(i);
            let row = rows.row(i).data();
            if !self.before.contains_key(key) {
                let snapshot = self
                    .keys
                    .get(key)
                    .map(|r| assign(r, self.spec.gap))
                    .unwrap_or_default();
                self.before.insert(key.to_vec(), snapshot);
            }
            let entry = match self.keys.get_mut(key) {
                Some(e) => e,
                None => self.keys.entry(key.to_vec()).or_default(),
            };
            let slot = (ts, row.to_vec());
            let count = entry.get(&slot).copied().unwrap_or(0) + w;
            if count == 0 {
                entry.remove(&slot);
            } else {
                entry.insert(slot, count);
            }
            if self.spec.append_only_input {
                let (added, latest) = match self.fresh.get_mut(key) {
                    Some(f) => f,
                    None => self
                        .fresh
                        .entry(key.to_vec())
                        .or_insert_with(|| (Writer::default(), ts)),
                };
                added.i64(ts).bytes(row).i64(w);
                *latest = (*latest).max(ts);
            } else {
                self.dirty.insert((key.to_vec(), ts, row.to_vec()));
            }
        }
        if !untimed.is_empty() {
            let part = batch.take(&UInt32Array::from(untimed))?;
            let enc = self.row_codec.encode(part.data().columns())?;
            let list: Vec<OutRow<'_>> = part
                .weights()
                .values()
                .iter()
                .enumerate()
                .map(|(i, w)| (enc.row(i).data(), None, *w))
                .collect();
            out.push(self.build(&list)?);
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        for (key, (added, latest)) in std::mem::take(&mut self.fresh) {
            state.put(self.table, &chunk_key(&key, epoch), &added.finish());
            self.chunks.entry(key).or_default().insert(epoch, latest);
        }
        let mut diff: HashMap<(i64, Vec<u8>, i64, i64), i64> = HashMap::new();
        for (key, before) in std::mem::take(&mut self.before) {
            for (a, c) in before {
                *diff.entry(a).or_default() -= c;
            }
            if let Some(rows) = self.keys.get(&key) {
                for (a, c) in assign(rows, self.spec.gap) {
                    *diff.entry(a).or_default() += c;
                }
            } else {
                continue;
            }
            if self.keys.get(&key).is_some_and(BTreeMap::is_empty) {
                self.keys.remove(&key);
            }
        }
        for (key, ts, row) in std::mem::take(&mut self.dirty) {
            let count = self
                .keys
                .get(&key)
                .and_then(|r| r.get(&(ts, row.clone())))
                .copied();
            let k = timed_row_key(&key, ts, &row);
            match count {
                Some(c) if c < 0 => {
                    return Err(DataflowError::Internal(format!(
                        "session row multiplicity would become {c}"
                    )))
                }
                Some(c) => state.put(self.table, &k, &c.to_le_bytes()),
                None => state.delete(self.table, &k),
            }
        }
        self.keys.retain(|_, r| !r.is_empty());
        let changes: Vec<OutRow<'_>> = diff
            .iter()
            .filter(|(_, c)| **c != 0)
            .map(|((_, row, s, e), c)| (row.as_slice(), Some((*s, *e)), *c))
            .collect();
        if !changes.is_empty() {
            out.push(self.build(&changes)?);
        }
        self.purge(state);
        Ok(())
    }

    fn on_watermark(&mut self, _port: usize, column: usize, value: &ScalarValue) -> Result<()> {
        if column == self.spec.time {
            if let Some(v) = scalar_to_i64(value)? {
                self.watermark = Some(self.watermark.map_or(v, |w| w.max(v)));
            }
        }
        Ok(())
    }

    fn state_tables(&self) -> Vec<StateTableId> {
        vec![self.table]
    }

    fn restore(
        &mut self,
        _table: StateTableId,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        if self.spec.append_only_input {
            return self.restore_chunks(entries, partitioner);
        }
        for (k, v) in entries {
            let (key, ts, row, count) = split_timed_row(k, v)?;
            if !partitioner.owns(key) {
                continue;
            }
            self.keys
                .entry(key.to_vec())
                .or_default()
                .insert((ts, row.to_vec()), count);
        }
        Ok(())
    }
}

impl SessionOp {
    /// Restores the chunked state of an append-only input: each key's chunks, less the
    /// rows before its cut.
    fn restore_chunks(
        &mut self,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        let corrupt = || DataflowError::Corrupt("session window state entry".into());
        let mut cuts: Vec<(Vec<u8>, i64)> = Vec::new();
        for (k, v) in entries {
            let (key, rest) = split_prefixed(k)?;
            if !partitioner.owns(key) {
                continue;
            }
            match rest {
                [1] => {
                    let cut = <[u8; 8]>::try_from(v.as_slice()).map_err(|_| corrupt())?;
                    cuts.push((key.to_vec(), i64::from_le_bytes(cut)));
                }
                [0, epoch @ ..] => {
                    let epoch = u64::from_be_bytes(epoch.try_into().map_err(|_| corrupt())?);
                    let rows = self.keys.entry(key.to_vec()).or_default();
                    let mut r = Reader::new(v);
                    let mut latest = i64::MIN;
                    while !r.is_empty() {
                        let ts = r.i64()?;
                        let row = r.bytes()?.to_vec();
                        *rows.entry((ts, row)).or_insert(0) += r.i64()?;
                        latest = latest.max(ts);
                    }
                    self.chunks
                        .entry(key.to_vec())
                        .or_default()
                        .insert(epoch, latest);
                }
                _ => return Err(corrupt()),
            }
        }
        for (key, cut) in cuts {
            if let Some(rows) = self.keys.get_mut(&key) {
                *rows = rows.split_off(&(cut, Vec::new()));
                if rows.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
        Ok(())
    }
}
