//! The broker: where topics live. It assigns offsets, keeps history and presence, and fans
//! events out to subscribers.
//!
//! [`MemoryBroker`] is the single-node default; [`RedisBroker`] and [`NatsBroker`] are cluster
//! mode (see
//! `docs/CLUSTER.md`). `publish` may cross the network before it knows the position, so
//! methods return futures. Delivery to this node's connections always goes through the
//! [`Subscriber`] handles ([`Subscriber::deliver`], [`Subscriber::notify`]), which queue into
//! each connection's bounded outbox: a broker outside this crate can implement the trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::outbox::{Outbox, SlowConsumerPolicy};
use crate::topic::Pattern;
use crate::wire::{ErrorBody, ErrorCode, Event, Member, Notice, Position};

mod cluster;
mod memory;
mod patterns;

pub use cluster::{
    Backend, Cluster, ClusterSettings, DeadList, DeadRecord, Health, Heartbeat, Inbound, NatsBackend, NatsBroker,
    Outgoing, RedisBackend, RedisBroker, RedisSettings, Reply, default_node_name,
};
pub use memory::{MemoryBroker, TopicSettings};
pub(crate) use patterns::Patterns;

/// A boxed future returned by [`Broker`] methods.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// The broker refused or failed a request: a limit (a clear client error) or a failure (for
/// example, lost its connection to Redis).
#[derive(Debug, Clone)]
pub struct BrokerError {
    /// The protocol error code the client gets.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl BrokerError {
    /// The broker failed (error 5000).
    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::Internal, message: message.into() }
    }

    /// The broker cannot be reached (error 5003, HTTP 503): retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::Unavailable, message: message.into() }
    }

    /// The server holds `max` topics already (error 4008).
    pub fn too_many_topics(max: usize) -> Self {
        Self { code: ErrorCode::TooManyTopics, message: format!("the server holds its limit of {max} topics") }
    }

    /// The error as the client sees it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BrokerError {}

/// One connection as the broker sees it: its identity and the handle that queues events to
/// it (never waits; the connection's bounded queue and slow-consumer policy apply).
#[derive(Debug)]
pub struct Subscriber {
    pub(crate) id: u64,
    pub(crate) member: Member,
    pub(crate) outbox: Outbox,
    /// The connection's subscription filters, by topic or pattern (empty for most).
    pub(crate) filters: SubFilters,
}

/// A connection's subscription filters: the filter of each exact topic that has one, and every
/// pattern the connection holds with its filter or none (what decides an event that reaches it
/// through several subscriptions).
#[derive(Debug, Default)]
pub(crate) struct SubFilters {
    /// Some subscription has a filter (the fast path skips the table otherwise).
    any: std::sync::atomic::AtomicBool,
    table: std::sync::RwLock<Vec<(Pattern, Option<Arc<crate::filter::Filter>>)>>,
}

/// Most distinct filters one connection may use at once.
pub(crate) const MAX_FILTERS_PER_CONNECTION: usize = 16;

impl SubFilters {
    /// Set (or with `None`, clear) the filter of the subscription to `target`.
    pub(crate) fn set(&self, target: &Pattern, filter: Option<Arc<crate::filter::Filter>>) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.retain(|(p, _)| p != target);
        if filter.is_some() || target.is_wildcard() {
            t.push((target.clone(), filter));
        }
        self.any.store(t.iter().any(|(_, f)| f.is_some()), std::sync::atomic::Ordering::Release);
    }

    /// The filter of the subscription to `target`, if any.
    pub(crate) fn get(&self, target: &Pattern) -> Option<Arc<crate::filter::Filter>> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.iter().find(|(p, _)| p == target).and_then(|(_, f)| f.clone())
    }

    /// Whether `filter` on `target` would take this connection past
    /// [`MAX_FILTERS_PER_CONNECTION`] distinct filters.
    pub(crate) fn too_many(&self, target: &Pattern, filter: &crate::filter::Filter) -> bool {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&str> =
            t.iter().filter(|(p, _)| p != target).filter_map(|(_, f)| f.as_deref().map(|f| f.key())).collect();
        keys.push(filter.key());
        keys.sort_unstable();
        keys.dedup();
        keys.len() > MAX_FILTERS_PER_CONNECTION
    }

    /// The subscription to `target` ended.
    pub(crate) fn remove(&self, target: &Pattern) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.retain(|(p, _)| p != target);
        self.any.store(t.iter().any(|(_, f)| f.is_some()), std::sync::atomic::Ordering::Release);
    }

    /// Whether an event delivered for the connection's exact subscription to its topic
    /// passes: its filter passes, or — as the connection gets each event once however many of
    /// its subscriptions match — a covering pattern without a filter, or whose filter passes.
    fn exact(&self, ev: &Event) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        match t.iter().find(|(p, _)| !p.is_wildcard() && p.as_str() == &*ev.topic) {
            Some((_, Some(f))) if !f.matches(ev) => Self::any_pattern_passes(&t, ev),
            _ => true,
        }
    }

    /// Whether an event that reached the connection through its patterns passes: some pattern
    /// covering the topic has no filter, or a filter the event passes.
    fn pattern(&self, ev: &Event) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut covering = t.iter().filter(|(p, _)| p.is_wildcard() && p.matches(&ev.topic)).peekable();
        covering.peek().is_none() || covering.any(|(_, f)| f.as_ref().is_none_or(|f| f.matches(ev)))
    }

    fn any_pattern_passes(t: &[(Pattern, Option<Arc<crate::filter::Filter>>)], ev: &Event) -> bool {
        t.iter()
            .filter(|(p, _)| p.is_wildcard() && p.matches(&ev.topic))
            .any(|(_, f)| f.as_ref().is_none_or(|f| f.matches(ev)))
    }
}

impl Subscriber {
    /// A number unique to this connection within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The session id.
    pub fn session(&self) -> &str {
        &self.member.session
    }

    /// The presence member this connection appears as.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Queue an event of a topic this connection subscribed to exactly, unless the
    /// subscription's filter refuses it. When its queue is full, `policy` decides.
    pub fn deliver(&self, ev: &Arc<Event>, policy: SlowConsumerPolicy) {
        if self.filters.exact(ev) {
            self.outbox.push_event(ev, policy);
        }
    }

    /// Queue an event that reached this connection through its pattern subscriptions, unless
    /// their filters refuse it.
    pub fn deliver_via_pattern(&self, ev: &Arc<Event>, policy: SlowConsumerPolicy) {
        if self.filters.pattern(ev) {
            self.outbox.push_event(ev, policy);
        }
    }

    /// Whether `ev`, of one of this connection's exact topics, passes its filters.
    pub(crate) fn passes(&self, ev: &Event) -> bool {
        self.filters.exact(ev)
    }

    /// Queue an event replayed from history (resume or recent history) unless the
    /// subscription's filter refuses it; returns whether it was queued. Never dropped; a full
    /// queue closes the connection as a slow consumer. Its age is not counted as delivery
    /// latency.
    pub fn replay(&self, ev: &Arc<Event>) -> bool {
        let pass = self.filters.exact(ev);
        if pass {
            self.outbox.push_replay(ev);
        }
        pass
    }

    /// Queue a join/leave notice (dropped and counted when the queue is full).
    pub fn notify(&self, notice: &Arc<Notice>) {
        self.outbox.push_notice(notice);
    }
}

/// The slow-consumer policy of `topic`: the first pattern of `policies` that matches, else
/// `default`.
pub(crate) fn policy_for(
    policies: &[(Pattern, SlowConsumerPolicy)],
    default: SlowConsumerPolicy,
    topic: &str,
) -> SlowConsumerPolicy {
    policies.iter().find(|(p, _)| p.matches(topic)).map(|(_, pol)| *pol).unwrap_or(default)
}

/// Whether the broker can serve requests now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Serving.
    Ok,
    /// Not serving publishes or subscribes, for this reason; connected clients keep what they
    /// have.
    Degraded(String),
}

/// What a cluster broker reports in `/api/stats`, `/metrics` and `/healthz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterInfo {
    /// `redis` (or `nats`).
    pub broker: &'static str,
    /// This node's name.
    pub node: String,
    /// `ok`, or why it is degraded.
    pub state: String,
    /// Nodes seen alive in the last heartbeat round (this one included).
    pub nodes: usize,
}

/// Where a subscription to an exact topic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    /// With the next event published.
    Live,
    /// Right after this position: the missed events are replayed, or it is not recoverable.
    Resume(&'a Position),
    /// With up to this many of the most recent events kept in history, then live.
    Recent(usize),
}

/// The result of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// Current position (exact topics only).
    pub position: Option<Position>,
    /// `Some(n)` when `n` events were queued right after the reply (missed since the resume
    /// position, or the most recent ones); `None` when starting live or not recoverable.
    pub replayed: Option<usize>,
}

/// What a publish carries besides its topic and payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishMeta {
    /// The publisher's event id (one line), if any; otherwise the event's id is `epoch-offset`.
    pub id: Option<String>,
    /// What the `drop-lowest` slow-consumer policy drops first.
    pub priority: crate::wire::Priority,
    /// A replay of a dead letter: when it fails it is not kept again (the letter stays).
    pub replay: bool,
}

/// Where topics live: offsets, history, presence, fan-out.
pub trait Broker: Send + Sync + 'static {
    /// Publish `payload` on the concrete `topic`: assign the next offset, keep it in history,
    /// and queue it to every subscriber (exact and pattern) — in offset order per topic.
    /// Never waits for subscribers.
    fn publish<'a>(&'a self, topic: &'a str, payload: Value, meta: PublishMeta) -> BrokerFuture<'a, Position>;

    /// Subscribe `sub` to `target` (a topic or pattern), starting as `start` says (exact
    /// topics; patterns always start live). Events to replay (missed since a resume position, or
    /// the most recent ones) are queued to the subscriber right away, atomically with respect
    /// to publishes on the topic, so the subscriber sees no gap and no duplicate. An exact
    /// subscription makes the connection a presence member; `presence` asks for join/leave
    /// notices.
    fn subscribe<'a>(
        &'a self,
        sub: &'a Arc<Subscriber>,
        target: &'a Pattern,
        start: Start<'a>,
        presence: bool,
    ) -> BrokerFuture<'a, SubscribeOutcome>;

    /// Remove one subscription. Returns whether it existed.
    fn unsubscribe<'a>(&'a self, sub: &'a Arc<Subscriber>, target: &'a Pattern) -> BrokerFuture<'a, bool>;

    /// Member count and up to `limit` members of a topic.
    fn presence<'a>(&'a self, topic: &'a str, limit: usize) -> BrokerFuture<'a, (usize, Vec<Member>)>;

    /// Drop every subscription of a closed connection (no reply is needed).
    fn remove_all(&self, sub: &Arc<Subscriber>, targets: &[Pattern]);

    /// Number of topics with state.
    fn topic_count(&self) -> usize;

    /// The last event of the exact `topic` still in history, if any (snapshots with
    /// [`crate::snapshot::Snapshots::LastEvent`]). Creates no topic.
    fn last_event<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Option<Arc<crate::wire::Event>>>;

    /// The events of `topic` in `epoch` with offsets in `after + 1 ..= upto`, oldest first, or
    /// `None` when history no longer holds all of them (a snapshot older than its
    /// subscription is brought up to it with these).
    fn between<'a>(
        &'a self,
        topic: &'a str,
        epoch: &'a str,
        after: u64,
        upto: u64,
    ) -> BrokerFuture<'a, Option<Vec<Arc<crate::wire::Event>>>>;

    /// Periodic upkeep (every few seconds): trim history by age, forget topics nobody uses.
    fn maintain(&self, now: Instant) -> BrokerFuture<'_, ()>;

    /// [`publish`](Self::publish) without borrows, so one connection can have several
    /// publishes in flight; they must take effect in call order. The default waits for nothing
    /// until polled, which suits a broker whose publish completes at once; a broker that
    /// crosses the network queues the publish when this is called.
    fn publish_owned(
        self: Arc<Self>,
        topic: String,
        payload: Value,
        meta: PublishMeta,
    ) -> BrokerFuture<'static, Position> {
        Box::pin(async move { self.publish(&topic, payload, meta).await })
    }

    /// Whether one connection's consecutive publishes should use
    /// [`publish_owned`](Self::publish_owned) without waiting for each other (a broker that
    /// crosses the network). Their replies keep request order either way.
    fn pipelined(&self) -> bool {
        false
    }

    /// Wait (at most `within`) until the events this node published have reached its own
    /// subscribers. A graceful shutdown calls it before closing sessions, so an event published
    /// just before it is still delivered. A broker that delivers while publishing (the
    /// in-memory one) is settled at once; a cluster broker waits for its own publishes to come
    /// back from the broker.
    fn settle(&self, within: Duration) -> BrokerFuture<'_, ()> {
        let _ = within;
        Box::pin(std::future::ready(Ok(())))
    }

    /// The store where this broker keeps the publishes it refused or lost (a cluster broker's
    /// [`ClusterSettings::dead_letters`](crate::broker::ClusterSettings)); an engine over it
    /// lists and replays that store. `None`: the broker keeps none.
    fn dead_letters(&self) -> Option<Arc<crate::dead::DeadLetters>> {
        None
    }

    /// The cluster's shared dead-letter store (a cluster broker over Redis), into which this
    /// node's letters move once the broker takes them; `None`: letters stay in the node's
    /// memory ([`crate::dead`]).
    fn shared_dead_letters(&self) -> Option<Arc<dyn crate::dead::SharedDeadLetters>> {
        None
    }

    /// Whether the broker can serve requests now (`/healthz`).
    fn health(&self) -> BrokerHealth {
        BrokerHealth::Ok
    }

    /// Cluster state, for a broker that joins nodes (`None` for a single node).
    fn cluster(&self) -> Option<ClusterInfo> {
        None
    }

    /// The `n` busiest topics on this node lately (events per second), busiest first. Reads
    /// every topic: for `/api/stats`, not for a hot path.
    fn busiest(&self, n: usize) -> Vec<crate::metrics::TopicActivity> {
        let _ = n;
        Vec::new()
    }
}
