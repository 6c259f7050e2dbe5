//! Browser sign-in (`/login`) and the personal access token pages, on their own HTTPS
//! listener with the gateway's certificate.
//!
//! A user signs in with the company's identity provider (OpenID Connect or SAML), gets a
//! short browser session (an HttpOnly cookie, 15 minutes), and on `/tokens` creates, lists and
//! revokes their personal access tokens. Every form carries the session's CSRF token; every
//! page is `no-store` (a new token is shown once).
pub mod oidc;
pub mod pages;
pub mod saml;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use moka::future::Cache;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::StartupError;
use crate::oidc::OidcVerifier;
use crate::tokens::{AccessTokens, SignedIn};
use oidc::{OidcClient, PendingLogin};
use saml::SamlSp;

const SESSION_COOKIE: &str = "lakegate_session";
const LOGIN_COOKIE: &str = "lakegate_login";
const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);

/// A signed-in browser.
#[derive(Clone)]
struct Session {
    who: SignedIn,
    csrf: String,
}

pub struct Sso {
    tokens: Arc<AccessTokens>,
    oidc: Option<Arc<OidcClient>>,
    saml: Option<Arc<SamlSp>>,
    /// Sign-ins under way, by `state` (OIDC) or request ID (SAML); each is used once.
    pending: Cache<String, Arc<PendingLogin>>,
    sessions: Cache<String, Session>,
}

/// Why the token store or the sign-in listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting of the configuration file is wrong.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// The sign-in listener, bound, with what it serves.
pub struct SignIn {
    sso: Arc<Sso>,
    listener: TcpListener,
    tls: TlsAcceptor,
    pub local: std::net::SocketAddr,
}

impl SignIn {
    pub async fn serve(self) {
        self.sso.serve(self.listener, self.tls).await
    }
}

/// The personal access tokens (with `access_tokens`) and the sign-in listener (with `sso`),
/// bound to its address. Redirect URLs default to the bound address, so `listen: ...:0` works.
pub async fn start(
    config: &Config,
    verifier: Arc<OidcVerifier>,
) -> Result<(Option<Arc<AccessTokens>>, Option<SignIn>), StartError> {
    check_config(config).map_err(StartError::Config)?;
    let bound = match &config.sso {
        Some(sso) => {
            let listen_error = |source| StartupError::Listen {
                addr: sso.listen.clone(),
                source,
            };
            let listener = TcpListener::bind(&sso.listen).await.map_err(listen_error)?;
            let local = listener.local_addr().map_err(listen_error)?;
            let public_url = sso
                .public_url
                .as_deref()
                .map(|url| url.trim_end_matches('/').to_string())
                .unwrap_or_else(|| format!("https://{local}"));
            Some((sso, listener, local, public_url))
        }
        None => None,
    };
    let oidc = match &bound {
        Some((sso, _, _, url)) => match &sso.oidc {
            Some(oidc) => Some(Arc::new(
                OidcClient::new(oidc, format!("{url}/login/oidc/callback"), verifier)
                    .map_err(StartError::Config)?,
            )),
            None => None,
        },
        None => None,
    };
    let tokens = match &config.access_tokens {
        Some(tokens) => Some(Arc::new(
            AccessTokens::open(tokens, oidc.clone())
                .await
                .map_err(StartError::Config)?,
        )),
        None => None,
    };
    let (Some((sso, listener, local, url)), Some(tokens)) = (bound, tokens.clone()) else {
        // check_config made sure sso comes with access_tokens
        return Ok((tokens, None));
    };
    let saml = match &sso.saml {
        Some(saml) => Some(Arc::new(
            SamlSp::new(saml, &url).map_err(StartError::Config)?,
        )),
        None => None,
    };
    Ok((
        Some(tokens.clone()),
        Some(SignIn {
            sso: Arc::new(Sso::new(tokens, oidc, saml)),
            listener,
            tls: crate::tls::https_acceptor(&config.tls)?,
            local,
        }),
    ))
}

/// The `access_tokens` and `sso` sections make sense together, so `lakegate check` reports a
/// mistake before a deployment does. (The client secret's variable is checked at serve time:
/// it is often set only where the gateway runs.)
pub fn check_config(config: &crate::config::Config) -> Result<(), String> {
    if let Some(tokens) = &config.access_tokens {
        if tokens.file.is_some() == tokens.postgres.is_some() {
            return Err("access_tokens: name exactly one of `file` and `postgres`".into());
        }
        if tokens.max_days == 0 {
            return Err("access_tokens.max_days must be at least 1".into());
        }
    }
    let Some(sso) = &config.sso else {
        return Ok(());
    };
    if config.access_tokens.is_none() {
        return Err(
            "sso needs access_tokens: sign-in is where personal access tokens are made".into(),
        );
    }
    if sso.oidc.is_none() && sso.saml.is_none() {
        return Err("sso: configure `oidc`, `saml` or both".into());
    }
    if let Some(url) = &sso.public_url
        && !url.starts_with("https://")
    {
        return Err(format!(
            "sso.public_url {url:?} must be https (the session cookie is Secure)"
        ));
    }
    if let Some(oidc) = &sso.oidc
        && !config.oidc.iter().any(|i| i.issuer == oidc.issuer)
    {
        return Err(format!(
            "sso.oidc.issuer {:?} must be one of the `oidc` issuers",
            oidc.issuer
        ));
    }
    if let Some(saml) = &sso.saml {
        SamlSp::new(saml, "https://check")?;
    }
    Ok(())
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn same(a: &str, b: &str) -> bool {
    #[allow(deprecated)] // ring keeps this as its constant-time comparison
    let same = ring::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok();
    same
}

/// Every answer of this listener: not cached, not framed, no scripts.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn set_cookie(name: &str, value: &str, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
        max_age.as_secs()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn store_unavailable(error: &crate::tokens::StoreError) -> Response {
    tracing::warn!(%error, "token store unavailable");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "The token store is unavailable. Try again in a minute.",
    )
}

/// A page saying what went wrong, in words a user can act on.
fn problem(status: StatusCode, text: &str) -> Response {
    (status, pages::problem(text)).into_response()
}

impl Sso {
    pub fn new(
        tokens: Arc<AccessTokens>,
        oidc: Option<Arc<OidcClient>>,
        saml: Option<Arc<SamlSp>>,
    ) -> Sso {
        Sso {
            tokens,
            oidc,
            saml,
            pending: Cache::builder()
                .time_to_live(LOGIN_TTL)
                .max_capacity(100_000)
                .build(),
            sessions: Cache::builder()
                .time_to_live(SESSION_TTL)
                .max_capacity(100_000)
                .build(),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/login") }))
            .route("/login", get(login_page))
            .route("/login/oidc", get(oidc_start))
            .route("/login/oidc/callback", get(oidc_callback))
            .route("/login/saml", get(saml_start))
            .route("/login/saml/acs", post(saml_acs))
            .route("/tokens", get(tokens_page).post(create_token))
            .route("/tokens/revoke", post(revoke_token))
            .route("/logout", post(logout))
            .layer(axum::middleware::map_response(secure_headers))
            .with_state(self)
    }

    /// Serves HTTPS on `listener` until the process ends; one bad connection affects no other.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: TlsAcceptor) {
        let router = self.router();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "sign-in listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tls = tls.clone();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "sign-in listener: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                if let Err(error) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, %error, "sign-in listener: connection ended");
                }
            });
        }
    }

    /// The session a form was posted in, if its CSRF token is the session's; else where to go.
    async fn form_session(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Response> {
        let Some((_, session)) = self.session(headers).await else {
            return Err(Redirect::to("/login").into_response());
        };
        if !same(csrf, &session.csrf) {
            return Err(problem(
                StatusCode::FORBIDDEN,
                "This form is stale. Reload the page.",
            ));
        }
        Ok(session)
    }

    async fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let sid = cookie(headers, SESSION_COOKIE)?;
        let session = self.sessions.get(&sid).await?;
        Some((sid, session))
    }

    /// A sign-in succeeded: the user's tokens from this provider get the fresh groups, and the
    /// browser a session.
    async fn signed_in(&self, who: SignedIn) -> Response {
        match self.tokens.renew_snapshots(&who).await {
            Ok(renewed) => {
                tracing::info!(user = %who.identity.name, method = who.method, groups = ?who.identity.groups, renewed, "signed in")
            }
            Err(error) => {
                tracing::warn!(%error, "sign-in: token store unavailable");
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The token store is unavailable. Try again in a minute.",
                );
            }
        }
        let sid = random();
        self.sessions
            .insert(
                sid.clone(),
                Session {
                    who,
                    csrf: random(),
                },
            )
            .await;
        let mut response = Redirect::to("/tokens").into_response();
        let headers = response.headers_mut();
        headers.append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, &sid, SESSION_TTL),
        );
        headers.append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
        response
    }
}

async fn login_page(State(sso): State<Arc<Sso>>) -> Response {
    pages::login(sso.oidc.is_some(), sso.saml.is_some()).into_response()
}

async fn oidc_start(State(sso): State<Arc<Sso>>) -> Response {
    let Some(client) = &sso.oidc else {
        return problem(
            StatusCode::NOT_FOUND,
            "OpenID Connect sign-in is not configured.",
        );
    };
    let state = random();
    match client.start(&state).await {
        Ok((url, pending)) => {
            sso.pending.insert(state.clone(), Arc::new(pending)).await;
            let mut response = Redirect::to(&url).into_response();
            // Binds the answer to this browser: a callback with a state it did not start fails.
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, &state, LOGIN_TTL),
            );
            response
        }
        Err(error) => {
            tracing::warn!(%error, "sign-in: cannot start the OpenID Connect flow");
            problem(
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached. Try again in a minute.",
            )
        }
    }
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn oidc_callback(
    State(sso): State<Arc<Sso>>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    let Some(client) = &sso.oidc else {
        return problem(
            StatusCode::NOT_FOUND,
            "OpenID Connect sign-in is not configured.",
        );
    };
    if let Some(error) = callback.error {
        tracing::info!(%error, "sign-in: the identity provider returned an error");
        return problem(
            StatusCode::FORBIDDEN,
            "The identity provider did not sign you in. Start again at /login.",
        );
    }
    let (Some(code), Some(state)) = (callback.code, callback.state) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in link is incomplete. Start again at /login.",
        );
    };
    let bound = cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same(&c, &state));
    // Removed before it is checked: a state is good for one try.
    let pending = sso.pending.remove(&state).await;
    let Some(pending) = pending.filter(|_| bound) else {
        tracing::info!("sign-in: unknown, reused or foreign state");
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in expired or was started in another browser. Start again at /login.",
        );
    };
    match client.finish(&code, &pending).await {
        Ok(who) => sso.signed_in(who).await,
        Err(error) => {
            tracing::info!(%error, "sign-in failed");
            problem(
                StatusCode::FORBIDDEN,
                "Sign-in failed. Start again at /login.",
            )
        }
    }
}

async fn saml_start(State(sso): State<Arc<Sso>>) -> Response {
    let Some(sp) = &sso.saml else {
        return problem(StatusCode::NOT_FOUND, "SAML sign-in is not configured.");
    };
    let (url, request_id) = sp.start();
    sso.pending
        .insert(
            request_id.clone(),
            Arc::new(PendingLogin {
                nonce: request_id.clone(),
                code_verifier: String::new(),
            }),
        )
        .await;
    let mut response = Redirect::to(&url).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &request_id, LOGIN_TTL),
    );
    response
}

#[derive(Deserialize)]
struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    saml_response: String,
}

async fn saml_acs(
    State(sso): State<Arc<Sso>>,
    headers: HeaderMap,
    Form(form): Form<AcsForm>,
) -> Response {
    let Some(sp) = &sso.saml else {
        return problem(StatusCode::NOT_FOUND, "SAML sign-in is not configured.");
    };
    let assertion = match sp.verify(&form.saml_response) {
        Ok(assertion) => assertion,
        Err(error) => {
            tracing::info!(%error, "SAML sign-in refused");
            return problem(
                StatusCode::FORBIDDEN,
                "Sign-in failed. Start again at /login.",
            );
        }
    };
    // The response must answer a request this browser started (no unsolicited responses), and
    // each assertion is accepted once.
    let bound = cookie(&headers, LOGIN_COOKIE).is_some_and(|c| {
        assertion
            .in_response_to
            .as_deref()
            .is_some_and(|r| same(&c, r))
    });
    let pending = match &assertion.in_response_to {
        Some(request) => sso.pending.remove(request).await,
        None => None,
    };
    if pending.is_none() || !bound {
        tracing::info!(user = %assertion.who.identity.name, "SAML sign-in refused: no matching request from this browser");
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in expired or was started in another browser. Start again at /login.",
        );
    }
    if !sp.first_use(&assertion.id, assertion.not_on_or_after).await {
        tracing::info!(user = %assertion.who.identity.name, "SAML sign-in refused: assertion replayed");
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in was already used. Start again at /login.",
        );
    }
    sso.signed_in(assertion.who).await
}

async fn tokens_page(State(sso): State<Arc<Sso>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = sso.session(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    match sso.tokens.list(Some(&session.who.identity.name)).await {
        Ok(tokens) => pages::tokens(
            &session.who,
            &session.csrf,
            &tokens,
            None,
            sso.tokens.max_days(),
        )
        .into_response(),
        Err(error) => store_unavailable(&error),
    }
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    name: String,
    days: Option<u32>,
}

async fn create_token(
    State(sso): State<Arc<Sso>>,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    let session = match sso.form_session(&headers, &form.csrf).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let name = form.name.trim();
    if name.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "Give the token a name, e.g. the report it is for.",
        );
    }
    let days = form.days.unwrap_or(sso.tokens.max_days());
    let created = sso.tokens.mint(&session.who, name, days).await;
    let listed = sso.tokens.list(Some(&session.who.identity.name)).await;
    match (created, listed) {
        (Ok((token, _)), Ok(tokens)) => pages::tokens(
            &session.who,
            &session.csrf,
            &tokens,
            Some(&token),
            sso.tokens.max_days(),
        )
        .into_response(),
        (Err(error), _) | (_, Err(error)) => store_unavailable(&error),
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    csrf: String,
    id: String,
}

async fn revoke_token(
    State(sso): State<Arc<Sso>>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Response {
    let session = match sso.form_session(&headers, &form.csrf).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    // Only the owner's own tokens: another user's id revokes nothing.
    match sso
        .tokens
        .revoke(&form.id, Some(&session.who.identity.name))
        .await
    {
        Ok(true) => Redirect::to("/tokens").into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, "You have no token with that id."),
        Err(error) => store_unavailable(&error),
    }
}

async fn logout(State(sso): State<Arc<Sso>>, headers: HeaderMap) -> Response {
    if let Some((sid, _)) = sso.session(&headers).await {
        sso.sessions.invalidate(&sid).await;
    }
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE));
    response
}
