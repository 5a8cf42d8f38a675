//! The asyncio client's protocol, in Rust: the event loop owns the socket (and TLS, through
//! Python's `ssl`) and calls `data_received`; the codec parses frames here and a waiting
//! `recv()` future is resolved directly. No runtime, no threads, no cross-thread wake-ups.
//!
//! `weft.async_client` wraps this with the awaitable API.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use weft_proto::handshake;
use weft_proto::{Connection, Event, Message, Role, SendError};

use crate::common::{self, Ended, Options, handshake_error};

/// Unparsed input above which reading pauses while the application holds a message.
const READ_HIGH_WATER: usize = 4 << 20;
/// How long parsing waits for the application after handing it a message.
const GRACE_SECONDS: f64 = 0.05;

/// The opening handshake in progress (weft-proto's sans-IO client handshake).
struct Pending {
    hs: handshake::ClientHandshake,
}

/// asyncio protocol of one client connection (see `weft.async_client`).
#[pyclass(module = "weft._weft")]
pub(crate) struct AsyncProtocol {
    conn: Connection,
    event_loop: Py<PyAny>,
    transport: Option<Py<PyAny>>,
    pending: Option<Pending>,
    handshake: Py<PyAny>,
    closed_future: Py<PyAny>,
    subprotocol: Option<String>,
    response_headers: Vec<(String, String)>,
    messages: VecDeque<Py<PyAny>>,
    waiter: Option<Py<PyAny>>,
    ended: Option<Ended>,
    /// A message went to the application (a waiting `recv`, or the queue): parsing waits until
    /// the application asks for the next one, so frames after a message are acted on only once
    /// the application could answer it (in order, like the Rust client). If it does not ask
    /// within `GRACE`, `_resume` switches to `eager` parsing, so pings and pongs are still
    /// handled for an application that is not reading.
    with_app: bool,
    /// Parse everything that arrives (up to `max_queue` queued messages) until the application
    /// calls `recv` again.
    eager: bool,
    /// A `_resume` timer is pending.
    resume_scheduled: bool,
    /// `self._resume`, set while connected (cleared in connection_lost: it references self).
    resume: Option<Py<PyAny>>,
    max_queue: usize,
    /// The transport reached its end; reported to the codec once buffered input is parsed.
    eof: bool,
    /// Bytes handed to the codec since it last ran out of complete frames.
    unparsed: usize,
    reading_paused: bool,
    writing_paused: bool,
    drain_waiters: Vec<Py<PyAny>>,
    pings: VecDeque<(Bytes, Instant, Py<PyAny>)>,
    latency: f64,
    /// Write coalescing ("cork", as Node does with `nextTick`): a send that follows another
    /// within `BURST` — with no input in between, so the application is producing a burst, not
    /// answering — is framed but not written; `_flush`, scheduled with `call_soon`, writes the
    /// whole burst in one `transport.write` when the application yields to the loop. The first
    /// send of a burst, and every answer to received data, is written at once.
    corked: bool,
    corked_bytes: usize,
    last_write: Option<Instant>,
    /// `self._flush`, set while connected.
    flush_cb: Option<Py<PyAny>>,
    /// The event-driven API: every message goes to this callable, called from
    /// `data_received` (no future per message, no `recv`).
    on_message: Option<Py<PyAny>>,
}

thread_local! {
    /// `pause_writing`/`resume_writing` called from inside our own `transport.write` (asyncio
    /// and uvloop call `pause_writing` synchronously there), while the protocol is mutably
    /// borrowed: the state is left here and picked up by `flush` right after the write.
    static NESTED_WRITING: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Sends closer together than this (without input in between) are coalesced.
const BURST: std::time::Duration = std::time::Duration::from_micros(50);
/// A burst is written out once this much is framed, without waiting for the loop.
const CORK_LIMIT: usize = 256 * 1024;

fn done(py: Python<'_>, fut: &Py<PyAny>) -> bool {
    fut.bind(py).call_method0(intern!(py, "done")).and_then(|d| d.extract()).unwrap_or(true)
}

fn set_result(py: Python<'_>, fut: &Py<PyAny>, value: Py<PyAny>) {
    if !done(py, fut) {
        let _ = fut.bind(py).call_method1(intern!(py, "set_result"), (value,));
    }
}

fn set_exception(py: Python<'_>, fut: &Py<PyAny>, err: PyErr) {
    if !done(py, fut) {
        let _ = fut.bind(py).call_method1(intern!(py, "set_exception"), (err.into_value(py),));
    }
}

impl AsyncProtocol {
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        self.corked_bytes = 0;
        if !self.conn.has_transmit() {
            return Ok(());
        }
        let Some(t) = &self.transport else {
            // Not connected (or gone): nothing can be written any more.
            while self.conn.poll_transmit().is_some() {}
            return Ok(());
        };
        let first = self.conn.poll_transmit().expect("has_transmit");
        let data = if self.conn.has_transmit() {
            let mut all = first.to_vec();
            while let Some(chunk) = self.conn.poll_transmit() {
                all.extend_from_slice(&chunk);
            }
            PyBytes::new(py, &all)
        } else {
            PyBytes::new(py, &first)
        };
        t.bind(py).call_method1(intern!(py, "write"), (data,))?;
        if let Some(paused) = NESTED_WRITING.with(|c| c.take()) {
            self.writing_paused = paused;
            if !paused {
                for fut in self.drain_waiters.drain(..) {
                    set_result(py, &fut, py.None());
                }
            }
        }
        if self.reading_paused {
            // It may have been paused for a held reply that just went out.
            self.update_reading(py)?;
        }
        Ok(())
    }

    fn set_writing_paused(&mut self, py: Python<'_>, paused: bool) -> PyResult<()> {
        self.writing_paused = paused;
        if !paused {
            for fut in self.drain_waiters.drain(..) {
                set_result(py, &fut, py.None());
            }
            // Write what was held back (a pong); this also re-evaluates reading.
            if self.conn.has_transmit() && !self.corked {
                self.flush(py)?;
            }
        }
        self.update_reading(py)
    }

    /// `pause_writing`/`resume_writing`: applied now, or by `flush` when called from inside
    /// its `transport.write`.
    fn writing_callback(slf: &Bound<'_, Self>, paused: bool) -> PyResult<()> {
        match slf.try_borrow_mut() {
            Ok(mut me) => me.set_writing_paused(slf.py(), paused),
            Err(_) => {
                NESTED_WRITING.with(|c| c.set(Some(paused)));
                Ok(())
            }
        }
    }

    /// Hand a message to the waiting `recv`, or queue it.
    fn deliver(&mut self, py: Python<'_>, msg: Py<PyAny>) {
        if self.messages.is_empty() {
            if let Some(w) = self.waiter.take() {
                if !done(py, &w) {
                    let _ = w.bind(py).call_method1(intern!(py, "set_result"), (msg,));
                    return;
                }
            }
        }
        self.messages.push_back(msg);
    }

    /// Run the codec over what arrived: deliver or queue messages, answer pings, resolve ping
    /// futures, notice the end. Parsing pauses after a message handed to a waiting `recv` (see
    /// `with_app`) and while `max_queue` messages are queued; reading pauses while parsing does
    /// and more than `READ_HIGH_WATER` bytes wait, or the queue is full.
    fn pump(&mut self, py: Python<'_>) -> PyResult<()> {
        while !self.with_app && self.messages.len() < self.max_queue {
            let Some(ev) = self.conn.poll_event() else {
                if self.eof && !self.conn.is_closed() {
                    self.conn.handle_eof();
                    continue;
                }
                self.unparsed = 0;
                break;
            };
            match ev {
                Event::Message(m) if m.is_data() => {
                    let obj = common::to_python(py, &m).expect("data message");
                    self.deliver(py, obj);
                    // With `on_message`, `dispatch` hands the queue over as soon as this returns.
                    if !self.eager && self.on_message.is_none() {
                        self.with_app = true;
                        if !self.resume_scheduled {
                            if let Some(cb) = &self.resume {
                                self.event_loop
                                    .bind(py)
                                    .call_method1(intern!(py, "call_later"), (GRACE_SECONDS, cb.clone_ref(py)))?;
                                self.resume_scheduled = true;
                            }
                        }
                    }
                }
                Event::Message(Message::Ping(_)) if !self.writing_paused => {
                    // The codec keeps only the latest ping's pong pending (RFC 6455 §5.5.3);
                    // while writes flow, queue this one now so every ping is answered, in
                    // order (the Autobahn suite's strict 2.10). While the transport's buffer
                    // is full, only the most recent ping gets a pong.
                    self.conn.transmit_slices(&mut []);
                }
                Event::Message(Message::Pong(payload)) => {
                    if let Some(i) = self.pings.iter().position(|(p, _, _)| *p == payload) {
                        // A pong answers its ping and every earlier one.
                        let now = Instant::now();
                        for (_, sent, fut) in self.pings.drain(..=i) {
                            let latency = now.duration_since(sent).as_secs_f64();
                            self.latency = latency;
                            set_result(py, &fut, pyo3::types::PyFloat::new(py, latency).into_any().unbind());
                        }
                    }
                }
                Event::Closed(e) => {
                    self.ended.get_or_insert_with(|| Ended::from_error(&e));
                    self.flush(py)?;
                    // The server closes TCP first after a clean close; closing our side too is
                    // harmless and bounds the wait.
                    if let Some(t) = &self.transport {
                        t.bind(py).call_method0(intern!(py, "close"))?;
                    }
                    self.wake_all(py);
                    return Ok(());
                }
                _ => {}
            }
        }
        if !self.writing_paused {
            // While the transport's buffer is full, replies the peer provoked (a pong: only
            // the latest ping's, the codec keeps one) wait in the codec; see `update_reading`.
            self.flush(py)?;
        }
        self.update_reading(py)
    }

    /// Pause or resume reading: paused while parsing waits for the application with more than
    /// `READ_HIGH_WATER` bytes unparsed, while `max_queue` messages are queued, and while the
    /// transport's write buffer is over its high-water mark (`pause_writing`) with a reply the
    /// peer provoked (a pong) held back: a peer that sends pings without reading what it is
    /// sent is pushed back by TCP instead of growing the write buffer. Data messages are still
    /// read while only the application's own sends fill the buffer, so pipelined sends to a
    /// server that stops reading while its own writes are blocked (an echo) cannot deadlock.
    fn update_reading(&mut self, py: Python<'_>) -> PyResult<()> {
        let over = (self.with_app && self.unparsed > READ_HIGH_WATER)
            || self.messages.len() >= self.max_queue
            || (self.writing_paused && self.ended.is_none() && self.conn.has_transmit());
        if over != self.reading_paused {
            if let Some(t) = &self.transport {
                let method = if over { intern!(py, "pause_reading") } else { intern!(py, "resume_reading") };
                t.bind(py).call_method0(method)?;
                self.reading_paused = over;
            }
        }
        Ok(())
    }

    /// After the end: fail the waiter and the pings, release senders.
    fn wake_all(&mut self, py: Python<'_>) {
        let ended = self.ended.clone().unwrap_or_else(Ended::reset);
        if let Some(w) = self.waiter.take() {
            set_exception(py, &w, ended.to_err(py));
        }
        for (_, _, fut) in self.pings.drain(..) {
            set_exception(py, &fut, ended.to_err(py));
        }
        for fut in self.drain_waiters.drain(..) {
            set_result(py, &fut, py.None());
        }
    }

    /// The transport is gone (see `connection_lost`).
    fn lost(&mut self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.transport = None;
        self.resume = None;
        self.flush_cb = None;
        self.reading_paused = false;
        if let Some(p) = self.pending.take() {
            let err = match exc {
                Some(e) => PyErr::from_value(e),
                None => handshake_error(None, &p.hs.closed()),
            };
            self.ended = Some(Ended::reset());
            set_exception(py, &self.handshake, err);
        }
        // Messages that arrived before the end are still delivered, in order; the end is
        // reported after them. Nothing can be sent any more, so parse everything now.
        self.eof = true;
        self.with_app = false;
        self.eager = true;
        self.pump(py)
    }

    /// Hand every queued message to `on_message`, one at a time and without holding the
    /// protocol (the callable may send, close, ...), parsing on as the queue empties.
    fn dispatch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(cb) = slf.borrow().on_message.as_ref().map(|c| c.clone_ref(py)) else { return Ok(()) };
        loop {
            let msg = {
                let mut me = slf.borrow_mut();
                if me.messages.is_empty() && me.ended.is_none() {
                    me.pump(py)?;
                }
                match me.messages.pop_front() {
                    Some(m) => m,
                    None => return Ok(()),
                }
            };
            if let Err(e) = cb.bind(py).call1((msg,)) {
                // As asyncio reports an exception in a protocol callback: to the loop's
                // exception handler; the connection goes on.
                let ctx = pyo3::types::PyDict::new(py);
                ctx.set_item("message", "exception in weft's on_message callback")?;
                ctx.set_item("exception", e.into_value(py))?;
                ctx.set_item("protocol", slf)?;
                let event_loop = slf.borrow().event_loop.clone_ref(py);
                event_loop.bind(py).call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
            }
        }
    }

    fn finish_handshake(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let p = self.pending.as_mut().expect("handshake pending");
        let parsed = match p.hs.feed(data) {
            Ok(None) => return Ok(()),
            Ok(Some(done)) => Ok(done),
            Err(f) => Err(common::feed_error(&f, data)),
        };
        self.pending = None;
        match parsed {
            Ok(done) => {
                let (resp, negotiated) = (done.response, done.negotiated);
                if let Some(params) = negotiated.deflate {
                    self.conn.set_deflate(params);
                }
                self.subprotocol = negotiated.subprotocol;
                self.response_headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                set_result(py, &self.handshake, py.None());
                if !done.rest.is_empty() {
                    self.unparsed += done.rest.len();
                    self.conn.handle_read(&done.rest, Instant::now());
                    self.pump(py)?;
                }
            }
            Err(e) => {
                self.ended = Some(Ended::reset());
                set_exception(py, &self.handshake, e);
                if let Some(t) = &self.transport {
                    t.bind(py).call_method0(intern!(py, "close"))?;
                }
            }
        }
        Ok(())
    }

    fn send_error(&self, py: Python<'_>, e: SendError) -> PyErr {
        match e {
            SendError::Closed => self.ended.clone().unwrap_or_else(Ended::reset).to_err(py),
            other => PyValueError::new_err(other.to_string()),
        }
    }
}

#[pymethods]
impl AsyncProtocol {
    #[new]
    #[pyo3(signature = (
        event_loop, url, *, headers = None, subprotocols = None, compression = false,
        max_size = Some(64 << 20), max_queue = 1024, close_timeout = Some(10.0), on_message = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        event_loop: Py<PyAny>,
        url: &str,
        headers: Option<&Bound<'_, PyAny>>,
        subprotocols: Option<Vec<String>>,
        compression: bool,
        max_size: Option<usize>,
        max_queue: usize,
        close_timeout: Option<f64>,
        on_message: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let opts =
            Options::new(url, headers, subprotocols, compression, max_size, None, None, close_timeout, None, None)?;
        let hs = opts.handshake()?;
        let new_future = || event_loop.bind(py).call_method0(intern!(py, "create_future")).map(Bound::unbind);
        Ok(Self {
            conn: Connection::new(Role::Client, opts.config(false), Instant::now()),
            handshake: new_future()?,
            closed_future: new_future()?,
            event_loop,
            transport: None,
            pending: Some(Pending { hs }),
            subprotocol: None,
            response_headers: Vec::new(),
            messages: VecDeque::new(),
            waiter: None,
            ended: None,
            with_app: false,
            eager: false,
            resume_scheduled: false,
            resume: None,
            max_queue: max_queue.max(1),
            eof: false,
            unparsed: 0,
            reading_paused: false,
            writing_paused: false,
            drain_waiters: Vec::new(),
            pings: VecDeque::new(),
            latency: 0.0,
            corked: false,
            corked_bytes: 0,
            last_write: None,
            flush_cb: None,
            on_message,
        })
    }

    // ---- asyncio.Protocol -------------------------------------------------------------------

    fn connection_made(slf: &Bound<'_, Self>, transport: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let resume = slf.getattr(intern!(py, "_resume"))?.unbind();
        let flush_cb = slf.getattr(intern!(py, "_flush"))?.unbind();
        let mut me = slf.borrow_mut();
        me.flush_cb = Some(flush_cb);
        if let Some(p) = &me.pending {
            transport.bind(py).call_method1(intern!(py, "write"), (PyBytes::new(py, p.hs.request()),))?;
        }
        // A `pause_writing` from inside that write belongs to this connection, not to the
        // next one that flushes on this thread.
        if let Some(paused) = NESTED_WRITING.with(|c| c.take()) {
            me.writing_paused = paused;
        }
        me.transport = Some(transport);
        me.resume = Some(resume);
        Ok(())
    }

    /// `GRACE` after a message went to the application: if it has not asked for the next one,
    /// parse eagerly until it does.
    fn _resume(&mut self, py: Python<'_>) -> PyResult<()> {
        self.resume_scheduled = false;
        if self.with_app {
            self.with_app = false;
            self.eager = true;
            self.pump(py)?;
        }
        Ok(())
    }

    /// Write a coalesced burst (scheduled by `send`).
    fn _flush(&mut self, py: Python<'_>) -> PyResult<()> {
        self.corked = false;
        self.flush(py)
    }

    fn data_received(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        let py = slf.py();
        {
            let mut me = slf.borrow_mut();
            me.last_write = None;
            if me.pending.is_some() {
                me.finish_handshake(py, data)?;
            } else {
                me.unparsed += data.len();
                me.conn.handle_read(data, Instant::now());
                me.pump(py)?;
            }
        }
        Self::dispatch(slf)
    }

    fn eof_received(&mut self) -> bool {
        // Let the transport close; connection_lost reports the end.
        false
    }

    #[pyo3(signature = (exc = None))]
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        slf.borrow_mut().lost(py, exc)?;
        // Messages that came before the end reach `on_message` before the end is reported.
        Self::dispatch(slf)?;
        let mut me = slf.borrow_mut();
        if !me.with_app && me.ended.is_none() {
            me.ended = Some(Ended::reset());
            me.wake_all(py);
        }
        set_result(py, &me.closed_future, py.None());
        Ok(())
    }

    /// Whether messages go to an `on_message` callable (then `recv` is not for this connection).
    #[getter]
    fn callback_mode(&self) -> bool {
        self.on_message.is_some()
    }

    /// The transport's write buffer went over its high-water mark: `send` waits for
    /// `drain_future()`, and reading stops too (see `update_reading`) until `resume_writing`.
    fn pause_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::writing_callback(slf, true)
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::writing_callback(slf, false)
    }

    // ---- used by weft.async_client ------------------------------------------------------------

    /// The next queued message, `None` when none is queued; raises `ConnectionClosed` once the
    /// connection has ended and the queue is empty.
    fn recv_nowait(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if let Some(m) = self.messages.pop_front() {
            if self.reading_paused && self.messages.len() < self.max_queue / 2 {
                self.pump(py)?;
            }
            return Ok(Some(m));
        }
        // The application is done with the previous message: parse on, in order.
        self.with_app = false;
        self.eager = false;
        self.pump(py)?;
        if let Some(m) = self.messages.pop_front() {
            return Ok(Some(m));
        }
        match &self.ended {
            Some(e) => Err(e.to_err(py)),
            None => Ok(None),
        }
    }

    /// The future the next message resolves (only set when the queue is empty). Two
    /// coroutines waiting in `recv` at once is an error (`ConcurrencyError`).
    fn set_waiter(&mut self, py: Python<'_>, fut: Py<PyAny>) -> PyResult<()> {
        if let Some(w) = &self.waiter {
            if !done(py, w) {
                return Err(PyErr::from_type(
                    common::exception(py, "ConcurrencyError"),
                    "another coroutine is already waiting for the next message",
                ));
            }
        }
        self.waiter = Some(fut);
        Ok(())
    }

    /// Frame and write `data`; returns whether the transport asked to pause writing (the caller
    /// should then wait for `drain_future()`).
    fn send(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        if let Some(e) = &self.ended {
            return Err(e.to_err(py));
        }
        let len = common::send_python(&mut self.conn, data)?.map_err(|e| self.send_error(py, e))?;
        if self.corked {
            self.corked_bytes += len;
            if self.corked_bytes >= CORK_LIMIT {
                self.flush(py)?;
            }
            return Ok(self.writing_paused);
        }
        let now = Instant::now();
        if let (Some(last), Some(cb)) = (self.last_write, &self.flush_cb) {
            if now.duration_since(last) < BURST {
                self.event_loop.bind(py).call_method1(intern!(py, "call_soon"), (cb.clone_ref(py),))?;
                self.corked = true;
                self.corked_bytes = len;
                return Ok(self.writing_paused);
            }
        }
        self.last_write = Some(now);
        self.flush(py)?;
        Ok(self.writing_paused)
    }

    /// A future resolved when writing may continue.
    fn drain_future(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let fut = self.event_loop.bind(py).call_method0(intern!(py, "create_future"))?.unbind();
        if self.writing_paused && self.ended.is_none() {
            self.drain_waiters.push(fut.clone_ref(py));
        } else {
            set_result(py, &fut, py.None());
        }
        Ok(fut)
    }

    /// Send an unsolicited pong with `data`.
    #[pyo3(signature = (data = None))]
    fn pong(&mut self, py: Python<'_>, data: Option<&[u8]>) -> PyResult<()> {
        if let Some(e) = &self.ended {
            return Err(e.to_err(py));
        }
        let payload = Bytes::copy_from_slice(data.unwrap_or_default());
        self.conn.send(Message::Pong(payload)).map_err(|e| self.send_error(py, e))?;
        self.flush(py)
    }

    /// Send a ping; the returned future resolves to the round-trip time in seconds.
    #[pyo3(signature = (data = None))]
    fn ping(&mut self, py: Python<'_>, data: Option<&[u8]>) -> PyResult<Py<PyAny>> {
        if let Some(e) = &self.ended {
            return Err(e.to_err(py));
        }
        let payload = match data {
            Some(d) => Bytes::copy_from_slice(d),
            None => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Bytes::copy_from_slice(&(nanos.as_nanos() as u64).to_be_bytes())
            }
        };
        if self.pings.iter().any(|(p, _, _)| *p == payload) {
            return Err(PyValueError::new_err("already waiting for a pong with the same data"));
        }
        self.conn.send(Message::Ping(payload.clone())).map_err(|e| self.send_error(py, e))?;
        let fut = self.event_loop.bind(py).call_method0(intern!(py, "create_future"))?.unbind();
        self.pings.push_back((payload, Instant::now(), fut.clone_ref(py)));
        self.flush(py)?;
        // The application has run since its last message (it is pinging): end the grace now,
        // as `_resume` would after `GRACE_SECONDS`, so the pong is handled when it arrives
        // instead of up to 50 ms later. Parsing stays eager until the next `recv`.
        if self.with_app {
            self.with_app = false;
            self.eager = true;
            self.pump(py)?;
        }
        Ok(fut)
    }

    /// Start the close handshake (does nothing once closing or closed). Await
    /// `closed_future` for the end.
    #[pyo3(signature = (code = 1000, reason = ""))]
    fn close(&mut self, py: Python<'_>, code: u16, reason: &str) -> PyResult<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        match self.conn.close(common::close_frame(code, reason)?) {
            Ok(()) | Err(SendError::Closed) => {}
            Err(e) => return Err(PyValueError::new_err(e.to_string())),
        }
        // The application is done: read on to the server's close frame.
        self.with_app = false;
        self.eager = true;
        self.pump(py)
    }

    /// End the connection now with `code` (e.g. 1011 when a keep-alive ping went unanswered):
    /// send the close frame, fail the waiters, and leave the transport to `abort`/close.
    fn fail(&mut self, py: Python<'_>, code: u16, reason: &str) -> PyResult<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        let _ = self.conn.close(common::close_frame(code, reason)?);
        self.flush(py)?;
        self.ended = Some(Ended { code, reason: reason.to_owned(), ok: false });
        self.wake_all(py);
        Ok(())
    }

    /// Drop the connection without a close handshake.
    fn abort(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Some(t) = &self.transport {
            t.bind(py).call_method0(intern!(py, "abort"))?;
        }
        Ok(())
    }

    /// Resolved when the handshake succeeded (or raises its error).
    #[getter]
    fn handshake(&self, py: Python<'_>) -> Py<PyAny> {
        self.handshake.clone_ref(py)
    }

    /// Resolved when the TCP connection is gone.
    #[getter]
    fn closed_future(&self, py: Python<'_>) -> Py<PyAny> {
        self.closed_future.clone_ref(py)
    }

    #[getter]
    fn subprotocol(&self) -> Option<String> {
        self.subprotocol.clone()
    }

    #[getter]
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.clone()
    }

    /// Whether the WebSocket connection has ended (close handshake done, or connection lost).
    #[getter]
    fn closed(&self) -> bool {
        self.ended.is_some()
    }

    /// The transport, while connected.
    #[getter]
    fn transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.transport.as_ref().map(|t| t.clone_ref(py))
    }

    /// Whether a close frame was sent or received.
    #[getter]
    fn closing(&self) -> bool {
        self.conn.is_closing() || self.ended.is_some()
    }

    #[getter]
    fn close_code(&self) -> Option<u16> {
        self.ended.as_ref().map(|e| e.code)
    }

    #[getter]
    fn close_reason(&self) -> Option<String> {
        self.ended.as_ref().map(|e| e.reason.clone())
    }

    /// The `ConnectionClosed` exception describing the end (`None` while open).
    fn closed_error(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.ended.as_ref().map(|e| e.to_err(py).into_value(py).into_any())
    }

    #[getter]
    fn latency(&self) -> f64 {
        self.latency
    }
}
