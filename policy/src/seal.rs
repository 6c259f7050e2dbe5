//! Sealed policy barriers. Optimizing a query walks every node of its plan with every rule,
//! pass after pass; a barrier's enforced plan (masks, row filter, scan) is the same for every
//! query that names the same columns of its table. So a policy view analyzes and optimizes its
//! enforced plan once per set of columns (`seal`), and the barrier holding it shows the
//! session's analyzer and optimizer no input. Once the query's plan is optimized, `unseal`
//! opens every barrier and moves the query's safe predicates in, as the optimizer would have,
//! before the gateway reads the plan's tables or plans it physically.
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use datafusion::catalog::TableProvider;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{
    Expr, Extension, Filter, Limit, LogicalPlan, Projection, Volatility,
};
use datafusion::optimizer::optimize_projections::OptimizeProjections;
use datafusion::optimizer::push_down_filter::PushDownFilter;
use datafusion::optimizer::{
    Analyzer, ApplyOrder, Optimizer, OptimizerConfig, OptimizerContext, OptimizerRule,
};

use crate::rewrite::{PolicyBarrier, PolicyView, optimizer_rules};

/// Whether an enforced plan can be analyzed and optimized once, apart from the queries that
/// read it, and kept: projections and filters over the view's own raw table alone, with no
/// subquery, parameter or function whose result may change between runs (`now()`). Anything
/// else (a view's body, a lookup table in a row filter) stays open, as every plan did before.
pub(crate) fn seals(enforced: &LogicalPlan, raw: &Arc<dyn TableProvider>) -> bool {
    let plain_node = |node: &LogicalPlan| match node {
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) => true,
        LogicalPlan::TableScan(scan) => {
            scan.source.get_logical_plan().is_none()
                && source_as_provider(&scan.source).is_ok_and(|p| Arc::ptr_eq(&p, raw))
        }
        _ => false,
    };
    // (A subquery is an expression that is not plain, so its plan needs no walk.)
    let other = enforced.exists(|node| {
        Ok(!plain_node(node)
            || node
                .expressions()
                .iter()
                .any(|expr| expr.exists(|e| Ok(!plain_expr(e))).unwrap_or(true)))
    });
    !other.unwrap_or(true)
}

fn plain_expr(expr: &Expr) -> bool {
    match expr {
        Expr::ScalarFunction(f) => f.func.signature().volatility == Volatility::Immutable,
        Expr::Column(_)
        | Expr::Literal(..)
        | Expr::Alias(_)
        | Expr::BinaryExpr(_)
        | Expr::Like(_)
        | Expr::SimilarTo(_)
        | Expr::Not(_)
        | Expr::IsNotNull(_)
        | Expr::IsNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Negative(_)
        | Expr::Between(_)
        | Expr::Case(_)
        | Expr::Cast(_)
        | Expr::TryCast(_)
        | Expr::InList(_) => true,
        _ => false,
    }
}

/// An enforced plan analyzed and optimized on its own, with the session's own rules
/// (`optimizer_rules`) and settings, as they would have in the query's plan; less those that
/// only rewrite what a sealable plan cannot hold (`NOT_FOR_PROJECTIONS_AND_FILTERS`).
pub(crate) fn seal(enforced: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
    // Made once: a session seals a plan per table and set of columns, often at its first query.
    static ANALYZER: LazyLock<Analyzer> = LazyLock::new(Analyzer::new);
    static OPTIMIZER: LazyLock<Optimizer> = LazyLock::new(|| {
        Optimizer::with_rules(
            optimizer_rules()
                .into_iter()
                .filter(|rule| !NOT_FOR_PROJECTIONS_AND_FILTERS.contains(&rule.name()))
                .collect(),
        )
    });
    let analyzed = ANALYZER.execute_and_check(enforced, config, |_, _| {})?;
    let context = OptimizerContext::new_with_config_options(Arc::new(config.clone()));
    OPTIMIZER.optimize(analyzed, &context, |_, _| {})
}

/// Optimizer rules that leave a plan of projections and filters over a scan, with no subquery,
/// as it is: each rewrites only joins, subqueries, aggregates, unions, sorts or limits, or (the
/// gateway's) barriers. Every rule walks the whole plan in every pass, so leaving them out
/// takes a quarter off sealing. A rule DataFusion renames or adds is kept: a seal then costs
/// more, and gives the same plan.
const NOT_FOR_PROJECTIONS_AND_FILTERS: [&str; 20] = [
    "rewrite_set_comparison",
    "optimize_unions",
    "eliminate_nested_union",
    "unions_to_filter",
    "replace_distinct_aggregate",
    "eliminate_join",
    "decorrelate_predicate_subquery",
    "scalar_subquery_to_join",
    "decorrelate_lateral_join",
    "extract_equijoin_predicate",
    "eliminate_duplicated_expr",
    "eliminate_cross_join",
    "eliminate_limit",
    "filter_null_join_keys",
    "eliminate_outer_join",
    "push_down_limit",
    "single_distinct_aggregation_to_group_by",
    "eliminate_group_by_constant",
    "lakegate_push_safe_predicates",
    "lakegate_narrow_sealed_barriers",
];

/// A sealed plan taking only the columns at `positions` of its projection, its scan reading
/// only what they and the filters beneath need: what sealing the narrower set would give, for
/// one run of DataFusion's projection pruning rather than a seal (a projection's expressions
/// and the filters are optimized each on its own, so the rest of a seal would leave them as
/// they are). None where the sealed plan is not a projection over filters over a scan (common
/// subexpressions taken out, say): that set is sealed on its own.
pub(crate) fn narrow(
    sealed: &LogicalPlan,
    positions: &[usize],
    config: &ConfigOptions,
) -> Option<Result<LogicalPlan>> {
    static PRUNING: LazyLock<Optimizer> =
        LazyLock::new(|| Optimizer::with_rules(vec![Arc::new(OptimizeProjections::new())]));
    let LogicalPlan::Projection(projection) = sealed else {
        return None;
    };
    let mut node = projection.input.as_ref();
    while let LogicalPlan::Filter(filter) = node {
        node = filter.input.as_ref();
    }
    if !matches!(node, LogicalPlan::TableScan(_)) {
        return None;
    }
    let exprs: Vec<Expr> = positions
        .iter()
        .map(|i| projection.expr.get(*i).cloned())
        .collect::<Option<_>>()?;
    let context = OptimizerContext::new_with_config_options(Arc::new(config.clone()));
    Some(
        Projection::try_new(exprs, projection.input.clone()).and_then(|narrower| {
            PRUNING.optimize(LogicalPlan::Projection(narrower), &context, |_, _| {})
        }),
    )
}

/// Opens the sealed barriers of an optimized plan, moving into each the safe predicates of a
/// Filter right above it (`PushSafePredicates`) and taking them to its scan with DataFusion's
/// filter pushdown, run on the barrier's few nodes alone. What the plan then holds is what the
/// optimizer made of it when barriers were not sealed. Plans without a sealed barrier are
/// returned as they are. Run it on an optimized plan before reading its tables or planning it
/// physically (the gateway does both in one place; `PolicyExtensionPlanner` plans a barrier
/// left sealed as it is, without the query's predicates).
pub fn unseal(plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
    let mut sealed = false;
    plan.apply_with_subqueries(|node| {
        sealed = sealed_barrier(node).is_some();
        Ok(match sealed {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    })?;
    if !sealed {
        return Ok(plan);
    }
    // One rule, kept for every call as `seal`'s and `narrow`'s optimizers are.
    static PUSHDOWN: LazyLock<Optimizer> =
        LazyLock::new(|| Optimizer::with_rules(vec![Arc::new(PushDownFilter::new())]));
    let config = OptimizerContext::new_with_config_options(Arc::new(config.clone()));
    let push = |inner: LogicalPlan| PUSHDOWN.optimize(inner, &config, |_, _| {});
    plan.transform_down_with_subqueries(|node| match node {
        // The projection of the columns the query takes, which the optimizer kept above the
        // barrier for the columns only its predicates needed: those moved in, it takes the
        // place of the barrier's own projection (DataFusion's pruning would have put it there).
        LogicalPlan::Projection(projection) if takes_columns_of_sealed(&projection) => open_taking(
            projection.expr,
            Arc::unwrap_or_clone(projection.input),
            &push,
        )
        .map(Transformed::yes),
        node if sealed_barrier(&node).is_some() || filters_sealed(&node) => {
            open(node, &push).map(Transformed::yes)
        }
        node => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

fn filters_sealed(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Filter(filter) if sealed_barrier(&filter.input).is_some())
}

fn takes_columns_of_sealed(projection: &Projection) -> bool {
    fn leads_to_sealed(plan: &LogicalPlan) -> bool {
        match plan {
            LogicalPlan::Limit(limit) => leads_to_sealed(&limit.input),
            plan => sealed_barrier(plan).is_some() || filters_sealed(plan),
        }
    }
    projection.expr.iter().all(|e| matches!(e, Expr::Column(_)))
        && leads_to_sealed(&projection.input)
}

/// `plan` (limits above a sealed barrier, or above a Filter above one) opened, taking only
/// `columns`.
fn open_taking(
    columns: Vec<Expr>,
    plan: LogicalPlan,
    push: &dyn Fn(LogicalPlan) -> Result<LogicalPlan>,
) -> Result<LogicalPlan> {
    if let LogicalPlan::Limit(limit) = plan {
        let input = open_taking(columns, Arc::unwrap_or_clone(limit.input), push)?;
        return Ok(LogicalPlan::Limit(Limit {
            input: Arc::new(input),
            ..limit
        }));
    }
    match open(plan, push)? {
        // a predicate that stayed above, on columns the projection takes
        LogicalPlan::Filter(filter)
            if filter
                .predicate
                .column_refs()
                .iter()
                .all(|c| columns.contains(&Expr::Column((*c).clone()))) =>
        {
            let input = narrowed(columns, Arc::unwrap_or_clone(filter.input))?;
            Ok(LogicalPlan::Filter(Filter::try_new(
                filter.predicate,
                Arc::new(input),
            )?))
        }
        input => narrowed(columns, input),
    }
}

/// A sealed barrier, or a Filter right above one, with the barrier opened and the Filter's safe
/// predicates moved in.
fn open(
    plan: LogicalPlan,
    push: &dyn Fn(LogicalPlan) -> Result<LogicalPlan>,
) -> Result<LogicalPlan> {
    let plan = match plan {
        LogicalPlan::Filter(filter) => crate::pushdown::move_safe_predicates(filter, push)?.data,
        plan => plan,
    };
    // What stayed above, if anything, is left as it is; the barrier beneath is opened.
    plan.map_children(|child| Ok(Transformed::yes(opened(child))))
        .map(|t| t.data)
        .map(opened)
}

fn opened(plan: LogicalPlan) -> LogicalPlan {
    match sealed_barrier(&plan) {
        Some(barrier) => LogicalPlan::Extension(Extension {
            node: Arc::new(barrier.with_input(barrier.input().clone())),
        }),
        None => plan,
    }
}

/// `columns` of `input`: where `input` is an open barrier over its masks' projection, that
/// projection keeps only `columns` (in their order), and no projection is left above it.
fn narrowed(columns: Vec<Expr>, input: LogicalPlan) -> Result<LogicalPlan> {
    let open_masks = match &input {
        LogicalPlan::Extension(ext) => ext
            .node
            .as_any()
            .downcast_ref::<PolicyBarrier>()
            .filter(|b| !b.is_sealed())
            .and_then(|b| match b.input() {
                LogicalPlan::Projection(p) => Some((b, p)),
                _ => None,
            }),
        _ => None,
    };
    // Each column the barrier's own projection computes, by its unqualified name.
    let kept = open_masks.and_then(|(_, masks)| {
        columns
            .iter()
            .map(|column| match column {
                Expr::Column(c) if c.relation.is_none() => masks
                    .schema
                    .index_of_column_by_name(None, &c.name)
                    .map(|i| masks.expr[i].clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
    });
    match (open_masks, kept) {
        (Some((barrier, masks)), Some(kept)) => {
            let masks = Projection::try_new(kept, masks.input.clone())?;
            Ok(LogicalPlan::Extension(Extension {
                node: Arc::new(barrier.with_input(LogicalPlan::Projection(masks))),
            }))
        }
        _ => Ok(LogicalPlan::Projection(Projection::try_new(
            columns,
            Arc::new(input),
        )?)),
    }
}

fn sealed_barrier(plan: &LogicalPlan) -> Option<&PolicyBarrier> {
    let LogicalPlan::Extension(ext) = plan else {
        return None;
    };
    ext.node
        .as_any()
        .downcast_ref::<PolicyBarrier>()
        .filter(|b| b.is_sealed())
}

/// The plan on one line, for EXPLAIN.
pub(crate) fn one_line(plan: &LogicalPlan) -> String {
    plan.display_indent()
        .to_string()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// Seals a barrier again for the columns a plain projection right above it takes, in place of
/// the projection (cut from the barrier's wider sealed plan: `narrow`). DataFusion's
/// projection pruning puts such a projection above a leaf it cannot narrow, and its filter
/// pushdown moves the barrier's Filter above it in the next pass, and so on: the optimizer
/// would never settle. A scan takes the projection in; so does this rule.
#[derive(Debug, Default)]
pub struct NarrowSealedBarriers;

impl OptimizerRule for NarrowSealedBarriers {
    fn name(&self) -> &str {
        "lakegate_narrow_sealed_barriers"
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
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Projection(projection) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(barrier) = sealed_barrier(&projection.input) else {
            return Ok(Transformed::no(plan));
        };
        let Some(view) = barrier.sealed.clone() else {
            return Ok(Transformed::no(plan));
        };
        let Some(policy_view) = view.downcast_ref::<PolicyView>() else {
            return Ok(Transformed::no(plan));
        };
        let mut names = HashSet::new();
        for expr in &projection.expr {
            let Expr::Column(column) = expr else {
                return Ok(Transformed::no(plan));
            };
            names.insert(column.name.clone());
        }
        let schema = barrier.input().schema();
        if names.len() >= schema.fields().len() {
            return Ok(Transformed::no(plan));
        }
        let narrower = policy_view.barrier(&view, &Some(names), &config.options())?;
        let narrower = LogicalPlan::Extension(Extension {
            node: Arc::new(narrower),
        });
        // The projection goes where the narrowed barrier gives its columns in its order.
        if narrower.schema().columns() == projection.schema.columns() {
            return Ok(Transformed::yes(narrower));
        }
        Ok(Transformed::yes(LogicalPlan::Projection(
            Projection::try_new(projection.expr.clone(), Arc::new(narrower))?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::catalog::MemTable;
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::prelude::{col, lit, upper};

    use super::*;

    /// The enforced plan of a `docs` table for the columns at `positions`: a mask on `secret`,
    /// a row filter on two columns the query may not take.
    fn enforced(table: &Arc<MemTable>, positions: &[usize]) -> Result<LogicalPlan> {
        let columns = [
            col("docs.id").alias("id"),
            col("docs.owner").alias("owner"),
            upper(col("docs.secret")).alias("secret"),
            col("docs.region").alias("region"),
        ];
        LogicalPlanBuilder::scan("docs", provider_as_source(table.clone()), None)?
            .filter(col("owner").eq(lit("ann")))?
            .filter(col("region").not_eq(lit("x")).and(col("id").gt(lit(0i64))))?
            .project(positions.iter().map(|i| columns[*i].clone()))?
            .build()
    }

    #[test]
    fn a_wider_sealed_plan_narrows_to_what_sealing_fewer_columns_gives() -> Result<()> {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("owner", DataType::Utf8, true),
            Field::new("secret", DataType::Utf8, true),
            Field::new("region", DataType::Utf8, true),
        ]);
        let table = Arc::new(MemTable::try_new(Arc::new(schema), vec![vec![]])?);
        let config = ConfigOptions::default();
        let every = seal(enforced(&table, &[0, 1, 2, 3])?, &config)?;
        let some = seal(enforced(&table, &[0, 2, 3])?, &config)?;
        for positions in [vec![0], vec![2], vec![3], vec![0, 2], vec![1, 3]] {
            let sealed = seal(enforced(&table, &positions)?, &config)?;
            let from_every = narrow(&every, &positions, &config).expect("narrows")?;
            assert_eq!(from_every, sealed, "{positions:?}");
        }
        // positions are the wider plan's own: [0, 2] of (id, secret, region) is id and region
        let sealed = seal(enforced(&table, &[0, 3])?, &config)?;
        assert_eq!(narrow(&some, &[0, 2], &config).expect("narrows")?, sealed);
        assert!(narrow(&some, &[3], &config).is_none(), "no such column");
        // a plan that is not a projection over filters over a scan is sealed anew
        let limited = LogicalPlanBuilder::from(every).limit(0, Some(1))?.build()?;
        assert!(narrow(&limited, &[0], &config).is_none());
        Ok(())
    }
}
