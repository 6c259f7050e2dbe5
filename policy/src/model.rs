//! The shape of a policy file, as its authors write it.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyDocument {
    /// Personas by name: who holds them (users and/or groups).
    #[serde(default)]
    pub personas: BTreeMap<String, PersonaDef>,
    #[serde(default)]
    pub rules: Vec<Spanned<RuleDef>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersonaDef {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDef {
    pub name: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for readers of the policy file
    pub description: Option<String>,
    pub principals: PrincipalsDef,
    /// `database.table` globs (`gtm.*`, `*.patients`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Table parameters that must all be equal (e.g. `classification: pii`).
    #[serde(default)]
    pub table_tags: BTreeMap<String, String>,
    #[serde(default)]
    pub access: Access,
    #[serde(default = "default_privileges")]
    pub privileges: Vec<Privilege>,
    /// A SQL boolean expression over the table's raw columns.
    #[serde(default)]
    pub row_filter: Option<String>,
    #[serde(default)]
    pub columns: Vec<ColumnRuleDef>,
    #[serde(default)]
    pub default_column_access: ColumnDefault,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrincipalsDef {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub personas: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct ColumnRuleDef {
    /// A column name glob.
    #[serde(default)]
    pub name: Option<String>,
    /// Column parameters that must all be equal.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub access: Option<Access>,
    #[serde(default, deserialize_with = "explicit_mask")]
    pub mask: Option<Mask>,
}

/// Whether a rule grants or refuses.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Allow,
    Deny,
}

/// What happens to columns that no column rule names.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColumnDefault {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    Select,
}

fn default_privileges() -> Vec<Privilege> {
    vec![Privilege::Select]
}

/// How a visible column's values are transformed before the user sees them.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Mask {
    /// Hex SHA-256 of the value's text: joinable, not readable.
    Hash,
    /// Always NULL, keeping the column's type.
    Nullify,
    /// Keep the first N characters, replace the rest with `*`.
    ShowFirst(u32),
    /// Keep the last N characters, replace the rest with `*`.
    ShowLast(u32),
    /// A date or timestamp truncated to January 1st of its year.
    DateToYear,
    /// A SQL expression over the table's raw columns (and `${user.*}` values).
    Sql(String),
}

/// `mask: null` in YAML is a null, not a mask: refuse it rather than silently not masking.
fn explicit_mask<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mask>, D::Error> {
    match Option::<Mask>::deserialize(d)? {
        Some(mask) => Ok(Some(mask)),
        None => Err(serde::de::Error::custom(
            "mask is YAML null; to always show NULL write `mask: nullify`",
        )),
    }
}
