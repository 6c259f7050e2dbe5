//! The extended protocol's answers wait for Sync, as PostgreSQL's do.
//!
//! pgwire's default `on_parse`, `on_bind`, `on_describe`, `on_execute` and `on_close` flush
//! the socket after their answers, and `on_sync` flushes again after ReadyForQuery: a TLS
//! record, a system call and a wake-up of the client each, where the protocol asks for a
//! flush only at Sync or Flush. A prepared lookup made three socket writes (`strace -c`), a
//! driver's unnamed Parse, Bind, Describe, Execute and Sync three as well; PostgreSQL makes
//! one. The handler runs pgwire's own defaults (through [`PgwireDefaults`]) on this wrapper,
//! which skips their flushes except after a message the client must see before it goes on:
//! a notice sent while a remote query runs, CopyInResponse and CopyBothResponse (the client
//! answers them with data), an error. Rows still leave as pgwire's buffer fills, and pgwire's
//! `on_sync` and `on_flush` flush the rest, as its error path does.
use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::portal::Portal;
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, SessionExtensions};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, ProtocolVersion};
use rustls_pki_types::CertificateDer;

/// A handler's pgwire defaults, to be called from its own overrides of them: Rust gives an
/// override no way to call the default it replaces. Only the defaults are meant to run on
/// it; they reach the handler through its parser and `do_query`, and through nothing else.
pub struct PgwireDefaults<'a, H>(pub &'a H);

#[async_trait]
impl<H: ExtendedQueryHandler> ExtendedQueryHandler for PgwireDefaults<'_, H> {
    type Statement = H::Statement;
    type QueryParser = H::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.0.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.0.do_query(client, portal, max_rows).await
    }
}

/// The client of one extended-protocol message, whose answers are flushed by the Sync after it.
pub struct SyncFlush<'a, C> {
    client: &'a mut C,
    /// The last message sent may wait for Sync.
    holds: bool,
}

impl<'a, C> SyncFlush<'a, C> {
    pub fn new(client: &'a mut C) -> Self {
        SyncFlush {
            client,
            holds: false,
        }
    }
}

/// Whether the client must see `message` now, before it sends anything more.
fn is_awaited(message: &PgWireBackendMessage) -> bool {
    matches!(
        message,
        PgWireBackendMessage::NoticeResponse(_)
            | PgWireBackendMessage::CopyInResponse(_)
            | PgWireBackendMessage::CopyBothResponse(_)
            | PgWireBackendMessage::ErrorResponse(_)
    )
}

impl<C> Sink<PgWireBackendMessage> for SyncFlush<'_, C>
where
    C: Sink<PgWireBackendMessage> + Unpin,
{
    type Error = C::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().client).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: PgWireBackendMessage) -> Result<(), C::Error> {
        let this = self.get_mut();
        this.holds = !is_awaited(&message);
        Pin::new(&mut *this.client).start_send(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.holds {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.client).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().client).poll_close(cx)
    }
}

impl<C: ClientPortalStore> ClientPortalStore for SyncFlush<'_, C> {
    type PortalStore = C::PortalStore;

    fn portal_store(&self) -> &Self::PortalStore {
        self.client.portal_store()
    }
}

impl<C: ClientInfo> ClientInfo for SyncFlush<'_, C> {
    fn socket_addr(&self) -> SocketAddr {
        self.client.socket_addr()
    }

    fn is_secure(&self) -> bool {
        self.client.is_secure()
    }

    fn protocol_version(&self) -> ProtocolVersion {
        self.client.protocol_version()
    }

    fn set_protocol_version(&mut self, version: ProtocolVersion) {
        self.client.set_protocol_version(version)
    }

    fn pid_and_secret_key(&self) -> (i32, SecretKey) {
        self.client.pid_and_secret_key()
    }

    fn set_pid_and_secret_key(&mut self, pid: i32, secret_key: SecretKey) {
        self.client.set_pid_and_secret_key(pid, secret_key)
    }

    fn state(&self) -> PgWireConnectionState {
        self.client.state()
    }

    fn set_state(&mut self, new_state: PgWireConnectionState) {
        self.client.set_state(new_state)
    }

    fn transaction_status(&self) -> TransactionStatus {
        self.client.transaction_status()
    }

    fn set_transaction_status(&mut self, new_status: TransactionStatus) {
        self.client.set_transaction_status(new_status)
    }

    fn metadata(&self) -> &HashMap<String, String> {
        self.client.metadata()
    }

    fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        self.client.metadata_mut()
    }

    fn session_extensions(&self) -> &SessionExtensions {
        self.client.session_extensions()
    }

    fn sni_server_name(&self) -> Option<&str> {
        self.client.sni_server_name()
    }

    fn client_certificates<'a>(&self) -> Option<&[CertificateDer<'a>]> {
        self.client.client_certificates()
    }
}
