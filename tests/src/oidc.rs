//! A real OpenID provider for token logins: npm `oidc-provider`, started by
//! tests/peers/oidc/provider.mjs, issuing RS256 JWT access tokens for two directory users:
//! erin (group eu-sales) and frank (group gtm-stewards), neither a local user.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::{Gateway, workspace};

pub struct Provider {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub issuer: String,
    tokens: HashMap<String, String>,
}

impl Provider {
    pub fn start() -> Provider {
        let mut provider = Self::spawn(false);
        provider.wait_ready();
        provider
    }

    /// The provider for browser sign-in: it knows its issuer now, and registers the gateway's
    /// sign-in client once `register_sign_in` gives the gateway's callback URL (a gateway
    /// started with the issuer meanwhile; it contacts the issuer only when a user signs in).
    pub fn start_for_sso() -> Provider {
        Self::spawn(true)
    }

    /// Registers the gateway's sign-in client for `redirect_uri`; then the provider serves.
    pub fn register_sign_in(&mut self, redirect_uri: &str) {
        let stdin = self.child.stdin.as_mut().expect("provider stdin");
        writeln!(stdin, "sso {redirect_uri}").expect("write to the provider");
        stdin.flush().expect("flush");
        self.wait_ready();
    }

    fn spawn(sso: bool) -> Provider {
        let dir = workspace().join("tests/peers/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run `npm ci` in tests/peers/oidc (scripts/setup-clients does)"
        );
        let mut command = Command::new("node");
        if sso {
            command.env("SSO", "1");
        }
        let mut child = command
            .arg(dir.join("provider.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node must be installed to run the OpenID provider");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The first line names the issuer (its port is free only now).
        let issuer = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("issuer ").map(str::to_string))
            .expect("the provider did not start");
        Provider {
            child,
            lines,
            issuer,
            tokens: HashMap::new(),
        }
    }

    /// Readiness: one token per user the provider obtained from its own token endpoint, then
    /// "ready".
    fn wait_ready(&mut self) {
        for line in self.lines.by_ref().map_while(Result::ok) {
            let parts: Vec<&str> = line.splitn(3, ' ').collect();
            match parts.as_slice() {
                ["token", user, jwt] => {
                    self.tokens.insert(user.to_string(), jwt.to_string());
                }
                ["ready"] => break,
                _ => {}
            }
        }
        assert_eq!(self.tokens.len(), 2, "the provider did not start");
    }

    /// Sends a directory change (see provider.mjs) and waits for the provider to apply it.
    fn command(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("provider stdin");
        writeln!(stdin, "{line}").expect("write to the provider");
        stdin.flush().expect("flush");
        let verb = line.split(' ').next().unwrap_or_default().to_string();
        for reply in self.lines.by_ref().map_while(Result::ok) {
            if reply.starts_with(&format!("done {verb}")) {
                return;
            }
        }
        panic!("the provider stopped");
    }

    /// The user's groups in the directory from now on.
    pub fn set_groups(&mut self, user: &str, groups: &[&str]) {
        self.command(&format!("groups {user} {}", groups.join(",")));
    }

    /// The user leaves the company: the account is gone.
    pub fn disable(&mut self, user: &str) {
        self.command(&format!("disable {user}"));
    }

    pub fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    /// The quickstart with this provider as its token issuer.
    pub fn gateway(&self, audience: &str) -> Gateway {
        Gateway::start_with_config(&format!(
            "oidc:\n  - issuer: {}\n    audience: {audience}\n    attribute_claims: [email]\n",
            self.issuer
        ))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
