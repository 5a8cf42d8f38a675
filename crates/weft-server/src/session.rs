//! One WebSocket connection of the engine: reads requests, answers them, and writes its
//! outbound queue in batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use weft::{CloseCode, CloseFrame, Message, WebSocket};

use crate::auth::Identity;
use crate::broker::Subscriber;
use crate::engine::{Inbound, Shared};
use crate::outbox::{Closing, Out, Outbox};
use crate::ratelimit::TokenBucket;
use crate::topic::{Pattern, allowed_by, validate_topic};
use crate::wire::{ErrorBody, ErrorCode, Format, Member, PROTOCOL_VERSION, Reply, Request, SubscribeResult, now_ms};

const PRESENCE_LIMIT: usize = 1000;

struct Session {
    shared: Arc<Shared>,
    identity: Identity,
    sub: Arc<Subscriber>,
    format: Format,
    subscriptions: HashMap<String, Pattern>,
    bucket: TokenBucket,
    rejected_in_a_row: u32,
}

enum Flow {
    Continue,
    Close(CloseFrame),
}

pub(crate) async fn run<S>(shared: Arc<Shared>, mut ws: WebSocket<S>, identity: Identity)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let format = Format::from_subprotocol(ws.subprotocol());
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let session: Arc<str> = format!("{:08x}{:08x}", shared.node, id).into();
    let outbox = Arc::new(Outbox::new(shared.config.queue_size, Arc::clone(&shared.metrics)));
    let member =
        Member { user: Arc::clone(&identity.user), session: Arc::clone(&session), info: identity.info.clone() };
    let sub = Arc::new(Subscriber { id, member, outbox: Arc::clone(&outbox) });
    let mut s = Session {
        bucket: TokenBucket::new(shared.config.rate_limit, shared.config.rate_burst, Instant::now()),
        shared,
        identity,
        sub,
        format,
        subscriptions: HashMap::new(),
        rejected_in_a_row: 0,
    };
    s.reply(&Reply::Welcome {
        version: PROTOCOL_VERSION,
        session: &session,
        user: &s.identity.user,
        time: now_ms(),
        heartbeat: s.shared.config.heartbeat.as_millis() as u64,
    });
    // The application hears of the end of a session only if it heard of its start.
    let announced = match s.shared.inbound.get() {
        Some(tx) => {
            let ev = Inbound::Connected { session: Arc::clone(&session), user: Arc::clone(&s.identity.user) };
            tx.send(ev).await.is_ok()
        }
        None => false,
    };
    let mut shutdown = s.shared.shutdown.subscribe();
    let mut batch = Vec::new();
    let close = loop {
        tokio::select! {
            _ = crate::engine::stopped(&mut shutdown) => {
                // Drain what is queued, then say goodbye.
                let _ = s.write_batch(&mut ws, &mut batch).await;
                break Some(CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down"));
            }
            _ = outbox.notified() => {
                match s.write_batch(&mut ws, &mut batch).await {
                    Ok(()) => {}
                    Err(frame) => break frame,
                }
            }
            msg = ws.recv() => match msg {
                Some(Ok(msg)) if msg.is_data() => match s.handle(msg).await {
                    Flow::Continue => {}
                    Flow::Close(f) => break Some(f),
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(session = %session, error = %e, "connection ended");
                    break None;
                }
                None => break None,
            },
        }
    };
    outbox.close();
    let targets: Vec<Pattern> = s.subscriptions.into_values().collect();
    s.shared.broker.remove_all(&s.sub, &targets);
    if let Some(frame) = close {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    }
    s.shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    if let Some(tx) = s.shared.inbound.get().filter(|_| announced) {
        let _ = tx.send(Inbound::Disconnected { session, user: Arc::clone(&s.identity.user) }).await;
    }
}

impl Session {
    fn reply(&self, r: &Reply<'_>) {
        self.sub.outbox.push_reply(self.format.encode_shared(r));
    }

    fn error(&self, id: Option<&serde_json::Value>, e: &ErrorBody) {
        self.shared.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
        self.reply(&Reply::Error { id, code: e.code, message: &e.message });
    }

    /// Write everything queued, in one flush per batch, until the queue is empty. `Err` carries
    /// the close frame to send (or `None` to just drop the connection).
    async fn write_batch<S>(&self, ws: &mut WebSocket<S>, batch: &mut Vec<Out>) -> Result<(), Option<CloseFrame>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbox = &self.sub.outbox;
        loop {
            let (dropped, closing) = outbox.drain(batch);
            if let Some(Closing::SlowConsumer) = closing {
                return Err(Some(CloseFrame::new(CloseCode::POLICY, "slow consumer")));
            }
            if dropped > 0 {
                let m = self.format.encode_shared(&Reply::Lagged { dropped });
                let _ = ws.feed_encoded(&m);
            }
            if batch.is_empty() {
                return Ok(());
            }
            let mut bytes = 0;
            let n = batch.len() as u64;
            for o in batch.drain(..) {
                let m = match &o {
                    Out::Event(e, _) => e.encoded(self.format),
                    Out::Notice(n) => n.encoded(self.format),
                    Out::Reply(m) => m,
                    Out::Slot(_) => unreachable!("drain stops at slots"),
                };
                bytes += m.plain_frame().len();
                if ws.feed_encoded(m).is_err() {
                    return Err(None);
                }
            }
            let m = &self.shared.metrics;
            m.deliveries.fetch_add(n, Ordering::Relaxed);
            m.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
            let flush = ws.flush();
            tokio::pin!(flush);
            // Fast path: the socket takes everything at once (nearly always), so no timer and no
            // queue listener need setting up.
            match flush.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                std::task::Poll::Ready(Ok(())) => continue,
                std::task::Poll::Ready(Err(_)) => return Err(None),
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
                            return Err(None);
                        }
                        break;
                    }
                    _ = outbox.notified() => {
                        if outbox.is_closing() {
                            return Err(Some(CloseFrame::new(CloseCode::POLICY, "slow consumer")));
                        }
                    }
                    _ = &mut deadline => {
                        self.shared.metrics.slow_consumer_disconnects.fetch_add(1, Ordering::Relaxed);
                        return Err(None);
                    }
                }
            }
        }
    }

    async fn handle(&mut self, msg: Message) -> Flow {
        let m = &self.shared.metrics;
        m.messages_in.fetch_add(1, Ordering::Relaxed);
        if !self.bucket.try_take(Instant::now()) {
            m.rate_limited.fetch_add(1, Ordering::Relaxed);
            self.rejected_in_a_row += 1;
            if self.rejected_in_a_row > self.shared.config.rate_burst {
                return Flow::Close(CloseFrame::new(CloseCode::POLICY, "rate limit"));
            }
            self.error(None, &ErrorBody::new(ErrorCode::RateLimited, "rate limit exceeded; message not processed"));
            return Flow::Continue;
        }
        self.rejected_in_a_row = 0;
        let req = match Request::decode(&msg) {
            Ok(r) => r,
            Err(e) => {
                self.error(e.id.as_ref(), &e.error);
                return Flow::Continue;
            }
        };
        match req {
            Request::Subscribe { id, topics, resume, presence } => {
                let slot = self.sub.outbox.reserve();
                let mut results = Vec::with_capacity(topics.len());
                for t in &topics {
                    results.push(self.subscribe_one(t, resume.get(t), presence).await);
                }
                self.sub
                    .outbox
                    .fill(slot, self.format.encode_shared(&Reply::Subscribed { id: id.as_ref(), results: &results }));
            }
            Request::Unsubscribe { id, topics } => {
                if let Some(missing) = topics.iter().find(|t| !self.subscriptions.contains_key(*t)) {
                    let e = ErrorBody::new(ErrorCode::NotSubscribed, format!("not subscribed to {missing}"));
                    self.error(id.as_ref(), &e);
                    return Flow::Continue;
                }
                for t in &topics {
                    if let Some(p) = self.subscriptions.remove(t) {
                        if let Err(e) = self.shared.broker.unsubscribe(&self.sub, &p).await {
                            tracing::warn!(error = %e, "unsubscribe failed");
                        }
                    }
                }
                self.reply(&Reply::Unsubscribed { id: id.as_ref(), topics: &topics });
            }
            Request::Publish { id, topic, payload } => {
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
                match self.shared.broker.publish(&topic, payload, None).await {
                    Ok(pos) => self.reply(&Reply::Published {
                        id: id.as_ref(),
                        topic: &topic,
                        offset: pos.offset,
                        epoch: &pos.epoch,
                    }),
                    Err(e) => self.error(id.as_ref(), &ErrorBody::new(ErrorCode::Internal, e.to_string())),
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
        resume: Option<&crate::wire::Position>,
        presence: bool,
    ) -> SubscribeResult {
        let p = match Pattern::parse(topic) {
            Ok(p) => p,
            Err(e) => return SubscribeResult::failed(topic, ErrorBody::new(ErrorCode::InvalidTopic, e.to_string())),
        };
        if !allowed_by(&self.identity.subscribe, &p) {
            let e = ErrorBody::new(ErrorCode::Forbidden, format!("not allowed to subscribe to {topic}"));
            return SubscribeResult::failed(topic, e);
        }
        if !self.subscriptions.contains_key(topic) && self.subscriptions.len() >= self.shared.config.max_subscriptions {
            let e = ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {} subscriptions per connection", self.shared.config.max_subscriptions),
            );
            return SubscribeResult::failed(topic, e);
        }
        let resume = if p.is_wildcard() { None } else { resume };
        match self.shared.broker.subscribe(&self.sub, &p, resume, presence).await {
            Ok(out) => {
                self.subscriptions.insert(topic.to_owned(), p);
                SubscribeResult {
                    topic: topic.to_owned(),
                    ok: true,
                    offset: out.position.as_ref().map(|p| p.offset),
                    epoch: out.position.map(|p| p.epoch),
                    recovered: resume.map(|_| out.replayed.is_some()),
                    replayed: out.replayed,
                    error: None,
                }
            }
            Err(e) => SubscribeResult::failed(topic, ErrorBody::new(ErrorCode::Internal, e.to_string())),
        }
    }
}
