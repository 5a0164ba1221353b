//! Planner and engine errors, each with the SQLSTATE a client sees.

use datafusion::error::DataFusionError;
use sabot_dataflow::DataflowError;
use sabot_sql::SqlError;
use sabot_storage::StorageError;

/// An error from planning or running a statement.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A user mistake with a known SQLSTATE (unknown name, duplicate object, ...).
    #[error("{message}")]
    User { code: &'static str, message: String },
    /// A view query that Sabot cannot maintain incrementally (yet).
    #[error("{0}")]
    NotIncremental(String),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Dataflow(#[from] DataflowError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal error (likely a bug): {0}")]
    Internal(String),
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

impl PlanError {
    pub fn user(code: &'static str, message: impl Into<String>) -> Self {
        Self::User {
            code,
            message: message.into(),
        }
    }

    pub fn not_incremental(construct: impl std::fmt::Display) -> Self {
        Self::NotIncremental(format!(
            "cannot maintain this query incrementally: {construct} is not supported in materialized views yet"
        ))
    }

    /// The SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PlanError::Sql(SqlError::Syntax { .. }) => "42601",
            PlanError::Sql(SqlError::Unsupported(_)) => "0A000",
            PlanError::User { code, .. } => code,
            PlanError::NotIncremental(_) => "0A000",
            PlanError::DataFusion(e) => datafusion_sqlstate(e),
            PlanError::Dataflow(DataflowError::User { code, .. }) => code,
            PlanError::Dataflow(DataflowError::DataFusion(e)) => datafusion_sqlstate(e),
            PlanError::Dataflow(DataflowError::Arrow(e)) | PlanError::Arrow(e) => {
                arrow_sqlstate(&e.to_string())
            }
            PlanError::Dataflow(_) | PlanError::Storage(_) | PlanError::Internal(_) => "XX000",
        }
    }

    /// The 1-based character position of a syntax error, when known.
    pub fn position(&self) -> Option<usize> {
        match self {
            PlanError::Sql(SqlError::Syntax { position, .. }) => *position,
            _ => None,
        }
    }

    /// The message for the client: DataFusion's wording trimmed of its internal prefixes.
    pub fn client_message(&self) -> String {
        match self {
            PlanError::DataFusion(e) | PlanError::Dataflow(DataflowError::DataFusion(e)) => {
                clean_datafusion_message(e)
            }
            other => other.to_string(),
        }
    }
}

fn clean_datafusion_message(e: &DataFusionError) -> String {
    let e = e.find_root();
    let s = match e {
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m) => m.clone(),
        DataFusionError::SchemaError(se, _) => se.to_string(),
        DataFusionError::ArrowError(ae, _) => ae.to_string(),
        other => other.to_string(),
    };
    let s = s.lines().next().unwrap_or_default().trim().to_string();
    // PostgreSQL's wording for unknown relations, which clients and tools match on.
    if let Some(rest) = s.strip_prefix("table '") {
        if let Some(name) = rest.strip_suffix("' not found") {
            let bare = name.rsplit('.').next().unwrap_or(name);
            return format!("relation \"{bare}\" does not exist");
        }
    }
    s
}

fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    let root = e.find_root();
    let msg = root.to_string();
    match root {
        DataFusionError::SchemaError(..) if msg.contains("No field named") => "42703",
        DataFusionError::SchemaError(..) if msg.contains("Ambiguous") => "42702",
        DataFusionError::SchemaError(..) => "42P01",
        DataFusionError::ArrowError(ae, _) => arrow_sqlstate(&ae.to_string()),
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::SQL(..) => "42601",
        _ if msg.contains("not found") && msg.contains("table") => "42P01",
        _ if msg.contains("Divide by zero") || msg.contains("Division by zero") => "22012",
        _ if msg.contains("Invalid function") || msg.contains("No function matches") => "42883",
        _ if msg.contains("Cannot cast") || msg.contains("Cast error") => "22P02",
        _ if msg.contains("coerce") || msg.contains("type") => "42804",
        DataFusionError::Plan(_) => "42601",
        _ => "XX000",
    }
}

fn arrow_sqlstate(msg: &str) -> &'static str {
    if msg.contains("Divide by zero") {
        "22012"
    } else if msg.contains("overflow") || msg.contains("too large") || msg.contains("out of range")
    {
        "22003"
    } else if msg.contains("Cast error")
        || msg.contains("Parser error")
        || msg.contains("Cannot cast")
    {
        "22P02"
    } else {
        "XX000"
    }
}
