//! Physical plans of generic plans over a table kept in memory, made again for each run's
//! values without planning: a prepared point lookup, run over and over with a new id.
//!
//! Such a lookup spent over half its time in DataFusion's physical planner, building on every
//! run the same few nodes around new values. DataFusion's physical plans have no placeholders,
//! so the template is planned once with each placeholder as a call of `Parameter` (a function
//! that never runs), and each run builds the nodes again from it: the values in place of the
//! calls, and a new scan of the table, asked of its provider as a planning would ask it (its
//! files are checked as on every scan; a table that changed is read again).
//!
//! Only where that gives the plan a planning would: one table, read from memory, beneath
//! nodes that keep no state between runs, with values only in filters and projections (the
//! nodes whose expressions are built again here). Any other plan is planned on every run.
//! Where the plan is only filters and projections above its scan (a lookup's is), a run builds
//! no nodes at all: `kept_run` applies their expressions to the kept rows.
use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, Result, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::{Placeholder, ScalarFunction};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TableProviderFilterPushDown, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use lakegate_policy::PolicyBarrierExec;

use crate::kept_run::Chain;
use crate::plan_cache::keeps_no_state;

/// A generic plan's physical plan, with its values and its table's rows left out.
#[derive(Debug)]
pub struct Template {
    plan: Arc<dyn ExecutionPlan>,
    table: TableRead,
    /// The plan's filters and projections, where it is only those above its scan: a run then
    /// applies them to the kept rows without building the nodes.
    chain: Option<Chain>,
    /// Plans made from it.
    runs: AtomicU64,
}

/// The one table a template reads, as its scan was planned: what to ask its provider again.
#[derive(Debug)]
struct TableRead {
    provider: Arc<dyn TableProvider>,
    /// The filters the scan was given, placeholders in them: with each run's values, they let
    /// a kept table look its rows up (the filters above the scan apply them all the same).
    filters: Vec<Expr>,
    projection: Option<Vec<usize>>,
    fetch: Option<usize>,
    schema: SchemaRef,
    /// Stands in the template where the scan goes: the rows it read are not kept here, so a
    /// template never holds a table's old rows in memory.
    stand_in: Arc<dyn ExecutionPlan>,
}

impl Template {
    /// The template of `generic` (optimized, placeholders in it), or none where its runs could
    /// differ from a planning with their values.
    pub async fn make(generic: &LogicalPlan, state: &SessionState) -> Option<Template> {
        let (provider, filters) = only_table(generic)?;
        let calls = with_parameter_calls(generic).ok()?;
        // The session's own planner: it routes (a query for Athena plans to a node no
        // template takes) and plans the policy barriers.
        let planned = state
            .query_planner()
            .create_physical_plan(&calls, state)
            .await
            .ok()?;
        if !takes(&planned) {
            return None;
        }
        let mut table = None;
        let plan = without_rows(&planned, provider, &filters, &mut table).ok()?;
        let table = table?;
        let chain = table
            .fetch
            .is_none()
            .then(|| Chain::of(&plan, &table.stand_in))
            .flatten();
        Some(Template {
            plan,
            table,
            chain,
            runs: AtomicU64::new(0),
        })
    }

    /// The plan to run with `params`. `None` where the table is no longer read from memory
    /// (it changed and outgrew its share, or keeping tables was turned off): this template
    /// is then of no more use.
    pub async fn with_values(
        &self,
        state: &SessionState,
        params: &ParamValues,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let read = &self.table;
        let filters = with_values_in(&read.filters, params);
        let scan = read
            .provider
            .scan(state, read.projection.as_ref(), &filters, read.fetch)
            .await?;
        let Some(memory) = memory_scan(&scan).filter(|_| scan.schema() == read.schema) else {
            return Ok(None);
        };
        if let Some(chain) = &self.chain
            && datafusion::datasource::source::DataSource::fetch(memory).is_none()
        {
            let bound = chain.bound(|expr| bind(expr, params))?;
            if bound.holds(&|expr| parameter_of(expr).is_some()) {
                return internal_err!("a parameter was left unbound in a kept plan");
            }
            self.runs.fetch_add(1, Ordering::Relaxed);
            return bound.over(memory).map(Some);
        }
        let plan = self.build(&self.plan, &scan, params)?;
        if holds_parameters(&plan)? {
            return internal_err!("a parameter was left unbound in a kept plan");
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(Some(plan))
    }

    /// How many plans were made from this template (for tests).
    #[cfg(test)]
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// `node` made again, bottom up: each node once, with its children as made for this run.
    fn build(
        &self,
        node: &Arc<dyn ExecutionPlan>,
        scan: &Arc<dyn ExecutionPlan>,
        params: &ParamValues,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if Arc::ptr_eq(node, &self.table.stand_in) {
            return Ok(scan.clone());
        }
        let children = node
            .children()
            .into_iter()
            .map(|child| self.build(child, scan, params))
            .collect::<Result<Vec<_>>>()?;
        let any: &dyn Any = node.as_ref();
        if let Some(filter) = any.downcast_ref::<FilterExec>() {
            let [input] = <[_; 1]>::try_from(children).map_err(|_| {
                datafusion::error::DataFusionError::Internal("a filter's input".into())
            })?;
            let filter = FilterExecBuilder::new(bind(filter.predicate(), params)?, input)
                .apply_projection(filter.projection().as_ref().map(|p| p.to_vec()))?
                .with_default_selectivity(filter.default_selectivity())
                .with_batch_size(filter.batch_size())
                .with_fetch(filter.fetch())
                .build()?;
            return Ok(Arc::new(filter));
        }
        if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
            let [input] = <[_; 1]>::try_from(children).map_err(|_| {
                datafusion::error::DataFusionError::Internal("a projection's input".into())
            })?;
            let exprs = projection
                .expr()
                .iter()
                .map(|e| Ok(ProjectionExpr::new(bind(&e.expr, params)?, e.alias.clone())))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Arc::new(ProjectionExec::try_new(exprs, input)?));
        }
        if children.is_empty() {
            // leaves other than the scan (an empty relation, a row of constants) hold no state
            return Ok(node.clone());
        }
        node.clone().replace_children(children, recompute())
    }
}

/// The provider of the plan's one table scan (subqueries included) and the scan's filters, if
/// it has exactly one and applies none of the filters given to it exactly: DataFusion drops a
/// filter a provider takes as exact from the plan, and a template's runs apply every filter
/// above the scan (a scan may only leave out rows they would not keep).
fn only_table(plan: &LogicalPlan) -> Option<(Arc<dyn TableProvider>, Vec<Expr>)> {
    let mut scans = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let filters: Vec<&Expr> = scan.filters.iter().collect();
            let provider = source_as_provider(&scan.source).ok().filter(|provider| {
                provider
                    .supports_filters_pushdown(&filters)
                    .is_ok_and(|how| !how.contains(&TableProviderFilterPushDown::Exact))
            });
            scans.push(provider.map(|provider| (provider, scan.filters.clone())));
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    match <[_; 1]>::try_from(scans) {
        Ok([provider]) => provider,
        Err(_) => None,
    }
}

/// The plan with each typed placeholder as a call of its `Parameter`; an error where one has
/// no type.
fn with_parameter_calls(plan: &LogicalPlan) -> Result<LogicalPlan> {
    plan.clone()
        .transform_up_with_subqueries(|node| {
            node.map_expressions(|expr| {
                expr.transform_up(|expr| match expr {
                    Expr::Placeholder(Placeholder {
                        id,
                        field: Some(field),
                    }) => {
                        let call = ScalarUDF::new_from_impl(Parameter::new(id, field));
                        Ok(Transformed::yes(Expr::ScalarFunction(
                            ScalarFunction::new_udf(Arc::new(call), vec![]),
                        )))
                    }
                    Expr::Placeholder(Placeholder { id, field: None }) => {
                        internal_err!("parameter {id} has no type")
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
}

/// Whether a template may be made of `plan`: every node one that keeps no state between runs
/// and is built again here, one scan of kept rows, and values nowhere but in filters and
/// projections.
fn takes(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut scans = 0;
    let mut fits = true;
    let _ = plan.apply(|node| {
        let any: &dyn Any = node.as_ref();
        let rebuilt = any.is::<FilterExec>() || any.is::<ProjectionExec>();
        let passes = keeps_no_state(node.as_ref()) || any.is::<PolicyBarrierExec>();
        let scan = memory_scan(node).is_some_and(|m| m.sort_information().is_empty());
        scans += usize::from(scan);
        fits = rebuilt || ((passes || scan) && !node_holds_parameters(node.as_ref()));
        Ok(if fits {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    fits && scans == 1
}

fn memory_scan(node: &Arc<dyn ExecutionPlan>) -> Option<&MemorySourceConfig> {
    let any: &dyn Any = node.as_ref();
    let source: &dyn Any = any.downcast_ref::<DataSourceExec>()?.data_source().as_ref();
    source.downcast_ref::<MemorySourceConfig>()
}

/// The template: `plan` with its scan's rows replaced by a stand-in, and what the scan read.
fn without_rows(
    plan: &Arc<dyn ExecutionPlan>,
    provider: Arc<dyn TableProvider>,
    filters: &[Expr],
    table: &mut Option<TableRead>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(memory) = memory_scan(plan) {
        let schema = plan.schema();
        let stand_in: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema.clone()));
        *table = Some(TableRead {
            provider,
            filters: filters.to_vec(),
            projection: memory.projection().clone(),
            fetch: datafusion::datasource::source::DataSource::fetch(memory),
            schema,
            stand_in: stand_in.clone(),
        });
        return Ok(stand_in);
    }
    let children = plan
        .children()
        .into_iter()
        .map(|child| without_rows(child, provider.clone(), filters, table))
        .collect::<Result<Vec<_>>>()?;
    if children.is_empty() {
        return Ok(plan.clone());
    }
    plan.clone().replace_children(children, recompute())
}

/// New children: the node's properties computed again for them.
fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// The scan's filters with each placeholder replaced by its value, as the type it was planned
/// with; a filter that cannot take its values is left out (the scan then keeps more rows).
fn with_values_in(filters: &[Expr], params: &ParamValues) -> Vec<Expr> {
    let bound = |filter: &Expr| {
        filter.clone().transform_up(|expr| match expr {
            Expr::Placeholder(Placeholder {
                id,
                field: Some(field),
            }) => {
                let given = params.get_placeholders_with_values(&id)?;
                let value = value_as(&given, field.data_type())?;
                Ok(Transformed::yes(Expr::Literal(value.value, value.metadata)))
            }
            Expr::Placeholder(Placeholder { id, field: None }) => {
                internal_err!("parameter {id} has no type")
            }
            other => Ok(Transformed::no(other)),
        })
    };
    filters
        .iter()
        .filter_map(|filter| bound(filter).ok().map(|t| t.data))
        .collect()
}

/// `expr` with each parameter's call replaced by its value, as the type it was planned with.
fn bind(expr: &Arc<dyn PhysicalExpr>, params: &ParamValues) -> Result<Arc<dyn PhysicalExpr>> {
    expr.clone()
        .transform_up(|expr| {
            let Some(parameter) = parameter_of(expr.as_ref()) else {
                return Ok(Transformed::no(expr));
            };
            let given = params.get_placeholders_with_values(&parameter.id)?;
            let value = value_as(&given, parameter.field.data_type())?;
            Ok(Transformed::yes(
                Arc::new(RunValue(Literal::new_with_metadata(
                    value.value,
                    value.metadata,
                ))) as Arc<dyn PhysicalExpr>,
            ))
        })
        .map(|t| t.data)
}

/// A value as the type its placeholder was planned with (as `plan_cache::bind` binds them).
fn value_as(given: &ScalarAndMetadata, planned: &DataType) -> Result<ScalarAndMetadata> {
    if &given.value.data_type() == planned {
        return Ok(given.clone());
    }
    Ok(ScalarAndMetadata {
        value: given.value.cast_to(planned)?,
        metadata: given.metadata.clone(),
    })
}

fn parameter_of(expr: &dyn PhysicalExpr) -> Option<&Parameter> {
    let any: &dyn Any = expr;
    let call = any.downcast_ref::<ScalarFunctionExpr>()?;
    let function: &dyn Any = call.fun().inner().as_ref();
    function.downcast_ref::<Parameter>()
}

fn node_holds_parameters(node: &dyn ExecutionPlan) -> bool {
    let mut found = false;
    let _ = node.apply_expressions(&mut |expr| {
        let _ = expr.apply(|e| {
            found |= parameter_of(e.as_ref()).is_some();
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        });
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

fn holds_parameters(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    let mut found = false;
    plan.apply(|node| {
        found = node_holds_parameters(node.as_ref());
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// A run's value in a plan made from a template: it evaluates and displays as its literal
/// does, but DataFusion's interval analysis does not take it for a literal. A `FilterExec`
/// built around a literal works out the statistics and constants its predicate implies
/// (interval analysis, a tenth of a prepared lookup's CPU at 32 clients). Only the physical
/// optimizer reads them, and it ran once, on the template; running the plan does not.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RunValue(Literal);

impl fmt::Display for RunValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl PhysicalExpr for RunValue {
    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.0.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        self.0.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(self)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_sql(f)
    }
}

/// A placeholder in a template: named as the placeholder (so columns are named as in the
/// plan with values), typed as it was planned. It never runs: each run puts its value there.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Parameter {
    id: String,
    field: FieldRef,
    signature: Signature,
}

impl Parameter {
    fn new(id: String, field: FieldRef) -> Parameter {
        Parameter {
            id,
            field,
            // volatile: nothing may fold it, or move it where this module does not look
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for Parameter {
    fn name(&self) -> &str {
        "lakegate_parameter"
    }

    fn display_name(&self, _args: &[Expr]) -> Result<String> {
        Ok(self.id.clone())
    }

    fn schema_name(&self, _args: &[Expr]) -> Result<String> {
        Ok(self.id.clone())
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.field.data_type().clone())
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(self.field.clone())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("parameter {} ran without its value", self.id)
    }
}

/// What a cached generic plan knows of its template: none tried yet, one being made (by the
/// run that first needed it; others plan as before meanwhile), made, or none to be had.
#[derive(Debug, Default)]
enum Slot {
    #[default]
    Untried,
    Making,
    Made(Arc<Template>),
    Unfit,
}

/// A cached plan's template, shared by every run of it.
#[derive(Debug, Default, Clone)]
pub struct TemplateSlot(Arc<Mutex<Slot>>);

impl TemplateSlot {
    pub fn made(&self) -> Option<Arc<Template>> {
        match &*self.lock() {
            Slot::Made(template) => Some(template.clone()),
            _ => None,
        }
    }

    /// Whether the caller is to make the template (nobody has tried yet).
    pub fn start(&self) -> bool {
        let mut slot = self.lock();
        let untried = matches!(*slot, Slot::Untried);
        if untried {
            *slot = Slot::Making;
        }
        untried
    }

    pub fn set(&self, template: Option<Template>) {
        *self.lock() = template.map_or(Slot::Unfit, |t| Slot::Made(Arc::new(t)));
    }

    /// The template no longer fits its table (see `Template::with_values`).
    pub fn unfit(&self) {
        *self.lock() = Slot::Unfit;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // a panic while holding this lock leaves a valid slot
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::Field;
    use datafusion::catalog::Session;
    use datafusion::common::ScalarValue;
    use datafusion::datasource::MemTable;
    use datafusion::logical_expr::TableType;
    use datafusion::prelude::SessionContext;

    /// A table of `n` 1..=3 that says it applies filters as `how` says (it applies none), and
    /// notes the filters each scan is given.
    #[derive(Debug)]
    struct Pushing {
        table: MemTable,
        how: TableProviderFilterPushDown,
        noted: Mutex<Vec<String>>,
    }

    impl Pushing {
        fn new(how: TableProviderFilterPushDown) -> Arc<Pushing> {
            Arc::new(Pushing {
                table: numbers(),
                how,
                noted: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl TableProvider for Pushing {
        fn schema(&self) -> SchemaRef {
            self.table.schema()
        }

        fn table_type(&self) -> TableType {
            TableType::Base
        }

        fn supports_filters_pushdown(
            &self,
            filters: &[&Expr],
        ) -> Result<Vec<TableProviderFilterPushDown>> {
            Ok(vec![self.how.clone(); filters.len()])
        }

        async fn scan(
            &self,
            state: &dyn Session,
            projection: Option<&Vec<usize>>,
            filters: &[Expr],
            limit: Option<usize>,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            let noted = filters.iter().map(|f| f.to_string()).collect::<Vec<_>>();
            *self.noted.lock().expect("notes") = noted;
            self.table.scan(state, projection, filters, limit).await
        }
    }

    fn numbers() -> MemTable {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let column = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let batch = RecordBatch::try_new(schema.clone(), vec![column]).expect("batch");
        MemTable::try_new(schema, vec![vec![batch]]).expect("table")
    }

    async fn template_of(provider: Arc<dyn TableProvider>) -> (SessionState, Option<Template>) {
        let context = SessionContext::new();
        context.register_table("t", provider).expect("registered");
        let state = context.state();
        let plan = state
            .create_logical_plan("SELECT n FROM t WHERE n = $1")
            .await
            .expect("plans");
        let generic = state.optimize(&plan).expect("optimizes");
        let template = Template::make(&generic, &state).await;
        (state, template)
    }

    /// A memory table's lookup runs from its template, one value per run; a table that applies
    /// filters exactly would lose its filter in a template, and gets none.
    #[tokio::test]
    async fn a_template_binds_each_run_and_never_drops_a_filter() {
        let (state, template) = template_of(Arc::new(numbers())).await;
        let template = template.expect("a template");
        for n in [1, 3, 4] {
            let params = ParamValues::List(vec![ScalarValue::Int64(Some(n)).into()]);
            let plan = template
                .with_values(&state, &params)
                .await
                .expect("made")
                .expect("the table is in memory");
            // a run's value shows in its plan as a literal would
            let shown = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(false)
                .to_string();
            assert!(shown.contains(&format!("n@0 = {n}")), "{shown}");
            // its expressions are there for DataFusion's walks, each value bound
            let mut seen = 0;
            plan.apply_expressions(&mut |_| {
                seen += 1;
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walks");
            assert!(seen > 0, "a run shows its expressions");
            assert!(!holds_parameters(&plan).expect("walks"), "{shown}");
            let batches = datafusion::physical_plan::collect(plan, state.task_ctx())
                .await
                .expect("runs");
            let found: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .expect("numbers")
                        .values()
                        .to_vec()
                })
                .collect();
            let expected: Vec<i64> = (1..=3).filter(|&m| m == n).collect();
            assert_eq!(found, expected, "n = {n}");
        }
        assert_eq!(template.runs(), 3);
        let (_, exact) = template_of(Pushing::new(TableProviderFilterPushDown::Exact)).await;
        assert!(exact.is_none(), "no template drops a filter");
    }

    /// Rows of `batches` as text lines, sorted (the order of a query without ORDER BY is
    /// not part of its answer), with the columns' names and types.
    fn answer(batches: &[RecordBatch]) -> (Vec<String>, Vec<String>) {
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let columns = batches.first().map_or_else(Vec::new, |b| {
            let schema = b.schema();
            let fields = schema.fields().iter();
            fields
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect()
        });
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .expect("formats")
            .to_string();
        let mut rows: Vec<String> = shown
            .lines()
            .filter(|line| line.starts_with('|'))
            .skip(1)
            .map(str::to_string)
            .collect();
        rows.sort();
        (columns, rows)
    }

    /// A run of a template's filters and projections over the kept rows answers as the query
    /// planned with its values does: nulls, predicates that are null, expressions of the
    /// value in the projection, rows in two partitions, no rows at all.
    #[tokio::test]
    async fn a_run_over_kept_rows_answers_as_a_planned_run() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = |n: Vec<Option<i64>>, s: Vec<Option<&str>>| {
            let n = Arc::new(Int64Array::from(n));
            let s = Arc::new(datafusion::arrow::array::StringArray::from(s));
            RecordBatch::try_new(schema.clone(), vec![n, s]).expect("batch")
        };
        let first = batch(
            vec![Some(1), Some(2), None],
            vec![Some("a"), None, Some("c")],
        );
        let second = batch(vec![Some(3), Some(4)], vec![Some("d"), Some("e")]);
        let table =
            MemTable::try_new(schema.clone(), vec![vec![first], vec![second]]).expect("table");
        let context = SessionContext::new();
        context
            .register_table("t", Arc::new(table))
            .expect("registered");
        let state = context.state();
        let cases = [
            "SELECT s, n + $1 AS m FROM t WHERE n > $1",
            "SELECT upper(s) AS u, n FROM t WHERE n = $1 OR s = 'c'",
            "SELECT n FROM t WHERE s IS NULL OR n <> $1",
            "SELECT n * $1 AS v, s FROM t WHERE n IN (1, $1)",
            "SELECT * FROM t WHERE n BETWEEN $1 AND $1 + 1",
        ];
        let values = [Some(1), Some(3), Some(9), None];
        let mut rows = 0;
        for sql in cases {
            let plan = state.create_logical_plan(sql).await.expect("plans");
            let generic = state.optimize(&plan).expect("optimizes");
            let template = Template::make(&generic, &state).await.expect(sql);
            assert!(template.chain.is_some(), "{sql}: runs over the kept rows");
            for value in values {
                let params = ParamValues::List(vec![ScalarValue::Int64(value).into()]);
                let run = template
                    .with_values(&state, &params)
                    .await
                    .expect("made")
                    .expect("the table is in memory");
                assert_eq!(run.name(), "LakegateKeptRunExec", "{sql}");
                let ran = datafusion::physical_plan::collect(run, state.task_ctx())
                    .await
                    .expect("runs");
                let with_values = plan.clone().with_param_values(params).expect("binds");
                let planned = context
                    .execute_logical_plan(with_values)
                    .await
                    .expect("plans with its values")
                    .collect()
                    .await
                    .expect("runs");
                let ran = answer(&ran);
                rows += ran.1.len();
                assert_eq!(ran, answer(&planned), "{sql} with {value:?}");
            }
        }
        assert!(rows > 10, "the cases find rows");
    }

    /// A run whose filter keeps no row of many kept batches gives way to the worker's other
    /// tasks before it has read them all, as DataFusion's memory scan does.
    #[tokio::test]
    async fn a_run_over_many_batches_gives_way() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batches = (0..1000)
            .map(|n| {
                let column = Arc::new(Int64Array::from(vec![n]));
                RecordBatch::try_new(schema.clone(), vec![column]).expect("batch")
            })
            .collect();
        let table = MemTable::try_new(schema, vec![batches]).expect("table");
        let (state, template) = template_of(Arc::new(table)).await;
        let template = template.expect("a template");
        let params = ParamValues::List(vec![ScalarValue::Int64(Some(-1)).into()]);
        let run = template
            .with_values(&state, &params)
            .await
            .expect("made")
            .expect("the table is in memory");
        assert_eq!(run.name(), "LakegateKeptRunExec");
        let mut rows = run.execute(0, state.task_ctx()).expect("runs");
        let first = futures::poll!(futures::StreamExt::next(&mut rows));
        assert!(first.is_pending(), "read all 1,000 batches in one go");
        assert!(
            futures::StreamExt::next(&mut rows).await.is_none(),
            "no row is -1"
        );
    }

    /// Each run's scan is given the filters with that run's values, as a planning would give
    /// them: a kept table looks its rows up by them.
    #[tokio::test]
    async fn each_run_scans_with_its_values_in_the_filters() {
        let noting = Pushing::new(TableProviderFilterPushDown::Inexact);
        let (state, template) = template_of(noting.clone()).await;
        let template = template.expect("a template");
        for n in [2, 3] {
            let params = ParamValues::List(vec![ScalarValue::Int64(Some(n)).into()]);
            let plan = template.with_values(&state, &params).await.expect("made");
            assert!(plan.is_some(), "the table is in memory");
            let noted = noting.noted.lock().expect("notes").clone();
            assert_eq!(noted, [format!("t.n = Int64({n})")]);
        }
    }
}
