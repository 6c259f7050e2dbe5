//! Amazon Athena as an engine. A query routed here was planned, and had policy put on it, in
//! the gateway; its plan is unparsed to Trino's SQL (`sql`), run with the user's assumed role
//! (start, poll with backoff, progress as NOTICEs, stop when the client cancels or leaves),
//! and its result streamed from the CSV object Athena wrote (`results`).
mod error;
mod results;
pub mod sql;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_athena::config::http::HttpResponse;
use aws_sdk_athena::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_athena::operation::RequestId;
use aws_sdk_athena::types::{QueryExecutionContext, QueryExecutionState, ResultConfiguration};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use lakegate_policy::Identity;

pub use error::AthenaError;
pub use results::readable;

use crate::auth::LoginToken;
use crate::aws::{Aws, AwsError, RoleCredentials};
use crate::config::AthenaConfig;
use crate::notices::Notices;

/// Athena for the whole gateway: the configuration and the AWS side.
#[derive(Debug)]
pub struct Athena {
    pub aws: Arc<Aws>,
    pub config: AthenaConfig,
}

impl Athena {
    pub fn new(aws: Arc<Aws>, config: AthenaConfig) -> Result<Athena, String> {
        if let Some(location) = &config.output_location
            && crate::aws::bucket_of(location).is_none()
        {
            return Err(format!(
                "athena.output_location {location}: must be s3://bucket/prefix/"
            ));
        }
        Ok(Athena { aws, config })
    }
}

/// Athena for one user: who runs the queries. Their progress goes to the connection that
/// runs them (its `Notices`, given to each `AthenaExec`).
pub struct UserAthena {
    pub athena: Arc<Athena>,
    pub identity: Identity,
    pub token: Option<LoginToken>,
    pub personas: Vec<String>,
}

impl fmt::Debug for UserAthena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAthena")
            .field("user", &self.identity.name)
            .finish_non_exhaustive()
    }
}

/// One query, whole, on Athena: the root of the physical plan of a routed query.
#[derive(Debug)]
pub struct AthenaExec {
    sql: String,
    databases: BTreeSet<String>,
    user: Arc<UserAthena>,
    /// Where this query's progress goes: the connection that runs it.
    notices: Option<Arc<Notices>>,
    properties: Arc<PlanProperties>,
}

impl AthenaExec {
    pub fn new(
        sql: String,
        schema: SchemaRef,
        databases: BTreeSet<String>,
        user: Arc<UserAthena>,
        notices: Option<Arc<Notices>>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        AthenaExec {
            sql,
            databases,
            user,
            notices,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for AthenaExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AthenaExec: workgroup={}",
            self.user.athena.config.workgroup
        )
    }
}

impl ExecutionPlan for AthenaExec {
    fn name(&self) -> &str {
        "AthenaExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("AthenaExec has no inputs".into()))
        }
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.properties.eq_properties.schema().clone();
        let run = run(
            self.user.clone(),
            self.notices.clone(),
            self.sql.clone(),
            self.databases.clone(),
            schema.clone(),
        );
        let batches = futures::stream::once(run).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A started query. Dropped before it finished (the client cancelled, timed out or left), it
/// asks Athena to stop it: nobody will read its result and it costs per byte scanned.
struct Running {
    client: aws_sdk_athena::Client,
    id: String,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let id = self.id.clone();
        runtime.spawn(async move {
            match client.stop_query_execution().query_execution_id(&id).send().await {
                Ok(_) => tracing::info!(query_id = %id, engine = "athena", "query stopped: its client cancelled or left"),
                Err(e) => tracing::warn!(query_id = %id, engine = "athena", error = %e.code().unwrap_or("unknown"), "could not stop the query"),
            }
        });
    }
}

type Batches =
    futures::stream::BoxStream<'static, DfResult<datafusion::arrow::record_batch::RecordBatch>>;

async fn run(
    user: Arc<UserAthena>,
    notices: Option<Arc<Notices>>,
    sql: String,
    databases: BTreeSet<String>,
    schema: SchemaRef,
) -> DfResult<Batches> {
    let athena = &user.athena;
    let aws = &athena.aws;
    let role = aws
        .roles
        .single_role(&user.personas, &databases)
        .map_err(external)?;
    let credentials = aws
        .sessions
        .credentials(&user.identity, &role, user.token.as_ref())
        .await
        .map_err(external)?;
    let client = client_for(aws, &credentials);
    let config = &athena.config;
    let mut start = client
        .start_query_execution()
        .query_string(&sql)
        .work_group(&config.workgroup)
        .query_execution_context(
            QueryExecutionContext::builder()
                .catalog(&config.catalog)
                .build(),
        );
    if let Some(location) = &config.output_location {
        start = start.result_configuration(
            ResultConfiguration::builder()
                .output_location(location)
                .build(),
        );
    }
    tracing::debug!(sql = %sql, "Athena SQL");
    let started = start
        .send()
        .await
        .map_err(|e| external(api_error(e, "StartQueryExecution", &user.identity.name)))?;
    let id = started.query_execution_id().unwrap_or_default().to_string();
    let source_identity = aws.sessions.request_for(&user.identity).source_identity;
    tracing::info!(user = %user.identity.name, role = %role.role_arn, source_identity = %source_identity,
        engine = "athena", query_id = %id, workgroup = %config.workgroup, "query sent to Athena");
    let mut running = Running {
        client: client.clone(),
        id: id.clone(),
        finished: false,
    };
    let waited = wait(&user, notices.as_deref(), &client, &id).await;
    // A query Athena ended (succeeded, failed, stopped) needs no stop; one whose state is
    // unknown (polling failed) is stopped, as is any the client leaves.
    running.finished = matches!(
        waited,
        Ok(_)
            | Err(AthenaError::CancelledElsewhere(_))
            | Err(AthenaError::Failed(_))
            | Err(AthenaError::DivisionByZero)
            | Err(AthenaError::Resources)
    );
    let location = waited.map_err(external)?;
    let results_failed = |why: String| {
        tracing::warn!(query_id = %id, %why, "cannot read Athena results");
        external(AthenaError::Results {
            id: id.clone(),
            why: "the result object could not be read".into(),
        })
    };
    let (bucket, key) = location
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| {
            results_failed(format!("output location {location} is not s3://bucket/key"))
        })?;
    let store = crate::aws::user_store(aws, bucket, &credentials).map_err(&results_failed)?;
    let rows = results::stream_csv(Arc::new(store), key, schema)
        .await
        .map_err(|e| match crate::error::find_cause::<AwsError>(&e) {
            Some(aws) => external(aws),
            None => results_failed(e.to_string()),
        })?;
    Ok(rows
        .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))
        .boxed())
}

/// An Athena client signing with the user's role.
fn client_for(aws: &Aws, credentials: &RoleCredentials) -> aws_sdk_athena::Client {
    let credentials = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        Some(credentials.session_token.clone()),
        None,
        "lakegate-user-role",
    );
    let config = aws_sdk_athena::config::Builder::from(&aws.sdk)
        .credentials_provider(credentials)
        .build();
    aws_sdk_athena::Client::from_conf(config)
}

/// Polls until the query ends, with backoff; reports progress as NOTICEs once it has run
/// `notice_after_seconds`. Returns the result's S3 location.
async fn wait(
    user: &UserAthena,
    notices: Option<&Notices>,
    client: &aws_sdk_athena::Client,
    id: &str,
) -> Result<String, AthenaError> {
    let config = &user.athena.config;
    let started = Instant::now();
    let notice_after = Duration::from_secs(config.notice_after_seconds);
    let longest = Duration::from_millis(config.max_poll_interval_ms.max(100));
    let mut pause = Duration::from_millis(100);
    loop {
        let polled = client
            .get_query_execution()
            .query_execution_id(id)
            .send()
            .await
            .map_err(|e| api_error(e, "GetQueryExecution", &user.identity.name))?;
        let execution = polled.query_execution();
        let status = execution.and_then(|e| e.status());
        let state = status.and_then(|s| s.state());
        match state {
            Some(QueryExecutionState::Succeeded) => {
                return execution
                    .and_then(|e| e.result_configuration())
                    .and_then(|r| r.output_location())
                    .map(str::to_string)
                    .ok_or_else(|| AthenaError::Results {
                        id: id.to_string(),
                        why: "Athena named no result location".into(),
                    });
            }
            Some(QueryExecutionState::Failed) => {
                let reason = status.and_then(|s| s.state_change_reason()).unwrap_or("");
                let category = status
                    .and_then(|s| s.athena_error())
                    .and_then(|e| e.error_category());
                // The reason can quote the SQL, and with it literal values from the query:
                // like statement text, only at debug; the query id finds it in Athena.
                tracing::warn!(query_id = %id, engine = "athena", category, "Athena failed the query");
                tracing::debug!(query_id = %id, %reason, "why Athena failed the query");
                return Err(AthenaError::of_failed(id, reason, category));
            }
            Some(QueryExecutionState::Cancelled) => {
                tracing::info!(query_id = %id, engine = "athena", "query cancelled in Athena");
                return Err(AthenaError::CancelledElsewhere(id.to_string()));
            }
            _ => {}
        }
        let ran = started.elapsed();
        if let Some(notices) = notices
            && ran >= notice_after
        {
            let scanned = execution
                .and_then(|e| e.statistics())
                .and_then(|s| s.data_scanned_in_bytes())
                .unwrap_or(0);
            let state = state.map_or("QUEUED", |s| s.as_str());
            notices.send(format!(
                "Athena query {id}: {state} for {} s, {} scanned",
                ran.as_secs(),
                human_bytes(scanned)
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(longest);
    }
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// An Athena API error as the user's error; AWS's message and request id go to the log.
fn api_error<E>(error: SdkError<E, HttpResponse>, action: &str, user: &str) -> AthenaError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().unwrap_or("").to_string();
    let request_id = error.meta().request_id().unwrap_or("").to_string();
    tracing::warn!(%user, action, code = %code, status, request_id = %request_id,
        message = error.message().unwrap_or(""), engine = "athena", "Athena call failed");
    match (code.as_str(), status) {
        ("AccessDeniedException" | "UnrecognizedClientException", _) | (_, Some(401 | 403)) => {
            AthenaError::Denied
        }
        ("TooManyRequestsException" | "ThrottlingException", _) | (_, Some(429)) => {
            AthenaError::Throttled
        }
        _ if matches!(
            error,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ) || status.is_some_and(|s| s >= 500) =>
        {
            AthenaError::Unavailable
        }
        _ => AthenaError::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(2_340_000_000), "2.3 GB");
    }
}
