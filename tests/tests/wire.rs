//! The wire: authentication, TLS, extended protocol, cursors, cancel, and robustness, with
//! tokio-postgres against the real gateway.
use std::io::Write;
use std::time::Duration;

use lakegate_e2e::{Gateway, rows, sqlstate, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn login_errors_do_not_help_an_attacker() {
    let gateway = Gateway::start();
    let wrong = gateway
        .try_connect("alice", "not-alice")
        .await
        .map(|_| ())
        .expect_err("wrong password refused");
    let unknown = gateway
        .try_connect("mallory", "mallory")
        .await
        .map(|_| ())
        .expect_err("unknown user refused");
    let code = |e: &tokio_postgres::Error| e.code().map(|c| c.code().to_string());
    assert_eq!(code(&wrong).as_deref(), Some("28P01"));
    assert_eq!(
        code(&unknown),
        code(&wrong),
        "unknown user fails exactly like a wrong password"
    );

    // a password of 2000 characters is just a wrong password
    let long = "x".repeat(2000);
    let e = gateway
        .try_connect("alice", &long)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(code(&e).as_deref(), Some("28P01"));

    // unknown database
    let conn = format!(
        "host=127.0.0.1 port={} dbname=other user=alice password=alice sslmode=require",
        gateway.port
    );
    let e = tokio_postgres::connect(&conn, gateway.tls())
        .await
        .map(|_| ())
        .expect_err("unknown db refused");
    assert_eq!(code(&e).as_deref(), Some("3D000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_connections_are_refused() {
    let gateway = Gateway::start();
    let conn = format!(
        "host=127.0.0.1 port={} dbname=gtm user=alice password=alice sslmode=disable",
        gateway.port
    );
    let e = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map(|_| ())
        .expect_err("plaintext refused");
    assert_eq!(e.code().map(|c| c.code()), Some("28000"));
}

/// The SQLSTATE of a statement that must fail to prepare.
async fn prepare_error(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let e = client.prepare(sql).await.map(|_| ()).expect_err(sql);
    e.code().map(|c| c.code().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_bind_parameters_under_policy() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    let carol = gateway.connect("carol").await;
    let sql = "SELECT count(*) FROM hcp WHERE country = $1";
    let a = alice.prepare(sql).await.expect("prepare as alice");
    let c = carol.prepare(sql).await.expect("prepare as carol");
    for _ in 0..3 {
        let us_alice: i64 = alice
            .query_one(&a, &[&"US"])
            .await
            .expect("alice US")
            .get(0);
        let us_carol: i64 = carol
            .query_one(&c, &[&"US"])
            .await
            .expect("carol US")
            .get(0);
        let de_alice: i64 = alice
            .query_one(&a, &[&"DE"])
            .await
            .expect("alice DE")
            .get(0);
        let de_carol: i64 = carol
            .query_one(&c, &[&"DE"])
            .await
            .expect("carol DE")
            .get(0);
        assert_eq!(us_alice, 0, "alice never sees US rows");
        assert!(us_carol > 0);
        assert_eq!(de_alice, de_carol, "alice sees all DE rows");
    }
    // typed values in binary format: decimal sums and dates
    let row = alice
        .query_one(
            "SELECT count(*), min(sale_date), max(units) FROM sales WHERE units >= $1",
            &[&5i32],
        )
        .await
        .expect("typed query");
    let n: i64 = row.get(0);
    assert!(n > 0);
    // the extended protocol goes through the same policy: a denied column is unknown
    assert_eq!(
        prepare_error(&alice, "SELECT npi FROM hcp")
            .await
            .as_deref(),
        Some("42703")
    );
    assert_eq!(
        prepare_error(&alice, "SELECT * FROM patients")
            .await
            .as_deref(),
        Some("42P01")
    );
    assert_eq!(
        prepare_error(&alice, "COPY (SELECT 1) TO '/tmp/x'")
            .await
            .as_deref(),
        Some("42501")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cursors_fetch_in_batches_under_policy() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    alice
        .batch_execute(
            "BEGIN; DECLARE c CURSOR FOR SELECT hcp_id, country FROM hcp ORDER BY hcp_id",
        )
        .await
        .expect("declare");
    let mut seen = 0;
    loop {
        let batch = rows(&alice, "FETCH 300 FROM c").await.expect("fetch");
        assert!(batch.len() <= 300);
        for row in &batch {
            let country = row.split('|').nth(1).unwrap_or_default();
            assert!(
                ["DE", "FR", "DK", "CH"].contains(&country),
                "cursor leaked {row}"
            );
        }
        seen += batch.len();
        if batch.is_empty() {
            break;
        }
    }
    alice.batch_execute("CLOSE c; COMMIT").await.expect("close");
    let total = rows(&alice, "SELECT count(*) FROM hcp")
        .await
        .expect("count");
    assert_eq!(total, vec![seen.to_string()]);
    // a cursor over a hidden table fails like the table does not exist
    let e = alice
        .batch_execute("DECLARE d CURSOR FOR SELECT * FROM patients")
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_query() {
    let gateway = Gateway::start();
    let carol = gateway.connect("carol").await;
    let token = carol.cancel_token();
    let tls = gateway.tls();
    // Cancel requests until the query ends (a request that arrives between queries is a no-op).
    let canceller = tokio::spawn(async move {
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            token
                .cancel_query(tls.clone())
                .await
                .expect("cancel request sent");
        }
    });
    // billions of rows: runs for minutes unless cancelled
    let result = rows(&carol, "SELECT count(*) FROM sales a, sales b, hcp c").await;
    canceller.abort();
    assert_eq!(sqlstate(result), "57014");
    // the connection stays usable
    assert_eq!(
        rows(&carol, "SELECT 1").await.expect("after cancel"),
        vec!["1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_the_policy_but_no_files() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    let plan = rows(
        &alice,
        "EXPLAIN SELECT email FROM hcp WHERE specialty = 'oncology'",
    )
    .await
    .expect("explain")
    .join("\n");
    assert!(plan.contains("LakegatePolicy: table=gtm.hcp"), "{plan}");
    assert!(
        plan.contains("sha256"),
        "masks are visible as expressions: {plan}"
    );
    assert!(
        !plan.contains(".parquet") && !plan.contains("/data/"),
        "no file paths: {plan}"
    );
    assert!(
        !plan.contains("physical_plan"),
        "no physical plan (file groups, statistics): {plan}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_identity_and_session_settings() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    let version = rows(&alice, "SHOW server_version").await.expect("show");
    assert!(version[0].starts_with("16.6 (Lakegate "), "{version:?}");
    let v = rows(&alice, "SELECT version()").await.expect("version()");
    assert!(v[0].starts_with("PostgreSQL 16.6"), "{v:?}");
    assert_eq!(
        rows(&alice, "SELECT current_user").await.expect("user"),
        vec!["alice"]
    );
    assert_eq!(
        rows(&alice, "SELECT current_database()").await.expect("db"),
        vec!["gtm"]
    );
    alice
        .batch_execute(
            "SET application_name = 'tests'; SET extra_float_digits = 3; BEGIN; ROLLBACK",
        )
        .await
        .expect("session settings");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_closes_only_that_connection() {
    let mut gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    // garbage instead of a startup message, then an abrupt close
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).expect("raw connect");
    raw.write_all(&[0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef, 0xff])
        .expect("write garbage");
    drop(raw);
    // a huge length prefix
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).expect("raw connect");
    raw.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .expect("write");
    drop(raw);
    assert!(wait_until(Duration::from_secs(2), || gateway.is_running()));
    assert_eq!(
        rows(&alice, "SELECT count(*) FROM hcp WHERE country = 'DE'")
            .await
            .expect("still serving"),
        vec!["250"]
    );
    let again = gateway.connect("bob").await;
    assert_eq!(
        rows(&again, "SELECT DISTINCT country FROM sales")
            .await
            .expect("new session"),
        vec!["US"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_stdout_runs_under_policy() {
    use futures::TryStreamExt;
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    let copy = |sql: &'static str| {
        let client = &alice;
        async move {
            let stream = client.copy_out(sql).await?;
            let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
            Ok::<String, tokio_postgres::Error>(
                chunks.iter().map(|c| String::from_utf8_lossy(c)).collect(),
            )
        }
    };
    let text = copy("COPY hcp TO STDOUT").await.expect("copy hcp");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1000, "only alice's rows");
    for line in &lines {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 5, "npi is not copied: {line}");
        assert!(["DE", "FR", "DK", "CH"].contains(&cols[3]), "{line}");
        assert!(!cols[2].contains('@'), "email stays hashed: {line}");
    }
    let csv = copy("COPY (SELECT country, count(*) AS n FROM sales GROUP BY country ORDER BY country) TO STDOUT WITH (FORMAT csv, HEADER)")
        .await
        .expect("copy csv");
    assert_eq!(csv.lines().next(), Some("country,n"));
    assert_eq!(csv.lines().count(), 5);
    let e = copy("COPY patients TO STDOUT")
        .await
        .expect_err("hidden table");
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"));
    let e = copy("COPY hcp (npi) TO STDOUT")
        .await
        .expect_err("hidden column");
    assert_eq!(e.code().map(|c| c.code()), Some("42703"));
}

/// A gateway out of file descriptors refuses new connections for a while; it does not stop.
/// The limit is lowered on the running process (util-linux `prlimit`) to a few connections'
/// worth of descriptors beyond what it holds.
#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_file_descriptors_only_delays_new_connections() {
    let mut gateway = Gateway::start();
    let first = gateway.connect("alice").await;
    rows(&first, "SELECT count(*) FROM hcp")
        .await
        .expect("query");
    let pid = gateway.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the gateway's descriptors")
        .count();
    // each connection holds two: its socket and the duplicate peer.rs polls
    let limit = open + 4;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit");
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..8 {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            gateway.try_connect("alice", "alice"),
        )
        .await;
        match attempt {
            Ok(Ok(client)) => held.push(client),
            _ => {
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused,
        "{} connections within {limit} descriptors",
        held.len()
    );
    assert!(
        gateway.is_running(),
        "the gateway stopped at its descriptor limit"
    );
    drop(held);
    // descriptors free again: new clients are served
    let mut served = None;
    for _ in 0..50 {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            gateway.try_connect("alice", "alice"),
        )
        .await;
        if let Ok(Ok(client)) = attempt {
            served = Some(client);
            break;
        }
    }
    let again = served.expect("a new connection once descriptors are free");
    assert_eq!(
        rows(&again, "SELECT count(*) FROM hcp")
            .await
            .expect("query"),
        vec!["1000"]
    );
    assert_eq!(
        rows(&first, "SELECT count(*) FROM hcp")
            .await
            .expect("query"),
        vec!["1000"]
    );
}

/// COPY's text escaping and CSV quoting, byte for byte as PostgreSQL writes the same rows:
/// control characters, backslashes, delimiters, quotes, empty strings and NULL markers.
/// (Whole floats are left out: pgwire writes 2 as `2.0` and 1e20 as `1e20`, in COPY and in
/// query results alike, where PostgreSQL writes `2` and `1e+20`.)
#[tokio::test(flavor = "multi_thread")]
async fn copy_output_is_postgresqls_byte_for_byte() {
    use futures::TryStreamExt;
    let postgres = lakegate_e2e::postgres::Postgres::start();
    let (pg, connection) = tokio_postgres::connect(&postgres.conn_str(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    async fn copy(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
        let chunks: Vec<bytes::Bytes> = match client.copy_out(sql).await {
            Ok(stream) => stream.try_collect().await.map_err(|e| sqlstate_of(&e))?,
            Err(e) => return Err(sqlstate_of(&e)),
        };
        Ok(chunks.iter().map(|c| String::from_utf8_lossy(c)).collect())
    }
    fn sqlstate_of(e: &tokio_postgres::Error) -> String {
        e.code()
            .map(|c| c.code().to_string())
            .unwrap_or(e.to_string())
    }
    let values = "SELECT * FROM (VALUES \
        (1, 'plain', true, CAST(1.5 AS DOUBLE PRECISION), DATE '2024-01-02'), \
        (2, 'tab' || chr(9) || 'and' || chr(10) || 'newline' || chr(13), false, NULL, NULL), \
        (3, 'back\\slash \\N and \\.', NULL, -0.25, DATE '1999-12-31'), \
        (4, 'comma, \"quote\" | pipe; semi', true, 0.001, NULL), \
        (5, '', NULL, 0, NULL), \
        (6, 'NA', false, 2.5, NULL), \
        (7, '\\.', true, 3.75, NULL), \
        (8, NULL, NULL, NULL, NULL), \
        (9, 'bell' || chr(7) || chr(8) || chr(11) || chr(12), true, 4.125, NULL)\
        ) AS t(id, s, b, f, d) ORDER BY id";
    for (options, accepted) in [
        ("", true),
        (" WITH (DELIMITER '|', NULL 'nil')", true),
        (" WITH (FORMAT csv)", true),
        (" WITH (FORMAT csv, HEADER)", true),
        (" WITH (FORMAT csv, DELIMITER ';', NULL 'NA')", true),
        (" WITH (HEADER)", true),
        (" WITH (FORMAT text, HEADER, NULL '')", true),
        // refused by both, for the same reason
        (" WITH (DELIMITER 'a')", false),
        (" WITH (FORMAT csv, DELIMITER '\"')", false),
        (" WITH (NULL E'a\\n')", false),
    ] {
        let sql = format!("COPY ({values}) TO STDOUT{options}");
        let expected = copy(&pg, &sql).await;
        match &expected {
            Ok(text) => assert!(
                accepted && text.lines().count() >= 9,
                "PostgreSQL: {text:?}"
            ),
            Err(code) => assert!(!accepted, "PostgreSQL refused {options}: {code}"),
        }
        assert_eq!(copy(&alice, &sql).await, expected, "{options}");
        // alone on its line, `\.` would end the data
        let sql = format!("COPY (SELECT s FROM ({values}) AS v) TO STDOUT{options}");
        assert_eq!(copy(&alice, &sql).await, copy(&pg, &sql).await, "{options}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_view_needs_its_tables_too() {
    // eu-sales may read the view but not the table under it: views run with the rights of the
    // user who queries them, so the view is hidden like a table the user may not read.
    let gateway = Gateway::start_with_policy(
        "rules:\n  - name: view-only\n    principals: { groups: [eu-sales] }\n    tables: [gtm.sales_by_country]\n",
    );
    let alice = gateway.connect("alice").await;
    assert_eq!(
        sqlstate(rows(&alice, "SELECT * FROM sales_by_country").await),
        "42P01"
    );
    assert_eq!(sqlstate(rows(&alice, "SELECT * FROM sales").await), "42P01");
    assert_eq!(
        rows(
            &alice,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'gtm'"
        )
        .await
        .expect("catalog"),
        vec!["0"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_timeout_stops_long_queries() {
    let gateway = Gateway::start();
    let carol = gateway.connect("carol").await;
    carol
        .batch_execute("SET statement_timeout = '300ms'")
        .await
        .expect("set");
    let started = std::time::Instant::now();
    let result = carol
        .simple_query("SELECT count(*) FROM sales a, sales b, hcp c")
        .await;
    let error = result.map(|_| ()).expect_err("times out");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"));
    assert!(
        error
            .as_db_error()
            .is_some_and(|e| e.message().contains("statement timeout")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the timeout ended the query"
    );
    carol
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("reset");
    assert_eq!(
        rows(&carol, "SELECT count(*) FROM patients")
            .await
            .expect("no limit"),
        vec!["3000"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hidden_objects_read_exactly_like_missing_ones() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    let message = |r: Result<Vec<String>, tokio_postgres::Error>| {
        let e = r.expect_err("must fail");
        let db = e.as_db_error().expect("server error");
        (db.code().code().to_string(), db.message().to_string())
    };
    let hidden = message(rows(&alice, "SELECT * FROM patients").await);
    let missing = message(rows(&alice, "SELECT * FROM patientz").await);
    assert_eq!(hidden.0, "42P01");
    assert_eq!(
        hidden,
        (missing.0.clone(), missing.1.replace("patientz", "patients"))
    );

    let hidden = message(rows(&alice, "SELECT npi FROM hcp").await);
    let missing = message(rows(&alice, "SELECT npx FROM hcp").await);
    assert_eq!(hidden.0, "42703");
    assert_eq!(hidden, (missing.0.clone(), missing.1.replace("npx", "npi")));
}

#[tokio::test(flavor = "multi_thread")]
async fn output_columns_are_named_like_postgres() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    let sql = "SELECT count(*), min(h.country), h.hcp_id, 1 + 1, sum(units) AS total FROM hcp h JOIN sales s ON h.hcp_id = s.hcp_id GROUP BY h.hcp_id";
    // extended protocol: the names come from Describe
    let statement = alice.prepare(sql).await.expect("prepare");
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["count", "min", "hcp_id", "?column?", "total"]);
    // simple protocol: the names come with the rows
    let messages = alice.simple_query(sql).await.expect("query");
    let columns = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::RowDescription(columns) => Some(columns.clone()),
        _ => None,
    });
    let columns = columns.expect("row description");
    let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["count", "min", "hcp_id", "?column?", "total"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cursors_are_described_with_their_columns() {
    // Drivers (psycopg's named cursors) describe a FETCH or the cursor portal before reading
    // rows, and decode rows by that description: it must carry the cursor's columns.
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    alice
        .batch_execute(
            "BEGIN; DECLARE c CURSOR FOR SELECT hcp_id, country FROM hcp ORDER BY hcp_id",
        )
        .await
        .expect("declare");
    let fetch = alice
        .prepare("FETCH 5 FROM c")
        .await
        .expect("prepare fetch");
    let names: Vec<&str> = fetch.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["hcp_id", "country"]);
    let rows = alice.query(&fetch, &[]).await.expect("fetch");
    assert_eq!(rows.len(), 5);
    let first: i64 = rows[0].get(0);
    let country: &str = rows[0].get(1);
    assert_eq!(first, 1);
    assert!(["DE", "FR", "DK", "CH"].contains(&country));
    // DECLARE in the extended protocol too, then SAVEPOINTs as SQLAlchemy sends them
    alice
        .execute(
            "DECLARE d CURSOR FOR SELECT country FROM sales WHERE units > 10",
            &[],
        )
        .await
        .expect("declare (extended)");
    let rows = alice
        .query("FETCH ALL FROM d", &[])
        .await
        .expect("fetch all");
    assert!(
        rows.iter()
            .all(|r| ["DE", "FR", "DK", "CH"].contains(&r.get::<_, &str>(0)))
    );
    alice
        .batch_execute(
            "SAVEPOINT s1; RELEASE SAVEPOINT s1; SAVEPOINT s2; ROLLBACK TO SAVEPOINT s2; COMMIT",
        )
        .await
        .expect("savepoints in a read-only transaction");
}

/// CPU time the gateway used over a short window.
async fn cpu_used(gateway: &Gateway, window: Duration) -> Duration {
    let before = gateway.cpu_time();
    tokio::time::sleep(window).await;
    gateway.cpu_time().saturating_sub(before)
}

#[tokio::test]
async fn a_query_stops_when_its_client_disconnects() {
    let gateway = Gateway::start();
    let (client, connection) =
        tokio_postgres::connect(&gateway.conn_str("carol", "carol"), gateway.tls())
            .await
            .expect("connect");
    let connection = tokio::spawn(connection);
    // runs for minutes; nobody cancels it: the client just goes away (a driver timeout that
    // drops the socket, a closed laptop)
    let query = tokio::spawn(async move {
        let _ = client
            .simple_query("SELECT count(*) FROM sales a, sales b, hcp c")
            .await;
    });
    let window = Duration::from_millis(500);
    let mut busy = false;
    for _ in 0..40 {
        // a fifth of a core: other tests share this machine's two cores
        if cpu_used(&gateway, window).await > window / 5 {
            busy = true;
            break;
        }
    }
    assert!(
        busy,
        "the query keeps the gateway busy while the client is connected"
    );
    query.abort();
    connection.abort();
    let mut idle = false;
    for _ in 0..40 {
        if cpu_used(&gateway, window).await < window / 20 {
            idle = true;
            break;
        }
    }
    assert!(idle, "the gateway stops the query once its client is gone");
    let other = gateway.connect("alice").await;
    assert_eq!(
        rows(&other, "SELECT 1").await.expect("still serving"),
        vec!["1"]
    );
}

#[tokio::test]
async fn large_results_stream_through_without_being_held() {
    let gateway = Gateway::start();
    let carol = gateway.connect("carol").await;
    // warm up: the session and its catalog are built on first use
    assert_eq!(
        rows(&carol, "SELECT count(*) FROM sales")
            .await
            .expect("count"),
        vec!["4500"]
    );
    let before = gateway.peak_rss();
    // 4.5 million rows, about 200 MB as text on the wire
    let sql = "SELECT s.hcp_id, s.product, s.amount, s.country, g.v FROM sales s CROSS JOIN generate_series(1, 1000) AS g(v)";
    let stream = carol
        .query_raw(sql, std::iter::empty::<i32>())
        .await
        .expect("query");
    futures::pin_mut!(stream);
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(row) = futures::StreamExt::next(&mut stream).await {
        let row = row.expect("row");
        let product: &str = row.get(1);
        let country: &str = row.get(3);
        bytes += (product.len() + country.len() + 24) as u64;
        count += 1;
    }
    assert_eq!(count, 4_500_000);
    let growth = gateway.peak_rss().saturating_sub(before);
    assert!(
        growth < bytes / 4,
        "the gateway's peak memory grew by {growth} bytes while streaming {bytes} bytes of rows"
    );
}

#[tokio::test]
async fn search_path_decides_where_unqualified_names_resolve() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await;
    assert_eq!(
        rows(&alice, "SELECT count(*) FROM hcp")
            .await
            .expect("default schema"),
        vec!["1000"]
    );
    // alice's connections share her catalog, not her settings
    let other = gateway.connect("alice").await;
    rows(&alice, "SET search_path TO public")
        .await
        .expect("SET");
    assert_eq!(
        sqlstate(rows(&alice, "SELECT count(*) FROM hcp").await),
        "42P01"
    );
    let later = gateway.connect("alice").await;
    for connection in [&other, &later] {
        assert_eq!(
            rows(connection, "SELECT count(*) FROM hcp")
                .await
                .expect("other connections keep the default schema"),
            vec!["1000"]
        );
    }
    assert_eq!(
        rows(&alice, "SHOW search_path").await.expect("SHOW"),
        vec!["public"]
    );
    assert_eq!(
        rows(&alice, "SELECT current_schema()")
            .await
            .expect("schema"),
        vec!["public"]
    );
    rows(&alice, "SET search_path = \"$user\", gtm")
        .await
        .expect("SET");
    assert_eq!(
        rows(&alice, "SELECT count(*) FROM hcp")
            .await
            .expect("gtm again"),
        vec!["1000"]
    );
    assert_eq!(
        rows(&alice, "SELECT current_schema()")
            .await
            .expect("schema"),
        vec!["gtm"]
    );
    // qualified names never depended on it, and policy is the same either way
    assert_eq!(
        sqlstate(rows(&alice, "SELECT * FROM gtm.patients").await),
        "42P01"
    );
}
