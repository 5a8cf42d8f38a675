//! Engine settings.

use std::time::Duration;

use crate::auth::JwtAuth;
use crate::outbox::SlowConsumerPolicy;
use crate::topic::Pattern;

/// Everything the engine can be told. `Default` is the no-setup single-node server:
/// anonymous, in-memory.
///
/// ```
/// use std::time::Duration;
/// let mut cfg = weft_server::EngineConfig::default();
/// cfg.history_size = 1000;
/// cfg.heartbeat = Duration::from_secs(10);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// JWT verification; `None` is anonymous mode.
    pub jwt: Option<JwtAuth>,
    /// Key for `POST /api/publish` and `/api/broadcast`.
    pub api_key: Option<String>,
    /// Most open WebSocket connections; further upgrades get 503.
    pub max_connections: usize,
    /// Largest message a client may send (larger: close 1009). Also the HTTP publish body limit.
    pub max_message_size: usize,
    /// Most subscriptions (topics and patterns) per connection.
    pub max_subscriptions: usize,
    /// Outbound queue length per connection, in messages.
    pub queue_size: usize,
    /// Events kept per topic.
    pub history_size: usize,
    /// How long events are kept.
    pub history_ttl: Duration,
    /// Default slow-consumer policy.
    pub slow_consumer: SlowConsumerPolicy,
    /// Per-topic slow-consumer policies (first matching pattern wins).
    pub topic_policies: Vec<(Pattern, SlowConsumerPolicy)>,
    /// Inbound messages per second per connection (token bucket refill rate).
    pub rate_limit: f64,
    /// Token bucket size.
    pub rate_burst: u32,
    /// Interval of server pings (also announced in `welcome`).
    pub heartbeat: Duration,
    /// Close with 1011 when a ping is not answered within this time.
    pub ping_timeout: Duration,
    /// Close with 1001 when nothing at all arrives for this long.
    pub idle_timeout: Duration,
    /// How long shutdown waits for connections to flush and close.
    pub shutdown_grace: Duration,
    /// Most topics the server holds at once (a topic exists while it has subscribers or
    /// history). Creating one more is refused with error 4008.
    pub max_topics: usize,
    /// Most distinct topics (and patterns) one connection may touch, by subscribe or publish,
    /// within `topic_churn_window`. More is refused with error 4008.
    pub topic_churn_limit: usize,
    /// The window of `topic_churn_limit`.
    pub topic_churn_window: Duration,
    /// Bytes of history kept for all topics together (encoded size of the events). When full,
    /// the oldest events go first; a resume that needs them gets `recovered: false`.
    pub history_memory: usize,
    /// Bytes of history kept per topic.
    pub history_topic_bytes: usize,
    /// Time allowed to receive an HTTP request's headers; also how long an idle keep-alive
    /// connection (or a pending upgrade) stays open.
    pub http_header_timeout: Duration,
    /// Time allowed to receive an HTTP request's body.
    pub http_body_timeout: Duration,
    /// Largest accepted token, in bytes (larger: 431 in a header or cookie, 401 in the query).
    pub max_token_size: usize,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it. Each event is then
    /// compressed once per wire format and the same bytes go to every such subscriber.
    pub deflate: bool,
    /// The cluster broker: `None` for the in-memory broker (one node), or
    /// `redis://[user:password@]host:port[/db]` to join every node using the same Redis
    /// (see `docs/CLUSTER.md`). Needs [`Engine::connect`](crate::Engine::connect).
    pub broker: Option<String>,
    /// For a `rediss://` broker: PEM file with the CA certificate(s) to trust (default: the
    /// system's trust store).
    pub broker_ca_file: Option<std::path::PathBuf>,
    /// This node's name in the cluster (default: host name and process id).
    pub node_name: Option<String>,
    /// Prefix of the cluster broker's keys and channels (several clusters may share one Redis
    /// with different prefixes).
    pub broker_prefix: String,
    /// A node whose heartbeat stopped this long ago is dead; its presence members are removed
    /// (cluster mode).
    pub node_ttl: Duration,
    /// Bytes a cluster node may hold of broker messages not yet fanned out; half as much again
    /// for events held while topics refill, and for publishes waiting for the broker. Past
    /// them: dropped and refilled from history, or the publish fails with 5003.
    pub broker_buffer_bytes: usize,
    /// Where the state a `subscribe` with `snapshot` asks for comes from (default: nowhere;
    /// such a subscribe gets error 4011 in its `snapshot` message).
    pub snapshots: crate::snapshot::Snapshots,
    /// How long a snapshot provider may take (waiting for a free slot included).
    pub snapshot_timeout: Duration,
    /// Snapshot provider calls in progress at once, over all connections; more wait (within
    /// `snapshot_timeout`).
    pub snapshot_concurrency: usize,
    /// Dead letters kept at most (publishes the cluster broker refused, snapshots that
    /// failed; see [`crate::dead`]); past it, or past `dead_letter_bytes`, the oldest go.
    pub dead_letter_max: usize,
    /// Bytes the dead letters may hold.
    pub dead_letter_bytes: usize,
    /// The opt-in secure channel (payloads encrypted or signed between the engine and each
    /// client that asks; see [`crate::secure`]): off, allowed (the default) or required.
    pub secure: crate::secure::SecurePolicy,
    /// The identity key that signs each secure handshake, for clients that pin its public key.
    pub secure_identity: Option<std::sync::Arc<crate::secure::IdentityKey>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            jwt: None,
            api_key: None,
            max_connections: 100_000,
            max_message_size: 64 * 1024,
            max_subscriptions: 128,
            queue_size: 1024,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            slow_consumer: SlowConsumerPolicy::Disconnect,
            topic_policies: Vec::new(),
            rate_limit: 100.0,
            rate_burst: 200,
            heartbeat: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            max_topics: 100_000,
            topic_churn_limit: 256,
            topic_churn_window: Duration::from_secs(10),
            history_memory: 256 << 20,
            history_topic_bytes: 4 << 20,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(10),
            max_token_size: 4096,
            deflate: true,
            broker: None,
            broker_ca_file: None,
            node_name: None,
            broker_prefix: "weft".into(),
            node_ttl: Duration::from_secs(30),
            broker_buffer_bytes: 128 << 20,
            snapshots: crate::snapshot::Snapshots::Off,
            snapshot_timeout: Duration::from_secs(5),
            snapshot_concurrency: 64,
            dead_letter_max: 10_000,
            dead_letter_bytes: 16 << 20,
            secure: crate::secure::SecurePolicy::Allow,
            secure_identity: None,
        }
    }
}

impl EngineConfig {
    /// Check that the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_size < self.history_size {
            return Err(format!(
                "queue_size ({}) must be at least history_size ({}) so a full replay fits in the queue",
                self.queue_size, self.history_size
            ));
        }
        if self.rate_limit <= 0.0 || self.rate_burst == 0 {
            return Err("rate_limit and rate_burst must be positive".into());
        }
        if self.max_message_size < 128 {
            return Err("max_message_size must be at least 128 bytes".into());
        }
        if self.max_topics == 0 || self.topic_churn_limit == 0 {
            return Err("max_topics and topic_churn_limit must be positive".into());
        }
        if self.history_topic_bytes > self.history_memory {
            return Err(format!(
                "history_topic_bytes ({}) must not exceed history_memory ({})",
                self.history_topic_bytes, self.history_memory
            ));
        }
        if self.max_token_size < 256 {
            return Err("max_token_size must be at least 256 bytes".into());
        }
        if let Some(b) = &self.broker {
            let known = ["redis://", "rediss://", "redis+sentinel://", "nats://", "tls://"];
            if !(known.iter().any(|k| b.starts_with(k)) || b == "memory") {
                return Err(format!(
                    "unsupported broker {:?}: use redis://host:port, rediss://, redis+sentinel://host:port[,host:port...]/MASTER, nats://host:port or tls:// (NATS with TLS), or leave it unset for the in-memory broker",
                    b.split('@').next_back().unwrap_or(b)
                ));
            }
        }
        if self.broker_prefix.is_empty()
            || !self.broker_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err("broker_prefix must be letters, digits, '_', '-' or '.'".into());
        }
        if self.broker_buffer_bytes < 1 << 20 {
            return Err("broker_buffer_bytes must be at least 1 MiB".into());
        }
        if self.node_ttl < Duration::from_secs(1) {
            return Err("node_ttl must be at least 1 s".into());
        }
        if self.dead_letter_max == 0 || self.dead_letter_bytes < 64 << 10 {
            return Err("dead_letter_max must be positive and dead_letter_bytes at least 64 KiB".into());
        }
        if self.snapshot_concurrency == 0 || self.snapshot_timeout.is_zero() {
            return Err("snapshot_concurrency and snapshot_timeout must be positive".into());
        }
        if self.secure == crate::secure::SecurePolicy::Off && self.secure_identity.is_some() {
            return Err("a secure identity key is given but the secure channel is off".into());
        }
        if self.idle_timeout <= self.heartbeat {
            return Err("idle_timeout must be longer than the heartbeat interval".into());
        }
        Ok(())
    }

    /// Whether connections are accepted without a token.
    pub fn anonymous(&self) -> bool {
        self.jwt.is_none()
    }

    pub(crate) fn ws_config(&self) -> weft::Config {
        let mut c = weft::Config::default();
        // A sealed message is up to 40 bytes longer on the wire; the session holds every
        // message, sealed or not, to `max_message_size` itself (close 1009).
        let slack = if self.secure == crate::secure::SecurePolicy::Off { 0 } else { crate::secure::MAX_OVERHEAD };
        c.max_message_size = self.max_message_size + slack;
        c.max_frame_size = self.max_message_size + slack;
        c.ping_interval = Some(self.heartbeat);
        c.ping_timeout = self.ping_timeout;
        c.idle_timeout = Some(self.idle_timeout);
        c.deflate = self.deflate.then(weft::DeflateConfig::default);
        c
    }
}
