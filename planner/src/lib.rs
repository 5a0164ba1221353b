//! # sabot-planner: from statements to dataflows and answers
//!
//! - [`engine::Database`] runs statements: DDL and DML against the catalog and tables,
//!   epochs that push changes through every view, reads over the last committed epoch,
//!   and recovery after a restart.
//! - [`stream`] turns the DataFusion logical plan of a view's query into a
//!   [`sabot_dataflow::StreamPlan`], or explains which construct cannot be incremental.
//! - [`types`] maps SQL types to Arrow and back.
//! - [`pg_catalog`] is PostgreSQL's system catalog over a snapshot, for clients.

pub mod colnames;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod ingest;
pub mod now;
pub mod pg_catalog;
pub mod sinks;
pub mod sources;
pub mod stream;
pub mod temporal;
pub mod types;
pub mod windows;

pub use engine::{
    CheckpointRecord, Database, DbConfig, GraphNode, Output, Progress, Relation, RelationKind,
    ScramVerifier, Snapshot, UserMeta, ViewMetrics,
};
pub use error::{PlanError, Result};
pub use pg_catalog::{Activity, Session, SessionControl};
