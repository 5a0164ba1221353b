//! # sabot-dataflow: the streaming runtime
//!
//! Changes flow as [`ChangeBatch`]es: an Arrow `RecordBatch` plus a weight per row (a
//! Z-set). Linear operators ([`ops::filter`], [`ops::project`], [`ops::union`]) map rows
//! and keep weights; stateful ones ([`ops::aggregate`], [`ops::join`],
//! [`ops::materialize`]) keep per-key state that accepts retractions, and write what
//! changed at each barrier into the epoch's atomic RocksDB batch.
//!
//! Where to start: [`graph::StreamPlan`] (what a view computes) and [`graph::Dataflow`]
//! (running it per epoch across workers); [`table::TableState`] is where DML lands.

pub mod batch;
pub mod codec;
pub mod error;
pub mod graph;
pub mod operator;
pub mod ops;
pub mod row;
pub mod table;
mod workers;

pub use batch::ChangeBatch;
pub use error::{DataflowError, Result};
pub use graph::{Dataflow, NodeKind, OperatorStats, PlanNode, StreamPlan, WatermarkStatus};
pub use table::TableState;
