//! The Redis backend. Redis assigns every topic's `(epoch, offset)` in one script per publish,
//! keeps history in a capped stream per topic, and carries events to the nodes that have
//! subscribers for the topic (one pub/sub channel per topic). Keys are in `docs/CLUSTER.md`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisError};
use tokio::sync::{Notify, mpsc};

use super::redis_scripts as scripts;
use super::{
    Backend, ClusterSettings, DeadList, DeadRecord, Health, Heartbeat, Inbound, Outgoing, PAGE, QueueBudget, Reply,
    new_epoch, parse_time_field, redact, time_field,
};
use crate::broker::{BrokerError, BrokerFuture};
use crate::metrics::Metrics;
use crate::topic::Pattern;
use crate::wire::{Event, Member, Position, now_ms};

/// Most publishes sent in one pipeline.
const PUBLISH_BATCH: usize = 256;

type PublishReply = tokio::sync::oneshot::Sender<Result<Position, BrokerError>>;

/// Publishes waiting for the node's publisher task, in call order (within `PUBLISH_QUEUE`
/// and `publish_queue_bytes`).
#[derive(Default)]
struct PublishQueue {
    queue: Mutex<(VecDeque<(Outgoing, PublishReply)>, QueueBudget)>,
    ready: Notify,
}

#[derive(Default)]
struct Link {
    /// Commands.
    cmd: Option<MultiplexedConnection>,
    /// Pub/sub (RESP3 pushes into a bounded channel).
    pubsub: Option<MultiplexedConnection>,
    /// The era of the Redis server both connections reach (see [`era_of`]).
    era: Arc<str>,
}

/// Where the Redis master is.
enum Target {
    /// One address.
    Direct(redis::Client),
    /// Asked of Redis Sentinel at every (re)connection, so the node follows a failover.
    Sentinel {
        sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
        master: String,
        node: redis::sentinel::SentinelNodeConnectionInfo,
    },
}

impl Target {
    /// `redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db][?sentinel_password=P]`:
    /// the sentinels' addresses and the master's name; the credentials and database are the
    /// master's.
    fn sentinel(url: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("bad Redis Sentinel URL {}: {why}", redact(url));
        let rest = url.strip_prefix("redis+sentinel://").ok_or_else(|| bad("it must start with redis+sentinel://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, rest) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("the master's name is missing (…/MASTER)"))?;
        let (master, db) = path.split_once('/').unwrap_or((path, "0"));
        if master.is_empty() {
            return Err(bad("the master's name is missing (…/MASTER)"));
        }
        let mut sentinel_auth = String::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("sentinel_password", p)) => sentinel_auth = format!(":{p}@"),
                // Not echoed: a password with an unencoded '?' would end up here.
                _ => return Err(bad("unknown parameter (sentinel_password is the only one)")),
            }
        }
        let sentinels: Vec<redis::ConnectionInfo> = hosts
            .split(',')
            .map(|h| redis::IntoConnectionInfo::into_connection_info(format!("redis://{sentinel_auth}{h}").as_str()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e.to_string()))?;
        let first = hosts.split(',').next().unwrap_or(hosts);
        let master_info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://{auth}{first}/{db}").as_str())
                .map_err(|e| bad(&e.to_string()))?;
        let node = redis::sentinel::SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(master_info.redis_settings().clone())
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let sentinel = redis::sentinel::Sentinel::build(sentinels).map_err(|e| bad(&e.to_string()))?;
        Ok(Target::Sentinel { sentinel: tokio::sync::Mutex::new(sentinel), master: master.to_owned(), node })
    }

    /// A client for the master (asking the sentinels where it is now).
    async fn client(&self) -> Result<redis::Client, String> {
        match self {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel { sentinel, master, node } => sentinel
                .lock()
                .await
                .async_master_for(master, Some(node))
                .await
                .map_err(|e| format!("no master {master:?} from Redis Sentinel: {e}")),
        }
    }
}

/// The era of a Redis server: its run id (new at every start) and replication id (new at every
/// promotion of a replica). Positions assigned in one era are trusted in that era only: after a
/// restart or a failover the server may lack publishes it acknowledged (asynchronous
/// replication, or persistence behind the last writes), so every topic starts a new epoch
/// rather than hand the lost offsets to other events. Refuses a server that is not a master.
async fn era_of(conn: &mut MultiplexedConnection) -> Result<Arc<str>, String> {
    let mut fields = std::collections::HashMap::new();
    for section in ["server", "replication"] {
        let info: String =
            redis::cmd("INFO").arg(section).query_async(conn).await.map_err(|e| format!("INFO {section}: {e}"))?;
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.to_owned(), v.trim().to_owned());
            }
        }
    }
    match fields.get("role").map(String::as_str) {
        Some("master") => {}
        role => {
            return Err(format!(
                "the server is a replica (role {}), not the master; give the master's address, or its sentinels with redis+sentinel://",
                role.unwrap_or("unknown")
            ));
        }
    }
    let id = |k: &str| fields.get(k).map(|v| v.chars().take(16).collect::<String>()).unwrap_or_default();
    let (run, repl) = (id("run_id"), id("master_replid"));
    if run.is_empty() {
        return Err("INFO has no run_id".into());
    }
    Ok(format!("{run}{repl}").into())
}

struct Inner {
    settings: ClusterSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    target: Target,
    link: RwLock<Link>,
    generation: AtomicU64,
    publishes: PublishQueue,
}

/// The wire to Redis (see [`RedisBroker`](super::RedisBroker)).
pub struct RedisBackend {
    inner: Arc<Inner>,
}

/// Why a connection to Redis could not be opened.
#[derive(Debug)]
enum OpenError {
    Redis(RedisError),
    /// The server answered but cannot be this node's broker (a replica).
    Refused(String),
}

impl From<RedisError> for OpenError {
    fn from(e: RedisError) -> Self {
        OpenError::Redis(e)
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Redis(e) => e.fmt(f),
            OpenError::Refused(why) => f.write_str(why),
        }
    }
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
    let (time, priority) = parse_time_field(it.next()?)?;
    let id = it.next()?;
    let payload = it.next()?;
    let id = (!id.is_empty()).then(|| id.into());
    Event::from_cluster(Arc::clone(topic), offset, epoch.into(), id, time, priority, payload).ok().map(Arc::new)
}

impl RedisBackend {
    pub(super) fn new(settings: &ClusterSettings, health: Arc<Health>, metrics: Arc<Metrics>) -> Result<Self, String> {
        let target = if settings.url.starts_with("redis+sentinel://") {
            if settings.ca_file.is_some() {
                return Err(
                    "a broker CA file is for rediss:// (TLS) URLs; TLS through Redis Sentinel is not supported".into(),
                );
            }
            Target::sentinel(&settings.url)?
        } else {
            Target::Direct(Self::direct_client(settings)?)
        };
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            metrics,
            health,
            target,
            link: RwLock::new(Link::default()),
            generation: AtomicU64::new(0),
            publishes: PublishQueue::default(),
        });
        tokio::spawn(send_publishes(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    fn direct_client(settings: &ClusterSettings) -> Result<redis::Client, String> {
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
        Ok(client)
    }
}

impl Inner {
    fn key(&self, kind: &str, topic: &str) -> String {
        format!("{}:{kind}:{topic}", self.settings.prefix)
    }

    fn meta_ttl(&self) -> u64 {
        self.settings.meta_ttl().as_secs()
    }

    fn cmd(&self) -> Result<MultiplexedConnection, BrokerError> {
        if !self.health.is_up() {
            return Err(self.health.unavailable());
        }
        self.cmd_any()
    }

    /// The command connection with the era of the server it reaches (captured together: a
    /// reconnection replaces both).
    fn cmd_era(&self, any: bool) -> Result<(MultiplexedConnection, Arc<str>), BrokerError> {
        if !any && !self.health.is_up() {
            return Err(self.health.unavailable());
        }
        let l = self.link.read().unwrap_or_else(|e| e.into_inner());
        let cmd = l.cmd.clone().ok_or_else(|| self.health.unavailable())?;
        Ok((cmd, Arc::clone(&l.era)))
    }

    /// The command connection, even while the node counts as down (the supervisor's own
    /// requests during reconnection).
    fn cmd_any(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).cmd.clone().ok_or_else(|| self.health.unavailable())
    }

    fn pubsub(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).pubsub.clone().ok_or_else(|| self.health.unavailable())
    }

    /// Map a Redis failure: a lost link marks the broker down (error 5003); anything else is
    /// error 5000.
    fn failed(&self, e: RedisError) -> BrokerError {
        if is_link_error(&e) {
            self.health.down(&format!("Redis: {e}"));
            self.health.unavailable()
        } else if matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING")) {
            // A failover demoted the server (or it is loading its data after a restart): find
            // the master again (through the sentinels) and start over from its era.
            self.health.down(&format!("Redis is not a master it can write to now ({e})"));
            self.health.unavailable()
        } else {
            BrokerError::failed(format!("Redis: {e}"))
        }
    }

    /// Open both connections, the pub/sub one with its pushes into a bounded channel read by a
    /// fan-out task.
    async fn open(self: &Arc<Self>, inbound: Weak<dyn Inbound>) -> Result<(), String> {
        let client = tokio::time::timeout(self.settings.command_timeout * 2, self.target.client())
            .await
            .map_err(|_| "timed out asking Redis Sentinel for the master".to_owned())??;
        self.open_on(&client, inbound).await.map_err(|e| e.to_string())
    }

    async fn open_on(self: &Arc<Self>, client: &redis::Client, inbound: Weak<dyn Inbound>) -> Result<(), OpenError> {
        let timeout = Some(self.settings.command_timeout);
        let cfg = AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
        let mut cmd = client.get_multiplexed_async_connection_with_config(&cfg).await?;
        let era = era_of(&mut cmd).await.map_err(OpenError::Refused)?;
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
        let (tx, rx) = mpsc::channel::<PushInfo>(self.settings.pubsub_buffer.max(16));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let weak = Arc::downgrade(self);
        let buffer =
            InboundBuffer { tx, metrics: Arc::clone(&self.metrics), budget: self.settings.inbound_bytes as u64 };
        let push = move |info: PushInfo| -> Result<(), ()> {
            if info.kind == PushKind::Disconnection {
                if let Some(me) = weak.upgrade() {
                    if me.generation.load(Ordering::Relaxed) == generation {
                        me.health.down("the pub/sub connection closed");
                    }
                }
                return Ok(());
            }
            buffer.offer(info)
        };
        let info = client.get_connection_info().clone();
        let redis_info = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let ps_client = redis::Client::open(info.set_redis_settings(redis_info))?;
        let pcfg = cfg.set_push_sender(push);
        let pubsub = ps_client.get_multiplexed_async_connection_with_config(&pcfg).await?;
        tokio::spawn(read_pushes(Arc::downgrade(self), inbound, rx, generation, Arc::clone(&self.metrics)));
        *self.link.write().unwrap_or_else(|e| e.into_inner()) = Link { cmd: Some(cmd), pubsub: Some(pubsub), era };
        Ok(())
    }

    /// Queue a publish for the node's publisher task (which sends queued publishes to Redis in
    /// pipelines, in call order) and return the wait for its position.
    fn submit(&self, out: Outgoing) -> BrokerFuture<'static, Position> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = self.publishes.queue.lock().unwrap_or_else(|e| e.into_inner());
            let (items, budget) = &mut *q;
            if let Err(e) = budget.take(&out, &self.settings, &self.metrics) {
                return Box::pin(std::future::ready(Err(e)));
            }
            items.push_back((out, tx));
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
    async fn send_batch(&self, batch: Vec<(Outgoing, PublishReply)>) {
        let (mut conn, era) = match self.cmd_era(false) {
            Ok(c) => c,
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let (ttl, meta_ttl) = (self.settings.history_ttl.as_secs().max(1), self.meta_ttl());
        for (out, _) in &batch {
            let body =
                format!("{}\n{}\n{}", time_field(out.time, out.priority), out.id.as_deref().unwrap_or(""), out.payload);
            pipe.cmd("EVALSHA")
                .arg(scripts::PUBLISH.get_hash())
                .arg(2)
                .arg(self.key("m", &out.topic))
                .arg(self.key("s", &out.topic))
                .arg(self.key("c", &out.topic))
                .arg(body)
                .arg(self.settings.history_size)
                .arg(ttl)
                .arg(meta_ttl)
                .arg(new_epoch())
                .arg(&*era);
        }
        let results: Result<Vec<redis::RedisResult<(u64, String)>>, _> = pipe.query_async(&mut conn).await;
        match results {
            Ok(results) => {
                let mut noscript = false;
                for ((_, tx), r) in batch.into_iter().zip(results) {
                    noscript |= r.as_ref().err().and_then(|e| e.code()) == Some("NOSCRIPT");
                    let _ = tx.send(r.map(|(offset, epoch)| Position { offset, epoch }).map_err(|e| self.failed(e)));
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
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
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

    /// The shared dead-letter store's keys (see [`scripts::DL_PUSH`]).
    fn dead_keys(&self, script: &'static redis::Script) -> redis::ScriptInvocation<'static> {
        let mut inv = script.prepare_invoke();
        for k in ["dl:o", "dl:d", "dl:k", "dl:m", "dl:t"] {
            inv.key(format!("{}:{k}", self.settings.prefix));
        }
        inv
    }

    async fn leave(&self, topic: &str, session: &str) -> Result<(), BrokerError> {
        let mut conn = self.cmd_any()?;
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
}

impl Backend for RedisBackend {
    const NAME: &'static str = "redis";
    const TITLE: &'static str = "Redis";

    fn open(&self, inbound: Weak<dyn Inbound>) -> Reply<'_, ()> {
        Box::pin(async move { self.inner.open(inbound).await.map_err(BrokerError::unavailable) })
    }

    fn ping(&self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let (cmd, ps) = {
                let l = self.inner.link.read().unwrap_or_else(|e| e.into_inner());
                (l.cmd.clone(), l.pubsub.clone())
            };
            let (Some(mut cmd), Some(mut ps)) = (cmd, ps) else { return false };
            let one = async {
                let a: Result<String, _> = redis::cmd("PING").query_async(&mut cmd).await;
                let b: Result<redis::Value, _> = redis::cmd("PING").query_async(&mut ps).await;
                a.is_ok() && b.is_ok()
            };
            tokio::time::timeout(self.inner.settings.command_timeout, one).await.unwrap_or(false)
        })
    }

    fn publish(&self, out: Outgoing) -> BrokerFuture<'static, Position> {
        self.inner.submit(out)
    }

    fn position<'a>(&'a self, topic: &'a str) -> Reply<'a, (u64, String)> {
        Box::pin(async move {
            let me = &self.inner;
            let (mut conn, era) = me.cmd_era(true)?;
            scripts::POSITION
                .key(me.key("m", topic))
                .key(me.key("s", topic))
                .arg(new_epoch())
                .arg(me.meta_ttl())
                .arg(&*era)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))
        })
    }

    fn range<'a>(&'a self, topic: &'a Arc<str>, from: u64) -> Reply<'a, Vec<Arc<Event>>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(me.key("s", topic))
                .arg(format!("{from}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            Ok(me.parse_entries(topic, entries))
        })
    }

    fn recent<'a>(&'a self, topic: &'a Arc<str>, n: usize) -> Reply<'a, Vec<Arc<Event>>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let mut entries: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                .arg(me.key("s", topic))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(n.min(PAGE))
                .query_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            entries.reverse();
            Ok(me.parse_entries(topic, entries))
        })
    }

    fn tops<'a>(&'a self, topics: &'a [Arc<str>]) -> Reply<'a, Vec<Option<(String, u64)>>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let mut pipe = redis::pipe();
            for t in topics {
                pipe.cmd("HMGET").arg(me.key("m", t)).arg("e").arg("o");
            }
            let tops: Vec<(Option<String>, Option<u64>)> =
                pipe.query_async(&mut conn).await.map_err(|e| me.failed(e))?;
            Ok(tops.into_iter().map(|(e, o)| e.zip(o)).collect())
        })
    }

    fn pattern_key(&self, p: &Pattern) -> String {
        glob_of(&self.inner.settings.prefix, p)
    }

    fn key_matches(&self, key: &str, topic: &str) -> bool {
        glob_matches(key, &self.inner.key("c", topic))
    }

    fn listen<'a>(&'a self, target: &'a str, pattern: bool) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            let mut ps = me.pubsub()?;
            let r = if pattern { ps.psubscribe(target).await } else { ps.subscribe(me.key("c", target)).await };
            r.map_err(|e| me.failed(e))
        })
    }

    fn unlisten<'a>(&'a self, target: &'a str, pattern: bool) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            let mut ps = me.pubsub()?;
            let r = if pattern { ps.punsubscribe(target).await } else { ps.unsubscribe(me.key("c", target)).await };
            r.map_err(|e| me.failed(e))
        })
    }

    fn join<'a>(&'a self, topic: &'a str, member: &'a Member) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd_any()?;
            let json = serde_json::to_string(member).map_err(|e| BrokerError::failed(e.to_string()))?;
            let _: i64 = scripts::JOIN
                .key(me.key("p", topic))
                .key(me.key("nm", &me.settings.node))
                .arg(&*member.session)
                .arg(json)
                .arg(me.key("c", topic))
                .arg(format!("{topic}\n{}", member.session))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            Ok(())
        })
    }

    fn leave<'a>(&'a self, topic: &'a str, session: &'a str) -> Reply<'a, ()> {
        Box::pin(self.inner.leave(topic, session))
    }

    fn members<'a>(&'a self, topic: &'a str, limit: usize) -> Reply<'a, (usize, Vec<Member>)> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let key = me.key("p", topic);
            let count: usize = redis::cmd("HLEN").arg(&key).query_async(&mut conn).await.map_err(|e| me.failed(e))?;
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
                    .map_err(|e| me.failed(e))?;
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
        })
    }

    fn own_members(&self) -> Reply<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd_any()?;
            let listed: Vec<String> = redis::cmd("SMEMBERS")
                .arg(me.key("nm", &me.settings.node))
                .query_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            Ok(listed
                .into_iter()
                .filter_map(|e| e.split_once('\n').map(|(t, s)| (t.to_owned(), s.to_owned())))
                .collect())
        })
    }

    fn heartbeat(&self) -> Reply<'_, Heartbeat> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd_any()?;
            let nodes = format!("{}:nodes", me.settings.prefix);
            let out: Vec<Value2> = scripts::HEARTBEAT
                .key(&nodes)
                .arg(&me.settings.node)
                .arg(me.settings.node_ttl.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            let mut beat = Heartbeat::default();
            let mut it = out.into_iter();
            if let Some(Value2::Int(alive)) = it.next() {
                beat.alive = alive as usize;
            }
            beat.lapsed = matches!(it.next(), Some(Value2::Int(0)));
            beat.dead = it.filter_map(|v| if let Value2::Str(s) = v { Some(s) } else { None }).collect();
            Ok(beat)
        })
    }

    fn dead_store(&self) -> bool {
        true
    }

    fn dead_push<'a>(&'a self, letters: &'a [DeadRecord], bounds: (usize, usize)) -> Reply<'a, Vec<u64>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let mut inv = me.dead_keys(&scripts::DL_PUSH);
            inv.arg(bounds.0).arg(bounds.1).arg((bounds.0 / 10).max(1));
            for l in letters {
                inv.arg(&l.token).arg(if l.snapshot { "s" } else { "p" }).arg(&l.json);
            }
            inv.invoke_async(&mut conn).await.map_err(|e| me.failed(e))
        })
    }

    fn dead_list(&self, after: u64, limit: usize) -> Reply<'_, DeadList> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let out: Vec<redis::Value> = me
                .dead_keys(&scripts::DL_LIST)
                .arg(after)
                .arg(limit)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            let int = |v: &redis::Value| if let redis::Value::Int(i) = v { (*i).max(0) as u64 } else { 0 };
            let (count, bytes, dropped) = match &out[..] {
                [c, b, d, ..] => (int(c) as usize, int(b) as usize, int(d)),
                _ => return Err(BrokerError::failed("Redis: a short dead-letter listing")),
            };
            let mut items = Vec::new();
            for pair in out[3..].chunks(2) {
                if let [id, redis::Value::BulkString(v)] = pair {
                    items.push((int(id), untoken(v)));
                }
            }
            Ok(DeadList { count, bytes, dropped, items })
        })
    }

    fn dead_claim(&self, id: u64) -> Reply<'_, Option<String>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let v: Option<Vec<u8>> =
                me.dead_keys(&scripts::DL_CLAIM).arg(id).invoke_async(&mut conn).await.map_err(|e| me.failed(e))?;
            Ok(v.map(|v| untoken(&v)))
        })
    }

    fn dead_restore<'a>(&'a self, id: u64, letter: &'a DeadRecord) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let _: i64 = me
                .dead_keys(&scripts::DL_RESTORE)
                .arg(id)
                .arg(if letter.snapshot { "s" } else { "p" })
                .arg(format!("{}\n{}", letter.token, letter.json))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| me.failed(e))?;
            Ok(())
        })
    }

    fn dead_purge<'a>(&'a self, ids: Option<&'a [u64]>) -> Reply<'a, usize> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd()?;
            let mut inv = me.dead_keys(&scripts::DL_PURGE);
            match ids {
                None => {
                    inv.arg("*");
                }
                Some(ids) => {
                    for id in ids {
                        inv.arg(id);
                    }
                }
            }
            inv.invoke_async(&mut conn).await.map_err(|e| me.failed(e))
        })
    }

    fn sweep<'a>(&'a self, node: &'a str) -> Reply<'a, Option<u64>> {
        Box::pin(async move {
            let me = &self.inner;
            let mut conn = me.cmd_any()?;
            let nodes = format!("{}:nodes", me.settings.prefix);
            let mut total = 0u64;
            loop {
                let n: i64 = scripts::SWEEP
                    .key(&nodes)
                    .key(me.key("nm", node))
                    .arg(node)
                    .arg(&me.settings.prefix)
                    .arg(me.settings.node_ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| me.failed(e))?;
                if n < 0 {
                    return Ok((total > 0).then_some(total)); // alive again
                }
                total += n as u64;
                if n < 500 {
                    return Ok(Some(total));
                }
            }
        })
    }
}

use std::future::Future;

/// The JSON of a stored dead letter (`token\njson`).
fn untoken(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.split_once('\n').map_or(s.as_ref(), |(_, json)| json).to_owned()
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

/// The node's publisher: sends what is queued as one pipeline, then the next batch (what
/// queued meanwhile), so publishes keep their call order and share round trips.
async fn send_publishes(inner: Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        let batch: Vec<_> = {
            let mut q = me.publishes.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.0.len().min(PUBLISH_BATCH);
            q.0.drain(..n).collect()
        };
        if batch.is_empty() {
            // Wakes for the next publish, or once a second to notice the broker was dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), me.publishes.ready.notified()).await;
            continue;
        }
        // Their room is given back once they are answered, not when they leave the queue:
        // what is on its way to Redis counts too.
        let held: usize = batch.iter().map(|(o, _)| o.size()).sum();
        let n = batch.len();
        me.send_batch(batch).await;
        me.publishes.queue.lock().unwrap_or_else(|e| e.into_inner()).1.give_sized(n, held, &me.metrics);
    }
}

/// The pub/sub buffer's sending side, bounded in messages and in bytes (`inbound_bytes`, over
/// what waits in it, in `cluster_inbound_bytes`): a message past either bound is dropped,
/// counted, and refilled from history. [`read_pushes`] gives the bytes back.
struct InboundBuffer {
    tx: mpsc::Sender<PushInfo>,
    metrics: Arc<Metrics>,
    budget: u64,
}

impl InboundBuffer {
    /// Err when the reader is gone (the connection is being replaced).
    fn offer(&self, info: PushInfo) -> Result<(), ()> {
        let size = push_size(&info);
        let held = &self.metrics.cluster_inbound_bytes;
        if held.load(Ordering::Relaxed) + size > self.budget {
            self.metrics.cluster_pubsub_dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        held.fetch_add(size, Ordering::Relaxed);
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                held.fetch_sub(size, Ordering::Relaxed);
                self.metrics.cluster_pubsub_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                held.fetch_sub(size, Ordering::Relaxed);
                Err(())
            }
        }
    }
}

/// The bytes a pub/sub message holds while it waits for the fan-out.
fn push_size(info: &PushInfo) -> u64 {
    let data: usize = info
        .data
        .iter()
        .map(|v| match v {
            redis::Value::BulkString(b) => b.len(),
            redis::Value::SimpleString(s) => s.len(),
            _ => 16,
        })
        .sum();
    (data + 64) as u64
}

/// The fan-out task: reads pushes from the pub/sub connection (bounded channel), giving back
/// their bytes as it goes and for what is left when it stops.
async fn read_pushes(
    inner: Weak<Inner>,
    inbound: Weak<dyn Inbound>,
    mut rx: mpsc::Receiver<PushInfo>,
    generation: u64,
    metrics: Arc<Metrics>,
) {
    while let Some(info) = rx.recv().await {
        let size = push_size(&info);
        let go_on = fan_out(&inner, &inbound, &info, generation);
        metrics.cluster_inbound_bytes.fetch_sub(size, Ordering::Relaxed);
        if !go_on {
            break;
        }
    }
    rx.close();
    while let Ok(info) = rx.try_recv() {
        metrics.cluster_inbound_bytes.fetch_sub(push_size(&info), Ordering::Relaxed);
    }
}

/// Hand one pub/sub message to the node; false when this connection's reader should stop.
fn fan_out(inner: &Weak<Inner>, inbound: &Weak<dyn Inbound>, info: &PushInfo, generation: u64) -> bool {
    let (Some(me), Some(node)) = (inner.upgrade(), inbound.upgrade()) else { return false };
    if me.generation.load(Ordering::Relaxed) != generation {
        // A replaced connection's leftovers: the resync after the reconnection covers them.
        return false;
    }
    fn text(v: &redis::Value) -> Option<&str> {
        match v {
            redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
            redis::Value::SimpleString(s) => Some(s),
            _ => None,
        }
    }
    let channel_prefix = format!("{}:c:", me.settings.prefix);
    match (info.kind.clone(), &info.data[..]) {
        (PushKind::Message, [ch, body]) => {
            if let (Some(ch), Some(body)) = (text(ch), text(body)) {
                if let Some(topic) = ch.strip_prefix(&channel_prefix) {
                    on_message(&*node, topic, body);
                }
            }
        }
        (PushKind::PMessage, [glob, ch, body]) => {
            let (Some(glob), Some(ch), Some(body)) = (text(glob), text(ch), text(body)) else { return true };
            let Some(topic) = ch.strip_prefix(&channel_prefix) else { return true };
            let Some(("e", rest)) = body.split_once('\n') else { return true };
            let Some((offset, rest)) = rest.split_once('\n') else { return true };
            let Ok(offset) = offset.parse::<u64>() else { return true };
            if let Some(ev) = parse_event(&Arc::from(topic), offset, rest) {
                node.pattern_event(glob, ev);
            }
        }
        _ => {}
    }
    true
}

/// One pub/sub message for `topic`: an event (`e`), a join (`j`) or a leave (`l`).
fn on_message(node: &dyn Inbound, topic: &str, body: &str) {
    let Some((kind, rest)) = body.split_once('\n') else { return };
    match kind {
        "e" => {
            let Some((offset, rest)) = rest.split_once('\n') else { return };
            let Ok(offset) = offset.parse::<u64>() else { return };
            match parse_event(&Arc::from(topic), offset, rest) {
                Some(ev) => node.event(topic, ev),
                None => tracing::warn!(topic, offset, "unreadable event from Redis"),
            }
        }
        "j" | "l" => {
            if let Ok(member) = serde_json::from_str::<Member>(rest) {
                node.presence(topic, kind == "j", member);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_its_credentials() {
        let Target::Sentinel { master, node, .. } =
            Target::sentinel("redis+sentinel://u:p%40ss@10.0.0.1:26379,10.0.0.2:26380/main/3?sentinel_password=s")
                .unwrap()
        else {
            panic!("not a sentinel target")
        };
        assert_eq!(master, "main");
        let dbg = format!("{node:?}");
        assert!(dbg.contains("db: 3") && dbg.contains("\"u\""), "{dbg}");
        let err = |url: &str| match Target::sentinel(url) {
            Err(e) => e,
            Ok(_) => panic!("{url} accepted"),
        };
        assert!(err("redis+sentinel://127.0.0.1:26379").contains("master's name is missing"));
        assert!(err("redis+sentinel://127.0.0.1:26379/").contains("master's name is missing"));
        assert!(err("redis+sentinel://127.0.0.1:26379/m?tls=1").contains("unknown parameter"));
        let e = err("redis+sentinel://u:ab?cd@h:26379/m");
        assert!(!e.contains("cd@"), "{e}");
        let e = err("redis+sentinel://:secret@127.0.0.1:26379");
        assert!(!e.contains("secret"), "{e}");
    }

    /// The pub/sub buffer holds at most `inbound_bytes` (drops past it are counted, to be
    /// refilled), and the reader gives back every byte, also for what is left when it stops.
    #[tokio::test]
    async fn the_pubsub_buffer_is_bounded_in_bytes_and_gives_them_back() {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(1000);
        let buffer = InboundBuffer { tx, metrics: Arc::clone(&metrics), budget: 100_000 };
        let msg = |n: usize| PushInfo {
            kind: PushKind::Message,
            data: vec![redis::Value::BulkString(b"weft:c:t".to_vec()), redis::Value::BulkString(vec![b'x'; n])],
        };
        for _ in 0..50 {
            buffer.offer(msg(10_000)).unwrap();
        }
        let held = metrics.cluster_inbound_bytes.load(Ordering::Relaxed);
        assert!(held <= 100_000 && held > 80_000, "{held}");
        assert_eq!(metrics.cluster_pubsub_dropped.load(Ordering::Relaxed), 41);
        let (inner, inbound): (Weak<Inner>, Weak<dyn Inbound>) = (Weak::new(), Weak::<Nobody>::new());
        // A reader whose node is gone stops at the first message and gives back all of them.
        read_pushes(inner, inbound, rx, 1, Arc::clone(&metrics)).await;
        assert_eq!(metrics.cluster_inbound_bytes.load(Ordering::Relaxed), 0);
        assert!(buffer.offer(msg(10)).is_err(), "the reader is gone");
        assert_eq!(metrics.cluster_inbound_bytes.load(Ordering::Relaxed), 0);
    }

    struct Nobody;
    impl Inbound for Nobody {
        fn event(&self, _: &str, _: Arc<Event>) {}
        fn presence(&self, _: &str, _: bool, _: Member) {}
        fn pattern_event(&self, _: &str, _: Arc<Event>) {}
    }

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
    fn cluster_events_parse_and_keep_their_json() {
        let t: Arc<str> = "chat.a".into();
        let ev = parse_event(&t, 7, "ab12\n1700000000000\n\n{\"x\": [1, 2]}").unwrap();
        assert_eq!((ev.offset, &*ev.epoch, ev.time), (7, "ab12", 1_700_000_000_000));
        assert_eq!(ev.payload, serde_json::json!({"x": [1, 2]}));
        let frame = ev.encoded(crate::wire::Format::Json).plain_frame();
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["id"], "ab12-7");
        assert_eq!(v["payload"], serde_json::json!({"x": [1, 2]}));
        assert!(parse_event(&t, 1, "e\nnot-a-time\n\n1").is_none());
        let with_id = parse_event(&t, 1, "e\n5\nmy-id\n\"a\\nb\"").unwrap();
        assert_eq!(with_id.wire_id(), "my-id");
        assert_eq!(with_id.payload, serde_json::json!("a\nb"));
    }
}
