//! Client: `connect("ws://…" | "wss://…")` and its options.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Uri;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proto::handshake::{self, HandshakeError};
use weft_proto::{Config, Connection, DeflateConfig, Role};

use crate::error::{Error, Kind, MAX_REFUSAL_BODY, Result};
use crate::stream::MaybeTlsStream;
use crate::websocket::WebSocket;

/// A client WebSocket over TCP, with or without TLS.
pub type ClientStream = WebSocket<MaybeTlsStream<TcpStream>>;

/// Connect with default options.
///
/// ```no_run
/// # async fn run() -> weft::Result<()> {
/// let mut ws = weft::connect("ws://127.0.0.1:9001/").await?;
/// ws.send("hello").await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<ClientStream> {
    ClientBuilder::new(url).connect().await
}

/// Options for a client connection.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    config: Config,
    headers: HeaderMap,
    header_error: Option<String>,
    subprotocols: Vec<String>,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    #[cfg(feature = "http2")]
    http2: Option<crate::h2::Http2Config>,
    #[cfg(feature = "http3")]
    http3: Option<crate::h3::Http3Config>,
}

impl ClientBuilder {
    /// Options for `url` (`ws://host[:port]/path?query` or `wss://…`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            config: Config::default(),
            headers: HeaderMap::new(),
            header_error: None,
            subprotocols: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            #[cfg(feature = "tls")]
            roots: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "http2")]
            http2: None,
            #[cfg(feature = "http3")]
            http3: None,
        }
    }

    /// Connect over HTTP/2 (RFC 8441) with these settings: [`connect`](Self::connect) then
    /// offers ALPN `h2` before `http/1.1` for `wss://` and uses HTTP/2 when the server chooses
    /// it and announces extended CONNECT (HTTP/1.1 otherwise, on a new connection if needed);
    /// for `ws://` it speaks cleartext HTTP/2 with prior knowledge.
    /// The WebSocket gets an HTTP/2 connection of its own; to put many on one, use
    /// [`H2Client`](crate::h2::H2Client).
    #[cfg(feature = "http2")]
    pub fn http2(mut self, cfg: crate::h2::Http2Config) -> Self {
        self.http2 = Some(cfg);
        self
    }

    #[cfg(feature = "http2")]
    pub(crate) fn http2_config(&self) -> crate::h2::Http2Config {
        self.http2.unwrap_or_default()
    }

    /// Connect over HTTP/3 (RFC 9220) with these settings: [`connect`](Self::connect) opens a
    /// QUIC connection (UDP) to the URL's host and port and the WebSocket as an extended
    /// CONNECT stream on it. QUIC is always encrypted: `ws://` and `wss://` both mean TLS 1.3
    /// here, verified against the added roots and the system's. The WebSocket gets a QUIC
    /// connection of its own; to put many on one, use [`H3Client`](crate::h3::H3Client).
    #[cfg(feature = "http3")]
    pub fn http3(mut self, cfg: crate::h3::Http3Config) -> Self {
        self.http3 = Some(cfg);
        self
    }

    #[cfg(feature = "http3")]
    pub(crate) fn http3_config(&self) -> crate::h3::Http3Config {
        self.http3.unwrap_or_default()
    }

    #[cfg(feature = "http3")]
    pub(crate) fn has_tls_config(&self) -> bool {
        self.tls.is_some()
    }

    #[cfg(feature = "http3")]
    pub(crate) fn root_certificates(&self) -> impl Iterator<Item = &[u8]> {
        self.roots.iter().map(|c| c.as_ref())
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn config_ref(&self) -> &Config {
        &self.config
    }

    pub(crate) fn subprotocol_list(&self) -> &[String] {
        &self.subprotocols
    }

    pub(crate) fn header_map(&self) -> &HeaderMap {
        &self.headers
    }

    pub(crate) fn parsed_uri(&self) -> Result<Uri> {
        self.uri()
    }

    /// The same options for another path and query on the same server.
    #[cfg(feature = "http2")]
    pub(crate) fn path(mut self, path_and_query: &str) -> Result<Self> {
        let uri = self.uri()?;
        let mut parts = uri.into_parts();
        parts.path_and_query =
            Some(path_and_query.parse().map_err(|e: http::uri::InvalidUri| HandshakeError::InvalidUri(e.to_string()))?);
        let uri = Uri::from_parts(parts).map_err(|e| HandshakeError::InvalidUri(e.to_string()))?;
        self.url = uri.to_string();
        Ok(self)
    }

    /// Connection settings (limits, timers, deflate).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Offer permessage-deflate with these settings.
    pub fn deflate(mut self, cfg: DeflateConfig) -> Self {
        self.config.deflate = Some(cfg);
        self
    }

    /// Add a request header (e.g. `Authorization`, `Origin`, `Cookie`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => self.header_error = Some(format!("invalid header {name:?}")),
        }
        self
    }

    /// Offer a subprotocol (call several times; most preferred first).
    pub fn subprotocol(mut self, p: impl Into<String>) -> Self {
        self.subprotocols.push(p.into());
        self
    }

    /// Time limit for TCP connect, TLS and the HTTP upgrade together (default 30 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Trust this DER certificate as a root too (self-signed servers, private CAs).
    #[cfg(feature = "tls")]
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.roots.push(rustls::pki_types::CertificateDer::from(der.into()));
        self
    }

    /// Use this rustls configuration instead of the default (webpki roots + added roots).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, cfg: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(cfg);
        self
    }

    fn uri(&self) -> Result<Uri> {
        if let Some(e) = &self.header_error {
            return Err(HandshakeError::InvalidUri(e.clone()).into());
        }
        self.url.parse::<Uri>().map_err(|e| HandshakeError::InvalidUri(e.to_string()).into())
    }

    /// Resolve, connect (TCP, then TLS for `wss://`) and run the handshake.
    pub async fn connect(self) -> Result<ClientStream> {
        let limit = self.connect_timeout;
        tokio::time::timeout(limit, self.connect_inner())
            .await
            .map_err(|_| Error::new(Kind::Timeout("connect and handshake")))?
    }

    async fn connect_inner(self) -> Result<ClientStream> {
        let uri = self.uri()?;
        #[cfg(feature = "http3")]
        if self.http3.is_some() {
            let client = crate::h3::H3Client::connect(self.clone()).await?;
            let (stream, negotiated) = client.open_stream(&self).await?;
            let config = std::sync::Arc::new(self.config.clone());
            let io = MaybeTlsStream::H3(Box::new(stream));
            return Ok(crate::server::websocket_on(io, Role::Client, config, negotiated));
        }
        #[cfg(feature = "http2")]
        if self.http2.is_some() {
            let io = self.connect_transport(&[b"h2", b"http/1.1"]).await?;
            let h2 = match &io {
                #[cfg(feature = "tls")]
                MaybeTlsStream::Rustls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
                _ => true,
            };
            let tls = !matches!(io, MaybeTlsStream::Plain(_));
            if h2 {
                let client = match crate::h2::H2Client::handshake(io, self.clone()).await {
                    Ok(c) => c,
                    // HTTP/2 without RFC 8441 (many proxies and CDNs): HTTP/1.1 on a new
                    // connection, as if the server had not offered h2.
                    Err(e) if tls && matches!(e.handshake_error(), Some(HandshakeError::ExtendedConnectDisabled)) => {
                        let io = self.connect_transport(&[b"http/1.1"]).await?;
                        return self.handshake_inner(io, &uri).await;
                    }
                    Err(e) => return Err(e),
                };
                let (stream, negotiated) = client.open_stream(&self).await?;
                let config = std::sync::Arc::new(self.config.clone());
                let io = MaybeTlsStream::H2(Box::new(stream));
                return Ok(crate::server::websocket_on(io, Role::Client, config, negotiated));
            }
            return self.handshake_inner(io, &uri).await;
        }
        let io = self.connect_transport(&[b"http/1.1"]).await?;
        self.handshake_inner(io, &uri).await
    }

    /// TCP, then TLS for `wss://` offering `alpn`.
    pub(crate) async fn connect_transport(&self, alpn: &[&[u8]]) -> Result<MaybeTlsStream<TcpStream>> {
        let uri = self.uri()?;
        let (host, port) = handshake::host_port(&uri)?;
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if handshake::is_tls(&uri) {
            #[cfg(feature = "tls")]
            {
                let cfg = match &self.tls {
                    Some(c) => c.clone(),
                    None => crate::tls::client_config(&self.roots)?,
                };
                let cfg = if cfg.alpn_protocols.iter().map(Vec::as_slice).eq(alpn.iter().copied()) {
                    cfg
                } else {
                    let mut c = (*cfg).clone();
                    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                    std::sync::Arc::new(c)
                };
                Ok(MaybeTlsStream::Rustls(Box::new(crate::tls::wrap(tcp, host, cfg).await?)))
            }
            #[cfg(not(feature = "tls"))]
            {
                let _ = alpn;
                Err(HandshakeError::InvalidUri("wss:// needs weft's `tls` feature".into()).into())
            }
        } else {
            Ok(MaybeTlsStream::Plain(tcp))
        }
    }

    /// Run the handshake over a transport you connected yourself.
    pub async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(self, io: S) -> Result<WebSocket<S>> {
        let uri = self.uri()?;
        let limit = self.connect_timeout;
        tokio::time::timeout(limit, self.handshake_inner(io, &uri))
            .await
            .map_err(|_| Error::new(Kind::Timeout("handshake")))?
    }

    async fn handshake_inner<S: AsyncRead + AsyncWrite + Unpin>(&self, mut io: S, uri: &Uri) -> Result<WebSocket<S>> {
        // weft-proto's sans-IO handshake; this only moves its bytes.
        let mut hs =
            handshake::ClientHandshake::new(uri, &self.subprotocols, self.config.deflate.as_ref(), &self.headers)?;
        io.write_all(hs.request()).await?;
        io.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        let done = loop {
            buf.clear();
            if io.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during handshake").into());
            }
            match hs.feed(&buf) {
                Ok(None) => {}
                Ok(Some(done)) => break done,
                Err(f) => match (f.error, f.response) {
                    (e @ HandshakeError::Status(_), Some(resp)) => {
                        let body = read_refusal_body(&mut io, &resp, BytesMut::from(&f.body[..])).await;
                        return Err(Error::new(Kind::Refused(e, body)));
                    }
                    (e, _) => return Err(e.into()),
                },
            }
        };
        let negotiated = done.negotiated;
        let now = Instant::now();
        let mut conn = Connection::new(Role::Client, self.config.clone(), now);
        #[cfg(feature = "deflate")]
        if let Some(p) = negotiated.deflate {
            conn.set_deflate(p);
        }
        conn.handle_read(&done.rest, now);
        Ok(WebSocket::from_connection(io, conn, negotiated.subprotocol))
    }
}

/// The body of a refused upgrade: what `Content-Length` announces (or, without it, what arrives
/// until the server closes), at most [`MAX_REFUSAL_BODY`] bytes and 1 s.
async fn read_refusal_body<S: AsyncRead + Unpin>(io: &mut S, resp: &http::Response<()>, mut buf: BytesMut) -> Bytes {
    let want = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_REFUSAL_BODY)
        .min(MAX_REFUSAL_BODY);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while buf.len() < want {
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    buf.truncate(want);
    buf.freeze()
}
