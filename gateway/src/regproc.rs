//! `'schema.name'::regproc` literals. datafusion-pg-catalog's pg_type holds `typinput`,
//! `typreceive` and the other regproc columns as function names (text), so pgjdbc's
//! `typinput = 'pg_catalog.array_in'::regproc` must compare names: the literal becomes the
//! function's name, as `regproc` prints it (without the always-visible pg_catalog schema).
//!
//! datafusion-pg-catalog's parser turns `'name'::regproc` into `(SELECT oid FROM
//! pg_catalog.pg_proc WHERE proname = 'name')` before Lakegate sees the statement; that exact
//! shape is recognised too.
use datafusion::sql::sqlparser::ast::{BinaryOperator, DataType, Expr as SqlExpr, SetExpr, Value};

pub fn rewrite(expr: &mut SqlExpr) {
    if let Some(name) = proc_lookup(expr) {
        *expr = SqlExpr::value(Value::SingleQuotedString(unqualified(&name)));
        return;
    }
    let SqlExpr::Cast {
        expr: inner,
        data_type: DataType::Custom(type_name, modifiers),
        ..
    } = expr
    else {
        return;
    };
    let is_regproc = modifiers.is_empty()
        && type_name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("regproc"));
    if !is_regproc {
        return;
    }
    let SqlExpr::Value(value) = inner.as_ref() else {
        return;
    };
    let Value::SingleQuotedString(name) = &value.value else {
        return;
    };
    *expr = SqlExpr::value(Value::SingleQuotedString(unqualified(name)));
}

fn unqualified(name: &str) -> String {
    name.strip_prefix("pg_catalog.").unwrap_or(name).to_string()
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
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn the_catalog_parsers_lookup_becomes_a_name() {
        let parser = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
        let mut statements = parser
            .parse("SELECT typinput = 'pg_catalog.array_in'::regproc FROM pg_catalog.pg_type")
            .expect("parses");
        let _ = visit_expressions_mut(&mut statements[0], |e| {
            super::rewrite(e);
            std::ops::ControlFlow::<()>::Continue(())
        });
        assert_eq!(
            statements[0].to_string(),
            "SELECT typinput = 'array_in' FROM pg_catalog.pg_type"
        );
    }

    #[test]
    fn regproc_literals_become_names() {
        let sql = "SELECT typinput = 'pg_catalog.array_in'::regproc, x::regproc FROM pg_type";
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        let _ = visit_expressions_mut(&mut statements[0], |e| {
            super::rewrite(e);
            std::ops::ControlFlow::<()>::Continue(())
        });
        assert_eq!(
            statements[0].to_string(),
            "SELECT typinput = 'array_in', x::regproc FROM pg_type"
        );
    }
}
