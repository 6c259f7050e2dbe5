//! Runs the policy cases in `tests/cases/*.slt` against a real gateway.
//!
//! Format (one case per block, blocks separated by blank lines):
//!
//! ```text
//! # why this case matters
//! user alice
//! query                 <- expect rows: each line is a row, columns joined by `|`, NULL for null
//! SELECT ...
//! ----
//! DE|42
//!
//! user dave
//! error 42P01           <- expect this SQLSTATE
//! SELECT * FROM hcp
//!
//! user alice
//! count 1000            <- expect this many rows
//! SELECT * FROM hcp
//! ```
use std::collections::HashMap;

use lakegate_e2e::{Gateway, rows, workspace};

#[derive(Debug)]
enum Expect {
    Rows(Vec<String>),
    Error(String),
    Count(usize),
}

#[derive(Debug)]
struct Case {
    file: String,
    line: usize,
    user: String,
    sql: String,
    expect: Expect,
}

fn parse(file: &str, text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if line.is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i + 1;
        let user = line
            .strip_prefix("user ")
            .unwrap_or_else(|| panic!("{file}:{start}: a case starts with `user NAME`"))
            .trim()
            .to_string();
        let kind = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
        i += 2;
        let mut sql = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() && lines[i].trim() != "----" {
            sql.push(lines[i]);
            i += 1;
        }
        let mut expected = Vec::new();
        if i < lines.len() && lines[i].trim() == "----" {
            i += 1;
            while i < lines.len() && !lines[i].trim().is_empty() {
                expected.push(lines[i].trim_end().to_string());
                i += 1;
            }
        }
        let expect = if kind == "query" {
            Expect::Rows(expected)
        } else if let Some(code) = kind.strip_prefix("error ") {
            Expect::Error(code.trim().to_string())
        } else if let Some(n) = kind.strip_prefix("count ") {
            Expect::Count(
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{file}:{start}: bad count")),
            )
        } else {
            panic!("{file}:{start}: expected `query`, `error SQLSTATE` or `count N`, got {kind:?}");
        };
        cases.push(Case {
            file: file.to_string(),
            line: start,
            user,
            sql: sql.join("\n"),
            expect,
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_cases() {
    let dir = workspace().join("tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("case file");
        cases.extend(parse(
            &path.file_name().unwrap_or_default().to_string_lossy(),
            &text,
        ));
    }
    assert!(
        cases.len() >= 20,
        "expected the policy case files, found {} cases",
        cases.len()
    );

    let gateway = Gateway::start();
    let mut clients = HashMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        if !clients.contains_key(&case.user) {
            clients.insert(case.user.clone(), gateway.connect(&case.user).await);
        }
        let client = &clients[&case.user];
        let started = std::time::Instant::now();
        let result = rows(client, &case.sql).await;
        if started.elapsed() > std::time::Duration::from_secs(1) {
            eprintln!(
                "slow case {}:{} took {:?}",
                case.file,
                case.line,
                started.elapsed()
            );
        }
        let outcome = match (&case.expect, result) {
            (Expect::Rows(want), Ok(got)) if *want == got => None,
            (Expect::Count(n), Ok(got)) if got.len() == *n => None,
            (Expect::Error(code), Err(e)) if e.code().map(|c| c.code()) == Some(code.as_str()) => {
                None
            }
            (_, Ok(got)) => Some(format!("got rows {got:?}")),
            (_, Err(e)) => Some(format!(
                "got error {} {:?}",
                e.code().map(|c| c.code().to_string()).unwrap_or_default(),
                e.as_db_error().map(|d| d.message().to_string())
            )),
        };
        if let Some(outcome) = outcome {
            failures.push(format!(
                "{}:{} (user {}) expected {:?}, {outcome}\n    {}",
                case.file, case.line, case.user, case.expect, case.sql
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} policy cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
