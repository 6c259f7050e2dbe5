//! The barrier in the physical plan (`PolicyBarrierExec`): it passes the enforced plan's
//! statistics up, so joins build from their smaller side, and lets DataFusion's dynamic filters
//! (a hash join's build-side keys, a TopK's threshold) down to the scan, on unmasked columns
//! only. The query's own predicates never pass it.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::TableReference;
use datafusion::common::config::ConfigOptions;
use datafusion::logical_expr::Operator;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, DynamicFilterPhysicalExpr, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::displayable;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter_pushdown::{FilterPushdownPhase, PushedDown};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use lakegate_policy::{
    Decision, Identity, PolicyBarrierExec, PolicySet, PolicySource, PolicyView, compile_access,
};

mod common;
use common::table_meta;

const POLICY: &str = r#"
rules:
  - name: own-docs
    principals: { users: ["*"] }
    tables: ["db.docs"]
    row_filter: "owner = ${user.name}"
    columns:
      - { name: secret, mask: { sql: "upper(secret)" } }
  - name: all-tags
    principals: { users: ["*"] }
    tables: ["db.tags"]
"#;

fn docs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("secret", DataType::Utf8, false),
    ]))
}

/// 1,000 docs in a Parquet file (a scan that takes dynamic filters): odd ids are ann's, even
/// ones bob's; secret `s<id>`.
fn write_docs(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("temp dir");
    let ids: Vec<i64> = (1..=1000).collect();
    let batch = RecordBatch::try_new(
        docs_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| if i % 2 == 1 { "ann" } else { "bob" }),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("s{i}")),
            )),
        ],
    )
    .expect("batch");
    let path = dir.join("docs.parquet");
    let file = std::fs::File::create(&path).expect("file");
    let mut writer = ArrowWriter::try_new(file, docs_schema(), None).expect("writer");
    writer.write(&batch).expect("writes");
    writer.close().expect("closes");
    path
}

/// Three tags, in memory: ids 1-3, labels `s1`, `s2`, `S3`.
fn tags() -> Arc<dyn TableProvider> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec!["s1", "s2", "S3"])),
        ],
    )
    .expect("batch");
    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("memtable"))
}

/// `user`'s session over `docs` (Parquet in `dir`) and `tags`, both through policy views.
async fn session(user: &str, dir: &Path) -> SessionContext {
    let ctx = common::session();
    let path = write_docs(dir);
    ctx.register_parquet(
        "raw_docs",
        path.to_string_lossy().as_ref(),
        ParquetReadOptions::default(),
    )
    .await
    .expect("registers");
    let raw_docs = ctx.table_provider("raw_docs").await.expect("raw docs");
    let policy = PolicySet::load(&[PolicySource {
        file: "p.yaml".into(),
        text: POLICY.into(),
    }])
    .expect("policy");
    let identity = Identity::new(user, vec![]);
    for (table, columns, raw) in [
        ("docs", &["id", "owner", "secret"][..], raw_docs),
        ("tags", &["id", "label"][..], tags()),
    ] {
        let Decision::Allowed(access) = policy.decide(&identity, &table_meta("db", table, columns))
        else {
            panic!("{table} allowed")
        };
        let compiled = compile_access(
            &access,
            &identity,
            TableReference::bare(table),
            raw,
            &ctx.state(),
        )
        .expect("compiles");
        ctx.register_table(
            table,
            Arc::new(PolicyView::new(
                format!("db.{table}"),
                access.rule,
                compiled,
            )),
        )
        .expect("registers");
    }
    ctx
}

async fn physical_plan(ctx: &SessionContext, sql: &str) -> String {
    let plan = ctx
        .sql(sql)
        .await
        .expect("plans")
        .create_physical_plan()
        .await
        .expect("physical plan");
    displayable(plan.as_ref()).indent(true).to_string()
}

async fn rows(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx
        .sql(sql)
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    pretty_format_batches(&batches)
        .expect("formats")
        .to_string()
}

/// The line of `plan` that scans the docs file.
fn docs_scan(plan: &str) -> &str {
    plan.lines()
        .find(|line| line.contains("docs.parquet"))
        .unwrap_or_else(|| panic!("no docs scan in\n{plan}"))
}

/// A folder of the test's own, removed when the test ends, failed or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(format!("lakegate-{name}-{}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[tokio::test]
async fn a_join_builds_from_the_smaller_side_and_filters_the_scan_on_an_unmasked_key() {
    let dir = TempDir::new("barrier-join");
    let ctx = session("ann", &dir.0).await;
    // docs first: only the barrier's statistics can tell the planner that tags is smaller.
    let sql = "SELECT d.id, t.label FROM docs d JOIN tags t ON d.id = t.id ORDER BY d.id";
    let plan = physical_plan(&ctx, sql).await;
    let join = plan.find("HashJoinExec").expect("a hash join");
    let tags_at = plan[join..]
        .find("table=db.tags")
        .expect("tags under the join");
    let docs_at = plan[join..]
        .find("table=db.docs")
        .expect("docs under the join");
    assert!(
        tags_at < docs_at,
        "the join builds from docs, the larger side:\n{plan}"
    );
    assert!(
        docs_scan(&plan).contains("DynamicFilter"),
        "the join's keys do not reach the docs scan:\n{plan}"
    );
    // ann's docs only: 2 is bob's.
    let expected = "\
+----+-------+
| id | label |
+----+-------+
| 1  | s1    |
| 3  | S3    |
+----+-------+";
    assert_eq!(rows(&ctx, sql).await, expected);
}

#[tokio::test]
async fn a_join_on_a_masked_column_keeps_its_keys_above_the_barrier() {
    let dir = TempDir::new("barrier-masked-join");
    let ctx = session("ann", &dir.0).await;
    // The mask is a data owner's SQL: it never runs on the rows the row filter hides.
    let sql = "SELECT d.id FROM docs d JOIN tags t ON d.secret = t.label";
    let plan = physical_plan(&ctx, sql).await;
    assert!(
        !docs_scan(&plan).contains("DynamicFilter"),
        "a filter on the masked column reached the scan:\n{plan}"
    );
    // upper(secret) of ann's docs: S3 matches, s1 (lower case) does not.
    let expected = "\
+----+
| id |
+----+
| 3  |
+----+";
    assert_eq!(rows(&ctx, sql).await, expected);
}

#[tokio::test]
async fn a_topk_threshold_reaches_the_scan_on_an_unmasked_column_only() {
    let dir = TempDir::new("barrier-topk");
    let ctx = session("bob", &dir.0).await;
    let by_id = "SELECT id FROM docs ORDER BY id DESC LIMIT 2";
    let plan = physical_plan(&ctx, by_id).await;
    assert!(
        docs_scan(&plan).contains("DynamicFilter"),
        "the TopK threshold does not reach the docs scan:\n{plan}"
    );
    let expected = "\
+------+
| id   |
+------+
| 1000 |
| 998  |
+------+";
    assert_eq!(rows(&ctx, by_id).await, expected);
    let by_secret = "SELECT secret FROM docs ORDER BY secret LIMIT 1";
    let plan = physical_plan(&ctx, by_secret).await;
    assert!(
        !docs_scan(&plan).contains("DynamicFilter"),
        "a threshold on the masked column reached the scan:\n{plan}"
    );
}

/// The barrier itself, asked directly: which parent filters may pass to its input.
fn pushed(phase: FilterPushdownPhase, filters: Vec<Arc<dyn PhysicalExpr>>) -> Vec<bool> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("secret", DataType::Utf8, false),
    ]));
    let barrier = PolicyBarrierExec::new(
        "db.docs".into(),
        Arc::new(EmptyExec::new(schema)),
        HashSet::from(["id".to_string()]),
    );
    let description = barrier
        .gather_filters_for_pushdown(phase, filters, &ConfigOptions::default())
        .expect("describes");
    let [child] = description.parent_filters().try_into().expect("one child");
    child
        .into_iter()
        .map(|f| matches!(f.discriminant, PushedDown::Yes))
        .collect()
}

fn dynamic(column: &str, index: usize) -> Arc<dyn PhysicalExpr> {
    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(column, index));
    Arc::new(DynamicFilterPhysicalExpr::new(vec![column], lit(true)))
}

fn greater_than(column: &str, index: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(
        Arc::new(Column::new(column, index)),
        Operator::Gt,
        lit(1i64),
    ))
}

#[test]
fn only_dynamic_filters_on_unmasked_columns_pass_the_barrier() {
    use FilterPushdownPhase::{Post, Pre};
    assert_eq!(pushed(Post, vec![dynamic("id", 0)]), [true]);
    assert_eq!(pushed(Post, vec![dynamic("secret", 1)]), [false]);
    assert_eq!(
        pushed(Post, vec![dynamic("id", 0), dynamic("secret", 1)]),
        [true, false]
    );
    // The query's predicates (the Pre phase) stay above, even on unmasked columns.
    assert_eq!(pushed(Pre, vec![greater_than("id", 0)]), [false]);
    assert_eq!(pushed(Pre, vec![dynamic("id", 0)]), [false]);
    // A filter that is not dynamic, in the Post phase, keeps every filter above.
    assert_eq!(
        pushed(Post, vec![dynamic("id", 0), greater_than("id", 0)]),
        [false, false]
    );
}

#[tokio::test]
async fn no_answer_is_taken_from_the_barriers_estimates() {
    let dir = TempDir::new("barrier-statistics");
    let ctx = session("ann", &dir.0).await;
    // tags has no row filter and exact sizes; still the aggregate runs over the rows.
    let sql = "SELECT count(*) AS n FROM tags";
    let plan = physical_plan(&ctx, sql).await;
    assert!(
        plan.contains("AggregateExec"),
        "answered from statistics:\n{plan}"
    );
    let expected = "\
+---+
| n |
+---+
| 3 |
+---+";
    assert_eq!(rows(&ctx, sql).await, expected);
    // The file's metadata counts bob's docs too; ann's count is hers.
    let expected = "\
+-----+-----+
| n   | top |
+-----+-----+
| 500 | 999 |
+-----+-----+";
    let mine = "SELECT count(*) AS n, max(id) AS top FROM docs";
    assert_eq!(rows(&ctx, mine).await, expected);
}
