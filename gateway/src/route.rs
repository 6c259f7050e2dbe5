//! Which engine runs a query. The query is planned (and policy put on it) in the gateway first;
//! routing looks at the policy-applied plan: the tables it reads, who asks, and whether a
//! remote engine can keep what policy requires.
use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::LogicalPlan;
use globset::{Glob, GlobMatcher};
use lakegate_policy::{PolicyBarrier, is_error_free};

use crate::config::{Engine, RouteConfig};

/// The routing rules of the configuration, in order.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<(RouteConfig, GlobMatcher)>,
}

/// Where one query runs and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// DataFusion in the gateway.
    Local(&'static str),
    /// A remote engine, sent the whole query; `tables` as `(database, table)`.
    Remote {
        engine: Engine,
        tables: BTreeSet<(String, String)>,
    },
}

/// What routing needs to know of a plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PlanTables {
    /// Catalog tables read, each behind its policy barrier.
    pub tables: BTreeSet<(String, String)>,
    /// Something else is read: pg_catalog, information_schema, a table function.
    pub other_scans: bool,
    /// Some table has a row filter.
    pub row_filtered: bool,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Result<Router, String> {
        let routes = routes
            .iter()
            .map(|r| {
                let glob =
                    Glob::new(&r.table).map_err(|e| format!("routes: table {:?}: {e}", r.table))?;
                Ok((r.clone(), glob.compile_matcher()))
            })
            .collect::<Result<_, String>>()?;
        Ok(Router { routes })
    }

    /// Whether any route sends queries to `engine`.
    pub fn uses(&self, engine: Engine) -> bool {
        self.routes.iter().any(|(r, _)| r.engine == engine)
    }

    /// The engine of a query reading `tables`, for a user holding `personas`: the first route
    /// that matches every table; local when none does or nothing routable is read.
    /// `user_predicates` (`PlanTables::user_predicates`) is asked only of a query a remote
    /// engine could take: it looks at every predicate and mask, a tenth of a local lookup.
    pub fn route(
        &self,
        plan: &PlanTables,
        personas: &[String],
        user_predicates: impl FnOnce() -> bool,
    ) -> Route {
        if plan.tables.is_empty() {
            return Route::Local("no catalog table");
        }
        if plan.other_scans {
            return Route::Local("reads catalog metadata or a table function");
        }
        let chosen = self.routes.iter().find(|(route, glob)| {
            route.persona.as_ref().is_none_or(|p| personas.contains(p))
                && plan.tables.iter().all(|(database, table)| {
                    (route.database == "*" || route.database == *database) && glob.is_match(table)
                })
        });
        match chosen.map(|(r, _)| r.engine) {
            None | Some(Engine::Local) => Route::Local("routed to the local engine"),
            // A remote engine evaluates the query's own predicates in whatever order it likes,
            // maybe before a row filter: `1/0`-style errors would tell about rows the user may
            // not see. Only the gateway's engine keeps predicates above the row filter.
            Some(_) if plan.row_filtered && user_predicates() => Route::Local(
                "a row filter with predicates of the query: only the local engine keeps them apart",
            ),
            Some(engine) => Route::Remote {
                engine,
                tables: plan.tables.clone(),
            },
        }
    }
}

impl PlanTables {
    /// The tables and other scans of a policy-applied plan (subqueries included).
    pub fn of(plan: &LogicalPlan) -> PlanTables {
        let mut found = PlanTables::default();
        let _ = plan.apply_with_subqueries(|node| {
            match node {
                LogicalPlan::Extension(ext) => {
                    if let Some(barrier) = ext.node.as_any().downcast_ref::<PolicyBarrier>() {
                        if let Some((database, table)) = barrier.table().split_once('.') {
                            found
                                .tables
                                .insert((database.to_string(), table.to_string()));
                        } else {
                            found.other_scans = true;
                        }
                        found.row_filtered |= has_row_filter(barrier.input());
                        return Ok(TreeNodeRecursion::Jump);
                    }
                    // Another extension node: nothing a remote engine could be sent.
                    found.other_scans = true;
                }
                LogicalPlan::TableScan(_) => found.other_scans = true,
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        found
    }

    /// Whether a policy-applied plan has predicates of its own (WHERE, HAVING, join
    /// conditions) that could fail on some row (`1/x > 0`), or any predicate at all where a
    /// row-filtered table passes a column whose mask could fail: evaluated before a row
    /// filter, they would tell about its rows.
    pub fn user_predicates(plan: &LogicalPlan) -> bool {
        // A predicate may name a masked column under another name (a subquery's alias), so any
        // predicate at all counts where a row-filtered table passes a mask that could fail.
        let (mut failing, mut masks_may_fail, mut predicates) = (false, false, false);
        let _ = plan.apply_with_subqueries(|node| {
            match node {
                LogicalPlan::Extension(ext) => {
                    if let Some(barrier) = ext.node.as_any().downcast_ref::<PolicyBarrier>() {
                        masks_may_fail |=
                            has_row_filter(barrier.input()) && barrier.has_mask_that_may_fail();
                        return Ok(TreeNodeRecursion::Jump);
                    }
                }
                LogicalPlan::Filter(filter) => {
                    predicates = true;
                    failing |= !is_error_free(&filter.predicate)
                }
                LogicalPlan::Join(join) => {
                    predicates |= join.filter.is_some() || !join.on.is_empty();
                    failing |= join.filter.as_ref().is_some_and(|f| !is_error_free(f))
                        || join
                            .on
                            .iter()
                            .any(|(l, r)| !is_error_free(l) || !is_error_free(r))
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        failing || (masks_may_fail && predicates)
    }
}

/// Whether an enforced plan filters rows: a Filter, or one pushed into its scan.
fn has_row_filter(enforced: &LogicalPlan) -> bool {
    let mut filtered = false;
    let _ = enforced.apply(|node| {
        filtered |= match node {
            LogicalPlan::Filter(_) => true,
            LogicalPlan::TableScan(scan) => !scan.filters.is_empty(),
            _ => false,
        };
        Ok(TreeNodeRecursion::Continue)
    });
    filtered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(database: &str, table: &str, persona: Option<&str>, engine: Engine) -> RouteConfig {
        RouteConfig {
            database: database.into(),
            table: table.into(),
            persona: persona.map(str::to_string),
            engine,
        }
    }

    fn reading(tables: &[(&str, &str)]) -> PlanTables {
        PlanTables {
            tables: tables
                .iter()
                .map(|(d, t)| (d.to_string(), t.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn first_route_matching_every_table_decides() {
        let router = Router::new(&[
            route("gtm", "raw_*", None, Engine::Local),
            route("gtm", "*", None, Engine::Athena),
        ])
        .unwrap();
        let athena = router.route(&reading(&[("gtm", "visits")]), &[], || false);
        assert!(matches!(
            athena,
            Route::Remote {
                engine: Engine::Athena,
                ..
            }
        ));
        assert!(matches!(
            router.route(&reading(&[("gtm", "raw_events")]), &[], || false),
            Route::Local(_)
        ));
        // a query mixing routed and unrouted tables runs locally
        assert!(matches!(
            router.route(
                &reading(&[("gtm", "visits"), ("demo", "regions")]),
                &[],
                || false
            ),
            Route::Local(_)
        ));
    }

    #[test]
    fn persona_routes_apply_to_their_holders_only() {
        let router = Router::new(&[route("*", "*", Some("steward"), Engine::Athena)]).unwrap();
        let plan = reading(&[("gtm", "visits")]);
        assert!(matches!(
            router.route(&plan, &[], || false),
            Route::Local(_)
        ));
        assert!(matches!(
            router.route(&plan, &["steward".to_string()], || false),
            Route::Remote { .. }
        ));
    }

    #[test]
    fn row_filters_with_predicates_of_the_query_stay_local() {
        let router = Router::new(&[route("*", "*", None, Engine::Athena)]).unwrap();
        let mut plan = reading(&[("gtm", "visits")]);
        plan.row_filtered = true;
        let remote = |predicates: bool, plan: &PlanTables| {
            matches!(router.route(plan, &[], || predicates), Route::Remote { .. })
        };
        assert!(remote(false, &plan));
        assert!(!remote(true, &plan));
        plan.row_filtered = false;
        assert!(remote(true, &plan));
    }

    #[test]
    fn catalog_queries_and_constants_stay_local() {
        let router = Router::new(&[route("*", "*", None, Engine::Athena)]).unwrap();
        assert!(matches!(
            router.route(&reading(&[]), &[], || false),
            Route::Local(_)
        ));
        let mut plan = reading(&[("gtm", "visits")]);
        plan.other_scans = true;
        assert!(matches!(
            router.route(&plan, &[], || false),
            Route::Local(_)
        ));
    }
}
