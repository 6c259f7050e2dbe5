//! `lakegate check`: policy errors name the file, line and rule; the quickstart passes.
use std::path::Path;
use std::process::Command;

use lakegate_e2e::{binary, outcome, quickstart};

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run lakegate check");
    outcome(out)
}

/// A config like the quickstart's, with `policy` replaced by the given file contents.
fn config_with_policy(name: &str, policy: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lakegate-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(dir.join("policy")).expect("dir");
    std::fs::write(dir.join("policy").join("bad.yaml"), policy).expect("policy");
    let qs = quickstart().canonicalize().expect("quickstart");
    let text = std::fs::read_to_string(qs.join("lakegate.yaml"))
        .expect("config")
        .replace(
            "catalog: catalog.yaml",
            &format!("catalog: {}", qs.join("catalog.yaml").display()),
        );
    std::fs::write(dir.join("lakegate.yaml"), text).expect("config");
    dir.join("lakegate.yaml")
}

#[test]
fn quickstart_policy_checks_clean() {
    let (ok, text) = check(&quickstart().join("lakegate.yaml"));
    assert!(ok, "{text}");
    assert!(
        text.contains("ok: 5 rule(s), 4 user(s), 10 grant(s) compiled"),
        "{text}"
    );
}

#[test]
fn structural_errors_name_file_line_and_rule() {
    let policy = "rules:\n  - name: fine\n    principals: { groups: [eu-sales] }\n    tables: [gtm.hcp]\n  - name: bad-table-pattern\n    principals: { groups: [eu-sales] }\n    tables: [hcp]\n";
    let (ok, text) = check(&config_with_policy("structural", policy));
    assert!(!ok, "a broken policy must fail the check: {text}");
    assert!(
        text.contains(
            "bad.yaml:5: rule \"bad-table-pattern\": table pattern \"hcp\" must be database.table"
        ),
        "{text}"
    );
}

#[test]
fn rules_that_do_not_compile_are_reported_with_their_location() {
    let policy = "rules:\n  - name: eu\n    principals: { groups: [eu-sales] }\n    tables: [gtm.hcp]\n    row_filter: \"no_such_column = 'DE'\"\n";
    let (ok, text) = check(&config_with_policy("compile", policy));
    assert!(!ok, "{text}");
    assert!(
        text.contains("bad.yaml:2: rule \"eu\" for gtm.hcp (user alice)"),
        "{text}"
    );
    assert!(text.contains("no_such_column"), "{text}");
}

#[test]
fn sign_in_settings_are_checked() {
    let config = config_with_policy("sso", "rules: []\n");
    let base = std::fs::read_to_string(&config).expect("config");
    let cases = [
        (
            "sso:\n  oidc:\n    issuer: http://127.0.0.1:1\n    client_id: lakegate\n",
            "sso needs access_tokens",
        ),
        (
            "access_tokens:\n  file: t.json\nsso:\n  oidc:\n    issuer: http://127.0.0.1:1\n    client_id: lakegate\n",
            "must be one of the `oidc` issuers",
        ),
        (
            "access_tokens:\n  file: t.json\n  postgres: host=x\n",
            "exactly one of `file` and `postgres`",
        ),
        (
            "access_tokens:\n  file: t.json\nsso:\n  saml:\n    idp_sso_url: https://idp/sso\n    idp_entity_id: idp\n    idp_certificate: missing.crt\n",
            "idp_certificate",
        ),
        (
            "access_tokens:\n  file: t.json\nsso:\n  public_url: http://gateway.example.com\n  saml:\n    idp_sso_url: https://idp/sso\n    idp_entity_id: idp\n    idp_certificate: missing.crt\n",
            "must be https",
        ),
    ];
    for (extra, expected) in cases {
        std::fs::write(&config, format!("{base}\n{extra}")).expect("config");
        let (ok, text) = check(&config);
        assert!(!ok && text.contains(expected), "{extra}: {text}");
    }
    std::fs::write(&config, format!("{base}\naccess_tokens:\n  file: t.json\n")).expect("config");
    let (ok, text) = check(&config);
    assert!(ok, "{text}");
}

#[test]
fn token_issuers_are_checked() {
    let config = config_with_policy("issuer", "rules: []\n");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(
        "\noidc:\n  - issuer: http://idp.example.com\n    audience: lakegate\n    algorithms: [HS256]\n",
    );
    std::fs::write(&config, text).expect("config");
    let (ok, text) = check(&config);
    assert!(!ok, "an http issuer off localhost is refused: {text}");
    assert!(text.contains("must be https"), "{text}");
}

#[test]
fn aws_settings_are_checked() {
    let cases = [
        (
            "aws:\n  endpoint_url: http://sts.example.com\n",
            "must be https",
        ),
        (
            "aws:\n  roles:\n    - { persona: nobody, role_arn: \"arn:aws:iam::123456789012:role/r\" }\n",
            "persona \"nobody\" is not defined",
        ),
        (
            "aws:\n  roles:\n    - { persona: steward, role_arn: \"lakegate-steward\" }\n",
            "is not an IAM role ARN",
        ),
        (
            "aws:\n  session_duration_seconds: 900\n  refresh_before_expiry_seconds: 900\n",
            "must be shorter than session_duration_seconds",
        ),
    ];
    for (i, (aws, expected)) in cases.iter().enumerate() {
        let config = config_with_policy(
            &format!("aws-{i}"),
            "personas:\n  steward:\n    groups: [gtm-stewards]\nrules: []\n",
        );
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push('\n');
        text.push_str(aws);
        std::fs::write(&config, text).expect("config");
        let (ok, text) = check(&config);
        assert!(!ok, "{aws} is refused: {text}");
        assert!(text.contains(expected), "{aws}: {text}");
    }
}

#[test]
fn tables_in_s3_need_aws_settings() {
    let config = config_with_policy("s3-no-aws", "rules: []\n");
    let dir = config.parent().expect("dir").to_path_buf();
    let catalog = std::fs::read_to_string(quickstart().join("catalog.yaml"))
        .expect("catalog")
        .replace(
            "location: data/gtm/sales",
            "location: s3://lake-gtm/gtm/sales/",
        );
    std::fs::write(dir.join("catalog.yaml"), catalog).expect("catalog");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("catalog:") {
                format!("catalog: {}", dir.join("catalog.yaml").display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).expect("config");
    let (ok, text) = check(&config);
    assert!(!ok, "{text}");
    assert!(
        text.contains("table gtm.sales is stored in S3") && text.contains("no aws section"),
        "{text}"
    );
}
