//! A partitioned Glue table whose partitions come from Glue itself: `GetPartitions`, with an
//! expression made of the scan's partition filters (the row filter and the query's predicates
//! that may run beside it), names the partitions to read and where each is stored, Hive's
//! `key=value` layout or not. Only those locations are listed (with the user's store) and read.
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_glue::error::DisplayErrorContext;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue, project_schema};
use datafusion::datasource::listing::{ListingOptions, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchemaBuilder;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;

/// Where to find a table in the Glue Data Catalog.
#[derive(Debug, Clone)]
pub struct GlueRef {
    pub client: aws_sdk_glue::Client,
    pub catalog_id: Option<String>,
    pub database: String,
    pub table: String,
}

pub struct GlueTable {
    glue: GlueRef,
    /// `s3://bucket`, the store the user's session registers for the table's bucket.
    store: ObjectStoreUrl,
    options: ListingOptions,
    file_schema: SchemaRef,
    /// File columns, then the partition keys.
    schema: SchemaRef,
    keys: Vec<(String, DataType)>,
}

impl fmt::Debug for GlueTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GlueTable({}.{})", self.glue.database, self.glue.table)
    }
}

impl GlueTable {
    pub fn new(
        glue: GlueRef,
        bucket: &str,
        options: ListingOptions,
        file_schema: SchemaRef,
    ) -> Result<GlueTable> {
        let keys = options.table_partition_cols.clone();
        let mut fields: Vec<Field> = file_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            keys.iter()
                .map(|(name, t)| Field::new(name, t.clone(), false)),
        );
        Ok(GlueTable {
            glue,
            store: ObjectStoreUrl::parse(format!("s3://{bucket}"))?,
            options,
            file_schema,
            schema: Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
            keys,
        })
    }

    /// The partitions `expression` selects (all without one): their values and locations.
    async fn partitions(
        &self,
        expression: Option<String>,
    ) -> Result<Vec<(Vec<ScalarValue>, String)>> {
        let mut pages = self
            .glue
            .client
            .get_partitions()
            .set_catalog_id(self.glue.catalog_id.clone())
            .database_name(&self.glue.database)
            .table_name(&self.glue.table)
            .set_expression(expression)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                tracing::warn!(table = %self.glue.table, error = %DisplayErrorContext(&e), "glue:GetPartitions failed");
                DataFusionError::Execution(format!(
                    "the catalog did not answer for the partitions of {}.{}",
                    self.glue.database, self.glue.table
                ))
            })?;
            for partition in page.partitions() {
                let Some(location) = partition.storage_descriptor().and_then(|s| s.location())
                else {
                    continue;
                };
                let values = self
                    .keys
                    .iter()
                    .zip(partition.values())
                    .map(|((_, t), v)| ScalarValue::try_from_string(v.clone(), t))
                    .collect::<Result<Vec<_>>>()?;
                if values.len() == self.keys.len() {
                    found.push((values, location.to_string()));
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl TableProvider for GlueTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Inexact: Glue narrows the partitions; the filters still run on the rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|_| TableProviderFilterPushDown::Inexact)
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        let expression = glue_expression(filters, &names);
        tracing::debug!(table = %self.glue.table, expression = expression.as_deref().unwrap_or(""), "glue partitions");
        let partitions = self.partitions(expression).await?;
        let store = state.runtime_env().object_store(&self.store)?;
        let extension = self.options.file_extension.clone();
        let mut files = Vec::new();
        for (values, location) in partitions {
            let Some(prefix) = location
                .strip_prefix(self.store.as_str())
                .map(|p| p.trim_matches('/').to_string())
            else {
                continue; // a partition in another bucket: not this table's store
            };
            let mut listing = store.list(Some(&StorePath::from(prefix)));
            while let Some(meta) = listing.try_next().await? {
                let name = meta.location.filename().unwrap_or_default();
                let data = !name.starts_with('_')
                    && !name.starts_with('.')
                    && (extension.is_empty() || name.ends_with(&extension));
                if data {
                    let mut file = PartitionedFile::from(meta);
                    file.partition_values = values.clone();
                    files.push(file);
                }
            }
        }
        if files.is_empty() {
            let projected = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let target = state.config().target_partitions().max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); target.min(files.len())];
        let count = groups.len();
        for (i, file) in files.into_iter().enumerate() {
            groups[i % count].push(file);
        }
        let table_schema = TableSchemaBuilder::new(self.file_schema.clone())
            .with_table_partition_cols(
                self.keys
                    .iter()
                    .map(|(n, t)| Arc::new(Field::new(n, t.clone(), false)))
                    .collect::<Vec<_>>(),
            )
            .build();
        let source = self.options.format.file_source(table_schema);
        let config = FileScanConfigBuilder::new(self.store.clone(), source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        self.options
            .format
            .create_physical_plan(state, config)
            .await
    }
}

/// The filters on partition keys alone, in Glue's expression language (a SQL WHERE subset over
/// partition values); what it cannot say is left to the filters above.
pub fn glue_expression(filters: &[Expr], keys: &[&str]) -> Option<String> {
    let parts: Vec<String> = filters
        .iter()
        .flat_map(datafusion::logical_expr::utils::split_conjunction)
        .filter_map(|e| glue_predicate(e, keys))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

fn glue_predicate(expr: &Expr, keys: &[&str]) -> Option<String> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let op = match op {
                Operator::And => {
                    return Some(format!(
                        "({} AND {})",
                        glue_predicate(left, keys)?,
                        glue_predicate(right, keys)?
                    ));
                }
                Operator::Or => {
                    return Some(format!(
                        "({} OR {})",
                        glue_predicate(left, keys)?,
                        glue_predicate(right, keys)?
                    ));
                }
                Operator::Eq => "=",
                Operator::NotEq => "<>",
                Operator::Lt => "<",
                Operator::LtEq => "<=",
                Operator::Gt => ">",
                Operator::GtEq => ">=",
                _ => return None,
            };
            match (
                key_of(left, keys),
                value_of(right),
                key_of(right, keys),
                value_of(left),
            ) {
                (Some(k), Some(v), _, _) => Some(format!("{k} {op} {v}")),
                (_, _, Some(k), Some(v)) => {
                    let flipped = match op {
                        "<" => ">",
                        "<=" => ">=",
                        ">" => "<",
                        ">=" => "<=",
                        same => same,
                    };
                    Some(format!("{k} {flipped} {v}"))
                }
                _ => None,
            }
        }
        Expr::InList(list) if !list.negated => {
            let key = key_of(&list.expr, keys)?;
            let values = list.list.iter().map(value_of).collect::<Option<Vec<_>>>()?;
            Some(format!("{key} IN ({})", values.join(", ")))
        }
        Expr::Between(b) if !b.negated => Some(format!(
            "{} BETWEEN {} AND {}",
            key_of(&b.expr, keys)?,
            value_of(&b.low)?,
            value_of(&b.high)?
        )),
        _ => None,
    }
}

fn key_of<'a>(expr: &'a Expr, keys: &[&str]) -> Option<&'a str> {
    match expr {
        Expr::Column(c) if keys.contains(&c.name.as_str()) => Some(c.name.as_str()),
        Expr::Cast(c) => key_of(&c.expr, keys),
        _ => None,
    }
}

/// A constant as Glue reads it: numbers bare, everything else (dates too) quoted.
fn value_of(expr: &Expr) -> Option<String> {
    let value = match expr {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(v, _) => v.cast_to(c.field.data_type()).ok()?,
            _ => return None,
        },
        _ => return None,
    };
    if value.is_null() {
        return None;
    }
    let text = value.to_string();
    if value.data_type().is_numeric() {
        Some(text)
    } else {
        Some(format!("'{}'", text.replace('\'', "''")))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn partition_filters_become_glue_expressions() {
        let keys = ["sale_date", "country"];
        let day = lit(ScalarValue::Date32(Some(20_454)));
        let filters = vec![
            col("sale_date")
                .gt_eq(day.clone())
                .and(col("units").gt(lit(3))),
            col("country").in_list(vec![lit("DE"), lit("FR")], false),
            lit(5).lt(col("sale_date")),
        ];
        assert_eq!(
            glue_expression(&filters, &keys).as_deref(),
            Some("sale_date >= '2026-01-01' AND country IN ('DE', 'FR') AND sale_date > 5")
        );
        // nothing on partition keys: no expression, every partition
        assert_eq!(glue_expression(&[col("units").gt(lit(3))], &keys), None);
        // an OR with a side Glue cannot say is left out whole
        let mixed = col("country").eq(lit("DE")).or(col("units").gt(lit(3)));
        assert_eq!(glue_expression(&[mixed], &keys), None);
        assert_eq!(
            glue_expression(&[col("country").eq(lit("O'Brien"))], &keys).as_deref(),
            Some("country = 'O''Brien'")
        );
    }
}
