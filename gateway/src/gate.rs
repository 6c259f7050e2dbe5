//! Which statements may reach the planner at all. Lakegate serves reads: queries, EXPLAIN,
//! cursors over queries, session settings and transaction control. Everything else, and
//! anything that could step outside policy (DDL, `CREATE EXTERNAL TABLE` over a path, COPY to
//! a file, `SELECT ... INTO`, SET of engine internals), is refused with 42501.
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    CopySource, CopyTarget, Query, Set, SetExpr, Statement, visit_relations,
};

use crate::error::QueryError;

/// Session settings clients set; anything else (notably `datafusion.*`) is refused.
const SETTABLE: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_isolation",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "lock_timeout",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
    "time zone",
];

const HINT: &str = "Lakegate serves read-only queries: SELECT, EXPLAIN, COPY ... TO STDOUT, \
                    DECLARE/FETCH/CLOSE, SET/SHOW of session settings, BEGIN/COMMIT/ROLLBACK.";

fn refused(what: &str) -> QueryError {
    QueryError::refused(format!("permission denied: {what} is not allowed"), HINT)
}

pub fn check(statement: &Statement) -> Result<(), QueryError> {
    refuse_file_tables(statement)?;
    match statement {
        Statement::Query(q) => check_query(q),
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            // `EXPLAIN (ANALYZE [true])` as well as `EXPLAIN ANALYZE`
            let analyze_option = options.iter().flatten().any(|o| {
                o.name.value.eq_ignore_ascii_case("analyze")
                    && !o.arg.as_ref().is_some_and(|a| {
                        let a = a.to_string().to_ascii_lowercase();
                        a == "false" || a == "off" || a == "0"
                    })
            });
            if *analyze || analyze_option {
                return Err(QueryError::refused(
                    "permission denied: EXPLAIN ANALYZE is not allowed",
                    "It would reveal row counts of data policy filters; use EXPLAIN.",
                ));
            }
            match statement.as_ref() {
                Statement::Query(q) => check_query(q),
                _ => Err(refused("EXPLAIN of this statement")),
            }
        }
        Statement::Declare { stmts } => {
            for declare in stmts {
                match &declare.for_query {
                    Some(q) => check_query(q)?,
                    None => return Err(refused("DECLARE without a query")),
                }
            }
            Ok(())
        }
        Statement::Fetch { .. } | Statement::Close { .. } => Ok(()),
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Ok(()),
        Statement::ShowVariable { .. } => Ok(()),
        Statement::Discard { .. } | Statement::Deallocate { .. } => Ok(()),
        Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => Ok(()),
        Statement::Set(set) => check_set(set),
        Statement::Copy {
            source,
            to: true,
            target: CopyTarget::Stdout,
            ..
        } => match source {
            CopySource::Query(q) => check_query(q),
            CopySource::Table { .. } => Ok(()),
        },
        Statement::Copy { to: false, .. } => Err(refused("COPY FROM")),
        Statement::Copy { .. } => Err(QueryError::refused(
            "permission denied: COPY to a file or program is not allowed",
            "Use COPY ... TO STDOUT (psql: \\copy ... to 'file'), which runs under your policy.",
        )),
        other => {
            let verb = other
                .to_string()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Err(refused(&verb.to_uppercase()))
        }
    }
}

/// `FROM '/path/file.parquet'` or `FROM 's3://...'`: reading files or URLs directly would skip
/// the catalog and its policy.
fn refuse_file_tables(statement: &Statement) -> Result<(), QueryError> {
    let found = visit_relations(statement, |name| {
        let looks_like_path = name.0.iter().filter_map(|p| p.as_ident()).any(|ident| {
            ident.quote_style == Some('\'')
                || ident.value.contains('/')
                || ident.value.contains("://")
        });
        if looks_like_path {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    if found.is_break() {
        return Err(QueryError::refused(
            "permission denied: reading files or URLs as tables is not allowed",
            "Query tables by their catalog names (schema.table).",
        ));
    }
    Ok(())
}

fn check_query(query: &Query) -> Result<(), QueryError> {
    if let SetExpr::Select(select) = query.body.as_ref()
        && select.into.is_some()
    {
        return Err(refused("SELECT INTO"));
    }
    Ok(())
}

fn check_set(set: &Set) -> Result<(), QueryError> {
    match set {
        Set::SingleAssignment { variable, .. } => {
            let name = variable.to_string().to_ascii_lowercase();
            if SETTABLE.contains(&name.as_str()) {
                Ok(())
            } else {
                Err(QueryError::refused(
                    format!("permission denied to set parameter \"{name}\""),
                    "Only PostgreSQL session settings can be set; engine settings belong to the operator.",
                ))
            }
        }
        Set::SetTimeZone { .. } | Set::SetNames { .. } => Ok(()),
        _ => Err(refused("this SET")),
    }
}

/// For input the parser rejects: statements that would write or reach outside policy are
/// refused (42501) rather than called syntax errors, so `CREATE EXTERNAL TABLE` and friends
/// get a clear answer whatever the parser knows of them.
pub fn refuse_unparsed(sql: &str) -> Option<QueryError> {
    const WRITES: &[&str] = &[
        "CREATE", "DROP", "ALTER", "INSERT", "UPDATE", "DELETE", "COPY", "GRANT", "REVOKE",
        "TRUNCATE", "MERGE", "CALL", "DO", "LOAD", "ATTACH", "INSTALL", "VACUUM", "ANALYZE",
        "CLUSTER", "REINDEX", "COMMENT", "REFRESH", "IMPORT", "LOCK", "UNLOAD",
    ];
    let first = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_uppercase();
    WRITES.contains(&first.as_str()).then(|| refused(&first))
}
