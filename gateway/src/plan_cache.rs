//! Plans of repeated queries, kept per user catalog: dashboards and BI tools send the same
//! text again and again, and analyzing (policy first) and optimizing it is most of what a
//! short query costs. A cached plan is the optimized logical plan, policy already on it; each
//! run still plans it physically, so files are listed and credentials fetched as on a first
//! run. All users' plans share one memory budget (`Plans`).
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
//!
//! A query that reads no table (`SELECT 1`, a pool's check that a connection lives) keeps its
//! physical plan too: physical planning was most of its cost, and a plan of constants only
//! (`runs_again`) answers the same on every run. A plan that reads anything is planned again
//! each run, so files are listed and credentials fetched; except a generic plan over one small
//! table kept in memory, whose runs are made from a physical template (`plan_template`), the
//! table's files listed as a planning lists them.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::sql::sqlparser::ast::Statement;

use crate::literal_params::PlaceholderTypes;
use crate::plan_template::{Template, TemplateSlot};

/// The budget of all users' plans by default (`plan_cache_megabytes` in the configuration).
pub const DEFAULT_MEGABYTES: u64 = 256;

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
/// SQL planner made it (what a prepared statement is described from) and as optimized, and
/// its physical plan where that can run again (`runs_again`).
#[derive(Debug, Clone)]
pub struct CachedQuery {
    pub statement: Arc<Statement>,
    pub logical: Arc<LogicalPlan>,
    /// `logical`'s placeholders and their types (None where they could not be told), asked
    /// of every text of its shape.
    pub placeholder_types: Option<Arc<PlaceholderTypes>>,
    pub plan: Arc<LogicalPlan>,
    pub physical: Option<Arc<dyn ExecutionPlan>>,
    /// A generic plan's physical template, made at its first run from the cache.
    pub template: TemplateSlot,
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
        physical: Option<Arc<dyn ExecutionPlan>>,
        /// Runs with `params` only.
        template: Option<TemplateSlot>,
    },
}

/// What the cache may keep of a query once it planned physically.
pub struct Keep {
    text: QueryText,
    logical: LogicalPlan,
    plan: Arc<LogicalPlan>,
    /// Values were bound into the plan that ran: its physical plan holds them.
    bound: bool,
    physical: Option<Arc<dyn ExecutionPlan>>,
}

impl Keep {
    /// Keeps the physical plan the query ran with too, where it can run again.
    pub fn with_physical(mut self, physical: &Arc<dyn ExecutionPlan>) -> Self {
        if !self.bound && !reads_a_table(&self.plan) && runs_again(physical) {
            // a copy: the plan given runs now, and its metrics are that run's
            self.physical = reset_plan_states(physical.clone()).ok();
        }
        self
    }
}

impl Planned {
    /// A kept query, to run with `params` (its physical plan only serves runs without).
    pub fn cached(query: CachedQuery, params: Option<ParamValues>) -> Self {
        let physical = query.physical.filter(|_| params.is_none());
        let template = params.is_some().then_some(query.template);
        Planned::Cached {
            plan: query.plan,
            params,
            physical,
            template,
        }
    }

    /// The physical plan kept with a cached query, as a copy of its own to run: each run
    /// registers its metrics in the nodes it runs, so running the kept nodes themselves would
    /// grow them with every run. The copy keeps the nodes' computed properties.
    pub fn physical(&self) -> Option<Arc<dyn ExecutionPlan>> {
        match self {
            Planned::Cached {
                physical: Some(kept),
                ..
            } => reset_plan_states(kept.clone()).ok(),
            _ => None,
        }
    }

    /// What runs: the optimized plan (what the columns are named from) and the physical plan,
    /// kept, made from a template or planned now; `cache` keeps what may serve the next runs
    /// of `statement`'s text. `runs_here` logs the route of a plan run from a template, as
    /// planning it would, and says whether it stays in the gateway.
    pub async fn into_physical(
        self,
        state: &SessionState,
        cache: Option<&PlanCache>,
        statement: &Statement,
        runs_here: &(dyn Fn(&LogicalPlan) -> bool + Sync),
    ) -> Result<(Arc<LogicalPlan>, Arc<dyn ExecutionPlan>)> {
        let template = match &self {
            Planned::Cached {
                plan,
                params: Some(params),
                template: Some(slot),
                ..
            } => Some((slot.clone(), plan.clone(), params.clone())),
            _ => None,
        };
        if let Some((slot, generic, params)) = &template
            && let Some(made) = slot.made()
            && runs_here(generic)
        {
            match made.with_values(state, params).await {
                Ok(Some(physical)) => return Ok((generic.clone(), physical)),
                Ok(None) => slot.unfit(),
                // planned as usual: the query meets the error a planning gives it
                Err(error) => tracing::debug!(%error, "a kept template did not run"),
            }
        }
        let kept = self.physical();
        let (optimized, keep) = self.optimize(state)?;
        let physical = match kept {
            Some(physical) => physical,
            None => {
                state
                    .query_planner()
                    .create_physical_plan(&optimized, state)
                    .await?
            }
        };
        if let (Some(keep), Some(cache)) = (keep, cache) {
            cache.keep(keep.with_physical(&physical), statement);
        }
        if let Some((slot, generic, _)) = template
            && slot.start()
        {
            slot.set(Template::make(&generic, state).await);
        }
        Ok((optimized, physical))
    }

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
            Planned::Cached {
                plan, params: None, ..
            } => return Ok((plan, None)),
            Planned::Cached {
                plan,
                params: Some(params),
                ..
            } => return Ok((Arc::new(bind(&plan, &params)?), None)),
            Planned::Fresh { plan, text, params } => (plan, text, params),
        };
        let bound = params.is_some();
        let keep = |reusable: bool, plan: LogicalPlan, optimized: &Arc<LogicalPlan>| {
            text.clone().filter(|_| reusable).map(|text| Keep {
                text,
                logical: plan,
                plan: optimized.clone(),
                bound,
                physical: None,
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

/// Every user's kept plans in one budget of estimated bytes, so the memory plans take is
/// bounded however many users are active (per-user caches of a fixed number of entries were
/// not: ~66 KB per plan of a BI join, times up to 1,000 user catalogs). Least-used plans go
/// first; a text sent once rarely pushes out one sent often (moka's TinyLFU admission).
#[derive(Clone)]
pub struct Plans(Option<moka::sync::Cache<Key, CachedQuery>>);

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(cache) => write!(f, "Plans({} kept)", cache.entry_count()),
            None => write!(f, "Plans(off)"),
        }
    }
}

/// A plan is kept for one user catalog (`PlanCache::owner`) and one text.
type Key = (u64, QueryText);

/// Owners are never reused: a new catalog (after a reload or a new login token) never meets
/// the plans of one before it.
static OWNERS: AtomicU64 = AtomicU64::new(1);

impl Plans {
    /// `megabytes`: the budget, in estimated bytes of plans; 0 keeps no plan.
    pub fn new(megabytes: u64) -> Self {
        Plans((megabytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(megabytes.saturating_mul(1 << 20))
                .weigher(|(_, text): &Key, query: &CachedQuery| {
                    u32::try_from(weight(text, query)).unwrap_or(u32::MAX)
                })
                .support_invalidation_closures()
                .build()
        }))
    }

    /// The cache of one user catalog, within this budget.
    pub fn for_catalog(&self) -> PlanCache {
        PlanCache {
            plans: self.0.clone(),
            owner: OWNERS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Estimated bytes of every plan kept (after pending evictions).
    #[cfg(test)]
    pub fn weighted_size(&self) -> u64 {
        self.0.as_ref().map_or(0, |cache| {
            cache.run_pending_tasks();
            cache.weighted_size()
        })
    }
}

/// One user catalog's plans. Empty, and never filled, when the budget is 0.
pub struct PlanCache {
    plans: Option<moka::sync::Cache<Key, CachedQuery>>,
    owner: u64,
}

impl PlanCache {
    pub fn get(&self, text: &QueryText) -> Option<CachedQuery> {
        self.plans.as_ref()?.get(&(self.owner, text.clone()))
    }

    /// Keeps what a query planned to, for `statement`'s next runs.
    pub fn keep(&self, keep: Keep, statement: &Statement) {
        if let Some(cache) = &self.plans {
            let query = CachedQuery {
                statement: Arc::new(statement.clone()),
                placeholder_types: keep.logical.get_parameter_types().ok().map(Arc::new),
                logical: Arc::new(keep.logical),
                plan: keep.plan,
                physical: keep.physical,
                template: TemplateSlot::default(),
            };
            cache.insert((self.owner, keep.text), query);
        }
    }
}

/// A catalog's plans go with it: nothing could find them again, and they hold its tables.
impl Drop for PlanCache {
    fn drop(&mut self) {
        if let Some(cache) = &self.plans {
            let owner = self.owner;
            let _ = cache.invalidate_entries_if(move |(of, _), _| *of == owner);
        }
    }
}

/// Estimated bytes a kept query holds: its key's text, its parsed statement, and its two plans
/// (nodes, the schemas they hold, and their expressions). DataFusion cannot tell a plan's size;
/// the constants were calibrated against allocations measured while planning
/// (`tests::weights_cover_what_plans_hold`) and err on the high side.
fn weight(text: &QueryText, query: &CachedQuery) -> usize {
    let text = match text {
        QueryText::Simple(text) | QueryText::Prepared(text) | QueryText::Literals(text) => text,
    };
    text.len()
        + STATEMENT_BYTES
        + text.len() * STATEMENT_BYTES_PER_CHAR
        + plan_bytes(&query.logical)
        + plan_bytes(&query.plan)
        + query.physical.as_ref().map_or(0, physical_bytes)
        + template_bytes(&query.plan)
}

/// A generic plan may get a physical template (`plan_template`) after it was weighed, so it
/// is weighed as if it had one: a physical node for each logical one.
fn template_bytes(plan: &LogicalPlan) -> usize {
    let generic = plan
        .get_parameter_types()
        .is_ok_and(|types| !types.is_empty());
    if !generic {
        return 0;
    }
    let mut nodes = 0;
    let _ = plan.apply_with_subqueries(|_| {
        nodes += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    nodes * PHYSICAL_NODE_BYTES
}

// sqlparser's statements are large structs: `SELECT 1` parses to 10 KB.
pub(crate) const STATEMENT_BYTES: usize = 16 << 10;
pub(crate) const STATEMENT_BYTES_PER_CHAR: usize = 144;
const NODE_BYTES: usize = 512;
const FIELD_BYTES: usize = 192;
const EXPR_BYTES: usize = 160;

/// Only plans of constants are kept (`runs_again`), and templates of small plans: a few small
/// nodes, each with its schema, properties and metrics.
const PHYSICAL_NODE_BYTES: usize = 2 << 10;

fn physical_bytes(plan: &Arc<dyn ExecutionPlan>) -> usize {
    PHYSICAL_NODE_BYTES
        + plan
            .schema()
            .fields()
            .iter()
            .map(|f| FIELD_BYTES + f.name().len())
            .sum::<usize>()
        + plan
            .children()
            .into_iter()
            .map(physical_bytes)
            .sum::<usize>()
}

/// Whether a plan reads a table, subqueries included. Asked of the logical plan: the physical
/// optimizer can fold a read into constants (`count(*)` from a file's statistics), which would
/// be stale once the files change.
fn reads_a_table(plan: &LogicalPlan) -> bool {
    let mut reads = false;
    let _ = plan.apply_with_subqueries(|node| {
        reads = matches!(node, LogicalPlan::TableScan(_));
        Ok(stop_unless(!reads))
    });
    reads
}

/// Whether a physical plan answers the same on every run and can run again, from any number
/// of connections at once: each node is one that reads nothing and keeps no state between
/// runs (no files to list again, no credentials, no dynamic filters, generators or shared
/// channels). DataFusion's other nodes, and Lakegate's, are planned each run.
fn runs_again(plan: &Arc<dyn ExecutionPlan>) -> bool {
    keeps_no_state(plan.as_ref()) && plan.children().into_iter().all(runs_again)
}

/// Whether a node is one of DataFusion's that read nothing and keep no state between runs.
pub fn keeps_no_state(node: &dyn ExecutionPlan) -> bool {
    // The node's own type: a wrapper that answers `is` for the node it wraps is not that node.
    let node: &dyn std::any::Any = node;
    node.is::<ProjectionExec>()
        || node.is::<PlaceholderRowExec>()
        || node.is::<EmptyExec>()
        || node.is::<FilterExec>()
        || node.is::<UnionExec>()
        || node.is::<GlobalLimitExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<CoalescePartitionsExec>()
}

fn plan_bytes(plan: &LogicalPlan) -> usize {
    let mut schemas = HashSet::new();
    let mut bytes = 0;
    let _ = plan.apply_with_subqueries(|node| {
        bytes += NODE_BYTES;
        let schema = node.schema();
        // Nodes that pass their input's columns through share its schema.
        if schemas.insert(Arc::as_ptr(schema)) {
            bytes += schema
                .iter()
                .map(|(qualifier, field)| {
                    FIELD_BYTES + field.name().len() + qualifier.map_or(0, |q| q.table().len())
                })
                .sum::<usize>();
        }
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                bytes += EXPR_BYTES
                    + match e {
                        Expr::Column(column) => column.name.len(),
                        Expr::Alias(alias) => alias.name.len(),
                        Expr::Literal(value, _) => value.size(),
                        _ => 0,
                    };
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    bytes
}

/// Analyzes (policy first) and optimizes `plan` as `SessionState::optimize` does, and says
/// whether the result may serve later runs of the same text.
pub fn optimize(state: &SessionState, plan: &LogicalPlan) -> Result<(LogicalPlan, bool)> {
    // Every plan leaves here with its policy barriers opened (`unseal`): what reads its tables
    // (routing, Athena's SQL, templates) and plans it physically sees every enforced plan.
    let unsealed = |optimized| lakegate_policy::unseal(optimized, state.config_options());
    if matches!(plan, LogicalPlan::Explain(_)) {
        return Ok((unsealed(state.optimize(plan)?)?, false));
    }
    let analyzed =
        state
            .analyzer()
            .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    // Checked after the analyzer: it inlines views, whose bodies may call `now()` too. (A
    // sealed barrier's plan calls no such function: `PolicyView` seals only those that don't.)
    let reusable = reusable(&analyzed);
    let optimized = state.optimizer().optimize(analyzed, state, |_, _| {})?;
    Ok((unsealed(optimized)?, reusable))
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
    use datafusion::sql::parser::Statement as DfStatement;

    use super::*;
    use crate::alloc_count::live_bytes;
    use crate::lake::UserSession;

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

    /// What keeping `sql` as `session` planned it holds (measured: bytes allocated while
    /// parsing and planning it and not freed while it is kept), and the weight given to it.
    async fn held_and_weight(session: &UserSession, sql: &str) -> (usize, usize) {
        let state = session.context().state();
        let before = live_bytes();
        let (keep, statement) = planned(&state, sql).await;
        let query = CachedQuery {
            statement: Arc::new(statement),
            placeholder_types: keep.logical.get_parameter_types().ok().map(Arc::new),
            logical: Arc::new(keep.logical),
            plan: keep.plan,
            physical: keep.physical,
            template: TemplateSlot::default(),
        };
        let held = usize::try_from(live_bytes() - before).unwrap_or(0);
        (held, weight(&keep.text, &query))
    }

    /// A generated text: long IN lists, as BI tools send a filter's selected values.
    fn long_lists() -> String {
        let ids: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
        let countries: Vec<String> = (0..60).map(|i| format!("'C{i}'")).collect();
        format!(
            "SELECT hcp_id, full_name, specialty FROM gtm.hcp WHERE hcp_id IN ({}) AND country IN ({})",
            ids.join(", "),
            countries.join(",")
        )
    }

    #[tokio::test]
    async fn weights_cover_what_plans_hold() {
        // Small tables are not kept here: this counts the thread's allocations, and the
        // kept tables' cache (moka, over crossbeam's epochs) may free on this thread what
        // other tests' threads left to free, which reads as a plan holding nothing.
        let lake = crate::lake::tests::quickstart_reading_files().await;
        for user in ["carol", "alice"] {
            let session = lake
                .session(lake.identity_of(user).expect("user"), None)
                .await
                .expect("session");
            for sql in [
                "SELECT 1",
                "SELECT * FROM gtm.hcp WHERE hcp_id = 17",
                "SELECT h.country, h.specialty, s.product, count(*) AS n, sum(s.units) AS units, \
                 avg(s.amount) AS amount FROM gtm.sales s JOIN gtm.hcp h ON s.hcp_id = h.hcp_id \
                 WHERE s.units > 0 AND h.country IN ('DE', 'FR', 'US') \
                 GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10",
                "WITH top AS (SELECT hcp_id, sum(amount) AS net FROM gtm.sales GROUP BY hcp_id \
                 ORDER BY net DESC LIMIT 20) SELECT h.full_name, h.email, h.country, t.net, \
                 CASE WHEN t.net > 1000 THEN 'high' ELSE 'low' END AS band FROM top t \
                 JOIN gtm.hcp h USING (hcp_id) WHERE h.specialty <> 'x' AND EXISTS \
                 (SELECT 1 FROM gtm.sales s WHERE s.hcp_id = h.hcp_id AND s.units > 3)",
            ]
            .into_iter()
            .map(str::to_string)
            .chain([long_lists()])
            {
                let sql = sql.as_str();
                // the first planning fills what is kept for every query (functions, statistics)
                held_and_weight(&session, sql).await;
                let (held, weight) = held_and_weight(&session, sql).await;
                assert!(
                    held <= weight && weight <= 2 * held,
                    "{user}: {sql} holds {held} bytes, weighed {weight}"
                );
            }
        }
    }

    /// What the handler keeps of `sql` after planning it in `state`.
    async fn planned(state: &SessionState, sql: &str) -> (Keep, Statement) {
        let statement = crate::literal_params::tests::parse(sql);
        let logical = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
            .await
            .expect("plans");
        let (optimized, _) = optimize(state, &logical).expect("optimizes");
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, state)
            .await
            .expect("plans physically");
        let keep = Keep {
            text: QueryText::Simple(sql.to_string()),
            logical,
            plan: Arc::new(optimized),
            bound: false,
            physical: None,
        };
        (keep.with_physical(&physical), statement)
    }

    /// Whether `sql`, as `user` of the quickstart plans it, keeps its physical plan.
    async fn keeps_physical(lake: &crate::lake::Lake, user: &str, sql: &str) -> bool {
        let identity = lake.identity_of(user).expect("user");
        let session = lake.session(identity, None).await.expect("session");
        planned(&session.context().state(), sql)
            .await
            .0
            .physical
            .is_some()
    }

    #[tokio::test]
    async fn only_plans_of_constants_keep_their_physical_plan() {
        let (lake, _) = crate::lake::tests::quickstart().await;
        for sql in [
            "SELECT 1",
            "SELECT 1 AS a UNION ALL SELECT 2",
            "SELECT upper('x') AS a WHERE 2 > 1 LIMIT 1",
        ] {
            assert!(keeps_physical(&lake, "carol", sql).await, "{sql} is kept");
        }
        for sql in [
            // a table: files are listed, and policy planned, on every run
            "SELECT * FROM gtm.hcp WHERE hcp_id = 7",
            "SELECT count(*) FROM gtm.hcp",
            "SELECT 1 FROM gtm.hcp LIMIT 1",
            // a generator keeps its state in the plan
            "SELECT * FROM generate_series(1, 3)",
            // the catalog a user sees
            "SELECT relname FROM pg_catalog.pg_class",
            // the physical optimizer answers this count from the table's statistics: a plan
            // of constants, but one that read a table
            "SELECT count(*) FROM information_schema.tables",
            // a sort's top rows feed a filter that lives in the plan
            "SELECT a FROM (VALUES (3), (1), (2)) t(a) ORDER BY a LIMIT 1",
        ] {
            assert!(
                !keeps_physical(&lake, "carol", sql).await,
                "{sql} is planned again"
            );
        }
    }

    /// A physical plan holds values bound into it: a generic plan's runs never share one.
    #[tokio::test]
    async fn a_plan_with_bound_values_keeps_no_physical_plan() {
        let state = SessionContext::new().state();
        let logical = state
            .create_logical_plan("SELECT 1 AS n WHERE $1 = 1")
            .await
            .expect("plans");
        let params = ParamValues::List(vec![ScalarAndMetadata::from(
            datafusion::common::ScalarValue::Int64(Some(41)),
        )]);
        let planned = Planned::Fresh {
            plan: logical,
            text: Some(QueryText::Prepared("SELECT 1 AS n WHERE $1 = 1".into())),
            params: Some(params),
        };
        let (plan, keep) = planned.optimize(&state).expect("optimizes");
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await
            .expect("plans physically");
        assert!(runs_again(&physical), "a plan of constants");
        let keep = keep.expect("the generic plan is kept");
        assert!(keep.with_physical(&physical).physical.is_none());
    }

    #[tokio::test]
    async fn all_users_plans_stay_within_one_budget() {
        let state = SessionContext::new().state();
        let plans = Plans::new(1);
        let (ann, bob) = (plans.for_catalog(), plans.for_catalog());
        let text = |i: usize| format!("SELECT {i} AS n, 'x' || {i} AS s");
        let (keep, statement) = planned(&state, &text(0)).await;
        ann.keep(keep, &statement);
        let key = QueryText::Simple(text(0));
        assert!(ann.get(&key).is_some());
        assert!(
            bob.get(&key).is_none(),
            "a catalog never meets another's plans"
        );
        // 2 x 200 plans of ~20 KB each: far more than 1 MB
        for i in 1..=200 {
            for catalog in [&ann, &bob] {
                let (keep, statement) = planned(&state, &text(i)).await;
                catalog.keep(keep, &statement);
            }
        }
        let kept = plans.weighted_size();
        assert!(kept <= 1 << 20, "{kept} bytes kept within 1 MB");
        assert!(kept >= 1 << 19, "the budget is used: {kept} bytes");
        // a catalog's plans go with it
        drop(ann);
        assert!(plans.weighted_size() > 0);
        let owners: HashSet<u64> = plans
            .0
            .as_ref()
            .expect("a budget")
            .iter()
            .map(|(key, _)| key.0)
            .collect();
        assert_eq!(owners, HashSet::from([bob.owner]));
    }
}
