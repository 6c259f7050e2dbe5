//! The lake as one user sees it: builds a user's DataFusion session whose catalog holds only
//! the tables (and columns) policy lets that user read, with `EnforcePolicy` as the first
//! analyzer rule so every plan of the session is rewritten.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, Session,
    TableProvider,
};
use datafusion::common::TableReference;
use datafusion::error::Result as DfResult;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};
use lakegate_catalog::{LocalCatalog, Table};
use lakegate_policy::{
    ColumnMeta, Decision, Identity, PolicyExtensionPlanner, PolicySet, PolicyView, TableMeta,
    compile_access,
};

use crate::athena::{Athena, AthenaExec, UserAthena};
use crate::auth::LoginToken;
use crate::aws::{Aws, S3Bucket};
use crate::config::{Config, Engine};
use crate::error::StartupError;
use crate::notices::Notices;
use crate::pg_compat;
use crate::plan_cache::{PlanCache, Plans};
use crate::route::{PlanTables, Route, Router};

/// Shared state every session is built from. The tables can be replaced while serving (a Glue
/// refresh); a session keeps the tables it was built with.
#[derive(Debug)]
pub struct Lake {
    pub config: Arc<Config>,
    pub policy: PolicySet,
    pub default_schema: String,
    /// AWS, when the configuration has it: tables in S3 are read with each user's role.
    pub aws: Option<Arc<Aws>>,
    /// Which engine runs each query.
    pub router: Arc<Router>,
    /// Athena, when the configuration has it.
    pub athena: Option<Arc<Athena>>,
    tables: RwLock<Arc<Tables>>,
    /// Bumped when the tables are replaced: sessions built before are not handed out again.
    generation: AtomicU64,
    sessions: Sessions,
    /// Every user catalog's kept plans, in one memory budget.
    plans: Plans,
}

/// The catalog and the raw DataFusion table of each catalog table.
#[derive(Debug)]
pub struct Tables {
    pub catalog: LocalCatalog,
    raw: BTreeMap<(String, String), Arc<dyn TableProvider>>,
    /// The bucket of each table stored in S3.
    buckets: BTreeMap<(String, String), String>,
}

impl Tables {
    /// `glue_catalog_id`: the Glue catalog the configuration reads (its partitions too).
    pub fn new(
        catalog: LocalCatalog,
        aws: Option<&Aws>,
        glue_catalog_id: Option<String>,
    ) -> Result<Tables, StartupError> {
        let mut raw = BTreeMap::new();
        let mut buckets = BTreeMap::new();
        let glue = aws.map(|aws| aws_sdk_glue::Client::new(&aws.sdk));
        for db in &catalog.catalog().databases {
            for table in db.tables.iter().filter(|t| !t.is_view()) {
                let glue = glue.as_ref().map(|client| lakegate_catalog::GlueRef {
                    client: client.clone(),
                    catalog_id: glue_catalog_id.clone(),
                    database: db.name.clone(),
                    table: table.name.clone(),
                });
                let provider = catalog.table_provider(&db.name, table, glue)?;
                raw.insert((db.name.clone(), table.name.clone()), provider);
                if let Some(bucket) = crate::aws::bucket_of(&table.location) {
                    if aws.is_none() {
                        return Err(StartupError::Other(format!(
                            "table {}.{} is stored in S3 ({}), but the configuration has no aws section",
                            db.name, table.name, table.location
                        )));
                    }
                    buckets.insert((db.name.clone(), table.name.clone()), bucket.to_string());
                } else if table.location.contains("://") {
                    return Err(StartupError::Other(format!(
                        "table {}.{}: location {} is neither s3:// nor a local folder",
                        db.name, table.name, table.location
                    )));
                }
            }
        }
        Ok(Tables {
            catalog,
            raw,
            buckets,
        })
    }
}

/// What every connection of one user shares: the catalog of what the user may read (policy
/// compiled into it), pg_catalog and information_schema over it, and the session's functions.
/// Built once per user, login token and generation of the tables, and cached while in use
/// (`Lake::session`): building it was most of a login's work and of an idle connection's
/// memory. Each connection starts its own context from it.
pub struct UserCatalog {
    pub identity: Identity,
    /// The context connections use until they change a setting (`UserSession::context`).
    context: SessionContext,
    /// Tables hidden because their rule does not compile (for `lakegate check`; also logged).
    pub problems: Vec<String>,
    /// Views hidden because their body does not plan for this user (invoker's rights).
    pub hidden_views: Vec<String>,
    /// How many tables and views this user may read.
    pub granted: usize,
    /// Optimized plans of this user's repeated queries.
    pub plans: PlanCache,
    /// The task context queries planned in `context` run with (`UserSession::task_context`).
    task: OnceLock<Arc<TaskContext>>,
    /// The state cached plans are planned physically in (`UserSession::planning_state`).
    planning: OnceLock<SessionState>,
    /// Whether an engine of this user's reports progress (Athena): its plans need the
    /// connection's `Notices` in their planning state.
    reports_progress: bool,
    /// The planner of `context`, for runs that skip it (`UserSession::runs_here`).
    planner: Arc<PolicyQueryPlanner>,
}

/// pg_catalog's schema provider holds the catalog list in which it is registered (and the
/// pg_catalog views hold its tables): a reference cycle that kept every session alive after
/// its connections closed (about 250 KB per login, found by bench/run.py's login step).
/// Unregistering the schemas when the last connection and the cache let go breaks it.
impl Drop for UserCatalog {
    fn drop(&mut self) {
        for catalog_name in self.context.catalog_names() {
            if let Some(catalog) = self.context.catalog(&catalog_name) {
                for schema in catalog.schema_names() {
                    let _ = catalog.deregister_schema(&schema, true);
                }
            }
        }
    }
}

/// One connection's session over the user's shared catalog. A connection plans in the user's
/// context until it changes a setting (SET, search path): then it gets its own copy, so the
/// change stays with it. NOTICEs from engines reach this connection only (`planning_state`).
pub struct UserSession {
    pub identity: Identity,
    /// NOTICEs for this connection's client from engines running its queries.
    pub notices: Arc<Notices>,
    pub catalog: Arc<UserCatalog>,
    own: OnceLock<SessionContext>,
}

impl UserSession {
    /// The context to plan and run in.
    pub fn context(&self) -> &SessionContext {
        self.own.get().unwrap_or(&self.catalog.context)
    }

    /// The context to change settings in: the connection's own, copied from the user's on
    /// first use (same catalogs and functions, settings of its own from then on).
    pub fn context_to_change(&self) -> &SessionContext {
        self.own
            .get_or_init(|| SessionContext::new_with_state(self.catalog.context.state()))
    }

    /// For a plan run without planning it: logs its route as planning does, and says whether
    /// it runs in the gateway.
    pub fn runs_here(&self, plan: &LogicalPlan) -> bool {
        self.catalog.planner.runs_here(plan)
    }

    /// The user's plan cache, while this connection plans in the user's shared context (with
    /// settings of its own, the same text could plan differently).
    pub fn plans(&self) -> Option<&PlanCache> {
        self.own.get().is_none().then_some(&self.catalog.plans)
    }

    /// Makes `schema` where this connection's unqualified names resolve (its search path),
    /// for this connection only.
    pub fn set_default_schema(&self, schema: &str) {
        let context = self.context_to_change();
        context
            .state_ref()
            .write()
            .config_mut()
            .options_mut()
            .catalog
            .default_schema = schema.to_string();
        pg_compat::set_schema(context, schema);
    }

    /// The session state to plan one statement in: a copy, marked with the statement's start
    /// (`now()`), carrying the connection's `Notices` for engines that report progress (they
    /// take it when physically planned). A `cached` plan (already optimized: physical planning
    /// reads neither) on a connection without settings of its own, for a user no such engine
    /// serves, is planned in the user's one kept state instead: the copy was a seventh of a
    /// cached `SELECT 1`.
    pub fn planning_state(&self, cached: bool) -> Cow<'_, SessionState> {
        if cached && self.own.get().is_none() && !self.catalog.reports_progress {
            let kept = self
                .catalog
                .planning
                .get_or_init(|| self.catalog.context.state());
            return Cow::Borrowed(kept);
        }
        let mut state = self.context().state();
        state.config_mut().set_extension(self.notices.clone());
        Cow::Owned(state)
    }

    /// A task context for running a plan made in `state`. While the connection plans in the
    /// user's shared context, that is the user's one task context: building one copies every
    /// function's name and the settings (a seventh of a cached `SELECT 1`).
    pub fn task_context(&self, state: &SessionState) -> Arc<TaskContext> {
        if self.own.get().is_some() {
            return Arc::new(TaskContext::from(state));
        }
        // From the user's context itself: `state` carries this connection's notices.
        self.catalog
            .task
            .get_or_init(|| Arc::new(TaskContext::from(&self.catalog.context.state())))
            .clone()
    }
}

/// Sessions of equal keys are the same: the user as their login proved them (name, groups,
/// attributes, expiry), the token (roles assumed with `web_identity` use it) and which
/// tables the lake served when the session was built.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    identity: Identity,
    token: Option<String>,
    generation: u64,
}

/// Users' catalogs, shared by their connections. An entry idle for `SESSION_IDLE` is dropped
/// (connections using it keep it); a client that reconnects for every query (Power BI,
/// `pgbench -C`) finds its catalog still built.
struct Sessions(moka::future::Cache<SessionKey, Arc<UserCatalog>>);

const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
const SESSIONS_CACHED: u64 = 1_000;

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({})", self.0.entry_count())
    }
}

/// The visible `schema.table → columns`, answering `has_*_privilege` from policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Visible {
    pub database: String,
    pub default_schema: String,
    pub tables: BTreeMap<(String, String), Vec<String>>,
}

impl Lake {
    pub fn new(
        config: Arc<Config>,
        catalog: LocalCatalog,
        policy: PolicySet,
        aws: Option<Arc<Aws>>,
    ) -> Result<Lake, StartupError> {
        let glue_catalog_id = config.glue.as_ref().and_then(|g| g.catalog_id.clone());
        let tables = Tables::new(catalog, aws.as_deref(), glue_catalog_id)?;
        let default_schema = config
            .default_schema
            .clone()
            .or_else(|| {
                tables
                    .catalog
                    .catalog()
                    .databases
                    .first()
                    .map(|d| d.name.clone())
            })
            .unwrap_or_else(|| "public".to_string());
        let router = Router::new(&config.routes).map_err(StartupError::Other)?;
        let athena = match (&config.athena, &aws) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(StartupError::Other(
                    "athena needs the aws section (region, endpoint, roles)".into(),
                ));
            }
            (Some(athena), Some(aws)) => Some(Arc::new(
                Athena::new(aws.clone(), athena.clone()).map_err(StartupError::Other)?,
            )),
        };
        if router.uses(Engine::Athena) && athena.is_none() {
            return Err(StartupError::Other(
                "routes send queries to athena, but the configuration has no athena section".into(),
            ));
        }
        let plans = Plans::new(config.plan_cache_megabytes);
        Ok(Lake {
            config,
            policy,
            default_schema,
            aws,
            router: Arc::new(router),
            athena,
            tables: RwLock::new(Arc::new(tables)),
            generation: AtomicU64::new(0),
            plans,
            sessions: Sessions(
                moka::future::Cache::builder()
                    .max_capacity(SESSIONS_CACHED)
                    .time_to_idle(SESSION_IDLE)
                    .build(),
            ),
        })
    }

    /// The tables sessions are built from now.
    pub fn tables(&self) -> Arc<Tables> {
        match self.tables.read() {
            Ok(tables) => tables.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves `tables` to sessions started from now on.
    pub fn replace_tables(&self, tables: Tables) {
        let mut slot = match self.tables.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(tables);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn identity_of(&self, user: &str) -> Option<Identity> {
        self.config.user(user).map(|u| Identity {
            name: u.name.clone(),
            groups: u.groups.clone(),
            attributes: u.attributes.clone(),
            expires_at: None,
        })
    }

    pub fn table_meta(database: &str, table: &Table) -> TableMeta {
        TableMeta {
            database: database.to_string(),
            table: table.name.clone(),
            tags: table.parameters.clone(),
            columns: table
                .all_columns()
                .map(|c| ColumnMeta {
                    name: c.name.clone(),
                    tags: c.parameters.clone(),
                })
                .collect(),
        }
    }

    fn session_context(
        &self,
        planner: Arc<PolicyQueryPlanner>,
    ) -> Result<SessionContext, StartupError> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(&self.config.database, &self.default_schema)
            // Lakegate's own information_schema (PostgreSQL's shape) replaces DataFusion's.
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(false);
        let options = config.options_mut();
        options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        // EXPLAIN shows the logical plan only: physical plans name files and buckets.
        options.explain.logical_plan_only = true;
        // A filtered scan's row count is an upper bound (inexact). Without trusting it,
        // DataFusion splits even a small table's rows over the partitions: a task and a
        // channel per point lookup for no parallelism (lookups ran at 0.7x the speed).
        options
            .execution
            .use_row_number_estimates_to_optimize_partitioning = true;
        let state = lakegate_policy::with_policy(
            SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime(self.config.file_listing_seconds)?)
                .with_default_features(),
        )
        .with_query_planner(planner)
        .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// A connection's session, over the user's catalog as cached (built when missing; callers
    /// that arrive while it is built wait for it).
    /// `token`: the company token the user logged in with, if any (for `web_identity` roles).
    pub async fn session(
        &self,
        identity: Identity,
        token: Option<LoginToken>,
    ) -> Result<UserSession, StartupError> {
        let key = SessionKey {
            identity: identity.clone(),
            token: token.as_ref().map(|t| t.0.clone()),
            generation: self.generation.load(Ordering::SeqCst),
        };
        let catalog = self
            .sessions
            .0
            .try_get_with(key, async {
                self.user_catalog(identity, token).await.map(Arc::new)
            })
            .await
            .map_err(|e| StartupError::Other(e.to_string()))?;
        Ok(self.connect(catalog))
    }

    /// A session over a catalog built for this call alone (`lakegate check`, tests).
    pub async fn session_for(
        &self,
        identity: Identity,
        token: Option<LoginToken>,
    ) -> Result<UserSession, StartupError> {
        let catalog = self.user_catalog(identity, token).await?;
        Ok(self.connect(Arc::new(catalog)))
    }

    /// A connection's session over `catalog`: it plans in the user's context until it
    /// changes a setting (`UserSession::context_to_change`).
    fn connect(&self, catalog: Arc<UserCatalog>) -> UserSession {
        UserSession {
            identity: catalog.identity.clone(),
            notices: Arc::new(Notices::default()),
            catalog,
            own: OnceLock::new(),
        }
    }

    fn planner(
        &self,
        identity: &Identity,
        token: Option<LoginToken>,
        personas: &[String],
    ) -> PolicyQueryPlanner {
        let athena = self.athena.as_ref().map(|athena| {
            Arc::new(UserAthena {
                athena: athena.clone(),
                identity: identity.clone(),
                token,
                personas: personas.to_vec(),
            })
        });
        PolicyQueryPlanner {
            router: self.router.clone(),
            identity: identity.clone(),
            personas: personas.to_vec(),
            aws: self.aws.clone(),
            athena,
        }
    }

    /// Builds the catalog of one user. A table whose policy cannot be compiled is left out
    /// (fail closed) and logged for the operator.
    async fn user_catalog(
        &self,
        identity: Identity,
        token: Option<LoginToken>,
    ) -> Result<UserCatalog, StartupError> {
        let personas = self.policy.personas_of(&identity);
        let planner = Arc::new(self.planner(&identity, token.clone(), &personas));
        let context = self.session_context(planner.clone())?;
        let state = context.state();
        let catalog = Arc::new(MemoryCatalogProvider::new());
        context.register_catalog(&self.config.database, catalog.clone());
        let mut visible = Visible {
            database: self.config.database.clone(),
            default_schema: self.default_schema.clone(),
            tables: BTreeMap::new(),
        };
        let mut comments = Vec::new();
        let mut problems = Vec::new();
        let mut hidden_views = Vec::new();
        let mut schemas = BTreeMap::new();
        let tables = self.tables();
        for db in &tables.catalog.catalog().databases {
            let schema = Arc::new(MemorySchemaProvider::new());
            let _ = catalog.register_schema(&db.name, schema.clone());
            schemas.insert(db.name.clone(), schema);
        }
        // Tables first, then views in catalog order: a view's body is planned in this session,
        // over what this user may read (invoker's rights), so it can use tables and earlier views.
        let entries = tables
            .catalog
            .catalog()
            .databases
            .iter()
            .flat_map(|db| db.tables.iter().map(move |t| (db, t)));
        let (views, bases): (Vec<_>, Vec<_>) = entries.partition(|(_, t)| t.is_view());
        for (db, table) in bases.into_iter().chain(views) {
            let meta = Self::table_meta(&db.name, table);
            let Decision::Allowed(access) = self.policy.decide(&identity, &meta) else {
                continue;
            };
            let name = format!("{}.{}", db.name, table.name);
            let raw: Arc<dyn TableProvider> = match &table.view_sql {
                None => match tables.raw.get(&(db.name.clone(), table.name.clone())) {
                    Some(raw) => raw.clone(),
                    None => continue,
                },
                Some(sql) => match state.create_logical_plan(sql).await {
                    Ok(plan) => Arc::new(ViewTable::new(plan, Some(sql.clone()))),
                    Err(error) => {
                        // Usually a table underneath that this user may not read.
                        let error = error.strip_backtrace();
                        tracing::debug!(view = %name, user = %identity.name, %error, "view hidden: its body does not plan for this user");
                        hidden_views.push(format!("{name}: {error}"));
                        continue;
                    }
                },
            };
            let reference = TableReference::partial(db.name.as_str(), table.name.as_str());
            let compiled = match compile_access(&access, &identity, reference, raw, &state) {
                Ok(c) => c,
                Err(error) => {
                    tracing::error!(table = %name, rule = %access.rule, location = %access.rule_location, %error,
                        "policy does not compile; table hidden");
                    problems.push(format!(
                        "{}: rule \"{}\" for {name} (user {}): {error}",
                        access.rule_location, access.rule, identity.name
                    ));
                    continue;
                }
            };
            let columns: Vec<String> = access.columns.iter().map(|c| c.name.clone()).collect();
            comments.extend(pg_compat::comments_of(&db.name, table, &columns));
            let mut view = PolicyView::new(name, access.rule.clone(), compiled);
            if table.is_view() {
                view = view.as_view();
            }
            if let Some(schema) = schemas.get(&db.name)
                && schema
                    .register_table(table.name.clone(), Arc::new(view))
                    .is_ok()
            {
                visible
                    .tables
                    .insert((db.name.clone(), table.name.clone()), columns);
            }
        }
        if let Some(aws) = &self.aws {
            let mut buckets: BTreeMap<&str, S3Bucket> = BTreeMap::new();
            for key in visible.tables.keys() {
                if let Some(bucket) = tables.buckets.get(key) {
                    buckets
                        .entry(bucket)
                        .or_insert_with(|| S3Bucket {
                            name: bucket.clone(),
                            databases: Default::default(),
                        })
                        .databases
                        .insert(key.0.clone());
                }
            }
            let buckets: Vec<S3Bucket> = buckets.into_values().collect();
            crate::aws::register_user_stores(
                &context,
                aws,
                &identity,
                token.clone(),
                &personas,
                &buckets,
            )
            .map_err(StartupError::Other)?;
        }
        for (name, schema) in &schemas {
            if schema.table_names().is_empty() {
                let _ = catalog.deregister_schema(name, false);
            }
        }
        crate::information_schema::install(&context, &self.config.database)
            .await
            .map_err(|e| StartupError::Other(format!("information_schema setup: {e}")))?;
        let settings = crate::settings::Settings::new(&self.default_schema, &Default::default());
        pg_compat::install(&context, &visible, comments, settings, &identity.name)
            .await
            .map_err(|e| StartupError::Other(format!("pg_catalog setup: {e}")))?;
        pg_compat::set_user(&context, &identity.name);
        pg_compat::set_schema(&context, &self.default_schema);
        Ok(UserCatalog {
            identity,
            context,
            problems,
            hidden_views,
            granted: visible.tables.len(),
            plans: self.plans.for_catalog(),
            task: OnceLock::new(),
            planning: OnceLock::new(),
            reports_progress: self.athena.is_some(),
            planner,
        })
    }
}

/// Routes a policy-applied plan: a query a route sends to Athena becomes one `AthenaExec`
/// with the plan as Athena SQL; any other runs on DataFusion's physical planner, with the
/// policy barrier's extension planner.
#[derive(Debug)]
struct PolicyQueryPlanner {
    router: Arc<Router>,
    identity: Identity,
    personas: Vec<String>,
    aws: Option<Arc<Aws>>,
    athena: Option<Arc<UserAthena>>,
}

impl PolicyQueryPlanner {
    /// For a plan run without planning (`plan_template`): logs its route as planning does,
    /// and says whether it runs in the gateway.
    fn runs_here(&self, plan: &LogicalPlan) -> bool {
        let tables = PlanTables::of(plan);
        match self.router.route(&tables, &self.personas, || {
            PlanTables::user_predicates(plan)
        }) {
            Route::Local(why) => {
                if !tables.tables.is_empty() {
                    self.log_local(&tables.tables, why);
                }
                true
            }
            Route::Remote { .. } => false,
        }
    }

    /// One line per query the gateway's engine runs over catalog tables: who, as which role
    /// and SourceIdentity (tables in S3), and why it stayed here.
    fn log_local(&self, tables: &std::collections::BTreeSet<(String, String)>, why: &str) {
        // Its fields are worth making only for a line that is written (1-2% of a lookup).
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let names: Vec<String> = tables.iter().map(|(d, t)| format!("{d}.{t}")).collect();
        let (role, source_identity) = match &self.aws {
            Some(aws) => (
                aws.roles
                    .single_role(&self.personas, tables.iter().map(|(d, _)| d))
                    .map(|r| r.role_arn)
                    .unwrap_or_else(|e| format!("none ({e})")),
                aws.sessions.request_for(&self.identity).source_identity,
            ),
            None => ("none (local files)".to_string(), String::new()),
        };
        tracing::info!(user = %self.identity.name, engine = "local", tables = %names.join(","),
            %role, %source_identity, why, "query runs in the gateway");
    }

    /// `notices`: the connection the query runs for (`UserSession::planning_state`).
    fn remote_plan(
        &self,
        plan: &LogicalPlan,
        notices: Option<Arc<Notices>>,
    ) -> Option<Arc<dyn ExecutionPlan>> {
        // EXPLAIN shows the gateway's plan; it runs nothing anywhere.
        if matches!(
            plan,
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
        ) {
            return None;
        }
        let tables = PlanTables::of(plan);
        let route = self.router.route(&tables, &self.personas, || {
            PlanTables::user_predicates(plan)
        });
        let Route::Remote { engine, tables } = route else {
            if let Route::Local(why) = route
                && !tables.tables.is_empty()
            {
                self.log_local(&tables.tables, why);
            }
            return None;
        };
        let (Engine::Athena, Some(athena)) = (engine, &self.athena) else {
            return None;
        };
        let schema = Arc::new(plan.schema().as_arrow().clone());
        if !crate::athena::readable(&schema) {
            self.log_local(&tables, "a result type Athena's CSV results cannot carry");
            return None;
        }
        match crate::athena::sql::to_athena_sql(plan) {
            Ok(sql) => {
                let databases = tables.into_iter().map(|(database, _)| database).collect();
                Some(Arc::new(AthenaExec::new(
                    sql,
                    schema,
                    databases,
                    athena.clone(),
                    notices,
                )))
            }
            Err(error) => {
                // The local engine reads the same tables; the user gets their answer.
                tracing::info!(user = %self.identity.name, error = %error.strip_backtrace(),
                    "no Athena SQL for this plan");
                self.log_local(&tables, "the plan has no Athena SQL");
                None
            }
        }
    }
}

#[async_trait]
impl QueryPlanner for PolicyQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Plans optimized elsewhere than `plan_cache::optimize` (a cursor's, EXPLAIN's) may
        // still hold sealed policy barriers; opened, they plan as every other.
        let unsealed = lakegate_policy::unseal(logical_plan.clone(), session.config_options())?;
        let logical_plan = &unsealed;
        let notices = session.config().get_extension::<Notices>();
        if let Some(remote) = self.remote_plan(logical_plan, notices) {
            return Ok(remote);
        }
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PolicyExtensionPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

/// A runtime (one per user's catalog: it holds the object stores opened with the user's
/// credentials) that lists a table's files on every scan, or keeps a listing for
/// `listing_seconds`. DataFusion keeps listings for ever by default: files landing in a
/// table's folder or S3 prefix went unseen, and files removed were still looked for, while the
/// user kept querying.
fn runtime(listing_seconds: u64) -> Result<Arc<RuntimeEnv>, StartupError> {
    let caches = match listing_seconds {
        0 => CacheManagerConfig::default().with_list_files_cache_limit(0),
        seconds => CacheManagerConfig::default()
            .with_list_files_cache_ttl(Some(std::time::Duration::from_secs(seconds))),
    };
    RuntimeEnvBuilder::new()
        .with_cache_manager(caches)
        .build_arc()
        .map_err(|e| StartupError::Other(format!("DataFusion's runtime: {e}")))
}

impl Visible {
    /// Resolves `table`, `schema.table` or `db.schema.table` as PostgreSQL reads a name given
    /// as text: unquoted parts fold to lower case, quoted parts keep theirs.
    pub fn table(&self, name: &str) -> Option<&Vec<String>> {
        let parts: Vec<String> = name
            .split('.')
            .map(
                |p| match p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                    Some(quoted) => quoted.to_string(),
                    None => p.to_lowercase(),
                },
            )
            .collect();
        let key = match parts.as_slice() {
            [t] => (self.default_schema.clone(), t.clone()),
            [s, t] => (s.clone(), t.clone()),
            [d, s, t] if *d == self.database => (s.clone(), t.clone()),
            _ => return None,
        };
        self.tables.get(&key)
    }

    pub fn schema(&self, name: &str) -> bool {
        matches!(name, "pg_catalog" | "information_schema")
            || self.tables.keys().any(|(s, _)| s == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// The quickstart's lake (config, catalog, policy), for tests of what runs on it.
    pub(crate) async fn quickstart() -> (Lake, Config) {
        quickstart_keeping(None).await
    }

    /// The quickstart's lake with every table read from its files (no small tables kept).
    pub(crate) async fn quickstart_reading_files() -> Lake {
        quickstart_keeping(Some(0)).await.0
    }

    /// `small_tables`: megabytes for small tables, where not the configuration's.
    pub(crate) async fn quickstart_keeping(small_tables: Option<u64>) -> (Lake, Config) {
        let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        crate::demo::ensure(&quickstart.join("data")).expect("demo data");
        let config = Config::load(&quickstart.join("lakegate.yaml")).expect("config");
        let (mut catalog, _) = crate::load_catalog(&config, None).await.expect("catalog");
        if let Some(megabytes) = small_tables {
            catalog.keep_small_tables(megabytes, config.file_listing_seconds);
        }
        let policy = crate::load_policy(&config.policy).expect("policy");
        let lake = Lake::new(Arc::new(config.clone()), catalog, policy, None).expect("lake");
        (lake, config)
    }

    /// `sql`'s answer for `session`'s user, planned from its text as written (no plan cache).
    pub(crate) async fn one_value(session: &UserSession, sql: &str) -> String {
        let batches = session
            .context()
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string()
    }

    /// The quickstart's tables are sealed in their users' plans (their row filters and masks
    /// call only functions that always give the same result), the user's views are not
    /// (a view's body is planned with the query), and every plan leaves the plan cache's
    /// optimizing open, its safe predicate beside the row filter.
    #[tokio::test]
    async fn quickstart_tables_plan_sealed_and_leave_optimizing_open() {
        use datafusion::common::tree_node::TreeNode;
        use lakegate_policy::PolicyBarrier;
        let barriers = |plan: &LogicalPlan| {
            let mut found = Vec::new();
            plan.apply(|node| {
                if let LogicalPlan::Extension(ext) = node
                    && let Some(b) = ext.node.as_any().downcast_ref::<PolicyBarrier>()
                {
                    found.push((b.table().to_string(), b.is_sealed()));
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
            .expect("walks");
            found
        };
        let (lake, _) = quickstart().await;
        let alice = lake
            .session(lake.identity_of("alice").expect("alice"), None)
            .await
            .expect("session");
        let state = alice.context().state();
        let sql = "SELECT h.email, s.units FROM hcp h JOIN sales s ON s.hcp_id = h.hcp_id \
                   WHERE h.specialty = 'Oncology'";
        let plan = state.create_logical_plan(sql).await.expect("plans");
        let optimized = state.optimize(&plan).expect("optimizes");
        let mut sealed = barriers(&optimized);
        sealed.sort();
        assert_eq!(
            sealed,
            [
                ("gtm.hcp".to_string(), true),
                ("gtm.sales".to_string(), true)
            ]
        );
        let (opened, _) = crate::plan_cache::optimize(&state, &plan).expect("optimizes");
        assert!(
            barriers(&opened).iter().all(|(_, sealed)| !sealed),
            "{opened}"
        );
        let text = opened.display_indent().to_string();
        assert!(
            text.contains("specialty = Utf8View(\"Oncology\")"),
            "{text}"
        );
        let view = state
            .create_logical_plan("SELECT * FROM sales_by_country")
            .await
            .expect("plans");
        let view = state.optimize(&view).expect("optimizes");
        assert!(
            barriers(&view)
                .iter()
                .any(|(table, sealed)| table == "gtm.sales_by_country" && !sealed),
            "{view}"
        );
    }

    #[tokio::test]
    async fn connections_of_a_user_share_the_catalog_not_the_settings() {
        let (lake, _) = quickstart().await;
        let carol = || lake.identity_of("carol").expect("carol");
        let first = lake.session(carol(), None).await.expect("session");
        let second = lake.session(carol(), None).await.expect("session");
        assert!(Arc::ptr_eq(&first.catalog, &second.catalog));
        // plans and the task context are the user's while no setting is changed; the task
        // context carries no connection's notices (engines take them when planned)
        let state = second.planning_state(false);
        let shared = second.task_context(&state);
        assert!(Arc::ptr_eq(&first.task_context(&state), &shared));
        assert!(shared.session_config().get_extension::<Notices>().is_none());
        assert!(state.config().get_extension::<Notices>().is_some());
        assert!(first.plans().is_some());
        // cached plans are planned physically in the user's one kept state
        let kept = |session: &UserSession| match session.planning_state(true) {
            Cow::Borrowed(state) => Some(state as *const SessionState),
            Cow::Owned(_) => None,
        };
        assert!(kept(&first).is_some() && kept(&first) == kept(&second));
        // SET search_path on one connection
        first.set_default_schema("pg_catalog");
        assert!(first.plans().is_none() && second.plans().is_some());
        let own = first.task_context(&first.planning_state(true));
        assert!(!Arc::ptr_eq(&own, &shared));
        assert!(kept(&first).is_none() && kept(&second).is_some());
        assert!(
            one_value(&first, "SELECT current_schema()")
                .await
                .contains("pg_catalog")
        );
        assert!(
            one_value(&second, "SELECT current_schema()")
                .await
                .contains("gtm")
        );
        let all = one_value(&second, "SELECT count(*) FROM hcp").await;
        assert!(all.contains("| 2000 "), "{all}");
        assert!(
            first
                .context()
                .sql("SELECT count(*) FROM hcp")
                .await
                .is_err()
        );
        assert!(!Arc::ptr_eq(&first.notices, &second.notices));
        // the user's context is untouched: a third connection starts from it
        let third = lake.session(carol(), None).await.expect("session");
        assert!(
            one_value(&third, "SELECT current_schema()")
                .await
                .contains("gtm")
        );
    }

    #[tokio::test]
    async fn other_users_tokens_and_tables_get_their_own_catalog() {
        let (lake, config) = quickstart().await;
        let carol = || lake.identity_of("carol").expect("carol");
        let first = lake.session(carol(), None).await.expect("session");
        let alice = lake
            .session(lake.identity_of("alice").expect("alice"), None)
            .await
            .expect("session");
        assert!(!Arc::ptr_eq(&first.catalog, &alice.catalog));
        let mut other_groups = carol();
        other_groups.groups.push("eu-sales".into());
        let regrouped = lake.session(other_groups, None).await.expect("session");
        assert!(!Arc::ptr_eq(&first.catalog, &regrouped.catalog));
        let with_token = lake
            .session(carol(), Some(LoginToken("a.b.c".into())))
            .await
            .expect("session");
        assert!(!Arc::ptr_eq(&first.catalog, &with_token.catalog));
        let (catalog, _) = crate::load_catalog(&config, None).await.expect("catalog");
        lake.replace_tables(Tables::new(catalog, None, None).expect("tables"));
        let after_reload = lake.session(carol(), None).await.expect("session");
        assert!(!Arc::ptr_eq(&first.catalog, &after_reload.catalog));
    }

    #[tokio::test]
    async fn a_session_is_freed_when_dropped() {
        let (lake, _) = quickstart().await;
        let identity = lake.identity_of("carol").expect("carol");
        let session = lake.session_for(identity, None).await.expect("session");
        // pg_catalog (registered in the session's catalog list, holding that list) must not
        // keep the list alive once the session is gone.
        let catalogs = Arc::downgrade(session.context().state_ref().read().catalog_list());
        assert!(
            session
                .context()
                .table_exist("pg_catalog.pg_class")
                .expect("lookup")
        );
        drop(session);
        assert!(
            catalogs.upgrade().is_none(),
            "the session's catalogs outlived it"
        );
    }

    /// A point lookup on a small table reads it in one partition: spreading a few thousand
    /// rows over the cores costs a task and a channel per query and gains nothing.
    #[tokio::test]
    async fn a_small_table_is_not_spread_over_partitions() {
        let (lake, _) = quickstart().await;
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        let plan = session
            .context()
            .sql("SELECT * FROM gtm.hcp WHERE hcp_id = 77")
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        assert!(shown.contains("FilterExec"), "{shown}");
        assert!(!shown.contains("RepartitionExec"), "{shown}");
    }

    fn copy_folder(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("folder");
        for entry in std::fs::read_dir(from).expect("read folder") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_folder(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }

    /// The quickstart copied to a folder of its own (its files may change), with `extra`
    /// added to its configuration.
    pub(crate) async fn quickstart_copy(name: &str, extra: &str) -> (Lake, PathBuf) {
        let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        crate::demo::ensure(&quickstart.join("data")).expect("demo data");
        let dir = std::env::temp_dir().join(format!("lakegate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_folder(&quickstart, &dir);
        let config_file = dir.join("lakegate.yaml");
        let text = std::fs::read_to_string(&config_file).expect("config");
        std::fs::write(&config_file, format!("{text}\n{extra}\n")).expect("config written");
        let config = Config::load(&config_file).expect("config");
        let (catalog, _) = crate::load_catalog(&config, None).await.expect("catalog");
        let policy = crate::load_policy(&config.policy).expect("policy");
        let lake = Lake::new(Arc::new(config), catalog, policy, None).expect("lake");
        (lake, dir)
    }

    /// carol's count of hcp rows after adding a copy of the table's file, and after removing
    /// it again, in one session.
    async fn counts_as_files_change(lake: &Lake, dir: &Path) -> (String, String, String) {
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        let count = "SELECT count(*) AS n FROM gtm.hcp";
        let before = one_value(&session, count).await;
        let folder = dir.join("data/gtm/hcp");
        std::fs::copy(folder.join("part-0.parquet"), folder.join("part-1.parquet")).expect("add");
        let after_add = one_value(&session, count).await;
        std::fs::remove_file(folder.join("part-1.parquet")).expect("remove");
        let after_remove = one_value(&session, count).await;
        (before, after_add, after_remove)
    }

    /// Files land in a table's folder (or S3 prefix) while users query it: the next query
    /// of the same session reads them, and does not look for files that are gone.
    #[tokio::test]
    async fn files_added_or_removed_are_seen_by_the_next_query() {
        let (lake, dir) = quickstart_copy("files", "").await;
        let (before, after_add, after_remove) = counts_as_files_change(&lake, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(before.contains("| 2000 |"), "{before}");
        assert!(after_add.contains("| 4000 |"), "{after_add}");
        assert!(after_remove.contains("| 2000 |"), "{after_remove}");
    }

    /// carol's answer to `sql` in a new session.
    async fn carols_answer(lake: &Lake, sql: &str) -> String {
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        one_value(&session, sql).await
    }

    async fn kept_tables(lake: &Lake) -> usize {
        lake.tables().catalog.small_tables().kept_tables().await
    }

    /// Queries that find a small table not yet read wait for one read of it, rather than
    /// each reading (and holding) the whole table at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn queries_arriving_together_read_a_small_table_once() {
        let (lake, dir) = quickstart_copy("kept-together", "").await;
        let lake = Arc::new(lake);
        // carol's catalog is built first, so the queries meet at the table
        carols_answer(&lake, "SELECT 1").await;
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let lookups = (1..=8).map(|id| {
            let (lake, start) = (lake.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let sql = format!("SELECT full_name FROM gtm.hcp WHERE hcp_id = {id}");
                carols_answer(&lake, &sql).await
            })
        });
        let answers: Vec<String> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .map(|answer| answer.expect("query task"))
            .collect();
        let reads = lake.tables().catalog.small_tables().reads();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            answers.iter().all(|a| a.lines().count() == 5),
            "{answers:?}"
        );
        assert_eq!(reads, 1);
    }

    /// A table whose file cannot be read answers with the error, and the next query after
    /// the file is mended reads it again and answers.
    #[tokio::test]
    async fn a_failed_read_is_not_kept() {
        let (lake, dir) = quickstart_copy("kept-broken", "").await;
        let file = dir.join("data/gtm/hcp/part-0.parquet");
        let whole = std::fs::read(&file).expect("file");
        std::fs::write(&file, b"not parquet").expect("broken");
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        let lookup = "SELECT full_name FROM gtm.hcp WHERE hcp_id = 7";
        let broken = match session.context().sql(lookup).await {
            Ok(frame) => frame.collect().await.map(|_| ()),
            Err(e) => Err(e),
        };
        std::fs::write(&file, whole).expect("mended");
        let mended = one_value(&session, lookup).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(broken.is_err(), "a broken file is an error");
        assert_eq!(mended.lines().count(), 5, "{mended}");
    }

    /// Rewrites the quickstart copy's `hcp` file in place with its first `rows` rows only.
    pub(crate) async fn keep_first_hcps(dir: &Path, rows: usize) {
        let file = dir.join("data/gtm/hcp/part-0.parquet");
        let smaller = dir.join("smaller.parquet");
        let copy = format!(
            "COPY (SELECT * FROM '{}' ORDER BY hcp_id LIMIT {rows}) TO '{}' STORED AS PARQUET",
            file.display(),
            smaller.display()
        );
        let writer = SessionContext::new().enable_url_table();
        let written = writer.sql(&copy).await.expect("copy");
        written.collect().await.expect("written");
        std::fs::rename(&smaller, &file).expect("rewritten");
    }

    /// A small table is read from its files once and then from memory, until a file of it
    /// changes: added and removed files (above) and a file rewritten in place are read anew.
    #[tokio::test]
    async fn a_small_table_is_kept_in_memory_until_its_files_change() {
        let (lake, dir) = quickstart_copy("kept", "").await;
        assert_eq!(kept_tables(&lake).await, 0);
        let lookup = "SELECT count(*) AS n FROM gtm.hcp WHERE hcp_id <= 10";
        let first = carols_answer(&lake, lookup).await;
        assert_eq!(
            kept_tables(&lake).await,
            1,
            "hcp is kept after its first read"
        );
        let again = carols_answer(&lake, lookup).await;
        // the file rewritten in place with its first five rows only
        keep_first_hcps(&dir, 5).await;
        let rewritten = carols_answer(&lake, lookup).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(first.contains("| 10 |"), "{first}");
        assert_eq!(again, first);
        assert!(rewritten.contains("| 5 |"), "read anew: {rewritten}");
    }

    /// Kept rows are the raw table: each user's policy still applies to them. carol (no row
    /// filter) has hcp read into memory; alice then sees her countries only, emails masked.
    #[tokio::test]
    async fn kept_tables_are_read_under_each_users_policy() {
        let (lake, dir) = quickstart_copy("kept-policy", "").await;
        let elsewhere =
            "SELECT count(*) AS n FROM gtm.hcp WHERE country NOT IN ('DE', 'FR', 'DK', 'CH')";
        let carols = carols_answer(&lake, elsewhere).await;
        assert_eq!(kept_tables(&lake).await, 1);
        let alice = lake.identity_of("alice").expect("alice");
        let session = lake.session(alice, None).await.expect("session");
        let alices = one_value(&session, elsewhere).await;
        let emails = one_value(
            &session,
            "SELECT count(*) AS n FROM gtm.hcp WHERE email LIKE '%@%'",
        )
        .await;
        let rows = one_value(&session, "SELECT count(*) AS n FROM gtm.hcp").await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !carols.contains("| 0 |"),
            "carol sees other countries: {carols}"
        );
        assert!(
            alices.contains("| 0 |"),
            "alice sees her countries only: {alices}"
        );
        assert!(!rows.contains("| 0 |"), "{rows}");
        assert!(emails.contains("| 0 |"), "emails are masked: {emails}");
    }

    /// With no memory for them, or a table larger than its share, tables are read from their
    /// files on every query, with the same answers.
    #[tokio::test]
    async fn tables_beyond_the_budget_are_read_from_their_files() {
        for (name, budget) in [("kept-off", 0), ("kept-tiny", 1)] {
            let extra = format!("small_table_cache_megabytes: {budget}");
            let (lake, dir) = quickstart_copy(name, &extra).await;
            let lookup = "SELECT full_name FROM gtm.hcp WHERE hcp_id = 7";
            let first = carols_answer(&lake, lookup).await;
            let again = carols_answer(&lake, lookup).await;
            let kept = kept_tables(&lake).await;
            let _ = std::fs::remove_dir_all(&dir);
            assert_eq!(kept, 0, "budget {budget} MB");
            assert_eq!(first, again);
            assert!(
                first.contains("full_name") && first.lines().count() == 5,
                "{first}"
            );
        }
    }

    /// `file_listing_seconds` trades that for speed: within it, a listing is used again.
    #[tokio::test]
    async fn a_kept_listing_is_used_for_file_listing_seconds() {
        let (lake, dir) = quickstart_copy("listing", "file_listing_seconds: 3600").await;
        let (before, after_add, _) = counts_as_files_change(&lake, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(before.contains("| 2000 |"), "{before}");
        assert!(
            after_add.contains("| 2000 |"),
            "the listing was kept: {after_add}"
        );
    }

    /// A kept listing expires, and the table's new files are read then: queries made while
    /// it was kept did not make the old rows outlive it.
    #[tokio::test]
    async fn new_files_are_read_once_a_kept_listing_expires() {
        let (lake, dir) = quickstart_copy("listing-expires", "file_listing_seconds: 1").await;
        let count = "SELECT count(*) AS n FROM gtm.hcp";
        let before = carols_answer(&lake, count).await;
        let folder = dir.join("data/gtm/hcp");
        std::fs::copy(folder.join("part-0.parquet"), folder.join("part-1.parquet")).expect("add");
        let within = carols_answer(&lake, count).await;
        // polled: the listing is kept one second, so the count changes within a few
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut after = carols_answer(&lake, count).await;
        while !after.contains("| 4000 |") && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            after = carols_answer(&lake, count).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(before.contains("| 2000 |"), "{before}");
        assert!(
            within.contains("| 2000 |"),
            "the listing was kept: {within}"
        );
        assert!(after.contains("| 4000 |"), "read once it expired: {after}");
    }
}
