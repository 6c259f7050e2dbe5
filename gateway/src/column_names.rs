//! PostgreSQL's names for unaliased output columns, as clients see them (pandas columns, BI
//! field names): `count(*)` is `count`, `t.col` is `col`, `x::int` keeps `x`'s name, a CASE is
//! `case`, anything else `?column?`. DataFusion names columns by their expression text; only the
//! names sent on the wire change, never the plan.
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Statement};

/// The schema with PostgreSQL's column names, when they can be matched to the statement's
/// select list; otherwise the schema as it is.
pub fn postgres_schema(statement: &Statement, schema: &Schema) -> Schema {
    match names(statement, schema.fields().len()) {
        Some(names) => Schema::new(
            schema
                .fields()
                .iter()
                .zip(names)
                .map(|(f, name)| match name {
                    Some(name) => Field::clone(f).with_name(name),
                    None => Field::clone(f),
                })
                .collect::<Vec<_>>(),
        ),
        None => schema.clone(),
    }
}

/// One entry per output column: `Some(name)` to rename it, `None` to keep DataFusion's name.
fn names(statement: &Statement, columns: usize) -> Option<Vec<Option<String>>> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let items = select_items(query)?;
    let wildcards = items
        .iter()
        .filter(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
        .count();
    let named = items.len() - wildcards;
    // A wildcard's expansion is only known by count: match positions with at most one.
    if wildcards > 1 || (wildcards == 0 && named != columns) || columns < named {
        return None;
    }
    let expanded = columns - named;
    let mut out = Vec::with_capacity(columns);
    for item in items {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                out.extend(std::iter::repeat_n(None, expanded))
            }
            SelectItem::ExprWithAlias { .. } => out.push(None),
            SelectItem::UnnamedExpr(expr) => out.push(Some(expr_name(expr))),
            _ => return None,
        }
    }
    Some(out)
}

/// The leftmost SELECT's items (PostgreSQL names a UNION's columns after its first branch).
fn select_items(query: &Query) -> Option<&Vec<SelectItem>> {
    let mut body = query.body.as_ref();
    loop {
        match body {
            SetExpr::Select(select) => return Some(&select.projection),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            SetExpr::Query(q) => body = q.body.as_ref(),
            _ => return None,
        }
    }
}

fn expr_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|p| p.value.clone()).unwrap_or_default()
        }
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.clone())
            .unwrap_or_else(|| "?column?".into()),
        Expr::Cast {
            expr, data_type, ..
        } => match expr.as_ref() {
            Expr::Value(_) => data_type.to_string().to_lowercase(),
            inner => expr_name(inner),
        },
        Expr::Nested(inner) => expr_name(inner),
        Expr::Case { .. } => "case".into(),
        _ => "?column?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn renamed(sql: &str, columns: &[&str]) -> Vec<String> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("sql")
            .remove(0);
        let schema = Schema::new(
            columns
                .iter()
                .map(|c| Field::new(*c, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        );
        postgres_schema(&statement, &schema)
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    #[test]
    fn names_like_postgres() {
        assert_eq!(
            renamed(
                "SELECT count(*), min(h.country), h.hcp_id, amount::text, 1 + 1, CASE WHEN true THEN 1 END, sum(x) AS total FROM h",
                &[
                    "count(*)",
                    "min(h.country)",
                    "hcp_id",
                    "amount",
                    "Int64(1) + Int64(1)",
                    "CASE ...",
                    "total"
                ]
            ),
            [
                "count", "min", "hcp_id", "amount", "?column?", "case", "total"
            ]
        );
        assert_eq!(
            renamed("SELECT *, count(*) FROM t", &["a", "b", "count(*)"]),
            ["a", "b", "count"]
        );
        assert_eq!(
            renamed("SELECT count(*) FROM a UNION ALL SELECT 1", &["count(*)"]),
            ["count"]
        );
        // positions cannot be matched: names stay as they are
        assert_eq!(
            renamed("SELECT a.*, b.* FROM a, b", &["x", "y"]),
            ["x", "y"]
        );
    }
}
