//! Company tokens as passwords, against a real OpenID provider (npm `oidc-provider`, started
//! here by tests/peers/oidc/provider.mjs) that issues RS256 JWT access tokens for two
//! directory users: erin (group eu-sales) and frank (group gtm-stewards). Neither is a local
//! user of the quickstart, so both log in with a token.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lakegate_e2e::{Gateway, rows, sqlstate, workspace};

struct Provider {
    child: Child,
    issuer: String,
    tokens: HashMap<String, String>,
}

impl Provider {
    fn start() -> Provider {
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

    fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    fn gateway(&self, audience: &str) -> Gateway {
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

/// A JWT with its payload replaced (the signature no longer matches).
fn with_payload(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64")).expect("json");
    edit(&mut payload);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("json"));
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn with_header(token: &str, header: serde_json::Value, signature: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("json"));
    format!("{header}.{}.{signature}", parts[1])
}

#[tokio::test]
async fn tokens_log_in_with_the_identity_they_prove() {
    let provider = Provider::start();
    let gateway = provider.gateway("urn:lakegate");

    let erin = gateway
        .try_connect("erin", provider.token("erin"))
        .await
        .expect("erin logs in with her token");
    assert_eq!(
        rows(&erin, "SELECT current_user").await.expect("who"),
        vec!["erin"]
    );
    // her groups come from the token: eu-sales sees EU rows only, and no patients
    assert_eq!(
        rows(&erin, "SELECT DISTINCT country FROM sales ORDER BY 1")
            .await
            .expect("sales"),
        vec!["CH", "DE", "DK", "FR"]
    );
    assert_eq!(
        sqlstate(rows(&erin, "SELECT count(*) FROM patients").await),
        "42P01"
    );

    let frank = gateway
        .try_connect("frank", provider.token("frank"))
        .await
        .expect("frank logs in with his token");
    assert_eq!(
        rows(&frank, "SELECT count(*) FROM patients")
            .await
            .expect("steward"),
        vec!["3000"]
    );

    // psql sends the token as its password too
    let out = Command::new("psql")
        .arg(gateway.conn_str("erin", provider.token("erin")))
        .args(["-XAtc", "SELECT current_user"])
        .output()
        .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "erin",
        "{out:?}"
    );
}

#[tokio::test]
async fn forged_and_misused_tokens_are_refused_alike() {
    let provider = Provider::start();
    let gateway = provider.gateway("urn:lakegate");
    let erin = provider.token("erin");
    let kid = {
        let header = erin.split('.').next().expect("header");
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
        header["kid"].as_str().unwrap_or_default().to_string()
    };
    let signature = erin.rsplit('.').next().expect("signature");
    let attacks: Vec<(&str, String)> = vec![
        ("another user's token", provider.token("frank").to_string()),
        (
            "payload with more groups",
            with_payload(erin, |p| p["groups"] = serde_json::json!(["gtm-stewards"])),
        ),
        (
            "alg none",
            with_header(erin, serde_json::json!({"alg": "none", "typ": "JWT"}), ""),
        ),
        (
            "HS256 with the issuer's key id",
            with_header(
                erin,
                serde_json::json!({"alg": "HS256", "kid": kid}),
                signature,
            ),
        ),
        (
            "unknown key id",
            with_header(
                erin,
                serde_json::json!({"alg": "RS256", "kid": "not-a-key"}),
                signature,
            ),
        ),
        ("not a token", "erin".to_string()),
    ];
    for (attack, token) in attacks {
        let error = gateway
            .try_connect("erin", &token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{attack}: logged in"));
        let code = error.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("28P01"), "{attack}: {error}");
    }
    // Over 16 KB: refused before it is parsed (pgwire closes the connection on a password
    // message over 10,000 bytes, see the README), and the gateway keeps serving.
    let oversized = format!("{erin}{}", "A".repeat(17 * 1024));
    assert!(
        gateway.try_connect("erin", &oversized).await.is_err(),
        "oversized token"
    );
    // the gateway still serves the real token
    let ok = gateway.try_connect("erin", erin).await.expect("real token");
    assert_eq!(rows(&ok, "SELECT 1").await.expect("serving"), vec!["1"]);

    // a token for another audience, and one from an issuer the gateway does not trust
    let elsewhere = provider.gateway("urn:another-service");
    assert!(
        elsewhere.try_connect("erin", erin).await.is_err(),
        "wrong audience"
    );
    let stranger = Provider::start();
    assert!(
        gateway
            .try_connect("erin", stranger.token("erin"))
            .await
            .is_err(),
        "untrusted issuer"
    );
}

#[tokio::test]
async fn tokens_never_travel_in_clear() {
    let provider = Provider::start();
    let gateway = provider.gateway("urn:lakegate");
    let config = format!(
        "host=127.0.0.1 port={} dbname=gtm user=erin password={} sslmode=disable",
        gateway.port,
        provider.token("erin")
    );
    let error = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused without TLS");
    assert_eq!(error.code().map(|c| c.code()), Some("28000"), "{error}");
}
