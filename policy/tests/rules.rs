//! How policy files load and how rules combine.
use std::collections::BTreeMap;

use lakegate_policy::{
    ColumnMeta, Decision, Identity, Mask, PolicyError, PolicySet, PolicySource, TableMeta,
    bind_user_placeholders,
};

fn load(text: &str) -> Result<PolicySet, Vec<PolicyError>> {
    PolicySet::load(&[PolicySource {
        file: "p.yaml".into(),
        text: text.into(),
    }])
}

fn table(
    db: &str,
    name: &str,
    tags: &[(&str, &str)],
    columns: &[(&str, &[(&str, &str)])],
) -> TableMeta {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    TableMeta {
        database: db.into(),
        table: name.into(),
        tags: map(tags),
        columns: columns
            .iter()
            .map(|(n, t)| ColumnMeta {
                name: n.to_string(),
                tags: map(t),
            })
            .collect(),
    }
}

fn hcp() -> TableMeta {
    table(
        "gtm",
        "hcp",
        &[("classification", "confidential")],
        &[
            ("hcp_id", &[]),
            ("email", &[("classification", "pii")]),
            ("npi", &[]),
        ],
    )
}

const POLICY: &str = r#"
personas:
  steward: { groups: [stewards] }
rules:
  - name: stewards
    principals: { personas: [steward] }
    tables: ["gtm.*"]
  - name: deny-pii-tables
    principals: { users: ["*"] }
    table_tags: { classification: pii }
    access: deny
  - name: analysts
    principals: { groups: [analysts] }
    tables: ["gtm.*"]
    row_filter: "country = 'DE'"
    columns:
      - { name: npi, access: deny }
      - { tags: { classification: pii }, mask: hash }
"#;

#[test]
fn first_matching_rule_decides_and_default_is_deny() {
    let set = load(POLICY).expect("valid policy");
    let analyst = Identity::new("ann", vec!["analysts".into()]);
    let steward = Identity::new("sue", vec!["stewards".into(), "analysts".into()]);
    let nobody = Identity::new("dave", vec![]);
    let patients = table(
        "gtm",
        "patients",
        &[("classification", "pii")],
        &[("id", &[])],
    );

    // steward's rule comes first: everything, unmasked, even though she is also an analyst
    let Decision::Allowed(access) = set.decide(&steward, &hcp()) else {
        panic!("steward reads hcp")
    };
    assert_eq!(access.rule, "stewards");
    assert!(access.row_filter.is_none());
    assert_eq!(access.columns.len(), 3);
    assert!(access.columns.iter().all(|c| c.mask.is_none()));
    assert!(matches!(
        set.decide(&steward, &patients),
        Decision::Allowed(_)
    ));

    // analysts: row filter, npi gone, the pii-tagged column hashed
    let Decision::Allowed(access) = set.decide(&analyst, &hcp()) else {
        panic!("analyst reads hcp")
    };
    assert_eq!(access.row_filter.as_deref(), Some("country = 'DE'"));
    let names: Vec<_> = access.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["hcp_id", "email"]);
    assert_eq!(access.columns[1].mask, Some(Mask::Hash));
    // the deny rule matches before the analysts' rule
    assert_eq!(
        set.decide(&analyst, &patients),
        Decision::Denied {
            rule: Some("deny-pii-tables".into())
        }
    );

    // no rule for this user's groups on hcp: denied by default
    assert_eq!(set.decide(&nobody, &hcp()), Decision::Denied { rule: None });
    assert_eq!(set.personas_of(&steward), ["steward"]);
}

#[test]
fn errors_point_at_file_line_and_rule() {
    let text = "rules:\n  - name: ok\n    principals: { users: [a] }\n    tables: [gtm.hcp]\n  - name: broken\n    principals: { users: [a] }\n    tables: [hcp]\n    row_filter: \"country = = 'x'\"\n";
    let errors = load(text).expect_err("invalid");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .all(|e| e.starts_with("p.yaml:5: rule \"broken\":")),
        "{shown:#?}"
    );
    assert!(
        shown.iter().any(|e| e.contains("database.table")),
        "{shown:#?}"
    );
    assert!(shown.iter().any(|e| e.contains("row_filter")), "{shown:#?}");

    let errors = load("rules:\n  - name: x\n    principals: { users: [a] }\n    tables: [gtm.t]\n    columns:\n      - { name: c, mask: null }\n").expect_err("null mask");
    assert!(errors[0].to_string().contains("nullify"), "{errors:?}");

    let errors = load("rules: [ {").expect_err("yaml");
    assert!(matches!(errors[0], PolicyError::Syntax { .. }));

    let errors =
        load("rules:\n  - name: a\n    principals: { personas: [ghost] }\n    tables: [gtm.t]\n")
            .expect_err("persona");
    assert!(errors[0].to_string().contains("unknown persona \"ghost\""));

    let errors = load("rules:\n  - name: a\n    principals: { users: [a] }\n    tables: [gtm.t]\n  - name: a\n    principals: { users: [a] }\n    tables: [gtm.t]\n").expect_err("dup");
    assert!(
        errors[0].to_string().contains("already used at p.yaml:2"),
        "{errors:?}"
    );
}

#[test]
fn user_values_are_bound_never_spliced() {
    let mut id = Identity::new("o'brien", vec!["g1".into()]);
    id.attributes.insert("region".into(), "eu".into());
    let (sql, values) = bind_user_placeholders(
        "owner = ${user.name} AND region = ${user.region} AND note = '${user.name}' AND x = ${user.missing}",
        &id,
    )
    .expect("binds");
    assert_eq!(
        sql,
        "owner = $1 AND region = $2 AND note = '${user.name}' AND x = $3"
    );
    assert_eq!(values[0].to_string(), "o'brien");
    assert_eq!(values[1].to_string(), "eu");
    assert!(
        values[2].is_null(),
        "a missing attribute binds NULL: comparisons fail closed"
    );
    assert!(bind_user_placeholders("x = ${other}", &id).is_err());
}
