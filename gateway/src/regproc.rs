//! `'schema.name'::regproc` literals and the regproc columns of pg_type.
//!
//! In PostgreSQL `typinput`, `typreceive` and the other regproc columns are function oids, and
//! clients compare them as such: pgjdbc `typinput = 'pg_catalog.array_in'::regproc`, Npgsql
//! `JOIN pg_proc ON pg_proc.oid = a.typreceive`. datafusion-pg-catalog keeps those columns as
//! function names and turns the literal into `(SELECT oid FROM pg_catalog.pg_proc WHERE
//! proname = 'pg_catalog.array_in')`, which never matches a (schema-less) proname. Lakegate
//! overlays pg_type with oid columns (pg_compat) and, here, looks literals up by their bare
//! name; overloaded names resolve to their lowest oid.
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as SqlExpr, SetExpr, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// pg_type's regproc columns that Lakegate serves as oids (see pg_compat's pg_type view).
pub const OID_COLUMNS: &[&str] = &["typinput", "typoutput", "typreceive", "typsend"];

pub fn rewrite(expr: &mut SqlExpr) {
    let Some(name) = proc_lookup(expr) else {
        return;
    };
    let name = name
        .strip_prefix("pg_catalog.")
        .unwrap_or(&name)
        .replace('\'', "''");
    let lookup = format!("(SELECT min(oid) FROM pg_catalog.pg_proc WHERE proname = '{name}')");
    if let Ok(parsed) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&lookup)
        .and_then(|mut p| p.parse_expr())
    {
        *expr = parsed;
    }
}

/// The name in datafusion-pg-catalog's regproc lookup subquery.
fn proc_lookup(expr: &SqlExpr) -> Option<String> {
    let SqlExpr::Subquery(query) = expr else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if select.from.len() != 1
        || select.from[0].relation.to_string() != "pg_catalog.pg_proc"
        || select.projection.len() != 1
        || select.projection[0].to_string() != "oid"
    {
        return None;
    }
    match &select.selection {
        Some(SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        }) if left.to_string() == "proname" => match right.as_ref() {
            SqlExpr::Value(v) => match &v.value {
                Value::SingleQuotedString(name) => Some(name.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::ast::visit_expressions_mut;

    #[test]
    fn the_catalog_parsers_lookup_uses_the_bare_name() {
        let parser = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
        let mut statements = parser
            .parse("SELECT typname FROM pg_catalog.pg_type WHERE typinput = 'pg_catalog.array_in'::regproc")
            .expect("parses");
        let _ = visit_expressions_mut(&mut statements[0], |e| {
            super::rewrite(e);
            std::ops::ControlFlow::<()>::Continue(())
        });
        assert!(
            statements[0]
                .to_string()
                .contains("(SELECT min(oid) FROM pg_catalog.pg_proc WHERE proname = 'array_in')"),
            "{}",
            statements[0]
        );
    }
}
