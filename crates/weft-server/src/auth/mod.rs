//! Authentication: JWT checked during the HTTP upgrade, and the API key of the HTTP API.

use std::sync::Arc;

use http::{HeaderMap, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::topic::Pattern;

mod ring_jwt;

pub use ring_jwt::install as install_jwt_crypto;

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

/// The shortest HS256 secret accepted: 256 bits, the size of the HMAC-SHA256 output
/// (RFC 7518 §3.2 requires a key at least that long).
pub const MIN_HS256_SECRET: usize = 32;

impl JwtAuth {
    /// HS256 with a shared secret of at least [`MIN_HS256_SECRET`] bytes: a shorter (or empty)
    /// secret is refused, since anyone could then forge tokens.
    ///
    /// ```
    /// use weft_server::JwtAuth;
    /// assert!(JwtAuth::hs256(b"").is_err());
    /// assert!(JwtAuth::hs256(b"0123456789abcdef0123456789abcdef").is_ok());
    /// ```
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthConfigError> {
        if secret.len() < MIN_HS256_SECRET {
            return Err(AuthConfigError(format!(
                "the HS256 secret is {} bytes; at least {MIN_HS256_SECRET} are required (an empty or short \
                 secret lets anyone forge tokens)",
                secret.len()
            )));
        }
        Ok(Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256))
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
        ring_jwt::install();
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation, cookie: "weft_token".into() }
    }

    /// Require this issuer (`iss`): a token without `iss` is refused like a wrong one.
    pub fn issuer(mut self, iss: &str) -> Self {
        self.validation.set_issuer(&[iss]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// Require this audience (`aud`): a token without `aud` is refused like a wrong one.
    pub fn audience(mut self, aud: &str) -> Self {
        self.validation.set_audience(&[aud]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// The clock leeway, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
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
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => (StatusCode::FORBIDDEN, "token has no issuer"),
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => (StatusCode::FORBIDDEN, "token has no audience"),
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
            subscribe: parse(c.subscribe, &[">"])?.into(),
            publish: parse(c.publish, &[])?.into(),
            info: c.info.map(Arc::new),
            expires: c.exp,
        })
    }

    /// Find the token in a request: `Authorization: Bearer`, then the `token` query parameter,
    /// then the cookie; with where it was found.
    pub fn token_from(&self, headers: &HeaderMap, query: Option<&str>) -> Option<(String, TokenSource)> {
        bearer(headers)
            .map(|t| (t.to_owned(), TokenSource::Header))
            .or_else(|| query_param(query, "token").map(|t| (t, TokenSource::Query)))
            .or_else(|| cookie(headers, &self.cookie).map(|t| (t.to_owned(), TokenSource::Cookie)))
    }
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer`.
    Header,
    /// The `token` query parameter.
    Query,
    /// The cookie.
    Cookie,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    info: Option<Value>,
    exp: Option<u64>,
}

/// Who a connection is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id.
    pub user: Arc<str>,
    /// Patterns the user may subscribe to (shared: every anonymous session holds the same).
    pub subscribe: Arc<[Pattern]>,
    /// Patterns the user may publish on.
    pub publish: Arc<[Pattern]>,
    /// Presence info.
    pub info: Option<Arc<Value>>,
    /// When the token expires (`exp`, seconds since the Unix epoch); `None` in anonymous mode.
    /// The session ends then unless the client sends a `refresh` with a newer token.
    pub expires: Option<u64>,
}

impl Identity {
    /// Anonymous mode: everything allowed.
    pub fn anonymous(user: Option<String>) -> Self {
        static ALL: std::sync::LazyLock<Arc<[Pattern]>> =
            std::sync::LazyLock::new(|| Arc::from([Pattern::parse(">").expect("valid")]));
        let all = Arc::clone(&ALL);
        static ANON: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("anon"));
        let user = match user.filter(|u| !u.is_empty() && u.len() <= 64) {
            Some(u) => u.into(),
            None => Arc::clone(&ANON),
        };
        Self { user, subscribe: all.clone(), publish: all, info: None, expires: None }
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

/// A query parameter, decoded as `application/x-www-form-urlencoded` (percent escapes, `+`).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
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
    // `subtle` compares in constant time (only the length can leak, which a key's length may).
    given.is_some_and(|g| bool::from(subtle::ConstantTimeEq::ct_eq(g.as_bytes(), expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn token(claims: Value, secret: &[u8]) -> String {
        install_jwt_crypto();
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn later() -> u64 {
        crate::wire::now_ms() / 1000 + 3600
    }

    #[test]
    fn hs256_claims() {
        let auth = JwtAuth::hs256(KEY).unwrap().issuer("me").audience("you");
        let t = token(
            json!({"sub":"alice","exp":later(),"iss":"me","aud":"you","publish":["chat.>"],"info":{"name":"A"}}),
            KEY,
        );
        let id = auth.verify(&t).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.subscribe[0].as_str(), ">");
        assert_eq!(id.publish[0].as_str(), "chat.>");
        assert_eq!(id.info.as_deref(), Some(&json!({"name":"A"})));
    }

    #[test]
    fn refusals() {
        let auth = JwtAuth::hs256(KEY).unwrap().issuer("me").audience("you");
        let st = |claims: Value, key: &[u8]| auth.verify(&token(claims, key)).unwrap_err().status;
        let ok = json!({"sub":"a","exp":later(),"iss":"me","aud":"you"});
        assert_eq!(st(ok.clone(), b"other"), StatusCode::UNAUTHORIZED);
        let mut c = ok.clone();
        c["exp"] = json!(1);
        assert_eq!(st(c, KEY), StatusCode::UNAUTHORIZED);
        let mut c = ok.clone();
        c["nbf"] = json!(later());
        assert_eq!(st(c, KEY), StatusCode::UNAUTHORIZED);
        let mut c = ok.clone();
        c["aud"] = json!("them");
        assert_eq!(st(c, KEY), StatusCode::FORBIDDEN);
        let mut c = ok.clone();
        c["iss"] = json!("someone");
        assert_eq!(st(c, KEY), StatusCode::FORBIDDEN);
        let mut c = ok;
        c["subscribe"] = json!(["a..b"]);
        assert_eq!(st(c, KEY), StatusCode::UNAUTHORIZED);
        assert_eq!(auth.verify("garbage").unwrap_err().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn token_sources() {
        let auth = JwtAuth::hs256(KEY).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(auth.token_from(&h, Some("a=1&token=abc%2Ed")), Some(("abc.d".into(), TokenSource::Query)));
        h.insert(header::COOKIE, "x=1; weft_token=fromcookie".parse().unwrap());
        assert_eq!(auth.token_from(&h, None), Some(("fromcookie".into(), TokenSource::Cookie)));
        h.insert(header::AUTHORIZATION, "Bearer hdr".parse().unwrap());
        assert_eq!(auth.token_from(&h, Some("token=q")), Some(("hdr".into(), TokenSource::Header)));
        assert_eq!(query_param(Some("user=a+b%20c&x"), "user").as_deref(), Some("a b c"));
        assert_eq!(query_param(Some("user=%zz%"), "user").as_deref(), Some("%zz%"));
    }

    #[test]
    fn short_secrets_and_missing_claims_are_refused() {
        assert!(JwtAuth::hs256(b"").is_err());
        assert!(JwtAuth::hs256(&KEY[..31]).is_err());
        let auth = JwtAuth::hs256(KEY).unwrap().issuer("me").audience("you");
        let st = |claims: Value| auth.verify(&token(claims, KEY)).unwrap_err().status;
        // Configured iss/aud are required, not only checked when present.
        assert_eq!(st(json!({"sub":"a","exp":later(),"aud":"you"})), StatusCode::FORBIDDEN);
        assert_eq!(st(json!({"sub":"a","exp":later(),"iss":"me"})), StatusCode::FORBIDDEN);
        // exp and sub are always required.
        assert_eq!(st(json!({"sub":"a","iss":"me","aud":"you"})), StatusCode::UNAUTHORIZED);
        assert_eq!(st(json!({"exp":later(),"iss":"me","aud":"you"})), StatusCode::UNAUTHORIZED);
        let id = auth.verify(&token(json!({"sub":"a","exp":later(),"iss":"me","aud":"you"}), KEY)).unwrap();
        assert_eq!(id.expires, Some(later()));
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
