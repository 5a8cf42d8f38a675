//! `jsonwebtoken`'s cryptography on `ring`, the crypto library weft already ships (rustls uses
//! it), instead of the RustCrypto stack its `rust_crypto` feature pulls in (with `rsa` 0.9 and
//! its RUSTSEC-2023-0071 timing advisory). Verifies HS256, RS256 (2048–8192-bit keys) and
//! ES256 (P-256); signs HS256 (for tests and tools that mint tokens). Anything else is refused.

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::{hmac, signature as sig};

static PROVIDER: CryptoProvider =
    CryptoProvider { signer_factory, verifier_factory, jwk_utils: JwkUtils::new_unimplemented() };

/// Make the ring provider `jsonwebtoken`'s process default. Idempotent; when the host
/// application installed another provider first, that one stays.
pub fn install() {
    let _ = PROVIDER.install_default();
}

struct Hs256(hmac::Key);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        // Constant time (ring compares the tags with its own constant-time routine).
        hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

/// RS256 or ES256 over a public key.
struct PublicKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for PublicKey {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match (self.alg, self.key.kind()) {
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => {
                sig::UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, der).verify(msg, signature)
            }
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                sig::RsaPublicKeyComponents { n, e }.verify(&sig::RSA_PKCS1_2048_8192_SHA256, msg, signature)
            }
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).verify(msg, signature)
            }
            _ => Err(ring::error::Unspecified),
        };
        ok.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for PublicKey {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(Hs256(hmac::Key::new(hmac::HMAC_SHA256, key.try_get_hmac_secret()?)))),
        _ => Err(Error::from(ErrorKind::InvalidAlgorithm)),
    }
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    use jsonwebtoken::AlgorithmFamily;
    match (alg, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => {
            Ok(Box::new(Hs256(hmac::Key::new(hmac::HMAC_SHA256, key.try_get_hmac_secret()?))))
        }
        (Algorithm::RS256, AlgorithmFamily::Rsa) | (Algorithm::ES256, AlgorithmFamily::Ec) => {
            Ok(Box::new(PublicKey { alg: *alg, key: key.clone() }))
        }
        (Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256, _) => Err(Error::from(ErrorKind::InvalidKeyFormat)),
        _ => Err(Error::from(ErrorKind::InvalidAlgorithm)),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use http::StatusCode;
    use ring::rand::SystemRandom;
    use serde_json::json;

    use crate::JwtAuth;

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");

    fn key(name: &str) -> Vec<u8> {
        std::fs::read(format!("{KEYS}{name}")).unwrap()
    }

    /// A token signed by `sign` over `header.claims`.
    fn token(alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let exp = crate::wire::now_ms() / 1000 + 600;
        let head = B64.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let claims = B64.encode(json!({"sub": "ring", "exp": exp}).to_string());
        let msg = format!("{head}.{claims}");
        let s = B64.encode(sign(msg.as_bytes()));
        format!("{msg}.{s}")
    }

    fn tampered(t: &str) -> String {
        let (rest, s) = t.rsplit_once('.').unwrap();
        let mut sig = B64.decode(s).unwrap();
        sig[0] ^= 1;
        format!("{rest}.{}", B64.encode(sig))
    }

    #[test]
    fn rs256_and_es256_verify_on_ring() {
        let rng = SystemRandom::new();
        let rsa = ring::signature::RsaKeyPair::from_pkcs8(&key("rsa.pk8")).unwrap();
        let rs = token("RS256", |m| {
            let mut out = vec![0; rsa.public().modulus_len()];
            rsa.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, m, &mut out).unwrap();
            out
        });
        let auth = JwtAuth::rs256_pem(&key("rsa.pub")).unwrap();
        assert_eq!(&*auth.verify(&rs).unwrap().user, "ring");
        assert_eq!(auth.verify(&tampered(&rs)).unwrap_err().status, StatusCode::UNAUTHORIZED);

        let ec = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key("ec.pk8"),
            &rng,
        )
        .unwrap();
        let es = token("ES256", |m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
        let auth = JwtAuth::es256_pem(&key("ec.pub")).unwrap();
        assert_eq!(&*auth.verify(&es).unwrap().user, "ring");
        assert_eq!(auth.verify(&tampered(&es)).unwrap_err().status, StatusCode::UNAUTHORIZED);
        // A token of another algorithm is refused by a key of this one.
        assert_eq!(auth.verify(&rs).unwrap_err().status, StatusCode::UNAUTHORIZED);
        // "none" and HS256-with-the-public-key tricks are refused.
        let none = token("none", |_| Vec::new());
        assert!(auth.verify(&none).is_err());
        let hs = token("HS256", |m| {
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key("ec.pub")), m).as_ref().to_vec()
        });
        assert!(auth.verify(&hs).is_err());
    }
}
