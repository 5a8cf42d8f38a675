//! An event-driven server core: one loop per thread owns its connections and drives their
//! sans-IO [`Connection`]s directly, with no task and no future per connection.
//!
//! The shape is uWebSockets': a readiness loop (epoll, through mio) over a slab of small
//! connection entries. Every read goes into one receive buffer per loop, where
//! [`Connection::poll_input`] parses whole frames in place, so an idle connection holds no read
//! buffer and a connection keeps bytes of its own only while a frame is incomplete. Replies
//! are corked in each connection and written with one vectored write per connection per loop
//! turn. Handlers are plain methods called with borrowed payloads: an echo copies each message
//! once, from the receive buffer into the send buffer.
//!
//! What it serves: WebSockets over HTTP/1.1 (cleartext), with everything an [`Acceptor`]
//! configures (limits, subprotocols, permessage-deflate, keep-alive pings, the handshake
//! timeout). TLS, HTTP/2 and HTTP/3 stay with the tokio [`WebSocket`](crate::WebSocket)
//! servers; other requests are answered 426 (a plain HTTP request) or 400.
//!
//! Bounds: at most [`LoopConfig::max_connections`] connections and
//! [`LoopConfig::max_handshakes`] handshakes in progress per loop (more are closed at once and
//! counted in [`LoopStats`]); request heads of at most 16 KiB; each connection's output is
//! bounded by the [`Config`](crate::Config)'s `max_buffered`, and a connection whose output is
//! above `write_buffer_high_water` is not read until it drains (a peer that never reads stops
//! being read, so the replies it causes cannot pile up).
//!
//! ```no_run
//! use weft::event_loop::{Conn, EventLoop, Handler, LoopConfig, Payload};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Session = ();
//!     fn upgrade(&mut self, _req: &http::Request<()>, _resp: &mut http::Response<()>) -> Result<(), weft::Rejection> {
//!         Ok(())
//!     }
//!     fn on_message(&mut self, _session: &mut (), conn: &mut Conn<'_>, msg: Payload<'_>) {
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:9001")?;
//! let mut ev = EventLoop::new(listener, weft::Acceptor::new(), LoopConfig::default(), Echo)?;
//! let stop = ev.stop_handle(); // stop.stop() from another thread or a signal handler
//! ev.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use weft_proto::handshake::{self, HandshakeError};
use weft_proto::{CloseCode, CloseFrame, Connection, ConnectionError, Event, Input, Message, Role};

use crate::{Acceptor, Rejection};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// Reads per connection per loop turn before the others get a turn.
const READS_PER_TURN: usize = 16;
/// Slices per vectored write.
const IOV: usize = 64;

/// Settings of one [`EventLoop`].
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Most connections this loop holds (WebSockets and handshakes); more are closed at once.
    pub max_connections: usize,
    /// Most handshakes in progress; more are closed at once.
    pub max_handshakes: usize,
    /// The loop's receive buffer: the most one read takes from one socket. Frames that fit
    /// whole in it are handed out in place; larger ones are assembled in the connection.
    pub read_buffer_size: usize,
    /// How long [`LoopHandle::stop`] waits for connections to answer their 1001 close.
    pub shutdown_grace: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_handshakes: 1024,
            read_buffer_size: 256 << 10,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A message as the loop hands it to a [`Handler`]: borrowed from the loop's receive buffer or
/// from the connection, valid for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

/// What the application does with connections. One handler per loop (per thread): it needs no
/// locks for state of its own.
pub trait Handler {
    /// What the application keeps per connection.
    type Session;

    /// An upgrade request arrived (already checked: method, version, key, headers). Inspect it,
    /// add response headers, and return the connection's session, or refuse with a status.
    fn upgrade(&mut self, req: &Request<()>, resp: &mut Response<()>) -> Result<Self::Session, Rejection>;

    /// The `101` response was queued: the connection is open.
    fn on_open(&mut self, _session: &mut Self::Session, _conn: &mut Conn<'_>) {}

    /// A data message arrived.
    fn on_message(&mut self, session: &mut Self::Session, conn: &mut Conn<'_>, msg: Payload<'_>);

    /// A ping (already answered) or a pong arrived.
    fn on_control(&mut self, _session: &mut Self::Session, _conn: &mut Conn<'_>, _msg: &Message) {}

    /// The connection ended (the close handshake, a violation, a timeout or a reset); its
    /// remaining output is still being written.
    fn on_close(&mut self, _session: Self::Session, _reason: &ConnectionError) {}
}

/// One open connection, as a [`Handler`] sees it.
pub struct Conn<'a> {
    conn: &'a mut Connection,
    id: usize,
}

impl Conn<'_> {
    /// This connection's id within its loop (reused after it closes).
    pub fn id(&self) -> usize {
        self.id
    }

    /// Queue a data message; it is written at the end of this loop turn.
    pub fn send(&mut self, msg: Payload<'_>) -> Result<(), weft_proto::SendError> {
        match msg {
            Payload::Text(t) => self.conn.send_borrowed(true, t.as_bytes()),
            Payload::Binary(b) => self.conn.send_borrowed(false, b),
        }
    }

    /// Queue an owned message (data, ping, pong or close).
    pub fn send_message(&mut self, msg: Message) -> Result<(), weft_proto::SendError> {
        self.conn.send(msg)
    }

    /// Start the close handshake.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let _ = self.conn.close(Some(CloseFrame::new(code, reason)));
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        self.conn.buffered_amount()
    }
}

/// Counters of one loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once because the loop held `max_connections`.
    pub refused_connections: u64,
    /// Connections closed at once because `max_handshakes` handshakes were in progress.
    pub refused_handshakes: u64,
    /// Handshakes that failed (bad request, refused, timed out, closed early).
    pub failed_handshakes: u64,
    /// WebSockets opened.
    pub opened: u64,
    /// Connections now open (WebSockets and handshakes).
    pub open: u64,
}

/// Stops an [`EventLoop`] from any thread: no new connections, every WebSocket closed with 1001
/// (going away), and [`EventLoop::run`] returns once they are closed or the grace period is
/// over.
#[derive(Debug, Clone)]
pub struct LoopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl LoopHandle {
    /// Ask the loop to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

enum State<S> {
    Handshake {
        head: Vec<u8>,
        deadline: Instant,
    },
    Open {
        conn: Box<Connection>,
        session: Option<S>,
    },
    /// The handshake failed: its answer (in `raw`) is being written; then the socket lingers.
    Rejected {
        deadline: Instant,
    },
    /// Everything was written and the write side is shut down: read and discard until the peer
    /// closes or `deadline`, so that the last close frame or answer is not destroyed by the
    /// reset a close with unread input sends.
    Lingering {
        deadline: Instant,
    },
}

struct Entry<S> {
    sock: TcpStream,
    state: State<S>,
    /// Bytes to write before the connection's own output (the handshake's answer).
    raw: Vec<u8>,
    /// Readable edge not consumed yet.
    readable: bool,
    /// The peer shut down its side (or the socket failed): read until end of file, whatever
    /// a short read suggests.
    hup: bool,
    /// An ended connection whose output the peer does not take: dropped at this time.
    linger: Option<Instant>,
    /// Queued in `ready` for this turn.
    queued: bool,
    /// The timer this entry has in the heap, if any.
    timer: Option<Instant>,
    /// Told apart from a later connection in the same slot.
    generation: u32,
}

/// One event loop: a listener and the connections it accepted. See the [module](self).
pub struct EventLoop<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    acceptor: Acceptor,
    config: LoopConfig,
    handler: H,
    conns: Slab<Entry<H::Session>>,
    rbuf: Vec<u8>,
    ready: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    generation: u32,
    handshakes: usize,
    stats: LoopStats,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    stopping: Option<Instant>,
    accept_retry: Option<Instant>,
}

impl<H: Handler> EventLoop<H> {
    /// A loop serving `listener` (made non-blocking here). The acceptor's configuration must
    /// not ask for `stream_fragments` (the loop hands out whole messages).
    pub fn new(
        listener: std::net::TcpListener,
        acceptor: Acceptor,
        config: LoopConfig,
        handler: H,
    ) -> io::Result<Self> {
        if acceptor.config.stream_fragments {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the event loop hands out whole messages: stream_fragments is not supported",
            ));
        }
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Self {
            poll,
            listener: Some(listener),
            acceptor,
            rbuf: vec![0; config.read_buffer_size.max(4096)],
            config,
            handler,
            conns: Slab::new(),
            ready: Vec::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            handshakes: 0,
            stats: LoopStats::default(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            stopping: None,
            accept_retry: None,
        })
    }

    /// A handle that stops this loop.
    pub fn stop_handle(&self) -> LoopHandle {
        LoopHandle { stop: Arc::clone(&self.stop), waker: Arc::clone(&self.waker) }
    }

    /// The loop's counters.
    pub fn stats(&self) -> LoopStats {
        LoopStats { open: self.conns.len() as u64, ..self.stats }
    }

    /// The handler.
    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Run until stopped (see [`LoopHandle`]) and every connection has closed.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if let Some(until) = self.stopping {
                if now >= until {
                    // Grace is over: whoever is left is dropped (and its handler told).
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for k in keys {
                        self.remove(k);
                    }
                }
                if self.conns.is_empty() {
                    return Ok(());
                }
            }
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else {
                [self.timers.peek().map(|Reverse((t, _, _))| *t), self.accept_retry, self.stopping]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(k) => {
                        if let Some(e) = self.conns.get_mut(k) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                e.readable = true;
                            }
                            if ev.is_read_closed() || ev.is_error() {
                                e.hup = true;
                            }
                            // Writable, or readable: either way the entry gets a turn.
                            if !e.queued {
                                e.queued = true;
                                self.ready.push(k);
                            }
                        }
                    }
                }
            }
            if self.stop.load(Ordering::Acquire) && self.stopping.is_none() {
                self.begin_stop();
            }
            if self.accept_retry.is_some_and(|t| Instant::now() >= t) {
                self.accept_retry = None;
                self.accept_all();
            }
            let ready = std::mem::take(&mut self.ready);
            for &k in &ready {
                if let Some(e) = self.conns.get_mut(k) {
                    e.queued = false;
                }
            }
            let now = Instant::now();
            for &k in &ready {
                self.drive(k, now);
            }
            self.fire_timers(Instant::now());
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = Some(Instant::now() + self.config.shutdown_grace);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            let e = &mut self.conns[k];
            match &mut e.state {
                State::Open { conn, .. } => {
                    let _ = conn.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down")));
                    if !e.queued {
                        e.queued = true;
                        self.ready.push(k);
                    }
                }
                State::Handshake { .. } | State::Rejected { .. } | State::Lingering { .. } => self.remove(k),
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            let (mut sock, _) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Out of descriptors (or memory): keep serving what we have, retry soon.
                    self.accept_retry = Some(Instant::now() + Duration::from_millis(50));
                    return;
                }
            };
            self.stats.accepted += 1;
            if self.conns.len() >= self.config.max_connections {
                self.stats.refused_connections += 1;
                continue;
            }
            if self.handshakes >= self.config.max_handshakes {
                self.stats.refused_handshakes += 1;
                continue;
            }
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let k = entry.key();
            if self.poll.registry().register(&mut sock, Token(k), Interest::READABLE | Interest::WRITABLE).is_err() {
                continue;
            }
            self.generation = self.generation.wrapping_add(1);
            let deadline = far(Instant::now(), self.acceptor.handshake_timeout);
            entry.insert(Entry {
                sock,
                state: State::Handshake { head: Vec::new(), deadline },
                raw: Vec::new(),
                readable: false,
                hup: false,
                linger: None,
                queued: false,
                timer: None,
                generation: self.generation,
            });
            self.handshakes += 1;
            self.schedule(k, deadline);
        }
    }

    /// Give connection `k` its turn: write what waits, read what arrived, write the answers.
    fn drive(&mut self, k: usize, now: Instant) {
        if !self.flush(k) {
            return;
        }
        let mut reads = 0;
        loop {
            let Some(e) = self.conns.get_mut(k) else { return };
            if !e.readable || !Self::wants_input(e) {
                break;
            }
            if reads == READS_PER_TURN {
                // Fair to the others: the rest next turn.
                if !e.queued {
                    e.queued = true;
                    self.ready.push(k);
                }
                break;
            }
            reads += 1;
            let n = match e.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    e.readable = false;
                    self.on_eof(k);
                    break;
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    e.readable = false;
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    e.readable = false;
                    self.on_eof(k);
                    break;
                }
            };
            if n < self.rbuf.len() && !e.hup {
                // Drained: Linux signals every later arrival as a new edge (but the end of
                // file that came with these bytes was signalled already: `hup`).
                e.readable = false;
            }
            self.on_bytes(k, n, now);
        }
        if self.flush(k) {
            self.requeue_if_readable(k);
            self.reschedule(k);
        }
    }

    /// Reading stopped while output was above the high-water mark, and writing has since
    /// drained it: no new edge will come for bytes that already wait, so give `k` another turn.
    fn requeue_if_readable(&mut self, k: usize) {
        let Some(e) = self.conns.get_mut(k) else { return };
        if e.readable && Self::wants_input(e) && !e.queued {
            e.queued = true;
            self.ready.push(k);
        }
    }

    /// Whether `e` is to be read now.
    fn wants_input(e: &Entry<H::Session>) -> bool {
        match &e.state {
            State::Open { conn, .. } => conn.wants_input() && !conn.is_closed(),
            State::Handshake { .. } | State::Lingering { .. } => true,
            State::Rejected { .. } => false,
        }
    }

    /// `rbuf[..n]` arrived on connection `k`.
    fn on_bytes(&mut self, k: usize, n: usize, now: Instant) {
        let e = &mut self.conns[k];
        match &mut e.state {
            State::Open { conn, session } => {
                let mut input = &mut self.rbuf[..n];
                let id = k;
                Self::on_input(&mut self.handler, conn, session, id, &mut input, now);
            }
            State::Handshake { head, .. } => {
                head.extend_from_slice(&self.rbuf[..n]);
                self.on_head(k, now);
            }
            State::Rejected { .. } | State::Lingering { .. } => {}
        }
    }

    /// Hand everything in `input` to the handler.
    fn on_input(
        handler: &mut H,
        conn: &mut Connection,
        session: &mut Option<H::Session>,
        id: usize,
        input: &mut &mut [u8],
        now: Instant,
    ) {
        while let Some(i) = conn.poll_input(input, now) {
            let mut c = Conn { conn, id };
            match (i, session.as_mut()) {
                (Input::Text(t), Some(s)) => handler.on_message(s, &mut c, Payload::Text(t)),
                (Input::Binary(b), Some(s)) => handler.on_message(s, &mut c, Payload::Binary(b)),
                (Input::Event(ev), _) => Self::on_event(handler, session, &mut c, ev),
                _ => {}
            }
        }
    }

    fn on_event(handler: &mut H, session: &mut Option<H::Session>, c: &mut Conn<'_>, ev: Event) {
        match ev {
            Event::Message(m) => {
                let Some(s) = session.as_mut() else { return };
                match &m {
                    Message::Text(t) => handler.on_message(s, c, Payload::Text(t.as_str())),
                    Message::Binary(b) => handler.on_message(s, c, Payload::Binary(b)),
                    Message::Ping(_) => {
                        // Every ping answered, in order with the messages around it.
                        c.conn.queue_pong();
                        handler.on_control(s, c, &m);
                    }
                    Message::Pong(_) => handler.on_control(s, c, &m),
                    Message::Close(_) => {}
                }
            }
            Event::Closed(reason) => {
                if let Some(s) = session.take() {
                    handler.on_close(s, &reason);
                }
            }
            // Fragments: stream_fragments is refused in `new`.
            _ => {}
        }
    }

    /// Bytes of a request head arrived: answer it once complete.
    fn on_head(&mut self, k: usize, now: Instant) {
        let e = &mut self.conns[k];
        let State::Handshake { head, .. } = &mut e.state else { return };
        let parsed = match handshake::parse_request(head) {
            Ok(None) => return,
            Ok(Some(p)) => Ok(p),
            Err(err) => Err(err),
        };
        let head = std::mem::take(head);
        self.handshakes -= 1;
        let accepted = parsed.and_then(|(req, used)| {
            handshake::server_accept(&req, &self.acceptor.subprotocols, self.acceptor.config.deflate.as_ref())
                .map(|a| (req, used, a))
        });
        let (req, used, mut accepted) = match accepted {
            Ok(a) => a,
            Err(err) => {
                self.stats.failed_handshakes += 1;
                let resp = if matches!(err, HandshakeError::NotUpgrade) {
                    // A plain HTTP request: say what this endpoint is.
                    let mut h = http::HeaderMap::new();
                    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
                    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade, close"));
                    handshake::rejection(StatusCode::UPGRADE_REQUIRED, &h, "WebSocket only\n")
                } else {
                    err.rejection_response()
                };
                self.reject(k, resp);
                return;
            }
        };
        let session = match self.handler.upgrade(&req, &mut accepted.response) {
            Ok(s) => s,
            Err(r) => {
                self.stats.failed_handshakes += 1;
                self.reject(k, handshake::rejection(r.status, &r.headers, &r.body));
                return;
            }
        };
        let e = &mut self.conns[k];
        handshake::write_response_head(&accepted.response, &mut e.raw);
        let mut conn = Box::new(Connection::new(Role::Server, Arc::clone(&self.acceptor.config), now));
        #[cfg(feature = "deflate")]
        if let Some(p) = accepted.deflate {
            conn.set_deflate(p);
        }
        e.state = State::Open { conn, session: Some(session) };
        self.stats.opened += 1;
        let State::Open { conn, session } = &mut e.state else { unreachable!("just set") };
        let mut c = Conn { conn, id: k };
        if let Some(s) = session.as_mut() {
            self.handler.on_open(s, &mut c);
        }
        // Frames sent right behind the head.
        if head.len() > used {
            let mut rest = head[used..].to_vec();
            let mut input = &mut rest[..];
            Self::on_input(&mut self.handler, conn, session, k, &mut input, now);
        }
    }

    fn reject(&mut self, k: usize, resp: Vec<u8>) {
        let e = &mut self.conns[k];
        e.raw = resp;
        e.state = State::Rejected { deadline: far(Instant::now(), self.acceptor.handshake_timeout) };
    }

    fn on_eof(&mut self, k: usize) {
        let e = &mut self.conns[k];
        match &mut e.state {
            State::Open { conn, session } => {
                conn.handle_eof();
                let mut c = Conn { conn, id: k };
                while let Some(ev) = c.conn.poll_event() {
                    Self::on_event(&mut self.handler, session, &mut c, ev);
                }
                // The peer may still read (a half-closed socket): what fits goes now, the
                // rest with the socket.
                let _ = Self::write_out(e);
                self.remove(k);
            }
            State::Handshake { .. } => {
                self.stats.failed_handshakes += 1;
                self.remove(k);
            }
            State::Rejected { .. } | State::Lingering { .. } => self.remove(k),
        }
    }

    /// Write what connection `k` has queued; close it once it is finished. Whether it is
    /// still there.
    fn flush(&mut self, k: usize) -> bool {
        let Some(e) = self.conns.get_mut(k) else { return false };
        match Self::write_out(e) {
            Ok(false) => true,
            Ok(true) => {
                let _ = e.sock.shutdown(std::net::Shutdown::Write);
                let deadline = far(Instant::now(), self.acceptor.config.close_timeout);
                let old = std::mem::replace(&mut e.state, State::Lingering { deadline });
                if let State::Open { session: Some(s), .. } = old {
                    self.handler.on_close(s, &ConnectionError::Reset);
                }
                self.schedule(k, deadline);
                self.requeue_if_readable(k);
                true
            }
            Err(_) => {
                self.on_eof(k);
                false
            }
        }
    }

    /// Write until done or the socket is full; whether the connection is finished.
    fn write_out(e: &mut Entry<H::Session>) -> io::Result<bool> {
        while !e.raw.is_empty() {
            match e.sock.write(&e.raw) {
                Ok(n) => {
                    e.raw.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let conn = match &mut e.state {
            State::Open { conn, .. } => conn,
            State::Rejected { .. } => return Ok(true),
            State::Handshake { .. } | State::Lingering { .. } => return Ok(false),
        };
        while conn.has_transmit() {
            let mut iov = [IoSlice::new(&[]); IOV];
            let n = conn.transmit_slices(&mut iov);
            match e.sock.write_vectored(&iov[..n]) {
                Ok(w) => conn.advance_transmit(w),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if !conn.has_partial_input() {
            conn.release_idle_buffers();
        }
        Ok(conn.is_finished())
    }

    fn remove(&mut self, k: usize) {
        let Some(mut e) = self.conns.try_remove(k) else { return };
        let _ = self.poll.registry().deregister(&mut e.sock);
        match e.state {
            State::Handshake { .. } => self.handshakes -= 1,
            State::Open { mut conn, session } => {
                if let Some(s) = session {
                    if !conn.is_closed() {
                        conn.handle_eof();
                    }
                    let reason = std::iter::from_fn(|| conn.poll_event())
                        .find_map(|ev| match ev {
                            Event::Closed(r) => Some(r),
                            _ => None,
                        })
                        .unwrap_or(ConnectionError::Reset);
                    self.handler.on_close(s, &reason);
                }
            }
            State::Rejected { .. } | State::Lingering { .. } => {}
        }
    }

    /// Make sure connection `k`'s next deadline is in the heap.
    fn reschedule(&mut self, k: usize) {
        self.reschedule_after(k, None);
    }

    /// [`reschedule`](Self::reschedule), later than `now` when given (a timer just fired: a
    /// deadline that is already due again must not spin the loop).
    fn reschedule_after(&mut self, k: usize, now: Option<Instant>) {
        let close_timeout = self.acceptor.config.close_timeout;
        let Some(e) = self.conns.get_mut(k) else { return };
        let want = match &e.state {
            State::Handshake { deadline, .. } | State::Rejected { deadline } | State::Lingering { deadline } => {
                Some(*deadline)
            }
            // Ended with output the peer does not take: dropped after the close timeout.
            State::Open { conn, .. } if conn.is_closed() => {
                Some(*e.linger.get_or_insert_with(|| far(Instant::now(), close_timeout)))
            }
            State::Open { conn, .. } => conn.poll_timeout(),
        };
        if let Some(mut t) = want {
            if let Some(now) = now {
                t = t.max(now + Duration::from_millis(1));
            }
            self.schedule(k, t);
        }
    }

    /// Add a timer for `k` at `t` unless one at least as early is pending (a later one then
    /// re-checks and re-arms: at most a few heap entries per connection).
    fn schedule(&mut self, k: usize, t: Instant) {
        let e = &mut self.conns[k];
        if e.timer.is_some_and(|cur| cur <= t) {
            return;
        }
        e.timer = Some(t);
        self.timers.push(Reverse((t, k, e.generation)));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, k, generation))) = self.timers.peek() {
            if t > now {
                return;
            }
            self.timers.pop();
            let Some(e) = self.conns.get_mut(k) else { continue };
            if e.generation != generation || e.timer != Some(t) {
                continue;
            }
            e.timer = None;
            match &mut e.state {
                State::Handshake { deadline, .. } => {
                    if now >= *deadline {
                        self.stats.failed_handshakes += 1;
                        self.remove(k);
                        continue;
                    }
                }
                State::Rejected { deadline } | State::Lingering { deadline } => {
                    if now >= *deadline {
                        self.remove(k);
                        continue;
                    }
                }
                State::Open { conn, .. } if conn.is_closed() => {
                    if e.linger.is_some_and(|t| now >= t) {
                        self.remove(k);
                        continue;
                    }
                }
                State::Open { conn, session } => {
                    conn.handle_timeout(now);
                    let mut c = Conn { conn, id: k };
                    while let Some(ev) = c.conn.poll_event() {
                        Self::on_event(&mut self.handler, session, &mut c, ev);
                    }
                }
            }
            if self.flush(k) {
                self.requeue_if_readable(k);
                self.reschedule_after(k, Some(now));
            }
        }
    }
}

/// `now + d`, or a century from now when that overflows (`Duration::MAX` means "no limit").
fn far(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}
