//! One WebSocket connection of the engine: reads requests, answers them, and writes its
//! outbound queue in batches.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncWrite};
use weft::{CloseCode, CloseFrame, Message, WebSocket};

use crate::auth::Identity;
use crate::broker::{Start, Subscriber};
use crate::engine::{Inbound, Shared};
use crate::outbox::{Closing, Out, Outbox};
use crate::ratelimit::TokenBucket;
use crate::topic::{Pattern, allowed_by, validate_topic};
use crate::wire::{
    ErrorBody, ErrorCode, Format, Member, PROTOCOL_VERSION, Position, Reply, Request, SubscribeResult, now_ms,
};

mod on_loop;
pub(crate) use on_loop::EngineHandler;

const PRESENCE_LIMIT: usize = 1000;

/// Close code when a token expires without a `refresh` (docs/PROTOCOL.md).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4401;
/// Close code when a secured connection receives a frame that is not sealed, out of sequence
/// or fails authentication (docs/PROTOCOL.md, "Secure channel").
pub const CLOSE_SECURE_FAILED: u16 = 4412;

/// How long a closing session waits for its close frame (and the replies before it) to leave
/// and the peer to answer.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The same for a slow consumer, which first has to read what is already on its way.
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Publishes of one connection in flight at once to a broker that crosses the network (their
/// replies keep request order; past this the connection stops reading).
const PUBLISH_PIPELINE: usize = 64;

/// A publish sent to the broker: its reply slot, request id and topic, and the outcome.
type PublishDone = (u64, Option<serde_json::Value>, String, Result<crate::wire::Position, crate::broker::BrokerError>);
type PendingPublish = std::pin::Pin<Box<dyn std::future::Future<Output = PublishDone> + Send>>;

/// The topics of a churn window, by their keyed hashes, which need no hashing again.
type Touched = HashSet<u64, std::hash::BuildHasherDefault<AsIs>>;

/// A hasher that takes a `u64` that is already a keyed hash as it is.
#[derive(Default)]
struct AsIs(u64);

impl std::hash::Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here (`write_u64`); anything else still spreads.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a connection subscribed to, found by text: a short list, as most connections hold a
/// few (exactly as long as it needs to be), and a hash set from the `FEW + 1`th on (kept
/// until the connection ends).
enum Subscriptions {
    Few(Vec<Pattern>),
    Many(HashSet<Pattern>),
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Subscriptions {
    const FEW: usize = 8;

    fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    fn contains(&self, topic: &str) -> bool {
        match self {
            Self::Few(v) => v.iter().any(|p| p.as_str() == topic),
            Self::Many(m) => m.contains(topic),
        }
    }

    /// Add `p`, or replace the subscription with its text.
    fn replace(&mut self, p: Pattern) {
        match self {
            Self::Few(v) => match v.iter().position(|q| *q == p) {
                Some(i) => v[i] = p,
                None if v.len() < Self::FEW => {
                    v.reserve_exact(1);
                    v.push(p);
                }
                None => {
                    let mut m: HashSet<Pattern> = v.drain(..).collect();
                    m.insert(p);
                    *self = Self::Many(m);
                }
            },
            Self::Many(m) => {
                m.replace(p);
            }
        }
    }

    fn take(&mut self, topic: &str) -> Option<Pattern> {
        match self {
            Self::Few(v) => {
                let p = v.iter().position(|p| p.as_str() == topic).map(|i| v.swap_remove(i));
                v.shrink_to_fit();
                p
            }
            Self::Many(m) => m.take(topic),
        }
    }

    fn take_all(&mut self) -> Vec<Pattern> {
        match std::mem::take(self) {
            Self::Few(v) => v,
            Self::Many(m) => m.into_iter().collect(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Pattern> {
        let (few, many) = match self {
            Self::Few(v) => (Some(v.iter()), None),
            Self::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// Publishes in flight, in request order: allocated by the first and freed once the last is
/// answered, so a session that is not publishing holds nothing for them.
#[derive(Default)]
struct Publishes(Option<Box<FuturesOrdered<PendingPublish>>>);

impl Publishes {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |f| f.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, p: PendingPublish) {
        self.0.get_or_insert_with(Default::default).push_back(p);
    }
}

impl futures_util::Stream for Publishes {
    type Item = PublishDone;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PublishDone>> {
        let Some(f) = self.0.as_mut() else { return std::task::Poll::Ready(None) };
        let r = f.poll_next_unpin(cx);
        if f.is_empty() {
            self.0 = None;
        }
        r
    }
}

struct Session {
    shared: Arc<Shared>,
    identity: Identity,
    sub: Arc<Subscriber>,
    format: Format,
    /// permessage-deflate negotiated with a full window: events go out in their shared
    /// compressed form.
    deflate: bool,
    /// What this connection subscribed to, found by its text.
    subscriptions: Subscriptions,
    bucket: TokenBucket,
    rejected_in_a_row: u32,
    /// Distinct topics touched in the current churn window, as their keyed hashes (8 bytes a
    /// topic, freed when a new window starts), and when the window started.
    touched: Touched,
    window_start: Instant,
    /// When the token's authority ends (exp + leeway); `None` without JWT.
    expires_at: Option<tokio::time::Instant>,
    /// Consecutive publishes in flight to a networked broker, in request order (in a mutex only
    /// to make the session `Sync`; reached through `get_mut`, never locked).
    publishes: std::sync::Mutex<Publishes>,
    /// This connection's snapshots being taken (at most [`MAX_SNAPSHOTS_IN_FLIGHT`]), from its
    /// first snapshot on.
    snapshots_in_flight: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// The secure channel, once a `secure` request was accepted: from then on every data
    /// message received must be sealed.
    secure: Option<Box<crate::secure::Channel>>,
    /// Set when the `secured` reply has been written: every message written after it is sealed.
    sealing: bool,
}

/// Snapshots one connection may have being taken at once; more get error 4011 at once (a
/// subscribe naming thousands of topics must not start thousands of provider calls).
const MAX_SNAPSHOTS_IN_FLIGHT: usize = 16;

enum Flow {
    Continue,
    /// This message is not processed (rate limit), the session goes on.
    Stop,
    Close(CloseFrame),
}

/// Why a session ends.
enum End {
    /// The peer closed or vanished: nothing more to say.
    Gone,
    /// Close with this frame, after writing every reply owed.
    Close(CloseFrame),
    /// Slow consumer: close at once, dropping what the peer has not read.
    SlowConsumer,
}

/// The instant `exp` (seconds since the Unix epoch) plus `leeway` seconds falls on.
fn expiry_instant(exp: u64, leeway: u64) -> tokio::time::Instant {
    let now_s = crate::wire::now_ms() / 1000;
    let left = (exp + leeway).saturating_sub(now_s);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

impl Session {
    /// A new session for `identity`, its `welcome` queued.
    /// On the event-driven core, `waker` is the connection's: the outbox wakes it.
    fn open(
        shared: Arc<Shared>,
        identity: Identity,
        format: Format,
        deflate: bool,
        waker: Option<std::task::Waker>,
    ) -> Self {
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let session: Arc<str> = format!("{:08x}{:08x}", shared.node, id).into();
        let (size, metrics) = (shared.config.queue_size, Arc::clone(&shared.metrics));
        let outbox = match waker {
            Some(w) => Outbox::waking(size, metrics, w),
            None => Outbox::new(size, metrics),
        };
        let member =
            Member { user: Arc::clone(&identity.user), session: Arc::clone(&session), info: identity.info.clone() };
        let sub = Arc::new(Subscriber { id, member, outbox, filters: Default::default() });
        let leeway = shared.config.jwt.as_ref().map_or(0, |j| j.leeway_secs());
        let expires_at = identity.expires.map(|exp| expiry_instant(exp, leeway));
        tracing::debug!(session = %session, user = %identity.user, "session started");
        let s = Session {
            bucket: TokenBucket::new(shared.config.rate_limit, shared.config.rate_burst, Instant::now()),
            touched: Touched::default(),
            window_start: Instant::now(),
            expires_at,
            shared,
            identity,
            sub,
            format,
            deflate,
            subscriptions: Subscriptions::default(),
            rejected_in_a_row: 0,
            publishes: std::sync::Mutex::default(),
            snapshots_in_flight: None,
            secure: None,
            sealing: false,
        };
        s.reply(&Reply::Welcome {
            version: PROTOCOL_VERSION,
            session: &session,
            user: &s.identity.user,
            time: now_ms(),
            heartbeat: s.shared.config.heartbeat.as_millis() as u64,
            secure: s.shared.config.secure.offered(),
        });
        s
    }

    /// The application's `Connected`, when it listens ([`crate::Engine::inbound`]); whether
    /// it was told (it hears of the end of a session only if it heard of its start).
    async fn announce(&self) -> bool {
        match self.shared.inbound.get() {
            Some(tx) => {
                let ev = Inbound::Connected {
                    session: Arc::clone(&self.sub.member.session),
                    user: Arc::clone(&self.identity.user),
                };
                tx.send(ev).await.is_ok()
            }
            None => false,
        }
    }

    /// The end of a session, once its subscriptions are gone and its last bytes written: the
    /// connection count and the application's `Disconnected`.
    fn ended(&self, announced: bool) {
        tracing::debug!(session = %self.sub.member.session, "session ended");
        self.shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(tx) = self.shared.inbound.get().filter(|_| announced) {
            let ev = Inbound::Disconnected {
                session: Arc::clone(&self.sub.member.session),
                user: Arc::clone(&self.identity.user),
            };
            // Waits for room, off the caller's path, as the session itself would have.
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let tx = tx.clone();
                    rt.spawn(async move { tx.send(ev).await });
                }
            }
        }
    }

    /// Let go of what a quiet session holds for busy times: the outbox's room (kept while
    /// events flow) and the topics of a churn window that has passed.
    fn release_idle(&mut self) {
        self.sub.outbox.release_idle();
        if self.window_start.elapsed() >= self.shared.config.topic_churn_window {
            self.touched = Touched::default();
        }
    }

    /// Remove every subscription (nothing new reaches the outbox after this).
    fn unsubscribe_all(&mut self) {
        let targets: Vec<Pattern> = self.subscriptions.take_all();
        self.shared.broker.remove_all(&self.sub, &targets);
    }
}

pub(crate) async fn run<S>(shared: Arc<Shared>, mut ws: WebSocket<S>, identity: Identity)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let format = Format::from_subprotocol(ws.subprotocol());
    let deflate = ws.deflate_params().is_some_and(|p| p.server_max_window_bits == 15);
    let mut s = Session::open(shared, identity, format, deflate, None);
    let sub = Arc::clone(&s.sub);
    let outbox = &sub.outbox;
    let session = Arc::clone(&s.sub.member.session);
    let announced = s.announce().await;
    let mut shutdown = s.shared.shutdown.subscribe();
    let mut batch = Vec::new();
    // One timer for the token's expiry, moved when a `refresh` extends it (not re-created per
    // message).
    let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let mut armed_at = s.expires_at;
    let expiry = tokio::time::sleep_until(armed_at.unwrap_or(far));
    tokio::pin!(expiry);
    // Set once a shutdown begins: the broker settling (this node's own publishes coming back),
    // while the session keeps writing what arrives and finishing its publishes, but reads no
    // more requests; then the 1001.
    let mut settling: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let end = loop {
        if s.expires_at != armed_at {
            armed_at = s.expires_at;
            expiry.as_mut().reset(armed_at.unwrap_or(far));
        }
        tokio::select! {
            _ = crate::engine::stopped(&mut shutdown), if settling.is_none() => {
                let shared = Arc::clone(&s.shared);
                settling = Some(Box::pin(async move { shared.settled().await }));
            }
            _ = async { settling.as_mut().expect("guarded").await }, if settling.is_some() => {
                break End::Close(CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down"));
            }
            _ = &mut expiry, if armed_at.is_some() => {
                s.shared.metrics.token_expiries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %session, user = %s.identity.user, "session closed: token expired");
                break End::Close(CloseFrame::new(CloseCode(CLOSE_TOKEN_EXPIRED), "token expired"));
            }
            _ = outbox.notified() => {
                match s.write_batch(&mut ws, &mut batch).await {
                    Ok(()) => {}
                    Err(end) => break end,
                }
            }
            Some(done) = s.pending().next(), if !s.pending().is_empty() => s.published(done),
            msg = ws.recv(), if s.pending().len() < PUBLISH_PIPELINE && settling.is_none() => match msg {
                Some(Ok(msg)) if msg.is_data() => {
                    let msg = match s.unseal(msg) {
                        Ok(msg) => msg,
                        Err(why) => {
                            s.shared.metrics.secure_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(session = %session, user = %s.identity.user, reason = %why, "session closed: secure channel");
                            break End::Close(CloseFrame::new(CloseCode(CLOSE_SECURE_FAILED), &why));
                        }
                    };
                    // Sealed or not, a message is held to the same limit (the socket's allows
                    // for the sealing's overhead).
                    if msg.payload().len() > s.shared.config.max_message_size {
                        break End::Close(CloseFrame::new(CloseCode::TOO_BIG, "message too big"));
                    }
                    if let Flow::Close(f) = s.handle(msg).await {
                        break End::Close(f);
                    }
                }
                // Pings and pongs cost a token too: a control-frame flood is a flood.
                Some(Ok(_)) => {
                    if let Flow::Close(f) = s.rate_check(None) {
                        break End::Close(f);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(session = %session, error = %e, "connection ended");
                    break End::Gone;
                }
                None => break End::Gone,
            },
        }
    };
    // Publishes already sent get their outcome (and their replies) before the close.
    let _ = tokio::time::timeout(CLOSE_WAIT, s.finish_publishes()).await;
    s.unsubscribe_all();
    if let End::Close(_) = end {
        // Every reply and event already queued goes out before the close frame (rate-limit
        // errors included); nothing new arrives now that the subscriptions are gone.
        let _ = tokio::time::timeout(CLOSE_WAIT, s.write_batch(&mut ws, &mut batch)).await;
    }
    outbox.close();
    match end {
        End::Gone => {}
        End::Close(frame) => {
            if frame.code == CloseCode::POLICY {
                tracing::info!(session = %session, user = %s.identity.user, reason = %frame.reason, "session closed");
            }
            let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(Some(frame))).await;
        }
        End::SlowConsumer => {
            tracing::info!(session = %session, user = %s.identity.user, "session closed: slow consumer");
            // What the peer has not read is not worth waiting for: the close frame goes right
            // after the bytes already on their way, so a peer that reads again sees 1008.
            ws.discard_unsent();
            let frame = CloseFrame::new(CloseCode::POLICY, "slow consumer");
            let _ = tokio::time::timeout(SLOW_CLOSE_WAIT, ws.close(Some(frame))).await;
        }
    }
    s.ended(announced);
}

/// Write one message through `send` (false: the connection refused it), sealed when the
/// channel is given; the bytes it takes on the wire.
fn feed(
    send: &mut dyn FnMut(&weft::EncodedMessage) -> bool,
    secure: Option<&mut crate::secure::Channel>,
    m: &weft::EncodedMessage,
    deflate: bool,
) -> Result<usize, ()> {
    match secure {
        None => {
            if !send(m) {
                return Err(());
            }
            Ok(match m.deflated_frame() {
                Some(z) if deflate => z.len(),
                _ => m.plain_frame().len(),
            })
        }
        Some(ch) => {
            // Sealed frames go out uncompressed: ciphertext does not compress, and compressing
            // before encrypting would let message lengths leak their content.
            let sealed = Message::binary(ch.seal(m.payload()));
            let sealed = weft::EncodedMessage::new(&sealed, None).expect("a data message");
            if !send(&sealed) {
                return Err(());
            }
            Ok(sealed.plain_frame().len())
        }
    }
}

impl Session {
    /// A data message as the protocol reads it: as received, or, on a secured connection, the
    /// message its sealed frame carries. `Err` is why the connection must close.
    fn unseal(&mut self, msg: Message) -> Result<Message, String> {
        let Some(ch) = self.secure.as_mut() else { return Ok(msg) };
        let Message::Binary(frame) = msg else {
            return Err("secure channel: a message that is not sealed".into());
        };
        let plain = ch.open(&frame).map_err(|e| format!("secure channel: {e}"))?;
        Ok(match self.format {
            Format::Json => match String::from_utf8(plain) {
                Ok(t) => Message::text(t),
                Err(_) => return Err("secure channel: the sealed message is not UTF-8".into()),
            },
            Format::Msgpack => Message::binary(plain),
        })
    }

    /// Answer `secure`: agree on the channel's keys and queue `secured`, the last message in
    /// clear.
    fn secure(&mut self, id: Option<&serde_json::Value>, mode: crate::secure::Mode, key: &[u8]) {
        use base64::Engine as _;
        let refuse = |s: &Self, m: &str| {
            s.shared.metrics.secure_failures.fetch_add(1, Ordering::Relaxed);
            s.error(id, &ErrorBody::new(ErrorCode::SecureFailed, m));
        };
        if self.shared.config.secure == crate::secure::SecurePolicy::Off {
            return refuse(self, "the secure channel is off on this server");
        }
        if self.secure.is_some() {
            return refuse(self, "the connection is already secured");
        }
        let identity = self.shared.config.secure_identity.as_deref();
        match crate::secure::accept(mode, key, &self.sub.member.session, identity) {
            Ok(a) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let key = b64.encode(&a.public_key);
                let signature = a.signature.as_ref().map(|s| b64.encode(s));
                let reply = Reply::Secured { id, mode: mode.name(), key: &key, signature: signature.as_deref() };
                self.sub.outbox.push_secured(self.format.encode_shared(&reply));
                self.secure = Some(Box::new(a.channel));
                self.shared.metrics.secure_channels.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => refuse(self, &e.0),
        }
    }

    /// A pipelined publish finished: fill its reply slot.
    fn published(&mut self, (slot, id, topic, r): PublishDone) {
        let m = match r {
            Ok(pos) => self.format.encode_shared(&Reply::Published {
                id: id.as_ref(),
                topic: &topic,
                offset: pos.offset,
                epoch: &pos.epoch,
            }),
            Err(e) => {
                self.shared.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                let e = e.body();
                self.format.encode_shared(&Reply::Error { id: id.as_ref(), code: e.code, message: &e.message })
            }
        };
        self.sub.outbox.fill(slot, m);
    }

    /// Wait for every publish in flight (requests other than publish keep their order after
    /// them).
    async fn finish_publishes(&mut self) {
        while let Some(done) = self.pending().next().await {
            self.published(done);
        }
    }

    fn pending(&mut self) -> &mut Publishes {
        self.publishes.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn reply(&self, r: &Reply<'_>) {
        self.sub.outbox.push_reply(self.format.encode_shared(r));
    }

    fn error(&self, id: Option<&serde_json::Value>, e: &ErrorBody) {
        self.shared.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
        self.reply(&Reply::Error { id, code: e.code, message: &e.message });
    }

    /// Move what the outbox holds, up to its first slot still unfilled, into the connection
    /// through `send`; whether there was anything. `Err` says how the session ends.
    fn feed_queued(
        &mut self,
        batch: &mut Vec<Out>,
        send: &mut dyn FnMut(&weft::EncodedMessage) -> bool,
    ) -> Result<bool, End> {
        let (dropped, closing) = self.sub.outbox.drain(batch);
        if let Some(Closing::SlowConsumer) = closing {
            return Err(End::SlowConsumer);
        }
        if dropped > 0 {
            let m = self.format.encode_shared(&Reply::Lagged { dropped });
            let secure = self.secure.as_deref_mut().filter(|_| self.sealing);
            let _ = feed(send, secure, &m, false);
        }
        if batch.is_empty() {
            return Ok(dropped > 0);
        }
        let mut bytes = 0;
        let n = batch.len() as u64;
        let now = crate::wire::now_ms();
        let mut latency = crate::metrics::LatencyBatch::default();
        for o in batch.drain(..) {
            if let Out::Secured(m) = &o {
                // The last message in clear; everything after it is sealed.
                bytes += m.plain_frame().len();
                if !send(m) {
                    return Err(End::Gone);
                }
                self.sealing = true;
                continue;
            }
            let m = match &o {
                Out::Event(e, _, live) => {
                    if *live {
                        latency.add(now.saturating_sub(e.time));
                    }
                    e.encoded_for(self.format, self.deflate)
                }
                Out::Notice(n) => n.encoded(self.format),
                Out::Reply(m) | Out::Fence(m) => m,
                Out::Secured(_) => unreachable!("written above"),
                Out::Slot(_) => unreachable!("drain stops at slots"),
            };
            let secure = self.secure.as_deref_mut().filter(|_| self.sealing);
            match feed(send, secure, m, self.deflate) {
                Ok(n) => bytes += n,
                Err(()) => return Err(End::Gone),
            }
        }
        let m = &self.shared.metrics;
        m.delivery_latency.record(&mut latency);
        m.deliveries.fetch_add(n, Ordering::Relaxed);
        m.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Write everything queued, in one flush per batch, until the queue is empty. `Err` says
    /// how the session ends.
    async fn write_batch<S>(&mut self, ws: &mut WebSocket<S>, batch: &mut Vec<Out>) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let sub = Arc::clone(&self.sub);
        let outbox = &sub.outbox;
        loop {
            if !self.feed_queued(batch, &mut |m| ws.feed_encoded(m).is_ok())? {
                return Ok(());
            }
            let flush = ws.flush();
            tokio::pin!(flush);
            // Fast path: the socket takes everything at once (nearly always), so no timer and no
            // queue listener need setting up.
            match flush.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                std::task::Poll::Ready(Ok(())) => continue,
                std::task::Poll::Ready(Err(_)) => return Err(End::Gone),
                std::task::Poll::Pending => {}
            }
            // A peer that stops reading blocks the flush; give up when the queue overflows
            // meanwhile (slow consumer) or after the write timeout.
            let deadline = tokio::time::sleep(self.shared.config.heartbeat + self.shared.config.ping_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = &mut flush => {
                        if r.is_err() {
                            return Err(End::Gone);
                        }
                        break;
                    }
                    _ = outbox.notified() => {
                        if outbox.is_closing() {
                            return Err(End::SlowConsumer);
                        }
                    }
                    _ = &mut deadline => {
                        self.shared.metrics.slow_consumer_disconnects.fetch_add(1, Ordering::Relaxed);
                        return Err(End::SlowConsumer);
                    }
                }
            }
        }
    }

    /// Take a token for one inbound message (data or control). Over the limit: error 4005
    /// (with the request's id) for data messages, and close 1008 after `rate_burst`
    /// consecutive refusals.
    fn rate_check(&mut self, data_id: Option<Option<&serde_json::Value>>) -> Flow {
        if self.bucket.try_take(Instant::now()) {
            self.rejected_in_a_row = 0;
            return Flow::Continue;
        }
        self.shared.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        self.rejected_in_a_row += 1;
        if self.rejected_in_a_row > self.shared.config.rate_burst {
            return Flow::Close(CloseFrame::new(CloseCode::POLICY, "rate limit"));
        }
        if let Some(id) = data_id {
            self.error(id, &ErrorBody::new(ErrorCode::RateLimited, "rate limit exceeded; message not processed"));
        }
        Flow::Stop
    }

    /// Count a topic (or pattern) this connection touches; refuse past the churn limit.
    fn touch(&mut self, topic: &str) -> Result<(), ErrorBody> {
        let cfg = &self.shared.config;
        let now = Instant::now();
        if now.duration_since(self.window_start) >= cfg.topic_churn_window {
            self.window_start = now;
            self.touched = Touched::default();
        }
        if self.subscriptions.contains(topic) {
            return Ok(());
        }
        // Keyed with the process's own random key: a peer cannot choose topics that collide.
        let h = self.shared.churn_keys.hash_one(topic);
        if self.touched.contains(&h) {
            return Ok(());
        }
        if self.touched.len() >= cfg.topic_churn_limit {
            self.shared.metrics.topics_refused.fetch_add(1, Ordering::Relaxed);
            return Err(ErrorBody::new(
                ErrorCode::TooManyTopics,
                format!(
                    "more than {} distinct topics within {} s on this connection",
                    cfg.topic_churn_limit,
                    cfg.topic_churn_window.as_secs()
                ),
            ));
        }
        self.touched.insert(h);
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Flow {
        self.shared.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        let req = Request::decode(&msg);
        let id = match &req {
            Ok(r) => r.id(),
            Err(e) => e.id.as_ref(),
        };
        match self.rate_check(Some(id)) {
            Flow::Continue => {}
            Flow::Stop => return Flow::Continue,
            close => return close,
        }
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                self.error(e.id.as_ref(), &e.error);
                return Flow::Continue;
            }
        };
        if !matches!(req, Request::Publish { .. }) {
            self.finish_publishes().await;
        }
        if self.secure.is_none()
            && self.shared.config.secure == crate::secure::SecurePolicy::Require
            && !matches!(req, Request::Secure { .. })
        {
            let e =
                ErrorBody::new(ErrorCode::SecureFailed, "this server requires the secure channel: send `secure` first");
            self.error(req.id(), &e);
            return Flow::Continue;
        }
        match req {
            Request::Secure { id, mode, key } => self.secure(id.as_ref(), mode, &key),
            Request::Subscribe { id, topics, resume, presence, history, filter, snapshot } => {
                let filter = match filter.as_ref().map(crate::filter::intern).transpose() {
                    Ok(f) => f,
                    Err(e) => {
                        self.error(id.as_ref(), &ErrorBody::new(ErrorCode::BadFilter, format!("bad filter: {e}")));
                        return Flow::Continue;
                    }
                };
                // A topic named twice in one request is subscribed (and snapshot) once.
                let mut seen = HashSet::with_capacity(topics.len());
                let topics: Vec<String> = topics.into_iter().filter(|t| seen.insert(t.clone())).collect();
                let slot = self.sub.outbox.reserve();
                let mut results = Vec::with_capacity(topics.len());
                // Snapshots to take: topic, its place in the queue, where it started.
                let mut snapshots = Vec::new();
                for t in &topics {
                    let start = match resume.get(t) {
                        Some(pos) => Start::Resume(pos),
                        // A snapshot stands for the recent events.
                        None if history > 0 && !snapshot => Start::Recent(history),
                        None => Start::Live,
                    };
                    // The snapshot's place is held before the topic's first live event can be
                    // queued, and after the `subscribed` reply.
                    let place = (snapshot && Pattern::parse(t).is_ok_and(|p| !p.is_wildcard()))
                        .then(|| self.sub.outbox.reserve());
                    let r = self.subscribe_one(t, start, presence, filter.as_ref()).await;
                    if let Some(place) = place {
                        match (&r, r.offset, &r.epoch) {
                            // A resume that recovered needs no state: the missed events follow.
                            (r, Some(offset), Some(epoch)) if r.ok && r.recovered != Some(true) => {
                                snapshots.push((t.clone(), place, Position { offset, epoch: epoch.clone() }))
                            }
                            _ => self.sub.outbox.cancel(place),
                        }
                    }
                    results.push(r);
                }
                self.sub
                    .outbox
                    .fill(slot, self.format.encode_shared(&Reply::Subscribed { id: id.as_ref(), results: &results }));
                // Taken off this task, so the session keeps reading requests meanwhile; what
                // is queued behind a snapshot waits for it (at most `snapshot_timeout`).
                for (topic, place, position) in snapshots {
                    let (epoch, at) = (position.epoch.clone(), position.offset);
                    let in_flight = Arc::clone(self.snapshots_in_flight.get_or_insert_with(Arc::default));
                    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_SNAPSHOTS_IN_FLIGHT {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        self.shared.metrics.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                        let e = ErrorBody::new(
                            ErrorCode::SnapshotFailed,
                            format!("at most {MAX_SNAPSHOTS_IN_FLIGHT} snapshots in progress per connection"),
                        );
                        let reply =
                            Reply::Snapshot { topic: &topic, offset: at, epoch: &epoch, data: None, error: Some(&e) };
                        self.sub.outbox.fill(place, self.format.encode_shared(&reply));
                        continue;
                    }
                    let req = crate::snapshot::SnapshotRequest {
                        topic,
                        position,
                        user: Arc::clone(&self.sub.member.user),
                        session: Arc::clone(&self.sub.member.session),
                    };
                    let (shared, sub, format) = (Arc::clone(&self.shared), Arc::clone(&self.sub), self.format);
                    tokio::spawn(async move {
                        use futures_util::FutureExt;
                        let topic = req.topic.clone();
                        // A provider that panics still fills the place (else everything queued
                        // behind it would wait forever).
                        let taken = std::panic::AssertUnwindSafe(crate::snapshot::take(&shared, &sub, req))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| crate::snapshot::Taken::failed(at, "the snapshot provider panicked"));
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        let reply = Reply::Snapshot {
                            topic: &topic,
                            offset: taken.offset,
                            epoch: &epoch,
                            data: taken.data.as_ref(),
                            error: taken.error.as_ref(),
                        };
                        sub.outbox.fill_with_replay(place, format.encode_shared(&reply), &taken.replay);
                    });
                }
            }
            Request::Unsubscribe { id, topics } => {
                if let Some(missing) = topics.iter().find(|t| !self.subscriptions.contains(t.as_str())) {
                    let e = ErrorBody::new(ErrorCode::NotSubscribed, format!("not subscribed to {missing}"));
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                }
                for t in &topics {
                    if let Some(p) = self.subscriptions.take(t.as_str()) {
                        if let Err(e) = self.shared.broker.unsubscribe(&self.sub, &p).await {
                            tracing::warn!(error = %e, "unsubscribe failed");
                        }
                        self.sub.filters.remove(&p);
                    }
                }
                self.reply(&Reply::Unsubscribed { id: id.as_ref(), topics: &topics });
            }
            Request::Publish { id, topic, payload, priority } => {
                if let Err(e) = validate_topic(&topic) {
                    self.error(id.as_ref(), &ErrorBody::new(ErrorCode::InvalidTopic, e.to_string()));
                    return Flow::Continue;
                }
                let p = Pattern::parse(&topic).expect("valid topic is a valid pattern");
                if !allowed_by(&self.identity.publish, &p) {
                    let e = ErrorBody::new(ErrorCode::Forbidden, format!("not allowed to publish on {topic}"));
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                }
                if let Err(e) = self.touch(&topic) {
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                }
                if self.shared.broker.pipelined() {
                    // Sent now, in order; the reply takes its place in the queue when it comes.
                    let slot = self.sub.outbox.reserve();
                    let meta = crate::broker::PublishMeta { priority, ..Default::default() };
                    let sent = Arc::clone(&self.shared.broker).publish_owned(topic.clone(), payload, meta);
                    self.pending().push_back(Box::pin(async move { (slot, id, topic, sent.await) }));
                    return Flow::Continue;
                }
                let meta = crate::broker::PublishMeta { priority, ..Default::default() };
                match self.shared.broker.publish(&topic, payload, meta).await {
                    Ok(pos) => self.reply(&Reply::Published {
                        id: id.as_ref(),
                        topic: &topic,
                        offset: pos.offset,
                        epoch: &pos.epoch,
                    }),
                    Err(e) => self.error(id.as_ref(), &e.body()),
                }
            }
            Request::Presence { id, topic } => {
                if let Err(e) = validate_topic(&topic) {
                    self.error(id.as_ref(), &ErrorBody::new(ErrorCode::InvalidTopic, e.to_string()));
                    return Flow::Continue;
                }
                let p = Pattern::parse(&topic).expect("valid");
                if !allowed_by(&self.identity.subscribe, &p) {
                    let e = ErrorBody::new(ErrorCode::Forbidden, format!("not allowed to see presence of {topic}"));
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                }
                match self.shared.broker.presence(&topic, PRESENCE_LIMIT).await {
                    Ok((count, members)) => {
                        self.reply(&Reply::Presence { id: id.as_ref(), topic: &topic, count, members: &members })
                    }
                    Err(e) => self.error(id.as_ref(), &ErrorBody::new(ErrorCode::Internal, e.to_string())),
                }
            }
            Request::Ping { id } => self.reply(&Reply::Pong { id: id.as_ref(), time: now_ms() }),
            Request::Refresh { id, token } => self.refresh(id.as_ref(), &token).await,
            Request::Send { id, payload } => {
                let Some(tx) = self.shared.inbound.get() else {
                    let e = ErrorBody::new(ErrorCode::NoHandler, "this server takes no application messages");
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                };
                let ev = Inbound::Message {
                    session: Arc::clone(&self.sub.member.session),
                    user: Arc::clone(&self.identity.user),
                    id: id.clone(),
                    payload,
                };
                // Waits when the application is behind: this connection stops reading.
                if tx.send(ev).await.is_err() {
                    let e = ErrorBody::new(ErrorCode::Internal, "the server application has stopped");
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                }
                self.reply(&Reply::Sent { id: id.as_ref() });
            }
        }
        Flow::Continue
    }

    async fn subscribe_one(
        &mut self,
        topic: &str,
        start: Start<'_>,
        presence: bool,
        filter: Option<&Arc<crate::filter::Filter>>,
    ) -> SubscribeResult {
        let p = match Pattern::parse(topic) {
            Ok(p) => p,
            Err(e) => return SubscribeResult::failed(topic, ErrorBody::new(ErrorCode::InvalidTopic, e.to_string())),
        };
        if !allowed_by(&self.identity.subscribe, &p) {
            let e = ErrorBody::new(ErrorCode::Forbidden, format!("not allowed to subscribe to {topic}"));
            return SubscribeResult::failed(topic, e);
        }
        if !self.subscriptions.contains(topic) && self.subscriptions.len() >= self.shared.config.max_subscriptions {
            let e = ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {} subscriptions per connection", self.shared.config.max_subscriptions),
            );
            return SubscribeResult::failed(topic, e);
        }
        if let Err(e) = self.touch(topic) {
            return SubscribeResult::failed(topic, e);
        }
        let start = if p.is_wildcard() { Start::Live } else { start };
        if let Some(f) = filter {
            if self.sub.filters.too_many(&p, f) {
                let e = ErrorBody::new(
                    ErrorCode::BadFilter,
                    format!("at most {} distinct filters per connection", crate::broker::MAX_FILTERS_PER_CONNECTION),
                );
                return SubscribeResult::failed(topic, e);
            }
        }
        // In place before the broker replays or delivers anything; a subscribe again replaces
        // the filter (or removes it, without one).
        let before = self.subscriptions.contains(topic).then(|| self.sub.filters.get(&p));
        self.sub.filters.set(&p, filter.cloned());
        match self.shared.broker.subscribe(&self.sub, &p, start, presence).await {
            Ok(out) => {
                self.subscriptions.replace(p);
                SubscribeResult {
                    topic: topic.to_owned(),
                    ok: true,
                    offset: out.position.as_ref().map(|p| p.offset),
                    epoch: out.position.map(|p| p.epoch),
                    recovered: matches!(start, Start::Resume(_)).then_some(out.replayed.is_some()),
                    replayed: out.replayed,
                    error: None,
                }
            }
            Err(e) => {
                match before {
                    Some(f) => self.sub.filters.set(&p, f),
                    None => self.sub.filters.remove(&p),
                }
                SubscribeResult::failed(topic, e.body())
            }
        }
    }

    /// `refresh`: a newer token for the same user extends the session; its permissions apply
    /// from now on, and subscriptions it no longer allows are ended (listed in an error 4003).
    async fn refresh(&mut self, id: Option<&serde_json::Value>, token: &str) {
        let Some(jwt) = self.shared.config.jwt.clone() else {
            let e = ErrorBody::new(ErrorCode::BadRequest, "this server does not use tokens (anonymous mode)");
            return self.error(id, &e);
        };
        if token.len() > self.shared.config.max_token_size {
            let e = ErrorBody::new(
                ErrorCode::BadToken,
                format!("token larger than {} bytes", self.shared.config.max_token_size),
            );
            return self.error(id, &e);
        }
        let new = match jwt.verify(token) {
            Ok(new) => new,
            Err(e) => {
                self.shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %self.sub.member.session, reason = %e.message, "token refresh refused");
                return self.error(id, &ErrorBody::new(ErrorCode::BadToken, e.message));
            }
        };
        if new.user != self.identity.user {
            let e = ErrorBody::new(ErrorCode::BadToken, "the new token is for another user");
            return self.error(id, &e);
        }
        let revoked: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|p| !allowed_by(&new.subscribe, p))
            .map(|p| p.as_str().to_owned())
            .collect();
        for t in &revoked {
            if let Some(p) = self.subscriptions.take(t.as_str()) {
                let _ = self.shared.broker.unsubscribe(&self.sub, &p).await;
                self.sub.filters.remove(&p);
            }
        }
        let leeway = jwt.leeway_secs();
        self.expires_at = new.expires.map(|exp| expiry_instant(exp, leeway));
        let exp = new.expires.unwrap_or(0);
        self.identity = new;
        if !revoked.is_empty() {
            let e = ErrorBody::new(
                ErrorCode::Forbidden,
                format!("the new token does not allow these subscriptions, which ended: {}", revoked.join(", ")),
            );
            self.error(None, &e);
        }
        self.reply(&Reply::Refreshed { id, exp });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_in_flight_hold_memory_only_while_there_are_some() {
        let mut p = Publishes::default();
        assert!(p.0.is_none() && p.is_empty());
        for i in 0..3u64 {
            p.push_back(Box::pin(
                async move { (i, None, format!("t{i}"), Err(crate::broker::BrokerError::failed("x"))) },
            ));
        }
        assert_eq!(p.len(), 3);
        let order: Vec<u64> = (&mut p).map(|(slot, ..)| slot).collect().await;
        assert_eq!(order, [0, 1, 2], "request order");
        assert!(p.0.is_none(), "freed once the last is answered");
        assert!(p.next().await.is_none());
    }

    #[test]
    fn subscriptions_are_found_by_text_as_a_list_and_as_a_set() {
        let p = |t: &str| Pattern::parse(t).unwrap();
        let mut s = Subscriptions::default();
        for i in 0..20 {
            s.replace(p(&format!("t.{i}")));
            s.replace(p(&format!("t.{i}"))); // the same again: replaced, not added
            assert_eq!(s.len(), i + 1);
            assert_eq!(matches!(s, Subscriptions::Few(_)), i < Subscriptions::FEW, "{i}");
            assert!((0..=i).all(|j| s.contains(&format!("t.{j}"))) && !s.contains("t"));
            assert_eq!(s.iter().count(), i + 1);
        }
        assert_eq!(s.take("t.3").map(|p| p.as_str().to_owned()).as_deref(), Some("t.3"));
        assert!(s.take("t.3").is_none() && !s.contains("t.3"));
        let mut all: Vec<String> = s.take_all().into_iter().map(|p| p.as_str().to_owned()).collect();
        all.sort();
        assert_eq!(all.len(), 19);
        assert_eq!(s.len(), 0);
        let mut few = Subscriptions::default();
        few.replace(p("a.*"));
        if let Subscriptions::Few(v) = &few {
            assert_eq!(v.capacity(), 1, "a list exactly as long as it needs to be");
        }
        assert_eq!(few.take("a.*").map(|p| p.as_str().to_owned()).as_deref(), Some("a.*"));
    }

    #[test]
    fn a_session_is_small() {
        // Every connection holds one: cold state stays out of line.
        assert!(std::mem::size_of::<Session>() <= 280, "{} bytes", std::mem::size_of::<Session>());
    }
}
