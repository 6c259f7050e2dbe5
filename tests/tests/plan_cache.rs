//! The plan cache: a query sent again is not planned again. These check that a reused plan
//! never answers for another user, another setting, another moment or another transaction
//! state, over both protocols.
use lakegate_e2e::{Gateway, rows, sqlstate};
use tokio_postgres::Client;

/// The query's rows through the extended protocol (Parse/Bind/Execute, no parameters).
async fn prepared_rows(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| {
            let value: Option<String> = row.get(0);
            value.unwrap_or_else(|| "NULL".into())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_text_keeps_each_users_policy() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await; // eu-sales: email hashed, EU rows only
    let bob = gateway.connect("bob").await; // us-analyst: email nullified
    let carol = gateway.connect("carol").await; // steward: everything
    let german = rows(
        &carol,
        "SELECT min(hcp_id) FROM hcp WHERE country = 'DE' AND email IS NOT NULL",
    )
    .await
    .expect("a German HCP")
    .remove(0);
    let sql = format!("SELECT email FROM hcp WHERE hcp_id = {german}");
    let raw = rows(&carol, &sql).await.expect("carol");
    assert!(raw[0].contains('@'), "carol reads the address: {raw:?}");
    for round in 0..3 {
        for simple in [true, false] {
            let read = |client| {
                let sql = sql.clone();
                async move {
                    if simple {
                        rows(client, &sql).await.expect("query")
                    } else {
                        prepared_rows(client, &sql).await
                    }
                }
            };
            let (a, b, c) = (read(&alice).await, read(&bob).await, read(&carol).await);
            let how = format!("round {round}, simple protocol: {simple}");
            assert_eq!(c, raw, "{how}");
            assert_eq!(b, vec!["NULL"], "{how}");
            assert_eq!(a.len(), 1, "{how}");
            assert!(
                !a[0].contains('@') && a[0].len() == 64,
                "{how}: alice reads a hash, not {a:?}"
            );
        }
    }
    // Rows as well as columns: alice's row filter still applies to a text carol sent first.
    let us = "SELECT count(*) FROM hcp WHERE country = 'US'";
    let carols: i64 = rows(&carol, us).await.expect("carol")[0]
        .parse()
        .expect("count");
    assert!(carols > 0);
    for _ in 0..2 {
        assert_eq!(rows(&alice, us).await.expect("alice"), vec!["0"]);
        assert_eq!(prepared_count(&alice, us).await, 0);
    }
}

async fn prepared_count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clock_is_read_at_each_run() {
    let gateway = Gateway::start();
    let carol = gateway.connect("carol").await;
    for sql in [
        "SELECT CAST(now() AS VARCHAR)",
        "SELECT CAST(count(*) AS VARCHAR) || ' ' || CAST(now() AS VARCHAR) FROM hcp",
    ] {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(rows(&carol, sql).await.expect("simple"));
            seen.extend(prepared_rows(&carol, sql).await);
        }
        let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), seen.len(), "{sql}: a fresh time each run");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transaction_refuses_a_repeated_query() {
    let gateway = Gateway::start();
    let carol = gateway.connect("carol").await;
    let sql = "SELECT count(*) FROM hcp";
    let count = rows(&carol, sql).await.expect("first run");
    // A text of a shape run before, with a value of its own, is refused as well: its plan is
    // kept with the value taken out, and it is run without being parsed.
    let shape = |id: u32| format!("SELECT full_name FROM hcp WHERE hcp_id = {id}");
    for id in [1, 2] {
        rows(&carol, &shape(id)).await.expect("the shape runs");
    }
    let third = rows(&carol, &shape(3)).await.expect("a third value");
    rows(&carol, "BEGIN").await.expect("BEGIN");
    assert_eq!(
        sqlstate(rows(&carol, "SELECT * FROM no_such_table").await),
        "42P01"
    );
    assert_eq!(sqlstate(rows(&carol, sql).await), "25P01");
    assert_eq!(sqlstate(rows(&carol, &shape(4)).await), "25P01");
    rows(&carol, "ROLLBACK").await.expect("ROLLBACK");
    assert_eq!(rows(&carol, sql).await.expect("after ROLLBACK"), count);
    assert_eq!(
        rows(&carol, &shape(3)).await.expect("after ROLLBACK"),
        third
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_prepared_plan_serves_every_value_under_policy() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await; // eu-sales: rows of DE, FR, DK, CH only
    let carol = gateway.connect("carol").await; // steward: every row
    let sql = "SELECT count(*) FROM hcp WHERE country = $1";
    for round in 0..2 {
        for country in ["DE", "US", "FR"] {
            let literal = format!("SELECT count(*) FROM hcp WHERE country = '{country}'");
            let all: i64 = rows(&carol, &literal).await.expect("carol")[0]
                .parse()
                .expect("count");
            assert!(all > 0, "{country}");
            let carols = count(&carol, sql, country).await.expect("carol");
            let alices = count(&alice, sql, country).await.expect("alice");
            let how = format!("round {round}, {country}");
            assert_eq!(carols, all, "{how}");
            assert_eq!(alices, if country == "US" { 0 } else { all }, "{how}");
        }
    }
    // A parameter in a predicate that fails on the rows policy hides never runs on them: it
    // stays above the row filter, as a literal does.
    let probe = "SELECT count(*) FROM hcp WHERE 1 / (CASE WHEN country = $1 THEN 0 ELSE 1 END) = 1";
    let visible: i64 = rows(&alice, "SELECT count(*) FROM hcp")
        .await
        .expect("alice")[0]
        .parse()
        .expect("count");
    for _ in 0..2 {
        let n = count(&alice, probe, "US")
            .await
            .expect("US rows are not evaluated for alice");
        assert_eq!(n, visible);
    }
    let failed = count(&carol, probe, "US")
        .await
        .map(|n| vec![n.to_string()]);
    assert_eq!(sqlstate(failed), "22012");
}

/// A count through the extended protocol, with one text parameter.
async fn count(client: &Client, sql: &str, value: &str) -> Result<i64, tokio_postgres::Error> {
    client.query_one(sql, &[&value]).await.map(|row| row.get(0))
}

/// A query's rows (text columns only), or its SQLSTATE when it fails: through the simple
/// protocol, or the extended one without parameters (as Npgsql, and so Power BI, sends a
/// text with its values written in).
async fn outcome(client: &Client, sql: &str, simple: bool) -> String {
    let result = if simple {
        rows(client, sql).await
    } else {
        client.query(sql, &[]).await.map(|rows| {
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| row.get::<_, Option<String>>(i).unwrap_or("NULL".into()))
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        })
    };
    match result {
        Ok(rows) => rows.join("\n"),
        Err(e) => format!("ERROR {}", sqlstate(Err(e))),
    }
}

/// Values written into a query's text are taken out, and the query sent again with other
/// values reuses the plan made with placeholders. Every answer must be the one the text gets
/// when planned as written: the reference puts the value in parentheses, which keeps it in the
/// text. Values of another type than the column's (a string for a number, a number out of an
/// `int` column's range) must not be bound into a plan typed for the column.
#[tokio::test(flavor = "multi_thread")]
async fn queries_with_other_values_answer_as_written() {
    let gateway = Gateway::start();
    let alice = gateway.connect("alice").await; // eu-sales: EU rows, email hashed
    let carol = gateway.connect("carol").await; // steward: everything
    let cases: &[(&str, &[&str])] = &[
        (
            "SELECT CAST(count(*) AS TEXT), min(email) FROM hcp WHERE hcp_id = {}",
            &["1", "8", "9", "'8'", "99999999999", "2001", "'x'"],
        ),
        (
            "SELECT CAST(count(*) AS TEXT), min(email) FROM hcp \
             WHERE country IN ({}, 'US') AND hcp_id < 500",
            &["'DE'", "'FR'", "'XX'", "7", "'O''Brien'", "''"],
        ),
        (
            // Comments and line breaks are no part of a shape.
            "SELECT CAST(count(*) AS TEXT) FROM hcp -- one HCP\n WHERE hcp_id = {} /* by id */",
            &["2", "3", "0002", "2.0"],
        ),
        (
            "SELECT CAST(count(*) AS TEXT), CAST(sum(amount) AS TEXT) FROM sales WHERE units >= {}",
            &["1", "5", "99999999999", "'3'", "0"],
        ),
        (
            "SELECT h.country, CAST(count(*) AS TEXT) FROM hcp h \
             JOIN sales s ON s.hcp_id = h.hcp_id \
             WHERE h.hcp_id BETWEEN 1 AND {} GROUP BY h.country ORDER BY h.country",
            &["50", "200", "3"],
        ),
    ];
    let mut answered = 0;
    for round in 0..2 {
        // The extended protocol plans each shape first in round 0, the simple one in round 1.
        for simple in [round == 1, round == 0] {
            for (template, values) in cases {
                for value in *values {
                    let sql = template.replace("{}", value);
                    let written = template.replace("{}", &format!("({value})"));
                    for (user, client) in [("alice", &alice), ("carol", &carol)] {
                        let got = outcome(client, &sql, simple).await;
                        let want = outcome(client, &written, true).await;
                        let how = format!("round {round}, simple protocol: {simple}, {user}");
                        assert_eq!(got, want, "{how}: {sql}");
                        answered += usize::from(!got.starts_with("ERROR"));
                    }
                }
            }
        }
    }
    assert!(answered > 80, "most cases return rows: {answered}");
    // alice's row filter holds for every value: a US id is hidden, an EU one is not, however
    // many times the shape was planned before.
    let us = rows(&carol, "SELECT min(hcp_id) FROM hcp WHERE country = 'US'")
        .await
        .expect("a US HCP")
        .remove(0);
    let eu = rows(&carol, "SELECT min(hcp_id) FROM hcp WHERE country = 'DE'")
        .await
        .expect("a German HCP")
        .remove(0);
    for _ in 0..2 {
        for (id, visible) in [(&us, "0"), (&eu, "1")] {
            let sql = format!("SELECT count(*) FROM hcp WHERE hcp_id = {id}");
            assert_eq!(rows(&alice, &sql).await.expect("alice"), vec![visible]);
            assert_eq!(prepared_count(&alice, &sql).await.to_string(), visible);
        }
    }
}
