//! Company tokens as passwords: an OpenID Connect access or ID token (a JWT) sent as the
//! password of a user that is not a local user, over TLS only.
//!
//! The token must be signed by a configured issuer with one of its allowed asymmetric
//! algorithms (never `none`, never a shared secret: jsonwebtoken refuses a key of another
//! family than the algorithm, so an HS256 token "signed" with the public key fails), carry that
//! issuer in `iss` and the configured audience in `aud`, be within `exp`/`nbf` give or take the
//! configured clock skew, and name the user who logs in. Signing keys come from the issuer's
//! discovery document and JWKS, cached; an unknown `kid` refreshes them at most once per
//! `key_refresh_seconds` per issuer (a flood of forged kids cannot make the gateway hammer the
//! IdP).
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use lakegate_policy::Identity;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::OidcIssuerConfig;

mod ring_crypto;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How long fetched keys are used before they are fetched again anyway.
const KEYS_TTL: Duration = Duration::from_secs(3600);

/// Why a token was refused. Logged; the client only ever sees "authentication failed".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("algorithm {0:?} is not allowed for this issuer")]
    Algorithm(String),
    #[error("no signing key {0:?} at the issuer")]
    UnknownKey(String),
    #[error("issuer keys unavailable: {0}")]
    Keys(String),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("token is for {token_user:?}, not {login_user:?}")]
    WrongUser {
        token_user: String,
        login_user: String,
    },
}

struct Issuer {
    config: OidcIssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
}

pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("OidcVerifier")
            .field("issuers", &issuers)
            .finish()
    }
}

/// Checks the configured issuers: URL scheme and algorithms.
fn issuer(config: &OidcIssuerConfig) -> Result<Issuer, String> {
    let url = reqwest::Url::parse(&config.issuer)
        .map_err(|e| format!("oidc issuer {:?}: {e}", config.issuer))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!(
            "oidc issuer {:?}: must be https (http only on localhost)",
            config.issuer
        ));
    }
    let mut algorithms = Vec::new();
    for name in &config.algorithms {
        let alg = Algorithm::from_str(name).map_err(|_| {
            format!(
                "oidc issuer {:?}: unknown algorithm {name:?}",
                config.issuer
            )
        })?;
        if alg.family() == AlgorithmFamily::Hmac {
            return Err(format!(
                "oidc issuer {:?}: {name} uses a shared secret; only asymmetric algorithms are allowed",
                config.issuer
            ));
        }
        algorithms.push(alg);
    }
    if algorithms.is_empty() {
        return Err(format!("oidc issuer {:?}: no algorithms", config.issuer));
    }
    Ok(Issuer {
        config: config.clone(),
        algorithms,
        keys: Mutex::new(Keys::default()),
    })
}

impl OidcVerifier {
    pub fn new(configs: &[OidcIssuerConfig]) -> Result<OidcVerifier, String> {
        ring_crypto::install();
        let issuers = configs.iter().map(issuer).collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("oidc http client: {e}"))?;
        Ok(OidcVerifier { issuers, http })
    }

    pub fn has_issuer(&self, issuer: &str) -> bool {
        self.issuers.iter().any(|i| i.config.issuer == issuer)
    }

    pub fn is_enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// The issuer OAUTHBEARER clients are pointed at (the first configured), and its scope.
    pub fn discovery_issuer(&self) -> Option<(&str, &str)> {
        self.issuers
            .first()
            .map(|i| (i.config.issuer.as_str(), i.config.scope.as_str()))
    }

    /// The identity a token proves for `login_user`, or why it proves nothing.
    pub async fn verify(&self, token: &str, login_user: &str) -> Result<Identity, TokenError> {
        let (issuer, claims) = self.decode(token, None).await?;
        let identity = identity(&issuer.config, &claims)?;
        if identity.name != login_user {
            return Err(TokenError::WrongUser {
                token_user: identity.name,
                login_user: login_user.to_string(),
            });
        }
        Ok(identity)
    }

    /// The identity an ID token from browser sign-in proves: issued by `issuer` for the
    /// gateway's client, carrying the sign-in's nonce (none after a refresh).
    pub async fn verify_id_token(
        &self,
        token: &str,
        issuer: &str,
        client_id: &str,
        nonce: Option<&str>,
    ) -> Result<Identity, TokenError> {
        let (found, claims) = self.decode(token, Some(client_id)).await?;
        if found.config.issuer != issuer {
            return Err(TokenError::UnknownIssuer(found.config.issuer.clone()));
        }
        if let Some(nonce) = nonce {
            let carried = claims.get("nonce").and_then(Value::as_str);
            let same = carried.is_some_and(|c| {
                #[allow(deprecated)] // ring keeps this as its constant-time comparison
                let same =
                    ring::constant_time::verify_slices_are_equal(c.as_bytes(), nonce.as_bytes())
                        .is_ok();
                same
            });
            if !same {
                return Err(TokenError::Invalid(
                    "nonce does not match the sign-in".into(),
                ));
            }
        }
        identity(&found.config, &claims)
    }

    /// The verified claims of a token and the issuer that signed it; the audience is the
    /// issuer's configured one unless `audience` says otherwise.
    async fn decode(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<(&Issuer, BTreeMap<String, Value>), TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        // The issuer is read before the signature is checked only to pick which keys to check
        // it with; nothing else from the unverified payload is used.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<BTreeMap<String, Value>>(token)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        let iss = unverified
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(TokenError::UnknownIssuer(iss))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = self.key(issuer, &kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = issuer.algorithms.clone();
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&[audience.unwrap_or(&issuer.config.audience)]);
        validation.leeway = issuer.config.clock_skew_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<BTreeMap<String, Value>>(token, &key, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?
            .claims;
        Ok((issuer, claims))
    }

    /// The issuer's discovery document (authorization and token endpoints for sign-in).
    pub async fn discovery(&self, issuer: &str) -> Result<Value, TokenError> {
        self.get_json(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .await
    }

    /// The HTTP client issuers are reached with (no redirects, 10 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The issuer's key `kid`, fetching the keys when they are missing, stale, or lack it.
    async fn key(&self, issuer: &Issuer, kid: &str) -> Result<DecodingKey, TokenError> {
        let mut keys = issuer.keys.lock().await;
        let age = keys.fetched.map(|t| t.elapsed());
        let stale = age.is_none_or(|a| a > KEYS_TTL);
        let missing = keys.set.as_ref().is_none_or(|s| s.find(kid).is_none());
        let interval = Duration::from_secs(issuer.config.key_refresh_seconds);
        let may_refresh = age.is_none_or(|a| a >= interval);
        if stale || (missing && may_refresh) {
            match self.fetch_keys(&issuer.config.issuer).await {
                Ok(set) => keys.set = Some(Arc::new(set)),
                Err(e) if keys.set.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(issuer = %issuer.config.issuer, error = %e, "keeping cached keys")
                }
            }
            keys.fetched = Some(Instant::now());
        }
        let jwk = keys
            .set
            .as_ref()
            .and_then(|s| s.find(kid))
            .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))?;
        DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Keys(e.to_string()))
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<JwkSet, TokenError> {
        let discovery: Value = self
            .get_json(&format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ))
            .await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Keys("discovery document has no jwks_uri".into()))?;
        self.get_json(jwks_uri).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, TokenError> {
        let keys = |e: reqwest::Error| TokenError::Keys(e.without_url().to_string());
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(keys)?
            .json()
            .await
            .map_err(keys)
    }
}

/// The verified claims as a Lakegate identity.
fn identity(
    config: &OidcIssuerConfig,
    claims: &BTreeMap<String, Value>,
) -> Result<Identity, TokenError> {
    let name = claims
        .get(&config.username_claim)
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Invalid(format!("no {} claim", config.username_claim)))?;
    let groups = match claims.get(&config.groups_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let attributes = config
        .attribute_claims
        .iter()
        .filter_map(|claim| {
            let value = match claims.get(claim)? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((claim.clone(), value))
        })
        .collect();
    let expires_at = claims
        .get("exp")
        .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)))
        .map(|exp| std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp));
    Ok(Identity {
        name: name.to_string(),
        groups,
        attributes,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: "https://idp.example.com".into(),
            audience: "urn:lakegate".into(),
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            attribute_claims: vec!["country".into()],
            algorithms: vec!["RS256".into()],
            clock_skew_seconds: 60,
            key_refresh_seconds: 30,
            scope: "openid".into(),
        }
    }

    #[test]
    fn issuers_must_be_https_and_asymmetric() {
        assert!(issuer(&config()).is_ok());
        let mut http = config();
        http.issuer = "http://idp.example.com".into();
        assert!(issuer(&http).is_err());
        http.issuer = "http://127.0.0.1:8080".into();
        assert!(issuer(&http).is_ok());
        let mut hmac = config();
        hmac.algorithms = vec!["HS256".into()];
        assert!(issuer(&hmac).is_err());
    }

    #[test]
    fn claims_become_an_identity() {
        let claims: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"preferred_username":"erin","groups":["eu-sales"],"country":"DE","other":"x"}"#,
        )
        .expect("json");
        let who = identity(&config(), &claims).expect("identity");
        assert_eq!(who.name, "erin");
        assert_eq!(who.groups, vec!["eu-sales"]);
        assert_eq!(
            who.attributes.get("country").map(String::as_str),
            Some("DE")
        );
        assert!(!who.attributes.contains_key("other"));
    }
}
