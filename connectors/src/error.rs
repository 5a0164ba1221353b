//! Connector errors: the user's (bad options or column definitions), or a service the
//! connector needs being away.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConnectorError {
    /// An option is missing, unknown or has a bad value.
    #[error("{0}")]
    Options(String),
    /// The declared columns do not fit the connector.
    #[error("{0}")]
    Schema(String),
    /// Something the connector needs (a schema registry) cannot be reached now; the same
    /// records can be read again later.
    #[error("{0}")]
    Unavailable(String),
    /// Writing a sink's output failed.
    #[error("{0}")]
    Write(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
