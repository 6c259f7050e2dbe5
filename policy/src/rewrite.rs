//! Enforcement on the plan.
//!
//! A user's session holds a `PolicyView` per table that user may read: its schema is what the
//! user sees, and it cannot be scanned. The `EnforcePolicy` analyzer rule, which runs before
//! any other rule on every plan a session builds (simple and extended protocol, cursors,
//! EXPLAIN, catalog queries), replaces each scan of a `PolicyView` with
//! `SubqueryAlias(PolicyBarrier(Projection(masks) ← Filter(row filter) ← TableScan(raw)))`,
//! the projection narrowed to the columns the query names (`PolicyView::narrowed`).
//!
//! The barrier keeps user predicates above the row filter: DataFusion's logical optimizer does
//! not push filters into an extension node whose columns it prevents, and the physical
//! `PolicyBarrierExec` refuses filter pushdown (including dynamic join/TopK filters). So the
//! row filter sees raw values, user predicates see masked values, and no user predicate runs
//! on a row the policy filtered out.
use std::any::Any;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, DataFusionError, Result, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, Projection, SubqueryAlias, TableProviderFilterPushDown,
    UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::push_down_filter::PushDownFilter;
use datafusion::optimizer::push_down_limit::PushDownLimit;
use datafusion::optimizer::{AnalyzerRule, Optimizer, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::compile::CompiledAccess;

/// What a user's catalog holds for a table the user may read.
#[derive(Debug)]
pub struct PolicyView {
    table: String,
    rule: String,
    schema: SchemaRef,
    enforced: LogicalPlan,
    /// The one provider the enforced plan may scan directly.
    raw: Arc<dyn TableProvider>,
    table_type: TableType,
}

impl PolicyView {
    pub fn new(table: impl Into<String>, rule: impl Into<String>, access: CompiledAccess) -> Self {
        let schema = Arc::new(access.plan.schema().as_arrow().clone());
        PolicyView {
            table: table.into(),
            rule: rule.into(),
            schema,
            enforced: access.plan,
            raw: access.raw,
            table_type: TableType::Base,
        }
    }

    /// Shown to catalogs as a view (`pg_class.relkind = 'v'`) rather than a table.
    pub fn as_view(mut self) -> Self {
        self.table_type = TableType::View;
        self
    }

    /// The policy rule that granted this view, for audit and logs.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The enforced plan, projecting only the columns named in `used` (at least one: a
    /// `count(*)` names none; all of them when `used` is None). A query names a few columns of
    /// a wide table; computing and carrying every masked column until DataFusion's optimizer
    /// drops them was most of what policy added to planning. The row filter beneath is
    /// untouched.
    fn narrowed(&self, used: &Option<HashSet<String>>) -> Result<LogicalPlan> {
        let (LogicalPlan::Projection(projection), Some(used)) = (&self.enforced, used) else {
            return Ok(self.enforced.clone());
        };
        let named = |i: &usize| used.contains(projection.schema.field(*i).name());
        let mut kept: Vec<usize> = (0..projection.expr.len()).filter(named).collect();
        if kept.len() == projection.expr.len() {
            return Ok(self.enforced.clone());
        }
        if kept.is_empty() {
            kept.push(0);
        }
        let exprs = kept.iter().map(|i| projection.expr[*i].clone()).collect();
        Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            projection.input.clone(),
        )?))
    }
}

/// Every column name `plan` refers to, whatever its qualifier (a table's alias, a subquery's),
/// inside subqueries and as outer references too: more than a scan needs when names repeat
/// across tables, never less. None (every column) where a wildcard is left unexpanded, which
/// DataFusion's SQL planner no longer does.
fn column_names(plan: &LogicalPlan) -> Option<HashSet<String>> {
    let mut names = Some(HashSet::new());
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                #[allow(deprecated)]
                match (e, &mut names) {
                    (Expr::Wildcard { .. }, _) => names = None,
                    (Expr::Column(column) | Expr::OuterReferenceColumn(_, column), Some(names)) => {
                        names.insert(column.name.clone());
                    }
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    names
}

#[async_trait]
impl TableProvider for PolicyView {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    /// Fail closed: reaching this means a plan skipped `EnforcePolicy`.
    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(DataFusionError::Internal(format!(
            "policy for {} was not applied to this plan; refusing to read it",
            self.table
        )))
    }
}

/// Marks the enforced subtree of one table; nothing is pushed into it from above.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyBarrier {
    table: String,
    input: LogicalPlan,
}

impl PolicyBarrier {
    /// The table enforced, as `database.table`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The enforced plan: masks and row filter over the table's own scan.
    pub fn input(&self) -> &LogicalPlan {
        &self.input
    }

    /// The same barrier over another enforced plan (only for rules that keep its meaning).
    pub(crate) fn with_input(&self, input: LogicalPlan) -> PolicyBarrier {
        PolicyBarrier {
            table: self.table.clone(),
            input,
        }
    }
}

impl PartialOrd for PolicyBarrier {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.table.partial_cmp(&other.table)
    }
}

impl UserDefinedLogicalNodeCore for PolicyBarrier {
    fn name(&self) -> &str {
        "LakegatePolicy"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    /// Every column: no predicate is pushed below the barrier.
    fn prevent_predicate_push_down_columns(&self) -> HashSet<String> {
        self.input
            .schema()
            .columns()
            .into_iter()
            .map(|c| c.flat_name())
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakegatePolicy: table={}", self.table)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let Some(input) = inputs.pop() else {
            return plan_err!("LakegatePolicy needs one input");
        };
        Ok(PolicyBarrier {
            table: self.table.clone(),
            input,
        })
    }

    /// Unused columns may be pruned below the barrier: pruning does not reorder predicates.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        Some(vec![output_columns.to_vec()])
    }

    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

/// A user's session's planning rules on top of DataFusion's: `analyzer_rules` and
/// `optimizer_rules`. The gateway's sessions, the tests and the planning benchmark all plan
/// with exactly these.
pub fn with_policy(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder
        .with_analyzer_rules(analyzer_rules())
        .with_optimizer_rules(optimizer_rules())
}

/// DataFusion's optimizer rules, with `PushSafePredicates` right after its filter pushdown and
/// that pushdown once more after it, so what the rule moves under a barrier reaches the scan in
/// the same pass; and the limit pushdown once more at the end, which takes away the limit its
/// first run leaves above a sort it gave the limit to. A pass then leaves nothing for the next
/// one to change, and the optimizer stops after two passes where it took three (each pass
/// walks every node with every rule: a third of a first planning's optimizing).
pub fn optimizer_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let filter_pushdown = PushDownFilter::new();
    let mut rules = Vec::new();
    let mut placed = false;
    for rule in Optimizer::new().rules {
        let is_filter_pushdown = rule.name() == filter_pushdown.name();
        rules.push(rule);
        if is_filter_pushdown && !placed {
            rules.push(Arc::new(crate::pushdown::PushSafePredicates));
            rules.push(Arc::new(PushDownFilter::new()));
            placed = true;
        }
    }
    if !placed {
        // Still correct, a pass later: the next pass's filter pushdown takes the moved
        // predicates on.
        rules.push(Arc::new(crate::pushdown::PushSafePredicates));
    }
    rules.push(Arc::new(PushDownLimit::new()));
    rules
}

/// A user's session's analyzer rules: `EnforcePolicy` first, so no other rule sees a plan
/// before policy is on it, then DataFusion's own.
pub fn analyzer_rules() -> Vec<Arc<dyn datafusion::optimizer::AnalyzerRule + Send + Sync>> {
    let mut rules: Vec<Arc<dyn datafusion::optimizer::AnalyzerRule + Send + Sync>> =
        vec![Arc::new(EnforcePolicy)];
    rules.extend(datafusion::optimizer::Analyzer::new().rules);
    rules
}

/// The analyzer rule that enforces policy on every plan of a user's session. Any scan that is
/// neither a policy view nor a catalog table (pg_catalog, information_schema, table functions)
/// is refused, so a raw table can only be read through the barrier.
#[derive(Debug, Default)]
pub struct EnforcePolicy;

impl AnalyzerRule for EnforcePolicy {
    fn name(&self) -> &str {
        "lakegate_enforce_policy"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let used = column_names(&plan);
        enforce(plan, None, &used)
    }
}

/// Rewrites every scan of `plan`: policy views become barriers over their enforced plans,
/// views (catalog views, planned in the user's session) are inlined and rewritten in turn, and
/// any other scan is refused unless it is a catalog table or a table function. Inside a
/// barrier (`own_raw`), the view's own raw table is the one scan allowed through.
///
/// Views are inlined here rather than by DataFusion's `InlineTableScan`, which runs after this
/// rule and would expose a view body's scans unrewritten.
fn enforce(
    plan: LogicalPlan,
    own_raw: Option<&Arc<dyn TableProvider>>,
    used: &Option<HashSet<String>>,
) -> Result<LogicalPlan> {
    plan.transform_down_with_subqueries(|node| {
        if let LogicalPlan::Extension(ext) = &node
            && ext.node.as_any().is::<PolicyBarrier>()
        {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        }
        let LogicalPlan::TableScan(scan) = &node else {
            return Ok(Transformed::no(node));
        };
        let provider = source_as_provider(&scan.source)?;
        // A view (even a policy view's own input) is inlined and rewritten first.
        if let Some(body) = scan.source.get_logical_plan() {
            let body = body.into_owned();
            let used = column_names(&body);
            let body = enforce(body, None, &used)?;
            let aliased = SubqueryAlias::try_new(Arc::new(body), scan.table_name.clone())?;
            return Ok(Transformed::new(
                LogicalPlan::SubqueryAlias(aliased),
                true,
                TreeNodeRecursion::Jump,
            ));
        }
        if own_raw.is_some_and(|raw| Arc::ptr_eq(raw, &provider)) {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        }
        if scan.projection.is_some() || !scan.filters.is_empty() || scan.fetch.is_some() {
            // The analyzer sees scans as the SQL planner made them, bare; anything else is a bug.
            return Err(DataFusionError::Internal(format!(
                "unexpected pushed-down scan of {}",
                scan.table_name
            )));
        }
        if let Some(view) = provider.downcast_ref::<PolicyView>() {
            // What the narrowed plan names is what it needs from beneath (a view's body, which
            // may be inlined in it already, and its scans).
            let narrowed = view.narrowed(used)?;
            let used = column_names(&narrowed);
            let barrier = LogicalPlan::Extension(Extension {
                node: Arc::new(PolicyBarrier {
                    table: view.table.clone(),
                    input: enforce(narrowed, Some(&view.raw), &used)?,
                }),
            });
            let aliased = SubqueryAlias::try_new(Arc::new(barrier), scan.table_name.clone())?;
            return Ok(Transformed::new(
                LogicalPlan::SubqueryAlias(aliased),
                true,
                TreeNodeRecursion::Jump,
            ));
        }
        let system = matches!(
            scan.table_name.schema(),
            Some("pg_catalog") | Some("information_schema")
        );
        let table_function =
            scan.table_name.schema().is_none() && provider.downcast_ref::<ListingTable>().is_none();
        if system || table_function {
            Ok(Transformed::no(node))
        } else {
            plan_err!("relation \"{}\" does not exist", scan.table_name)
        }
    })
    .map(|t| t.data)
}

/// Physical form of the barrier: passes batches through, accepts no pushed-down filters.
#[derive(Debug)]
pub struct PolicyBarrierExec {
    table: String,
    input: Arc<dyn ExecutionPlan>,
}

impl PolicyBarrierExec {
    pub fn new(table: String, input: Arc<dyn ExecutionPlan>) -> Self {
        PolicyBarrierExec { table, input }
    }
}

impl DisplayAs for PolicyBarrierExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakegatePolicyExec: table={}", self.table)
    }
}

impl ExecutionPlan for PolicyBarrierExec {
    fn name(&self) -> &str {
        "LakegatePolicyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(PolicyBarrierExec {
                table: self.table.clone(),
                input,
            })),
            _ => plan_err!("LakegatePolicyExec needs one input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// Plans `PolicyBarrier` nodes as `PolicyBarrierExec`.
#[derive(Debug, Default)]
pub struct PolicyExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for PolicyExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(barrier) = node.as_any().downcast_ref::<PolicyBarrier>() else {
            return Ok(None);
        };
        match physical_inputs {
            [input] => Ok(Some(Arc::new(PolicyBarrierExec::new(
                barrier.table.clone(),
                input.clone(),
            )))),
            _ => plan_err!("LakegatePolicy needs one input"),
        }
    }
}

/// Keeps the compiler honest that views are shareable across a session's tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + Any>() {}
    assert_send_sync::<PolicyView>();
};
