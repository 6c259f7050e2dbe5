//! The TPC-H-like queries of `bench/tpch/` in DataFusion directly, for `bench/run.py`'s
//! comparison with the gateway (issue 6, item 3). The benchmark policy (`bench/tpch/policy.yaml`:
//! lineitem without MAIL shipments, customer phone numbers hashed) is written here as views over
//! the raw tables, so both sides compute the same answer: the ratio is what the gateway adds
//! (wire protocol, session, planning with policy), not a different amount of work.
//!
//! usage: tpch-direct DATA_DIR RUNS QUERY.sql...
//! prints, per query: `<file> <median ms> <rows>`
//!
//! usage: tpch-direct --views
//! prints the views, one `CREATE VIEW` per line, over tables `raw_<name>`: `bench/run.py`
//! gives datafusion-postgres the same rules with them.
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use datafusion::error::Result;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

async fn context(data: &Path) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    for table in TABLES {
        let raw = format!("raw_{table}");
        let dir = data.join(table);
        ctx.register_parquet(
            &raw,
            dir.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?;
        ctx.sql(&view(table)).await?;
    }
    Ok(ctx)
}

/// The benchmark policy as a view of `table` over `raw_<table>`.
fn view(table: &str) -> String {
    let raw = format!("raw_{table}");
    let body = match table {
        "lineitem" => format!("SELECT * FROM {raw} WHERE l_shipmode <> 'MAIL'"),
        "customer" => format!(
            "SELECT c_custkey, c_name, c_address, c_nationkey, \
             CASE WHEN c_phone IS NULL THEN NULL ELSE encode(sha256(CAST(c_phone AS VARCHAR)), 'hex') END AS c_phone, \
             c_acctbal, c_mktsegment, c_comment FROM {raw}"
        ),
        _ => format!("SELECT * FROM {raw}"),
    };
    format!("CREATE VIEW {table} AS {body}")
}

/// Runs a query to the end; the number of rows, to compare with the gateway's answer.
async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

async fn main_inner() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--views") {
        for table in TABLES {
            println!("{}", view(table));
        }
        return Ok(());
    }
    let (Some(data), Some(runs)) = (
        args.first(),
        args.get(1).and_then(|r| r.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: tpch-direct DATA_DIR RUNS QUERY.sql...");
        std::process::exit(2);
    };
    let ctx = context(Path::new(data)).await?;
    for file in &args[2..] {
        let sql = std::fs::read_to_string(file)?;
        // one warm-up run (file metadata, OS cache), then the measured runs
        let rows = run(&ctx, &sql).await?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            run(&ctx, &sql).await?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!("{file} {:.3} {rows}", times[times.len() / 2]);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tpch-direct: {e}");
            ExitCode::FAILURE
        }
    }
}
