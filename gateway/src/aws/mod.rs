//! AWS on a user's behalf: which IAM role a user's reads run as (`roles`), the assumed-role
//! sessions with the user as `SourceIdentity` (`sts`), and the S3 stores a user's DataFusion
//! session reads tables through (`s3`).
mod error;
mod roles;
mod s3;
mod sts;

use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

pub use error::AwsError;
pub use roles::RoleMap;
pub use s3::{S3Bucket, bucket_of, own_store, register_user_stores, user_store};
pub use sts::{RoleCredentials, RoleSessions};

use crate::config::AwsConfig;

/// The gateway's AWS side, built once at start.
#[derive(Debug)]
pub struct Aws {
    /// The gateway's own AWS configuration (its credentials): for catalog metadata only.
    pub sdk: aws_config::SdkConfig,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub sessions: Arc<RoleSessions>,
    pub roles: RoleMap,
}

impl Aws {
    /// Checks the configuration and builds the SDK clients. No AWS call is made: the gateway
    /// starts (and `lakegate check` runs) without reaching AWS.
    pub async fn new(config: &AwsConfig) -> Result<Aws, String> {
        validate(config)?;
        // The SDK's default HTTPS client needs aws-lc (a long C build); rustls with ring is
        // what the rest of the gateway uses.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // The configured region, else the environment's. Not the SDK's whole default chain: its
        // EC2 metadata lookup would stall a start outside AWS.
        let region =
            RegionProviderChain::first_try(config.region.clone().map(aws_config::Region::new))
                .or_else(EnvironmentVariableRegionProvider::new())
                .or_else("us-east-1");
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region);
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".to_string());
        Ok(Aws {
            sessions: Arc::new(RoleSessions::new(aws_sdk_sts::Client::new(&sdk), config)),
            sdk,
            region,
            endpoint_url: config.endpoint_url.clone(),
            roles: RoleMap::new(config.roles.clone()),
        })
    }
}

fn validate(config: &AwsConfig) -> Result<(), String> {
    if let Some(endpoint) = &config.endpoint_url {
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| endpoint.starts_with(p));
        if !endpoint.starts_with("https://") && !loopback {
            return Err(format!(
                "aws.endpoint_url {endpoint}: must be https (http only on 127.0.0.1/localhost)"
            ));
        }
    }
    if !(900..=43_200).contains(&config.session_duration_seconds) {
        return Err("aws.session_duration_seconds: STS allows 900 to 43200".into());
    }
    if config.refresh_before_expiry_seconds >= u64::from(config.session_duration_seconds) {
        return Err(
            "aws.refresh_before_expiry_seconds must be shorter than session_duration_seconds"
                .into(),
        );
    }
    if config.session_tags.len() > 50 {
        return Err("aws.session_tags: STS accepts at most 50 session tags".into());
    }
    for key in config.session_tags.keys() {
        if key.is_empty() || key.len() > 128 || sts::tag_text(key) != *key {
            return Err(format!(
                "aws.session_tags: {key:?} is not a valid tag key (1-128 letters, digits, spaces, _.:/=+-@)"
            ));
        }
    }
    for role in &config.roles {
        if !role.role_arn.starts_with("arn:aws") || !role.role_arn.contains(":role/") {
            return Err(format!(
                "aws.roles: {:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
                role.role_arn
            ));
        }
    }
    Ok(())
}
