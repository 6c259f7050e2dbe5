//! `lakegate catalog register`: registers a Parquet prefix in S3 as a Glue table, the way an
//! ingestion job does after writing a day's files. The schema is read from the files; each
//! `key=value` folder under the prefix becomes a partition. Running it again adds only the
//! partitions Glue does not have yet, so a daily job can call it after every load.
use std::collections::{BTreeMap, BTreeSet};
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
    let mut options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    if let Some(key) = &what.partition_key {
        options = options.with_table_partition_cols(vec![(
            key.clone(),
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
        .filter(|f| what.partition_key.as_deref() != Some(f.name().as_str()))
        .map(|field| {
            let glue_type = arrow_to_glue_type(field.data_type()).ok_or_else(|| {
                format!(
                    "column {} has type {}, which Lakegate does not serve",
                    field.name(),
                    field.data_type()
                )
            })?;
            GlueColumn::builder()
                .name(field.name())
                .r#type(glue_type)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
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
    fn daily_partition_values_are_dates() {
        assert!(is_date("2026-01-02"));
        assert!(!is_date("2026-1-2"));
        assert!(!is_date("DE"));
    }
}
