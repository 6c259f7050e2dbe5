//! Lakegate's catalog: a model that mirrors the AWS Glue Data Catalog (database → tables with
//! location, format, columns, partition keys and parameters) and the providers that fill it.
//!
//! The local provider reads a YAML catalog file and serves its tables from Parquet/CSV files
//! with DataFusion's listing tables (small ones in local folders kept decoded in memory,
//! `small_tables.rs`); the Glue provider (`glue.rs`) fills the same model from the Glue Data
//! Catalog.

mod error;
mod glue;
mod glue_table;
mod local;
mod lookup;
mod model;
mod small_tables;
mod types;

pub use error::CatalogError;
pub use glue::{GlueLoad, load_glue};
pub use glue_table::{GlueRef, GlueTable, glue_expression};
pub use local::LocalCatalog;
pub use model::{Catalog, Column, CsvLayout, Database, FileNames, Table, TableFormat};
pub use small_tables::{DEFAULT_MEGABYTES as DEFAULT_SMALL_TABLE_MEGABYTES, SmallTables};
pub use types::{arrow_to_glue_type, glue_type_to_arrow};
