//! The IAM templates in deploy/iam pass cfn-lint (PyPI, installed by scripts/setup-clients),
//! and every role the gateway assumes demands a SourceIdentity in its trust policy.
use std::path::PathBuf;
use std::process::Command;

use lakegate_e2e::workspace;

fn templates() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy/iam"))
        .expect("deploy/iam")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/iam has templates");
    files
}

#[test]
fn iam_templates_pass_cfn_lint() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let lint = std::env::var("LAKEGATE_PYTHON")
        .map(|p| PathBuf::from(p).with_file_name("cfn-lint"))
        .unwrap_or_else(|_| PathBuf::from(home).join(".cache/lakegate-venv/bin/cfn-lint"));
    assert!(
        lint.exists(),
        "{} is missing: run scripts/setup-clients",
        lint.display()
    );
    let out = Command::new(&lint)
        .args(templates())
        .output()
        .expect("run cfn-lint");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn persona_roles_require_a_source_identity() {
    let text = std::fs::read_to_string(workspace().join("deploy/iam/persona-role.yaml"))
        .expect("persona-role.yaml");
    for needed in [
        "sts:AssumeRole",
        "sts:SetSourceIdentity",
        "sts:TagSession",
        "sts:SourceIdentity: \"false\"",
    ] {
        assert!(text.contains(needed), "persona-role.yaml lacks {needed}");
    }
}
