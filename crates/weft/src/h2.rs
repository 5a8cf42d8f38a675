//! WebSockets over HTTP/2 (RFC 8441): a server that accepts extended CONNECT streams, and a
//! client that opens many WebSockets over one HTTP/2 connection.
//!
//! Every WebSocket here is the same [`WebSocket`] as over HTTP/1.1, driving the same sans-IO
//! [`Connection`](weft_proto::Connection) over an [`H2Stream`] (one HTTP/2 stream seen as a byte stream): limits,
//! keep-alive, close handshake, backpressure, permessage-deflate and split halves behave
//! identically. Negotiation is weft-proto's
//! [`server_accept_connect`](weft_proto::handshake::server_accept_connect) /
//! [`client_request_connect`](weft_proto::handshake::client_request_connect).
//!
//! ```
//! use weft::h2::{H2Client, H2Server};
//! use weft::{Acceptor, ClientBuilder, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> weft::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! // Server: HTTP/2 with prior knowledge (over TLS, ALPN "h2" picks it); each WebSocket on its
//! // own task, while `accept` keeps driving the connection.
//! tokio::spawn(async move {
//!     let (tcp, _) = listener.accept().await.unwrap();
//!     let mut h2 = H2Server::handshake(tcp, &Acceptor::new()).await.unwrap();
//!     while let Some(Ok(req)) = h2.accept().await {
//!         tokio::spawn(async move {
//!             let mut ws = req.accept().unwrap();
//!             while let Some(Ok(msg)) = ws.recv().await {
//!                 if msg.is_data() {
//!                     ws.send(msg).await.unwrap();
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! // Client: one HTTP/2 connection, two WebSockets on it.
//! let client = H2Client::connect(ClientBuilder::new(format!("ws://{addr}/"))).await?;
//! let mut a = client.open("/a").await?;
//! let mut b = client.open("/b").await?;
//! a.send("to a").await?;
//! b.send("to b").await?;
//! assert_eq!(b.recv().await.unwrap()?, Message::text("to b"));
//! assert_eq!(a.recv().await.unwrap()?, Message::text("to a"));
//! # Ok(())
//! # }
//! ```
//!
//! **Bounded everywhere:** what a peer may have in flight per stream is the stream window
//! (default 1 MiB, [`Http2Config::stream_window`]), per connection the connection window
//! (32 MiB); data we send waits in h2's send buffer only up to [`Http2Config::send_buffer`]
//! (1 MiB) per stream and only as flow control lets it; request heads are limited to 16 KiB
//! and concurrent streams to [`Http2Config::max_streams`] (100). A WebSocket that stops reading
//! stops releasing window, so its sender stalls on that stream — and, once 32 streams have
//! stalled with full windows, on the whole connection.
//!
//! **Why windows this large:** a WebSocket stops reading while more than its write high-water
//! mark waits to be written (a peer that does not read is not read either). Two such endpoints
//! pipelining more than the path holds both ways stop reading each other: over TCP the kernel's
//! socket buffers (megabytes on Linux) hold it, over HTTP/2 only the windows do. 1 MiB per
//! stream keeps a client with 16 messages of 64 KiB outstanding flowing, as over TCP; smaller
//! windows (less memory per connection) make such a client wait forever. Tested in
//! `tests/http2.rs`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use h2::ext::Protocol;
use h2::{RecvStream, SendStream};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_proto::Role;
use weft_proto::handshake::{self, HandshakeError};

use crate::client::ClientBuilder;
use crate::error::{Error, Kind, Result};
use crate::server::{Acceptor, Rejection, strip_connection_headers, websocket_on};
use crate::websocket::WebSocket;

/// HTTP/2 settings for [`H2Server`] and [`H2Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http2Config {
    /// Flow-control window of each stream (bytes the peer may send before we read them).
    pub stream_window: u32,
    /// Flow-control window of the whole connection.
    pub connection_window: u32,
    /// Concurrent streams (WebSockets and requests) the peer may open.
    pub max_streams: u32,
    /// Largest HTTP/2 frame payload we accept (the peer sends DATA frames up to this size):
    /// 256 KiB by default, where h2's 16 KiB made a 16 KiB message two frames and doubled the
    /// server's CPU per message when pipelining (bench/RESULTS.md).
    pub max_frame_size: u32,
    /// Bytes of one stream's outgoing data h2 holds before our writes wait.
    pub send_buffer: usize,
    /// Largest request or response head (decoded header list), like HTTP/1.1's limit.
    pub max_header_list_size: u32,
    /// A server connection with no stream open for this long is closed (GOAWAY): an HTTP/2
    /// connection that carries nothing holds a socket, like an unfinished HTTP/1.1 upgrade.
    pub idle_timeout: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            stream_window: 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            max_streams: 100,
            max_frame_size: 256 * 1024,
            send_buffer: 1024 * 1024,
            max_header_list_size: handshake::MAX_HEAD_SIZE as u32,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl Http2Config {
    /// Set [`stream_window`](Self::stream_window).
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes;
        self
    }
    /// Set [`connection_window`](Self::connection_window).
    pub fn connection_window(mut self, bytes: u32) -> Self {
        self.connection_window = bytes;
        self
    }
    /// Set [`max_streams`](Self::max_streams).
    pub fn max_streams(mut self, n: u32) -> Self {
        self.max_streams = n;
        self
    }
    /// Set [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// h2's budget for small DATA frames waiting to be read (each pins its read buffer): enough
    /// for one stream's whole window of the smallest WebSocket frames (6 bytes), so a stream
    /// whose reader stopped stalls its sender instead of ending the connection; many such
    /// streams at once do end it (GOAWAY `ENHANCE_YOUR_CALM`).
    fn data_frame_budget(&self) -> usize {
        (self.stream_window as usize).saturating_mul(64)
    }

    /// Set [`send_buffer`](Self::send_buffer).
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes;
        self
    }
}

/// The client connection preface: a cleartext HTTP/2 connection (prior knowledge) starts with
/// these bytes, so a server listening for both can tell HTTP/2 from HTTP/1.1 by peeking.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a fresh TCP connection starts with the HTTP/2 [`PREFACE`] (cleartext HTTP/2 with
/// prior knowledge) rather than an HTTP/1.1 request, by peeking without consuming anything.
/// `false` as soon as the bytes differ (an HTTP/1.1 request differs in its first two bytes).
/// Bound it with a timeout: a peer that sends nothing is waited for.
pub async fn starts_with_preface(tcp: &tokio::net::TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; PREFACE.len()];
    let mut wait = Duration::from_millis(1);
    loop {
        tcp.readable().await?;
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // A preface split across segments: wait for the rest. Peeking leaves the socket
        // readable, so back off instead of spinning on the same bytes.
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2"));
    }
    let kind = if e.is_reset() || e.is_go_away() { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other };
    io::Error::new(kind, e)
}

impl From<h2::Error> for Error {
    fn from(e: h2::Error) -> Self {
        h2_error(e).into()
    }
}

/// One HTTP/2 stream as a byte stream: what a [`WebSocket`] runs on over HTTP/2.
///
/// Reading returns the stream's DATA and releases flow-control window only for bytes handed
/// out; writing waits for window and copies into DATA frames; shutting down ends the stream
/// (`END_STREAM`). A reset stream reads and writes as `ConnectionReset`.
#[derive(Debug)]
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    ended: bool,
    /// The most window one write asks for (h2's send buffer): asking for more would hold
    /// connection window this stream cannot use yet.
    max_reserve: usize,
    _live: Option<StreamGuard>,
}

impl H2Stream {
    fn new(send: SendStream<Bytes>, recv: RecvStream, max_reserve: usize, live: Option<StreamGuard>) -> Self {
        Self { send, recv, pending: Bytes::new(), ended: false, max_reserve: max_reserve.max(1), _live: live }
    }

    /// This stream's HTTP/2 stream id.
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        // The window reopens only for what the application has taken.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len().min(this.max_reserve));
        loop {
            let granted = this.send.capacity();
            if granted > 0 {
                let n = granted.min(buf.len());
                this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                // The stream was reset (or the connection went away).
                None => return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what h2 holds; nothing waits here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.reserve_capacity(0);
            // A stream the peer already reset cannot be ended twice; that is not an error here.
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// Streams (requests, then their WebSockets) open on one server connection, and since when
/// none has been: a server closes a connection that has carried nothing for its idle timeout
/// (`H2Server` does; a hyper-based server such as the engine can, with
/// [`idle_for`](Self::idle_for) and a [`StreamGuard`] per request kept as long as its stream).
#[derive(Debug)]
pub struct StreamCount {
    open: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
}

/// One open stream of a server connection; dropping it may make the connection idle.
#[derive(Debug)]
pub struct StreamGuard(Arc<StreamCount>);

impl StreamGuard {
    fn new(count: &Arc<StreamCount>) -> Self {
        count.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

impl StreamCount {
    /// A count with no stream open, idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { open: 0.into(), idle_since: std::sync::Mutex::new(Instant::now()) })
    }

    /// Count one stream open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        StreamGuard::new(self)
    }

    /// Completes once no stream has been open for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        let step = (limit / 4).max(Duration::from_millis(10));
        loop {
            let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
            if self.open.load(std::sync::atomic::Ordering::SeqCst) == 0 && since.elapsed() >= limit {
                return;
            }
            tokio::time::sleep(step).await;
        }
    }
}

/// The server side of one HTTP/2 connection.
///
/// [`accept`](Self::accept) drives the whole connection — every stream's I/O included — so keep
/// calling it (handle each request on its own task) until it returns `None`.
pub struct H2Server<S> {
    conn: h2::server::Connection<S, Bytes>,
    acceptor: Acceptor,
    live: Arc<StreamCount>,
    closing: bool,
}

impl<S> std::fmt::Debug for H2Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Server").finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> H2Server<S> {
    /// Run the HTTP/2 connection preface and settings exchange on `io` (after TLS with ALPN
    /// `h2`, or cleartext with prior knowledge), within the acceptor's handshake timeout.
    /// Extended CONNECT is announced (`SETTINGS_ENABLE_CONNECT_PROTOCOL`).
    pub async fn handshake(io: S, acceptor: &Acceptor) -> Result<Self> {
        let c = acceptor.http2_config();
        let mut b = h2::server::Builder::new();
        b.enable_connect_protocol()
            .initial_window_size(c.stream_window)
            .initial_connection_window_size(c.connection_window)
            .max_concurrent_streams(c.max_streams)
            .max_frame_size(c.max_frame_size)
            .max_send_buffer_size(c.send_buffer)
            .max_header_list_size(c.max_header_list_size)
            .data_frame_budget(c.data_frame_budget());
        let conn = tokio::time::timeout(acceptor.handshake_timeout_value(), b.handshake(io))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/2 handshake")))??;
        let live = StreamCount::new();
        Ok(Self { conn, acceptor: acceptor.clone(), live, closing: false })
    }

    /// The next request on this connection, `None` once the connection has ended. Requests
    /// that are not WebSockets are yours to answer ([`H2Request::respond`]).
    pub async fn accept(&mut self) -> Option<Result<H2Request>> {
        let idle_limit = self.acceptor.http2_config().idle_timeout;
        let next = loop {
            if self.closing {
                break self.conn.accept().await?;
            }
            tokio::select! {
                r = self.conn.accept() => break r?,
                () = self.live.idle_for(idle_limit) => {
                    // Nothing open for the idle timeout: GOAWAY, then the connection ends.
                    self.conn.graceful_shutdown();
                    self.closing = true;
                }
            }
        };
        let (req, respond) = match next {
            Ok(r) => r,
            Err(e) => return Some(Err(e.into())),
        };
        let protocol = req.extensions().get::<h2::ext::Protocol>().map(|p| p.as_str().to_owned());
        let (parts, recv) = req.into_parts();
        Some(Ok(H2Request {
            request: Request::from_parts(parts, ()),
            protocol,
            recv,
            respond,
            acceptor: self.acceptor.clone(),
            live: self.live.open(),
        }))
    }

    /// Stop taking new streams (GOAWAY) and let open ones finish; keep calling
    /// [`accept`](Self::accept) until it returns `None`.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
        self.closing = true;
    }
}

/// Serve every WebSocket on one HTTP/2 connection: each accepted one goes to `handler` on its
/// own task; other requests are answered 404. Returns when the connection ends.
///
/// `callback` sees each WebSocket request like [`Acceptor::accept_with`]'s does (and may refuse
/// it with a status). It runs on the task that drives the connection: keep it quick (a slow
/// callback holds up every stream of the connection); do slow checks in `handler`.
pub async fn serve<S, C, H, Fut>(io: S, acceptor: &Acceptor, callback: C, handler: H) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: Fn(&Request<()>, &mut Response<()>) -> std::result::Result<(), Rejection>,
    H: Fn(WebSocket<H2Stream>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut server = H2Server::handshake(io, acceptor).await?;
    while let Some(req) = server.accept().await {
        let req = req?;
        if !req.is_websocket() {
            let _ = req.respond(StatusCode::NOT_FOUND, "not found: this server speaks WebSocket (RFC 8441)\n");
            continue;
        }
        if let Ok(ws) = req.accept_with(&callback) {
            tokio::spawn(handler(ws));
        }
    }
    Ok(())
}

/// A request on an HTTP/2 connection: a WebSocket's extended CONNECT, or anything else.
#[derive(Debug)]
pub struct H2Request {
    request: Request<()>,
    protocol: Option<String>,
    recv: RecvStream,
    respond: h2::server::SendResponse<Bytes>,
    acceptor: Acceptor,
    live: StreamGuard,
}

impl H2Request {
    /// The request head: method, URI (`:scheme`, `:authority`, `:path`), headers.
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// The `:protocol` pseudo-header of an extended CONNECT.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether this is an extended CONNECT for `websocket`.
    pub fn is_websocket(&self) -> bool {
        self.request.method() == http::Method::CONNECT
            && self.protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
    }

    /// Accept the WebSocket (answer `200`).
    pub fn accept(self) -> Result<WebSocket<H2Stream>> {
        self.accept_with(|_, _| Ok(()))
    }

    /// Accept after `callback` has seen the request and may add response headers or refuse it
    /// with a status, as [`Acceptor::accept_with`]. Bad requests are answered with 400 (no
    /// 426 over HTTP/2) before the callback runs.
    pub fn accept_with<F>(mut self, callback: F) -> Result<WebSocket<H2Stream>>
    where
        F: FnOnce(&Request<()>, &mut Response<()>) -> std::result::Result<(), Rejection>,
    {
        let a = &self.acceptor;
        let accepted = handshake::server_accept_connect(
            &self.request,
            self.protocol.as_deref(),
            a.subprotocol_list(),
            a.config_ref().deflate.as_ref(),
        );
        let mut accepted = match accepted {
            Ok(x) => x,
            Err(e) => {
                let body = format!("{e}\n");
                let _ = self.send_refusal(e.connect_status(), e.rejection_headers(), body);
                return Err(e.into());
            }
        };
        if let Err(r) = callback(&self.request, &mut accepted.response) {
            let status = r.status;
            let _ = self.send_refusal(status, *r.headers, r.body);
            return Err(HandshakeError::Rejected(status).into());
        }
        strip_connection_headers(accepted.response.headers_mut());
        let send = self.respond.send_response(accepted.response, false)?;
        let negotiated = handshake::Negotiated { subprotocol: accepted.subprotocol, deflate: accepted.deflate };
        let config = Arc::clone(a.config_arc());
        let send_buffer = a.http2_config().send_buffer;
        let stream = H2Stream::new(send, self.recv, send_buffer, Some(self.live));
        Ok(websocket_on(stream, Role::Server, config, negotiated))
    }

    /// Answer with `response` (a 2xx for a tunnel) and hand over the stream as bytes, with no
    /// WebSocket negotiation or framing: for proxies and bridges that relay frames unchanged.
    pub fn respond_stream(mut self, mut response: Response<()>) -> Result<H2Stream> {
        strip_connection_headers(response.headers_mut());
        let send = self.respond.send_response(response, false)?;
        let send_buffer = self.acceptor.http2_config().send_buffer;
        Ok(H2Stream::new(send, self.recv, send_buffer, Some(self.live)))
    }

    /// Answer a request that is not a WebSocket with `status` and a text body.
    pub fn respond(mut self, status: StatusCode, body: impl Into<String>) -> Result<()> {
        self.send_refusal(status, http::HeaderMap::new(), body.into())
    }

    /// Answer with a full response (status, headers, body).
    pub fn respond_with(mut self, response: Response<Bytes>) -> Result<()> {
        let (mut parts, body) = response.into_parts();
        strip_connection_headers(&mut parts.headers);
        let empty = body.is_empty();
        let mut send = self.respond.send_response(Response::from_parts(parts, ()), empty)?;
        if !empty {
            send.send_data(body, true)?;
        }
        Ok(())
    }

    fn send_refusal(&mut self, status: StatusCode, headers: http::HeaderMap, body: String) -> Result<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        strip_connection_headers(resp.headers_mut());
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        let mut send = self.respond.send_response(resp, false)?;
        send.send_data(Bytes::from(body), true)?;
        Ok(())
    }
}

/// One HTTP/2 connection to a server, for opening WebSockets on it (cheap to clone; every
/// clone shares the connection).
///
/// The connection runs on a task of its own; it closes when the last clone and the last
/// WebSocket on it are dropped.
#[derive(Debug, Clone)]
pub struct H2Client {
    send: h2::client::SendRequest<Bytes>,
    options: ClientBuilder,
}

impl H2Client {
    /// Connect to the builder's URL over HTTP/2: TCP, then for `wss://` TLS with ALPN `h2`
    /// (the server must choose it), and for `ws://` cleartext HTTP/2 with prior knowledge. The
    /// builder's headers, subprotocols and config apply to every [`open`](Self::open).
    pub async fn connect(options: ClientBuilder) -> Result<Self> {
        let limit = options.connect_timeout_value();
        tokio::time::timeout(limit, async {
            let io = options.connect_transport(&[b"h2"]).await?;
            #[cfg(feature = "tls")]
            if let crate::MaybeTlsStream::Rustls(tls) = &io
                && tls.get_ref().1.alpn_protocol() != Some(b"h2")
            {
                return Err(Error::new(Kind::Tls("the server did not choose HTTP/2 (ALPN h2)".into())));
            }
            Self::handshake_inner(io, options).await
        })
        .await
        .map_err(|_| Error::new(Kind::Timeout("HTTP/2 connect")))?
    }

    /// Start HTTP/2 on a transport you connected yourself.
    pub async fn handshake<S>(io: S, options: ClientBuilder) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limit = options.connect_timeout_value();
        tokio::time::timeout(limit, Self::handshake_inner(io, options))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/2 handshake")))?
    }

    async fn handshake_inner<S>(io: S, options: ClientBuilder) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let c = options.http2_config();
        let mut b = h2::client::Builder::new();
        b.initial_window_size(c.stream_window)
            .initial_connection_window_size(c.connection_window)
            .max_concurrent_streams(c.max_streams)
            .max_frame_size(c.max_frame_size)
            .max_send_buffer_size(c.send_buffer)
            .max_header_list_size(c.max_header_list_size)
            .enable_push(false)
            .data_frame_budget(c.data_frame_budget());
        let (send, mut conn) = b.handshake::<_, Bytes>(io).await?;
        let mut ping = conn.ping_pong().expect("the first call has it");
        // The connection's end reaches every stream as a reset or EOF: nothing else to report.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL, or without) is its first frame,
        // so once our PING is answered we know; h2 applies settings as it acknowledges them,
        // hence a short grace after the PONG before concluding.
        ping.ping(h2::Ping::opaque()).await?;
        let mut send = send.ready().await?;
        for _ in 0..20 {
            if send.is_extended_connect_protocol_enabled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            send = send.ready().await?;
        }
        if !send.is_extended_connect_protocol_enabled() {
            return Err(HandshakeError::ExtendedConnectDisabled.into());
        }
        Ok(Self { send, options })
    }

    /// Open a WebSocket on `path_and_query` (e.g. `"/chat?room=1"`) with the options given to
    /// [`connect`](Self::connect).
    pub async fn open(&self, path_and_query: &str) -> Result<WebSocket<H2Stream>> {
        self.open_with(self.options.clone().path(path_and_query)?).await
    }

    /// Open a WebSocket with its own options (URL path, headers, subprotocols, config); the
    /// URL's scheme and authority are only put in the request.
    pub async fn open_with(&self, options: ClientBuilder) -> Result<WebSocket<H2Stream>> {
        let limit = options.connect_timeout_value();
        tokio::time::timeout(limit, self.open_inner(options))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/2 WebSocket open")))?
    }

    async fn open_inner(&self, options: ClientBuilder) -> Result<WebSocket<H2Stream>> {
        let (stream, negotiated) = self.open_stream(&options).await?;
        Ok(websocket_on(stream, Role::Client, Arc::new(options.config_ref().clone()), negotiated))
    }

    /// Send an extended CONNECT request as it is (add `h2::ext::Protocol` yourself for
    /// `:protocol`) and return the response head with the stream as bytes, with no WebSocket
    /// checks or framing: for proxies and bridges that relay frames unchanged.
    pub async fn send_connect(&self, req: Request<()>) -> Result<(Response<()>, H2Stream)> {
        let limit = self.options.connect_timeout_value();
        tokio::time::timeout(limit, self.send_connect_inner(req))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/2 CONNECT")))?
    }

    async fn send_connect_inner(&self, req: Request<()>) -> Result<(Response<()>, H2Stream)> {
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(req, false)?;
        let (parts, recv) = response.await?.into_parts();
        let send_buffer = self.options.http2_config().send_buffer;
        Ok((Response::from_parts(parts, ()), H2Stream::new(stream, recv, send_buffer, None)))
    }

    /// Send the extended CONNECT and check the answer: the stream and what was agreed.
    pub(crate) async fn open_stream(&self, options: &ClientBuilder) -> Result<(H2Stream, handshake::Negotiated)> {
        let uri = options.parsed_uri()?;
        let config = options.config_ref();
        let deflate = config.deflate.as_ref();
        let subprotocols = options.subprotocol_list();
        let mut req = handshake::client_request_connect(&uri, subprotocols, deflate, options.header_map())?;
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(req, false)?;
        let response = response.await?;
        let (parts, mut recv) = response.into_parts();
        let head = Response::from_parts(parts, ());
        let negotiated = match handshake::client_verify_connect(&head, subprotocols, deflate) {
            Ok(n) => n,
            Err(e @ HandshakeError::Status(_)) => {
                let mut body = bytes::BytesMut::new();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while body.len() < crate::error::MAX_REFUSAL_BODY {
                        match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
                            Some(Ok(d)) => {
                                let _ = recv.flow_control().release_capacity(d.len());
                                body.extend_from_slice(&d);
                            }
                            _ => break,
                        }
                    }
                })
                .await;
                body.truncate(crate::error::MAX_REFUSAL_BODY);
                return Err(Error::new(Kind::Refused(e, body.freeze())));
            }
            Err(e) => return Err(e.into()),
        };
        Ok((H2Stream::new(stream, recv, options.http2_config().send_buffer, None), negotiated))
    }

    /// How many streams the server lets this connection have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); further opens wait for one to end.
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }
}
