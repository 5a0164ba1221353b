//! The operator contract and the messages that flow between operators.

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::ChangeBatch;
use crate::error::Result;
use crate::row::Partitioner;

/// What travels on an edge of the dataflow.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of changes.
    Data(ChangeBatch),
    /// No row still to come on this edge has a value below this in column `.0`.
    Watermark(usize, ScalarValue),
    /// The epoch's clock (nanoseconds since the Unix epoch), first on the edge into a
    /// temporal filter.
    Clock(i64),
    /// Everything of `epoch` has been sent on this edge.
    Barrier(u64),
}

/// One instance of an operator, owned by one worker.
///
/// The runtime calls [`Operator::on_data`] for each batch of the epoch, on each input port
/// in port order, then [`Operator::on_barrier`] once all inputs delivered the barrier. At
/// the barrier a stateful operator writes the state it changed during the epoch into the
/// [`StateWriter`] (committed atomically with every other operator's) and emits what it
/// held back (aggregates emit one consolidated change per group per epoch).
pub trait Operator: Send + Sync {
    /// A short name for EXPLAIN, metrics and errors.
    fn name(&self) -> &'static str;

    /// Handles one batch from input `port`, appending output batches to `out`.
    fn on_data(
        &mut self,
        port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()>;

    /// The watermark of input `port`'s column `column` as of the end of the epoch,
    /// delivered after the epoch's data and before its barrier (see
    /// [`crate::ops::watermark`]).
    fn on_watermark(&mut self, _port: usize, _column: usize, _value: &ScalarValue) -> Result<()> {
        Ok(())
    }

    /// The epoch's clock (nanoseconds since the Unix epoch, never earlier than the last
    /// epoch's), before the epoch's data; only temporal filters get it.
    fn on_clock(&mut self, _now_ns: i64, _out: &mut Vec<ChangeBatch>) -> Result<()> {
        Ok(())
    }

    /// Whether the operator holds rows whose output changes as the clock moves: the
    /// runtime should run epochs even without new input.
    fn time_pending(&self) -> bool {
        false
    }

    /// For a watermark generator: the largest watermark value seen this epoch (as the
    /// integer of the column's type) and how many late rows it dropped; both reset.
    fn take_generated(&mut self) -> (Option<i64>, u64) {
        (None, 0)
    }

    /// Handles the barrier of `epoch`.
    fn on_barrier(
        &mut self,
        _epoch: u64,
        _state: &mut StateWriter,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        Ok(())
    }

    /// How many entries (groups, rows) the operator holds in memory, for metrics.
    fn state_rows(&self) -> usize {
        0
    }

    /// The state tables this operator writes (restored after a restart, dropped with it).
    fn state_tables(&self) -> Vec<StateTableId> {
        Vec::new()
    }

    /// Loads state after a restart. `entries` are all entries of one of the operator's
    /// state tables; the operator keeps those its worker owns (`partitioner`).
    fn restore(
        &mut self,
        _table: StateTableId,
        _entries: &[(Vec<u8>, Vec<u8>)],
        _partitioner: Partitioner,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether the operator has input ready beyond what the last epoch took (a source
    /// reader that is behind): the runtime should run the next epoch soon.
    fn wants_more(&self) -> bool {
        false
    }

    /// For a source reader over external input: the bytes its splits have read since
    /// they were made.
    fn source_bytes(&self) -> Option<u64> {
        None
    }

    /// For a source reader: the offsets its splits have reached and, when every split
    /// is bounded and knows its end, the offsets at which they end (summed).
    fn source_progress(&self) -> Option<(u64, Option<u64>)> {
        None
    }

    /// Whether this is a source reader with rows still to read.
    fn source_active(&self) -> bool {
        false
    }

    /// The current contents, for operators that hold a materialized result: batches
    /// that share their arrays with the operator's (cheap to take at every epoch).
    fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }
}
