//! `WebSocket<S>`: the sans-IO [`Connection`] driven over any `AsyncRead + AsyncWrite`.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use weft_proto::{CloseCode, CloseFrame, Connection, ConnectionError, Event, Message, Role};

use crate::error::{Error, Kind, Result};

/// How many slices one vectored write carries at most.
const MAX_IOVECS: usize = 64;

/// Where the shutdown sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// Not ended.
    Running,
    /// Ended: write what is queued, then shut down the write side.
    Flushing,
    /// Write side shut; read (and discard) until the peer closes or `close_timeout` passes.
    Lingering,
    /// Transport done.
    Done,
}

/// The state shared by the whole socket and its split halves.
pub(crate) struct Inner<S> {
    pub(crate) io: S,
    pub(crate) conn: Connection,
    timer: Option<Pin<Box<Sleep>>>,
    timer_deadline: Option<Instant>,
    end: Option<Box<ConnectionError>>,
    end_reported: bool,
    teardown: Teardown,
    linger: Option<Pin<Box<Sleep>>>,
    pub(crate) subprotocol: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    pub(crate) fn new(io: S, mut conn: Connection, subprotocol: Option<String>) -> Self {
        conn.set_vectored(io.is_write_vectored());
        Self {
            io,
            conn,
            timer: None,
            timer_deadline: None,
            end: None,
            end_reported: false,
            teardown: Teardown::Running,
            linger: None,
            subprotocol,
        }
    }

    /// Write everything queued. Ready(Ok) once the queue is empty and flushed.
    pub(crate) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.has_transmit() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.conn.transmit_slices(&mut slices);
            let res = if n == 1 {
                Pin::new(&mut self.io).poll_write(cx, &slices[0])
            } else {
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
            };
            match ready!(res) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => self.conn.advance_transmit(written),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Arm the timer for the connection's next deadline; Ready when it fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.conn.poll_timeout() else {
            self.timer = None;
            self.timer_deadline = None;
            return Poll::Pending;
        };
        if self.timer_deadline != Some(deadline) {
            let at = tokio::time::Instant::from_std(deadline);
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.timer_deadline = Some(deadline);
        }
        let t = self.timer.as_mut().expect("armed above");
        ready!(t.as_mut().poll(cx));
        self.timer_deadline = None;
        self.conn.handle_timeout(Instant::now());
        Poll::Ready(())
    }

    /// Read more bytes into the connection. Ready(()) when something happened (data or EOF).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let buf = self.conn.read_buffer();
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, buf) {
            Poll::Ready(Ok(0)) => {
                self.conn.handle_eof();
                Poll::Ready(())
            }
            Poll::Ready(Ok(_)) => {
                self.conn.handle_input(Instant::now());
                Poll::Ready(())
            }
            Poll::Ready(Err(_)) => {
                self.conn.handle_eof();
                Poll::Ready(())
            }
            Poll::Pending => {
                // Nothing in flight: hand the buffers back so an idle socket holds none.
                self.conn.release_idle_buffers();
                Poll::Pending
            }
        }
    }

    /// Next event for the application: a message, or the end. Drives reads, writes (automatic
    /// pongs, close replies), timers and the transport shutdown. Cancel safe: all progress lives
    /// in `self`.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        loop {
            if self.teardown != Teardown::Running {
                ready!(self.poll_teardown(cx));
                if self.end_reported {
                    return Poll::Ready(None);
                }
                self.end_reported = true;
                let end = self.end.as_deref().cloned().expect("teardown starts with an end");
                return Poll::Ready(Some(Ok(Event::Closed(end))));
            }
            if let Some(ev) = self.conn.poll_event() {
                if let Event::Closed(reason) = ev {
                    self.end = Some(Box::new(reason));
                    self.teardown = Teardown::Flushing;
                    continue;
                }
                // An automatic pong or close reply goes out at once. Anything else queued (the
                // application's `feed`s) waits until reading is about to block, so a batch of
                // messages leaves in one write instead of one write per message (measured: 16
                // sendto per recvfrom before this, with 16 messages in flight).
                let control = matches!(ev, Event::Message(Message::Ping(_) | Message::Close(_)));
                if control && self.conn.has_transmit() {
                    if let Poll::Ready(Err(_)) = self.poll_write_out(cx) {
                        self.conn.handle_eof();
                    }
                }
                return Poll::Ready(Some(Ok(ev)));
            }
            if self.conn.has_transmit() {
                if let Poll::Ready(Err(_)) = self.poll_write_out(cx) {
                    self.conn.handle_eof();
                    continue;
                }
            }
            if self.poll_timer(cx).is_ready() {
                continue;
            }
            if !self.conn.wants_input() {
                // Backpressure: a peer that does not read its output is not read either. The
                // write above is pending, so this task wakes when the socket takes more.
                return Poll::Pending;
            }
            ready!(self.poll_fill(cx));
        }
    }

    fn poll_teardown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.teardown {
                Teardown::Running | Teardown::Done => return Poll::Ready(()),
                Teardown::Flushing => {
                    if self.linger.is_none() {
                        let at = tokio::time::Instant::now() + self.conn.config().close_timeout;
                        self.linger = Some(Box::pin(tokio::time::sleep_until(at)));
                    }
                    let flushed = match self.poll_write_out(cx) {
                        Poll::Ready(r) => r.is_ok(),
                        Poll::Pending => {
                            ready!(self.linger.as_mut().expect("set").as_mut().poll(cx));
                            false
                        }
                    };
                    if !flushed {
                        self.teardown = Teardown::Done;
                        continue;
                    }
                    // A client lets the server close the TCP connection first (RFC 6455 §7.1.1)
                    // after a clean close; otherwise we shut down our side now.
                    let clean = self.end.as_deref().is_some_and(ConnectionError::is_clean);
                    if !(clean && self.conn.role() == Role::Client) {
                        let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    }
                    self.teardown = Teardown::Lingering;
                }
                Teardown::Lingering => {
                    // Read until EOF so our close frame is not destroyed by a reset, bounded
                    // by close_timeout.
                    let mut scratch = [0u8; 2048];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => self.teardown = Teardown::Done,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => self.teardown = Teardown::Done,
                        Poll::Pending => {
                            ready!(self.linger.as_mut().expect("set").as_mut().poll(cx));
                            self.teardown = Teardown::Done;
                        }
                    }
                    if self.teardown == Teardown::Done {
                        self.conn.release_idle_buffers();
                        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    }
                }
            }
        }
    }

    /// Messages only: maps the end to `None` (clean close) or an error.
    pub(crate) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        match ready!(self.poll_event(cx)) {
            None => Poll::Ready(None),
            Some(Ok(Event::Message(m))) => Poll::Ready(Some(Ok(m))),
            Some(Ok(Event::Closed(reason))) => {
                if reason.is_clean() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(reason.into())))
                }
            }
            Some(Ok(_)) => Poll::Ready(Some(Err(Error::new(Kind::Fragment)))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    /// Wait until the outbound queue is below the high-water mark.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.end.is_some() || self.conn.is_closed() {
            return Poll::Ready(Err(self.closed_error()));
        }
        while self.conn.buffered_amount() >= self.conn.config().write_buffer_high_water {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn start_send(&mut self, msg: Message) -> Result<()> {
        if let Message::Close(_) = msg {
            self.conn.handle_timeout(Instant::now());
        }
        self.conn.send(msg).map_err(|e| match e {
            weft_proto::SendError::Closed => self.closed_error(),
            other => other.into(),
        })
    }

    fn closed_error(&self) -> Error {
        match self.end.as_deref() {
            Some(e) => e.clone().into(),
            None => weft_proto::SendError::Closed.into(),
        }
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match ready!(self.poll_write_out(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                self.conn.handle_eof();
                Poll::Ready(Err(e.into()))
            }
        }
    }

    /// Start the close handshake (normal closure unless given) and flush it.
    pub(crate) fn poll_close_sink(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if !self.conn.is_closing() {
            self.conn.handle_timeout(Instant::now());
            let _ = self.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "")));
        }
        self.poll_flush(cx)
    }
}

/// A WebSocket over a transport `S`: a [`Stream`] of incoming [`Message`]s and a [`Sink`] of
/// outgoing ones, plus `async fn` methods.
///
/// Reading drives everything: automatic pongs, keep-alive pings and timeouts, the close handshake
/// and the transport shutdown. Keep a task reading (or use [`split`](Self::split)) even if you
/// only send.
pub struct WebSocket<S> {
    pub(crate) inner: Inner<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wrap a transport whose handshake is done. `role` decides masking.
    pub fn from_raw(io: S, role: Role, config: weft_proto::Config) -> Self {
        Self { inner: Inner::new(io, Connection::new(role, config, Instant::now()), None) }
    }

    pub(crate) fn from_connection(io: S, conn: Connection, subprotocol: Option<String>) -> Self {
        Self { inner: Inner::new(io, conn, subprotocol) }
    }

    /// Receive the next message. `None` after a clean close; an error when the connection ended
    /// any other way (see [`Error::connection_error`]). Ping, Pong and Close frames are returned
    /// too (pongs are answered automatically). Cancel safe: use it freely in `select!`.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.inner.poll_message(cx)).await
    }

    /// Receive the next low-level event, including [`Event::Fragment`] when
    /// [`Config::stream_fragments`](weft_proto::Config::stream_fragments) is on and the final
    /// [`Event::Closed`] with the full close taxonomy. `None` after that. Cancel safe.
    pub async fn recv_event(&mut self) -> Option<Result<Event>> {
        poll_fn(|cx| self.inner.poll_event(cx)).await
    }

    /// Queue a message and flush everything queued.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queue a message without flushing (waits only while the queue is above the high-water
    /// mark). Follow a batch of `feed`s with one [`flush`](Self::flush).
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.start_send(msg.into())
    }

    /// Queue a message without waiting at all; fails with a backpressure error
    /// ([`Error::is_backpressure`]) when more than `max_buffered` bytes are queued.
    pub fn try_feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.inner.start_send(msg.into())
    }

    /// Queue a pre-encoded message (compress once, send to many).
    pub fn feed_encoded(&mut self, msg: &weft_proto::EncodedMessage) -> Result<()> {
        self.inner.conn.send_encoded(msg).map_err(Into::into)
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.inner.poll_flush(cx)).await
    }

    /// Close: send a close frame (`None`: 1000), then read until the peer answers or
    /// `close_timeout` passes, discarding data that still arrives, and shut the transport down.
    /// Returns how the connection ended.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<ConnectionError> {
        if !self.inner.conn.is_closing() {
            self.inner.conn.handle_timeout(Instant::now());
            let frame = frame.or_else(|| Some(CloseFrame::new(CloseCode::NORMAL, "")));
            self.inner.conn.close(frame).map_err(Error::from)?;
        }
        loop {
            match self.recv_event().await {
                Some(Ok(Event::Closed(reason))) => {
                    while self.recv_event().await.is_some() {}
                    return Ok(reason);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(self.inner.closed_error()),
            }
        }
    }

    /// Drop queued output that has not started to be written (see
    /// [`Connection::discard_unsent`](weft_proto::Connection::discard_unsent)); returns the
    /// bytes dropped. For closing a peer that stopped reading without waiting for it to read
    /// everything queued first.
    pub fn discard_unsent(&mut self) -> usize {
        self.inner.conn.discard_unsent()
    }

    /// The subprotocol chosen in the handshake.
    pub fn subprotocol(&self) -> Option<&str> {
        self.inner.subprotocol.as_deref()
    }

    /// The negotiated permessage-deflate parameters.
    #[cfg(feature = "deflate")]
    pub fn deflate_params(&self) -> Option<weft_proto::DeflateParams> {
        self.inner.conn.deflate_params()
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        self.inner.conn.buffered_amount()
    }

    /// Bytes of read/write buffer this connection holds right now (0 when idle).
    pub fn buffer_capacity(&self) -> usize {
        self.inner.conn.buffer_capacity()
    }

    /// Take the WebSocket apart: the transport and its sans-IO
    /// [`Connection`](weft_proto::Connection), for moving the connection to another I/O
    /// layer. What was read and not yet delivered stays in the connection
    /// ([`Connection::take_unread`](weft_proto::Connection::take_unread)), and so does output
    /// not yet written ([`Connection::has_transmit`](weft_proto::Connection::has_transmit)).
    pub fn into_parts(self) -> (S, Connection) {
        (self.inner.io, self.inner.conn)
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.inner.io
    }

    /// The transport, mutably (reading or writing it directly corrupts the stream).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner.io
    }

    /// Split into a reading half and a writing half, usable from different tasks. Put them
    /// back together with [`ReadHalf::reunite`](crate::ReadHalf::reunite).
    pub fn split(self) -> (crate::ReadHalf<S>, crate::WriteHalf<S>) {
        crate::split::split(self.inner)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.poll_message(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_ready(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().inner.start_send(item)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_close_sink(cx)
    }
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").field("role", &self.inner.conn.role()).finish_non_exhaustive()
    }
}
