use std::collections::BTreeMap;
use std::time::SystemTime;

/// Who is asking: the outcome of any login path (a local SCRAM user or a company token).
/// Policy matches on the user name, groups and personas, and row filters may read these
/// values as `${user.name}`, `${user.groups}` and `${user.<attribute>}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// When the login that proved this identity stops being valid (a token's `exp`); `None`
    /// for local users. Nothing obtained for the user (e.g. AWS credentials) may outlive it.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Identity {
            name: name.into(),
            groups,
            attributes: BTreeMap::new(),
            expires_at: None,
        }
    }
}
