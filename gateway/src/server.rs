//! The listener: accepts connections, gives each its own startup (SASL) state, and serves
//! them with the shared query handler. A failing connection never affects another.
use std::sync::Arc;

use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers, RandomPidSecretKeyGenerator,
};
use pgwire::error::PgWireError;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{LocalUsers, ScramStartup};
use crate::handler::QueryHandler;
use crate::lake::Lake;
use crate::oidc::OidcVerifier;
use crate::pg_compat;
use crate::runtimes::ConnectionThreads;
use crate::tokens::AccessTokens;

pub struct Server {
    lake: Arc<Lake>,
    tls: Option<TlsAcceptor>,
    users: Arc<LocalUsers>,
    query: Arc<QueryHandler>,
    connections: Arc<ConnectionManager>,
    pids: Arc<RandomPidSecretKeyGenerator>,
    parameters: Arc<DefaultServerParameterProvider>,
}

impl Server {
    pub fn new(
        lake: Arc<Lake>,
        tls: Option<TlsAcceptor>,
        oidc: Arc<OidcVerifier>,
        tokens: Option<Arc<AccessTokens>>,
    ) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = pg_compat::server_version();
        parameters.search_path = lake.default_schema.clone();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Server {
            users: Arc::new(LocalUsers::new(lake.config.clone(), oidc, tokens)),
            query: Arc::new(QueryHandler::new(lake.clone())),
            connections: Arc::new(ConnectionManager::new()),
            pids: Arc::new(RandomPidSecretKeyGenerator::default()),
            parameters: Arc::new(parameters),
            lake,
            tls,
        }
    }

    /// Serves until the listener fails. Each connection runs in its own task, on one of the
    /// connection threads (`runtimes`).
    ///
    /// Clients are accepted as plain sockets, never registered with this runtime's I/O
    /// driver: a socket accepted by tokio's listener was registered here only to be taken out
    /// again for its connection thread, two `epoll_ctl` calls and the driver's bookkeeping on
    /// every login (BENCHMARKS.md, 2026-12-02, morning).
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let allow_plaintext = self.lake.config.tls.allow_plaintext || self.tls.is_none();
        let beat = crate::peer::Beat::start();
        // As many as the runtime serving has workers, so `TOKIO_WORKER_THREADS` sets both.
        let queries = tokio::runtime::Handle::current();
        let threads = ConnectionThreads::start(queries.metrics().num_workers(), queries)?;
        // tokio's `into_std` leaves the listener non-blocking, as `AsyncFd` needs.
        let listener = listener.into_std()?;
        // SAFETY: the `AsyncFd` owns the listener, whose descriptor stays open and the same
        // until both are dropped together.
        let listener = unsafe { AsyncFd::register(listener)? };
        loop {
            let accepted = listener
                .async_io(Interest::READABLE, |listener| listener.accept())
                .await;
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if accept_can_retry(&error) => {
                    // Out of descriptors or memory, or a client gone before it was accepted:
                    // the listener is fine and connected clients keep being served. New
                    // clients wait in the backlog while connections close and free descriptors.
                    tracing::warn!(%error, "cannot accept a connection now");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            // accept(2) does not pass the listener's O_NONBLOCK on; tokio needs it.
            if let Err(error) = socket.set_nonblocking(true) {
                tracing::info!(%peer, %error, "cannot serve a connection");
                continue;
            }
            let watch = crate::peer::PeerWatch::new(&socket, beat.clone()).map(Arc::new);
            let handlers = ConnectionHandlers {
                startup: Arc::new(ScramStartup::new(
                    self.users.clone(),
                    self.parameters.clone(),
                    self.connections.clone(),
                    self.pids.clone(),
                    allow_plaintext,
                    watch,
                )),
                query: self.query.clone(),
                cancel: Arc::new(DefaultCancelHandler::new(self.connections.clone())),
            };
            let tls = self.tls.clone();
            threads.serve(move || async move {
                // registered with the connection thread's own driver
                let socket = match tokio::net::TcpStream::from_std(socket) {
                    Ok(socket) => socket,
                    Err(error) => {
                        tracing::info!(%peer, %error, "cannot serve a connection");
                        return;
                    }
                };
                if let Err(error) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::info!(%peer, %error, "connection ended with an error");
                }
            });
        }
    }
}

/// How long accepting pauses after running out of descriptors or memory.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn accept_can_retry(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO | libc::EPERM
        )
    )
}

struct ConnectionHandlers {
    startup: Arc<ScramStartup>,
    query: Arc<QueryHandler>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.query.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.query.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

/// Logs what clients are told (SQLSTATE and message; never passwords or tokens).
struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .cloned()
            .unwrap_or_default();
        match error {
            PgWireError::UserError(info) => {
                tracing::info!(user = %user, sqlstate = %info.code, message = %info.message, "error sent")
            }
            // logged where the password is verified (auth.rs)
            PgWireError::InvalidPassword(_) => {}
            other => tracing::info!(user = %user, error = %other, "error sent"),
        }
    }
}
