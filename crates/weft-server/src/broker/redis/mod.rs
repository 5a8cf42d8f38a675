//! The Redis broker: cluster mode. Redis assigns every topic's `(epoch, offset)` in one script
//! per publish, keeps history in a capped stream per topic, and carries events to the nodes
//! that have subscribers for the topic (one pub/sub channel per topic). Each node keeps its
//! own subscription table and fans out locally.
//!
//! Pub/sub is at-most-once; this node turns it into exactly-once, in order, per topic: it knows
//! the last offset it delivered for each topic, skips duplicates, and refills any gap from the
//! stream before delivering what follows. A gap it cannot refill (history gone) or a new epoch
//! reaches subscribers as a `reset` notice (`recovered: false` with the new position), never as
//! a silent hole. `docs/CLUSTER.md` has the guarantees and the failure modes.

mod scripts;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisError};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use super::{
    Broker, BrokerError, BrokerFuture, BrokerHealth, ClusterInfo, Patterns, Start, SubscribeOutcome, Subscriber,
};
use crate::metrics::Metrics;
use crate::outbox::SlowConsumerPolicy;
use crate::topic::Pattern;
use crate::wire::{Event, Member, Notice, Position, now_ms};

const SHARDS: usize = 64;
/// Events read from a stream per request when refilling or replaying.
const PAGE: usize = 1000;
/// Events held per topic while it refills a gap; past this they are dropped and refilled too.
const PENDING_LIMIT: usize = 10_000;

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// PEM file with the certificate(s) that sign the Redis server's (`rediss://`); without
    /// it, the system's trust store.
    pub ca_file: Option<std::path::PathBuf>,
    /// This node's name (unique in the cluster; the default is host and pid).
    pub node: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Events kept per topic (the stream's cap).
    pub history_size: usize,
    /// How long events are kept: older ones are never replayed, and an idle topic's stream
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
    /// How often every topic's stream top is compared with what this node delivered (catches
    /// lost pub/sub messages with no later traffic on the topic).
    pub check_interval: Duration,
    /// Redis command timeout: past it a request fails (error 5003) instead of hanging.
    pub command_timeout: Duration,
    /// Pub/sub messages buffered between Redis and the fan-out; past it they are dropped,
    /// counted, and refilled from the streams.
    pub pubsub_buffer: usize,
}

impl RedisSettings {
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
        }
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

/// One topic with subscribers on this node.
struct Local {
    /// Unique per entry: a refill started for an earlier entry of the same name stops.
    id: u64,
    name: Arc<str>,
    subs: HashMap<u64, Sub>,
    /// Subscriptions between `ensure_topic` and joining `subs` (the entry stays while > 0).
    joining: usize,
    /// A stream top seen ahead of `last` by the previous periodic check.
    suspect: Option<u64>,
    epoch: Arc<str>,
    /// The last offset delivered to this node's subscribers.
    last: u64,
    phase: Phase,
    pending: VecDeque<Arc<Event>>,
    policy: SlowConsumerPolicy,
    ready: Arc<Notify>,
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

    fn fan_out(&self, ev: &Arc<Event>) {
        for s in self.subs.values() {
            s.handle.deliver(ev, self.policy);
        }
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

    fn hold(&mut self, ev: Arc<Event>, metrics: &Metrics) {
        if self.pending.len() >= PENDING_LIMIT {
            // Refilled from the stream later, like any gap.
            metrics.cluster_pubsub_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pending.push_back(ev);
    }
}

#[derive(Default)]
struct Link {
    /// Commands.
    cmd: Option<MultiplexedConnection>,
    /// Pub/sub (RESP3 pushes into a bounded channel).
    pubsub: Option<MultiplexedConnection>,
}

/// Topics with subscribers on this node, by name.
type Shard = HashMap<Arc<str>, Local>;

/// Most publishes queued for Redis on one node; past it a publish fails with 5003 (each
/// connection has at most 64 in flight, so this is reached only under a flood of connections).
const PUBLISH_QUEUE: usize = 100_000;
/// Most publishes sent in one pipeline.
const PUBLISH_BATCH: usize = 256;

type PublishReply = tokio::sync::oneshot::Sender<Result<Position, BrokerError>>;

/// Publishes waiting for the node's publisher task, in call order.
#[derive(Default)]
struct PublishQueue {
    queue: Mutex<VecDeque<(String, String, PublishReply)>>,
    ready: Notify,
}

struct Inner {
    settings: RedisSettings,
    metrics: Arc<Metrics>,
    client: redis::Client,
    link: RwLock<Link>,
    up: AtomicBool,
    reason: Mutex<String>,
    kick: Notify,
    shards: Box<[Mutex<Shard>]>,
    topics: AtomicUsize,
    patterns: Patterns,
    /// Redis glob → how many of this node's patterns map to it.
    globs: Mutex<BTreeMap<String, usize>>,
    /// Serialises (P)SUBSCRIBE / (P)UNSUBSCRIBE, each checking the interest when it runs.
    sub_lock: tokio::sync::Mutex<()>,
    nodes_alive: AtomicUsize,
    generation: AtomicU64,
    publishes: PublishQueue,
    next_local: AtomicU64,
    /// Presence joins and leaves share it; the resync's re-registration takes it alone, so a
    /// client arriving or leaving meanwhile is not undone.
    presence_lock: tokio::sync::RwLock<()>,
    /// This node has heartbeated before (a missing entry afterwards means it was swept).
    beaten: AtomicBool,
}

/// The cluster broker over Redis (see the module documentation and `docs/CLUSTER.md`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use weft_server::broker::{RedisBroker, RedisSettings};
/// use weft_server::metrics::Metrics;
/// use weft_server::{Engine, EngineConfig};
///
/// let metrics = Arc::new(Metrics::default());
/// let broker = RedisBroker::connect(RedisSettings::new("redis://127.0.0.1:6379"), Arc::clone(&metrics)).await?;
/// let engine = Engine::with_broker(EngineConfig::default(), Arc::new(broker), metrics)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("node", &self.inner.settings.node).finish_non_exhaustive()
    }
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A weft pattern as a Redis channel glob (wider: `*` in a glob also matches dots; the exact
/// match is checked on arrival). Segments never hold glob characters (`topic.rs` rules).
fn glob_of(prefix: &str, p: &Pattern) -> String {
    let mut g = format!("{prefix}:c:");
    for (i, seg) in p.as_str().split('.').enumerate() {
        if i > 0 {
            g.push('.');
        }
        g.push_str(if seg == ">" { "*" } else { seg });
    }
    g
}

/// Whether a glob made by [`glob_of`] matches `channel` (a `*` matches any run of bytes).
fn glob_matches(glob: &str, channel: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    let mut rest = channel;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part) && rest.len() >= part.len();
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// Parse `epoch\ntime\nid\npayload` (a stream entry, or a pub/sub event after `e\noffset\n`).
fn parse_event(topic: &Arc<str>, offset: u64, body: &str) -> Option<Arc<Event>> {
    let mut it = body.splitn(4, '\n');
    let epoch = it.next()?;
    let time = it.next()?.parse().ok()?;
    let id = it.next()?;
    let payload = it.next()?;
    let id = (!id.is_empty()).then(|| id.into());
    Event::from_cluster(Arc::clone(topic), offset, epoch.into(), id, time, payload).ok().map(Arc::new)
}

impl RedisBroker {
    /// Connect to Redis (failing when it cannot be reached within the command timeout) and
    /// start this node's upkeep: health checks, reconnection, heartbeats, presence of dead
    /// nodes, and the periodic check of every topic's stream top.
    pub async fn connect(settings: RedisSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        if settings.node.is_empty() || settings.node.contains('\n') {
            return Err("node name must be non-empty and on one line".into());
        }
        let info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
            .map_err(|e| format!("bad Redis URL {}: {e}", redact(&settings.url)))?
            // Requests are small and latency-bound: no Nagle delay.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match &settings.ca_file {
            None => redis::Client::open(info),
            Some(_) if !settings.url.starts_with("rediss://") => {
                return Err("a broker CA file is for rediss:// (TLS) URLs".into());
            }
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("reading broker CA file {}: {e}", path.display()))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(info, certs)
            }
        }
        .map_err(|e| format!("bad Redis URL {}: {e}", redact(&settings.url)))?;
        let inner = Arc::new(Inner {
            client,
            link: RwLock::new(Link::default()),
            up: AtomicBool::new(false),
            reason: Mutex::new("connecting".into()),
            kick: Notify::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            topics: AtomicUsize::new(0),
            patterns: Patterns::default(),
            globs: Mutex::new(BTreeMap::new()),
            sub_lock: tokio::sync::Mutex::new(()),
            nodes_alive: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            publishes: PublishQueue::default(),
            next_local: AtomicU64::new(1),
            presence_lock: tokio::sync::RwLock::new(()),
            beaten: AtomicBool::new(false),
            metrics,
            settings,
        });
        Inner::open(&inner).await.map_err(|e| format!("cannot reach Redis at {}: {e}", redact(&inner.settings.url)))?;
        inner.up.store(true, Ordering::Release);
        inner.reason.lock().unwrap_or_else(|e| e.into_inner()).clear();
        inner.heartbeat().await.map_err(|e| format!("Redis refused the heartbeat: {e}"))?;
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        tokio::spawn(send_publishes(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.settings.node
    }
}

/// The URL without its password, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let auth = &url[s + 3..at];
            let user = auth.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Inner {
    fn shard(&self, topic: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        topic.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, kind: &str, topic: &str) -> String {
        format!("{}:{kind}:{topic}", self.settings.prefix)
    }

    fn policy_for(&self, topic: &str) -> SlowConsumerPolicy {
        super::policy_for(&self.settings.topic_policies, self.settings.policy, topic)
    }

    fn meta_ttl(&self) -> u64 {
        self.settings.history_ttl.as_secs().max(86_400)
    }

    /// Open both connections, the pub/sub one with its pushes into a bounded channel read by a
    /// fan-out task.
    async fn open(this: &Arc<Self>) -> Result<(), RedisError> {
        let timeout = Some(this.settings.command_timeout);
        let cfg = AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
        let mut cmd = this.client.get_multiplexed_async_connection_with_config(&cfg).await?;
        // Loaded up front: publishes are sent as EVALSHA in pipelines.
        for s in [
            &*scripts::PUBLISH,
            &*scripts::POSITION,
            &*scripts::JOIN,
            &*scripts::LEAVE,
            &*scripts::HEARTBEAT,
            &*scripts::SWEEP,
        ] {
            s.load_async(&mut cmd).await?;
        }
        let (tx, rx) = mpsc::channel::<PushInfo>(this.settings.pubsub_buffer.max(16));
        let generation = this.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let weak = Arc::downgrade(this);
        let push = move |info: PushInfo| -> Result<(), ()> {
            if info.kind == PushKind::Disconnection {
                if let Some(me) = weak.upgrade() {
                    if me.generation.load(Ordering::Relaxed) == generation {
                        me.down("the pub/sub connection closed");
                    }
                }
                return Ok(());
            }
            match tx.try_send(info) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Some(me) = weak.upgrade() {
                        me.metrics.cluster_pubsub_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            }
        };
        let info = this.client.get_connection_info().clone();
        let redis_info = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let ps_client = redis::Client::open(info.set_redis_settings(redis_info))?;
        let pcfg = cfg.set_push_sender(push);
        let pubsub = ps_client.get_multiplexed_async_connection_with_config(&pcfg).await?;
        tokio::spawn(read_pushes(Arc::downgrade(this), rx, generation));
        *this.link.write().unwrap_or_else(|e| e.into_inner()) = Link { cmd: Some(cmd), pubsub: Some(pubsub) };
        Ok(())
    }

    fn cmd(&self) -> Result<MultiplexedConnection, BrokerError> {
        if !self.up.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        self.link.read().unwrap_or_else(|e| e.into_inner()).cmd.clone().ok_or_else(|| self.unavailable())
    }

    fn pubsub(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).pubsub.clone().ok_or_else(|| self.unavailable())
    }

    fn unavailable(&self) -> BrokerError {
        let reason = self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        BrokerError::unavailable(format!("the cluster broker is unavailable ({reason}); retry later"))
    }

    fn down(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_owned();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason, "Redis broker degraded");
        }
        self.kick.notify_one();
    }

    /// Map a Redis failure: a lost link marks the broker down (error 5003); anything else is
    /// error 5000.
    fn failed(&self, e: RedisError) -> BrokerError {
        if is_link_error(&e) {
            self.down(&format!("Redis: {e}"));
            self.unavailable()
        } else {
            BrokerError::failed(format!("Redis: {e}"))
        }
    }

    /// Queue a publish for the node's publisher task (which sends queued publishes to Redis in
    /// pipelines, in call order) and return the wait for its position. The queueing happens
    /// now, not when the future is first polled: one connection's publishes reach Redis in
    /// the order it made them.
    fn submit(&self, topic: &str, payload: &Value, id: Option<&str>) -> BrokerFuture<'static, Position> {
        let refused = |e: BrokerError| -> BrokerFuture<'static, Position> {
            self.metrics.publishes_refused.fetch_add(1, Ordering::Relaxed);
            Box::pin(std::future::ready(Err(e)))
        };
        if !self.up.load(Ordering::Acquire) {
            return refused(self.unavailable());
        }
        if id.is_some_and(|i| i.contains('\n')) {
            return Box::pin(std::future::ready(Err(BrokerError {
                code: crate::wire::ErrorCode::BadRequest,
                message: "an event id may not contain a line break".into(),
            })));
        }
        let payload = match serde_json::to_string(payload) {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(BrokerError::failed(e.to_string())))),
        };
        let body = format!("{}\n{}\n{}", now_ms(), id.unwrap_or(""), payload);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = self.publishes.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= PUBLISH_QUEUE {
                drop(q);
                return refused(BrokerError::unavailable("too many publishes waiting for Redis; retry later"));
            }
            q.push_back((topic.to_owned(), body, tx));
        }
        self.publishes.ready.notify_one();
        Box::pin(async move {
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(BrokerError::unavailable("the broker stopped")),
            }
        })
    }

    /// Send one batch of queued publishes as one pipeline and answer each.
    async fn send_batch(&self, batch: Vec<(String, String, PublishReply)>) {
        let mut conn = match self.cmd() {
            Ok(c) => c,
            Err(e) => {
                self.metrics.publishes_refused.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (_, _, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let (ttl, meta_ttl) = (self.settings.history_ttl.as_secs().max(1), self.meta_ttl());
        for (topic, body, _) in &batch {
            pipe.cmd("EVALSHA")
                .arg(scripts::PUBLISH.get_hash())
                .arg(2)
                .arg(self.key("m", topic))
                .arg(self.key("s", topic))
                .arg(self.key("c", topic))
                .arg(body)
                .arg(self.settings.history_size)
                .arg(ttl)
                .arg(meta_ttl)
                .arg(new_epoch());
        }
        let results: Result<Vec<redis::RedisResult<(u64, String)>>, _> = pipe.query_async(&mut conn).await;
        match results {
            Ok(results) => {
                let mut noscript = false;
                for ((_, _, tx), r) in batch.into_iter().zip(results) {
                    noscript |= r.as_ref().err().and_then(|e| e.code()) == Some("NOSCRIPT");
                    let r = match r {
                        Ok((offset, epoch)) => {
                            self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
                            Ok(Position { offset, epoch })
                        }
                        Err(e) => {
                            self.metrics.publishes_refused.fetch_add(1, Ordering::Relaxed);
                            Err(self.failed(e))
                        }
                    };
                    let _ = tx.send(r);
                }
                if noscript {
                    // Redis lost its scripts (SCRIPT FLUSH, or a restart behind a proxy): load
                    // them again; the publishes that failed got error 5000.
                    tracing::warn!("Redis lost the publish script; loading it again");
                    let _ = scripts::PUBLISH.load_async(&mut conn).await;
                }
            }
            Err(e) => {
                let e = self.failed(e);
                self.metrics.publishes_refused.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (_, _, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }

    /// `(offset, epoch)` of a topic, creating its epoch if it has none.
    async fn position(&self, topic: &str) -> Result<(u64, String), BrokerError> {
        let mut conn = self.cmd()?;
        scripts::POSITION
            .key(self.key("m", topic))
            .key(self.key("s", topic))
            .arg(new_epoch())
            .arg(self.meta_ttl())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Events of `topic` with offsets in `from..`, at most `PAGE`, oldest first; events older
    /// than the history TTL are left out (they count as gone).
    async fn range(&self, topic: &Arc<str>, from: u64) -> Result<Vec<Arc<Event>>, BrokerError> {
        let mut conn = self.cmd()?;
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.key("s", topic))
            .arg(format!("{from}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(self.parse_entries(topic, entries))
    }

    /// The `n` most recent events of `topic`, oldest first.
    async fn recent(&self, topic: &Arc<str>, n: usize) -> Result<Vec<Arc<Event>>, BrokerError> {
        let mut conn = self.cmd()?;
        let mut entries: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(self.key("s", topic))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n.min(PAGE))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        entries.reverse();
        Ok(self.parse_entries(topic, entries))
    }

    fn parse_entries(&self, topic: &Arc<str>, entries: Vec<(String, Vec<String>)>) -> Vec<Arc<Event>> {
        let oldest = now_ms().saturating_sub(self.settings.history_ttl.as_millis() as u64);
        let mut out = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let Some(offset) = id.split('-').next().and_then(|o| o.parse().ok()) else { continue };
            let Some(body) = fields.get(1) else { continue };
            match parse_event(topic, offset, body) {
                Some(ev) if ev.time >= oldest => out.push(ev),
                Some(_) => out.clear(), // too old: it and everything before it count as gone
                None => tracing::warn!(topic = %topic, offset, "unreadable event in the stream"),
            }
        }
        out
    }

    /// (P)SUBSCRIBE on the pub/sub connection.
    async fn listen(&self, channel: String, glob: bool) -> Result<(), BrokerError> {
        let _g = self.sub_lock.lock().await;
        if !self.up.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let mut ps = self.pubsub()?;
        let r = if glob { ps.psubscribe(&channel).await } else { ps.subscribe(&channel).await };
        r.map_err(|e| self.failed(e))
    }

    /// UNSUBSCRIBE a topic's channel unless someone subscribed again meanwhile.
    async fn unlisten_topic(&self, topic: &str) {
        let _g = self.sub_lock.lock().await;
        if self.shard(topic).contains_key(topic) {
            return;
        }
        if let Ok(mut ps) = self.pubsub() {
            if let Err(e) = ps.unsubscribe(self.key("c", topic)).await {
                tracing::debug!(error = %e, "unsubscribe failed");
            }
        }
    }

    async fn unlisten_glob(&self, glob: String) {
        let _g = self.sub_lock.lock().await;
        if self.globs.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&glob) {
            return;
        }
        if let Ok(mut ps) = self.pubsub() {
            if let Err(e) = ps.punsubscribe(&glob).await {
                tracing::debug!(error = %e, "punsubscribe failed");
            }
        }
    }

    async fn join(&self, topic: &str, member: &Member) -> Result<(), BrokerError> {
        let mut conn = self.cmd()?;
        let json = serde_json::to_string(member).map_err(|e| BrokerError::failed(e.to_string()))?;
        let _: i64 = scripts::JOIN
            .key(self.key("p", topic))
            .key(self.key("nm", &self.settings.node))
            .arg(&*member.session)
            .arg(json)
            .arg(self.key("c", topic))
            .arg(format!("{topic}\n{}", member.session))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn leave(&self, topic: &str, session: &str) -> Result<(), BrokerError> {
        let mut conn = self.cmd()?;
        let _: i64 = scripts::LEAVE
            .key(self.key("p", topic))
            .key(self.key("nm", &self.settings.node))
            .arg(session)
            .arg(self.key("c", topic))
            .arg(format!("{topic}\n{session}"))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Make sure this node listens to `topic` and knows its position; waits while another
    /// subscription is setting it up. The caller counts as joining until it calls
    /// [`joined`](Self::joined), so the entry is not removed meanwhile.
    async fn ensure_topic(self: &Arc<Self>, topic: &str) -> Result<(), BrokerError> {
        let created = {
            let mut shard = self.shard(topic);
            match shard.get_mut(topic) {
                Some(l) => {
                    l.joining += 1;
                    false
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
                            suspect: None,
                            epoch: "".into(),
                            last: 0,
                            phase: Phase::Init,
                            pending: VecDeque::new(),
                            ready: Arc::new(Notify::new()),
                        },
                    );
                    true
                }
            }
        };
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
        if l.joining == 0 && l.subs.is_empty() {
            shard.remove(topic);
            self.topics.fetch_sub(1, Ordering::Relaxed);
            drop(shard);
            let me = Arc::clone(self);
            let topic = topic.to_owned();
            tokio::spawn(async move { me.unlisten_topic(&topic).await });
        }
    }

    /// Listen first, then read the position: nothing published in between is missed (it
    /// arrives on the channel and waits in `pending`, or is at or before the position read).
    async fn setup(self: &Arc<Self>, topic: &str) -> Result<(), BrokerError> {
        self.listen(self.key("c", topic), false).await?;
        let (offset, epoch) = self.position(topic).await?;
        let mut shard = self.shard(topic);
        let Some(l) = shard.get_mut(topic) else { return Ok(()) };
        if l.phase != Phase::Init {
            return Ok(());
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
        if !self.up.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        if target.is_wildcard() {
            let glob = glob_of(&self.settings.prefix, target);
            let first = {
                let mut globs = self.globs.lock().unwrap_or_else(|e| e.into_inner());
                let n = globs.entry(glob.clone()).or_insert(0);
                *n += 1;
                *n == 1
            };
            if first {
                if let Err(e) = self.listen(glob.clone(), true).await {
                    self.forget_glob(&glob);
                    return Err(e);
                }
            }
            if self.patterns.add(target, sub) {
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            } else {
                self.forget_glob(&glob);
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
            if let Err(e) = self.join(&topic, &sub.member).await {
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
            Start::Recent(n) => self.recent(topic, n).await?,
            Start::Resume(pos) => {
                let ok =
                    self.shard(topic).get(&**topic).is_some_and(|l| *l.epoch == *pos.epoch && pos.offset <= l.last);
                if ok { self.range(topic, pos.offset + 1).await? } else { Vec::new() }
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
            let more = self.range(topic, from).await?;
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
                Some(upto.len())
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
                    Some(upto.len())
                } else {
                    upto.clear();
                    self.metrics.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        };
        for e in &upto {
            sub.deliver(e, SlowConsumerPolicy::Disconnect);
        }
        self.metrics.replayed_events.fetch_add(upto.len() as u64, Ordering::Relaxed);
        if l.subs.insert(sub.id, Sub { handle: Arc::clone(sub), presence }).is_none() {
            self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(SubscribeOutcome { position: Some(l.position()), replayed })
    }

    fn forget_glob(&self, glob: &str) -> bool {
        let mut globs = self.globs.lock().unwrap_or_else(|e| e.into_inner());
        match globs.get_mut(glob) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                globs.remove(glob);
                true
            }
            None => false,
        }
    }

    /// Remove a subscription from this node's table; the Redis side (channel, presence) is
    /// returned as work to do.
    fn unsubscribe_local(&self, sub: &Subscriber, target: &Pattern) -> Option<Cleanup> {
        if target.is_wildcard() {
            let (removed, _) = self.patterns.remove(target, sub);
            if !removed {
                return None;
            }
            self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            let glob = glob_of(&self.settings.prefix, target);
            return Some(Cleanup::Glob(self.forget_glob(&glob).then_some(glob)));
        }
        let topic = target.as_str();
        let mut shard = self.shard(topic);
        let l = shard.get_mut(topic)?;
        l.subs.remove(&sub.id)?;
        self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let last = l.subs.is_empty() && l.joining == 0;
        if last {
            shard.remove(topic);
            self.topics.fetch_sub(1, Ordering::Relaxed);
        }
        Some(Cleanup::Topic { topic: topic.to_owned(), session: sub.member.session.to_string(), unlisten: last })
    }

    async fn cleanup(&self, c: Cleanup) {
        match c {
            Cleanup::Glob(Some(glob)) => self.unlisten_glob(glob).await,
            Cleanup::Glob(None) => {}
            Cleanup::Topic { topic, session, unlisten } => {
                let _p = self.presence_lock.read().await;
                if let Err(e) = self.leave(&topic, &session).await {
                    // Retried when the broker is back (resync removes this node's stale members).
                    tracing::debug!(error = %e, "presence leave failed");
                }
                if unlisten {
                    self.unlisten_topic(&topic).await;
                }
            }
        }
    }

    async fn presence(&self, topic: &str, limit: usize) -> Result<(usize, Vec<Member>), BrokerError> {
        let mut conn = self.cmd()?;
        let key = self.key("p", topic);
        let count: usize = redis::cmd("HLEN").arg(&key).query_async(&mut conn).await.map_err(|e| self.failed(e))?;
        let mut members = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(limit.clamp(10, 1000))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            for pair in page.chunks(2) {
                if members.len() < limit {
                    if let Some(m) = pair.get(1).and_then(|j| serde_json::from_str::<Member>(j).ok()) {
                        members.push(m);
                    }
                }
            }
            cursor = next;
            if cursor == 0 || members.len() >= limit {
                break;
            }
        }
        Ok((count, members))
    }

    /// One pub/sub message for `topic`: an event (`e`), a join (`j`) or a leave (`l`).
    fn on_message(self: &Arc<Self>, topic: &str, body: &str) {
        let Some((kind, rest)) = body.split_once('\n') else { return };
        match kind {
            "e" => {
                let Some((offset, rest)) = rest.split_once('\n') else { return };
                let Ok(offset) = offset.parse::<u64>() else { return };
                let mut shard = self.shard(topic);
                let Some(l) = shard.get_mut(topic) else { return };
                let Some(ev) = parse_event(&l.name, offset, rest) else {
                    tracing::warn!(topic, offset, "unreadable event from Redis");
                    return;
                };
                if l.phase != Phase::Ready {
                    l.hold(ev, &self.metrics);
                    return;
                }
                if let Step::Gap = l.offer(&ev, &self.metrics) {
                    self.metrics.cluster_gaps.fetch_add(1, Ordering::Relaxed);
                    l.phase = Phase::Refilling;
                    l.hold(ev, &self.metrics);
                    let id = l.id;
                    drop(shard);
                    tokio::spawn(refill(Arc::clone(self), topic.into(), id, 0));
                }
            }
            "j" | "l" => {
                let Ok(member) = serde_json::from_str::<Member>(rest) else { return };
                let shard = self.shard(topic);
                let Some(l) = shard.get(topic) else { return };
                let join = kind == "j";
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
            _ => {}
        }
    }

    /// One pattern message: delivered to this node's pattern subscribers once, by the first
    /// (in order) of this node's globs that matches the channel.
    fn on_pattern_message(&self, glob: &str, channel: &str, body: &str) {
        if self.patterns.is_empty() {
            return;
        }
        let first = {
            let globs = self.globs.lock().unwrap_or_else(|e| e.into_inner());
            globs.keys().find(|g| glob_matches(g, channel)).is_some_and(|g| g == glob)
        };
        if !first {
            return;
        }
        let Some(topic) = channel.strip_prefix(&format!("{}:c:", self.settings.prefix)).map(Arc::<str>::from) else {
            return;
        };
        let Some(("e", rest)) = body.split_once('\n') else { return };
        let Some((offset, rest)) = rest.split_once('\n') else { return };
        let Ok(offset) = offset.parse::<u64>() else { return };
        let Some(ev) = parse_event(&topic, offset, rest) else { return };
        let exact: Vec<u64> =
            self.shard(&topic).get(&*topic).map(|l| l.subs.keys().copied().collect()).unwrap_or_default();
        self.patterns.deliver(&ev, self.policy_for(&topic), |id| exact.contains(&id));
    }

    /// Heartbeat, and sweep the presence of nodes whose heartbeat stopped.
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let mut conn =
            self.link.read().unwrap_or_else(|e| e.into_inner()).cmd.clone().ok_or_else(|| self.unavailable())?;
        let nodes = format!("{}:nodes", self.settings.prefix);
        let out: Vec<Value2> = scripts::HEARTBEAT
            .key(&nodes)
            .arg(&self.settings.node)
            .arg(self.settings.node_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let mut it = out.into_iter();
        if let Some(Value2::Int(alive)) = it.next() {
            self.nodes_alive.store(alive as usize, Ordering::Relaxed);
        }
        if let Some(Value2::Int(0)) = it.next() {
            // Another node took this one for dead (a long stall) and may have swept its members.
            if self.beaten.swap(true, Ordering::Relaxed) {
                tracing::warn!("this node's heartbeat had lapsed; registering its presence again");
                self.reregister_presence().await?;
            }
        } else {
            self.beaten.store(true, Ordering::Relaxed);
        }
        for dead in it {
            let Value2::Str(dead) = dead else { continue };
            if dead == self.settings.node {
                continue;
            }
            loop {
                let n: i64 = scripts::SWEEP
                    .key(&nodes)
                    .key(self.key("nm", &dead))
                    .arg(&dead)
                    .arg(&self.settings.prefix)
                    .arg(self.settings.node_ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(e))?;
                if n < 0 {
                    break; // alive again
                }
                self.metrics.cluster_members_swept.fetch_add(n as u64, Ordering::Relaxed);
                if n < 500 {
                    break;
                }
            }
            tracing::info!(node = %dead, "removed the presence of a node whose heartbeat stopped");
        }
        Ok(())
    }

    /// Compare every topic's stream top with what this node delivered; refill what is missing.
    async fn check_tops(self: &Arc<Self>) -> Result<(), BrokerError> {
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
        let mut conn = self.cmd()?;
        for chunk in topics.chunks(500) {
            let mut pipe = redis::pipe();
            for (t, _, _) in chunk {
                pipe.cmd("HMGET").arg(self.key("m", t)).arg("e").arg("o");
            }
            let tops: Vec<(Option<String>, Option<u64>)> =
                pipe.query_async(&mut conn).await.map_err(|e| self.failed(e))?;
            for ((topic, epoch, last), (e, o)) in chunk.iter().zip(tops) {
                let (Some(e), Some(o)) = (e, o) else { continue };
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
                    // Redis started the topic again: the new epoch's events are refilled from 1.
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
    /// published meanwhile, or resetting subscribers when Redis lost the topic), and make
    /// Redis's presence match this node's connections again.
    async fn resync(self: &Arc<Self>) -> Result<(), BrokerError> {
        let topics: Vec<Arc<str>> = self
            .shards
            .iter()
            .flat_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect::<Vec<_>>())
            .collect();
        let globs: Vec<String> = self.globs.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for g in globs {
            self.listen(g, true).await?;
        }
        for topic in &topics {
            self.listen(self.key("c", topic), false).await?;
            let (offset, epoch) = self.position(topic).await?;
            let mut shard = self.shard(topic);
            let Some(l) = shard.get_mut(&**topic) else { continue };
            if l.phase == Phase::Init {
                continue;
            }
            let changed = *l.epoch != *epoch;
            if changed {
                // Redis lost the topic: what this node had not delivered of the old epoch is
                // gone; the new epoch's events are refilled from its start.
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

    /// Make Redis's presence for this node match its connections: join every member (a join is
    /// announced only when Redis did not have it), leave those it no longer holds. Joins and
    /// leaves of arriving and departing clients wait meanwhile, so none is undone.
    async fn reregister_presence(&self) -> Result<(), BrokerError> {
        let _p = self.presence_lock.write().await;
        let mut members: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut joins: Vec<(Arc<str>, Member)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (topic, l) in shard.iter() {
                for s in l.subs.values() {
                    members.insert(format!("{topic}\n{}", s.handle.member.session));
                    joins.push((Arc::clone(topic), s.handle.member.clone()));
                }
            }
        }
        for (topic, m) in joins {
            self.join(&topic, &m).await?;
        }
        let mut conn = self.cmd_any()?;
        let listed: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("nm", &self.settings.node))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        for entry in listed.into_iter().filter(|e| !members.contains(e)) {
            if let Some((topic, session)) = entry.split_once('\n') {
                self.leave(topic, session).await?;
            }
        }
        Ok(())
    }

    fn cmd_any(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).cmd.clone().ok_or_else(|| self.unavailable())
    }
}

/// A heartbeat reply item: the alive count, then names.
enum Value2 {
    Int(i64),
    Str(String),
}

impl redis::FromRedisValue for Value2 {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Int(i) => Ok(Value2::Int(i)),
            other => Ok(Value2::Str(String::from_redis_value(other)?)),
        }
    }
}

enum Cleanup {
    Glob(Option<String>),
    Topic { topic: String, session: String, unlisten: bool },
}

/// Refill a topic's gap from its stream, then deliver what waited; `top` is a known stream top
/// (from the periodic check) that the node must reach even if the stream no longer holds the
/// events up to it.
async fn refill(inner: Arc<Inner>, topic: Arc<str>, id: u64, top: u64) {
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
        let events = match inner.range(&topic, from).await {
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
            // Nothing after `last` in the stream: whatever lies between it and the next event
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

/// The node's publisher: sends what is queued as one pipeline, then the next batch (what
/// queued meanwhile), so publishes keep their call order and share round trips.
async fn send_publishes(inner: Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        let batch: Vec<_> = {
            let mut q = me.publishes.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.len().min(PUBLISH_BATCH);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            // Wakes for the next publish, or once a second to notice the broker was dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), me.publishes.ready.notified()).await;
            continue;
        }
        me.send_batch(batch).await;
    }
}

/// The fan-out task: reads pushes from the pub/sub connection (bounded channel).
async fn read_pushes(inner: Weak<Inner>, mut rx: mpsc::Receiver<PushInfo>, generation: u64) {
    while let Some(info) = rx.recv().await {
        let Some(me) = inner.upgrade() else { return };
        if me.generation.load(Ordering::Relaxed) != generation {
            // A replaced connection's leftovers: the resync after the reconnection covers them.
            return;
        }
        let text = |v: &redis::Value| -> Option<String> {
            match v {
                redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                redis::Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            }
        };
        match info.kind {
            PushKind::Message => {
                if let [ch, body] = &info.data[..] {
                    if let (Some(ch), Some(body)) = (text(ch), text(body)) {
                        if let Some(topic) = ch.strip_prefix(&format!("{}:c:", me.settings.prefix)) {
                            me.on_message(topic, &body);
                        }
                    }
                }
            }
            PushKind::PMessage => {
                if let [glob, ch, body] = &info.data[..] {
                    if let (Some(glob), Some(ch), Some(body)) = (text(glob), text(ch), text(body)) {
                        me.on_pattern_message(&glob, &ch, &body);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Health checks, reconnection with backoff, heartbeats and the periodic top check.
async fn supervise(inner: Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut last_beat = Instant::now();
    let mut last_check = Instant::now();
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.up.load(Ordering::Acquire) {
            let period = me.settings.node_ttl / 3;
            let timeout = me.settings.command_timeout;
            let ok = ping(&me, timeout).await;
            if !ok {
                me.down("Redis did not answer a ping in time");
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
                        tracing::warn!(error = %e, "stream top check failed");
                    }
                }
            }
            // Holds the broker for at most a second after its last user dropped it.
            let _ = tokio::time::timeout(Duration::from_secs(1).min(period), me.kick.notified()).await;
            continue;
        }
        // Down: reconnect with backoff.
        match Inner::open(&me).await {
            Ok(()) => {
                me.up.store(true, Ordering::Release);
                match me.resync().await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        me.metrics.cluster_reconnects.fetch_add(1, Ordering::Relaxed);
                        *me.reason.lock().unwrap_or_else(|e| e.into_inner()) = String::new();
                        let _ = me.heartbeat().await;
                        tracing::info!("Redis broker reconnected");
                    }
                    Err(e) => {
                        me.down(&format!("resync after reconnect failed: {e}"));
                        drop(me);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            Err(e) => {
                me.down(&format!("Redis: {e}"));
                drop(me);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// PING both connections.
async fn ping(me: &Inner, timeout: Duration) -> bool {
    let (cmd, ps) = {
        let l = me.link.read().unwrap_or_else(|e| e.into_inner());
        (l.cmd.clone(), l.pubsub.clone())
    };
    let (Some(mut cmd), Some(mut ps)) = (cmd, ps) else { return false };
    let one = async {
        let a: Result<String, _> = redis::cmd("PING").query_async(&mut cmd).await;
        let b: Result<redis::Value, _> = redis::cmd("PING").query_async(&mut ps).await;
        a.is_ok() && b.is_ok()
    };
    tokio::time::timeout(timeout, one).await.unwrap_or(false)
}

impl Broker for RedisBroker {
    fn publish<'a>(&'a self, topic: &'a str, payload: Value, id: Option<String>) -> BrokerFuture<'a, Position> {
        self.inner.submit(topic, &payload, id.as_deref())
    }

    fn publish_owned(
        self: Arc<Self>,
        topic: String,
        payload: Value,
        id: Option<String>,
    ) -> BrokerFuture<'static, Position> {
        self.inner.submit(&topic, &payload, id.as_deref())
    }

    fn subscribe<'a>(
        &'a self,
        sub: &'a Arc<Subscriber>,
        target: &'a Pattern,
        start: Start<'a>,
        presence: bool,
    ) -> BrokerFuture<'a, SubscribeOutcome> {
        Box::pin(self.inner.subscribe(sub, target, start, presence))
    }

    fn unsubscribe<'a>(&'a self, sub: &'a Arc<Subscriber>, target: &'a Pattern) -> BrokerFuture<'a, bool> {
        Box::pin(async move {
            match self.inner.unsubscribe_local(sub, target) {
                Some(c) => {
                    self.inner.cleanup(c).await;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn presence<'a>(&'a self, topic: &'a str, limit: usize) -> BrokerFuture<'a, (usize, Vec<Member>)> {
        Box::pin(self.inner.presence(topic, limit))
    }

    fn remove_all(&self, sub: &Arc<Subscriber>, targets: &[Pattern]) {
        let work: Vec<Cleanup> = targets.iter().filter_map(|t| self.inner.unsubscribe_local(sub, t)).collect();
        if work.is_empty() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            for c in work {
                inner.cleanup(c).await;
            }
        });
    }

    fn topic_count(&self) -> usize {
        self.inner.topics.load(Ordering::Relaxed)
    }

    fn maintain(&self, _now: Instant) -> BrokerFuture<'_, ()> {
        // Redis trims history itself (stream caps and TTLs); the node's own upkeep runs in its
        // supervisor task.
        Box::pin(std::future::ready(Ok(())))
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn health(&self) -> BrokerHealth {
        if self.inner.up.load(Ordering::Acquire) {
            BrokerHealth::Ok
        } else {
            BrokerHealth::Degraded(self.inner.reason.lock().unwrap_or_else(|e| e.into_inner()).clone())
        }
    }

    fn cluster(&self) -> Option<ClusterInfo> {
        Some(ClusterInfo {
            broker: "redis",
            node: self.inner.settings.node.clone(),
            state: match self.health() {
                BrokerHealth::Ok => "ok".into(),
                BrokerHealth::Degraded(r) => format!("degraded: {r}"),
            },
            nodes: self.inner.nodes_alive.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_cover_their_patterns() {
        let g = |p: &str| glob_of("weft", &Pattern::parse(p).unwrap());
        assert_eq!(g("chat.*"), "weft:c:chat.*");
        assert_eq!(g("chat.>"), "weft:c:chat.*");
        assert_eq!(g("*.x"), "weft:c:*.x");
        assert!(glob_matches("weft:c:chat.*", "weft:c:chat.a"));
        assert!(glob_matches("weft:c:chat.*", "weft:c:chat.a.b"));
        assert!(!glob_matches("weft:c:chat.*", "weft:c:chatx"));
        assert!(glob_matches("weft:c:*.x", "weft:c:a.x"));
        assert!(!glob_matches("weft:c:*.x", "weft:c:a.y"));
        assert!(glob_matches("weft:c:*", "weft:c:anything"));
        assert!(glob_matches("weft:c:a.*.c", "weft:c:a.b.c"));
        assert!(!glob_matches("weft:c:a.*.c", "weft:c:a.b.d"));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn cluster_events_parse_and_keep_their_json() {
        let t: Arc<str> = "chat.a".into();
        let ev = parse_event(&t, 7, "ab12\n1700000000000\n\n{\"x\": [1, 2]}").unwrap();
        assert_eq!((ev.offset, &*ev.epoch, ev.time), (7, "ab12", 1_700_000_000_000));
        assert_eq!(ev.payload, serde_json::json!({"x": [1, 2]}));
        let frame = ev.encoded(crate::wire::Format::Json).plain_frame();
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["id"], "ab12-7");
        assert_eq!(v["payload"], serde_json::json!({"x": [1, 2]}));
        assert!(parse_event(&t, 1, "e\nnot-a-time\n\n1").is_none());
        let with_id = parse_event(&t, 1, "e\n5\nmy-id\n\"a\\nb\"").unwrap();
        assert_eq!(with_id.wire_id(), "my-id");
        assert_eq!(with_id.payload, serde_json::json!("a\nb"));
    }
}
