//! `information_schema` as PostgreSQL presents it, for one user's session.
//!
//! DataFusion's own information_schema reports Arrow types (`Int64`, `Utf8`) and DataFusion
//! settings; BI tools read `information_schema.columns.data_type` to type their columns, and
//! expect `bigint`, `text`, `numeric` with precision and scale. Lakegate builds the views from
//! the session's catalog, which holds only what policy lets this user see, so the answer is
//! both PostgreSQL's shape and the user's view of the lake.
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::{MemTable, MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;

pub const SCHEMA: &str = "information_schema";

/// How PostgreSQL's information_schema describes a column of this Arrow type.
#[derive(Debug, PartialEq)]
pub struct SqlType {
    pub data_type: &'static str,
    pub udt_name: &'static str,
    pub numeric_precision: Option<i32>,
    pub numeric_radix: Option<i32>,
    pub numeric_scale: Option<i32>,
    pub datetime_precision: Option<i32>,
}

pub fn sql_type(data_type: &DataType) -> SqlType {
    let t = |data_type, udt_name| SqlType {
        data_type,
        udt_name,
        numeric_precision: None,
        numeric_radix: None,
        numeric_scale: None,
        datetime_precision: None,
    };
    let binary = |data_type, udt_name, bits| SqlType {
        numeric_precision: Some(bits),
        numeric_radix: Some(2),
        numeric_scale: (bits <= 64 && data_type != "real" && data_type != "double precision")
            .then_some(0),
        ..t(data_type, udt_name)
    };
    let dated = |data_type, udt_name, precision| SqlType {
        datetime_precision: Some(precision),
        ..t(data_type, udt_name)
    };
    match data_type {
        DataType::Boolean => t("boolean", "bool"),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => binary("smallint", "int2", 16),
        DataType::Int32 | DataType::UInt16 => binary("integer", "int4", 32),
        DataType::Int64 | DataType::UInt32 => binary("bigint", "int8", 64),
        DataType::UInt64 => SqlType {
            numeric_precision: Some(20),
            numeric_radix: Some(10),
            numeric_scale: Some(0),
            ..t("numeric", "numeric")
        },
        DataType::Float16 | DataType::Float32 => binary("real", "float4", 24),
        DataType::Float64 => binary("double precision", "float8", 53),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => SqlType {
            numeric_precision: Some(i32::from(*p)),
            numeric_radix: Some(10),
            numeric_scale: Some(i32::from(*s)),
            ..t("numeric", "numeric")
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => t("text", "text"),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => t("bytea", "bytea"),
        DataType::Date32 | DataType::Date64 => dated("date", "date", 0),
        DataType::Timestamp(unit, tz) => {
            let precision = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                _ => 6,
            };
            if tz.is_some() {
                dated("timestamp with time zone", "timestamptz", precision)
            } else {
                dated("timestamp without time zone", "timestamp", precision)
            }
        }
        DataType::Time32(_) | DataType::Time64(_) => dated("time without time zone", "time", 6),
        DataType::Interval(_) | DataType::Duration(_) => dated("interval", "interval", 6),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            t("ARRAY", "_text")
        }
        _ => t("USER-DEFINED", "text"),
    }
}

/// One table as the views list it.
struct Relation {
    schema: String,
    name: String,
    is_view: bool,
    columns: Vec<Arc<Field>>,
}

async fn relations(ctx: &SessionContext, database: &str) -> DfResult<Vec<Relation>> {
    let mut out = Vec::new();
    let Some(catalog) = ctx.catalog(database) else {
        return Ok(out);
    };
    let mut schema_names = catalog.schema_names();
    schema_names.sort();
    for schema_name in schema_names {
        if schema_name == "pg_catalog" || schema_name == SCHEMA {
            continue;
        }
        let Some(schema) = catalog.schema(&schema_name) else {
            continue;
        };
        let mut table_names = schema.table_names();
        table_names.sort();
        for name in table_names {
            if let Some(table) = schema.table(&name).await? {
                out.push(Relation {
                    schema: schema_name.clone(),
                    name,
                    is_view: table.table_type() == TableType::View,
                    columns: table.schema().fields().iter().cloned().collect(),
                });
            }
        }
    }
    Ok(out)
}

/// Builds text and integer columns by name; every column is nullable, as in PostgreSQL.
/// Values are collected first and the arrays built at their exact size: every session holds
/// these tables, and Arrow's growable builders start at 1,024 slots per column (about 350 KB
/// of mostly empty buffers per session before this).
struct Columns {
    names: Vec<&'static str>,
    values: Vec<Collected>,
}

enum Collected {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i32>>),
}

enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i32>),
}

impl Columns {
    fn new(spec: &[(&'static str, bool)]) -> Columns {
        Columns {
            names: spec.iter().map(|(n, _)| *n).collect(),
            values: spec
                .iter()
                .map(|(_, int)| {
                    if *int {
                        Collected::Int(Vec::new())
                    } else {
                        Collected::Text(Vec::new())
                    }
                })
                .collect(),
        }
    }

    /// Appends one row; columns past the end of `values` are NULL.
    fn row(&mut self, values: &[Value<'_>]) {
        for (i, column) in self.values.iter_mut().enumerate() {
            match (values.get(i), column) {
                (Some(Value::Text(v)), Collected::Text(c)) => c.push(v.map(str::to_string)),
                (Some(Value::Int(v)), Collected::Int(c)) => c.push(*v),
                (_, Collected::Text(c)) => c.push(None),
                (_, Collected::Int(c)) => c.push(None),
            }
        }
    }

    fn table(self) -> DfResult<Arc<dyn TableProvider>> {
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (name, column) in self.names.iter().zip(self.values) {
            match column {
                Collected::Text(values) => {
                    fields.push(Field::new(*name, DataType::Utf8, true));
                    // exact sizes: `StringArray::from` reserves 1 KB of string data per column
                    let bytes = values.iter().flatten().map(String::len).sum();
                    let mut builder = StringBuilder::with_capacity(values.len(), bytes);
                    builder.extend(values);
                    arrays.push(Arc::new(builder.finish()));
                }
                Collected::Int(values) => {
                    fields.push(Field::new(*name, DataType::Int32, true));
                    arrays.push(Arc::new(Int32Array::from(values)));
                }
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

const TEXT: bool = false;
const INT: bool = true;

/// Registers `information_schema` (schemata, tables, views, columns) in the session's catalog.
/// The session must have DataFusion's own information_schema turned off.
pub async fn install(ctx: &SessionContext, database: &str) -> DfResult<()> {
    let relations = relations(ctx, database).await?;
    let provider = MemorySchemaProvider::new();

    let mut schemata = Columns::new(&[
        ("catalog_name", TEXT),
        ("schema_name", TEXT),
        ("schema_owner", TEXT),
        ("default_character_set_catalog", TEXT),
        ("default_character_set_schema", TEXT),
        ("default_character_set_name", TEXT),
        ("sql_path", TEXT),
    ]);
    let mut schema_names: Vec<&str> = relations.iter().map(|r| r.schema.as_str()).collect();
    schema_names.extend(["information_schema", "pg_catalog"]);
    schema_names.sort();
    schema_names.dedup();
    for schema in schema_names {
        schemata.row(&[
            Value::Text(Some(database)),
            Value::Text(Some(schema)),
            Value::Text(Some("lakegate")),
        ]);
    }
    provider.register_table("schemata".into(), schemata.table()?)?;

    let mut tables = Columns::new(&[
        ("table_catalog", TEXT),
        ("table_schema", TEXT),
        ("table_name", TEXT),
        ("table_type", TEXT),
        ("self_referencing_column_name", TEXT),
        ("reference_generation", TEXT),
        ("user_defined_type_catalog", TEXT),
        ("user_defined_type_schema", TEXT),
        ("user_defined_type_name", TEXT),
        ("is_insertable_into", TEXT),
        ("is_typed", TEXT),
        ("commit_action", TEXT),
    ]);
    let mut views = Columns::new(&[
        ("table_catalog", TEXT),
        ("table_schema", TEXT),
        ("table_name", TEXT),
        ("view_definition", TEXT),
        ("check_option", TEXT),
        ("is_updatable", TEXT),
        ("is_insertable_into", TEXT),
        ("is_trigger_updatable", TEXT),
        ("is_trigger_deletable", TEXT),
        ("is_trigger_insertable_into", TEXT),
    ]);
    let mut columns = Columns::new(&[
        ("table_catalog", TEXT),
        ("table_schema", TEXT),
        ("table_name", TEXT),
        ("column_name", TEXT),
        ("ordinal_position", INT),
        ("column_default", TEXT),
        ("is_nullable", TEXT),
        ("data_type", TEXT),
        ("character_maximum_length", INT),
        ("character_octet_length", INT),
        ("numeric_precision", INT),
        ("numeric_precision_radix", INT),
        ("numeric_scale", INT),
        ("datetime_precision", INT),
        ("interval_type", TEXT),
        ("interval_precision", INT),
        ("character_set_catalog", TEXT),
        ("character_set_schema", TEXT),
        ("character_set_name", TEXT),
        ("collation_catalog", TEXT),
        ("collation_schema", TEXT),
        ("collation_name", TEXT),
        ("domain_catalog", TEXT),
        ("domain_schema", TEXT),
        ("domain_name", TEXT),
        ("udt_catalog", TEXT),
        ("udt_schema", TEXT),
        ("udt_name", TEXT),
        ("scope_catalog", TEXT),
        ("scope_schema", TEXT),
        ("scope_name", TEXT),
        ("maximum_cardinality", INT),
        ("dtd_identifier", TEXT),
        ("is_self_referencing", TEXT),
        ("is_identity", TEXT),
        ("identity_generation", TEXT),
        ("identity_start", TEXT),
        ("identity_increment", TEXT),
        ("identity_maximum", TEXT),
        ("identity_minimum", TEXT),
        ("identity_cycle", TEXT),
        ("is_generated", TEXT),
        ("generation_expression", TEXT),
        ("is_updatable", TEXT),
    ]);
    for r in &relations {
        let (schema, name) = (Some(r.schema.as_str()), Some(r.name.as_str()));
        let kind = if r.is_view { "VIEW" } else { "BASE TABLE" };
        tables.row(&[
            Value::Text(Some(database)),
            Value::Text(schema),
            Value::Text(name),
            Value::Text(Some(kind)),
            Value::Text(None),
            Value::Text(None),
            Value::Text(None),
            Value::Text(None),
            Value::Text(None),
            Value::Text(Some("NO")),
            Value::Text(Some("NO")),
        ]);
        if r.is_view {
            // A view's body can name tables this user may not see: not shown, as pg_get_viewdef.
            views.row(&[
                Value::Text(Some(database)),
                Value::Text(schema),
                Value::Text(name),
                Value::Text(None),
                Value::Text(Some("NONE")),
                Value::Text(Some("NO")),
                Value::Text(Some("NO")),
                Value::Text(Some("NO")),
                Value::Text(Some("NO")),
                Value::Text(Some("NO")),
            ]);
        }
        for (i, field) in r.columns.iter().enumerate() {
            let t = sql_type(field.data_type());
            let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
            let position_text = position.to_string();
            columns.row(&[
                Value::Text(Some(database)),
                Value::Text(schema),
                Value::Text(name),
                Value::Text(Some(field.name())),
                Value::Int(Some(position)),
                Value::Text(None),
                // Lake files can always hold NULLs; Glue has no NOT NULL.
                Value::Text(Some("YES")),
                Value::Text(Some(t.data_type)),
                Value::Int(None),
                Value::Int((t.udt_name == "text").then_some(1_073_741_824)),
                Value::Int(t.numeric_precision),
                Value::Int(t.numeric_radix),
                Value::Int(t.numeric_scale),
                Value::Int(t.datetime_precision),
                Value::Text(None),
                Value::Int(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(Some(database)),
                Value::Text(Some("pg_catalog")),
                Value::Text(Some(t.udt_name)),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Int(None),
                Value::Text(Some(&position_text)),
                Value::Text(Some("NO")),
                Value::Text(Some("NO")),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(None),
                Value::Text(Some("NO")),
                Value::Text(Some("NEVER")),
                Value::Text(None),
                Value::Text(Some("NO")),
            ]);
        }
    }
    provider.register_table("tables".into(), tables.table()?)?;
    provider.register_table("views".into(), views.table()?)?;
    provider.register_table("columns".into(), columns.table()?)?;
    if let Some(catalog) = ctx.catalog(database) {
        catalog.register_schema(SCHEMA, Arc::new(provider))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_read_as_postgres_types() {
        assert_eq!(sql_type(&DataType::Int64).data_type, "bigint");
        assert_eq!(sql_type(&DataType::Utf8View).udt_name, "text");
        let amount = sql_type(&DataType::Decimal128(12, 2));
        assert_eq!(
            (
                amount.data_type,
                amount.numeric_precision,
                amount.numeric_scale
            ),
            ("numeric", Some(12), Some(2))
        );
        assert_eq!(
            sql_type(&DataType::Timestamp(TimeUnit::Microsecond, None)).data_type,
            "timestamp without time zone"
        );
        assert_eq!(sql_type(&DataType::Date32).data_type, "date");
    }
}
