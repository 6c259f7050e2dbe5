//! Values written into a query's text, taken out as parameters so that one plan serves the
//! query sent again with other values (`WHERE hcp_id = 17`, then `= 18`): BI tools and scripts
//! write their filter values into the text, through either protocol, and a text seen once
//! gains nothing from the plan cache.
//!
//! Only the plainest values are taken out: an integer or a quoted string compared with a
//! column in a WHERE clause (`=`, `<>`, `<`, `<=`, `>`, `>=`, `IN (...)`, `BETWEEN`). The plan
//! made with placeholders is used only where each value has the type its placeholder was
//! planned as (a string for a text column; an integer, exactly representable, for an integer
//! column). There the plan means what the plan with the literal means; anything else (a
//! string compared with a number, a value out of the column's range) is planned from the text
//! as written.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Query, SetExpr, Statement, TableFactor, UnaryOperator, Value,
    visit_expressions,
};

/// A query with its literal values replaced by `$1`, `$2`, ...: the statement to plan, its
/// text (the cache's key) and the values, in placeholder order.
#[derive(Debug)]
pub struct Parameterized {
    /// Shared with the shape it was found by (`shapes`), if it was.
    pub statement: Arc<Statement>,
    pub text: String,
    pub values: Vec<ScalarValue>,
}

impl Parameterized {
    pub fn params(&self) -> ParamValues {
        ParamValues::List(
            self.values
                .iter()
                .map(|v| ScalarAndMetadata::new(v.clone(), None))
                .collect(),
        )
    }

    /// Whether `plan` (planned from `self.statement`, or from another text of the same shape)
    /// types every placeholder as its value's own type, so that binding the values gives the
    /// plan the literals would have given.
    pub fn fits(&self, plan: &LogicalPlan) -> bool {
        plan.get_parameter_types()
            .is_ok_and(|types| self.fits_types(&types))
    }

    /// `fits`, given the plan's placeholder types (a kept plan keeps them: `plan_cache`).
    pub fn fits_types(&self, types: &PlaceholderTypes) -> bool {
        types.len() == self.values.len()
            && self.values.iter().enumerate().all(|(i, value)| {
                match types.get(&format!("${}", i + 1)) {
                    Some(Some(planned)) => fits(value, planned),
                    _ => false,
                }
            })
    }
}

/// A plan's placeholders (`$1`, ...) and the types it planned them as.
pub type PlaceholderTypes = HashMap<String, Option<DataType>>;

fn fits(value: &ScalarValue, planned: &DataType) -> bool {
    match value {
        ScalarValue::Utf8(Some(_)) => matches!(
            planned,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ),
        ScalarValue::Int64(Some(_)) => {
            planned.is_integer()
                && value
                    .cast_to(planned)
                    .and_then(|v| v.cast_to(&DataType::Int64))
                    .is_ok_and(|back| &back == value)
        }
        _ => false,
    }
}

/// `statement` with its WHERE clauses' literal values taken out, or None when it has none (or
/// is not a query, or has placeholders of its own).
pub fn parameterize(statement: &Statement) -> Option<Parameterized> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let has_placeholder = visit_expressions(statement, |e| match e {
        Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if has_placeholder.is_break() {
        return None;
    }
    let mut query = query.clone();
    let mut values = Vec::new();
    in_query(&mut query, &mut values);
    if values.is_empty() {
        return None;
    }
    let statement = Statement::Query(query);
    Some(Parameterized {
        text: statement.to_string(),
        statement: Arc::new(statement),
        values,
    })
}

fn in_query(query: &mut Query, values: &mut Vec<ScalarValue>) {
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            in_query(&mut cte.query, values);
        }
    }
    in_set_expr(&mut query.body, values);
}

fn in_set_expr(body: &mut SetExpr, values: &mut Vec<ScalarValue>) {
    match body {
        SetExpr::Select(select) => {
            for table in &mut select.from {
                in_table(&mut table.relation, values);
                for join in &mut table.joins {
                    in_table(&mut join.relation, values);
                }
            }
            if let Some(selection) = &mut select.selection {
                in_predicate(selection, values);
            }
        }
        SetExpr::Query(query) => in_query(query, values),
        SetExpr::SetOperation { left, right, .. } => {
            in_set_expr(left, values);
            in_set_expr(right, values);
        }
        _ => {}
    }
}

fn in_table(table: &mut TableFactor, values: &mut Vec<ScalarValue>) {
    if let TableFactor::Derived { subquery, .. } = table {
        in_query(subquery, values);
    }
}

fn in_predicate(expr: &mut Expr, values: &mut Vec<ScalarValue>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And | BinaryOperator::Or,
            right,
        } => {
            in_predicate(left, values);
            in_predicate(right, values);
        }
        Expr::BinaryOp { left, op, right } if is_comparison(op) => {
            if is_column(left) {
                take(right, values);
            } else if is_column(right) {
                take(left, values);
            }
        }
        Expr::Nested(inner)
        | Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr: inner,
        } => in_predicate(inner, values),
        Expr::InList { expr, list, .. } if is_column(expr) => {
            for item in list {
                take(item, values);
            }
        }
        Expr::Between {
            expr, low, high, ..
        } if is_column(expr) => {
            take(low, values);
            take(high, values);
        }
        Expr::InSubquery { subquery, .. } | Expr::Exists { subquery, .. } => {
            in_query(subquery, values)
        }
        _ => {}
    }
}

fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

fn is_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

/// Replaces `expr` with the next placeholder if it is an integer or a quoted string.
fn take(expr: &mut Expr, values: &mut Vec<ScalarValue>) {
    let Expr::Value(literal) = expr else {
        return;
    };
    let value = match &literal.value {
        Value::Number(n, false) if n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse::<i64>().ok().map(|n| ScalarValue::Int64(Some(n)))
        }
        Value::SingleQuotedString(s) => Some(ScalarValue::Utf8(Some(s.clone()))),
        _ => None,
    };
    if let Some(value) = value {
        values.push(value);
        literal.value = Value::Placeholder(format!("${}", values.len()));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    /// One statement of PostgreSQL's dialect (also for the handler's tests).
    pub(crate) fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .remove(0)
    }

    fn taken(sql: &str) -> Option<(String, Vec<ScalarValue>)> {
        parameterize(&parse(sql)).map(|p| (p.text, p.values))
    }

    #[test]
    fn values_compared_with_columns_in_where_clauses_are_taken_out() {
        let (text, values) =
            taken("SELECT * FROM hcp WHERE hcp_id = 17 AND 'DE' = h.country").expect("taken");
        assert_eq!(
            text,
            "SELECT * FROM hcp WHERE hcp_id = $1 AND $2 = h.country"
        );
        assert_eq!(
            values,
            vec![
                ScalarValue::Int64(Some(17)),
                ScalarValue::Utf8(Some("DE".into()))
            ]
        );
        // the same shape with other values has the same text
        assert_eq!(
            taken("SELECT * FROM hcp WHERE hcp_id = 18 AND 'FR' = h.country")
                .expect("taken")
                .0,
            text
        );
        let (text, values) = taken(
            "WITH x AS (SELECT id FROM t WHERE a IN ('p', 'q')) SELECT * FROM (SELECT * FROM x \
             WHERE id BETWEEN 1 AND 9) d WHERE NOT (id <> 3) AND EXISTS (SELECT 1 FROM u WHERE u.id > 0)",
        )
        .expect("taken");
        assert_eq!(values.len(), 6, "{text}");
        assert!(!text.contains('\'') && !text.contains(" 9"), "{text}");
    }

    #[test]
    fn other_values_stay_in_the_text() {
        for sql in [
            "SELECT 1",
            "SELECT 'x', a + 1 FROM t GROUP BY 2 ORDER BY 1 LIMIT 10",
            "SELECT * FROM t WHERE a = 1.5",
            "SELECT * FROM t WHERE a = -1",
            "SELECT * FROM t WHERE a = DATE '2024-01-01'",
            "SELECT * FROM t WHERE a LIKE 'x%'",
            "SELECT * FROM t WHERE a + 1 = 2",
            "SELECT * FROM t WHERE 1 = 1",
            "SELECT * FROM t WHERE f(a) = 'x'",
            "SELECT * FROM t WHERE a = E'x'",
            "SELECT * FROM t WHERE a = 99999999999999999999",
            // a query with its own placeholders is left as it is
            "SELECT * FROM t WHERE a = $1 AND b = 2",
        ] {
            assert!(taken(sql).is_none(), "{sql}");
        }
        assert!(parameterize(&parse("EXPLAIN SELECT * FROM t WHERE a = 1")).is_none());
    }

    #[test]
    fn a_value_fits_only_its_own_kind_of_type() {
        let int = ScalarValue::Int64(Some(7));
        let big = ScalarValue::Int64(Some(1 << 40));
        let text = ScalarValue::Utf8(Some("7".into()));
        assert!(fits(&int, &DataType::Int64));
        assert!(fits(&int, &DataType::Int32));
        assert!(fits(&int, &DataType::UInt16));
        assert!(!fits(&big, &DataType::Int32), "out of range");
        assert!(!fits(&ScalarValue::Int64(Some(-1)), &DataType::UInt64));
        assert!(
            !fits(&int, &DataType::Utf8),
            "an integer compared with text"
        );
        assert!(!fits(&int, &DataType::Float64));
        assert!(!fits(&int, &DataType::Decimal128(12, 2)));
        assert!(fits(&text, &DataType::Utf8View));
        assert!(
            !fits(&text, &DataType::Int64),
            "a string compared with a number"
        );
        assert!(!fits(&text, &DataType::Date32));
    }
}
