//! The SAML identity provider of the sign-in tests: tests/peers/saml/idp.py answers the
//! gateway's AuthnRequest with an assertion signed by xmlsec1, with a key and certificate made
//! here by openssl.
use std::path::PathBuf;
use std::process::Command;

use crate::workspace;

pub const ISSUER: &str = "https://idp.example.com/saml";

pub struct Idp {
    dir: PathBuf,
}

/// A response for the gateway's ACS: the form field and where to POST it.
pub struct SamlResponse {
    pub saml_response: String,
    pub acs: String,
}

impl Idp {
    pub fn start() -> Idp {
        let dir = std::env::temp_dir().join(format!(
            "lakegate-idp-{}-{}",
            std::process::id(),
            crate::rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("idp dir");
        let idp = Idp { dir };
        idp.new_key("idp");
        idp
    }

    /// A key pair `NAME.key` / `NAME.crt` (the IdP's own is "idp").
    pub fn new_key(&self, name: &str) {
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg("/CN=Test IdP")
            .arg("-keyout")
            .arg(self.dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(self.dir.join(format!("{name}.crt")))
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn certificate(&self) -> PathBuf {
        self.dir.join("idp.crt")
    }

    /// The gateway's `sso.saml` configuration for this IdP.
    pub fn config(&self) -> String {
        format!(
            "  saml:\n    idp_sso_url: https://idp.example.com/sso\n    idp_entity_id: {ISSUER}\n    idp_certificate: {}\n",
            self.certificate().display()
        )
    }

    /// Answers the AuthnRequest in `redirect` (the gateway's redirect URL) for `user`, signed
    /// with key `key`; `extra` are idp.py's attack options.
    pub fn respond(
        &self,
        redirect: &str,
        user: &str,
        groups: &str,
        key: &str,
        extra: &[&str],
    ) -> SamlResponse {
        let request = reqwest::Url::parse(redirect)
            .expect("redirect URL")
            .query_pairs()
            .find(|(k, _)| k == "SAMLRequest")
            .map(|(_, v)| v.to_string())
            .expect("SAMLRequest in the redirect");
        let out = Command::new("python3")
            .arg(workspace().join("tests/peers/saml/idp.py"))
            .arg("--key")
            .arg(self.dir.join(format!("{key}.key")))
            .arg("--cert")
            .arg(self.dir.join(format!("{key}.crt")))
            .args([
                "--issuer",
                ISSUER,
                "--request",
                &request,
                "--user",
                user,
                "--groups",
                groups,
            ])
            .args(extra)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "idp.py (needs xmlsec1: scripts/setup-clients installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        SamlResponse {
            saml_response: lines.next().expect("response").to_string(),
            acs: lines.next().expect("acs").to_string(),
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
