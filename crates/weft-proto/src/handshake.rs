//! The opening handshake (RFC 6455 §4): parse and build HTTP/1.1 upgrade requests and responses.
//!
//! Pure functions over buffers. The server side turns a bad upgrade request into a typed
//! [`HandshakeError`] that knows its HTTP status (400, 405, 426, 431) and can render the
//! rejection response; the client side checks the server's answer (status 101, `Upgrade`,
//! `Connection`, `Sec-WebSocket-Accept`, and that the subprotocol and extensions are ones it
//! offered).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use sha1::{Digest, Sha1};

use crate::deflate::{self, DeflateConfig, DeflateParams};
use crate::extension;

/// The GUID of RFC 6455 §1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest request or response head we accept (bytes).
pub const MAX_HEAD_SIZE: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    BASE64.encode(h.finalize())
}

/// A fresh random `Sec-WebSocket-Key` (16 bytes from the OS-seeded CSPRNG, base64).
pub fn generate_key() -> String {
    let bytes: [u8; 16] = rand::random();
    BASE64.encode(bytes)
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.1 (server: 400).
    Malformed(String),
    /// The head exceeds [`MAX_HEAD_SIZE`] (server: 431).
    TooLarge,
    /// Not a GET request (server: 405).
    MethodNotAllowed,
    /// Not HTTP/1.1 or later (server: 400).
    HttpVersion,
    /// `Upgrade: websocket` / `Connection: upgrade` missing: not a WebSocket request (server: 426).
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13 (server: 426 with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes (server: 400).
    InvalidKey,
    /// The application refused the request with this status.
    Rejected(StatusCode),
    /// Client: the server answered with a status other than 101.
    Status(StatusCode),
    /// Client: `Sec-WebSocket-Accept` does not match our key.
    InvalidAccept,
    /// Client: the server picked a subprotocol we did not offer.
    UnexpectedSubprotocol(String),
    /// Client: the server answered with an extension we did not offer or with bad parameters.
    UnexpectedExtension(String),
    /// Client: the URL cannot be used (scheme, host).
    InvalidUri(String),
    /// Client: the HTTP/2 or HTTP/3 server did not announce extended CONNECT
    /// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`, RFC 8441 / RFC 9220), so it takes no WebSockets.
    ExtendedConnectDisabled,
}

impl HandshakeError {
    /// The HTTP status a server answers with for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgrade | Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::Rejected(s) | Self::Status(s) => *s,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The status a server answers an extended CONNECT (HTTP/2, HTTP/3) with for this error:
    /// as [`status`](Self::status), but 400 where HTTP/1.1 says 426, which needs the
    /// connection-level `Upgrade` header HTTP/2 forbids. A wrong version still gets
    /// `Sec-WebSocket-Version: 13` (see [`rejection_headers`](Self::rejection_headers)).
    pub fn connect_status(&self) -> StatusCode {
        match self.status() {
            StatusCode::UPGRADE_REQUIRED => StatusCode::BAD_REQUEST,
            s => s,
        }
    }

    /// Headers that belong on the refusal over any transport (`Sec-WebSocket-Version: 13` for a
    /// wrong version, `Allow: GET` for a wrong method).
    pub fn rejection_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            Self::UnsupportedVersion => {
                headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            _ => {}
        }
        headers
    }

    /// The full HTTP response a server sends for this error (head and a short text body).
    pub fn rejection_response(&self) -> Vec<u8> {
        let mut headers = self.rejection_headers();
        if let Self::NotUpgrade = self {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        rejection(self.status(), &headers, &format!("{self}\n"))
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => write!(f, "malformed HTTP: {m}"),
            Self::TooLarge => write!(f, "HTTP head larger than {MAX_HEAD_SIZE} bytes"),
            Self::MethodNotAllowed => f.write_str("WebSocket upgrade requires GET"),
            Self::HttpVersion => f.write_str("WebSocket upgrade requires HTTP/1.1"),
            Self::NotUpgrade => f.write_str("not a WebSocket upgrade request (Upgrade/Connection headers)"),
            Self::UnsupportedVersion => f.write_str("unsupported Sec-WebSocket-Version (only 13)"),
            Self::InvalidKey => f.write_str("missing or invalid Sec-WebSocket-Key"),
            Self::Rejected(s) => write!(f, "rejected by the application with {s}"),
            Self::Status(s) => write!(f, "server answered {s} instead of 101 Switching Protocols"),
            Self::InvalidAccept => f.write_str("Sec-WebSocket-Accept does not match the key"),
            Self::UnexpectedSubprotocol(p) => write!(f, "server chose subprotocol {p:?}, which was not offered"),
            Self::UnexpectedExtension(e) => write!(f, "server answered with extension {e:?}, which was not offered"),
            Self::InvalidUri(m) => write!(f, "invalid WebSocket URL: {m}"),
            Self::ExtendedConnectDisabled => {
                f.write_str("the server did not enable extended CONNECT (RFC 8441/9220): no WebSockets over it")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

fn build_headers(raw: &[httparse::Header<'_>]) -> Result<HeaderMap, HandshakeError> {
    let mut map = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HandshakeError::Malformed(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HandshakeError::Malformed(format!("bad value for header {}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Parse a request head from the start of `buf`: `Ok(None)` if incomplete, else the request and
/// the number of bytes it used.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request<()>, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_SIZE => return Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if n > MAX_HEAD_SIZE {
        return Err(HandshakeError::TooLarge);
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HandshakeError::Malformed("bad method".into()))?;
    let uri: Uri =
        req.path.unwrap_or("/").parse().map_err(|_| HandshakeError::Malformed("bad request target".into()))?;
    let version = if req.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let mut out = Request::new(());
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.version_mut() = version;
    *out.headers_mut() = build_headers(req.headers)?;
    Ok(Some((out, n)))
}

/// Parse a response head: `Ok(None)` if incomplete, else the response and bytes used.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response<()>, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_SIZE => return Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    let status =
        StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| HandshakeError::Malformed("bad status".into()))?;
    let mut out = Response::new(());
    *out.status_mut() = status;
    *out.version_mut() = if resp.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    *out.headers_mut() = build_headers(resp.headers)?;
    Ok(Some((out, n)))
}

/// Whether a comma-separated header (any occurrence) contains `token`, case-insensitively.
pub fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn header_tokens(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The subprotocols a client offered, in its order.
pub fn offered_subprotocols<B>(req: &Request<B>) -> Vec<String> {
    header_tokens(req.headers(), &header::SEC_WEBSOCKET_PROTOCOL)
}

/// What the server agreed to in a successful handshake.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The 101 response; the application may add headers before it is written.
    pub response: Response<()>,
    /// The selected subprotocol.
    pub subprotocol: Option<String>,
    /// Negotiated permessage-deflate parameters.
    pub deflate: Option<DeflateParams>,
}

/// Check an upgrade request and build the 101 response.
///
/// `subprotocols` lists what the server supports, most preferred first; the server selects the
/// first of these that the client offered (never echoing the client's list).
pub fn server_accept<B>(
    req: &Request<B>,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
) -> Result<Accepted, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version() < Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    let h = req.headers();
    if !header_has_token(h, &header::UPGRADE, "websocket") || !header_has_token(h, &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY).ok_or(HandshakeError::InvalidKey)?;
    match BASE64.decode(key.as_bytes()) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key(key.as_bytes())).expect("base64 is a valid header value"),
    );
    let (subprotocol, deflate) = negotiate(h, subprotocols, deflate_cfg, rh)?;
    Ok(Accepted { response: resp, subprotocol, deflate })
}

/// The transport-independent half of the server's answer: select the subprotocol and
/// negotiate permessage-deflate from the request `headers`, adding the answering
/// `Sec-WebSocket-Protocol` / `Sec-WebSocket-Extensions` headers to `response`.
///
/// HTTP/1.1 upgrades ([`server_accept`]) and extended CONNECT over HTTP/2 or HTTP/3
/// ([`server_accept_connect`]) share it, so every transport agrees to the same things.
pub fn negotiate(
    headers: &HeaderMap,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
    response: &mut HeaderMap,
) -> Result<(Option<String>, Option<DeflateParams>), HandshakeError> {
    let offered = header_tokens(headers, &header::SEC_WEBSOCKET_PROTOCOL);
    let subprotocol = subprotocols.iter().find(|p| offered.iter().any(|o| o == *p)).cloned();
    if let Some(p) = &subprotocol {
        response.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(p).map_err(|_| HandshakeError::Malformed("subprotocol".into()))?,
        );
    }
    let deflate = match deflate_cfg {
        Some(cfg) if cfg!(feature = "deflate") => {
            let offers: Vec<_> = headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(extension::parse)
                .filter_map(Result::ok)
                .collect();
            deflate::server_negotiate(&offers, cfg).map(|(params, value)| {
                response.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(&value).expect("ascii"));
                params
            })
        }
        _ => None,
    };
    Ok((subprotocol, deflate))
}

/// Check an extended CONNECT request (RFC 8441 for HTTP/2, RFC 9220 for HTTP/3) and build the
/// `200` response. `protocol` is the request's `:protocol` pseudo-header, which HTTP libraries
/// keep outside the header map.
///
/// There is no `Sec-WebSocket-Key` / `Sec-WebSocket-Accept` on these transports; version,
/// subprotocol and permessage-deflate are negotiated exactly as over HTTP/1.1 ([`negotiate`]).
/// Errors map to statuses HTTP/2 allows (no 426: `Upgrade` does not exist there), see
/// [`HandshakeError::connect_status`].
///
/// ```
/// use weft_proto::handshake::server_accept_connect;
/// let req = http::Request::connect("https://example.com/chat")
///     .header("sec-websocket-version", "13")
///     .header("sec-websocket-protocol", "v2, v1")
///     .body(())
///     .unwrap();
/// let ok = server_accept_connect(&req, Some("websocket"), &["v1".into()], None).unwrap();
/// assert_eq!(ok.response.status(), 200);
/// assert_eq!(ok.subprotocol.as_deref(), Some("v1"));
/// assert!(server_accept_connect(&req, None, &[], None).is_err());
/// ```
pub fn server_accept_connect<B>(
    req: &Request<B>,
    protocol: Option<&str>,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
) -> Result<Accepted, HandshakeError> {
    if req.method() != Method::CONNECT || !protocol.is_some_and(|p| p.eq_ignore_ascii_case("websocket")) {
        return Err(HandshakeError::NotUpgrade);
    }
    let h = req.headers();
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    let (subprotocol, deflate) = negotiate(h, subprotocols, deflate_cfg, resp.headers_mut())?;
    Ok(Accepted { response: resp, subprotocol, deflate })
}

/// Serialise a response head (status line, headers, blank line).
pub fn write_response_head(resp: &Response<()>, out: &mut Vec<u8>) {
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_headers(resp.headers(), out);
    out.extend_from_slice(b"\r\n");
}

fn write_headers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A complete non-101 response with a text body (connection closed afterwards).
pub fn rejection(status: StatusCode, headers: &HeaderMap, body: &str) -> Vec<u8> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (k, v) in headers {
        h.append(k.clone(), v.clone());
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut out = Vec::with_capacity(256 + body.len());
    write_response_head(&resp, &mut out);
    out.extend_from_slice(body.as_bytes());
    out
}

/// The pieces of a client request that the response must be checked against.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The request head to write.
    pub bytes: Vec<u8>,
    /// The `Sec-WebSocket-Key` we sent.
    pub key: String,
}

/// Build a client upgrade request for `uri` (`ws://` or `wss://`).
pub fn client_request(
    uri: &Uri,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
    extra_headers: &HeaderMap,
) -> Result<ClientRequest, HandshakeError> {
    let (host, port) = host_port(uri)?;
    let default_port = if is_tls(uri) { 443 } else { 80 };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path };
    let key = generate_key();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host_header = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let mut h = HeaderMap::new();
    let host_value = if port == default_port { host_header } else { format!("{host_header}:{port}") };
    h.insert(header::HOST, HeaderValue::from_str(&host_value).map_err(|_| HandshakeError::InvalidUri("host".into()))?);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_str(&key).expect("base64"));
    client_headers(subprotocols, deflate_cfg, extra_headers, &mut h, false)?;
    write_headers(&h, &mut out);
    out.extend_from_slice(b"\r\n");
    Ok(ClientRequest { bytes: out, key })
}

/// The client side of the HTTP/1.1 opening handshake, without I/O: the one driver behind the
/// tokio client and both Python clients. Write [`request`](Self::request), feed what the
/// server sends to [`feed`](Self::feed) until it returns the outcome, and hand the bytes that
/// came after the response head to the [`Connection`](crate::Connection) (they are frames).
///
/// ```
/// use weft_proto::handshake::{ClientHandshake, accept_key};
///
/// let uri = "ws://example.com/chat".parse().unwrap();
/// let mut hs = ClientHandshake::new(&uri, &[], None, &Default::default()).unwrap();
/// let request = String::from_utf8(hs.request().to_vec()).unwrap();
/// assert!(request.starts_with("GET /chat HTTP/1.1\r\n"));
/// // What a server answers, in two reads, with the first frame right behind the head.
/// let mut answer = format!(
///     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
///      Sec-WebSocket-Accept: {}\r\n\r\n",
///     accept_key(hs.key().as_bytes())
/// )
/// .into_bytes();
/// answer.extend_from_slice(b"\x81\x02hi");
/// assert!(hs.feed(&answer[..20]).unwrap().is_none());
/// let done = hs.feed(&answer[20..]).unwrap().unwrap();
/// assert_eq!(done.response.status(), 101);
/// assert_eq!(done.rest, b"\x81\x02hi");
/// ```
#[derive(Debug)]
pub struct ClientHandshake {
    request: Vec<u8>,
    key: String,
    subprotocols: Vec<String>,
    deflate: Option<DeflateConfig>,
    buf: Vec<u8>,
}

/// A finished client handshake.
#[derive(Debug)]
pub struct ClientHandshakeDone {
    /// The server's `101` head.
    pub response: Response<()>,
    /// The subprotocol and permessage-deflate parameters agreed on.
    pub negotiated: Negotiated,
    /// Bytes that arrived after the head: the first WebSocket frames.
    pub rest: Vec<u8>,
}

/// A failed client handshake: why, and the server's answer when there was one (a refusal's
/// status and the part of its body that has arrived; read more of it if you want it whole).
#[derive(Debug)]
pub struct ClientHandshakeFailed {
    /// What went wrong (`Status` for a refusal).
    pub error: HandshakeError,
    /// The response head, when one was complete.
    pub response: Option<Response<()>>,
    /// Bytes after the head that arrived with it.
    pub body: Vec<u8>,
}

impl ClientHandshake {
    /// Build the upgrade request for `uri` (`ws://` or `wss://`) with these subprotocols,
    /// permessage-deflate offer and extra headers.
    pub fn new(
        uri: &Uri,
        subprotocols: &[String],
        deflate_cfg: Option<&DeflateConfig>,
        extra_headers: &HeaderMap,
    ) -> Result<Self, HandshakeError> {
        let req = client_request(uri, subprotocols, deflate_cfg, extra_headers)?;
        Ok(Self {
            request: req.bytes,
            key: req.key,
            subprotocols: subprotocols.to_vec(),
            deflate: deflate_cfg.cloned(),
            buf: Vec::new(),
        })
    }

    /// The request head to write.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// The `Sec-WebSocket-Key` the request carries.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Feed bytes read from the server: `Ok(None)` while the response head is incomplete (at
    /// most [`MAX_HEAD_SIZE`] bytes are held), then the outcome.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<ClientHandshakeDone>, Box<ClientHandshakeFailed>> {
        self.buf.extend_from_slice(data);
        let fail = |error| Box::new(ClientHandshakeFailed { error, response: None, body: Vec::new() });
        let (response, used) = match parse_response(&self.buf) {
            Ok(None) => return Ok(None),
            Ok(Some(x)) => x,
            Err(e) => return Err(fail(e)),
        };
        let rest = self.buf.split_off(used);
        match client_verify(&response, &self.key, &self.subprotocols, self.deflate.as_ref()) {
            Ok(negotiated) => Ok(Some(ClientHandshakeDone { response, negotiated, rest })),
            Err(error) => Err(Box::new(ClientHandshakeFailed { error, response: Some(response), body: rest })),
        }
    }

    /// The server closed the connection before its response head was complete.
    pub fn closed(&self) -> HandshakeError {
        HandshakeError::Malformed("connection closed during the opening handshake".into())
    }
}

/// Whether the URL asks for TLS (`wss://` or `https://`).
pub fn is_tls(uri: &Uri) -> bool {
    matches!(uri.scheme_str(), Some("wss" | "https"))
}

/// Host (without brackets) and port of a `ws://`/`wss://` URL; any other scheme (`http://`
/// included) is `InvalidUri`.
pub fn host_port(uri: &Uri) -> Result<(&str, u16), HandshakeError> {
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        Some(s @ ("http" | "https")) => {
            return Err(HandshakeError::InvalidUri(format!("{s}:// is not a WebSocket URL: use ws:// or wss://")));
        }
        Some(s) => return Err(HandshakeError::InvalidUri(format!("unsupported scheme {s:?}"))),
        None => return Err(HandshakeError::InvalidUri("missing scheme (ws:// or wss://)".into())),
    };
    let host = uri.host().ok_or_else(|| HandshakeError::InvalidUri("missing host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host, uri.port_u16().unwrap_or(if tls { 443 } else { 80 })))
}

/// What the client and server agreed on.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
    /// permessage-deflate parameters, if the server accepted our offer.
    pub deflate: Option<DeflateParams>,
}

/// Check the server's response to our request.
pub fn client_verify(
    resp: &Response<()>,
    key: &str,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
) -> Result<Negotiated, HandshakeError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(HandshakeError::Status(resp.status()));
    }
    let h = resp.headers();
    if !header_has_token(h, &header::UPGRADE, "websocket") || !header_has_token(h, &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    let expected = accept_key(key.as_bytes());
    if h.get(header::SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
        return Err(HandshakeError::InvalidAccept);
    }
    client_check_negotiated(h, subprotocols, deflate_cfg)
}

/// The transport-independent half of checking a server's answer: the subprotocol it chose
/// must be one we offered, and its extensions ones we offered with acceptable parameters.
pub fn client_check_negotiated(
    h: &HeaderMap,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
) -> Result<Negotiated, HandshakeError> {
    let chosen = header_tokens(h, &header::SEC_WEBSOCKET_PROTOCOL);
    let subprotocol = match chosen.as_slice() {
        [] => None,
        [p] if subprotocols.contains(p) => Some(p.clone()),
        _ => return Err(HandshakeError::UnexpectedSubprotocol(chosen.join(", "))),
    };
    let mut negotiated = Negotiated { subprotocol, ..Default::default() };
    for value in h.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter() {
        let text = value.to_str().map_err(|_| HandshakeError::UnexpectedExtension("non-ASCII".into()))?;
        for ext in extension::parse(text) {
            let ext = ext.map_err(|()| HandshakeError::UnexpectedExtension(text.to_owned()))?;
            if let (Some(cfg), true) = (deflate_cfg, ext.name == deflate::EXTENSION_NAME) {
                if negotiated.deflate.is_some() {
                    return Err(HandshakeError::UnexpectedExtension("permessage-deflate twice".into()));
                }
                negotiated.deflate =
                    Some(deflate::client_accept(&ext, cfg).map_err(HandshakeError::UnexpectedExtension)?);
                continue;
            }
            return Err(HandshakeError::UnexpectedExtension(ext.name));
        }
    }
    Ok(negotiated)
}

/// Headers a WebSocket client sends on every transport: version 13, the offered subprotocols
/// and permessage-deflate, then the application's own (except those the handshake owns and,
/// for HTTP/2 and HTTP/3, the connection-specific ones those protocols forbid).
fn client_headers(
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
    extra_headers: &HeaderMap,
    h: &mut HeaderMap,
    connect: bool,
) -> Result<(), HandshakeError> {
    h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    if !subprotocols.is_empty() {
        let v = subprotocols.join(", ");
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&v).map_err(|_| HandshakeError::InvalidUri("subprotocol".into()))?,
        );
    }
    if let Some(cfg) = deflate_cfg.filter(|_| cfg!(feature = "deflate")) {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(&deflate::client_offer(cfg)).expect("ascii"));
    }
    for (k, v) in extra_headers {
        // The application may override anything but the handshake's own fields.
        let owned = k == header::SEC_WEBSOCKET_KEY || k == header::UPGRADE || k == header::CONNECTION;
        let hop = connect
            && (k == header::HOST
                || k == header::TRANSFER_ENCODING
                || k == header::TE
                || k.as_str() == "keep-alive"
                || k.as_str() == "proxy-connection");
        if !owned && !hop {
            h.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// Build an extended CONNECT request (RFC 8441 / RFC 9220) for `uri` (`ws://` or `wss://`):
/// method `CONNECT`, an `http`/`https` URI carrying `:scheme`, `:authority` and `:path`, and the
/// WebSocket headers. The HTTP/2 or HTTP/3 library adds `:protocol = websocket`.
///
/// ```
/// let uri: http::Uri = "wss://example.com/chat?x=1".parse().unwrap();
/// let req = weft_proto::handshake::client_request_connect(&uri, &["v1".into()], None, &Default::default()).unwrap();
/// assert_eq!(req.method(), http::Method::CONNECT);
/// assert_eq!(req.uri().to_string(), "https://example.com/chat?x=1");
/// assert_eq!(req.headers()["sec-websocket-version"], "13");
/// ```
pub fn client_request_connect(
    uri: &Uri,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
    extra_headers: &HeaderMap,
) -> Result<Request<()>, HandshakeError> {
    let (host, port) = host_port(uri)?;
    let tls = is_tls(uri);
    let default_port = if tls { 443 } else { 80 };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let authority = if port == default_port { host } else { format!("{host}:{port}") };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path };
    let target: Uri = format!("{}://{authority}{path}", if tls { "https" } else { "http" })
        .parse()
        .map_err(|e: http::uri::InvalidUri| HandshakeError::InvalidUri(e.to_string()))?;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = target;
    client_headers(subprotocols, deflate_cfg, extra_headers, req.headers_mut(), true)?;
    Ok(req)
}

/// Check the answer to an extended CONNECT: any 2xx accepts (RFC 8441 §5), then the same
/// subprotocol and extension checks as over HTTP/1.1.
pub fn client_verify_connect(
    resp: &Response<()>,
    subprotocols: &[String],
    deflate_cfg: Option<&DeflateConfig>,
) -> Result<Negotiated, HandshakeError> {
    if !resp.status().is_success() {
        return Err(HandshakeError::Status(resp.status()));
    }
    client_check_negotiated(resp.headers(), subprotocols, deflate_cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn accept(req: &Request<()>, protos: &[String]) -> Result<Accepted, HandshakeError> {
        server_accept(req, protos, None)
    }

    /// Extended CONNECT (HTTP/2, HTTP/3): what the client builds the server accepts, and both
    /// ends agree on the same subprotocol and deflate parameters as over HTTP/1.1.
    #[test]
    fn extended_connect_round_trip_negotiates_like_http1() {
        let uri: Uri = "ws://h:8080/p?q=1".parse().unwrap();
        let mut extra = HeaderMap::new();
        extra.insert(header::HOST, HeaderValue::from_static("ignored"));
        extra.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let protos = vec!["b".to_owned(), "a".to_owned()];
        let cfg = DeflateConfig::default();
        let req = client_request_connect(&uri, &protos, Some(&cfg), &extra).unwrap();
        assert_eq!(req.uri().to_string(), "http://h:8080/p?q=1");
        assert!(req.headers().get(header::HOST).is_none(), "no Host over HTTP/2");
        assert!(req.headers().get(header::SEC_WEBSOCKET_KEY).is_none());
        assert_eq!(req.headers()[header::AUTHORIZATION], "Bearer t");
        let ok = server_accept_connect(&req, Some("websocket"), &["a".into()], Some(&cfg)).unwrap();
        assert_eq!(ok.response.status(), StatusCode::OK);
        assert_eq!(ok.subprotocol.as_deref(), Some("a"));
        let n = client_verify_connect(&ok.response, &protos, Some(&cfg)).unwrap();
        assert_eq!(n.subprotocol.as_deref(), Some("a"));
        assert_eq!(n.deflate.is_some(), cfg!(feature = "deflate"));
        assert_eq!(n.deflate.is_some(), ok.deflate.is_some());
        // Errors: not websocket, not CONNECT, wrong version; a refusal status.
        assert_eq!(server_accept_connect(&req, Some("chat"), &[], None).unwrap_err(), HandshakeError::NotUpgrade);
        let mut get = Request::new(());
        *get.headers_mut() = req.headers().clone();
        assert_eq!(server_accept_connect(&get, Some("websocket"), &[], None).unwrap_err(), HandshakeError::NotUpgrade);
        let mut old = req;
        old.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let e = server_accept_connect(&old, Some("websocket"), &[], None).unwrap_err();
        assert_eq!((e.status(), e.connect_status()), (StatusCode::UPGRADE_REQUIRED, StatusCode::BAD_REQUEST));
        assert_eq!(e.rejection_headers()[header::SEC_WEBSOCKET_VERSION], "13");
        let mut refused = Response::new(());
        *refused.status_mut() = StatusCode::FORBIDDEN;
        assert_eq!(
            client_verify_connect(&refused, &protos, None).unwrap_err(),
            HandshakeError::Status(StatusCode::FORBIDDEN)
        );
        let mut odd = Response::new(());
        odd.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("c"));
        assert!(matches!(client_verify_connect(&odd, &protos, None), Err(HandshakeError::UnexpectedSubprotocol(_))));
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn parses_and_accepts_the_rfc_example() {
        let (req, n) = parse_request(REQ).unwrap().unwrap();
        assert_eq!(n, REQ.len());
        assert_eq!(req.uri().path(), "/chat");
        assert_eq!(req.uri().query(), Some("room=1"));
        let a = accept(&req, &["superchat".into(), "chat".into()]).unwrap();
        assert_eq!(a.subprotocol.as_deref(), Some("superchat"));
        let mut head = Vec::new();
        write_response_head(&a.response, &mut head);
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("sec-websocket-protocol: superchat\r\n"));
        // No supported protocol: none selected, never the client's list.
        let a = accept(&req, &["other".into()]).unwrap();
        assert!(a.subprotocol.is_none());
        assert!(a.response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn partial_heads_need_more() {
        for cut in 0..REQ.len() {
            assert!(parse_request(&REQ[..cut]).unwrap().is_none());
        }
    }

    fn err_for(req: &[u8]) -> HandshakeError {
        match parse_request(req) {
            Ok(Some((r, _))) => accept(&r, &[]).unwrap_err(),
            Ok(None) => panic!("incomplete"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_requests_map_to_statuses() {
        let s = String::from_utf8(REQ.to_vec()).unwrap();
        assert_eq!(err_for(s.replace("GET", "POST").as_bytes()).status(), 405);
        assert_eq!(err_for(s.replace("Upgrade: websocket\r\n", "").as_bytes()).status(), 426);
        let v = err_for(s.replace("Version: 13", "Version: 8").as_bytes());
        assert_eq!(v.status(), 426);
        assert!(String::from_utf8(v.rejection_response()).unwrap().contains("sec-websocket-version: 13"));
        assert_eq!(err_for(s.replace("dGhlIHNhbXBsZSBub25jZQ==", "short").as_bytes()).status(), 400);
        assert_eq!(err_for(s.replace("HTTP/1.1", "HTTP/1.0").as_bytes()).status(), 400);
        assert_eq!(err_for(b"\x00\x01garbage\r\n\r\n").status(), 400);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_SIZE));
        assert_eq!(err_for(huge.as_bytes()).status(), 431);
    }

    #[test]
    fn client_request_and_verify() {
        let uri: Uri = "ws://example.com:9001/path?q=1".parse().unwrap();
        let mut extra = HeaderMap::new();
        extra.insert("authorization", HeaderValue::from_static("Bearer x"));
        let r = client_request(&uri, &["v1".into()], None, &extra).unwrap();
        let (req, _) = parse_request(&r.bytes).unwrap().unwrap();
        assert_eq!(req.uri(), "/path?q=1");
        assert_eq!(req.headers()["host"], "example.com:9001");
        assert_eq!(req.headers()["authorization"], "Bearer x");
        let a = accept(&req, &["v1".into()]).unwrap();
        let verify = |resp: &Response<()>, protos: &[String]| client_verify(resp, &r.key, protos, None);
        let n = verify(&a.response, &["v1".into()]).unwrap();
        assert_eq!(n.subprotocol.as_deref(), Some("v1"));
        assert_eq!(verify(&a.response, &[]).unwrap_err(), HandshakeError::UnexpectedSubprotocol("v1".into()));
        let mut bad = a.response.clone();
        bad.headers_mut().insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("nope"));
        assert_eq!(verify(&bad, &["v1".into()]).unwrap_err(), HandshakeError::InvalidAccept);
        let mut ext = a.response.clone();
        ext.headers_mut().insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
        assert!(matches!(verify(&ext, &["v1".into()]), Err(HandshakeError::UnexpectedExtension(_))));
        let mut st = Response::new(());
        *st.status_mut() = StatusCode::FORBIDDEN;
        assert_eq!(verify(&st, &[]).unwrap_err(), HandshakeError::Status(StatusCode::FORBIDDEN));
    }

    #[test]
    fn urls() {
        assert_eq!(host_port(&"wss://h".parse().unwrap()).unwrap(), ("h", 443));
        assert_eq!(host_port(&"ws://[::1]:80/".parse().unwrap()).unwrap(), ("::1", 80));
        assert!(host_port(&"ftp://h".parse().unwrap()).is_err());
        assert!(host_port(&"http://h".parse().unwrap()).is_err());
        assert!(host_port(&"https://h".parse().unwrap()).is_err());
    }
}
