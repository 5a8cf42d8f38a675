//! The epoll backend (through mio): readiness, one `read` into the loop's buffer, one
//! vectored `write` per connection per loop turn.

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use weft_proto::{CloseCode, CloseFrame, ConnectionError};

use super::{
    Fired, Handler, IOV, LoopConfig, LoopHandle, LoopStats, READS_PER_TURN, State, Sweeps, Tick, Timers, Wakes,
    deliver, drain_events, end_session, far, fire,
};
use crate::Acceptor;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

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
    linger: Option<Tick>,
    /// Queued in `ready` for this turn.
    queued: bool,
    /// The timer this entry has in the heap, if any.
    timer: Option<Tick>,
    /// Told apart from a later connection in the same slot.
    generation: u32,
}

/// One epoll loop: a listener and the connections it accepted.
pub(super) struct Loop<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    acceptor: Acceptor,
    config: LoopConfig,
    pub(super) handler: H,
    conns: Slab<Entry<H::Session>>,
    rbuf: Vec<u8>,
    ready: Vec<usize>,
    timers: Timers,
    generation: u32,
    handshakes: usize,
    stats: LoopStats,
    stop: Arc<AtomicBool>,
    fail: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// Connections woken through their [`Conn::waker`](super::Conn::waker).
    wakes: Arc<Wakes>,
    woken: Vec<(usize, u32)>,
    stopping: Option<Instant>,
    accept_retry: Option<Instant>,
    sweeps: Sweeps,
}

impl<H: Handler> Loop<H> {
    pub(super) fn new(
        listener: std::net::TcpListener,
        acceptor: Acceptor,
        config: LoopConfig,
        handler: H,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let signal = Arc::clone(&waker);
        let wakes = Wakes::new(Arc::new(move || {
            let _ = signal.wake();
        }));
        let reserve = super::reserved(&config);
        Ok(Self {
            poll,
            listener: Some(listener),
            acceptor,
            // Non-zero, so filled and not only allocated: resident from the start, as the loop's
            // fixed memory.
            rbuf: vec![1; config.read_buffer_size.max(4096)],
            config,
            handler,
            conns: Slab::with_capacity(reserve),
            ready: Vec::new(),
            timers: Timers::with_capacity(reserve),
            generation: 0,
            handshakes: 0,
            stats: LoopStats::default(),
            stop: Arc::new(AtomicBool::new(false)),
            fail: Arc::default(),
            waker,
            wakes,
            woken: Vec::new(),
            stopping: None,
            accept_retry: None,
            sweeps: Sweeps::default(),
        })
    }

    pub(super) fn stop_handle(&self) -> LoopHandle {
        let waker = Arc::clone(&self.waker);
        LoopHandle {
            stop: Arc::clone(&self.stop),
            fail: Arc::clone(&self.fail),
            wake: Arc::new(move || {
                let _ = waker.wake();
            }),
        }
    }

    pub(super) fn stats(&self) -> LoopStats {
        LoopStats { open: self.conns.len() as u64, ..self.stats }
    }

    pub(super) fn run(&mut self) -> io::Result<()> {
        let _here = super::OnThisThread::enter(&self.wakes);
        let r = self.turns();
        if r.is_err() {
            // The loop is failing: every connection ends (its handler told, its socket closed).
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for k in keys {
                self.remove(k);
            }
        }
        r
    }

    fn turns(&mut self) -> io::Result<()> {
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
            let timeout = if !self.ready.is_empty() || !self.wakes.is_empty() {
                Some(Duration::ZERO)
            } else {
                [self.timers.next(), self.accept_retry, self.stopping, self.sweeps.next()]
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
            super::injected_failure(&self.fail)?;
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
            self.run_wakes();
            self.sweep(Instant::now());
            let conns = &self.conns;
            self.timers
                .compact(conns.len(), |k, g, t| conns.get(k).is_some_and(|e| e.generation == g && e.timer == Some(t)));
        }
    }

    /// Call [`Handler::on_wake`] for the connections woken since the last turn, and write what
    /// they queued. Wakes that come meanwhile are taken too, a few rounds at most (the rest
    /// next turn, without waiting).
    fn run_wakes(&mut self) {
        for _ in 0..4 {
            let mut woken = std::mem::take(&mut self.woken);
            self.wakes.take(&mut woken);
            if woken.is_empty() {
                self.woken = woken;
                return;
            }
            for &(k, generation) in &woken {
                let Some(e) = self.conns.get_mut(k) else { continue };
                if e.generation != generation {
                    continue;
                }
                super::wake(&mut self.handler, &mut e.state, k, generation);
                if self.flush(k) {
                    self.requeue_if_readable(k);
                    self.reschedule(k);
                }
            }
            woken.clear();
            self.woken = woken;
        }
    }

    /// Once per `idle_after`, store small the connections unused since the last pass.
    fn sweep(&mut self, now: Instant) {
        if self.sweeps.due(self.config.idle_after, !self.conns.is_empty(), now) {
            self.stats.idle = 0;
            for (_, e) in &mut self.conns {
                if e.raw.is_empty() {
                    e.state.sweep(&mut self.handler, &mut self.stats);
                }
            }
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
            // The session's last chance to queue what it holds, ahead of the close.
            super::wake(&mut self.handler, &mut e.state, k, e.generation);
            match &mut e.state {
                State::Open { conn, .. } => {
                    let _ = conn.get().close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down")));
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
            if !e.readable || !e.state.wants_input() {
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
        if e.readable && e.state.wants_input() && !e.queued {
            e.queued = true;
            self.ready.push(k);
        }
    }

    /// `rbuf[..n]` arrived on connection `k`.
    fn on_bytes(&mut self, k: usize, n: usize, now: Instant) {
        let e = &mut self.conns[k];
        match &mut e.state {
            State::Open { conn, session } => {
                let mut input = &mut self.rbuf[..n];
                if deliver(&mut self.handler, conn.get(), session, k, e.generation, &mut input, now, false) {
                    conn.data();
                }
            }
            State::Handshake { head, .. } => {
                head.extend_from_slice(&self.rbuf[..n]);
                self.on_head(k, now);
            }
            State::Rejected { .. } | State::Lingering { .. } => {}
        }
    }

    /// Bytes of a request head arrived: answer it once complete.
    fn on_head(&mut self, k: usize, now: Instant) {
        let e = &mut self.conns[k];
        if super::on_head(
            &self.acceptor,
            &mut self.handler,
            &mut self.stats,
            &mut e.raw,
            &mut e.state,
            k,
            e.generation,
            now,
            self.config.idle_after,
        ) {
            self.handshakes -= 1;
        }
    }

    fn on_eof(&mut self, k: usize) {
        let e = &mut self.conns[k];
        match &mut e.state {
            State::Open { conn, session } => {
                let conn = conn.get();
                conn.handle_eof();
                drain_events(&mut self.handler, conn, session, k, e.generation);
                // The peer may still read (a half-closed socket): what fits goes now, the
                // rest with the socket.
                let _ = Self::write_out(e, &mut self.stats);
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
        let blocked = e.state.above_high_water();
        match Self::write_out(e, &mut self.stats) {
            Ok(false) => {
                if blocked && !e.state.above_high_water() {
                    super::writable(&mut self.handler, &mut e.state, k, e.generation);
                    // What it queued goes out next turn.
                    if e.state.has_transmit() && !e.queued {
                        e.queued = true;
                        self.ready.push(k);
                    }
                }
                true
            }
            Ok(true) => {
                let _ = e.sock.shutdown(std::net::Shutdown::Write);
                let deadline = far(Instant::now(), self.acceptor.config.close_timeout);
                let old = std::mem::replace(&mut e.state, State::Lingering { deadline });
                if let State::Open { session: Some(s), .. } = old {
                    super::caught(|| self.handler.on_close(s, &ConnectionError::Reset));
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
    fn write_out(e: &mut Entry<H::Session>, stats: &mut LoopStats) -> io::Result<bool> {
        while !e.raw.is_empty() {
            match e.sock.write(&e.raw) {
                Ok(n) if n == e.raw.len() => e.raw = Vec::new(), // not kept for the connection's life
                Ok(n) => {
                    e.raw.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let held = match &mut e.state {
            State::Open { conn, .. } if conn.is_idle_stored() => return Ok(false),
            State::Open { conn, .. } => conn,
            State::Rejected { .. } => return Ok(true),
            State::Handshake { .. } | State::Lingering { .. } => return Ok(false),
        };
        let conn = held.get();
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
        let finished = conn.is_finished();
        // Everything written: a connection woken only by control frames or timers goes back
        // to storage.
        if held.store_if_quiet() {
            stats.stored_idle += 1;
        }
        Ok(finished)
    }

    fn remove(&mut self, k: usize) {
        let Some(mut e) = self.conns.try_remove(k) else { return };
        let _ = self.poll.registry().deregister(&mut e.sock);
        match e.state {
            State::Handshake { .. } => self.handshakes -= 1,
            State::Open { conn, session } => end_session(&mut self.handler, conn, session),
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
        let want = e.state.next_deadline(&mut e.linger, close_timeout);
        if let Some(mut t) = want {
            if let Some(now) = now {
                t = t.max(now + Duration::from_millis(1));
            }
            self.schedule(k, t);
        }
    }

    /// Add a timer for `k` at `t` unless one at least as early is pending.
    fn schedule(&mut self, k: usize, t: Instant) {
        let e = &mut self.conns[k];
        self.timers.schedule(&mut e.timer, k, e.generation, t);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((k, generation, t)) = self.timers.pop_due(now) {
            let Some(e) = self.conns.get_mut(k) else { continue };
            if e.generation != generation || e.timer != Some(t) {
                continue;
            }
            e.timer = None;
            match fire(&mut self.handler, &mut e.state, e.linger, k, generation, now) {
                Fired::Remove { failed_handshake } => {
                    self.stats.failed_handshakes += u64::from(failed_handshake);
                    self.remove(k);
                    continue;
                }
                Fired::Drive => {}
            }
            if self.flush(k) {
                self.requeue_if_readable(k);
                self.reschedule_after(k, Some(now));
            }
        }
    }
}
