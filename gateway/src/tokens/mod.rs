//! Personal access tokens: what a user gets from browser sign-in (`/login`) and pastes as the
//! password of a BI tool whose scheduled refresh cannot hold an hour-long IdP token.
//!
//! A token reads `lgp_<id>_<secret>`. The store keeps the id, a SHA-256 of the secret (the
//! secret is 256 random bits, so a plain hash is as good as a password hash and cheap to check),
//! the identity snapshot taken at sign-in, and the expiry; never the token. A login with a token
//! is refused when it is unknown, revoked, expired, or names another user, and when its copy of
//! the owner's groups is older than `recheck_seconds` and cannot be re-checked with the identity
//! provider. Re-checking uses the refresh token the provider gave at sign-in, kept sealed with a
//! key derived from the token's own secret: a copy of the store opens neither.
mod file;
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lakegate_policy::Identity;
use ring::aead;
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::config::AccessTokensConfig;
use crate::sso::oidc::OidcClient;

pub use file::FileStore;
pub use postgres::PgStore;

const PREFIX: &str = "lgp_";

/// Why a token store could not answer. Logged; a client only sees its login refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store {0}: {1}")]
    Io(String, String),
    #[error("token store: {0}")]
    Postgres(String),
    #[error("token store {0} is not valid JSON: {1}")]
    Corrupt(String, String),
}

/// Why a login with a personal access token was refused: for the log only.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    #[error("not a personal access token")]
    Malformed,
    #[error("no such token")]
    Unknown,
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("token {0} expired")]
    Expired(String),
    #[error("token {id} belongs to {owner:?}, not {user:?}")]
    WrongUser {
        id: String,
        owner: String,
        user: String,
    },
    #[error("token {id}: the owner's groups could not be re-checked: {reason}")]
    Recheck { id: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One token as stored: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessToken {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub owner: String,
    /// What the owner called it ("Power BI sales report").
    pub name: String,
    /// How the owner signed in when it was made: `oidc` or `saml`.
    pub method: String,
    /// The identity provider (OIDC issuer or SAML entity ID).
    pub issuer: String,
    pub groups: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub created_at: u64,
    pub expires_at: u64,
    /// When the groups were last confirmed by the identity provider.
    pub checked_at: u64,
    #[serde(default)]
    pub last_used_at: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// The provider's refresh token, sealed with the token's secret (base64url of nonce and
    /// ciphertext).
    #[serde(default)]
    pub sealed_refresh: Option<String>,
}

impl AccessToken {
    pub fn status(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }
}

/// What every store does. Updates touch one token; a revocation is never undone by a
/// concurrent update of the same token's snapshot.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn insert(&self, token: &AccessToken) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<AccessToken>, StoreError>;
    /// Every token of `owner`, or every token when `owner` is `None`; newest first.
    async fn list(&self, owner: Option<&str>) -> Result<Vec<AccessToken>, StoreError>;
    /// Marks the token revoked if it exists (and belongs to `owner` when given); whether it did.
    async fn revoke(&self, id: &str, owner: Option<&str>, at: u64) -> Result<bool, StoreError>;
    /// Replaces the identity snapshot, the check time and the sealed refresh token.
    async fn update_snapshot(&self, token: &AccessToken) -> Result<(), StoreError>;
    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError>;
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn hash(secret: &str) -> String {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `lgp_<id>_<secret>` split, or `None` for anything else.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    // Fixed lengths: base64url ids and secrets may themselves contain `_`.
    let (id, secret) = (rest.get(..16)?, rest.get(16..)?.strip_prefix('_')?);
    let ok = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(id, 16) && ok(secret, 43)).then_some((id, secret))
}

pub fn looks_like_token(password: &str) -> bool {
    password.starts_with(PREFIX)
}

/// The sealing key of one token: HKDF of its secret, bound to its id.
fn sealing_key(id: &str, secret: &str) -> Option<aead::LessSafeKey> {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"lakegate access token");
    let info = [id.as_bytes()];
    let prk = salt.extract(secret.as_bytes());
    let okm = prk.expand(&info, &aead::CHACHA20_POLY1305).ok()?;
    Some(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
}

fn seal(id: &str, secret: &str, plain: &str) -> String {
    let nonce_bytes: [u8; 12] = rand::random();
    let mut data = plain.as_bytes().to_vec();
    let nonce = aead::Nonce::assume_unique_for_key(nonce_bytes);
    let sealed = sealing_key(id, secret).and_then(|key| {
        key.seal_in_place_append_tag(nonce, aead::Aad::from(id.as_bytes()), &mut data)
            .ok()
    });
    if sealed.is_none() {
        return String::new();
    }
    let mut out = nonce_bytes.to_vec();
    out.extend(data);
    URL_SAFE_NO_PAD.encode(out)
}

fn unseal(id: &str, secret: &str, sealed: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, cipher) = bytes.split_at(12);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = cipher.to_vec();
    let plain = sealing_key(id, secret)?
        .open_in_place(nonce, aead::Aad::from(id.as_bytes()), &mut data)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// A signed-in user's identity as the provider stated it, with the provider's refresh token
/// when it gave one.
#[derive(Clone)]
pub struct SignedIn {
    pub identity: Identity,
    pub method: &'static str,
    pub issuer: String,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("user", &self.identity.name)
            .field("method", &self.method)
            .finish()
    }
}

/// The personal access tokens of a gateway: minting, logins, listing and revoking.
pub struct AccessTokens {
    store: Arc<dyn TokenStore>,
    max_days: u32,
    recheck: Duration,
    oidc: Option<Arc<OidcClient>>,
}

impl AccessTokens {
    pub async fn open(
        config: &AccessTokensConfig,
        oidc: Option<Arc<OidcClient>>,
    ) -> Result<AccessTokens, String> {
        let store: Arc<dyn TokenStore> = match (&config.file, &config.postgres) {
            (Some(file), None) => Arc::new(FileStore::new(file.clone())),
            (None, Some(conn)) => {
                Arc::new(PgStore::connect(conn).await.map_err(|e| e.to_string())?)
            }
            _ => return Err("access_tokens: name exactly one of `file` and `postgres`".into()),
        };
        if config.max_days == 0 {
            return Err("access_tokens.max_days must be at least 1".into());
        }
        Ok(AccessTokens {
            store,
            max_days: config.max_days,
            recheck: Duration::from_secs(config.recheck_seconds),
            oidc,
        })
    }

    pub fn max_days(&self) -> u32 {
        self.max_days
    }

    /// A new token for a signed-in user; the only time its text exists outside the user's hands.
    pub async fn mint(
        &self,
        who: &SignedIn,
        name: &str,
        days: u32,
    ) -> Result<(String, AccessToken), StoreError> {
        let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>());
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = now();
        let days = days.clamp(1, self.max_days);
        let record = AccessToken {
            id: id.clone(),
            hash: hash(&secret),
            owner: who.identity.name.clone(),
            name: name.chars().take(100).collect(),
            method: who.method.to_string(),
            issuer: who.issuer.clone(),
            groups: who.identity.groups.clone(),
            attributes: who.identity.attributes.clone(),
            created_at: now,
            expires_at: now + u64::from(days) * 86_400,
            checked_at: now,
            last_used_at: None,
            revoked_at: None,
            sealed_refresh: who
                .refresh_token
                .as_deref()
                .map(|refresh| seal(&id, &secret, refresh)),
        };
        self.store.insert(&record).await?;
        tracing::info!(user = %record.owner, token_id = %id, days, "personal access token created");
        Ok((format!("{PREFIX}{id}_{secret}"), record))
    }

    /// A signed-in owner renews the snapshot of their live tokens from the same provider: the
    /// sign-in itself is the re-check (SAML has no other).
    pub async fn renew_snapshots(&self, who: &SignedIn) -> Result<usize, StoreError> {
        let now = now();
        let mut renewed = 0;
        for mut token in self.store.list(Some(&who.identity.name)).await? {
            if token.status(now) != "active" || token.issuer != who.issuer {
                continue;
            }
            token.groups = who.identity.groups.clone();
            token.attributes = who.identity.attributes.clone();
            token.checked_at = now;
            self.store.update_snapshot(&token).await?;
            renewed += 1;
        }
        Ok(renewed)
    }

    pub async fn list(&self, owner: Option<&str>) -> Result<Vec<AccessToken>, StoreError> {
        self.store.list(owner).await
    }

    pub async fn revoke(&self, id: &str, owner: Option<&str>) -> Result<bool, StoreError> {
        let done = self.store.revoke(id, owner, now()).await?;
        if done {
            tracing::info!(token_id = %id, by = owner.unwrap_or("operator"), "personal access token revoked");
        }
        Ok(done)
    }

    /// The identity a token proves for `user`, re-checking the owner's groups when due.
    pub async fn login(&self, token: &str, user: &str) -> Result<Identity, TokenRefused> {
        let (id, secret) = parse(token).ok_or(TokenRefused::Malformed)?;
        let mut record = self.store.get(id).await?.ok_or(TokenRefused::Unknown)?;
        #[allow(deprecated)] // ring keeps this as its constant-time comparison
        let same = ring::constant_time::verify_slices_are_equal(
            hash(secret).as_bytes(),
            record.hash.as_bytes(),
        )
        .is_ok();
        if !same {
            return Err(TokenRefused::Unknown);
        }
        let now = now();
        if record.revoked_at.is_some() {
            return Err(TokenRefused::Revoked(record.id));
        }
        if now >= record.expires_at {
            return Err(TokenRefused::Expired(record.id));
        }
        if record.owner != user {
            return Err(TokenRefused::WrongUser {
                id: record.id,
                owner: record.owner,
                user: user.to_string(),
            });
        }
        if now.saturating_sub(record.checked_at) >= self.recheck.as_secs() {
            self.recheck(&mut record, secret).await?;
        }
        self.store.touch(&record.id, now).await?;
        tracing::info!(user = %user, token_id = %record.id, groups = ?record.groups, "personal access token accepted");
        Ok(Identity {
            name: record.owner,
            groups: record.groups,
            attributes: record.attributes,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(record.expires_at)),
        })
    }

    /// Asks the identity provider for the owner's groups again, with the sealed refresh token.
    async fn recheck(&self, record: &mut AccessToken, secret: &str) -> Result<(), TokenRefused> {
        let failed = |reason: String| TokenRefused::Recheck {
            id: record.id.clone(),
            reason,
        };
        let client = match &self.oidc {
            Some(client) if record.method == "oidc" && client.issuer() == record.issuer => client,
            _ => {
                return Err(failed(format!(
                    "a {} sign-in cannot be re-checked without the owner; they must sign in at /login again",
                    record.method
                )));
            }
        };
        let refresh = record
            .sealed_refresh
            .as_deref()
            .and_then(|sealed| unseal(&record.id, secret, sealed))
            .ok_or_else(|| failed("no refresh token was issued at sign-in".into()))?;
        let fresh = client
            .refresh(&refresh)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if fresh.identity.name != record.owner {
            return Err(failed(format!(
                "the provider now names the owner {:?}",
                fresh.identity.name
            )));
        }
        if fresh.identity.groups != record.groups {
            tracing::info!(user = %record.owner, token_id = %record.id, before = ?record.groups, after = ?fresh.identity.groups, "groups changed at the identity provider");
        }
        record.groups = fresh.identity.groups;
        record.attributes = fresh.identity.attributes;
        record.checked_at = now();
        if let Some(rotated) = fresh.refresh_token {
            record.sealed_refresh = Some(seal(&record.id, secret, &rotated));
        }
        self.store.update_snapshot(record).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_own_shape() {
        // `_` inside the id and the secret (base64url of 0xff bytes)
        let id = URL_SAFE_NO_PAD.encode([0xffu8; 12]);
        assert!(id.contains('_'));
        let secret = URL_SAFE_NO_PAD.encode([9u8; 32]);
        let token = format!("lgp_{id}_{secret}");
        assert_eq!(parse(&token), Some((id.as_str(), secret.as_str())));
        assert_eq!(parse("lgp_short_secret"), None);
        assert_eq!(parse(&token.replace("lgp_", "lgx_")), None);
        assert_eq!(parse(&format!("{token}x")), None);
        assert_eq!(parse("eyJhbGciOiJSUzI1NiJ9.e30.sig"), None);
    }

    #[test]
    fn sealed_refresh_tokens_open_only_with_their_own_secret() {
        let sealed = seal("id1", "secret-one", "refresh-xyz");
        assert!(!sealed.contains("refresh"));
        assert_eq!(
            unseal("id1", "secret-one", &sealed).as_deref(),
            Some("refresh-xyz")
        );
        assert_eq!(unseal("id1", "secret-two", &sealed), None);
        assert_eq!(unseal("id2", "secret-one", &sealed), None);
        assert_eq!(unseal("id1", "secret-one", "AAAA"), None);
    }
}
