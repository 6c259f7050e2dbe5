//! Browser sign-in with an OpenID provider: the authorization-code flow with PKCE (S256), a
//! `state` bound to the browser and a `nonce` bound to the ID token. The ID token is checked by
//! the same verifier as token logins (signature, issuer, algorithms, expiry), with the gateway's
//! client as its audience. The refresh token the provider gives is what re-checks a personal
//! access token's groups later.
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::SsoOidcConfig;
use crate::oidc::{OidcVerifier, TokenError};
use crate::tokens::SignedIn;

/// Why sign-in or a re-check with the provider failed: for the log and a short page.
#[derive(Debug, thiserror::Error)]
pub enum OidcFlowError {
    #[error("the identity provider is unreachable: {0}")]
    Unreachable(String),
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the identity provider's answer has no {0}")]
    Missing(&'static str),
    #[error("ID token rejected: {0}")]
    IdToken(#[from] TokenError),
}

#[derive(Debug, Clone)]
struct Endpoints {
    authorization: String,
    token: String,
}

pub struct OidcClient {
    config: SsoOidcConfig,
    client_secret: Option<String>,
    redirect_uri: String,
    verifier: Arc<OidcVerifier>,
    endpoints: OnceCell<Endpoints>,
}

/// What a sign-in started: kept server-side until the provider sends the browser back.
pub struct PendingLogin {
    pub nonce: String,
    pub code_verifier: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl OidcClient {
    pub fn new(
        config: &SsoOidcConfig,
        redirect_uri: String,
        verifier: Arc<OidcVerifier>,
    ) -> Result<OidcClient, String> {
        if !verifier.has_issuer(&config.issuer) {
            return Err(format!(
                "sso.oidc.issuer {:?} must be one of the `oidc` issuers",
                config.issuer
            ));
        }
        let client_secret = match &config.client_secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("sso.oidc.client_secret_env: the environment variable {var} is not set")
            })?),
            None => None,
        };
        Ok(OidcClient {
            config: config.clone(),
            client_secret,
            redirect_uri,
            verifier,
            endpoints: OnceCell::new(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    async fn endpoints(&self) -> Result<&Endpoints, OidcFlowError> {
        self.endpoints
            .get_or_try_init(|| async {
                let doc = self
                    .verifier
                    .discovery(&self.config.issuer)
                    .await
                    .map_err(|e| OidcFlowError::Unreachable(e.to_string()))?;
                let field = |name: &'static str| {
                    doc.get(name)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or(OidcFlowError::Missing(name))
                };
                Ok(Endpoints {
                    authorization: field("authorization_endpoint")?,
                    token: field("token_endpoint")?,
                })
            })
            .await
    }

    /// Where to send the browser, and what to keep until it comes back with `state`.
    pub async fn start(&self, state: &str) -> Result<(String, PendingLogin), OidcFlowError> {
        let endpoints = self.endpoints().await?;
        let pending = PendingLogin {
            nonce: random(),
            code_verifier: random(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(digest::digest(
            &digest::SHA256,
            pending.code_verifier.as_bytes(),
        ));
        let mut url = reqwest::Url::parse(&endpoints.authorization)
            .map_err(|e| OidcFlowError::Refused(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if self.config.scopes.iter().any(|s| s == "offline_access") {
            // Providers issue refresh tokens for offline_access only with explicit consent.
            url.query_pairs_mut().append_pair("prompt", "consent");
        }
        Ok((url.to_string(), pending))
    }

    /// The code the provider sent back, exchanged for the signed-in identity.
    pub async fn finish(
        &self,
        code: &str,
        pending: &PendingLogin,
    ) -> Result<SignedIn, OidcFlowError> {
        let response = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &pending.code_verifier),
            ])
            .await?;
        self.signed_in(response, Some(&pending.nonce)).await
    }

    /// The owner's identity now, by the refresh token given at sign-in.
    pub async fn refresh(&self, refresh_token: &str) -> Result<SignedIn, OidcFlowError> {
        let response = self
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .await?;
        self.signed_in(response, None).await
    }

    async fn signed_in(
        &self,
        response: TokenResponse,
        nonce: Option<&str>,
    ) -> Result<SignedIn, OidcFlowError> {
        let id_token = response
            .id_token
            .ok_or(OidcFlowError::Missing("id_token"))?;
        let identity = self
            .verifier
            .verify_id_token(
                &id_token,
                &self.config.issuer,
                &self.config.client_id,
                nonce,
            )
            .await?;
        Ok(SignedIn {
            identity,
            method: "oidc",
            issuer: self.config.issuer.clone(),
            refresh_token: response.refresh_token,
        })
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, OidcFlowError> {
        let endpoints = self.endpoints().await?;
        let mut request = self.verifier.http().post(&endpoints.token);
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        match &self.client_secret {
            Some(secret) => request = request.basic_auth(&self.config.client_id, Some(secret)),
            None => fields.push(("client_id", &self.config.client_id)),
        }
        let response = request
            .form(&fields)
            .send()
            .await
            .map_err(|e| OidcFlowError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            // OAuth's error code (invalid_grant, ...) tells an operator enough; the body's
            // description can quote the request.
            let code = response
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| status.to_string());
            return Err(OidcFlowError::Refused(code));
        }
        response
            .json()
            .await
            .map_err(|e| OidcFlowError::Refused(format!("unreadable token response: {e}")))
    }
}
