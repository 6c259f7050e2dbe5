//! The query road for one connection: wire → session → gate → plan (policy enforced by the
//! session's analyzer) → DataFusion → wire. Simple and extended protocol share it; cursors,
//! SET/SHOW and transaction statements use datafusion-postgres's hooks on the same per-user
//! session, so they plan through the same policy.
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatementWrapper;
use datafusion::sql::sqlparser::ast::{CloseCursor, Statement};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use futures::{Sink, StreamExt, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DescribePortalResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionHandle, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Parse, Sync as PgSync};
use pgwire::types::format::FormatOptions;

use crate::answers_together::{Flight, Flights};
use crate::column_names;
use crate::copy::{CopyOut, copy_out};
use crate::cursor::{self, Cursors};
use crate::described::{self, Described};
use crate::error::{QueryError, df_err};
use crate::gate;
use crate::lake::{Lake, UserSession};
use crate::literal_params::{self, Parameterized};
use crate::peer::PeerWatch;
use crate::pg_compat;
use crate::plan_cache::{self, CachedQuery, Planned, QueryText};
use crate::settings::Settings;
use crate::shapes::{Known, Shapes};
use crate::sync_flush::{PgwireDefaults, SyncFlush};

/// A prepared statement: its text and, unless empty, the parsed statement and its plan.
/// (The shape datafusion-postgres's hooks expect in the portal store.)
pub type PreparedStatement = (String, Option<(Statement, LogicalPlan)>);

pub struct QueryHandler {
    lake: Arc<Lake>,
    parser: Arc<LakeParser>,
    hooks: Vec<Arc<dyn QueryHook>>,
    /// Statements in flight over all connections (`answers_together`).
    flights: Arc<Flights>,
}

impl QueryHandler {
    pub fn new(lake: Arc<Lake>) -> Self {
        QueryHandler {
            parser: Arc::new(LakeParser {
                lake: lake.clone(),
                sql_parser: PostgresCompatibilityParser::new(),
                shapes: Shapes::default(),
            }),
            lake,
            hooks: vec![Arc::new(SetShowHook), Arc::new(TransactionStatementHook)],
            flights: Arc::default(),
        }
    }
}

/// The connection's share of the statements in flight (`answers_together`).
fn flight<C: ClientInfo + ?Sized>(flights: &Arc<Flights>, client: &C) -> Arc<Flight> {
    client
        .session_extensions()
        .get_or_insert_with(|| Flight::new(flights.clone()))
}

/// What the connection's last prepared statement is described with (`described`).
fn described<C: ClientInfo + ?Sized>(client: &C) -> Arc<Described> {
    client
        .session_extensions()
        .get_or_insert_with(Described::default)
}

/// The connection's session, made on first use after login over the user's shared catalog
/// (`Lake::session`) and kept for the connection.
async fn user_session<C: ClientInfo + ?Sized>(
    lake: &Lake,
    client: &C,
) -> PgWireResult<Arc<UserSession>> {
    if let Some(session) = client.session_extensions().get::<UserSession>() {
        return Ok(session);
    }
    let user = client
        .metadata()
        .get(pgwire::api::METADATA_USER)
        .cloned()
        .unwrap_or_default();
    // A token login left the identity its token proves; local users are in the config.
    let identity = match client
        .session_extensions()
        .get::<lakegate_policy::Identity>()
    {
        Some(identity) => Some((*identity).clone()),
        None => lake.identity_of(&user),
    };
    let Some(identity) = identity else {
        return Err(QueryError::refused("permission denied: unknown user", "").into());
    };
    let token = client
        .session_extensions()
        .get::<crate::auth::LoginToken>()
        .map(|t| (*t).clone());
    let session = lake.session(identity, token).await.map_err(|e| {
        tracing::error!(user = %user, error = %e, "cannot build session");
        PgWireError::from(QueryError::Internal)
    })?;
    client.session_extensions().insert(session);
    client
        .session_extensions()
        .get::<UserSession>()
        .ok_or_else(|| QueryError::Internal.into())
}

/// The context a hook gets for `statement`: the user's shared one for statements that only
/// read it (queries, SHOW, transaction control), the connection's own for anything else, as
/// SET changes it.
fn hook_context<'a>(session: &'a UserSession, statement: &Statement) -> &'a SessionContext {
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => session.context(),
        _ => session.context_to_change(),
    }
}

/// Row shapes of this connection's cursors, recorded when a DECLARE is planned, so a FETCH in
/// the extended protocol can be described before it runs.
#[derive(Default)]
struct CursorShapes(std::sync::Mutex<HashMap<String, DFSchemaRef>>);

/// Plans each cursor's query (so its errors read as the query's own: a hidden table is 42P01)
/// and records its row shape. The cursor hook plans it again to stream it.
async fn declare_cursors<C: ClientInfo + ?Sized>(
    client: &C,
    session: &UserSession,
    declares: &[datafusion::sql::sqlparser::ast::Declare],
) -> Result<(), QueryError> {
    let shapes = client
        .session_extensions()
        .get_or_insert_with(CursorShapes::default);
    for declare in declares {
        if let Some(query) = &declare.for_query {
            let plan = plan_statement(session, &Statement::Query(query.clone())).await?;
            let statement = Statement::Query(query.clone());
            let named = column_names::postgres_schema(&statement, plan.schema().as_arrow());
            // PostgreSQL allows equal column names, a DFSchema does not: keep DataFusion's then.
            let shape = DFSchema::try_from(named)
                .map(Arc::new)
                .unwrap_or_else(|_| plan.schema().clone());
            if let (Some(name), Ok(mut map)) = (declare.names.first(), shapes.0.lock()) {
                map.insert(name.value.clone(), shape);
            }
        }
    }
    Ok(())
}

/// DECLARE: each cursor's query is planned under policy and its batch stream kept for FETCH.
/// A portal named like the cursor, carrying its plan, answers drivers that describe the cursor
/// (psycopg); it is never executed.
async fn open_cursors(
    client: &mut dyn HookClient,
    session: &UserSession,
    declares: &[datafusion::sql::sqlparser::ast::Declare],
) -> PgWireResult<Response> {
    declare_cursors(&*client, session, declares).await?;
    let cursors = client
        .session_extensions()
        .get_or_insert_with(Cursors::default);
    for declare in declares {
        let (Some(name), Some(query)) = (declare.names.first(), &declare.for_query) else {
            return Err(
                QueryError::Syntax("DECLARE needs a cursor name and a query".into()).into(),
            );
        };
        let statement = Statement::Query(query.clone());
        let plan = plan_statement(session, &statement).await?;
        let df = session
            .context()
            .execute_logical_plan(plan.clone())
            .await
            .map_err(df_err)?;
        let schema = Arc::new(column_names::postgres_schema(
            &statement,
            df.schema().as_arrow(),
        ));
        let task = df.task_ctx();
        let physical = df.create_physical_plan().await.map_err(df_err)?;
        let batches = crate::runtimes::execute(physical, Arc::new(task)).map_err(df_err)?;
        cursors.declare(&name.value, schema, batches).await;
        let stored = (statement.to_string(), Some((statement, plan)));
        let stored = Arc::new(StoredStatement::new(name.value.clone(), stored, vec![]));
        client
            .portal_store()
            .put_portal(Arc::new(Portal::new_cursor(name.value.clone(), stored)));
    }
    Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
}

/// FETCH: rows from the cursor, encoded in the format this FETCH asks for.
async fn fetch_cursor<C: ClientInfo + ?Sized>(
    client: &C,
    name: &str,
    direction: &datafusion::sql::sqlparser::ast::FetchDirection,
    format: &Format,
) -> PgWireResult<Response> {
    let count = cursor::fetch_count(direction)?;
    let cursors = client
        .session_extensions()
        .get::<Cursors>()
        .ok_or_else(|| QueryError::UndefinedCursor(name.to_string()))?;
    let (schema, batches) = cursors.fetch(name, count).await?;
    let fields = Arc::new(pgwire_fields(&schema, format, client)?);
    let rows = encode_rows(fields.clone(), stream::iter(batches.into_iter().map(Ok)));
    let mut response = QueryResponse::new(fields, rows);
    // PostgreSQL tags FETCH results "FETCH n"; psqlODBC's declare/fetch mode relies on it.
    response.set_command_tag("FETCH");
    Ok(Response::Query(response))
}

async fn close_cursor(client: &mut dyn HookClient, cursor: &CloseCursor) -> Response {
    let name = match cursor {
        CloseCursor::All => None,
        CloseCursor::Specific { name } => Some(name.value.as_str()),
    };
    if let Some(cursors) = client.session_extensions().get::<Cursors>() {
        cursors.close(name).await;
    }
    match name {
        Some(name) => client.portal_store().rm_portal(name),
        None => client.portal_store().clear_portals(),
    }
    Response::Execution(Tag::new("CLOSE CURSOR"))
}

fn cursor_shape<C: ClientInfo + ?Sized>(client: &C, name: &str) -> DFSchemaRef {
    client
        .session_extensions()
        .get::<CursorShapes>()
        .and_then(|shapes| shapes.0.lock().ok().and_then(|m| m.get(name).cloned()))
        .unwrap_or_else(|| Arc::new(DFSchema::empty()))
}

pub struct LakeParser {
    lake: Arc<Lake>,
    sql_parser: PostgresCompatibilityParser,
    /// Texts of a shape parsed before are not parsed again (simple queries and Parse).
    shapes: Shapes,
}

impl LakeParser {
    fn parse(&self, sql: &str) -> Result<Vec<Statement>, QueryError> {
        // Statement text only at debug level: it can hold literal values from the data.
        tracing::debug!(sql, "parse");
        let sql = crate::client_compat::rewrite(sql);
        let protected = crate::scalar_subquery::protect(&sql);
        let sql = protected.as_deref().unwrap_or(&sql);
        match self.sql_parser.parse(sql) {
            Ok(mut statements) => {
                for s in &mut statements {
                    pg_compat::rewrite_description_calls(s);
                }
                Ok(statements)
            }
            Err(e) => {
                Err(gate::refuse_unparsed(sql).unwrap_or_else(|| QueryError::Syntax(e.to_string())))
            }
        }
    }
}

/// Plans a gated statement in the user's session. Policy is applied when the plan is
/// optimized for execution (the session's first analyzer rule), whatever path runs it.
async fn plan_statement(
    session: &UserSession,
    statement: &Statement,
) -> Result<LogicalPlan, QueryError> {
    let state = session.context().state();
    let plan = state
        .statement_to_plan(DfStatementWrapper::Statement(Box::new(statement.clone())))
        .await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| QueryError::refused("permission denied: statement not allowed", ""))?;
    Ok(plan)
}

/// A query with its values taken out (`literal_params`): the plan kept for its shape, or one
/// made now with placeholders, to be kept; None where the values do not fit the placeholders'
/// types (or the text with placeholders does not plan), and the text is planned as written.
async fn plan_literals(session: &UserSession, literals: &Parameterized) -> Option<Planned> {
    if let Some(kept) = kept_literals(session, literals) {
        return Some(kept);
    }
    let key = QueryText::Literals(literals.text.clone());
    let plan = plan_statement(session, &literals.statement).await.ok()?;
    literals.fits(&plan).then(|| Planned::Fresh {
        plan,
        params: Some(literals.params()),
        text: Some(key),
    })
}

/// The kept plan of a query with its values taken out, where one fits them.
fn kept_literals(session: &UserSession, literals: &Parameterized) -> Option<Planned> {
    let key = QueryText::Literals(literals.text.clone());
    let cached = session.plans()?.get(&key)?;
    if !(cached.placeholder_types.as_deref()).is_some_and(|t| literals.fits_types(t)) {
        return None;
    }
    tracing::debug!("plan cache hit, values taken out");
    Some(Planned::cached(cached, Some(literals.params())))
}

/// The plan a query's shape was kept with (`plan_literals`), its values bound in.
fn described_by_shape(session: &UserSession, literals: &Parameterized) -> Option<LogicalPlan> {
    let key = QueryText::Literals(literals.text.clone());
    let cached = session.plans()?.get(&key)?;
    if !(cached.placeholder_types.as_deref()).is_some_and(|t| literals.fits_types(t)) {
        return None;
    }
    plan_cache::bind(&cached.logical, &literals.params()).ok()
}

fn format_options<C: ClientInfo + ?Sized>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

/// Runs a plan and streams its rows. pgwire answers a cancel request that arrives while
/// `do_query` runs; rows streamed after `do_query` returned claim the cancel slot themselves
/// (`claim_cancel`), and a cancel request ends them with 57014. The first batch is awaited
/// here, sending the client the NOTICEs engines report meanwhile (a remote query's progress).
/// `named` gives the columns of the plan that runs with PostgreSQL's names (`named_by`, or a
/// prepared statement's kept ones, `described`).
async fn execute<C>(
    client: &mut C,
    session: &UserSession,
    statement: &Statement,
    plan: Planned,
    format: &Format,
    claim_cancel: bool,
    named: &(dyn Fn(&LogicalPlan) -> SchemaRef + Sync),
) -> PgWireResult<QueryResponse>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let (fields, batches) = execute_batches(
        client,
        session,
        statement,
        plan,
        format,
        claim_cancel,
        named,
    )
    .await?;
    let rows = encode_rows(fields.clone(), batches);
    Ok(QueryResponse::new(fields, rows))
}

/// A plan's columns with the names PostgreSQL gives `statement`'s (`named` of `execute`).
fn named_by(statement: &Statement) -> impl Fn(&LogicalPlan) -> SchemaRef + Sync + '_ {
    move |plan| {
        Arc::new(column_names::postgres_schema(
            statement,
            plan.schema().as_arrow(),
        ))
    }
}

/// A running query's batches, ended by a cancel request, the statement timeout or the client
/// leaving, as `cancellable` describes.
type Batches = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<RecordBatch, QueryError>> + Send + 'static>,
>;

/// `execute` up to the batches: the columns as the client is told them, and the rows still
/// in Arrow form (COPY encodes them itself).
async fn execute_batches<C>(
    client: &mut C,
    session: &UserSession,
    statement: &Statement,
    plan: Planned,
    format: &Format,
    claim_cancel: bool,
    named: &(dyn Fn(&LogicalPlan) -> SchemaRef + Sync),
) -> PgWireResult<(Arc<Vec<FieldInfo>>, Batches)>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let cancel = client
        .session_extensions()
        .get::<Arc<ConnectionHandle>>()
        .filter(|_| claim_cancel)
        .map(|h| (*h).clone());
    let state = session.planning_state(matches!(plan, Planned::Cached { .. }));
    let state = state.as_ref();
    let runs_here = |plan: &LogicalPlan| session.runs_here(plan);
    let (optimized, physical) = plan
        .into_physical(state, session.plans(), statement, &runs_here)
        .await
        .map_err(df_err)?;
    let fields = Arc::new(pgwire_fields(&named(&optimized), format, client)?);
    let batches =
        crate::runtimes::execute(physical, session.task_context(state)).map_err(df_err)?;
    let peer = client
        .session_extensions()
        .get::<Arc<PeerWatch>>()
        .map(|p| (*p).clone());
    let deadline = statement_deadline(client);
    let batches = first_batch(client, session, batches, deadline, peer.clone()).await?;
    Ok((
        fields,
        Box::pin(cancellable(batches, cancel, deadline, peer)),
    ))
}

/// Waits for a query's first batch (an error then is the statement's error, before any row
/// description), writing NOTICEs as they come. The statement timeout and the client leaving
/// end the wait, and dropping the stream stops the query wherever it runs.
async fn first_batch<C>(
    client: &mut C,
    session: &UserSession,
    mut batches: SendableRecordBatchStream,
    deadline: Option<tokio::time::Instant>,
    peer: Option<Arc<PeerWatch>>,
) -> PgWireResult<SendableRecordBatchStream>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut notices = session.notices.receiver().await;
    // Progress of earlier work nobody waited on (a cursor's query) is old news now.
    while notices.try_recv().is_ok() {}
    let timeout = deadline_passed(deadline);
    let client_gone = client_left(peer);
    tokio::pin!(timeout);
    tokio::pin!(client_gone);
    let first = loop {
        tokio::select! {
            first = batches.next() => break first,
            Some(text) = notices.recv() => {
                let info = ErrorInfo::new("NOTICE".to_string(), "00000".to_string(), text);
                futures::SinkExt::send(client, PgWireBackendMessage::NoticeResponse(info.into())).await?;
            }
            _ = &mut timeout => return Err(QueryError::StatementTimeout.into()),
            _ = &mut client_gone => {
                tracing::info!("client left during a query; the query stops");
                return Err(QueryError::Cancelled.into());
            }
        }
    };
    let schema = batches.schema();
    let first = match first {
        Some(Err(e)) => return Err(df_err(e)),
        Some(Ok(batch)) => Some(Ok(batch)),
        None => None,
    };
    let rest = stream::iter(first).chain(batches);
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rest)))
}

/// Runs the query behind a COPY TO STDOUT and streams its rows as COPY data.
async fn execute_copy<C>(
    client: &mut C,
    session: &UserSession,
    copy: &CopyOut,
) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let plan = plan_statement(session, &copy.query).await?;
    let (fields, batches) = execute_batches(
        client,
        session,
        &copy.query,
        Planned::once(plan),
        &Format::UnifiedText,
        true,
        &named_by(&copy.query),
    )
    .await?;
    Ok(Response::CopyOut(copy.response(fields, batches)?))
}

fn pgwire_fields<C: ClientInfo + ?Sized>(
    schema: &datafusion::arrow::datatypes::Schema,
    format: &Format,
    client: &C,
) -> PgWireResult<Vec<FieldInfo>> {
    arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, Some(format_options(client)))
}

fn encode_rows(
    fields: Arc<Vec<FieldInfo>>,
    batches: impl futures::Stream<Item = Result<RecordBatch, QueryError>> + Send + 'static,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    batches
        .map(move |batch| -> Box<dyn Iterator<Item = _> + Send> {
            match batch {
                Ok(batch) => Box::new(arrow_pg::datatypes::encode_recordbatch(
                    fields.clone(),
                    batch,
                )),
                Err(e) => Box::new(std::iter::once(Err(PgWireError::from(e)))),
            }
        })
        .flat_map(stream::iter)
}

/// When the statement must end, from `SET statement_timeout` (kept in the client's metadata
/// by datafusion-postgres's SET hook, in milliseconds; 0 or unset means no limit).
fn statement_deadline<C: ClientInfo + ?Sized>(client: &C) -> Option<tokio::time::Instant> {
    let ms: u64 = client
        .metadata()
        .get("statement_timeout_ms")?
        .parse()
        .ok()?;
    (ms > 0).then(|| tokio::time::Instant::now() + std::time::Duration::from_millis(ms))
}

/// Ends at the statement's deadline; never without one.
async fn deadline_passed(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends when the client's socket is gone; never when it cannot be watched.
async fn client_left(peer: Option<Arc<PeerWatch>>) {
    match peer {
        Some(peer) => peer.gone().await,
        None => std::future::pending().await,
    }
}

/// Batches until the end, an error, a cancel request or the statement timeout (then one
/// 57014 and the end), or until the client is gone (then the query stops: nobody reads it).
fn cancellable(
    batches: SendableRecordBatchStream,
    handle: Option<Arc<ConnectionHandle>>,
    deadline: Option<tokio::time::Instant>,
    peer: Option<Arc<PeerWatch>>,
) -> impl futures::Stream<Item = Result<RecordBatch, QueryError>> + Send + 'static {
    // The cancel slot is claimed on the first poll: pgwire polls rows only after `do_query`
    // returned, when its own watch on the slot has ended.
    let start = (batches, handle, None, false);
    stream::unfold(start, move |(mut batches, handle, cancel, done)| {
        let peer = peer.clone();
        async move {
            if done {
                return None;
            }
            let mut cancel = match (cancel, handle) {
                (Some(rx), _) => Some(rx),
                (None, Some(handle)) => Some(handle.start_query().await),
                (None, None) => None,
            };
            let timeout = deadline_passed(deadline);
            let client_gone = client_left(peer);
            tokio::pin!(client_gone);
            tokio::pin!(timeout);
            loop {
                match cancel.as_mut() {
                    Some(rx) => {
                        tokio::select! {
                            _ = &mut timeout => return Some((Err(QueryError::StatementTimeout), (batches, None, None, true))),
                            _ = &mut client_gone => {
                                tracing::info!("client left during a query; the query stops");
                                return None;
                            }
                            signal = rx => match signal {
                                Ok(()) => return Some((Err(QueryError::Cancelled), (batches, None, None, true))),
                                // a later statement replaced this one's cancel slot: keep streaming
                                Err(_) => cancel = None,
                            },
                            item = batches.next() => {
                                return item.map(|r| {
                                    let failed = r.is_err();
                                    (r.map_err(QueryError::from), (batches, None, cancel, failed))
                                });
                            }
                        }
                    }
                    None => {
                        tokio::select! {
                            _ = &mut timeout => return Some((Err(QueryError::StatementTimeout), (batches, None, None, true))),
                            _ = &mut client_gone => {
                                tracing::info!("client left during a query; the query stops");
                                return None;
                            }
                            item = batches.next() => {
                                return item.map(|r| {
                                    let failed = r.is_err();
                                    (r.map_err(QueryError::from), (batches, None, None, failed))
                                });
                            }
                        }
                    }
                }
            }
        }
    })
}

/// `SHOW name` and `SHOW ALL`, from the connection's settings (see settings.rs).
fn show<C: ClientInfo + ?Sized>(
    lake: &Lake,
    client: &C,
    statement: &Statement,
) -> Option<Result<Response, QueryError>> {
    let Statement::ShowVariable { variable } = statement else {
        return None;
    };
    let name = show_name(variable);
    let settings = Settings::new(&lake.default_schema, client.metadata());
    Some(if name.eq_ignore_ascii_case("all") {
        Ok(settings.show_all())
    } else {
        settings.show(&name)
    })
}

/// `SET search_path TO a, b`: unqualified names now resolve in the first listed schema the
/// user has (or, if none, the first listed, where they will not be found, as in PostgreSQL),
/// and SHOW reports the list. False if the statement is something else.
fn set_search_path<C: ClientInfo + ?Sized>(
    client: &mut C,
    session: &UserSession,
    statement: &Statement,
) -> bool {
    let Statement::Set(datafusion::sql::sqlparser::ast::Set::SingleAssignment {
        variable,
        values,
        ..
    }) = statement
    else {
        return false;
    };
    if !variable.to_string().eq_ignore_ascii_case("search_path") {
        return false;
    }
    let shown: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    client
        .metadata_mut()
        .insert("search_path".to_string(), shown.join(", "));
    let names: Vec<String> = values
        .iter()
        .map(|v| match v {
            datafusion::sql::sqlparser::ast::Expr::Identifier(i) => i.value.clone(),
            other => other.to_string().trim_matches('\'').to_string(),
        })
        .filter(|n| n != "pg_catalog" && n != "$user")
        .collect();
    let catalog = session
        .context()
        .state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone();
    let existing = session
        .context()
        .catalog(&catalog)
        .map(|c| c.schema_names())
        .unwrap_or_default();
    let Some(schema) = names
        .iter()
        .find(|n| existing.contains(n))
        .or_else(|| names.first())
    else {
        return true;
    };
    session.set_default_schema(schema);
    true
}

/// `SHOW TIME ZONE` is `SHOW TimeZone`; other names are one identifier.
fn show_name(variable: &[datafusion::sql::sqlparser::ast::Ident]) -> String {
    let words: Vec<String> = variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    match words.as_slice() {
        [time, zone] if time == "time" && zone == "zone" => "TimeZone".to_string(),
        [transaction, isolation, level]
            if transaction == "transaction" && isolation == "isolation" && level == "level" =>
        {
            "transaction_isolation".to_string()
        }
        _ => words.join("."),
    }
}

/// Statements Lakegate answers itself, before the hooks.
fn statement_tag(statement: &Statement) -> Option<Response> {
    match statement {
        Statement::Discard { .. } => Some(Response::Execution(Tag::new("DISCARD ALL"))),
        // Read-only work has nothing to roll back to: savepoints are accepted and change nothing,
        // and ROLLBACK TO keeps the transaction open (unlike ROLLBACK).
        Statement::Savepoint { .. } => Some(Response::Execution(Tag::new("SAVEPOINT"))),
        Statement::ReleaseSavepoint { .. } => Some(Response::Execution(Tag::new("RELEASE"))),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Some(Response::Execution(Tag::new("ROLLBACK"))),
        Statement::Deallocate { .. } => Some(Response::Execution(Tag::new("DEALLOCATE"))),
        _ => None,
    }
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = user_session(&self.lake, client).await?;
        let text = QueryText::Simple(query.to_string());
        if let Some(cached) = session.plans().and_then(|plans| plans.get(&text)) {
            return Ok(vec![self.run_cached(client, &session, cached).await?]);
        }
        // The same query with other values may have been planned before, with placeholders.
        let (statements, mut literals) = match self.parser.parsed(query)? {
            Parsed::Known(known) => {
                if let Some(response) = self.run_known(client, &session, &known).await? {
                    return Ok(vec![response]);
                }
                self.parser.statements_of(known, query)?
            }
            Parsed::Statements(statements, literals) => (statements, literals),
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Only a text of one query is kept: the cache answers it without parsing.
        let mut text =
            (statements.len() == 1 && matches!(statements[0], Statement::Query(_))).then_some(text);
        let mut responses = Vec::with_capacity(statements.len());
        'statements: for statement in statements {
            if let Err(e) = gate::check(&statement) {
                tracing::info!(user = %session.identity.name, sqlstate = e.sqlstate(), "statement refused");
                return Err(e.into());
            }
            if let Some(response) = statement_tag(&statement) {
                responses.push(response);
                continue;
            }
            if let Some(response) = show(&self.lake, client, &statement) {
                responses.push(response?);
                continue;
            }
            if set_search_path(client, &session, &statement) {
                responses.push(Response::Execution(Tag::new("SET")));
                continue;
            }
            if let Some(copy) = copy_out(&statement)? {
                responses.push(execute_copy(client, &session, &copy).await?);
                continue;
            }
            match &statement {
                Statement::Declare { stmts } => {
                    responses.push(open_cursors(client, &session, stmts).await?);
                    continue;
                }
                Statement::Fetch {
                    name, direction, ..
                } => {
                    responses.push(
                        fetch_cursor(client, &name.value, direction, &Format::UnifiedText).await?,
                    );
                    continue;
                }
                Statement::Close { cursor } => {
                    responses.push(close_cursor(client, cursor).await);
                    continue;
                }
                _ => {}
            }
            for hook in &self.hooks {
                if let Some(result) = hook
                    .handle_simple_query(&statement, hook_context(&session, &statement), client)
                    .await
                {
                    responses.push(result?);
                    continue 'statements;
                }
            }
            let plan = match literals.take() {
                Some(literals) => plan_literals(&session, &literals).await,
                None => None,
            };
            let plan = match plan {
                Some(plan) => plan,
                None => Planned::Fresh {
                    plan: plan_statement(&session, &statement).await?,
                    text: text.take(),
                    params: None,
                },
            };
            responses.push(Response::Query(
                execute(
                    client,
                    &session,
                    &statement,
                    plan,
                    &Format::UnifiedText,
                    true,
                    &named_by(&statement),
                )
                .await?,
            ));
        }
        Ok(responses)
    }
}

impl QueryHandler {
    /// Runs a simple query of a shape parsed before (`shapes`) whose plan is kept with its
    /// values taken out, without making its statement: a shape is of one query, so of the steps
    /// before planning the statement gate and the hooks apply, and they go by the shape's
    /// statement (neither looks at values). None, with nothing done yet, where no plan is kept.
    async fn run_known<C>(
        &self,
        client: &mut C,
        session: &UserSession,
        known: &Known,
    ) -> PgWireResult<Option<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(plan) = kept_literals(session, &known.literals) else {
            return Ok(None);
        };
        let statement = known.literals.statement.as_ref();
        if let Err(e) = gate::check(statement) {
            tracing::info!(user = %session.identity.name, sqlstate = e.sqlstate(), "statement refused");
            return Err(e.into());
        }
        for hook in &self.hooks {
            if let Some(result) = hook
                .handle_simple_query(statement, hook_context(session, statement), client)
                .await
            {
                return result.map(Some);
            }
        }
        let response = execute(
            client,
            session,
            statement,
            plan,
            &Format::UnifiedText,
            true,
            &named_by(statement),
        )
        .await?;
        Ok(Some(Response::Query(response)))
    }

    /// Runs a simple query whose plan was cached: only a query (`Statement::Query`) is, so of
    /// the steps before planning only the hooks apply (a failed transaction refuses it).
    async fn run_cached<C>(
        &self,
        client: &mut C,
        session: &UserSession,
        cached: CachedQuery,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        tracing::debug!("plan cache hit");
        for hook in &self.hooks {
            if let Some(result) = hook
                .handle_simple_query(&cached.statement, session.context(), client)
                .await
            {
                return result;
            }
        }
        let statement = cached.statement.clone();
        let plan = Planned::cached(cached, None);
        let response = execute(
            client,
            session,
            &statement,
            plan,
            &Format::UnifiedText,
            true,
            &named_by(&statement),
        )
        .await?;
        Ok(Response::Query(response))
    }
}

#[async_trait]
impl QueryParser for LakeParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = user_session(&self.lake, client).await?;
        // Drivers such as Npgsql send values written into the text this way too.
        let (mut statements, literals) = self.statements(sql)?;
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            return Err(QueryError::Syntax(
                "cannot insert multiple commands into a prepared statement".into(),
            )
            .into());
        }
        let statement = statements.remove(0);
        gate::check(&statement)?;
        let text = statement.to_string();
        let no_rows = |schema| {
            LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                produce_one_row: false,
                schema,
            })
        };
        let cached = || {
            let text = QueryText::Prepared(text.clone());
            session.plans().and_then(|plans| plans.get(&text))
        };
        let plan = match &statement {
            // A query run before is described from its plan then.
            Statement::Query(_) if let Some(cached) = cached() => cached.logical.as_ref().clone(),
            // So is one whose shape ran before with other values: they are bound into it, and
            // the client is told of no parameters, as it sent none.
            Statement::Query(_)
                if let Some(plan) = (literals.as_ref())
                    .and_then(|literals| described_by_shape(&session, literals)) =>
            {
                plan
            }
            Statement::Query(_) | Statement::Explain { .. } => {
                plan_statement(&session, &statement).await?
            }
            Statement::Declare { stmts } => {
                declare_cursors(client, &session, stmts).await?;
                no_rows(Arc::new(DFSchema::empty()))
            }
            // described with the cursor's row shape: clients read rows by what was described
            Statement::Fetch { name, .. } => no_rows(cursor_shape(client, &name.value)),
            Statement::ShowVariable { variable } => {
                let name = show_name(variable).to_ascii_lowercase();
                let columns: Vec<&str> = if name == "all" {
                    vec!["name", "setting", "description"]
                } else {
                    vec![name.as_str()]
                };
                let fields: Vec<_> = columns
                    .iter()
                    .map(|c| datafusion::arrow::datatypes::Field::new(*c, DataType::Utf8, true))
                    .collect();
                no_rows(Arc::new(
                    DFSchema::try_from(datafusion::arrow::datatypes::Schema::new(fields))
                        .map_err(df_err)?,
                ))
            }
            // hooks and tags answer these at execute time; they describe no rows
            _ => no_rows(Arc::new(DFSchema::empty())),
        };
        Ok(Some((text, Some((statement, plan)))))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        match stmt {
            (_, Some((_, plan))) => described::parameter_types(plan)
                .into_iter()
                .map(|t| match t {
                    Some(t) => arrow_pg::datatypes::into_pg_type(&t),
                    None => Ok(Type::UNKNOWN),
                })
                .collect(),
            _ => Ok(vec![]),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            (_, Some((statement, plan))) => arrow_pg::datatypes::arrow_schema_to_pg_fields(
                &column_names::postgres_schema(statement, plan.schema().as_arrow()),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            _ => Ok(vec![]),
        }
    }
}

/// A text as the handlers take it in: of a shape parsed before (`shapes`), its statement not
/// yet made, or parsed now, with its values taken out where it is one query.
enum Parsed {
    Known(Known),
    Statements(Vec<Statement>, Option<Parameterized>),
}

impl LakeParser {
    /// `sql` by its shape, where a text of it was parsed before, or parsed.
    fn parsed(&self, sql: &str) -> Result<Parsed, QueryError> {
        if let Some(known) = self.shapes.find(sql) {
            return Ok(Parsed::Known(known));
        }
        let (statements, literals) = self.parse_and_learn(sql)?;
        Ok(Parsed::Statements(statements, literals))
    }

    /// The statements of `sql` and, for a text of one query, its values taken out
    /// (`literal_params`): from its shape where a text of it was parsed before (`shapes`).
    fn statements(&self, sql: &str) -> Result<(Vec<Statement>, Option<Parameterized>), QueryError> {
        match self.parsed(sql)? {
            Parsed::Known(known) => self.statements_of(known, sql),
            Parsed::Statements(statements, literals) => Ok((statements, literals)),
        }
    }

    /// The statement of `sql`, found as `known`.
    fn statements_of(
        &self,
        known: Known,
        sql: &str,
    ) -> Result<(Vec<Statement>, Option<Parameterized>), QueryError> {
        match known.statement() {
            Some(statement) => Ok((vec![statement], Some(known.literals))),
            None => self.parse_and_learn(sql),
        }
    }

    fn parse_and_learn(
        &self,
        sql: &str,
    ) -> Result<(Vec<Statement>, Option<Parameterized>), QueryError> {
        let statements = self.parse(sql)?;
        let literals = match statements.as_slice() {
            [statement @ Statement::Query(_)] => literal_params::parameterize(statement),
            _ => None,
        };
        if let Some(literals) = &literals {
            self.shapes.learn(sql, literals, |sql| self.parse(sql).ok());
        }
        Ok((statements, literals))
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = PreparedStatement;
    type QueryParser = LakeParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// pgwire's own Parse, its answer flushed by the Sync that follows it (`sync_flush`).
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        (PgwireDefaults(self))
            .on_parse(&mut SyncFlush::new(client), message)
            .await
    }

    /// pgwire's own Bind, its answer flushed by the Sync that follows it (`sync_flush`).
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        (PgwireDefaults(self))
            .on_bind(&mut SyncFlush::new(client), message)
            .await
    }

    /// pgwire's own Close, its answer flushed by the Sync that follows it (`sync_flush`).
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        (PgwireDefaults(self))
            .on_close(&mut SyncFlush::new(client), message)
            .await
    }

    /// pgwire's own Sync, which writes the answers held since the last one: with other
    /// connections' under load (`answers_together`).
    async fn on_sync<C>(&self, client: &mut C, message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        flight(&self.flights, client).answer().await;
        (PgwireDefaults(self)).on_sync(client, message).await
    }

    /// pgwire's own Describe, its answer flushed by the Sync that follows it (`sync_flush`).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_describe(&mut SyncFlush::new(client), message)
            .await
    }

    /// pgwire's own Execute, its answer flushed by the Sync that follows it (`sync_flush`).
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_execute(&mut SyncFlush::new(client), message).await
    }

    /// A portal's columns, worked out once per statement (`described`).
    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        target: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let columns = described(client).columns(&target.statement);
        let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(
            &columns,
            &target.result_column_format,
            None,
        )?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        flight(&self.flights, client).start();
        let session = user_session(&self.lake, client).await?;
        let (_, Some((statement, plan))) = &portal.statement.statement else {
            return Ok(Response::EmptyQuery);
        };
        let described = described(client);
        let types = described.parameters(&portal.statement);
        let type_refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
        let params = arrow_pg::datatypes::df::deserialize_parameters(portal, &type_refs)?;
        if let Some(response) = statement_tag(statement) {
            return Ok(response);
        }
        if let Some(response) = show(&self.lake, client, statement) {
            return Ok(response?);
        }
        if set_search_path(client, &session, statement) {
            return Ok(Response::Execution(Tag::new("SET")));
        }
        if let Some(copy) = copy_out(statement)? {
            return execute_copy(client, &session, &copy).await;
        }
        match statement {
            Statement::Declare { stmts } => return open_cursors(client, &session, stmts).await,
            Statement::Fetch {
                name, direction, ..
            } => {
                return fetch_cursor(client, &name.value, direction, &portal.result_column_format)
                    .await;
            }
            Statement::Close { cursor } => return Ok(close_cursor(client, cursor).await),
            _ => {}
        }
        for hook in &self.hooks {
            if let Some(result) = hook
                .handle_extended_query(
                    statement,
                    plan,
                    &params,
                    hook_context(&session, statement),
                    client,
                )
                .await
            {
                return result;
            }
        }
        // A query plans the same on every run (where `plan_cache` allows), its parameters
        // bound into the optimized plan each time: its text is the key.
        let text = matches!(statement, Statement::Query(_))
            .then(|| QueryText::Prepared(portal.statement.statement.0.clone()));
        let params = (!types.is_empty()).then_some(params);
        let cached = (session.plans())
            .zip(text.as_ref())
            .and_then(|(plans, text)| plans.get(text));
        // A text without parameters may still be the same query with other values.
        let literals = (params.is_none() && cached.is_none() && text.is_some())
            .then(|| literal_params::parameterize(statement))
            .flatten();
        let with_literals = match &literals {
            Some(literals) => plan_literals(&session, literals).await,
            None => None,
        };
        let plan = match (cached, with_literals) {
            (Some(cached), _) => Planned::cached(cached, params),
            (None, Some(planned)) => planned,
            (None, None) => Planned::Fresh {
                plan: plan.clone(),
                text,
                params,
            },
        };
        // pgwire collects every row of an unlimited Execute (max_rows 0, what most drivers
        // send) into memory before writing it; such results are written here, as they are
        // produced, under pgwire's own watch for cancel requests. Limited Executes (JDBC's
        // setFetchSize) go through pgwire's portal, which holds one batch at a time.
        let streamed_here = max_rows == 0;
        let named = |plan: &LogicalPlan| described.columns_ran(&portal.statement, plan);
        let response = execute(
            client,
            &session,
            statement,
            plan,
            &portal.result_column_format,
            !streamed_here,
            &named,
        )
        .await?;
        if streamed_here {
            write_rows(client, response).await
        } else {
            Ok(Response::Query(response))
        }
    }
}

/// Writes a result's rows to the client as they come (the socket's backpressure bounds the
/// buffer), then answers with the tag pgwire sends as the CommandComplete.
async fn write_rows<C>(client: &mut C, mut response: QueryResponse) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let tag = response.command_tag().to_string();
    let rows = response.data_rows();
    let mut count = 0;
    while let Some(row) = rows.next().await {
        futures::SinkExt::feed(client, PgWireBackendMessage::DataRow(row?)).await?;
        count += 1;
    }
    Ok(Response::Execution(Tag::new(&tag).with_rows(count)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::literal_params::tests::parse;
    use datafusion::common::{ParamValues, ScalarValue};

    fn taken_out(sql: &str) -> Parameterized {
        literal_params::parameterize(&parse(sql)).expect("values taken out")
    }

    /// What `planned` (made from `sql`) returns for `session`'s user, planned (and kept) as
    /// `execute_batches` plans it.
    async fn rows(session: &UserSession, planned: Planned, sql: &str) -> Vec<RecordBatch> {
        let state = session.planning_state(matches!(planned, Planned::Cached { .. }));
        let state = state.as_ref();
        let (_, physical) = planned
            .into_physical(state, session.plans(), &parse(sql), &|plan| {
                session.runs_here(plan)
            })
            .await
            .expect("plans");
        datafusion::physical_plan::collect(physical, session.task_context(state))
            .await
            .expect("runs")
    }

    /// How many rows `planned` (made from `sql`) returns for `session`'s user.
    async fn run(session: &UserSession, planned: Planned, sql: &str) -> usize {
        let batches = rows(session, planned, sql).await;
        batches.iter().map(|b| b.num_rows()).sum()
    }

    fn shown(batches: &[RecordBatch]) -> String {
        datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .expect("format")
            .to_string()
    }

    /// `sql`'s answer as the wire protocols plan it: values taken out, the plan kept.
    async fn through_cache(session: &UserSession, sql: &str) -> String {
        let planned = plan_literals(session, &taken_out(sql))
            .await
            .expect("planned with placeholders");
        shown(&rows(session, planned, sql).await)
    }

    /// A query's shape is planned by its first run and serves the runs with other values, under
    /// the user's row filter; a value of another type than the column's is planned as written.
    #[tokio::test]
    async fn a_shape_is_planned_once_for_all_its_values() {
        let (lake, _) = crate::lake::tests::quickstart().await;
        let alice = lake.identity_of("alice").expect("alice"); // EU rows only
        let session = lake.session(alice, None).await.expect("session");
        let sql = |id: &str| format!("SELECT full_name FROM hcp WHERE hcp_id = {id}");
        // hcp 8 is German, hcp 5 is not in the EU countries alice may read
        let first = plan_literals(&session, &taken_out(&sql("8")))
            .await
            .expect("planned with placeholders");
        assert!(matches!(
            first,
            Planned::Fresh {
                text: Some(QueryText::Literals(_)),
                ..
            }
        ));
        assert_eq!(run(&session, first, &sql("8")).await, 1);
        for (id, visible) in [("5", 0), ("8", 1), ("9", 1)] {
            let again = plan_literals(&session, &taken_out(&sql(id)))
                .await
                .expect("planned");
            assert!(matches!(again, Planned::Cached { .. }), "{id}");
            assert_eq!(run(&session, again, &sql(id)).await, visible, "{id}");
        }
        // described at Parse from the kept plan, the values bound: no parameters to ask for
        let described = described_by_shape(&session, &taken_out(&sql("9"))).expect("described");
        assert!(described.get_parameter_types().expect("types").is_empty());
        // a string for a number column is planned as written
        assert!(
            plan_literals(&session, &taken_out(&sql("'9'")))
                .await
                .is_none()
        );
    }

    /// A query of constants runs again on the physical plan its first run made, from many
    /// connections at once, with the same answer each time.
    #[tokio::test]
    async fn a_plan_of_constants_runs_again_without_planning() {
        let (lake, _) = crate::lake::tests::quickstart().await;
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        let sql = "SELECT 1 AS n UNION ALL SELECT 2";
        let text = QueryText::Simple(sql.to_string());
        let first = Planned::Fresh {
            plan: plan_statement(&session, &parse(sql)).await.expect("plans"),
            text: Some(text.clone()),
            params: None,
        };
        assert_eq!(run(&session, first, sql).await, 2);
        let plans = session.plans().expect("a plan cache");
        let kept = |()| Planned::cached(plans.get(&text).expect("kept"), None);
        // each run gets a copy of the kept plan, with what planning computed (not planned again)
        let (one, other) = (kept(()).physical(), kept(()).physical());
        assert!(
            one.zip(other).is_some_and(
                |(a, b)| !Arc::ptr_eq(&a, &b) && Arc::ptr_eq(a.properties(), b.properties())
            ),
            "one physical plan serves the runs"
        );
        let runs = (0..8).map(|_| run(&session, kept(()), sql));
        let rows = futures::future::join_all(runs).await;
        assert_eq!(rows, vec![2; 8]);
        // each run ran a copy: the kept nodes gathered no run's metrics
        fn metrics(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
            plan.metrics().map_or(0, |m| m.iter().count())
                + plan.children().into_iter().map(metrics).sum::<usize>()
        }
        let kept_plan = plans.get(&text).and_then(|q| q.physical).expect("kept");
        assert_eq!(metrics(&kept_plan), 0);
    }

    /// A lookup's plan is made from its template for each value once it is cached: the answers
    /// a planning gives, under the user's row filter and masks, from the table's rows as they
    /// are now.
    #[tokio::test]
    async fn a_lookup_runs_from_its_template_with_each_value() {
        let (lake, dir) = crate::lake::tests::quickstart_copy("template", "").await;
        let alice = lake.identity_of("alice").expect("alice"); // EU rows, emails hashed
        let session = lake.session(alice, None).await.expect("session");
        let sql = |id: u32| format!("SELECT hcp_id, full_name, email FROM hcp WHERE hcp_id = {id}");
        through_cache(&session, &sql(8)).await;
        through_cache(&session, &sql(8)).await; // the first run from the cache makes it
        let key = QueryText::Literals(taken_out(&sql(8)).text);
        let plans = session.plans().expect("a plan cache");
        let template = plans
            .get(&key)
            .and_then(|q| q.template.made())
            .expect("a template");
        // hcp 8 is German, 5 is not in alice's countries, 4000 is no hcp
        for id in [8, 5, 9, 4000, 1, 8] {
            let (kept, planned) = (
                through_cache(&session, &sql(id)).await,
                crate::lake::tests::one_value(&session, &sql(id)).await,
            );
            assert_eq!(kept, planned, "hcp {id}");
        }
        let eight = through_cache(&session, &sql(8)).await;
        assert!(
            eight.contains("| 8 ") && !eight.contains('@'),
            "hashed: {eight}"
        );
        assert_eq!(template.runs(), 7);
        // the file rewritten with the first five rows: the template's runs read them
        crate::lake::tests::keep_first_hcps(&dir, 5).await;
        let mut answers = Vec::new();
        for id in [8, 1, 2, 3, 4, 5] {
            answers.push((
                id,
                through_cache(&session, &sql(id)).await,
                crate::lake::tests::one_value(&session, &sql(id)).await,
            ));
        }
        let gone = through_cache(&session, &sql(8)).await;
        let _ = std::fs::remove_dir_all(&dir);
        for (id, kept, planned) in answers {
            assert_eq!(kept, planned, "hcp {id} after the rewrite");
        }
        assert!(!gone.contains("| 8 "), "hcp 8 is gone: {gone}");
        assert_eq!(template.runs(), 14);
    }

    /// Runs `sql` (a prepared statement of one parameter) as carol once per value: the rows of
    /// each run, and how many runs its template served, if it has one.
    async fn prepared(
        session: &UserSession,
        sql: &str,
        values: &[ScalarValue],
    ) -> (Vec<usize>, Option<u64>) {
        let plans = session.plans().expect("a plan cache");
        let value = |v: &ScalarValue| ParamValues::List(vec![v.clone().into()]);
        let text = QueryText::Prepared(sql.to_string());
        let plan = plan_statement(session, &parse(sql)).await.expect("plans");
        let mut counts = Vec::new();
        for v in values {
            let planned = match plans.get(&text) {
                Some(cached) => Planned::cached(cached, Some(value(v))),
                None => Planned::Fresh {
                    plan: plan.clone(),
                    text: Some(text.clone()),
                    params: Some(value(v)),
                },
            };
            counts.push(run(session, planned, sql).await);
        }
        let template = plans.get(&text).and_then(|q| q.template.made());
        (counts, template.map(|t| t.runs()))
    }

    /// A prepared statement's template takes each value as its placeholder's type, NULL
    /// included; plans a template cannot serve are planned on every run.
    #[tokio::test]
    async fn templates_take_every_value_and_only_plans_they_can_serve() {
        let (lake, _) = crate::lake::tests::quickstart().await;
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        let prepared =
            async |sql: &str, values: &[ScalarValue]| prepared(&session, sql, values).await;
        let lookup = "SELECT full_name FROM gtm.hcp WHERE hcp_id = $1";
        let ids = [Some(7), Some(7), Some(7), None, Some(8), Some(4000)].map(ScalarValue::Int64);
        assert_eq!(
            prepared(lookup, &ids).await,
            (vec![1, 1, 1, 0, 1, 0], Some(4))
        );
        // a text value for a column read as Utf8View: bound as the placeholder's type
        let by_country = "SELECT hcp_id FROM gtm.hcp WHERE country = $1";
        let countries = [Some("DE"), Some("DE"), Some("DE"), Some("FR"), None]
            .map(|c| ScalarValue::Utf8(c.map(String::from)));
        let (counts, runs) = prepared(by_country, &countries).await;
        let mut planned = Vec::new();
        for country in ["'DE'", "'DE'", "'DE'", "'FR'", "NULL"] {
            let sql = format!("SELECT count(*) AS n FROM gtm.hcp WHERE country = {country}");
            planned.push(crate::lake::tests::one_value(&session, &sql).await);
        }
        let counted = counts.iter().map(|n| format!("| {n} ")).collect::<Vec<_>>();
        for (n, answer) in counted.iter().zip(&planned) {
            assert!(answer.contains(n.as_str()), "{n} in {answer}");
        }
        assert!(
            counts[0] > 0 && counts[3] > 0 && counts[4] == 0,
            "{counts:?}"
        );
        assert_eq!(runs, Some(3));
        for sql in [
            // two tables
            "SELECT a.full_name FROM gtm.hcp a JOIN gtm.hcp b ON a.hcp_id = b.hcp_id WHERE a.hcp_id = $1",
            // a value where a node holds it as a number
            "SELECT full_name FROM gtm.hcp ORDER BY hcp_id LIMIT $1",
        ] {
            let ids = [1, 2, 3].map(|id| ScalarValue::Int64(Some(id)));
            assert_eq!(prepared(sql, &ids).await.1, None, "{sql}");
        }
    }

    /// A table read from its files (keeping tables turned off) gets no template.
    #[tokio::test]
    async fn tables_read_from_their_files_get_no_template() {
        let (lake, _) = crate::lake::tests::quickstart_keeping(Some(0)).await;
        let carol = lake.identity_of("carol").expect("carol");
        let session = lake.session(carol, None).await.expect("session");
        let ids = [1, 2, 3, 4].map(|id| ScalarValue::Int64(Some(id)));
        let lookup = "SELECT full_name FROM gtm.hcp WHERE hcp_id = $1";
        assert_eq!(prepared(&session, lookup, &ids).await, (vec![1; 4], None));
    }
}
