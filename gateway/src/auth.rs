//! Local users with SCRAM-SHA-256, verified against PostgreSQL's own verifier format
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in `pg_authid`), so the
//! configuration holds nothing a client could log in with.
//!
//! pgwire's SCRAM needs the SaltedPassword, which is login-equivalent; the server side of the
//! exchange is small and fully specified (RFC 5802, RFC 7677), so it is done here with ring's
//! HMAC, SHA-256 and constant-time comparison. Channel binding (SCRAM-SHA-256-PLUS) is not
//! offered yet.
//!
//! Users who are not local users log in with a company token when issuers are configured:
//! as the password, or through PostgreSQL 18's SASL OAUTHBEARER (pgwire's exchange); oidc.rs
//! checks the token either way.
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::scram::gen_salted_password;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager, PgWireConnectionState,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use ring::{digest, hmac};
use tokio::sync::Mutex;

use crate::config::{Config, TokenLogin};
use crate::oidc::OidcVerifier;
use crate::tokens::AccessTokens;
use lakegate_policy::Identity;
use pgwire::api::auth::sasl::oauth::{Oauth, OauthValidator, ValidatorModuleResult};
use pgwire::api::auth::sasl::{OAUTHBEARER_METHOD, SASLState};

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const ITERATIONS: u32 = 4096;

/// A PostgreSQL SCRAM-SHA-256 verifier.
#[derive(Clone)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

impl Verifier {
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let verifier = Verifier {
            iterations: iterations.parse().ok().filter(|i| *i >= 4096)?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        };
        (verifier.stored_key.len() == 32
            && verifier.server_key.len() == 32
            && !verifier.salt.is_empty())
        .then_some(verifier)
    }

    /// The verifier `lakegate passwd` prints (and PostgreSQL would store) for a password.
    pub fn for_password(password: &str) -> String {
        let salt: [u8; 16] = rand::random();
        let salted = gen_salted_password(password, &salt, ITERATIONS as usize);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let server_key = hmac_sha256(&salted, b"Server Key");
        format!(
            "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
            STANDARD.encode(salt),
            STANDARD.encode(stored_key.as_ref()),
            STANDARD.encode(server_key)
        )
    }
}

/// Checks every user's verifier at start-up so a typo fails loudly, not at login.
pub fn validate_users(config: &Config) -> Result<(), String> {
    for user in &config.users {
        if Verifier::parse(&user.scram).is_none() {
            return Err(format!(
                "user {}: scram is not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>, as printed by `lakegate passwd`)",
                user.name
            ));
        }
    }
    Ok(())
}

/// The users a gateway knows, and a secret for decoy verifiers.
pub struct LocalUsers {
    config: Arc<Config>,
    decoy_secret: [u8; 32],
    oidc: Arc<OidcVerifier>,
    tokens: Option<Arc<AccessTokens>>,
}

impl LocalUsers {
    pub fn new(
        config: Arc<Config>,
        oidc: Arc<OidcVerifier>,
        tokens: Option<Arc<AccessTokens>>,
    ) -> Self {
        LocalUsers {
            config,
            decoy_secret: rand::random(),
            oidc,
            tokens,
        }
    }

    /// Users who are not local users log in with a company token or a personal access token
    /// when either is configured.
    fn logs_in_with_token(&self, user: &str) -> bool {
        (self.oidc.is_enabled() || self.tokens.is_some()) && self.config.user(user).is_none()
    }

    /// The identity a token (a personal access token or a company JWT) proves for `user`, or
    /// why it proves nothing (for the log). Only a JWT is kept for `web_identity` roles.
    async fn token_login(
        &self,
        token: &str,
        user: &str,
    ) -> Result<(Identity, Option<LoginToken>), String> {
        if crate::tokens::looks_like_token(token) {
            return match &self.tokens {
                Some(tokens) => tokens
                    .login(token, user)
                    .await
                    .map(|identity| (identity, None))
                    .map_err(|e| e.to_string()),
                None => Err("personal access tokens are not enabled".into()),
            };
        }
        if !self.oidc.is_enabled() {
            return Err("no token issuers are configured".into());
        }
        self.oidc
            .verify(token, user)
            .await
            .map(|identity| (identity, Some(LoginToken(token.to_string()))))
            .map_err(|e| e.to_string())
    }

    /// The user's verifier; for an unknown user a decoy whose salt is stable per name, so
    /// the exchange looks the same and fails the same way as a wrong password.
    fn verifier(&self, user: &str) -> Verifier {
        if let Some(v) = self
            .config
            .user(user)
            .and_then(|u| Verifier::parse(&u.scram))
        {
            return v;
        }
        let salt = hmac_sha256(&self.decoy_secret, user.as_bytes());
        Verifier {
            iterations: ITERATIONS,
            salt: salt[..16].to_vec(),
            stored_key: hmac_sha256(&self.decoy_secret, b"stored"),
            server_key: hmac_sha256(&self.decoy_secret, b"server"),
        }
    }
}

/// The company token a user logged in with, kept for the connection so a role configured with
/// `web_identity` can be assumed with it. Never printed.
#[derive(Clone)]
pub struct LoginToken(pub String);

impl std::fmt::Debug for LoginToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginToken(..)")
    }
}

/// What an OAUTHBEARER exchange proved, handed from pgwire's validator back to the startup.
type Proven = Arc<std::sync::Mutex<Option<(Identity, Option<LoginToken>)>>>;

enum State {
    Initial,
    /// a cleartext password (the token) was asked for
    TokenRequested,
    /// SASL OAUTHBEARER (PostgreSQL 18 OAuth), run by pgwire's exchange with our validator
    OAuth {
        exchange: Oauth,
        sasl: SASLState,
        proven: Proven,
    },
    /// server-first sent; what the final step needs
    ServerFirstSent {
        verifier: Verifier,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        gs2_header: String,
    },
    Done,
}

/// The startup phase of one connection, over TLS: SCRAM-SHA-256 for local users, a company
/// token for others.
pub struct ScramStartup {
    users: Arc<LocalUsers>,
    parameters: Arc<DefaultServerParameterProvider>,
    connections: Arc<ConnectionManager>,
    pids: Arc<RandomPidSecretKeyGenerator>,
    allow_plaintext: bool,
    peer: Option<Arc<crate::peer::PeerWatch>>,
    state: Mutex<State>,
}

impl ScramStartup {
    pub fn new(
        users: Arc<LocalUsers>,
        parameters: Arc<DefaultServerParameterProvider>,
        connections: Arc<ConnectionManager>,
        pids: Arc<RandomPidSecretKeyGenerator>,
        allow_plaintext: bool,
        peer: Option<Arc<crate::peer::PeerWatch>>,
    ) -> Self {
        ScramStartup {
            users,
            parameters,
            connections,
            pids,
            allow_plaintext,
            peer,
            state: Mutex::new(State::Initial),
        }
    }
}

fn fatal(code: &str, message: &str, hint: Option<&str>) -> PgWireError {
    let mut info = ErrorInfo::new("FATAL".to_string(), code.to_string(), message.to_string());
    info.hint = hint.map(str::to_string);
    PgWireError::UserError(Box::new(info))
}

fn malformed(what: &str) -> PgWireError {
    fatal("08P01", &format!("malformed SCRAM message: {what}"), None)
}

fn attribute(message: &str, key: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Splits `gs2-header` from `client-first-message-bare` (RFC 5802 §7).
fn split_client_first(message: &str) -> PgWireResult<(String, String)> {
    let mut parts = message.splitn(3, ',');
    let cbind = parts.next().ok_or_else(|| malformed("empty"))?;
    let authzid = parts.next().ok_or_else(|| malformed("no gs2 header"))?;
    let bare = parts
        .next()
        .ok_or_else(|| malformed("no client-first-bare"))?;
    match cbind {
        "n" | "y" => {}
        _ if cbind.starts_with("p=") => {
            return Err(fatal(
                "28000",
                "channel binding is not supported; use SCRAM-SHA-256",
                None,
            ));
        }
        _ => return Err(malformed("bad channel binding flag")),
    }
    if !authzid.is_empty() {
        return Err(fatal(
            "28000",
            "client uses authorization identity, but it is not supported",
            None,
        ));
    }
    Ok((format!("{cbind},{authzid},"), bare.to_string()))
}

/// PostgreSQL 18's answer to a failed OAUTHBEARER login.
fn oauth_failed(user: &str) -> PgWireError {
    fatal(
        "28000",
        &format!("OAuth bearer authentication failed for user \"{user}\""),
        None,
    )
}

/// pgwire's OAUTHBEARER exchange asks this whether a bearer token is good; the identity it
/// proves is kept for the connection.
struct TokenValidator {
    users: Arc<LocalUsers>,
    proven: Proven,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenValidator")
    }
}

#[async_trait]
impl OauthValidator for TokenValidator {
    async fn validate(
        &self,
        token: &str,
        username: &str,
        _issuer: &str,
        _required_scopes: &str,
    ) -> PgWireResult<ValidatorModuleResult> {
        let authorized = match self.users.token_login(token, username).await {
            Ok(proven) => {
                if let Ok(mut slot) = self.proven.lock() {
                    *slot = Some(proven);
                }
                true
            }
            Err(reason) => {
                tracing::info!(user = %username, %reason, "OAUTHBEARER token refused");
                false
            }
        };
        Ok(ValidatorModuleResult {
            authorized,
            authn_id: authorized.then(|| username.to_string()),
            metadata: None,
        })
    }
}

/// Like PostgreSQL, the database is checked once the user is authenticated.
fn check_database<C: ClientInfo>(client: &C, expected: &str) -> PgWireResult<()> {
    let database = client
        .metadata()
        .get(pgwire::api::METADATA_DATABASE)
        .cloned()
        .unwrap_or_default();
    if database != expected {
        return Err(fatal(
            "3D000",
            &format!("database \"{database}\" does not exist"),
            None,
        ));
    }
    Ok(())
}

impl ScramStartup {
    /// After a successful authentication: cancel key, connection registration, the watch on
    /// the peer, then AuthenticationOk and the server parameters.
    async fn complete_login<C>(&self, client: &mut C, user: &str) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        check_database(client, &self.users.config.database)?;
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard): (Arc<ConnectionHandle>, ConnectionGuard) =
            self.connections.register(pid, secret);
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        if let Some(peer) = &self.peer {
            client.session_extensions().insert(peer.clone());
        }
        finish_authentication(client, self.parameters.as_ref()).await?;
        tracing::info!(user = %user, "logged in");
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for ScramStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                if !self.allow_plaintext && !client.is_secure() {
                    return Err(fatal(
                        "28000",
                        "connection requires TLS",
                        Some("connect with sslmode=require"),
                    ));
                }
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let user = client
                    .metadata()
                    .get(pgwire::api::METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                if self.users.logs_in_with_token(&user) {
                    // The token arrives as the password: only ever inside TLS.
                    if !client.is_secure() {
                        tracing::info!(user = %user, "token login refused: connection is not encrypted");
                        return Err(fatal(
                            "28000",
                            "connection requires TLS",
                            Some("connect with sslmode=require"),
                        ));
                    }
                    if self.users.config.token_login == TokenLogin::Oauthbearer
                        && let Some((issuer, scope)) = self.users.oidc.discovery_issuer()
                    {
                        let proven = Arc::new(std::sync::Mutex::new(None));
                        let validator = Arc::new(TokenValidator {
                            users: self.users.clone(),
                            proven: proven.clone(),
                        });
                        *self.state.lock().await = State::OAuth {
                            exchange: Oauth::new(issuer.to_string(), scope.to_string(), validator),
                            sasl: SASLState::OauthStateInit,
                            proven,
                        };
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                                vec![OAUTHBEARER_METHOD.to_string()],
                            )))
                            .await?;
                        return Ok(());
                    }
                    *self.state.lock().await = State::TokenRequested;
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                    return Ok(());
                }
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![MECHANISM.to_string()],
                    )))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let user = client
                    .metadata()
                    .get(pgwire::api::METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let mut state = self.state.lock().await;
                match std::mem::replace(&mut *state, State::Done) {
                    State::OAuth {
                        exchange,
                        sasl,
                        proven,
                    } => match exchange.process_oauth_message(client, msg, &sasl).await {
                        Ok((Some(reply), next)) => {
                            // discovery: the error that starts the client's device flow
                            client
                                .send(PgWireBackendMessage::Authentication(reply))
                                .await?;
                            *state = State::OAuth {
                                exchange,
                                sasl: next,
                                proven,
                            };
                            Ok(())
                        }
                        Ok((None, _)) => {
                            let identity = proven.lock().ok().and_then(|mut p| p.take());
                            let Some((identity, token)) = identity else {
                                return Err(oauth_failed(&user));
                            };
                            drop(state);
                            client.session_extensions().insert(identity);
                            if let Some(token) = token {
                                client.session_extensions().insert(token);
                            }
                            self.complete_login(client, &user).await
                        }
                        Err(PgWireError::OAuthAuthenticationFailed(reason)) => {
                            tracing::info!(user = %user, %reason, "OAUTHBEARER login failed");
                            Err(oauth_failed(&user))
                        }
                        Err(other) => Err(other),
                    },
                    State::TokenRequested => {
                        let token = msg.into_password()?.password;
                        match self.users.token_login(token.trim(), &user).await {
                            Ok((identity, login_token)) => {
                                tracing::info!(user = %user, groups = ?identity.groups, "token accepted");
                                client.session_extensions().insert(identity);
                                if let Some(login_token) = login_token {
                                    client.session_extensions().insert(login_token);
                                }
                            }
                            Err(reason) => {
                                // The reason is for operators; the client learns nothing.
                                tracing::info!(user = %user, %reason, "token login failed");
                                return Err(PgWireError::InvalidPassword(user));
                            }
                        }
                        self.complete_login(client, &user).await
                    }
                    State::Initial => {
                        let initial = msg.into_sasl_initial_response()?;
                        if initial.auth_method != MECHANISM {
                            return Err(fatal(
                                "28000",
                                "unsupported SASL mechanism; use SCRAM-SHA-256",
                                None,
                            ));
                        }
                        let data = initial
                            .data
                            .ok_or_else(|| malformed("empty client-first"))?;
                        let text =
                            std::str::from_utf8(&data).map_err(|_| malformed("not UTF-8"))?;
                        let (gs2_header, client_first_bare) = split_client_first(text)?;
                        let client_nonce = attribute(&client_first_bare, 'r')
                            .ok_or_else(|| malformed("no nonce"))?;
                        let server_nonce: [u8; 18] = rand::random();
                        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
                        let verifier = self.users.verifier(&user);
                        let server_first = format!(
                            "r={nonce},s={},i={}",
                            STANDARD.encode(&verifier.salt),
                            verifier.iterations
                        );
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(
                                    server_first.clone().into_bytes().into(),
                                ),
                            ))
                            .await?;
                        *state = State::ServerFirstSent {
                            verifier,
                            client_first_bare,
                            server_first,
                            nonce,
                            gs2_header,
                        };
                        Ok(())
                    }
                    State::ServerFirstSent {
                        verifier,
                        client_first_bare,
                        server_first,
                        nonce,
                        gs2_header,
                    } => {
                        let response = msg.into_sasl_response()?;
                        let text = std::str::from_utf8(&response.data)
                            .map_err(|_| malformed("not UTF-8"))?;
                        let (without_proof, proof) = text
                            .rsplit_once(",p=")
                            .ok_or_else(|| malformed("no proof"))?;
                        if attribute(without_proof, 'c')
                            != Some(STANDARD.encode(&gs2_header).as_str())
                        {
                            return Err(malformed("channel binding mismatch"));
                        }
                        if attribute(without_proof, 'r') != Some(nonce.as_str()) {
                            return Err(malformed("nonce mismatch"));
                        }
                        let proof = STANDARD
                            .decode(proof)
                            .map_err(|_| malformed("proof is not base64"))?;
                        let auth_message =
                            format!("{client_first_bare},{server_first},{without_proof}");
                        let signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
                        let valid = proof.len() == signature.len() && {
                            let client_key: Vec<u8> =
                                proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
                            let stored = digest::digest(&digest::SHA256, &client_key);
                            #[allow(deprecated)] // ring keeps this as its constant-time comparison
                            let same = ring::constant_time::verify_slices_are_equal(
                                stored.as_ref(),
                                &verifier.stored_key,
                            )
                            .is_ok();
                            same
                        };
                        if !valid {
                            tracing::info!(user = %user, "password authentication failed");
                            return Err(PgWireError::InvalidPassword(user));
                        }
                        let server_signature =
                            hmac_sha256(&verifier.server_key, auth_message.as_bytes());
                        let server_final = format!("v={}", STANDARD.encode(server_signature));
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(server_final.into_bytes().into()),
                            ))
                            .await?;
                        self.complete_login(client, &user).await
                    }
                    State::Done => Err(malformed("unexpected message after authentication")),
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_are_postgres_format_and_hold_no_password() {
        let text = Verifier::for_password("alice");
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert!(!text.contains("alice"));
        let v = Verifier::parse(&text).expect("parses");
        // the stored key is H(HMAC(SaltedPassword, "Client Key")), as PostgreSQL computes it
        let salted = gen_salted_password("alice", &v.salt, 4096);
        let client_key = hmac_sha256(&salted, b"Client Key");
        assert_eq!(
            digest::digest(&digest::SHA256, &client_key).as_ref(),
            v.stored_key.as_slice()
        );
        assert!(Verifier::parse("alice").is_none());
        assert!(Verifier::parse("SCRAM-SHA-256$10:AAAA$AAAA:AAAA").is_none());
    }

    #[test]
    fn client_first_headers() {
        assert_eq!(
            split_client_first("n,,n=,r=abc").expect("ok"),
            ("n,,".to_string(), "n=,r=abc".to_string())
        );
        assert!(split_client_first("p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(split_client_first("n,a=admin,n=,r=abc").is_err());
        assert!(split_client_first("garbage").is_err());
    }
}
