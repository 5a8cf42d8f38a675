//! An event-driven server core: one loop per thread owns its connections and drives their
//! sans-IO [`Connection`]s directly, with no task and no future per connection.
//!
//! The shape is uWebSockets': a loop over a slab of small connection entries, with one receive
//! buffer (or one ring of them) per loop. [`Connection::poll_input`] parses whole frames in
//! place in that buffer, so an idle connection holds no read buffer and a connection keeps
//! bytes of its own only while a frame is incomplete. Replies are corked in each connection and
//! written once per connection per loop turn. Handlers are plain methods called with borrowed
//! payloads: an echo copies each message once, from the receive buffer into the send buffer.
//!
//! Two backends run the same connection logic ([`Backend`]):
//! - **io_uring** (Linux 6.1 or later): multishot accept, multishot receive into a ring of
//!   buffers the loop provides (no read buffer per connection, not even in the kernel's
//!   request), and every send of a loop turn submitted with one `io_uring_enter`;
//! - **epoll** (through mio): readiness, one `read` into the loop's buffer, one vectored
//!   `write` per connection per turn.
//!
//! [`Backend::Auto`] runs io_uring where the kernel offers what it needs and epoll where it
//! does not (old kernels, `kernel.io_uring_disabled`, seccomp filters in containers);
//! [`EventLoop::backend`] says which runs and [`EventLoop::fallback`] why. The default is
//! epoll: measured side by side (bench/RESULTS.md), io_uring is ahead with small messages and
//! behind with large ones, whose frames its multishot receives hand over in pieces.
//!
//! Quiet connections are stored small: a connection with nothing in progress is kept as an
//! [`IdleConnection`] (80 bytes instead of a boxed [`Connection`] and its queues) from its
//! opening, and again once a pass finds it unused for [`LoopConfig::idle_after`]; the next
//! bytes or timer make it whole, unseen by the handler, which the next pass tells of each
//! storing ([`Handler::on_idle`]) so that its session can let go of memory too.
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
//! Work from elsewhere reaches a connection through its [`Conn::waker`]: a
//! [`std::task::Waker`] that any thread may wake (a publisher on another thread, a broker's
//! future, a timer) and that has the loop call [`Handler::on_wake`] for that connection on its
//! next turn. Wakes of one connection coalesce until the loop takes them; wakes from the
//! loop's own thread cost no system call. So a handler can poll futures with it, or move
//! messages from a queue another thread fills, without a task per connection.
//!
//! A handler callback that panics is caught (with `panic = "unwind"`, the default): the
//! connection it was called for closes with 1011 and loses its session, a panicking `upgrade`
//! is answered 500, and the loop serves every other connection on
//! ([`LoopStats::handler_panics`]); a panicking [`Handler::on_idle`], which only lets go of
//! memory, is counted and nothing else.
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
//! println!("serving on {}", ev.backend()); // epoll (the default; LoopConfig::backend for io_uring)
//! let stop = ev.stop_handle(); // stop.stop() from another thread or a signal handler
//! ev.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use weft_proto::handshake::{self, HandshakeError};
use weft_proto::{CloseCode, CloseFrame, Connection, ConnectionError, Event, IdleConnection, Input, Message, Role};

use crate::{Acceptor, Rejection};

mod epoll;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod uring;

/// Reads per connection per loop turn before the others get a turn.
const READS_PER_TURN: usize = 16;
/// Slices per vectored write.
const IOV: usize = 64;

/// Which I/O backend runs an [`EventLoop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel offers it, else epoll.
    Auto,
    /// Readiness with epoll (through mio); kqueue on the BSDs and macOS. The default.
    #[default]
    Epoll,
    /// Completions with io_uring (Linux 6.1 or later): an error where it is not available.
    IoUring,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        })
    }
}

/// Settings of one [`EventLoop`].
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Most connections this loop holds (WebSockets and handshakes); more are closed at once.
    pub max_connections: usize,
    /// Most handshakes in progress; more are closed at once.
    pub max_handshakes: usize,
    /// epoll: the loop's receive buffer, the most one read takes from one socket. io_uring:
    /// the size of each buffer in the loop's ring. Frames that fit whole in one are handed out
    /// in place; larger ones are assembled in the connection.
    pub read_buffer_size: usize,
    /// io_uring: buffers in the loop's receive ring (rounded up to a power of two, at most
    /// 32,768). On Linux 6.12 and later each buffer serves many receives in turn; before, each
    /// receive takes a whole buffer. A burst that finds them all in use waits for the next
    /// loop turn.
    pub ring_buffers: u16,
    /// io_uring: let the kernel fill each ring buffer across several receives where it can
    /// (Linux 6.12); off, every receive takes a buffer of its own, as on older kernels.
    pub ring_incremental: bool,
    /// How long [`LoopHandle::stop`] waits for connections to answer their 1001 close.
    pub shutdown_grace: Duration,
    /// The I/O backend.
    pub backend: Backend,
    /// Store connections small ([`IdleConnection`], about 80 bytes instead of a boxed 430 and
    /// its queues) once they have had nothing in progress for between one and two of these
    /// periods: one pass over the loop's connections per period. `None` keeps every connection
    /// whole.
    pub idle_after: Option<Duration>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_handshakes: 1024,
            read_buffer_size: 256 << 10,
            ring_buffers: 16,
            ring_incremental: true,
            shutdown_grace: Duration::from_secs(5),
            backend: Backend::default(),
            idle_after: Some(Duration::from_secs(1)),
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

    /// The connection's [`Conn::waker`] was woken (once however many times it was woken since
    /// the last call). Also called once for every open connection when the loop begins to
    /// stop, before their 1001 close is queued, so what a session still holds can go out
    /// first.
    fn on_wake(&mut self, _session: &mut Self::Session, _conn: &mut Conn<'_>) {}

    /// Output that was above the high-water mark (`write_buffer_high_water`) was written down
    /// to it: a session that stopped moving messages into the connection to let it drain can
    /// go on.
    fn on_writable(&mut self, _session: &mut Self::Session, _conn: &mut Conn<'_>) {}

    /// The connection was stored small ([`LoopConfig::idle_after`]; called by the next pass,
    /// once for each time it was stored): let go of what the session holds for busy times and
    /// can make again (buffers grown for a burst, state of a window that has passed). A panic
    /// here is counted in [`LoopStats::handler_panics`] and nothing else: the connection and
    /// its session go on.
    fn on_idle(&mut self, _session: &mut Self::Session) {}
}

/// One open connection, as a [`Handler`] sees it.
pub struct Conn<'a> {
    conn: &'a mut Connection,
    id: usize,
    generation: u32,
}

impl Conn<'_> {
    /// This connection's id within its loop (reused after it closes).
    pub fn id(&self) -> usize {
        self.id
    }

    /// A waker for this connection: waking it, from any thread, has the loop call
    /// [`Handler::on_wake`] for it on its next turn — or not at all once it has closed (a
    /// later connection in the same slot is not woken). Keep one per session rather than
    /// making one per use.
    ///
    /// # Panics
    /// Outside a loop's callbacks (a `Conn` exists only inside them).
    pub fn waker(&self) -> Waker {
        let wakes = CURRENT_WAKES.with(|c| c.borrow().clone()).expect("Conn::waker inside a loop's callback");
        Waker::from(Arc::new(ConnWaker {
            wakes,
            slot: self.id as u32,
            generation: self.generation,
            queued: AtomicBool::new(false),
        }))
    }

    /// The connection's protocol state, for what `Conn` does not wrap (an encoded message
    /// sent to many, pausing input, its negotiated extensions).
    pub fn connection(&mut self) -> &mut Connection {
        self.conn
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

// ---------------------------------------------------------------------------------------------
// Wakes: connections woken from anywhere, taken by their loop once per turn.

/// The connections of one loop woken since it last looked, and how to interrupt its wait.
pub(crate) struct Wakes {
    queue: Mutex<Vec<Arc<ConnWaker>>>,
    /// Interrupts the loop's wait (the same signal as [`LoopHandle::stop`]).
    signal: Arc<dyn Fn() + Send + Sync>,
}

impl Wakes {
    pub(crate) fn new(signal: Arc<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(Self { queue: Mutex::new(Vec::new()), signal })
    }

    /// The connections woken since the last call, as (slot, generation); each may be woken
    /// again from now on.
    fn take(&self, into: &mut Vec<(usize, u32)>) {
        let woken = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        for w in woken {
            w.queued.store(false, Ordering::Release);
            into.push((w.slot as usize, w.generation));
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

std::thread_local! {
    /// The wakes of the loop running on this thread.
    static CURRENT_WAKES: std::cell::RefCell<Option<Arc<Wakes>>> = const { std::cell::RefCell::new(None) };
}

/// Sets this thread's loop (for [`Conn::waker`] and to skip the signal for wakes from the
/// loop's own thread) while it runs.
struct OnThisThread;

impl OnThisThread {
    fn enter(wakes: &Arc<Wakes>) -> Self {
        CURRENT_WAKES.with(|c| *c.borrow_mut() = Some(Arc::clone(wakes)));
        OnThisThread
    }
}

impl Drop for OnThisThread {
    fn drop(&mut self) {
        CURRENT_WAKES.with(|c| *c.borrow_mut() = None);
    }
}

struct ConnWaker {
    wakes: Arc<Wakes>,
    slot: u32,
    generation: u32,
    /// In the loop's queue and not taken yet: further wakes change nothing.
    queued: AtomicBool,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let first = {
            let mut q = self.wakes.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push(Arc::clone(self));
            q.len() == 1
        };
        // The loop's own thread looks at its queue before it waits again: no signal needed.
        let here = CURRENT_WAKES.with(|c| c.borrow().as_ref().is_some_and(|w| Arc::ptr_eq(w, &self.wakes)));
        if first && !here {
            (self.wakes.signal)();
        }
    }
}

/// Tell connection `id`'s handler it was woken (when it is still the connection that was).
fn wake<H: Handler>(handler: &mut H, state: &mut State<H::Session>, id: usize, generation: u32) {
    if let State::Open { conn, session } = state {
        if session.is_some() && !conn.is_closed() {
            let mut c = Conn { conn: conn.get(), id, generation };
            with_session(session, &mut c, |s, c| handler.on_wake(s, c));
        }
    }
}

/// Connection `id`'s output that was above its high-water mark was written down to it (the
/// caller knows it was above before): tell its handler.
fn writable<H: Handler>(handler: &mut H, state: &mut State<H::Session>, id: usize, generation: u32) {
    if let State::Open { conn: held @ Held::Whole { .. }, session } = state {
        let conn = held.get();
        if session.is_some() && !conn.above_high_water() && !conn.is_closed() {
            let mut c = Conn { conn, id, generation };
            with_session(session, &mut c, |s, c| handler.on_writable(s, c));
        }
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
    /// Of the open WebSockets, those stored small ([`IdleConnection`]) at the last pass
    /// ([`LoopConfig::idle_after`]).
    pub idle: u64,
    /// Times a connection was stored small: at its opening, by a pass, or as soon as it is
    /// idle again after control frames or a timer (a keep-alive ping and its pong) made it
    /// whole.
    pub stored_idle: u64,
    /// Times a stored connection was made whole again (bytes arrived, a timer was due, the
    /// loop stopped).
    pub resumed: u64,
    /// Handler callbacks that panicked. Each panic is caught: the connection it was for closes
    /// with 1011 (its session dropped without [`Handler::on_close`]; a panicking `upgrade`
    /// answers 500; a panicking `on_idle` is only counted) and the loop serves every other
    /// connection on.
    pub handler_panics: u64,
}

/// Stops an [`EventLoop`] from any thread: no new connections, every WebSocket closed with 1001
/// (going away), and [`EventLoop::run`] returns once they are closed or the grace period is
/// over.
#[derive(Clone)]
pub struct LoopHandle {
    stop: Arc<AtomicBool>,
    /// Set by [`LoopHandle::fail_next_turn`].
    fail: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle").field("stop", &self.stop).finish_non_exhaustive()
    }
}

impl LoopHandle {
    /// Ask the loop to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
    }

    /// Make the loop's next wait fail as if the kernel refused it, so that `run` returns that
    /// error: how tests reach the failure path. Not for applications.
    #[doc(hidden)]
    pub fn fail_next_turn(&self) {
        self.fail.store(true, Ordering::Release);
        (self.wake)();
    }
}

/// The error [`LoopHandle::fail_next_turn`] makes, when it was asked for.
fn injected_failure(fail: &AtomicBool) -> io::Result<()> {
    if fail.swap(false, Ordering::AcqRel) {
        return Err(io::Error::other("injected failure (LoopHandle::fail_next_turn)"));
    }
    Ok(())
}

enum Imp<H: Handler> {
    Epoll(Box<epoll::Loop<H>>),
    #[cfg(target_os = "linux")]
    Uring(Box<uring::Loop<H>>),
}

/// One event loop: a listener and the connections it accepted. See the [module](self).
pub struct EventLoop<H: Handler> {
    imp: Imp<H>,
    fallback: Option<String>,
    /// Handler panics caught by earlier runs.
    panics: u64,
    /// Stored connections made whole by earlier runs.
    resumed: u64,
}

impl<H: Handler> EventLoop<H> {
    /// A loop serving `listener` (made non-blocking here) on the backend `config` names. The
    /// acceptor's configuration must not ask for `stream_fragments` (the loop hands out whole
    /// messages).
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
        let mut fallback = None;
        match config.backend {
            Backend::Epoll => {}
            #[cfg(target_os = "linux")]
            Backend::IoUring | Backend::Auto => match uring::supported() {
                Ok(()) => {
                    let imp = Imp::Uring(Box::new(uring::Loop::new(listener, acceptor, config, handler)?));
                    return Ok(Self { imp, fallback, panics: 0, resumed: 0 });
                }
                Err(e) if config.backend == Backend::IoUring => {
                    return Err(io::Error::new(e.kind(), format!("io_uring is not available: {e}")));
                }
                Err(e) => fallback = Some(format!("io_uring is not available: {e}")),
            },
            #[cfg(not(target_os = "linux"))]
            Backend::IoUring => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring is Linux only"));
            }
            #[cfg(not(target_os = "linux"))]
            Backend::Auto => fallback = Some("io_uring is Linux only".into()),
        }
        let imp = Imp::Epoll(Box::new(epoll::Loop::new(listener, acceptor, config, handler)?));
        Ok(Self { imp, fallback, panics: 0, resumed: 0 })
    }

    /// The backend that runs: [`Backend::IoUring`] or [`Backend::Epoll`].
    pub fn backend(&self) -> Backend {
        match &self.imp {
            Imp::Epoll(_) => Backend::Epoll,
            #[cfg(target_os = "linux")]
            Imp::Uring(_) => Backend::IoUring,
        }
    }

    /// Why [`Backend::Auto`] runs epoll: what io_uring lacked.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// A handle that stops this loop.
    pub fn stop_handle(&self) -> LoopHandle {
        match &self.imp {
            Imp::Epoll(l) => l.stop_handle(),
            #[cfg(target_os = "linux")]
            Imp::Uring(l) => l.stop_handle(),
        }
    }

    /// The loop's counters.
    pub fn stats(&self) -> LoopStats {
        let stats = match &self.imp {
            Imp::Epoll(l) => l.stats(),
            #[cfg(target_os = "linux")]
            Imp::Uring(l) => l.stats(),
        };
        LoopStats { handler_panics: self.panics, resumed: self.resumed, ..stats }
    }

    /// The handler.
    pub fn handler(&mut self) -> &mut H {
        match &mut self.imp {
            Imp::Epoll(l) => &mut l.handler,
            #[cfg(target_os = "linux")]
            Imp::Uring(l) => &mut l.handler,
        }
    }

    /// Run until stopped (see [`LoopHandle`]) and every connection has closed.
    pub fn run(&mut self) -> io::Result<()> {
        // Handler panics are counted on the thread that runs the handler: this one.
        take_panics();
        take_resumed();
        let r = match &mut self.imp {
            Imp::Epoll(l) => l.run(),
            #[cfg(target_os = "linux")]
            Imp::Uring(l) => l.run(),
        };
        self.panics += take_panics();
        self.resumed += take_resumed();
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Handler panics: caught per callback, counted per thread, added to the loop's stats by `run`.

std::thread_local! {
    static PANICS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Run `f`; whether it panicked (counted).
fn caught(f: impl FnOnce()) -> bool {
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    if panicked {
        PANICS.with(|p| p.set(p.get() + 1));
    }
    panicked
}

std::thread_local! {
    static RESUMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Stored connections made whole on this thread since the last call.
fn take_resumed() -> u64 {
    RESUMED.with(|r| r.replace(0))
}

/// Handler panics on this thread since the last call.
fn take_panics() -> u64 {
    PANICS.with(|p| p.replace(0))
}

/// Call `f` with the connection's session; if it panics, drop the session (a drop that panics
/// too is caught) and close the connection with 1011.
fn with_session<S>(session: &mut Option<S>, c: &mut Conn<'_>, f: impl FnOnce(&mut S, &mut Conn<'_>)) {
    let Some(s) = session.as_mut() else { return };
    if caught(|| f(s, c)) {
        let s = session.take();
        caught(move || drop(s));
        let _ = c.conn.close(Some(CloseFrame::new(CloseCode::INTERNAL, "")));
    }
}

// ---------------------------------------------------------------------------------------------
// What both backends share: the connection states, the handshake, the delivery of input.

enum State<S> {
    Handshake {
        head: Vec<u8>,
        deadline: Instant,
    },
    Open {
        conn: Held,
        session: Option<S>,
    },
    /// The handshake failed: its answer is being written; then the socket lingers.
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

/// An open connection's protocol state: whole while in use, stored small once a sweep
/// ([`LoopConfig::idle_after`]) finds it idle and unused since the sweep before — or at once
/// when it was made whole only for control frames or its own timers (a keep-alive ping and
/// its pong) and is idle again.
enum Held {
    Whole {
        conn: Box<Connection>,
        /// Used since the last sweep.
        used: bool,
        /// Made whole from storage, and no data message since.
        quiet: bool,
    },
    /// `told`: [`Handler::on_idle`] was called since it was stored.
    Idle { idle: IdleConnection, told: bool },
    /// Only while one turns into the other.
    Swapping,
}

impl Held {
    fn new(conn: Box<Connection>) -> Self {
        Held::Whole { conn, used: true, quiet: false }
    }

    /// The connection, whole (made whole again if it was idle), marked as used.
    fn get(&mut self) -> &mut Connection {
        if let Held::Idle { .. } = self {
            let Held::Idle { idle, .. } = std::mem::replace(self, Held::Swapping) else { unreachable!() };
            *self = Held::Whole { conn: Box::new(idle.resume(Instant::now())), used: true, quiet: true };
            RESUMED.with(|r| r.set(r.get() + 1));
        }
        match self {
            Held::Whole { conn, used, .. } => {
                *used = true;
                conn
            }
            Held::Idle { .. } | Held::Swapping => unreachable!("made whole above"),
        }
    }

    /// A data message went to the handler: the connection is in use, not only kept alive.
    fn data(&mut self) {
        if let Held::Whole { quiet, .. } = self {
            *quiet = false;
        }
    }

    /// Store the connection small again if it was made whole only for control frames or
    /// timers and is idle; whether it was.
    fn store_if_quiet(&mut self) -> bool {
        if matches!(self, Held::Whole { quiet: true, .. }) {
            self.store_if_idle();
        }
        self.is_idle_stored()
    }

    fn into_whole(self) -> Box<Connection> {
        match self {
            Held::Whole { conn, .. } => conn,
            Held::Idle { idle, .. } => Box::new(idle.resume(Instant::now())),
            Held::Swapping => unreachable!("only inside `get` and `sweep`"),
        }
    }

    /// Store the connection small if it was not used since the last sweep and is idle.
    fn sweep(&mut self) {
        match self {
            Held::Whole { used, .. } if *used => *used = false,
            _ => self.store_if_idle(),
        }
    }

    /// Store the connection small now if it is idle.
    fn store_if_idle(&mut self) {
        if !matches!(self, Held::Whole { conn, .. } if conn.is_idle()) {
            return;
        }
        let Held::Whole { conn, used, quiet } = std::mem::replace(self, Held::Swapping) else { unreachable!() };
        *self = match (*conn).into_idle() {
            Ok(idle) => Held::Idle { idle, told: false },
            Err(conn) => Held::Whole { conn: Box::new(conn), used, quiet },
        };
    }

    /// Stored small and the handler not told yet ([`Handler::on_idle`]): it is now.
    fn tell_idle(&mut self) -> bool {
        match self {
            Held::Idle { told, .. } if !*told => {
                *told = true;
                true
            }
            _ => false,
        }
    }

    fn is_idle_stored(&self) -> bool {
        matches!(self, Held::Idle { .. })
    }

    fn wants_input(&self) -> bool {
        match self {
            Held::Whole { conn, .. } => conn.wants_input(),
            _ => true,
        }
    }

    fn is_closed(&self) -> bool {
        matches!(self, Held::Whole { conn, .. } if conn.is_closed())
    }

    fn is_finished(&self) -> bool {
        matches!(self, Held::Whole { conn, .. } if conn.is_finished())
    }

    fn has_transmit(&self) -> bool {
        matches!(self, Held::Whole { conn, .. } if conn.has_transmit())
    }

    fn has_partial_input(&self) -> bool {
        matches!(self, Held::Whole { conn, .. } if conn.has_partial_input())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Held::Whole { conn, .. } => conn.poll_timeout(),
            Held::Idle { idle, .. } => idle.poll_timeout(),
            Held::Swapping => None,
        }
    }
}

impl<S> State<S> {
    /// [`Held::sweep`] for an open connection, counted in `stats`; [`Handler::on_idle`] once
    /// for each time it was stored small since the last pass (by this pass, or right after a
    /// turn that only delivered control frames, timers or wakes: a subscriber that receives
    /// events is stored again after each, and told once a pass).
    fn sweep<H: Handler<Session = S>>(&mut self, handler: &mut H, stats: &mut LoopStats) {
        if let State::Open { conn, session } = self {
            let was = conn.is_idle_stored();
            conn.sweep();
            if conn.is_idle_stored() {
                stats.idle += 1;
                stats.stored_idle += u64::from(!was);
                if let (true, Some(s)) = (conn.tell_idle(), session) {
                    // Only letting go of memory: a panic is counted, and the session goes on.
                    caught(|| handler.on_idle(s));
                }
            }
        }
    }

    /// Whether the connection's output is above its high-water mark.
    fn above_high_water(&self) -> bool {
        matches!(self, State::Open { conn: Held::Whole { conn, .. }, .. } if conn.above_high_water())
    }

    /// Whether the connection has output to write.
    fn has_transmit(&self) -> bool {
        matches!(self, State::Open { conn, .. } if conn.has_transmit())
    }

    /// Whether the connection is to be read now.
    fn wants_input(&self) -> bool {
        match self {
            State::Open { conn, .. } => conn.wants_input() && !conn.is_closed(),
            State::Handshake { .. } | State::Lingering { .. } => true,
            State::Rejected { .. } => false,
        }
    }

    /// The next time a timer of this connection is due; `linger` is when an ended connection
    /// whose output the peer does not take is dropped.
    fn next_deadline(&self, linger: &mut Option<Tick>, close_timeout: Duration) -> Option<Instant> {
        match self {
            State::Handshake { deadline, .. } | State::Rejected { deadline } | State::Lingering { deadline } => {
                Some(*deadline)
            }
            State::Open { conn, .. } if conn.is_closed() => {
                Some(linger.get_or_insert_with(|| Tick::from(far(Instant::now(), close_timeout))).instant())
            }
            State::Open { conn, .. } => conn.poll_timeout(),
        }
    }
}

/// What a timer that fired means for a connection.
enum Fired {
    /// Drop the connection (a handshake that timed out counts as failed).
    Remove { failed_handshake: bool },
    /// The connection's own timers ran: write what they queued.
    Drive,
}

/// Run connection `id`'s due timers at `now`, with `handler` told what they caused.
fn fire<H: Handler>(
    handler: &mut H,
    state: &mut State<H::Session>,
    linger: Option<Tick>,
    id: usize,
    generation: u32,
    now: Instant,
) -> Fired {
    match state {
        State::Handshake { deadline, .. } if now >= *deadline => Fired::Remove { failed_handshake: true },
        State::Rejected { deadline } | State::Lingering { deadline } if now >= *deadline => {
            Fired::Remove { failed_handshake: false }
        }
        State::Open { conn, .. } if conn.is_closed() => {
            if linger.is_some_and(|t| now >= t.instant()) {
                Fired::Remove { failed_handshake: false }
            } else {
                Fired::Drive
            }
        }
        // A timer that no longer applies (the handshake's, a pong that came): nothing is due,
        // and a stored connection is not made whole for it.
        State::Open { conn, .. } if conn.poll_timeout().is_none_or(|d| now < d) => Fired::Drive,
        State::Open { conn, session } => {
            let conn = conn.get();
            let close_timed_out = conn.close_deadline().is_some_and(|d| now >= d);
            conn.handle_timeout(now);
            drain_events(handler, conn, session, id, generation);
            if close_timed_out {
                // The close handshake timed out: a peer that never answered it (one flooding
                // us, say) is not waited for again while the socket lingers.
                Fired::Remove { failed_handshake: false }
            } else {
                Fired::Drive
            }
        }
        _ => Fired::Drive,
    }
}

/// Hand what is in `input` to the handler: everything, or with `pause`, only while the
/// connection wants input (its output below the high-water mark); `input` keeps the rest.
#[allow(clippy::too_many_arguments)] // the parts of an entry both backends keep apart
fn deliver<H: Handler>(
    handler: &mut H,
    conn: &mut Connection,
    session: &mut Option<H::Session>,
    id: usize,
    generation: u32,
    input: &mut &mut [u8],
    now: Instant,
    pause: bool,
) -> bool {
    let mut data = false;
    loop {
        if pause && !conn.wants_input() {
            return data;
        }
        let Some(i) = conn.poll_input(input, now) else { return data };
        let mut c = Conn { conn, id, generation };
        match i {
            Input::Text(t) => with_session(session, &mut c, |s, c| handler.on_message(s, c, Payload::Text(t))),
            Input::Binary(b) => with_session(session, &mut c, |s, c| handler.on_message(s, c, Payload::Binary(b))),
            Input::Event(ev) => {
                data |= matches!(&ev, Event::Message(Message::Text(_) | Message::Binary(_)));
                on_event(handler, session, &mut c, ev);
                continue;
            }
        }
        data = true;
    }
}

/// Hand the connection's pending events (after a timeout or the end of input) to the handler.
fn drain_events<H: Handler>(
    handler: &mut H,
    conn: &mut Connection,
    session: &mut Option<H::Session>,
    id: usize,
    generation: u32,
) {
    let mut c = Conn { conn, id, generation };
    while let Some(ev) = c.conn.poll_event() {
        on_event(handler, session, &mut c, ev);
    }
}

fn on_event<H: Handler>(handler: &mut H, session: &mut Option<H::Session>, c: &mut Conn<'_>, ev: Event) {
    match ev {
        Event::Message(m) => match &m {
            Message::Text(t) => with_session(session, c, |s, c| handler.on_message(s, c, Payload::Text(t.as_str()))),
            Message::Binary(b) => with_session(session, c, |s, c| handler.on_message(s, c, Payload::Binary(b))),
            Message::Ping(_) => {
                // Every ping answered, in order with the messages around it.
                if session.is_some() {
                    c.conn.queue_pong();
                }
                with_session(session, c, |s, c| handler.on_control(s, c, &m));
            }
            Message::Pong(_) => with_session(session, c, |s, c| handler.on_control(s, c, &m)),
            Message::Close(_) => {}
        },
        Event::Closed(reason) => {
            if let Some(s) = session.take() {
                caught(|| handler.on_close(s, &reason));
            }
        }
        // Fragments: stream_fragments is refused in `EventLoop::new`.
        _ => {}
    }
}

/// A dropped connection's end, told to its handler: the reason its connection reported, or a
/// reset.
fn end_session<H: Handler>(handler: &mut H, conn: Held, session: Option<H::Session>) {
    let Some(s) = session else { return };
    if conn.is_idle_stored() {
        // Open with nothing in progress: it ends as a reset, with nothing to make whole.
        caught(|| handler.on_close(s, &ConnectionError::Reset));
        return;
    }
    let mut conn = conn.into_whole();
    if !conn.is_closed() {
        conn.handle_eof();
    }
    let reason = std::iter::from_fn(|| conn.poll_event())
        .find_map(|ev| match ev {
            Event::Closed(r) => Some(r),
            _ => None,
        })
        .unwrap_or(ConnectionError::Reset);
    caught(|| handler.on_close(s, &reason));
}

/// The answer to a request head.
enum Answer<S> {
    /// More bytes are needed.
    Incomplete,
    /// Upgraded: the `101` head to write, the open state, and the bytes that came behind the
    /// head (already handed to the handler).
    Open { head: Vec<u8>, state: State<S> },
    /// Refused: the answer to write before lingering.
    Refused(Vec<u8>),
}

/// Bytes of connection `id`'s request head arrived (into its `state`): once the head is
/// complete, answer it — the connection opens, or its refusal goes into `raw` and it lingers.
/// Whether its handshake ended (the caller counts handshakes in progress).
#[allow(clippy::too_many_arguments)] // the parts of an entry both backends keep apart
fn on_head<H: Handler>(
    acceptor: &Acceptor,
    handler: &mut H,
    stats: &mut LoopStats,
    raw: &mut Vec<u8>,
    state: &mut State<H::Session>,
    id: usize,
    generation: u32,
    now: Instant,
    idle_after: Option<Duration>,
) -> bool {
    let State::Handshake { head, .. } = &*state else { return false };
    match answer(acceptor, handler, stats, head, id, generation, now) {
        Answer::Incomplete => false,
        Answer::Open { head, state: mut open } => {
            *raw = head;
            if let (State::Open { conn, .. }, Some(_)) = (&mut open, idle_after) {
                // Most connections say nothing for a while after they open: stored small at
                // once, they never keep the whole state the handshake made (a heap of freed
                // ones, after many handshakes, would stay in the process's memory).
                conn.store_if_idle();
                stats.stored_idle += u64::from(conn.is_idle_stored());
            }
            *state = open;
            true
        }
        Answer::Refused(resp) => {
            *raw = resp;
            *state = State::Rejected { deadline: far(Instant::now(), acceptor.handshake_timeout) };
            true
        }
    }
}

/// Answer the request head in `head` (as far as it came) for connection `id`.
fn answer<H: Handler>(
    acceptor: &Acceptor,
    handler: &mut H,
    stats: &mut LoopStats,
    head: &[u8],
    id: usize,
    generation: u32,
    now: Instant,
) -> Answer<H::Session> {
    let parsed = match handshake::parse_request(head) {
        Ok(None) => return Answer::Incomplete,
        Ok(Some(p)) => Ok(p),
        Err(err) => Err(err),
    };
    let accepted = parsed.and_then(|(req, used)| {
        handshake::server_accept(&req, &acceptor.subprotocols, acceptor.config.deflate.as_ref()).map(|a| (req, used, a))
    });
    let (req, used, mut accepted) = match accepted {
        Ok(a) => a,
        Err(err) => {
            stats.failed_handshakes += 1;
            return Answer::Refused(if matches!(err, HandshakeError::NotUpgrade) {
                // A plain HTTP request: say what this endpoint is.
                let mut h = http::HeaderMap::new();
                h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
                h.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade, close"));
                handshake::rejection(StatusCode::UPGRADE_REQUIRED, &h, "WebSocket only\n")
            } else {
                err.rejection_response()
            });
        }
    };
    let mut upgraded = None;
    if caught(|| upgraded = Some(handler.upgrade(&req, &mut accepted.response))) {
        stats.failed_handshakes += 1;
        let body = "internal error\n";
        return Answer::Refused(handshake::rejection(StatusCode::INTERNAL_SERVER_ERROR, &http::HeaderMap::new(), body));
    }
    let mut session = match upgraded.expect("set unless it panicked") {
        Ok(s) => Some(s),
        Err(r) => {
            stats.failed_handshakes += 1;
            return Answer::Refused(handshake::rejection(r.status, &r.headers, &r.body));
        }
    };
    let mut out = Vec::new();
    handshake::write_response_head(&accepted.response, &mut out);
    let mut conn = Box::new(Connection::new(Role::Server, Arc::clone(&acceptor.config), now));
    #[cfg(feature = "deflate")]
    if let Some(p) = accepted.deflate {
        conn.set_deflate(p);
    }
    stats.opened += 1;
    with_session(&mut session, &mut Conn { conn: &mut conn, id, generation }, |s, c| handler.on_open(s, c));
    // Frames sent right behind the head.
    if head.len() > used {
        let mut rest = head[used..].to_vec();
        let mut input = &mut rest[..];
        deliver(handler, &mut conn, &mut session, id, generation, &mut input, now, false);
    }
    Answer::Open { head: out, state: State::Open { conn: Held::new(conn), session } }
}

/// An instant in 8 bytes (an `Instant` takes 16): nanoseconds since the first loop was made,
/// plus one. Entries and timers store these, since every connection has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(std::num::NonZeroU64);

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Tick {
    fn epoch() -> Instant {
        *EPOCH.get_or_init(Instant::now)
    }

    fn from(t: Instant) -> Self {
        let ns = u64::try_from(t.saturating_duration_since(Self::epoch()).as_nanos()).unwrap_or(u64::MAX - 1);
        Tick(std::num::NonZeroU64::MIN.saturating_add(ns))
    }

    fn instant(self) -> Instant {
        Self::epoch() + Duration::from_nanos(self.0.get() - 1)
    }
}

/// The loop's timers: at most a few entries per connection (a later timer re-checks and re-arms
/// instead of removing an earlier one), each told apart from a later connection in the same slot
/// by the slot's generation. 16 bytes an entry.
struct Timers {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Tick, u32, u32)>>,
}

impl Timers {
    fn with_capacity(n: usize) -> Self {
        Tick::epoch();
        Self { heap: std::collections::BinaryHeap::with_capacity(n) }
    }

    /// Add a timer for slot `k` at `t` unless `pending` (the slot's earliest) is at least as
    /// early.
    fn schedule(&mut self, pending: &mut Option<Tick>, k: usize, generation: u32, t: Instant) {
        let t = Tick::from(t);
        if pending.is_some_and(|cur| cur <= t) {
            return;
        }
        *pending = Some(t);
        self.heap.push(std::cmp::Reverse((t, slot(k), generation)));
    }

    /// Drop the entries `live` rejects once they outnumber the `open` connections by far (a
    /// connection that closed leaves its entries until they are due, which with "no limit"
    /// deadlines is never).
    fn compact(&mut self, open: usize, live: impl Fn(usize, u32, Tick) -> bool) {
        if self.heap.len() > 2 * open + 1024 {
            self.heap.retain(|std::cmp::Reverse((t, k, generation))| live(*k as usize, *generation, *t));
        }
    }

    /// The earliest timer.
    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|std::cmp::Reverse((t, _, _))| t.instant())
    }

    /// Take a timer due at `now`: its slot, generation and time.
    fn pop_due(&mut self, now: Instant) -> Option<(usize, u32, Tick)> {
        let &std::cmp::Reverse((t, k, generation)) = self.heap.peek()?;
        if t > Tick::from(now) {
            return None;
        }
        self.heap.pop();
        Some((k as usize, generation, t))
    }
}

/// A slab key as the timers keep it (`max_connections` is far below 2³²).
fn slot(k: usize) -> u32 {
    u32::try_from(k).expect("fewer than 2^32 connections per loop")
}

/// Entries a loop reserves room for at once (its slab, its timers), up to a million: address
/// space, not memory — the pages are touched only as connections arrive, where growing by
/// doubling would copy and leave each old copy resident in the allocator (measured: as much
/// again as the slab itself).
fn reserved(config: &LoopConfig) -> usize {
    config.max_connections.min(1 << 20)
}

/// When a loop next looks for connections to store small ([`LoopConfig::idle_after`]).
#[derive(Default)]
struct Sweeps {
    next: Option<Instant>,
}

impl Sweeps {
    /// Whether a pass is due at `now`; the clock runs only while the loop has connections.
    fn due(&mut self, every: Option<Duration>, has_conns: bool, now: Instant) -> bool {
        let Some(every) = every.filter(|_| has_conns) else {
            self.next = None;
            return false;
        };
        match self.next {
            Some(t) if now < t => false,
            Some(_) => {
                self.next = Some(now + every);
                true
            }
            None => {
                self.next = Some(now + every);
                false
            }
        }
    }

    /// When the next pass is due, for the loop's wait.
    fn next(&self) -> Option<Instant> {
        self.next
    }
}

/// `now + d`, or a century from now when that overflows (`Duration::MAX` means "no limit").
fn far(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}
