//! Queries routed to Athena: moto (IAM enforced; it runs no SQL, so each test queues the
//! result Athena would produce) behind the recording proxy, the real gateway, tokio-postgres.
//! Asserted: the SQL, workgroup, output location and credentials the gateway sent, and what
//! the client received.
use std::time::Duration;

use lakegate_e2e::aws::{Moto, issued_key, reader_policy, role_arn};
use lakegate_e2e::{Gateway, Setup, quickstart, rows, sqlstate, wait_until};
use serde_json::Value;

const RESULTS: &str = "s3://lake-gtm-athena-results/lakegate/";

/// The quickstart's catalog with every table's files in moto's S3 (the local engine reads
/// them there when a query stays in the gateway).
fn s3_catalog() -> String {
    let text = std::fs::read_to_string(quickstart().join("catalog.yaml")).expect("catalog");
    text.replace("location: data/gtm/", "location: s3://lake-gtm/gtm/")
}

fn start(moto: &Moto, athena: &str) -> Gateway {
    Gateway::start_setup(Setup {
        policy: Some(reader_policy()),
        catalog: Some(s3_catalog()),
        extra_config: format!(
            "aws:\n  region: us-east-1\n  endpoint_url: {}\n  source_identity_attribute: email\n  roles:\n    \
             - {{ database: gtm, persona: steward, role_arn: \"{}\" }}\n    \
             - {{ persona: eu-reader, role_arn: \"{}\" }}\n    \
             - {{ persona: us-reader, role_arn: \"{}\" }}\n\
             athena:\n  workgroup: primary\n  output_location: {RESULTS}\n{athena}\
             routes:\n  - {{ database: gtm, engine: athena }}\n",
            moto.endpoint,
            role_arn("lakegate-gtm-steward"),
            role_arn("lakegate-gtm-eu-reader"),
            role_arn("lakegate-gtm-us-reader"),
        ),
        config_replacements: vec![(
            "    groups: [eu-sales]\n".into(),
            "    groups: [eu-sales]\n    attributes: { email: alice@example.com }\n".into(),
        )],
        env: moto.gateway_env(),
    })
}

fn cells(row: &[&str]) -> Vec<Option<String>> {
    row.iter()
        .map(|c| (*c != "NULL").then(|| c.to_string()))
        .collect()
}

fn started(moto: &Moto) -> Vec<Value> {
    moto.json_calls("AmazonAthena.StartQueryExecution")
}

/// The id moto gave the n-th query (from GetQueryExecution calls, which name it).
fn polled_ids(moto: &Moto) -> Vec<String> {
    let mut ids: Vec<String> = moto
        .json_calls("AmazonAthena.GetQueryExecution")
        .iter()
        .filter_map(|c| c["json"]["QueryExecutionId"].as_str().map(str::to_string))
        .collect();
    ids.dedup();
    ids
}

#[tokio::test]
async fn athena_runs_the_policy_applied_query_with_the_users_role() {
    let moto = Moto::start();
    let gateway = start(&moto, "");
    // 20,000 rows (more than one batch of the CSV reader), with NULLs.
    let mut result = vec![cells(&["hcp_id", "email"])];
    let email = |i: usize| {
        if i.is_multiple_of(7) {
            "NULL".to_string()
        } else {
            format!("{i:064x}")
        }
    };
    for i in 0..20_000 {
        result.push(cells(&[&i.to_string(), &email(i)]));
    }
    moto.queue_athena_result(&result);

    let alice = gateway.connect("alice").await;
    let got = rows(&alice, "SELECT hcp_id, email FROM hcp")
        .await
        .expect("query on Athena");
    let expected: Vec<String> = (0..20_000).map(|i| format!("{i}|{}", email(i))).collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "rows differ from Athena's result");
    assert_eq!(got[0], "0|NULL");

    // What Athena was sent: policy in the SQL (e-mail hashed, EU rows only, npi absent).
    let starts = started(&moto);
    assert_eq!(starts.len(), 1, "{starts:#?}");
    let start = &starts[0];
    let input = &start["json"];
    let sql = input["QueryString"].as_str().expect("QueryString");
    assert!(sql.contains("sha256(to_utf8("), "mask in the SQL: {sql}");
    assert!(
        sql.contains(r#""country" IN ('DE', 'FR', 'DK', 'CH')"#),
        "row filter in the SQL: {sql}"
    );
    assert!(sql.contains(r#""gtm"."hcp""#), "{sql}");
    assert!(!sql.contains("npi"), "{sql}");
    assert_eq!(input["WorkGroup"], "primary");
    assert_eq!(input["ResultConfiguration"]["OutputLocation"], RESULTS);
    assert_eq!(input["QueryExecutionContext"]["Catalog"], "AwsDataCatalog");
    assert_eq!(start["status"], 200);

    // Every Athena call and the result read were signed with alice's assumed role.
    let assumed = moto
        .assume_role_calls()
        .into_iter()
        .find(|c| c["form"]["RoleSessionName"] == "alice")
        .expect("alice's AssumeRole");
    assert_eq!(
        assumed["form"]["RoleArn"],
        role_arn("lakegate-gtm-eu-reader")
    );
    assert_eq!(assumed["form"]["SourceIdentity"], "alice@example.com");
    let key = issued_key(&assumed).expect("issued key");
    let athena_calls: Vec<Value> = moto
        .requests()
        .into_iter()
        .filter(|r| r["service"] == "athena")
        .collect();
    assert!(athena_calls.len() >= 2, "start and poll: {athena_calls:#?}");
    for call in &athena_calls {
        assert_eq!(call["access_key"], key.as_str(), "{call}");
    }
    let result_reads: Vec<Value> = moto
        .requests()
        .into_iter()
        .filter(|r| {
            r["method"] == "GET"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/lake-gtm-athena-results/lakegate/"))
        })
        .collect();
    assert!(
        !result_reads.is_empty(),
        "the result object is read from S3"
    );
    for read in &result_reads {
        assert_eq!(read["access_key"], key.as_str(), "{read}");
        assert_eq!(read["status"], 200, "{read}");
    }
    assert!(
        moto.json_calls("AmazonAthena.GetQueryResults").is_empty(),
        "results come from S3, not 1,000-row pages"
    );
}

#[tokio::test]
async fn athena_results_are_typed_by_the_plan_in_both_protocols() {
    let moto = Moto::start();
    let gateway = start(&moto, "");
    let carol = gateway.connect("carol").await;
    let header = ["sale_date", "units", "amount", "country", "product"];
    let data = [
        ["2024-01-15", "3", "12.50", "DE", "Cardiozan"],
        ["2024-01-16", "NULL", "NULL", "NULL", "NULL"],
        // (moto writes quotes inside values unescaped: none here)
        ["2024-02-01", "12", "1024.00", "US", "O'Neil, with a comma"],
    ];
    let mut result = vec![cells(&header)];
    result.extend(data.iter().map(|r| cells(r)));
    moto.queue_athena_result(&result);
    moto.queue_athena_result(&result);

    let sql = "SELECT sale_date, units, amount, country, product FROM sales LIMIT 3";
    let simple = rows(&carol, sql).await.expect("simple protocol");
    assert_eq!(
        simple,
        vec![
            "2024-01-15|3|12.50|DE|Cardiozan",
            "2024-01-16|NULL|NULL|NULL|NULL",
            "2024-02-01|12|1024.00|US|O'Neil, with a comma",
        ]
    );

    // The extended protocol describes the columns with the plan's types and sends binary.
    let typed = carol.query(sql, &[]).await.expect("extended protocol");
    assert_eq!(typed.len(), 3);
    let columns: Vec<String> = typed[0]
        .columns()
        .iter()
        .map(|c| c.type_().name().to_string())
        .collect();
    assert_eq!(columns, ["date", "int4", "numeric", "text", "text"]);
    assert_eq!(typed[0].get::<_, Option<i32>>(1), Some(3));
    assert_eq!(typed[1].get::<_, Option<i32>>(1), None);
    assert_eq!(typed[2].get::<_, Option<String>>(3).as_deref(), Some("US"));
    let starts = started(&moto);
    assert_eq!(starts.len(), 2);
    // carol (steward) reads with the steward role: no row filter, no mask.
    let sql_sent = starts[0]["json"]["QueryString"].as_str().expect("sql");
    assert!(sql_sent.contains("LIMIT 3"), "{sql_sent}");
    assert!(!sql_sent.contains("WHERE"), "{sql_sent}");

    // COPY TO STDOUT and a cursor take the same road to Athena.
    moto.queue_athena_result(&result);
    let copied = carol
        .copy_out(&format!("COPY ({sql}) TO STDOUT WITH (FORMAT csv)"))
        .await
        .expect("copy");
    let copied: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(copied)
        .await
        .expect("copy data");
    let text: String = copied
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(
        text,
        "2024-01-15,3,12.50,DE,Cardiozan\n2024-01-16,,,,\n2024-02-01,12,1024.00,US,\"O'Neil, with a comma\"\n"
    );
    moto.queue_athena_result(&result);
    let fetched = rows(
        &carol,
        &format!("BEGIN; DECLARE c CURSOR FOR {sql}; FETCH 2 FROM c; FETCH 5 FROM c; COMMIT"),
    )
    .await
    .expect("cursor");
    assert_eq!(fetched, simple);
    assert_eq!(started(&moto).len(), 4);
}

// multi-threaded: the test waits (blocking, bounded) while a query runs in another task
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_queries_report_progress_and_stop_when_cancelled_or_left() {
    let moto = Moto::start();
    let gateway = start(
        &moto,
        "  notice_after_seconds: 0\n  max_poll_interval_ms: 200\n",
    );

    // Four polls per state: QUEUED and RUNNING are seen, each reported as a NOTICE.
    moto.athena_polls_per_state(4);
    moto.queue_athena_result(&[cells(&["count"]), cells(&["42"])]);
    let (carol, mut notices) = gateway.connect_with_notices("carol").await;
    let got = rows(&carol, "SELECT count(*) FROM sales")
        .await
        .expect("count");
    assert_eq!(got, ["42"]);
    let seen = received(&mut notices);
    assert!(
        seen.iter().any(|n| n.contains("QUEUED")) && seen.iter().any(|n| n.contains("RUNNING")),
        "progress notices: {seen:?}"
    );
    assert!(
        seen.iter().all(|n| n.starts_with("Athena query ")),
        "{seen:?}"
    );
    // Another connection of carol's sends the same text (its plan is cached by now): the
    // progress of its query goes to it alone.
    moto.queue_athena_result(&[cells(&["count"]), cells(&["42"])]);
    let (other, mut other_notices) = gateway.connect_with_notices("carol").await;
    let got = rows(&other, "SELECT count(*) FROM sales")
        .await
        .expect("count again");
    assert_eq!(got, ["42"]);
    let theirs = received(&mut other_notices);
    assert!(
        theirs.iter().any(|n| n.contains("RUNNING")),
        "progress notices: {theirs:?}"
    );
    assert_eq!(
        received(&mut notices),
        Vec::<String>::new(),
        "the first connection hears nothing of the other's query"
    );

    // A query that never ends: the client cancels, the gateway stops it in Athena.
    moto.athena_polls_per_state(100_000);
    let cancel = carol.cancel_token();
    let tls = gateway.tls();
    let query = tokio::spawn(async move {
        let result = rows(&carol, "SELECT count(*) FROM hcp").await;
        (carol, result)
    });
    assert!(
        wait_until(Duration::from_secs(20), || polled_ids(&moto).len() == 3),
        "the third query was started and polled"
    );
    cancel.cancel_query(tls).await.expect("cancel request");
    let (carol, result) = query.await.expect("query task");
    assert_eq!(sqlstate(result), "57014");
    let id = polled_ids(&moto)[2].clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            moto.json_calls("AmazonAthena.StopQueryExecution")
                .iter()
                .any(|c| c["json"]["QueryExecutionId"] == id.as_str() && c["status"] == 200)
        }),
        "StopQueryExecution for {id}"
    );
    // The connection serves the next statement.
    assert_eq!(rows(&carol, "SELECT 1").await.expect("next"), ["1"]);

    // A client that goes away (psql killed) stops it too.
    let mut psql = std::process::Command::new("psql")
        .arg(gateway.conn_str("carol", "carol"))
        .args(["-X", "-c", "SELECT count(*) FROM sales_by_country"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql must be installed");
    assert!(
        wait_until(Duration::from_secs(20), || polled_ids(&moto).len() == 4),
        "psql's query was started and polled"
    );
    psql.kill().expect("kill psql");
    let _ = psql.wait();
    let id = polled_ids(&moto)[3].clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            moto.json_calls("AmazonAthena.StopQueryExecution")
                .iter()
                .any(|c| c["json"]["QueryExecutionId"] == id.as_str())
        }),
        "StopQueryExecution for the query of the client that left"
    );

    // The statement timeout stops it the same way.
    rows(&carol, "SET statement_timeout = 300")
        .await
        .expect("set");
    let result = rows(&carol, "SELECT count(*) FROM patients").await;
    assert_eq!(sqlstate(result), "57014");
    assert!(
        wait_until(Duration::from_secs(10), || {
            moto.json_calls("AmazonAthena.StopQueryExecution").len() == 3
        }),
        "a third StopQueryExecution"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn athena_refusals_and_failures_are_clear_errors() {
    let moto = Moto::start();
    let gateway = start(&moto, "");

    // bob's role (us-reader) has no Athena permission: IAM refuses, the client gets 42501.
    let bob = gateway.connect("bob").await;
    let error = bob
        .simple_query("SELECT full_name FROM hcp")
        .await
        .expect_err("bob's role may not use Athena");
    let db = error.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "42501");
    assert_eq!(
        db.message(),
        "AWS denied running this query on Athena with your role"
    );
    assert!(!db.message().contains("arn:"), "{}", db.message());

    // A query someone else stops in Athena (an admin, a workgroup limit) ends with 57014.
    moto.athena_polls_per_state(100_000);
    let carol = gateway.connect("carol").await;
    let query = tokio::spawn(async move { rows(&carol, "SELECT count(*) FROM hcp").await });
    assert!(
        wait_until(Duration::from_secs(20), || !polled_ids(&moto).is_empty()),
        "carol's query was started"
    );
    let id = polled_ids(&moto)[0].clone();
    moto.boto3(&format!(
        "client('athena').stop_query_execution(QueryExecutionId={id:?})"
    ));
    let result = query.await.expect("query task");
    let error = result.expect_err("stopped in Athena");
    let db = error.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "57014");
    assert!(
        db.message().contains("cancelled in Athena"),
        "{}",
        db.message()
    );
}

#[tokio::test]
async fn queries_athena_cannot_keep_policy_for_run_in_the_gateway() {
    let moto = Moto::start();
    let gateway = start(&moto, "");
    let alice = gateway.connect("alice").await;
    // A row filter (EU only) and a predicate of the query that can fail (division): Athena could
    // evaluate it on rows the filter removes, so the gateway's engine runs it, over S3 with
    // alice's role.
    let local = Gateway::start_with_policy(&reader_policy());
    let expected = rows(
        &local.connect("alice").await,
        "SELECT count(*) FROM sales WHERE 10 / units > 3",
    )
    .await
    .expect("local");
    let got = rows(&alice, "SELECT count(*) FROM sales WHERE 10 / units > 3")
        .await
        .expect("in the gateway");
    assert_eq!(got, expected);
    // A row filter and a column masked by an expression that could fail (the hash here, as
    // any mask but a constant counts): Athena could evaluate the query's predicate on the
    // mask before the row filter, so this runs in the gateway too.
    let masked = "SELECT count(*) FROM hcp WHERE email <> 'x' AND specialty <> 'x'";
    let expected = rows(&local.connect("alice").await, masked)
        .await
        .expect("local");
    let got = rows(&alice, masked).await.expect("in the gateway");
    assert_eq!(got, expected);
    // Catalog queries are the gateway's own.
    let tables = rows(
        &alice,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'gtm'",
    )
    .await
    .expect("catalog");
    assert_eq!(tables, ["3"]);
    assert!(started(&moto).is_empty(), "{:#?}", started(&moto));

    // A predicate that cannot fail goes to Athena, beside the row filter.
    moto.queue_athena_result(&[cells(&["count"]), cells(&["7"])]);
    let got = rows(&alice, "SELECT count(*) FROM sales WHERE units > 3")
        .await
        .expect("on Athena");
    assert_eq!(got, ["7"]);
    let sent = started(&moto);
    let sql = sent[0]["json"]["QueryString"].as_str().expect("sql");
    assert!(sql.contains(r#""units" > 3"#), "{sql}");
    assert!(
        sql.contains(r#""country" IN ('DE', 'FR', 'DK', 'CH')"#),
        "{sql}"
    );
}

/// The NOTICEs a connection has received so far.
fn received(notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
    std::iter::from_fn(|| notices.try_recv().ok()).collect()
}
