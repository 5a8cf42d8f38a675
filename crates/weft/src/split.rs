//! Split halves: a reader and a writer for different tasks, sharing one connection.
//!
//! Both halves drive the same sans-IO connection under a mutex that is held only for the
//! duration of one `poll` (never across an `.await`). The transport keeps one waker per
//! direction, and the reader may need to write (automatic pongs) while the writer waits for
//! writability, so every poll goes through a waker that wakes both halves' tasks: a spurious
//! wake-up costs a poll, a lost one would hang.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use weft_proto::{CloseFrame, Event, Message};

use crate::error::Result;
use crate::websocket::{Inner, WebSocket};

#[derive(Default)]
struct Wakers {
    read: Mutex<Option<Waker>>,
    write: Mutex<Option<Waker>>,
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        for slot in [&self.read, &self.write] {
            if let Some(w) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
    }
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    wakers: Arc<Wakers>,
    waker: Waker,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, cx: &Context<'_>, read: bool) {
        let slot = if read { &self.wakers.read } else { &self.wakers.write };
        let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *g = Some(cx.waker().clone()),
        }
    }
}

/// The reading half of a split [`WebSocket`]: a [`Stream`] of messages.
pub struct ReadHalf<S> {
    shared: Arc<Shared<S>>,
}

/// The writing half of a split [`WebSocket`]: a [`Sink`] of messages.
pub struct WriteHalf<S> {
    shared: Arc<Shared<S>>,
}

pub(crate) fn split<S>(inner: Inner<S>) -> (ReadHalf<S>, WriteHalf<S>) {
    let wakers = Arc::new(Wakers::default());
    let waker = Waker::from(wakers.clone());
    let shared = Arc::new(Shared { inner: Mutex::new(inner), wakers, waker });
    (ReadHalf { shared: shared.clone() }, WriteHalf { shared })
}

/// The halves passed to `reunite` came from different sockets.
#[derive(Debug)]
pub struct ReuniteError<S>(pub ReadHalf<S>, pub WriteHalf<S>);

impl<S> std::fmt::Display for ReuniteError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tried to reunite halves of different WebSockets")
    }
}

impl<S: std::fmt::Debug> std::error::Error for ReuniteError<S> {}

impl<S> std::fmt::Debug for ReadHalf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadHalf")
    }
}

impl<S> std::fmt::Debug for WriteHalf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHalf")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReadHalf<S> {
    fn with<T>(&self, cx: &mut Context<'_>, f: impl FnOnce(&mut Inner<S>, &mut Context<'_>) -> T) -> T {
        self.shared.register(cx, true);
        let mut proxy = Context::from_waker(&self.shared.waker);
        f(&mut self.shared.lock(), &mut proxy)
    }

    /// Receive the next message (see [`WebSocket::recv`]). Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        std::future::poll_fn(|cx| self.with(cx, |i, cx| i.poll_message(cx))).await
    }

    /// Receive the next low-level event (see [`WebSocket::recv_event`]). Cancel safe.
    pub async fn recv_event(&mut self) -> Option<Result<Event>> {
        std::future::poll_fn(|cx| self.with(cx, |i, cx| i.poll_event(cx))).await
    }

    /// Put the halves back together.
    pub fn reunite(self, other: WriteHalf<S>) -> std::result::Result<WebSocket<S>, ReuniteError<S>> {
        if !Arc::ptr_eq(&self.shared, &other.shared) {
            return Err(ReuniteError(self, other));
        }
        drop(other);
        let shared = Arc::try_unwrap(self.shared).unwrap_or_else(|_| unreachable!("both halves were given"));
        let inner = shared.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(WebSocket { inner })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteHalf<S> {
    fn with<T>(&self, cx: &mut Context<'_>, f: impl FnOnce(&mut Inner<S>, &mut Context<'_>) -> T) -> T {
        self.shared.register(cx, false);
        let mut proxy = Context::from_waker(&self.shared.waker);
        f(&mut self.shared.lock(), &mut proxy)
    }

    /// Queue a message and flush.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queue a message without flushing (waits only above the high-water mark).
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        std::future::poll_fn(|cx| self.with(cx, |i, cx| i.poll_ready(cx))).await?;
        self.shared.lock().start_send(msg.into())
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        std::future::poll_fn(|cx| self.with(cx, |i, cx| i.poll_flush(cx))).await
    }

    /// Send a close frame (`None`: 1000) and flush it. The reading half then sees the peer's
    /// answer and the end of the stream.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        {
            let mut g = self.shared.lock();
            if !g.conn.is_closing() {
                g.conn.handle_timeout(std::time::Instant::now());
                let f = frame.or_else(|| Some(CloseFrame::new(weft_proto::CloseCode::NORMAL, "")));
                g.conn.close(f)?;
            }
        }
        self.flush().await
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        self.shared.lock().conn.buffered_amount()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for ReadHalf<S> {
    type Item = Result<Message>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.with(cx, |i, cx| i.poll_message(cx))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WriteHalf<S> {
    type Error = crate::Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(cx, |i, cx| i.poll_ready(cx))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.shared.lock().start_send(item)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(cx, |i, cx| i.poll_flush(cx))
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(cx, |i, cx| i.poll_close_sink(cx))
    }
}
