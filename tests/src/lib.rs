//! Test harness: starts the real `lakegate` binary on a free port with the quickstart's
//! catalog and policy, and connects real clients to it over TLS.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::Client;

pub mod aws;
pub mod oidc;
pub mod postgres;
pub mod raw;
pub mod saml;
pub mod sso;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, SignatureScheme,
};

/// The workspace of the checkout under test. Read at run time: cargo sets
/// `CARGO_MANIFEST_DIR` when it runs tests, and a compile-time path goes stale when a cached
/// target directory serves another checkout (as in CI).
pub fn workspace() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest).join("..")
}

pub fn quickstart() -> PathBuf {
    workspace().join("examples/quickstart")
}

/// The `lakegate` binary of this build: `LAKEGATE_BIN`, else next to the test executable's
/// `deps/` folder (where `cargo build -p lakegate` puts it).
pub fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("LAKEGATE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("lakegate"))
        .expect("target folder");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p lakegate` (scripts/test does)",
        bin.display()
    );
    bin
}

static DEMO_DATA: Once = Once::new();

/// A running gateway, stopped when dropped.
/// The quickstart's demo data set, generated once per test process (a fresh clone has none).
pub fn ensure_demo_data() {
    DEMO_DATA.call_once(|| {
        let status = Command::new(binary())
            .args(["generate-demo", "--dir"])
            .arg(quickstart())
            .status()
            .expect("run lakegate generate-demo");
        assert!(status.success(), "lakegate generate-demo failed");
    });
}

/// How a test's gateway differs from the quickstart.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// One policy file's text instead of the quickstart's policy folder.
    pub policy: Option<String>,
    /// The catalog file's text instead of the quickstart's.
    pub catalog: Option<String>,
    /// YAML appended to the configuration file.
    pub extra_config: String,
    /// Text replaced in the configuration file (each must occur).
    pub config_replacements: Vec<(String, String)>,
    /// Environment of the gateway process.
    pub env: Vec<(String, String)>,
}

pub struct Gateway {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    cert: Vec<u8>,
    /// `https://127.0.0.1:PORT` of the sign-in listener, when `sso` is configured.
    pub sign_in_url: Option<String>,
}

impl Gateway {
    /// Starts the quickstart configuration on 127.0.0.1:0 with its own certificate folder.
    pub fn start() -> Gateway {
        Self::start_inner(None, "")
    }

    /// The quickstart with more top-level configuration (YAML appended to the config file).
    pub fn start_with_config(extra: &str) -> Gateway {
        Self::start_inner(None, extra)
    }

    /// The quickstart's catalog and users with another policy (one YAML file's text).
    pub fn start_with_policy(policy: &str) -> Gateway {
        Self::start_inner(Some(policy), "")
    }

    fn start_inner(policy: Option<&str>, extra_config: &str) -> Gateway {
        Self::start_setup(Setup {
            policy: policy.map(str::to_string),
            extra_config: extra_config.to_string(),
            ..Setup::default()
        })
    }

    /// The quickstart changed as `setup` says.
    pub fn start_setup(setup: Setup) -> Gateway {
        let policy = setup.policy.as_deref();
        let extra_config = setup.extra_config.as_str();
        ensure_demo_data();
        let dir = std::env::temp_dir().join(format!(
            "lakegate-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let qs = quickstart().canonicalize().expect("quickstart folder");
        let catalog = match &setup.catalog {
            Some(text) => {
                let path = dir.join("catalog.yaml");
                std::fs::write(&path, text).expect("catalog file");
                path
            }
            None => qs.join("catalog.yaml"),
        };
        let policy_dir = match policy {
            Some(text) => {
                let dir = dir.join("policy");
                std::fs::create_dir_all(&dir).expect("policy dir");
                std::fs::write(dir.join("policy.yaml"), text).expect("policy file");
                dir
            }
            None => qs.join("policy"),
        };
        let text = std::fs::read_to_string(qs.join("lakegate.yaml")).expect("quickstart config");
        let config = text
            .replace(
                "catalog: catalog.yaml",
                &format!("catalog: {}", catalog.display()),
            )
            .replace(
                "policy: policy",
                &format!("policy: {}", policy_dir.display()),
            )
            .replace(
                "cert: certs/server.crt",
                &format!("cert: {}", dir.join("server.crt").display()),
            )
            .replace(
                "key: certs/server.key",
                &format!("key: {}", dir.join("server.key").display()),
            );
        let mut config = format!("{config}\n{extra_config}\n");
        for (from, to) in &setup.config_replacements {
            assert!(config.contains(from.as_str()), "config has no {from:?}");
            config = config.replace(from.as_str(), to);
        }
        std::fs::write(dir.join("lakegate.yaml"), config).expect("write config");
        Self::start_with(&dir.join("lakegate.yaml"), dir, &setup.env)
    }

    fn start_with(config: &Path, dir: PathBuf, env: &[(String, String)]) -> Gateway {
        let mut child = Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            // LAKEGATE_TEST_LOG=debug shows the gateway's log while debugging a test
            .env(
                "LAKEGATE_LOG",
                std::env::var("LAKEGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lakegate");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let (sign_in_tx, sign_in_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("lakegate listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                if let Some(url) = line.strip_prefix("lakegate sign-in listening on ") {
                    let _ = sign_in_tx.send(url.to_string());
                }
            }
        });
        // Readiness is the line the gateway prints once its sockets are bound (the sign-in
        // listener's line, when configured, comes first).
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("lakegate exited before listening ({status}); its stderr is above");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("lakegate did not report listening within 60 s");
            }
        };
        let sign_in_url = sign_in_rx.try_recv().ok();
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let cert = std::fs::read(dir.join("server.crt")).expect("generated certificate");
        Gateway {
            child,
            port,
            dir,
            cert,
            sign_in_url,
        }
    }

    /// The gateway's generated TLS certificate (PEM).
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert
    }

    pub fn conn_str(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=gtm user={user} password={password} sslmode=require",
            self.port
        )
    }

    /// A TLS connector that trusts exactly the gateway's generated certificate.
    pub fn tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config())
    }

    /// The rustls client configuration behind `tls()`, for raw protocol tests.
    pub fn tls_config(&self) -> ClientConfig {
        let cert = CertificateDer::from_pem_slice(&self.cert)
            .expect("PEM certificate")
            .into_owned();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert { cert, provider }))
            .with_no_client_auth()
    }

    /// Connects as `user` (password = user name, as in the quickstart).
    pub async fn connect(&self, user: &str) -> Client {
        self.try_connect(user, user)
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_str(user, password), self.tls()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Connects as `user` and keeps the NOTICE messages the server sends, in order.
    pub async fn connect_with_notices(
        &self,
        user: &str,
    ) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (client, mut connection) =
            tokio_postgres::connect(&self.conn_str(user, user), self.tls())
                .await
                .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) =
                futures::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                        let _ = tx.send(notice.message().to_string());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        (client, rx)
    }

    /// CPU time the gateway process has used so far (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("gateway /proc stat");
        // fields after the parenthesised command name; utime and stime are fields 14 and 15
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        // Linux reports in USER_HZ, which is 100 on every architecture it supports
        Duration::from_millis(ticks * 10)
    }

    /// The gateway process's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("gateway /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmHWM in /proc status")
    }

    /// Connects as `user` once `table` is served to them (sessions see the catalog read before
    /// they start); fails the test after `timeout`.
    pub async fn connect_when_served(&self, user: &str, table: &str, timeout: Duration) -> Client {
        let deadline = Instant::now() + timeout;
        loop {
            let client = self.connect(user).await;
            if rows(&client, &format!("SELECT 1 FROM {table} LIMIT 1"))
                .await
                .is_ok()
            {
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "{table} not served to {user} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the gateway to read its catalog again (SIGHUP), as an operator would.
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "SIGHUP to the gateway");
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn rand_suffix() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    t + u128::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Accepts exactly one certificate (the gateway's self-signed one), with real signature checks.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General("not the gateway's certificate".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Rows of a simple query as text (`NULL` for nulls), columns joined by `|`.
pub async fn rows(client: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect())
}

/// The SQLSTATE of a failed query (panics if it did not fail: the caller expects an error).
/// Who psql is once logged in with `password` (empty when the login failed).
pub fn psql_current_user(gateway: &Gateway, user: &str, password: &str) -> String {
    let out = Command::new("psql")
        .arg(gateway.conn_str(user, password))
        .args(["-XAtc", "SELECT current_user"])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What an eu-sales member of the quickstart sees, logged in as `user`: EU sales only, no
/// patients table.
pub async fn assert_eu_sales_view(client: &Client, user: &str) {
    assert_eq!(
        rows(client, "SELECT current_user").await.expect("who"),
        vec![user]
    );
    assert_eq!(
        rows(client, "SELECT DISTINCT country FROM sales ORDER BY 1")
            .await
            .expect("sales"),
        vec!["CH", "DE", "DK", "FR"]
    );
    assert_eq!(
        sqlstate(rows(client, "SELECT count(*) FROM patients").await),
        "42P01"
    );
}

pub fn sqlstate(result: Result<Vec<String>, tokio_postgres::Error>) -> String {
    match result {
        Ok(rows) => panic!("expected an error, got rows {rows:?}"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| panic!("error without SQLSTATE: {e}")),
    }
}

/// Whether a command succeeded, and all it printed (stdout, then stderr).
pub fn outcome(out: std::process::Output) -> (bool, String) {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Waits (polling, bounded) until `f` is true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
