//! Tables in S3, read with each user's own assumed role: moto (IAM enforced) behind a
//! recording proxy, the real gateway, tokio-postgres as the client.
use std::time::Duration;

use lakegate_e2e::aws::{Moto, issued_key, reader_policy, role_arn};
use lakegate_e2e::oidc::Provider;
use lakegate_e2e::{Gateway, Setup, quickstart, rows, sqlstate};

/// The quickstart's catalog with every table's files in moto's S3.
fn s3_catalog() -> String {
    let text = std::fs::read_to_string(quickstart().join("catalog.yaml")).expect("catalog");
    let text = text.replace("location: data/gtm/", "location: s3://lake-gtm/gtm/");
    assert!(text.contains("s3://lake-gtm/gtm/sales"));
    text
}

/// The server's error for a statement that must fail.
async fn refused(
    client: &tokio_postgres::Client,
    sql: &str,
    why: &str,
) -> tokio_postgres::error::DbError {
    let error = client.simple_query(sql).await.expect_err(why);
    error.as_db_error().cloned().expect("a server error")
}

struct Roles<'a> {
    steward: &'a str,
    eu_reader: &'a str,
    us_reader: Option<&'a str>,
}

fn start(moto: &Moto, roles: Roles, extra: &str) -> Gateway {
    let mut entries = format!(
        "    - {{ database: gtm, persona: steward, role_arn: \"{}\" }}\n    - {{ persona: eu-reader, role_arn: \"{}\" }}\n",
        role_arn(roles.steward),
        role_arn(roles.eu_reader)
    );
    if let Some(us) = roles.us_reader {
        entries.push_str(&format!(
            "    - {{ database: gtm, persona: us-reader, role_arn: \"{}\" }}\n",
            role_arn(us)
        ));
    }
    Gateway::start_setup(Setup {
        policy: Some(reader_policy()),
        catalog: Some(s3_catalog()),
        extra_config: format!(
            "aws:\n  region: us-east-1\n  endpoint_url: {}\n  source_identity_attribute: email\n  session_tags: {{ Department: department, CostCenter: cost_center }}\n{extra}  roles:\n{entries}",
            moto.endpoint
        ),
        config_replacements: vec![(
            "    groups: [eu-sales]\n".into(),
            "    groups: [eu-sales]\n    attributes: { email: alice@example.com, department: EU-Sales }\n"
                .into(),
        )],
        env: moto.gateway_env(),
    })
}

fn usual_roles() -> Roles<'static> {
    Roles {
        steward: "lakegate-gtm-forbidden",
        eu_reader: "lakegate-gtm-eu-reader",
        us_reader: Some("lakegate-gtm-us-reader"),
    }
}

const EU_SALES: &str = "SELECT count(*), sum(amount), count(DISTINCT sale_date) FROM gtm.sales";
const HCP: &str = "SELECT hcp_id, email, country FROM gtm.hcp ORDER BY hcp_id LIMIT 5";

#[tokio::test]
async fn users_read_s3_tables_with_their_own_role() {
    let moto = Moto::start();
    let gateway = start(&moto, usual_roles(), "");
    let local = Gateway::start_with_policy(&reader_policy());

    // alice's answers from S3 equal the local quickstart's over the same files, policy applied
    // (EU rows only, hashed e-mails).
    let alice = gateway.connect("alice").await;
    let expected = local.connect("alice").await;
    for sql in [EU_SALES, HCP] {
        let from_s3 = rows(&alice, sql).await.expect("alice reads S3");
        assert!(!from_s3.is_empty());
        assert_eq!(from_s3, rows(&expected, sql).await.expect("local"), "{sql}");
    }
    let countries = rows(&alice, "SELECT DISTINCT country FROM gtm.sales ORDER BY 1")
        .await
        .expect("countries");
    assert!(
        countries
            .iter()
            .all(|c| ["CH", "DE", "DK", "FR"].contains(&c.as_str()))
    );
    // More queries and a second connection: still one STS call.
    let again = gateway.connect("alice").await;
    for _ in 0..3 {
        rows(&again, EU_SALES).await.expect("again");
    }

    let calls = moto.assume_role_calls();
    let alice_calls: Vec<_> = calls
        .iter()
        .filter(|c| c["form"]["RoleSessionName"] == "alice")
        .collect();
    assert_eq!(alice_calls.len(), 1, "one AssumeRole for alice: {calls:#?}");
    let call = alice_calls[0];
    let form = &call["form"];
    assert_eq!(form["RoleArn"], role_arn("lakegate-gtm-eu-reader"));
    assert_eq!(form["SourceIdentity"], "alice@example.com");
    assert_eq!(form["DurationSeconds"], "3600");
    assert_eq!(form["Tags.member.1.Key"], "Department");
    assert_eq!(form["Tags.member.1.Value"], "EU-Sales");
    assert!(
        form.get("Tags.member.2.Key").is_none(),
        "alice has no cost_center"
    );
    assert_eq!(call["status"], 200);
    assert_eq!(call["access_key"], moto.gateway_key.as_str());

    // Every S3 request was signed with the key STS issued for alice's session; the gateway's
    // own key never reads data (IAM would refuse it anyway).
    let alice_key = issued_key(call).expect("issued key");
    let s3: Vec<_> = moto
        .requests()
        .into_iter()
        .filter(|r| r["service"] == "s3")
        .collect();
    assert!(!s3.is_empty());
    for request in &s3 {
        assert_eq!(request["access_key"], alice_key.as_str(), "{request}");
        assert_eq!(
            request["status"].as_u64().map(|s| s < 300),
            Some(true),
            "{request}"
        );
    }
}

#[tokio::test]
async fn a_role_without_s3_access_and_a_role_the_gateway_may_not_assume_are_clear_errors() {
    let moto = Moto::start();
    let gateway = start(&moto, usual_roles(), "");

    // bob's role exists and is assumed, but may not read the bucket: 42501, no bucket named.
    let bob = gateway.connect("bob").await;
    let db = refused(
        &bob,
        "SELECT count(*) FROM gtm.sales",
        "bob's role cannot read S3",
    )
    .await;
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(db.message().contains("AWS denied"), "{}", db.message());
    assert!(!db.message().contains("lake-gtm"), "{}", db.message());
    let bob_calls: Vec<_> = moto
        .assume_role_calls()
        .into_iter()
        .filter(|c| c["form"]["RoleSessionName"] == "bob")
        .collect();
    assert_eq!(bob_calls.len(), 1);
    assert_eq!(
        bob_calls[0]["form"]["RoleArn"],
        role_arn("lakegate-gtm-us-reader")
    );
    let bob_key = issued_key(&bob_calls[0]).expect("bob's key");
    assert!(
        moto.requests()
            .iter()
            .filter(|r| r["access_key"] == bob_key.as_str())
            .all(|r| r["status"] == 403)
    );

    // carol's persona maps to a role the gateway may not assume: 28000 naming the role.
    let carol = gateway.connect("carol").await;
    let db = refused(
        &carol,
        "SELECT count(*) FROM gtm.patients",
        "carol's role cannot be assumed",
    )
    .await;
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert_eq!(
        db.message(),
        format!(
            "not allowed to assume role {}",
            role_arn("lakegate-gtm-forbidden")
        )
    );
    // The server keeps serving: alice still reads, with her role.
    let alice = gateway.connect("alice").await;
    assert_eq!(rows(&alice, "SELECT 1").await.expect("alive"), ["1"]);
    assert!(!rows(&alice, EU_SALES).await.expect("alice").is_empty());
    // No one's query ever ran with another user's role.
    for call in moto.assume_role_calls() {
        let expected = match call["form"]["RoleSessionName"].as_str() {
            Some("alice") => "lakegate-gtm-eu-reader",
            Some("bob") => "lakegate-gtm-us-reader",
            Some("carol") => "lakegate-gtm-forbidden",
            other => panic!("unexpected session {other:?}"),
        };
        assert_eq!(call["form"]["RoleArn"], role_arn(expected));
    }
}

#[tokio::test]
async fn a_user_without_a_role_reads_nothing_from_aws() {
    let moto = Moto::start();
    let gateway = start(
        &moto,
        Roles {
            us_reader: None,
            ..usual_roles()
        },
        "",
    );
    // Policy lets bob read US sales, but no persona of his has a role: 42501, no STS call.
    let bob = gateway.connect("bob").await;
    let db = refused(&bob, "SELECT count(*) FROM gtm.sales", "no role").await;
    assert_eq!(db.code().code(), "42501");
    assert_eq!(
        db.message(),
        "no AWS role for you in database gtm: none of your personas has one"
    );
    assert!(db.hint().is_some());
    // EXPLAIN plans without touching S3, so it works; the data stays closed.
    assert!(
        !rows(&bob, "EXPLAIN SELECT count(*) FROM gtm.sales")
            .await
            .expect("explain")
            .is_empty()
    );
    assert!(moto.assume_role_calls().is_empty());
    assert_eq!(sqlstate(rows(&bob, "SELECT * FROM gtm.hcp").await), "42501");
}

#[tokio::test]
async fn credentials_are_replaced_before_they_expire() {
    let moto = Moto::start();
    // 15-minute sessions replaced 890 s early: the cache holds each for about 10 seconds.
    let gateway = start(
        &moto,
        usual_roles(),
        "  session_duration_seconds: 900\n  refresh_before_expiry_seconds: 890\n",
    );
    let alice = gateway.connect("alice").await;
    rows(&alice, EU_SALES).await.expect("first read");
    let first = moto.assume_role_calls();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["form"]["DurationSeconds"], "900");
    // Poll by reading: each read asks the cache, which lets go of the session after ~10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while moto.assume_role_calls().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "credentials were not replaced within 60 s"
        );
        rows(&alice, EU_SALES).await.expect("read while waiting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = moto.assume_role_calls();
    let new_key = issued_key(&calls[1]).expect("new key");
    assert_ne!(issued_key(&calls[0]), Some(new_key.clone()));
    rows(&alice, EU_SALES).await.expect("read after refresh");
    let last_s3 = moto
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["service"] == "s3")
        .expect("an S3 request");
    assert_eq!(last_s3["access_key"], new_key.as_str());
}

#[tokio::test]
async fn sts_down_is_a_clear_error() {
    // An endpoint where nothing listens stands for STS being unreachable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let gateway = Gateway::start_setup(Setup {
        policy: Some(reader_policy()),
        catalog: Some(s3_catalog()),
        extra_config: format!(
            "aws:\n  endpoint_url: http://127.0.0.1:{port}\n  roles:\n    - {{ persona: eu-reader, role_arn: \"{}\" }}\n",
            role_arn("lakegate-gtm-eu-reader")
        ),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), "AKIAIOSFODNN7EXAMPLE".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "not-a-real-secret".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ],
        ..Setup::default()
    });
    let alice = gateway.connect("alice").await;
    let db = refused(&alice, EU_SALES, "STS unreachable").await;
    assert_eq!(db.code().code(), "58000", "{db:?}");
    assert!(
        db.message().contains("STS did not answer"),
        "{}",
        db.message()
    );
    assert_eq!(
        rows(&alice, "SELECT 1").await.expect("still serving"),
        ["1"]
    );
}

#[tokio::test]
async fn token_users_read_with_their_own_token_where_the_role_says_so() {
    // Which role read what shows in the signing keys; moto cannot enforce IAM here (see
    // Moto::start_without_iam).
    let moto = Moto::start_without_iam();
    let provider = Provider::start();
    // eu-reader's role trusts the company's token issuer: it is assumed with the user's own
    // token. The steward role is assumed by the gateway, with the user as SourceIdentity.
    let gateway = Gateway::start_setup(Setup {
        policy: Some(reader_policy()),
        catalog: Some(s3_catalog()),
        extra_config: format!(
            "oidc:\n  - issuer: {}\n    audience: urn:lakegate\n    attribute_claims: [email]\n\
             aws:\n  endpoint_url: {}\n  source_identity_attribute: email\n  roles:\n\
             \x20   - {{ persona: eu-reader, role_arn: \"{}\", web_identity: true }}\n\
             \x20   - {{ persona: steward, role_arn: \"{}\" }}\n",
            provider.issuer,
            moto.endpoint,
            role_arn("lakegate-gtm-eu-reader"),
            role_arn("lakegate-gtm-steward"),
        ),
        env: moto.gateway_env(),
        ..Setup::default()
    });

    let erin = gateway
        .try_connect("erin", provider.token("erin"))
        .await
        .expect("erin logs in with her token");
    let answer = rows(&erin, EU_SALES).await.expect("erin reads S3");
    assert!(!answer.is_empty());
    let calls = moto.calls("AssumeRoleWithWebIdentity");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let form = &calls[0]["form"];
    assert_eq!(form["RoleArn"], role_arn("lakegate-gtm-eu-reader"));
    assert_eq!(form["RoleSessionName"], "erin");
    assert_eq!(form["WebIdentityToken"], provider.token("erin"));
    assert!(form.get("SourceIdentity").is_none());
    let erin_key = issued_key(&calls[0]).expect("erin's key");
    let s3: Vec<_> = moto
        .requests()
        .into_iter()
        .filter(|r| r["service"] == "s3")
        .collect();
    assert!(!s3.is_empty());
    assert!(s3.iter().all(|r| r["access_key"] == erin_key.as_str()));

    // frank (a steward by his token's groups) reads through the gateway's AssumeRole, named
    // by the e-mail claim of his token.
    let frank = gateway
        .try_connect("frank", provider.token("frank"))
        .await
        .expect("frank logs in");
    assert!(
        !rows(&frank, "SELECT count(*) FROM gtm.patients")
            .await
            .expect("frank reads patients")
            .is_empty()
    );
    let assumed = moto.assume_role_calls();
    assert_eq!(assumed.len(), 1);
    assert_eq!(assumed[0]["form"]["SourceIdentity"], "frank@example.com");
    assert_eq!(
        assumed[0]["form"]["RoleArn"],
        role_arn("lakegate-gtm-steward")
    );

    // alice is a local (SCRAM) user: she has no token to assume the web-identity role with.
    let alice = gateway.connect("alice").await;
    let db = refused(&alice, EU_SALES, "no token").await;
    assert_eq!(db.code().code(), "28000");
    assert!(
        db.message().contains("log in with your token"),
        "{}",
        db.message()
    );
    assert_eq!(moto.calls("AssumeRoleWithWebIdentity").len(), 1);
}

/// Predicates that cannot fail, on columns policy leaves unmasked, run beside the row filter,
/// so the scan reads only the partitions they select; others stay above the row filter.
#[tokio::test]
async fn partition_predicates_read_only_their_partitions() {
    let moto = Moto::start();
    let gateway = start(&moto, usual_roles(), "");
    let local = Gateway::start_with_policy(&reader_policy());
    let alice = gateway.connect("alice").await;
    let expected = local.connect("alice").await;
    let days = rows(
        &alice,
        "SELECT DISTINCT sale_date FROM gtm.sales ORDER BY 1",
    )
    .await
    .expect("days");
    assert!(days.len() > 2, "{days:?}");
    let day = &days[1];
    let before = moto.requests().len();
    let sql = format!("SELECT count(*), sum(units) FROM gtm.sales WHERE sale_date = DATE '{day}'");
    let got = rows(&alice, &sql).await.expect("one day");
    assert_eq!(got, rows(&expected, &sql).await.expect("local"));
    assert_ne!(got, ["0|NULL"], "the day has EU sales");
    let read_only_the_day = |before: usize| {
        let objects: Vec<String> = moto.requests()[before..]
            .iter()
            .filter(|r| r["method"] == "GET")
            .filter_map(|r| r["path"].as_str().map(|p| p.replace("%3D", "=")))
            .filter(|p| p.starts_with("/lake-gtm/gtm/sales/"))
            .collect();
        assert!(!objects.is_empty(), "the day's files were read");
        for path in &objects {
            assert!(
                path.contains(&format!("/sale_date={day}/")),
                "read outside the day: {path}"
            );
        }
    };
    read_only_the_day(before);
    // The day as a prepared statement's parameter: the same rows and the same pruning, on the
    // first run and from the cached generic plan on the second.
    let prepared = "SELECT count(*), sum(units) FROM gtm.sales WHERE sale_date = CAST($1 AS DATE)";
    for _ in 0..2 {
        let before = moto.requests().len();
        let row = alice
            .query_one(prepared, &[day])
            .await
            .expect("the day as a parameter");
        let (n, units): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(vec![format!("{n}|{units}")], got);
        read_only_the_day(before);
    }
    // A predicate that can fail is not moved: it sees only the rows alice may see, as locally.
    let probing = format!(
        "SELECT count(*) FROM gtm.sales WHERE sale_date = DATE '{day}' AND 1 / (CASE WHEN country = 'US' THEN 0 ELSE 1 END) = 1"
    );
    assert_eq!(
        rows(&alice, &probing)
            .await
            .expect("no division by zero on hidden US rows"),
        rows(&expected, &probing).await.expect("local")
    );
}

/// Files land in S3 while users query: the next query of the same connection reads them,
/// and no longer looks for files that were removed.
#[tokio::test]
async fn files_landing_in_s3_are_read_by_the_next_query() {
    let moto = Moto::start();
    let gateway = start(&moto, usual_roles(), "");
    let alice = gateway.connect("alice").await;
    let count = "SELECT count(*) FROM gtm.hcp";
    let before = rows(&alice, count).await.expect("count");
    let n: u64 = before[0].parse().expect("a count");
    assert!(n > 0, "alice sees EU hcps");
    moto.boto3(
        "s3 = client('s3')\n\
         s3.copy_object(Bucket='lake-gtm', Key='gtm/hcp/part-1.parquet', \
         CopySource={'Bucket': 'lake-gtm', 'Key': 'gtm/hcp/part-0.parquet'})\n",
    );
    assert_eq!(
        rows(&alice, count).await.expect("count with the new file"),
        [(2 * n).to_string()]
    );
    moto.boto3("client('s3').delete_object(Bucket='lake-gtm', Key='gtm/hcp/part-1.parquet')\n");
    assert_eq!(rows(&alice, count).await.expect("count without it"), before);
}
