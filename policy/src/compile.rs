//! Turning a `TableAccess` into DataFusion expressions: the row filter over raw values, and one
//! projection that computes every visible column (masked or not) from raw values.
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionState;
use datafusion::functions::expr_fn::{
    character_length, concat, date_trunc, encode, left, repeat, right, sha256,
};
use datafusion::logical_expr::{
    Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, cast, lit, when,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::identity::Identity;
use crate::model::Mask;
use crate::resolve::TableAccess;

/// The enforced form of one user's access to one table: a plan that reads the raw table,
/// filters rows on raw values, then projects the visible columns with their masks applied.
#[derive(Debug, Clone)]
pub struct CompiledAccess {
    pub plan: LogicalPlan,
    /// The provider `plan` reads: the only scan allowed under the policy barrier.
    pub raw: Arc<dyn TableProvider>,
}

/// Replaces `${user.name}`, `${user.groups}` and `${user.<attribute>}` outside quotes with
/// positional placeholders, returning the SQL and the typed values to bind. Values are never
/// spliced into the SQL text. A missing attribute binds as NULL, so comparisons with it are
/// never true (fail closed).
pub fn bind_user_placeholders(
    sql: &str,
    identity: &Identity,
) -> Result<(String, Vec<ScalarValue>), String> {
    let mut out = String::with_capacity(sql.len());
    let mut values = Vec::new();
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            out.push(c);
            continue;
        }
        if c == '$' && sql[i..].starts_with("${") {
            let end = sql[i..]
                .find('}')
                .ok_or_else(|| "unclosed ${ in expression".to_string())?;
            let name = sql[i + 2..i + end].trim();
            values.push(user_value(name, identity)?);
            out.push_str(&format!("${}", values.len()));
            // skip the rest of the placeholder
            while let Some((j, _)) = chars.peek() {
                if *j <= i + end {
                    chars.next();
                } else {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    Ok((out, values))
}

fn user_value(name: &str, identity: &Identity) -> Result<ScalarValue, String> {
    let Some(key) = name.strip_prefix("user.") else {
        return Err(format!(
            "unknown value ${{{name}}}: use ${{user.name}}, ${{user.groups}} or ${{user.<attribute>}}"
        ));
    };
    Ok(match key {
        "name" => ScalarValue::Utf8(Some(identity.name.clone())),
        "groups" => {
            let groups: Vec<ScalarValue> = identity
                .groups
                .iter()
                .map(|g| ScalarValue::Utf8(Some(g.clone())))
                .collect();
            ScalarValue::List(ScalarValue::new_list_nullable(&groups, &DataType::Utf8))
        }
        attr => ScalarValue::Utf8(identity.attributes.get(attr).cloned()),
    })
}

/// Syntax check of a policy SQL expression, for `lakegate check` and policy loading.
pub(crate) fn check_sql_syntax(sql: &str) -> Result<(), String> {
    let (sql, _) = bind_user_placeholders(sql, &Identity::default())?;
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Plans a policy SQL expression against the raw table schema, with user values bound.
fn policy_expr(
    sql: &str,
    identity: &Identity,
    schema: &DFSchema,
    state: &SessionState,
) -> Result<Expr, String> {
    let (sql, values) = bind_user_placeholders(sql, identity)?;
    let expr = state
        .create_logical_expr(&sql, schema)
        .map_err(|e| e.strip_backtrace().to_string())?;
    expr.transform(|e| {
        if let Expr::Placeholder(p) = &e {
            let index: usize = p.id.trim_start_matches('$').parse().unwrap_or(0);
            if let Some(value) = index.checked_sub(1).and_then(|i| values.get(i)) {
                return Ok(Transformed::yes(lit(value.clone())));
            }
        }
        Ok(Transformed::no(e))
    })
    .map(|t| t.data)
    .map_err(|e| e.strip_backtrace().to_string())
}

fn mask_expr(
    mask: &Mask,
    column: &str,
    data_type: &DataType,
    identity: &Identity,
    schema: &DFSchema,
    state: &SessionState,
) -> Result<Expr, String> {
    let raw = Expr::Column(Column::new_unqualified(column));
    let text = cast(raw.clone(), DataType::Utf8);
    let null_text = lit(ScalarValue::Utf8(None));
    Ok(match mask {
        Mask::Hash => when(raw.clone().is_null(), null_text)
            .otherwise(encode(sha256(text), lit("hex")))
            .map_err(|e| e.to_string())?,
        Mask::Nullify => lit(ScalarValue::try_from(data_type).map_err(|e| e.to_string())?),
        Mask::ShowFirst(n) | Mask::ShowLast(n) => {
            let n = i64::from(*n);
            let hidden = repeat(
                lit("*"),
                // greatest(len - n, 0) without a function DataFusion may lack: CASE
                when(
                    character_length(text.clone()).gt(lit(n)),
                    cast(character_length(text.clone()), DataType::Int64) - lit(n),
                )
                .otherwise(lit(0i64))
                .map_err(|e| e.to_string())?,
            );
            let shown = if matches!(mask, Mask::ShowFirst(_)) {
                concat(vec![left(text.clone(), lit(n)), hidden])
            } else {
                concat(vec![hidden, right(text.clone(), lit(n))])
            };
            when(raw.is_null(), null_text)
                .otherwise(shown)
                .map_err(|e| e.to_string())?
        }
        Mask::DateToYear => {
            if !matches!(
                data_type,
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
            ) {
                return Err(format!(
                    "date_to_year needs a date or timestamp column, {column} is {data_type}"
                ));
            }
            cast(date_trunc(lit("year"), raw), data_type.clone())
        }
        Mask::Sql(sql) => policy_expr(sql, identity, schema, state)?,
    })
}

/// Builds the enforced plan for one table. `table` is how the raw scan is named in plans;
/// `raw` is the provider that reads the data.
pub fn compile_access(
    access: &TableAccess,
    identity: &Identity,
    table: TableReference,
    raw: Arc<dyn TableProvider>,
    state: &SessionState,
) -> Result<CompiledAccess, String> {
    let raw_schema = raw.schema();
    let df_schema = DFSchema::try_from(raw_schema.as_ref().clone()).map_err(|e| e.to_string())?;
    let mut builder = LogicalPlanBuilder::scan(table, provider_as_source(raw.clone()), None)
        .map_err(|e| e.strip_backtrace().to_string())?;
    if let Some(filter) = &access.row_filter {
        let predicate = policy_expr(filter, identity, &df_schema, state)?;
        let predicate_type = predicate
            .get_type(&df_schema)
            .map_err(|e| e.strip_backtrace().to_string())?;
        if predicate_type != DataType::Boolean {
            return Err(format!(
                "row_filter must be a boolean expression, not {predicate_type}"
            ));
        }
        builder = builder
            .filter(predicate)
            .map_err(|e| e.strip_backtrace().to_string())?;
    }
    let mut projection = Vec::with_capacity(access.columns.len());
    for column in &access.columns {
        let field = raw_schema
            .field_with_name(&column.name)
            .map_err(|_| format!("column {} is not in the table", column.name))?;
        let expr = match &column.mask {
            None => Expr::Column(Column::new_unqualified(&column.name)),
            Some(mask) => mask_expr(
                mask,
                &column.name,
                field.data_type(),
                identity,
                &df_schema,
                state,
            )?,
        };
        projection.push(expr.alias(&column.name));
    }
    let plan = builder
        .project(projection)
        .and_then(|b| b.build())
        .map_err(|e| e.strip_backtrace().to_string())?;
    Ok(CompiledAccess { plan, raw })
}
