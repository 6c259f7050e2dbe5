//! What PostgreSQL clients expect beyond plain SQL, answered for one user: datafusion-pg-catalog
//! provides pg_catalog over the user's (already filtered) catalog; this module adds what must
//! come from Lakegate itself: the server version, the user's name, privileges from policy, and
//! table and column comments from the catalog.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanBuilder, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Statement,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use lakegate_catalog::Table;

use crate::lake::Visible;

pub const PG_VERSION: &str = "16.6";

/// `server_version` as SQLAlchemy, JDBC and psql parse it.
/// `server_version_num`: 16.6 is 160006.
pub fn server_version_num() -> String {
    let mut parts = PG_VERSION.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major * 10000 + minor).to_string()
}

pub fn server_version() -> String {
    format!("{PG_VERSION} (Lakegate {})", env!("CARGO_PKG_VERSION"))
}

/// A comment on a table (`column` None) or a visible column.
#[derive(Debug, Clone)]
pub struct Comment {
    schema: String,
    table: String,
    column: Option<String>,
    text: String,
}

pub fn comments_of(schema: &str, table: &Table, visible_columns: &[String]) -> Vec<Comment> {
    let mut out = Vec::new();
    if let Some(text) = table.description() {
        out.push(Comment {
            schema: schema.to_string(),
            table: table.name.clone(),
            column: None,
            text: text.to_string(),
        });
    }
    for column in table.all_columns() {
        if let Some(text) = &column.comment
            && visible_columns.contains(&column.name)
        {
            out.push(Comment {
                schema: schema.to_string(),
                table: table.name.clone(),
                column: Some(column.name.clone()),
                text: text.clone(),
            });
        }
    }
    out
}

/// Installs pg_catalog and Lakegate's answers into a user's session.
pub async fn install(
    ctx: &SessionContext,
    visible: &Visible,
    comments: Vec<Comment>,
    settings: crate::settings::Settings,
    user: &str,
) -> DfResult<()> {
    crate::pg_catalog_setup::setup(ctx, &visible.database)?;
    let version = format!(
        "PostgreSQL {PG_VERSION} (Lakegate {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION")
    );
    ctx.register_udf(constant_text("version", version));
    ctx.register_udf(size_pretty_udf());
    ctx.register_udf(crate::like_escape::udf());
    for udf in crate::json_functions::udfs() {
        ctx.register_udf(udf);
    }
    // View bodies are catalog metadata users may not be entitled to (they name tables the
    // user may not see in other contexts): psql shows no definition rather than the SQL.
    // Lakegate's tables have no sequences and no indexes: PostgreSQL's answer for them is NULL too.
    for name in [
        "pg_get_viewdef",
        "pg_get_serial_sequence",
        "pg_get_indexdef",
    ] {
        ctx.register_udf(ScalarUDF::from(NullText {
            name: name.to_string(),
            signature: Signature::variadic_any(Volatility::Stable),
        }));
    }
    // Lakegate's tables are not stored by this server: PostgreSQL's size functions answer 0.
    for name in ["pg_table_size", "pg_indexes_size"] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Int64,
            Volatility::Stable,
            Arc::new(|_args: &[ColumnarValue]| {
                Ok(ColumnarValue::Scalar(
                    datafusion::scalar::ScalarValue::Int64(Some(0)),
                ))
            }),
        ));
    }
    // Collations, types, functions and operators all live in pg_catalog, which is always on
    // the search path: PostgreSQL answers true for every one of them.
    for name in [
        "pg_collation_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_operator_is_visible",
        "pg_opclass_is_visible",
        "pg_conversion_is_visible",
    ] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Boolean,
            Volatility::Stable,
            Arc::new(|args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let out: datafusion::arrow::array::BooleanArray = (0..arrays[0].len())
                    .map(|i| (!arrays[0].is_null(i)).then_some(true))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }),
        ));
    }
    let visible = Arc::new(visible.clone());
    for (name, kind) in [
        ("has_table_privilege", PrivilegeKind::Table),
        ("has_any_column_privilege", PrivilegeKind::Table),
        ("has_column_privilege", PrivilegeKind::Column),
        ("has_schema_privilege", PrivilegeKind::Schema),
        ("has_database_privilege", PrivilegeKind::Database),
    ] {
        ctx.register_udf(ScalarUDF::from(PrivilegeUdf {
            name: name.to_string(),
            kind,
            visible: visible.clone(),
            signature: Signature::variadic_any(Volatility::Stable),
        }));
    }
    let pg_settings = crate::settings::pg_settings_sql(&settings);
    ctx.register_udf(crate::settings::current_setting_udf(settings));
    let descriptions = descriptions_view(ctx, comments).await?;
    let pg_settings = shared_view(pg_settings).await?;
    // The gateway's users are not PostgreSQL roles; the connected user is the one role a
    // client can look up (DBeaver and others read their own row on connect).
    let pg_roles = view(
        ctx,
        &format!(
            "SELECT {} AS rolname, false AS rolsuper, true AS rolinherit, false AS rolcreaterole, \
             false AS rolcreatedb, true AS rolcanlogin, false AS rolreplication, \
             CAST(-1 AS INT) AS rolconnlimit, '********' AS rolpassword, \
             CAST(NULL AS TIMESTAMP) AS rolvaliduntil, false AS rolbypassrls, \
             CAST(NULL AS VARCHAR) AS rolconfig, CAST(10 AS INT) AS oid",
            sql_text(user)
        ),
    )
    .await?;
    let Some(catalog) = ctx.catalog(&visible.database) else {
        return Ok(());
    };
    let Some(inner) = catalog.schema("pg_catalog") else {
        return Ok(());
    };
    let pg_type = match inner.table("pg_type").await? {
        Some(table) => shared_view(pg_type_sql(&table.schema())).await?,
        None => return Ok(()),
    };
    let overlay = Overlay {
        inner,
        tables: HashMap::from([
            ("pg_description".to_string(), descriptions),
            ("pg_settings".to_string(), pg_settings),
            ("pg_roles".to_string(), pg_roles),
            ("pg_type".to_string(), pg_type),
        ]),
    };
    catalog.register_schema("pg_catalog", Arc::new(overlay))?;
    Ok(())
}

/// pg_type with its regproc columns as function oids, as PostgreSQL has them (see regproc.rs).
fn pg_type_sql(schema: &datafusion::arrow::datatypes::Schema) -> String {
    let mut columns = Vec::new();
    let mut joins = Vec::new();
    for field in schema.fields() {
        let name = field.name();
        if crate::regproc::OID_COLUMNS.contains(&name.as_str()) {
            columns.push(format!("CAST(COALESCE(p_{name}.oid, 0) AS INT) AS {name}"));
            joins.push(format!(
                "LEFT JOIN procs AS p_{name} ON p_{name}.proname = t.{name}"
            ));
        } else {
            columns.push(format!("t.{name}"));
        }
    }
    format!(
        "WITH procs AS (SELECT proname, min(oid) AS oid FROM pg_catalog.pg_proc GROUP BY proname) \
         SELECT {} FROM pg_catalog.pg_type AS t {}",
        columns.join(", "),
        joins.join(" ")
    )
}

async fn view(ctx: &SessionContext, sql: &str) -> DfResult<Arc<dyn TableProvider>> {
    let state = ctx.state();
    let statement = state.sql_to_statement(sql, &datafusion::config::Dialect::PostgreSQL)?;
    let plan = state.statement_to_plan(statement).await?;
    Ok(Arc::new(ViewTable::new(plan, Some(sql.to_string()))))
}

/// A view whose rows are the same in every session (pg_type over the static catalog tables,
/// pg_settings with its defaults), planned once per process and shared by all sessions. Planned
/// per session, pg_type's plan (it joins pg_proc once per function column) was about a quarter
/// of every connection's memory (heaptrack, 500 sessions).
async fn shared_view(sql: String) -> DfResult<Arc<dyn TableProvider>> {
    static VIEWS: LazyLock<Mutex<HashMap<String, Arc<dyn TableProvider>>>> =
        LazyLock::new(Default::default);
    let cached = VIEWS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&sql)
        .cloned();
    if let Some(view) = cached {
        return Ok(view);
    }
    // A context holding nothing but pg_catalog's static tables: no user's catalog can end up
    // in a plan every session shares.
    let ctx = SessionContext::new();
    let catalog = "datafusion";
    crate::pg_catalog_setup::setup(&ctx, catalog)?;
    let planned = view(&ctx, &sql).await;
    // pg_catalog's provider holds the catalog list it is registered in: break the cycle so
    // the planning context is freed.
    if let Some(c) = ctx.catalog(catalog) {
        let _ = c.deregister_schema("pg_catalog", true);
    }
    let planned = planned?;
    let mut views = VIEWS.lock().unwrap_or_else(|e| e.into_inner());
    // Settings change only with the configuration: a handful of entries at most.
    if views.len() >= 16 {
        views.clear();
    }
    views.insert(sql, planned.clone());
    Ok(planned)
}

/// Sets the user name the session's `current_user` and `session_user` return.
pub fn set_user(ctx: &SessionContext, user: &str) {
    for name in ["current_user", "session_user", "user", "current_role"] {
        ctx.register_udf(constant_text(name, user.to_string()));
    }
}

/// `current_schema()` and `current_schemas(bool)` from the session's search path (the
/// configured default schema), which also resolves unqualified `'name'::regclass`.
pub fn set_schema(ctx: &SessionContext, schema: &str) {
    ctx.register_udf(constant_text("current_schema", schema.to_string()));
    let schema = schema.to_string();
    ctx.register_udf(create_udf(
        "current_schemas",
        vec![DataType::Boolean],
        DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new(
            "item",
            DataType::Utf8,
            true,
        ))),
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let implicit = arrays[0]
                .as_any()
                .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                .ok_or_else(|| {
                    DataFusionError::Execution("current_schemas takes a boolean".into())
                })?;
            let mut builder = datafusion::arrow::array::ListBuilder::new(
                datafusion::arrow::array::StringBuilder::new(),
            );
            for i in 0..implicit.len() {
                if implicit.is_null(i) {
                    builder.append_null();
                    continue;
                }
                if implicit.value(i) {
                    builder.values().append_value("pg_catalog");
                }
                builder.values().append_value(&schema);
                builder.append(true);
            }
            Ok(ColumnarValue::Array(Arc::new(builder.finish())))
        }),
    ));
}

/// PostgreSQL's `pg_size_pretty(bigint)`: bytes below 10 kB, then kB, MB, GB, TB, PB, each
/// rounded half up, moving to the next unit from 10240 of the current one.
pub fn size_pretty(bytes: i64) -> String {
    if bytes.unsigned_abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    for unit in ["kB", "MB", "GB", "TB", "PB"] {
        value /= 1024.0;
        if value.abs() < 10.0 * 1024.0 - 0.5 || unit == "PB" {
            return format!("{} {unit}", value.round() as i64);
        }
    }
    format!("{bytes} bytes")
}

fn size_pretty_udf() -> ScalarUDF {
    create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let sizes = arrays
                .first()
                .and_then(|a| {
                    a.as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                })
                .ok_or_else(|| {
                    DataFusionError::Execution("pg_size_pretty takes a bigint".into())
                })?;
            let out: StringArray = sizes.iter().map(|v| v.map(size_pretty)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

fn constant_text(name: &str, value: String) -> ScalarUDF {
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let _ = args;
            Ok(ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Utf8(Some(value.clone())),
            ))
        }),
    )
}

/// A function that answers NULL text whatever its arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: String,
    signature: Signature,
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(
            datafusion::scalar::ScalarValue::Utf8(None),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrivilegeKind {
    Table,
    Column,
    Schema,
    Database,
}

/// `has_*_privilege` answered from policy: SELECT on visible tables and columns, USAGE on
/// schemas that hold one, CONNECT on the database; everything else is false. An object given
/// by OID, which this gateway cannot map back, is answered false (fail closed).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PrivilegeUdf {
    name: String,
    kind: PrivilegeKind,
    visible: Arc<Visible>,
    signature: Signature,
}

impl ScalarUDFImpl for PrivilegeUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts: Vec<ArrayRef> = arrays
            .iter()
            .map(|a| cast(a, &DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let strings: Vec<&StringArray> = texts
            .iter()
            .map(|a| a.as_any().downcast_ref::<StringArray>())
            .collect::<Option<_>>()
            .ok_or_else(|| DataFusionError::Execution(format!("{}: bad arguments", self.name)))?;
        // (object, privilege), (user, object, privilege), and for columns
        // (table, column, privilege) or (user, table, column, privilege).
        let object_args = match self.kind {
            PrivilegeKind::Column => 3,
            _ => 2,
        };
        let skip_user = usize::from(strings.len() > object_args);
        if strings.len() < object_args || strings.len() > object_args + 1 {
            return Err(DataFusionError::Plan(format!(
                "{}: wrong number of arguments",
                self.name
            )));
        }
        let mut out = BooleanBuilder::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            let value = |i: usize| {
                let a = strings[skip_user + i];
                (!a.is_null(row)).then(|| a.value(row))
            };
            let privilege = value(object_args - 1).map(|p| p.to_ascii_uppercase());
            let (Some(object), Some(privilege)) = (value(0), privilege) else {
                out.append_null();
                continue;
            };
            let allowed = match self.kind {
                PrivilegeKind::Table => {
                    privilege.contains("SELECT") && self.visible.table(object).is_some()
                }
                PrivilegeKind::Column => {
                    let column = value(1).unwrap_or_default();
                    privilege.contains("SELECT")
                        && self
                            .visible
                            .table(object)
                            .is_some_and(|cols| cols.iter().any(|c| c == column))
                }
                PrivilegeKind::Schema => privilege.contains("USAGE") && self.visible.schema(object),
                PrivilegeKind::Database => {
                    privilege.contains("CONNECT") && object == self.visible.database
                }
            };
            out.append_value(allowed);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::size_pretty;

    #[test]
    fn sizes_print_like_postgres() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10239), "10239 bytes");
        assert_eq!(size_pretty(10240), "10 kB");
        assert_eq!(size_pretty(1_000_000), "977 kB");
        assert_eq!(size_pretty(20_000_000), "19 MB");
    }
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `pg_catalog.pg_description` as a view joining the catalog's comments to the oids that
/// datafusion-pg-catalog assigns, placed over its static (empty) table.
async fn descriptions_view(
    ctx: &SessionContext,
    comments: Vec<Comment>,
) -> DfResult<Arc<dyn TableProvider>> {
    let rows: Vec<String> = comments
        .iter()
        .map(|c| {
            format!(
                "({}, {}, {}, {})",
                sql_text(&c.schema),
                sql_text(&c.table),
                c.column
                    .as_deref()
                    .map(sql_text)
                    .unwrap_or_else(|| "CAST(NULL AS VARCHAR)".into()),
                sql_text(&c.text)
            )
        })
        .collect();
    let values = if rows.is_empty() {
        "SELECT CAST(NULL AS VARCHAR) AS nsp, CAST(NULL AS VARCHAR) AS rel, CAST(NULL AS VARCHAR) AS col, CAST(NULL AS VARCHAR) AS description WHERE false".to_string()
    } else {
        format!(
            "SELECT * FROM (VALUES {}) AS v(nsp, rel, col, description)",
            rows.join(", ")
        )
    };
    let sql = format!(
        "WITH d AS ({values}) \
         SELECT c.oid AS objoid, CAST(1259 AS INT) AS classoid, \
                CAST(COALESCE(a.attnum, 0) AS INT) AS objsubid, d.description AS description \
         FROM d JOIN pg_catalog.pg_namespace n ON n.nspname = d.nsp \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = d.rel \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = d.col \
         WHERE d.col IS NULL OR a.attnum IS NOT NULL"
    );
    view(ctx, &sql).await
}

/// pg_catalog with some tables answered by Lakegate.
#[derive(Debug)]
struct Overlay {
    inner: Arc<dyn SchemaProvider>,
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for Overlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match self.tables.get(&name.to_ascii_lowercase()) {
            Some(t) => Ok(Some(t.clone())),
            None => self.inner.table(name).await,
        }
    }
    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// Rewrites `col_description(oid, attnum)`, `obj_description(oid[, 'pg_class'])` and
/// `to_regtype(name)` into subqueries over `pg_description` / `pg_type`: their answer depends
/// on a table, which a scalar function cannot read.
pub fn rewrite_description_calls(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        crate::like_escape::rewrite(expr);
        crate::regproc::rewrite(expr);
        crate::scalar_subquery::rewrite(expr);
        if let SqlExpr::Function(f) = expr {
            let name = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.to_ascii_lowercase());
            let args: Vec<SqlExpr> = match &f.args {
                FunctionArguments::List(list) => list
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            };
            let sub = match (name.as_deref(), args.as_slice()) {
                (Some("col_description"), [oid, attnum]) => Some(format!(
                    "(SELECT max(pgd.description) FROM pg_catalog.pg_description AS pgd WHERE pgd.objoid = {oid} AND pgd.objsubid = {attnum})"
                )),
                (Some("obj_description"), [oid]) | (Some("obj_description"), [oid, _]) => {
                    Some(format!(
                        "(SELECT max(pgd.description) FROM pg_catalog.pg_description AS pgd WHERE pgd.objoid = {oid} AND pgd.objsubid = 0)"
                    ))
                }
                // psycopg's TypeInfo.fetch (SQLAlchemy connects through it): NULL if unknown
                (Some("to_regtype"), [name]) => Some(format!(
                    "(SELECT max(pgt.oid) FROM pg_catalog.pg_type AS pgt WHERE pgt.typname = {name})"
                )),
                _ => None,
            };
            if let Some(sub) = sub
                && let Ok(parsed) = Parser::new(&PostgreSqlDialect {})
                    .try_with_sql(&sub)
                    .and_then(|mut p| p.parse_expr())
            {
                *expr = parsed;
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}
