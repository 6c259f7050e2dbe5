//! `lakegate catalog register`: registers a Parquet prefix in S3 as a Glue table, the way an
//! ingestion job does after writing a day's files. The schema is read from the files; each
//! `key=value` folder under the prefix becomes a partition. Running it again adds only the
//! partitions Glue does not have yet, so a daily job can call it after every load.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{
    Column as GlueColumn, PartitionInput, SerDeInfo, StorageDescriptor, TableInput,
};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use lakegate_catalog::arrow_to_glue_type;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;

use crate::aws::{Aws, bucket_of, own_store};

const PARQUET_INPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const PARQUET_OUTPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";

/// What to register.
#[derive(Debug)]
pub struct Registration {
    pub database: String,
    pub table: String,
    /// `s3://bucket/prefix/`
    pub location: String,
    /// The partition key of the `key=value` folders (e.g. `sale_date`), if the data is partitioned.
    pub partition_key: Option<String>,
    pub description: Option<String>,
    /// Table parameters (business metadata: owner, steward, classification, tags).
    pub parameters: BTreeMap<String, String>,
}

/// What registering did.
#[derive(Debug, PartialEq, Eq)]
pub struct Registered {
    pub created: bool,
    pub columns: usize,
    pub partitions_added: usize,
    pub partitions_present: usize,
}

pub async fn register(aws: &Aws, what: &Registration) -> Result<Registered, String> {
    let location = format!("{}/", what.location.trim_end_matches('/'));
    let bucket = bucket_of(&location)
        .ok_or_else(|| format!("{location}: the location must be s3://bucket/prefix/"))?
        .to_string();
    let store = Arc::new(own_store(aws, &bucket)?);
    let prefix = location
        .trim_start_matches("s3://")
        .trim_start_matches(&bucket)
        .trim_matches('/')
        .to_string();

    let partitions = match &what.partition_key {
        Some(key) => partition_values(store.as_ref(), &prefix, key).await?,
        None => BTreeSet::new(),
    };
    let columns = file_columns(store.clone(), &bucket, &location, what).await?;
    // Daily partitions are typed as dates, anything else as strings.
    let key_type = if !partitions.is_empty() && partitions.iter().all(|v| is_date(v)) {
        "date"
    } else {
        "string"
    };

    let glue = aws_sdk_glue::Client::new(&aws.sdk);
    let storage = |location: &str| {
        StorageDescriptor::builder()
            .set_columns(Some(columns.clone()))
            .location(location)
            .input_format(PARQUET_INPUT)
            .output_format(PARQUET_OUTPUT)
            .serde_info(
                SerDeInfo::builder()
                    .serialization_library(PARQUET_SERDE)
                    .build(),
            )
            .build()
    };
    let exists = match glue
        .get_table()
        .database_name(&what.database)
        .name(&what.table)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_entity_not_found_exception()) =>
        {
            false
        }
        Err(e) => return Err(format!("glue:GetTable: {}", DisplayErrorContext(&e))),
    };
    if !exists {
        let mut input = TableInput::builder()
            .name(&what.table)
            .table_type("EXTERNAL_TABLE")
            .set_description(what.description.clone())
            .set_parameters(Some(what.parameters.clone().into_iter().collect()))
            .storage_descriptor(storage(&location));
        if let Some(key) = &what.partition_key {
            input = input.partition_keys(
                GlueColumn::builder()
                    .name(key)
                    .r#type(key_type)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let input = input.build().map_err(|e| e.to_string())?;
        glue.create_table()
            .database_name(&what.database)
            .table_input(input)
            .send()
            .await
            .map_err(|e| format!("glue:CreateTable: {}", DisplayErrorContext(&e)))?;
    }

    let mut present = BTreeSet::new();
    if what.partition_key.is_some() && exists {
        let mut pages = glue
            .get_partitions()
            .database_name(&what.database)
            .table_name(&what.table)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| format!("glue:GetPartitions: {}", DisplayErrorContext(&e)))?;
            for partition in page.partitions() {
                if let [value] = partition.values() {
                    present.insert(value.clone());
                }
            }
        }
    }
    let key = what.partition_key.clone().unwrap_or_default();
    let missing: Vec<PartitionInput> = partitions
        .iter()
        .filter(|v| !present.contains(*v))
        .map(|value| {
            PartitionInput::builder()
                .values(value)
                .storage_descriptor(storage(&format!("{location}{key}={value}/")))
                .build()
        })
        .collect();
    let mut added = 0;
    // Glue takes at most 100 partitions per call; one that appeared meanwhile (another
    // job) is not an error.
    for chunk in missing.chunks(100) {
        let out = glue
            .batch_create_partition()
            .database_name(&what.database)
            .table_name(&what.table)
            .set_partition_input_list(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| format!("glue:BatchCreatePartition: {}", DisplayErrorContext(&e)))?;
        let mut failed = 0;
        for error in out.errors() {
            let code = error
                .error_detail()
                .and_then(|d| d.error_code())
                .unwrap_or_default();
            if code != "AlreadyExistsException" {
                return Err(format!(
                    "glue:BatchCreatePartition refused {:?}: {code}",
                    error.partition_values()
                ));
            }
            failed += 1;
        }
        added += chunk.len() - failed;
    }
    Ok(Registered {
        created: !exists,
        columns: columns.len(),
        partitions_added: added,
        partitions_present: partitions.len() - added,
    })
}

/// The values of the `key=value` folders right under `prefix`.
async fn partition_values(
    store: &dyn ObjectStore,
    prefix: &str,
    key: &str,
) -> Result<BTreeSet<String>, String> {
    let listing = store
        .list_with_delimiter(Some(&StorePath::from(prefix)))
        .await
        .map_err(|e| format!("listing s3 prefix {prefix}: {e}"))?;
    let mut values = BTreeSet::new();
    for folder in listing.common_prefixes {
        let Some(name) = folder.filename() else {
            continue;
        };
        match name.split_once('=') {
            Some((k, v)) if k == key && !v.is_empty() => {
                values.insert(v.to_string());
            }
            _ => {
                return Err(format!(
                    "folder {name} under the location is not a {key}=value partition"
                ));
            }
        }
    }
    Ok(values)
}

/// The data columns of the Parquet files under the location, as Glue columns.
async fn file_columns(
    store: Arc<object_store::aws::AmazonS3>,
    bucket: &str,
    location: &str,
    what: &Registration,
) -> Result<Vec<GlueColumn>, String> {
    let context = SessionContext::new();
    let url = ObjectStoreUrl::parse(format!("s3://{bucket}")).map_err(|e| e.to_string())?;
    context.register_object_store(url.as_ref(), store);
    inferred_columns(&context, location, what.partition_key.as_deref())
        .await?
        .into_iter()
        .map(|(name, glue_type)| {
            GlueColumn::builder()
                .name(name)
                .r#type(glue_type)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The data columns (name, Glue type) of the Parquet files under `location`, read through the
/// stores of `context`; the partition key's folders are not a file column.
async fn inferred_columns(
    context: &SessionContext,
    location: &str,
    partition_key: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    let mut options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    if let Some(key) = partition_key {
        options = options.with_table_partition_cols(vec![(
            key.to_string(),
            datafusion::arrow::datatypes::DataType::Utf8,
        )]);
    }
    let table_url = ListingTableUrl::parse(location).map_err(|e| e.to_string())?;
    let schema = options
        .infer_schema(&context.state(), &table_url)
        .await
        .map_err(|e| {
            if e.to_string().contains("No files found") {
                format!("no .parquet files under {location}")
            } else {
                format!("reading the schema of {location}: {e}")
            }
        })?;
    if schema.fields().is_empty() {
        return Err(format!("no .parquet files under {location}"));
    }
    schema
        .fields()
        .iter()
        .filter(|f| partition_key != Some(f.name().as_str()))
        .map(|field| {
            let glue_type = arrow_to_glue_type(field.data_type()).ok_or_else(|| {
                format!(
                    "column {} has type {}, which Lakegate does not serve",
                    field.name(),
                    field.data_type()
                )
            })?;
            Ok((field.name().clone(), glue_type))
        })
        .collect()
}

/// Registers a local folder of Parquet files as a table of a database in the catalog file.
/// Partitions of local tables are found by listing their folders at query time, so there is
/// nothing to add for them: an existing table is kept as it is, and a new one is written into
/// the file (the rest of the file, comments included, stays as it was).
pub async fn register_local(
    catalog_file: &Path,
    what: &Registration,
) -> Result<Registered, String> {
    let catalog = lakegate_catalog::LocalCatalog::load(catalog_file).map_err(|e| e.to_string())?;
    if what.location.contains("://") {
        return Err(format!(
            "{}: a table of the catalog file is registered from a local folder; register S3 prefixes in Glue",
            what.location
        ));
    }
    let base = catalog_file.parent().unwrap_or(Path::new("."));
    let folder = base.join(&what.location);
    let folder = folder
        .canonicalize()
        .map_err(|e| format!("{}: {e}", folder.display()))?;
    let mut partitions = BTreeSet::new();
    if let Some(key) = &what.partition_key {
        for entry in std::fs::read_dir(&folder).map_err(|e| format!("{}: {e}", folder.display()))? {
            let name = entry.map_err(|e| e.to_string())?.file_name();
            let name = name.to_string_lossy();
            match name.split_once('=') {
                Some((k, v)) if k == key && !v.is_empty() => {
                    partitions.insert(v.to_string());
                }
                _ if name.starts_with('.') || name.starts_with('_') => {}
                _ => {
                    return Err(format!(
                        "{name} under the location is not a {key}=value partition folder"
                    ));
                }
            }
        }
    }
    let Some(database) = catalog.catalog().database(&what.database) else {
        return Err(format!(
            "database {} is not in the catalog file {}",
            what.database,
            catalog_file.display()
        ));
    };
    if let Some(table) = database.table(&what.table) {
        return Ok(Registered {
            created: false,
            columns: table.columns.len(),
            partitions_added: 0,
            partitions_present: partitions.len(),
        });
    }
    let url = format!("{}/", folder.display());
    let columns =
        inferred_columns(&SessionContext::new(), &url, what.partition_key.as_deref()).await?;
    let key_type = if !partitions.is_empty() && partitions.iter().all(|v| is_date(v)) {
        "date"
    } else {
        "string"
    };
    let text = std::fs::read_to_string(catalog_file).map_err(|e| e.to_string())?;
    let entry = table_yaml(what, &columns, key_type);
    let updated = insert_table(&text, &what.database, &entry)?;
    // Written only if the result loads and holds the table, through a temporary file.
    let temporary = catalog_file.with_extension("yaml.lakegate-new");
    std::fs::write(&temporary, &updated).map_err(|e| e.to_string())?;
    let check = lakegate_catalog::LocalCatalog::load(&temporary);
    let holds = check.as_ref().is_ok_and(|c| {
        c.catalog()
            .database(&what.database)
            .and_then(|d| d.table(&what.table))
            .is_some()
    });
    if !holds {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!(
            "could not add the table to {} without breaking it: add it by hand",
            catalog_file.display()
        ));
    }
    std::fs::rename(&temporary, catalog_file).map_err(|e| e.to_string())?;
    Ok(Registered {
        created: true,
        columns: columns.len(),
        partitions_added: 0,
        partitions_present: partitions.len(),
    })
}

/// A table entry of the catalog file (YAML flow style; names and texts quoted as JSON, which
/// YAML reads as it is).
fn table_yaml(what: &Registration, columns: &[(String, String)], key_type: &str) -> Vec<String> {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
    let mut lines = vec![format!("- name: {}", q(&what.table))];
    if let Some(description) = &what.description {
        lines.push(format!("  description: {}", q(description)));
    }
    lines.push(format!("  location: {}", q(&what.location)));
    lines.push("  columns:".into());
    for (name, glue_type) in columns {
        lines.push(format!(
            "    - {{ name: {}, type: {} }}",
            q(name),
            q(glue_type)
        ));
    }
    if let Some(key) = &what.partition_key {
        lines.push("  partition_keys:".into());
        lines.push(format!("    - {{ name: {}, type: {key_type} }}", q(key)));
    }
    if !what.parameters.is_empty() {
        lines.push("  parameters:".into());
        for (k, v) in &what.parameters {
            lines.push(format!("    {}: {}", q(k), q(v)));
        }
    }
    lines
}

/// `text` (a catalog file) with `entry` appended to the tables of `database`. The database is
/// the `- name: DATABASE` item of the least indentation; its tables list ends where a line of
/// no more indentation than the item starts.
fn insert_table(text: &str, database: &str, entry: &[String]) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let names = |l: &str| l.trim_start().starts_with("- name:");
    let top = lines
        .iter()
        .filter(|l| names(l))
        .map(|l| indent(l))
        .min()
        .ok_or("the catalog file lists no databases")?;
    let is_database = |l: &str| {
        indent(l) == top
            && l.trim_start()
                .strip_prefix("- name:")
                .map(|n| n.trim().trim_matches(['"', '\'']))
                == Some(database)
    };
    let start = lines
        .iter()
        .position(|l| is_database(l))
        .ok_or_else(|| format!("database {database} not found in the catalog file"))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) <= top)
        .map_or(lines.len(), |i| start + 1 + i);
    let tables = (start + 1..end)
        .find(|&i| lines[i].trim_start().starts_with("tables:"))
        .ok_or_else(|| format!("database {database} has no `tables:` list in the catalog file"))?;
    if lines[tables].trim() == "tables: []" {
        // a database with no tables yet: its first table starts the block list
        let pad = " ".repeat(indent(lines[tables]));
        let mut out: Vec<String> = lines[..tables].iter().map(|l| l.to_string()).collect();
        out.push(format!("{pad}tables:"));
        out.extend(entry.iter().map(|l| format!("{pad}  {l}")));
        out.extend(lines[tables + 1..].iter().map(|l| l.to_string()));
        return Ok(out.join("\n") + "\n");
    }
    if lines[tables].trim() != "tables:" {
        return Err(format!(
            "database {database}'s tables are not a block list in the catalog file"
        ));
    }
    let item_indent = (tables + 1..end)
        .find(|&i| names(lines[i]))
        .map_or(indent(lines[tables]) + 2, |i| indent(lines[i]));
    // after the last line of the database's block that is neither empty nor a comment (a
    // comment there usually heads what follows)
    let mut at = end;
    while at > tables + 1
        && (lines[at - 1].trim().is_empty() || lines[at - 1].trim_start().starts_with('#'))
    {
        at -= 1;
    }
    let pad = " ".repeat(item_indent);
    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
    out.extend(entry.iter().map(|l| format!("{pad}{l}")));
    out.extend(lines[at..].iter().map(|l| l.to_string()));
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

fn is_date(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    matches!(parts.as_slice(), [y, m, d]
        if y.len() == 4 && m.len() == 2 && d.len() == 2
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_database_gets_its_first_table() {
        let text = "databases:\n  - name: tpch\n    tables: []\n  - name: other\n    tables: []\n";
        let entry = vec!["- name: \"c\"".to_string(), "  columns: []".to_string()];
        let out = insert_table(text, "tpch", &entry).expect("inserted");
        assert_eq!(
            out,
            "databases:\n  - name: tpch\n    tables:\n      - name: \"c\"\n        columns: []\n  - name: other\n    tables: []\n"
        );
        let next = insert_table(&out, "tpch", &entry).expect("second");
        assert_eq!(next.matches("- name: \"c\"").count(), 2);
    }

    #[test]
    fn new_tables_go_to_the_end_of_their_database() {
        let text = "# catalog\ndatabases:\n  - name: gtm\n    tables:\n      - name: a\n        columns: []\n\n  # next\n  - name: demo\n    tables:\n      - name: b\n        columns: []\n";
        let entry = vec!["- name: \"c\"".to_string(), "  columns: []".to_string()];
        let out = insert_table(text, "gtm", &entry).expect("inserted");
        assert_eq!(
            out,
            "# catalog\ndatabases:\n  - name: gtm\n    tables:\n      - name: a\n        columns: []\n      - name: \"c\"\n        columns: []\n\n  # next\n  - name: demo\n    tables:\n      - name: b\n        columns: []\n"
        );
        let last = insert_table(text, "demo", &entry).expect("inserted");
        assert!(
            last.ends_with(
                "      - name: b\n        columns: []\n      - name: \"c\"\n        columns: []\n"
            ),
            "{last}"
        );
        assert!(insert_table(text, "nope", &entry).is_err());
    }

    #[test]
    fn daily_partition_values_are_dates() {
        assert!(is_date("2026-01-02"));
        assert!(!is_date("2026-1-2"));
        assert!(!is_date("DE"));
    }
}
