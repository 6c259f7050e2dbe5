//! The AWS Glue Data Catalog as a source of Lakegate's catalog model: databases, tables with
//! their S3 location, format, commented columns, partition keys and parameters (business
//! metadata). Read with paginated calls; what Lakegate cannot serve is left out and said why.
use std::collections::{BTreeMap, HashMap};

use aws_sdk_glue::Client;
use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{Column as GlueColumn, Table as GlueTable};

use crate::error::CatalogError;
use crate::model::{Column, CsvLayout, Database, Table, TableFormat};
use crate::types::glue_type_to_arrow;

/// Glue databases read into the model, and the tables left out (with why).
#[derive(Debug, Default)]
pub struct GlueLoad {
    pub databases: Vec<Database>,
    pub skipped: Vec<String>,
}

/// Reads `databases` (all of them must exist) from the Glue catalog `catalog_id` (default: the
/// caller's account).
pub async fn load_glue(
    client: &Client,
    catalog_id: Option<&str>,
    databases: &[String],
) -> Result<GlueLoad, CatalogError> {
    let mut load = GlueLoad::default();
    for name in databases {
        let glue_error = |e: String| CatalogError::Glue {
            database: name.clone(),
            message: e,
        };
        let database = client
            .get_database()
            .set_catalog_id(catalog_id.map(str::to_string))
            .name(name)
            .send()
            .await
            .map_err(|e| glue_error(DisplayErrorContext(&e).to_string()))?;
        let database = database
            .database()
            .ok_or_else(|| glue_error("GetDatabase answered without a database".into()))?;
        let mut tables = Vec::new();
        let mut pages = client
            .get_tables()
            .set_catalog_id(catalog_id.map(str::to_string))
            .database_name(name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| glue_error(DisplayErrorContext(&e).to_string()))?;
            for table in page.table_list() {
                match table_of(table) {
                    Ok(table) => tables.push(table),
                    Err(why) => {
                        tracing::debug!(database = %name, table = %table.name(), %why,
                            "Glue table left out");
                        load.skipped.push(format!("{name}.{}: {why}", table.name()));
                    }
                }
            }
        }
        load.databases.push(Database {
            name: name.clone(),
            description: database.description().map(str::to_string),
            parameters: sorted(database.parameters()),
            tables,
        });
    }
    Ok(load)
}

fn sorted(map: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// One Glue table in Lakegate's model, or why it cannot be served.
fn table_of(table: &GlueTable) -> Result<Table, String> {
    if table.table_type() == Some("VIRTUAL_VIEW") {
        return Err("Glue views (Presto/Athena encoded) are not served yet".into());
    }
    let storage = table.storage_descriptor().ok_or("no storage descriptor")?;
    let location = storage.location().ok_or("no location")?;
    if !location.starts_with("s3://") {
        return Err(format!("location {location} is not in S3"));
    }
    let parameters = sorted(table.parameters());
    let serde = storage.serde_info();
    let library = serde
        .and_then(|s| s.serialization_library())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let input = storage
        .input_format()
        .unwrap_or_default()
        .to_ascii_lowercase();
    // The SerDe and input format say what the files are; crawlers also set the table
    // parameter `classification` to the format (which Lakegate otherwise reads as data
    // sensitivity), so it is only a fallback.
    let format = if library.contains("parquet") || input.contains("parquet") {
        TableFormat::Parquet
    } else if library.contains("json") {
        TableFormat::Json
    } else if library.contains("lazysimpleserde") || library.contains("opencsvserde") {
        TableFormat::Csv
    } else {
        match parameters.get("classification").map(String::as_str) {
            Some("parquet") => TableFormat::Parquet,
            Some("csv") => TableFormat::Csv,
            Some("json") => TableFormat::Json,
            _ => {
                return Err(format!(
                    "unsupported storage (SerDe {library:?}, input {input:?})"
                ));
            }
        }
    };
    let serde_parameters = sorted(serde.and_then(|s| s.parameters()));
    let delimiter = serde_parameters
        .get("field.delim")
        .or_else(|| serde_parameters.get("separatorChar"))
        .and_then(|d| d.chars().next())
        .unwrap_or(',');
    let csv = CsvLayout {
        header: parameters
            .get("skip.header.line.count")
            .is_some_and(|n| n.trim() == "1"),
        delimiter,
    };
    let columns = storage
        .columns()
        .iter()
        .map(column_of)
        .collect::<Result<Vec<_>, _>>()?;
    let partition_keys = table
        .partition_keys()
        .iter()
        .map(column_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Table {
        name: table.name().to_string(),
        description: table.description().map(str::to_string),
        location: location.to_string(),
        view_sql: None,
        format,
        csv,
        columns,
        partition_keys,
        parameters,
    })
}

fn column_of(column: &GlueColumn) -> Result<Column, String> {
    let data_type = column.r#type().unwrap_or_default().to_string();
    if glue_type_to_arrow(&data_type).is_none() {
        return Err(format!(
            "column {} has type {data_type:?}, which Lakegate does not serve yet",
            column.name()
        ));
    }
    Ok(Column {
        name: column.name().to_string(),
        data_type,
        comment: column.comment().map(str::to_string),
        parameters: sorted(column.parameters()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_glue::types::{SerDeInfo, StorageDescriptor};

    fn glue_table(library: &str, columns: &[(&str, &str)]) -> GlueTable {
        let storage = StorageDescriptor::builder()
            .location("s3://lake/gtm/t/")
            .serde_info(
                SerDeInfo::builder()
                    .serialization_library(library)
                    .parameters("field.delim", ";")
                    .build(),
            )
            .set_columns(Some(
                columns
                    .iter()
                    .map(|(n, t)| GlueColumn::builder().name(*n).r#type(*t).build())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("columns"),
            ))
            .build();
        GlueTable::builder()
            .name("t")
            .storage_descriptor(storage)
            .parameters("skip.header.line.count", "1")
            .build()
            .expect("table")
    }

    #[test]
    fn formats_come_from_the_serde() {
        let csv = table_of(&glue_table(
            "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
            &[("a", "int")],
        ))
        .expect("csv table");
        assert_eq!(csv.format, TableFormat::Csv);
        assert_eq!(
            csv.csv,
            CsvLayout {
                header: true,
                delimiter: ';'
            }
        );
        let json = table_of(&glue_table(
            "org.openx.data.jsonserde.JsonSerDe",
            &[("a", "int")],
        ))
        .expect("json");
        assert_eq!(json.format, TableFormat::Json);
    }

    #[test]
    fn tables_lakegate_cannot_serve_say_why() {
        let why = table_of(&glue_table(
            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
            &[("m", "map<string,int>")],
        ))
        .expect_err("map column");
        assert!(why.contains("map<string,int>"), "{why}");
        let why = table_of(&glue_table("com.example.UnknownSerDe", &[("a", "int")]))
            .expect_err("unknown serde");
        assert!(why.contains("unsupported storage"), "{why}");
    }
}
