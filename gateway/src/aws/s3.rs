//! The S3 stores of one user's DataFusion session. Each bucket gets a store whose every
//! request is signed with the user's assumed-role credentials, so S3 (and CloudTrail) see the
//! user's role and SourceIdentity, never the gateway's own.
use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use lakegate_policy::Identity;
use object_store::CredentialProvider;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpService, ReqwestConnector,
};

use super::{Aws, AwsError, RoleCredentials, RoleSessions};
use crate::auth::LoginToken;
use crate::config::RoleConfig;

/// A bucket and the databases whose tables, among those a user may read, live in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Bucket {
    pub name: String,
    pub databases: BTreeSet<String>,
}

/// The bucket of an `s3://bucket/prefix` location.
pub fn bucket_of(location: &str) -> Option<&str> {
    let rest = location.strip_prefix("s3://")?;
    let bucket = rest.split('/').next()?;
    (!bucket.is_empty()).then_some(bucket)
}

/// Registers one store per bucket in the user's session. The role is decided here, from the
/// user's personas; a missing or ambiguous role is not an error until the user reads the
/// bucket (their other tables stay readable), and then it is one: reads fail closed.
pub fn register_user_stores(
    context: &SessionContext,
    aws: &Aws,
    identity: &Identity,
    token: Option<LoginToken>,
    personas: &[String],
    buckets: &[S3Bucket],
) -> Result<(), String> {
    for bucket in buckets {
        let role = aws.roles.single_role(personas, &bucket.databases);
        match &role {
            Ok(role) => tracing::info!(user = %identity.name, bucket = %bucket.name,
                role = %role.role_arn, web_identity = role.web_identity, engine = "local",
                "the user's reads of this bucket run as this role"),
            Err(why) => tracing::info!(user = %identity.name, bucket = %bucket.name, %why,
                "the user cannot read this bucket"),
        }
        let credentials = UserCredentials {
            sessions: aws.sessions.clone(),
            identity: identity.clone(),
            token: token.clone(),
            role,
        };
        let store = builder(aws, &bucket.name)
            .with_credentials(Arc::new(credentials))
            .with_http_connector(RefusalAware)
            .build()
            .map_err(|e| format!("S3 store for bucket {}: {e}", bucket.name))?;
        let url = ObjectStoreUrl::parse(format!("s3://{}", bucket.name))
            .map_err(|e| format!("bucket {}: {e}", bucket.name))?;
        context.register_object_store(url.as_ref(), Arc::new(store));
    }
    Ok(())
}

/// An S3 store builder for `bucket` in the configured region and endpoint (path-style
/// requests when an endpoint is configured, as VPC endpoints and emulators need).
fn builder(aws: &Aws, bucket: &str) -> AmazonS3Builder {
    let builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&aws.region);
    match &aws.endpoint_url {
        Some(endpoint) => builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false),
        None => builder,
    }
}

/// A store of `bucket` signed with credentials already assumed for a user (an engine's result
/// objects, read with the role that ran the query). S3 refusing them is `ReadDenied`.
pub fn user_store(
    aws: &Aws,
    bucket: &str,
    credentials: &RoleCredentials,
) -> Result<object_store::aws::AmazonS3, String> {
    let credential = AwsCredential {
        key_id: credentials.access_key_id.clone(),
        secret_key: credentials.secret_access_key.clone(),
        token: Some(credentials.session_token.clone()),
    };
    builder(aws, bucket)
        .with_credentials(Arc::new(object_store::StaticCredentialProvider::new(
            credential,
        )))
        .with_http_connector(RefusalAware)
        .build()
        .map_err(|e| format!("S3 store for bucket {bucket}: {e}"))
}

/// A store of `bucket` with the gateway's own credentials (the standard AWS chain). Only for
/// operator commands such as `lakegate catalog register`, never for a user's query.
pub fn own_store(aws: &Aws, bucket: &str) -> Result<object_store::aws::AmazonS3, String> {
    let credentials = aws
        .sdk
        .credentials_provider()
        .ok_or("no AWS credentials: set them in the environment (AWS_ACCESS_KEY_ID, ...) or run with a role")?;
    builder(aws, bucket)
        .with_credentials(Arc::new(OwnCredentials(credentials)))
        .build()
        .map_err(|e| format!("S3 store for bucket {bucket}: {e}"))
}

#[derive(Debug)]
struct OwnCredentials(aws_credential_types::provider::SharedCredentialsProvider);

#[async_trait]
impl CredentialProvider for OwnCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        use aws_credential_types::provider::ProvideCredentials;
        let credentials =
            self.0
                .provide_credentials()
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                })?;
        Ok(Arc::new(AwsCredential {
            key_id: credentials.access_key_id().to_string(),
            secret_key: credentials.secret_access_key().to_string(),
            token: credentials.session_token().map(str::to_string),
        }))
    }
}

/// The credentials of one user's role, asked of the shared cache on every S3 request.
struct UserCredentials {
    sessions: Arc<RoleSessions>,
    identity: Identity,
    token: Option<LoginToken>,
    role: Result<RoleConfig, AwsError>,
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredentials")
            .field("user", &self.identity.name)
            .field("role", &self.role.as_ref().map(|r| &r.role_arn))
            .finish()
    }
}

#[async_trait]
impl CredentialProvider for UserCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let fail = |error: AwsError| object_store::Error::Generic {
            store: "S3",
            source: Box::new(error),
        };
        let role = self.role.as_ref().map_err(|e| fail(e.clone()))?;
        let credentials = self
            .sessions
            .credentials(&self.identity, role, self.token.as_ref())
            .await
            .map_err(fail)?;
        Ok(Arc::new(AwsCredential {
            key_id: credentials.access_key_id.clone(),
            secret_key: credentials.secret_access_key.clone(),
            token: Some(credentials.session_token.clone()),
        }))
    }
}

/// object_store's HTTP client, except that S3 refusing the user's role (403) becomes
/// `AwsError::ReadDenied`, so the client gets 42501 and not S3's XML (which names the bucket).
#[derive(Debug)]
struct RefusalAware;

impl HttpConnector for RefusalAware {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(RefusalAwareClient(
            ReqwestConnector::default().connect(options)?,
        )))
    }
}

#[derive(Debug)]
struct RefusalAwareClient(HttpClient);

#[async_trait]
impl HttpService for RefusalAwareClient {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let response = self.0.execute(request).await?;
        if response.status() == http::StatusCode::FORBIDDEN {
            tracing::warn!(%method, %uri, "S3 refused the user's role");
            // Unknown: not retried, the same role would be refused again.
            return Err(HttpError::new(HttpErrorKind::Unknown, AwsError::ReadDenied));
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_of_locations() {
        assert_eq!(bucket_of("s3://lake-gtm/gtm/sales/"), Some("lake-gtm"));
        assert_eq!(bucket_of("s3://lake"), Some("lake"));
        assert_eq!(bucket_of("s3:///x"), None);
        assert_eq!(bucket_of("data/gtm/sales"), None);
    }
}
