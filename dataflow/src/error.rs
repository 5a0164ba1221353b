//! Errors of the runtime, classified by who is at fault.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use sabot_storage::StorageError;

/// An error raised while running a dataflow or applying DML to a table.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// The user's data broke a rule (duplicate key, NULL in a key column, a value that
    /// does not fit). `code` is the SQLSTATE to report.
    #[error("{message}")]
    User { code: &'static str, message: String },
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// State read back from storage does not decode: a bug or a damaged store.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The GPU failed a kernel. Where `cpu_can_take_over`, the operator runs the same
    /// rows on the CPU instead (nothing was applied); otherwise the request was wrong.
    #[error("GPU: {message}")]
    Gpu {
        cpu_can_take_over: bool,
        message: String,
    },
    /// An invariant of the runtime does not hold: a bug.
    #[error("internal error (likely a bug): {0}")]
    Internal(String),
}

impl DataflowError {
    pub fn user(code: &'static str, message: impl Into<String>) -> Self {
        Self::User {
            code,
            message: message.into(),
        }
    }
}

pub type Result<T, E = DataflowError> = std::result::Result<T, E>;
