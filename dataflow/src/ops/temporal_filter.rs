//! Temporal filters: `WHERE <row time> <cmp> NOW() [± interval]`, re-evaluated as the
//! clock moves.
//!
//! The time side `T(now)` never decreases as `now` does, so each row changes its
//! verdict at most once:
//! - `row > T` / `row >= T` (a sliding window such as `ts > NOW() - INTERVAL '1' HOUR`):
//!   a row is in from its arrival until `T` reaches it, then leaves. The operator keeps
//!   the rows that are in, ordered by their time, and retracts those `T` passed.
//! - `row < T` / `row <= T` (rows dated in the future, `ts <= NOW()`): a row is out until
//!   `T` passes it, then in for good. The operator keeps the rows still waiting.
//!
//! At the start of each epoch the runtime delivers the clock ([`Operator::on_clock`]);
//! the epoch's rows are judged against that clock's `T`. Rows are hash-exchanged on all
//! their columns, so a row's insert and its retraction meet on one worker. A NULL row
//! time compares as unknown: such rows never pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::codec::{split_timed_row, timed_row_key};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::ops::watermark::time_ints;
use crate::row::{Partitioner, RowCodec};

/// How the row's time compares with the time side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// `row > T` (`inclusive`: `>=`): rows leave as time passes.
    Above { inclusive: bool },
    /// `row < T` (`inclusive`: `<=`): rows enter as time passes.
    Below { inclusive: bool },
}

impl TimeBound {
    fn passes(self, row: i64, t: i64) -> bool {
        match self {
            TimeBound::Above { inclusive: true } => row >= t,
            TimeBound::Above { inclusive: false } => row > t,
            TimeBound::Below { inclusive: true } => row <= t,
            TimeBound::Below { inclusive: false } => row < t,
        }
    }

    /// Whether the filter's output only ever grows.
    pub fn append_only(self) -> bool {
        matches!(self, TimeBound::Below { .. })
    }

    pub fn symbol(self) -> &'static str {
        match self {
            TimeBound::Above { inclusive: true } => ">=",
            TimeBound::Above { inclusive: false } => ">",
            TimeBound::Below { inclusive: true } => "<=",
            TimeBound::Below { inclusive: false } => "<",
        }
    }
}

/// The fixed settings of a temporal filter.
#[derive(Debug, Clone)]
pub struct TemporalFilterSpec {
    /// The row side of the comparison, over the input's rows.
    pub row_expr: Arc<dyn PhysicalExpr>,
    pub bound: TimeBound,
    /// The time side, over a one-row batch of `now_schema` holding the clock; never
    /// decreasing in it, of the row side's type.
    pub now_expr: Arc<dyn PhysicalExpr>,
    /// One column: the clock as a nanosecond timestamp (with the time zone `NOW()` has).
    pub now_schema: SchemaRef,
    pub input_schema: SchemaRef,
    /// The condition as written, for EXPLAIN.
    pub text: String,
}

impl TemporalFilterSpec {
    /// The time side's value at clock `now_ns` (nanoseconds since the epoch), as the
    /// integer of its type.
    pub fn threshold(&self, now_ns: i64) -> Result<Option<i64>> {
        let tz = match self.now_schema.field(0).data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => tz.clone(),
            other => {
                return Err(DataflowError::Internal(format!(
                    "the clock of a temporal filter has type {other}"
                )))
            }
        };
        let clock: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![now_ns]).with_timezone_opt(tz));
        let batch = RecordBatch::try_new(Arc::clone(&self.now_schema), vec![clock])?;
        let t = self.now_expr.evaluate(&batch)?.into_array(1)?;
        let t = time_ints(&t)?;
        Ok((!t.is_null(0)).then(|| t.value(0)))
    }
}

pub struct TemporalFilterOp {
    spec: TemporalFilterSpec,
    codec: RowCodec,
    table: StateTableId,
    /// Rows whose verdict is still to change: (row time, encoded row) → multiplicity.
    rows: BTreeMap<(i64, Vec<u8>), i64>,
    /// Entries changed since the last barrier.
    dirty: BTreeSet<(i64, Vec<u8>)>,
    /// The time side as of this epoch's clock.
    threshold: Option<i64>,
    /// Whether the threshold moved since the last barrier.
    threshold_moved: bool,
}

/// The state key of the threshold, shorter than any row's ([`timed_row_key`]).
const THRESHOLD_KEY: &[u8] = b"t";

impl TemporalFilterOp {
    pub fn try_new(spec: TemporalFilterSpec, table: StateTableId) -> Result<Self> {
        Ok(Self {
            codec: RowCodec::for_schema(&spec.input_schema)?,
            spec,
            table,
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
            threshold: None,
            threshold_moved: false,
        })
    }

    fn add(&mut self, time: i64, row: &[u8], weight: i64) {
        let slot = (time, row.to_vec());
        let count = self.rows.get(&slot).copied().unwrap_or(0) + weight;
        if count == 0 {
            self.rows.remove(&slot);
        } else {
            self.rows.insert(slot.clone(), count);
        }
        self.dirty.insert(slot);
    }
}

impl Operator for TemporalFilterOp {
    fn state_rows(&self) -> usize {
        self.rows.len()
    }

    fn name(&self) -> &'static str {
        "TemporalFilter"
    }

    fn on_clock(&mut self, now_ns: i64, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let Some(t) = self.spec.threshold(now_ns)? else {
            return Ok(());
        };
        // The clock may step back (a restart on another machine); the time side never
        // does.
        let t = self.threshold.map_or(t, |before| before.max(t));
        self.threshold_moved |= self.threshold != Some(t);
        self.threshold = Some(t);
        // The rows whose verdict flips are a prefix in time order: those `T` passed.
        let bound = self.spec.bound;
        let flipped: Vec<((i64, Vec<u8>), i64)> = self
            .rows
            .iter()
            .take_while(|((time, _), _)| match bound {
                TimeBound::Above { .. } => !bound.passes(*time, t),
                TimeBound::Below { .. } => bound.passes(*time, t),
            })
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        if flipped.is_empty() {
            return Ok(());
        }
        for (slot, _) in &flipped {
            self.rows.remove(slot);
            self.dirty.insert(slot.clone());
        }
        let sign = match bound {
            TimeBound::Above { .. } => -1,
            TimeBound::Below { .. } => 1,
        };
        let columns = self
            .codec
            .decode(flipped.iter().map(|((_, row), _)| row.as_slice()))?;
        let data = batch_with_schema(&self.spec.input_schema, columns, flipped.len())?;
        out.push(ChangeBatch::try_new(
            data,
            flipped.iter().map(|(_, c)| sign * c).collect(),
        )?);
        Ok(())
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let Some(t) = self.threshold else {
            return Err(DataflowError::Internal(
                "a temporal filter got rows before the clock".into(),
            ));
        };
        let times = self
            .spec
            .row_expr
            .evaluate(batch.data())?
            .into_array(batch.num_rows())?;
        let times = time_ints(&times)?;
        let bound = self.spec.bound;
        let pass: BooleanArray = times
            .iter()
            .map(|v| Some(v.is_some_and(|v| bound.passes(v, t))))
            .collect();
        // Rows that pass now but will leave, or fail now but will enter, are kept.
        let keep_above = matches!(bound, TimeBound::Above { .. });
        let rows = self.codec.encode(batch.data().columns())?;
        for (i, &w) in batch.weights().values().iter().enumerate() {
            if w == 0 || times.is_null(i) {
                continue;
            }
            if pass.value(i) == keep_above {
                self.add(times.value(i), rows.row(i).data(), w);
            }
        }
        let passed = batch.filter(&pass)?;
        if !passed.is_empty() {
            out.push(passed);
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        state: &mut StateWriter,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        if std::mem::take(&mut self.threshold_moved) {
            if let Some(t) = self.threshold {
                // Every worker writes the same value: they all see the same clock.
                state.put(self.table, THRESHOLD_KEY, &t.to_le_bytes());
            }
        }
        for (time, row) in std::mem::take(&mut self.dirty) {
            let key = timed_row_key(&[], time, &row);
            match self.rows.get(&(time, row)) {
                Some(c) if *c < 0 => {
                    return Err(DataflowError::Internal(format!(
                        "temporal filter row multiplicity would become {c}"
                    )))
                }
                Some(c) => state.put(self.table, &key, &c.to_le_bytes()),
                None => state.delete(self.table, &key),
            }
        }
        Ok(())
    }

    fn time_pending(&self) -> bool {
        !self.rows.is_empty()
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
        for (k, v) in entries {
            if k == THRESHOLD_KEY {
                let t = <[u8; 8]>::try_from(v.as_slice())
                    .map_err(|_| DataflowError::Corrupt("temporal filter threshold".into()))?;
                self.threshold = Some(i64::from_le_bytes(t));
                continue;
            }
            let (_, time, row, count) = split_timed_row(k, v)?;
            if !partitioner.owns(row) {
                continue;
            }
            self.rows.insert((time, row.to_vec()), count);
        }
        Ok(())
    }
}
