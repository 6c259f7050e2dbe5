//! Errors of the gateway layer and how each reaches a client: a SQLSTATE and a message that
//! says what went wrong without leaking secrets or hidden objects.
use std::path::PathBuf;

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};

/// Errors that stop the gateway from starting. They go to the operator's terminal.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Catalog(#[from] lakegate_catalog::CatalogError),
    #[error("policy has {} problem(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<lakegate_policy::PolicyError>),
    #[error("policy {path}: {message}")]
    PolicyFiles { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Errors a client sees. Each knows its SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{message}")]
    Refused { message: String, hint: String },
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    #[error("column \"{0}\" does not exist")]
    UndefinedColumn(String),
    #[error("{0}")]
    UndefinedFunction(String),
    #[error("unrecognized configuration parameter \"{0}\"")]
    UndefinedSetting(String),
    #[error("cursor \"{0}\" does not exist")]
    UndefinedCursor(String),
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("canceling statement due to user request")]
    Cancelled,
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    #[error("{0}")]
    Execution(String),
    #[error("division by zero")]
    DivisionByZero,
    /// Reading a table's data failed below the query: its text names files and buckets, so
    /// it goes to the log only.
    #[error(
        "a data file of the query's tables could not be read: it changed or went away while the query ran, or the storage failed"
    )]
    Unreadable,
    #[error(transparent)]
    Aws(#[from] crate::aws::AwsError),
    #[error(transparent)]
    Athena(#[from] crate::athena::AthenaError),
    #[error("internal error; the gateway log has details")]
    Internal,
}

impl QueryError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Refused { .. } => "42501",
            QueryError::UndefinedTable(_) => "42P01",
            QueryError::UndefinedColumn(_) => "42703",
            QueryError::UndefinedFunction(_) => "42883",
            QueryError::UndefinedCursor(_) => "34000",
            QueryError::UndefinedSetting(_) => "42704",
            QueryError::Syntax(_) => "42601",
            QueryError::Unsupported(_) => "0A000",
            QueryError::InvalidParameter(_) => "22023",
            QueryError::Cancelled | QueryError::StatementTimeout => "57014",
            QueryError::Execution(_) => "22000",
            QueryError::DivisionByZero => "22012",
            QueryError::Unreadable => "58030",
            QueryError::Aws(e) => e.sqlstate(),
            QueryError::Athena(e) => e.sqlstate(),
            QueryError::Internal => "XX000",
        }
    }

    pub fn refused(message: impl Into<String>, hint: impl Into<String>) -> Self {
        QueryError::Refused {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl From<QueryError> for PgWireError {
    fn from(e: QueryError) -> Self {
        let mut info = ErrorInfo::new("ERROR".to_string(), e.sqlstate().to_string(), e.to_string());
        let hint = match &e {
            QueryError::Refused { hint, .. } => hint.as_str(),
            QueryError::Aws(aws) => aws.hint(),
            QueryError::Athena(athena) => athena.hint(),
            QueryError::Unreadable => {
                "Run the query again; if it fails again, tell the table's owner or the \
                 gateway's operator (its log names the file)."
            }
            _ => "",
        };
        if !hint.is_empty() {
            info.hint = Some(hint.to_string());
        }
        PgWireError::UserError(Box::new(info))
    }
}

/// Maps DataFusion's errors to what a PostgreSQL user expects. Hidden tables and columns are
/// not in the user's catalog at all, so they fail exactly like missing ones.
impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        if let Some(aws) = find_cause::<crate::aws::AwsError>(&e) {
            return QueryError::Aws(aws);
        }
        if let Some(athena) = find_cause::<crate::athena::AthenaError>(&e) {
            return QueryError::Athena(athena);
        }
        match e.find_root() {
            DataFusionError::SchemaError(err, _) => match err.as_ref() {
                SchemaError::FieldNotFound { field, .. } => {
                    QueryError::UndefinedColumn(field.name().to_string())
                }
                other => QueryError::Execution(other.to_string()),
            },
            DataFusionError::SQL(err, _) => QueryError::Syntax(err.to_string()),
            DataFusionError::Plan(msg) => plan_error(msg),
            DataFusionError::NotImplemented(msg) => QueryError::Unsupported(msg.clone()),
            DataFusionError::ArrowError(err, _) => match err.as_ref() {
                ArrowError::DivideByZero => QueryError::DivisionByZero,
                ArrowError::ParquetError(_) | ArrowError::IoError(..) => unreadable(&e),
                err => QueryError::Execution(err.to_string()),
            },
            DataFusionError::ObjectStore(_)
            | DataFusionError::ParquetError(_)
            | DataFusionError::IoError(_) => unreadable(&e),
            DataFusionError::Execution(msg) => QueryError::Execution(msg.clone()),
            DataFusionError::Internal(msg) => {
                tracing::error!(error = %msg, "internal planning error");
                QueryError::Internal
            }
            other => {
                tracing::error!(error = %other, "query failed");
                QueryError::Execution(other.strip_backtrace().to_string())
            }
        }
    }
}

/// An error of type `T` in `e`'s chain of causes, wherever DataFusion and object_store wrapped
/// it: an AWS reason for a failed read (no role, STS refused, S3 refused the role) or an
/// engine's. AWS's own text stays in the log: it names buckets and keys.
pub fn find_cause<T: std::error::Error + Clone + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> Option<T> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found.clone());
        }
        cause = error.source();
    }
    None
}

fn unreadable(e: &DataFusionError) -> QueryError {
    tracing::warn!(error = %e, "a data file could not be read");
    QueryError::Unreadable
}

fn plan_error(msg: &str) -> QueryError {
    // DataFusion: "table 'gtm.gtm.patients' not found"; our analyzer: relation "x" does not exist
    if let Some(rest) = msg.strip_prefix("table '")
        && let Some(name) = rest.strip_suffix("' not found")
    {
        // drop the catalog part so the name reads like PostgreSQL's
        let parts: Vec<&str> = name.split('.').collect();
        let shown = if parts.len() == 3 {
            parts[1..].join(".")
        } else {
            name.to_string()
        };
        return QueryError::UndefinedTable(shown);
    }
    if let Some(rest) = msg.strip_prefix("relation \"")
        && let Some(name) = rest.strip_suffix("\" does not exist")
    {
        return QueryError::UndefinedTable(name.to_string());
    }
    // "Invalid function 'x'." / "table function 'x' not found"
    if msg.starts_with("Invalid function")
        || (msg.starts_with("table function '") && msg.ends_with("not found"))
    {
        let first = msg.lines().next().unwrap_or(msg);
        return QueryError::UndefinedFunction(first.to_string());
    }
    // A correlated subquery that may find several rows: PostgreSQL would fail at run time if
    // it did; DataFusion cannot plan it. Either way no answer, and the user can aggregate.
    if msg.starts_with("Correlated scalar subquery must be aggregated") {
        return QueryError::Unsupported(
            "a correlated subquery used as an expression must be aggregated, \
             e.g. (SELECT max(x) FROM t WHERE ...)"
                .to_string(),
        );
    }
    QueryError::Execution(msg.to_string())
}

pub fn df_err(e: DataFusionError) -> PgWireError {
    QueryError::from(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed reads name files and buckets: the client gets neither, only what happened.
    #[test]
    fn unreadable_data_names_no_file() {
        let gone = "External: Object at location lake-gtm/gtm/hcp/part-1.parquet not found";
        let errors = [
            DataFusionError::ArrowError(Box::new(ArrowError::ParquetError(gone.into())), None),
            DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
                path: "lake-gtm/gtm/hcp/part-1.parquet".into(),
                source: "gone".into(),
            })),
            DataFusionError::Context(
                "reading".into(),
                Box::new(DataFusionError::IoError(std::io::Error::other(
                    "/data/gtm/hcp/part-1.parquet: Input/output error",
                ))),
            ),
        ];
        for error in errors {
            let mapped = QueryError::from(error);
            assert_eq!(mapped.sqlstate(), "58030");
            let shown = mapped.to_string();
            assert!(
                !shown.contains("part-1") && !shown.contains("lake-gtm"),
                "{shown}"
            );
        }
        // errors in the data itself are still the user's to see
        let data = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'x' to Int64".into(),
            )),
            None,
        );
        assert_eq!(QueryError::from(data).sqlstate(), "22000");
    }
}
