//! Cluster mode: many nodes as one engine over a shared broker (Redis or NATS JetStream).
//!
//! The broker, not the nodes, assigns every topic's `(epoch, offset)`, keeps its history, and
//! carries events to the nodes that have subscribers for the topic. Each node keeps its own
//! subscription table and fans out locally. This module is the node's side, the same for every
//! broker; a [`Backend`] is the wire to one broker ([`RedisBackend`], [`NatsBackend`]).
//!
//! The broker's delivery to nodes is at-most-once; this node turns it into exactly-once, in
//! order, per topic: it knows the last offset it delivered for each topic, skips duplicates, and
//! refills any gap from the history before delivering what follows. A gap it cannot refill
//! (history gone) or a new epoch reaches subscribers as a `reset` notice (`recovered: false`
//! with the new position), never as a silent hole. `docs/CLUSTER.md` has the guarantees and the
//! failure modes.

mod nats;
mod redis;
mod redis_scripts;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use super::{
    Broker, BrokerError, BrokerFuture, BrokerHealth, ClusterInfo, Patterns, PublishMeta, Start, SubscribeOutcome,
    Subscriber,
};
use crate::dead::{DeadKind, DeadLetter, DeadLetterPage, SharedDeadLetters};
use crate::metrics::Metrics;
use crate::outbox::SlowConsumerPolicy;
use crate::topic::Pattern;
use crate::wire::{ErrorCode, Event, Member, Notice, Position, Priority, now_ms};

pub use nats::NatsBackend;
pub use redis::RedisBackend;

/// The cluster broker over Redis (see `docs/CLUSTER.md`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use weft_server::broker::{ClusterSettings, RedisBroker};
/// use weft_server::metrics::Metrics;
/// use weft_server::{Engine, EngineConfig};
///
/// let metrics = Arc::new(Metrics::default());
/// let broker = RedisBroker::connect(ClusterSettings::new("redis://127.0.0.1:6379"), Arc::clone(&metrics)).await?;
/// let engine = Engine::with_broker(EngineConfig::default(), Arc::new(broker), metrics)?;
/// # Ok(()) }
/// ```
pub type RedisBroker = Cluster<RedisBackend>;

/// The cluster broker over NATS with JetStream (see `docs/CLUSTER.md`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use weft_server::broker::{ClusterSettings, NatsBroker};
/// use weft_server::metrics::Metrics;
///
/// let metrics = Arc::new(Metrics::default());
/// let broker = NatsBroker::connect(ClusterSettings::new("nats://127.0.0.1:4222"), metrics).await?;
/// # Ok(()) }
/// ```
pub type NatsBroker = Cluster<NatsBackend>;

const SHARDS: usize = 64;
/// Events a backend returns per history read ([`Backend::range`]); a full page means there may
/// be more.
pub(super) const PAGE: usize = 1000;
/// Events held per topic while it refills a gap; past this they are dropped and refilled too.
const PENDING_LIMIT: usize = 10_000;

/// Settings of a cluster broker.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS); `nats://host:port`
    /// (`tls://` for TLS).
    pub url: String,
    /// PEM file with the certificate(s) that sign the broker's (TLS URLs); without it, the
    /// system's trust store.
    pub ca_file: Option<std::path::PathBuf>,
    /// This node's name (unique in the cluster; the default is host and pid).
    pub node: String,
    /// Prefix of every key, channel, subject and stream.
    pub prefix: String,
    /// Events kept per topic.
    pub history_size: usize,
    /// How long events are kept: older ones are never replayed, and an idle topic's history
    /// expires.
    pub history_ttl: Duration,
    /// Default slow-consumer policy.
    pub policy: SlowConsumerPolicy,
    /// Per-topic policies, first match wins.
    pub topic_policies: Vec<(Pattern, SlowConsumerPolicy)>,
    /// Most topics with subscribers on this node.
    pub max_topics: usize,
    /// A node whose heartbeat is older than this is dead: its presence members are removed by
    /// the surviving nodes (heartbeats every third of it).
    pub node_ttl: Duration,
    /// How often every topic's top is compared with what this node delivered (catches lost
    /// pub/sub messages with no later traffic on the topic).
    pub check_interval: Duration,
    /// Broker request timeout: past it a request fails (error 5003) instead of hanging.
    pub command_timeout: Duration,
    /// Messages buffered between the broker and the fan-out; past it they are dropped,
    /// counted, and refilled from history.
    pub pubsub_buffer: usize,
    /// Bytes of history the broker may keep over all topics, where the broker enforces such a
    /// cap (the NATS stream's `max_bytes`); the oldest events go first.
    pub history_bytes: u64,
    /// Bytes of broker messages received and not yet fanned out; past it they are dropped,
    /// counted, and refilled from history. Redis: over the node's one pub/sub buffer. NATS:
    /// the client buffers per subscription, in messages, so each topic's buffer holds this
    /// divided by NATS's largest message (1 MiB), within [64, `pubsub_buffer`] messages.
    pub inbound_bytes: usize,
    /// Bytes of events held over all topics while they are set up or refilled; past it they
    /// are dropped, counted, and refilled afterwards.
    pub pending_bytes: usize,
    /// Bytes of publishes waiting for the broker on this node; past it a publish fails with
    /// 5003.
    pub publish_queue_bytes: usize,
    /// Where publishes the broker refused or lost are kept (see [`crate::dead`]).
    pub dead_letters: Arc<crate::dead::DeadLetters>,
}

/// Settings of a [`RedisBroker`] (the same as every cluster broker's).
pub type RedisSettings = ClusterSettings;

impl ClusterSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            node: default_node_name(),
            prefix: "weft".into(),
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            policy: SlowConsumerPolicy::Disconnect,
            topic_policies: Vec::new(),
            max_topics: 100_000,
            node_ttl: Duration::from_secs(30),
            check_interval: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            pubsub_buffer: 65_536,
            history_bytes: 1 << 30,
            inbound_bytes: 128 << 20,
            pending_bytes: 64 << 20,
            publish_queue_bytes: 64 << 20,
            dead_letters: Arc::default(),
        }
    }

    /// How long a topic's position outlives its last publish (at least a day): a topic idle
    /// for less keeps its epoch, so its subscribers see no reset.
    pub fn meta_ttl(&self) -> Duration {
        self.history_ttl.max(Duration::from_secs(86_400))
    }
}

/// `host-pid`.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

/// A fresh epoch: eight hex digits.
pub(super) fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The URL without its secrets, for messages and logs: the password (or a token given alone
/// before `@`) and every query parameter's value.
pub(super) fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |s| s + 3);
    let mut out = url[..start].to_owned();
    // The credentials end at the last '@' (a password may hold '?', '/' or ':').
    let rest = match url[start..].rfind('@') {
        Some(at) => {
            let auth = &url[start..start + at];
            match auth.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str("***"),
            }
            &url[start + at..]
        }
        None => &url[start..],
    };
    match rest.split_once('?') {
        Some((base, query)) => {
            out.push_str(base);
            out.push('?');
            let masked: Vec<String> = query
                .split('&')
                .map(|kv| kv.split_once('=').map_or("***".to_owned(), |(k, _)| format!("{k}=***")))
                .collect();
            out.push_str(&masked.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

/// Whether the node's link to the broker is up, and why not; shared by the node and its
/// backend (a backend that loses its link calls [`Health::down`]).
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    reason: Mutex<String>,
    kick: Notify,
}

impl Health {
    fn new() -> Self {
        Self { up: AtomicBool::new(false), reason: Mutex::new("connecting".into()), kick: Notify::new() }
    }

    /// Whether the broker is reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::Release);
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Why the broker is unreachable.
    pub fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The link is down for `reason`: requests fail with 5003 and the supervisor reconnects.
    pub fn down(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_owned();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason, "cluster broker degraded");
        }
        self.kick.notify_one();
    }

    /// Error 5003 with the reason.
    pub fn unavailable(&self) -> BrokerError {
        BrokerError::unavailable(format!("the cluster broker is unavailable ({}); retry later", self.reason()))
    }
}

/// One publish on its way to the broker.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The concrete topic.
    pub topic: String,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    /// The publisher's event id (one line), if any.
    pub id: Option<String>,
    /// The payload as JSON text.
    pub payload: String,
    /// What the `drop-lowest` policy drops first.
    pub priority: Priority,
}

/// The time field of an event between nodes: `time`, or `time:level` for a priority other
/// than normal (nodes of a version before priorities read only the first form).
pub(super) fn time_field(time: u64, priority: Priority) -> String {
    if priority == Priority::Normal { time.to_string() } else { format!("{time}:{}", priority.level()) }
}

/// The time and priority of a [`time_field`].
pub(super) fn parse_time_field(f: &str) -> Option<(u64, Priority)> {
    match f.split_once(':') {
        None => Some((f.parse().ok()?, Priority::Normal)),
        Some((t, p)) => Some((t.parse().ok()?, Priority::from_level(p.parse().ok()?)?)),
    }
}

impl Outgoing {
    /// The bytes it holds while queued (for `publish_queue_bytes`).
    pub fn size(&self) -> usize {
        self.payload.len() + self.topic.len() + self.id.as_ref().map_or(0, String::len) + 96
    }
}

/// Publishes a node holds for its broker, within `PUBLISH_QUEUE` and `publish_queue_bytes`
/// (shared by the backends, which keep their own queues).
#[derive(Debug, Default)]
pub(super) struct QueueBudget {
    count: usize,
    bytes: usize,
}

/// Most publishes queued for the broker on one node; past it a publish fails with 5003.
pub(super) const PUBLISH_QUEUE: usize = 100_000;

impl QueueBudget {
    /// Take room for `out`, or say why there is none (error 5003).
    pub(super) fn take(
        &mut self,
        out: &Outgoing,
        settings: &ClusterSettings,
        metrics: &Metrics,
    ) -> Result<(), BrokerError> {
        let size = out.size();
        if self.count >= PUBLISH_QUEUE || self.bytes + size > settings.publish_queue_bytes {
            return Err(BrokerError::unavailable(format!(
                "too many publishes waiting for the broker on this node ({} publishes, {} bytes); retry later",
                self.count, self.bytes
            )));
        }
        self.count += 1;
        self.bytes += size;
        metrics.cluster_publish_queue_bytes.fetch_add(size as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Give back the room of `count` publishes of `bytes` in all (answered).
    pub(super) fn give_sized(&mut self, count: usize, bytes: usize, metrics: &Metrics) {
        self.count = self.count.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(bytes);
        metrics.cluster_publish_queue_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }
}

/// A dead letter on its way to the shared store ([`Backend::dead_push`]).
#[derive(Debug, Clone)]
pub struct DeadRecord {
    /// Unique per letter (the node, its start, the letter's number there; `r/{id}` for one put
    /// back): a letter pushed again after a lost answer is stored once.
    pub token: String,
    /// A snapshot letter (they go first when room is needed).
    pub snapshot: bool,
    /// The letter's JSON.
    pub json: String,
}

impl DeadRecord {
    fn of(l: &DeadLetter, token: String) -> Self {
        Self { token, snapshot: l.kind == DeadKind::Snapshot, json: l.to_stored() }
    }
}

/// A page of the shared dead-letter store ([`Backend::dead_list`]).
#[derive(Debug, Default)]
pub struct DeadList {
    /// Letters held.
    pub count: usize,
    /// Bytes they hold.
    pub bytes: usize,
    /// Letters dropped to stay within the bounds.
    pub dropped: u64,
    /// `(id, JSON)` of the letters asked for, oldest first.
    pub items: Vec<(u64, String)>,
}

/// What a node's heartbeat learned.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Nodes alive, this one included.
    pub alive: usize,
    /// This node's heartbeat had lapsed (other nodes may have swept its members).
    pub lapsed: bool,
    /// Nodes whose heartbeat stopped.
    pub dead: Vec<String>,
}

/// Where a backend hands what arrives from the broker: the node's fan-out.
pub trait Inbound: Send + Sync {
    /// The next event of an exact topic this node listens to.
    fn event(&self, topic: &str, ev: Arc<Event>);
    /// A member joined (`join`) or left a topic this node listens to.
    fn presence(&self, topic: &str, join: bool, member: Member);
    /// An event that arrived through the pattern listen key `key`.
    fn pattern_event(&self, key: &str, ev: Arc<Event>);
}

/// A future a [`Backend`] returns.
pub type Reply<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// The wire to one broker: what the node logic in this module needs from it. Link failures are
/// reported with [`Health::down`] and returned as error 5003.
pub trait Backend: Send + Sync + Sized + 'static {
    /// `redis`, `nats` (in metrics and stats).
    const NAME: &'static str;
    /// `Redis`, `NATS` (in messages).
    const TITLE: &'static str;

    /// Connect (or reconnect); what arrives goes to `inbound`.
    fn open(&self, inbound: Weak<dyn Inbound>) -> Reply<'_, ()>;

    /// Whether the broker answers within the command timeout.
    fn ping(&self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>;

    /// Queue a publish and return the wait for its position. The queueing happens now: one
    /// caller's publishes on a topic take effect in call order.
    fn publish(&self, out: Outgoing) -> BrokerFuture<'static, Position>;

    /// `(offset, epoch)` of a topic, creating its epoch when it has none.
    fn position<'a>(&'a self, topic: &'a str) -> Reply<'a, (u64, String)>;

    /// Events of `topic` with offsets from `from` on, oldest first, at most 1,000 (a full page
    /// means there may be more); events
    /// older than the history TTL are left out (they count as gone).
    fn range<'a>(&'a self, topic: &'a Arc<str>, from: u64) -> Reply<'a, Vec<Arc<Event>>>;

    /// The `n` most recent events of `topic`, oldest first.
    fn recent<'a>(&'a self, topic: &'a Arc<str>, n: usize) -> Reply<'a, Vec<Arc<Event>>>;

    /// The current `(epoch, offset)` of each topic (`None` for a topic without one).
    fn tops<'a>(&'a self, topics: &'a [Arc<str>]) -> Reply<'a, Vec<Option<(String, u64)>>>;

    /// The listen key of a pattern (patterns with one key are listened to once).
    fn pattern_key(&self, p: &Pattern) -> String;

    /// Whether the pattern listen key `key` covers `topic`.
    fn key_matches(&self, key: &str, topic: &str) -> bool;

    /// Start receiving a topic's events and presence (`pattern`: a pattern listen key).
    fn listen<'a>(&'a self, target: &'a str, pattern: bool) -> Reply<'a, ()>;

    /// Stop receiving them.
    fn unlisten<'a>(&'a self, target: &'a str, pattern: bool) -> Reply<'a, ()>;

    /// Add a member to a topic's presence; announces the join when it is new.
    fn join<'a>(&'a self, topic: &'a str, member: &'a Member) -> Reply<'a, ()>;

    /// Remove a member; announces the leave when it was there.
    fn leave<'a>(&'a self, topic: &'a str, session: &'a str) -> Reply<'a, ()>;

    /// Member count and up to `limit` members of a topic.
    fn members<'a>(&'a self, topic: &'a str, limit: usize) -> Reply<'a, (usize, Vec<Member>)>;

    /// `(topic, session)` of every member the broker holds for this node.
    fn own_members(&self) -> Reply<'_, Vec<(String, String)>>;

    /// Record this node's heartbeat; report the nodes alive and those whose heartbeat stopped.
    fn heartbeat(&self) -> Reply<'_, Heartbeat>;

    /// Remove the members of a dead node (announcing each leave); `None` when the node turned
    /// out alive again.
    fn sweep<'a>(&'a self, node: &'a str) -> Reply<'a, Option<u64>>;

    /// Whether the broker keeps the cluster's shared dead-letter store (Redis; see
    /// [`crate::dead`]). The `dead_*` requests below are made only when it does.
    fn dead_store(&self) -> bool {
        false
    }

    /// Append letters, oldest first, within `(max_entries, max_bytes)` (the oldest go, snapshot
    /// letters first); returns their ids (0: larger than the whole store, dropped). A letter
    /// whose token the store already holds keeps its id and is not stored twice.
    fn dead_push<'a>(&'a self, letters: &'a [DeadRecord], bounds: (usize, usize)) -> Reply<'a, Vec<u64>> {
        let _ = (letters, bounds);
        Box::pin(std::future::ready(Err(crate::dead::no_shared_store())))
    }

    /// The store's totals and up to `limit` letters with ids above `after`, oldest first.
    fn dead_list(&self, after: u64, limit: usize) -> Reply<'_, DeadList> {
        let _ = (after, limit);
        Box::pin(std::future::ready(Err(crate::dead::no_shared_store())))
    }

    /// Take letter `id` out, atomically; its JSON, or `None` when it is gone.
    fn dead_claim(&self, id: u64) -> Reply<'_, Option<String>> {
        let _ = id;
        Box::pin(std::future::ready(Err(crate::dead::no_shared_store())))
    }

    /// Put a claimed letter back under its id.
    fn dead_restore<'a>(&'a self, id: u64, letter: &'a DeadRecord) -> Reply<'a, ()> {
        let _ = (id, letter);
        Box::pin(std::future::ready(Err(crate::dead::no_shared_store())))
    }

    /// Remove the letters with these ids (all, with `None`); how many went.
    fn dead_purge<'a>(&'a self, ids: Option<&'a [u64]>) -> Reply<'a, usize> {
        let _ = ids;
        Box::pin(std::future::ready(Err(crate::dead::no_shared_store())))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Subscribing to the channel and reading the position; events wait in `pending`.
    Init,
    Ready,
    /// Reading a gap from the stream; events wait in `pending`.
    Refilling,
}

struct Sub {
    handle: Arc<Subscriber>,
    presence: bool,
}

/// One topic with subscribers on this node: exact subscribers (the node listens to the topic's
/// channel), or only pattern subscribers whose patterns cover it (a *pattern-only* entry: the
/// events come through the pattern's listen key). Either way the node delivers the topic's
/// events once each, in order, refilling gaps.
struct Local {
    /// Unique per entry: a refill started for an earlier entry of the same name stops.
    id: u64,
    name: Arc<str>,
    subs: HashMap<u64, Sub>,
    /// Subscriptions between `ensure_topic` and joining `subs` (the entry stays while > 0).
    joining: usize,
    /// The node listens to the topic's own channel (not only through a pattern).
    listening: bool,
    /// This node's pattern subscriptions, which get the topic's events too.
    patterns: Arc<Patterns>,
    /// When an event was last delivered (idle pattern-only entries are forgotten).
    seen: Instant,
    /// A stream top seen ahead of `last` by the previous periodic check.
    suspect: Option<u64>,
    epoch: Arc<str>,
    /// The last offset delivered to this node's subscribers.
    last: u64,
    /// The newest position this node published on the topic (shutdown waits until it has come
    /// back and been delivered: [`Broker::settle`]).
    published: Option<(Arc<str>, u64)>,
    phase: Phase,
    pending: Pending,
    policy: SlowConsumerPolicy,
    /// Events delivered to this node's subscribers lately (the busiest topics).
    activity: crate::metrics::Activity,
    ready: Arc<Notify>,
}

/// Events one topic holds while it is set up or refilled, counted in the node's
/// `cluster_pending_bytes` (bounded by `pending_bytes` over all topics).
struct Pending {
    q: VecDeque<Arc<Event>>,
    metrics: Arc<Metrics>,
}

impl Pending {
    fn new(metrics: &Arc<Metrics>) -> Self {
        Self { q: VecDeque::new(), metrics: Arc::clone(metrics) }
    }

    fn len(&self) -> usize {
        self.q.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.q.iter()
    }

    fn gauge(&self) -> &AtomicU64 {
        &self.metrics.cluster_pending_bytes
    }

    /// Hold `ev` unless the node's budget is spent (false).
    fn push_back(&mut self, ev: Arc<Event>, budget: usize) -> bool {
        let size = ev.size_estimate() as u64;
        if self.gauge().load(Ordering::Relaxed) + size > budget as u64 {
            return false;
        }
        self.gauge().fetch_add(size, Ordering::Relaxed);
        self.q.push_back(ev);
        true
    }

    /// Put back what [`pop_front`](Self::pop_front) took.
    fn push_front(&mut self, ev: Arc<Event>) {
        self.gauge().fetch_add(ev.size_estimate() as u64, Ordering::Relaxed);
        self.q.push_front(ev);
    }

    fn pop_front(&mut self) -> Option<Arc<Event>> {
        let ev = self.q.pop_front()?;
        self.gauge().fetch_sub(ev.size_estimate() as u64, Ordering::Relaxed);
        Some(ev)
    }

    fn clear(&mut self) {
        while self.pop_front().is_some() {}
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What happened to one event offered to a topic.
enum Step {
    Delivered,
    Duplicate,
    Gap,
}

impl Local {
    fn position(&self) -> Position {
        Position { offset: self.last, epoch: self.epoch.to_string() }
    }

    /// This node's own acknowledged publishes on the topic have all come back and been
    /// delivered.
    fn settled(&self) -> bool {
        match &self.published {
            None => true,
            // Another epoch: the event that started it has not come back yet (a topic reset
            // again after it would be waited for in vain, up to the settle bound: rare).
            Some((epoch, offset)) => *epoch == self.epoch && self.last >= *offset,
        }
    }

    /// A pattern-only entry (no exact subscriber, none joining).
    fn pattern_only(&self) -> bool {
        self.subs.is_empty() && self.joining == 0
    }

    fn fan_out(&mut self, ev: &Arc<Event>) {
        self.activity.hit(ev.published_at);
        self.seen = ev.published_at;
        for s in self.subs.values() {
            s.handle.deliver(ev, self.policy);
        }
        let subs = &self.subs;
        self.patterns.deliver(ev, self.policy, |id| subs.contains_key(&id));
    }

    /// Tell every subscriber that the stream continues from `(epoch, offset)` and some events
    /// before it cannot be delivered.
    fn reset(&mut self, epoch: Arc<str>, offset: u64, metrics: &Metrics) {
        self.epoch = epoch;
        self.last = offset;
        metrics.cluster_unrecovered.fetch_add(1, Ordering::Relaxed);
        let notice = Arc::new(Notice::reset(Arc::clone(&self.name), self.position()));
        for s in self.subs.values() {
            s.handle.notify(&notice);
        }
        let subs = &self.subs;
        self.patterns.notify(&self.name, &notice, |id| subs.contains_key(&id));
    }

    /// Offer the next event in arrival order.
    fn offer(&mut self, ev: &Arc<Event>, metrics: &Metrics) -> Step {
        if ev.epoch != self.epoch {
            // The topic's history was lost and it started again: what this node had not yet
            // received of the old epoch cannot be delivered.
            self.reset(Arc::clone(&ev.epoch), 0, metrics);
        }
        if ev.offset <= self.last {
            metrics.cluster_duplicates.fetch_add(1, Ordering::Relaxed);
            return Step::Duplicate;
        }
        if ev.offset > self.last + 1 {
            return Step::Gap;
        }
        self.last = ev.offset;
        self.fan_out(ev);
        Step::Delivered
    }

    /// Deliver what waited in `pending`; stops at the first gap (returns false).
    fn drain_pending(&mut self, metrics: &Metrics) -> bool {
        while let Some(ev) = self.pending.pop_front() {
            if let Step::Gap = self.offer(&ev, metrics) {
                self.pending.push_front(ev);
                return false;
            }
        }
        true
    }

    fn hold(&mut self, ev: Arc<Event>, metrics: &Metrics, budget: usize) {
        if self.pending.len() >= PENDING_LIMIT || !self.pending.push_back(ev, budget) {
            // Refilled from the stream later, like any gap.
            metrics.cluster_pubsub_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Topics with subscribers on this node, by name.
type Shard = HashMap<Arc<str>, Local>;

/// The node's side of cluster mode over the backend `B`.
struct Core<B: Backend> {
    /// Itself, for tasks started from [`Inbound`] calls.
    me: Weak<Core<B>>,
    settings: ClusterSettings,
    metrics: Arc<Metrics>,
    backend: B,
    health: Arc<Health>,
    shards: Box<[Mutex<Shard>]>,
    /// Entries with exact subscribers (at most `max_topics`).
    topics: AtomicUsize,
    /// Pattern-only entries (at most `max_topics` too; past it, topics first seen through a
    /// pattern are delivered as they arrive, without gap detection).
    pattern_topics: AtomicUsize,
    patterns: Arc<Patterns>,
    /// Pattern listen key → how many of this node's patterns map to it.
    keys: Mutex<BTreeMap<String, usize>>,
    /// Serialises listen / unlisten, each checking the interest when it runs.
    sub_lock: tokio::sync::Mutex<()>,
    nodes_alive: AtomicUsize,
    next_local: AtomicU64,
    /// Presence joins and leaves share it; the resync's re-registration takes it alone, so a
    /// client arriving or leaving meanwhile is not undone.
    presence_lock: tokio::sync::RwLock<()>,
    /// This node has heartbeated before (a lapse afterwards means it may have been swept).
    beaten: AtomicBool,
    /// Register presence again at the next heartbeat too (a sweep may have been finishing
    /// while this node registered after a lapse).
    again: AtomicBool,
    /// Dead nodes this node is sweeping now.
    sweeping: Mutex<std::collections::HashSet<String>>,
    /// Publishes handed to the backend and not yet answered (or dropped): shutdown waits for
    /// them ([`Broker::settle`]).
    in_flight: Arc<AtomicUsize>,
    /// Random per start: with the node's name and a letter's number, a token unique to the
    /// letter in the shared dead-letter store.
    dead_boot: u64,
}

/// Counts a publish in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(n))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster broker: this node's subscriptions, fan-out and recovery over the broker that
/// `B` speaks to ([`RedisBroker`], [`NatsBroker`]).
pub struct Cluster<B: Backend> {
    core: Arc<Core<B>>,
}

impl<B: Backend> std::fmt::Debug for Cluster<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("broker", &B::NAME)
            .field("node", &self.core.settings.node)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Cluster<B> {
    /// Connect the backend (failing when the broker cannot be reached within the command
    /// timeout) and start this node's upkeep: health checks, reconnection, heartbeats, presence
    /// of dead nodes, and the periodic check of every topic's top.
    async fn start(
        settings: ClusterSettings,
        metrics: Arc<Metrics>,
        backend: B,
        health: Arc<Health>,
    ) -> Result<Self, String> {
        let core = Arc::new_cyclic(|me| Core {
            me: me.clone(),
            backend,
            health,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            topics: AtomicUsize::new(0),
            pattern_topics: AtomicUsize::new(0),
            patterns: Arc::new(Patterns::default()),
            keys: Mutex::new(BTreeMap::new()),
            sub_lock: tokio::sync::Mutex::new(()),
            nodes_alive: AtomicUsize::new(0),
            next_local: AtomicU64::new(1),
            presence_lock: tokio::sync::RwLock::new(()),
            beaten: AtomicBool::new(false),
            again: AtomicBool::new(false),
            sweeping: Mutex::new(std::collections::HashSet::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            dead_boot: rand::random(),
            metrics,
            settings,
        });
        let url = redact(&core.settings.url);
        let inbound: Weak<dyn Inbound> = Arc::downgrade(&core) as Weak<dyn Inbound>;
        core.backend.open(inbound).await.map_err(|e| format!("cannot reach {} at {url}: {e}", B::TITLE))?;
        core.health.set_up();
        core.heartbeat().await.map_err(|e| format!("{} refused the heartbeat: {e}", B::TITLE))?;
        // A node restarted under the same name leaves members of its previous run behind:
        // they go now (with their leave notices), not never.
        core.reregister_presence().await.map_err(|e| format!("{} refused the presence cleanup: {e}", B::TITLE))?;
        tokio::spawn(supervise(Arc::downgrade(&core)));
        if core.backend.dead_store() {
            tokio::spawn(move_dead_letters(Arc::downgrade(&core)));
        }
        Ok(Self { core })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.core.settings.node
    }
}

fn check_node_name(settings: &ClusterSettings) -> Result<(), String> {
    if settings.node.is_empty() || settings.node.contains(['\n', '\r']) {
        return Err("node name must be non-empty and on one line".into());
    }
    Ok(())
}

impl RedisBroker {
    /// Connect to Redis and start this node (see [`Cluster`]).
    pub async fn connect(settings: ClusterSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        check_node_name(&settings)?;
        let health = Arc::new(Health::new());
        let backend = RedisBackend::new(&settings, Arc::clone(&health), Arc::clone(&metrics))?;
        Self::start(settings, metrics, backend, health).await
    }
}

impl NatsBroker {
    /// Connect to NATS (JetStream must be enabled) and start this node (see [`Cluster`]).
    pub async fn connect(settings: ClusterSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        check_node_name(&settings)?;
        let health = Arc::new(Health::new());
        let backend = NatsBackend::new(&settings, Arc::clone(&health), Arc::clone(&metrics))?;
        Self::start(settings, metrics, backend, health).await
    }
}

impl<B: Backend> Core<B> {
    fn shard(&self, topic: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        topic.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn policy_for(&self, topic: &str) -> SlowConsumerPolicy {
        super::policy_for(&self.settings.topic_policies, self.settings.policy, topic)
    }

    fn unavailable(&self) -> BrokerError {
        self.health.unavailable()
    }

    fn me(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// Hand a publish to the backend (which queues it now, in call order) and count the
    /// outcome.
    fn submit(&self, topic: &str, payload: &Value, meta: PublishMeta) -> BrokerFuture<'static, Position> {
        let metrics = Arc::clone(&self.metrics);
        // What is refused for what it is is the publisher's error, never a dead letter.
        if meta.id.as_deref().is_some_and(|i| i.contains(['\n', '\r'])) {
            return Box::pin(std::future::ready(Err(BrokerError {
                code: ErrorCode::BadRequest,
                message: "an event id may not contain a line break".into(),
            })));
        }
        if !self.health.is_up() {
            metrics.publishes_refused.fetch_add(1, Ordering::Relaxed);
            let e = self.unavailable();
            if !meta.replay {
                let letter = DeadLetter::publish(topic, payload.clone(), meta.id, meta.priority, e.body());
                self.settings.dead_letters.push(letter);
            }
            return Box::pin(std::future::ready(Err(e)));
        }
        let payload = match serde_json::to_string(payload) {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(BrokerError::failed(e.to_string())))),
        };
        // Kept for a dead letter, should the broker refuse or lose it.
        let keep = (!meta.replay).then(|| (payload.clone(), meta.id.clone(), meta.priority));
        let out = Outgoing { topic: topic.to_owned(), time: now_ms(), id: meta.id, payload, priority: meta.priority };
        let wait = self.backend.publish(out);
        let dead = Arc::clone(&self.settings.dead_letters);
        let me = self.me.clone();
        let topic = topic.to_owned();
        let in_flight = InFlight::new(&self.in_flight);
        Box::pin(async move {
            let r = wait.await;
            let counter = if r.is_ok() { &metrics.publishes } else { &metrics.publishes_refused };
            counter.fetch_add(1, Ordering::Relaxed);
            if let (Err(e), Some((payload, id, priority))) = (&r, keep) {
                let payload = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
                dead.push(DeadLetter::publish(&topic, payload, id, priority, e.body()));
            }
            if let (Ok(p), Some(me)) = (&r, me.upgrade()) {
                // Only topics with subscribers here wait for their events at shutdown.
                if let Some(l) = me.shard(&topic).get_mut(topic.as_str()) {
                    if l.published.as_ref().is_none_or(|(e, o)| **e != *p.epoch || *o < p.offset) {
                        l.published = Some((p.epoch.as_str().into(), p.offset));
                    }
                }
            }
            drop(in_flight);
            r
        })
    }

    /// Listen to a topic or pattern key, serialised with unlistens.
    async fn listen(&self, target: &str, pattern: bool) -> Result<(), BrokerError> {
        let _g = self.sub_lock.lock().await;
        if !self.health.is_up() {
            return Err(self.unavailable());
        }
        self.backend.listen(target, pattern).await
    }

    /// Stop listening to a topic unless someone subscribed again meanwhile.
    async fn unlisten_topic(&self, topic: &str) {
        let _g = self.sub_lock.lock().await;
        if self.shard(topic).get(topic).is_some_and(|l| !l.pattern_only()) {
            return;
        }
        if let Err(e) = self.backend.unlisten(topic, false).await {
            tracing::debug!(error = %e, "unlisten failed");
        }
    }

    async fn unlisten_key(&self, key: String) {
        let _g = self.sub_lock.lock().await;
        if self.keys.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key) {
            return;
        }
        if let Err(e) = self.backend.unlisten(&key, true).await {
            tracing::debug!(error = %e, "pattern unlisten failed");
        }
    }

    /// Make sure this node listens to `topic` and knows its position; waits while another
    /// subscription is setting it up. The caller counts as joining until it calls
    /// [`joined`](Self::joined), so the entry is not removed meanwhile.
    async fn ensure_topic(self: &Arc<Self>, topic: &str) -> Result<(), BrokerError> {
        let (created, needs_listen) = {
            let mut shard = self.shard(topic);
            match shard.get_mut(topic) {
                Some(l) => {
                    if l.pattern_only() {
                        // Followed for pattern subscribers so far: it becomes an exact topic.
                        if self.topics.fetch_add(1, Ordering::Relaxed) >= self.settings.max_topics {
                            self.topics.fetch_sub(1, Ordering::Relaxed);
                            self.metrics.topics_refused.fetch_add(1, Ordering::Relaxed);
                            return Err(BrokerError::too_many_topics(self.settings.max_topics));
                        }
                        self.pattern_topics.fetch_sub(1, Ordering::Relaxed);
                    }
                    l.joining += 1;
                    (false, !l.listening && l.phase != Phase::Init)
                }
                None => {
                    if self.topics.fetch_add(1, Ordering::Relaxed) >= self.settings.max_topics {
                        self.topics.fetch_sub(1, Ordering::Relaxed);
                        self.metrics.topics_refused.fetch_add(1, Ordering::Relaxed);
                        return Err(BrokerError::too_many_topics(self.settings.max_topics));
                    }
                    let name: Arc<str> = topic.into();
                    shard.insert(
                        Arc::clone(&name),
                        Local {
                            id: self.next_local.fetch_add(1, Ordering::Relaxed),
                            policy: self.policy_for(topic),
                            name,
                            subs: HashMap::new(),
                            joining: 1,
                            listening: false,
                            patterns: Arc::clone(&self.patterns),
                            seen: Instant::now(),
                            suspect: None,
                            epoch: "".into(),
                            last: 0,
                            published: None,
                            phase: Phase::Init,
                            pending: Pending::new(&self.metrics),
                            activity: Default::default(),
                            ready: Arc::new(Notify::new()),
                        },
                    );
                    (true, false)
                }
            }
        };
        if needs_listen {
            // Its events came through a pattern until now; from here on through its channel
            // too (duplicates are dropped by offset), so the exact subscriber does not depend
            // on the pattern staying.
            self.listen(topic, false).await?;
            if let Some(l) = self.shard(topic).get_mut(topic) {
                l.listening = true;
            }
            return Ok(());
        }
        if created {
            let r = self.setup(topic).await;
            // Waiters go on: to the ready topic, or to try the setup themselves.
            let ready = self.shard(topic).get(topic).map(|l| Arc::clone(&l.ready));
            if let Some(ready) = ready {
                ready.notify_waiters();
            }
            return r;
        }
        // Another subscription is setting the topic up: wait for it (or take over if it failed).
        let deadline = tokio::time::Instant::now() + self.settings.command_timeout * 2;
        loop {
            let ready = {
                let shard = self.shard(topic);
                match shard.get(topic) {
                    Some(l) if l.phase == Phase::Init => Arc::clone(&l.ready),
                    Some(_) => return Ok(()),
                    None => return Err(BrokerError::failed("topic state vanished during subscribe")),
                }
            };
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shard(topic).get(topic).is_some_and(|l| l.phase != Phase::Init) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.unavailable());
            }
            if self.shard(topic).get(topic).is_some_and(|l| l.phase == Phase::Init) {
                // The setup failed: try it ourselves.
                match self.setup(topic).await {
                    Ok(()) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// The end of a subscription attempt that went through `ensure_topic`: it joined `subs`
    /// (or failed). An entry nobody uses any more is removed and its channel released.
    fn joined(self: &Arc<Self>, topic: &str) {
        let mut shard = self.shard(topic);
        let Some(l) = shard.get_mut(topic) else { return };
        l.joining = l.joining.saturating_sub(1);
        if l.pattern_only() && self.release(&mut shard, topic) {
            drop(shard);
            let me = Arc::clone(self);
            let topic = topic.to_owned();
            tokio::spawn(async move { me.unlisten_topic(&topic).await });
        }
    }

    /// An entry whose last exact subscriber left (and none is joining) stays for the pattern
    /// subscribers that cover it, or goes. Returns whether its channel is to be released.
    fn release(&self, shard: &mut Shard, topic: &str) -> bool {
        let Some(l) = shard.get_mut(topic) else { return false };
        let listening = std::mem::replace(&mut l.listening, false);
        // One whose setup never finished has no position to follow from: it goes (a pattern
        // event makes a fresh pattern-only entry).
        let set_up = l.phase != Phase::Init;
        self.topics.fetch_sub(1, Ordering::Relaxed);
        if !(set_up && self.patterns.covers(topic) && self.count_pattern_topic()) {
            shard.remove(topic);
        }
        listening
    }

    /// Count one more pattern-only entry, if there is room.
    fn count_pattern_topic(&self) -> bool {
        if self.pattern_topics.fetch_add(1, Ordering::Relaxed) >= self.settings.max_topics {
            self.pattern_topics.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Forget the pattern-only entries that no pattern of this node covers any more, and
    /// (with `idle`) those that have delivered nothing for that long.
    fn forget_pattern_topics(&self, idle: Option<Duration>) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.len();
            shard.retain(|topic, l| {
                !l.pattern_only()
                    || (self.patterns.covers(topic) && idle.is_none_or(|d| now.duration_since(l.seen) < d))
            });
            self.pattern_topics.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Listen first, then read the position: nothing published in between is missed (it
    /// arrives on the channel and waits in `pending`, or is at or before the position read).
    async fn setup(self: &Arc<Self>, topic: &str) -> Result<(), BrokerError> {
        self.listen(topic, false).await?;
        if let Some(l) = self.shard(topic).get_mut(topic) {
            // Listening now, whatever happens next: a release unlistens it.
            l.listening = true;
        }
        let (offset, epoch) = self.backend.position(topic).await?;
        let mut shard = self.shard(topic);
        let Some(l) = shard.get_mut(topic) else { return Ok(()) };
        if l.phase != Phase::Init {
            return Ok(());
        }
        // Events that came through a pattern while the topic was set up, at or before the
        // position: the exact subscribers start after them, but the pattern subscribers were
        // following the topic and get them now, in order, once.
        let mut before: Vec<Arc<Event>> =
            l.pending.iter().filter(|e| *e.epoch == *epoch && e.offset <= offset).cloned().collect();
        before.sort_by_key(|e| e.offset);
        before.dedup_by_key(|e| e.offset);
        for ev in &before {
            l.patterns.deliver(ev, l.policy, |_| false);
        }
        l.epoch = epoch.into();
        l.last = offset;
        l.phase = Phase::Ready;
        l.ready.notify_waiters();
        if !l.drain_pending(&self.metrics) {
            l.phase = Phase::Refilling;
            self.metrics.cluster_gaps.fetch_add(1, Ordering::Relaxed);
            let id = l.id;
            drop(shard);
            tokio::spawn(refill(Arc::clone(self), topic.into(), id, 0));
        }
        Ok(())
    }

    async fn subscribe(
        self: &Arc<Self>,
        sub: &Arc<Subscriber>,
        target: &Pattern,
        start: Start<'_>,
        presence: bool,
    ) -> Result<SubscribeOutcome, BrokerError> {
        if !self.health.is_up() {
            return Err(self.unavailable());
        }
        if target.is_wildcard() {
            let key = self.backend.pattern_key(target);
            let first = {
                let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                let n = keys.entry(key.clone()).or_insert(0);
                *n += 1;
                *n == 1
            };
            if first {
                if let Err(e) = self.listen(&key, true).await {
                    self.forget_key(&key);
                    return Err(e);
                }
            }
            if self.patterns.add(target, sub) {
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            } else {
                self.forget_key(&key);
            }
            return Ok(SubscribeOutcome { position: None, replayed: None });
        }
        let topic: Arc<str> = target.as_str().into();
        if let Err(e) = self.ensure_topic(&topic).await {
            if e.code != crate::wire::ErrorCode::TooManyTopics {
                self.joined(&topic);
            }
            return Err(e);
        }
        let r = self.subscribe_exact(sub, &topic, start, presence).await;
        self.joined(&topic);
        let outcome = r?;
        let _p = self.presence_lock.read().await;
        if self.shard(&topic).get(&*topic).is_some_and(|l| l.subs.contains_key(&sub.id)) {
            if let Err(e) = self.backend.join(&topic, &sub.member).await {
                tracing::warn!(error = %e, topic = %topic, "presence join failed; it is redone when the broker is back");
            }
        }
        Ok(outcome)
    }

    /// Replay what `start` asks for, up to what this node has delivered, and add the
    /// subscriber, atomically with respect to live delivery: no gap, no duplicate.
    async fn subscribe_exact(
        &self,
        sub: &Arc<Subscriber>,
        topic: &Arc<str>,
        start: Start<'_>,
        presence: bool,
    ) -> Result<SubscribeOutcome, BrokerError> {
        // A client that saw more than this node has delivered (it came from a node ahead of
        // this one) waits briefly for this node to catch up.
        if let Start::Resume(pos) = start {
            let deadline = Instant::now() + self.settings.command_timeout;
            while Instant::now() < deadline {
                let behind = self
                    .shard(topic)
                    .get(&**topic)
                    .is_some_and(|l| *l.epoch == *pos.epoch && l.last < pos.offset && l.phase != Phase::Init);
                if !behind {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // What to read first: from the resume position, or the n most recent.
        let mut events: Vec<Arc<Event>> = match start {
            Start::Live => Vec::new(),
            Start::Recent(0) => Vec::new(),
            Start::Recent(n) => self.backend.recent(topic, n).await?,
            Start::Resume(pos) => {
                let ok =
                    self.shard(topic).get(&**topic).is_some_and(|l| *l.epoch == *pos.epoch && pos.offset <= l.last);
                if ok { self.backend.range(topic, pos.offset + 1).await? } else { Vec::new() }
            }
        };
        // Read further until the events reach what this node has delivered (a page limit, or
        // live events that arrived during the read); a few rounds at most.
        for _ in 0..64 {
            let need_more = {
                let shard = self.shard(topic);
                let Some(l) = shard.get(&**topic) else { break };
                !matches!(start, Start::Live) && events.last().is_some_and(|e| e.epoch == l.epoch && e.offset < l.last)
            };
            if !need_more {
                break;
            }
            let from = events.last().map_or(1, |e| e.offset + 1);
            let more = self.backend.range(topic, from).await?;
            if more.is_empty() {
                break;
            }
            events.extend(more);
        }
        let mut shard = self.shard(topic);
        let Some(l) = shard.get_mut(&**topic) else {
            return Err(BrokerError::failed("topic state vanished during subscribe"));
        };
        // Exact or nothing: the events must run without a hole from where the client stands
        // (the resume position, or the first event replayed) to what this node delivered.
        let mut upto: Vec<Arc<Event>> =
            events.into_iter().filter(|e| e.offset <= l.last && e.epoch == l.epoch).collect();
        if let Start::Recent(n) = start {
            let skip = upto.len().saturating_sub(n);
            upto.drain(..skip);
        }
        let contiguous = upto.windows(2).all(|w| w[1].offset == w[0].offset + 1);
        let replayed = match start {
            Start::Live => None,
            Start::Recent(_) => {
                let reaches = upto.last().is_none_or(|e| e.offset == l.last);
                if !(contiguous && reaches) {
                    upto.clear(); // no history rather than history with a hole before live
                }
                Some(())
            }
            Start::Resume(pos) => {
                let exact = *pos.epoch == *l.epoch
                    && contiguous
                    && match (upto.first(), upto.last()) {
                        (None, _) => pos.offset == l.last,
                        (Some(f), Some(t)) => f.offset == pos.offset + 1 && t.offset == l.last,
                        _ => false,
                    };
                if exact {
                    Some(())
                } else {
                    upto.clear();
                    self.metrics.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        };
        // Filtered events count as seen: the position still moves past them.
        let passed = upto.iter().filter(|e| sub.replay(e)).count();
        self.metrics.replayed_events.fetch_add(passed as u64, Ordering::Relaxed);
        if l.subs.insert(sub.id, Sub { handle: Arc::clone(sub), presence }).is_none() {
            self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(SubscribeOutcome { position: Some(l.position()), replayed: replayed.map(|()| passed) })
    }

    fn forget_key(&self, key: &str) -> bool {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                keys.remove(key);
                true
            }
            None => false,
        }
    }

    /// Remove a subscription from this node's table; the broker side (listening, presence) is
    /// returned as work to do.
    fn unsubscribe_local(&self, sub: &Subscriber, target: &Pattern) -> Option<Cleanup> {
        if target.is_wildcard() {
            let (removed, last) = self.patterns.remove(target, sub);
            if !removed {
                return None;
            }
            if last {
                self.forget_pattern_topics(None);
            }
            self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            let key = self.backend.pattern_key(target);
            return Some(Cleanup::Pattern(self.forget_key(&key).then_some(key)));
        }
        let topic = target.as_str();
        let mut shard = self.shard(topic);
        let l = shard.get_mut(topic)?;
        l.subs.remove(&sub.id)?;
        self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let unlisten = l.pattern_only() && self.release(&mut shard, topic);
        Some(Cleanup::Topic { topic: topic.to_owned(), session: sub.member.session.to_string(), unlisten })
    }

    async fn cleanup(&self, c: Cleanup) {
        match c {
            Cleanup::Pattern(Some(key)) => self.unlisten_key(key).await,
            Cleanup::Pattern(None) => {}
            Cleanup::Topic { topic, session, unlisten } => {
                let _p = self.presence_lock.read().await;
                if let Err(e) = self.backend.leave(&topic, &session).await {
                    // Retried when the broker is back (resync removes this node's stale members).
                    tracing::debug!(error = %e, "presence leave failed");
                }
                if unlisten {
                    self.unlisten_topic(&topic).await;
                }
            }
        }
    }

    /// Heartbeat, and sweep the presence of nodes whose heartbeat stopped (in tasks of their
    /// own: a large sweep does not hold up this node's pings and heartbeats).
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let beat = self.backend.heartbeat().await?;
        self.nodes_alive.store(beat.alive, Ordering::Relaxed);
        if beat.lapsed {
            // Another node took this one for dead (a long stall) and may have swept its members.
            if self.beaten.swap(true, Ordering::Relaxed) {
                tracing::warn!("this node's heartbeat had lapsed; registering its presence again");
                self.reregister_presence().await?;
                self.again.store(true, Ordering::Relaxed);
            }
        } else {
            self.beaten.store(true, Ordering::Relaxed);
            if self.again.swap(false, Ordering::Relaxed) {
                self.reregister_presence().await?;
            }
        }
        for dead in beat.dead {
            if dead == self.settings.node
                || !self.sweeping.lock().unwrap_or_else(|e| e.into_inner()).insert(dead.clone())
            {
                continue;
            }
            let Some(me) = self.me() else { break };
            tokio::spawn(async move {
                match me.backend.sweep(&dead).await {
                    Ok(Some(n)) => {
                        me.metrics.cluster_members_swept.fetch_add(n, Ordering::Relaxed);
                        tracing::info!(node = %dead, members = n, "removed the presence of a node whose heartbeat stopped");
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(node = %dead, error = %e, "sweeping a dead node failed; retried"),
                }
                me.sweeping.lock().unwrap_or_else(|e| e.into_inner()).remove(&dead);
            });
        }
        Ok(())
    }

    /// Compare every topic's top with what this node delivered; refill what is missing.
    /// Pattern-only topics idle past the history TTL (when nothing could be refilled anyway)
    /// are forgotten first.
    async fn check_tops(self: &Arc<Self>) -> Result<(), BrokerError> {
        self.forget_pattern_topics(Some(self.settings.history_ttl.max(Duration::from_secs(60))));
        let topics: Vec<(Arc<str>, Arc<str>, u64)> = self
            .shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.values()
                    .filter(|l| l.phase == Phase::Ready)
                    .map(|l| (Arc::clone(&l.name), Arc::clone(&l.epoch), l.last))
                    .collect::<Vec<_>>()
            })
            .collect();
        for chunk in topics.chunks(500) {
            let names: Vec<Arc<str>> = chunk.iter().map(|(t, _, _)| Arc::clone(t)).collect();
            let tops = self.backend.tops(&names).await?;
            for ((topic, epoch, last), top) in chunk.iter().zip(tops) {
                let Some((e, o)) = top else { continue };
                let mut shard = self.shard(topic);
                let Some(l) = shard.get_mut(&**topic) else { continue };
                if l.phase != Phase::Ready || *l.epoch != **epoch || l.last < *last {
                    continue;
                }
                let behind = *e != **epoch || o > l.last;
                if !behind {
                    l.suspect = None;
                    continue;
                }
                // Messages may still be on their way through the node's buffer: act only when
                // the previous check already saw this node short of a top it has not reached.
                let confirmed = match l.suspect {
                    Some(prev) => *e != **epoch || l.last < prev.min(o),
                    None => false,
                };
                if !confirmed {
                    l.suspect = Some(o);
                    continue;
                }
                l.suspect = None;
                self.metrics.cluster_gaps.fetch_add(1, Ordering::Relaxed);
                if *e != *l.epoch {
                    // The broker started the topic again: the new epoch's events are refilled
                    // from 1.
                    l.reset(e.as_str().into(), 0, &self.metrics);
                    l.pending.clear();
                }
                l.phase = Phase::Refilling;
                let id = l.id;
                drop(shard);
                tokio::spawn(refill(Arc::clone(self), Arc::clone(topic), id, o));
            }
        }
        Ok(())
    }

    /// After a reconnection: listen again, re-read every topic's position (refilling what was
    /// published meanwhile, or resetting subscribers when the broker lost the topic), and make
    /// the broker's presence match this node's connections again.
    async fn resync(self: &Arc<Self>) -> Result<(), BrokerError> {
        let topics: Vec<(Arc<str>, bool)> = self
            .shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.iter().map(|(t, l)| (Arc::clone(t), l.listening)).collect::<Vec<_>>()
            })
            .collect();
        let keys: Vec<String> = self.keys.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for k in keys {
            self.listen(&k, true).await?;
        }
        for (topic, listening) in &topics {
            if *listening {
                self.listen(topic, false).await?;
            }
            let (offset, epoch) = self.backend.position(topic).await?;
            let mut shard = self.shard(topic);
            let Some(l) = shard.get_mut(&**topic) else { continue };
            if l.phase == Phase::Init {
                continue;
            }
            let changed = *l.epoch != *epoch;
            if changed {
                // The broker lost the topic: what this node had not delivered of the old epoch
                // is gone; the new epoch's events are refilled from its start.
                l.reset(epoch.as_str().into(), 0, &self.metrics);
                l.pending.clear();
            }
            if (changed || offset > l.last) && l.phase == Phase::Ready {
                self.metrics.cluster_gaps.fetch_add(1, Ordering::Relaxed);
                l.phase = Phase::Refilling;
                let id = l.id;
                drop(shard);
                tokio::spawn(refill(Arc::clone(self), Arc::clone(topic), id, offset));
            }
        }
        self.reregister_presence().await
    }

    /// Make the broker's presence for this node match its connections: join every member (a
    /// join is announced only when the broker did not have it), leave those it no longer
    /// holds. Joins and leaves of arriving and departing clients wait meanwhile, so none is
    /// undone.
    async fn reregister_presence(&self) -> Result<(), BrokerError> {
        let _p = self.presence_lock.write().await;
        let mut members: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
        let mut joins: Vec<(Arc<str>, Member)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (topic, l) in shard.iter() {
                for s in l.subs.values() {
                    members.insert((topic.to_string(), s.handle.member.session.to_string()));
                    joins.push((Arc::clone(topic), s.handle.member.clone()));
                }
            }
        }
        for (topic, m) in joins {
            self.backend.join(&topic, &m).await?;
        }
        for (topic, session) in self.backend.own_members().await? {
            if !members.contains(&(topic.clone(), session.clone())) {
                self.backend.leave(&topic, &session).await?;
            }
        }
        Ok(())
    }
}

impl<B: Backend> Core<B> {
    /// Offer the next event of a followed topic (from its channel or a pattern's): delivered,
    /// dropped as a duplicate, or held while the gap before it is refilled.
    fn accept(&self, mut shard: MutexGuard<'_, Shard>, topic: &str, ev: Arc<Event>) {
        let Some(l) = shard.get_mut(topic) else { return };
        let budget = self.settings.pending_bytes;
        if l.phase != Phase::Ready {
            l.hold(ev, &self.metrics, budget);
            return;
        }
        if let Step::Gap = l.offer(&ev, &self.metrics) {
            self.metrics.cluster_gaps.fetch_add(1, Ordering::Relaxed);
            l.phase = Phase::Refilling;
            l.hold(ev, &self.metrics, budget);
            let id = l.id;
            drop(shard);
            // The inbound side holds only a weak handle; the strong one comes from the shard's
            // owner, which is alive while this runs.
            if let Some(me) = self.me() {
                tokio::spawn(refill(me, topic.into(), id, 0));
            }
        }
    }
}

impl<B: Backend> Inbound for Core<B> {
    fn event(&self, topic: &str, ev: Arc<Event>) {
        self.accept(self.shard(topic), topic, ev);
    }

    fn presence(&self, topic: &str, join: bool, member: Member) {
        let shard = self.shard(topic);
        let Some(l) = shard.get(topic) else { return };
        let session = Arc::clone(&member.session);
        let notice = Arc::new(if join {
            Notice::join(Arc::clone(&l.name), member)
        } else {
            Notice::leave(Arc::clone(&l.name), member)
        });
        for s in l.subs.values().filter(|s| s.presence && !(join && s.handle.member.session == session)) {
            s.handle.notify(&notice);
        }
    }

    /// A topic seen through a pattern is followed like an exact one (a pattern-only entry from
    /// its first event on), so pattern subscribers get its events once each, in order, with
    /// gaps refilled. Past `max_topics` such entries, events of topics not yet followed are
    /// delivered as they come, once, by the first (in order) of this node's pattern keys that
    /// covers the topic.
    fn pattern_event(&self, key: &str, ev: Arc<Event>) {
        if self.patterns.is_empty() {
            return;
        }
        let topic = Arc::clone(&ev.topic);
        let mut shard = self.shard(&topic);
        if shard.contains_key(&*topic) {
            return self.accept(shard, &topic, ev);
        }
        if !self.patterns.covers(&topic) {
            return;
        }
        if self.count_pattern_topic() {
            shard.insert(
                Arc::clone(&topic),
                Local {
                    id: self.next_local.fetch_add(1, Ordering::Relaxed),
                    policy: self.policy_for(&topic),
                    name: Arc::clone(&topic),
                    subs: HashMap::new(),
                    joining: 0,
                    listening: false,
                    patterns: Arc::clone(&self.patterns),
                    seen: Instant::now(),
                    suspect: None,
                    epoch: Arc::clone(&ev.epoch),
                    last: ev.offset.saturating_sub(1),
                    published: None,
                    phase: Phase::Ready,
                    pending: Pending::new(&self.metrics),
                    activity: Default::default(),
                    ready: Arc::new(Notify::new()),
                },
            );
            return self.accept(shard, &topic, ev);
        }
        drop(shard);
        self.metrics.cluster_pattern_untracked.fetch_add(1, Ordering::Relaxed);
        let first = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.keys().find(|k| self.backend.key_matches(k, &topic)).is_some_and(|k| k == key)
        };
        if !first {
            return;
        }
        let exact: Vec<u64> =
            self.shard(&topic).get(&*topic).map(|l| l.subs.keys().copied().collect()).unwrap_or_default();
        self.patterns.deliver(&ev, self.policy_for(&topic), |id| exact.contains(&id));
    }
}

enum Cleanup {
    Pattern(Option<String>),
    Topic { topic: String, session: String, unlisten: bool },
}

/// Refill a topic's gap from its history, then deliver what waited; `top` is a known top (from
/// the periodic check) that the node must reach even if the history no longer holds the events
/// up to it.
async fn refill<B: Backend>(inner: Arc<Core<B>>, topic: Arc<str>, id: u64, top: u64) {
    let mut backoff = Duration::from_millis(50);
    // Only the entry this refill was started for, while it is refilling (a topic dropped and
    // subscribed again meanwhile is a new entry with its own setup).
    let mine = |l: &Local| l.id == id && l.phase == Phase::Refilling;
    loop {
        let from = {
            let shard = inner.shard(&topic);
            match shard.get(&*topic) {
                Some(l) if mine(l) => l.last + 1,
                _ => return,
            }
        };
        let events = match inner.backend.range(&topic, from).await {
            Ok(ev) => ev,
            Err(e) => {
                // Retried until it works (the broker comes back) or the topic goes.
                tracing::debug!(error = %e, topic = %topic, "refill failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let full_page = events.len() >= PAGE;
        let mut shard = inner.shard(&topic);
        let Some(l) = shard.get_mut(&*topic).filter(|l| mine(l)) else { return };
        let m = &inner.metrics;
        for ev in &events {
            if ev.epoch != l.epoch || ev.offset > l.last + 1 {
                // Events between what was delivered and the oldest kept are gone.
                l.reset(Arc::clone(&ev.epoch), ev.offset - 1, m);
            }
            if ev.offset == l.last + 1 {
                l.last = ev.offset;
                l.fan_out(ev);
            }
        }
        if full_page {
            continue;
        }
        if events.is_empty() {
            // Nothing after `last` in the history: whatever lies between it and the next event
            // that arrived (or the known top) is gone.
            let next = l.pending.iter().find(|e| e.epoch == l.epoch && e.offset > l.last).map(|e| e.offset - 1);
            match next.or((top > l.last).then_some(top)) {
                Some(to) if to > l.last => {
                    let epoch = Arc::clone(&l.epoch);
                    l.reset(epoch, to, m);
                }
                _ => {}
            }
        }
        if l.drain_pending(m) {
            l.phase = Phase::Ready;
            m.cluster_refilled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        drop(shard);
        backoff = Duration::from_millis(50);
    }
}

/// Health checks, reconnection with backoff, heartbeats and the periodic top check.
async fn supervise<B: Backend>(inner: Weak<Core<B>>) {
    let mut backoff = Duration::from_millis(100);
    let mut last_beat = Instant::now();
    let mut last_check = Instant::now();
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.health.is_up() {
            let period = me.settings.node_ttl / 3;
            let ok = me.backend.ping().await;
            if !ok {
                me.health.down(&format!("{} did not answer a ping in time", B::TITLE));
            } else {
                if last_beat.elapsed() >= period {
                    last_beat = Instant::now();
                    if let Err(e) = me.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
                if last_check.elapsed() >= me.settings.check_interval {
                    last_check = Instant::now();
                    if let Err(e) = me.check_tops().await {
                        tracing::warn!(error = %e, "top check failed");
                    }
                }
            }
            // Holds the broker for at most a second after its last user dropped it.
            let kick = Arc::clone(&me.health);
            drop(me);
            let _ = tokio::time::timeout(Duration::from_secs(1).min(period), kick.kick.notified()).await;
            continue;
        }
        // Down: reconnect with backoff.
        let inbound: Weak<dyn Inbound> = Arc::downgrade(&me) as Weak<dyn Inbound>;
        match me.backend.open(inbound).await {
            Ok(()) => {
                me.health.up.store(true, Ordering::Release);
                match me.resync().await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        me.metrics.cluster_reconnects.fetch_add(1, Ordering::Relaxed);
                        me.health.set_up();
                        let _ = me.heartbeat().await;
                        // Dead letters made during the outage can move to the shared store now.
                        me.settings.dead_letters.arrived.notify_one();
                        tracing::info!(broker = B::NAME, "cluster broker reconnected");
                    }
                    Err(e) => {
                        me.health.down(&format!("resync after reconnect failed: {e}"));
                        drop(me);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            Err(e) => {
                me.health.down(&format!("{}: {e}", B::TITLE));
                drop(me);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Letters moved per request to the shared store: at most this many…
const DEAD_BATCH: usize = 64;
/// …and this many bytes (at least one letter).
const DEAD_BATCH_BYTES: usize = 1 << 20;

impl<B: Backend> Core<B> {
    /// Move this node's dead letters into the shared store, oldest first, batch by batch; a
    /// letter leaves the node's memory once the broker acknowledged it. The caller holds
    /// `dead_letters.moving`.
    async fn move_dead(&self) -> Result<(), BrokerError> {
        let dead = &self.settings.dead_letters;
        loop {
            let batch = dead.oldest(DEAD_BATCH, DEAD_BATCH_BYTES);
            if batch.is_empty() {
                return Ok(());
            }
            if !self.health.is_up() {
                return Err(self.unavailable());
            }
            let records: Vec<DeadRecord> = batch
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    l.node = Some(self.settings.node.clone());
                    DeadRecord::of(&l, format!("{}/{:x}/{}", self.settings.node, self.dead_boot, l.id))
                })
                .collect();
            if let Err(e) = self.backend.dead_push(&records, dead.bounds()).await {
                dead.move_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            let ids: Vec<u64> = batch.iter().map(|l| l.id).collect();
            dead.purge(Some(&ids));
            dead.moved.fetch_add(ids.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Moves dead letters into the shared store: woken when a letter arrives or the broker comes
/// back (and every 30 s); nothing is tried while the broker is down, and failures back off
/// from 0.1 s, doubling, up to 30 s.
async fn move_dead_letters<B: Backend>(core: Weak<Core<B>>) {
    const IDLE: Duration = Duration::from_secs(30);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(me) = core.upgrade() else { return };
        let dead = Arc::clone(&me.settings.dead_letters);
        let wake = dead.arrived.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let failed = if dead.size().0 > 0 && me.health.is_up() {
            let _moving = dead.moving.lock().await;
            match me.move_dead().await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "moving dead letters to the shared store failed; retried");
                    true
                }
            }
        } else {
            false
        };
        drop(me);
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(IDLE);
        } else {
            let _ = tokio::time::timeout(IDLE, wake).await;
        }
    }
}

impl<B: Backend> SharedDeadLetters for Core<B> {
    fn node(&self) -> &str {
        &self.settings.node
    }

    fn move_local(&self) -> BrokerFuture<'_, ()> {
        Box::pin(self.move_dead())
    }

    fn list(&self, after: u64, limit: usize) -> BrokerFuture<'_, DeadLetterPage> {
        Box::pin(async move {
            let DeadList { count, bytes, dropped, items } = self.backend.dead_list(after, limit).await?;
            let items = items
                .into_iter()
                .filter_map(|(id, json)| {
                    let l = DeadLetter::from_stored(id, &json);
                    if l.is_none() {
                        tracing::warn!(id, "unreadable dead letter in the shared store");
                    }
                    l
                })
                .collect();
            Ok(DeadLetterPage { count, bytes, dropped, items, shared_error: None })
        })
    }

    fn claim(&self, id: u64) -> BrokerFuture<'_, Option<DeadLetter>> {
        Box::pin(async move {
            let json = self.backend.dead_claim(id).await?;
            Ok(json.and_then(|j| DeadLetter::from_stored(id, &j)))
        })
    }

    fn restore(&self, letter: DeadLetter) -> BrokerFuture<'_, ()> {
        Box::pin(async move {
            let record = DeadRecord::of(&letter, format!("r/{}", letter.id));
            self.backend.dead_restore(letter.id, &record).await
        })
    }

    fn purge<'a>(&'a self, ids: Option<&'a [u64]>) -> BrokerFuture<'a, usize> {
        self.backend.dead_purge(ids)
    }
}

impl<B: Backend> Broker for Cluster<B> {
    fn publish<'a>(&'a self, topic: &'a str, payload: Value, meta: PublishMeta) -> BrokerFuture<'a, Position> {
        self.core.submit(topic, &payload, meta)
    }

    fn publish_owned(
        self: Arc<Self>,
        topic: String,
        payload: Value,
        meta: PublishMeta,
    ) -> BrokerFuture<'static, Position> {
        self.core.submit(&topic, &payload, meta)
    }

    fn subscribe<'a>(
        &'a self,
        sub: &'a Arc<Subscriber>,
        target: &'a Pattern,
        start: Start<'a>,
        presence: bool,
    ) -> BrokerFuture<'a, SubscribeOutcome> {
        Box::pin(self.core.subscribe(sub, target, start, presence))
    }

    fn unsubscribe<'a>(&'a self, sub: &'a Arc<Subscriber>, target: &'a Pattern) -> BrokerFuture<'a, bool> {
        Box::pin(async move {
            match self.core.unsubscribe_local(sub, target) {
                Some(c) => {
                    self.core.cleanup(c).await;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn presence<'a>(&'a self, topic: &'a str, limit: usize) -> BrokerFuture<'a, (usize, Vec<Member>)> {
        self.core.backend.members(topic, limit)
    }

    fn remove_all(&self, sub: &Arc<Subscriber>, targets: &[Pattern]) {
        let work: Vec<Cleanup> = targets.iter().filter_map(|t| self.core.unsubscribe_local(sub, t)).collect();
        if work.is_empty() {
            return;
        }
        let core = Arc::clone(&self.core);
        tokio::spawn(async move {
            for c in work {
                core.cleanup(c).await;
            }
        });
    }

    fn topic_count(&self) -> usize {
        self.core.topics.load(Ordering::Relaxed)
    }

    fn dead_letters(&self) -> Option<Arc<crate::dead::DeadLetters>> {
        Some(Arc::clone(&self.core.settings.dead_letters))
    }

    fn shared_dead_letters(&self) -> Option<Arc<dyn SharedDeadLetters>> {
        self.core.backend.dead_store().then(|| Arc::clone(&self.core) as Arc<dyn SharedDeadLetters>)
    }

    fn last_event<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Option<Arc<crate::wire::Event>>> {
        Box::pin(async move {
            let topic: Arc<str> = topic.into();
            Ok(self.core.backend.recent(&topic, 1).await?.pop())
        })
    }

    fn between<'a>(
        &'a self,
        topic: &'a str,
        epoch: &'a str,
        after: u64,
        upto: u64,
    ) -> BrokerFuture<'a, Option<Vec<Arc<crate::wire::Event>>>> {
        Box::pin(async move {
            let topic: Arc<str> = topic.into();
            let mut events: Vec<Arc<crate::wire::Event>> = Vec::new();
            // Page by page (a snapshot is at most a history behind: a few pages at most).
            while events.last().map_or(after, |e| e.offset) < upto {
                let from = events.last().map_or(after, |e| e.offset) + 1;
                let page = self.core.backend.range(&topic, from).await?;
                if page.is_empty() {
                    break;
                }
                events.extend(page);
            }
            events.retain(|e| e.offset <= upto);
            // Exact or nothing: in the epoch, from `after + 1` to `upto` without a hole.
            let whole = events.iter().all(|e| &*e.epoch == epoch)
                && events.first().is_some_and(|e| e.offset == after + 1)
                && events.last().is_some_and(|e| e.offset == upto)
                && events.len() as u64 == upto - after;
            Ok(whole.then_some(events))
        })
    }

    fn busiest(&self, n: usize) -> Vec<crate::metrics::TopicActivity> {
        let mut b = crate::metrics::Busiest::new(Instant::now());
        for shard in self.core.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for l in shard.values() {
                b.add(&l.name, &l.activity, l.subs.len());
            }
        }
        b.top(n)
    }

    fn maintain(&self, _now: Instant) -> BrokerFuture<'_, ()> {
        // The broker trims history itself (caps and TTLs); the node's own upkeep runs in its
        // supervisor task.
        Box::pin(std::future::ready(Ok(())))
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn settle(&self, within: Duration) -> BrokerFuture<'_, ()> {
        Box::pin(async move {
            let now = tokio::time::Instant::now();
            let deadline = now.checked_add(within).unwrap_or(now + Duration::from_secs(86_400));
            loop {
                // Publishes still in flight first (their events are yet to be recorded), then
                // every followed topic's position against this node's last publish on it.
                let pending = self.core.in_flight.load(Ordering::Relaxed) > 0
                    || self.core.shards.iter().any(|shard| {
                        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                        shard.values().any(|l| !l.settled())
                    });
                // A broker that is down delivers nothing more: do not wait for it.
                if !pending || !self.core.health.is_up() || tokio::time::Instant::now() >= deadline {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn health(&self) -> BrokerHealth {
        if self.core.health.is_up() { BrokerHealth::Ok } else { BrokerHealth::Degraded(self.core.health.reason()) }
    }

    fn cluster(&self) -> Option<ClusterInfo> {
        Some(ClusterInfo {
            broker: B::NAME,
            node: self.core.settings.node.clone(),
            state: match self.health() {
                BrokerHealth::Ok => "ok".into(),
                BrokerHealth::Degraded(r) => format!("degraded: {r}"),
            },
            nodes: self.core.nodes_alive.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Arc<Event> {
        let payload = serde_json::to_string(&"x".repeat(n)).unwrap();
        Arc::new(Event::from_cluster("t".into(), 1, "e".into(), None, 0, Priority::Normal, &payload).unwrap())
    }

    /// Events held while topics refill count against one node-wide byte budget; every byte is
    /// given back when they are delivered, cleared or dropped with their topic.
    #[test]
    fn held_events_are_bounded_in_bytes_over_all_topics() {
        let metrics = Arc::new(Metrics::default());
        let (mut a, mut b) = (Pending::new(&metrics), Pending::new(&metrics));
        let budget = 10 * event(1000).size_estimate();
        let mut held = 0;
        for _ in 0..8 {
            held += usize::from(a.push_back(event(1000), budget));
            held += usize::from(b.push_back(event(1000), budget));
        }
        assert_eq!(held, 10, "the budget is shared by both topics");
        assert!(metrics.cluster_pending_bytes.load(Ordering::Relaxed) as usize <= budget);
        let ev = a.pop_front().unwrap();
        a.push_front(ev);
        a.clear();
        assert_eq!(
            metrics.cluster_pending_bytes.load(Ordering::Relaxed) as usize,
            b.len() * event(1000).size_estimate()
        );
        drop(b);
        assert_eq!(metrics.cluster_pending_bytes.load(Ordering::Relaxed), 0);
    }

    /// Publishes waiting for the broker are refused past the byte budget (5003) and give their
    /// bytes back when sent.
    #[test]
    fn the_publish_queue_is_bounded_in_bytes() {
        let metrics = Metrics::default();
        let mut settings = ClusterSettings::new("redis://127.0.0.1:1");
        settings.publish_queue_bytes = 10_000;
        let out =
            Outgoing { topic: "t".into(), time: 0, id: None, payload: "x".repeat(3000), priority: Priority::Normal };
        let mut q = QueueBudget::default();
        assert!(q.take(&out, &settings, &metrics).is_ok());
        assert!(q.take(&out, &settings, &metrics).is_ok());
        assert!(q.take(&out, &settings, &metrics).is_ok());
        let e = q.take(&out, &settings, &metrics).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("too many publishes waiting"), "{}", e.message);
        q.give_sized(3, 3 * out.size(), &metrics);
        assert_eq!(metrics.cluster_publish_queue_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("nats://host:4222"), "nats://host:4222");
        assert_eq!(redact("nats://s3cret@host:4222"), "nats://***@host:4222");
        assert_eq!(
            redact("redis+sentinel://:pw@s1:26379/m?sentinel_password=S3CRET"),
            "redis+sentinel://:***@s1:26379/m?sentinel_password=***"
        );
        assert_eq!(redact("redis+sentinel://u:ab?cd@h:1/m"), "redis+sentinel://u:***@h:1/m");
    }
}
