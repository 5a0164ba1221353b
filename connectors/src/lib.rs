//! # sabot-connectors: where streams come from
//!
//! A source is split into independent, deterministic splits. Each split produces rows in
//! order and can seek to any offset (the number of rows it has produced), so a source
//! replayed from the offsets stored in a checkpoint yields exactly the rows that followed
//! it: nothing lost, nothing doubled.
//!
//! Built in: [`nexmark`] (the Nexmark auction benchmark's person/auction/bid events) and
//! [`datagen`] (per-column sequence and random generators); external: [`kafka`].

pub mod avro;
pub mod datagen;
pub mod decode;
pub mod error;
pub mod failpoint;
pub mod filesystem;
pub mod kafka;
pub mod nexmark;
pub mod options;
pub mod protobuf;
mod rng;
pub mod sink;
pub mod source_errors;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use error::{ConnectorError, Result};
pub use options::Options;

/// One split of a source.
pub trait Split: Send + Sync {
    /// The rows this split produces.
    fn schema(&self) -> SchemaRef;

    /// The next up to `max` rows; `None` once the split is exhausted.
    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>>;

    /// How many rows this split has produced.
    fn offset(&self) -> u64;

    /// Continues after `offset` rows, as if they had been produced.
    fn seek(&mut self, offset: u64);

    /// The offset the split would reach by reading everything there is now, when known:
    /// where a bounded split ends, or how far an external source has got (Kafka's high
    /// watermark). `end_offset - offset` is what is left to read (the lag).
    fn end_offset(&self) -> Option<u64> {
        None
    }

    /// Bytes of input this split has read since it was made (record keys and values,
    /// file contents); `None` for generators, which read nothing.
    fn bytes_read(&self) -> Option<u64> {
        None
    }

    /// Rows this split may produce per second of wall time (`None`: as fast as asked).
    fn rate(&self) -> Option<f64> {
        None
    }

    /// Whether the last read took everything available now (an external source that
    /// waits for new data), so the next epoch need not follow at once.
    fn caught_up(&self) -> bool {
        false
    }
}
