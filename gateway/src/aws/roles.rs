use std::collections::BTreeMap;

use super::AwsError;
use crate::config::RoleConfig;

/// Personas → IAM roles per database (data domain), in configuration order.
#[derive(Debug, Clone)]
pub struct RoleMap {
    entries: Vec<RoleConfig>,
}

impl RoleMap {
    pub fn new(entries: Vec<RoleConfig>) -> Self {
        RoleMap { entries }
    }

    /// The role a holder of `personas` reads `database` with: the first entry naming that
    /// database (or `*`) and one of the personas. First match, like policy rules, so an
    /// operator orders entries from the most to the least privileged persona.
    pub fn role_for(&self, personas: &[String], database: &str) -> Option<&RoleConfig> {
        self.entries.iter().find(|e| {
            (e.database == "*" || e.database == database) && personas.contains(&e.persona)
        })
    }

    /// The one role a read across `databases` runs as. A database without a role for these
    /// personas, or databases whose roles differ, fail closed: one AWS request has one identity.
    pub fn single_role<'a>(
        &self,
        personas: &[String],
        databases: impl IntoIterator<Item = &'a String>,
    ) -> Result<RoleConfig, AwsError> {
        let mut roles = BTreeMap::new();
        let mut seen = Vec::new();
        for database in databases {
            let Some(role) = self.role_for(personas, database) else {
                return Err(AwsError::NoRole {
                    database: database.clone(),
                });
            };
            roles.insert((role.role_arn.clone(), role.web_identity), role.clone());
            seen.push(database.clone());
        }
        let mut roles = roles.into_values();
        match (roles.next(), roles.next()) {
            (Some(role), None) => Ok(role),
            (None, _) => Err(AwsError::NoRole {
                database: String::new(),
            }),
            (Some(_), Some(_)) => Err(AwsError::AmbiguousRole {
                databases: seen.join(", "),
            }),
        }
    }

    pub fn personas(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.persona.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(database: &str, persona: &str, role: &str) -> RoleConfig {
        RoleConfig {
            database: database.into(),
            persona: persona.into(),
            role_arn: role.into(),
            web_identity: false,
        }
    }

    #[test]
    fn first_matching_entry_decides() {
        let map = RoleMap::new(vec![
            entry("gtm", "steward", "arn:steward"),
            entry("gtm", "reader", "arn:gtm-reader"),
            entry("*", "reader", "arn:any-reader"),
        ]);
        let role = |personas: &[String], database| {
            map.role_for(personas, database)
                .map(|e| e.role_arn.as_str())
        };
        let both = vec!["reader".to_string(), "steward".to_string()];
        assert_eq!(role(&both, "gtm"), Some("arn:steward"));
        let reader = vec!["reader".to_string()];
        assert_eq!(role(&reader, "gtm"), Some("arn:gtm-reader"));
        assert_eq!(role(&reader, "finance"), Some("arn:any-reader"));
        assert_eq!(role(&[], "gtm"), None);
        assert_eq!(role(&["steward".to_string()], "finance"), None);
    }
}
