//! A template's run as its filters and projections applied to the kept rows themselves.
//!
//! A lookup made from a template built a filter, a projection and a scan for each run and ran
//! them as streams. For one row, building the filter (it works out its properties again) and
//! the streams' per-batch work were about a quarter of the gateway's CPU at 32 clients. Where
//! a template's plan is a chain of filters and projections (and nodes that pass their input
//! on) above its one scan, a run is a single node instead: it applies the chain's expressions,
//! with the run's values in them, to each kept batch in turn, with the arrow functions the
//! nodes' streams call (filter, then the filter's projection, then the projection's
//! expressions), so it returns the rows those nodes would.
use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::cast::as_boolean_array;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::projection::{ProjectionExprs, Projector};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::TryStreamExt;
use lakegate_policy::PolicyBarrierExec;

/// One node of a chain, as its stream would treat a batch.
#[derive(Debug)]
enum Step {
    /// A `FilterExec`: the predicate on its input, then its projection, then the rows where
    /// the predicate is true (null is not true).
    Filter {
        predicate: Arc<dyn PhysicalExpr>,
        projection: Option<Vec<usize>>,
    },
    /// A `ProjectionExec`: its expressions, named as it names them.
    Project(Vec<ProjectionExpr>),
}

impl Step {
    fn exprs(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        match self {
            Step::Filter { predicate, .. } => vec![predicate],
            Step::Project(exprs) => exprs.iter().map(|e| &e.expr).collect(),
        }
    }
}

/// The filters and projections between a template's top and its scan, bottom up, with the
/// template's calls of its parameters still in them.
#[derive(Debug)]
pub struct Chain(Vec<Step>);

impl Chain {
    /// The chain from `plan` down to `scan`, if every node between is a filter, a projection
    /// or a node that passes its one input's batches on, and none stops early (a fetch).
    pub fn of(plan: &Arc<dyn ExecutionPlan>, scan: &Arc<dyn ExecutionPlan>) -> Option<Chain> {
        let mut steps = Vec::new();
        let mut node = plan;
        while !Arc::ptr_eq(node, scan) {
            let any: &dyn Any = node.as_ref();
            if let Some(filter) = any.downcast_ref::<FilterExec>() {
                if filter.fetch().is_some() {
                    return None;
                }
                steps.push(Step::Filter {
                    predicate: filter.predicate().clone(),
                    projection: filter.projection().as_ref().map(|p| p.to_vec()),
                });
            } else if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
                steps.push(Step::Project(projection.expr().to_vec()));
            } else if let Some(coalesce) = any.downcast_ref::<CoalescePartitionsExec>() {
                // a run reads the partitions one after the other, which is one of the orders
                // coalescing them may give
                if coalesce.fetch().is_some() {
                    return None;
                }
            } else if !any.is::<PolicyBarrierExec>() {
                return None;
            }
            let [input] = <[_; 1]>::try_from(node.children()).ok()?;
            node = input;
        }
        steps.reverse();
        Some(Chain(steps))
    }

    /// The chain with `bind` applied to each of its expressions.
    pub fn bound(
        &self,
        bind: impl Fn(&Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>>,
    ) -> Result<Chain> {
        let steps = self.0.iter().map(|step| {
            Ok(match step {
                Step::Filter {
                    predicate,
                    projection,
                } => Step::Filter {
                    predicate: bind(predicate)?,
                    projection: projection.clone(),
                },
                Step::Project(exprs) => Step::Project(
                    exprs
                        .iter()
                        .map(|e| Ok(ProjectionExpr::new(bind(&e.expr)?, e.alias.clone())))
                        .collect::<Result<_>>()?,
                ),
            })
        });
        Ok(Chain(steps.collect::<Result<_>>()?))
    }

    /// Whether any of the chain's expressions has a part for which `found` holds.
    pub fn holds(&self, found: &dyn Fn(&dyn PhysicalExpr) -> bool) -> bool {
        self.0.iter().flat_map(Step::exprs).any(|expr| {
            let mut hit = false;
            let _ = expr.apply(|e| {
                hit = found(e.as_ref());
                Ok(if hit {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            });
            hit
        })
    }

    /// The node that runs this (bound) chain over the rows `scan` holds.
    pub fn over(self, scan: &MemorySourceConfig) -> Result<Arc<dyn ExecutionPlan>> {
        let read = match scan.projection() {
            Some(columns) => Arc::new(scan.original_schema().project(columns)?),
            None => scan.original_schema(),
        };
        let mut schema = read.clone();
        let mut stages = Vec::with_capacity(self.0.len());
        for step in self.0 {
            stages.push(match step {
                Step::Filter {
                    predicate,
                    projection,
                } => {
                    if let Some(columns) = &projection {
                        schema = Arc::new(schema.project(columns)?);
                    }
                    Stage::Filter {
                        predicate,
                        projection,
                    }
                }
                Step::Project(exprs) => {
                    let projector = ProjectionExprs::new(exprs).make_projector(&schema)?;
                    schema = projector.output_schema().clone();
                    Stage::Project(projector)
                }
            });
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(KeptRunExec {
            batches: scan.partitions().iter().flatten().cloned().collect(),
            projection: scan.projection().clone(),
            read,
            stages: stages.into(),
            schema,
            properties: Arc::new(properties),
        }))
    }
}

/// A step as a run applies it.
#[derive(Debug)]
enum Stage {
    Filter {
        predicate: Arc<dyn PhysicalExpr>,
        projection: Option<Vec<usize>>,
    },
    Project(Projector),
}

impl Stage {
    fn exprs(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        match self {
            Stage::Filter { predicate, .. } => vec![predicate],
            Stage::Project(projector) => projector.projection().iter().map(|e| &e.expr).collect(),
        }
    }
}

/// A run of a template's chain over the kept batches its scan found for the run's values.
#[derive(Debug)]
pub struct KeptRunExec {
    batches: Vec<RecordBatch>,
    /// The scan's columns, as the kept batches hold the whole table.
    projection: Option<Vec<usize>>,
    /// The batches' schema once projected to the scan's columns.
    read: SchemaRef,
    stages: Arc<[Stage]>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl KeptRunExec {
    /// The kept batches, projected to the scan's columns, as a stream that gives way to the
    /// worker's other tasks when its budget is spent, as DataFusion's memory scan does: a
    /// filter that keeps no row of a large table must not hold the worker for all of it.
    fn read(&self) -> SendableRecordBatchStream {
        let projection = self.projection.clone();
        let batches = self.batches.clone().into_iter().map(move |batch| {
            Ok(match &projection {
                Some(columns) => batch.project(columns)?,
                None => batch,
            })
        });
        make_cooperative(Box::pin(RecordBatchStreamAdapter::new(
            self.read.clone(),
            futures::stream::iter(batches),
        )))
    }
}

/// `batch` through each stage; none where no row is left (a filter's stream passes no empty
/// batch on either).
fn run_stages(stages: &[Stage], mut batch: RecordBatch) -> Result<Option<RecordBatch>> {
    for stage in stages {
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        batch = match stage {
            Stage::Filter {
                predicate,
                projection,
            } => {
                let keep = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let Ok(keep) = as_boolean_array(&keep) else {
                    return internal_err!("a filter's predicate gave no booleans");
                };
                let batch = match projection {
                    Some(columns) => batch.project(columns)?,
                    None => batch,
                };
                filter_record_batch(&batch, keep)?
            }
            Stage::Project(projector) => projector.project_batch(&batch)?,
        };
    }
    Ok((batch.num_rows() > 0).then_some(batch))
}

impl DisplayAs for KeptRunExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakegateKeptRunExec: ")?;
        let shown = self.stages.iter().map(|stage| match stage {
            Stage::Filter { predicate, .. } => format!("filter {predicate}"),
            Stage::Project(projector) => {
                let exprs = projector.projection().iter().map(|e| e.expr.to_string());
                format!("project {}", exprs.collect::<Vec<_>>().join(", "))
            }
        });
        write!(f, "{}", shown.collect::<Vec<_>>().join(" | "))
    }
}

impl ExecutionPlan for KeptRunExec {
    fn name(&self) -> &str {
        "LakegateKeptRunExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for expr in self.stages.iter().flat_map(Stage::exprs) {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("LakegateKeptRunExec has no inputs")
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("LakegateKeptRunExec has one partition, not {partition}");
        }
        let stages = self.stages.clone();
        let rows = self
            .read()
            .try_filter_map(move |batch| std::future::ready(run_stages(&stages, batch)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            rows,
        )))
    }
}
