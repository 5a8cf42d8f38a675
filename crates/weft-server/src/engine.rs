//! The engine: shared state, the embedding API, the upgrade path and the accept loop.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::EngineConfig;
use crate::auth::{Identity, query_param};
use crate::broker::{Broker, MemoryBroker, TopicSettings};
use crate::metrics::{Metrics, Stats};
use crate::topic::validate_topic;
use crate::wire::{ErrorBody, ErrorCode, Position, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};

pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) started: Instant,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) next_session: AtomicU64,
    pub(crate) node: u32,
    pub(crate) inbound: std::sync::OnceLock<mpsc::Sender<Inbound>>,
    acceptor: weft::Acceptor,
    /// `Alt-Svc` for every HTTP/1.1 and HTTP/2 response, once HTTP/3 is served.
    alt_svc: std::sync::OnceLock<http::HeaderValue>,
    /// Set once the broker has settled after a shutdown began ([`Shared::settled`]).
    settled: tokio::sync::OnceCell<()>,
    /// Snapshot provider calls in progress ([`EngineConfig::snapshot_concurrency`]).
    pub(crate) snapshot_permits: tokio::sync::Semaphore,
    /// What could not be delivered ([`crate::dead`]).
    pub(crate) dead_letters: Arc<crate::dead::DeadLetters>,
    /// One dead-letter replay at a time (two would publish a letter twice).
    replaying: tokio::sync::Mutex<()>,
    /// The key sessions hash the topics they touch with (the churn limit): random per process.
    pub(crate) churn_keys: std::collections::hash_map::RandomState,
}

impl Shared {
    /// At shutdown, before sessions close: wait (at most half the grace period, once for all
    /// sessions) until this node's own publishes have reached its subscribers, so an event
    /// published just before the shutdown is still delivered over a cluster broker.
    pub(crate) async fn settled(&self) {
        self.settled
            .get_or_init(|| async {
                let _ = self.broker.settle(self.config.shutdown_grace / 2).await;
            })
            .await;
    }
}

/// What clients tell the host application: see [`Engine::inbound`].
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A WebSocket session started.
    Connected {
        /// Session id (as in `welcome`).
        session: Arc<str>,
        /// The user (token subject, or the anonymous name).
        user: Arc<str>,
    },
    /// A client sent `{"type": "send", "payload": ...}`.
    Message {
        /// Session id.
        session: Arc<str>,
        /// User.
        user: Arc<str>,
        /// The request id, if the client gave one (the client got `sent` with it).
        id: Option<Value>,
        /// The payload, decoded from JSON or MessagePack.
        payload: Value,
    },
    /// A session ended.
    Disconnected {
        /// Session id.
        session: Arc<str>,
        /// User.
        user: Arc<str>,
    },
}

/// The real-time engine: topics, sessions, auth, history, presence, HTTP API.
///
/// Cheap to clone (an `Arc`). Create it inside a tokio runtime: it starts a small upkeep task
/// (rates, history expiry) that ends when the last clone is dropped.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use weft_server::{Engine, EngineConfig};
///
/// let engine = Engine::new(EngineConfig::default())?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let server = tokio::spawn({
///     let engine = engine.clone();
///     async move { engine.serve(listener).await }
/// });
/// // Publish from the host application:
/// let pos = engine.publish("news.world", serde_json::json!({"title": "hello"})).await?;
/// println!("published at offset {}", pos.offset);
/// engine.shutdown();
/// server.await??;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("connections", &self.shared.metrics.connections).finish_non_exhaustive()
    }
}

/// Why a publish from the host application or the HTTP API failed.
#[derive(Debug, Clone)]
pub struct PublishError(pub ErrorBody);

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for PublishError {}

impl Engine {
    /// An engine with the in-memory broker. A cluster broker (`config.broker`) has to be
    /// reached first: use [`connect`](Self::connect).
    pub fn new(config: EngineConfig) -> Result<Self, String> {
        if config.broker.as_deref().is_some_and(|b| b != "memory") {
            return Err("a cluster broker is connected with Engine::connect".into());
        }
        let metrics = Arc::new(Metrics::default());
        let settings = TopicSettings {
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            policy: config.slow_consumer,
            topic_policies: config.topic_policies.clone(),
            max_topics: config.max_topics,
            history_memory: config.history_memory,
            history_topic_bytes: config.history_topic_bytes,
        };
        let broker = Arc::new(MemoryBroker::new(settings, Arc::clone(&metrics)));
        Self::with_broker(config, broker, metrics)
    }

    /// An engine with the broker `config.broker` names: the in-memory broker when unset, or a
    /// cluster broker (`redis://`, `rediss://`: Redis; `nats://`, `tls://`: NATS with
    /// JetStream), connected before this returns; an unreachable broker is an error.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use weft_server::{Engine, EngineConfig};
    ///
    /// let config = EngineConfig { broker: Some("redis://127.0.0.1:6379".into()), ..Default::default() };
    /// let engine = Engine::connect(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: EngineConfig) -> Result<Self, String> {
        match config.broker.as_deref() {
            None | Some("memory") => Self::new(EngineConfig { broker: None, ..config }),
            Some(url) => {
                config.validate()?;
                let metrics = Arc::new(Metrics::default());
                let mut settings = crate::broker::RedisSettings::new(url);
                if let Some(n) = &config.node_name {
                    settings.node = n.clone();
                }
                settings.prefix = config.broker_prefix.clone();
                settings.ca_file = config.broker_ca_file.clone();
                settings.history_size = config.history_size;
                settings.history_ttl = config.history_ttl;
                settings.policy = config.slow_consumer;
                settings.topic_policies = config.topic_policies.clone();
                settings.max_topics = config.max_topics;
                settings.node_ttl = config.node_ttl;
                settings.inbound_bytes = config.broker_buffer_bytes;
                settings.pending_bytes = config.broker_buffer_bytes / 2;
                settings.publish_queue_bytes = config.broker_buffer_bytes / 2;
                settings.check_interval =
                    (config.node_ttl / 6).clamp(Duration::from_millis(500), Duration::from_secs(5));
                let dead = Arc::new(crate::dead::DeadLetters::new(config.dead_letter_max, config.dead_letter_bytes));
                settings.dead_letters = Arc::clone(&dead);
                let broker: Arc<dyn Broker> = if url.starts_with("nats://") || url.starts_with("tls://") {
                    Arc::new(crate::broker::NatsBroker::connect(settings, Arc::clone(&metrics)).await?)
                } else {
                    Arc::new(crate::broker::RedisBroker::connect(settings, Arc::clone(&metrics)).await?)
                };
                Self::with_parts(config, broker, metrics, dead)
            }
        }
    }

    /// An engine over another broker, which counts into `metrics`.
    pub fn with_broker(config: EngineConfig, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Result<Self, String> {
        // The broker's own store when it keeps one (a cluster broker made by the host), so what
        // it refuses is what the engine lists and replays.
        let dead = broker.dead_letters().unwrap_or_else(|| {
            Arc::new(crate::dead::DeadLetters::new(config.dead_letter_max, config.dead_letter_bytes))
        });
        Self::with_parts(config, broker, metrics, dead)
    }

    fn with_parts(
        config: EngineConfig,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        dead_letters: Arc<crate::dead::DeadLetters>,
    ) -> Result<Self, String> {
        config.validate()?;
        let acceptor =
            weft::Acceptor::new().config(config.ws_config()).subprotocols([SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK]);
        let snapshot_permits = tokio::sync::Semaphore::new(config.snapshot_concurrency);
        let shared = Arc::new(Shared {
            config,
            broker,
            metrics,
            started: Instant::now(),
            shutdown: watch::channel(false).0,
            next_session: AtomicU64::new(1),
            node: rand::random(),
            inbound: std::sync::OnceLock::new(),
            acceptor,
            alt_svc: std::sync::OnceLock::new(),
            settled: tokio::sync::OnceCell::new(),
            snapshot_permits,
            dead_letters,
            replaying: tokio::sync::Mutex::new(()),
            churn_keys: Default::default(),
        });
        tokio::spawn(upkeep(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// What `/api/stats` shows.
    pub fn stats(&self) -> Stats {
        let mut s = self.shared.metrics.stats(
            self.shared.broker.topic_count(),
            self.shared.started,
            self.shared.config.anonymous(),
        );
        s.cluster = self.shared.broker.cluster();
        s.busiest_topics = self.shared.broker.busiest(10);
        s
    }

    /// Whether the engine can serve publishes and subscribes now (what `/healthz` reports):
    /// `Degraded` while a cluster broker is unreachable.
    pub fn health(&self) -> crate::broker::BrokerHealth {
        self.shared.broker.health()
    }

    /// Open WebSocket connections (a relaxed atomic read; never blocks).
    pub fn connection_count(&self) -> usize {
        self.shared.metrics.connections.load(Ordering::Relaxed) as usize
    }

    /// Attach the host application: from now on clients may send `{"type": "send", "payload":
    /// ...}` (answered `sent`; without an application they get error 4007), and every session
    /// start, `send` and session end arrives on the returned channel, in order per session.
    ///
    /// The channel holds `capacity` events; when the application falls behind, the sessions
    /// whose events do not fit wait (they stop reading their sockets) instead of buffering
    /// without bound. Can be called once; `None` afterwards.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use weft_server::{Engine, EngineConfig, Inbound};
    ///
    /// let engine = Engine::new(EngineConfig::default())?;
    /// let mut inbound = engine.inbound(1024).expect("first call");
    /// while let Some(ev) = inbound.recv().await {
    ///     if let Inbound::Message { user, payload, .. } = ev {
    ///         println!("{user} says {payload}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn inbound(&self, capacity: usize) -> Option<mpsc::Receiver<Inbound>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.shared.inbound.set(tx).ok().map(|()| rx)
    }

    /// Publish an event on a concrete topic. Never waits for subscribers.
    pub async fn publish(&self, topic: &str, payload: Value) -> Result<Position, PublishError> {
        self.publish_with_id(topic, payload, None).await
    }

    /// Publish with the publisher's own event id.
    pub async fn publish_with_id(
        &self,
        topic: &str,
        payload: Value,
        id: Option<String>,
    ) -> Result<Position, PublishError> {
        self.publish_with(topic, payload, crate::broker::PublishMeta { id, ..Default::default() }).await
    }

    /// Publish with an event id and a priority ([`PublishMeta`](crate::broker::PublishMeta)).
    ///
    /// ```no_run
    /// # async fn run(engine: weft_server::Engine) {
    /// use weft_server::broker::PublishMeta;
    /// use weft_server::wire::Priority;
    ///
    /// let meta = PublishMeta { priority: Priority::High, ..Default::default() };
    /// engine.publish_with("alerts", serde_json::json!({"level": "red"}), meta).await.unwrap();
    /// # }
    /// ```
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: Value,
        meta: crate::broker::PublishMeta,
    ) -> Result<Position, PublishError> {
        validate_topic(topic).map_err(|e| PublishError(ErrorBody::new(ErrorCode::InvalidTopic, e.to_string())))?;
        self.shared.broker.publish(topic, payload, meta).await.map_err(|e| PublishError(e.body()))
    }

    /// The dead letters in this node's memory: publishes the cluster broker refused or lost,
    /// snapshots that failed (list and purge them here;
    /// [`replay_dead_letters`](Self::replay_dead_letters)). In cluster mode over Redis they
    /// move to the cluster's shared store once the broker takes them:
    /// [`list_dead_letters`](Self::list_dead_letters) and
    /// [`purge_dead_letters`](Self::purge_dead_letters) see both stores.
    pub fn dead_letters(&self) -> &crate::dead::DeadLetters {
        &self.shared.dead_letters
    }

    /// Up to `limit` dead letters, oldest first: with a shared store (cluster mode over
    /// Redis), the shared letters with ids above `after`, then this node's not moved yet (ids
    /// above `local_after`); otherwise this node's (ids above `after`). Counts cover both.
    pub async fn list_dead_letters(&self, after: u64, local_after: u64, limit: usize) -> crate::dead::DeadLetterPage {
        match self.shared.broker.shared_dead_letters() {
            Some(store) => crate::dead::list_all(&self.shared.dead_letters, &*store, after, local_after, limit).await,
            None => self.shared.dead_letters.list(after.max(local_after), limit),
        }
    }

    /// Remove dead letters: with a shared store, the shared ones in `ids` and this node's in
    /// `local_ids` (neither: all of both); otherwise this node's in either (neither: all).
    /// Returns how many went and, when the shared store could not be reached, why.
    pub async fn purge_dead_letters(
        &self,
        ids: Option<&[u64]>,
        local_ids: Option<&[u64]>,
    ) -> (usize, Option<ErrorBody>) {
        let local = &self.shared.dead_letters;
        match self.shared.broker.shared_dead_letters() {
            Some(store) => crate::dead::purge_all(local, &*store, ids, local_ids).await,
            None if ids.is_none() && local_ids.is_none() => (local.purge(None), None),
            None => {
                let all: Vec<u64> = ids.iter().chain(&local_ids).flat_map(|i| i.iter()).copied().collect();
                (local.purge(Some(&all)), None)
            }
        }
    }

    /// Dead letters held, over both stores (this node's only when the shared one cannot be
    /// read).
    pub async fn dead_letter_count(&self) -> usize {
        crate::dead::count_all(&self.shared.dead_letters, self.shared.broker.shared_dead_letters().as_deref()).await
    }

    /// Publish the dead-letter publishes again, oldest first (only those in `ids`, when
    /// given), each with its event id and priority; one that works leaves the store. One the
    /// engine refuses for what it is (error 4xxx) stays with that error and is passed over; the
    /// first that fails for the broker (5xxx) stops the replay: it stays, as do the letters
    /// after it, in order. Snapshot letters are left. One replay at a time on a node.
    ///
    /// In cluster mode over Redis this node's letters first move to the cluster's shared
    /// store, whose letters are replayed (`ids` name them); each is claimed before it is
    /// published, so nodes replaying at once publish each letter once. Letters this node could
    /// not move (the broker unreachable) are replayed after them when `ids` is `None`.
    ///
    /// ```no_run
    /// # async fn run(engine: weft_server::Engine) {
    /// let before = engine.dead_letters().list(0, 100);
    /// let done = engine.replay_dead_letters(None).await;
    /// println!("{} of {} replayed; {} left", done.replayed, before.count, done.remaining);
    /// # }
    /// ```
    pub async fn replay_dead_letters(&self, ids: Option<&[u64]>) -> crate::dead::ReplayOutcome {
        let _one = self.shared.replaying.lock().await;
        let dead = &self.shared.dead_letters;
        let store = self.shared.broker.shared_dead_letters();
        let (mut after, mut replayed, mut error) = (0, 0, None);
        let replay_one = |l: crate::dead::DeadLetter| async move {
            let meta = crate::broker::PublishMeta { id: l.event_id, priority: l.priority, replay: true };
            self.publish_with(&l.topic, l.payload.unwrap_or(Value::Null), meta).await.map(|_| ()).map_err(|e| e.0)
        };
        // Held throughout: no letter moves to the shared store while this node replays.
        let _moving = dead.moving.lock().await;
        if let Some(store) = &store {
            let _ = store.move_local().await;
            (replayed, error) = crate::dead::replay_shared(&**store, dead, ids, replay_one).await;
        }
        while let Some(l) =
            dead.next_publish(after, ids).filter(|_| error.is_none() && (store.is_none() || ids.is_none()))
        {
            after = l.id;
            match replay_one(l.clone()).await {
                Ok(()) => {
                    dead.delivered(l.id);
                    replayed += 1;
                }
                // Refused for what it is (a 4xxx: a name, an id, a limit): it stays, marked,
                // and the replay moves past it; the broker failing again stops the replay,
                // keeping the order of what is left.
                Err(e) if e.code < 5000 => dead.failed_again(l.id, e),
                Err(e) => {
                    dead.failed_again(l.id, e.clone());
                    error = Some(e);
                    break;
                }
            }
        }
        let remaining = crate::dead::count_all(dead, store.as_deref()).await;
        crate::dead::ReplayOutcome { replayed, remaining, error }
    }

    /// Start a graceful shutdown: stop accepting, close every connection with 1001 after
    /// writing what is queued. [`serve`](Self::serve) returns when they are gone (or after
    /// `shutdown_grace`).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Serve WebSockets (at [`WS_PATH`](crate::WS_PATH)) on the event-driven core: one
    /// [`weft::event_loop::EventLoop`] thread per listener (give them `SO_REUSEPORT` listeners
    /// on one port to spread connections over cores), no task per connection. Sessions are
    /// the same as [`serve`](Self::serve)'s — the protocol, limits, tokens, slow-consumer
    /// policies — and cost a fraction of the memory. Plain HTTP/1.1 only: the HTTP API,
    /// TLS, HTTP/2 and HTTP/3 are served by [`serve`](Self::serve) and its siblings (on
    /// another listener); other requests are answered 404 (another path) or 426.
    ///
    /// Call it inside a tokio runtime: brokers, snapshots, token expiry and the application's
    /// channel run on it. [`shutdown`](Self::shutdown) stops the loops once the broker has
    /// settled, closing every connection with 1001 after writing what it has queued.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let engine = weft_server::Engine::new(Default::default())?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
    /// let loops = engine.serve_event_loops(vec![listener], Default::default())?;
    /// println!("WebSockets on {}", loops.backend());
    /// // engine.shutdown() later; then:
    /// tokio::task::spawn_blocking(move || loops.join()).await??;
    /// # Ok(()) }
    /// ```
    pub fn serve_event_loops(
        &self,
        listeners: Vec<std::net::TcpListener>,
        config: weft::event_loop::LoopConfig,
    ) -> std::io::Result<EventLoops> {
        use weft::event_loop::EventLoop;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| std::io::Error::other("serve_event_loops needs a tokio runtime"))?;
        let config = weft::event_loop::LoopConfig { shutdown_grace: self.shared.config.shutdown_grace, ..config };
        let mut loops =
            EventLoops { handles: Vec::new(), threads: Vec::new(), backend: config.backend, fallback: None };
        for (i, listener) in listeners.into_iter().enumerate() {
            let (engine, config, rt) = (self.clone(), config.clone(), rt.clone());
            // A request head gets the time an HTTP request head gets.
            let acceptor = self.shared.acceptor.clone().handshake_timeout(self.shared.config.http_header_timeout);
            let (tx, rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new().name(format!("weft-loop-{i}")).spawn(move || {
                let handler = crate::session::EngineHandler::new(engine);
                let mut ev = match EventLoop::new(listener, acceptor, config, handler) {
                    Ok(ev) => ev,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(Default::default());
                    }
                };
                let _ = tx.send(Ok((ev.stop_handle(), ev.backend(), ev.fallback().map(str::to_owned))));
                // Brokers, snapshots and timers are reached through the runtime from here.
                let _rt = rt.enter();
                ev.run()?;
                Ok(ev.stats())
            })?;
            match rx.recv() {
                Ok(Ok((handle, backend, fallback))) => {
                    loops.handles.push(handle);
                    loops.backend = backend;
                    loops.fallback = loops.fallback.or(fallback);
                    loops.threads.push(thread);
                }
                Ok(Err(e)) => {
                    loops.stop();
                    return Err(e);
                }
                Err(_) => {
                    loops.stop();
                    return Err(std::io::Error::other("an event loop thread failed to start"));
                }
            }
        }
        // A shutdown stops the loops once the broker has settled (this node's own publishes
        // delivered), as the task-per-connection sessions wait for it.
        let (shared, handles) = (Arc::clone(&self.shared), loops.handles.clone());
        rt.spawn(async move {
            let mut rx = shared.shutdown.subscribe();
            stopped(&mut rx).await;
            shared.settled().await;
            for h in handles {
                h.stop();
            }
        });
        Ok(loops)
    }

    /// Serve HTTP and WebSocket connections from `listener` until [`shutdown`](Self::shutdown).
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_inner(listener, None).await
    }

    /// Like [`serve`](Self::serve), over TLS (`https://`, `wss://`): each connection's TLS
    /// handshake must finish within `http_header_timeout`.
    pub async fn serve_tls(&self, listener: TcpListener, tls: weft::tls::TlsAcceptor) -> std::io::Result<()> {
        self.serve_inner(listener, Some(tls)).await
    }

    async fn serve_inner(&self, listener: TcpListener, tls: Option<weft::tls::TlsAcceptor>) -> std::io::Result<()> {
        let mut stop = self.shared.shutdown.subscribe();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => {
                        let engine = self.clone();
                        match tls.clone() {
                            None => {
                                tokio::spawn(async move { engine.serve_connection(tcp).await });
                            }
                            Some(acceptor) => {
                                tokio::spawn(async move { engine.serve_tls_connection(tcp, acceptor).await });
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                _ = stopped(&mut stop) => break,
            }
        }
        drop(listener);
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        while self.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Serve HTTP/3 (RFC 9220) from `server` until [`shutdown`](Self::shutdown): WebSockets on
    /// `/ws` as extended CONNECT streams with the same checks, token and limits as over
    /// HTTP/1.1 and HTTP/2, and every HTTP route (pages, API, metrics) with request bodies
    /// bounded like theirs. Run it beside [`serve_tls`](Self::serve_tls) on the same port number
    /// (UDP) and advertise it with [`set_alt_svc`](Self::set_alt_svc).
    #[cfg(feature = "http3")]
    pub async fn serve_h3(&self, mut server: weft::h3::H3Server) -> std::io::Result<()> {
        let mut stop = self.shared.shutdown.subscribe();
        loop {
            let req = tokio::select! {
                r = server.accept() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = stopped(&mut stop) => break,
            };
            let engine = self.clone();
            tokio::spawn(async move { engine.serve_h3_request(req).await });
        }
        // Sessions close with 1001 on shutdown; give their close frames time to go out before
        // the QUIC endpoint (and every connection on it) closes.
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        while self.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    #[cfg(feature = "http3")]
    async fn serve_h3_request(&self, req: weft::h3::H3Request) {
        if req.is_websocket() {
            if req.request().uri().path() != crate::http::WS_PATH {
                self.metrics().connections_rejected.fetch_add(1, Ordering::Relaxed);
                let _ = req.respond(StatusCode::NOT_FOUND, "WebSocket connections are served on /ws only\n").await;
                return;
            }
            match self.admit(req.request(), req.protocol(), Transport::Quic) {
                Err(refusal) => {
                    let _ = req.respond_with(full_bytes(refusal).await).await;
                }
                Ok((resp, pending, identity)) => match req.respond_stream(resp).await {
                    Ok(stream) => {
                        let ws = pending.into_websocket(stream, &[]);
                        crate::session::run(Arc::clone(&self.shared), ws, identity).await
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP/3 upgrade failed");
                        self.shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
                    }
                },
            }
            return;
        }
        // Any other request: its body, bounded like over HTTP/1.1 and HTTP/2 (the largest
        // message, within the body timeout), then the same router.
        let mut req = req;
        let limit = self.shared.config.max_message_size;
        let body = tokio::time::timeout(self.shared.config.http_body_timeout, req.read_body(limit)).await;
        let response = match body {
            Ok(Ok(Some(body))) => {
                let (parts, ()) = req.request().clone().into_parts();
                crate::http::route(self, Request::from_parts(parts, Full::new(body))).await
            }
            Ok(Ok(None)) => text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/3 request failed");
                return;
            }
            Err(_) => text(StatusCode::REQUEST_TIMEOUT, "request body not received in time\n"),
        };
        let _ = req.respond_with(full_bytes(response).await).await;
    }

    /// Advertise HTTP/3 (`Alt-Svc`, e.g. `h3=":443"; ma=86400`) on every HTTP/1.1 and HTTP/2
    /// response from now on: browsers then try the same URLs over QUIC. Set it once
    /// `serve_h3` (feature `http3`) listens.
    pub fn set_alt_svc(&self, value: http::HeaderValue) {
        let _ = self.shared.alt_svc.set(value);
    }

    fn add_alt_svc<B>(&self, r: &mut Response<B>) {
        if let Some(v) = self.shared.alt_svc.get() {
            r.headers_mut().insert(http::header::ALT_SVC, v.clone());
        }
    }

    /// Serve one accepted TCP connection: HTTP/1.1 (upgrading to WebSocket when asked) or
    /// cleartext HTTP/2 with prior knowledge (WebSockets as extended CONNECT, RFC 8441).
    pub async fn serve_connection(&self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        // Cleartext HTTP/2 (prior knowledge) or HTTP/1.1, told apart by the first bytes.
        match tokio::time::timeout(self.shared.config.http_header_timeout, weft::h2::starts_with_preface(&tcp)).await {
            Ok(Ok(h2)) => self.serve_io(tcp, h2).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "connection failed before its first request"),
            Err(_) => tracing::debug!("no request within the header timeout"),
        }
    }

    /// Serve one accepted TCP connection over TLS: the handshake (bounded by
    /// `http_header_timeout`), then HTTP/2 when ALPN chose `h2` (offer it with
    /// [`weft::tls::server_config_alpn`]), else HTTP/1.1, as
    /// [`serve_connection`](Self::serve_connection).
    pub async fn serve_tls_connection(&self, tcp: TcpStream, acceptor: weft::tls::TlsAcceptor) {
        let _ = tcp.set_nodelay(true);
        match tokio::time::timeout(self.shared.config.http_header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                self.serve_io(tls, h2).await
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    /// Serve one HTTP/1.1 connection over any byte stream (a Unix socket, an in-memory pipe):
    /// the same routes and WebSocket upgrade as [`serve_connection`](Self::serve_connection).
    /// Python's `weft.asgi` bridges an ASGI server's WebSockets into the engine this way.
    pub async fn serve_stream<I>(&self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_io(io, false).await
    }

    async fn serve_io<I>(&self, io: I, http2: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let engine = self.clone();
        // HTTP/2: what each request (and each WebSocket, for its whole session) holds open, so
        // a connection that carries nothing can be closed like an idle HTTP/1.1 one.
        let streams = weft::h2::StreamCount::new();
        let counted = http2.then(|| Arc::clone(&streams));
        let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let engine = engine.clone();
            if let Some(c) = &counted {
                req.extensions_mut().insert(StreamHold(Arc::new(c.open())));
            }
            async move {
                let mut r = crate::http::route(&engine, req).await;
                engine.add_alt_svc(&mut r);
                Ok::<_, Infallible>(r)
            }
        });
        if http2 {
            // WebSockets as extended CONNECT streams (RFC 8441) beside the HTTP routes, with
            // weft's HTTP/2 bounds (weft::h2::Http2Config): windows, streams, header size.
            let c = weft::h2::Http2Config::default();
            let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .enable_connect_protocol()
                .initial_stream_window_size(c.stream_window)
                .initial_connection_window_size(c.connection_window)
                .max_concurrent_streams(c.max_streams)
                .max_frame_size(c.max_frame_size)
                .max_send_buf_size(c.send_buffer)
                .max_header_list_size(c.max_header_list_size)
                .keep_alive_interval(Some(self.shared.config.http_header_timeout))
                .keep_alive_timeout(self.shared.config.http_header_timeout)
                .serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            // No stream for the header timeout (the limit an idle HTTP/1.1 keep-alive
            // connection gets): GOAWAY, and the connection ends once its streams have.
            let idle = self.shared.config.http_header_timeout;
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "http/2 connection ended");
                        }
                        return;
                    }
                    () = streams.idle_for(idle), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        // The header timeout also bounds an idle keep-alive connection and a stalled upgrade
        // request; the small read buffer bounds what a pending request can hold (headers
        // larger than this get 431).
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.shared.config.http_header_timeout)
            .max_buf_size(HTTP_READ_BUFFER)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "http connection ended");
        }
    }

    /// Answer a WebSocket upgrade request read by any hyper-based server (axum included): checks
    /// the handshake, limits and token, returns the response to send, and runs the session on
    /// the upgraded connection.
    ///
    /// ```no_run
    /// # async fn run() {
    /// use axum::{Router, extract::Request, routing::get};
    /// let engine = weft_server::Engine::new(Default::default()).unwrap();
    /// let app: Router = Router::new().route("/ws", get(move |req: Request| async move { engine.upgrade(req) }));
    /// # }
    /// ```
    pub fn upgrade<B>(&self, mut req: Request<B>) -> Response<Full<Bytes>> {
        let protocol = req.extensions().get::<hyper::ext::Protocol>().map(|p| p.as_str().to_owned());
        let (resp, pending, identity) = match self.admit(&req, protocol.as_deref(), Transport::Tcp) {
            Ok(x) => x,
            Err(refusal) => return refusal,
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let shared = Arc::clone(&self.shared);
        // Over HTTP/2, the stream stays counted as open for the whole session.
        let hold = req.extensions_mut().remove::<StreamHold>();
        tokio::spawn(async move {
            let _hold = hold;
            match on_upgrade.await {
                // The raw stream back from hyper (plain or TLS), so a session costs what a plain
                // weft connection costs; any other transport runs over hyper's `Upgraded`.
                Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        let ws = pending.into_websocket(parts.io.into_inner(), &parts.read_buf);
                        crate::session::run(shared, ws, identity).await
                    }
                    Err(upgraded) => match upgraded.downcast::<TokioIo<weft::tls::ServerTlsStream<TcpStream>>>() {
                        Ok(parts) => {
                            let ws = pending.into_websocket(parts.io.into_inner(), &parts.read_buf);
                            crate::session::run(shared, ws, identity).await
                        }
                        Err(upgraded) => {
                            let ws = pending.into_websocket(TokioIo::new(upgraded), &[]);
                            crate::session::run(shared, ws, identity).await
                        }
                    },
                },
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
        resp.map(|()| Full::new(Bytes::new()))
    }

    /// The checks every WebSocket passes whatever its transport — shutdown, the connection
    /// limit, the handshake (an HTTP/1.1 upgrade, or an extended CONNECT with `protocol` over
    /// HTTP/2 or HTTP/3), the token — and the counting of an admitted one; or the refusal to
    /// send.
    // The refusal is built once and sent at once; boxing it would only add an allocation.
    #[allow(clippy::result_large_err)]
    fn admit<B>(
        &self,
        req: &Request<B>,
        protocol: Option<&str>,
        transport: Transport,
    ) -> Result<(Response<()>, weft::PendingUpgrade, Identity), Response<Full<Bytes>>> {
        let shared = &self.shared;
        let m = &shared.metrics;
        if *shared.shutdown.borrow() {
            return Err(text(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n"));
        }
        if m.connections.load(Ordering::Relaxed) as usize >= shared.config.max_connections {
            m.connections_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n"));
        }
        // HTTP/1.1 upgrade, or extended CONNECT over HTTP/2 (RFC 8441) or HTTP/3 (RFC 9220):
        // the same checks.
        let connect = req.method() == http::Method::CONNECT;
        let accepted =
            if connect { shared.acceptor.upgrade_connect(req, protocol) } else { shared.acceptor.upgrade(req) };
        let (resp, pending) = match accepted {
            Ok(x) => x,
            Err(e) => {
                m.connections_rejected.fetch_add(1, Ordering::Relaxed);
                let status = if connect { e.connect_status() } else { e.status() };
                let mut r = text(status, &format!("{e}\n"));
                if matches!(e, weft::proto::handshake::HandshakeError::UnsupportedVersion) {
                    r.headers_mut().insert(http::header::SEC_WEBSOCKET_VERSION, http::HeaderValue::from_static("13"));
                }
                return Err(r);
            }
        };
        let identity = match self.identify(req) {
            Ok(id) => id,
            Err(e) => return Err(text(e.status, &format!("{}\n", e.message))),
        };
        m.connections.fetch_add(1, Ordering::Relaxed);
        m.connections_total.fetch_add(1, Ordering::Relaxed);
        match transport {
            Transport::Tcp if connect => m.connections_http2_total.fetch_add(1, Ordering::Relaxed),
            Transport::Tcp => 0,
            Transport::Quic => m.connections_http3_total.fetch_add(1, Ordering::Relaxed),
        };
        Ok((resp, pending, identity))
    }

    /// Who a WebSocket request is from: its token verified (with JWT), or the anonymous user it
    /// names. A refusal is counted (`auth_failures`, `connections_rejected`) and logged without
    /// the token.
    pub(crate) fn identify<B>(&self, req: &Request<B>) -> Result<Identity, crate::auth::AuthError> {
        let shared = &self.shared;
        let m = &shared.metrics;
        let Some(jwt) = &shared.config.jwt else {
            return Ok(Identity::anonymous(query_param(req.uri().query(), "user")));
        };
        let max = shared.config.max_token_size;
        let verified = match jwt.token_from(req.headers(), req.uri().query()) {
            None => Err(crate::auth::AuthError { status: StatusCode::UNAUTHORIZED, message: "missing token".into() }),
            Some((t, source)) if t.len() > max => Err(crate::auth::AuthError {
                status: if source == crate::auth::TokenSource::Query {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                },
                message: format!("token larger than {max} bytes"),
            }),
            Some((t, _)) => jwt.verify(&t),
        };
        verified.inspect_err(|e| {
            m.auth_failures.fetch_add(1, Ordering::Relaxed);
            m.connections_rejected.fetch_add(1, Ordering::Relaxed);
            // Never the token itself: only why it was refused.
            tracing::info!(status = e.status.as_u16(), reason = %e.message, "upgrade refused: authentication");
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.shared.broker
    }
}

/// The event loops [`Engine::serve_event_loops`] started.
#[derive(Debug)]
pub struct EventLoops {
    handles: Vec<weft::event_loop::LoopHandle>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<weft::event_loop::LoopStats>>>,
    backend: weft::event_loop::Backend,
    fallback: Option<String>,
}

impl EventLoops {
    /// The backend that runs (io_uring or epoll).
    pub fn backend(&self) -> weft::event_loop::Backend {
        self.backend
    }

    /// Why [`Backend::Auto`](weft::event_loop::Backend::Auto) runs epoll: what io_uring lacked.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Stop every loop now (without waiting for the broker to settle, as
    /// [`Engine::shutdown`] does): connections close with 1001.
    pub fn stop(&self) {
        for h in &self.handles {
            h.stop();
        }
    }

    /// Wait until every loop has stopped (blocking: from async code, in `spawn_blocking`); their
    /// counters, or the first loop's error.
    pub fn join(self) -> std::io::Result<Vec<weft::event_loop::LoopStats>> {
        let mut stats = Vec::new();
        for t in self.threads {
            stats.push(t.join().map_err(|_| std::io::Error::other("an event loop thread panicked"))??);
        }
        Ok(stats)
    }
}

/// hyper's read buffer per HTTP connection (its default is ~400 KiB). Request heads larger than
/// this are refused with 431.
const HTTP_READ_BUFFER: usize = 16 << 10;

/// A response with its whole body in one buffer.
#[cfg(feature = "http3")]
async fn full_bytes(r: Response<Full<Bytes>>) -> Response<Bytes> {
    use http_body_util::BodyExt;
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    Response::from_parts(parts, bytes)
}

/// An HTTP/2 request's place in its connection's open streams (see `serve_io`), kept by a
/// WebSocket for its session.
#[derive(Clone)]
struct StreamHold(#[allow(dead_code)] Arc<weft::h2::StreamGuard>);

/// What a WebSocket arrived over, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// HTTP/1.1 or HTTP/2 (told apart by the request's method).
    Tcp,
    /// HTTP/3.
    #[cfg_attr(not(feature = "http3"), allow(dead_code))]
    Quic,
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Resolves once shutdown has started.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn upkeep(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let now = Instant::now();
        s.metrics.sample(now);
        n += 1;
        if n % 5 == 0 {
            let broker = Arc::clone(&s.broker);
            drop(s);
            if let Err(e) = broker.maintain(now).await {
                tracing::warn!(error = %e, "broker upkeep failed");
            }
        }
    }
}
