//! The AWS Glue Data Catalog as a source of Lakegate's catalog model: databases, tables with
//! their S3 location, format, commented columns, partition keys and parameters (business
//! metadata). Read with paginated calls; what Lakegate cannot serve is left out and said why.
use std::collections::{BTreeMap, HashMap};

use aws_sdk_glue::Client;
use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{Column as GlueColumn, Table as GlueTable};

use crate::error::CatalogError;
use crate::model::{Column, CsvLayout, Database, FileNames, Table, TableFormat};
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
                let served = table_of(name, table);
                match served {
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
fn table_of(database: &str, table: &GlueTable) -> Result<Table, String> {
    if table.table_type() == Some("VIRTUAL_VIEW") {
        return view_of(database, table);
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
        // Athena, Hive and Spark name data files without (or with other) extensions.
        file_names: FileNames::Any,
        from_glue: true,
        parameters,
    })
}

/// What Athena (Presto, Trino) keeps of a view it created, base64 JSON in the view's text.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrestoView {
    original_sql: String,
    #[serde(default)]
    catalog: Option<String>,
    #[serde(default)]
    schema: Option<String>,
}

/// A Glue view as a catalog view: its SQL, with the table names it leaves to its own catalog
/// and schema written out, so it plans the same in any user's session (with that user's
/// rights, like every catalog view). Athena's views keep their SQL as
/// `/* Presto View: BASE64(JSON) */`; Hive and Spark views as plain SQL.
fn view_of(database: &str, table: &GlueTable) -> Result<Table, String> {
    use base64::Engine;
    let text = table
        .view_original_text()
        .ok_or("a view without its SQL")?
        .trim();
    let (sql, catalog, schema) = match text
        .strip_prefix("/* Presto View:")
        .and_then(|rest| rest.strip_suffix("*/"))
    {
        Some(encoded) => {
            let json = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| format!("Presto view text is not base64: {e}"))?;
            let view: PrestoView = serde_json::from_slice(&json)
                .map_err(|e| format!("Presto view text is not a view's JSON: {e}"))?;
            (view.original_sql, view.catalog, view.schema)
        }
        None => (text.to_string(), None, None),
    };
    let schema = schema.unwrap_or_else(|| database.to_string());
    let sql = qualified_view_sql(&sql, catalog.as_deref(), &schema)?;
    let columns = table
        .storage_descriptor()
        .map(|s| s.columns())
        .unwrap_or_default()
        .iter()
        .map(column_of)
        .collect::<Result<Vec<_>, _>>()?;
    if columns.is_empty() {
        return Err("a view without columns".into());
    }
    Ok(Table {
        name: table.name().to_string(),
        description: table.description().map(str::to_string),
        location: String::new(),
        view_sql: Some(sql),
        format: TableFormat::default(),
        csv: CsvLayout::default(),
        columns,
        partition_keys: vec![],
        file_names: FileNames::default(),
        from_glue: true,
        parameters: sorted(table.parameters())
            .into_iter()
            // Athena's own markers, not business metadata
            .filter(|(k, _)| k != "presto_view" && k != "comment")
            .collect(),
    })
}

/// `sql` with one-part table names qualified with `schema` (CTE names excepted) and the view's
/// own catalog dropped from three-part names: the gateway serves one catalog.
fn qualified_view_sql(sql: &str, catalog: Option<&str>, schema: &str) -> Result<String, String> {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{Ident, ObjectNamePart, visit_relations_mut};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| format!("the view's SQL does not parse: {e}"))?;
    let [statement] = statements.as_mut_slice() else {
        return Err("the view's SQL is not one statement".into());
    };
    let ctes: Vec<String> = match statement {
        datafusion::sql::sqlparser::ast::Statement::Query(q) => q
            .with
            .iter()
            .flat_map(|w| {
                w.cte_tables
                    .iter()
                    .map(|c| c.alias.name.value.to_lowercase())
            })
            .collect(),
        _ => return Err("the view's SQL is not a query".into()),
    };
    let _ = visit_relations_mut(statement, |name| {
        let parts = &mut name.0;
        let first = parts
            .first()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_lowercase());
        match parts.len() {
            1 if first.as_ref().is_some_and(|f| !ctes.contains(f)) => {
                parts.insert(0, ObjectNamePart::Identifier(Ident::new(schema)));
            }
            3 if first.is_some()
                && first.as_deref() == catalog.map(str::to_lowercase).as_deref() =>
            {
                parts.remove(0);
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(statement.to_string())
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
        let csv = table_of(
            "gtm",
            &glue_table(
                "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
                &[("a", "int")],
            ),
        )
        .expect("csv table");
        assert_eq!(csv.format, TableFormat::Csv);
        assert_eq!(
            csv.csv,
            CsvLayout {
                header: true,
                delimiter: ';'
            }
        );
        let json = table_of(
            "gtm",
            &glue_table("org.openx.data.jsonserde.JsonSerDe", &[("a", "int")]),
        )
        .expect("json");
        assert_eq!(json.format, TableFormat::Json);
    }

    #[test]
    fn tables_lakegate_cannot_serve_say_why() {
        let why = table_of(
            "gtm",
            &glue_table(
                "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                &[("m", "map<string,int>")],
            ),
        )
        .expect_err("map column");
        assert!(why.contains("map<string,int>"), "{why}");
        let why = table_of(
            "gtm",
            &glue_table("com.example.UnknownSerDe", &[("a", "int")]),
        )
        .expect_err("unknown serde");
        assert!(why.contains("unsupported storage"), "{why}");
    }

    fn presto_view(sql: &str) -> GlueTable {
        use base64::Engine;
        let json = serde_json::json!({
            "originalSql": sql,
            "catalog": "awsdatacatalog",
            "schema": "gtm",
            "columns": [{ "name": "country", "type": "varchar" }],
        });
        let encoded = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        GlueTable::builder()
            .name("v")
            .table_type("VIRTUAL_VIEW")
            .view_original_text(format!("/* Presto View: {encoded} */"))
            .view_expanded_text("/* Presto View */")
            .parameters("presto_view", "true")
            .storage_descriptor(
                StorageDescriptor::builder()
                    .columns(
                        GlueColumn::builder()
                            .name("country")
                            .r#type("string")
                            .build()
                            .expect("column"),
                    )
                    .build(),
            )
            .build()
            .expect("view")
    }

    #[test]
    fn athena_views_are_decoded_and_their_names_qualified() {
        let view = table_of(
            "other",
            &presto_view(
                "WITH eu AS (SELECT * FROM sales WHERE country <> 'US') \
                 SELECT country FROM eu JOIN awsdatacatalog.gtm.hcp USING (country)",
            ),
        )
        .expect("view");
        assert_eq!(
            view.view_sql.as_deref(),
            Some(
                "WITH eu AS (SELECT * FROM gtm.sales WHERE country <> 'US') \
                 SELECT country FROM eu JOIN gtm.hcp USING(country)"
            )
        );
        assert!(view.is_view());
        assert_eq!(view.columns.len(), 1);
        assert!(view.parameters.is_empty(), "{:?}", view.parameters);

        let mut broken = presto_view("x");
        broken.view_original_text = Some("/* Presto View: not base64! */".into());
        let why = table_of("gtm", &broken).expect_err("bad encoding");
        assert!(why.contains("base64"), "{why}");
    }
}
