//! Assumed-role sessions per user: `sts:AssumeRole` on the persona's role with the user as
//! `SourceIdentity` (so CloudTrail ties every S3 and Athena action to a person), a session
//! name and tags from the user's attributes. Cached per (user, role, what was sent), replaced
//! well before they expire, one STS call in flight per key.
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_sdk_sts::operation::RequestId;
use aws_sdk_sts::types::Tag;
use lakegate_policy::Identity;
use moka::Expiry;
use moka::future::Cache;

use super::AwsError;
use crate::auth::LoginToken;
use crate::config::{AwsConfig, RoleConfig};

/// Temporary credentials of one assumed-role session.
#[derive(Clone)]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// When the cache lets go of them: well before they expire, never after the login.
    replace_at: Instant,
}

// The secret parts never reach a log line through Debug.
impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    role: String,
    web_identity: bool,
    /// Hash of SourceIdentity and tags: a user whose attributes changed gets a new session.
    request: u64,
}

struct ReplaceAt;

impl Expiry<Key, Arc<RoleCredentials>> for ReplaceAt {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<RoleCredentials>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.replace_at.saturating_duration_since(created_at))
    }
}

/// The STS client and the credentials cache, shared by every session of the gateway.
pub struct RoleSessions {
    sts: aws_sdk_sts::Client,
    cache: Cache<Key, Arc<RoleCredentials>>,
    duration: Duration,
    refresh_before: Duration,
    source_identity_attribute: Option<String>,
    session_tags: BTreeMap<String, String>,
}

impl std::fmt::Debug for RoleSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleSessions")
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// What is sent to STS for one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionRequest {
    pub session_name: String,
    pub source_identity: String,
    pub tags: Vec<(String, String)>,
}

impl RoleSessions {
    pub fn new(sts: aws_sdk_sts::Client, config: &AwsConfig) -> Self {
        RoleSessions {
            sts,
            cache: Cache::builder()
                .max_capacity(100_000)
                .expire_after(ReplaceAt)
                .build(),
            duration: Duration::from_secs(config.session_duration_seconds.into()),
            refresh_before: Duration::from_secs(config.refresh_before_expiry_seconds),
            source_identity_attribute: config.source_identity_attribute.clone(),
            session_tags: config.session_tags.clone(),
        }
    }

    /// What the gateway tells STS about `identity`.
    pub fn request_for(&self, identity: &Identity) -> SessionRequest {
        let corporate = self
            .source_identity_attribute
            .as_ref()
            .and_then(|a| identity.attributes.get(a))
            .unwrap_or(&identity.name);
        let tags = self
            .session_tags
            .iter()
            .filter_map(|(key, attribute)| {
                let value = identity.attributes.get(attribute)?;
                let value: String = tag_text(value).chars().take(256).collect();
                Some((key.clone(), value))
            })
            .collect();
        SessionRequest {
            session_name: sts_name(&identity.name),
            source_identity: sts_name(corporate),
            tags,
        }
    }

    /// Credentials of `role` for `identity`, from the cache or from one STS call.
    pub async fn credentials(
        &self,
        identity: &Identity,
        role: &RoleConfig,
        token: Option<&LoginToken>,
    ) -> Result<Arc<RoleCredentials>, AwsError> {
        let login_left = match identity.expires_at {
            None => None,
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(left) if !left.is_zero() => Some(left),
                _ => return Err(AwsError::LoginExpired),
            },
        };
        let request = self.request_for(identity);
        let mut hasher = DefaultHasher::new();
        request.hash(&mut hasher);
        let key = Key {
            user: identity.name.clone(),
            role: role.role_arn.clone(),
            web_identity: role.web_identity,
            request: hasher.finish(),
        };
        let token = match (role.web_identity, token) {
            (false, _) => None,
            (true, Some(token)) => Some(token),
            (true, None) => {
                return Err(AwsError::NeedsToken {
                    role: role.role_arn.clone(),
                });
            }
        };
        let assume = self.assume(&identity.name, &role.role_arn, request, token, login_left);
        self.cache
            .try_get_with(key, assume)
            .await
            .map_err(|e| (*e).clone())
    }

    async fn assume(
        &self,
        user: &str,
        role: &str,
        request: SessionRequest,
        token: Option<&LoginToken>,
        login_left: Option<Duration>,
    ) -> Result<Arc<RoleCredentials>, AwsError> {
        // STS's shortest session is 15 minutes; a login ending sooner still ends the cache
        // entry at its own end (below).
        let duration = login_left
            .map_or(self.duration, |left| left.min(self.duration))
            .max(Duration::from_secs(900));
        let tags: Vec<Tag> = request
            .tags
            .iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        let started = Instant::now();
        let seconds = i32::try_from(duration.as_secs()).unwrap_or(3600);
        // With the user's own token, STS takes SourceIdentity and tags from the token's claims
        // (the issuer's mapping), not from the caller.
        let result = match token {
            Some(token) => self
                .sts
                .assume_role_with_web_identity()
                .role_arn(role)
                .role_session_name(&request.session_name)
                .web_identity_token(&token.0)
                .duration_seconds(seconds)
                .send()
                .await
                .map(|o| (o.credentials().cloned(), o.request_id().map(str::to_string)))
                .map_err(|e| failure(e, user, role, &request)),
            None => self
                .sts
                .assume_role()
                .role_arn(role)
                .role_session_name(&request.session_name)
                .source_identity(&request.source_identity)
                .duration_seconds(seconds)
                .set_tags((!tags.is_empty()).then_some(tags))
                .send()
                .await
                .map(|o| (o.credentials().cloned(), o.request_id().map(str::to_string)))
                .map_err(|e| failure(e, user, role, &request)),
        };
        let (credentials, request_id) = result?;
        let Some(credentials) = credentials else {
            tracing::error!(user, role, "sts:AssumeRole answered without credentials");
            return Err(AwsError::StsUnavailable {
                role: role.to_string(),
            });
        };
        let expires = SystemTime::try_from(*credentials.expiration())
            .unwrap_or_else(|_| SystemTime::now() + duration);
        let mut valid_for = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(self.refresh_before);
        if let Some(left) = login_left {
            valid_for = valid_for.min(left);
        }
        tracing::info!(user, role, source_identity = %request.source_identity,
            session_name = %request.session_name, tags = request.tags.len(),
            request_id = request_id.as_deref().unwrap_or(""), web_identity = token.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "assumed role for user");
        Ok(Arc::new(RoleCredentials {
            access_key_id: credentials.access_key_id().to_string(),
            secret_access_key: credentials.secret_access_key().to_string(),
            session_token: credentials.session_token().to_string(),
            replace_at: started + valid_for,
        }))
    }
}

/// Why STS refused, logged with its request id; the client gets a short, safe reason.
fn failure<E>(
    error: aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
    user: &str,
    role: &str,
    request: &SessionRequest,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = error.code().unwrap_or("").to_string();
    let request_id = error.request_id().unwrap_or("").to_string();
    let detail = aws_sdk_sts::error::DisplayErrorContext(&error).to_string();
    tracing::warn!(user, role, source_identity = %request.source_identity, %code,
        %request_id, error = %detail, "assuming the user's role failed");
    // STS's code when its answer parses; else its status (moto's 403 bodies do not parse as
    // STS errors). 403: this role, for this user, is refused.
    let status = error.raw_response().map(|r| r.status().as_u16());
    let refused = matches!(
        code.as_str(),
        "AccessDenied"
            | "RegionDisabledException"
            | "ValidationError"
            | "InvalidIdentityToken"
            | "ExpiredTokenException"
            | "IDPRejectedClaim"
    ) || (code.is_empty() && matches!(status, Some(400 | 403)));
    if refused {
        AwsError::AssumeRoleDenied {
            role: role.to_string(),
        }
    } else {
        AwsError::StsUnavailable {
            role: role.to_string(),
        }
    }
}

/// A session name or SourceIdentity: STS accepts `[\w+=,.@-]{2,64}`. Other characters become
/// `-`; a too short name is padded so STS never refuses a user for the shape of their name.
pub fn sts_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// A session tag key or value: letters, digits, spaces and `_.:/=+-@`; others become `_`.
pub fn tag_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An STS client that cannot send: these cases must be decided before any call.
    fn offline() -> RoleSessions {
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::Config::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .build(),
        );
        let config: AwsConfig = serde_saphyr::from_str(
            "source_identity_attribute: email\nsession_tags: { Department: department, Missing: nope }\n",
        )
        .expect("config");
        RoleSessions::new(sts, &config)
    }

    fn role(web_identity: bool) -> RoleConfig {
        RoleConfig {
            database: "*".into(),
            persona: "reader".into(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            web_identity,
        }
    }

    #[tokio::test]
    async fn an_expired_login_gets_no_credentials() {
        let mut erin = Identity::new("erin", vec![]);
        erin.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        let result = offline().credentials(&erin, &role(false), None).await;
        assert!(matches!(result, Err(AwsError::LoginExpired)), "{result:?}");
    }

    #[tokio::test]
    async fn a_web_identity_role_needs_the_login_token() {
        let alice = Identity::new("alice", vec![]);
        let result = offline().credentials(&alice, &role(true), None).await;
        assert!(
            matches!(result, Err(AwsError::NeedsToken { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn what_sts_is_told() {
        let mut erin = Identity::new("Erin Doe", vec![]);
        erin.attributes
            .insert("email".into(), "erin@example.com".into());
        erin.attributes
            .insert("department".into(), "EU Sales; DE".into());
        let request = offline().request_for(&erin);
        assert_eq!(request.source_identity, "erin@example.com");
        assert_eq!(request.session_name, "Erin-Doe");
        assert_eq!(
            request.tags,
            vec![("Department".to_string(), "EU Sales_ DE".to_string())]
        );
    }

    #[test]
    fn names_keep_to_what_sts_accepts() {
        assert_eq!(sts_name("erin.doe@example.com"), "erin.doe@example.com");
        assert_eq!(sts_name("Erin Doe/ü"), "Erin-Doe--");
        assert_eq!(sts_name("a"), "a-");
        assert_eq!(sts_name(&"x".repeat(100)).len(), 64);
        assert_eq!(tag_text("EU sales; DE"), "EU sales_ DE");
    }
}
