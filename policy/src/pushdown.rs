//! Predicates of the query that may run below the policy barrier. The barrier keeps a user's
//! predicates above the row filter so that none can fail (`1/0`) or otherwise tell anything
//! about rows the filter hides. A predicate that cannot fail, on columns that pass the barrier
//! unmasked, tells nothing either: `WHERE sale_date = DATE '2024-01-15'` evaluated on a hidden
//! row just yields false or true, and the row filter removes it all the same. Moving such
//! predicates under the barrier lets the scan prune partitions and files from them.
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Extension, Filter, LogicalPlan, Operator, Projection,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use crate::rewrite::PolicyBarrier;

/// Whether evaluating `expr` on any row can neither fail nor depend on more than comparisons of
/// column values with each other and with constants. A prepared statement's parameter is a
/// constant: its value is bound before the query runs, the same for every row.
pub fn is_error_free(expr: &Expr) -> bool {
    match expr {
        Expr::Column(_) | Expr::Literal(..) | Expr::Placeholder(_) => true,
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            matches!(
                op,
                Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
                    | Operator::And
                    | Operator::Or
                    | Operator::IsDistinctFrom
                    | Operator::IsNotDistinctFrom
            ) && is_error_free(left)
                && is_error_free(right)
        }
        Expr::Not(e)
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotTrue(e)
        | Expr::IsNotFalse(e)
        | Expr::IsUnknown(e)
        | Expr::IsNotUnknown(e) => is_error_free(e),
        Expr::Between(b) => {
            is_error_free(&b.expr) && is_error_free(&b.low) && is_error_free(&b.high)
        }
        Expr::InList(list) => is_error_free(&list.expr) && list.list.iter().all(is_error_free),
        // A constant pattern that is bad fails for every row alike; a pattern taken from the
        // data (`'x' LIKE col`) could fail on one row only.
        Expr::Like(like) | Expr::SimilarTo(like) => {
            is_error_free(&like.expr) && is_constant(&like.pattern)
        }
        // A constant cast fails for every row alike, or for none.
        Expr::Cast(c) => is_value(&c.expr),
        Expr::TryCast(c) => is_value(&c.expr),
        _ => false,
    }
}

fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Cast(c) => is_value(&c.expr),
        _ => is_value(expr),
    }
}

fn is_value(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(..) | Expr::Placeholder(_))
}

/// Moves error-free predicates on unmasked columns from a Filter right above a policy barrier
/// into the barrier, into its row filter's Filter after the row filter (or a Filter of their
/// own where the table has none); DataFusion's own filter pushdown, run again after this rule
/// (`optimizer_rules`), then takes them to the scan.
#[derive(Debug, Default)]
pub struct PushSafePredicates;

impl OptimizerRule for PushSafePredicates {
    fn name(&self) -> &str {
        "lakegate_push_safe_predicates"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        match plan {
            // A sealed barrier's predicates are moved when it is opened (`unseal`).
            LogicalPlan::Filter(filter) if open_barrier(&filter.input) => {
                move_safe_predicates(filter, &Ok)
            }
            plan => Ok(Transformed::no(plan)),
        }
    }
}

fn open_barrier(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Extension(ext)
        if ext.node.as_any().downcast_ref::<PolicyBarrier>().is_some_and(|b| !b.is_sealed()))
}

/// Moves the safe predicates of `filter`, right above a policy barrier, into the barrier (which
/// comes out open), then hands the barrier's new plan to `push` (which takes them to the scan,
/// or leaves that to the optimizer's next rule).
pub(crate) fn move_safe_predicates(
    filter: Filter,
    push: &dyn Fn(LogicalPlan) -> Result<LogicalPlan>,
) -> Result<Transformed<LogicalPlan>> {
    let Some((barrier, projection)) = barrier_projection(&filter.input) else {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    };
    let unmasked = unmasked_columns(projection);
    let mut moved = Vec::new();
    let mut kept = Vec::new();
    for predicate in split_conjunction_owned(filter.predicate.clone()) {
        let columns = predicate.column_refs();
        let movable = !columns.is_empty()
            && columns.iter().all(|c| unmasked.contains_key(&c.name))
            && is_error_free(&predicate);
        if movable {
            moved.push(raw_predicate(predicate, &unmasked)?);
        } else {
            kept.push(predicate);
        }
    }
    let Some(moved) = conjunction(moved) else {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    };
    // Beside a row filter straight beneath, in one Filter after it, as DataFusion's filter
    // pushdown would merge them a pass later.
    let inner = match projection.input.as_ref() {
        LogicalPlan::Filter(row) => {
            Filter::try_new(row.predicate.clone().and(moved), row.input.clone())?
        }
        _ => Filter::try_new(moved, projection.input.clone())?,
    };
    let projection = Projection::try_new_with_schema(
        projection.expr.clone(),
        Arc::new(LogicalPlan::Filter(inner)),
        projection.schema.clone(),
    )?;
    let barrier = LogicalPlan::Extension(Extension {
        node: Arc::new(barrier.with_input(push(LogicalPlan::Projection(projection))?)),
    });
    Ok(Transformed::yes(match conjunction(kept) {
        Some(kept) => LogicalPlan::Filter(Filter::try_new(kept, Arc::new(barrier))?),
        None => barrier,
    }))
}

/// The barrier's column name → the raw column it passes through unmasked: a plain column of
/// the barrier's projection that comes from the table's scan unchanged (`is_raw`). Where
/// sealing took a mask two columns share out as a common subexpression, the barrier's
/// projection holds plain columns of a lower projection that are masks all the same.
pub(crate) fn unmasked_columns(projection: &Projection) -> HashMap<String, Expr> {
    projection
        .expr
        .iter()
        .zip(projection.schema.fields())
        .filter_map(|(expr, field)| match expr.clone().unalias() {
            Expr::Column(column) if is_raw(&column, &projection.input) => {
                Some((field.name().clone(), Expr::Column(column)))
            }
            _ => None,
        })
        .collect()
}

/// Whether `column` of `plan`'s output is a column of the scan beneath, through filters and
/// projections that pass it on as a plain column only.
fn is_raw(column: &Column, plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => scan.projected_schema.has_column(column),
        LogicalPlan::Filter(filter) => is_raw(column, &filter.input),
        LogicalPlan::Projection(projection) => {
            let Some(index) = projection.schema.maybe_index_of_column(column) else {
                return false;
            };
            match projection
                .expr
                .get(index)
                .map(|expr| expr.clone().unalias())
            {
                Some(Expr::Column(inner)) => is_raw(&inner, &projection.input),
                _ => false,
            }
        }
        _ => false,
    }
}

fn barrier_projection(plan: &LogicalPlan) -> Option<(&PolicyBarrier, &Projection)> {
    let LogicalPlan::Extension(ext) = plan else {
        return None;
    };
    let barrier = ext.node.as_any().downcast_ref::<PolicyBarrier>()?;
    match barrier.input() {
        LogicalPlan::Projection(projection) => Some((barrier, projection)),
        _ => None,
    }
}

/// The predicate over the barrier's columns, rewritten over the raw columns beneath.
fn raw_predicate(predicate: Expr, unmasked: &HashMap<String, Expr>) -> Result<Expr> {
    predicate
        .transform_up(|e| match &e {
            Expr::Column(Column { name, .. }) => match unmasked.get(name) {
                Some(raw) => Ok(Transformed::yes(raw.clone())),
                None => Ok(Transformed::no(e)),
            },
            _ => Ok(Transformed::no(e)),
        })
        .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn only_predicates_that_cannot_fail_are_error_free() {
        let date = col("sale_date");
        assert!(is_error_free(&date.clone().eq(lit("2024-01-15"))));
        assert!(is_error_free(
            &col("country").in_list(vec![lit("DE"), lit("FR")], false)
        ));
        assert!(is_error_free(
            &col("units")
                .between(lit(2), lit(5))
                .and(col("units").is_not_null())
        ));
        // arithmetic can fail (division by zero, overflow), casts of values can fail
        assert!(!is_error_free(
            &(lit(1) / (col("units") - lit(3))).gt(lit(0))
        ));
        assert!(!is_error_free(
            &datafusion::logical_expr::cast(
                col("name"),
                datafusion::arrow::datatypes::DataType::Int32
            )
            .eq(lit(1))
        ));
        assert!(!is_error_free(&(col("units") + lit(1)).eq(lit(2))));
        assert!(is_error_free(&col("specialty").like(lit("Card%"))));
        // a parameter is a value, bound before the query runs
        let param = || datafusion::logical_expr::placeholder("$1");
        assert!(is_error_free(&col("country").eq(param())));
        assert!(is_error_free(&col("specialty").like(param())));
        assert!(!is_error_free(
            &(lit(1) / (col("units") - param())).gt(lit(0))
        ));
        assert!(!is_error_free(&lit("Cardiology").like(col("specialty"))));
    }
}
