//! Enforcement on the plan.
//!
//! A user's session holds a `PolicyView` per table that user may read: its schema is what the
//! user sees, and it cannot be scanned. The `EnforcePolicy` analyzer rule, which runs before
//! any other rule on every plan a session builds (simple and extended protocol, cursors,
//! EXPLAIN, catalog queries), replaces each scan of a `PolicyView` with
//! `SubqueryAlias(PolicyBarrier(Projection(masks) ← Filter(row filter) ← TableScan(raw)))`,
//! the projection narrowed to the columns the query names of that table (`ColumnsUsed`,
//! `PolicyView::narrowed`).
//!
//! The barrier keeps user predicates above the row filter: DataFusion's logical optimizer does
//! not push filters into an extension node whose columns it prevents, and the physical
//! `PolicyBarrierExec` refuses the query's predicates (only DataFusion's dynamic join/TopK
//! filters on unmasked columns pass it). So the row filter sees raw values, user predicates see
//! masked values, and no user predicate runs on a row the policy filtered out, except the
//! error-free ones on unmasked columns that `crate::pushdown` moves on purpose.
//!
//! Where the enforced plan allows it, the barrier is sealed (`crate::seal`): the view keeps the
//! enforced plan optimized once per set of columns, and the query's optimizer sees a leaf.
use std::any::Any;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
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
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_plan::filter_pushdown::{
    ChildFilterDescription, FilterDescription, FilterPushdownPhase,
};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::columns::ColumnsUsed;
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
    /// Whether the enforced plan may be sealed (`seals`).
    sealable: bool,
    /// The enforced plan narrowed to a set of columns (by position), analyzed and optimized on
    /// its own: what a sealed barrier holds. A session plans many queries over the same few
    /// columns of a table.
    sealed_by_columns: Mutex<HashMap<Vec<usize>, LogicalPlan>>,
}

/// How many column sets a view keeps sealed plans for; past it, the next is sealed anew each
/// time it is asked for (a client naming ever new sets of a wide table's columns).
const SEALED_PER_VIEW: usize = 64;

impl PolicyView {
    pub fn new(table: impl Into<String>, rule: impl Into<String>, access: CompiledAccess) -> Self {
        let schema = Arc::new(access.plan.schema().as_arrow().clone());
        let sealable = crate::seal::seals(&access.plan, &access.raw);
        PolicyView {
            table: table.into(),
            rule: rule.into(),
            schema,
            enforced: access.plan,
            raw: access.raw,
            table_type: TableType::Base,
            sealable,
            sealed_by_columns: Mutex::new(HashMap::new()),
        }
    }

    /// Shown to catalogs as a view (`pg_class.relkind = 'v'`) rather than a table.
    pub fn as_view(mut self) -> Self {
        self.table_type = TableType::View;
        self
    }

    /// Plans this view's barrier open in every query, as before barriers were sealed: what a
    /// sealed barrier must open to (the tests compare the two).
    pub fn never_sealed(mut self) -> Self {
        self.sealable = false;
        self
    }

    /// The policy rule that granted this view, for audit and logs.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The positions of the enforced plan's columns named in `used` (at least one: a `count(*)`
    /// names none); None for all of them (`used` is None, or names them all). A query names a
    /// few columns of a wide table; computing and carrying every masked column until
    /// DataFusion's optimizer drops them was most of what policy added to planning.
    fn kept(&self, used: &Option<HashSet<String>>) -> Option<Vec<usize>> {
        let (LogicalPlan::Projection(projection), Some(used)) = (&self.enforced, used) else {
            return None;
        };
        let named = |i: &usize| used.contains(projection.schema.field(*i).name());
        let mut kept: Vec<usize> = (0..projection.expr.len()).filter(named).collect();
        if kept.len() == projection.expr.len() {
            return None;
        }
        if kept.is_empty() {
            kept.push(0);
        }
        Some(kept)
    }

    /// The enforced plan projecting only the `kept` columns. The row filter beneath is
    /// untouched.
    fn narrowed(&self, kept: &Option<Vec<usize>>) -> Result<LogicalPlan> {
        let (LogicalPlan::Projection(projection), Some(kept)) = (&self.enforced, kept) else {
            return Ok(self.enforced.clone());
        };
        let exprs = kept.iter().map(|i| projection.expr[*i].clone()).collect();
        Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            projection.input.clone(),
        )?))
    }

    /// The barrier for a query naming `used`: sealed where the view's enforced plan may be
    /// (its sealed plan for these columns made once), open otherwise.
    pub(crate) fn barrier(
        &self,
        view: &Arc<dyn TableProvider>,
        used: &Option<HashSet<String>>,
        config: &ConfigOptions,
    ) -> Result<PolicyBarrier> {
        let kept = self.kept(used);
        let key = kept.clone().unwrap_or_default();
        if self.sealable {
            let mut sealed = self.sealed_plans();
            if let Some(input) = sealed.get(&key) {
                return Ok(self.sealed_barrier(view, input.clone()));
            }
            if let Some(input) = narrowed_from_wider(&sealed, &key, config) {
                let input = input?;
                if sealed.len() < SEALED_PER_VIEW {
                    sealed.insert(key, input.clone());
                }
                return Ok(self.sealed_barrier(view, input));
            }
        }
        // What the narrowed plan names is what it needs from beneath (a view's body, which may
        // be inlined in it already, and its scans).
        let narrowed = self.narrowed(&kept)?;
        let used = ColumnsUsed::of(&narrowed);
        let input = enforce(narrowed, Some(&self.raw), &used, config)?;
        if !self.sealable {
            return Ok(PolicyBarrier::open(self.table.clone(), input));
        }
        let input = crate::seal::seal(input, config)?;
        let mut sealed = self.sealed_plans();
        if sealed.len() < SEALED_PER_VIEW {
            sealed.insert(key, input.clone());
        }
        Ok(self.sealed_barrier(view, input))
    }

    fn sealed_barrier(&self, view: &Arc<dyn TableProvider>, input: LogicalPlan) -> PolicyBarrier {
        PolicyBarrier {
            table: self.table.clone(),
            input,
            sealed: Some(view.clone()),
        }
    }

    fn sealed_plans(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<usize>, LogicalPlan>> {
        // A panic while holding the lock left at worst a missing entry: the map stays usable.
        self.sealed_by_columns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The plan for the columns at `key` cut from one sealed for more of them, if one is kept and
/// narrows (`seal::narrow`): a later query naming fewer of a table's columns, or DataFusion's
/// pruning leaving fewer than the query named (`NarrowSealedBarriers`).
fn narrowed_from_wider(
    sealed: &HashMap<Vec<usize>, LogicalPlan>,
    key: &[usize],
    config: &ConfigOptions,
) -> Option<Result<LogicalPlan>> {
    if key.is_empty() {
        return None; // every column: nothing is wider
    }
    sealed.iter().find_map(|(wider, plan)| {
        // Positions in the wider plan's projection; an empty key kept every column.
        let positions = match wider.is_empty() {
            true => Some(key.to_vec()),
            false => key
                .iter()
                .map(|k| wider.binary_search(k).ok())
                .collect::<Option<Vec<_>>>(),
        }?;
        crate::seal::narrow(plan, &positions, config)
    })
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
///
/// A sealed barrier holds an enforced plan already analyzed and optimized (`PolicyView`'s
/// sealed plans) and shows the session's analyzer and optimizer no input: they would only walk
/// its nodes again, in every pass, which was most of what policy added to a first planning.
/// `unseal` opens it once the query's plan is optimized, moving the query's safe predicates in
/// (`PushSafePredicates`), before anything reads the plan's tables or plans it physically.
#[derive(Debug, Clone)]
pub struct PolicyBarrier {
    table: String,
    pub(crate) input: LogicalPlan,
    /// The view a sealed barrier was made from, to seal it again for fewer columns
    /// (`NarrowSealedBarriers`); None once open.
    pub(crate) sealed: Option<Arc<dyn TableProvider>>,
}

impl PartialEq for PolicyBarrier {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
            && self.input == other.input
            && match (&self.sealed, &other.sealed) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl Eq for PolicyBarrier {}

impl std::hash::Hash for PolicyBarrier {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.table.hash(state);
        self.input.hash(state);
        self.sealed.is_some().hash(state);
    }
}

impl PolicyBarrier {
    fn open(table: String, input: LogicalPlan) -> Self {
        PolicyBarrier {
            table,
            input,
            sealed: None,
        }
    }

    /// The table enforced, as `database.table`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The enforced plan: masks and row filter over the table's own scan.
    pub fn input(&self) -> &LogicalPlan {
        &self.input
    }

    /// Whether the barrier is still sealed (`unseal` opens it).
    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Whether a column the barrier passes is masked by an expression that could fail on some
    /// value (a data owner's SQL with a cast, say), or computed where it cannot be seen: an
    /// engine that evaluates a query's predicate on such a column before the row filter would
    /// run the mask on hidden rows. Where the enforced plan is not a projection, every column
    /// counts as such.
    pub fn has_mask_that_may_fail(&self) -> bool {
        let LogicalPlan::Projection(projection) = &self.input else {
            return !self.input.schema().fields().is_empty();
        };
        let unmasked = crate::pushdown::unmasked_columns(projection);
        projection
            .expr
            .iter()
            .zip(projection.schema.fields())
            .filter(|(_, field)| !unmasked.contains_key(field.name()))
            .any(|(expr, _)| match expr.clone().unalias() {
                Expr::Column(_) => true,
                mask => !crate::pushdown::is_error_free(&mask),
            })
    }

    /// The same barrier, open, over another enforced plan (only for rules that keep its
    /// meaning).
    pub(crate) fn with_input(&self, input: LogicalPlan) -> PolicyBarrier {
        PolicyBarrier::open(self.table.clone(), input)
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
        if self.is_sealed() {
            vec![]
        } else {
            vec![&self.input]
        }
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
        write!(f, "LakegatePolicy: table={}", self.table)?;
        if self.is_sealed() {
            // The optimizer does not walk a sealed plan, so EXPLAIN's tree would not show it.
            write!(f, ", sealed=[{}]", crate::seal::one_line(&self.input))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if self.is_sealed() {
            return match inputs.is_empty() {
                true => Ok(self.clone()),
                false => plan_err!("a sealed LakegatePolicy has no input"),
            };
        }
        let (Some(input), true) = (inputs.pop(), inputs.is_empty()) else {
            return plan_err!("LakegatePolicy needs one input");
        };
        Ok(self.with_input(input))
    }

    /// Unused columns may be pruned below an open barrier: pruning does not reorder
    /// predicates. A sealed one has no input to prune.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        if self.is_sealed() {
            Some(vec![])
        } else {
            Some(vec![output_columns.to_vec()])
        }
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
    rules.push(Arc::new(crate::seal::NarrowSealedBarriers));
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

    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let used = ColumnsUsed::of(&plan);
        enforce(plan, None, &used, config)
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
    used: &Option<ColumnsUsed>,
    config: &ConfigOptions,
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
            let used = ColumnsUsed::of(&body);
            let body = enforce(body, None, &used, config)?;
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
            let names = used.as_ref().map(|used| used.of_table(&scan.table_name));
            let barrier = LogicalPlan::Extension(Extension {
                node: Arc::new(view.barrier(&provider, &names, config)?),
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

/// Physical form of the barrier: passes batches and statistics through, and lets through only
/// the dynamic filters DataFusion derives while a query runs (a hash join's build-side keys, a
/// TopK's threshold) on columns it passes unmasked.
///
/// Such a filter compares raw values with values already read from rows the user may see: like
/// the error-free predicates `pushdown` moves, it cannot fail on a hidden row, and only drops
/// earlier what the query's join or TopK would drop. Through a mask it would run the mask (a
/// data owner's SQL) on hidden rows, so masked columns keep it above. The query's own
/// predicates (the `Pre` phase) are never let through here: the logical plan has already moved
/// the ones that may go.
#[derive(Debug)]
pub struct PolicyBarrierExec {
    table: String,
    input: Arc<dyn ExecutionPlan>,
    /// The columns passed through unmasked, by name.
    unmasked: Arc<HashSet<String>>,
}

impl PolicyBarrierExec {
    pub fn new(table: String, input: Arc<dyn ExecutionPlan>, unmasked: HashSet<String>) -> Self {
        PolicyBarrierExec {
            table,
            input,
            unmasked: Arc::new(unmasked),
        }
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
                unmasked: self.unmasked.clone(),
            })),
            _ => plan_err!("LakegatePolicyExec needs one input"),
        }
    }

    // The enforced plan's estimates (row filter included), so that a join builds its hash
    // table from the smaller side, as it would over the table alone. Estimates only: no
    // optimizer rule may take an answer from them (`count(*)`, `max(x)` from file metadata),
    // every answer is computed above the barrier. Plans are not shown to users (EXPLAIN is
    // logical only).
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats {
            [input] => Ok(Arc::new(input.as_ref().clone().to_inexact())),
            _ => plan_err!("LakegatePolicyExec needs one input"),
        }
    }

    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        let only_dynamic = parent_filters
            .iter()
            .all(|filter| filter.downcast_ref::<DynamicFilterPhysicalExpr>().is_some());
        if phase != FilterPushdownPhase::Post || !only_dynamic {
            return Ok(FilterDescription::all_unsupported(
                &parent_filters,
                &self.children(),
            ));
        }
        let schema = self.schema();
        let unmasked = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, field)| self.unmasked.contains(field.name()))
            .map(|(index, _)| index)
            .collect();
        Ok(FilterDescription::new().with_child(
            ChildFilterDescription::from_child_with_allowed_indices(
                &parent_filters,
                unmasked,
                &self.input,
            )?,
        ))
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
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(barrier) = node.as_any().downcast_ref::<PolicyBarrier>() else {
            return Ok(None);
        };
        let unmasked = match &barrier.input {
            LogicalPlan::Projection(projection) => crate::pushdown::unmasked_columns(projection)
                .into_keys()
                .collect(),
            // Not the enforced plan's usual shape: nothing is known to pass unmasked.
            _ => HashSet::new(),
        };
        if barrier.is_sealed() {
            // Left sealed (`unseal` was not run): its plan is planned as it is.
            let input = planner
                .create_physical_plan(&barrier.input, session)
                .await?;
            return Ok(Some(Arc::new(PolicyBarrierExec::new(
                barrier.table.clone(),
                input,
                unmasked,
            ))));
        }
        match physical_inputs {
            [input] => Ok(Some(Arc::new(PolicyBarrierExec::new(
                barrier.table.clone(),
                input.clone(),
                unmasked,
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
