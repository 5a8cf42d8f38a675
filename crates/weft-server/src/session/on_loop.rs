//! Engine sessions on the event-driven core ([`weft::event_loop`]): the same [`Session`] as
//! the task version in the parent module, driven by the loop's callbacks instead of a task.
//!
//! A connection holds a boxed [`Session`] and no task, no future and no read buffer while it
//! waits. A request is answered by the same `Session::handle` future, polled with the
//! connection's [`Conn::waker`]; when the broker (or the application, or a snapshot) answers
//! later, the future is kept until the waker is woken, and the connection is not read
//! meanwhile — as the task version reads nothing while it awaits a request. The outbox wakes
//! the same waker, so an event published on any thread reaches the connection on its loop's
//! next turn, and events for many connections of one loop are written in that one turn.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use weft::event_loop::{Conn, Handler, Payload};
use weft::{CloseCode, CloseFrame, ConnectionError, Message, Rejection};

use super::{CLOSE_SECURE_FAILED, CLOSE_TOKEN_EXPIRED, CLOSE_WAIT, End, Flow, PUBLISH_PIPELINE, Session};
use crate::auth::Identity;
use crate::engine::Shared;
use crate::outbox::Out;
use crate::wire::Format;

/// A request being answered: the session is inside until it is.
type Busy = Pin<Box<dyn Future<Output = (Box<Session>, Flow)> + Send>>;

/// The engine as an event-loop [`Handler`]: one per loop.
pub(crate) struct EngineHandler {
    engine: crate::Engine,
    /// Scratch for moving an outbox into a connection, shared by the loop's sessions.
    batch: Vec<Out>,
}

impl EngineHandler {
    pub(crate) fn new(engine: crate::Engine) -> Self {
        Self { engine, batch: Vec::new() }
    }
}

/// One connection's engine state on the event-driven core.
pub(crate) struct LoopSession {
    shared: Arc<Shared>,
    /// Until `on_open`: who the connection is for and its wire format.
    opening: Option<Box<(Identity, Format)>>,
    /// The session, unless a request holds it (`busy`).
    s: Option<Box<Session>>,
    busy: Option<Busy>,
    /// Requests read while one was being answered (at most what one read brought: the
    /// connection is not read meanwhile).
    waiting: VecDeque<Message>,
    waker: Option<Waker>,
    /// The token's expiry, while it has one; and the instant it was armed for.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    armed_at: Option<tokio::time::Instant>,
    ending: Option<Box<Ending>>,
    /// The application was told `Connected`.
    announced: bool,
}

/// A close the server decided on: publishes in flight are answered first (at most
/// [`CLOSE_WAIT`]), then every reply queued, then the close frame.
struct Ending {
    frame: CloseFrame,
    /// A slow consumer: what it has not read is dropped, nothing is waited for.
    slow: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The close frame is queued: nothing more to do.
    closed: bool,
}

impl Handler for EngineHandler {
    type Session = LoopSession;

    fn upgrade(&mut self, req: &http::Request<()>, resp: &mut http::Response<()>) -> Result<LoopSession, Rejection> {
        use http::StatusCode;
        let shared = self.engine.shared();
        let m = &shared.metrics;
        if req.uri().path() != crate::http::WS_PATH {
            return Err(Rejection::new(StatusCode::NOT_FOUND, "not found: WebSockets are served at /ws\n"));
        }
        if *shared.shutdown.borrow() {
            return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n"));
        }
        if m.connections.load(Ordering::Relaxed) as usize >= shared.config.max_connections {
            m.connections_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n"));
        }
        let identity = self.engine.identify(req).map_err(|e| Rejection::new(e.status, format!("{}\n", e.message)))?;
        m.connections.fetch_add(1, Ordering::Relaxed);
        m.connections_total.fetch_add(1, Ordering::Relaxed);
        let protocol = resp.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
        let format = Format::from_subprotocol(protocol);
        Ok(LoopSession {
            shared: Arc::clone(shared),
            opening: Some(Box::new((identity, format))),
            s: None,
            busy: None,
            waiting: VecDeque::new(),
            waker: None,
            expiry: None,
            armed_at: None,
            ending: None,
            announced: false,
        })
    }

    fn on_open(&mut self, ls: &mut LoopSession, conn: &mut Conn<'_>) {
        let Some(opening) = ls.opening.take() else { return };
        let (identity, format) = *opening;
        let deflate = conn.connection().deflate_params().is_some_and(|p| p.server_max_window_bits == 15);
        let waker = conn.waker();
        let s = Box::new(Session::open(Arc::clone(&ls.shared), identity, format, deflate, Some(waker.clone())));
        ls.waker = Some(waker);
        if ls.shared.inbound.get().is_some() {
            // The application hears of the session before any of its messages.
            ls.announced = true;
            ls.busy = Some(Box::pin(async move {
                s.announce().await;
                (s, Flow::Continue)
            }));
        } else {
            ls.s = Some(s);
        }
        ls.pump(conn, &mut self.batch);
    }

    fn on_message(&mut self, ls: &mut LoopSession, conn: &mut Conn<'_>, msg: Payload<'_>) {
        if ls.ending.is_some() || conn.connection().is_closing() {
            return; // no more requests are answered: our close frame is on its way
        }
        ls.waiting.push_back(match msg {
            Payload::Text(t) => Message::text(t.to_owned()),
            Payload::Binary(b) => Message::binary(bytes::Bytes::copy_from_slice(b)),
        });
        ls.pump(conn, &mut self.batch);
    }

    fn on_control(&mut self, ls: &mut LoopSession, conn: &mut Conn<'_>, _msg: &Message) {
        // Pings and pongs cost a token too: a control-frame flood is a flood.
        if let (Some(s), None) = (ls.s.as_mut(), &ls.ending) {
            if let Flow::Close(f) = s.rate_check(None) {
                ls.end(End::Close(f));
                ls.pump(conn, &mut self.batch);
            }
        }
    }

    fn on_wake(&mut self, ls: &mut LoopSession, conn: &mut Conn<'_>) {
        ls.pump(conn, &mut self.batch);
    }

    fn on_writable(&mut self, ls: &mut LoopSession, conn: &mut Conn<'_>) {
        ls.pump(conn, &mut self.batch);
    }

    fn on_idle(&mut self, ls: &mut LoopSession) {
        if let Some(s) = ls.s.as_mut() {
            s.release_idle();
        }
    }

    fn on_close(&mut self, ls: LoopSession, reason: &ConnectionError) {
        if let Some(s) = &ls.s {
            tracing::debug!(session = %s.sub.member.session, reason = %reason, "connection ended");
        }
        drop(ls); // the end of the session: see `Drop`
    }
}

impl LoopSession {
    /// Everything the session has to do now: answer the request in progress and those read
    /// behind it, take the outcomes of publishes in flight, end it when its token expired,
    /// and move its outbox into the connection (down to the high-water mark: `on_writable`
    /// brings the rest).
    fn pump(&mut self, conn: &mut Conn<'_>, batch: &mut Vec<Out>) {
        let Some(waker) = self.waker.clone() else { return };
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Some(busy) = &mut self.busy {
                match busy.as_mut().poll(&mut cx) {
                    Poll::Pending => break,
                    Poll::Ready((s, flow)) => {
                        self.busy = None;
                        self.s = Some(s);
                        if let Flow::Close(f) = flow {
                            self.end(End::Close(f));
                        }
                    }
                }
            }
            let Some(s) = self.s.as_mut() else { break };
            while let Poll::Ready(Some(done)) = futures_util::StreamExt::poll_next_unpin(s.pending(), &mut cx) {
                s.published(done);
            }
            if self.ending.is_some() || s.pending().len() >= PUBLISH_PIPELINE {
                break;
            }
            let Some(msg) = self.waiting.pop_front() else { break };
            self.request(msg);
        }
        if self.waiting.is_empty() && self.waiting.capacity() > 0 {
            self.waiting = VecDeque::new(); // an idle session holds no buffer
        }
        if self.ending.is_none() {
            self.check_expiry(&mut cx);
        }
        if self.ending.is_none() {
            self.write(conn, batch);
        }
        // (Also when writing just decided it: a slow consumer's outbox that overflowed wakes
        // nobody again.)
        if self.ending.is_some() {
            self.finish_end(conn, batch, &mut cx);
        }
        let behind = self.busy.is_some()
            || !self.waiting.is_empty()
            || self.ending.is_some()
            || self.s.as_mut().is_some_and(|s| s.pending().len() >= PUBLISH_PIPELINE);
        conn.connection().pause_input(behind);
    }

    /// Start answering one request (the session is not busy).
    fn request(&mut self, msg: Message) {
        let Some(s) = self.s.as_mut() else { return };
        let msg = match s.unseal(msg) {
            Ok(msg) => msg,
            Err(why) => {
                s.shared.metrics.secure_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %s.sub.member.session, user = %s.identity.user, reason = %why, "session closed: secure channel");
                return self.end(End::Close(CloseFrame::new(CloseCode(CLOSE_SECURE_FAILED), &why)));
            }
        };
        // Sealed or not, a message is held to the same limit.
        if msg.payload().len() > s.shared.config.max_message_size {
            return self.end(End::Close(CloseFrame::new(CloseCode::TOO_BIG, "message too big")));
        }
        let Some(mut s) = self.s.take() else { return };
        self.busy = Some(Box::pin(async move {
            let flow = s.handle(msg).await;
            (s, flow)
        }));
    }

    /// Close with 4401 once the token's authority ends (re-armed when a `refresh` moved it).
    fn check_expiry(&mut self, cx: &mut Context<'_>) {
        let Some(s) = self.s.as_ref() else { return };
        if s.expires_at != self.armed_at {
            self.armed_at = s.expires_at;
            self.expiry = s.expires_at.map(|t| Box::pin(tokio::time::sleep_until(t)));
        }
        if let Some(e) = &mut self.expiry {
            if e.as_mut().poll(cx).is_ready() {
                self.expiry = None;
                s.shared.metrics.token_expiries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %s.sub.member.session, user = %s.identity.user, "session closed: token expired");
                self.end(End::Close(CloseFrame::new(CloseCode(CLOSE_TOKEN_EXPIRED), "token expired")));
            }
        }
    }

    /// Move the outbox into the connection while its output is below the high-water mark.
    fn write(&mut self, conn: &mut Conn<'_>, batch: &mut Vec<Out>) {
        let Some(s) = self.s.as_mut() else { return }; // busy: written once the request is answered
        if conn.connection().is_closing() {
            return; // the loop's 1001 at a stop is queued: nothing may follow it
        }
        loop {
            // At a shutdown the loop's last wake moves everything queued in, ahead of the 1001
            // (bounded by the outbox: `queue_size` messages).
            if conn.connection().above_high_water() && !*s.shared.shutdown.borrow() {
                // Not draining: an outbox that overflowed meanwhile ends the session now.
                if s.sub.outbox.is_closing() {
                    self.end(End::SlowConsumer);
                }
                return;
            }
            match s.feed_queued(batch, &mut |m| conn.connection().send_encoded(m).is_ok()) {
                Ok(true) => {}
                Ok(false) => return,
                // The outbox overflowed: a slow consumer.
                Err(End::SlowConsumer) => {
                    batch.clear();
                    return self.end(End::SlowConsumer);
                }
                // The connection refused more output (it is closing).
                Err(_) => {
                    batch.clear();
                    return;
                }
            }
        }
    }

    /// Decide to close (the first decision stands).
    fn end(&mut self, end: End) {
        if self.ending.is_some() {
            return;
        }
        let (frame, slow) = match end {
            End::Gone => return,
            End::Close(frame) => (frame, false),
            End::SlowConsumer => (CloseFrame::new(CloseCode::POLICY, "slow consumer"), true),
        };
        self.waiting.clear();
        let deadline = Box::pin(tokio::time::sleep(CLOSE_WAIT));
        self.ending = Some(Box::new(Ending { frame, slow, deadline, closed: false }));
    }

    /// Close as decided, once the publishes in flight are answered (or [`CLOSE_WAIT`] passed):
    /// subscriptions removed, everything queued written (a slow consumer's dropped), then the
    /// close frame.
    fn finish_end(&mut self, conn: &mut Conn<'_>, batch: &mut Vec<Out>, cx: &mut Context<'_>) {
        let (Some(s), Some(ending)) = (self.s.as_mut(), self.ending.as_mut()) else { return };
        if ending.closed {
            return;
        }
        if !ending.slow && !s.pending().is_empty() && ending.deadline.as_mut().poll(cx).is_pending() {
            return;
        }
        ending.closed = true;
        s.unsubscribe_all();
        let (user, session) = (&s.identity.user, &s.sub.member.session);
        if ending.slow {
            tracing::info!(session = %session, user = %user, "session closed: slow consumer");
            // What the peer has not read is not worth waiting for: the close frame goes right
            // after the bytes already on their way.
            conn.connection().discard_unsent();
        } else {
            if ending.frame.code == CloseCode::POLICY {
                tracing::info!(session = %session, user = %user, reason = %ending.frame.reason, "session closed");
            }
            // Every reply and event already queued goes out before the close frame.
            while let Ok(true) = s.feed_queued(batch, &mut |m| conn.connection().send_encoded(m).is_ok()) {}
            batch.clear();
        }
        s.sub.outbox.close();
        let _ = conn.connection().close(Some(ending.frame.clone()));
    }
}

impl Drop for LoopSession {
    /// The session's end, whichever way the connection ended: subscriptions removed (after the
    /// publishes in flight, at most [`CLOSE_WAIT`], or after the request being answered), the
    /// connection count and the application told.
    fn drop(&mut self) {
        if self.opening.is_some() {
            // Admitted, never opened.
            self.shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let announced = self.announced;
        let rt = tokio::runtime::Handle::try_current().ok();
        match (self.s.take(), self.busy.take(), rt) {
            (Some(mut s), _, rt) => match rt.filter(|_| !s.pending().is_empty()) {
                Some(rt) => drop(rt.spawn(finish(s, announced))),
                None => {
                    s.unsubscribe_all();
                    s.sub.outbox.close();
                    s.ended(announced);
                }
            },
            // The request in progress holds the session: it ends once that is answered.
            (None, Some(busy), Some(rt)) => drop(rt.spawn(async move { finish(busy.await.0, announced).await })),
            _ => drop(self.shared.metrics.connections.fetch_sub(1, Ordering::Relaxed)),
        }
    }
}

/// A session's end after its publishes in flight are answered (at most [`CLOSE_WAIT`]).
async fn finish(mut s: Box<Session>, announced: bool) {
    let _ = tokio::time::timeout(CLOSE_WAIT, s.finish_publishes()).await;
    s.unsubscribe_all();
    s.sub.outbox.close();
    s.ended(announced);
}
