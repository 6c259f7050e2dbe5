/// Why a user's read from AWS could not run. Each reaches the client with its SQLSTATE; none
/// names a bucket or key, and none carries AWS's own message (it goes to the log).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS role for you in database {database}: none of your personas has one")]
    NoRole { database: String },
    #[error(
        "the tables you read in databases {databases} share storage but your roles there differ"
    )]
    AmbiguousRole { databases: String },
    #[error("not allowed to assume role {role}")]
    AssumeRoleDenied { role: String },
    #[error(
        "role {role} is assumed with your company token: log in with your token to read this data"
    )]
    NeedsToken { role: String },
    #[error("your login has expired; log in again")]
    LoginExpired,
    #[error("AWS STS did not answer for role {role}; try again later")]
    StsUnavailable { role: String },
    #[error("AWS denied reading the data of this table with your role")]
    ReadDenied,
}

impl AwsError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AwsError::NoRole { .. } | AwsError::AmbiguousRole { .. } | AwsError::ReadDenied => {
                "42501"
            }
            AwsError::AssumeRoleDenied { .. }
            | AwsError::LoginExpired
            | AwsError::NeedsToken { .. } => "28000",
            AwsError::StsUnavailable { .. } => "58000",
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            AwsError::NoRole { .. } => {
                "ask the database's data owner for a persona that has an AWS role"
            }
            AwsError::AmbiguousRole { .. } => {
                "query the databases separately, or ask the platform team to give them one role"
            }
            AwsError::AssumeRoleDenied { .. } => {
                "the gateway may not assume this role: the platform team must allow it in the role's trust policy"
            }
            AwsError::ReadDenied => {
                "the role of your persona lacks S3 read access to this table: ask its data owner"
            }
            AwsError::LoginExpired
            | AwsError::StsUnavailable { .. }
            | AwsError::NeedsToken { .. } => "",
        }
    }
}
