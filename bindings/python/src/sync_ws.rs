//! The blocking client: a `std::net::TcpStream` (rustls on top for `wss://`) and the sans-IO
//! codec, no runtime. The GIL is released around every call that can block (connect, TLS and
//! WebSocket handshakes, reads, writes), so other Python threads run meanwhile.
//!
//! Two locks: `io` guards the codec and the write side and is only held for short, non-blocking
//! work or while writing; `reader` serialises `recv` callers, which read from their own clone of
//! the socket without holding `io`, so one thread may `send` while another waits in `recv`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use rustix::net::{SendAncillaryBuffer, SendFlags};
use weft_proto::{Connection, Event, Message, Role, SendError};

use crate::common::{self, Ended, Options, handshake_error};

const READ_CHUNK: usize = 64 * 1024;

struct Io {
    conn: Connection,
    tls: Option<rustls::ClientConnection>,
    sock: TcpStream,
    ended: Option<Ended>,
    pings: VecDeque<(Bytes, Instant)>,
    latency: f64,
    /// Pings sent with `ping()`, and how many of them were answered (a pong answers its
    /// ping and every earlier one).
    pings_sent: u64,
    pings_acked: u64,
    /// Write coalescing: a `send` within `BURST` of the previous write, with no `recv` in
    /// between, is framed but not written ("corked"); the burst goes out in vectored writes
    /// at the next `recv`, when `CORK_LIMIT` bytes are framed, or at the latest after
    /// `FLUSH_DELAY`, from the flusher thread.
    corked: bool,
    corked_bytes: usize,
    last_write: Option<Instant>,
    /// Data messages the keep-alive thread read while the application was not receiving
    /// (at most its `max_queue`), handed out first by the next `recv`.
    held: VecDeque<Message>,
    /// The codec's latest keep-alive ping and when it went out, until its pong (`latency`).
    keepalive_sent: Option<(Bytes, Instant)>,
}

/// Sends closer together than this (with no `recv` in between) are coalesced.
const BURST: Duration = Duration::from_micros(50);
/// A burst is written at once when this much is framed.
const CORK_LIMIT: usize = 256 * 1024;
/// The longest a corked burst waits when the application neither sends nor receives.
const FLUSH_DELAY: Duration = Duration::from_micros(200);

/// The flusher: one thread per process, writing out bursts nobody else flushed in time. A
/// child made by `fork` (multiprocessing) has no such thread, so it starts its own.
type FlushQueue = mpsc::Sender<Weak<Mutex<Io>>>;

fn flush_later(io: Weak<Mutex<Io>>) {
    /// The flusher's queue, and the process it was started in.
    static FLUSHER: Mutex<Option<(u32, FlushQueue)>> = Mutex::new(None);
    let mut guard = FLUSHER.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.as_ref().is_none_or(|(p, _)| *p != pid) {
        let (tx, rx) = mpsc::channel::<Weak<Mutex<Io>>>();
        std::thread::Builder::new().name("weft-flush".into()).spawn(move || run_flusher(rx)).expect("spawn weft-flush");
        *guard = Some((pid, tx));
    }
    if let Some((_, tx)) = guard.as_ref() {
        let _ = tx.send(io);
    }
}

fn run_flusher(rx: mpsc::Receiver<Weak<Mutex<Io>>>) {
    // Connections whose socket was full at the last try; retried every millisecond.
    let mut waiting: Vec<Weak<Mutex<Io>>> = Vec::new();
    loop {
        let first = if waiting.is_empty() {
            match rx.recv() {
                Ok(w) => Some(w),
                Err(_) => return,
            }
        } else {
            rx.recv_timeout(Duration::from_millis(1)).ok()
        };
        std::thread::sleep(FLUSH_DELAY);
        waiting.extend(first);
        waiting.extend(rx.try_iter());
        waiting.retain(|w| {
            let Some(io) = w.upgrade() else { return false };
            let mut io = io.lock().unwrap_or_else(|e| e.into_inner());
            if !io.corked {
                return false;
            }
            match io.try_flush() {
                Ok(done) => !done,
                Err(_) => {
                    io.finish(Ended::reset());
                    false
                }
            }
        });
    }
}

/// Whether the socket's read timeout must change before waiting `wanted`: a `setsockopt` per
/// read cost ~1 µs of every round trip (measured), so a timeout that is at most `SLACK` too
/// long or less than twice too short is kept (waking early just loops once more).
fn timeout_needs_update(current: Option<Duration>, wanted: Option<Duration>) -> bool {
    const SLACK: Duration = Duration::from_millis(2);
    match (current, wanted) {
        (None, None) => false,
        (None, Some(_)) => true,
        (Some(c), None) => c < Duration::from_secs(1),
        (Some(c), Some(w)) => c > w + SLACK || c < w / 2,
    }
}

struct Reader {
    sock: TcpStream,
    buf: Box<[u8]>,
    timeout: Option<Duration>,
}

/// What the keep-alive thread knows of the application's `recv`.
#[derive(Default)]
struct Activity {
    /// `recv` calls running.
    receiving: AtomicU64,
    /// `recv` calls so far.
    calls: AtomicU64,
}

/// How long the application must have stayed out of `recv` before the keep-alive thread
/// reads for it (an application that receives runs the timers and answers pings itself).
const KEEPER_GRACE: Duration = Duration::from_millis(20);
/// The longest the keep-alive thread waits for bytes before it looks again at the connection
/// (dropped? ended?); `Drop` also shuts the socket down, which wakes it at once.
const KEEPER_IDLE_WAIT: Duration = Duration::from_millis(250);

/// The keep-alive thread of one connection (`keepalive_thread=True`): while the application
/// is not receiving, it answers pings, sends the keep-alive pings and reads their pongs (and
/// closes with 1011 when one does not come), reading data messages ahead into `Io::held`, at
/// most `max_queue` of them: then it stops reading, as websockets' reader does, so TCP pushes
/// back on the server. It never waits for the reader lock (the application's `recv` holds it
/// while it waits for bytes), holds the `io` lock only for work that does not block (its
/// writes take what the socket takes at once), and ends with the connection.
fn keeper(io: Weak<Mutex<Io>>, reader: Weak<Mutex<Reader>>, activity: Arc<Activity>, max_queue: usize) {
    let mut calls = activity.calls.load(Ordering::Acquire);
    // Its own descriptor of the socket, to wait on without any lock.
    let Some(fd) = io.upgrade().and_then(|io| io.lock().unwrap_or_else(|e| e.into_inner()).sock.try_clone().ok())
    else {
        return;
    };
    let receiving =
        |calls: u64| activity.receiving.load(Ordering::Acquire) > 0 || activity.calls.load(Ordering::Acquire) != calls;
    loop {
        let (deadline, room) = {
            let Some(io) = io.upgrade() else { return };
            let io = io.lock().unwrap_or_else(|e| e.into_inner());
            if io.ended.is_some() {
                return;
            }
            (io.conn.poll_timeout(), io.held.len() < max_queue)
        };
        if receiving(calls) {
            // The application receives: it does all of this itself.
            calls = activity.calls.load(Ordering::Acquire);
            std::thread::sleep(KEEPER_GRACE);
            continue;
        }
        let wait =
            deadline.map_or(KEEPER_IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()).min(KEEPER_IDLE_WAIT));
        if !wait.is_zero() {
            if room {
                // Wake for bytes (a ping to answer, a pong), the next timer, or the end.
                let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                let timeout = rustix::event::Timespec::try_from(wait).ok();
                let _ = rustix::event::poll(&mut fds, timeout.as_ref());
            } else {
                std::thread::sleep(wait);
            }
        }
        if receiving(calls) {
            continue; // it came back meanwhile: the bytes are its own
        }
        let (Some(io), Some(reader)) = (io.upgrade(), reader.upgrade()) else { return };
        let Ok(mut reader) = reader.try_lock() else {
            // A `recv` is about to start or has just ended.
            std::thread::sleep(KEEPER_GRACE);
            continue;
        };
        let mut io = io.lock().unwrap_or_else(|e| e.into_inner());
        let io = &mut *io;
        let r = &mut *reader;
        let mut room = io.held.len() < max_queue;
        while room && io.ended.is_none() {
            // One read of what is there (the whole buffer filled: read again).
            let more = match rustix::net::recv(&r.sock, &mut r.buf[..], rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    io.conn.handle_eof();
                    false
                }
                Ok((n, _)) => {
                    if io.feed(&r.buf[..n], Instant::now()).is_err() {
                        io.end(Ended { code: 1006, reason: "TLS: invalid data".into(), ok: false }, true);
                    }
                    n == r.buf.len()
                }
                Err(rustix::io::Errno::INTR) => true,
                Err(rustix::io::Errno::AGAIN) => false,
                Err(_) => {
                    io.conn.handle_eof();
                    false
                }
            };
            // Events in order: pongs noted, pings answered, data messages kept.
            room = io.pump(max_queue);
            if !more {
                break;
            }
        }
        let now = Instant::now();
        if io.ended.is_none() && io.conn.poll_timeout().is_some_and(|t| t <= now) {
            // A keep-alive ping is due, or its pong is late (then the codec closes: 1011).
            io.run_timers(now);
            io.pump(max_queue);
        }
        if io.ended.is_none() && io.conn.has_transmit() && io.try_flush().is_err() {
            io.end(Ended::reset(), true);
        }
    }
}

/// A connected client WebSocket (blocking). Made by `weft.sync_client.connect`.
#[pyclass(module = "weft._weft", name = "WebSocket")]
pub(crate) struct WebSocket {
    io: Arc<Mutex<Io>>,
    reader: Arc<Mutex<Reader>>,
    activity: Arc<Activity>,
    /// A keep-alive thread runs (with its own descriptor of the socket).
    keeper: bool,
    receive_timeout: Option<Duration>,
    subprotocol: Option<String>,
    response_headers: Vec<(String, String)>,
    url: String,
}

fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            // Held by a thread that may be blocked in a write: wait for it without the GIL.
            Err(TryLockError::WouldBlock) => py.detach(|| drop(m.lock())),
        }
    }
}

/// The Python exception for an I/O error: `TimeoutError` for timeouts, else the matching
/// `OSError` subclass (`ConnectionRefusedError`, `ConnectionResetError`, ...).
fn os_error(e: &io::Error) -> PyErr {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PyTimeoutError::new_err(e.to_string()),
        _ => PyErr::from(io::Error::new(e.kind(), e.to_string())),
    }
}

/// Run a blocking socket call (without the GIL), retrying when a signal interrupts it unless
/// a Python signal handler raised (e.g. `KeyboardInterrupt`), which then propagates.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>, map: impl Fn(io::Error) -> PyErr) -> PyResult<T> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Python::attach(|py| py.check_signals())?,
            Err(e) => return Err(map(e)),
        }
    }
}

/// A `Write` over the socket: `nowait` sends with `MSG_DONTWAIT` (never blocks; `WouldBlock`
/// when the socket buffer is full), otherwise a plain blocking send.
struct SockWriter<'a> {
    sock: &'a TcpStream,
    nowait: bool,
}

impl SockWriter<'_> {
    fn flags(&self) -> SendFlags {
        if self.nowait { SendFlags::DONTWAIT | SendFlags::NOSIGNAL } else { SendFlags::NOSIGNAL }
    }
}

impl Write for SockWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(self.sock, buf, self.flags())?)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut control = SendAncillaryBuffer::default();
        Ok(rustix::net::sendmsg(self.sock, bufs, &mut control, self.flags())?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Io {
    /// Write everything the codec has queued (through TLS when there is TLS). Blocks until
    /// done; call without the GIL.
    fn flush(&mut self) -> io::Result<()> {
        self.write_out(false).map(|_| ())
    }

    /// Write what the socket takes without blocking; `Ok(true)` when everything went out.
    /// Lets `send` skip releasing the GIL in the usual case of a socket with room.
    fn try_flush(&mut self) -> io::Result<bool> {
        match self.write_out(true) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            r => r,
        }
    }

    fn write_out(&mut self, nowait: bool) -> io::Result<bool> {
        let mut w = SockWriter { sock: &self.sock, nowait };
        while self.conn.has_transmit() {
            match &mut self.tls {
                None => {
                    let written = {
                        let mut slices = [IoSlice::new(&[]); 128];
                        let n = self.conn.transmit_slices(&mut slices);
                        match w.write_vectored(&slices[..n]) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            r => r?,
                        }
                    };
                    if written == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    self.conn.advance_transmit(written);
                }
                Some(tls) => {
                    // rustls buffers a limited amount of plaintext (64 KiB): hand it what it
                    // takes, and when it takes nothing, write its records to the socket first.
                    let taken = {
                        let mut slices = [IoSlice::new(&[]); 128];
                        let n = self.conn.transmit_slices(&mut slices);
                        tls.writer().write_vectored(&slices[..n])?
                    };
                    if taken > 0 {
                        self.conn.advance_transmit(taken);
                        continue;
                    }
                    if !tls.wants_write() {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    while tls.wants_write() {
                        match tls.write_tls(&mut w) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            r => {
                                r?;
                            }
                        }
                    }
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut w) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => {
                        r?;
                    }
                }
            }
        }
        self.corked = false;
        self.corked_bytes = 0;
        Ok(true)
    }

    /// Hand bytes read from the socket to the codec (decrypting first with TLS).
    fn feed(&mut self, mut data: &[u8], now: Instant) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            self.conn.handle_read(data, now);
            return Ok(());
        };
        while !data.is_empty() {
            tls.read_tls(&mut data)?;
            let state = tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut plain = state.plaintext_bytes_to_read();
            while plain > 0 {
                let buf = self.conn.read_buffer();
                let start = buf.len();
                buf.resize(start + plain, 0);
                let n = tls.reader().read(&mut buf[start..])?;
                buf.truncate(start + n);
                self.conn.handle_input(now);
                if n == 0 {
                    break;
                }
                plain -= n;
            }
            if state.peer_has_closed() {
                self.conn.handle_eof();
            }
        }
        Ok(())
    }

    /// Hand the codec's events over (keep-alive thread): data messages into `held` while it
    /// has fewer than `max_queue`; whether it still has room.
    fn pump(&mut self, max_queue: usize) -> bool {
        while self.held.len() < max_queue {
            match self.poll_message(true) {
                Ok(Some(m)) => self.held.push_back(m),
                Ok(None) | Err(_) => return true,
            }
        }
        false
    }

    /// Run the codec's due timers: a keep-alive ping (noted, for `latency`), or the end of a
    /// connection whose pong did not come (1011).
    fn run_timers(&mut self, now: Instant) {
        let before = self.conn.keepalive_ping().map(Bytes::copy_from_slice);
        self.conn.handle_timeout(now);
        if let Some(p) = self.conn.keepalive_ping().filter(|p| before.as_deref() != Some(*p)) {
            self.keepalive_sent = Some((Bytes::copy_from_slice(p), now));
        }
    }

    fn finish(&mut self, ended: Ended) -> Ended {
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
        self.ended.get_or_insert(ended).clone()
    }

    /// The next data message (one the keep-alive thread read first), or `Err(ended)` once the
    /// connection is over; `Ok(None)` when more input is needed.
    fn next_message(&mut self) -> Result<Option<Message>, Ended> {
        match self.held.pop_front() {
            Some(m) => Ok(Some(m)),
            None => self.poll_message(false),
        }
    }

    /// The next data message the codec has, or `Err(ended)` once the connection is over;
    /// `Ok(None)` when more input is needed. Pongs update the latency; pings and closes are
    /// answered by the codec.
    ///
    /// With `nowait` (the keep-alive thread), answers are written only as far as the socket
    /// takes them without blocking.
    fn poll_message(&mut self, nowait: bool) -> Result<Option<Message>, Ended> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        let mut result = Ok(None);
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Message(m) if m.is_data() => {
                    result = Ok(Some(m));
                    break;
                }
                Event::Message(Message::Ping(_)) => {
                    // The codec keeps only the latest ping's pong pending; queue this one now
                    // so every ping is answered, in order (written below, before the next read).
                    self.conn.transmit_slices(&mut []);
                }
                Event::Message(Message::Pong(payload)) => {
                    if self.keepalive_sent.as_ref().is_some_and(|(p, _)| *p == payload) {
                        // The answer to the codec's keep-alive ping.
                        let (_, sent) = self.keepalive_sent.take().expect("checked");
                        self.latency = sent.elapsed().as_secs_f64();
                    } else if let Some(i) = self.pings.iter().position(|(p, _)| *p == payload) {
                        let (_, sent) = self.pings.remove(i).expect("index from position");
                        self.latency = sent.elapsed().as_secs_f64();
                        self.pings.drain(..i);
                        self.pings_acked = self.pings_sent - self.pings.len() as u64;
                    }
                }
                Event::Closed(e) => {
                    result = Err(self.end(Ended::from_error(&e), nowait));
                    break;
                }
                _ => {}
            }
        }
        if self.conn.has_transmit() {
            let written = if nowait { self.try_flush().map(|_| ()) } else { self.flush() };
            if written.is_err() {
                return Err(self.end(Ended::reset(), nowait));
            }
        }
        result
    }

    /// [`finish`](Self::finish), or with `nowait` its version that never blocks: what the
    /// socket does not take at once is dropped with the connection.
    fn end(&mut self, ended: Ended, nowait: bool) -> Ended {
        if !nowait {
            return self.finish(ended);
        }
        let _ = self.try_flush();
        let _ = self.sock.shutdown(Shutdown::Both);
        self.ended.get_or_insert(ended).clone()
    }
}

fn send_error(py: Python<'_>, io: &mut Io, e: SendError) -> PyErr {
    match e {
        SendError::Closed => io.ended.clone().unwrap_or_else(Ended::reset).to_err(py),
        other => pyo3::exceptions::PyValueError::new_err(other.to_string()),
    }
}

impl WebSocket {
    fn handshake(
        opts: &Options,
        connect_timeout: Option<Duration>,
        nodelay: bool,
        given: Option<TcpStream>,
        ca_certs: Option<&[Vec<u8>]>,
    ) -> PyResult<(Io, Reader, HandshakeDone)> {
        let (host, port, tls) = opts.target()?;
        let deadline = connect_timeout.map(|t| Instant::now() + t);
        let remaining = || deadline.map(|d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        let timed_out = || PyTimeoutError::new_err(format!("connecting to {host}:{port} timed out"));
        let addrs: Vec<_> = match given {
            Some(_) => Vec::new(),
            None => (host.as_str(), port).to_socket_addrs().map_err(|e| os_error(&e))?.collect(),
        };
        let mut last_err = None;
        let mut sock = given;
        for addr in addrs {
            let r = match remaining() {
                Some(t) => TcpStream::connect_timeout(&addr, t),
                None => TcpStream::connect(addr),
            };
            match r {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let sock = match sock {
            Some(s) => s,
            None => {
                let e = last_err.unwrap_or_else(|| io::Error::other(format!("{host} resolved to no address")));
                return Err(if e.kind() == io::ErrorKind::TimedOut { timed_out() } else { os_error(&e) });
            }
        };
        // A given Unix stream socket (`sock=`) has no TCP_NODELAY: EOPNOTSUPP, nothing to set.
        match sock.set_nodelay(nodelay) {
            Err(e) if e.kind() != io::ErrorKind::Unsupported => return Err(os_error(&e)),
            _ => {}
        }
        let io_err = |e: io::Error| if e.kind() == io::ErrorKind::WouldBlock { timed_out() } else { os_error(&e) };
        // One deadline for the whole opening: before each wait the socket's timeouts are set to
        // what is left of it (a server that drips its TLS handshake or its answer a byte at a
        // time cannot stretch it), and a deadline already past is a timeout.
        let rearm = |s: &TcpStream| -> PyResult<()> {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out());
            }
            s.set_read_timeout(remaining()).map_err(io_err)?;
            s.set_write_timeout(remaining()).map_err(io_err)
        };
        rearm(&sock)?;
        let mut tls_conn = if tls {
            let cfg = crate::tls::client_config(opts.ca_file.as_deref(), ca_certs)?;
            let name = opts.server_hostname.clone().unwrap_or_else(|| host.clone());
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| common::invalid_uri(&format!("invalid server name: {e}")))?;
            let mut c =
                rustls::ClientConnection::new(cfg, name).map_err(|e| crate::tls::tls_error(format!("TLS: {e}")))?;
            let mut s = &sock;
            while c.is_handshaking() {
                rearm(&sock)?;
                retry(
                    || c.complete_io(&mut s),
                    |e| match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
                        io::ErrorKind::InvalidData => Python::attach(|py| {
                            PyErr::from_type(common::exception(py, "InvalidHandshake"), format!("TLS: {e}"))
                        }),
                        _ => os_error(&e),
                    },
                )?;
            }
            Some(c)
        } else {
            None
        };
        let mut hs = opts.handshake()?;
        let mut io = Io {
            conn: Connection::new(Role::Client, opts.config(true), Instant::now()),
            tls: tls_conn.take(),
            sock: sock.try_clone().map_err(|e| os_error(&e))?,
            ended: None,
            pings: VecDeque::new(),
            latency: 0.0,
            pings_sent: 0,
            pings_acked: 0,
            corked: false,
            corked_bytes: 0,
            last_write: None,
            held: VecDeque::new(),
            keepalive_sent: None,
        };
        // Write the request, then read until the response head is complete.
        match &mut io.tls {
            None => (&io.sock).write_all(hs.request()).map_err(io_err)?,
            Some(t) => {
                t.writer().write_all(hs.request()).map_err(io_err)?;
                while t.wants_write() {
                    t.write_tls(&mut io.sock).map_err(io_err)?;
                }
            }
        }
        let mut reader = Reader { sock, buf: vec![0; READ_CHUNK].into_boxed_slice(), timeout: None };
        let mut plain = Vec::new();
        let done = loop {
            // What arrives goes to the sans-IO handshake; 0 means the server closed the connection.
            plain.clear();
            rearm(&reader.sock)?;
            let n = match &mut io.tls {
                None => {
                    let n = retry(|| reader.sock.read(&mut reader.buf), io_err)?;
                    plain.extend_from_slice(&reader.buf[..n]);
                    n
                }
                Some(t) => {
                    let n = retry(|| t.read_tls(&mut reader.sock), io_err)?;
                    let state = t.process_new_packets().map_err(|e| crate::tls::tls_error(format!("TLS: {e}")))?;
                    plain.resize(state.plaintext_bytes_to_read(), 0);
                    t.reader().read_exact(&mut plain).map_err(io_err)?;
                    n
                }
            };
            if n == 0 {
                return Err(handshake_error(None, &hs.closed()));
            }
            match hs.feed(&plain) {
                Ok(None) => {}
                Ok(Some(done)) => break done,
                Err(f) => return Err(common::feed_error(&f, &plain)),
            }
        };
        let (resp, negotiated) = (done.response, done.negotiated);
        if let Some(params) = negotiated.deflate {
            io.conn.set_deflate(params);
        }
        if !done.rest.is_empty() {
            io.conn.handle_read(&done.rest, Instant::now());
        }
        io.sock.set_write_timeout(None).map_err(|e| os_error(&e))?;
        reader.sock.set_read_timeout(None).map_err(|e| os_error(&e))?;
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Ok((io, reader, HandshakeDone { subprotocol: negotiated.subprotocol, headers }))
    }

    /// Block (without the GIL) until a data message, the end of the connection, or `timeout`.
    fn recv_inner(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Py<PyAny>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let _receiving = Receiving::new(&self.activity);
        let mut reader = lock(py, &self.reader);
        {
            // Write out a coalesced burst before waiting for its answers.
            let mut io = lock(py, &self.io);
            io.last_write = None;
            if io.corked {
                let io = &mut *io;
                let written = match io.try_flush() {
                    Ok(true) => Ok(()),
                    Ok(false) => py.detach(|| io.flush()),
                    Err(e) => Err(e),
                };
                if written.is_err() {
                    return Err(io.finish(Ended::reset()).to_err(py));
                }
            }
        }
        loop {
            let wait = {
                let mut io = lock(py, &self.io);
                match io.next_message() {
                    Ok(Some(m)) => return Ok(common::to_python(py, &m).expect("data message")),
                    Err(ended) => return Err(ended.to_err(py)),
                    Ok(None) => {}
                }
                let now = Instant::now();
                let timer = io.conn.poll_timeout();
                if let Some(t) = timer.filter(|t| *t <= now) {
                    io.run_timers(t.max(now));
                    continue;
                }
                if let Some(d) = deadline.filter(|d| *d <= now) {
                    let _ = d;
                    return Err(PyTimeoutError::new_err("no message received within the receive timeout"));
                }
                [timer, deadline].into_iter().flatten().min().map(|t| t.saturating_duration_since(now))
            };
            let wait = wait.map(|w| w.max(Duration::from_millis(1)));
            let r = &mut *reader;
            let got = py.detach(|| {
                if timeout_needs_update(r.timeout, wait) {
                    r.sock.set_read_timeout(wait)?;
                    r.timeout = wait;
                }
                r.sock.read(&mut r.buf)
            });
            let mut io = lock(py, &self.io);
            match got {
                Ok(0) => {
                    io.conn.handle_eof();
                }
                Ok(n) => {
                    if let Err(e) = io.feed(&r.buf[..n], Instant::now()) {
                        let ended = io.finish(Ended { code: 1006, reason: format!("TLS: {e}"), ok: false });
                        return Err(ended.to_err(py));
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    drop(io);
                    py.check_signals()?;
                }
                Err(_) => {
                    io.conn.handle_eof();
                }
            }
        }
    }
}

impl Drop for WebSocket {
    fn drop(&mut self) {
        if self.keeper {
            // The keep-alive thread's own descriptor would keep the connection open until it
            // looks again: end it now (the peer sees the same as a close of the socket), which
            // also wakes the thread, which then ends.
            let io = self.io.lock().unwrap_or_else(|e| e.into_inner());
            let _ = io.sock.shutdown(Shutdown::Both);
        }
    }
}

/// Marks a `recv` as running for the keep-alive thread, until dropped.
struct Receiving<'a>(&'a Activity);

impl<'a> Receiving<'a> {
    fn new(a: &'a Activity) -> Self {
        a.calls.fetch_add(1, Ordering::AcqRel);
        a.receiving.fetch_add(1, Ordering::AcqRel);
        Receiving(a)
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

struct HandshakeDone {
    subprotocol: Option<String>,
    headers: Vec<(String, String)>,
}

/// Open a WebSocket connection (blocking) and return a `WebSocket`.
#[pyfunction]
#[pyo3(signature = (
    url, connect_timeout = Some(30.0), receive_timeout = Some(30.0), *, headers = None,
    subprotocols = None, compression = false, max_size = Some(64 << 20), ping_interval = None,
    ping_timeout = Some(20.0), close_timeout = Some(10.0), ca_file = None, server_hostname = None,
    tcp_nodelay = true, sock = None, ca_certs = None, keepalive_thread = false, max_queue = 16
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn connect(
    py: Python<'_>,
    url: &str,
    connect_timeout: Option<f64>,
    receive_timeout: Option<f64>,
    headers: Option<&Bound<'_, PyAny>>,
    subprotocols: Option<Vec<String>>,
    compression: bool,
    max_size: Option<usize>,
    ping_interval: Option<f64>,
    ping_timeout: Option<f64>,
    close_timeout: Option<f64>,
    ca_file: Option<String>,
    server_hostname: Option<String>,
    tcp_nodelay: bool,
    sock: Option<std::os::fd::RawFd>,
    ca_certs: Option<Vec<Vec<u8>>>,
    keepalive_thread: bool,
    max_queue: usize,
) -> PyResult<WebSocket> {
    // `sock`: a connected stream socket's descriptor, whose ownership passes to this
    // connection (Python hands it over with `socket.detach()`).
    let given = match sock {
        None => None,
        Some(fd) if fd >= 0 => {
            use std::os::fd::FromRawFd;
            // The one unsafe block of the bindings: taking ownership of a descriptor across FFI
            // has no safe form in std.
            // SAFETY: the caller detached `fd` from its Python socket object, so nothing else
            // owns or closes it; TcpStream takes over closing it.
            #[allow(unsafe_code)]
            Some(unsafe { TcpStream::from_raw_fd(fd) })
        }
        Some(fd) => return Err(pyo3::exceptions::PyValueError::new_err(format!("invalid socket descriptor {fd}"))),
    };
    let opts = Options::new(
        url,
        headers,
        subprotocols,
        compression,
        max_size,
        ping_interval,
        ping_timeout,
        close_timeout,
        ca_file,
        server_hostname,
    )?;
    let to = |name: &str, v: Option<f64>| -> PyResult<Option<Duration>> {
        match v {
            None => Ok(None),
            Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(pyo3::exceptions::PyValueError::new_err(format!("{name} must be positive, not {s}"))),
        }
    };
    let connect_timeout = to("connect_timeout", connect_timeout)?;
    let receive_timeout = to("receive_timeout", receive_timeout)?;
    let (io, reader, done) =
        py.detach(|| WebSocket::handshake(&opts, connect_timeout, tcp_nodelay, given, ca_certs.as_deref()))?;
    let io = Arc::new(Mutex::new(io));
    let reader = Arc::new(Mutex::new(reader));
    let activity = Arc::new(Activity::default());
    if keepalive_thread {
        let (w_io, w_reader, a) = (Arc::downgrade(&io), Arc::downgrade(&reader), Arc::clone(&activity));
        std::thread::Builder::new()
            .name("weft-keepalive".into())
            .stack_size(128 << 10)
            .spawn(move || keeper(w_io, w_reader, a, max_queue.max(1)))
            .map_err(|e| PyErr::from(io::Error::new(e.kind(), format!("starting the keep-alive thread: {e}"))))?;
    }
    Ok(WebSocket {
        io,
        reader,
        activity,
        keeper: keepalive_thread,
        receive_timeout,
        subprotocol: done.subprotocol,
        response_headers: done.headers,
        url: url.to_owned(),
    })
}

#[pymethods]
impl WebSocket {
    /// Send `message`: `str` as a text message, bytes-like as a binary message.
    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut io = lock(py, &self.io);
        let len = match common::send_python(&mut io.conn, message)? {
            Ok(n) => n,
            Err(e) => return Err(send_error(py, &mut io, e)),
        };
        let io = &mut *io;
        let now = Instant::now();
        if io.corked {
            io.corked_bytes += len;
            if io.corked_bytes < CORK_LIMIT {
                return Ok(());
            }
        } else if io.last_write.is_some_and(|t| now.duration_since(t) < BURST) {
            io.corked = true;
            io.corked_bytes = len;
            flush_later(Arc::downgrade(&self.io));
            return Ok(());
        }
        io.last_write = Some(now);
        let written = match io.try_flush() {
            Ok(true) => Ok(()),
            // The socket buffer is full: wait for room without the GIL.
            Ok(false) => py.detach(|| io.flush()),
            Err(e) => Err(e),
        };
        written.map_err(|_| io.finish(Ended::reset()).to_err(py))
    }

    /// Receive the next message: `str` for text, `bytes` for binary. Waits at most `timeout`
    /// seconds (default: the connection's `receive_timeout`; `None` there waits forever) and
    /// raises `TimeoutError`, leaving the connection usable.
    #[pyo3(signature = (timeout = None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let t = match timeout {
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => return Err(pyo3::exceptions::PyValueError::new_err(format!("timeout must be >= 0, not {s}"))),
            None => self.receive_timeout,
        };
        self.recv_inner(py, t)
    }

    /// Send a ping with `data` (at most 125 bytes); `latency` is updated when its pong arrives.
    #[pyo3(signature = (data = None))]
    fn ping(&self, py: Python<'_>, data: Option<&[u8]>) -> PyResult<()> {
        let payload = match data {
            Some(d) => Bytes::copy_from_slice(d),
            None => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Bytes::copy_from_slice(&(nanos.as_nanos() as u64).to_be_bytes())
            }
        };
        let mut io = lock(py, &self.io);
        if let Err(e) = io.conn.send(Message::Ping(payload.clone())) {
            return Err(send_error(py, &mut io, e));
        }
        io.pings.push_back((payload, Instant::now()));
        io.pings_sent += 1;
        let io = &mut *io;
        py.detach(|| io.flush()).map_err(|_| io.finish(Ended::reset()).to_err(py))
    }

    /// Close the connection with `code` and `reason` and wait (at most `close_timeout`) for the
    /// server's answer. Closing a closed connection does nothing.
    #[pyo3(signature = (code = 1000, reason = ""))]
    fn close(&self, py: Python<'_>, code: u16, reason: &str) -> PyResult<()> {
        let frame = common::close_frame(code, reason)?;
        {
            let mut io = lock(py, &self.io);
            if io.ended.is_some() {
                return Ok(());
            }
            match io.conn.close(frame) {
                Ok(()) => {}
                Err(SendError::Closed) => {}
                Err(e) => return Err(pyo3::exceptions::PyValueError::new_err(e.to_string())),
            }
            let io = &mut *io;
            if py.detach(|| io.flush()).is_err() {
                io.finish(Ended::reset());
                return Ok(());
            }
        }
        // Read until the close handshake completes (the codec's close timer bounds the wait).
        loop {
            match self.recv_inner(py, None) {
                Ok(_) => continue,
                Err(e) if e.is_instance_of::<PyTimeoutError>(py) => {
                    lock(py, &self.io).finish(Ended::reset());
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        }
    }

    /// The subprotocol the server selected, or `None`.
    #[getter]
    fn subprotocol(&self) -> Option<String> {
        self.subprotocol.clone()
    }

    /// Headers of the server's handshake response, as (name, value) pairs.
    #[getter]
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.clone()
    }

    /// The URL this connection was opened with.
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Close code once the connection has ended, else `None`.
    #[getter]
    fn close_code(&self, py: Python<'_>) -> Option<u16> {
        lock(py, &self.io).ended.as_ref().map(|e| e.code)
    }

    /// Close reason once the connection has ended, else `None`.
    #[getter]
    fn close_reason(&self, py: Python<'_>) -> Option<String> {
        lock(py, &self.io).ended.as_ref().map(|e| e.reason.clone())
    }

    /// Whether the connection has ended.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        lock(py, &self.io).ended.is_some()
    }

    /// Whether the connection is open (data can still be sent).
    #[getter]
    fn open(&self, py: Python<'_>) -> bool {
        let io = lock(py, &self.io);
        io.ended.is_none() && !io.conn.is_closing()
    }

    /// `(host, port)` of our end of the socket.
    #[getter]
    fn local_address(&self, py: Python<'_>) -> Option<(String, u16)> {
        lock(py, &self.io).sock.local_addr().ok().map(|a| (a.ip().to_string(), a.port()))
    }

    /// `(host, port)` of the server's end of the socket.
    #[getter]
    fn remote_address(&self, py: Python<'_>) -> Option<(String, u16)> {
        lock(py, &self.io).sock.peer_addr().ok().map(|a| (a.ip().to_string(), a.port()))
    }

    /// Send an unsolicited pong with `data` (at most 125 bytes).
    #[pyo3(signature = (data = None))]
    fn pong(&self, py: Python<'_>, data: Option<&[u8]>) -> PyResult<()> {
        let mut io = lock(py, &self.io);
        let payload = Bytes::copy_from_slice(data.unwrap_or_default());
        if let Err(e) = io.conn.send(Message::Pong(payload)) {
            return Err(send_error(py, &mut io, e));
        }
        let io = &mut *io;
        py.detach(|| io.flush()).map_err(|_| io.finish(Ended::reset()).to_err(py))
    }

    /// Round-trip time of the last answered ping, in seconds (0.0 before any).
    /// How many pings `ping()` has sent, and how many of them a pong has answered (pongs are
    /// read while `recv` runs).
    #[getter]
    fn ping_counts(&self, py: Python<'_>) -> (u64, u64) {
        let io = lock(py, &self.io);
        (io.pings_sent, io.pings_acked)
    }

    #[getter]
    fn latency(&self, py: Python<'_>) -> f64 {
        lock(py, &self.io).latency
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py, 1000, "")?;
        Ok(false)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Iteration yields messages until a normal close (1000/1001) and raises
    /// `ConnectionClosedError` on any other end. Each step waits at most `receive_timeout`
    /// (then `TimeoutError`, as `recv()`).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.recv_inner(py, self.receive_timeout) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_instance(py, &common::exception(py, "ConnectionClosedOK")) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = if lock(py, &self.io).ended.is_some() { "closed" } else { "open" };
        format!("<weft.sync_client.WebSocket {} {state}>", self.url)
    }
}
