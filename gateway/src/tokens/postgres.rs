//! Tokens in PostgreSQL, for several gateways at once: each change is one statement on one
//! row, and a revocation is a column no other update writes, so a login re-checking a token
//! at the same moment cannot undo it.
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls, Row};

use super::{AccessToken, StoreError, TokenStore};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS lakegate_access_tokens (
    id text PRIMARY KEY,
    owner text NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint,
    last_used_at bigint,
    body text NOT NULL
)";

pub struct PgStore {
    config: Config,
    tls: bool,
    client: Mutex<Option<Arc<Client>>>,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // The server's message, never the connection string (it may hold a password).
    StoreError::Postgres(match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    })
}

impl PgStore {
    pub async fn connect(conn: &str) -> Result<PgStore, StoreError> {
        let config: Config = conn.parse().map_err(|_| {
            StoreError::Postgres("access_tokens.postgres is not a valid connection string".into())
        })?;
        // `sslmode=require` asks for TLS, checked against the system's roots; `prefer` (the
        // default) and `disable` stay plain (loopback, a sidecar proxy).
        let tls = matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let store = PgStore {
            config,
            tls,
            client: Mutex::new(None),
        };
        store
            .client()
            .await?
            .batch_execute(SCHEMA)
            .await
            .map_err(pg)?;
        Ok(store)
    }

    /// The open connection, or a new one when there is none or it closed.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = if self.tls {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let tls_config = tokio_rustls::rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let (client, connection) = self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config))
                .await
                .map_err(pg)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "token store connection closed");
                }
            });
            client
        } else {
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "token store connection closed");
                }
            });
            client
        };
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }
}

fn token(row: &Row) -> Result<AccessToken, StoreError> {
    let body: String = row.get("body");
    let mut token: AccessToken = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt("lakegate_access_tokens".into(), e.to_string()))?;
    token.revoked_at = row.get::<_, Option<i64>>("revoked_at").map(|v| v as u64);
    token.last_used_at = row.get::<_, Option<i64>>("last_used_at").map(|v| v as u64);
    Ok(token)
}

fn body(token: &AccessToken) -> Result<String, StoreError> {
    let mut plain = token.clone();
    // Kept in their own columns only.
    plain.revoked_at = None;
    plain.last_used_at = None;
    serde_json::to_string(&plain).map_err(|e| StoreError::Postgres(e.to_string()))
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert(&self, token: &AccessToken) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO lakegate_access_tokens (id, owner, created_at, body) VALUES ($1, $2, $3, $4)",
                &[&token.id, &token.owner, &(token.created_at as i64), &body(token)?],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<AccessToken>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT * FROM lakegate_access_tokens WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        row.as_ref().map(token).transpose()
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<AccessToken>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM lakegate_access_tokens WHERE $1::text IS NULL OR owner = $1 \
                 ORDER BY created_at DESC, id",
                &[&owner],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(token).collect()
    }

    async fn revoke(&self, id: &str, owner: Option<&str>, at: u64) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE lakegate_access_tokens SET revoked_at = COALESCE(revoked_at, $3) \
                 WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                &[&id, &owner, &(at as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(n > 0)
    }

    async fn update_snapshot(&self, token: &AccessToken) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE lakegate_access_tokens SET body = $2 WHERE id = $1",
                &[&token.id, &body(token)?],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE lakegate_access_tokens SET last_used_at = $2 WHERE id = $1",
                &[&id, &(at as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}
