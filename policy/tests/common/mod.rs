//! What the policy crate's integration tests share: a session planned as the gateway plans
//! (policy rules, barriers opened before physical planning) and table metadata.
use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;
use lakegate_policy::{ColumnMeta, PolicyExtensionPlanner, TableMeta};

#[derive(Debug)]
struct Planner;
#[async_trait::async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        plan: &datafusion::logical_expr::LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = lakegate_policy::unseal(plan.clone(), session.config_options())?;
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PolicyExtensionPlanner)])
            .create_physical_plan(&plan, session)
            .await
    }
}

/// A session with the policy's rules, its tables to be registered by the test.
pub fn session() -> SessionContext {
    SessionContext::new_with_state(
        lakegate_policy::with_policy(SessionStateBuilder::new().with_default_features())
            .with_query_planner(Arc::new(Planner))
            .build(),
    )
}

/// A table with untagged columns.
pub fn table_meta(database: &str, table: &str, columns: &[&str]) -> TableMeta {
    TableMeta {
        database: database.into(),
        table: table.into(),
        tags: Default::default(),
        columns: columns
            .iter()
            .map(|n| ColumnMeta {
                name: n.to_string(),
                tags: Default::default(),
            })
            .collect(),
    }
}
