//! `lakegate`: the gateway binary.

// mimalloc, as DataFusion's own CLI: DataFusion allocates many small, short-lived objects per
// statement (plans, expressions, schemas), and glibc's malloc was a fifth of a short query's
// time. BENCHMARKS.md has the measurements.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Tests measure what structures hold (the plan cache's weights) with a counting wrapper of it.
#[cfg(test)]
#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;

#[cfg(test)]
mod alloc_count;
mod answers_together;
mod athena;
mod auth;
mod aws;
mod client_compat;
mod column_names;
mod config;
mod copy;
mod cursor;
mod demo;
mod described;
mod error;
mod gate;
mod handler;
mod information_schema;
mod json_functions;
mod kept_run;
mod lake;
mod like_escape;
mod literal_params;
mod notices;
mod oidc;
mod peer;
mod pg_catalog_setup;
mod pg_compat;
mod plan_cache;
mod plan_template;
mod register;
mod regproc;
mod route;
mod runtimes;
mod scalar_subquery;
mod server;
mod settings;
mod shapes;
mod sso;
mod sync_flush;
mod tls;
mod tokens;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lakegate_catalog::LocalCatalog;
use lakegate_policy::{PolicySet, PolicySource};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::StartupError;
use crate::lake::Lake;

#[derive(Parser)]
#[command(
    name = "lakegate",
    version,
    about = "A PostgreSQL-speaking gateway that enforces data-mesh policy on every query"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve PostgreSQL clients with the given configuration.
    Serve {
        #[arg(long, short, env = "LAKEGATE_CONFIG")]
        config: PathBuf,
        /// Override the configuration's listen address (e.g. 127.0.0.1:0 for a free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Generate the demo data if missing, then serve the quickstart (examples/quickstart).
    Quickstart {
        #[arg(long, default_value = "examples/quickstart")]
        dir: PathBuf,
        #[arg(long)]
        listen: Option<String>,
    },
    /// Write the quickstart's demo data set under DIR/data unless it is there.
    GenerateDemo {
        #[arg(long, default_value = "examples/quickstart")]
        dir: PathBuf,
    },
    /// Validate configuration, catalog and policy; compile every rule against every table it
    /// grants. Errors point at file, line and rule.
    Check {
        #[arg(long, short, env = "LAKEGATE_CONFIG")]
        config: PathBuf,
    },
    /// Read a password on standard input and print its SCRAM-SHA-256 verifier (PostgreSQL's format).
    Passwd,
    /// Manage the Glue Data Catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Personal access tokens (the `access_tokens` store of the configuration).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// List tokens: id, owner, name, dates and status (never the token itself).
    List {
        #[arg(long, short, env = "LAKEGATE_CONFIG")]
        config: PathBuf,
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by its id; logins with it fail from now on.
    Revoke {
        #[arg(long, short, env = "LAKEGATE_CONFIG")]
        config: PathBuf,
        /// The token's id (the part after `lgp_`, as `list` shows it). Ids are base64url and
        /// may start with `-`, which is taken as the id here, not as an option.
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Revoke only if the token belongs to this user.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Register Parquet files as a table, schema read from the files. In a database of the
    /// catalog file: a local folder, written into the file (partitions are its KEY=value folders).
    /// Otherwise in Glue: an S3 prefix, with a partition for each KEY=value folder Glue does not
    /// have yet (uses the aws section and the caller's own AWS credentials). Safe to run after
    /// every load.
    Register {
        #[arg(long, short, env = "LAKEGATE_CONFIG")]
        config: PathBuf,
        /// The database (must exist): one of the catalog file's, or a Glue database.
        #[arg(long)]
        database: String,
        #[arg(long)]
        table: String,
        /// s3://bucket/prefix/ (Glue) or a folder relative to the catalog file (local), holding
        /// the Parquet files (or KEY=value folders of them).
        #[arg(long)]
        location: String,
        /// The partition key of the KEY=value folders, e.g. sale_date (daily dates become `date`).
        #[arg(long)]
        partition_key: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A table parameter (business metadata), KEY=VALUE; repeatable.
        #[arg(long = "parameter", value_name = "KEY=VALUE")]
        parameters: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lakegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lakegate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), StartupError> {
    match command {
        Command::Serve { config, listen } => serve(&config, listen).await,
        Command::Quickstart { dir, listen } => {
            if !dir.join("lakegate.yaml").exists() {
                return Err(StartupError::Other(format!(
                    "{} has no lakegate.yaml: run this from the repository root, or pass --dir",
                    dir.display()
                )));
            }
            generate_demo(&dir)?;
            serve(&dir.join("lakegate.yaml"), listen).await
        }
        Command::GenerateDemo { dir } => generate_demo(&dir),
        Command::Check { config } => check(&config).await,
        Command::Catalog {
            command:
                CatalogCommand::Register {
                    config,
                    database,
                    table,
                    location,
                    partition_key,
                    description,
                    parameters,
                },
        } => {
            let loaded = Config::load(&config)?;
            let mut params = std::collections::BTreeMap::new();
            for p in parameters {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    StartupError::Other(format!("--parameter {p}: expected KEY=VALUE"))
                })?;
                params.insert(k.to_string(), v.to_string());
            }
            let what = register::Registration {
                database,
                table,
                location,
                partition_key,
                description,
                parameters: params,
            };
            // A database of the catalog file gets the table there; any other is Glue's.
            let local_file = loaded.catalog.clone().filter(|file| {
                LocalCatalog::load(file)
                    .is_ok_and(|c| c.catalog().database(&what.database).is_some())
            });
            let done = match (&local_file, &loaded.aws) {
                (Some(file), _) => register::register_local(file, &what).await,
                (None, Some(aws_config)) => {
                    let aws = aws::Aws::new(aws_config)
                        .await
                        .map_err(|message| StartupError::Config {
                            path: config.clone(),
                            message,
                        })?;
                    register::register(&aws, &what).await
                }
                (None, None) => Err(format!(
                    "database {} is not in the catalog file, and registering in Glue needs an aws section",
                    what.database
                )),
            }
            .map_err(StartupError::Other)?;
            let partitions = if local_file.is_some() {
                format!(
                    "{} partition folder(s), read at query time",
                    done.partitions_present
                )
            } else {
                format!(
                    "{} partition(s) added, {} already registered",
                    done.partitions_added, done.partitions_present
                )
            };
            println!(
                "{} {}.{}: {} column(s); {partitions}",
                if done.created { "created" } else { "kept" },
                what.database,
                what.table,
                done.columns,
            );
            Ok(())
        }
        Command::Token { command } => token_command(command).await,
        Command::Passwd => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| StartupError::Other(format!("reading the password: {e}")))?;
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(StartupError::Other("empty password".into()));
            }
            println!("{}", auth::Verifier::for_password(password));
            Ok(())
        }
    }
}

async fn open_tokens(config_path: &Path) -> Result<tokens::AccessTokens, StartupError> {
    let config = Config::load(config_path)?;
    let Some(tokens) = &config.access_tokens else {
        return Err(StartupError::Config {
            path: config_path.to_path_buf(),
            message: "no access_tokens section: personal access tokens are not enabled".into(),
        });
    };
    tokens::AccessTokens::open(tokens, None)
        .await
        .map_err(|message| StartupError::Config {
            path: config_path.to_path_buf(),
            message,
        })
}

async fn token_command(command: TokenCommand) -> Result<(), StartupError> {
    match command {
        TokenCommand::List { config, user } => {
            let store = open_tokens(&config).await?;
            let list = store
                .list(user.as_deref())
                .await
                .map_err(|e| StartupError::Other(e.to_string()))?;
            let now = tokens::now();
            println!("id\towner\tname\tmethod\tcreated\texpires\tlast_used\tstatus");
            for t in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.owner,
                    t.name.replace(['\t', '\n'], " "),
                    t.method,
                    t.created_at,
                    t.expires_at,
                    t.last_used_at
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    t.status(now)
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { config, id, user } => {
            let store = open_tokens(&config).await?;
            let id = id.strip_prefix("lgp_").unwrap_or(&id).to_string();
            if store
                .revoke(&id, user.as_deref())
                .await
                .map_err(|e| StartupError::Other(e.to_string()))?
            {
                println!("revoked {id}");
                Ok(())
            } else {
                Err(StartupError::Other(format!(
                    "no token {id}{}",
                    user.map(|u| format!(" of user {u}")).unwrap_or_default()
                )))
            }
        }
    }
}

fn generate_demo(dir: &Path) -> Result<(), StartupError> {
    let data = dir.join("data");
    let created = demo::ensure(&data).map_err(|e| {
        StartupError::Other(format!("writing demo data to {}: {e}", data.display()))
    })?;
    if created {
        tracing::info!(dir = %data.display(), "generated the quickstart data set");
    }
    Ok(())
}

fn load_policy(path: &Path) -> Result<PolicySet, StartupError> {
    let files_error = |message: String| StartupError::PolicyFiles {
        path: path.to_path_buf(),
        message,
    };
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| files_error(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    let mut sources = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| files_error(format!("{}: {e}", file.display())))?;
        sources.push(PolicySource {
            file: file.display().to_string(),
            text,
        });
    }
    PolicySet::load(&sources).map_err(StartupError::Policy)
}

async fn load_lake(config_path: &Path) -> Result<(Lake, Vec<String>), StartupError> {
    let config = Config::load(config_path)?;
    auth::validate_users(&config).map_err(|message| StartupError::Config {
        path: config_path.to_path_buf(),
        message,
    })?;
    // Checked here too, so `lakegate check` reports a bad issuer before a deployment does.
    oidc::OidcVerifier::new(&config.oidc).map_err(|message| StartupError::Config {
        path: config_path.to_path_buf(),
        message,
    })?;
    sso::check_config(&config).map_err(|message| StartupError::Config {
        path: config_path.to_path_buf(),
        message,
    })?;
    let aws = match &config.aws {
        Some(aws) => Some(Arc::new(aws::Aws::new(aws).await.map_err(|message| {
            StartupError::Config {
                path: config_path.to_path_buf(),
                message,
            }
        })?)),
        None => None,
    };
    let (catalog, skipped) = load_catalog(&config, aws.as_deref())
        .await
        .map_err(|message| StartupError::Config {
            path: config_path.to_path_buf(),
            message,
        })?;
    let policy = load_policy(&config.policy)?;
    if let Some(aws) = &aws {
        for persona in aws.roles.personas() {
            if !policy.has_persona(persona) {
                return Err(StartupError::Config {
                    path: config_path.to_path_buf(),
                    message: format!(
                        "aws.roles: persona {persona:?} is not defined in the policy files"
                    ),
                });
            }
        }
    }
    Ok((Lake::new(Arc::new(config), catalog, policy, aws)?, skipped))
}

/// The local catalog file's databases and the Glue databases, and the Glue tables left out.
async fn load_catalog(
    config: &Config,
    aws: Option<&aws::Aws>,
) -> Result<(LocalCatalog, Vec<String>), String> {
    let mut catalog = match &config.catalog {
        Some(path) => LocalCatalog::load(path).map_err(|e| e.to_string())?,
        None => LocalCatalog::empty(),
    };
    catalog.keep_small_tables(
        config.small_table_cache_megabytes,
        config.file_listing_seconds,
    );
    let mut skipped = Vec::new();
    if let Some(glue) = &config.glue {
        let Some(aws) = aws else {
            return Err("glue needs an aws section (region, endpoint, roles)".into());
        };
        let client = aws_sdk_glue::Client::new(&aws.sdk);
        let load =
            lakegate_catalog::load_glue(&client, glue.catalog_id.as_deref(), &glue.databases)
                .await
                .map_err(|e| e.to_string())?;
        skipped = load.skipped;
        catalog
            .add_databases(load.databases)
            .map_err(|e| e.to_string())?;
    }
    if catalog.catalog().databases.is_empty() {
        return Err("no databases to serve: name a catalog file or glue databases".into());
    }
    Ok((catalog, skipped))
}

/// Reads the catalog (file and Glue) again every `every` (when set) and on SIGHUP; sessions
/// started afterwards see the new tables. A failed read keeps the tables being served (and is
/// logged).
async fn refresh_catalog(lake: Arc<Lake>, every: Option<std::time::Duration>) {
    let mut tick = every.map(|every| {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "no catalog reload on SIGHUP");
            None
        }
    };
    loop {
        let why = tokio::select! {
            _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => "schedule",
            _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => "SIGHUP",
        };
        let loaded = load_catalog(&lake.config, lake.aws.as_deref())
            .await
            .and_then(|(catalog, _)| {
                let catalog_id = lake.config.glue.as_ref().and_then(|g| g.catalog_id.clone());
                lake::Tables::new(catalog, lake.aws.as_deref(), catalog_id)
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok(tables) => {
                let count: usize = tables
                    .catalog
                    .catalog()
                    .databases
                    .iter()
                    .map(|d| d.tables.len())
                    .sum();
                lake.replace_tables(tables);
                tracing::info!(tables = count, why, "catalog reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, why, "catalog reload failed; serving the tables read before")
            }
        }
    }
}

async fn serve(config_path: &Path, listen: Option<String>) -> Result<(), StartupError> {
    let (lake, skipped) = load_lake(config_path).await?;
    for table in skipped {
        tracing::warn!(%table, "Glue table not served");
    }
    let lake = Arc::new(lake);
    let every = lake
        .config
        .glue
        .as_ref()
        .filter(|glue| glue.refresh_seconds > 0)
        .map(|glue| std::time::Duration::from_secs(glue.refresh_seconds));
    tokio::spawn(refresh_catalog(lake.clone(), every));
    let tls = tls::acceptor(&lake.config.tls)?;
    let oidc = Arc::new(
        oidc::OidcVerifier::new(&lake.config.oidc).map_err(|message| StartupError::Config {
            path: config_path.to_path_buf(),
            message,
        })?,
    );
    let addr = listen.unwrap_or_else(|| lake.config.listen.clone());
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| StartupError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartupError::Listen {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(rules = lake.policy.rule_count(), database = %lake.config.database, "policy loaded");
    let (tokens, sign_in) = sso::start(&lake.config, oidc.clone())
        .await
        .map_err(|e| match e {
            sso::StartError::Config(message) => StartupError::Config {
                path: config_path.to_path_buf(),
                message,
            },
            sso::StartError::Startup(e) => e,
        })?;
    if let Some(sign_in) = sign_in {
        println!("lakegate sign-in listening on https://{}", sign_in.local);
        tokio::spawn(sign_in.serve());
    }
    // Tests and scripts wait for this exact line on stdout (printed last: everything is up).
    println!("lakegate listening on {local}");
    // Accepting runs as a task on the workers, not on this thread (`block_on`): the worker
    // whose I/O driver sees a client arrive accepts it itself, instead of waking this thread.
    let serving = server::Server::new(lake, Some(tls), oidc, tokens).serve(listener);
    tokio::spawn(serving)
        .await
        .unwrap_or_else(|stopped| Err(std::io::Error::other(stopped)))
        .map_err(|source| StartupError::Listen { addr, source })
}

/// Builds every configured user's session, so a rule that does not compile fails here, not
/// as a silently hidden table at run time.
async fn check(config_path: &Path) -> Result<(), StartupError> {
    let (lake, skipped) = load_lake(config_path).await?;
    for table in skipped {
        println!("note: Glue table {table} is not served");
    }
    let mut problems = Vec::new();
    let mut granted = 0;
    for user in &lake.config.users {
        let Some(identity) = lake.identity_of(&user.name) else {
            continue;
        };
        let session = lake.session_for(identity, None).await?;
        granted += session.catalog.granted;
        problems.extend(session.catalog.problems.iter().cloned());
        for view in &session.catalog.hidden_views {
            println!("note: user {}: view {view}", user.name);
        }
    }
    if problems.is_empty() {
        println!(
            "ok: {} rule(s), {} user(s), {} grant(s) compiled",
            lake.policy.rule_count(),
            lake.config.users.len(),
            granted
        );
        Ok(())
    } else {
        Err(StartupError::Other(problems.join("\n")))
    }
}

#[cfg(test)]
mod cli_tests {
    use clap::Parser;

    use super::{Cli, Command, TokenCommand};

    #[test]
    fn a_token_id_may_start_with_a_hyphen() {
        let cli = Cli::try_parse_from([
            "lakegate", "token", "revoke", "--config", "x.yaml", "-Abc_d", "--user", "erin",
        ])
        .expect("parses");
        let Command::Token {
            command: TokenCommand::Revoke { id, user, .. },
        } = cli.command
        else {
            panic!("not token revoke");
        };
        assert_eq!(id, "-Abc_d");
        assert_eq!(user.as_deref(), Some("erin"));
    }
}
