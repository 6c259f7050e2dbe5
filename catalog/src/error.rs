use std::path::PathBuf;

/// Errors of the catalog layer. They happen at start-up (a bad catalog file) or when a table's
/// files cannot be read; none carries data or credentials.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("catalog table {database}.{table}: {message}")]
    Invalid {
        database: String,
        table: String,
        message: String,
    },
    #[error("catalog table {database}.{table}: {source}")]
    Provider {
        database: String,
        table: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("Glue database {database}: {message}")]
    Glue { database: String, message: String },
    #[error("database {0} is in both the local catalog and Glue")]
    Duplicate(String),
}
