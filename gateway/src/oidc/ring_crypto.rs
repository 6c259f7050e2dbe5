//! jsonwebtoken's signature checks on ring, the crypto library TLS, SCRAM and the AWS client
//! already use here.
//!
//! jsonwebtoken ships two backends: RustCrypto's (its `rsa` crate verified an RS256 token in
//! about 0.3 ms, a quarter of a token login's CPU) and aws-lc (a second C crypto library to
//! build). ring verifies the same signature in a few microseconds. The gateway only ever
//! verifies: it signs nothing with jsonwebtoken, so signing is refused, and shared secrets
//! (HS*) are refused too, as issuers may only use asymmetric algorithms (`oidc::issuer`).
//! ring takes RSA keys of 2,048 to 8,192 bits: a weaker issuer key fails closed.
use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, RsaParameters, UnparsedPublicKey, VerificationAlgorithm};

/// Makes ring jsonwebtoken's crypto for this process; every path that decodes a token calls it
/// first (`OidcVerifier::new`).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Nothing else in the process installs a provider, so this cannot lose a race.
        let _ = PROVIDER.install_default();
    });
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signing,
    verifier_factory: verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: |_| Err(unsupported()),
        extract_ec_public_key_coordinates: |_, _| Err(unsupported()),
        compute_digest: digest,
    },
};

fn unsupported() -> Error {
    ErrorKind::Provider("the gateway verifies tokens; it does not sign them".into()).into()
}

fn no_signing(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(unsupported())
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
    };
    ring::digest::digest(algorithm, data).as_ref().to_vec()
}

/// How ring checks one algorithm's signatures.
enum Check {
    Rsa(&'static RsaParameters),
    /// ECDSA (the key is the uncompressed point a JWK's x and y make) or Ed25519.
    Other(&'static dyn VerificationAlgorithm),
}

fn check(algorithm: Algorithm) -> Option<Check> {
    use Algorithm::*;
    Some(match algorithm {
        RS256 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        RS384 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        RS512 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        PS256 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
        PS384 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
        PS512 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
        ES256 => Check::Other(&sig::ECDSA_P256_SHA256_FIXED),
        ES384 => Check::Other(&sig::ECDSA_P384_SHA384_FIXED),
        EdDSA => Check::Other(&sig::ED25519),
        HS256 | HS384 | HS512 => return None,
    })
}

struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
    key: DecodingKey,
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let check = check(*algorithm).ok_or_else(|| Error::from(ErrorKind::InvalidAlgorithm))?;
    // A key of another family than the algorithm (an ES256 token checked with an RSA key,
    // say) is refused before any check.
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        check,
        key: key.clone(),
    }))
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match (&self.check, self.key.kind()) {
            (Check::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            // A DER RSAPublicKey, as `DecodingKey::from_rsa_der` holds it.
            (Check::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(*params, der).verify(message, signature)
            }
            (Check::Other(algorithm), DecodingKeyKind::SecretOrDer(key)) => {
                UnparsedPublicKey::new(*algorithm, key).verify(message, signature)
            }
            (Check::Other(_), DecodingKeyKind::RsaModulusExponent { .. }) => {
                return Err(signature::Error::new());
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use std::collections::BTreeMap;

    /// A token with `claims`, signed by `sign` over header.payload.
    fn token(alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"erin","exp":4102444800}"#);
        let message = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(sign(message.as_bytes()));
        format!("{message}.{signature}")
    }

    fn decodes(token: &str, key: &DecodingKey, alg: Algorithm) -> bool {
        install();
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(token, key, &validation).is_ok()
    }

    /// The last character of the signature changed: the same token, no longer signed.
    fn tampered(token: &str) -> String {
        let mut bytes = token.to_string().into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ascii")
    }

    #[test]
    fn signatures_are_checked_for_each_asymmetric_family() {
        let rng = SystemRandom::new();
        let ec_der =
            EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let ec =
            EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, ec_der.as_ref(), &rng)
                .expect("key");
        let point = ec.public_key().as_ref();
        let ec_key = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..]),
        )
        .expect("ec key");
        let es256 = token("ES256", |m| {
            ec.sign(&rng, m).expect("sign").as_ref().to_vec()
        });
        assert!(decodes(&es256, &ec_key, Algorithm::ES256));
        assert!(!decodes(&tampered(&es256), &ec_key, Algorithm::ES256));

        let ed_der = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let ed = Ed25519KeyPair::from_pkcs8(ed_der.as_ref()).expect("key");
        let ed_key =
            DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(ed.public_key().as_ref()))
                .expect("ed key");
        let eddsa = token("EdDSA", |m| ed.sign(m).as_ref().to_vec());
        assert!(decodes(&eddsa, &ed_key, Algorithm::EdDSA));
        assert!(!decodes(&tampered(&eddsa), &ed_key, Algorithm::EdDSA));

        // One family's key never checks another family's token.
        assert!(!decodes(&es256, &ed_key, Algorithm::ES256));
        // A shared secret is never a key here, whatever the token claims.
        let secret = DecodingKey::from_secret(b"public-key-bytes");
        let hs256 = token("HS256", |m| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"public-key-bytes");
            ring::hmac::sign(&key, m).as_ref().to_vec()
        });
        assert!(!decodes(&hs256, &secret, Algorithm::HS256));
    }
}
