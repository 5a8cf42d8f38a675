//! The connection state machine: bytes in, events out; messages in, bytes out; time in.
//!
//! [`Connection`] owns no socket and reads no clock. An adapter
//! 1. reads transport bytes into [`Connection::read_buffer`] (or hands them to
//!    [`Connection::handle_read`]) and calls [`Connection::handle_input`] with the time,
//! 2. drains [`Connection::poll_event`] until it returns `None`,
//! 3. queues messages with [`Connection::send`] and writes what [`Connection::transmit_slices`]
//!    returns, reporting progress with [`Connection::advance_transmit`],
//! 4. sleeps until [`Connection::poll_timeout`] and then calls [`Connection::handle_timeout`],
//! 5. closes the transport once [`Connection::is_finished`] says so.
//!
//! Keep-alive pings, the idle timeout, the close-handshake deadline and the outbound byte count
//! (backpressure) all live here, so every adapter gets them, and tests drive them with a
//! virtual clock.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use crate::buffer;
use crate::close::{CloseCode, CloseFrame};
use crate::config::Config;
#[cfg(feature = "deflate")]
use crate::deflate::{DeflateParams, Deflater, Inflater};
use crate::error::{ConnectionError, ProtocolError, SendError, Timeout};
use crate::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use crate::mask;
use crate::message::{Message, Utf8Bytes};
use crate::utf8::{self, Utf8Validator};

/// Most a read buffer grows by in one step beyond what it already holds.
const MAX_READ_STEP: usize = 64 << 10;

/// Which end of the connection we are. Clients mask what they send; servers must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We opened the connection.
    Client,
    /// We accepted the connection.
    Server,
}

/// Kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// UTF-8 text.
    Text,
    /// Arbitrary bytes.
    Binary,
}

/// What [`Connection::poll_event`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete message (or a control frame: Ping, Pong, Close).
    Message(Message),
    /// With [`Config::stream_fragments`]: one piece of a data message, as it arrives
    /// (decompressed). Text pieces are validated but may split a code point between pieces.
    Fragment {
        /// Text or binary.
        kind: DataKind,
        /// This piece.
        payload: Bytes,
        /// Last piece of the message.
        fin: bool,
    },
    /// The connection ended; no more events follow. Flush what remains to transmit, then close
    /// the transport.
    Closed(ConnectionError),
}

/// What [`Connection::poll_input`] found in the adapter's own buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// A whole text message that arrived as one uncompressed frame, unmasked and validated in
    /// place in the adapter's buffer. Valid until the adapter reuses the buffer: copy what must
    /// outlive it.
    Text(&'a str),
    /// A whole binary message that arrived as one uncompressed frame, unmasked in place.
    Binary(&'a [u8]),
    /// Anything else, as [`Connection::poll_event`] reports it (control frames, fragmented or
    /// compressed messages, the end of the connection).
    Event(Event),
}

#[derive(Debug)]
struct PartialFrame {
    header: FrameHeader,
    header_len: usize,
    /// Payload bytes already unmasked and validated (only for progressively checked text).
    processed: usize,
}

#[derive(Debug)]
struct Assembly {
    kind: DataKind,
    compressed: bool,
    fragments: usize,
    /// Wire bytes received so far (for the uncompressed size check).
    wire_size: usize,
    /// Bytes already handed out as fragments (streaming mode).
    streamed: usize,
    buf: Vec<u8>,
}

/// permessage-deflate state, allocated only when negotiated.
#[cfg(feature = "deflate")]
#[derive(Debug)]
struct DeflateState {
    deflater: Deflater,
    inflater: Inflater,
    params: DeflateParams,
}

#[cfg(feature = "deflate")]
impl DeflateState {
    /// Whether no context remembers earlier messages once [`forget`](Self::forget) ran.
    fn can_forget(&self) -> bool {
        self.deflater.can_forget() && self.inflater.can_forget()
    }

    /// Drop contexts that hold nothing a later message needs (no context takeover).
    fn forget(&mut self) {
        self.deflater.forget();
        self.inflater.forget();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// Ended; `Event::Closed` was queued.
    Closed,
}

/// A WebSocket connection as a deterministic state machine (RFC 6455 + RFC 7692).
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Arc<Config>,
    state: State,
    now: Instant,

    // Input.
    rbuf: BytesMut,
    current: Option<PartialFrame>,
    assembly: Option<Assembly>,
    utf8: Utf8Validator,
    events: VecDeque<Event>,
    #[cfg(feature = "deflate")]
    deflate: Option<Box<DeflateState>>,

    // Output.
    out: VecDeque<Bytes>,
    out_head_written: usize,
    /// Chunks at the front of `out` lent by [`transmit_chunks`](Self::transmit_chunks) to a
    /// write still in flight: [`discard_unsent`](Self::discard_unsent) keeps them.
    out_lent: u32,
    cork: BytesMut,
    buffered: usize,
    vectored: bool,
    /// Set by [`Connection::pause_input`]: the application reads no more for now.
    input_paused: bool,
    sent_close: Option<Option<CloseFrame>>,
    /// The payload of the most recent unanswered ping: at most one automatic pong waits
    /// (RFC 6455 §5.5.3), written when the adapter next asks for bytes to transmit.
    pong_pending: Option<Bytes>,

    // Timers.
    last_input: Instant,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    ping_payload: [u8; 8],
    close_deadline: Option<Instant>,
}

impl Connection {
    /// A connection whose handshake has completed, at time `now`. Pass an `Arc<Config>` to
    /// share one configuration between many connections.
    pub fn new(role: Role, config: impl Into<Arc<Config>>, now: Instant) -> Self {
        let config = config.into();
        let next_ping = config.ping_interval.map(|d| now + d);
        Self {
            role,
            state: State::Open,
            now,
            rbuf: BytesMut::new(),
            current: None,
            assembly: None,
            utf8: Utf8Validator::new(),
            events: VecDeque::new(),
            #[cfg(feature = "deflate")]
            deflate: None,
            out: VecDeque::new(),
            out_head_written: 0,
            out_lent: 0,
            cork: BytesMut::new(),
            buffered: 0,
            vectored: true,
            input_paused: false,
            sent_close: None,
            pong_pending: None,
            last_input: now,
            next_ping,
            pong_deadline: None,
            ping_payload: [0; 8],
            close_deadline: None,
            config,
        }
    }

    /// Enable permessage-deflate with the parameters the handshake negotiated.
    #[cfg(feature = "deflate")]
    pub fn set_deflate(&mut self, params: DeflateParams) {
        let cfg = self.config.deflate.clone().unwrap_or_default();
        let (ours_bits, ours_nct, theirs_bits, theirs_nct) = match self.role {
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
                params.client_max_window_bits,
                params.client_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
                params.server_max_window_bits,
                params.server_no_context_takeover,
            ),
        };
        self.deflate = Some(Box::new(DeflateState {
            deflater: Deflater::new(cfg.level, ours_bits, ours_nct, cfg.threshold),
            inflater: Inflater::new(theirs_bits, theirs_nct),
            params,
        }));
    }

    /// The negotiated permessage-deflate parameters, if any.
    #[cfg(feature = "deflate")]
    pub fn deflate_params(&self) -> Option<DeflateParams> {
        self.deflate.as_ref().map(|d| d.params)
    }

    /// Tell the connection whether the transport writes several slices at once efficiently.
    /// When not (TLS, for example), large payloads are copied into the write buffer too, so
    /// that each write carries as much as possible.
    pub fn set_vectored(&mut self, vectored: bool) {
        self.vectored = vectored;
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----------------------------------------------------------------------------------------
    // Input
    // ----------------------------------------------------------------------------------------

    /// The read buffer, with room for at least the rest of the current frame (up to a few KiB
    /// at a time for frames of unknown size). Append transport bytes to it, then call
    /// [`handle_input`](Self::handle_input).
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        if self.rbuf.capacity() == 0 {
            self.rbuf = buffer::take();
        }
        let want = match &self.current {
            Some(f) => (f.header_len + f.header.payload_len as usize).saturating_sub(self.rbuf.len()),
            None => 0,
        };
        // Read in large steps (8 KiB reads cost ~2x server CPU per 16 KiB message, measured),
        // but grow only as bytes arrive: a header announcing 16 MiB reserves 64 KiB, and the
        // buffer at most doubles per step, so memory follows what the peer actually sent.
        let step = want.min(self.rbuf.len().max(MAX_READ_STEP));
        self.rbuf.reserve(step.max(buffer::INITIAL_CAPACITY));
        &mut self.rbuf
    }

    /// Copy `data` into the read buffer and note the time (for adapters that are handed bytes).
    pub fn handle_read(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() {
            return;
        }
        if self.state != State::Closed {
            self.read_buffer().extend_from_slice(data);
        }
        self.handle_input(now);
    }

    /// Bytes were appended to [`read_buffer`](Self::read_buffer) at time `now`.
    pub fn handle_input(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.last_input = self.now;
        if self.state == State::Closed {
            // After the end we only drain: input is discarded.
            self.rbuf.clear();
        }
    }

    /// The transport reached end of file.
    pub fn handle_eof(&mut self) {
        if self.state != State::Closed {
            self.finish(ConnectionError::Reset);
        }
    }

    /// Whether the adapter should read more input now. `false` while more than
    /// [`Config::write_buffer_high_water`] bytes wait to be written: a peer that sends without
    /// reading (a ping flood, say) then stops being read until its output drains, so the
    /// replies it causes cannot pile up without bound (TCP backpressure reaches the peer).
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Message, Role};
    ///
    /// let mut c = Connection::new(Role::Server, Config::default().write_buffer_high_water(1024), Instant::now());
    /// assert!(c.wants_input());
    /// c.send(Message::binary(vec![0u8; 4096])).unwrap();
    /// assert!(!c.wants_input()); // write first
    /// ```
    pub fn wants_input(&self) -> bool {
        // A pause ends with our close frame: the peer's answer to it must be read.
        (!self.input_paused || self.state == State::CloseSent) && !self.above_high_water()
    }

    /// Whether more than [`Config::write_buffer_high_water`] bytes wait to be written.
    pub fn above_high_water(&self) -> bool {
        self.buffered > self.config.write_buffer_high_water
    }

    /// Stop (`true`) or resume (`false`) reading for the application's own reasons — a request
    /// still being answered, say: [`wants_input`](Self::wants_input) says `false` while paused,
    /// whatever the output, until it is resumed or we send a close frame (then the peer's
    /// answer must be read: messages that come before it are still reported, the
    /// application may ignore them). Input already handed over is processed as usual.
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Role};
    ///
    /// let mut c = Connection::new(Role::Server, Config::default(), Instant::now());
    /// c.pause_input(true);
    /// assert!(!c.wants_input() && !c.is_idle());
    /// c.pause_input(false);
    /// assert!(c.wants_input());
    /// // Once we sent a close frame, input is read again (the peer's close must arrive).
    /// c.pause_input(true);
    /// c.close(None).unwrap();
    /// assert!(c.wants_input());
    /// ```
    pub fn pause_input(&mut self, paused: bool) {
        self.input_paused = paused;
    }

    /// Whether part of a frame is waiting for more bytes.
    pub fn has_partial_input(&self) -> bool {
        !self.rbuf.is_empty() || self.current.is_some()
    }

    /// Next event, or `None` when more input is needed (or everything was reported).
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.state == State::Closed {
                return None;
            }
            match self.next_frame() {
                Ok(Some(ev)) => return Some(ev),
                Ok(None) => return None,
                Err(FrameResult::Handled) => continue,
                Err(FrameResult::Violation(e)) => self.fail(e),
            }
        }
    }

    /// Process transport bytes straight from the adapter's own buffer `input` (an event loop's
    /// shared receive buffer, say), at time `now`, without copying them into the connection.
    ///
    /// Returns the next thing found and advances `input` past it; call until it returns `None`,
    /// which it does only once `input` is empty. Whole frames are parsed where they lie: a data
    /// message in one uncompressed frame comes back as [`Input::Text`] or [`Input::Binary`],
    /// unmasked in place;
    /// every other frame (control, fragment, compressed) is copied alone into the connection
    /// and reported as [`Input::Event`]. Only the bytes of a frame that has not fully arrived
    /// stay behind in the connection's own buffer, so between reads an idle connection holds
    /// none. Limits, UTF-8 checks, automatic pongs and the close handshake are exactly those of
    /// [`poll_event`](Self::poll_event).
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Input, Message, Role};
    ///
    /// let now = Instant::now();
    /// let mut client = Connection::new(Role::Client, Config::default(), now);
    /// client.send(Message::text("hello")).unwrap();
    /// client.send(Message::binary(vec![1, 2, 3])).unwrap();
    /// let mut wire = Vec::new();
    /// while let Some(chunk) = client.poll_transmit() {
    ///     wire.extend_from_slice(&chunk);
    /// }
    ///
    /// let mut server = Connection::new(Role::Server, Config::default(), now);
    /// let mut input = &mut wire[..];
    /// assert_eq!(server.poll_input(&mut input, now), Some(Input::Text("hello")));
    /// assert_eq!(server.poll_input(&mut input, now), Some(Input::Binary(&[1, 2, 3])));
    /// assert_eq!(server.poll_input(&mut input, now), None);
    /// assert!(input.is_empty());
    /// ```
    pub fn poll_input<'a>(&mut self, input: &mut &'a mut [u8], now: Instant) -> Option<Input<'a>> {
        if !input.is_empty() {
            self.now = self.now.max(now);
            self.last_input = self.now;
        }
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Some(Input::Event(ev));
            }
            if self.state == State::Closed {
                // After the end we only drain: input is discarded.
                *input = &mut [];
                return None;
            }
            if !self.rbuf.is_empty() || self.current.is_some() {
                // A frame is incomplete: give it what it still needs (a header's worth when its
                // length is not known yet), and let the owned path parse it.
                let need = match &self.current {
                    Some(f) => (f.header_len + f.header.payload_len as usize).saturating_sub(self.rbuf.len()),
                    None => MAX_HEADER_LEN.saturating_sub(self.rbuf.len()),
                };
                let n = need.min(input.len());
                if n > 0 {
                    let (head, rest) = std::mem::take(input).split_at_mut(n);
                    *input = rest;
                    self.read_buffer().extend_from_slice(head);
                }
                match self.poll_event() {
                    Some(ev) => return Some(Input::Event(ev)),
                    None if input.is_empty() => return None,
                    None if n == 0 => {
                        // Bytes queued through `handle_read` as well: keep everything in order.
                        let rest = std::mem::take(input);
                        self.read_buffer().extend_from_slice(rest);
                    }
                    None => {}
                }
                continue;
            }
            if input.is_empty() {
                return None;
            }
            let (header, header_len) = match FrameHeader::decode(input) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    // Not even a whole header: keep it for the next read.
                    let rest = std::mem::take(input);
                    self.read_buffer().extend_from_slice(rest);
                    return None;
                }
                Err(e) => {
                    self.fail(e);
                    continue;
                }
            };
            if let Err(e) = self.check_header(&header) {
                self.fail(e);
                continue;
            }
            let len = header.payload_len as usize;
            let total = header_len + len;
            if input.len() < total {
                // Incomplete: the owned path takes it from here (the loop above).
                let n = input.len().min(total);
                let (head, rest) = std::mem::take(input).split_at_mut(n);
                *input = rest;
                self.read_buffer().extend_from_slice(head);
                continue;
            }
            let (frame, rest) = std::mem::take(input).split_at_mut(total);
            *input = rest;
            let whole = header.fin && !header.rsv1 && !self.config.stream_fragments;
            if !whole || !matches!(header.opcode, OpCode::Text | OpCode::Binary) {
                // Control frames, fragments, compressed messages: the owned path.
                self.read_buffer().extend_from_slice(frame);
                match self.poll_event() {
                    Some(ev) => return Some(Input::Event(ev)),
                    None => continue,
                }
            }
            let payload = &mut frame[header_len..];
            if let Some(key) = header.mask {
                mask::apply_mask(payload, key, 0);
            }
            let payload: &'a [u8] = payload;
            if header.opcode == OpCode::Binary {
                return Some(Input::Binary(payload));
            }
            match utf8::as_str(payload) {
                Ok(text) => return Some(Input::Text(text)),
                Err(_) => self.fail(ProtocolError::InvalidUtf8),
            }
        }
    }

    fn check_header(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        if h.rsv1 && (!self.deflate_negotiated() || !matches!(h.opcode, OpCode::Text | OpCode::Binary)) {
            return Err(ProtocolError::ReservedBits);
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        match (h.opcode, &self.assembly) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            _ => {}
        }
        if h.payload_len > self.config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge { size: h.payload_len, max: self.config.max_frame_size });
        }
        if !h.opcode.is_control() {
            let compressed = match &self.assembly {
                Some(a) => a.compressed,
                None => h.rsv1,
            };
            let so_far = self.assembly.as_ref().map_or(0, |a| a.wire_size) as u64;
            if !compressed && so_far + h.payload_len > self.config.max_message_size as u64 {
                return Err(ProtocolError::MessageTooLarge { max: self.config.max_message_size });
            }
        }
        Ok(())
    }

    fn deflate_negotiated(&self) -> bool {
        #[cfg(feature = "deflate")]
        {
            self.deflate.is_some()
        }
        #[cfg(not(feature = "deflate"))]
        {
            false
        }
    }

    /// Whether the frame being received is uncompressed text, which we validate as it arrives.
    fn is_progressive_text(&self, h: &FrameHeader) -> bool {
        match h.opcode {
            OpCode::Text => !h.rsv1,
            OpCode::Continuation => self.assembly.as_ref().is_some_and(|a| a.kind == DataKind::Text && !a.compressed),
            _ => false,
        }
    }

    fn next_frame(&mut self) -> Result<Option<Event>, FrameResult> {
        if self.current.is_none() {
            let Some((header, header_len)) = FrameHeader::decode(&self.rbuf)? else {
                return Ok(None);
            };
            self.check_header(&header)?;
            if header.opcode == OpCode::Text && !header.rsv1 {
                self.utf8.reset();
            }
            self.current = Some(PartialFrame { header, header_len, processed: 0 });
        }
        let (header, header_len, processed) = {
            let f = self.current.as_ref().expect("set above");
            (f.header, f.header_len, f.processed)
        };
        let len = header.payload_len as usize;
        let avail = self.rbuf.len() - header_len;
        if avail < len {
            // Fail fast on invalid UTF-8 inside a frame that is still arriving (Autobahn 6.4.3/4).
            if avail > processed && self.is_progressive_text(&header) {
                let part = &mut self.rbuf[header_len + processed..header_len + avail];
                if let Some(key) = header.mask {
                    mask::apply_mask(part, key, processed);
                }
                self.utf8.feed(part).map_err(|_| ProtocolError::InvalidUtf8)?;
                self.current.as_mut().expect("set").processed = avail;
            }
            return Ok(None);
        }
        if let Some(key) = header.mask {
            mask::apply_mask(&mut self.rbuf[header_len + processed..header_len + len], key, processed);
        }
        self.rbuf.advance(header_len);
        let payload = self.rbuf.split_to(len).freeze();
        self.current = None;
        if header.opcode.is_control() {
            self.on_control(header.opcode, payload)
        } else {
            self.on_data(&header, payload, processed).map(Some)
        }
    }

    fn on_control(&mut self, op: OpCode, payload: Bytes) -> Result<Option<Event>, FrameResult> {
        match op {
            OpCode::Ping => {
                if self.state == State::Open {
                    // Only the most recent ping is answered (RFC 6455 §5.5.3): a flood of
                    // pings costs one pending pong, not one per ping.
                    self.pong_pending = Some(payload.clone());
                }
                Ok(Some(Event::Message(Message::Ping(payload))))
            }
            OpCode::Pong => {
                if self.pong_deadline.is_some() && payload[..] == self.ping_payload[..] {
                    self.pong_deadline = None;
                }
                Ok(Some(Event::Message(Message::Pong(payload))))
            }
            OpCode::Close => {
                let frame = CloseFrame::parse(&payload)?;
                let end = match self.sent_close.take() {
                    Some(ours) => ConnectionError::LocallyClosed(ours),
                    None => {
                        // Echo the status code (RFC 6455 §5.5.1), without a reason.
                        let reply = frame.as_ref().map(|f| CloseFrame { code: f.code, reason: Utf8Bytes::default() });
                        self.queue_close(reply.as_ref());
                        ConnectionError::PeerClosed(frame.clone())
                    }
                };
                self.events.push_back(Event::Message(Message::Close(frame)));
                self.finish(end);
                Err(FrameResult::Handled)
            }
            _ => unreachable!("only control opcodes reach on_control"),
        }
    }

    fn on_data(&mut self, h: &FrameHeader, payload: Bytes, processed: usize) -> Result<Event, FrameResult> {
        let first = h.opcode != OpCode::Continuation;
        let kind = match h.opcode {
            OpCode::Text => DataKind::Text,
            OpCode::Binary => DataKind::Binary,
            _ => self.assembly.as_ref().map_or(DataKind::Binary, |a| a.kind),
        };
        // Fast path: a whole uncompressed message in one frame, handed out without a copy.
        if first && h.fin && !h.rsv1 && !self.config.stream_fragments {
            if kind == DataKind::Text {
                if processed == 0 {
                    utf8::validate(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                } else {
                    self.utf8.feed(&payload[processed..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                    self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                return Ok(Event::Message(Message::Text(Utf8Bytes::from_validated(payload))));
            }
            return Ok(Event::Message(Message::Binary(payload)));
        }
        if first {
            self.assembly =
                Some(Assembly { kind, compressed: h.rsv1, fragments: 0, wire_size: 0, streamed: 0, buf: Vec::new() });
        }
        let max_fragments = self.config.max_fragments;
        let max_message = self.config.max_message_size;
        let stream = self.config.stream_fragments;
        let a = self.assembly.as_mut().expect("assembly exists for data frames");
        a.fragments += 1;
        if a.fragments > max_fragments {
            return Err(ProtocolError::TooManyFragments { max: max_fragments }.into());
        }
        a.wire_size += payload.len();
        let piece: Bytes = if a.compressed {
            #[cfg(feature = "deflate")]
            {
                let inflater = &mut self.deflate.as_mut().expect("compressed implies negotiated").inflater;
                let mut out = if stream { Vec::new() } else { std::mem::take(&mut a.buf) };
                let start = out.len();
                let limit = max_message - a.streamed;
                inflater.inflate(&payload, &mut out, limit)?;
                if h.fin {
                    inflater.finish(&mut out, limit)?;
                }
                if a.kind == DataKind::Text {
                    self.utf8.feed(&out[start..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                if stream {
                    a.streamed += out.len();
                    Bytes::from(out)
                } else {
                    a.buf = out;
                    Bytes::new()
                }
            }
            #[cfg(not(feature = "deflate"))]
            {
                unreachable!("RSV1 is rejected without deflate")
            }
        } else {
            if a.kind == DataKind::Text {
                self.utf8.feed(&payload[processed..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            if stream {
                payload
            } else {
                a.buf.extend_from_slice(&payload);
                Bytes::new()
            }
        };
        if h.fin {
            if kind == DataKind::Text {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            let a = self.assembly.take().expect("present");
            if stream {
                return Ok(Event::Fragment { kind, payload: piece, fin: true });
            }
            let bytes = Bytes::from(a.buf);
            return Ok(Event::Message(match kind {
                DataKind::Text => Message::Text(Utf8Bytes::from_validated(bytes)),
                DataKind::Binary => Message::Binary(bytes),
            }));
        }
        if stream {
            return Ok(Event::Fragment { kind, payload: piece, fin: false });
        }
        Err(FrameResult::Handled)
    }

    /// Fail the connection (RFC 6455 §7.1.7): send a close frame with the error's code, stop
    /// reading.
    fn fail(&mut self, e: ProtocolError) {
        if self.sent_close.is_none() && self.state == State::Open {
            let frame = CloseFrame::new(e.close_code(), &e.to_string());
            self.queue_close(Some(&frame));
        }
        self.finish(ConnectionError::ProtocolViolation(e));
    }

    fn finish(&mut self, reason: ConnectionError) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.rbuf.clear();
        self.current = None;
        self.assembly = None;
        self.next_ping = None;
        self.pong_deadline = None;
        self.close_deadline = None;
        self.pong_pending = None;
        self.events.push_back(Event::Closed(reason));
    }

    // ----------------------------------------------------------------------------------------
    // Output
    // ----------------------------------------------------------------------------------------

    /// Queue a message. Data messages are refused once a close frame was sent or received,
    /// and while more than [`Config::max_buffered`] bytes wait to be written.
    /// `Message::Close` starts the close handshake (see [`close`](Self::close)).
    pub fn send(&mut self, msg: Message) -> Result<(), SendError> {
        match msg {
            Message::Text(t) => self.send_data(OpCode::Text, t.into_bytes()),
            Message::Binary(b) => self.send_data(OpCode::Binary, b),
            Message::Ping(p) => self.send_control(OpCode::Ping, &p),
            Message::Pong(p) => self.send_control(OpCode::Pong, &p),
            Message::Close(f) => self.close(f),
        }
    }

    /// Queue a data message whose payload is borrowed: `text` (valid UTF-8 by type) or
    /// binary. A client copies (and masks) the payload straight into its write buffer, one copy
    /// fewer than [`send`](Self::send) with an owned [`Message`] made from foreign memory (the
    /// Python bindings' case). Large server payloads are copied into their own slice.
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Role};
    ///
    /// let mut c = Connection::new(Role::Client, Config::default(), Instant::now());
    /// c.send_borrowed(false, b"payload").unwrap();
    /// assert!(c.has_transmit());
    /// ```
    pub fn send_borrowed(&mut self, text: bool, payload: &[u8]) -> Result<(), SendError> {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.check_can_send()?;
        #[cfg(feature = "deflate")]
        if let Some(d) = self.deflate.as_mut().map(|d| &mut d.deflater).filter(|d| d.wants(payload.len())) {
            let mut z = Vec::with_capacity(payload.len() / 2 + 16);
            d.compress(payload, &mut z);
            let mut h = FrameHeader::new(op, z.len() as u64);
            h.rsv1 = true;
            self.push_frame(h, Bytes::from(z));
            return Ok(());
        }
        let mut h = FrameHeader::new(op, payload.len() as u64);
        h.mask = self.mask_key();
        if h.mask.is_none() && payload.len() > self.config.cork_threshold && self.vectored {
            self.push_frame(h, Bytes::copy_from_slice(payload));
        } else {
            self.write_header(&h);
            self.write_payload(&h, payload);
        }
        Ok(())
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        if self.buffered > self.config.max_buffered {
            return Err(SendError::Backpressure { buffered: self.buffered, limit: self.config.max_buffered });
        }
        Ok(())
    }

    fn send_data(&mut self, op: OpCode, payload: Bytes) -> Result<(), SendError> {
        self.check_can_send()?;
        #[cfg(feature = "deflate")]
        if let Some(d) = self.deflate.as_mut().map(|d| &mut d.deflater).filter(|d| d.wants(payload.len())) {
            let mut z = Vec::with_capacity(payload.len() / 2 + 16);
            d.compress(&payload, &mut z);
            let mut h = FrameHeader::new(op, z.len() as u64);
            h.rsv1 = true;
            self.push_frame(h, Bytes::from(z));
            return Ok(());
        }
        self.push_frame(FrameHeader::new(op, payload.len() as u64), payload);
        Ok(())
    }

    fn send_control(&mut self, op: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLarge);
        }
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        self.queue_control(op, payload);
        Ok(())
    }

    /// Start the close handshake with `frame` (`None`: no status code). Idempotent while
    /// closing. The peer has [`Config::close_timeout`] to answer.
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), SendError> {
        if let Some(f) = &frame {
            if !f.code.is_valid_on_wire() {
                return Err(SendError::InvalidCloseCode(f.code.0));
            }
            if f.encoded_len() > MAX_CONTROL_PAYLOAD {
                return Err(SendError::ControlTooLarge);
            }
        }
        match self.state {
            State::CloseSent => Ok(()),
            State::Closed => Err(SendError::Closed),
            State::Open => {
                self.queue_close(frame.as_ref());
                self.sent_close = Some(frame);
                self.state = State::CloseSent;
                self.close_deadline = Some(self.now + self.config.close_timeout);
                self.next_ping = None;
                Ok(())
            }
        }
    }

    fn queue_close(&mut self, frame: Option<&CloseFrame>) {
        // A pong owed for an earlier ping precedes the close frame.
        self.write_pending_pong();
        let mut payload = Vec::with_capacity(2 + frame.map_or(0, |f| f.reason.len()));
        if let Some(f) = frame {
            f.encode_into(&mut payload);
        }
        self.queue_control(OpCode::Close, &payload);
    }

    fn queue_control(&mut self, op: OpCode, payload: &[u8]) {
        let mut h = FrameHeader::new(op, payload.len() as u64);
        h.mask = self.mask_key();
        self.write_header(&h);
        self.write_payload(&h, payload);
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        // RFC 6455 §10.3: masks must be unpredictable; ThreadRng is a CSPRNG (ChaCha12,
        // seeded and periodically reseeded from the OS).
        (self.role == Role::Client).then(rand::random::<[u8; 4]>)
    }

    fn write_header(&mut self, h: &FrameHeader) {
        let mut hb = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut hb);
        if self.cork.capacity() == 0 {
            self.cork = buffer::take();
        }
        self.cork.extend_from_slice(&hb[..n]);
        self.buffered += n;
    }

    fn write_payload(&mut self, h: &FrameHeader, payload: &[u8]) {
        match h.mask {
            Some(key) => {
                let start = self.cork.len();
                self.cork.extend_from_slice(payload);
                mask::apply_mask(&mut self.cork[start..], key, 0);
            }
            None => self.cork.extend_from_slice(payload),
        }
        self.buffered += payload.len();
    }

    fn push_frame(&mut self, mut h: FrameHeader, payload: Bytes) {
        h.mask = self.mask_key();
        self.write_header(&h);
        if h.mask.is_some() || payload.len() <= self.config.cork_threshold || !self.vectored {
            self.write_payload(&h, &payload);
        } else {
            // Large server payload: its own slice, written vectored with no copy.
            self.seal_cork();
            self.buffered += payload.len();
            self.out.push_back(payload);
        }
    }

    /// Queue a pre-encoded message (see [`EncodedMessage`]): the same bytes for every server
    /// connection, compressed once when the connection negotiated permessage-deflate.
    pub fn send_encoded(&mut self, m: &EncodedMessage) -> Result<(), SendError> {
        self.check_can_send()?;
        if self.role == Role::Client {
            return self.send_data(m.opcode, m.payload.clone());
        }
        #[cfg(feature = "deflate")]
        if let (Some(z), Some(d)) = (&m.deflated, self.deflate.as_mut()) {
            if d.params.server_max_window_bits == 15 {
                // Our own compressor's window no longer matches what the peer has seen.
                let cfg = self.config.deflate.clone().unwrap_or_default();
                d.deflater = Deflater::new(cfg.level, 15, d.params.server_no_context_takeover, cfg.threshold);
                return self.push_encoded(z.clone());
            }
        }
        self.push_encoded(m.plain.clone())
    }

    fn push_encoded(&mut self, frame: Bytes) -> Result<(), SendError> {
        if frame.len() <= self.config.cork_threshold || !self.vectored {
            if self.cork.capacity() == 0 {
                self.cork = buffer::take();
            }
            self.cork.extend_from_slice(&frame);
            self.buffered += frame.len();
        } else {
            self.seal_cork();
            self.buffered += frame.len();
            self.out.push_back(frame);
        }
        Ok(())
    }

    /// Queue the automatic pong for the most recent ping now, behind what is already queued.
    /// Without this call it waits for [`transmit_slices`](Self::transmit_slices) (or
    /// [`poll_transmit`](Self::poll_transmit)), and of several pings read in one go only the
    /// last is answered (RFC 6455 §5.5.3 allows that). An adapter that processes many frames
    /// per read calls it after each ping it is reported, so every ping is answered in order
    /// (before the echo of a message that completes after it); the output it adds counts in
    /// [`buffered_amount`](Self::buffered_amount), so [`wants_input`](Self::wants_input) still
    /// stops a flood.
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Event, Message, Role};
    ///
    /// let now = Instant::now();
    /// let mut client = Connection::new(Role::Client, Config::default(), now);
    /// let mut server = Connection::new(Role::Server, Config::default(), now);
    /// client.send(Message::Ping("a".into())).unwrap();
    /// client.send(Message::Ping("b".into())).unwrap();
    /// while let Some(chunk) = client.poll_transmit() {
    ///     server.handle_read(&chunk, now);
    /// }
    /// while server.poll_event().is_some() {
    ///     server.queue_pong();
    /// }
    /// while let Some(chunk) = server.poll_transmit() {
    ///     client.handle_read(&chunk, now);
    /// }
    /// assert_eq!(client.poll_event(), Some(Event::Message(Message::Pong("a".into()))));
    /// assert_eq!(client.poll_event(), Some(Event::Message(Message::Pong("b".into()))));
    /// ```
    pub fn queue_pong(&mut self) {
        self.write_pending_pong();
    }

    fn write_pending_pong(&mut self) {
        if let Some(p) = self.pong_pending.take() {
            self.queue_control(OpCode::Pong, &p);
        }
    }

    fn seal_cork(&mut self) {
        if !self.cork.is_empty() {
            self.out.push_back(self.cork.split().freeze());
        }
    }

    /// Drop queued output that has not started to leave: every chunk after the one being
    /// written, and the write buffer. Use it before closing a connection whose peer stopped
    /// reading (a slow consumer), so the close frame is not queued behind data that will never
    /// be read. Frames stay whole: a partly written chunk is kept. Returns the bytes dropped.
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{CloseCode, CloseFrame, Config, Connection, Message, Role};
    ///
    /// let mut c = Connection::new(Role::Server, Config::default(), Instant::now());
    /// c.send(Message::text("never read")).unwrap();
    /// assert_eq!(c.discard_unsent(), 12);
    /// c.close(Some(CloseFrame::new(CloseCode::POLICY, "slow consumer"))).unwrap();
    /// assert_eq!(c.buffered_amount(), 2 + 2 + 13); // only the close frame is left
    /// ```
    pub fn discard_unsent(&mut self) -> usize {
        if self.state != State::Open {
            return 0; // our close frame is queued: it goes, and what precedes it
        }
        // A chunk partly written, and chunks lent to a write in flight, go out whole.
        let keep = usize::from(self.out_head_written > 0).max(self.out_lent as usize);
        let mut dropped = 0;
        while self.out.len() > keep {
            dropped += self.out.pop_back().map_or(0, |c| c.len());
        }
        dropped += self.cork.len();
        self.cork.clear();
        self.buffered -= dropped;
        dropped
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        self.buffered
    }

    /// Whether anything waits to be written.
    pub fn has_transmit(&self) -> bool {
        self.buffered > 0 || self.pong_pending.is_some()
    }

    /// Fill `dst` with the queued bytes in order and return how many slices were used. Write
    /// them (vectored), then call [`advance_transmit`](Self::advance_transmit).
    pub fn transmit_slices<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        self.write_pending_pong();
        self.seal_cork();
        let mut n = 0;
        for (i, chunk) in self.out.iter().enumerate() {
            if n == dst.len() {
                break;
            }
            let s = if i == 0 { &chunk[self.out_head_written..] } else { &chunk[..] };
            dst[n] = IoSlice::new(s);
            n += 1;
        }
        n
    }

    /// Hand `f` clones of the queued chunks in order (at most `max`, the first from where the
    /// last write stopped) and return how many: for adapters that lend the bytes to the kernel
    /// until a write completes (io_uring). The chunks stay queued and counted in
    /// [`buffered_amount`](Self::buffered_amount) until
    /// [`advance_transmit`](Self::advance_transmit) reports them written; cloning a chunk copies
    /// no bytes.
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Message, Role};
    ///
    /// let mut c = Connection::new(Role::Server, Config::default(), Instant::now());
    /// c.send(Message::text("hi")).unwrap();
    /// let mut lent = Vec::new();
    /// assert_eq!(c.transmit_chunks(8, |b| lent.push(b)), 1);
    /// assert_eq!(&lent[0][..], b"\x81\x02hi");
    /// assert_eq!(c.buffered_amount(), 4); // still queued until the write completes
    /// c.advance_transmit(4);
    /// assert!(!c.has_transmit());
    /// ```
    pub fn transmit_chunks(&mut self, max: usize, mut f: impl FnMut(Bytes)) -> usize {
        self.write_pending_pong();
        self.seal_cork();
        let mut n = 0;
        for (i, chunk) in self.out.iter().take(max).enumerate() {
            f(if i == 0 { chunk.slice(self.out_head_written..) } else { chunk.clone() });
            n += 1;
        }
        self.out_lent = n as u32;
        n
    }

    /// Pop the next chunk to write in full (simple adapters). Prefer
    /// [`transmit_slices`](Self::transmit_slices) for vectored writes.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.write_pending_pong();
        self.seal_cork();
        let mut chunk = self.out.pop_front()?;
        chunk.advance(self.out_head_written);
        self.out_head_written = 0;
        self.out_lent = self.out_lent.saturating_sub(1);
        self.buffered -= chunk.len();
        Some(chunk)
    }

    /// `n` bytes from [`transmit_slices`](Self::transmit_slices) were written.
    pub fn advance_transmit(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let front = self.out.front().expect("advanced past the queued bytes").len() - self.out_head_written;
            if n >= front {
                n -= front;
                self.out.pop_front();
                self.out_head_written = 0;
                self.out_lent = self.out_lent.saturating_sub(1);
            } else {
                self.out_head_written += n;
                n = 0;
            }
        }
    }

    /// Give idle buffers back to the per-thread pool: call when the transport has no more input
    /// for now. A connection with nothing in flight then holds no buffer at all.
    pub fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.current.is_none() && self.rbuf.capacity() > 0 {
            buffer::give(std::mem::take(&mut self.rbuf));
        }
        if self.buffered == 0 && self.cork.capacity() > 0 {
            buffer::give(std::mem::take(&mut self.cork));
        }
    }

    /// Take the input received and not yet turned into events: the raw bytes of frames not
    /// complete yet, exactly as they arrived. For moving a connection to another reader (a
    /// specialised parser, an event loop of your own) without losing what was already read.
    ///
    /// `None`, and nothing is taken, when that would lose data: events are waiting in
    /// [`poll_event`](Self::poll_event), part of a fragmented message was received, or a text
    /// frame in progress was already partly checked (or, on a server, unmasked in place).
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Role};
    ///
    /// let mut client = Connection::new(Role::Client, Config::default(), Instant::now());
    /// // The first 3 bytes of a binary frame "hello" from the server.
    /// client.handle_read(&[0x82, 0x05, b'h'], Instant::now());
    /// assert!(client.poll_event().is_none());
    /// assert_eq!(&client.take_unread().unwrap()[..], &[0x82, 0x05, b'h']);
    /// // The rest goes to whoever reads next; the connection starts afresh.
    /// client.handle_read(&[0x82, 0x01, b'x'], Instant::now());
    /// assert!(client.poll_event().is_some());
    /// ```
    pub fn take_unread(&mut self) -> Option<BytesMut> {
        let consumed = self.current.as_ref().is_some_and(|f| f.processed > 0);
        if !self.events.is_empty() || self.assembly.is_some() || consumed {
            return None;
        }
        self.current = None;
        Some(std::mem::take(&mut self.rbuf))
    }

    /// Bytes of buffer capacity this connection holds (read and write).
    pub fn buffer_capacity(&self) -> usize {
        self.rbuf.capacity() + self.cork.capacity()
    }

    // ----------------------------------------------------------------------------------------
    // Time and lifecycle
    // ----------------------------------------------------------------------------------------

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let idle = self.config.idle_timeout.map(|d| self.last_input + d);
        [self.next_ping, self.pong_deadline, self.close_deadline, idle].into_iter().flatten().min()
    }

    /// Advance time to `now`: send keep-alive pings, enforce the pong, idle and close deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        if self.state == State::Closed {
            return;
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            self.finish(ConnectionError::TimedOut(Timeout::CloseHandshake));
            return;
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            self.time_out(Timeout::Pong, CloseCode::INTERNAL, "keepalive ping timeout");
            return;
        }
        if self.config.idle_timeout.is_some_and(|d| now >= self.last_input + d) {
            self.time_out(Timeout::Idle, CloseCode::GOING_AWAY, "idle timeout");
            return;
        }
        if let (Some(at), Some(interval)) = (self.next_ping, self.config.ping_interval) {
            if now >= at && self.state == State::Open {
                if self.pong_deadline.is_none() {
                    // Unpredictable, so a peer cannot answer keep-alives without reading them.
                    self.ping_payload = rand::random();
                    let p = self.ping_payload;
                    self.queue_control(OpCode::Ping, &p);
                    self.pong_deadline = Some(now + self.config.ping_timeout);
                }
                self.next_ping = Some(now + interval);
            }
        }
    }

    fn time_out(&mut self, which: Timeout, code: CloseCode, reason: &str) {
        if self.state == State::Open {
            self.queue_close(Some(&CloseFrame::new(code, reason)));
        }
        self.finish(ConnectionError::TimedOut(which));
    }

    /// Whether nothing is in progress: the connection is open, no part of a frame or message
    /// waits for more bytes, no event waits to be polled, nothing waits to be written, no
    /// ping waits for its automatic pong, and no compression context remembers earlier
    /// messages (negotiated context takeover, once used), and input is not
    /// [paused](Self::pause_input). Such a connection can be stored small with [`into_idle`](Self::into_idle).
    pub fn is_idle(&self) -> bool {
        #[cfg(feature = "deflate")]
        let deflate_idle = self.deflate.as_ref().is_none_or(|d| d.can_forget());
        #[cfg(not(feature = "deflate"))]
        let deflate_idle = true;
        self.state == State::Open
            && !self.input_paused
            && self.rbuf.is_empty()
            && self.current.is_none()
            && self.assembly.is_none()
            && self.utf8.is_complete()
            && self.events.is_empty()
            && self.buffered == 0
            && self.out.is_empty()
            && self.cork.is_empty()
            && self.pong_pending.is_none()
            && self.close_deadline.is_none()
            && deflate_idle
    }

    /// Store an [idle](Self::is_idle) connection in a fraction of the space (about 80 bytes
    /// instead of 400, and no buffers, queues or compression contexts): for servers that hold
    /// many connections that are mostly quiet. [`IdleConnection::resume`] gives the same
    /// connection back — its timers, keep-alive state and negotiated extensions — when bytes
    /// arrive or a timer is due. A connection that is not idle is given back as it is.
    ///
    /// ```
    /// use std::time::Instant;
    /// use weft_proto::{Config, Connection, Event, Message, Role};
    ///
    /// let now = Instant::now();
    /// let mut server = Connection::new(Role::Server, Config::default(), now);
    /// let mut client = Connection::new(Role::Client, Config::default(), now);
    ///
    /// // Stored small while quiet...
    /// let idle = server.into_idle().expect("nothing in progress");
    /// assert!(std::mem::size_of_val(&idle) < std::mem::size_of::<Connection>() / 4);
    ///
    /// // ...and whole again when a message arrives.
    /// let mut server = idle.resume(Instant::now());
    /// client.send(Message::text("hello")).unwrap();
    /// while let Some(bytes) = client.poll_transmit() {
    ///     server.handle_read(&bytes, Instant::now());
    /// }
    /// assert_eq!(server.poll_event(), Some(Event::Message(Message::text("hello"))));
    ///
    /// // Not idle (a message is queued): given back unchanged.
    /// server.send(Message::text("hi")).unwrap();
    /// assert!(server.into_idle().is_err());
    /// ```
    // The connection is given back by value, as it came: boxing it would allocate on a path
    // meant to free memory.
    #[allow(clippy::result_large_err)]
    pub fn into_idle(mut self) -> Result<IdleConnection, Self> {
        if !self.is_idle() {
            return Err(self);
        }
        self.release_idle_buffers();
        #[cfg(feature = "deflate")]
        if let Some(d) = &mut self.deflate {
            d.forget();
        }
        Ok(IdleConnection {
            config: self.config,
            #[cfg(feature = "deflate")]
            deflate: self.deflate,
            last_input: self.last_input,
            next_ping: self.next_ping,
            pong_deadline: self.pong_deadline,
            ping_payload: self.ping_payload,
            role: self.role,
            vectored: self.vectored,
        })
    }

    /// The payload of the keep-alive ping whose pong is awaited ([`Config::ping_interval`]),
    /// if one is: an adapter that measures round trips tells its pong from other pongs by it.
    pub fn keepalive_ping(&self) -> Option<&[u8]> {
        self.pong_deadline.map(|_| &self.ping_payload[..])
    }

    /// Whether the connection has ended (an [`Event::Closed`] was or will be reported).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// When the close handshake times out: set while our close frame waits for the peer's.
    pub fn close_deadline(&self) -> Option<Instant> {
        self.close_deadline
    }

    /// Whether we sent a close frame (data can no longer be sent).
    pub fn is_closing(&self) -> bool {
        self.state != State::Open
    }

    /// Ended, all events reported and all bytes handed out: close the transport now.
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed && self.events.is_empty() && self.buffered == 0
    }
}

/// A [`Connection`] with nothing in progress, stored small: its configuration, timers,
/// keep-alive state and negotiated extensions, and nothing else. Made by
/// [`Connection::into_idle`]; [`resume`](Self::resume) gives the connection back.
#[derive(Debug)]
pub struct IdleConnection {
    config: Arc<Config>,
    #[cfg(feature = "deflate")]
    deflate: Option<Box<DeflateState>>,
    last_input: Instant,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    ping_payload: [u8; 8],
    role: Role,
    vectored: bool,
}

impl IdleConnection {
    /// The connection, whole again, at time `now`: hand it the bytes that arrived, or call
    /// [`Connection::handle_timeout`] when [`poll_timeout`](Self::poll_timeout) is due.
    pub fn resume(self, now: Instant) -> Connection {
        Connection {
            role: self.role,
            config: self.config,
            state: State::Open,
            now: now.max(self.last_input),
            rbuf: BytesMut::new(),
            current: None,
            assembly: None,
            utf8: Utf8Validator::new(),
            events: VecDeque::new(),
            #[cfg(feature = "deflate")]
            deflate: self.deflate,
            out: VecDeque::new(),
            out_head_written: 0,
            out_lent: 0,
            cork: BytesMut::new(),
            buffered: 0,
            vectored: self.vectored,
            input_paused: false,
            sent_close: None,
            pong_pending: None,
            last_input: self.last_input,
            next_ping: self.next_ping,
            pong_deadline: self.pong_deadline,
            ping_payload: self.ping_payload,
            close_deadline: None,
        }
    }

    /// When the connection's next timer is due (as [`Connection::poll_timeout`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.config.idle_timeout.map(|d| self.last_input + d);
        [self.next_ping, self.pong_deadline, idle].into_iter().flatten().min()
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }
}

enum FrameResult {
    /// The frame was consumed without producing an event (fragment, close): keep parsing.
    Handled,
    Violation(ProtocolError),
}

impl From<ProtocolError> for FrameResult {
    fn from(e: ProtocolError) -> Self {
        Self::Violation(e)
    }
}

/// A message encoded once for many server connections ("compress once, send to many").
///
/// Holds the complete unmasked server frame, and optionally the frame compressed with a
/// [`SharedDeflater`](crate::deflate::SharedDeflater) (no context takeover, so valid on any
/// connection that negotiated permessage-deflate). [`Connection::send_encoded`] picks the right
/// one and queues it without copying large payloads.
#[derive(Debug, Clone)]
pub struct EncodedMessage {
    opcode: OpCode,
    payload: Bytes,
    plain: Bytes,
    #[cfg(feature = "deflate")]
    deflated: Option<Bytes>,
}

impl EncodedMessage {
    /// Encode a text or binary message. Returns `None` for control messages.
    pub fn new(
        msg: &Message,
        #[cfg(feature = "deflate")] deflater: Option<&mut crate::deflate::SharedDeflater>,
    ) -> Option<Self> {
        let (opcode, payload) = match msg {
            Message::Text(t) => (OpCode::Text, t.clone().into_bytes()),
            Message::Binary(b) => (OpCode::Binary, b.clone()),
            _ => return None,
        };
        let frame = |h: FrameHeader, body: &[u8]| {
            let mut hb = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut hb);
            let mut v = Vec::with_capacity(n + body.len());
            v.extend_from_slice(&hb[..n]);
            v.extend_from_slice(body);
            Bytes::from(v)
        };
        let plain = frame(FrameHeader::new(opcode, payload.len() as u64), &payload);
        #[cfg(feature = "deflate")]
        let deflated = deflater.and_then(|d| d.compress(&payload)).map(|z| {
            let mut h = FrameHeader::new(opcode, z.len() as u64);
            h.rsv1 = true;
            frame(h, &z)
        });
        Some(Self {
            opcode,
            payload,
            plain,
            #[cfg(feature = "deflate")]
            deflated,
        })
    }

    /// The message's payload, as given.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The uncompressed wire frame.
    pub fn plain_frame(&self) -> &Bytes {
        &self.plain
    }

    /// The compressed wire frame, when one was made (a shared compressor was given and the
    /// payload was above its threshold).
    #[cfg(feature = "deflate")]
    pub fn deflated_frame(&self) -> Option<&Bytes> {
        self.deflated.as_ref()
    }
}
