//! Power BI's built-in PostgreSQL connector is Npgsql 4.0. .NET cannot be installed here, so
//! this test replays what Npgsql 4.0 sends when it opens a connection, message by message:
//! SSLRequest, the startup parameters it sets, SCRAM-SHA-256, then its type-loading batch
//! (tests/clients/npgsql/type_loading_4.0.sql: the text of Npgsql 4.0's
//! `PostgresDatabaseInfo.GenerateTypesQuery` with ranges, enums and enum sort order on and
//! table composites off, as for a PostgreSQL 16 server) sent over the extended protocol as
//! Npgsql does for a multi-statement command: Parse/Bind/Describe/Execute per statement, one
//! Sync, all result columns requested as text (`AllResultTypesAreUnknown`). Npgsql then reads
//! every type row; an error or a missing core type would fail Power BI's connection.
use std::collections::HashMap;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use lakegate_e2e::raw::Conn;
use lakegate_e2e::{Gateway, workspace};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

/// Npgsql 4.0's connection open: its startup parameters (NpgsqlConnector.GenerateStartupMessage:
/// user, client_encoding, database), then SCRAM.
async fn open(gateway: &Gateway, user: &str) -> Conn {
    let mut conn = Conn::start(
        gateway,
        &[
            ("user", user),
            ("client_encoding", "UTF8"),
            ("database", "gtm"),
        ],
    )
    .await;
    Npgsql(&mut conn).authenticate(user).await;
    conn
}

/// Binds the unnamed statement, without values, to the unnamed portal.
fn bind_unnamed(result_format: i16, out: &mut BytesMut) -> Result<(), String> {
    bind_statement("", result_format, out)
}

/// Binds the unnamed portal to `statement`, without parameters.
fn bind_statement(statement: &str, result_format: i16, out: &mut BytesMut) -> Result<(), String> {
    frontend::bind(
        "",
        statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<()>(),
        |_, _: &mut BytesMut| Ok(postgres_protocol::IsNull::No),
        [result_format],
        out,
    )
    .map_err(|_| "bind".to_string())
}

struct Npgsql<'a>(&'a mut Conn);

impl Npgsql<'_> {
    async fn send(&mut self, bytes: BytesMut) {
        self.0.send(bytes).await
    }

    async fn next(&mut self) -> Message {
        self.0.next().await
    }

    async fn authenticate(&mut self, user: &str) {
        match self.next().await {
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<&str> = body.mechanisms().collect().expect("mechanisms");
                assert!(mechanisms.contains(&SCRAM_SHA_256), "{mechanisms:?}");
            }
            _ => panic!("expected AuthenticationSASL"),
        }
        let mut scram = ScramSha256::new(user.as_bytes(), ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).expect("sasl");
        self.send(out).await;
        match self.next().await {
            Message::AuthenticationSaslContinue(body) => scram.update(body.data()).expect("scram"),
            _ => panic!("expected AuthenticationSASLContinue"),
        }
        let mut out = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut out).expect("sasl");
        self.send(out).await;
        match self.next().await {
            Message::AuthenticationSaslFinal(body) => {
                scram.finish(body.data()).expect("server proof")
            }
            _ => panic!("expected AuthenticationSASLFinal"),
        }
        let mut parameters = HashMap::new();
        loop {
            match self.next().await {
                Message::AuthenticationOk | Message::BackendKeyData(_) => {}
                Message::ParameterStatus(p) => {
                    parameters.insert(
                        p.name().expect("name").to_string(),
                        p.value().expect("value").to_string(),
                    );
                }
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(_) => panic!("login failed"),
                _ => panic!("unexpected message during startup"),
            }
        }
        // Npgsql reads these at open: the version to pick its type query, integer_datetimes
        // for timestamps.
        assert!(
            parameters["server_version"].starts_with("16."),
            "{parameters:?}"
        );
        assert_eq!(parameters["integer_datetimes"], "on");
    }

    /// Runs statements as one extended-protocol batch with a single Sync and returns each
    /// statement's rows (text columns) or the error's SQLSTATE.
    async fn batch(
        &mut self,
        statements: &[&str],
        result_format: i16,
    ) -> Result<Vec<Vec<Vec<Option<Vec<u8>>>>>, String> {
        let mut out = BytesMut::new();
        for sql in statements {
            frontend::parse("", sql, std::iter::empty(), &mut out).expect("parse");
            bind_unnamed(result_format, &mut out)?;
            frontend::describe(b'P', "", &mut out).expect("describe");
            frontend::execute("", 0, &mut out).expect("execute");
        }
        frontend::sync(&mut out);
        self.send(out).await;
        let mut results = Vec::new();
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await {
                Message::ParseComplete | Message::BindComplete | Message::RowDescription(_) => {}
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let values: Vec<Option<Vec<u8>>> = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| buf[r].to_vec())))
                        .collect()
                        .expect("row");
                    rows.push(values);
                }
                Message::CommandComplete(_) => results.push(std::mem::take(&mut rows)),
                Message::ErrorResponse(body) => {
                    let code = body
                        .fields()
                        .find(|f| Ok(f.type_() == b'C'))
                        .expect("fields")
                        .map(|f| String::from_utf8_lossy(f.value_bytes()).into_owned());
                    error = code;
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(code) => Err(code),
            None => Ok(results),
        }
    }
}

fn text(value: &Option<Vec<u8>>) -> String {
    value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn npgsql_4_connection_open_and_type_loading() {
    let gateway = Gateway::start();
    let mut conn = open(&gateway, "alice").await;
    let mut conn = Npgsql(&mut conn);

    let script =
        std::fs::read_to_string(workspace().join("tests/clients/npgsql/type_loading_4.0.sql"))
            .expect("type loading query");
    // Npgsql splits a command into statements at semicolons outside quotes and comments.
    let statements: Vec<&str> = script
        .split(";\n")
        .map(|s| s.trim_end_matches(";\n").trim_end_matches(';'))
        .filter(|s| !s.trim().is_empty())
        .collect();
    assert_eq!(statements.len(), 3);
    let results = conn
        .batch(&statements, 0)
        .await
        .expect("type loading succeeds");
    assert_eq!(results.len(), 3);

    // nspname, typname, oid, typrelid, typbasetype, type, elemoid, ord
    let types: HashMap<String, (String, String, String)> = results[0]
        .iter()
        .map(|r| (text(&r[1]), (text(&r[2]), text(&r[5]), text(&r[6]))))
        .collect();
    for (name, oid) in [
        ("bool", "16"),
        ("int4", "23"),
        ("int8", "20"),
        ("text", "25"),
        ("numeric", "1700"),
        ("date", "1082"),
        ("timestamp", "1114"),
        ("varchar", "1043"),
    ] {
        let (got_oid, kind, _) = types
            .get(name)
            .unwrap_or_else(|| panic!("type {name} loaded"));
        assert_eq!((got_oid.as_str(), kind.as_str()), (oid, "b"), "{name}");
    }
    // Arrays are recognised by typreceive = array_recv and point at their element type.
    assert_eq!(types["_int4"].1, "a", "int4[] is an array");
    assert_eq!(types["_int4"].2, "23", "int4[] holds int4");
    assert_eq!(types["_text"].2, "25");
    // Arrays come last (ord 3), after every base type they refer to.
    let ords: Vec<String> = results[0].iter().map(|r| text(&r[7])).collect();
    let first_array = ords.iter().position(|o| o == "3").expect("arrays present");
    assert!(ords[first_array..].iter().all(|o| o == "3"), "ORDER BY ord");

    // A query as Npgsql sends it once types are known: binary results.
    let rows = conn
        .batch(
            &["SELECT country, count(*) FROM gtm.sales GROUP BY country ORDER BY country"],
            1,
        )
        .await
        .expect("query");
    let countries: Vec<String> = rows[0].iter().map(|r| text(&r[0])).collect();
    assert_eq!(
        countries,
        ["CH", "DE", "DK", "FR"],
        "alice sees EU sales only"
    );
    let total: i64 = rows[0]
        .iter()
        .map(|r| i64::from_be_bytes(r[1].as_deref().expect("count").try_into().expect("int8")))
        .sum();
    assert_eq!(total, 2283);

    // Errors arrive as PostgreSQL's: hidden tables do not exist.
    assert_eq!(
        conn.batch(&["SELECT * FROM gtm.patients"], 1)
            .await
            .err()
            .as_deref(),
        Some("42P01")
    );
    let mut out = BytesMut::new();
    frontend::terminate(&mut out);
    conn.send(out).await;
}

/// Which messages arrive, in order, until (and with) the first that `last` accepts; fails
/// instead of hanging when the gateway holds back what the client asked for.
async fn until(conn: &mut Conn, last: impl Fn(&Message) -> bool) -> Vec<&'static str> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(20), conn.next())
            .await
            .expect("the gateway answers without waiting for more from the client");
        seen.push(match &message {
            Message::ParseComplete => "ParseComplete",
            Message::BindComplete => "BindComplete",
            Message::DataRow(_) => "DataRow",
            Message::PortalSuspended => "PortalSuspended",
            Message::CommandComplete(_) => "CommandComplete",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::ErrorResponse(_) => "ErrorResponse",
            Message::CloseComplete => "CloseComplete",
            _ => "other",
        });
        if last(&message) {
            return seen;
        }
    }
}

/// Parse's, Bind's and Close's answers wait for Sync as well, and Flush sends them; an error
/// sends what waited before it. An answer that Flush left held fails this on a timeout.
#[tokio::test]
async fn flush_sends_what_parse_bind_and_close_left_before_any_sync() {
    let gateway = Gateway::start();
    let mut conn = open(&gateway, "carol").await;

    let mut out = BytesMut::new();
    frontend::parse("", "SELECT 1", std::iter::empty(), &mut out).expect("parse");
    bind_unnamed(0, &mut out).expect("a bind without values");
    frontend::flush(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::BindComplete)).await;
    assert_eq!(seen, ["ParseComplete", "BindComplete"]);

    let mut out = BytesMut::new();
    frontend::close(b'P', "", &mut out).expect("close");
    frontend::flush(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::CloseComplete)).await;
    assert_eq!(seen, ["CloseComplete"]);

    // A held ParseComplete goes out with the error of the Bind after it.
    let mut out = BytesMut::new();
    frontend::parse("held", "SELECT 1", std::iter::empty(), &mut out).expect("parse");
    bind_statement("no_such_statement", 0, &mut out).expect("a bind of a statement never parsed");
    frontend::sync(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(seen, ["ParseComplete", "ErrorResponse", "ReadyForQuery"]);
}

/// An Execute's answer waits for Sync, as PostgreSQL's does, but a client may ask for what
/// is pending with Flush before any Sync: the rows of a suspended portal, or a whole result.
/// An answer that Flush left held fails this on a timeout.
#[tokio::test]
async fn flush_sends_what_an_execute_left_before_any_sync() {
    let gateway = Gateway::start();
    let mut conn = open(&gateway, "carol").await;
    let bind = |out: &mut BytesMut| bind_unnamed(0, out).expect("a bind without values");

    let mut out = BytesMut::new();
    frontend::parse(
        "",
        "SELECT hcp_id FROM gtm.hcp ORDER BY hcp_id LIMIT 3",
        std::iter::empty(),
        &mut out,
    )
    .expect("parse");
    bind(&mut out);
    frontend::execute("", 2, &mut out).expect("execute");
    frontend::flush(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::PortalSuspended)).await;
    assert_eq!(
        seen,
        [
            "ParseComplete",
            "BindComplete",
            "DataRow",
            "DataRow",
            "PortalSuspended"
        ]
    );

    let mut out = BytesMut::new();
    frontend::execute("", 0, &mut out).expect("execute");
    frontend::flush(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::CommandComplete(_))).await;
    assert_eq!(seen, ["DataRow", "CommandComplete"]);

    let mut out = BytesMut::new();
    frontend::sync(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(seen, ["ReadyForQuery"]);

    // The same query in one go, closed by Sync alone.
    let mut out = BytesMut::new();
    bind(&mut out);
    frontend::execute("", 0, &mut out).expect("execute");
    frontend::sync(&mut out);
    conn.send(out).await;
    let seen = until(&mut conn, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(
        seen,
        [
            "BindComplete",
            "DataRow",
            "DataRow",
            "DataRow",
            "CommandComplete",
            "ReadyForQuery"
        ]
    );
}
