//! The sign-in listener's pages: plain HTML, no scripts; every value from a user or a provider
//! is escaped.
use axum::response::Html;

use crate::tokens::{AccessToken, SignedIn, now};

/// Text made safe for HTML and XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Lakegate</title>\
         <style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left}}\
         code.token{{display:block;padding:.6em;background:#f4f4f4;word-break:break-all}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    ))
}

pub fn problem(text: &str) -> Html<String> {
    page(
        "Sign-in problem",
        &format!(
            "<p>{}</p><p><a href=\"/login\">Sign in</a></p>",
            escape(text)
        ),
    )
}

pub fn login(oidc: bool, saml: bool) -> Html<String> {
    let mut links = String::new();
    if oidc {
        links.push_str(
            "<p><a href=\"/login/oidc\">Sign in with your company account (OpenID Connect)</a></p>",
        );
    }
    if saml {
        links.push_str(
            "<p><a href=\"/login/saml\">Sign in with your company account (SAML)</a></p>",
        );
    }
    if links.is_empty() {
        links.push_str("<p>No identity provider is configured.</p>");
    }
    page(
        "Sign in to Lakegate",
        &format!(
            "<p>Sign in to get a personal access token: the password for Power BI, Tableau, \
             DBeaver or any PostgreSQL client.</p>{links}"
        ),
    )
}

/// A UTC date for the tokens table.
fn date(epoch: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(epoch).unwrap_or(i64::MAX), 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn tokens(
    who: &SignedIn,
    csrf: &str,
    tokens: &[AccessToken],
    created: Option<&str>,
    max_days: u32,
) -> Html<String> {
    let user = escape(&who.identity.name);
    let csrf = escape(csrf);
    let mut body = format!(
        "<p>Signed in as <b>{user}</b> (groups: {}).</p>",
        escape(&who.identity.groups.join(", "))
    );
    if let Some(token) = created {
        body.push_str(&format!(
            "<h2>Your new token</h2><p>Copy it now: it is shown only once.</p>\
             <code class=\"token\" id=\"new-token\">{}</code>\
             <p>Connect with user name <b>{user}</b> and this token as the password, over TLS \
             (<code>sslmode=require</code>).</p>",
            escape(token)
        ));
    }
    body.push_str(&format!(
        "<h2>Create a token</h2><form method=\"post\" action=\"/tokens\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Name <input name=\"name\" required maxlength=\"100\" placeholder=\"Power BI sales report\"></label> \
         <label>Valid for <input name=\"days\" type=\"number\" min=\"1\" max=\"{max_days}\" value=\"{max_days}\"> days</label> \
         <button type=\"submit\">Create</button></form>"
    ));
    body.push_str("<h2>Your tokens</h2>");
    if tokens.is_empty() {
        body.push_str("<p>None yet.</p>");
    } else {
        let now = now();
        body.push_str("<table><tr><th>Id</th><th>Name</th><th>Created</th><th>Expires</th><th>Last used</th><th>Status</th><th></th></tr>");
        for t in tokens {
            let status = t.status(now);
            let revoke = if status == "active" {
                format!(
                    "<form method=\"post\" action=\"/tokens/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\">Revoke</button></form>",
                    escape(&t.id)
                )
            } else {
                String::new()
            };
            body.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td><td>{revoke}</td></tr>",
                escape(&t.id),
                escape(&t.name),
                date(t.created_at),
                date(t.expires_at),
                t.last_used_at.map(date).unwrap_or_else(|| "never".into()),
            ));
        }
        body.push_str("</table>");
    }
    body.push_str("<form method=\"post\" action=\"/logout\"><p><button type=\"submit\">Sign out</button></p></form>");
    page("Personal access tokens", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_910_400), "2026-11-29");
        assert_eq!(date(951_782_400), "2000-02-29");
    }

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(escape("<b x='1'>&"), "&lt;b x=&#39;1&#39;&gt;&amp;");
    }
}
