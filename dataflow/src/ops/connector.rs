//! Reading an external source inside a view's dataflow.
//!
//! A source is split into independent splits; each worker reads the splits whose index
//! is its own modulo the worker count. At each barrier the operator reads what its splits
//! have for the epoch (a rate-limited split: what its rate allows for the time since the
//! last epoch; an unlimited one: up to [`MAX_ROWS_PER_EPOCH`]) and writes each split's
//! offset into its state table, in the same commit as everything the rows changed. After
//! a restart the splits seek to the committed offsets, so every row is read exactly once.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::row::Partitioner;

/// Rows one split may produce in one epoch.
pub const MAX_ROWS_PER_EPOCH: usize = 65_536;
/// A rate-limited split catches up at most this many seconds after a pause.
const MAX_CATCH_UP_SECONDS: f64 = 10.0;

/// One split of a source, as the dataflow reads it.
pub trait SourceSplit: Send + Sync {
    /// The next up to `max` rows; `None` once the split is exhausted.
    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>>;
    /// How far the split has got (opaque to the dataflow, stored in checkpoints).
    fn offset(&self) -> u64;
    /// Continues from an offset returned by [`SourceSplit::offset`].
    fn seek(&mut self, offset: u64);
    /// Bytes of input read since the split was made; `None` for generators.
    fn bytes_read(&self) -> Option<u64> {
        None
    }
    /// The offset the split would reach by reading everything there is now (a bounded
    /// split's end, Kafka's high watermark), when known.
    fn end_offset(&self) -> Option<u64> {
        None
    }
    /// Rows per second of wall time, or `None` for as fast as the dataflow goes.
    fn rate(&self) -> Option<f64>;
    /// Whether the last read took everything available now (an external source waiting
    /// for new data): the next epoch need not follow at once.
    fn caught_up(&self) -> bool {
        false
    }
}

/// Makes the splits of a source; every instance gets all of them and keeps its share.
pub trait SourceFactory: Send + Sync + Debug {
    fn splits(&self) -> Result<Vec<Box<dyn SourceSplit>>>;
    /// The rows the source produces.
    fn schema(&self) -> SchemaRef;
    /// What EXPLAIN shows.
    fn describe(&self) -> String;
}

struct Reader {
    index: u32,
    split: Box<dyn SourceSplit>,
    /// Rows a rate-limited split may still produce.
    credit: f64,
    done: bool,
    /// The offset as last committed.
    committed: u64,
}

pub struct ConnectorOp {
    schema: SchemaRef,
    readers: Vec<Reader>,
    table: StateTableId,
    last: Instant,
    behind: bool,
}

impl ConnectorOp {
    pub fn try_new(
        factory: &Arc<dyn SourceFactory>,
        schema: SchemaRef,
        table: StateTableId,
        partitioner: Partitioner,
    ) -> Result<Self> {
        let readers = factory
            .splits()?
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % partitioner.workers == partitioner.worker)
            .map(|(i, split)| Reader {
                index: i as u32,
                split,
                credit: 0.0,
                done: false,
                committed: 0,
            })
            .collect();
        Ok(Self {
            schema,
            readers,
            table,
            last: Instant::now(),
            behind: true,
        })
    }
}

impl Operator for ConnectorOp {
    fn name(&self) -> &'static str {
        "SourceReader"
    }

    fn on_data(
        &mut self,
        _port: usize,
        _batch: ChangeBatch,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        Err(DataflowError::Internal(
            "a source reader has no input".into(),
        ))
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.behind = false;
        for r in &mut self.readers {
            if r.done {
                continue;
            }
            let budget = match r.split.rate() {
                Some(rate) => {
                    r.credit = (r.credit + rate * elapsed).min(rate * MAX_CATCH_UP_SECONDS);
                    (r.credit.floor() as usize).min(MAX_ROWS_PER_EPOCH)
                }
                None => MAX_ROWS_PER_EPOCH,
            };
            let mut produced = 0usize;
            while produced < budget {
                match r.split.next_batch(budget - produced)? {
                    Some(b) => {
                        if b.num_rows() == 0 {
                            // Nothing more right now (an external source caught up).
                            break;
                        }
                        produced += b.num_rows();
                        let b =
                            batch_with_schema(&self.schema, b.columns().to_vec(), b.num_rows())?;
                        out.push(ChangeBatch::inserts(b));
                    }
                    None => {
                        r.done = true;
                        break;
                    }
                }
            }
            if r.split.rate().is_some() {
                r.credit -= produced as f64;
            } else if !r.done && !r.split.caught_up() {
                self.behind = true;
            }
            let offset = r.split.offset();
            if offset != r.committed {
                state.put(self.table, &r.index.to_be_bytes(), &offset.to_le_bytes());
                r.committed = offset;
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
        _partitioner: Partitioner,
    ) -> Result<()> {
        for (k, v) in entries {
            let index: [u8; 4] = k
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::Corrupt("source split key is not 4 bytes".into()))?;
            let offset: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::Corrupt("source offset is not 8 bytes".into()))?;
            let index = u32::from_be_bytes(index);
            let offset = u64::from_le_bytes(offset);
            if let Some(r) = self.readers.iter_mut().find(|r| r.index == index) {
                r.split.seek(offset);
                r.committed = offset;
            }
        }
        Ok(())
    }

    fn wants_more(&self) -> bool {
        self.behind
    }

    fn source_active(&self) -> bool {
        self.readers.iter().any(|r| !r.done)
    }

    fn source_bytes(&self) -> Option<u64> {
        self.readers
            .iter()
            .filter_map(|r| r.split.bytes_read())
            .reduce(|a, b| a + b)
    }

    fn source_progress(&self) -> Option<(u64, Option<u64>)> {
        let read = self.readers.iter().map(|r| r.split.offset()).sum();
        let end = self
            .readers
            .iter()
            .map(|r| r.split.end_offset())
            .sum::<Option<u64>>();
        Some((read, end))
    }
}
