//! Lakegate policy: the model (YAML policy-as-code), its loader and checks, how rules decide a
//! user's access to a table, and the rewrite that enforces that decision on DataFusion's
//! logical plan. Pure: this crate reads no files and talks to no network; callers hand it text.
//!
//! How rules combine (documented for policy authors in README): rules are read in file-name
//! order, then in order within a file. For a user and a table, the **first rule** whose
//! principals match the user and whose resources match the table decides, like Trino's
//! `rules.json`. Within that rule, the first column rule that matches a column decides that
//! column. No matching rule means no access (deny by default).

mod columns;
mod compile;
mod error;
mod identity;
mod load;
mod model;
mod pushdown;
mod resolve;
mod rewrite;
mod seal;

pub use compile::{CompiledAccess, bind_user_placeholders, compile_access};
pub use error::PolicyError;
pub use identity::Identity;
pub use load::{PolicySet, PolicySource};
pub use model::{Access, ColumnDefault, Mask, Privilege};
pub use pushdown::{PushSafePredicates, is_error_free};
pub use resolve::{ColumnDecision, ColumnMeta, Decision, TableAccess, TableMeta};
pub use rewrite::{
    EnforcePolicy, PolicyBarrier, PolicyBarrierExec, PolicyExtensionPlanner, PolicyView,
    analyzer_rules, optimizer_rules, with_policy,
};
pub use seal::{NarrowSealedBarriers, unseal};
