//! The io_uring backend: completions instead of readiness.
//!
//! - One multishot accept on the listener.
//! - One multishot receive per connection, into a ring of buffers the loop provides (a
//!   "provided buffer ring"): the kernel picks a free buffer when bytes arrive, so an idle
//!   connection holds no read buffer, neither here nor in a pending request. Frames are parsed in
//!   place in that buffer, which goes back to the ring as soon as the handler returns; a frame
//!   that does not end in it is copied into its connection (any size, in any number of pieces).
//! - Sends: at most one per connection in flight, carrying everything the connection corked
//!   (a `sendmsg` over its queued chunks, which it keeps alive until the completion); the sends
//!   of a whole loop turn go to the kernel with the wait for the next completions, in one
//!   `io_uring_enter`.
//! - A connection whose output is above the high-water mark has its receive cancelled until the
//!   output drains (what arrived before the cancellation took effect is still handled).
//! - A closed connection's descriptor is closed once none of its requests is in flight (its
//!   requests are cancelled first), so no completion can name a slot used again.
//!
//! The ring is made on the thread that runs the loop (`IORING_SETUP_SINGLE_ISSUER`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use slab::Slab;
use weft_proto::{CloseCode, CloseFrame, ConnectionError};

use super::{
    Fired, Handler, IOV, LoopConfig, LoopHandle, LoopStats, State, Sweeps, Tick, Timers, deliver, drain_events,
    end_session, far, fire,
};
use crate::Acceptor;

const SQ_ENTRIES: u32 = 4096;
/// The buffer group of the loop's receive ring.
const BGID: u16 = 0;
/// Send operations kept for reuse.
const SEND_POOL: usize = 256;

// What a completion is for: the kind in the top byte of its user data; for a connection's
// requests, the slot's generation (24 bits) and the slot (32 bits) below it.
const ACCEPT: u64 = 1 << 56;
const WAKE: u64 = 2 << 56;
const CANCEL: u64 = 3 << 56;
const RECV: u64 = 4;
const SEND: u64 = 5;

/// The ring's settings: one thread submits, and completions are posted only when it waits for
/// them (Linux 6.1).
fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer().setup_defer_taskrun();
    b
}

fn tag(kind: u64, k: usize, generation: u32) -> u64 {
    kind << 56 | (u64::from(generation) & 0xff_ffff) << 32 | (k as u64 & 0xffff_ffff)
}

/// Whether this kernel runs everything the backend uses: a ring with extended wait arguments,
/// the opcodes, a provided-buffer ring and a multishot receive (tried on a socket pair).
pub(super) fn supported() -> io::Result<()> {
    let mut ring = builder().build(8)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "no IORING_FEAT_EXT_ARG (Linux 5.11)"));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::AsyncCancel2::CODE, "async cancel"),
        (opcode::PollAdd::CODE, "poll"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("no IORING_OP for {name}")));
        }
    }
    let bufs = BufRing::new(&ring, 2, 64, true)?;
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let recv = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), BGID).build().user_data(1);
    // SAFETY: the request names only the socket and the buffer ring, both alive until the ring
    // is dropped at the end of this function (which cancels the request).
    unsafe { ring.submission().push(&recv) }.map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit()?;
    io::Write::write_all(&mut b, b"x")?;
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
    let ok = cqe.result() == 1 && cqueue::more(cqe.flags());
    drop(ring);
    drop(bufs);
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("no multishot receive (Linux 6.0): {}", io::Error::from_raw_os_error(-cqe.result().min(0))),
        ))
    }
}

/// `IOU_PBUF_RING_INC` (Linux 6.12): the kernel fills each buffer in several receives.
const PBUF_RING_INC: u16 = 2;

/// The loop's receive buffers, lent to the kernel through a provided-buffer ring. Where the
/// kernel can (6.12), buffers are consumed incrementally: a receive takes only the bytes it
/// needs and the next one goes on in the same buffer, so a few large buffers serve any number
/// of small receives and large frames arrive whole.
struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    size: usize,
    entries: u16,
    tail: u16,
    /// Per buffer, the bytes the kernel already handed over (incremental consumption).
    filled: Vec<u32>,
    incremental: bool,
    /// Requests may still name the memory (the loop ended in an error): never free it.
    leak: bool,
}

// SAFETY: the pointers are to memory this value owns; the kernel's use of it ends with the ring,
// which lives on the same thread as this value.
unsafe impl Send for BufRing {}

impl BufRing {
    /// `entries` (a power of two) buffers of `size` bytes, registered with `ring` as group
    /// [`BGID`].
    fn new<S: squeue::EntryMarker, C: cqueue::EntryMarker>(
        ring: &IoUring<S, C>,
        entries: u16,
        size: usize,
        incremental: bool,
    ) -> io::Result<Self> {
        let ring_layout = Layout::from_size_align(usize::from(entries) * 16, 4096).map_err(io::Error::other)?;
        let bufs_layout = Layout::from_size_align(usize::from(entries) * size, 64).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (entries ≥ 1, size ≥ 1).
        let (r, b) = unsafe { (alloc_zeroed(ring_layout), alloc_zeroed(bufs_layout)) };
        if r.is_null() || b.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // Touched now, one write per page: the loop's fixed memory is resident from the start
        // (not faulted in by the kernel's writes as the first connections arrive, where it
        // looked like memory per connection), and no receive pays a page fault.
        for off in (0..bufs_layout.size()).step_by(4096) {
            // SAFETY: `off` is within the allocation just made, which nothing else uses yet.
            unsafe { b.add(off).write_volatile(0) };
        }
        let mut this = Self {
            ring: r.cast(),
            ring_layout,
            bufs: b,
            bufs_layout,
            size,
            entries,
            tail: 0,
            filled: vec![0; usize::from(entries)],
            incremental: true,
            leak: false,
        };
        for bid in 0..entries {
            this.give(bid);
        }
        this.publish();
        // SAFETY: the ring memory is page-aligned, holds `entries` entries, and lives until this
        // value is dropped, after the io_uring (the owner declares it after the ring).
        let register =
            |flags| unsafe { ring.submitter().register_buf_ring_with_flags(this.ring as u64, entries, BGID, flags) };
        if !incremental || register(PBUF_RING_INC).is_err() {
            this.incremental = false;
            register(0)?;
        }
        Ok(this)
    }

    /// Put buffer `bid` back in the ring (seen by the kernel after [`publish`](Self::publish)).
    fn give(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < entries: inside the ring; the kernel reads entries only up to the
        // published tail, and this one is past it.
        let e = unsafe { &mut *self.ring.add(slot) };
        // SAFETY: bid < entries: the buffer lies inside the allocation.
        e.set_addr(unsafe { self.bufs.add(usize::from(bid) * self.size) } as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Let the kernel see the buffers given back.
    fn publish(&self) {
        // SAFETY: the tail is a u16 inside the ring's first entry, which is properly aligned for
        // an atomic u16; the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The `len` bytes a completion with `flags` reported in buffer `bid`, and whether the
    /// buffer is now to be given back (the kernel fills no more of it).
    ///
    /// # Safety
    /// A completion must have just reported these bytes; no other reference to them may live.
    unsafe fn take(&mut self, bid: u16, len: usize, flags: u32) -> (&mut [u8], bool) {
        let at = self.filled[usize::from(bid)] as usize;
        assert!(bid < self.entries && at + len <= self.size, "a completion named bytes outside the ring");
        let more = cqueue::buffer_more(flags);
        self.filled[usize::from(bid)] = if more { (at + len) as u32 } else { 0 };
        // SAFETY: inside the allocation (asserted); the kernel wrote these bytes and writes no
        // more of them (it goes on after them, or is done with the buffer); exclusive by the
        // caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.bufs.add(usize::from(bid) * self.size + at), len) };
        (bytes, !more)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            dealloc(self.ring.cast(), self.ring_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}

/// One send in flight: the header, the slices and the bytes they point into, kept alive (and
/// in place: boxed) until the completion.
struct SendOp {
    hdr: libc::msghdr,
    iov: [libc::iovec; IOV],
    /// The handshake's answer, from `raw_at`.
    raw: Vec<u8>,
    raw_at: usize,
    chunks: std::collections::VecDeque<Bytes>,
}

// SAFETY: the raw pointers point into this value's own `raw` and `chunks`.
unsafe impl Send for SendOp {}

impl SendOp {
    fn new() -> Box<Self> {
        Box::new(Self {
            // SAFETY: msghdr and iovec are plain C structs for which all zeroes is valid.
            hdr: unsafe { std::mem::zeroed() },
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV],
            raw: Vec::new(),
            raw_at: 0,
            chunks: std::collections::VecDeque::new(),
        })
    }

    /// Point the header at what is left to send; false when nothing is.
    fn prepare(&mut self) -> bool {
        let mut n = 0;
        if self.raw_at < self.raw.len() {
            self.iov[0] = libc::iovec {
                iov_base: self.raw[self.raw_at..].as_ptr() as *mut _,
                iov_len: self.raw.len() - self.raw_at,
            };
            n = 1;
        }
        for c in self.chunks.iter().take(IOV - n) {
            self.iov[n] = libc::iovec { iov_base: c.as_ptr() as *mut _, iov_len: c.len() };
            n += 1;
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = n as _;
        n > 0
    }

    /// The request that sends what [`prepare`](Self::prepare) pointed at: a plain `send` for
    /// one slice (the common case: one corked chunk), a `sendmsg` for several. Without SIGPIPE
    /// either way.
    fn sqe(&self, fd: RawFd) -> squeue::Entry {
        let flags = libc::MSG_NOSIGNAL;
        if self.hdr.msg_iovlen == 1 {
            let iov = &self.iov[0];
            opcode::Send::new(types::Fd(fd), iov.iov_base as *const u8, iov.iov_len as u32).flags(flags).build()
        } else {
            opcode::SendMsg::new(types::Fd(fd), &self.hdr).flags(flags as u32).build()
        }
    }

    /// `n` bytes were sent; how many of them were the connection's chunks.
    fn advance(&mut self, mut n: usize) -> usize {
        let raw = (self.raw.len() - self.raw_at).min(n);
        self.raw_at += raw;
        n -= raw;
        let chunks = n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("sent more than was in flight");
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        chunks
    }

    fn clear(&mut self) {
        self.raw.clear();
        self.raw_at = 0;
        self.chunks.clear();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recv {
    Off,
    Armed,
    Cancelling,
}

/// Input held back for a connection (see `Entry::stash`): a pointer while empty, as it
/// almost always is.
#[derive(Default)]
struct Stash(Option<Box<BytesMut>>);

impl Stash {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_empty())
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.len())
    }

    fn extend_from_slice(&mut self, data: &[u8]) {
        self.0.get_or_insert_default().extend_from_slice(data);
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().map_or(&mut [], |b| &mut b[..])
    }

    /// Drop `n` bytes from the front; nothing is held once it is empty.
    fn advance(&mut self, n: usize) {
        if let Some(b) = &mut self.0 {
            b.advance(n);
            if b.is_empty() {
                self.0 = None;
            }
        }
    }
}

struct Entry<S> {
    fd: OwnedFd,
    state: State<S>,
    /// The handshake's answer, to send before the connection's own output.
    raw: Vec<u8>,
    send: Option<Box<SendOp>>,
    /// Bytes received while the connection did not want input (its output above the
    /// high-water mark), handed over when it does: about one read buffer at most (then the
    /// receive is cancelled), plus what arrived before the cancellation took effect.
    stash: Stash,
    recv: Recv,
    /// Requests in flight that name this entry (its receive, its send).
    ops: u8,
    /// No more input: the receive reported the end of the stream or an error.
    eof: bool,
    /// Removed: the descriptor closes once `ops` is 0.
    gone: bool,
    linger: Option<Tick>,
    queued: bool,
    timer: Option<Tick>,
    generation: u32,
}

/// One io_uring loop: a listener and the connections it accepted.
pub(super) struct Loop<H: Handler> {
    // Declared before the buffers: dropped (and the kernel's use of them ended) first.
    ring: Option<IoUring>,
    bufs: Option<BufRing>,
    listener: Option<TcpListener>,
    accept_armed: bool,
    accept_retry: Option<Instant>,
    sweeps: Sweeps,
    acceptor: Acceptor,
    config: LoopConfig,
    pub(super) handler: H,
    conns: Slab<Entry<H::Session>>,
    ready: Vec<usize>,
    cqes: Vec<(u64, i32, u32)>,
    // Boxed: an operation's address is what the kernel holds while it is in flight, and a pooled
    // one moves to an entry as it is.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<SendOp>>,
    timers: Timers,
    generation: u32,
    handshakes: usize,
    /// Entries removed whose requests are still in flight.
    gone: usize,
    stats: LoopStats,
    stop: Arc<AtomicBool>,
    fail: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    /// Connections woken through their [`Conn::waker`](super::Conn::waker).
    wakes: Arc<super::Wakes>,
    woken: Vec<(usize, u32)>,
    stopping: Option<Instant>,
}

impl<H: Handler> Loop<H> {
    pub(super) fn new(listener: TcpListener, acceptor: Acceptor, config: LoopConfig, handler: H) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor eventfd just returned, owned by nothing else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let reserve = super::reserved(&config);
        let signal = Arc::clone(&wake);
        let wakes = super::Wakes::new(Arc::new(move || {
            // SAFETY: writes 8 bytes from a live u64 to a live eventfd.
            let _ = unsafe { libc::write(signal.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
        }));
        Ok(Self {
            ring: None,
            bufs: None,
            listener: Some(listener),
            accept_armed: false,
            accept_retry: None,
            sweeps: Sweeps::default(),
            acceptor,
            config,
            handler,
            conns: Slab::with_capacity(reserve),
            ready: Vec::new(),
            cqes: Vec::with_capacity(1024),
            // Made at once: the loop's fixed memory (about 290 KiB), not memory that seems to
            // come with the first connections.
            pool: (0..SEND_POOL).map(|_| SendOp::new()).collect(),
            timers: Timers::with_capacity(reserve),
            generation: 0,
            handshakes: 0,
            gone: 0,
            stats: LoopStats::default(),
            stop: Arc::new(AtomicBool::new(false)),
            fail: Arc::default(),
            wake,
            wakes,
            woken: Vec::new(),
            stopping: None,
        })
    }

    pub(super) fn stop_handle(&self) -> LoopHandle {
        let wake = Arc::clone(&self.wake);
        LoopHandle {
            stop: Arc::clone(&self.stop),
            fail: Arc::clone(&self.fail),
            wake: Arc::new(move || {
                // SAFETY: writes 8 bytes from a live u64 to a live eventfd.
                let _ = unsafe { libc::write(wake.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
            }),
        }
    }

    pub(super) fn stats(&self) -> LoopStats {
        LoopStats { open: (self.conns.len() - self.gone) as u64, ..self.stats }
    }

    pub(super) fn run(&mut self) -> io::Result<()> {
        if self.ring.is_some() {
            // A handler panicked in an earlier `run`: its requests may still be in flight.
            return Err(io::Error::other("this event loop failed before and cannot run again"));
        }
        let _here = super::OnThisThread::enter(&self.wakes);
        // Made here, on the thread that submits (single issuer).
        let ring = builder().setup_cqsize(SQ_ENTRIES * 4).build(SQ_ENTRIES)?;
        let entries = self.config.ring_buffers.clamp(2, 1 << 15).next_power_of_two();
        let size = self.config.read_buffer_size.clamp(4096, 1 << 30);
        self.bufs = Some(BufRing::new(&ring, entries, size, self.config.ring_incremental)?);
        self.ring = Some(ring);
        self.push(
            opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(WAKE),
        );
        let r = self.turns();
        if r.is_err() {
            // The loop is failing: every connection ends (its handler told, its descriptor
            // closed), and what requests still in flight name is kept.
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for k in keys {
                if let Some(e) = self.conns.get_mut(k) {
                    match std::mem::replace(&mut e.state, State::Lingering { deadline: Instant::now() }) {
                        State::Open { conn, session } => end_session(&mut self.handler, conn, session),
                        State::Handshake { .. } => self.handshakes -= 1,
                        State::Rejected { .. } | State::Lingering { .. } => {}
                    }
                }
            }
            self.abandon();
        }
        self.ring = None;
        self.bufs = None;
        r
    }

    fn turns(&mut self) -> io::Result<()> {
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
                if self.conns.is_empty() && !self.accept_armed {
                    return Ok(());
                }
            }
            if !self.accept_armed && self.stopping.is_none() && self.accept_retry.is_none_or(|t| now >= t) {
                if let Some(l) = &self.listener {
                    let accept = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd())).flags(libc::SOCK_CLOEXEC).build();
                    self.push(accept.user_data(ACCEPT));
                    self.accept_armed = true;
                    self.accept_retry = None;
                }
            }
            let timeout = if !self.ready.is_empty() || !self.wakes.is_empty() {
                Some(Duration::ZERO)
            } else {
                // After the grace period only completions (of the cancellations) are awaited.
                [self.timers.next(), self.accept_retry, self.stopping.filter(|t| *t > now), self.sweeps.next()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(now))
            };
            self.enter(timeout)?;
            self.reap();
            if let Some(b) = &self.bufs {
                b.publish();
            }
            if self.stop.load(Ordering::Acquire) && self.stopping.is_none() {
                self.begin_stop();
            }
            let mut ready = std::mem::take(&mut self.ready);
            for &k in &ready {
                if let Some(e) = self.conns.get_mut(k) {
                    e.queued = false;
                }
            }
            for &k in &ready {
                self.drive(k, None);
            }
            ready.clear();
            if self.ready.is_empty() {
                self.ready = ready; // its capacity, for the next turn
            }
            self.fire_timers(Instant::now());
            self.run_wakes();
            self.sweep(Instant::now());
            let conns = &self.conns;
            self.timers
                .compact(conns.len(), |k, g, t| conns.get(k).is_some_and(|e| e.generation == g && e.timer == Some(t)));
        }
    }

    fn ring(&mut self) -> &mut IoUring {
        self.ring.as_mut().expect("the ring is made when the loop runs")
    }

    /// Queue a request, submitting what waits when the queue is full.
    fn push(&mut self, sqe: squeue::Entry) {
        let ring = self.ring();
        for _ in 0..64 {
            // SAFETY: every request names memory that outlives it: a connection's send
            // operation and descriptor stay until its completion (`ops`), the buffer ring and
            // the listener until the ring is dropped.
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            let _ = ring.submit();
        }
        panic!("the io_uring submission queue stays full");
    }

    /// Submit what waits and wait for a completion, at most `timeout` (forever: `None`).
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ring = self.ring();
        // Always with IORING_ENTER_GETEVENTS (the crate's plain `submit` is without): with
        // IORING_SETUP_DEFER_TASKRUN, completions are only posted then.
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            }
            None => ring.submit_and_wait(1),
        };
        super::injected_failure(&self.fail)?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handle every completion that waits.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring().completion().map(|c| (c.user_data(), c.result(), c.flags())));
        let now = Instant::now();
        for &(ud, res, flags) in &cqes {
            match ud {
                ACCEPT => self.on_accept(res, flags, now),
                WAKE => {
                    let mut v = 0u64;
                    // SAFETY: reads 8 bytes into a live u64 from a live eventfd.
                    let _ = unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                    if !cqueue::more(flags) {
                        let poll =
                            opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32).multi(true);
                        self.push(poll.build().user_data(WAKE));
                    }
                }
                CANCEL => {}
                _ => {
                    let kind = ud >> 56;
                    let k = (ud & 0xffff_ffff) as usize;
                    let generation = ((ud >> 32) & 0xff_ffff) as u32;
                    let ours = self.conns.get(k).is_some_and(|e| e.generation & 0xff_ffff == generation);
                    match kind {
                        RECV => self.on_recv(k, ours, res, flags, now),
                        SEND if ours => self.on_send(k, res),
                        _ => {}
                    }
                }
            }
        }
        self.cqes = cqes;
    }

    fn on_accept(&mut self, res: i32, flags: u32, now: Instant) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
            if self.stopping.is_some() {
                self.listener = None;
            }
        }
        if res < 0 {
            if !cqueue::more(flags) && res != -libc::ECANCELED {
                // Out of descriptors (or memory): keep serving what we have, retry soon.
                self.accept_retry = Some(now + Duration::from_millis(50));
            }
            return;
        }
        // SAFETY: a descriptor the kernel just accepted for us, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        self.stats.accepted += 1;
        if self.stopping.is_some() {
            return;
        }
        if self.conns.len() >= self.config.max_connections {
            self.stats.refused_connections += 1;
            return;
        }
        if self.handshakes >= self.config.max_handshakes {
            self.stats.refused_handshakes += 1;
            return;
        }
        set_nodelay(fd.as_raw_fd());
        self.generation = self.generation.wrapping_add(1);
        let deadline = far(now, self.acceptor.handshake_timeout);
        let k = self.conns.insert(Entry {
            fd,
            state: State::Handshake { head: Vec::new(), deadline },
            raw: Vec::new(),
            send: None,
            stash: Stash::default(),
            recv: Recv::Off,
            ops: 0,
            eof: false,
            gone: false,
            linger: None,
            queued: false,
            timer: None,
            generation: self.generation,
        });
        self.handshakes += 1;
        let e = &mut self.conns[k];
        self.timers.schedule(&mut e.timer, k, e.generation, deadline);
        self.arm_recv(k);
    }

    fn arm_recv(&mut self, k: usize) {
        let e = &mut self.conns[k];
        let sqe = opcode::RecvMulti::new(types::Fd(e.fd.as_raw_fd()), BGID).build();
        let ud = tag(RECV, k, e.generation);
        e.recv = Recv::Armed;
        e.ops += 1;
        self.push(sqe.user_data(ud));
    }

    fn on_recv(&mut self, k: usize, ours: bool, res: i32, flags: u32, now: Instant) {
        let bid = cqueue::buffer_select(flags);
        if !ours {
            if let (Some(bid), Some(b)) = (bid, &mut self.bufs) {
                // SAFETY: reported by this completion; not used.
                if unsafe { b.take(bid, res.max(0) as usize, flags) }.1 {
                    b.give(bid);
                }
            }
            return;
        }
        let e = &mut self.conns[k];
        if !cqueue::more(flags) {
            e.ops -= 1;
            e.recv = Recv::Off;
        }
        if res > 0 {
            let bid = bid.expect("a receive with bytes names its buffer");
            let bufs = self.bufs.as_mut().expect("the buffers live while the loop runs");
            // SAFETY: the completion reported these bytes; the slice is dropped before the
            // buffer goes back to the ring below.
            let (data, done) = unsafe { bufs.take(bid, res as usize, flags) };
            if !e.gone {
                match &mut e.state {
                    // Paused (or behind stashed input): kept for later.
                    State::Open { conn, .. } if !e.stash.is_empty() || !conn.wants_input() => {
                        e.stash.extend_from_slice(data)
                    }
                    // All of it, as epoll hands over all of a read: at most one buffer.
                    State::Open { conn, session } => {
                        let mut input = &mut data[..];
                        if deliver(&mut self.handler, conn.get(), session, k, e.generation, &mut input, now, false) {
                            conn.data();
                        }
                    }
                    State::Handshake { head, .. } => head.extend_from_slice(data),
                    // Read and discarded.
                    State::Rejected { .. } | State::Lingering { .. } => {}
                }
            }
            if done {
                bufs.give(bid);
            }
            if matches!(self.conns[k].state, State::Handshake { .. }) {
                self.on_head(k, now);
            }
        } else if res == 0 || (res != -libc::ECANCELED && res != -libc::ENOBUFS) {
            // The end of the stream, or a failed socket. (Out of buffers: re-armed next turn,
            // when this turn's are back; cancelled: paused.) Input still in the stash is handed
            // over first (`drive`), as epoll would read it before the end.
            e.eof = true;
            if !e.gone && e.stash.is_empty() {
                self.on_eof(k);
            }
        }
        self.settle(k);
    }

    /// After a completion for `k`: close it if it is gone and idle, pause its receive if its
    /// output is above the high-water mark, and give it a turn.
    fn settle(&mut self, k: usize) {
        let Some(e) = self.conns.get_mut(k) else { return };
        if e.gone {
            if e.ops == 0 {
                self.gone -= 1;
                let e = self.conns.remove(k);
                if let Some(mut op) = e.send {
                    op.clear();
                    self.pool.push(op);
                }
            }
            return;
        }
        // A paused connection's receive goes on into the stash up to one read buffer's worth
        // (its output usually drains within the turn: cancelling and re-arming each time costs
        // more than it saves), and is cancelled beyond that, or at once when the connection
        // does not read at all.
        let open = matches!(e.state, State::Open { .. });
        if e.recv == Recv::Armed && !e.state.wants_input() && (!open || e.stash.len() >= self.config.read_buffer_size) {
            e.recv = Recv::Cancelling;
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(tag(RECV, k, e.generation))).build();
            self.push(sqe.user_data(CANCEL));
            // Now, not at the end of the turn: every receive until then lands in the stash.
            let _ = self.ring().submit();
        }
        let e = &mut self.conns[k];
        if !e.queued {
            e.queued = true;
            self.ready.push(k);
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

    fn on_send(&mut self, k: usize, res: i32) {
        let e = &mut self.conns[k];
        e.ops -= 1;
        let mut op = e.send.take().expect("a send completion for a connection with a send in flight");
        if res >= 0 && !e.gone {
            let sent = op.advance(res as usize);
            let blocked = e.state.above_high_water();
            if let State::Open { conn, .. } = &mut e.state {
                if sent > 0 {
                    conn.get().advance_transmit(sent);
                }
            }
            if blocked && !e.state.above_high_water() {
                // Sent after this completion, with what else this turn queues.
                super::writable(&mut self.handler, &mut e.state, k, e.generation);
            }
            if op.prepare() {
                // A short send: the rest goes now, before anything queued since.
                let sqe = op.sqe(e.fd.as_raw_fd()).user_data(tag(SEND, k, e.generation));
                e.ops += 1;
                e.send = Some(op);
                self.push(sqe);
                return;
            }
        }
        op.clear();
        if self.pool.len() < SEND_POOL {
            self.pool.push(op);
        }
        if res < 0 && !e.gone {
            // The peer is gone (reset, broken pipe).
            e.eof = true;
            self.on_eof(k);
        }
        self.settle(k);
    }

    fn on_eof(&mut self, k: usize) {
        let e = &mut self.conns[k];
        match &mut e.state {
            State::Open { conn, session } => {
                let conn = conn.get();
                conn.handle_eof();
                drain_events(&mut self.handler, conn, session, k, e.generation);
                // The peer may still read (a half-closed socket): what is queued goes now, and
                // whatever the kernel takes at once of it is sent.
                self.flush(k);
                self.remove(k);
            }
            State::Handshake { .. } => {
                self.stats.failed_handshakes += 1;
                self.remove(k);
            }
            State::Rejected { .. } | State::Lingering { .. } => self.remove(k),
        }
    }

    /// Give connection `k` its turn: send what it queued, close it once it is finished, and
    /// receive again when it wants input.
    fn drive(&mut self, k: usize, after: Option<Instant>) {
        let Some(e) = self.conns.get(k) else { return };
        if e.gone {
            return;
        }
        self.unstash(k);
        let e = &self.conns[k];
        if e.eof && e.stash.is_empty() {
            // The end came while input waited in the stash: now it is all handed over.
            self.on_eof(k);
            return;
        }
        self.flush(k);
        let e = &mut self.conns[k];
        if e.recv == Recv::Off && !e.eof && e.stash.is_empty() && e.state.wants_input() {
            self.arm_recv(k);
        }
        let e = &mut self.conns[k];
        if let Some(mut t) = e.state.next_deadline(&mut e.linger, self.acceptor.config.close_timeout) {
            if let Some(now) = after {
                // A timer just fired: a deadline that is due again must not spin the loop.
                t = t.max(now + Duration::from_millis(1));
            }
            self.timers.schedule(&mut e.timer, k, e.generation, t);
        }
    }

    /// Hand what waits in `k`'s stash to the handler, as far as the connection wants input.
    fn unstash(&mut self, k: usize) {
        let e = &mut self.conns[k];
        if e.stash.is_empty() || !e.state.wants_input() {
            return;
        }
        let State::Open { conn, session } = &mut e.state else { return };
        let mut input = e.stash.bytes();
        let len = input.len();
        if deliver(&mut self.handler, conn.get(), session, k, e.generation, &mut input, Instant::now(), true) {
            conn.data();
        }
        let used = len - input.len();
        e.stash.advance(used);
    }

    /// Start a send of what `k` queued, unless one is in flight; once a finished connection
    /// has sent everything, shut its write side and linger.
    fn flush(&mut self, k: usize) {
        let e = &mut self.conns[k];
        if e.gone || e.send.is_some() {
            return;
        }
        let queued = !e.raw.is_empty() || matches!(&e.state, State::Open { conn, .. } if conn.has_transmit());
        if queued {
            let mut op = self.pool.pop().unwrap_or_else(SendOp::new);
            op.raw = std::mem::take(&mut e.raw);
            // (`has_transmit` first: an idle connection sending its handshake answer is not
            // made whole for it.)
            if let State::Open { conn, .. } = &mut e.state {
                if conn.has_transmit() {
                    // Lent, not taken: they stay counted in the connection's output (its
                    // high-water mark, `buffered_amount`) until the send completes.
                    let chunks = &mut op.chunks;
                    conn.get().transmit_chunks(IOV - 1, |c| chunks.push_back(c));
                }
            }
            op.prepare();
            let sqe = op.sqe(e.fd.as_raw_fd()).user_data(tag(SEND, k, e.generation));
            e.ops += 1;
            e.send = Some(op);
            self.push(sqe);
            return;
        }
        if let State::Open { conn, .. } = &mut e.state {
            if !conn.is_idle_stored() && !conn.has_partial_input() {
                conn.get().release_idle_buffers();
                // Nothing in flight and nothing queued: a connection woken only by control
                // frames or timers goes back to storage.
                if e.stash.is_empty() && conn.store_if_quiet() {
                    self.stats.stored_idle += 1;
                }
            }
        }
        let finished = match &e.state {
            State::Rejected { .. } => true,
            State::Open { conn, .. } => conn.is_finished(),
            State::Handshake { .. } | State::Lingering { .. } => false,
        };
        if finished {
            // SAFETY: shuts down a live socket; no memory is involved.
            unsafe { libc::shutdown(e.fd.as_raw_fd(), libc::SHUT_WR) };
            let deadline = far(Instant::now(), self.acceptor.config.close_timeout);
            e.stash = Stash::default(); // input after the end is read and discarded
            let old = std::mem::replace(&mut e.state, State::Lingering { deadline });
            if let State::Open { session: Some(s), .. } = old {
                super::caught(|| self.handler.on_close(s, &ConnectionError::Reset));
            }
        }
    }

    /// Drop connection `k`: tell its handler, cancel its requests, and close its descriptor once
    /// none is in flight.
    fn remove(&mut self, k: usize) {
        let Some(e) = self.conns.get_mut(k) else { return };
        if e.gone {
            return;
        }
        e.gone = true;
        self.gone += 1;
        match std::mem::replace(&mut e.state, State::Lingering { deadline: Instant::now() }) {
            State::Handshake { .. } => self.handshakes -= 1,
            State::Open { conn, session } => end_session(&mut self.handler, conn, session),
            State::Rejected { .. } | State::Lingering { .. } => {}
        }
        let e = &mut self.conns[k];
        if e.ops == 0 {
            self.gone -= 1;
            self.conns.remove(k);
        } else {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(e.fd.as_raw_fd())).all()).build();
            self.push(sqe.user_data(CANCEL));
        }
    }

    /// Once per `idle_after`, store small the connections unused since the last pass (with
    /// no send in flight and no input waiting).
    fn sweep(&mut self, now: Instant) {
        if self.sweeps.due(self.config.idle_after, !self.conns.is_empty(), now) {
            self.stats.idle = 0;
            for (_, e) in &mut self.conns {
                if !e.gone && e.send.is_none() && e.stash.is_empty() && e.raw.is_empty() {
                    e.state.sweep(&mut self.handler, &mut self.stats);
                }
            }
        }
    }

    /// Call [`Handler::on_wake`] for the connections woken since the last turn and give them
    /// a turn (their output, input they can take again). Wakes that come meanwhile are taken
    /// too, a few rounds at most (the rest next turn, without waiting).
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
                if e.generation != generation || e.gone {
                    continue;
                }
                super::wake(&mut self.handler, &mut e.state, k, generation);
                self.drive(k, None);
            }
            woken.clear();
            self.woken = woken;
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = Some(Instant::now() + self.config.shutdown_grace);
        if self.accept_armed {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ACCEPT)).build();
            self.push(sqe.user_data(CANCEL));
        } else {
            self.listener = None;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            let e = &mut self.conns[k];
            if e.gone {
                continue;
            }
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

    fn fire_timers(&mut self, now: Instant) {
        while let Some((k, generation, t)) = self.timers.pop_due(now) {
            let Some(e) = self.conns.get_mut(k) else { continue };
            if e.generation != generation || e.timer != Some(t) || e.gone {
                continue;
            }
            e.timer = None;
            match fire(&mut self.handler, &mut e.state, e.linger, k, generation, now) {
                Fired::Remove { failed_handshake } => {
                    self.stats.failed_handshakes += u64::from(failed_handshake);
                    self.remove(k);
                }
                Fired::Drive => self.drive(k, Some(now)),
            }
        }
    }
}

impl<H: Handler> Loop<H> {
    /// Drop every connection while requests may still be in flight (the ring failed, or the
    /// loop is dropped while running): what they name — the provided buffers, each send's
    /// bytes and headers — is kept (leaked: the kernel may still use it until the ring is
    /// gone); the rest goes, each descriptor closed.
    fn abandon(&mut self) {
        if !self.conns.iter().any(|(_, e)| e.ops > 0) {
            self.conns.clear();
            return;
        }
        if let Some(b) = &mut self.bufs {
            b.leak = true;
        }
        for (_, e) in self.conns.iter_mut() {
            if let Some(op) = e.send.take() {
                std::mem::forget(op);
            }
        }
        self.conns.clear();
        self.gone = 0;
    }
}

impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        if self.ring.is_some() {
            // Dropped while running (a panic in a handler).
            self.abandon();
        }
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: passes a live c_int of the size given.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
