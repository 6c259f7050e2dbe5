//! `lakegate catalog register` for a database of the catalog file: a local folder of Parquet
//! files becomes a table in the file, served (under policy) once the gateway reads its catalog
//! again (SIGHUP).
use std::path::Path;
use std::process::Command;

use lakegate_e2e::{Gateway, Setup, binary, outcome, quickstart, rows, sqlstate};

/// The quickstart's catalog with absolute locations, so it can live in any folder.
fn catalog_text() -> String {
    let data = quickstart()
        .canonicalize()
        .expect("quickstart")
        .join("data");
    std::fs::read_to_string(quickstart().join("catalog.yaml"))
        .expect("catalog")
        .replace("location: data/", &format!("location: {}/", data.display()))
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn register(config: &Path, location: &Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(["catalog", "register", "--config"])
        .arg(config)
        .args(["--database", "gtm", "--table", "sales_copy", "--location"])
        .arg(location)
        .args([
            "--partition-key",
            "sale_date",
            "--description",
            "A copy of the daily sales",
            "--parameter",
            "owner=commercial-excellence",
        ])
        .output()
        .expect("lakegate catalog register");
    outcome(out)
}

#[tokio::test]
async fn a_local_folder_becomes_a_table_of_the_catalog_file() {
    let first = Gateway::start_setup(Setup {
        catalog: Some(catalog_text()),
        ..Setup::default()
    });
    let folder = first.dir.join("sales_copy");
    copy_folder(&quickstart().join("data/gtm/sales"), &folder);
    std::fs::write(folder.join("_SUCCESS"), "").expect("marker");
    let config = first.dir.join("lakegate.yaml");
    let catalog_file = first.dir.join("catalog.yaml");
    let before = std::fs::read_to_string(&catalog_file).expect("catalog");

    let (ok, text) = register(&config, &folder);
    assert!(ok, "{text}");
    assert!(
        text.starts_with("created gtm.sales_copy: 5 column(s)"),
        "{text}"
    );
    let after = std::fs::read_to_string(&catalog_file).expect("catalog");
    assert!(
        after.starts_with(before.trim_end()),
        "the rest of the file is kept"
    );
    assert!(after.contains("type: date"), "{after}");
    // Again: nothing to do.
    let (ok, text) = register(&config, &folder);
    assert!(ok && text.starts_with("kept gtm.sales_copy"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&catalog_file).expect("catalog"),
        after
    );

    // Not served before the gateway reads its catalog again; after a SIGHUP it is: to carol
    // (stewards read gtm.*) with the same rows as sales and its description as comment; to
    // alice not at all (no rule names it).
    let carol = first.connect("carol").await;
    assert_eq!(
        sqlstate(rows(&carol, "SELECT count(*) FROM gtm.sales_copy").await),
        "42P01"
    );
    first.reload();
    let carol = first
        .connect_when_served(
            "carol",
            "gtm.sales_copy",
            std::time::Duration::from_secs(20),
        )
        .await;
    let totals = "SELECT count(*), sum(units), count(DISTINCT sale_date) FROM gtm.";
    assert_eq!(
        rows(&carol, &format!("{totals}sales_copy"))
            .await
            .expect("copy"),
        rows(&carol, &format!("{totals}sales"))
            .await
            .expect("sales"),
    );
    assert_eq!(
        rows(
            &carol,
            "SELECT obj_description('gtm.sales_copy'::regclass, 'pg_class')"
        )
        .await
        .expect("comment"),
        ["A copy of the daily sales"]
    );
    let alice = first.connect("alice").await;
    assert_eq!(
        sqlstate(rows(&alice, "SELECT count(*) FROM gtm.sales_copy").await),
        "42P01"
    );

    // S3 prefixes belong in Glue, not in the catalog file.
    let out = Command::new(binary())
        .args(["catalog", "register", "--config"])
        .arg(&config)
        .args([
            "--database",
            "gtm",
            "--table",
            "x",
            "--location",
            "s3://lake/x/",
        ])
        .output()
        .expect("register");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("register S3 prefixes in Glue"));
}
