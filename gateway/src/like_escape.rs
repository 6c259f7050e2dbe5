//! `LIKE pattern ESCAPE 'c'` with an escape character other than backslash, which DataFusion
//! refuses and SQLAlchemy sends on connect (`nspname NOT LIKE 'pg/_%' ESCAPE '/'`). The
//! pattern is translated to backslash escapes by a function, so it also works when the
//! pattern is a bound parameter or an expression.
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value};

const NAME: &str = "lakegate_like_escape";

/// The pattern written with escape character `escape`, rewritten to use backslash.
pub fn translate(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            // PostgreSQL: the escape character before any character makes it literal; at the
            // end of the pattern it is an error there, and matches nothing here.
            match chars.next() {
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push_str("\\\\"),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

pub fn udf() -> ScalarUDF {
    create_udf(
        NAME,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let text = |i: usize| -> DfResult<StringArray> {
                let array = cast(&arrays[i], &DataType::Utf8)?;
                array
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .ok_or_else(|| DataFusionError::Execution("LIKE pattern must be text".into()))
            };
            let (patterns, escapes) = (text(0)?, text(1)?);
            let out: StringArray = (0..patterns.len())
                .map(|i| {
                    if patterns.is_null(i) || escapes.is_null(i) {
                        return None;
                    }
                    let escape = escapes.value(i);
                    Some(match escape.chars().next() {
                        Some(c) => translate(patterns.value(i), c),
                        // ESCAPE '' turns escaping off: every backslash is literal.
                        None => patterns.value(i).replace('\\', "\\\\"),
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// Rewrites `LIKE`/`ILIKE` with a non-backslash `ESCAPE` in place.
pub fn rewrite(expr: &mut SqlExpr) {
    let (pattern, escape_char) = match expr {
        SqlExpr::Like {
            pattern,
            escape_char,
            ..
        }
        | SqlExpr::ILike {
            pattern,
            escape_char,
            ..
        } => (pattern, escape_char),
        _ => return,
    };
    let Some(escape) = escape_char.as_ref().map(|v| v.value.clone()) else {
        return;
    };
    if matches!(&escape, Value::SingleQuotedString(s) if s == "\\") {
        return;
    }
    let call = crate::scalar_subquery::function_call(
        NAME,
        vec![(**pattern).clone(), SqlExpr::value(escape)],
    );
    **pattern = call;
    *escape_char = None;
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn escapes_become_backslashes() {
        assert_eq!(translate("pg/_%", '/'), "pg\\_%");
        assert_eq!(translate("a//b", '/'), "a\\/b");
        assert_eq!(translate("a\\b", '/'), "a\\\\b");
        assert_eq!(translate("100#%", '#'), "100\\%");
    }
}
