//! Plans of repeated queries, kept per user: dashboards and BI tools send the same text again
//! and again, and analyzing (policy first) and optimizing it is most of what a short query
//! costs. A cached plan is the optimized logical plan, policy already on it; each run still
//! plans it physically, so files are listed and credentials fetched as on a first run.
//!
//! A plan is only reused where it cannot differ from a fresh one:
//! - per user catalog (identity, login token, catalog generation), so per policy and tables;
//! - only for connections planning in the user's shared context (no SET or search path of
//!   their own, which could plan the same text differently);
//! - only for queries without parameters, session variables or functions that are not
//!   immutable: the optimizer folds `now()` and `current_date` into constants.
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::sql::sqlparser::ast::Statement;

/// Entries a user's cache holds by default (`plan_cache_entries` in the configuration).
pub const DEFAULT_ENTRIES: u64 = 256;

/// Which text a plan was made from: a simple query's text as the client sent it, or the text
/// of a statement prepared by the extended protocol (as parsed and printed again). The two are
/// kept apart: the same characters can stand for different statements in each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QueryText {
    Simple(String),
    Prepared(String),
}

/// A query planned before: its statement (for column names and the hooks), its plan as the
/// SQL planner made it (what a prepared statement is described from) and as optimized.
#[derive(Debug, Clone)]
pub struct CachedQuery {
    pub statement: Arc<Statement>,
    pub logical: Arc<LogicalPlan>,
    pub plan: Arc<LogicalPlan>,
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

    pub fn insert(&self, text: QueryText, query: CachedQuery) {
        if let Some(cache) = &self.0 {
            cache.insert(text, query);
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
/// DDL, DML or EXPLAIN), no parameter placeholders, no session variables, and only immutable
/// functions.
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
                    reusable &= !matches!(e, Expr::Placeholder(_) | Expr::ScalarVariable(..))
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
            // a different value on each run
            "SELECT a FROM t WHERE a = $1",
            "EXPLAIN SELECT 1",
        ] {
            assert!(!analyzed_reusable(sql).await, "{sql} is not reusable");
        }
    }
}
