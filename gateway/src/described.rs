//! A prepared statement's parameter types and column names, worked out once per statement
//! rather than at every Describe and Execute.
//!
//! A driver that prepares a statement once and runs it many times (JDBC, Npgsql, asyncpg,
//! `pgbench -M prepared`) sends Bind, Describe, Execute and Sync for each run. Each run asked
//! the plan for its parameters' types (a walk of the whole plan) and made the columns'
//! PostgreSQL names twice (a new schema at Describe and again at Execute): about 6% of a
//! prepared lookup's CPU. A connection now keeps them for the statement it ran last, known by
//! the statement itself: a weak reference keeps its allocation, so an ended statement is never
//! taken for a new one made at the same address. The names an Execute gives its rows are kept
//! for the plan they were made from (the same plan object each run where the plan cache serves
//! it), so they are always those of the plan that runs.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::LogicalPlan;
use pgwire::api::stmt::StoredStatement;

use crate::column_names;
use crate::handler::PreparedStatement;

type Stored = StoredStatement<PreparedStatement>;

/// One connection's last statement run, described (a session extension).
#[derive(Default)]
pub struct Described(Mutex<Option<Last>>);

struct Last {
    statement: Weak<Stored>,
    parameters: Arc<[Option<DataType>]>,
    /// The columns of the statement's plan as prepared, with PostgreSQL's names.
    columns: SchemaRef,
    /// The columns of the plan it ran with last, and that plan's schema.
    ran: Option<(DFSchemaRef, SchemaRef)>,
}

impl Last {
    fn of(stored: &Arc<Stored>) -> Last {
        let (parameters, columns) = match &stored.statement.1 {
            Some((statement, plan)) => (
                parameter_types(plan),
                column_names::postgres_schema(statement, plan.schema().as_arrow()),
            ),
            None => (Vec::new(), Schema::empty()),
        };
        Last {
            statement: Arc::downgrade(stored),
            parameters: parameters.into(),
            columns: Arc::new(columns),
            ran: None,
        }
    }
}

impl Described {
    /// `stored`'s parameter types, in `$1, $2, ...` order (None where none could be told).
    pub fn parameters(&self, stored: &Arc<Stored>) -> Arc<[Option<DataType>]> {
        self.with(stored, |last| last.parameters.clone())
    }

    /// `stored`'s columns as prepared, with PostgreSQL's names: what Describe answers.
    pub fn columns(&self, stored: &Arc<Stored>) -> SchemaRef {
        self.with(stored, |last| last.columns.clone())
    }

    /// The columns of `plan`, which runs `stored` now, with PostgreSQL's names.
    pub fn columns_ran(&self, stored: &Arc<Stored>, plan: &LogicalPlan) -> SchemaRef {
        self.with(stored, |last| {
            if let Some((schema, columns)) = &last.ran
                && Arc::ptr_eq(schema, plan.schema())
            {
                return columns.clone();
            }
            let columns = Arc::new(match &stored.statement.1 {
                Some((statement, _)) => {
                    column_names::postgres_schema(statement, plan.schema().as_arrow())
                }
                None => plan.schema().as_arrow().clone(),
            });
            last.ran = Some((plan.schema().clone(), columns.clone()));
            columns
        })
    }

    fn with<T>(&self, stored: &Arc<Stored>, f: impl FnOnce(&mut Last) -> T) -> T {
        // Nothing panics while holding it; were it poisoned, its content is still whole.
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = match &mut *last {
            Some(last) if Weak::ptr_eq(&last.statement, &Arc::downgrade(stored)) => last,
            other => other.insert(Last::of(stored)),
        };
        f(last)
    }
}

/// Parameter types in `$1, $2, ...` order (None where DataFusion could not infer one).
pub fn parameter_types(plan: &LogicalPlan) -> Vec<Option<DataType>> {
    let types: HashMap<String, Option<DataType>> = plan.get_parameter_types().unwrap_or_default();
    let mut entries: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches('$').parse().unwrap_or(usize::MAX), v))
        .collect();
    entries.sort_by_key(|(i, _)| *i);
    entries.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use datafusion::sql::parser::DFParser;

    async fn stored(sql: &str) -> Arc<Stored> {
        let ctx = SessionContext::new();
        let statement = match DFParser::parse_sql(sql).expect("parses").pop_front() {
            Some(datafusion::sql::parser::Statement::Statement(statement)) => *statement,
            other => panic!("one statement expected, got {other:?}"),
        };
        let plan = ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement.clone(),
            )))
            .await
            .expect("plans");
        Arc::new(StoredStatement::new(
            String::new(),
            (sql.to_string(), Some((statement, plan))),
            vec![],
        ))
    }

    fn names(schema: &Schema) -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    }

    #[tokio::test]
    async fn each_statement_is_described_by_its_own_plan() {
        let described = Described::default();
        let rows = "(VALUES (CAST(1 AS bigint), 'a', CAST(2 AS int))) t(id, name, n)";
        let first = stored(&format!(
            "SELECT id AS total, name AS label FROM {rows} WHERE id = $1"
        ))
        .await;
        let second = stored(&format!(
            "SELECT name, n, 3 AS three FROM {rows} WHERE name = $1 AND n > $2"
        ))
        .await;
        assert_eq!(&*described.parameters(&first), &[Some(DataType::Int64)]);
        assert_eq!(names(&described.columns(&first)), ["total", "label"]);
        assert_eq!(
            &*described.parameters(&second),
            &[Some(DataType::Utf8), Some(DataType::Int32)]
        );
        assert_eq!(names(&described.columns(&second)), ["name", "n", "three"]);
        // back to the first: its own again, not the last one kept
        assert_eq!(names(&described.columns(&first)), ["total", "label"]);
    }

    #[tokio::test]
    async fn a_statement_made_where_an_ended_one_was_is_described_anew() {
        let described = Described::default();
        for (sql, columns) in [
            ("SELECT 1 AS one", vec!["one"]),
            ("SELECT 1 AS a, 2 AS b", vec!["a", "b"]),
            ("SELECT 'z' AS zed", vec!["zed"]),
        ] {
            // each statement ends before the next is made, which may reuse its memory
            let statement = stored(sql).await;
            assert_eq!(names(&described.columns(&statement)), columns, "{sql}");
        }
    }

    #[tokio::test]
    async fn rows_are_named_from_the_plan_that_runs() {
        let described = Described::default();
        let statement = stored("SELECT 1 AS one, 2 AS two").await;
        let Some((_, prepared)) = &statement.statement.1 else {
            panic!("a plan");
        };
        let ran = described.columns_ran(&statement, prepared);
        assert_eq!(names(&ran), ["one", "two"]);
        assert!(Arc::ptr_eq(
            &ran,
            &described.columns_ran(&statement, prepared)
        ));
        // another plan of it (as a fresh planning makes): named anew, typed as that plan
        let other = stored("SELECT 'a' AS x, 2.5 AS y").await;
        let Some((_, other_plan)) = &other.statement.1 else {
            panic!("a plan");
        };
        let renamed = described.columns_ran(&statement, other_plan);
        let Some((prepared_statement, _)) = &statement.statement.1 else {
            panic!("a statement");
        };
        let expected =
            column_names::postgres_schema(prepared_statement, other_plan.schema().as_arrow());
        assert_eq!(*renamed, expected);
        let types: Vec<&DataType> = renamed.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(types, [&DataType::Utf8, &DataType::Float64]);
    }
}
