//! Lakegate's catalog: a model that mirrors the AWS Glue Data Catalog (database → tables with
//! location, format, columns, partition keys and parameters) and the providers that fill it.
//!
//! The local provider reads a YAML catalog file and serves its tables from Parquet/CSV files
//! with DataFusion's listing tables; a Glue provider will fill the same model later.

mod error;
mod local;
mod model;
mod types;

pub use error::CatalogError;
pub use local::LocalCatalog;
pub use model::{Catalog, Column, Database, Table, TableFormat};
pub use types::glue_type_to_arrow;
