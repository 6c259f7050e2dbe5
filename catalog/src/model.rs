use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole catalog: Glue's databases, each with its tables.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub databases: Vec<Database>,
}

/// A Glue database. Lakegate shows it to PostgreSQL clients as a schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub tables: Vec<Table>,
}

/// A Glue table: where its files are, their format, its columns and partition keys, and its
/// parameters (business metadata: owner, steward, classification, description, tags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Where the data files are: an S3 prefix (`s3://bucket/prefix/`) or a local folder
    /// (relative paths are resolved against the catalog file's folder). Empty for a view.
    #[serde(default)]
    pub location: String,
    /// For a view (Glue's VIRTUAL_VIEW): the SQL of its body, over other catalog tables. Views
    /// run with the rights of the user who queries them.
    #[serde(default)]
    pub view_sql: Option<String>,
    #[serde(default)]
    pub format: TableFormat,
    /// How CSV files are laid out (CSV tables only).
    #[serde(default)]
    pub csv: CsvLayout,
    pub columns: Vec<Column>,
    /// Hive-style partition keys (`key=value` folders), in folder order.
    #[serde(default)]
    pub partition_keys: Vec<Column>,
    /// Which files under the location hold data. Default `extension`: those ending in the
    /// format's extension (`.parquet`, `.csv`, `.json`).
    #[serde(default)]
    pub file_names: FileNames,
    /// Read from the Glue Data Catalog (not the catalog file): its partitions come from Glue.
    #[serde(skip)]
    pub from_glue: bool,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// Which files of a table's location are its data.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileNames {
    /// Files ending in the format's extension.
    #[default]
    Extension,
    /// Every file whose name does not start with `_` or `.` (Hive's and Athena's rule: they
    /// write data files without extensions, and markers such as `_SUCCESS`).
    Any,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    #[default]
    Parquet,
    Csv,
    /// Newline-delimited JSON objects.
    Json,
}

/// A CSV table's layout: Glue keeps it as the SerDe's `field.delim` and the table's
/// `skip.header.line.count`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CsvLayout {
    /// Whether the first line of each file names the columns. Default `true`.
    #[serde(default = "yes")]
    pub header: bool,
    /// Field delimiter. Default `,`.
    #[serde(default = "comma")]
    pub delimiter: char,
}

impl Default for CsvLayout {
    fn default() -> Self {
        CsvLayout {
            header: true,
            delimiter: ',',
        }
    }
}

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}

/// A column, with a Glue/Hive type name (`string`, `bigint`, `decimal(12,2)`, `date`, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default)]
    pub comment: Option<String>,
    /// Column parameters; policy reads them as the column's tags (e.g. `classification: pii`).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl Catalog {
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }
}

impl Database {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

impl Table {
    pub fn is_view(&self) -> bool {
        self.view_sql.is_some()
    }

    /// Data columns followed by partition keys: the order clients see.
    pub fn all_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().chain(self.partition_keys.iter())
    }

    /// The table's description: its own field, else the `description` parameter, as Glue keeps it.
    pub fn description(&self) -> Option<&str> {
        self.description
            .as_deref()
            .or_else(|| self.parameters.get("description").map(String::as_str))
    }
}
