//! Authentication: JWT checked during the HTTP upgrade, and the API key of the HTTP API.

use std::sync::Arc;

use http::{HeaderMap, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::topic::Pattern;

/// How JWTs are verified.
#[derive(Clone)]
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    cookie: String,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

/// Errors building a [`JwtAuth`].
#[derive(Debug)]
pub struct AuthConfigError(String);

impl std::fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthConfigError {}

impl JwtAuth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 with an RSA public key in PEM.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| AuthConfigError(format!("RSA public key: {e}")))?;
        Ok(Self::with_key(key, Algorithm::RS256))
    }

    /// ES256 with an EC (P-256) public key in PEM.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| AuthConfigError(format!("EC public key: {e}")))?;
        Ok(Self::with_key(key, Algorithm::ES256))
    }

    fn with_key(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation, cookie: "weft_token".into() }
    }

    /// Require this issuer (`iss`).
    pub fn issuer(mut self, iss: &str) -> Self {
        self.validation.set_issuer(&[iss]);
        self
    }

    /// Require this audience (`aud`).
    pub fn audience(mut self, aud: &str) -> Self {
        self.validation.set_audience(&[aud]);
        self.validation.validate_aud = true;
        self
    }

    /// Clock leeway for `exp`/`nbf`, in seconds (default 0).
    pub fn leeway(mut self, secs: u64) -> Self {
        self.validation.leeway = secs;
        self
    }

    /// Cookie name the token may come in (default `weft_token`).
    pub fn cookie(mut self, name: &str) -> Self {
        self.cookie = name.into();
        self
    }

    /// Verify a token and read its claims.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let (status, what) = match e.kind() {
                ErrorKind::ExpiredSignature => (StatusCode::UNAUTHORIZED, "token expired"),
                ErrorKind::ImmatureSignature => (StatusCode::UNAUTHORIZED, "token not valid yet (nbf)"),
                ErrorKind::InvalidSignature => (StatusCode::UNAUTHORIZED, "bad token signature"),
                ErrorKind::InvalidAlgorithm => (StatusCode::UNAUTHORIZED, "token algorithm not accepted"),
                ErrorKind::InvalidIssuer => (StatusCode::FORBIDDEN, "wrong token issuer"),
                ErrorKind::InvalidAudience => (StatusCode::FORBIDDEN, "wrong token audience"),
                ErrorKind::MissingRequiredClaim(_) => (StatusCode::UNAUTHORIZED, "token lacks a required claim"),
                _ => (StatusCode::UNAUTHORIZED, "malformed token"),
            };
            AuthError { status, message: format!("{what}: {e}") }
        })?;
        let c = data.claims;
        let parse = |v: Option<Vec<String>>, default: &[&str]| -> Result<Vec<Pattern>, AuthError> {
            let list = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            list.iter().map(|p| Pattern::parse(p)).collect::<Result<_, _>>().map_err(|e| AuthError {
                status: StatusCode::UNAUTHORIZED,
                message: format!("token has a bad pattern: {e}"),
            })
        };
        Ok(Identity {
            user: c.sub.into(),
            subscribe: parse(c.subscribe, &[">"])?,
            publish: parse(c.publish, &[])?,
            info: c.info.map(Arc::new),
        })
    }

    /// Find the token in a request: `Authorization: Bearer`, then the `token` query parameter,
    /// then the cookie.
    pub fn token_from<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
        bearer(headers)
            .map(str::to_owned)
            .or_else(|| query_param(query, "token"))
            .or_else(|| cookie(headers, &self.cookie).map(str::to_owned))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    info: Option<Value>,
}

/// Who a connection is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id.
    pub user: Arc<str>,
    /// Patterns the user may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Patterns the user may publish on.
    pub publish: Vec<Pattern>,
    /// Presence info.
    pub info: Option<Arc<Value>>,
}

impl Identity {
    /// Anonymous mode: everything allowed.
    pub fn anonymous(user: Option<String>) -> Self {
        let all = vec![Pattern::parse(">").expect("valid")];
        let user = user.filter(|u| !u.is_empty() && u.len() <= 64).unwrap_or_else(|| "anon".into());
        Self { user: user.into(), subscribe: all.clone(), publish: all, info: None }
    }
}

/// A refused token: the HTTP status to answer the upgrade with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// 401 or 403.
    pub status: StatusCode,
    /// Why.
    pub message: String,
}

/// The `Authorization: Bearer` credential.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// A query parameter, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cookie's value.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Check the HTTP API key (`Authorization: Bearer` or `X-API-Key`) in constant time.
pub fn api_key_matches(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok()).or_else(|| bearer(headers));
    match given {
        Some(g) if g.len() == expected.len() => {
            g.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn token(claims: Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn later() -> u64 {
        crate::wire::now_ms() / 1000 + 3600
    }

    #[test]
    fn hs256_claims() {
        let auth = JwtAuth::hs256(b"k").issuer("me").audience("you");
        let t = token(
            json!({"sub":"alice","exp":later(),"iss":"me","aud":"you","publish":["chat.>"],"info":{"name":"A"}}),
            b"k",
        );
        let id = auth.verify(&t).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.subscribe[0].as_str(), ">");
        assert_eq!(id.publish[0].as_str(), "chat.>");
        assert_eq!(id.info.as_deref(), Some(&json!({"name":"A"})));
    }

    #[test]
    fn refusals() {
        let auth = JwtAuth::hs256(b"k").issuer("me").audience("you");
        let st = |claims: Value, key: &[u8]| auth.verify(&token(claims, key)).unwrap_err().status;
        let ok = json!({"sub":"a","exp":later(),"iss":"me","aud":"you"});
        assert_eq!(st(ok.clone(), b"other"), StatusCode::UNAUTHORIZED);
        let mut c = ok.clone();
        c["exp"] = json!(1);
        assert_eq!(st(c, b"k"), StatusCode::UNAUTHORIZED);
        let mut c = ok.clone();
        c["nbf"] = json!(later());
        assert_eq!(st(c, b"k"), StatusCode::UNAUTHORIZED);
        let mut c = ok.clone();
        c["aud"] = json!("them");
        assert_eq!(st(c, b"k"), StatusCode::FORBIDDEN);
        let mut c = ok.clone();
        c["iss"] = json!("someone");
        assert_eq!(st(c, b"k"), StatusCode::FORBIDDEN);
        let mut c = ok;
        c["subscribe"] = json!(["a..b"]);
        assert_eq!(st(c, b"k"), StatusCode::UNAUTHORIZED);
        assert_eq!(auth.verify("garbage").unwrap_err().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn token_sources() {
        let auth = JwtAuth::hs256(b"k");
        let mut h = HeaderMap::new();
        assert_eq!(auth.token_from(&h, Some("a=1&token=abc%2Ed")), Some("abc.d".into()));
        h.insert(header::COOKIE, "x=1; weft_token=fromcookie".parse().unwrap());
        assert_eq!(auth.token_from(&h, None), Some("fromcookie".into()));
        h.insert(header::AUTHORIZATION, "Bearer hdr".parse().unwrap());
        assert_eq!(auth.token_from(&h, Some("token=q")), Some("hdr".into()));
    }

    #[test]
    fn api_key() {
        let mut h = HeaderMap::new();
        assert!(!api_key_matches(&h, "secret"));
        h.insert("x-api-key", "secret".parse().unwrap());
        assert!(api_key_matches(&h, "secret"));
        h.insert("x-api-key", "secreT".parse().unwrap());
        assert!(!api_key_matches(&h, "secret"));
    }
}
