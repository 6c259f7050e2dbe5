//! The gateway's configuration file (YAML). Every field has a documented default; relative
//! paths are resolved against the configuration file's folder.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::StartupError;

/// The port Lakegate listens on by default: clear of PostgreSQL (5432) and PgBouncer (6432).
pub const DEFAULT_PORT: u16 = 7432;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:7432`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The PostgreSQL database name clients connect to (`dbname=`). Default `lake`.
    #[serde(default = "default_database")]
    pub database: String,
    /// The schema unqualified table names resolve in. Default: the first catalog database.
    #[serde(default)]
    pub default_schema: Option<String>,
    #[serde(default)]
    pub tls: TlsConfig,
    /// The local catalog file (Glue's model). Default: none; then `glue` must name databases.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Databases read from the AWS Glue Data Catalog (needs `aws`). Default: none.
    #[serde(default)]
    pub glue: Option<GlueConfig>,
    /// Policy files: a folder of `*.yaml` files (read in name order) or one file. Required.
    pub policy: PathBuf,
    /// Local users (service users and the quickstart's demo users).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// OpenID Connect issuers whose tokens are accepted as passwords (over TLS only) by users
    /// that are not local users. Default: none.
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// How token users present their token: `password` (the token as the password; every
    /// PostgreSQL client can) or `oauthbearer` (SASL OAUTHBEARER, PostgreSQL 18's OAuth: libpq 18
    /// clients discover the first issuer and run its device flow). Default `password`.
    #[serde(default)]
    pub token_login: TokenLogin,
    /// AWS: where tables in S3 are read from and which IAM role each user's reads run as.
    /// Default: none (tables in S3 cannot be read; `lakegate check` says so).
    #[serde(default)]
    pub aws: Option<AwsConfig>,
    /// Amazon Athena as an engine (needs `aws`); `routes` decide which queries it runs.
    /// Default: none.
    #[serde(default)]
    pub athena: Option<AthenaConfig>,
    /// Which engine runs a query, by the databases and tables it reads and the user's personas:
    /// the first route matching every table of a query decides. Default: none (every query runs
    /// on the local engine, DataFusion in the gateway).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Personal access tokens: what browser sign-in (`sso`) mints for BI tools that cannot hold
    /// an hour-long IdP token. Default: none (no personal access tokens).
    #[serde(default)]
    pub access_tokens: Option<AccessTokensConfig>,
    /// Browser sign-in at `/login` (OpenID Connect code flow with PKCE, SAML 2.0), where users
    /// get personal access tokens (needs `access_tokens`). Default: none.
    #[serde(default)]
    pub sso: Option<SsoConfig>,
    /// Memory for kept query plans, all users together, in megabytes (estimated), so a query
    /// sent again is not planned again (see README, "Repeated queries"). 0 turns the cache
    /// off. Default 256.
    #[serde(default = "default_plan_cache_megabytes")]
    pub plan_cache_megabytes: u64,
    /// How long a table's file listing is used again before its location is listed anew
    /// (see README, "Tables from the Glue Data Catalog"). 0, the default, lists on every
    /// query: files added or removed are seen at once.
    #[serde(default)]
    pub file_listing_seconds: u64,
    /// Memory for tables in local folders kept decoded, all users together, in megabytes
    /// (see README, "How a query is served"). A table is kept when it takes at most an eighth
    /// of it. 0 reads every table from its files on every query. Default 128.
    #[serde(default = "default_small_table_cache_megabytes")]
    pub small_table_cache_megabytes: u64,
}

/// Where personal access tokens are kept and how long they live (see README, "Personal access
/// tokens").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessTokensConfig {
    /// A JSON file (one gateway host; relative to this file) holding the tokens' hashes.
    /// Exactly one of `file` and `postgres`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A PostgreSQL connection string (`host=... user=... dbname=...`); safe for several
    /// gateways at once. The table `lakegate_access_tokens` is created when missing.
    #[serde(default)]
    pub postgres: Option<String>,
    /// How long a new token is valid, in days (a user may ask for less). Default 90.
    #[serde(default = "default_token_days")]
    pub max_days: u32,
    /// How old a token's copy of the owner's groups may be before a login re-checks it with
    /// the identity provider, in seconds. Default 3600.
    #[serde(default = "default_recheck")]
    pub recheck_seconds: u64,
}

fn default_token_days() -> u32 {
    90
}
fn default_recheck() -> u64 {
    3600
}

/// The browser sign-in endpoint (see README, "Browser sign-in").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// Address of the HTTPS listener (the gateway's TLS certificate). Default `127.0.0.1:7443`.
    #[serde(default = "default_sso_listen")]
    pub listen: String,
    /// The address users' browsers reach the listener at, used in redirect URLs
    /// (`<public_url>/login/oidc/callback`, `<public_url>/login/saml/acs`).
    /// Default `https://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub oidc: Option<SsoOidcConfig>,
    #[serde(default)]
    pub saml: Option<SamlConfig>,
}

fn default_sso_listen() -> String {
    "127.0.0.1:7443".to_string()
}

/// Sign-in with an OpenID provider: the authorization-code flow with PKCE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoOidcConfig {
    /// One of the `oidc` issuers; its claim mapping, algorithms and clock skew apply.
    pub issuer: String,
    /// The gateway's client at the provider; ID tokens must be issued for it (`aud`).
    pub client_id: String,
    /// The environment variable holding the client's secret (never the secret itself).
    /// Default: none (a public client; PKCE alone).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Scopes asked for. `offline_access` gives a refresh token, with which the owner's groups
    /// are re-checked. Default `[openid, profile, email, groups, offline_access]`.
    #[serde(default = "default_sso_scopes")]
    pub scopes: Vec<String>,
}

fn default_sso_scopes() -> Vec<String> {
    ["openid", "profile", "email", "groups", "offline_access"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Sign-in with a SAML 2.0 identity provider (HTTP-POST binding, signed assertions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamlConfig {
    /// The IdP's single sign-on URL (HTTP-Redirect binding).
    pub idp_sso_url: String,
    /// The IdP's entity ID, as assertions carry it in `Issuer`.
    pub idp_entity_id: String,
    /// The IdP's signing certificate (PEM file, relative to this file).
    pub idp_certificate: PathBuf,
    /// This gateway's entity ID (the audience assertions must name). Default `<public_url>`.
    #[serde(default)]
    pub entity_id: Option<String>,
    /// The attribute holding the user name. Default: the NameID.
    #[serde(default)]
    pub username_attribute: Option<String>,
    /// The attribute holding the groups. Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_attribute: String,
    /// Attributes copied into the user's attributes. Default: none.
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Clock skew allowed on NotBefore/NotOnOrAfter, in seconds. Default 60.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
}

/// How queries routed to Athena run (see README, "Queries on Athena").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AthenaConfig {
    /// The Athena workgroup. Default `primary`.
    #[serde(default = "default_workgroup")]
    pub workgroup: String,
    /// Where Athena writes results (`s3://bucket/prefix/`); the user's role must be allowed to
    /// write and read there. Default: the workgroup's own output location.
    #[serde(default)]
    pub output_location: Option<String>,
    /// The data catalog Athena resolves `database.table` in. Default `AwsDataCatalog`.
    #[serde(default = "default_athena_catalog")]
    pub catalog: String,
    /// A query running longer than this (seconds) reports its state to the client as NOTICE
    /// messages, at most once per poll. Default 3.
    #[serde(default = "default_notice_after")]
    pub notice_after_seconds: u64,
    /// The longest wait between two status polls, in milliseconds (polls start at 100 ms and
    /// double). Default 2000.
    #[serde(default = "default_max_poll")]
    pub max_poll_interval_ms: u64,
}

fn default_workgroup() -> String {
    "primary".to_string()
}
fn default_athena_catalog() -> String {
    "AwsDataCatalog".to_string()
}
fn default_notice_after() -> u64 {
    3
}
fn default_max_poll() -> u64 {
    2000
}

/// One routing rule. A query goes to `engine` when every table it reads matches `database`
/// and `table`, and the user holds `persona` (if given).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Catalog database (schema) name, or `*`. Default `*`.
    #[serde(default = "default_any")]
    pub database: String,
    /// Table name glob within the database (`*`, `visits_*`). Default `*`.
    #[serde(default = "default_any")]
    pub table: String,
    /// Only for users holding this persona. Default: every user.
    #[serde(default)]
    pub persona: Option<String>,
    /// `athena` or `local`.
    pub engine: Engine,
}

/// Where a query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// DataFusion in the gateway, reading local files or S3 with the user's role.
    Local,
    /// Amazon Athena, with the user's role.
    Athena,
}

/// How the gateway reaches AWS on a user's behalf (see README, "Tables in S3 and per-user AWS
/// sessions"). The gateway's own credentials come from the standard AWS chain (environment,
/// web identity, ECS/EC2 metadata); each user's reads run with the role of their persona,
/// assumed with the user as `SourceIdentity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region of STS and the buckets. Default: the environment's (`AWS_REGION`), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// One endpoint for every AWS service (a VPC endpoint, or a local AWS emulator in tests).
    /// Default: AWS's public endpoints. http is accepted for 127.0.0.1/localhost only.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Persona roles: the first entry whose database and persona match a user decides the role
    /// that user's reads of that database run as. No match: no reads from AWS.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// Lifetime asked for each assumed-role session, in seconds (STS allows 900 to the role's
    /// maximum). Default 3600.
    #[serde(default = "default_session_duration")]
    pub session_duration_seconds: u32,
    /// Credentials are replaced this long before they expire, in seconds. Default 600.
    #[serde(default = "default_refresh_before")]
    pub refresh_before_expiry_seconds: u64,
    /// The identity attribute sent as STS `SourceIdentity` (e.g. `email` from a token's
    /// claims). Default: the user name. Either is reduced to STS's characters and 64 bytes.
    #[serde(default)]
    pub source_identity_attribute: Option<String>,
    /// Session tags: tag key → identity attribute whose value it carries (at most 50). A user
    /// without the attribute gets no such tag.
    #[serde(default)]
    pub session_tags: BTreeMap<String, String>,
}

/// The Glue Data Catalog as a source of databases (see README, "Tables from the Glue Data
/// Catalog"). Metadata is read with the gateway's own credentials; data with each user's role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueConfig {
    /// The Glue databases served, each as a schema of the same name. Required.
    pub databases: Vec<String>,
    /// The catalog (account id) to read. Default: the account of the gateway's credentials.
    #[serde(default)]
    pub catalog_id: Option<String>,
    /// How often the databases are read again, in seconds; sessions started later see the new
    /// tables. 0: only at start. Default 300.
    #[serde(default = "default_glue_refresh")]
    pub refresh_seconds: u64,
}

fn default_glue_refresh() -> u64 {
    300
}

/// One persona's IAM role in one database (data domain).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The catalog database (data domain) this role reads. Default `*`: every database.
    #[serde(default = "default_any")]
    pub database: String,
    /// A persona of the policy files.
    pub persona: String,
    /// The role assumed for users holding the persona.
    pub role_arn: String,
    /// Assume the role with the user's own company token (`AssumeRoleWithWebIdentity`; the
    /// role trusts the token issuer) instead of the gateway's credentials. Only users who
    /// logged in with a token can read with such a role. Default `false`.
    #[serde(default)]
    pub web_identity: bool,
}

fn default_session_duration() -> u32 {
    3600
}
fn default_refresh_before() -> u64 {
    600
}
fn default_any() -> String {
    "*".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenLogin {
    #[default]
    Password,
    Oauthbearer,
}

/// One trusted token issuer (see README, "Log in with a company token").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The issuer URL, exactly as tokens carry it in `iss`. Discovery is read from
    /// `<issuer>/.well-known/openid-configuration`. https, or http on 127.0.0.1/localhost only.
    pub issuer: String,
    /// The audience tokens must be issued for (`aud`).
    pub audience: String,
    /// The claim holding the user name, which must equal the name the client logs in with.
    /// Default `preferred_username`.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim holding the user's groups (an array of strings, or one string). Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claims copied into the user's attributes, usable in row filters as `${user.<claim>}`.
    #[serde(default)]
    pub attribute_claims: Vec<String>,
    /// Signature algorithms accepted. Default `[RS256]`. Only asymmetric ones (RS*, PS*, ES*,
    /// EdDSA) can be configured: a shared secret cannot be published in a JWKS.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 60.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// A token signed with a key the gateway does not know makes it fetch the issuer's keys
    /// again, at most once in this many seconds. Default 30.
    #[serde(default = "default_key_refresh")]
    pub key_refresh_seconds: u64,
    /// The scope OAUTHBEARER clients are told to request. Default `openid`.
    #[serde(default = "default_scope")]
    pub scope: String,
}

fn default_username_claim() -> String {
    "preferred_username".to_string()
}
fn default_groups_claim() -> String {
    "groups".to_string()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_string()]
}
fn default_clock_skew() -> u64 {
    60
}
fn default_key_refresh() -> u64 {
    30
}
fn default_scope() -> String {
    "openid".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Default `certs/server.crt`.
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    /// PEM private key. Default `certs/server.key`.
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// Generate a self-signed certificate for localhost when cert and key are missing.
    /// Default `false`: production configurations name real files.
    #[serde(default)]
    pub generate_self_signed: bool,
    /// Accept clients without TLS. Default `false`: passwords never cross the wire in clear.
    #[serde(default)]
    pub allow_plaintext: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: default_cert(),
            key: default_key(),
            generate_self_signed: false,
            allow_plaintext: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// SCRAM secret as printed by `lakegate passwd` (never a plain password).
    pub scram: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Values row filters may use as `${user.<key>}`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

fn default_listen() -> String {
    format!("127.0.0.1:{DEFAULT_PORT}")
}
fn default_plan_cache_megabytes() -> u64 {
    crate::plan_cache::DEFAULT_MEGABYTES
}
fn default_small_table_cache_megabytes() -> u64 {
    lakegate_catalog::DEFAULT_SMALL_TABLE_MEGABYTES
}
fn default_database() -> String {
    "lake".to_string()
}
fn default_cert() -> PathBuf {
    PathBuf::from("certs/server.crt")
}
fn default_key() -> PathBuf {
    PathBuf::from("certs/server.key")
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, StartupError> {
        let text = std::fs::read_to_string(path).map_err(|e| StartupError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut config: Config =
            serde_saphyr::from_str(&text).map_err(|e| StartupError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            config.catalog.as_mut(),
            Some(&mut config.policy),
            Some(&mut config.tls.cert),
            Some(&mut config.tls.key),
            config.access_tokens.as_mut().and_then(|t| t.file.as_mut()),
            config
                .sso
                .as_mut()
                .and_then(|s| s.saml.as_mut())
                .map(|s| &mut s.idp_certificate),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}
