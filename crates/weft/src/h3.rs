//! WebSockets over HTTP/3 (RFC 9220): a server that accepts extended CONNECT streams over QUIC,
//! and a client that opens many WebSockets over one QUIC connection.
//!
//! Every WebSocket here is the same [`WebSocket`] as over HTTP/1.1 and HTTP/2, driving the same
//! sans-IO [`Connection`](weft_proto::Connection) over an [`H3Stream`] (one HTTP/3 request
//! stream seen as a byte stream): limits, keep-alive, close handshake, backpressure,
//! permessage-deflate and split halves behave identically. Negotiation is weft-proto's
//! [`server_accept_connect`](weft_proto::handshake::server_accept_connect) /
//! [`client_request_connect`](weft_proto::handshake::client_request_connect), as over HTTP/2.
//!
//! QUIC and HTTP/3 are [quiche](https://docs.rs/quiche)'s: a sans-IO library, like weft-proto,
//! whose HTTP/3 layer carries extended CONNECT (`:protocol`). weft drives it on tokio: one task
//! per QUIC connection owns the quiche state behind a mutex; the streams read and write through
//! it and wake that task to send what they produced. A server has one UDP socket and one task
//! that hands each datagram to its connection by connection ID.
//!
//! ```
//! use weft::h3::{H3Client, H3Server, H3Tls};
//! use weft::{Acceptor, ClientBuilder, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> weft::Result<()> {
//! # let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! # let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
//! // Server: QUIC on a UDP port, each WebSocket on its own task.
//! let tls = H3Tls::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
//! let mut server = H3Server::bind("127.0.0.1:0".parse().unwrap(), tls, &Acceptor::new()).await?;
//! let addr = server.local_addr();
//! tokio::spawn(async move {
//!     while let Some(req) = server.accept().await {
//!         tokio::spawn(async move {
//!             let mut ws = req.accept().await.unwrap();
//!             while let Some(Ok(msg)) = ws.recv().await {
//!                 if msg.is_data() {
//!                     ws.send(msg).await.unwrap();
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! // Client: one QUIC connection, two WebSockets on it (trusting the test certificate).
//! let options = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
//!     .add_root_certificate(cert.cert.der().to_vec());
//! let client = H3Client::connect_to(options, addr).await?;
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
//! (default 1 MiB, [`Http3Config::stream_window`]), per connection the connection window
//! (32 MiB); what we send waits in quiche only as far as the peer's windows allow; request
//! heads are limited to 16 KiB, concurrent streams per connection to
//! [`Http3Config::max_streams`] (100), connections to [`Http3Config::max_connections`],
//! handshakes in progress to [`Http3Config::max_handshakes`], and datagrams waiting for a busy
//! connection to [`Http3Config::datagram_queue`] (the rest are dropped, as a full network
//! would, and QUIC sends them again). A WebSocket that stops reading stops releasing window, so
//! its sender stalls on that stream.
//!
//! **Not yet:** address validation with Retry tokens, connection migration and 0-RTT; a
//! server answers from the address it received on (bind a specific address, not `0.0.0.0`,
//! on multi-homed hosts).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use quiche::h3::NameValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use weft_proto::Role;
use weft_proto::handshake::{self, HandshakeError};

use crate::client::ClientBuilder;
use crate::error::{Error, Kind, Result};
use crate::server::{Acceptor, Rejection, strip_connection_headers, websocket_on};
use crate::websocket::WebSocket;

/// Length of the connection IDs this side chooses.
const CID_LEN: usize = 16;
/// Largest UDP datagram we accept (announced to the peer as `max_udp_payload_size`; larger ones
/// are dropped unread), which also bounds a queued datagram's size.
const MAX_DATAGRAM: usize = 1_500;
/// Room for a datagram read off a socket (a larger one is dropped).
const READ_BUFFER: usize = 65_535;
/// HTTP/3 error codes (RFC 9114 §8.1).
const H3_NO_ERROR: u64 = 0x100;
const H3_INTERNAL_ERROR: u64 = 0x102;
const H3_REQUEST_REJECTED: u64 = 0x10b;
const H3_REQUEST_CANCELLED: u64 = 0x10c;

/// HTTP/3 and QUIC settings for [`H3Server`] and [`H3Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http3Config {
    /// Flow-control window of each stream (bytes the peer may send before we read them).
    pub stream_window: u64,
    /// Flow-control window of the whole connection.
    pub connection_window: u64,
    /// Concurrent streams (WebSockets and requests) the peer may open.
    pub max_streams: u64,
    /// Largest request or response head (decoded field section), like HTTP/1.1's limit.
    pub max_header_list_size: u64,
    /// QUIC idle timeout: a connection that hears nothing for this long is gone. While streams
    /// are open, each side sends a PING every third of it, so only a dead peer times out.
    pub idle_timeout: Duration,
    /// Server: QUIC connections at once; Initial packets beyond it are dropped.
    pub max_connections: usize,
    /// Server: connections whose handshake has not finished; Initial packets beyond it are
    /// dropped (the client sends them again), so a flood of handshakes is bounded.
    pub max_handshakes: usize,
    /// Server: datagrams waiting for one connection's task; more are dropped.
    pub datagram_queue: usize,
}

impl Default for Http3Config {
    fn default() -> Self {
        Self {
            stream_window: 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            max_streams: 100,
            max_header_list_size: handshake::MAX_HEAD_SIZE as u64,
            idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_handshakes: 1_000,
            datagram_queue: 1_024,
        }
    }
}

impl Http3Config {
    /// Set [`stream_window`](Self::stream_window).
    pub fn stream_window(mut self, bytes: u64) -> Self {
        self.stream_window = bytes;
        self
    }
    /// Set [`connection_window`](Self::connection_window).
    pub fn connection_window(mut self, bytes: u64) -> Self {
        self.connection_window = bytes;
        self
    }
    /// Set [`max_streams`](Self::max_streams).
    pub fn max_streams(mut self, n: u64) -> Self {
        self.max_streams = n;
        self
    }
    /// Set [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Set [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Set [`max_handshakes`](Self::max_handshakes).
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    fn quic(&self, tls: boring::ssl::SslContextBuilder) -> Result<quiche::Config> {
        let mut c = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, tls).map_err(quic_error)?;
        c.set_application_protos(quiche::h3::APPLICATION_PROTOCOL).map_err(quic_error)?;
        c.set_max_idle_timeout(self.idle().as_millis() as u64);
        c.set_max_recv_udp_payload_size(MAX_DATAGRAM);
        c.set_initial_max_data(self.connection_window);
        c.set_max_connection_window(self.connection_window);
        c.set_initial_max_stream_data_bidi_local(self.stream_window);
        c.set_initial_max_stream_data_bidi_remote(self.stream_window);
        c.set_max_stream_window(self.stream_window);
        // HTTP/3's control and QPACK streams, and the peer's own.
        c.set_initial_max_stream_data_uni(64 * 1024);
        c.set_initial_max_streams_uni(8);
        c.set_initial_max_streams_bidi(self.max_streams);
        c.set_disable_active_migration(true);
        Ok(c)
    }

    /// The idle timeout, at least 300 ms (less would close connections between two packets).
    fn idle(&self) -> Duration {
        self.idle_timeout.max(Duration::from_millis(300))
    }

    fn h3(&self) -> Result<quiche::h3::Config> {
        let mut c = quiche::h3::Config::new().map_err(h3_error)?;
        c.enable_extended_connect(true);
        c.set_max_field_section_size(self.max_header_list_size);
        // No dynamic QPACK table: heads are small and this keeps per-connection state bounded.
        c.set_qpack_max_table_capacity(0);
        c.set_qpack_blocked_streams(0);
        Ok(c)
    }
}

/// A server's certificate chain and private key, for QUIC's TLS 1.3 (BoringSSL, inside
/// quiche).
#[derive(Clone)]
pub struct H3Tls {
    chain: Vec<boring::x509::X509>,
    key: boring::pkey::PKey<boring::pkey::Private>,
}

impl std::fmt::Debug for H3Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("H3Tls").field("certificates", &self.chain.len()).finish_non_exhaustive()
    }
}

impl H3Tls {
    /// Load a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1). Fails with a clear error for an empty chain, an unreadable key, or a key that does
    /// not match the certificate.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self> {
        let chain = boring::x509::X509::stack_from_pem(cert_chain)
            .map_err(|e| tls_error(format!("cannot read the certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(tls_error("no certificate in the PEM chain".into()));
        }
        let key = boring::pkey::PKey::private_key_from_pem(key)
            .map_err(|e| tls_error(format!("cannot read the private key: {e}")))?;
        let tls = Self { chain, key };
        tls.context()?; // checks that the key matches the certificate
        Ok(tls)
    }

    /// Load both from PEM files.
    pub fn from_pem_files(cert_chain: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| tls_error(format!("cannot read {}: {e}", p.display())));
        Self::from_pem(&read(cert_chain)?, &read(key)?)
    }

    fn context(&self) -> Result<boring::ssl::SslContextBuilder> {
        let mut b = boring::ssl::SslContextBuilder::new(boring::ssl::SslMethod::tls()).map_err(boring_error)?;
        b.set_certificate(&self.chain[0]).map_err(boring_error)?;
        for c in &self.chain[1..] {
            b.add_extra_chain_cert(c.clone()).map_err(boring_error)?;
        }
        b.set_private_key(&self.key).map_err(|e| {
            let e = e.to_string();
            if e.contains("MISMATCH") {
                tls_error("the private key does not match the certificate".into())
            } else {
                tls_error(format!("cannot use the private key: {e}"))
            }
        })?;
        b.check_private_key().map_err(|_| tls_error("the private key does not match the certificate".into()))?;
        Ok(b)
    }
}

fn tls_error(msg: String) -> Error {
    Error::new(Kind::Tls(msg))
}

fn boring_error(e: boring::error::ErrorStack) -> Error {
    tls_error(e.to_string())
}

fn quic_error(e: quiche::Error) -> Error {
    Error::new(Kind::Io(io::Error::other(format!("QUIC: {e}"))))
}

fn h3_error(e: quiche::h3::Error) -> Error {
    Error::new(Kind::Io(io::Error::other(format!("HTTP/3: {e}"))))
}

/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max` / `wmem_max`): the
/// default ~200 KiB overflows under a burst of many streams, and every datagram dropped there is
/// a loss QUIC answers by halving its congestion window.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

fn grow_buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

fn random_cid() -> quiche::ConnectionId<'static> {
    let mut id = [0u8; CID_LEN];
    boring::rand::rand_bytes(&mut id).expect("BoringSSL's RNG");
    quiche::ConnectionId::from_vec(id.to_vec())
}

/// One stream's state as the connection's task and the stream's owner see it.
#[derive(Default)]
struct Slot {
    read: Option<Waker>,
    write: Option<Waker>,
    /// The peer ended its side (FIN, all data read by quiche's HTTP/3 layer).
    finished: bool,
    /// The peer reset the stream, or the connection is gone.
    reset: bool,
    /// Client: where the response head goes.
    response: Option<oneshot::Sender<Vec<quiche::h3::Header>>>,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(w) = self.read.take() {
            w.wake();
        }
        if let Some(w) = self.write.take() {
            w.wake();
        }
    }
}

/// Where a connection stands, for a client waiting to open streams.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Handshaking,
    /// HTTP/3 is up and the peer's SETTINGS arrived: whether it allows extended CONNECT.
    Ready {
        extended_connect: bool,
    },
    Closed(String),
}

struct Conn {
    quic: quiche::Connection,
    h3: Option<quiche::h3::Connection>,
    h3_config: quiche::h3::Config,
    slots: HashMap<u64, Slot>,
    announced: bool,
}

/// One QUIC connection, shared by its task and its streams.
struct Shared {
    conn: Mutex<Conn>,
    /// Wakes the connection's task: a stream wrote, read (window to give back) or ended.
    notify: Notify,
    state: watch::Sender<State>,
    peer: SocketAddr,
    /// Client: `H3Client`s and streams alive; at zero the connection's task closes it.
    handles: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConnection").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// One HTTP/3 request stream as a byte stream: what a [`WebSocket`] runs on over HTTP/3.
///
/// Reading returns the stream's DATA and gives flow-control window back only for bytes handed
/// out; writing waits for window; shutting down ends the stream (FIN). A reset stream, or a
/// connection that ended, reads and writes as `ConnectionReset`. Dropping a stream that has not
/// been shut down cancels it (`H3_REQUEST_CANCELLED`).
#[derive(Debug)]
pub struct H3Stream {
    shared: Arc<Shared>,
    id: u64,
    ended: bool,
}

impl H3Stream {
    fn new(shared: &Arc<Shared>, id: u64) -> Self {
        shared.handles.fetch_add(1, Ordering::SeqCst);
        Self { shared: Arc::clone(shared), id, ended: false }
    }

    /// This stream's QUIC stream id.
    pub fn stream_id(&self) -> u64 {
        self.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }
}

fn reset() -> io::Error {
    io::ErrorKind::ConnectionReset.into()
}

impl AsyncRead for H3Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        poll_read_stream(&self.shared, self.id, cx, buf)
    }
}

/// Read what stream `id` has received: DATA up to `buf`'s room, nothing at its end, or wait.
fn poll_read_stream(shared: &Shared, id: u64, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    let mut guard = shared.lock();
    let c = &mut *guard;
    let Some(h3) = c.h3.as_mut() else { return Poll::Ready(Err(reset())) };
    match h3.recv_body(&mut c.quic, id, buf.initialize_unfilled()) {
        Ok(n) => {
            buf.advance(n);
            drop(guard);
            // Window to give back, and more DATA may be waiting in the next frame.
            shared.notify.notify_one();
            return Poll::Ready(Ok(()));
        }
        Err(quiche::h3::Error::Done) => {}
        Err(_) => return Poll::Ready(Err(reset())),
    }
    let Some(slot) = c.slots.get_mut(&id) else { return Poll::Ready(Err(reset())) };
    if slot.reset {
        return Poll::Ready(Err(reset()));
    }
    if slot.finished || c.quic.stream_finished(id) {
        return Poll::Ready(Ok(()));
    }
    slot.read = Some(cx.waker().clone());
    Poll::Pending
}

impl AsyncWrite for H3Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut guard = this.shared.lock();
        let c = &mut *guard;
        let Some(h3) = c.h3.as_mut() else { return Poll::Ready(Err(reset())) };
        match h3.send_body(&mut c.quic, this.id, buf, false) {
            Ok(n) => {
                drop(guard);
                this.shared.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(quiche::h3::Error::Done) => match c.slots.get_mut(&this.id) {
                Some(slot) if !slot.reset => {
                    // quiche reports the stream writable again (stream_writable_next).
                    slot.write = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(Err(reset())),
            },
            Err(_) => Poll::Ready(Err(reset())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task sends what quiche holds; nothing waits here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        let mut guard = this.shared.lock();
        let c = &mut *guard;
        let Some(h3) = c.h3.as_mut() else { return Poll::Ready(Ok(())) };
        match h3.send_body(&mut c.quic, this.id, &[], true) {
            Err(quiche::h3::Error::Done) if c.slots.get(&this.id).is_some_and(|s| !s.reset) => {
                if let Some(slot) = c.slots.get_mut(&this.id) {
                    slot.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            // Sent, or a stream the peer already reset: ended either way.
            _ => {
                this.ended = true;
                drop(guard);
                this.shared.notify.notify_one();
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl Drop for H3Stream {
    fn drop(&mut self) {
        release(&self.shared, self.id, self.ended, true);
    }
}

/// The owner of a stream is gone: stop reading it (the peer's data is discarded and stops
/// counting against the window), cancel our side unless it was ended, forget it.
fn release(shared: &Shared, id: u64, ended: bool, handle: bool) {
    if handle {
        shared.handles.fetch_sub(1, Ordering::SeqCst);
    }
    let mut c = shared.lock();
    c.slots.remove(&id);
    let _ = c.quic.stream_shutdown(id, quiche::Shutdown::Read, H3_NO_ERROR);
    if !ended {
        let _ = c.quic.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
    }
    drop(c);
    shared.notify.notify_one();
}

/// A datagram for a server connection's task.
struct Datagram {
    data: Vec<u8>,
    from: SocketAddr,
}

/// What a connection's task does with request heads.
enum Role3 {
    /// Server: requests go to [`H3Server::accept`].
    Server {
        requests: mpsc::Sender<H3Request>,
        acceptor: Acceptor,
        handshaking: Arc<AtomicUsize>,
    },
    Client,
}

/// Where a connection's task gets its datagrams.
enum Input {
    /// Server: from the listener's demultiplexer.
    Queue(mpsc::Receiver<Datagram>),
    /// Client: its own connected socket.
    Socket,
}

/// Drive one QUIC connection until it has closed.
async fn drive(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    mut input: Input,
    role: Role3,
    keepalive: Duration,
) {
    let mut out = vec![0u8; MAX_DATAGRAM];
    // A server's datagrams arrive owned, through its queue: only a client reads a socket.
    let mut recv_buf = if matches!(input, Input::Socket) { vec![0u8; READ_BUFFER] } else { Vec::new() };
    let mut blocked: Option<(usize, SocketAddr)> = None;
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let mut idle_closed = false;
    let mut counted_handshake = matches!(role, Role3::Server { .. });
    let mut refused = false;
    let mut input_done = false;
    loop {
        let (sleep, closed) = {
            let mut c = shared.lock();
            process(&shared, &mut c, &role);
            if counted_handshake && c.quic.is_established() {
                counted_handshake = false;
                if let Role3::Server { handshaking, .. } = &role {
                    handshaking.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // A handshake that has not finished within the idle timeout ends, however the peer
            // keeps it alive: it holds one of max_handshakes.
            if !c.quic.is_established() && !idle_closed && started.elapsed() >= keepalive * 3 {
                idle_closed = true;
                let _ = c.quic.close(false, 0x0, b"handshake timeout");
            }
            // While streams are open, keep the connection alive through quiet periods; with
            // none, the idle timeout may end it.
            if c.slots.is_empty() {
                // A server connection that carries no stream for the idle timeout is closed
                // even if the peer keeps it alive with PINGs: it holds one of max_connections.
                if matches!(role, Role3::Server { .. })
                    && !idle_closed
                    && last_ping.elapsed() >= keepalive * 3
                    && c.quic.is_established()
                {
                    idle_closed = true;
                    let _ = c.quic.close(true, H3_NO_ERROR, b"idle");
                }
            } else if last_ping.elapsed() >= keepalive && c.quic.is_established() {
                let _ = c.quic.send_ack_eliciting();
                last_ping = Instant::now();
            }
            let ping_due = if idle_closed {
                None
            } else if !c.quic.is_established() {
                Some((keepalive * 3).saturating_sub(started.elapsed()))
            } else if c.slots.is_empty() {
                matches!(role, Role3::Server { .. }).then(|| (keepalive * 3).saturating_sub(last_ping.elapsed()))
            } else {
                Some(keepalive.saturating_sub(last_ping.elapsed()))
            };
            // The client's last handle is gone: close, then drain.
            if matches!(role, Role3::Client) && shared.handles.load(Ordering::SeqCst) == 0 && !c.quic.is_closed() {
                let _ = c.quic.close(true, H3_NO_ERROR, b"");
            }
            if blocked.is_none() {
                blocked = flush(&mut c.quic, &socket, &mut out);
            }
            let sleep = match (c.quic.timeout(), ping_due) {
                (Some(t), Some(p)) => t.min(p),
                (t, p) => t.or(p).unwrap_or(keepalive),
            };
            (sleep, c.quic.is_closed())
        };
        if closed {
            break;
        }
        tokio::select! {
            r = socket.writable(), if blocked.is_some() => {
                if r.is_ok()
                    && let Some((n, to)) = blocked
                {
                    match socket.try_send_to(&out[..n], to) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        _ => blocked = None,
                    }
                }
            }
            d = next_datagram(&mut input, &socket, &mut recv_buf), if !input_done => {
                let Some((data, n, from)) = d else {
                    let mut c = shared.lock();
                    if matches!(input, Input::Socket) {
                        if !c.quic.is_established() {
                            // ICMP port unreachable before any answer: nothing listens there.
                            refused = true;
                            break;
                        }
                        // Later, one ICMP error is not the end: the idle timer decides.
                        continue;
                    }
                    // The listener is gone (server shut down): close, and stop asking it.
                    input_done = true;
                    let _ = c.quic.close(true, H3_NO_ERROR, b"server shutting down");
                    continue;
                };
                let mut c = shared.lock();
                let info = quiche::RecvInfo { from, to: local };
                match data {
                    Some(mut d) => { let _ = c.quic.recv(&mut d, info); }
                    None => { let _ = c.quic.recv(&mut recv_buf[..n], info); }
                }
                // More that already arrived, before processing (bounded batch).
                drain(&mut input, &socket, &mut recv_buf, &mut c.quic, local);
            }
            () = tokio::time::sleep(sleep) => {
                let mut c = shared.lock();
                if c.quic.timeout().is_some_and(|t| t.is_zero()) {
                    c.quic.on_timeout();
                }
            }
            () = shared.notify.notified() => {}
        }
    }
    // Closed: every stream sees a reset, every waiter the reason.
    let mut c = shared.lock();
    for slot in c.slots.values_mut() {
        slot.reset = true;
        slot.response = None;
        slot.wake();
    }
    let reason = match (c.quic.peer_error(), c.quic.local_error()) {
        (Some(e), _) if e.error_code != H3_NO_ERROR || !e.reason.is_empty() => {
            format!("closed by the peer: code {:#x} {}", e.error_code, String::from_utf8_lossy(&e.reason))
        }
        (_, Some(e)) if e.error_code != H3_NO_ERROR => {
            format!("closed: code {:#x} {}", e.error_code, String::from_utf8_lossy(&e.reason))
        }
        _ if refused => "connection refused: nothing listens on that UDP port".to_owned(),
        _ if c.quic.is_timed_out() => "QUIC connection timed out".to_owned(),
        _ => "QUIC connection closed".to_owned(),
    };
    if counted_handshake && let Role3::Server { handshaking, .. } = &role {
        handshaking.fetch_sub(1, Ordering::Relaxed);
    }
    drop(c);
    shared.state.send_replace(State::Closed(reason));
}

/// The next datagram: `Some((Some(data), len, from))` from the server's queue,
/// `Some((None, len, from))` when it is in `recv_buf` (client), `None` when the queue has ended.
async fn next_datagram(
    input: &mut Input,
    socket: &UdpSocket,
    recv_buf: &mut [u8],
) -> Option<(Option<Vec<u8>>, usize, SocketAddr)> {
    match input {
        Input::Queue(rx) => rx.recv().await.map(|d| {
            let n = d.data.len();
            (Some(d.data), n, d.from)
        }),
        Input::Socket => loop {
            match socket.recv_from(recv_buf).await {
                Ok((n, _)) if n > MAX_DATAGRAM => {}
                Ok((n, from)) => return Some((None, n, from)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return None,
                // Other transient errors: the idle timer decides.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        },
    }
}

/// Feed what is already waiting, up to 64 datagrams, without awaiting.
fn drain(input: &mut Input, socket: &UdpSocket, recv_buf: &mut [u8], quic: &mut quiche::Connection, local: SocketAddr) {
    for _ in 0..64 {
        match input {
            Input::Queue(rx) => match rx.try_recv() {
                Ok(mut d) => {
                    let _ = quic.recv(&mut d.data, quiche::RecvInfo { from: d.from, to: local });
                }
                Err(_) => return,
            },
            Input::Socket => match socket.try_recv_from(recv_buf) {
                Ok((n, _)) if n > MAX_DATAGRAM => {}
                Ok((n, from)) => {
                    let _ = quic.recv(&mut recv_buf[..n], quiche::RecvInfo { from, to: local });
                }
                Err(_) => return,
            },
        }
    }
}

/// Send everything quiche has to send; a datagram the socket cannot take yet is left in
/// `out` and returned.
fn flush(quic: &mut quiche::Connection, socket: &UdpSocket, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
    loop {
        let (n, info) = match quic.send(out) {
            Ok(x) => x,
            Err(_) => return None,
        };
        match socket.try_send_to(&out[..n], info.to) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some((n, info.to)),
            // Unreachable and the like: as if lost on the way.
            Err(_) => {}
        }
    }
}

/// HTTP/3 on top of the QUIC connection: create it once established, then deliver its events.
fn process(shared: &Arc<Shared>, c: &mut Conn, role: &Role3) {
    if c.h3.is_none() && c.quic.is_established() {
        match quiche::h3::Connection::with_transport(&mut c.quic, &c.h3_config) {
            Ok(h3) => c.h3 = Some(h3),
            Err(e) => {
                let _ = c.quic.close(true, wire_code(&e), b"HTTP/3 setup failed");
                return;
            }
        }
    }
    let Conn { quic, h3, slots, announced, .. } = c;
    let Some(h3) = h3.as_mut() else { return };
    loop {
        match h3.poll(quic) {
            Ok((id, quiche::h3::Event::Headers { list, .. })) => match role {
                Role3::Server { requests, acceptor, .. } => {
                    if slots.contains_key(&id) {
                        continue; // trailers: nothing to do with them
                    }
                    slots.insert(id, Slot::default());
                    match request_from(&list) {
                        Ok((request, protocol)) => {
                            let req = H3Request {
                                shared: Arc::clone(shared),
                                id,
                                request,
                                protocol,
                                acceptor: acceptor.clone(),
                                answered: false,
                            };
                            if let Err(e) = requests.try_send(req) {
                                // The application is not taking requests fast enough: refuse.
                                let mut req = e.into_inner();
                                let _ = answer(h3, quic, id, StatusCode::SERVICE_UNAVAILABLE, "server busy\n");
                                slots.remove(&id);
                                // Answered: dropping it must not lock the connection again.
                                req.answered = true;
                                drop(req);
                            }
                        }
                        Err(why) => {
                            let _ = answer(h3, quic, id, StatusCode::BAD_REQUEST, &format!("{why}\n"));
                            slots.remove(&id);
                        }
                    }
                }
                Role3::Client => {
                    if let Some(tx) = slots.get_mut(&id).and_then(|s| s.response.take()) {
                        let _ = tx.send(list);
                    }
                }
            },
            Ok((id, quiche::h3::Event::Data)) => {
                if let Some(s) = slots.get_mut(&id)
                    && let Some(w) = s.read.take()
                {
                    w.wake();
                }
            }
            Ok((id, quiche::h3::Event::Finished)) => {
                if let Some(s) = slots.get_mut(&id) {
                    s.finished = true;
                    s.response = None; // ended without a response head
                    s.wake();
                }
            }
            Ok((id, quiche::h3::Event::Reset(_))) => {
                if let Some(s) = slots.get_mut(&id) {
                    s.reset = true;
                    s.response = None;
                    s.wake();
                }
            }
            Ok((_, quiche::h3::Event::PriorityUpdate)) => {}
            Ok((_, quiche::h3::Event::GoAway)) => {}
            Err(quiche::h3::Error::Done) => break,
            Err(e) => {
                let _ = quic.close(true, wire_code(&e), b"HTTP/3 error");
                break;
            }
        }
    }
    while let Some(id) = quic.stream_writable_next() {
        if let Some(s) = slots.get_mut(&id)
            && let Some(w) = s.write.take()
        {
            w.wake();
        }
    }
    if !*announced && h3.peer_settings_raw().is_some() {
        *announced = true;
        let extended_connect = h3.extended_connect_enabled_by_peer();
        shared.state.send_replace(State::Ready { extended_connect });
    }
}

/// The HTTP/3 error code (RFC 9114 §8.1, RFC 9204 §6) to close a connection with after
/// quiche's HTTP/3 layer failed with `e`.
fn wire_code(e: &quiche::h3::Error) -> u64 {
    use quiche::h3::Error as E;
    match e {
        E::StreamCreationError => 0x103,
        E::ClosedCriticalStream => 0x104,
        E::FrameUnexpected => 0x105,
        E::FrameError => 0x106,
        E::ExcessiveLoad => 0x107,
        E::IdError => 0x108,
        E::SettingsError => 0x109,
        E::MissingSettings => 0x10a,
        E::MessageError => 0x10e,
        E::QpackDecompressionFailed => 0x200,
        E::InternalError => H3_INTERNAL_ERROR,
        _ => 0x101, // H3_GENERAL_PROTOCOL_ERROR
    }
}

/// A response with a short text body, sent whole (it fits any fresh stream's window).
fn answer(
    h3: &mut quiche::h3::Connection,
    quic: &mut quiche::Connection,
    id: u64,
    status: StatusCode,
    body: &str,
) -> std::result::Result<(), quiche::h3::Error> {
    let headers = vec![
        quiche::h3::Header::new(b":status", status.as_str().as_bytes()),
        quiche::h3::Header::new(b"content-type", b"text/plain; charset=utf-8"),
    ];
    let _ = quic.stream_shutdown(id, quiche::Shutdown::Read, H3_NO_ERROR);
    if let Err(e) = h3.send_response(quic, id, &headers, false) {
        // No room for even the head right now: refuse at the QUIC level instead.
        let _ = quic.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_REJECTED);
        return Err(e);
    }
    let _ = h3.send_body(quic, id, body.as_bytes(), true);
    Ok(())
}

/// A request head from HTTP/3 fields: method, URI from `:scheme` `:authority` `:path`, the
/// `:protocol` of an extended CONNECT, and the headers.
fn request_from(list: &[quiche::h3::Header]) -> std::result::Result<(Request<()>, Option<String>), String> {
    let (mut method, mut scheme, mut authority, mut path, mut protocol) = (None, None, None, None, None);
    let mut headers = HeaderMap::new();
    for h in list {
        let n = h.name();
        if n.starts_with(b":") {
            // RFC 9114 §4.3: pseudo-headers first, each once.
            if !headers.is_empty() {
                return Err("a pseudo-header after a regular header".into());
            }
            let slot = match n {
                b":method" => &mut method,
                b":scheme" => &mut scheme,
                b":authority" => &mut authority,
                b":path" => &mut path,
                b":protocol" => &mut protocol,
                _ => return Err(format!("unknown pseudo-header {}", String::from_utf8_lossy(n))),
            };
            if slot.is_some() {
                return Err(format!("{} given twice", String::from_utf8_lossy(n)));
            }
            let value = std::str::from_utf8(h.value()).map_err(|_| "a pseudo-header is not UTF-8".to_owned())?;
            *slot = Some(value.to_owned());
            continue;
        }
        let name = HeaderName::from_bytes(n).map_err(|_| "invalid header name".to_owned())?;
        // RFC 9114 §4.2: connection-specific fields make a request malformed (and an HTTP/1.1
        // `Upgrade` has no meaning here).
        if [http::header::CONNECTION, http::header::UPGRADE, http::header::TRANSFER_ENCODING].contains(&name)
            || name == "keep-alive"
            || name == "proxy-connection"
            || (name == http::header::TE && h.value() != b"trailers")
        {
            return Err(format!("connection-specific header {name} in an HTTP/3 request"));
        }
        let v = HeaderValue::from_bytes(h.value()).map_err(|_| format!("invalid value for {name}"))?;
        headers.append(name, v);
    }
    let method = method.ok_or("missing :method")?;
    let connect = method == "CONNECT";
    if protocol.is_some() && !connect {
        return Err(":protocol on a request that is not CONNECT".into());
    }
    // RFC 9114 §4.3.1: every request but a plain CONNECT has :scheme and :path.
    if !(connect && protocol.is_none()) && (scheme.is_none() || path.is_none()) {
        return Err("missing :scheme or :path".into());
    }
    let mut uri = http::Uri::builder();
    if let Some(s) = scheme {
        uri = uri.scheme(s.as_str());
    }
    if let Some(a) = authority {
        uri = uri.authority(a.as_str());
    }
    uri = uri.path_and_query(path.as_deref().unwrap_or("/"));
    let uri = uri.build().map_err(|e| format!("invalid request target: {e}"))?;
    let mut req = Request::builder()
        .method(method.as_str())
        .version(http::Version::HTTP_3)
        .uri(uri)
        .body(())
        .map_err(|e| format!("invalid request: {e}"))?;
    *req.headers_mut() = headers;
    Ok((req, protocol))
}

fn response_fields(resp: &Response<()>) -> Vec<quiche::h3::Header> {
    let mut fields = Vec::with_capacity(resp.headers().len() + 1);
    fields.push(quiche::h3::Header::new(b":status", resp.status().as_str().as_bytes()));
    for (name, value) in resp.headers() {
        fields.push(quiche::h3::Header::new(name.as_str().as_bytes(), value.as_bytes()));
    }
    fields
}

fn request_fields(req: &Request<()>, protocol: Option<&str>) -> Vec<quiche::h3::Header> {
    let uri = req.uri();
    let mut fields = vec![
        quiche::h3::Header::new(b":method", req.method().as_str().as_bytes()),
        quiche::h3::Header::new(b":scheme", b"https"),
        quiche::h3::Header::new(b":authority", uri.authority().map_or("", |a| a.as_str()).as_bytes()),
        quiche::h3::Header::new(b":path", uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes()),
    ];
    if let Some(p) = protocol {
        fields.push(quiche::h3::Header::new(b":protocol", p.as_bytes()));
    }
    for (name, value) in req.headers() {
        // The host is `:authority` here.
        if name != http::header::HOST {
            fields.push(quiche::h3::Header::new(name.as_str().as_bytes(), value.as_bytes()));
        }
    }
    fields
}

/// A request on an HTTP/3 connection: a WebSocket's extended CONNECT, or anything else.
///
/// Dropping it unanswered cancels the stream.
pub struct H3Request {
    shared: Arc<Shared>,
    id: u64,
    request: Request<()>,
    protocol: Option<String>,
    acceptor: Acceptor,
    answered: bool,
}

impl std::fmt::Debug for H3Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Request").field("request", &self.request).field("protocol", &self.protocol).finish()
    }
}

impl H3Request {
    /// The request head: method, URI (`:scheme`, `:authority`, `:path`), headers.
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// The `:protocol` pseudo-header of an extended CONNECT.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Whether this is an extended CONNECT for `websocket`.
    pub fn is_websocket(&self) -> bool {
        self.request.method() == http::Method::CONNECT
            && self.protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
    }

    /// Read the request's body (for a request that is not a WebSocket), before answering it:
    /// `None` when it is larger than `limit` bytes (answer 413, or drop the request).
    pub async fn read_body(&mut self, limit: usize) -> Result<Option<Bytes>> {
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            std::future::poll_fn(|cx| poll_read_stream(&self.shared, self.id, cx, &mut buf)).await?;
            let n = buf.filled().len();
            if n == 0 {
                return Ok(Some(Bytes::from(body)));
            }
            if body.len() + n > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }

    /// Accept the WebSocket (answer `200`).
    pub async fn accept(self) -> Result<WebSocket<H3Stream>> {
        self.accept_with(|_, _| Ok(())).await
    }

    /// Accept after `callback` has seen the request and may add response headers or refuse it
    /// with a status, as [`Acceptor::accept_with`]. Bad requests are answered with 400 (no
    /// 426 over HTTP/3) before the callback runs.
    pub async fn accept_with<F>(self, callback: F) -> Result<WebSocket<H3Stream>>
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
                let mut refusal = Response::new(());
                *refusal.status_mut() = e.connect_status();
                *refusal.headers_mut() = e.rejection_headers();
                self.refuse(refusal, format!("{e}\n")).await?;
                return Err(e.into());
            }
        };
        if let Err(r) = callback(&self.request, &mut accepted.response) {
            let status = r.status;
            let mut refusal = Response::new(());
            *refusal.status_mut() = status;
            *refusal.headers_mut() = *r.headers;
            self.refuse(refusal, r.body).await?;
            return Err(HandshakeError::Rejected(status).into());
        }
        let negotiated = handshake::Negotiated { subprotocol: accepted.subprotocol, deflate: accepted.deflate };
        let config = Arc::clone(self.acceptor.config_arc());
        let stream = self.respond_stream(accepted.response).await?;
        Ok(websocket_on(stream, Role::Server, config, negotiated))
    }

    /// Answer with `response` (a 2xx for a tunnel) and hand over the stream as bytes, with no
    /// WebSocket negotiation or framing: for proxies and bridges that relay frames unchanged,
    /// and for request bodies and streamed responses.
    pub async fn respond_stream(mut self, mut response: Response<()>) -> Result<H3Stream> {
        strip_connection_headers(response.headers_mut());
        let fields = response_fields(&response);
        // Under load the stream may lack the room (flow control, congestion window) for the
        // head: wait until quiche says it is writable.
        let send_head = std::future::poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let c = &mut *guard;
            let Some(h3) = c.h3.as_mut() else { return Poll::Ready(Err(Error::from(reset()))) };
            match h3.send_response(&mut c.quic, self.id, &fields, false) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(quiche::h3::Error::StreamBlocked) => match c.slots.get_mut(&self.id) {
                    Some(slot) if !slot.reset => {
                        slot.write = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => Poll::Ready(Err(Error::from(reset()))),
                },
                Err(e) => Poll::Ready(Err(h3_error(e))),
            }
        });
        // A peer that grants no room at all (a zero stream window) is given the handshake
        // timeout, like an HTTP/1.1 client that never reads its 101.
        tokio::time::timeout(self.acceptor.handshake_timeout_value(), send_head)
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/3 response head")))??;
        self.shared.notify.notify_one();
        self.answered = true;
        Ok(H3Stream::new(&self.shared, self.id))
    }

    /// Answer a request that is not a WebSocket with `status` and a text body.
    pub async fn respond(self, status: StatusCode, body: impl Into<String>) -> Result<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        self.refuse(resp, body.into()).await
    }

    /// Answer with a full response (status, headers, body), waiting for flow control as the
    /// body goes out.
    pub async fn respond_with(self, response: Response<Bytes>) -> Result<()> {
        let (parts, body) = response.into_parts();
        let limit = self.acceptor.handshake_timeout_value();
        let mut stream = self.respond_stream(Response::from_parts(parts, ())).await?;
        // Bounded like the head: a reader that never grants window does not hold the stream.
        tokio::time::timeout(limit, async {
            stream.write_all(&body).await?;
            stream.shutdown().await
        })
        .await
        .map_err(|_| Error::new(Kind::Timeout("HTTP/3 response body")))??;
        Ok(())
    }

    async fn refuse(self, mut response: Response<()>, body: String) -> Result<()> {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        self.respond_with(response.map(|()| Bytes::from(body))).await
    }
}

impl Drop for H3Request {
    fn drop(&mut self) {
        if !self.answered {
            release(&self.shared, self.id, false, false);
        }
    }
}

/// Changes an [`H3Server`]'s certificate for new connections.
#[derive(Clone)]
pub struct H3TlsReloader(Arc<Listener>);

impl std::fmt::Debug for H3TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3TlsReloader").finish_non_exhaustive()
    }
}

impl H3TlsReloader {
    /// Use this certificate for new connections (open ones keep theirs).
    pub fn reload(&self, tls: &H3Tls) -> Result<()> {
        let quic = self.0.config.quic(tls.context()?)?;
        *self.0.quic.lock().unwrap_or_else(|e| e.into_inner()) = quic;
        Ok(())
    }
}

/// Server state shared by the listener task and [`H3Server`].
struct Listener {
    quic: Mutex<quiche::Config>,
    config: Http3Config,
    connections: AtomicUsize,
    handshaking: Arc<AtomicUsize>,
    dropped: AtomicU64,
    shutdown: Notify,
}

/// A QUIC endpoint on one UDP socket serving HTTP/3: every connection's requests come out of
/// [`accept`](Self::accept). Dropping it (or [`shutdown`](Self::shutdown)) closes every
/// connection.
pub struct H3Server {
    requests: mpsc::Receiver<H3Request>,
    local: SocketAddr,
    listener: Arc<Listener>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for H3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Server").field("local", &self.local).finish_non_exhaustive()
    }
}

impl H3Server {
    /// Listen for QUIC on `addr` (UDP) with this certificate; HTTP/3 settings come from the
    /// acceptor ([`Acceptor::http3`]).
    pub async fn bind(addr: SocketAddr, tls: H3Tls, acceptor: &Acceptor) -> Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        Self::from_socket(socket, tls, acceptor)
    }

    /// Serve on a UDP socket you bound yourself.
    pub fn from_socket(socket: UdpSocket, tls: H3Tls, acceptor: &Acceptor) -> Result<Self> {
        let config = acceptor.http3_config();
        let quic = config.quic(tls.context()?)?;
        let local = socket.local_addr()?;
        grow_buffers(&socket);
        let listener = Arc::new(Listener {
            quic: Mutex::new(quic),
            config,
            connections: AtomicUsize::new(0),
            handshaking: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
            shutdown: Notify::new(),
        });
        let (tx, requests) = mpsc::channel(config.max_streams.clamp(16, 1024) as usize);
        let task = tokio::spawn(listen(Arc::new(socket), local, Arc::clone(&listener), tx, acceptor.clone()));
        Ok(Self { requests, local, listener, task })
    }

    /// The UDP address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next request from any connection, `None` once the server has shut down. Requests
    /// that are not WebSockets are yours to answer ([`H3Request::respond`]). While nobody
    /// calls this, up to a queue's worth of requests wait and later ones are answered 503.
    pub async fn accept(&mut self) -> Option<H3Request> {
        self.requests.recv().await
    }

    /// Use this certificate for new connections (open ones keep theirs): certificate rotation.
    pub fn reload_tls(&self, tls: &H3Tls) -> Result<()> {
        self.tls_reloader().reload(tls)
    }

    /// A handle that changes the certificate from elsewhere (a SIGHUP handler) while
    /// [`accept`](Self::accept) runs.
    pub fn tls_reloader(&self) -> H3TlsReloader {
        H3TlsReloader(Arc::clone(&self.listener))
    }

    /// QUIC connections open now.
    pub fn connections(&self) -> usize {
        self.listener.connections.load(Ordering::Relaxed)
    }

    /// Datagrams dropped so far: for a busy connection, or Initial packets over the connection
    /// or handshake limits.
    pub fn dropped_datagrams(&self) -> u64 {
        self.listener.dropped.load(Ordering::Relaxed)
    }

    /// Stop taking connections and close every open one (`H3_NO_ERROR`); WebSockets on them
    /// end as reset. Close WebSockets first (1001) for a graceful end.
    pub fn shutdown(&self) {
        self.listener.shutdown.notify_one();
    }
}

impl Drop for H3Server {
    fn drop(&mut self) {
        self.listener.shutdown.notify_one();
        let _ = &self.task;
    }
}

/// The listener task: read datagrams, hand each to its connection (creating connections for
/// new Initial packets within the limits).
async fn listen(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    listener: Arc<Listener>,
    requests: mpsc::Sender<H3Request>,
    acceptor: Acceptor,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut out = vec![0u8; 1500];
    let mut routes: HashMap<quiche::ConnectionId<'static>, mpsc::Sender<Datagram>> = HashMap::new();
    let (gone_tx, mut gone) = mpsc::unbounded_channel::<Vec<quiche::ConnectionId<'static>>>();
    let config = listener.config;
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue, // ICMP errors for some earlier send
            },
            Some(ids) = gone.recv() => {
                for id in ids {
                    routes.remove(&id);
                }
                continue;
            }
            () = listener.shutdown.notified() => break,
        };
        if n > MAX_DATAGRAM {
            continue; // larger than we announced: a well-behaved peer never sends it
        }
        let Ok(hdr) = quiche::Header::from_slice(&mut buf[..n], CID_LEN) else { continue };
        if let Some(tx) = routes.get(&hdr.dcid) {
            match tx.try_send(Datagram { data: buf[..n].to_vec(), from }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    listener.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    routes.remove(&hdr.dcid);
                }
            }
            continue;
        }
        if hdr.ty != quiche::Type::Initial {
            continue; // a connection we no longer know
        }
        if n < quiche::MIN_CLIENT_INITIAL_LEN {
            // Clients pad their first packet: answering less would amplify a spoofed one.
            continue;
        }
        if !quiche::version_is_supported(hdr.version) {
            if let Ok(len) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                let _ = socket.try_send_to(&out[..len], from);
            }
            continue;
        }
        if listener.connections.load(Ordering::Relaxed) >= config.max_connections
            || listener.handshaking.load(Ordering::Relaxed) >= config.max_handshakes
        {
            listener.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let scid = random_cid();
        let quic = {
            let mut qc = listener.quic.lock().unwrap_or_else(|e| e.into_inner());
            match quiche::accept(&scid, None, local, from, &mut qc) {
                Ok(q) => q,
                Err(_) => continue,
            }
        };
        let h3_config = match config.h3() {
            Ok(c) => c,
            Err(_) => continue,
        };
        let (tx, rx) = mpsc::channel(config.datagram_queue.max(1));
        let _ = tx.try_send(Datagram { data: buf[..n].to_vec(), from });
        let odcid = hdr.dcid.into_owned();
        routes.insert(odcid.clone(), tx.clone());
        routes.insert(scid.clone(), tx);
        listener.connections.fetch_add(1, Ordering::Relaxed);
        listener.handshaking.fetch_add(1, Ordering::Relaxed);
        let (state, _) = watch::channel(State::Handshaking);
        let shared = Arc::new(Shared {
            conn: Mutex::new(Conn { quic, h3: None, h3_config, slots: HashMap::new(), announced: false }),
            notify: Notify::new(),
            state,
            peer: from,
            handles: AtomicUsize::new(0),
        });
        let role = Role3::Server {
            requests: requests.clone(),
            acceptor: acceptor.clone(),
            handshaking: Arc::clone(&listener.handshaking),
        };
        let socket = Arc::clone(&socket);
        let listener = Arc::clone(&listener);
        let gone_tx = gone_tx.clone();
        tokio::spawn(async move {
            drive(shared, socket, local, Input::Queue(rx), role, config.idle() / 3).await;
            listener.connections.fetch_sub(1, Ordering::Relaxed);
            let _ = gone_tx.send(vec![odcid, scid]);
        });
    }
    // Shutting down: dropping the routes ends every connection's queue, and each closes.
}

/// A client connection's handle while it is being opened.
struct Handle(Option<Arc<Shared>>);

impl Handle {
    /// Pass the handle on (to the `H3Client`).
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.handles.fetch_sub(1, Ordering::SeqCst);
            shared.notify.notify_one();
        }
    }
}

impl Clone for H3Client {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::SeqCst);
        Self { shared: Arc::clone(&self.shared), options: self.options.clone() }
    }
}

impl Drop for H3Client {
    fn drop(&mut self) {
        // The connection's task closes the connection once nothing holds it.
        self.shared.handles.fetch_sub(1, Ordering::SeqCst);
        self.shared.notify.notify_one();
    }
}

/// One QUIC connection to an HTTP/3 server, for opening WebSockets on it (cheap to clone;
/// every clone shares the connection).
///
/// The connection runs on a task of its own; it closes when the last clone and the last
/// WebSocket on it are dropped.
#[derive(Debug)]
pub struct H3Client {
    shared: Arc<Shared>,
    options: ClientBuilder,
}

impl H3Client {
    /// Connect to the builder's URL over HTTP/3: QUIC to the URL's host and port (UDP), TLS 1.3
    /// verifying the server's certificate against the builder's roots
    /// ([`ClientBuilder::add_root_certificate`]) and the system's. `ws://` and `wss://` URLs
    /// both mean QUIC here: there is no cleartext HTTP/3.
    pub async fn connect(options: ClientBuilder) -> Result<Self> {
        let uri = options.parsed_uri()?;
        let host = uri.host().ok_or_else(|| Error::from(HandshakeError::InvalidUri("no host".into())))?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let host_lookup = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let limit = options.connect_timeout_value();
        tokio::time::timeout(limit, async {
            // Each address in turn (`localhost` is often ::1 and 127.0.0.1): one that nothing
            // listens on is refused at once (ICMP), so the next is tried.
            let mut last = None;
            for addr in tokio::net::lookup_host((host_lookup.as_str(), port)).await? {
                match Self::connect_inner(options.clone(), addr).await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = Some(e),
                }
            }
            Err(last
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")).into()))
        })
        .await
        .map_err(|_| Error::new(Kind::Timeout("HTTP/3 connect")))?
    }

    /// Connect to `addr`, with the builder's URL giving the server name (SNI, certificate
    /// check) and `:authority`.
    pub async fn connect_to(options: ClientBuilder, addr: SocketAddr) -> Result<Self> {
        let limit = options.connect_timeout_value();
        tokio::time::timeout(limit, Self::connect_inner(options, addr))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/3 connect")))?
    }

    async fn connect_inner(options: ClientBuilder, addr: SocketAddr) -> Result<Self> {
        let uri = options.parsed_uri()?;
        let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_owned();
        if options.has_tls_config() {
            return Err(tls_error(
                "a rustls configuration (ClientBuilder::tls_config) cannot apply to HTTP/3, whose TLS is \
                 BoringSSL: give the roots with add_root_certificate"
                    .into(),
            ));
        }
        let config = options.http3_config();
        let mut tls = boring::ssl::SslContextBuilder::new(boring::ssl::SslMethod::tls()).map_err(boring_error)?;
        tls.set_verify(boring::ssl::SslVerifyMode::PEER);
        let _ = tls.set_default_verify_paths();
        for der in options.root_certificates() {
            let cert = boring::x509::X509::from_der(der).map_err(boring_error)?;
            // A root given twice is not an error.
            let _ = tls.cert_store_mut().add_cert(cert);
        }
        // A name is checked through SNI (quiche sets it); an IP address must be in the
        // certificate's IP SANs.
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            tls.cert_store_mut().verify_param_mut().set_ip(ip).map_err(boring_error)?;
        }
        let mut quic_config = config.quic(tls)?;
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("address");
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(addr).await?;
        grow_buffers(&socket);
        let local = socket.local_addr()?;
        let server_name = if host.parse::<std::net::IpAddr>().is_ok() { None } else { Some(host.as_str()) };
        let quic = quiche::connect(server_name, &random_cid(), local, addr, &mut quic_config).map_err(quic_error)?;
        let (state, mut ready) = watch::channel(State::Handshaking);
        let shared = Arc::new(Shared {
            conn: Mutex::new(Conn { quic, h3: None, h3_config: config.h3()?, slots: HashMap::new(), announced: false }),
            notify: Notify::new(),
            state,
            peer: addr,
            // The connecting future's own: the task must not close the connection it is opening.
            handles: AtomicUsize::new(1),
        });
        let task_shared = Arc::clone(&shared);
        // Given to the H3Client on success; otherwise (an error, or this future dropped by a
        // timeout) released, so the task closes the connection.
        let handle = Handle(Some(Arc::clone(&shared)));
        tokio::spawn(drive(task_shared, Arc::new(socket), local, Input::Socket, Role3::Client, config.idle() / 3));
        let state = ready.wait_for(|s| *s != State::Handshaking).await.map_err(|_| Error::from(reset()))?.clone();
        match state {
            State::Ready { extended_connect: true } => {
                handle.keep();
                Ok(Self { shared, options })
            }
            State::Ready { extended_connect: false } => Err(HandshakeError::ExtendedConnectDisabled.into()),
            State::Closed(reason) => {
                let tls = reason.contains("0x1") && reason.to_lowercase().contains("cert");
                let io =
                    io::Error::new(io::ErrorKind::ConnectionRefused, format!("HTTP/3 connection failed: {reason}"));
                Err(if tls { tls_error(reason) } else { io.into() })
            }
            State::Handshaking => unreachable!("waited for another state"),
        }
    }

    /// Open a WebSocket on `path_and_query` (e.g. `"/chat?room=1"`) with the options given to
    /// [`connect`](Self::connect).
    pub async fn open(&self, path_and_query: &str) -> Result<WebSocket<H3Stream>> {
        self.open_with(self.options.clone().path(path_and_query)?).await
    }

    /// Open a WebSocket with its own options (URL path, headers, subprotocols, config); the
    /// URL's scheme and authority are only put in the request.
    pub async fn open_with(&self, options: ClientBuilder) -> Result<WebSocket<H3Stream>> {
        let limit = options.connect_timeout_value();
        tokio::time::timeout(limit, async {
            let (stream, negotiated) = self.open_stream(&options).await?;
            Ok(websocket_on(stream, Role::Client, Arc::new(options.config_ref().clone()), negotiated))
        })
        .await
        .map_err(|_| Error::new(Kind::Timeout("HTTP/3 WebSocket open")))?
    }

    /// Send a request head as it is (`protocol` for `:protocol`) and return the response head
    /// with the stream as bytes, with no WebSocket checks or framing: for proxies and bridges
    /// that relay frames unchanged.
    pub async fn send_connect(&self, req: Request<()>, protocol: Option<&str>) -> Result<(Response<()>, H3Stream)> {
        let limit = self.options.connect_timeout_value();
        tokio::time::timeout(limit, self.send_request(&req, protocol, None))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/3 CONNECT")))?
    }

    /// Send a plain HTTP request with its whole body (the stream ends after it) and return the
    /// response head with the stream to read the response body from.
    pub async fn request(&self, req: Request<Bytes>) -> Result<(Response<()>, H3Stream)> {
        let limit = self.options.connect_timeout_value();
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        tokio::time::timeout(limit, self.send_request(&head, None, Some(&body)))
            .await
            .map_err(|_| Error::new(Kind::Timeout("HTTP/3 request")))?
    }

    async fn send_request(
        &self,
        req: &Request<()>,
        protocol: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(Response<()>, H3Stream)> {
        let fields = request_fields(req, protocol);
        let (tx, rx) = oneshot::channel();
        let id = loop {
            let mut ready = self.shared.state.subscribe();
            if let State::Closed(reason) = &*ready.borrow() {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, reason.clone()).into());
            }
            {
                let mut guard = self.shared.lock();
                let c = &mut *guard;
                let h3 = c.h3.as_mut().ok_or_else(|| Error::from(reset()))?;
                match h3.send_request(&mut c.quic, &fields, false) {
                    Ok(id) => {
                        c.slots.insert(id, Slot { response: Some(tx), ..Slot::default() });
                        break id;
                    }
                    // All the streams the server allows are open: wait for one to end.
                    Err(
                        quiche::h3::Error::StreamBlocked
                        | quiche::h3::Error::TransportError(quiche::Error::StreamLimit),
                    ) => {}
                    Err(e) => return Err(h3_error(e)),
                }
            }
            tokio::select! {
                _ = ready.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        };
        self.shared.notify.notify_one();
        let mut stream = H3Stream::new(&self.shared, id);
        if let Some(body) = body {
            stream.write_all(body).await?;
            stream.shutdown().await?;
        }
        let list = rx.await.map_err(|_| Error::from(reset()))?;
        let mut resp = Response::new(());
        for h in &list {
            match h.name() {
                b":status" => {
                    *resp.status_mut() = StatusCode::from_bytes(h.value())
                        .map_err(|_| Error::from(HandshakeError::InvalidUri("bad :status".into())))?;
                }
                n if n.starts_with(b":") => {}
                n => {
                    if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(h.value())) {
                        resp.headers_mut().append(name, value);
                    }
                }
            }
        }
        Ok((resp, stream))
    }

    /// Send the extended CONNECT and check the answer: the stream and what was agreed.
    pub(crate) async fn open_stream(&self, options: &ClientBuilder) -> Result<(H3Stream, handshake::Negotiated)> {
        let uri = options.parsed_uri()?;
        let config = options.config_ref();
        let deflate = config.deflate.as_ref();
        let subprotocols = options.subprotocol_list();
        let req = handshake::client_request_connect(&uri, subprotocols, deflate, options.header_map())?;
        let (head, mut stream) = self.send_request(&req, Some("websocket"), None).await?;
        let negotiated = match handshake::client_verify_connect(&head, subprotocols, deflate) {
            Ok(n) => n,
            Err(e @ HandshakeError::Status(_)) => {
                let mut body = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    use tokio::io::AsyncReadExt;
                    let mut chunk = [0u8; 1024];
                    while body.len() < crate::error::MAX_REFUSAL_BODY {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                        }
                    }
                })
                .await;
                body.truncate(crate::error::MAX_REFUSAL_BODY);
                return Err(Error::new(Kind::Refused(e, Bytes::from(body))));
            }
            Err(e) => return Err(e.into()),
        };
        Ok((stream, negotiated))
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Whether the QUIC connection has ended (idle timeout, the server closed it, an error):
    /// nothing more opens on it; connect again.
    pub fn is_closed(&self) -> bool {
        matches!(*self.shared.state.borrow(), State::Closed(_))
    }
}
