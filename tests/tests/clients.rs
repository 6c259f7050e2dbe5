//! The client compatibility matrix: each real driver runs the same scenario against a gateway
//! started here (see tests/clients/: the scenario, its oracle, and one program per client).
//! The runtimes are installed by `.ci/run`; a missing one fails the test with what to install.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lakegate_e2e::{Gateway, quickstart, workspace};

fn clients() -> PathBuf {
    workspace().join("tests/clients")
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// The Python of the clients' virtual environment (`.ci/run` creates it).
fn python() -> PathBuf {
    let python = std::env::var("LAKEGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home().join(".cache/lakegate-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run .ci/run (or scripts/setup-clients) to install the Python clients",
        python.display()
    );
    python
}

fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: {what} (scripts/setup-clients installs it)"
    );
}

fn run(gateway: &Gateway, mut command: Command) -> String {
    let data = quickstart().join("data");
    let expected = gateway.dir.join("expected.json");
    if !expected.exists() {
        let out = Command::new(python())
            .arg(clients().join("python/expected.py"))
            .env("LAKEGATE_PORT", gateway.port.to_string())
            .env("LAKEGATE_DATA", &data)
            .output()
            .expect("run expected.py");
        assert!(
            out.status.success(),
            "expected.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&expected, &out.stdout).expect("write expected.json");
    }
    let out: Output = command
        .env("LAKEGATE_PORT", gateway.port.to_string())
        .env("LAKEGATE_DATA", &data)
        .env("LAKEGATE_EXPECTED", &expected)
        .output()
        .expect("start the client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("ok: "),
        "client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn python_client(script: &str) -> String {
    let gateway = Gateway::start();
    let mut command = Command::new(python());
    command.arg(clients().join("python").join(script));
    run(&gateway, command)
}

#[test]
fn psycopg3() {
    python_client("psycopg3_client.py");
}

#[test]
fn psycopg2() {
    python_client("psycopg2_client.py");
}

#[test]
fn sqlalchemy_and_pandas() {
    python_client("sqlalchemy_pandas_client.py");
}

#[test]
fn asyncpg() {
    python_client("asyncpg_client.py");
}

const PSQLODBC: &str = "/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so";

#[test]
fn psqlodbc_through_pyodbc() {
    require(
        PSQLODBC,
        "psqlODBC (apt-get install odbc-postgresql unixodbc)",
    );
    python_client("pyodbc_client.py");
}

#[test]
fn node_postgres() {
    let modules = clients().join("node/node_modules/pg");
    assert!(
        modules.exists(),
        "{} is missing: run `npm ci` in tests/clients/node (scripts/setup-clients does)",
        modules.display()
    );
    let gateway = Gateway::start();
    let mut command = Command::new("node");
    command.arg(clients().join("node/pg_client.mjs"));
    run(&gateway, command);
}

const PGJDBC: &str = "/usr/share/java/postgresql.jar";

#[test]
fn pgjdbc() {
    require(PGJDBC, "pgjdbc (apt-get install libpostgresql-jdbc-java)");
    let gateway = Gateway::start();
    let mut command = Command::new("java");
    command
        .args(["-cp", PGJDBC])
        .arg(clients().join("java/JdbcClient.java"));
    run(&gateway, command);
}

/// unixODBC's isql through psqlODBC, as a DSN in an odbc.ini of the test's own (Debian's
/// default driver entry turns on CommLog, which writes a file per connection).
#[test]
fn isql_through_psqlodbc() {
    require(
        PSQLODBC,
        "psqlODBC (apt-get install odbc-postgresql unixodbc)",
    );
    let gateway = Gateway::start();
    let ini = gateway.dir.join("odbc");
    std::fs::create_dir_all(&ini).expect("odbc dir");
    std::fs::write(
        ini.join("odbcinst.ini"),
        format!("[Lakegate PostgreSQL]\nDriver={PSQLODBC}\nCommLog=0\nDebug=0\n"),
    )
    .expect("odbcinst.ini");
    let mut dsns = String::new();
    for fetch in [0, 1] {
        dsns.push_str(&format!(
            "[lake{fetch}]\nDriver=Lakegate PostgreSQL\nServername=127.0.0.1\nPort={}\nDatabase=gtm\nSSLmode=require\nUseDeclareFetch={fetch}\nFetch=100\n\n",
            gateway.port
        ));
    }
    std::fs::write(ini.join("odbc.ini"), dsns).expect("odbc.ini");
    let isql = |dsn: &str, user: &str, sql: &str| -> String {
        let mut child = Command::new("isql")
            .args(["-v", "-b", "-d|", dsn, user, user])
            .env("ODBCSYSINI", &ini)
            .env("ODBCINI", ini.join("odbc.ini"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("isql must be installed (apt-get install unixodbc)");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{sql}\n").as_bytes())
            .expect("write sql");
        let out = child.wait_with_output().expect("isql");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for dsn in ["lake0", "lake1"] {
        let out = isql(dsn, "alice", "SELECT count(*) FROM gtm.hcp");
        assert!(
            out.contains("|1000|") || out.contains("1000"),
            "{dsn}: {out}"
        );
        let out = isql(
            dsn,
            "alice",
            "SELECT DISTINCT country FROM gtm.sales ORDER BY 1",
        );
        assert!(out.contains("DE") && !out.contains("US"), "{dsn}: {out}");
        let out = isql(dsn, "alice", "SELECT count(*) FROM gtm.patients");
        assert!(
            out.contains("42P01"),
            "{dsn}: alice must not read patients: {out}"
        );
        let out = isql(dsn, "carol", "SELECT count(*) FROM gtm.patients");
        assert!(out.contains("3000"), "{dsn}: {out}");
    }
    let out = isql(
        "lake1",
        "bob",
        "SELECT full_name FROM gtm.hcp WHERE full_name IS NOT NULL LIMIT 1",
    );
    assert!(out.contains('*'), "bob's names are masked: {out}");
}
