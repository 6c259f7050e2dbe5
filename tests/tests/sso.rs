//! Browser sign-in and personal access tokens, end to end: a real OpenID provider (npm
//! `oidc-provider`, its development login pages driven like a browser would), a SAML IdP whose
//! assertions xmlsec1 signs, the token store as a file and in a real PostgreSQL, and logins with
//! the tokens from tokio-postgres and psql.
use std::process::Command;

use lakegate_e2e::oidc::Provider;
use lakegate_e2e::postgres::Postgres;
use lakegate_e2e::saml::Idp;
use lakegate_e2e::sso::Browser;
use lakegate_e2e::{
    Gateway, Setup, assert_eu_sales_view, binary, outcome, psql_current_user, rows, sqlstate,
};
use reqwest::StatusCode;

const SECRET_ENV: &str = "LAKEGATE_TEST_SSO_SECRET";

/// A provider for sign-in, and the quickstart with the provider's tokens, personal access
/// tokens in `store` and sign-in on a free port, registered with the provider.
fn provider_and_gateway(store: &str, recheck_seconds: u64) -> (Provider, Gateway) {
    let mut provider = Provider::start_for_sso();
    let gateway = gateway(&provider, store, recheck_seconds);
    let callback = format!(
        "{}/login/oidc/callback",
        gateway.sign_in_url.as_deref().expect("sign-in listener")
    );
    provider.register_sign_in(&callback);
    (provider, gateway)
}

/// The quickstart with the provider's tokens, personal access tokens in `store`, and sign-in
/// on a free port.
fn gateway(provider: &Provider, store: &str, recheck_seconds: u64) -> Gateway {
    Gateway::start_setup(Setup {
        extra_config: format!(
            "oidc:\n  - issuer: {issuer}\n    audience: urn:lakegate\n\
             access_tokens:\n  {store}\n  recheck_seconds: {recheck_seconds}\n\
             sso:\n  listen: 127.0.0.1:0\n  oidc:\n    issuer: {issuer}\n    client_id: lakegate\n    client_secret_env: {SECRET_ENV}\n",
            issuer = provider.issuer
        ),
        env: vec![(SECRET_ENV.into(), "lakegate-secret".into())],
        ..Setup::default()
    })
}

fn token_cli(gateway: &Gateway, args: &[&str]) -> (bool, String) {
    outcome(
        Command::new(binary())
            .args(["token", args[0], "--config"])
            .arg(gateway.dir.join("lakegate.yaml"))
            .args(&args[1..])
            .output()
            .expect("lakegate token"),
    )
}

fn token_id(token: &str) -> &str {
    &token["lgp_".len().."lgp_".len() + 16]
}

async fn login_state(gateway: &Gateway, user: &str, token: &str) -> String {
    match gateway.try_connect(user, token).await {
        Ok(_) => "ok".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_sign_in_mints_tokens_that_log_in_until_revoked() {
    let (provider, gateway) = provider_and_gateway("file: tokens.json", 3600);
    let browser = Browser::new(&gateway);

    let landing = browser.oidc_sign_in(&provider.issuer, "erin").await;
    assert!(landing.url.ends_with("/tokens"), "{landing:?}");
    assert!(
        landing.html.contains("Signed in as <b>erin</b>"),
        "{}",
        landing.html
    );
    assert!(landing.html.contains("eu-sales"));

    let token = browser.create_token("Power BI <sales>").await;
    assert!(token.starts_with("lgp_"), "{token}");
    let listed = browser.get("/tokens").await;
    assert!(
        listed.html.contains("Power BI &lt;sales&gt;"),
        "names are escaped"
    );
    assert!(!listed.html.contains(&token), "a token is shown only once");

    // The token is erin's password, with erin's groups from the sign-in.
    let erin = gateway
        .try_connect("erin", &token)
        .await
        .expect("token login");
    assert_eu_sales_view(&erin, "erin").await;
    assert_eq!(psql_current_user(&gateway, "erin", &token), "erin");

    // Someone else's name, a changed secret, a made-up id: the same refusal.
    assert_eq!(login_state(&gateway, "frank", &token).await, "28P01");
    let mut altered = token.clone();
    let last = altered.pop().expect("char");
    altered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(login_state(&gateway, "erin", &altered).await, "28P01");
    assert_eq!(
        login_state(
            &gateway,
            "erin",
            &format!("lgp_{}_{}", "A".repeat(16), "B".repeat(43))
        )
        .await,
        "28P01"
    );

    // The store keeps a hash, never the token.
    let stored = std::fs::read_to_string(gateway.dir.join("tokens.json")).expect("token file");
    let secret = &token["lgp_".len() + 17..];
    assert!(!stored.contains(secret), "the secret is not stored");
    assert!(stored.contains(token_id(&token)));

    // Listed and revoked from the command line.
    let (ok, listing) = token_cli(&gateway, &["list", "--user", "erin"]);
    assert!(ok, "{listing}");
    assert!(
        listing.contains(token_id(&token)) && listing.contains("active"),
        "{listing}"
    );
    assert!(!listing.contains(secret));
    let (ok, said) = token_cli(&gateway, &["revoke", token_id(&token)]);
    assert!(ok, "{said}");
    assert_eq!(login_state(&gateway, "erin", &token).await, "28P01");
    let (_, listing) = token_cli(&gateway, &["list"]);
    assert!(listing.contains("revoked"), "{listing}");
    let (ok, said) = token_cli(&gateway, &["revoke", "nosuchtoken"]);
    assert!(!ok && said.contains("no token"), "{said}");

    // Revoked on the page by its owner; forms need the session's CSRF token.
    let second = browser.create_token("DBeaver").await;
    assert_eq!(login_state(&gateway, "erin", &second).await, "ok");
    let forged = browser
        .post(
            "/tokens/revoke",
            &[("csrf", "forged"), ("id", token_id(&second))],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(login_state(&gateway, "erin", &second).await, "ok");
    let revoked = browser.revoke(token_id(&second)).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.html);
    assert_eq!(login_state(&gateway, "erin", &second).await, "28P01");
    assert_eq!(
        browser.revoke("nosuchtoken").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_cannot_touch_other_users_tokens() {
    let (provider, gateway) = provider_and_gateway("file: tokens.json", 3600);
    let erin = Browser::new(&gateway);
    erin.oidc_sign_in(&provider.issuer, "erin").await;
    let token = erin.create_token("report").await;
    let frank = Browser::new(&gateway);
    let landing = frank.oidc_sign_in(&provider.issuer, "frank").await;
    assert!(landing.html.contains("Signed in as <b>frank</b>"));
    assert!(
        !landing.html.contains(token_id(&token)),
        "frank does not see erin's tokens"
    );
    assert_eq!(
        frank.revoke(token_id(&token)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(login_state(&gateway, "erin", &token).await, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_are_rechecked_with_the_provider() {
    // Every login re-checks.
    let (mut provider, gateway) = provider_and_gateway("file: tokens.json", 0);
    let browser = Browser::new(&gateway);
    browser.oidc_sign_in(&provider.issuer, "erin").await;
    let token = browser.create_token("scheduled refresh").await;
    let erin = gateway.try_connect("erin", &token).await.expect("login");
    assert_eq!(
        sqlstate(rows(&erin, "SELECT count(*) FROM patients").await),
        "42P01"
    );

    // erin becomes a steward at the IdP: her next login has the steward's view.
    provider.set_groups("erin", &["gtm-stewards"]);
    let erin = gateway
        .try_connect("erin", &token)
        .await
        .expect("login after the change");
    assert_eq!(
        rows(&erin, "SELECT count(*) FROM patients")
            .await
            .expect("steward"),
        vec!["3000"]
    );

    // erin leaves the company: the IdP refuses the refresh, and so does the gateway.
    provider.disable("erin");
    assert_eq!(login_state(&gateway, "erin", &token).await, "28P01");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_callbacks_and_missing_sessions_get_nothing() {
    let (_provider, gateway) = provider_and_gateway("file: tokens.json", 3600);
    let browser = Browser::new(&gateway);

    let page = browser.get("/login").await;
    assert!(page.html.contains("/login/oidc"), "{}", page.html);
    // A callback this browser did not start, and an IdP error.
    let forged = browser
        .get("/login/oidc/callback?code=stolen&state=guessed")
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    let denied = browser
        .get("/login/oidc/callback?error=access_denied&state=x")
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    // Without a session the token pages send the browser to sign in.
    let tokens = browser.get("/tokens").await;
    assert!(tokens.url.ends_with("/login"), "{tokens:?}");
    let created = browser
        .post("/tokens", &[("csrf", "x"), ("name", "x")])
        .await;
    assert!(created.url.ends_with("/login") && !created.html.contains("lgp_"));
    // A started sign-in's state is good once, and only in the browser that started it.
    let start = browser.redirect_of("/login/oidc").await;
    let state = reqwest::Url::parse(&start)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.to_string())
        .expect("state");
    let other = Browser::new(&gateway);
    let stolen = other
        .get(&format!("/login/oidc/callback?code=x&state={state}"))
        .await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_in_postgres_serve_several_gateways() {
    let pg = Postgres::start();
    let store = format!("postgres: \"{}\"", pg.conn_str());
    let (provider, first) = provider_and_gateway(&store, 3600);
    let second = gateway(&provider, &store, 3600);
    let browser = Browser::new(&first);
    browser.oidc_sign_in(&provider.issuer, "erin").await;
    let token = browser.create_token("shared").await;

    // Made at one gateway, good at the other; revoked at one, refused at both.
    assert_eq!(login_state(&second, "erin", &token).await, "ok");
    let (ok, listing) = token_cli(&second, &["list", "--user", "erin"]);
    assert!(ok && listing.contains(token_id(&token)), "{listing}");
    let (ok, said) = token_cli(&second, &["revoke", token_id(&token), "--user", "frank"]);
    assert!(
        !ok,
        "only erin's token of that id can be revoked as erin's: {said}"
    );
    let (ok, said) = token_cli(&second, &["revoke", token_id(&token), "--user", "erin"]);
    assert!(ok, "{said}");
    assert_eq!(login_state(&first, "erin", &token).await, "28P01");
    assert_eq!(login_state(&second, "erin", &token).await, "28P01");
}

/// The quickstart with SAML sign-in to `idp` and tokens in a file.
fn saml_gateway(idp: &Idp) -> Gateway {
    Gateway::start_setup(Setup {
        extra_config: format!(
            "access_tokens:\n  file: tokens.json\nsso:\n  listen: 127.0.0.1:0\n{}",
            idp.config()
        ),
        ..Setup::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn saml_sign_in_mints_tokens_and_refuses_forged_assertions() {
    let idp = Idp::start();
    idp.new_key("other");
    let gateway = saml_gateway(&idp);

    // The happy path: request, signed assertion, tokens page, a token that logs in.
    let browser = Browser::new(&gateway);
    let redirect = browser.redirect_of("/login/saml").await;
    assert!(
        redirect.starts_with("https://idp.example.com/sso?SAMLRequest="),
        "{redirect}"
    );
    let answer = idp.respond(&redirect, "erin", "eu-sales", "idp", &[]);
    let landing = browser
        .post(&answer.acs, &[("SAMLResponse", &answer.saml_response)])
        .await;
    assert!(landing.url.ends_with("/tokens"), "{landing:?}");
    assert!(landing.html.contains("Signed in as <b>erin</b>"));
    let token = browser.create_token("Tableau").await;
    let erin = gateway
        .try_connect("erin", &token)
        .await
        .expect("token login");
    assert_eu_sales_view(&erin, "erin").await;

    // The same response again (replay), from this browser and from another.
    let again = browser
        .post(&answer.acs, &[("SAMLResponse", &answer.saml_response)])
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.html);
    let thief = Browser::new(&gateway);
    let stolen = thief
        .post(&answer.acs, &[("SAMLResponse", &answer.saml_response)])
        .await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);

    // Each attack on a fresh sign-in: refused, and no session.
    let attacks: &[(&str, &[&str], &str, StatusCode)] = &[
        (
            "user changed after signing",
            &["--tamper", "frank"],
            "idp",
            StatusCode::FORBIDDEN,
        ),
        (
            "signature wrapping",
            &["--wrap", "frank"],
            "idp",
            StatusCode::FORBIDDEN,
        ),
        ("unsigned", &["--unsigned"], "idp", StatusCode::FORBIDDEN),
        ("signed by another key", &[], "other", StatusCode::FORBIDDEN),
        (
            "another audience",
            &["--audience", "https://other.example.com"],
            "idp",
            StatusCode::FORBIDDEN,
        ),
        (
            "another recipient",
            &["--recipient", "https://evil.example.com/acs"],
            "idp",
            StatusCode::FORBIDDEN,
        ),
        (
            "expired",
            &["--lifetime", "-600"],
            "idp",
            StatusCode::FORBIDDEN,
        ),
        (
            "unsolicited",
            &["--in-response-to", "_someone-elses-request"],
            "idp",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, options, key, status) in attacks {
        let attacker = Browser::new(&gateway);
        let redirect = attacker.redirect_of("/login/saml").await;
        let answer = idp.respond(&redirect, "erin", "gtm-stewards", key, options);
        let page = attacker
            .post(&answer.acs, &[("SAMLResponse", &answer.saml_response)])
            .await;
        assert_eq!(page.status, *status, "{what}: {}", page.html);
        let tokens = attacker.get("/tokens").await;
        assert!(tokens.url.ends_with("/login"), "{what}: no session");
    }
    let garbage = Browser::new(&gateway)
        .post("/login/saml/acs", &[("SAMLResponse", "not base64 !")])
        .await;
    assert_eq!(garbage.status, StatusCode::FORBIDDEN);
}
