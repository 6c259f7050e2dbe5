//! Turning policy files into a checked `PolicySet`.
use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobMatcher};

use crate::error::PolicyError;
use crate::model::{
    Access, ColumnDefault, ColumnRuleDef, Mask, PersonaDef, PolicyDocument, Privilege, RuleDef,
};

/// One policy file's name (for error messages) and text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: String,
    pub text: String,
}

/// All rules of all policy files, in evaluation order, checked.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub(crate) personas: BTreeMap<String, PersonaDef>,
    pub(crate) rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub name: String,
    pub file: String,
    pub line: u64,
    pub users: Vec<GlobMatcher>,
    pub groups: Vec<String>,
    pub personas: Vec<String>,
    pub tables: Vec<GlobMatcher>,
    pub table_tags: BTreeMap<String, String>,
    pub access: Access,
    pub privileges: Vec<Privilege>,
    pub row_filter: Option<String>,
    pub columns: Vec<ColumnRule>,
    pub default_column_access: ColumnDefault,
}

#[derive(Debug, Clone)]
pub(crate) struct ColumnRule {
    pub name: Option<GlobMatcher>,
    pub tags: BTreeMap<String, String>,
    pub access: Access,
    pub mask: Option<Mask>,
}

impl PolicySet {
    /// Loads policy files in the order given (callers sort by file name). Every problem found
    /// is returned, each pointing at its file, line and rule.
    pub fn load(sources: &[PolicySource]) -> Result<PolicySet, Vec<PolicyError>> {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        let mut names: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut persona_refs = Vec::new();

        for source in sources {
            let doc: PolicyDocument = match serde_saphyr::from_str(&source.text) {
                Ok(doc) => doc,
                Err(e) => {
                    errors.push(PolicyError::Syntax {
                        file: source.file.clone(),
                        line: e.location().map(|l| l.line()).unwrap_or(1),
                        message: first_line(&e.to_string()),
                    });
                    continue;
                }
            };
            for (name, persona) in doc.personas {
                set.personas.insert(name, persona);
            }
            for spanned in doc.rules {
                let line = spanned.referenced.line();
                let def = spanned.value;
                let (file, rule) = (source.file.clone(), def.name.clone());
                let rule_error = move |message: String| PolicyError::Rule {
                    file: file.clone(),
                    line,
                    rule: rule.clone(),
                    message,
                };
                if let Some((file, first)) = names.get(&def.name) {
                    errors.push(rule_error(format!(
                        "rule name is already used at {file}:{first}"
                    )));
                }
                names.insert(def.name.clone(), (source.file.clone(), line));
                for persona in &def.principals.personas {
                    persona_refs.push((persona.clone(), rule_error.clone()));
                }
                match build_rule(&source.file, line, def) {
                    Ok(rule) => set.rules.push(rule),
                    Err(messages) => errors.extend(messages.into_iter().map(rule_error)),
                }
            }
        }
        for (persona, rule_error) in persona_refs {
            if !set.personas.contains_key(&persona) {
                errors.push(rule_error(format!("unknown persona \"{persona}\"")));
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Number of rules, for start-up logs.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}

fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid pattern \"{pattern}\": {e}"))
}

fn build_rule(file: &str, line: u64, def: RuleDef) -> Result<Rule, Vec<String>> {
    let mut problems = Vec::new();
    if def.name.trim().is_empty() {
        problems.push("rule name is empty".to_string());
    }
    let p = &def.principals;
    if p.users.is_empty() && p.groups.is_empty() && p.personas.is_empty() {
        problems.push("principals names no users, groups or personas".to_string());
    }
    if def.tables.is_empty() && def.table_tags.is_empty() {
        problems.push("rule names no tables and no table_tags".to_string());
    }
    for table in &def.tables {
        if !table.contains('.') {
            problems.push(format!(
                "table pattern \"{table}\" must be database.table (e.g. \"gtm.*\")"
            ));
        }
    }
    if def.access == Access::Deny && (def.row_filter.is_some() || !def.columns.is_empty()) {
        problems.push("a deny rule takes no row_filter or columns".to_string());
    }
    if let Some(filter) = &def.row_filter
        && let Err(e) = crate::compile::check_sql_syntax(filter)
    {
        problems.push(format!("row_filter: {e}"));
    }
    let users: Vec<GlobMatcher> = def
        .principals
        .users
        .iter()
        .filter_map(|u| glob(u).map_err(|e| problems.push(e)).ok())
        .collect();
    let tables: Vec<GlobMatcher> = def
        .tables
        .iter()
        .filter_map(|t| glob(t).map_err(|e| problems.push(e)).ok())
        .collect();
    let mut columns = Vec::new();
    for (i, c) in def.columns.into_iter().enumerate() {
        match build_column_rule(c) {
            Ok(rule) => columns.push(rule),
            Err(e) => problems.push(format!("columns[{i}]: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Rule {
        name: def.name,
        file: file.to_string(),
        line,
        users,
        groups: def.principals.groups,
        personas: def.principals.personas,
        tables,
        table_tags: def.table_tags,
        access: def.access,
        privileges: def.privileges,
        row_filter: def.row_filter,
        columns,
        default_column_access: def.default_column_access,
    })
}

fn build_column_rule(def: ColumnRuleDef) -> Result<ColumnRule, String> {
    if def.name.is_none() && def.tags.is_empty() {
        return Err("a column rule needs a name or tags".to_string());
    }
    let access = def.access.unwrap_or(Access::Allow);
    if access == Access::Deny && def.mask.is_some() {
        return Err("a denied column cannot also be masked".to_string());
    }
    match &def.mask {
        Some(Mask::ShowFirst(0)) | Some(Mask::ShowLast(0)) => {
            return Err("show_first/show_last needs a count above 0".to_string());
        }
        Some(Mask::Sql(sql)) => {
            crate::compile::check_sql_syntax(sql).map_err(|e| format!("mask sql: {e}"))?
        }
        _ => {}
    }
    let name = def.name.as_deref().map(glob).transpose()?;
    Ok(ColumnRule {
        name,
        tags: def.tags,
        access,
        mask: def.mask,
    })
}

/// Tags are matched on equal values; a rule's tag set must all be present.
pub(crate) fn tags_match(
    wanted: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> bool {
    wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Groups named by personas, for tests and `lakegate check` output.
pub(crate) fn persona_names(set: &PolicySet, user: &str, groups: &[String]) -> BTreeSet<String> {
    set.personas
        .iter()
        .filter(|(_, p)| {
            p.users.iter().any(|u| u == user) || p.groups.iter().any(|g| groups.contains(g))
        })
        .map(|(name, _)| name.clone())
        .collect()
}
