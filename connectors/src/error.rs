//! Connector errors: all of them the user's (bad options or column definitions).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConnectorError {
    /// An option is missing, unknown or has a bad value.
    #[error("{0}")]
    Options(String),
    /// The declared columns do not fit the connector.
    #[error("{0}")]
    Schema(String),
    /// Writing a sink's output failed.
    #[error("{0}")]
    Write(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
