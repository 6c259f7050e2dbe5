//! The real `psql` against the gateway: meta-commands read the policy-filtered catalog.
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lakegate_e2e::{Gateway, wait_until};

fn psql(gateway: &Gateway, user: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .arg(gateway.conn_str(user, user))
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql must be installed (.ci/run installs postgresql-client)")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn meta_commands_show_only_what_policy_allows() {
    let gateway = Gateway::start();
    let list = stdout(&psql(&gateway, "alice", &["-c", r"\l"]));
    assert!(list.contains("gtm"), "{list}");
    let schemas = stdout(&psql(&gateway, "alice", &["-c", r"\dn"]));
    assert!(schemas.contains("gtm"), "{schemas}");

    let tables = stdout(&psql(&gateway, "alice", &["-c", r"\dt gtm.*"]));
    assert!(
        tables.contains("hcp") && tables.contains("sales"),
        "{tables}"
    );
    assert!(
        !tables.contains("patients"),
        "alice must not see patients: {tables}"
    );
    let tables = stdout(&psql(&gateway, "carol", &["-c", r"\dt gtm.*"]));
    assert!(tables.contains("patients"), "carol sees patients: {tables}");
    let tables = psql(&gateway, "dave", &["-c", r"\dt gtm.*"]);
    let text = String::from_utf8_lossy(&tables.stdout).to_string()
        + &String::from_utf8_lossy(&tables.stderr);
    assert!(
        !text.contains("hcp") && !text.contains("sales"),
        "dave sees nothing: {text}"
    );

    let describe = stdout(&psql(&gateway, "alice", &["-c", r"\d+ hcp"]));
    assert!(
        describe.contains("Professional e-mail address"),
        "column comments shown: {describe}"
    );
    assert!(
        describe.contains("email") && !describe.contains("npi"),
        "{describe}"
    );
    let verbose = stdout(&psql(&gateway, "alice", &["-c", r"\dt+ gtm.*"]));
    assert!(
        verbose.contains("Daily sales per HCP and product"),
        "table descriptions shown: {verbose}"
    );
    assert!(
        !verbose.contains("patients") && !verbose.contains("support programmes"),
        "{verbose}"
    );

    let expanded = stdout(&psql(
        &gateway,
        "alice",
        &[
            "-c",
            r"\x",
            "-c",
            "SELECT hcp_id, email FROM hcp ORDER BY hcp_id LIMIT 1",
        ],
    ));
    assert!(
        expanded.contains("-[ RECORD 1 ]") && expanded.contains("email"),
        "{expanded}"
    );

    let describe = stdout(&psql(&gateway, "carol", &["-c", r"\d+ hcp"]));
    assert!(
        describe.contains("npi") && describe.contains("National provider identifier"),
        "{describe}"
    );
}

#[test]
fn aggregates_from_psql() {
    let gateway = Gateway::start();
    let out = stdout(&psql(
        &gateway,
        "alice",
        &[
            "-At",
            "-c",
            "SELECT country, count(*) FROM hcp GROUP BY country ORDER BY country",
        ],
    ));
    assert_eq!(out.trim(), "CH|250\nDE|250\nDK|250\nFR|250");
}

#[test]
fn copy_to_a_client_file_keeps_policy() {
    let gateway = Gateway::start();
    let file = gateway.dir.join("hcp.csv");
    let command = format!(
        r"\copy (SELECT hcp_id, email, country FROM hcp ORDER BY hcp_id) to '{}' with (format csv, header)",
        file.display()
    );
    let out = stdout(&psql(&gateway, "alice", &["-c", &command]));
    assert!(out.contains("COPY 1000"), "{out}");
    let text = std::fs::read_to_string(&file).expect("copied file");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("hcp_id,email,country"));
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert!(
            ["DE", "FR", "DK", "CH"].contains(&cols[2]) && !cols[1].contains('@'),
            "{line}"
        );
    }
    let refused = psql(
        &gateway,
        "alice",
        &["-c", "COPY hcp TO '/tmp/lakegate-should-not-exist'"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("COPY to a file or program is not allowed")
    );
    assert!(!Path::new("/tmp/lakegate-should-not-exist").exists());
}

#[test]
fn ctrl_c_cancels_the_running_query() {
    let gateway = Gateway::start();
    let mut child = Command::new("psql")
        .arg(gateway.conn_str("carol", "carol"))
        .args(["-X", "-c", "SELECT count(*) FROM sales a, sales b, hcp c"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    // psql sends a CancelRequest on SIGINT, like Ctrl-C at the terminal
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "psql did not end after Ctrl-C"
    );
    let out = child.wait_with_output().expect("psql output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
}
