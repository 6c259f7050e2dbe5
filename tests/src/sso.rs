//! A browser for the sign-in pages: an HTTP client with a cookie jar that trusts the gateway's
//! certificate, follows redirects like a browser, and fills in the forms it is shown.
use std::sync::Arc;

use reqwest::cookie::Jar;
use reqwest::{Client, StatusCode, redirect};

use crate::Gateway;

pub struct Browser {
    /// Follows redirects, as a browser does.
    client: Client,
    /// Stops at the first redirect, to read where it points (SAML's HTTP-Redirect binding).
    manual: Client,
    pub base: String,
}

/// A page: its final URL, status and HTML.
#[derive(Debug)]
pub struct Page {
    pub url: String,
    pub status: StatusCode,
    pub html: String,
}

/// The value of `name="…" value="…"` hidden inputs and `action="…"` attributes.
pub fn attribute_after(html: &str, marker: &str, attribute: &str) -> Option<String> {
    let start = html.find(marker)?;
    let rest = &html[start..];
    let at = rest.find(&format!("{attribute}=\""))? + attribute.len() + 2;
    let end = rest[at..].find('"')?;
    Some(rest[at..at + end].replace("&amp;", "&"))
}

impl Browser {
    pub fn new(gateway: &Gateway) -> Browser {
        let base = gateway
            .sign_in_url
            .clone()
            .expect("the gateway has a sign-in listener (sso configured)");
        let jar = Arc::new(Jar::default());
        let build = |policy: redirect::Policy| {
            Client::builder()
                .cookie_provider(jar.clone())
                .add_root_certificate(
                    reqwest::Certificate::from_pem(gateway.cert_pem()).expect("gateway cert"),
                )
                .redirect(policy)
                .build()
                .expect("http client")
        };
        Browser {
            client: build(redirect::Policy::limited(10)),
            manual: build(redirect::Policy::none()),
            base,
        }
    }

    async fn page(response: reqwest::Response) -> Page {
        Page {
            url: response.url().to_string(),
            status: response.status(),
            html: response.text().await.expect("page body"),
        }
    }

    pub async fn get(&self, path_or_url: &str) -> Page {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        Self::page(self.client.get(url).send().await.expect("GET")).await
    }

    pub async fn post(&self, url: &str, form: &[(&str, &str)]) -> Page {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        Self::page(self.client.post(url).form(form).send().await.expect("POST")).await
    }

    /// Where a GET redirects to, without going there.
    pub async fn redirect_of(&self, path: &str) -> String {
        let response = self
            .manual
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        assert!(
            response.status().is_redirection(),
            "{path} answered {}",
            response.status()
        );
        response
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .expect("Location")
            .to_string()
    }

    /// Signs in at the OpenID provider's development login pages (any password) and consents;
    /// returns the page the gateway lands the browser on.
    pub async fn oidc_sign_in(&self, issuer: &str, user: &str) -> Page {
        let login = self.get("/login/oidc").await;
        assert!(
            login.url.starts_with(issuer),
            "not at the provider: {login:?}"
        );
        let at = |action: String| {
            if action.starts_with("http") {
                action
            } else {
                format!("{issuer}{action}")
            }
        };
        let action = attribute_after(&login.html, "<form", "action").expect("login form");
        let consent = self
            .post(
                &at(action),
                &[("prompt", "login"), ("login", user), ("password", "any")],
            )
            .await;
        let action = attribute_after(&consent.html, "<form", "action").expect("consent form");
        self.post(&at(action), &[("prompt", "consent")]).await
    }

    /// Creates a token on the tokens page and returns its text, shown once.
    pub async fn create_token(&self, name: &str) -> String {
        let page = self.get("/tokens").await;
        let csrf = attribute_after(&page.html, "name=\"csrf\"", "value").expect("csrf field");
        let created = self
            .post(
                "/tokens",
                &[("csrf", &csrf), ("name", name), ("days", "30")],
            )
            .await;
        assert_eq!(created.status, StatusCode::OK, "{}", created.html);
        let start = created
            .html
            .find("id=\"new-token\">")
            .expect("the new token is shown")
            + "id=\"new-token\">".len();
        let end = created.html[start..].find('<').expect("end of token");
        created.html[start..start + end].to_string()
    }

    pub async fn csrf(&self) -> String {
        let page = self.get("/tokens").await;
        attribute_after(&page.html, "name=\"csrf\"", "value").expect("csrf field")
    }

    /// Revokes a token on the page; the page's answer.
    pub async fn revoke(&self, id: &str) -> Page {
        let csrf = self.csrf().await;
        self.post("/tokens/revoke", &[("csrf", &csrf), ("id", id)])
            .await
    }
}
