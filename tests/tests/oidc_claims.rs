//! Token checks that need tokens a provider would not issue (expired, not yet valid, without
//! an expiry) and a key rotation. The tokens are signed here with ES256 keys generated for the
//! test; the issuer is Python's http.server serving a discovery document and a JWKS from a
//! folder, which the test rewrites to rotate keys.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lakegate_e2e::{Gateway, rows};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

struct Key {
    kid: String,
    pair: EcdsaKeyPair,
}

impl Key {
    fn new(kid: &str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key pair");
        Key {
            kid: kid.to_string(),
            pair,
        }
    }

    fn jwk(&self) -> Value {
        // uncompressed point: 0x04 || x || y
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// A static issuer: discovery and JWKS files served by `python3 -m http.server`.
struct StaticIssuer {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl StaticIssuer {
    fn start() -> StaticIssuer {
        let dir = std::env::temp_dir().join(format!(
            "lakegate-issuer-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(dir.join(".well-known")).expect("issuer dir");
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 must be installed to serve the test issuer");
        let stdout = child.stdout.take().expect("stdout");
        // readiness: "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("Serving HTTP"))
            .expect("http.server started");
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .expect("port")
            .to_string();
        let url = format!("http://127.0.0.1:{port}");
        std::fs::write(
            dir.join(".well-known/openid-configuration"),
            json!({"issuer": url, "jwks_uri": format!("{url}/jwks.json")}).to_string(),
        )
        .expect("discovery");
        StaticIssuer { child, dir, url }
    }

    fn publish(&self, keys: &[&Key]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        std::fs::write(self.dir.join("jwks.json"), set.to_string()).expect("jwks");
    }
}

impl Drop for StaticIssuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::test]
async fn expiry_not_before_and_key_rotation() {
    let issuer = StaticIssuer::start();
    let first = Key::new("first");
    issuer.publish(&[&first]);
    let gateway = Gateway::start_with_config(&format!(
        "oidc:\n  - issuer: {}\n    audience: urn:lakegate\n    algorithms: [ES256]\n    clock_skew_seconds: 60\n    key_refresh_seconds: 0\n",
        issuer.url
    ));
    let claims = |exp: Option<i64>, nbf: Option<i64>| {
        let mut c = json!({
            "iss": issuer.url, "aud": "urn:lakegate", "sub": "u-1",
            "preferred_username": "erin", "groups": ["eu-sales"], "iat": now(),
        });
        if let Some(exp) = exp {
            c["exp"] = json!(now() as i64 + exp);
        }
        if let Some(nbf) = nbf {
            c["nbf"] = json!(now() as i64 + nbf);
        }
        c
    };
    let login = |token: String| {
        let gateway = &gateway;
        async move { gateway.try_connect("erin", &token).await }
    };

    let valid = login(first.sign(&claims(Some(600), None)))
        .await
        .expect("valid token");
    assert_eq!(
        rows(&valid, "SELECT current_user").await.expect("who"),
        vec!["erin"]
    );
    assert!(
        login(first.sign(&claims(Some(-30), None))).await.is_ok(),
        "expired 30 s ago is within the 60 s clock skew"
    );
    for (case, token) in [
        ("expired", first.sign(&claims(Some(-3600), None))),
        ("not yet valid", first.sign(&claims(Some(7200), Some(3600)))),
        ("no expiry", first.sign(&claims(None, None))),
    ] {
        let error = login(token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{case}: logged in"));
        assert_eq!(
            error.code().map(|c| c.code()),
            Some("28P01"),
            "{case}: {error}"
        );
    }

    // Rotation: the issuer publishes a new key; a token signed with it is accepted once the
    // gateway has fetched the keys again, which the unknown kid triggers.
    let second = Key::new("second");
    let rotated = second.sign(&claims(Some(600), None));
    issuer.publish(&[&second]);
    let after = login(rotated).await.expect("token signed with the new key");
    assert_eq!(
        rows(&after, "SELECT current_user").await.expect("who"),
        vec!["erin"]
    );
    // a key the issuer never published stays unknown
    let stranger = Key::new("second");
    assert!(
        login(stranger.sign(&claims(Some(600), None)))
            .await
            .is_err(),
        "same kid, different key: the signature does not verify"
    );
}
