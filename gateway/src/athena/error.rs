//! Why a query routed to Athena failed. Each reaches the client with its SQLSTATE and a text
//! that names no bucket, key or policy expression (Athena's own message goes to the log: it
//! quotes the SQL the gateway sent, which carries masks and row filters).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AthenaError {
    #[error("AWS denied running this query on Athena with your role")]
    Denied,
    #[error("Athena is throttling queries; try again in a moment")]
    Throttled,
    #[error("Athena did not answer; try again later")]
    Unavailable,
    #[error("division by zero")]
    DivisionByZero,
    #[error("the query needs more resources than Athena gives it")]
    Resources,
    #[error("the query was cancelled in Athena (query id {0})")]
    CancelledElsewhere(String),
    #[error("Athena refused to start the query; the gateway log has details")]
    Refused,
    #[error("Athena could not run the query (query id {0}); the gateway log has details")]
    Failed(String),
    #[error("cannot read the results of Athena query {id}: {why}")]
    Results { id: String, why: String },
}

impl AthenaError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AthenaError::Denied => "42501",
            AthenaError::Throttled => "53400",
            AthenaError::Unavailable => "58000",
            AthenaError::DivisionByZero => "22012",
            AthenaError::Resources => "53000",
            AthenaError::CancelledElsewhere(_) => "57014",
            AthenaError::Failed(_) | AthenaError::Refused => "XX000",
            AthenaError::Results { .. } => "58030",
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            AthenaError::Denied => {
                "the role of your persona lacks Athena (or its result bucket) permissions: ask the platform team"
            }
            AthenaError::Resources => "narrow the query: fewer partitions, columns or rows",
            AthenaError::Throttled | AthenaError::Unavailable => "retry the query",
            _ => "",
        }
    }

    /// The error of a query Athena ended as FAILED, from its reason text and error category
    /// (1 system, 2 user, 3 other).
    pub fn of_failed(id: &str, reason: &str, category: Option<i32>) -> AthenaError {
        let upper = reason.to_ascii_uppercase();
        if upper.contains("DIVISION_BY_ZERO") || upper.contains("DIVISION BY ZERO") {
            AthenaError::DivisionByZero
        } else if upper.contains("ACCESS DENIED")
            || upper.contains("ACCESSDENIED")
            || upper.contains("PERMISSION_DENIED")
            || upper.contains("PERMISSION DENIED")
            || upper.contains("NOT AUTHORIZED")
        {
            AthenaError::Denied
        } else if upper.contains("EXCEEDED_") || upper.contains("EXHAUSTED RESOURCES") {
            AthenaError::Resources
        } else if category == Some(1) && upper.contains("THROTTL") {
            AthenaError::Throttled
        } else {
            AthenaError::Failed(id.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_queries_map_to_what_the_user_can_act_on() {
        let cases = [
            ("DIVISION_BY_ZERO: Division by zero", Some(2), "22012"),
            (
                "Permission denied on S3 path: s3://lake-gtm/visits/x.parquet",
                Some(2),
                "42501",
            ),
            (
                "Access Denied (Service: Amazon S3; Status Code: 403)",
                Some(2),
                "42501",
            ),
            (
                "EXCEEDED_MEMORY_LIMIT: Query exceeded local memory limit",
                Some(2),
                "53000",
            ),
            (
                "Query exhausted resources at this scale factor",
                Some(1),
                "53000",
            ),
            ("line 1:8: mismatched input 'FROM'", Some(2), "XX000"),
            ("Internal error", Some(1), "XX000"),
        ];
        for (reason, category, sqlstate) in cases {
            let error = AthenaError::of_failed("q-1", reason, category);
            assert_eq!(error.sqlstate(), sqlstate, "{reason}");
            // nothing of Athena's text (paths, SQL) reaches the client
            assert!(!error.to_string().contains("s3://"), "{error}");
            assert!(!error.to_string().contains("mismatched"), "{error}");
        }
    }
}
