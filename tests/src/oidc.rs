//! A real OpenID provider for token logins: npm `oidc-provider`, started by
//! tests/peers/oidc/provider.mjs, issuing RS256 JWT access tokens for two directory users:
//! erin (group eu-sales) and frank (group gtm-stewards), neither a local user.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::{Gateway, workspace};

pub struct Provider {
    child: Child,
    pub issuer: String,
    tokens: HashMap<String, String>,
}

impl Provider {
    pub fn start() -> Provider {
        let dir = workspace().join("tests/peers/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run `npm ci` in tests/peers/oidc (scripts/setup-clients does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node must be installed to run the OpenID provider");
        let stdout = child.stdout.take().expect("stdout");
        let mut issuer = String::new();
        let mut tokens = HashMap::new();
        // Readiness: the provider prints its issuer, then one token per user it obtained
        // from its own token endpoint.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parts: Vec<&str> = line.splitn(3, ' ').collect();
            match parts.as_slice() {
                ["issuer", url] => issuer = url.to_string(),
                ["token", user, jwt] => {
                    tokens.insert(user.to_string(), jwt.to_string());
                }
                _ => {}
            }
            if tokens.len() == 2 {
                break;
            }
        }
        assert!(
            !issuer.is_empty() && tokens.len() == 2,
            "the provider did not start"
        );
        Provider {
            child,
            issuer,
            tokens,
        }
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
