//! Tables from the Glue Data Catalog: moto (IAM enforced) holds the quickstart's catalog as an
//! ingestion job registers it, with the data in S3. The gateway must serve those tables exactly
//! as the local quickstart serves the same catalog from files: names, types, comments, policy,
//! partitions and answers.
use std::process::Command;
use std::time::{Duration, Instant};

use lakegate_e2e::aws::{Moto, reader_policy, role_arn};
use lakegate_e2e::{Gateway, Setup, binary, outcome, rows, sqlstate};

fn glue_setup(moto: &Moto, refresh_seconds: u64) -> Setup {
    Setup {
        policy: Some(reader_policy()),
        // No local databases: everything comes from Glue.
        catalog: Some("databases: []\n".into()),
        extra_config: format!(
            "glue:\n  databases: [gtm]\n  refresh_seconds: {refresh_seconds}\n\
             aws:\n  endpoint_url: {}\n  roles:\n\
             \x20   - {{ persona: steward, role_arn: \"{}\" }}\n\
             \x20   - {{ persona: eu-reader, role_arn: \"{}\" }}\n",
            moto.endpoint,
            role_arn("lakegate-gtm-steward"),
            role_arn("lakegate-gtm-eu-reader"),
        ),
        env: moto.gateway_env(),
        ..Setup::default()
    }
}

const SAME: &[(&str, &str)] = &[
    (
        "carol",
        "SELECT table_name, column_name, data_type, ordinal_position, numeric_precision, numeric_scale \
         FROM information_schema.columns WHERE table_name IN ('hcp', 'sales', 'patients') \
         ORDER BY table_name, ordinal_position",
    ),
    (
        "carol",
        "SELECT c.relname, a.attname, col_description(a.attrelid, a.attnum) \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON a.attrelid = c.oid \
         WHERE c.relname IN ('hcp', 'sales', 'patients') AND a.attnum > 0 ORDER BY 1, a.attnum",
    ),
    (
        "carol",
        "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c \
         WHERE c.relname IN ('hcp', 'sales', 'patients') ORDER BY 1",
    ),
    (
        "alice",
        "SELECT country, count(*), sum(amount) FROM gtm.sales GROUP BY country ORDER BY 1",
    ),
    (
        "alice",
        "SELECT hcp_id, email, country FROM gtm.hcp ORDER BY hcp_id LIMIT 5",
    ),
    (
        "alice",
        "SELECT count(*), sum(units) FROM gtm.sales WHERE sale_date = DATE '2026-01-02'",
    ),
    (
        "carol",
        "SELECT count(*), min(birth_date) FROM gtm.patients",
    ),
    // An Athena view (Presto-encoded in Glue), with the rights of who reads it: EU rows only
    // for alice, as in the local catalog's view.
    (
        "alice",
        "SELECT country, sum(units), sum(amount) FROM gtm.sales_by_country GROUP BY 1 ORDER BY 1",
    ),
    (
        "carol",
        "SELECT country, count(*) FROM gtm.sales_by_country GROUP BY 1 ORDER BY 1",
    ),
    (
        "carol",
        "SELECT table_name, table_type FROM information_schema.tables \
         WHERE table_schema = 'gtm' AND table_name IN ('sales', 'sales_by_country') ORDER BY 1",
    ),
];

#[tokio::test]
async fn glue_tables_are_served_like_local_ones() {
    let moto = Moto::start();
    let gateway = Gateway::start_setup(glue_setup(&moto, 0));
    let local = Gateway::start_with_policy(&reader_policy());

    for (user, sql) in SAME {
        let from_glue = rows(&gateway.connect(user).await, sql)
            .await
            .unwrap_or_else(|e| panic!("{user}: {sql}: {e:?}"));
        let from_files = rows(&local.connect(user).await, sql).await.expect("local");
        assert!(!from_glue.is_empty(), "{sql}");
        assert_eq!(from_glue, from_files, "{user}: {sql}");
    }

    // Policy sees Glue's parameters as tags: patients (classification pii) stays hidden from
    // alice, and hcp.npi (restricted) is not a column for her.
    let alice = gateway.connect("alice").await;
    assert_eq!(
        sqlstate(rows(&alice, "SELECT count(*) FROM gtm.patients").await),
        "42P01"
    );
    assert_eq!(
        sqlstate(rows(&alice, "SELECT npi FROM gtm.hcp").await),
        "42703"
    );

    // A CSV table with a header line, and a table with a map column that is left out.
    let carol = gateway.connect("carol").await;
    assert_eq!(
        rows(
            &carol,
            "SELECT country, region FROM gtm.regions ORDER BY country"
        )
        .await
        .expect("regions"),
        ["CH|EMEA", "DE|EMEA", "DK|EMEA", "FR|EMEA", "US|Americas"]
    );
    assert_eq!(
        sqlstate(rows(&carol, "SELECT * FROM gtm.events").await),
        "42P01"
    );
    // Files named as Athena names them (no extension) are data; `_SUCCESS` and `.crc` are not.
    let totals = "SELECT count(*), sum(units), count(DISTINCT sale_date) FROM gtm.";
    assert_eq!(
        rows(&carol, &format!("{totals}sales_ctas"))
            .await
            .expect("sales_ctas"),
        rows(&carol, &format!("{totals}sales"))
            .await
            .expect("sales"),
    );

    // Metadata was read with the gateway's own key; data never was.
    let requests = moto.requests();
    let glue: Vec<_> = requests.iter().filter(|r| r["service"] == "glue").collect();
    assert!(!glue.is_empty());
    assert!(
        glue.iter()
            .all(|r| r["access_key"] == moto.gateway_key.as_str() && r["status"] == 200)
    );
    assert!(
        requests
            .iter()
            .filter(|r| r["service"] == "s3")
            .all(|r| r["access_key"] != moto.gateway_key.as_str())
    );

    // `lakegate check` says which Glue tables are not served and why.
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(gateway.dir.join("lakegate.yaml"))
        .envs(moto.gateway_env())
        .output()
        .expect("lakegate check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("gtm.events") && text.contains("map<string,string>"),
        "{text}"
    );
    // Partitions come from Glue, wherever they are stored (here `.../2026/01/01/`, not Hive's
    // `sale_date=2026-01-01/`); a partition predicate becomes GetPartitions' expression.
    assert!(!text.contains("gtm.sales_dated"), "{text}");
    let day = "SELECT count(*), sum(units) FROM gtm.";
    assert_eq!(
        rows(&carol, &format!("{day}sales_dated"))
            .await
            .expect("dated"),
        rows(
            &carol,
            &format!("{day}sales WHERE sale_date = DATE '2026-01-01'")
        )
        .await
        .expect("sales"),
    );
    let before = moto.requests().len();
    let one_day = rows(
        &carol,
        "SELECT count(*), sum(units) FROM gtm.sales WHERE sale_date = DATE '2026-01-03'",
    )
    .await
    .expect("one day");
    assert_ne!(one_day, ["0|NULL"]);
    let requests = moto.requests();
    let asked: Vec<&serde_json::Value> = requests[before..]
        .iter()
        .filter(|r| r["target"] == "AWSGlue.GetPartitions")
        .collect();
    assert!(
        asked
            .iter()
            .any(|r| r["json"]["Expression"] == "sale_date = '2026-01-03'"),
        "{asked:#?}"
    );
    let read: Vec<String> = requests[before..]
        .iter()
        .filter(|r| r["service"] == "s3" && r["method"] == "GET")
        .filter_map(|r| r["path"].as_str().map(|p| p.replace("%3D", "=")))
        .filter(|p| p.starts_with("/lake-gtm/gtm/sales/"))
        .collect();
    assert!(!read.is_empty(), "{:#?}", &requests[before..]);
    assert!(
        read.iter().all(|p| p.contains("sale_date=2026-01-03/")),
        "{read:#?}"
    );
}

#[tokio::test]
async fn new_glue_tables_appear_after_a_refresh() {
    let moto = Moto::start();
    let gateway = Gateway::start_setup(glue_setup(&moto, 1));
    let carol = gateway.connect("carol").await;
    assert_eq!(
        sqlstate(rows(&carol, "SELECT count(*) FROM gtm.hcp_copy").await),
        "42P01"
    );
    moto.boto3(
        "glue = client('glue')\n\
         t = glue.get_table(DatabaseName='gtm', Name='hcp')['Table']\n\
         glue.create_table(DatabaseName='gtm', TableInput={'Name': 'hcp_copy', \
         'TableType': 'EXTERNAL_TABLE', 'Parameters': t.get('Parameters', {}), \
         'StorageDescriptor': t['StorageDescriptor']})\n",
    );
    // Sessions started after the refresh see the table; poll with new connections.
    let expected = rows(&carol, "SELECT count(*) FROM gtm.hcp")
        .await
        .expect("hcp");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let session = gateway.connect("carol").await;
        if let Ok(copy) = rows(&session, "SELECT count(*) FROM gtm.hcp_copy").await {
            assert_eq!(copy, expected);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new Glue table did not appear within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The session that started before the refresh keeps its tables.
    assert_eq!(
        sqlstate(rows(&carol, "SELECT count(*) FROM gtm.hcp_copy").await),
        "42P01"
    );
}

fn register(gateway: &Gateway, moto: &Moto, args: &[&str]) -> (bool, String) {
    // The ingestion job's own credentials: here the account's admin user.
    let out = Command::new(binary())
        .args(["catalog", "register", "--config"])
        .arg(gateway.dir.join("lakegate.yaml"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &moto.admin_key)
        .env("AWS_SECRET_ACCESS_KEY", &moto.admin_secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("lakegate catalog register");
    outcome(out)
}

#[tokio::test]
async fn registration_creates_the_table_and_adds_only_new_partitions() {
    let moto = Moto::start();
    let gateway = Gateway::start_setup(glue_setup(&moto, 1));
    let days = std::fs::read_dir(lakegate_e2e::quickstart().join("data/gtm/sales"))
        .expect("sales folder")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("sale_date="))
        .count();
    assert!(days > 0);
    let args = [
        "--database",
        "gtm",
        "--table",
        "sales_copy",
        "--location",
        "s3://lake-gtm/gtm/sales/",
        "--partition-key",
        "sale_date",
        "--parameter",
        "owner=commercial-excellence",
    ];
    let (ok, text) = register(&gateway, &moto, &args);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "created gtm.sales_copy: 5 column(s); {days} partition(s) added, 0 already registered"
        )),
        "{text}"
    );
    // Again: nothing new.
    let (ok, text) = register(&gateway, &moto, &args);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "kept gtm.sales_copy: 5 column(s); 0 partition(s) added, {days} already registered"
        )),
        "{text}"
    );
    // A new day's files: one partition added.
    moto.boto3(
        "s3 = client('s3')\n\
         key = next(o['Key'] for o in s3.list_objects_v2(Bucket='lake-gtm', Prefix='gtm/sales/')['Contents'])\n\
         s3.copy_object(Bucket='lake-gtm', Key='gtm/sales/sale_date=2099-01-01/part-0.parquet', \
         CopySource={'Bucket': 'lake-gtm', 'Key': key})\n",
    );
    let (ok, text) = register(&gateway, &moto, &args);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("1 partition(s) added, {days} already registered")),
        "{text}"
    );

    // The registered table, read through the gateway after its refresh, has the columns the
    // catalog declares for sales (types inferred from the files) and the same rows.
    let carol = gateway
        .connect_when_served("carol", "gtm.sales_copy", Duration::from_secs(30))
        .await;
    let columns = |table: &str| {
        format!(
            "SELECT column_name, data_type, numeric_precision, numeric_scale \
             FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"
        )
    };
    assert_eq!(
        rows(&carol, &columns("sales_copy"))
            .await
            .expect("copy columns"),
        rows(&carol, &columns("sales"))
            .await
            .expect("sales columns")
    );
    // Partitions are Glue's, as Athena reads them: sales_copy has the new day registered,
    // sales (same folder) does not, so only sales_copy reads it.
    let summary = "SELECT count(*), count(DISTINCT sale_date), sum(amount) FROM gtm.";
    assert_eq!(
        rows(
            &carol,
            &format!("{summary}sales_copy WHERE sale_date < DATE '2099-01-01'")
        )
        .await
        .expect("copy"),
        rows(&carol, &format!("{summary}sales"))
            .await
            .expect("sales")
    );
    let days_of = |table: &str| format!("SELECT count(DISTINCT sale_date) FROM gtm.{table}");
    assert_eq!(
        rows(&carol, &days_of("sales_copy"))
            .await
            .expect("copy days"),
        [(days + 1).to_string()]
    );
    assert_eq!(
        rows(&carol, &days_of("sales")).await.expect("sales days"),
        [days.to_string()]
    );

    // A prefix without Parquet files is refused, and nothing is created.
    let (ok, text) = register(
        &gateway,
        &moto,
        &[
            "--database",
            "gtm",
            "--table",
            "nothing",
            "--location",
            "s3://lake-gtm/nowhere/",
        ],
    );
    assert!(!ok);
    assert!(
        text.contains("no .parquet files under s3://lake-gtm/nowhere/"),
        "{text}"
    );
}
