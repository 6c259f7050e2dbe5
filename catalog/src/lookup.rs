//! Lookups by value in a kept table's rows: the rows a scan's `column = value` (or
//! `column IN (...)`) filter can match, found in each batch's rows as sorted by that column,
//! instead of every row going up to the filter.
//!
//! A point lookup on a kept table (a dimension of a few thousand rows) spent more time
//! comparing and filtering all the rows than on anything else of its plan. Each kept table
//! now sorts a column's rows (their positions, four bytes a row) the first time a scan looks
//! up a value in it, and later scans by that column return only the rows holding the value.
//!
//! The scan's filters stay inexact: DataFusion keeps each of them above the scan, so the
//! narrowed rows are filtered exactly as all the rows were (a policy's row filter included).
//! Narrowing may only ever leave out rows that cannot match: it is used only where the value
//! is of the column's very type, of a type whose equality is plain (integers, strings,
//! dates), and never for a NULL value.
use std::cmp::Ordering;
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array, make_comparator};
use datafusion::arrow::compute::{SortOptions, sort_to_indices};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, expr::InList};

/// An `IN` list longer than this is not looked up value by value.
const MOST_VALUES: usize = 64;

/// The sorted row positions of a kept table's columns, made on first use.
pub(crate) struct Lookups {
    /// Per column of the table: per batch, its rows' positions in the column's order; None
    /// where the column cannot be sorted.
    by_column: Vec<OnceLock<Option<Vec<UInt32Array>>>>,
}

impl Lookups {
    pub(crate) fn new(columns: usize) -> Lookups {
        Lookups {
            by_column: (0..columns).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The rows of `batches` that `filters` (the scan's, each a conjunct) can match; None
    /// where no filter narrows them, and all the rows are to be scanned.
    pub(crate) fn narrowed(
        &self,
        schema: &Schema,
        batches: &[RecordBatch],
        filters: &[Expr],
    ) -> Option<Vec<RecordBatch>> {
        let (column, values) = filters.iter().find_map(|f| looked_up(schema, f))?;
        let sorted = self
            .by_column
            .get(column)?
            .get_or_init(|| sorted_rows(batches, column))
            .as_ref()?;
        if sorted.len() != batches.len() {
            return None;
        }
        let mut narrowed = Vec::new();
        for (batch, order) in batches.iter().zip(sorted) {
            let mut rows = Vec::new();
            for value in &values {
                rows.extend(holding(batch.column(column), order, value)?);
            }
            if rows.is_empty() {
                continue;
            }
            rows.sort_unstable();
            rows.dedup();
            // Slices of the kept batch (no copy): a lookup by a key is one row.
            for (start, len) in runs(&rows) {
                narrowed.push(batch.slice(start, len));
            }
        }
        Some(narrowed)
    }
}

/// `rows` (ascending, distinct) as runs of consecutive rows: (first, length).
fn runs(rows: &[u32]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &row in rows {
        let row = row as usize;
        match runs.last_mut() {
            Some((start, len)) if *start + *len == row => *len += 1,
            _ => runs.push((row, 1)),
        }
    }
    runs
}

/// The column and the values a filter looks up: `column = value`, `value = column` or
/// `column IN (values)`, each value of the column's own type and not NULL.
fn looked_up(schema: &Schema, filter: &Expr) -> Option<(usize, Vec<ScalarValue>)> {
    let (column, values) = match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                (c, vec![v.clone()])
            }
            _ => return None,
        },
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if list.len() <= MOST_VALUES => {
            let Expr::Column(c) = expr.as_ref() else {
                return None;
            };
            let values = list
                .iter()
                .map(|item| match item {
                    Expr::Literal(v, _) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            (c, values)
        }
        _ => return None,
    };
    let index = schema.index_of(&column.name).ok()?;
    let data_type = schema.field(index).data_type();
    let plain = data_type.is_integer()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Date32
        );
    let fits = values
        .iter()
        .all(|v| !v.is_null() && &v.data_type() == data_type);
    (plain && fits).then_some((index, values))
}

/// Each batch's row positions in the order of `column`'s values (NULLs first).
fn sorted_rows(batches: &[RecordBatch], column: usize) -> Option<Vec<UInt32Array>> {
    batches
        .iter()
        .map(|batch| sort_to_indices(batch.column(column), None, None).ok())
        .collect()
}

/// The positions of the rows of `array` (sorted as `order` says) that hold `value`.
fn holding<'a>(
    array: &dyn Array,
    order: &'a UInt32Array,
    value: &ScalarValue,
) -> Option<impl Iterator<Item = u32> + 'a> {
    let value = value.to_array().ok()?;
    // The order `sort_to_indices` sorted by: ascending, NULLs first.
    let compare = make_comparator(array, value.as_ref(), SortOptions::default()).ok()?;
    let positions = order.values();
    let row = |at: &u32| usize::try_from(*at).unwrap_or(usize::MAX);
    let first = positions.partition_point(|at| compare(row(at), 0) == Ordering::Less);
    let end = positions.partition_point(|at| compare(row(at), 0) != Ordering::Greater);
    Some(positions[first..end.max(first)].iter().copied())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::array::{Int64Array, StringViewArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::logical_expr::{col, lit};

    fn table() -> (Arc<Schema>, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("country", DataType::Utf8View, true),
        ]));
        let batch = |ids: Vec<Option<i64>>, countries: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringViewArray::from(countries)),
                ],
            )
            .expect("batch")
        };
        let batches = vec![
            batch(
                vec![Some(3), None, Some(1), Some(2), Some(3)],
                vec![Some("DE"), Some("FR"), None, Some("DE"), Some("US")],
            ),
            batch(vec![Some(7), Some(3)], vec![Some("CH"), Some("DE")]),
        ];
        (schema, batches)
    }

    /// The rows as (id, country), in order.
    fn rows(batches: &[RecordBatch]) -> Vec<(Option<i64>, Option<String>)> {
        let mut out = Vec::new();
        for batch in batches {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let countries = batch.column(1).as_any().downcast_ref::<StringViewArray>();
            for i in 0..batch.num_rows() {
                let country = countries.unwrap();
                out.push((
                    ids.is_valid(i).then(|| ids.value(i)),
                    country.is_valid(i).then(|| country.value(i).to_string()),
                ));
            }
        }
        out
    }

    /// What filtering every row by `keep` gives, for comparison.
    fn filtered(
        batches: &[RecordBatch],
        keep: impl Fn(&(Option<i64>, Option<String>)) -> bool,
    ) -> Vec<(Option<i64>, Option<String>)> {
        rows(batches).into_iter().filter(keep).collect()
    }

    #[test]
    fn a_lookup_returns_the_rows_holding_the_value_in_their_order() {
        let (schema, batches) = table();
        let lookups = Lookups::new(2);
        let by_id = lookups
            .narrowed(&schema, &batches, &[col("id").eq(lit(3i64))])
            .expect("narrowed");
        assert_eq!(rows(&by_id), filtered(&batches, |r| r.0 == Some(3)));
        let de = ScalarValue::Utf8View(Some("DE".into()));
        let by_country = lookups
            .narrowed(&schema, &batches, &[lit(de).eq(col("country"))])
            .expect("narrowed");
        assert_eq!(
            rows(&by_country),
            filtered(&batches, |r| r.1.as_deref() == Some("DE"))
        );
        let listed = col("id").in_list(vec![lit(7i64), lit(1i64), lit(7i64), lit(9i64)], false);
        let by_list = lookups
            .narrowed(&schema, &batches, &[listed])
            .expect("narrowed");
        assert_eq!(
            rows(&by_list),
            filtered(&batches, |r| matches!(r.0, Some(1 | 7)))
        );
        let none = lookups
            .narrowed(&schema, &batches, &[col("id").eq(lit(4i64))])
            .expect("narrowed");
        assert!(none.is_empty());
    }

    #[test]
    fn only_plain_lookups_of_the_columns_own_type_narrow() {
        let (schema, batches) = table();
        let lookups = Lookups::new(2);
        for filter in [
            col("id").eq(lit(3i32)),                              // another type
            col("id").eq(lit(ScalarValue::Int64(None))),          // NULL
            col("id").gt(lit(3i64)),                              // not equality
            col("id").in_list(vec![lit(3i64)], true),             // NOT IN
            col("id").in_list(vec![lit(3i64), col("id")], false), // not only values
            col("country").eq(lit("DE")),                         // Utf8, the column is a view
            col("missing").eq(lit(3i64)),
        ] {
            assert!(
                lookups
                    .narrowed(&schema, &batches, std::slice::from_ref(&filter))
                    .is_none(),
                "{filter}"
            );
        }
        // The first filter that narrows is used; the others stay above the scan.
        let narrowed = lookups
            .narrowed(
                &schema,
                &batches,
                &[col("id").gt(lit(0i64)), col("id").eq(lit(2i64))],
            )
            .expect("narrowed");
        assert_eq!(rows(&narrowed), filtered(&batches, |r| r.0 == Some(2)));
    }
}
