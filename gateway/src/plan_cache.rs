//! Plans of repeated queries, kept per user: dashboards and BI tools send the same text again
//! and again, and analyzing (policy first) and optimizing it is most of what a short query
//! costs. A cached plan is the optimized logical plan, policy already on it; each run still
//! plans it physically, so files are listed and credentials fetched as on a first run.
//!
//! A plan is only reused where it cannot differ from a fresh one:
//! - per user catalog (identity, login token, catalog generation), so per policy and tables;
//! - only for connections planning in the user's shared context (no SET or search path of
//!   their own, which could plan the same text differently);
//! - only for queries without session variables or functions that are not immutable: the
//!   optimizer folds `now()` and `current_date` into constants.
//!
//! A prepared statement's parameters are bound into its optimized plan at each run: one
//! generic plan serves every value, as PostgreSQL's generic plans do. Values written into a
//! query's text are bound the same way where `literal_params` can take them out of it.
use std::sync::Arc;

use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::sql::sqlparser::ast::Statement;

/// Entries a user's cache holds by default (`plan_cache_entries` in the configuration).
pub const DEFAULT_ENTRIES: u64 = 256;

/// Which text a plan was made from: a simple query's text as the client sent it, the text
/// of a statement prepared by the extended protocol (as parsed and printed again), or a query's
/// text, from either protocol, with its values taken out (`literal_params`). The three are kept
/// apart: the same characters can stand for different statements in each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QueryText {
    Simple(String),
    Prepared(String),
    Literals(String),
}

/// A query planned before: its statement (for column names and the hooks), its plan as the
/// SQL planner made it (what a prepared statement is described from) and as optimized.
#[derive(Debug, Clone)]
pub struct CachedQuery {
    pub statement: Arc<Statement>,
    pub logical: Arc<LogicalPlan>,
    pub plan: Arc<LogicalPlan>,
}

/// A query ready to run: planned just now (optimized when it runs, and kept for later runs of
/// `text` where this module allows), or taken from the cache, optimized already. `params`: a
/// prepared statement's values, bound into the optimized plan.
pub enum Planned {
    Fresh {
        plan: LogicalPlan,
        text: Option<QueryText>,
        params: Option<ParamValues>,
    },
    Cached {
        plan: Arc<LogicalPlan>,
        params: Option<ParamValues>,
    },
}

/// What the cache may keep of a query once it planned physically.
pub struct Keep {
    text: QueryText,
    logical: LogicalPlan,
    plan: Arc<LogicalPlan>,
}

impl Planned {
    /// A plan run once, never kept.
    pub fn once(plan: LogicalPlan) -> Self {
        Planned::Fresh {
            plan,
            text: None,
            params: None,
        }
    }

    /// The optimized plan to run, parameters bound, and what the cache may keep of it.
    pub fn optimize(self, state: &SessionState) -> Result<(Arc<LogicalPlan>, Option<Keep>)> {
        let (plan, text, params) = match self {
            Planned::Cached { plan, params: None } => return Ok((plan, None)),
            Planned::Cached {
                plan,
                params: Some(params),
            } => return Ok((Arc::new(bind(&plan, &params)?), None)),
            Planned::Fresh { plan, text, params } => (plan, text, params),
        };
        let keep = |reusable: bool, plan: LogicalPlan, optimized: &Arc<LogicalPlan>| {
            text.clone().filter(|_| reusable).map(|text| Keep {
                text,
                logical: plan,
                plan: optimized.clone(),
            })
        };
        let Some(params) = params else {
            let (optimized, reusable) = optimize(state, &plan)?;
            let optimized = Arc::new(optimized);
            return Ok((optimized.clone(), keep(reusable, plan, &optimized)));
        };
        // The generic plan, when every placeholder has a type (one without is typed by its
        // value, which only binding first gives) and the optimizer takes them as they are.
        let typed = || {
            plan.get_parameter_types()
                .is_ok_and(|types| types.values().all(Option::is_some))
        };
        if text.is_some() && typed() {
            match optimize(state, &plan) {
                Ok((generic, reusable)) => {
                    let generic = Arc::new(generic);
                    let bound = bind(&generic, &params)?;
                    return Ok((Arc::new(bound), keep(reusable, plan, &generic)));
                }
                Err(error) => {
                    tracing::debug!(%error, "no generic plan: planned with the values");
                }
            }
        }
        let bound = plan.replace_params_with_values(&params)?;
        Ok((Arc::new(optimize(state, &bound)?.0), None))
    }
}

/// Binds a generic plan's parameters, each value as the type its placeholder was planned with:
/// the optimizer coerced the plan around those types (a client's text decodes to `Utf8` where
/// the plan compares the placeholder, typed `Utf8View`, with a `Utf8View` column).
pub fn bind(plan: &LogicalPlan, params: &ParamValues) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    let typed = |id: &str, given: &ScalarAndMetadata| -> Result<ScalarAndMetadata> {
        Ok(match types.get(id) {
            Some(Some(planned)) if &given.value.data_type() != planned => ScalarAndMetadata {
                value: given.value.cast_to(planned)?,
                metadata: given.metadata.clone(),
            },
            _ => given.clone(),
        })
    };
    let params = match params {
        ParamValues::List(values) => ParamValues::List(
            values
                .iter()
                .enumerate()
                .map(|(i, value)| typed(&format!("${}", i + 1), value))
                .collect::<Result<_>>()?,
        ),
        ParamValues::Map(values) => ParamValues::Map(
            values
                .iter()
                .map(|(name, value)| Ok((name.clone(), typed(&format!("${name}"), value)?)))
                .collect::<Result<_>>()?,
        ),
    };
    plan.clone().replace_params_with_values(&params)
}

/// One user's cache. Empty, and never filled, when `entries` is 0.
pub struct PlanCache(Option<moka::sync::Cache<QueryText, CachedQuery>>);

impl PlanCache {
    pub fn new(entries: u64) -> Self {
        PlanCache((entries > 0).then(|| moka::sync::Cache::new(entries)))
    }

    pub fn get(&self, text: &QueryText) -> Option<CachedQuery> {
        self.0.as_ref()?.get(text)
    }

    /// Keeps what a query planned to, for `statement`'s next runs.
    pub fn keep(&self, keep: Keep, statement: &Statement) {
        if let Some(cache) = &self.0 {
            let query = CachedQuery {
                statement: Arc::new(statement.clone()),
                logical: Arc::new(keep.logical),
                plan: keep.plan,
            };
            cache.insert(keep.text, query);
        }
    }
}

/// Analyzes (policy first) and optimizes `plan` as `SessionState::optimize` does, and says
/// whether the result may serve later runs of the same text.
pub fn optimize(state: &SessionState, plan: &LogicalPlan) -> Result<(LogicalPlan, bool)> {
    if matches!(plan, LogicalPlan::Explain(_)) {
        return Ok((state.optimize(plan)?, false));
    }
    let analyzed =
        state
            .analyzer()
            .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    // Checked after the analyzer: it inlines views, whose bodies may call `now()` too.
    let reusable = reusable(&analyzed);
    let optimized = state.optimizer().optimize(analyzed, state, |_, _| {})?;
    Ok((optimized, reusable))
}

/// Whether an analyzed plan plans to the same result on every run: a query (no statement,
/// DDL, DML or EXPLAIN), no session variables, and only immutable functions. Parameter
/// placeholders are bound at each run (and a plan that still has one when it runs fails to
/// plan physically, so it is never kept).
fn reusable(analyzed: &LogicalPlan) -> bool {
    let mut reusable = true;
    let _ = analyzed.apply_with_subqueries(|node| {
        let query = !matches!(
            node,
            LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::DescribeTable(_)
        );
        reusable = query;
        if reusable {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    reusable &= !matches!(e, Expr::ScalarVariable(..))
                        && match e {
                            Expr::ScalarFunction(f) => {
                                f.func.signature().volatility == Volatility::Immutable
                            }
                            _ => true,
                        };
                    Ok(stop_unless(reusable))
                })
            })?;
        }
        Ok(stop_unless(reusable))
    });
    reusable
}

fn stop_unless(go_on: bool) -> TreeNodeRecursion {
    if go_on {
        TreeNodeRecursion::Continue
    } else {
        TreeNodeRecursion::Stop
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn analyzed_reusable(sql: &str) -> bool {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a INT, b VARCHAR)")
            .await
            .expect("table");
        ctx.sql("CREATE VIEW v AS SELECT a, now() AS at FROM t")
            .await
            .expect("view");
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await.expect("plans");
        optimize(&state, &plan).expect("optimizes").1
    }

    #[tokio::test]
    async fn only_plans_that_cannot_change_are_reused() {
        for sql in [
            "SELECT 1",
            "SELECT a, upper(b) FROM t WHERE a > 3 ORDER BY a",
            "SELECT a FROM t WHERE a IN (SELECT a + 1 FROM t)",
            // a generic plan: the value is bound at each run
            "SELECT a FROM t WHERE a = $1",
        ] {
            assert!(analyzed_reusable(sql).await, "{sql} is reusable");
        }
        for sql in [
            // folded into a constant by the optimizer
            "SELECT now()",
            "SELECT a FROM t WHERE a > 3 AND current_date > DATE '2020-01-01'",
            // inside a subquery, and inside a view's body
            "SELECT a FROM t WHERE EXISTS (SELECT 1 WHERE random() > 0.5)",
            "SELECT a FROM v",
            "EXPLAIN SELECT 1",
        ] {
            assert!(!analyzed_reusable(sql).await, "{sql} is not reusable");
        }
    }
}
