//! jsonwebtoken's signature checks on ring, the crypto library TLS, SCRAM and the AWS client
//! already use here.
//!
//! jsonwebtoken ships two backends: RustCrypto's (its `rsa` crate verified an RS256 token in
//! about 0.3 ms, a quarter of a token login's CPU) and aws-lc (a second C crypto library to
//! build). ring checks the same signature in tens of microseconds. The gateway only ever
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
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
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

    /// A 2,048-bit RSA key made for this test only (PKCS#1 DER, base64): ring makes none.
    const TEST_RSA_KEY: &str = concat!(
        "MIIEowIBAAKCAQEAo/2ky9YLH2RRVgCCW8yDYjhitkkfYbQ4XLEOcTwN638lu6cLSkx23+zo8fwAk0y3tBnx5J4z",
        "th4+6ykZDlxLomFF6115Jp5LG9sAX1dlqbK2GPGQrVirV5CDlPazbH771CKDoATCniXLQqto3zClQ8OH5bEh3U3x",
        "TbMpglFDYz8ck+m7XWiPf9Q2FVZkB4tMhoyN95JrPGV1eufaO1yfNNw1X/MgaiFpKrL7oLudJzex2T8njvL0djoL",
        "zlb353imcVuohUG4oJuKhk78jg4SXH5q/cBZWxKtMa8YzFZD8FYpg/dLx64GW1yNJDmaMBfLjkOcklgobjkyh/tU",
        "T+iDJwIDAQABAoIBABMLIOiE1izSjvlwPLMhWD5/MsNdUXYcohDthLJUmX83+C9G8jIyF/nf/psfOwff+FNDUgpM",
        "7s9eysqvLpgy0pusNRzkcW2xIyK8d1obAZTHyoqx/q2KpvcXspgJYAOg6WiUi3l5JAqOdACtfBOzB/YLDkx3memj",
        "o/p0bEUUX8F2Ao4ML15dhfw8GKELAr47h1rjTOO7hNnqamS/saqY76Z5bhLOsu8aVlikyRT3pQwsPDkG7ixsuSim",
        "t5jnDrqQGeNJxH0rzVAff92j8QKve9WVgIrFWEvq5vyZcqUa7oK5XDVJ0FifvRGLblScVXofUq37IUPOz9DTvoBp",
        "gl7U+j0CgYEA221iOmj6ckQH1xN8ofsXjqo2CVbZo9d06Pu7RPTbBJTPvModJHaVFsYtvbEplnEQdOEDKnIxQRYH",
        "xeFoplrcnrO2874nJXxXDLz44Lf8tWL6FBg8xyU2uLQlvVtJ6w3MCVxE4mog7PoxnBa2NAG0dHh0wv3FZpWC4rvH",
        "Da4hkUMCgYEAv1LfYphVaYyGsfQFU3kksKTUmYykpNVunNbUxk83CaH67WazQw0ndfcXrR3qZF15hQNLxl8thg2a",
        "Y/FzMzQ3GhO749sXdry0CNLHOjTxeVQ6Azr1JY05/hgJcQS3H0Ib1GoqEsRlTJmt3SeYBCDwjtz3dY+GaHMXLWXY",
        "HaZSxk0CgYEAqutcTVVCaElXtg+m0GHO6sDpEINHSllk5qpXKBJ2m+3ylwL0ileYMEI0lQLv+xCdGf2/wotqlGE9",
        "ssSvCI3UNgaU5u3ifk+JWxHD5v9J6FxtocNzbEgvhNZGY2Y9gMuheFUYDylN9mm4xPXn/UCquOKvSMf1wL+LUWOl",
        "XKGb4hMCgYAMwGlDGQQYVNVlZu4z8g8P9ux0j3spwU/uBCOKVB1G9xTSXdX00hufMSjS0PueVNyUkPOr9QwDs0Rn",
        "BOC4uPIzOr17Ik8eCtW1ANdmecDeZU64iGVua0tCNDfs4HOUEcPpFGpZdd2KjXOZGdp36/oci32yyC4dKA6TaAZP",
        "c5ZwwQKBgGQG1ifb5TPvJk1ffkbrH6qiPbU1GKoNpWkJsZlcz6/RFqH2vjvpxDvMKMOVDgh1l84pFDD9UpIi3gTo",
        "2AhOCnP1p9dvqB3vYpHSyBkJ3g1sNokr5l/HxubaJhM1Brxu8cw0IQ+chsulDpDiH2cL7e7lkzRmBpPltwS8uL3Y",
        "S0KY",
    );

    #[test]
    fn rsa_signatures_are_checked_from_a_jwk_and_from_der() {
        let rng = SystemRandom::new();
        let der = base64::engine::general_purpose::STANDARD
            .decode(TEST_RSA_KEY)
            .expect("base64");
        let pair = RsaKeyPair::from_der(&der).expect("rsa key");
        let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let from_jwk = DecodingKey::from_rsa_components(
            &URL_SAFE_NO_PAD.encode(&parts.n),
            &URL_SAFE_NO_PAD.encode(&parts.e),
        )
        .expect("rsa key");
        let from_der = DecodingKey::from_rsa_der(pair.public().as_ref());
        let (pair, rng) = (&pair, &rng);
        let signed = |padding: &'static dyn sig::RsaEncoding| {
            move |m: &[u8]| {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(padding, rng, m, &mut out).expect("sign");
                out
            }
        };
        let rs256 = token("RS256", signed(&sig::RSA_PKCS1_SHA256));
        let ps256 = token("PS256", signed(&sig::RSA_PSS_SHA256));
        for key in [&from_jwk, &from_der] {
            assert!(decodes(&rs256, key, Algorithm::RS256));
            assert!(decodes(&ps256, key, Algorithm::PS256));
            assert!(!decodes(&tampered(&rs256), key, Algorithm::RS256));
            // A PKCS#1 v1.5 signature is no PSS signature, and the other way round.
            assert!(!decodes(&rs256, key, Algorithm::PS256));
            assert!(!decodes(&ps256, key, Algorithm::RS256));
        }
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
