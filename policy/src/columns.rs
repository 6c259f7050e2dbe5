//! Which columns of each table a query names, so that a policy view's barrier computes and
//! carries only those (`PolicyView::kept`) and its plan is sealed once for them, not once for
//! every name the query uses and again for what DataFusion's pruning leaves.
use std::collections::{HashMap, HashSet};

use datafusion::common::TableReference;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};

/// The column names a plan uses, by the qualifier it uses them under, inside subqueries and as
/// outer references too.
#[derive(Debug, Default)]
pub(crate) struct ColumnsUsed {
    qualified: HashMap<TableReference, HashSet<String>>,
    unqualified: HashSet<String>,
    /// The aliases each table name is scanned under (`FROM sales s`).
    aliases: HashMap<TableReference, Vec<TableReference>>,
}

impl ColumnsUsed {
    /// None (every column) where a wildcard is left unexpanded, which DataFusion's SQL planner
    /// no longer does.
    pub(crate) fn of(plan: &LogicalPlan) -> Option<ColumnsUsed> {
        let mut used = Some(ColumnsUsed::default());
        let _ = plan.apply_with_subqueries(|node| {
            if let (LogicalPlan::SubqueryAlias(alias), Some(used)) = (node, &mut used)
                && let Some(table) = scanned(&alias.input)
            {
                let aliases = used.aliases.entry(table.clone()).or_default();
                aliases.push(alias.alias.clone());
            }
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    #[allow(deprecated)]
                    match (e, &mut used) {
                        (Expr::Wildcard { .. }, _) => used = None,
                        (
                            Expr::Column(column) | Expr::OuterReferenceColumn(_, column),
                            Some(used),
                        ) => {
                            let names = match &column.relation {
                                Some(qualifier) => {
                                    used.qualified.entry(qualifier.clone()).or_default()
                                }
                                None => &mut used.unqualified,
                            };
                            names.insert(column.name.clone());
                        }
                        _ => {}
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        });
        used
    }

    /// The names used of a table the plan scans as `table`: under that name, under an alias
    /// given to its scan, or with no qualifier at all. The SQL planner qualifies every column
    /// of a table by the one or the other, so this is never less than a scan of it needs; a
    /// query that scans a table twice gets the names of both.
    pub(crate) fn of_table(&self, table: &TableReference) -> HashSet<String> {
        let aliases = self.aliases.get(table).into_iter().flatten();
        let mut names = self.unqualified.clone();
        for qualifier in std::iter::once(table).chain(aliases) {
            names.extend(self.qualified.get(qualifier).into_iter().flatten().cloned());
        }
        names
    }
}

/// The table name a plan scans, where it is a scan (under aliases, if any).
fn scanned(plan: &LogicalPlan) -> Option<&TableReference> {
    match plan {
        LogicalPlan::TableScan(scan) => Some(&scan.table_name),
        LogicalPlan::SubqueryAlias(alias) => scanned(&alias.input),
        _ => None,
    }
}
