//! AWS for the tests: a real `moto` server (PyPI) with IAM enforcement, seeded as a platform
//! team would set up an account for Lakegate, behind a recording proxy that shows what the
//! gateway sent (moto itself ignores SourceIdentity and session tags).
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{quickstart, wait_until, workspace};

pub const ACCOUNT: &str = "123456789012";

/// The venv `scripts/setup-clients` makes, holding moto and boto3.
pub fn venv_bin(program: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home)
        .join(".cache/lakegate-venv/bin")
        .join(program)
}

pub fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

pub struct Moto {
    moto: Child,
    proxy: Child,
    /// The gateway talks to this endpoint (the proxy); the tests' own calls too.
    pub endpoint: String,
    /// moto itself, for calls that should not be recorded.
    pub moto_endpoint: String,
    pub gateway_key: String,
    pub gateway_secret: String,
    /// The account's admin user (IAM allows it everything), for tests that change AWS.
    pub admin_key: String,
    pub admin_secret: String,
    log: PathBuf,
}

/// Reads moto's stderr until werkzeug names the port it bound, then keeps draining it (one line
/// per request) so moto never blocks on a full pipe. Asking for port 0 and reading the answer
/// leaves no window in which a test running beside this one could take the same port. A moto
/// that names no port within a minute is stopped, and the test fails saying what it printed.
fn bound_port(moto: &mut Child) -> u16 {
    let stderr = moto.stderr.take().expect("moto stderr");
    let (lines, said_line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Bytes, not `lines()`: a line that is not UTF-8 must not end the draining.
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            // once the port is read nobody listens: the lines are only drained
            let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    loop {
        let failure =
            match said_line.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(port) = line
                        .split("Running on http://127.0.0.1:")
                        .nth(1)
                        .and_then(|rest| rest.trim().parse::<u16>().ok())
                    {
                        return port;
                    }
                    said.push(line);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => "named no port within 60 s",
                Err(RecvTimeoutError::Disconnected) => "stopped before listening",
            };
        let _ = moto.kill();
        let _ = moto.wait();
        panic!("moto_server {failure}: {}", said.join("\n"));
    }
}

impl Moto {
    /// Starts moto (IAM enforced after the seed's first three calls), seeds it, and starts the
    /// recording proxy in front of it. Fails the test when moto is not installed.
    pub fn start() -> Moto {
        Self::start_inner(true)
    }

    /// moto without IAM enforcement: moto 5.2 fails (500) on unsigned calls such as
    /// AssumeRoleWithWebIdentity once it enforces IAM.
    pub fn start_without_iam() -> Moto {
        Self::start_inner(false)
    }

    fn start_inner(enforce_iam: bool) -> Moto {
        let server = venv_bin("moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/setup-clients (installs moto[server] into the venv)",
            server.display()
        );
        let mut moto = Command::new(&server);
        if enforce_iam {
            moto.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        let mut moto = moto
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let port = bound_port(&mut moto);
        let moto_endpoint = format!("http://127.0.0.1:{port}");
        let ready = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ready, "moto did not listen on {moto_endpoint} within 30 s");

        crate::ensure_demo_data();
        let seed = Command::new(venv_bin("python"))
            .arg(workspace().join("tests/peers/aws/seed.py"))
            .arg(&moto_endpoint)
            .arg(quickstart().join("data"))
            .arg(quickstart().join("catalog.yaml"))
            .output()
            .expect("run seed.py");
        assert!(
            seed.status.success(),
            "seeding moto failed: {}",
            String::from_utf8_lossy(&seed.stderr)
        );
        let seeded: Value = serde_json::from_slice(&seed.stdout).expect("seed output");

        let log = std::env::temp_dir().join(format!("lakegate-aws-{port}.jsonl"));
        let _ = std::fs::remove_file(&log);
        let mut proxy = Command::new(venv_bin("python"))
            .arg(workspace().join("tests/peers/aws/recording_proxy.py"))
            .arg(port.to_string())
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start recording proxy");
        let mut line = String::new();
        let stdout = proxy.stdout.take().expect("proxy stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("proxy port line");
        let proxy_port = line
            .trim()
            .strip_prefix("proxy listening ")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("proxy said {line:?}"));
        Moto {
            moto,
            proxy,
            endpoint: format!("http://127.0.0.1:{proxy_port}"),
            moto_endpoint,
            gateway_key: seeded["key"].as_str().expect("key").to_string(),
            gateway_secret: seeded["secret"].as_str().expect("secret").to_string(),
            admin_key: seeded["admin_key"].as_str().expect("admin key").to_string(),
            admin_secret: seeded["admin_secret"]
                .as_str()
                .expect("admin secret")
                .to_string(),
            log,
        }
    }

    /// The gateway's process environment: its own credentials, and nothing from the host.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        let empty = std::env::temp_dir().join("lakegate-empty-aws-config");
        std::fs::write(&empty, "").expect("empty AWS config file");
        let empty = empty.display().to_string();
        [
            ("AWS_ACCESS_KEY_ID", self.gateway_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.gateway_secret.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", empty.as_str()),
            ("AWS_SHARED_CREDENTIALS_FILE", empty.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs Python with boto3 as the admin user: `glue = client("glue")` etc. are ready.
    pub fn boto3(&self, script: &str) {
        let prelude = format!(
            "import boto3\nfrom botocore.config import Config\n\
             def client(service):\n    return boto3.client(service, endpoint_url={:?}, region_name='us-east-1', \
             aws_access_key_id={:?}, aws_secret_access_key={:?}, config=Config(s3={{'addressing_style': 'path'}}))\n",
            self.moto_endpoint, self.admin_key, self.admin_secret
        );
        let out = Command::new(venv_bin("python"))
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every request the proxy forwarded so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `sts:AssumeRole` calls so far (their form fields and moto's answer).
    pub fn assume_role_calls(&self) -> Vec<Value> {
        self.calls("AssumeRole")
    }

    /// The query-protocol calls of one action so far.
    pub fn calls(&self, action: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["form"]["Action"] == action)
            .collect()
    }
}

impl Moto {
    /// The JSON-protocol calls (Athena, Glue) of one operation so far, e.g.
    /// `AmazonAthena.StartQueryExecution`.
    pub fn json_calls(&self, target: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["target"] == target)
            .collect()
    }

    /// Queues one Athena result (moto runs no SQL): `rows[0]` is the header, `None` is NULL.
    /// The next StartQueryExecution takes it, and moto writes it as CSV to the output location.
    pub fn queue_athena_result(&self, rows: &[Vec<Option<String>>]) {
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                let data: Vec<Value> = row
                    .iter()
                    .map(|cell| match cell {
                        Some(text) => serde_json::json!({ "VarCharValue": text }),
                        None => serde_json::json!({}),
                    })
                    .collect();
                serde_json::json!({ "Data": data })
            })
            .collect();
        self.moto_api(
            "/moto-api/static/athena/query-results",
            serde_json::json!({ "results": [{ "rows": rows, "column_info": [] }] }),
        );
    }

    /// How Athena queries move from QUEUED to RUNNING to SUCCEEDED: after `polls`
    /// GetQueryExecution calls each (moto's state manager).
    pub fn athena_polls_per_state(&self, polls: u32) {
        self.moto_api(
            "/moto-api/state-manager/set-transition",
            serde_json::json!({
                "model_name": "athena::execution",
                "transition": { "progression": "manual", "times": polls },
            }),
        );
    }

    /// POSTs `body` to one of moto's own (test-control) APIs.
    fn moto_api(&self, path: &str, body: Value) {
        use std::io::Write;
        let script = format!(
            "import sys, urllib.request\n\
             r = urllib.request.urlopen(urllib.request.Request({:?}, data=sys.stdin.buffer.read(), \
             method='POST', headers={{'Content-Type': 'application/json'}}))\n\
             assert r.status < 300, r.status\n",
            format!("{}{path}", self.moto_endpoint)
        );
        let mut child = Command::new(venv_bin("python"))
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.to_string().as_bytes())
            .expect("write body");
        let out = child.wait_with_output().expect("python");
        assert!(
            out.status.success(),
            "moto API {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The access key STS handed out in an AssumeRole answer.
pub fn issued_key(call: &Value) -> Option<String> {
    let body = call["response"].as_str()?;
    let start = body.find("<AccessKeyId>")? + "<AccessKeyId>".len();
    let end = body[start..].find("</AccessKeyId>")? + start;
    Some(body[start..end].to_string())
}

impl Drop for Moto {
    fn drop(&mut self) {
        for child in [&mut self.proxy, &mut self.moto] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The quickstart's policy with reader personas for the two analyst groups.
pub fn reader_policy() -> String {
    let text = std::fs::read_to_string(quickstart().join("policy/gtm.yaml")).expect("policy");
    text.replace(
        "personas:\n",
        "personas:\n  eu-reader:\n    groups: [eu-sales]\n  us-reader:\n    groups: [us-analyst]\n",
    )
}
