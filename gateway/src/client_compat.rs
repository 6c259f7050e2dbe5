//! Known client catalog queries that DataFusion cannot plan, answered faithfully by textual
//! substitution. The cases live in `client_queries.yaml` as data (client, fragment, why), so
//! adding one is a reviewable data change, not a new conditional.
use std::sync::LazyLock;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[allow(dead_code)] // documentation for reviewers
    client: String,
    find: String,
    replace: String,
    #[allow(dead_code)]
    why: String,
}

static CASES: LazyLock<Vec<Case>> = LazyLock::new(|| {
    // A malformed file is a build-time mistake caught by the unit test below; at run time it
    // only disables the substitutions.
    serde_saphyr::from_str(include_str!("client_queries.yaml")).unwrap_or_default()
});

/// The query with every known client fragment replaced.
pub fn rewrite(sql: &str) -> std::borrow::Cow<'_, str> {
    let mut out = std::borrow::Cow::Borrowed(sql);
    for case in CASES.iter() {
        if out.contains(&case.find) {
            out = std::borrow::Cow::Owned(out.replace(&case.find, &case.replace));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_load_and_apply() {
        assert!(!CASES.is_empty(), "client_queries.yaml must parse");
        let psql = "SELECT x, pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')\n, y";
        assert_eq!(rewrite(psql), "SELECT x, ''\n, y");
        assert_eq!(rewrite("SELECT 1"), "SELECT 1");
    }
}
