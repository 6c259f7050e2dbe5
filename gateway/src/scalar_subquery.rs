//! Scalar subqueries: kept with PostgreSQL's meaning, and made plannable by DataFusion where
//! clients look up the catalog with them.
//!
//! datafusion-pg-catalog's parser replaces every correlated scalar subquery in a select list
//! with NULL and caps the others with LIMIT 1, which silently changes answers over lake data
//! (`SELECT (SELECT count(*) FROM sales s WHERE s.hcp_id = h.hcp_id) FROM hcp h` answered
//! NULL). `protect` hides select-list subqueries from that rule by parenthesizing them, so
//! DataFusion either plans them exactly or refuses them. Statements that read only the catalog
//! keep the rule: clients' catalog queries (psql's `\d+`) carry lookups DataFusion cannot
//! decorrelate, whose answer for Lakegate's tables is NULL anyway (no defaults, collations
//! or identities).
//!
//! SQLAlchemy, pgjdbc and psqlODBC look up one catalog row per column with correlated scalar
//! subqueries such as `(SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d WHERE
//! d.adrelid = a.attrelid AND d.adnum = a.attnum)`. DataFusion plans a correlated scalar
//! subquery only when it is aggregated. Such lookups are by a catalog key, so they find at most
//! one row, and `max` of at most one row is that row: wrapping the selected expression in
//! `max` keeps PostgreSQL's answer. Only subqueries that read nothing but `pg_catalog` and
//! `information_schema` are rewritten; over lake data, where several rows are possible,
//! DataFusion's refusal stands.
//!
//! Conditions in such a subquery that read only the outer row (`WHERE a.atthasdef AND
//! d.adrelid = a.attrelid`), which DataFusion cannot decorrelate, move out into a `CASE`:
//! when they are not true the subquery finds no row and answers NULL, as `CASE` does.
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, ObjectName, Query, SelectItem, SetExpr, TableFactor, TableWithJoins,
    visit_expressions, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

const AGGREGATES: &[&str] = &[
    "max",
    "min",
    "count",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
];

/// The statements with every select-list scalar subquery parenthesized, or None if nothing
/// changed or the text does not parse here (then it goes on unchanged).
pub fn protect(sql: &str) -> Option<String> {
    // A subquery is always in parentheses: a text without any (a point lookup) is not
    // parsed a second time.
    if !sql.contains('(') {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut reads_lake = false;
    for statement in &statements {
        let _ = visit_relations(statement, |name| {
            if !is_catalog_table(name) {
                reads_lake = true;
            }
            ControlFlow::<()>::Continue(())
        });
    }
    if !reads_lake {
        return None;
    }
    let mut changed = false;
    for statement in &mut statements {
        let _ = datafusion::sql::sqlparser::ast::VisitMut::visit(
            statement,
            &mut Protect {
                changed: &mut changed,
            },
        );
    }
    changed.then(|| {
        statements
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(";\n")
    })
}

struct Protect<'a> {
    changed: &'a mut bool,
}

impl datafusion::sql::sqlparser::ast::VisitorMut for Protect<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                    && matches!(e, SqlExpr::Subquery(_))
                {
                    *e = SqlExpr::Nested(Box::new(e.clone()));
                    *self.changed = true;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Rewrites `expr` in place if it is a scalar subquery over the catalog.
pub fn rewrite(expr: &mut SqlExpr) {
    let SqlExpr::Subquery(query) = expr else {
        return;
    };
    if !rewrite_query(query) {
        return;
    }
    let outer = hoist_outer_conditions(query);
    // A lookup that can find no row (the client_queries.yaml answer for sequences) is NULL;
    // DataFusion cannot plan it when its only outer references are in the selected value.
    let finds_nothing = matches!(query.body.as_ref(), SetExpr::Select(select)
        if select.selection.as_ref().is_some_and(|w| w.to_string() == "false"));
    if finds_nothing {
        *expr = SqlExpr::value(datafusion::sql::sqlparser::ast::Value::Null);
        return;
    }
    if let Some(outer) = outer {
        let text = format!("CASE WHEN {outer} THEN ({query}) END");
        if let Ok(parsed) = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
        {
            *expr = parsed;
        }
    }
}

/// Aggregates the selected expression; false if the subquery is not a catalog lookup.
fn rewrite_query(query: &mut Query) -> bool {
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return false;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    if select.from.is_empty()
        || !select.from.iter().all(reads_only_catalog)
        || select.having.is_some()
        || !matches!(&select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty())
        || select.distinct.is_some()
    {
        return false;
    }
    let [item] = select.projection.as_mut_slice() else {
        return false;
    };
    let target = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    if !is_aggregate(target) {
        *target = max_of(target.clone());
    }
    true
}

/// Removes the WHERE conjuncts that read only outer columns and returns them joined by AND.
fn hoist_outer_conditions(query: &mut Query) -> Option<String> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let inner = relation_names(&select.from);
    let mut conjuncts = Vec::new();
    split_and(select.selection.take()?, &mut conjuncts);
    let (outer, rest): (Vec<_>, Vec<_>) = conjuncts
        .into_iter()
        .partition(|c| reads_only_outer(c, &inner));
    select.selection = rest.into_iter().reduce(|a, b| SqlExpr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
    if outer.is_empty() {
        return None;
    }
    Some(
        outer
            .iter()
            .map(|c| format!("({c})"))
            .collect::<Vec<_>>()
            .join(" AND "),
    )
}

fn split_and(expr: SqlExpr, out: &mut Vec<SqlExpr>) {
    match expr {
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        SqlExpr::Nested(inner)
            if matches!(
                *inner,
                SqlExpr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

/// Names a column of the subquery's own relations may be qualified with (lower case):
/// the alias, else the table name and its schema-qualified form.
fn relation_names(from: &[TableWithJoins]) -> Vec<Vec<String>> {
    let mut names = Vec::new();
    for twj in from {
        for relation in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation))
        {
            if let TableFactor::Table { name, alias, .. } = relation {
                match alias {
                    Some(alias) => names.push(vec![alias.name.value.to_ascii_lowercase()]),
                    None => {
                        let parts = lower_parts(name);
                        for start in 0..parts.len() {
                            names.push(parts[start..].to_vec());
                        }
                    }
                }
            }
        }
    }
    names
}

fn lower_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase()))
        .collect()
}

/// True if the expression reads at least one column, every column is qualified by a name
/// that is not one of the subquery's relations, and it holds no subquery of its own.
fn reads_only_outer(expr: &SqlExpr, inner: &[Vec<String>]) -> bool {
    let mut outer_columns = 0;
    let verdict = visit_expressions(expr, |e| match e {
        SqlExpr::Identifier(_)
        | SqlExpr::Subquery(_)
        | SqlExpr::Exists { .. }
        | SqlExpr::InSubquery { .. } => ControlFlow::Break(()),
        SqlExpr::CompoundIdentifier(parts) => {
            let qualifier: Vec<String> = parts[..parts.len().saturating_sub(1)]
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            if inner.contains(&qualifier) {
                ControlFlow::Break(())
            } else {
                outer_columns += 1;
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    });
    verdict.is_continue() && outer_columns > 0
}

fn is_aggregate(expr: &SqlExpr) -> bool {
    matches!(expr, SqlExpr::Function(f)
        if f.name.0.last().and_then(|p| p.as_ident())
            .is_some_and(|i| AGGREGATES.contains(&i.value.to_ascii_lowercase().as_str())))
}

fn reads_only_catalog(from: &TableWithJoins) -> bool {
    std::iter::once(&from.relation)
        .chain(from.joins.iter().map(|j| &j.relation))
        .all(|relation| match relation {
            TableFactor::Table {
                name, args: None, ..
            } => is_catalog_table(name),
            _ => false,
        })
}

fn is_catalog_table(name: &ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase()))
        .collect();
    match parts.as_slice() {
        [schema, _] => schema == "pg_catalog" || schema == "information_schema",
        [_, schema, _] => schema == "pg_catalog" || schema == "information_schema",
        [table] => table.starts_with("pg_"),
        _ => false,
    }
}

fn max_of(expr: SqlExpr) -> SqlExpr {
    function_call("max", vec![expr])
}

/// `name(args...)` as a SQL expression, for the rewrites that add calls.
pub fn function_call(name: &str, args: Vec<SqlExpr>) -> SqlExpr {
    SqlExpr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::ast::visit_expressions_mut;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rewritten(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        let _ = visit_expressions_mut(&mut statements[0], |e| {
            super::rewrite(e);
            std::ops::ControlFlow::<()>::Continue(())
        });
        statements[0].to_string()
    }

    #[test]
    fn select_list_subqueries_are_protected() {
        let sql = "SELECT h.hcp_id, (SELECT count(*) FROM sales s WHERE s.hcp_id = h.hcp_id) AS n FROM hcp h";
        let protected = super::protect(sql).expect("changed");
        assert!(protected.contains("((SELECT count(*)"), "{protected}");
        let parser = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
        let parsed = parser.parse(&protected).expect("parses");
        assert!(
            parsed[0].to_string().contains("SELECT count(*) FROM sales"),
            "{}",
            parsed[0]
        );
        assert!(super::protect("SELECT 1").is_none());
        let catalog = "SELECT (SELECT c.collname FROM pg_catalog.pg_collation c WHERE c.oid = a.attcollation) FROM pg_catalog.pg_attribute a";
        assert!(super::protect(catalog).is_none());
    }

    #[test]
    fn catalog_lookups_are_aggregated() {
        let sql = "SELECT (SELECT d.adbin FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) AS x FROM pg_catalog.pg_attribute a";
        assert!(rewritten(sql).contains("(SELECT max(d.adbin) FROM pg_catalog.pg_attrdef"));
    }

    #[test]
    fn conditions_on_the_outer_row_move_into_a_case() {
        let sql = "SELECT (SELECT d.adbin FROM pg_catalog.pg_attrdef d WHERE a.atthasdef AND d.adrelid = a.attrelid) FROM pg_catalog.pg_attribute a";
        let out = rewritten(sql);
        assert!(
            out.contains("CASE WHEN (a.atthasdef) THEN (SELECT max(d.adbin) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) END"),
            "{out}"
        );
        let qualified = "SELECT (SELECT pg_catalog.pg_attrdef.adbin FROM pg_catalog.pg_attrdef WHERE pg_catalog.pg_attribute.atthasdef AND pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid) FROM pg_catalog.pg_attribute";
        assert!(
            rewritten(qualified).contains("CASE WHEN (pg_catalog.pg_attribute.atthasdef) THEN")
        );
    }

    #[test]
    fn lake_subqueries_are_left_alone() {
        let sql =
            "SELECT (SELECT s.amount FROM gtm.sales s WHERE s.hcp_id = h.hcp_id) FROM gtm.hcp h";
        assert!(!rewritten(sql).contains("max("));
        let mixed = "SELECT (SELECT s.amount FROM pg_catalog.pg_class c JOIN gtm.sales s ON true) FROM gtm.hcp";
        assert!(!rewritten(mixed).contains("max("));
        let counted = "SELECT (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.oid = 1)";
        assert!(!rewritten(counted).contains("max("));
    }
}
