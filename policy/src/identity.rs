use std::collections::BTreeMap;

/// Who is asking: the outcome of any login path (local SCRAM user now; OIDC, SSO and tokens
/// later). Policy matches on the user name, groups and personas, and row filters may read
/// these values as `${user.name}`, `${user.groups}` and `${user.<attribute>}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

impl Identity {
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Identity {
            name: name.into(),
            groups,
            attributes: BTreeMap::new(),
        }
    }
}
