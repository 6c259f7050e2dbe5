//! SAML 2.0 service provider: the Web Browser SSO profile with the HTTP-Redirect binding for the
//! request and HTTP-POST for the response. Only signed assertions are accepted.
//!
//! Signature wrapping is the classic hole in SAML service providers: the signature checks one
//! element and the application reads another. Here the document must hold exactly one
//! `Assertion` and exactly one `Signature`, the signature's one reference must name that
//! assertion's ID, and every value is read from the bytes the signature covered (the reference's
//! canonical pre-digest data), never from the document as sent. XML-DSig itself (exclusive
//! canonicalization, digests, RSA/ECDSA) is the `xml-sec` crate's.
use std::io::Write;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::write::DeflateEncoder;
use lakegate_policy::Identity;
use moka::future::Cache;
use xml_sec::xmldsig::{DsigStatus, ReferenceCoverage, verify_signature_with_pem_key};

use super::pages::escape;
use crate::config::SamlConfig;
use crate::tokens::SignedIn;

const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
/// Larger responses are refused before parsing.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Assertion IDs are remembered this long; assertions valid for longer are refused.
const REPLAY_WINDOW: Duration = Duration::from_secs(3600);

/// Why a SAML response was refused: for the log only.
#[derive(Debug, thiserror::Error)]
pub enum SamlError {
    #[error("response is not base64 XML: {0}")]
    Encoding(String),
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("status is not Success: {0}")]
    Status(String),
    #[error("{0}")]
    Condition(String),
}

/// What a verified assertion says.
pub struct Assertion {
    pub id: String,
    pub in_response_to: Option<String>,
    pub not_on_or_after: u64,
    pub who: SignedIn,
}

pub struct SamlSp {
    config: SamlConfig,
    entity_id: String,
    acs_url: String,
    /// The IdP's public key (SubjectPublicKeyInfo PEM), from its certificate.
    idp_key: String,
    seen: Cache<String, ()>,
}

fn malformed(what: impl Into<String>) -> SamlError {
    SamlError::Malformed(what.into())
}

fn epoch(text: &str) -> Result<u64, SamlError> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp().max(0) as u64)
        .map_err(|_| malformed(format!("bad time {text:?}")))
}

fn now() -> u64 {
    crate::tokens::now()
}

/// The certificate's SubjectPublicKeyInfo as a PEM `PUBLIC KEY`.
fn public_key_pem(certificate_pem: &str) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = STANDARD.encode(cert.public_key().raw);
    let lines: Vec<&str> = spki
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    Ok(format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    ))
}

fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    ns: &str,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| {
        n.is_element() && n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
    })
}

fn text_of(node: roxmltree::Node) -> String {
    node.text().unwrap_or_default().trim().to_string()
}

impl SamlSp {
    pub fn new(config: &SamlConfig, public_url: &str) -> Result<SamlSp, String> {
        let pem = std::fs::read_to_string(&config.idp_certificate).map_err(|e| {
            format!(
                "sso.saml.idp_certificate {}: {e}",
                config.idp_certificate.display()
            )
        })?;
        let idp_key = public_key_pem(&pem).map_err(|e| {
            format!(
                "sso.saml.idp_certificate {}: {e}",
                config.idp_certificate.display()
            )
        })?;
        Ok(SamlSp {
            entity_id: config
                .entity_id
                .clone()
                .unwrap_or_else(|| public_url.to_string()),
            acs_url: format!("{public_url}/login/saml/acs"),
            idp_key,
            config: config.clone(),
            seen: Cache::builder()
                .time_to_live(REPLAY_WINDOW)
                .max_capacity(1_000_000)
                .build(),
        })
    }

    /// The IdP URL to send the browser to (an AuthnRequest, HTTP-Redirect binding), and the
    /// request's ID, which the response must answer.
    pub fn start(&self) -> (String, String) {
        let id = format!(
            "_{}",
            rand::random::<[u8; 16]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let instant = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let request = format!(
            "<samlp:AuthnRequest xmlns:samlp=\"{PROTOCOL}\" xmlns:saml=\"{ASSERTION}\" ID=\"{id}\" \
             Version=\"2.0\" IssueInstant=\"{instant}\" Destination=\"{dest}\" \
             AssertionConsumerServiceURL=\"{acs}\" \
             ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\">\
             <saml:Issuer>{issuer}</saml:Issuer></samlp:AuthnRequest>",
            dest = escape(&self.config.idp_sso_url),
            acs = escape(&self.acs_url),
            issuer = escape(&self.entity_id),
        );
        let mut deflate = DeflateEncoder::new(Vec::new(), Compression::default());
        let encoded = deflate
            .write_all(request.as_bytes())
            .and_then(|()| deflate.finish())
            .map(|bytes| STANDARD.encode(bytes))
            .unwrap_or_default();
        let url = match reqwest::Url::parse(&self.config.idp_sso_url) {
            Ok(mut url) => {
                url.query_pairs_mut().append_pair("SAMLRequest", &encoded);
                url.to_string()
            }
            Err(_) => self.config.idp_sso_url.clone(),
        };
        (url, id)
    }

    /// Accepts an assertion once: false when its ID was seen before.
    pub async fn first_use(&self, id: &str, not_on_or_after: u64) -> bool {
        if not_on_or_after > now() + REPLAY_WINDOW.as_secs() {
            return false;
        }
        let entry = self.seen.entry(id.to_string()).or_insert(()).await;
        entry.is_fresh()
    }

    /// The identity a POSTed `SAMLResponse` proves, after every check of the profile.
    pub fn verify(&self, saml_response: &str) -> Result<Assertion, SamlError> {
        if saml_response.len() > MAX_RESPONSE_BYTES * 4 / 3 + 4 {
            return Err(SamlError::TooLarge);
        }
        let cleaned: String = saml_response
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = STANDARD
            .decode(cleaned)
            .map_err(|e| SamlError::Encoding(e.to_string()))?;
        if bytes.len() > MAX_RESPONSE_BYTES {
            return Err(SamlError::TooLarge);
        }
        let xml = String::from_utf8(bytes).map_err(|e| SamlError::Encoding(e.to_string()))?;
        // The response as sent: only its envelope is read from here.
        let doc = roxmltree::Document::parse(&xml).map_err(|e| malformed(e.to_string()))?;
        let response = doc.root_element();
        if response.tag_name().namespace() != Some(PROTOCOL)
            || response.tag_name().name() != "Response"
        {
            return Err(malformed("the document is not a samlp:Response"));
        }
        let status = child(response, PROTOCOL, "Status")
            .and_then(|s| child(s, PROTOCOL, "StatusCode"))
            .and_then(|c| c.attribute("Value"))
            .unwrap_or_default();
        if status != SUCCESS {
            return Err(SamlError::Status(status.to_string()));
        }
        if let Some(destination) = response.attribute("Destination")
            && destination != self.acs_url
        {
            return Err(SamlError::Condition(format!(
                "response is for {destination:?}, not this gateway"
            )));
        }
        let assertions: Vec<_> = doc
            .descendants()
            .filter(|n| {
                n.is_element()
                    && n.tag_name().namespace() == Some(ASSERTION)
                    && (n.tag_name().name() == "Assertion"
                        || n.tag_name().name() == "EncryptedAssertion")
            })
            .collect();
        let [assertion] = assertions.as_slice() else {
            return Err(malformed(format!(
                "expected exactly one assertion, found {}",
                assertions.len()
            )));
        };
        if assertion.tag_name().name() != "Assertion" {
            return Err(malformed("encrypted assertions are not supported"));
        }
        let id = assertion
            .attribute("ID")
            .ok_or_else(|| malformed("assertion has no ID"))?;
        let same_id = doc
            .descendants()
            .filter(|n| n.attributes().any(|a| a.name() == "ID" && a.value() == id))
            .count();
        if same_id != 1 {
            return Err(malformed("the assertion's ID is not unique"));
        }
        if child(*assertion, DSIG, "Signature").is_none() {
            return Err(SamlError::Signature("the assertion is not signed".into()));
        }
        let id = id.to_string();
        let signed = self.signed_assertion(&xml, &id)?;
        self.read_assertion(&signed, &id)
    }

    /// The canonical bytes of the assertion the one signature covers, once the signature is
    /// valid with the IdP's key.
    fn signed_assertion(&self, xml: &str, id: &str) -> Result<String, SamlError> {
        let result = verify_signature_with_pem_key(xml, &self.idp_key, true)
            .map_err(|e| SamlError::Signature(e.to_string()))?;
        if !matches!(result.status, DsigStatus::Valid) {
            return Err(SamlError::Signature(format!("{:?}", result.status)));
        }
        let [reference] = result.signed_info_references.as_slice() else {
            return Err(SamlError::Signature(
                "expected exactly one signed reference".into(),
            ));
        };
        if reference.uri != format!("#{id}") {
            return Err(SamlError::Signature(format!(
                "the signature covers {:?}, not the assertion",
                reference.uri
            )));
        }
        if !matches!(reference.status, DsigStatus::Valid)
            || !matches!(
                reference.coverage,
                ReferenceCoverage::EnvelopedElementContent | ReferenceCoverage::ElementContent
            )
        {
            return Err(SamlError::Signature(
                "the reference does not cover the whole assertion".into(),
            ));
        }
        let bytes = reference
            .pre_digest_data
            .clone()
            .ok_or_else(|| SamlError::Signature("no signed bytes".into()))?;
        String::from_utf8(bytes).map_err(|e| SamlError::Signature(e.to_string()))
    }

    /// Every check of the Web Browser SSO profile, on the signed assertion's bytes.
    fn read_assertion(&self, signed: &str, id: &str) -> Result<Assertion, SamlError> {
        let doc = roxmltree::Document::parse(signed).map_err(|e| malformed(e.to_string()))?;
        let assertion = doc.root_element();
        if assertion.tag_name().namespace() != Some(ASSERTION)
            || assertion.tag_name().name() != "Assertion"
            || assertion.attribute("ID") != Some(id)
        {
            return Err(SamlError::Signature(
                "the signed bytes are not the assertion".into(),
            ));
        }
        let issuer = child(assertion, ASSERTION, "Issuer")
            .map(text_of)
            .unwrap_or_default();
        if issuer != self.config.idp_entity_id {
            return Err(SamlError::Condition(format!(
                "issuer {issuer:?} is not the configured IdP"
            )));
        }
        let now = now();
        let skew = self.config.clock_skew_seconds;
        let conditions = child(assertion, ASSERTION, "Conditions")
            .ok_or_else(|| SamlError::Condition("the assertion has no Conditions".into()))?;
        if let Some(not_before) = conditions.attribute("NotBefore")
            && epoch(not_before)? > now + skew
        {
            return Err(SamlError::Condition(
                "the assertion is not valid yet".into(),
            ));
        }
        let not_on_or_after = epoch(
            conditions
                .attribute("NotOnOrAfter")
                .ok_or_else(|| SamlError::Condition("Conditions have no NotOnOrAfter".into()))?,
        )?;
        if now >= not_on_or_after + skew {
            return Err(SamlError::Condition("the assertion expired".into()));
        }
        let audiences: Vec<String> = conditions
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "AudienceRestriction")
            .flat_map(|r| {
                r.children()
                    .filter(|n| n.is_element() && n.tag_name().name() == "Audience")
                    .map(text_of)
                    .collect::<Vec<_>>()
            })
            .collect();
        if !audiences.contains(&self.entity_id) {
            return Err(SamlError::Condition(format!(
                "the assertion is for {audiences:?}, not {:?}",
                self.entity_id
            )));
        }
        let subject = child(assertion, ASSERTION, "Subject")
            .ok_or_else(|| SamlError::Condition("the assertion has no Subject".into()))?;
        let confirmation = subject
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "SubjectConfirmation")
            .find(|n| n.attribute("Method") == Some(BEARER))
            .and_then(|n| child(n, ASSERTION, "SubjectConfirmationData"))
            .ok_or_else(|| SamlError::Condition("no bearer SubjectConfirmation".into()))?;
        if confirmation.attribute("Recipient") != Some(self.acs_url.as_str()) {
            return Err(SamlError::Condition(
                "the assertion's Recipient is not this gateway".into(),
            ));
        }
        if let Some(until) = confirmation.attribute("NotOnOrAfter")
            && now >= epoch(until)? + skew
        {
            return Err(SamlError::Condition(
                "the subject confirmation expired".into(),
            ));
        }
        let in_response_to = confirmation.attribute("InResponseTo").map(str::to_string);
        let name_id = child(subject, ASSERTION, "NameID").map(text_of);
        let mut values: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for statement in assertion
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "AttributeStatement")
        {
            for attribute in statement
                .children()
                .filter(|n| n.is_element() && n.tag_name().name() == "Attribute")
            {
                let Some(name) = attribute.attribute("Name") else {
                    continue;
                };
                let entry = values.entry(name.to_string()).or_default();
                entry.extend(
                    attribute
                        .children()
                        .filter(|n| n.is_element() && n.tag_name().name() == "AttributeValue")
                        .map(text_of),
                );
            }
        }
        let username = match &self.config.username_attribute {
            Some(attribute) => values.get(attribute).and_then(|v| v.first()).cloned(),
            None => name_id,
        }
        .filter(|name| !name.is_empty())
        .ok_or_else(|| SamlError::Condition("the assertion names no user".into()))?;
        let groups = values
            .get(&self.config.groups_attribute)
            .cloned()
            .unwrap_or_default();
        let attributes = self
            .config
            .attributes
            .iter()
            .filter_map(|a| Some((a.clone(), values.get(a)?.first()?.clone())))
            .collect();
        Ok(Assertion {
            id: id.to_string(),
            in_response_to,
            not_on_or_after,
            who: SignedIn {
                identity: Identity {
                    name: username,
                    groups,
                    attributes,
                    expires_at: None,
                },
                method: "saml",
                issuer,
                refresh_token: None,
            },
        })
    }
}
