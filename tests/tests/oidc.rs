//! Company tokens as passwords, against a real OpenID provider (npm `oidc-provider`, started
//! here by tests/peers/oidc/provider.mjs) that issues RS256 JWT access tokens for two
//! directory users: erin (group eu-sales) and frank (group gtm-stewards). Neither is a local
//! user of the quickstart, so both log in with a token.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lakegate_e2e::oidc::Provider;

use lakegate_e2e::{assert_eu_sales_view, psql_current_user, rows};

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
    // her groups come from the token: eu-sales sees EU rows only, and no patients
    assert_eu_sales_view(&erin, "erin").await;

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
    assert_eq!(
        psql_current_user(&gateway, "erin", provider.token("erin")),
        "erin"
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

/// PostgreSQL 18's OAuth (SASL OAUTHBEARER, RFC 7628) byte by byte, as libpq 18 sends it: no
/// stock client here can run the flow (libpq 18's oauth module is not available), so the test
/// is the client.
mod oauthbearer {
    use bytes::BytesMut;
    use fallible_iterator::FallibleIterator;
    use lakegate_e2e::raw::Conn;
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;

    use super::Provider;

    const MECHANISM: &str = "OAUTHBEARER";

    async fn start(gateway: &lakegate_e2e::Gateway) -> Conn {
        let mut conn = Conn::start(gateway, &[("user", "erin"), ("database", "gtm")]).await;
        match conn.next().await {
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<&str> = body.mechanisms().collect().expect("mechanisms");
                assert_eq!(mechanisms, [MECHANISM]);
            }
            _ => panic!("expected AuthenticationSASL"),
        }
        conn
    }

    async fn initial_response(conn: &mut Conn, data: &[u8]) {
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(MECHANISM, data, &mut out).expect("message");
        conn.send(out).await;
    }

    /// The SQLSTATE of the ErrorResponse that ends a failed login.
    async fn error_code(conn: &mut Conn) -> String {
        loop {
            match conn.next().await {
                Message::ErrorResponse(body) => {
                    return body
                        .fields()
                        .find(|f| Ok(f.type_() == b'C'))
                        .expect("fields")
                        .map(|f| String::from_utf8_lossy(f.value_bytes()).into_owned())
                        .unwrap_or_default();
                }
                Message::ReadyForQuery(_) => panic!("logged in"),
                _ => {}
            }
        }
    }

    fn gateway(provider: &Provider) -> lakegate_e2e::Gateway {
        lakegate_e2e::Gateway::start_with_config(&format!(
            "token_login: oauthbearer\noidc:\n  - issuer: {}\n    audience: urn:lakegate\n",
            provider.issuer
        ))
    }

    #[tokio::test]
    async fn discovery_then_bearer_token() {
        let provider = Provider::start();
        let gateway = gateway(&provider);

        // Discovery: a client without a token sends an empty key/value list and learns
        // where to get one; then it acknowledges with a lone kvsep and the login fails.
        let mut conn = start(&gateway).await;
        initial_response(&mut conn, b"n,,\x01\x01").await;
        let challenge = match conn.next().await {
            Message::AuthenticationSaslContinue(body) => body.data().to_vec(),
            _ => panic!("expected the discovery error in AuthenticationSASLContinue"),
        };
        let challenge: serde_json::Value = serde_json::from_slice(&challenge).expect("JSON");
        assert_eq!(challenge["status"], "invalid_token");
        assert_eq!(
            challenge["openid-configuration"],
            format!("{}/.well-known/openid-configuration", provider.issuer)
        );
        assert_eq!(challenge["scope"], "openid");
        let mut out = BytesMut::new();
        frontend::sasl_response(b"\x01", &mut out).expect("message");
        conn.send(out).await;
        assert_eq!(error_code(&mut conn).await, "28000");

        // With the token: gs2 header, kvsep, auth=Bearer <token>, kvsep, kvsep.
        let mut conn = start(&gateway).await;
        let response = format!("n,,\x01auth=Bearer {}\x01\x01", provider.token("erin"));
        initial_response(&mut conn, response.as_bytes()).await;
        loop {
            match conn.next().await {
                Message::AuthenticationOk
                | Message::ParameterStatus(_)
                | Message::BackendKeyData(_) => {}
                Message::ReadyForQuery(_) => break,
                _ => panic!("unexpected message while logging in"),
            }
        }
        let mut out = BytesMut::new();
        frontend::query("SELECT current_user, count(*) FROM gtm.sales", &mut out).expect("query");
        conn.send(out).await;
        let row = loop {
            match conn.next().await {
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let values: Vec<String> = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect::<Vec<_>>()
                        .expect("row")
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect();
                    break values;
                }
                Message::ErrorResponse(_) => panic!("query failed"),
                _ => {}
            }
        };
        // erin's token says eu-sales: the EU rows of sales
        assert_eq!(row, ["erin", "2283"]);
    }

    #[tokio::test]
    async fn bad_bearer_tokens_fail_the_login() {
        let provider = Provider::start();
        let gateway = gateway(&provider);
        for response in [
            format!("n,,\x01auth=Bearer {}\x01\x01", provider.token("frank")),
            "n,,\x01auth=Bearer not.a.token\x01\x01".to_string(),
        ] {
            let mut conn = start(&gateway).await;
            initial_response(&mut conn, response.as_bytes()).await;
            assert_eq!(error_code(&mut conn).await, "28000", "{response:?}");
        }
        // malformed SASL data is a protocol violation
        let mut conn = start(&gateway).await;
        initial_response(&mut conn, b"x,,\x01\x01").await;
        assert_eq!(error_code(&mut conn).await, "08P01");
    }
}
