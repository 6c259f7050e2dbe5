//! Issue 6, item 4: the cost policy adds to planning a BI-sized query, with 10, 100 and 1,000
//! rules, against the same query planned by DataFusion over the same tables without policy
//! (the peer, measured in the same run), and by the gateway's optimizer rules without policy.
//! A session's policy views seal their enforced plans for the columns a query names once
//! (`plan_bi_query/with_policy`: a later query naming them; `plan_bi_query_first_in_session`:
//! the first, against the peers' first query in a new session). `cargo bench -p lakegate-policy`.
//!
//! A BI-sized query here: three tables of 30 columns joined, filtered, grouped and ordered, as a
//! dashboard tile sends it. The user's rule is the last of the N (first match scans them all);
//! it filters rows and masks two columns of each table.
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemTable;
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use lakegate_policy::{
    ColumnMeta, Decision, Identity, PolicySet, PolicySource, PolicyView, TableMeta, compile_access,
};

const TABLES: [&str; 3] = ["sales", "hcp", "products"];
const COLUMNS: usize = 30;

fn columns() -> Vec<String> {
    let mut names = vec![
        "id".to_string(),
        "country".to_string(),
        "amount".to_string(),
    ];
    names.extend((names.len()..COLUMNS).map(|i| format!("c{i}")));
    names
}

fn raw() -> Arc<MemTable> {
    let fields: Vec<Field> = columns()
        .iter()
        .map(|c| match c.as_str() {
            "id" => Field::new(c, DataType::Int64, true),
            "amount" => Field::new(c, DataType::Decimal128(12, 2), true),
            _ => Field::new(c, DataType::Utf8, true),
        })
        .collect();
    Arc::new(MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]]).expect("table"))
}

/// N rules: N - 1 for other groups and tables, then the one that grants this user access.
fn policy(rules: usize) -> PolicySet {
    let mut text = String::from("rules:\n");
    for i in 0..rules - 1 {
        text.push_str(&format!(
            "  - name: other-{i}\n    principals: {{ groups: [team-{i}] }}\n    tables: [\"domain{i}.*\"]\n    row_filter: \"country = 'X{i}'\"\n"
        ));
    }
    text.push_str(
        "  - name: eu-analysts\n    principals: { groups: [eu-sales] }\n    tables: [\"gtm.*\"]\n    row_filter: \"country IN ('DE', 'FR', 'DK', 'CH')\"\n    columns:\n      - { name: c3, mask: hash }\n      - { name: c4, mask: { show_last: 4 } }\n",
    );
    PolicySet::load(&[PolicySource {
        file: "bench.yaml".into(),
        text,
    }])
    .expect("policy")
}

/// A session planning with policy as the gateway's do (`with_policy`).
fn context() -> SessionContext {
    SessionContext::new_with_state(
        lakegate_policy::with_policy(SessionStateBuilder::new().with_default_features()).build(),
    )
}

fn meta(table: &str) -> TableMeta {
    TableMeta {
        database: "gtm".into(),
        table: table.into(),
        tags: Default::default(),
        columns: columns()
            .into_iter()
            .map(|name| ColumnMeta {
                name,
                tags: Default::default(),
            })
            .collect(),
    }
}

/// A session whose tables are policy views for one user, as the gateway builds it.
fn policed(policy: &PolicySet) -> SessionContext {
    let ctx = context();
    let identity = Identity::new("ann", vec!["eu-sales".to_string()]);
    for table in TABLES {
        let meta = meta(table);
        let Decision::Allowed(access) = policy.decide(&identity, &meta) else {
            panic!("the last rule grants {table}");
        };
        let compiled = compile_access(
            &access,
            &identity,
            TableReference::bare(table),
            raw(),
            &ctx.state(),
        )
        .expect("compiles");
        ctx.register_table(
            table,
            Arc::new(PolicyView::new(
                format!("gtm.{table}"),
                access.rule,
                compiled,
            )),
        )
        .expect("register");
    }
    ctx
}

fn plain() -> SessionContext {
    with_raw_tables(SessionContext::new())
}

/// The gateway's optimizer rules (`optimizer_rules`, which take a pass off DataFusion's for
/// some plans) without policy: what the barriers themselves cost, apart from the rules' order.
fn plain_with_gateway_rules() -> SessionContext {
    with_raw_tables(SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(lakegate_policy::optimizer_rules())
            .build(),
    ))
}

fn with_raw_tables(ctx: SessionContext) -> SessionContext {
    for table in TABLES {
        ctx.register_table(table, raw()).expect("register");
    }
    ctx
}

const QUERY: &str = "SELECT s.country, p.c5 AS brand, h.c6 AS specialty, count(*) AS n, sum(s.amount) AS net \
    FROM sales s JOIN hcp h ON h.id = s.id JOIN products p ON p.id = s.id \
    WHERE s.c7 LIKE 'A%' AND h.c8 <> 'x' GROUP BY s.country, p.c5, h.c6 ORDER BY net DESC LIMIT 100";

/// SQL to an analyzed and optimized logical plan, its policy barriers opened: what the gateway
/// does before execution.
async fn plan(ctx: &SessionContext) {
    let state = ctx.state();
    let plan = state.create_logical_plan(QUERY).await.expect("plan");
    let optimized = state.optimize(&plan).expect("optimize");
    lakegate_policy::unseal(optimized, state.config_options()).expect("unseal");
}

/// QUERY with its value taken out, as the gateway takes values out of a text
/// (`literal_params`): the shape a BI tile sends again with the user's next filter value.
const GENERIC: &str = "SELECT s.country, p.c5 AS brand, h.c6 AS specialty, count(*) AS n, sum(s.amount) AS net \
    FROM sales s JOIN hcp h ON h.id = s.id JOIN products p ON p.id = s.id \
    WHERE s.c7 LIKE 'A%' AND h.c8 <> $1 GROUP BY s.country, p.c5, h.c6 ORDER BY net DESC LIMIT 100";

/// GENERIC analyzed and optimized once (policy applied), as the gateway's plan cache keeps it.
async fn generic(ctx: &SessionContext) -> LogicalPlan {
    let state = ctx.state();
    let plan = state.create_logical_plan(GENERIC).await.expect("plan");
    state.optimize(&plan).expect("optimize")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("plan_bi_query");
    let peer = plain();
    group.bench_function("datafusion_without_policy", |b| {
        b.to_async(&runtime).iter(|| plan(&peer))
    });
    let own_rules = plain_with_gateway_rules();
    group.bench_function("gateway_rules_without_policy", |b| {
        b.to_async(&runtime).iter(|| plan(&own_rules))
    });
    for rules in [10, 100, 1000] {
        let ctx = policed(&policy(rules));
        group.bench_with_input(BenchmarkId::new("with_policy", rules), &ctx, |b, ctx| {
            b.to_async(&runtime).iter(|| plan(ctx))
        });
    }
    group.finish();

    // The same, as a session's first query: its policy views seal their enforced plans for the
    // columns it names (`with_policy` above measures later queries, which find them sealed).
    // The peers plan it as their session's first query too. Each session is made before the
    // clock starts and dropped after it stops.
    let mut group = c.benchmark_group("plan_bi_query_first_in_session");
    let thousand = policy(1000);
    let sessions: [(&str, &dyn Fn() -> SessionContext); 3] = [
        ("datafusion_without_policy", &plain),
        ("gateway_rules_without_policy", &plain_with_gateway_rules),
        ("with_policy/1000", &|| policed(&thousand)),
    ];
    for (name, session) in sessions {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_batched(
                session,
                |ctx| async move {
                    plan(&ctx).await;
                    ctx
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    // A query whose shape was planned before: its next values are bound into the kept plan,
    // policy already on it (what the gateway does for a repeated BI tile).
    let mut group = c.benchmark_group("bind_bi_query_values");
    let params = ParamValues::List(vec![ScalarValue::Utf8(Some("y".into())).into()]);
    let kept = runtime.block_on(generic(&peer));
    group.bench_function("datafusion_without_policy", |b| {
        b.iter(|| kept.clone().replace_params_with_values(&params))
    });
    for rules in [10, 100, 1000] {
        let kept = runtime.block_on(generic(&policed(&policy(rules))));
        group.bench_with_input(BenchmarkId::new("with_policy", rules), &kept, |b, kept| {
            b.iter(|| kept.clone().replace_params_with_values(&params))
        });
    }
    group.finish();

    // Resolution happens once per table and session (at login), not per query.
    let mut group = c.benchmark_group("decide_one_table");
    let identity = Identity::new("ann", vec!["eu-sales".to_string()]);
    let meta = meta("sales");
    for rules in [10, 100, 1000] {
        let policy = policy(rules);
        group.bench_with_input(BenchmarkId::from_parameter(rules), &policy, |b, policy| {
            b.iter(|| policy.decide(&identity, &meta))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
