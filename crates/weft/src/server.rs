//! Server: accept a WebSocket on a stream, optionally inspecting (and refusing) the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::HeaderMap;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weft_proto::handshake::{self, HandshakeError};
use weft_proto::{Config, Connection, Role};

use crate::error::{Error, Kind, Result};
use crate::websocket::WebSocket;

/// Accept a WebSocket with default settings.
///
/// ```no_run
/// # async fn run() -> weft::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// let (tcp, _) = listener.accept().await?;
/// let mut ws = weft::accept(tcp).await?;
/// while let Some(msg) = ws.recv().await {
///     let msg = msg?;
///     if msg.is_data() {
///         ws.send(msg).await?;
///     }
/// }
/// # Ok(()) }
/// ```
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<WebSocket<S>> {
    Acceptor::new().accept(stream).await
}

/// An HTTP answer that refuses the upgrade (from an [`Acceptor::accept_with`] callback).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) headers: Box<HeaderMap>,
    pub(crate) body: String,
}

impl Rejection {
    /// A rejection with `status` (e.g. 401, 403) and a plain-text body.
    pub fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self { status, headers: Box::default(), body: body.into() }
    }

    /// Add a response header (e.g. `WWW-Authenticate`). Invalid names or values are ignored.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value)) {
            self.headers.append(n, v);
        }
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// Server-side settings, reusable for every connection.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub(crate) config: std::sync::Arc<Config>,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) handshake_timeout: Duration,
    #[cfg(feature = "http2")]
    http2: crate::h2::Http2Config,
    #[cfg(feature = "http3")]
    http3: crate::h3::Http3Config,
}

impl Default for Acceptor {
    fn default() -> Self {
        Self::new()
    }
}

impl Acceptor {
    /// Defaults: [`Config::default`], no subprotocols, 10 s to complete the handshake.
    pub fn new() -> Self {
        Self {
            config: Default::default(),
            subprotocols: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            #[cfg(feature = "http2")]
            http2: Default::default(),
            #[cfg(feature = "http3")]
            http3: Default::default(),
        }
    }

    /// HTTP/2 settings for [`H2Server`](crate::h2::H2Server) connections (windows, stream limit).
    #[cfg(feature = "http2")]
    pub fn http2(mut self, cfg: crate::h2::Http2Config) -> Self {
        self.http2 = cfg;
        self
    }

    #[cfg(feature = "http2")]
    pub(crate) fn http2_config(&self) -> crate::h2::Http2Config {
        self.http2
    }

    /// HTTP/3 and QUIC settings for [`H3Server`](crate::h3::H3Server) (windows, stream,
    /// connection and handshake limits).
    #[cfg(feature = "http3")]
    pub fn http3(mut self, cfg: crate::h3::Http3Config) -> Self {
        self.http3 = cfg;
        self
    }

    #[cfg(feature = "http3")]
    pub(crate) fn http3_config(&self) -> crate::h3::Http3Config {
        self.http3
    }

    pub(crate) fn handshake_timeout_value(&self) -> Duration {
        self.handshake_timeout
    }

    pub(crate) fn subprotocol_list(&self) -> &[String] {
        &self.subprotocols
    }

    pub(crate) fn config_ref(&self) -> &Config {
        &self.config
    }

    pub(crate) fn config_arc(&self) -> &std::sync::Arc<Config> {
        &self.config
    }

    /// Connection settings; `config.deflate` enables accepting permessage-deflate.
    pub fn config(mut self, config: Config) -> Self {
        self.config = std::sync::Arc::new(config);
        self
    }

    /// Subprotocols we support, most preferred first. We select the first of these the client
    /// offered.
    pub fn subprotocols<I: IntoIterator<Item = P>, P: Into<String>>(mut self, p: I) -> Self {
        self.subprotocols = p.into_iter().map(Into::into).collect();
        self
    }

    /// Time limit for reading the request and writing the response (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Accept any valid upgrade request.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<WebSocket<S>> {
        self.accept_with(stream, |_, _| Ok(())).await
    }

    /// Accept after `callback` has seen the request (path, query, headers) and may add
    /// response headers or refuse with an HTTP status: this is where authentication goes.
    /// Bad upgrade requests are answered with 400/405/426/431 before the callback runs.
    pub async fn accept_with<S, F>(&self, stream: S, callback: F) -> Result<WebSocket<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(&Request<()>, &mut Response<()>) -> std::result::Result<(), Rejection>,
    {
        tokio::time::timeout(self.handshake_timeout, self.handshake(stream, callback))
            .await
            .map_err(|_| Error::new(Kind::Timeout("server handshake")))?
    }

    /// Upgrade a request that an HTTP server (hyper, axum, …) has already read.
    ///
    /// Checks the request like [`accept_with`](Self::accept_with) does and returns the `101`
    /// response for the HTTP server to send, plus a [`PendingUpgrade`] that turns the upgraded
    /// transport into a [`WebSocket`]. On error, [`HandshakeError::status`] is the status to
    /// answer with.
    ///
    /// ```
    /// let req = http::Request::get("/ws")
    ///     .header("host", "example.com")
    ///     .header("upgrade", "websocket")
    ///     .header("connection", "Upgrade")
    ///     .header("sec-websocket-version", "13")
    ///     .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    ///     .body(())
    ///     .unwrap();
    /// let (response, _pending) = weft::Acceptor::new().upgrade(&req).unwrap();
    /// assert_eq!(response.status(), 101);
    /// assert_eq!(response.headers()["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /// // After sending `response`, the HTTP server hands over the transport:
    /// // let ws = _pending.into_websocket(io, &leftover_bytes);
    /// ```
    pub fn upgrade<B>(&self, req: &Request<B>) -> std::result::Result<(Response<()>, PendingUpgrade), HandshakeError> {
        let accepted = handshake::server_accept(req, &self.subprotocols, self.config.deflate.as_ref())?;
        let pending = PendingUpgrade {
            config: std::sync::Arc::clone(&self.config),
            subprotocol: accepted.subprotocol,
            #[cfg(feature = "deflate")]
            deflate: accepted.deflate,
        };
        Ok((accepted.response, pending))
    }

    /// [`upgrade`](Self::upgrade) for an extended CONNECT (RFC 8441, WebSockets over HTTP/2)
    /// that an HTTP/2 server (hyper with `enable_connect_protocol`) has read: `protocol` is
    /// the request's `:protocol` (hyper: `req.extensions().get::<hyper::ext::Protocol>()`).
    /// The response is `200`; on error, answer [`HandshakeError::connect_status`].
    pub fn upgrade_connect<B>(
        &self,
        req: &Request<B>,
        protocol: Option<&str>,
    ) -> std::result::Result<(Response<()>, PendingUpgrade), HandshakeError> {
        let accepted =
            handshake::server_accept_connect(req, protocol, &self.subprotocols, self.config.deflate.as_ref())?;
        let pending = PendingUpgrade {
            config: std::sync::Arc::clone(&self.config),
            subprotocol: accepted.subprotocol,
            #[cfg(feature = "deflate")]
            deflate: accepted.deflate,
        };
        Ok((accepted.response, pending))
    }

    async fn handshake<S, F>(&self, mut io: S, callback: F) -> Result<WebSocket<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(&Request<()>, &mut Response<()>) -> std::result::Result<(), Rejection>,
    {
        let mut buf = BytesMut::with_capacity(1024);
        let parsed = loop {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during handshake").into());
            }
            match handshake::parse_request(&buf) {
                Ok(Some(done)) => break Ok(done),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        let accepted = parsed.and_then(|(req, used)| {
            handshake::server_accept(&req, &self.subprotocols, self.config.deflate.as_ref()).map(|a| (req, used, a))
        });
        let (req, used, mut accepted) = match accepted {
            Ok(a) => a,
            Err(e) => {
                let _ = io.write_all(&e.rejection_response()).await;
                let _ = io.shutdown().await;
                return Err(e.into());
            }
        };
        if let Err(r) = callback(&req, &mut accepted.response) {
            let _ = io.write_all(&handshake::rejection(r.status, &r.headers, &r.body)).await;
            let _ = io.shutdown().await;
            return Err(HandshakeError::Rejected(r.status).into());
        }
        let mut head = Vec::with_capacity(256);
        handshake::write_response_head(&accepted.response, &mut head);
        io.write_all(&head).await?;
        io.flush().await?;
        let now = Instant::now();
        let mut conn = Connection::new(Role::Server, std::sync::Arc::clone(&self.config), now);
        #[cfg(feature = "deflate")]
        if let Some(p) = accepted.deflate {
            conn.set_deflate(p);
        }
        conn.handle_read(&buf[used..], now);
        Ok(WebSocket::from_connection(io, conn, accepted.subprotocol))
    }
}

/// The server side of an upgrade whose `101` response an HTTP server sends (see
/// [`Acceptor::upgrade`]).
#[derive(Debug)]
pub struct PendingUpgrade {
    config: std::sync::Arc<Config>,
    subprotocol: Option<String>,
    #[cfg(feature = "deflate")]
    deflate: Option<weft_proto::DeflateParams>,
}

impl PendingUpgrade {
    /// The subprotocol the response selected.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// Start the WebSocket on the upgraded transport. `leftover` holds bytes the HTTP server
    /// read past the request head (the start of the client's first frames), if any.
    pub fn into_websocket<S: AsyncRead + AsyncWrite + Unpin>(self, io: S, leftover: &[u8]) -> WebSocket<S> {
        let now = Instant::now();
        let mut conn = Connection::new(Role::Server, self.config, now);
        #[cfg(feature = "deflate")]
        if let Some(p) = self.deflate {
            conn.set_deflate(p);
        }
        if !leftover.is_empty() {
            conn.handle_read(leftover, now);
        }
        WebSocket::from_connection(io, conn, self.subprotocol)
    }
}

/// Remove the connection-specific headers HTTP/2 and HTTP/3 forbid (RFC 9113 §8.2.2, RFC 9114 §4.2), which a callback
/// shared with HTTP/1.1 may add (`Connection: close` on a refusal): h2 would refuse to send the
/// whole response.
#[allow(dead_code)] // used by the http2 and http3 features
pub(crate) fn strip_connection_headers(h: &mut http::HeaderMap) {
    for name in [http::header::CONNECTION, http::header::UPGRADE, http::header::TRANSFER_ENCODING] {
        h.remove(name);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    if h.get(http::header::TE).is_some_and(|v| v != "trailers") {
        h.remove(http::header::TE);
    }
}

/// A [`WebSocket`] on a transport whose extended CONNECT has been answered.
#[allow(dead_code)] // used by the http2 and http3 features
pub(crate) fn websocket_on<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    role: Role,
    config: Arc<Config>,
    negotiated: handshake::Negotiated,
) -> WebSocket<S> {
    let mut conn = Connection::new(role, config, Instant::now());
    #[cfg(feature = "deflate")]
    if let Some(p) = negotiated.deflate {
        conn.set_deflate(p);
    }
    WebSocket::from_connection(io, conn, negotiated.subprotocol)
}
