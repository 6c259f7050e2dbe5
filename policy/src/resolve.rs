//! Deciding what one user may see of one table.
use std::collections::BTreeMap;

use crate::identity::Identity;
use crate::load::{PolicySet, Rule, persona_names, tags_match};
use crate::model::{Access, ColumnDefault, Mask, Privilege};

/// What policy needs to know of a table: its name and tags, and its columns' names and tags.
/// The gateway fills it from the catalog (local or Glue).
#[derive(Debug, Clone)]
pub struct TableMeta {
    pub database: String,
    pub table: String,
    pub tags: BTreeMap<String, String>,
    pub columns: Vec<ColumnMeta>,
}

#[derive(Debug, Clone)]
pub struct ColumnMeta {
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

/// The outcome for one user and one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No access: the table is invisible. `rule` is the deny rule that matched, if any
    /// (none means no rule matched: deny by default).
    Denied {
        rule: Option<String>,
    },
    Allowed(TableAccess),
}

/// Access granted by one rule: the visible columns in table order, each maybe masked, and the
/// row filter over raw values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAccess {
    pub rule: String,
    pub rule_location: String,
    pub row_filter: Option<String>,
    pub columns: Vec<ColumnDecision>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDecision {
    pub name: String,
    pub mask: Option<Mask>,
}

impl PolicySet {
    /// Whether the policy files define this persona.
    pub fn has_persona(&self, name: &str) -> bool {
        self.personas.contains_key(name)
    }

    /// The personas an identity holds.
    pub fn personas_of(&self, identity: &Identity) -> Vec<String> {
        persona_names(self, &identity.name, &identity.groups)
            .into_iter()
            .collect()
    }

    /// First matching rule decides; no match denies.
    pub fn decide(&self, identity: &Identity, table: &TableMeta) -> Decision {
        let personas = self.personas_of(identity);
        let qualified = format!("{}.{}", table.database, table.table);
        let rule = self.rules.iter().find(|rule| {
            rule.privileges.contains(&Privilege::Select)
                && principal_matches(rule, identity, &personas)
                && resource_matches(rule, &qualified, &table.tags)
        });
        let Some(rule) = rule else {
            return Decision::Denied { rule: None };
        };
        if rule.access == Access::Deny {
            return Decision::Denied {
                rule: Some(rule.name.clone()),
            };
        }
        let columns = table
            .columns
            .iter()
            .filter_map(|column| column_decision(rule, column))
            .collect();
        Decision::Allowed(TableAccess {
            rule: rule.name.clone(),
            rule_location: format!("{}:{}", rule.file, rule.line),
            row_filter: rule.row_filter.clone(),
            columns,
        })
    }
}

fn principal_matches(rule: &Rule, identity: &Identity, personas: &[String]) -> bool {
    rule.users.iter().any(|u| u.is_match(&identity.name))
        || rule.groups.iter().any(|g| identity.groups.contains(g))
        || rule.personas.iter().any(|p| personas.contains(p))
}

fn resource_matches(rule: &Rule, qualified: &str, tags: &BTreeMap<String, String>) -> bool {
    let name_ok = rule.tables.is_empty() || rule.tables.iter().any(|t| t.is_match(qualified));
    name_ok && tags_match(&rule.table_tags, tags)
}

fn column_decision(rule: &Rule, column: &ColumnMeta) -> Option<ColumnDecision> {
    let matched = rule.columns.iter().find(|c| {
        c.name.as_ref().is_none_or(|n| n.is_match(&column.name))
            && tags_match(&c.tags, &column.tags)
    });
    match matched {
        Some(c) if c.access == Access::Deny => None,
        Some(c) => Some(ColumnDecision {
            name: column.name.clone(),
            mask: c.mask.clone(),
        }),
        None if rule.default_column_access == ColumnDefault::Deny => None,
        None => Some(ColumnDecision {
            name: column.name.clone(),
            mask: None,
        }),
    }
}
