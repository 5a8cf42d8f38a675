//! `weft serve`: the real-time engine.
//!
//! Settings come from, in rising precedence: defaults, a TOML file (`--config`), `WEFT_*`
//! environment variables, command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use weft_server::snapshot::{HttpSnapshots, Snapshots};
use weft_server::topic::Pattern;
use weft_server::{Engine, EngineConfig, JwtAuth, SlowConsumerPolicy};

use crate::echo::Core;

#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ServeArgs {
    /// TOML file with any of the settings below (snake_case names; `topic_policies` is a table
    /// of pattern = policy).
    #[arg(long, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "WEFT_ADDR")]
    addr: Option<SocketAddr>,
    /// Runtime worker threads, or with --core epoll or io-uring event loops (each with its own
    /// SO_REUSEPORT listener on the port) [default: one per core; 1 in each of `--workers`].
    #[arg(long, env = "WEFT_THREADS")]
    threads: Option<usize>,
    /// Run N engine processes sharing the port (SO_REUSEPORT), joined through the cluster
    /// broker (needs --broker): past one process's file-descriptor limit, one runtime per core.
    #[arg(long, env = "WEFT_WORKERS")]
    workers: Option<usize>,
    /// With --workers: pin worker i to CPU i (modulo the CPUs available).
    #[arg(long, env = "WEFT_PIN")]
    pin: bool,
    /// The core that serves WebSockets: `tokio` (a task per connection; the HTTP API, TLS,
    /// HTTP/2 and HTTP/3 on the same port), or weft's event-driven core — one loop per
    /// thread, no task per connection, a fraction of the memory — on `io-uring` (epoll where
    /// the kernel lacks it, said in the log) or `epoll`: cleartext HTTP/1.1 WebSockets at /ws,
    /// the HTTP API on --http-addr [default: tokio].
    #[arg(long, env = "WEFT_CORE", value_enum)]
    core: Option<Core>,
    /// With --core epoll or io-uring: where the HTTP API, dashboard, chat page and /metrics
    /// listen (they are not served on --addr then) [default: nowhere].
    #[arg(long, env = "WEFT_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// HS256 secret for JWTs. Without any JWT key the server runs in anonymous mode.
    #[arg(long, env = "WEFT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// RS256 public key (PEM file) for JWTs.
    #[arg(long, env = "WEFT_JWT_RSA_KEY")]
    jwt_rsa_key: Option<PathBuf>,
    /// ES256 public key (PEM file) for JWTs.
    #[arg(long, env = "WEFT_JWT_EC_KEY")]
    jwt_ec_key: Option<PathBuf>,
    /// Required JWT issuer (`iss`).
    #[arg(long, env = "WEFT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required JWT audience (`aud`).
    #[arg(long, env = "WEFT_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Clock leeway for exp/nbf in seconds [default: 0].
    #[arg(long, env = "WEFT_JWT_LEEWAY")]
    jwt_leeway: Option<u64>,
    /// Cookie that may carry the token [default: weft_token].
    #[arg(long, env = "WEFT_TOKEN_COOKIE")]
    token_cookie: Option<String>,
    /// API key for POST /api/publish and /api/broadcast.
    #[arg(long, env = "WEFT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most open WebSocket connections [default: 100000].
    #[arg(long, env = "WEFT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Largest client message in bytes; larger closes with 1009 [default: 65536].
    #[arg(long, env = "WEFT_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Most subscriptions per connection [default: 128].
    #[arg(long, env = "WEFT_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<usize>,
    /// Outbound queue per connection, in messages [default: 1024].
    #[arg(long, env = "WEFT_QUEUE_SIZE")]
    queue_size: Option<usize>,
    /// Events kept per topic for recovery [default: 100].
    #[arg(long, env = "WEFT_HISTORY_SIZE")]
    history_size: Option<usize>,
    /// Seconds events are kept for recovery [default: 300].
    #[arg(long, env = "WEFT_HISTORY_TTL")]
    history_ttl: Option<f64>,
    /// Slow-consumer policy: disconnect, drop-oldest, latest or drop-lowest (by publish
    /// priority) [default: disconnect].
    #[arg(long, env = "WEFT_SLOW_CONSUMER")]
    slow_consumer: Option<SlowConsumerPolicy>,
    /// Per-topic policy, PATTERN=POLICY (repeatable; in the environment, comma-separated),
    /// e.g. `prices.>=latest`.
    #[arg(long = "topic-policy", value_name = "PATTERN=POLICY", env = "WEFT_TOPIC_POLICY", value_delimiter = ',')]
    topic_policy: Vec<String>,
    /// Most topics held at once; more are refused with error 4008 [default: 100000].
    #[arg(long, env = "WEFT_MAX_TOPICS")]
    max_topics: Option<usize>,
    /// Most distinct topics one connection may touch per 10 s [default: 256].
    #[arg(long, env = "WEFT_TOPIC_CHURN_LIMIT")]
    topic_churn_limit: Option<usize>,
    /// Memory for all history, bytes or with a K/M/G suffix (KiB/MiB/GiB) [default: 256M].
    #[arg(long, env = "WEFT_HISTORY_MEMORY", value_parser = parse_size)]
    history_memory: Option<usize>,
    /// Memory for one topic's history, bytes or with a K/M/G suffix [default: 4M].
    #[arg(long, env = "WEFT_HISTORY_TOPIC_BYTES", value_parser = parse_size)]
    history_topic_bytes: Option<usize>,
    /// Seconds allowed for HTTP request headers; also the keep-alive idle limit [default: 10].
    #[arg(long, env = "WEFT_HTTP_HEADER_TIMEOUT")]
    http_header_timeout: Option<f64>,
    /// Seconds allowed for an HTTP request body [default: 10].
    #[arg(long, env = "WEFT_HTTP_BODY_TIMEOUT")]
    http_body_timeout: Option<f64>,
    /// Largest accepted token in bytes [default: 4096].
    #[arg(long, env = "WEFT_MAX_TOKEN_SIZE")]
    max_token_size: Option<usize>,
    /// Inbound messages per second per connection [default: 100].
    #[arg(long, env = "WEFT_RATE_LIMIT")]
    rate_limit: Option<f64>,
    /// Burst of the per-connection rate limit [default: 200].
    #[arg(long, env = "WEFT_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Seconds between server pings [default: 25].
    #[arg(long, env = "WEFT_HEARTBEAT")]
    heartbeat: Option<f64>,
    /// Seconds to wait for a pong before closing with 1011 [default: 10].
    #[arg(long, env = "WEFT_PING_TIMEOUT")]
    ping_timeout: Option<f64>,
    /// Seconds without any frame before closing with 1001 [default: 60].
    #[arg(long, env = "WEFT_IDLE_TIMEOUT")]
    idle_timeout: Option<f64>,
    /// Seconds shutdown waits for connections to drain [default: 5].
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE")]
    shutdown_grace: Option<f64>,
    /// Cluster broker: redis://[user:password@]host:port[/db] (rediss:// for TLS),
    /// redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db] (the master found
    /// through Redis Sentinel) or nats://[user:password@]host:port (tls:// for TLS; JetStream
    /// enabled) joins every node
    /// using it (docs/CLUSTER.md); unset (or "memory"): the in-memory broker, one node.
    #[arg(long, env = "WEFT_BROKER", hide_env_values = true)]
    broker: Option<String>,
    /// For a rediss:// or tls:// (NATS) broker: PEM file with the CA certificate(s) to trust
    /// [default: the system's trust store].
    #[arg(long, env = "WEFT_BROKER_CA_FILE")]
    broker_ca_file: Option<PathBuf>,
    /// This node's name in the cluster [default: host name and process id].
    #[arg(long, env = "WEFT_NODE_NAME")]
    node_name: Option<String>,
    /// Seconds after which a silent node counts as dead and its presence members are removed
    /// [default: 30].
    #[arg(long, env = "WEFT_NODE_TTL")]
    node_ttl: Option<f64>,
    /// Prefix of the broker's Redis keys and channels, or NATS subjects and streams
    /// [default: weft].
    #[arg(long, env = "WEFT_BROKER_PREFIX")]
    broker_prefix: Option<String>,
    /// Bytes a cluster node may buffer of broker messages not yet fanned out, and half as much
    /// for events held while topics refill and for publishes waiting for the broker
    /// [default: 134217728 (128 MiB)].
    #[arg(long, env = "WEFT_BROKER_BUFFER_BYTES")]
    broker_buffer_bytes: Option<usize>,
    /// Negotiate permessage-deflate with clients that offer it: true or false [default: true].
    #[arg(long, env = "WEFT_DEFLATE", value_name = "BOOL")]
    deflate: Option<bool>,
    /// Where the state a subscribe with `snapshot` asks for comes from: `off`, `last` (the
    /// topic's last event in history) or an http:// or https:// URL that is POSTed the topic
    /// and answers with its state (docs/PROTOCOL.md, "Snapshots") [default: off].
    #[arg(long, env = "WEFT_SNAPSHOTS", value_name = "off|last|URL", hide_env_values = true)]
    snapshots: Option<String>,
    /// Seconds a snapshot URL may take to answer [default: 5].
    #[arg(long, env = "WEFT_SNAPSHOT_TIMEOUT")]
    snapshot_timeout: Option<f64>,
    /// Dead letters kept at most (publishes the cluster broker refused, snapshots that
    /// failed; /api/dead-letters) [default: 10000].
    #[arg(long, env = "WEFT_DEAD_LETTER_MAX")]
    dead_letter_max: Option<usize>,
    /// Bytes the dead letters may hold (e.g. 16M) [default: 16M].
    #[arg(long, env = "WEFT_DEAD_LETTER_BYTES", value_parser = parse_size)]
    dead_letter_bytes: Option<usize>,
    /// The opt-in secure channel, payloads encrypted or signed between the server and each
    /// client that asks (docs/PROTOCOL.md, "Secure channel"): `off`, `allow` or `require`
    /// (every request before the handshake refused) [default: allow].
    #[arg(long, env = "WEFT_SECURE", value_name = "off|allow|require")]
    secure: Option<String>,
    /// PEM (or DER) PKCS#8 P-256 private key that signs each secure handshake, for clients
    /// that pin its public key (logged at start); e.g. from
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out secure.pem`.
    #[arg(long, env = "WEFT_SECURE_KEY", value_name = "FILE")]
    secure_key: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// `--tls-cert` / `--tls-key`, shared by `weft serve` and `weft echo`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct TlsArgs {
    /// Serve TLS (https://, wss://) with this certificate chain (PEM, end-entity first).
    /// SIGHUP loads the certificate and key again.
    #[arg(long, env = "WEFT_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WEFT_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// Load the certificate now (a bad or mismatched key is an error at start).
    pub(crate) fn load(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> anyhow::Result<Option<std::sync::Arc<weft::tls::ReloadableCert>>> {
        match (cert, key) {
            (Some(c), Some(k)) => Ok(Some(weft::tls::ReloadableCert::load(&c, &k)?)),
            (None, None) => Ok(None),
            _ => bail!("give both --tls-cert and --tls-key"),
        }
    }
}

/// Reload the certificate on every SIGHUP, for as long as the process runs (HTTP/3's too when
/// `h3` is given).
pub(crate) fn reload_on_sighup(cert: std::sync::Arc<weft::tls::ReloadableCert>, h3: Option<crate::quic::Reloader>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate NOT reloaded, keeping the old one");
                    continue;
                }
            }
            if let Some(h3) = &h3 {
                match crate::quic::reload(h3, &cert) {
                    Ok(()) => tracing::info!("SIGHUP: HTTP/3 certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: HTTP/3 certificate NOT reloaded, keeping the old one")
                    }
                }
            }
        }
    });
}

/// The TOML file: the same settings, all optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<SocketAddr>,
    threads: Option<usize>,
    core: Option<Core>,
    http_addr: Option<SocketAddr>,
    jwt_secret: Option<String>,
    jwt_rsa_key: Option<PathBuf>,
    jwt_ec_key: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_leeway: Option<u64>,
    token_cookie: Option<String>,
    api_key: Option<String>,
    max_connections: Option<usize>,
    max_message_size: Option<usize>,
    max_subscriptions: Option<usize>,
    queue_size: Option<usize>,
    history_size: Option<usize>,
    history_ttl: Option<f64>,
    slow_consumer: Option<SlowConsumerPolicy>,
    #[serde(default)]
    topic_policies: BTreeMap<String, SlowConsumerPolicy>,
    rate_limit: Option<f64>,
    rate_burst: Option<u32>,
    heartbeat: Option<f64>,
    ping_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    shutdown_grace: Option<f64>,
    max_topics: Option<usize>,
    topic_churn_limit: Option<usize>,
    #[serde(default, deserialize_with = "size_opt")]
    history_memory: Option<usize>,
    #[serde(default, deserialize_with = "size_opt")]
    history_topic_bytes: Option<usize>,
    http_header_timeout: Option<f64>,
    http_body_timeout: Option<f64>,
    max_token_size: Option<usize>,
    deflate: Option<bool>,
    broker: Option<String>,
    broker_ca_file: Option<PathBuf>,
    node_name: Option<String>,
    node_ttl: Option<f64>,
    broker_prefix: Option<String>,
    broker_buffer_bytes: Option<usize>,
    snapshots: Option<String>,
    snapshot_timeout: Option<f64>,
    dead_letter_max: Option<usize>,
    #[serde(default, deserialize_with = "size_opt")]
    dead_letter_bytes: Option<usize>,
    secure: Option<String>,
    secure_key: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// A byte size: a number, optionally with K, M or G (powers of 1024; `KiB`, `MB`... accepted).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 268435456, 256M, 1G)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

fn size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(usize),
        S(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::N(n)) => Ok(Some(n)),
        Some(Size::S(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{what}: {v} is not a valid number of seconds"))
}

/// Merge file and flags (flags and env win) into the engine's settings.
/// What `weft serve` runs with.
#[derive(Debug)]
struct Settings {
    addr: SocketAddr,
    threads: Option<usize>,
    core: Core,
    http_addr: Option<SocketAddr>,
    config: EngineConfig,
    tls: Option<std::sync::Arc<weft::tls::ReloadableCert>>,
}

fn settings(args: ServeArgs) -> anyhow::Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let d = EngineConfig::default();
    let mut c = EngineConfig::default();
    macro_rules! pick {
        ($f:ident) => {
            args.$f.clone().or(file.$f.clone())
        };
    }
    let addr = pick!(addr).unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid"));
    let threads = pick!(threads);
    let keys = [pick!(jwt_secret).is_some(), pick!(jwt_rsa_key).is_some(), pick!(jwt_ec_key).is_some()];
    if keys.iter().filter(|k| **k).count() > 1 {
        bail!("give only one of --jwt-secret, --jwt-rsa-key, --jwt-ec-key");
    }
    let mut jwt = if let Some(s) = pick!(jwt_secret) {
        Some(JwtAuth::hs256(s.as_bytes()).context("--jwt-secret")?)
    } else if let Some(p) = pick!(jwt_rsa_key) {
        let pem = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        Some(JwtAuth::rs256_pem(&pem)?)
    } else if let Some(p) = pick!(jwt_ec_key) {
        let pem = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        Some(JwtAuth::es256_pem(&pem)?)
    } else {
        None
    };
    if let Some(j) = jwt.take() {
        let mut j = j.leeway(pick!(jwt_leeway).unwrap_or(0));
        if let Some(i) = pick!(jwt_issuer) {
            j = j.issuer(&i);
        }
        if let Some(a) = pick!(jwt_audience) {
            j = j.audience(&a);
        }
        if let Some(ck) = pick!(token_cookie) {
            j = j.cookie(&ck);
        }
        jwt = Some(j);
    } else if pick!(jwt_issuer).is_some() || pick!(jwt_audience).is_some() {
        bail!("--jwt-issuer/--jwt-audience need a JWT key (--jwt-secret, --jwt-rsa-key or --jwt-ec-key)");
    }
    c.jwt = jwt;
    c.api_key = pick!(api_key);
    c.max_connections = pick!(max_connections).unwrap_or(d.max_connections);
    c.max_message_size = pick!(max_message_size).unwrap_or(d.max_message_size);
    c.max_subscriptions = pick!(max_subscriptions).unwrap_or(d.max_subscriptions);
    c.queue_size = pick!(queue_size).unwrap_or(d.queue_size);
    c.history_size = pick!(history_size).unwrap_or(d.history_size);
    if let Some(v) = pick!(history_ttl) {
        c.history_ttl = secs(v, "history_ttl")?;
    }
    c.slow_consumer = pick!(slow_consumer).unwrap_or(d.slow_consumer);
    let mut policies = Vec::new();
    for spec in &args.topic_policy {
        let (p, pol) =
            spec.split_once('=').with_context(|| format!("--topic-policy {spec:?}: expected PATTERN=POLICY"))?;
        policies.push((Pattern::parse(p)?, pol.parse::<SlowConsumerPolicy>().map_err(anyhow::Error::msg)?));
    }
    for (p, pol) in &file.topic_policies {
        policies.push((Pattern::parse(p)?, *pol));
    }
    c.topic_policies = policies;
    c.rate_limit = pick!(rate_limit).unwrap_or(d.rate_limit);
    c.rate_burst = pick!(rate_burst).unwrap_or(d.rate_burst);
    if let Some(v) = pick!(heartbeat) {
        c.heartbeat = secs(v, "heartbeat")?;
    }
    if let Some(v) = pick!(ping_timeout) {
        c.ping_timeout = secs(v, "ping_timeout")?;
    }
    if let Some(v) = pick!(idle_timeout) {
        c.idle_timeout = secs(v, "idle_timeout")?;
    }
    if let Some(v) = pick!(shutdown_grace) {
        c.shutdown_grace = secs(v, "shutdown_grace")?;
    }
    c.max_topics = pick!(max_topics).unwrap_or(d.max_topics);
    c.topic_churn_limit = pick!(topic_churn_limit).unwrap_or(d.topic_churn_limit);
    c.history_memory = pick!(history_memory).unwrap_or(d.history_memory);
    c.history_topic_bytes = pick!(history_topic_bytes).unwrap_or(d.history_topic_bytes);
    if let Some(v) = pick!(http_header_timeout) {
        c.http_header_timeout = secs(v, "http_header_timeout")?;
    }
    if let Some(v) = pick!(http_body_timeout) {
        c.http_body_timeout = secs(v, "http_body_timeout")?;
    }
    c.max_token_size = pick!(max_token_size).unwrap_or(d.max_token_size);
    c.deflate = pick!(deflate).unwrap_or(d.deflate);
    c.broker = pick!(broker).filter(|b| !b.is_empty());
    c.broker_ca_file = pick!(broker_ca_file);
    c.node_name = pick!(node_name);
    if let Some(v) = pick!(node_ttl) {
        c.node_ttl = secs(v, "node_ttl")?;
    }
    c.broker_prefix = pick!(broker_prefix).unwrap_or(d.broker_prefix.clone());
    c.broker_buffer_bytes = pick!(broker_buffer_bytes).unwrap_or(d.broker_buffer_bytes);
    c.snapshots = match pick!(snapshots).as_deref() {
        None | Some("off") => Snapshots::Off,
        Some("last") => Snapshots::LastEvent,
        Some(url) => Snapshots::Provider(std::sync::Arc::new(
            HttpSnapshots::new(url, c.max_message_size).map_err(|e| anyhow::anyhow!("--snapshots: {e}"))?,
        )),
    };
    if let Some(v) = pick!(snapshot_timeout) {
        c.snapshot_timeout = secs(v, "snapshot_timeout")?;
    }
    c.dead_letter_max = pick!(dead_letter_max).unwrap_or(d.dead_letter_max);
    c.dead_letter_bytes = pick!(dead_letter_bytes).unwrap_or(d.dead_letter_bytes);
    if let Some(p) = pick!(secure) {
        c.secure = p.parse().map_err(|e| anyhow::anyhow!("--secure: {e}"))?;
    }
    if let Some(path) = pick!(secure_key) {
        let bytes = std::fs::read(&path).with_context(|| format!("--secure-key: reading {}", path.display()))?;
        let key = weft_server::secure::IdentityKey::from_pkcs8(&bytes)
            .map_err(|e| anyhow::anyhow!("--secure-key {}: {e}", path.display()))?;
        c.secure_identity = Some(std::sync::Arc::new(key));
    }
    let core = pick!(core).unwrap_or(Core::Tokio);
    let http_addr = pick!(http_addr);
    // Refused before the files are read, so the refusal is the same whatever they hold.
    if core != Core::Tokio && (args.tls.tls_cert.is_some() || file.tls_cert.is_some()) {
        bail!(
            "--core epoll and --core io-uring serve cleartext HTTP/1.1 WebSockets only; TLS, HTTP/2 and HTTP/3 run on --core tokio"
        );
    }
    let tls = TlsArgs::load(
        args.tls.tls_cert.clone().or(file.tls_cert.clone()),
        args.tls.tls_key.clone().or(file.tls_key.clone()),
    )?;
    c.validate().map_err(anyhow::Error::msg)?;
    if core != Core::Tokio {
        if http_addr == Some(addr) && addr.port() != 0 {
            bail!("--http-addr must differ from --addr: the event-driven core serves only WebSockets on --addr");
        }
    } else if http_addr.is_some() {
        bail!("--http-addr is for --core epoll or io-uring (with --core tokio the HTTP API is served on --addr)");
    }
    Ok(Settings { addr, threads, core, http_addr, config: c, tls })
}

/// Set in each process `--workers` starts: its index.
const WORKER_ENV: &str = "WEFT_WORKER_INDEX";

pub(crate) fn run(args: ServeArgs) -> ExitCode {
    let worker: Option<usize> = std::env::var(WORKER_ENV).ok().and_then(|v| v.parse().ok());
    let workers = args.workers.unwrap_or(1);
    let pin = args.pin;
    let Settings { addr, threads, core, http_addr, mut config, tls } = match settings(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft serve: {e:#}");
            return ExitCode::from(2);
        }
    };
    if workers == 0 {
        eprintln!("weft serve: --workers must be at least 1");
        return ExitCode::from(2);
    }
    if worker.is_none() && workers > 1 {
        if config.broker.is_none() {
            eprintln!(
                "weft serve: --workers {workers} runs {workers} processes that share topics, history and presence \
                 only through a cluster broker: add --broker redis://HOST:PORT or nats://HOST:PORT (docs/CLUSTER.md)"
            );
            return ExitCode::from(2);
        }
        return crate::workers::supervise(workers);
    }
    let threads = match worker {
        Some(i) => {
            if pin {
                crate::workers::pin_to_cpu(i);
            }
            if let Some(name) = &config.node_name {
                config.node_name = Some(format!("{name}-w{i}"));
            }
            Some(threads.unwrap_or(1))
        }
        None => threads,
    };
    if core != Core::Tokio {
        // The loops serve the WebSockets; brokers, timers and the HTTP API run on one runtime
        // thread beside them.
        let loops = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("weft serve: cannot start runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(serve_on_loops(addr, http_addr, core, loops, config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft serve: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n.max(1)).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft serve: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(addr, config, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    addr: SocketAddr,
    config: EngineConfig,
    tls: Option<std::sync::Arc<weft::tls::ReloadableCert>>,
) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let (engine, anonymous, open_api) = start_engine(config).await?;
    let listener = if std::env::var_os(WORKER_ENV).is_some() {
        crate::workers::reuseport_listener(addr).with_context(|| format!("binding {addr} (SO_REUSEPORT)"))?
    } else {
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?
    };
    let addr = listener.local_addr()?;
    if anonymous {
        tracing::warn!(
            "ANONYMOUS MODE: no JWT key configured — anyone who can reach {addr} may subscribe and publish on every \
             topic{}. Set --jwt-secret (or --jwt-rsa-key / --jwt-ec-key) for real use.",
            if open_api { ", and POST /api/publish is open" } else { "" }
        );
    }
    let (ws, http) = if tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    // With TLS, HTTP/3 too: QUIC on the same port number (UDP), advertised with Alt-Svc.
    let h3 = match &tls {
        Some(cert) => {
            let reuseport = std::env::var_os(WORKER_ENV).is_some();
            crate::quic::server(cert, addr, &weft::Acceptor::new(), reuseport).await?.map(|(server, alt_svc)| {
                engine.set_alt_svc(alt_svc);
                server
            })
        }
        None => None,
    };
    tracing::info!(
        "weft serve listening on {addr}: WebSocket {ws}://{addr}/ws, dashboard {http}://{addr}/, chat {http}://{addr}/chat{}",
        if h3.is_some() { " (HTTP/1.1, HTTP/2 and HTTP/3)" } else { "" }
    );
    let reloader = h3.as_ref().map(crate::quic::reloader);
    let h3_task: Option<tokio::task::JoinHandle<std::io::Result<()>>> = h3.map(|server| {
        #[cfg(feature = "http3")]
        let engine = engine.clone();
        #[cfg(feature = "http3")]
        return tokio::spawn(async move { engine.serve_h3(server).await });
        #[cfg(not(feature = "http3"))]
        match server {}
    });
    let server = tokio::spawn({
        let engine = engine.clone();
        let acceptor = tls.map(|cert| {
            reload_on_sighup(cert.clone(), reloader);
            weft::tls::TlsAcceptor::from(weft::tls::server_config_alpn(cert, &[b"h2", b"http/1.1"]))
        });
        async move {
            match acceptor {
                Some(a) => engine.serve_tls(listener, a).await,
                None => engine.serve(listener).await,
            }
        }
    });
    stop.await;
    tracing::info!("shutting down: closing connections with 1001");
    engine.shutdown();
    server.await.context("server task")??;
    if let Some(t) = h3_task {
        t.await.context("HTTP/3 task")??;
    }
    tracing::info!("bye");
    Ok(())
}

/// The engine, connected to its broker; whether it runs anonymously and with an open API.
async fn start_engine(config: EngineConfig) -> anyhow::Result<(Engine, bool, bool)> {
    crate::procfs::raise_nofile_limit();
    let anonymous = config.anonymous();
    let open_api = config.api_key.is_none();
    if let Some(k) = &config.secure_identity {
        tracing::info!(key = %k.public_key_base64(), "secure channel identity (clients pin this public key)");
    }
    let engine = Engine::connect(config).await.map_err(anyhow::Error::msg)?;
    if let Some(c) = engine.stats().cluster {
        tracing::info!(node = %c.node, nodes = c.nodes, "joined the cluster over {}", c.broker);
    }
    Ok((engine, anonymous, open_api))
}

/// `weft serve --core epoll|io-uring`: the engine's WebSockets on event loops (`loops`
/// listeners sharing `addr`), its HTTP API on `http_addr` when given.
async fn serve_on_loops(
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    core: Core,
    loops: usize,
    config: EngineConfig,
) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let (engine, anonymous, open_api) = start_engine(config).await?;
    // SO_REUSEPORT whenever the port is shared: by several loops, or by `--workers` processes.
    let reuseport = loops > 1 || std::env::var_os(WORKER_ENV).is_some();
    let first = crate::echo_loop::listener(addr, reuseport).with_context(|| format!("binding {addr}"))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..loops {
        listeners.push(crate::echo_loop::listener(addr, true).with_context(|| format!("binding {addr}"))?);
    }
    let backend = if core == Core::Epoll { weft::event_loop::Backend::Epoll } else { weft::event_loop::Backend::Auto };
    let lc = weft::event_loop::LoopConfig { backend, ..Default::default() };
    let event_loops = engine.serve_event_loops(listeners, lc).context("starting the event loops")?;
    if let Some(why) = event_loops.fallback() {
        tracing::warn!("{why}: running on epoll");
    }
    let http = match http_addr {
        Some(a) => {
            let l = if std::env::var_os(WORKER_ENV).is_some() {
                crate::workers::reuseport_listener(a)
                    .with_context(|| format!("binding {a} (--http-addr, SO_REUSEPORT)"))?
            } else {
                tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding {a} (--http-addr)"))?
            };
            let a = l.local_addr()?;
            let engine = engine.clone();
            Some((a, tokio::spawn(async move { engine.serve(l).await })))
        }
        None => None,
    };
    if anonymous {
        tracing::warn!(
            "ANONYMOUS MODE: no JWT key configured — anyone who can reach {addr} may subscribe and publish on every \
             topic{}. Set --jwt-secret (or --jwt-rsa-key / --jwt-ec-key) for real use.",
            if open_api && http.is_some() { ", and POST /api/publish is open" } else { "" }
        );
    }
    match &http {
        Some((a, _)) => tracing::info!(
            core = %event_loops.backend(), loops,
            "weft serve listening on {addr}: WebSocket ws://{addr}/ws; dashboard http://{a}/, chat http://{a}/chat, API and metrics on {a}"
        ),
        None => tracing::info!(
            core = %event_loops.backend(), loops,
            "weft serve listening on {addr}: WebSocket ws://{addr}/ws (no HTTP API: give --http-addr for the dashboard, API and metrics)"
        ),
    }
    stop.await;
    tracing::info!("shutting down: closing connections with 1001");
    engine.shutdown();
    let stats = tokio::task::spawn_blocking(move || event_loops.join()).await.context("event loops")??;
    tracing::debug!(?stats, "event loops stopped");
    if let Some((_, t)) = http {
        t.await.context("HTTP API task")??;
    }
    tracing::info!("bye");
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C), whichever comes first. The handlers are installed by this call,
/// not when the future is first polled: a server makes it before it answers anything, so that
/// a SIGTERM sent as soon as it answers stops it gracefully instead of killing it (the
/// default action) — a race that left a client with a reset instead of its 1001 on a busy
/// machine. Call inside a tokio runtime.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (term, int) => {
                if let Err(e) = term.as_ref().map(|_| ()).and(int.as_ref().map(|_| ())) {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM or SIGINT");
                }
                match (term, int) {
                    (Ok(mut t), _) => {
                        t.recv().await;
                    }
                    (_, Ok(mut i)) => {
                        i.recv().await;
                    }
                    _ => std::future::pending().await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("weft-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("weft.toml");
        std::fs::write(
            &f,
            "addr = \"127.0.0.1:7000\"\nhistory_size = 7\nqueue_size = 50\nheartbeat = 3\n[topic_policies]\n\"prices.>\" = \"latest\"\n",
        )
        .unwrap();
        let t = T::parse_from([
            "x",
            "--config",
            f.to_str().unwrap(),
            "--history-size",
            "9",
            "--topic-policy",
            "a.*=drop-oldest",
        ]);
        let Settings { addr, config: c, .. } = settings(t.a).unwrap();
        assert_eq!(addr.port(), 7000);
        assert_eq!(c.history_size, 9);
        assert_eq!(c.queue_size, 50);
        assert_eq!(c.heartbeat, Duration::from_secs(3));
        assert_eq!(c.topic_policies.len(), 2);
        assert_eq!(c.topic_policies[0].1, SlowConsumerPolicy::DropOldest);
        assert_eq!(c.topic_policies[1].1, SlowConsumerPolicy::Latest);
        assert!(c.anonymous());
        std::fs::write(&f, "nonsense_key = 1\n").unwrap();
        let t = T::parse_from(["x", "--config", f.to_str().unwrap()]);
        assert!(settings(t.a).is_err());
        let t = T::parse_from(["x", "--queue-size", "10", "--history-size", "20"]);
        assert!(settings(t.a).unwrap_err().to_string().contains("queue_size"));
    }

    #[test]
    fn weak_secrets_and_sizes() {
        let t = T::parse_from(["x", "--jwt-secret", ""]);
        let e = format!("{:#}", settings(t.a).unwrap_err());
        assert!(e.contains("at least 32"), "{e}");
        let t = T::parse_from(["x", "--jwt-secret", "0123456789abcdef0123456789abcdef", "--history-memory", "64M"]);
        let c = settings(t.a).unwrap().config;
        assert!(!c.anonymous());
        assert_eq!(c.history_memory, 64 << 20);
        assert!(c.deflate);
        let c = settings(T::parse_from(["x", "--deflate", "false"]).a).unwrap().config;
        assert!(!c.deflate);
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12X").is_err() && parse_size("M").is_err());
    }

    #[test]
    fn server_core_flags() {
        let s = settings(T::parse_from(["x"]).a).unwrap();
        assert_eq!((s.core, s.http_addr), (Core::Tokio, None));
        let s = settings(T::parse_from(["x", "--core", "io-uring", "--http-addr", "127.0.0.1:8081"]).a).unwrap();
        assert_eq!((s.core, s.http_addr), (Core::IoUring, Some("127.0.0.1:8081".parse().unwrap())));
        // The HTTP API has a port of its own on the event-driven core, and none apart on tokio.
        let e = format!(
            "{:#}",
            settings(T::parse_from(["x", "--core", "epoll", "--http-addr", "127.0.0.1:8080"]).a).unwrap_err()
        );
        assert!(e.contains("--http-addr must differ"), "{e}");
        // TLS is refused on the event-driven core before its files are read.
        let t =
            T::parse_from(["x", "--core", "epoll", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"]);
        let e = format!("{:#}", settings(t.a).unwrap_err());
        assert!(e.contains("cleartext HTTP/1.1 WebSockets only"), "{e}");
        let e = format!("{:#}", settings(T::parse_from(["x", "--http-addr", "127.0.0.1:8081"]).a).unwrap_err());
        assert!(e.contains("--core epoll or io-uring"), "{e}");
        // From the file too.
        let dir = std::env::temp_dir().join(format!("weft-core-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("weft.toml");
        std::fs::write(&f, "core = \"epoll\"\nhttp_addr = \"127.0.0.1:9999\"\n").unwrap();
        let s = settings(T::parse_from(["x", "--config", f.to_str().unwrap()]).a).unwrap();
        assert_eq!((s.core, s.http_addr.map(|a| a.port())), (Core::Epoll, Some(9999)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn snapshot_sources() {
        use weft_server::snapshot::Snapshots;
        let c = settings(T::parse_from(["x"]).a).unwrap().config;
        assert!(matches!(c.snapshots, Snapshots::Off));
        let c = settings(T::parse_from(["x", "--snapshots", "last"]).a).unwrap().config;
        assert!(matches!(c.snapshots, Snapshots::LastEvent));
        let t = T::parse_from(["x", "--snapshots", "https://state.local/s?key=s3cret", "--snapshot-timeout", "0.5"]);
        let c = settings(t.a).unwrap().config;
        assert!(matches!(c.snapshots, Snapshots::Provider(_)));
        assert_eq!(c.snapshot_timeout, Duration::from_millis(500));
        let e = format!("{:#}", settings(T::parse_from(["x", "--snapshots", "ftp://x/?key=s3cret"]).a).unwrap_err());
        assert!(e.contains("http:// or https://") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn secure_channel_flags() {
        use weft_server::secure::{IdentityKey, SecurePolicy};
        let c = settings(T::parse_from(["x"]).a).unwrap().config;
        assert_eq!((c.secure, c.secure_identity.is_none()), (SecurePolicy::Allow, true));
        let c = settings(T::parse_from(["x", "--secure", "require"]).a).unwrap().config;
        assert_eq!(c.secure, SecurePolicy::Require);
        assert!(settings(T::parse_from(["x", "--secure", "maybe"]).a).is_err());
        let dir = std::env::temp_dir().join(format!("weft-secure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, der) = IdentityKey::generate().unwrap();
        let path = dir.join("id.der");
        std::fs::write(&path, der).unwrap();
        let c = settings(T::parse_from(["x", "--secure-key", path.to_str().unwrap()]).a).unwrap().config;
        assert_eq!(c.secure_identity.unwrap().public_key(), key.public_key());
        // A key with the channel off, and a file that is no key, stop the start.
        let e = settings(T::parse_from(["x", "--secure", "off", "--secure-key", path.to_str().unwrap()]).a);
        assert!(format!("{:#}", e.unwrap_err()).contains("off"));
        std::fs::write(&path, "not a key").unwrap();
        let e = format!("{:#}", settings(T::parse_from(["x", "--secure-key", path.to_str().unwrap()]).a).unwrap_err());
        assert!(e.contains("--secure-key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
