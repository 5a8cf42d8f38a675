//! `weft bench fanout`: N subscribers on one topic of the engine, one publisher; deliveries/s,
//! end-to-end latency (publish → receipt, same machine clock), gaps and duplicates per subscriber.
//!
//! Without `--rate` the publisher runs as fast as the subscribers keep up: it stays at most
//! `--window` events ahead of the deliveries, so no queue overflows and the number measured is
//! the sustainable fan-out rate.
//!
//! The run fails (exit status 1, with the reasons on stderr) when a publish was refused or when
//! events were missing, duplicated or out of order at any subscriber.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use weft::{ClientBuilder, Message};

use super::receiver;
use super::report::Percentiles;
use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    /// Engine URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Engine URLs for the subscribers, spread over them in turn (repeatable): with a cluster,
    /// publish on one node (`--url`) and subscribe on others. Default: `--url`.
    #[arg(long = "subscriber-url", value_name = "URL")]
    pub(crate) subscriber_urls: Vec<String>,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Topic name.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// What the subscribers subscribe to: a pattern covering `--topic` (`bench.>`, `*`)
    /// measures pattern subscriptions. Default: the topic itself. Engine protocol only.
    #[arg(long, value_name = "TOPIC_OR_PATTERN")]
    subscribe: Option<String>,
    /// Subscribe with subscription filters, N distinct ones spread over the subscribers
    /// (`{"payload.t": {"$gt": k}}`, k < N: every event passes each, so deliveries stay the
    /// same and what changes is the cost of evaluating them). Engine protocol only.
    #[arg(long, value_name = "N")]
    filters: Option<usize>,
    /// Publish rate (events/s); without it, as fast as the subscribers keep up.
    #[arg(long)]
    rate: Option<f64>,
    /// Most events published and not yet delivered to every subscriber (without --rate).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Payload size in bytes (includes the send timestamp).
    #[arg(long, short = 's', default_value_t = 256)]
    size: usize,
    /// Seconds of publishing.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Generator runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Number of 127.0.0.x source addresses to spread client sockets over.
    #[arg(long, default_value_t = 16)]
    source_ips: u8,
    /// What the server speaks: `weft` (the engine protocol) or `plain`, the minimal protocol
    /// of the peer fan-out servers in bench/peers (`S <topic>` subscribes and is answered with
    /// a text containing `subscribed`; `P <topic> <event>` broadcasts `<event>` verbatim; the
    /// generator numbers the events itself).
    #[arg(long, value_enum, default_value_t = Protocol::Weft)]
    protocol: Protocol,
    /// Offer permessage-deflate on every connection (the engine compresses each event once
    /// for all subscribers that negotiated it). The subscribers then receive with `full`.
    #[arg(long)]
    deflate: bool,
    /// How subscribers receive: `raw` reads frames straight off the socket (many per read, no
    /// message allocated, the offset found without parsing the JSON), `full` through weft's
    /// client like an application (a `Message` per event). Default: `raw` (`full` with
    /// `--deflate`).
    #[arg(long, value_enum)]
    receiver: Option<ReceivePath>,
    /// Server process to measure (CPU, RSS per subscriber); without it they are unknown (null
    /// in `--json`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after the last subscriber subscribed before reading the server's memory
    /// (`server_rss_per_subscriber`): longer for servers that store idle connections small
    /// after a quiet period (`weft serve --core`: between 1 and 2 s).
    #[arg(long, default_value_t = 0.5)]
    settle: f64,
    /// JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The protocol spoken to the server under test.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// weft's engine protocol (docs/PROTOCOL.md), JSON subprotocol.
    Weft,
    /// The peers' minimal broadcast protocol (see `--protocol`).
    Plain,
}

/// How the generator's subscribers receive (see `--receiver`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReceivePath {
    /// Straight off the socket.
    Raw,
    /// Through weft's client.
    Full,
}

/// One fan-out run.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutReport {
    scenario: &'static str,
    url: String,
    protocol: Protocol,
    subscribers: usize,
    connected: usize,
    size: usize,
    seconds: f64,
    published: u64,
    /// Publishes the server refused (error replies).
    publish_errors: u64,
    first_publish_error: Option<String>,
    deliveries: u64,
    expected: u64,
    /// `expected - deliveries`.
    missing: u64,
    deliveries_per_sec: f64,
    latency_us: Percentiles,
    gaps: u64,
    duplicates: u64,
    out_of_order: u64,
    disconnected: usize,
    connect_retries: u64,
    server_rss_per_subscriber: Option<f64>,
    server_cpu_cores: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    generator_cpu_cores: Option<f64>,
    /// The generator's own CPU per delivery: 1 / this is what it could receive on one core.
    generator_cpu_us_per_delivery: Option<f64>,
    generator_bound: bool,
    /// How the subscribers received (`--receiver`).
    receiver: ReceivePath,
}

impl FanoutReport {
    pub(crate) fn print(&self) {
        let l = &self.latency_us;
        println!(
            "fanout {} subscribers ({} connected), {} B: {} published, {} deliveries in {:.2} s = {:.0} deliveries/s",
            self.subscribers,
            self.connected,
            self.size,
            self.published,
            self.deliveries,
            self.seconds,
            self.deliveries_per_sec
        );
        println!(
            "  latency us: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        println!(
            "  publish errors {}  gaps {}  duplicates {}  out of order {}  missing {}  disconnected {}  connect retries {}",
            self.publish_errors,
            self.gaps,
            self.duplicates,
            self.out_of_order,
            self.missing,
            self.disconnected,
            self.connect_retries
        );
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        let server = match (self.server_cpu_cores, self.server_cpu_us_per_delivery) {
            (Some(cores), Some(us)) => format!("server: {cores:.2} cores, {us:.2} us per delivery"),
            _ => "server CPU unknown (give --server-pid)".to_owned(),
        };
        println!(
            "  {server}, {} RSS per subscriber; generator ({:?} receiver) {} cores, {} per delivery{}",
            opt(self.server_rss_per_subscriber, " B"),
            self.receiver,
            opt(self.generator_cpu_cores, ""),
            opt(self.generator_cpu_us_per_delivery, " us"),
            if self.generator_bound { " (generator-bound)" } else { "" }
        );
    }

    /// Why the run does not count as a success (empty: it does).
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.published == 0 || self.deliveries == 0 {
            p.push(format!("{} published, {} delivered", self.published, self.deliveries));
        }
        if self.publish_errors > 0 {
            p.push(format!(
                "{} of {} publishes refused by the server (first: {})",
                self.publish_errors,
                self.published,
                self.first_publish_error.as_deref().unwrap_or("?")
            ));
        }
        if self.missing > 0 {
            p.push(format!("{} of {} expected deliveries missing", self.missing, self.expected));
        }
        if self.gaps > 0 {
            p.push(format!("{} events skipped (offset gaps)", self.gaps));
        }
        if self.duplicates > 0 {
            p.push(format!("{} duplicate events", self.duplicates));
        }
        if self.out_of_order > 0 {
            p.push(format!("{} events out of order", self.out_of_order));
        }
        if self.disconnected > 0 {
            p.push(format!("{} subscribers disconnected", self.disconnected));
        }
        p
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Receive through weft's full client: every event a `Message` (inflated with `--deflate`).
async fn receive_full(
    mut ws: weft::WebSocket<tokio::net::TcpStream>,
    sh: &Shared,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    let mut rx = receiver::Receiver::new(&[], 0);
    loop {
        let next = tokio::select! {
            m = ws.recv() => m,
            _ = async { let _ = stop.wait_for(|v| *v).await; } => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return None;
            }
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let Some((off, sent)) = receiver::offset_and_sent(t.as_bytes()) else { continue };
                let now = now_ns();
                let before = rx.tally;
                receiver::with_latency(|h| rx.count(off, sent, now, h));
                sh.add(before, rx.tally, now);
            }
            Some(Ok(_)) => {}
            _ => {
                if !sh.stop.load(Ordering::Relaxed) {
                    sh.disconnected.fetch_add(1, Ordering::Relaxed);
                }
                return None;
            }
        }
    }
}

/// Receive straight off the socket ([`receiver`]): many events per read, none allocated.
async fn receive_raw(
    ws: weft::WebSocket<tokio::net::TcpStream>,
    sh: &Shared,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    seed: u32,
) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let end = |sh: &Shared, why: Option<String>| {
        if !sh.stop.load(Ordering::Relaxed) {
            sh.disconnected.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = &why {
                tracing::warn!(reason = %w, "subscriber ended");
            }
        }
        why
    };
    let (mut tcp, mut conn) = ws.into_parts();
    let Some(unread) = conn.take_unread() else {
        let e = "events arrived before the subscription was confirmed".to_owned();
        sh.disconnected.fetch_add(1, Ordering::Relaxed);
        return Some(e);
    };
    // What the client still had to write (an automatic pong) goes first.
    while let Some(b) = conn.poll_transmit() {
        if let Err(e) = tcp.write_all(&b).await {
            return end(sh, Some(e.to_string()));
        }
    }
    drop(conn);
    let mut rx = receiver::Receiver::new(&[], seed);
    // Whole events read ahead by the client count now, not at the next read.
    let now = now_ns();
    if let Err(e) = receiver::with_latency(|h| rx.feed(&unread, now, h)) {
        return end(sh, Some(e));
    }
    sh.add(receiver::Tally::default(), rx.tally, now);
    loop {
        tokio::select! {
            r = tcp.readable() => if let Err(e) = r { return end(sh, Some(e.to_string())) },
            _ = async { let _ = stop.wait_for(|v| *v).await; } => {
                let close = rx.close_frame();
                let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&close)).await;
                return None;
            }
        }
        loop {
            let before = rx.tally;
            let now = now_ns();
            let read = receiver::READ_BUF.with_borrow_mut(|buf| match tcp.try_read(buf) {
                Ok(0) => Err("the server closed the connection".to_owned()),
                Ok(n) => receiver::with_latency(|h| rx.feed(&buf[..n], now, h)).map(|()| Some(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e.to_string()),
            });
            sh.add(before, rx.tally, now);
            if !rx.replies.is_empty() {
                let replies = std::mem::take(&mut rx.replies);
                match tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&replies)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return end(sh, Some(e.to_string())),
                    Err(_) => return end(sh, Some("the server does not read our pongs".into())),
                }
            }
            match read {
                // Others (and the publisher) get their turn on a busy thread.
                Ok(Some(_)) if rx.closed.is_none() => tokio::task::consume_budget().await,
                Ok(Some(_)) => return end(sh, rx.closed.map(|c| format!("the server closed with {c}"))),
                Ok(None) => break,
                Err(e) => return end(sh, Some(e)),
            }
        }
    }
}

struct Shared {
    /// Updated once per read (not per event): the publisher's window reads it.
    delivered: AtomicU64,
    gaps: AtomicU64,
    dupes: AtomicU64,
    out_of_order: AtomicU64,
    disconnected: AtomicUsize,
    connected: AtomicUsize,
    last_receive_ns: AtomicU64,
    connect_retries: AtomicU64,
    stop: AtomicBool,
    /// Told when deliveries progress (the publisher waits on it for its window).
    progress: tokio::sync::Notify,
}

impl Shared {
    /// Count what one subscriber received since `before` (at `now`).
    fn add(&self, before: receiver::Tally, after: receiver::Tally, now: u64) {
        if after.delivered == before.delivered {
            return;
        }
        self.delivered.fetch_add(after.delivered - before.delivered, Ordering::Relaxed);
        self.last_receive_ns.fetch_max(now, Ordering::Relaxed);
        self.progress.notify_one();
        for (sum, a, b) in [
            (&self.gaps, after.gaps, before.gaps),
            (&self.dupes, after.duplicates, before.duplicates),
            (&self.out_of_order, after.out_of_order, before.out_of_order),
        ] {
            if a != b {
                sum.fetch_add(a - b, Ordering::Relaxed);
            }
        }
    }
}

pub(crate) fn run(args: FanoutArgs) -> anyhow::Result<FanoutReport> {
    procfs::raise_nofile_limit();
    // One thread: everything (subscribers and publisher) on it, with no wake-ups across
    // threads; more: a multi-thread runtime.
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    rt.block_on(bench(args))
}

/// Connect, retrying a connection reset or refused during the TCP or WebSocket handshake a few
/// times (servers under a connect storm may drop some), as a real client would.
async fn connect_one(
    url: &str,
    target: SocketAddr,
    ip: Ipv4Addr,
    protocol: Protocol,
    deflate: bool,
    retries: &AtomicU64,
) -> anyhow::Result<weft::WebSocket<tokio::net::TcpStream>> {
    let mut attempt = 0;
    loop {
        match connect_attempt(url, target, ip, protocol, deflate).await {
            Ok(ws) => return Ok(ws),
            Err(e) if attempt < 5 => {
                tracing::debug!(error = %e, "connect failed, retrying");
                retries.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn connect_attempt(
    url: &str,
    target: SocketAddr,
    ip: Ipv4Addr,
    protocol: Protocol,
    deflate: bool,
) -> anyhow::Result<weft::WebSocket<tokio::net::TcpStream>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
    let tcp = sock.connect(target).await?;
    let mut b = ClientBuilder::new(url);
    if deflate {
        b = b.deflate(weft::DeflateConfig::default());
    }
    if protocol == Protocol::Plain {
        return Ok(b.connect_on(tcp).await?);
    }
    let mut ws = b.subprotocol("weft.v1.json").connect_on(tcp).await?;
    match ws.recv().await {
        Some(Ok(Message::Text(t))) if t.as_str().contains("\"welcome\"") => Ok(ws),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

/// The loopback socket address of a `ws://` URL.
fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: weft::http::Uri = url.parse()?;
    let host: Ipv4Addr = uri.host().unwrap_or("127.0.0.1").parse()?;
    anyhow::ensure!(host.is_loopback(), "only loopback targets");
    Ok(SocketAddr::V4(SocketAddrV4::new(host, uri.port_u16().unwrap_or(80))))
}

async fn bench(args: FanoutArgs) -> anyhow::Result<FanoutReport> {
    let target = loopback_target(&args.url)?;
    let sub_urls: Vec<(String, SocketAddr)> = if args.subscriber_urls.is_empty() {
        vec![(args.url.clone(), target)]
    } else {
        args.subscriber_urls.iter().map(|u| Ok((u.clone(), loopback_target(u)?))).collect::<anyhow::Result<_>>()?
    };
    let n = args.subscribers;
    let sh = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        dupes: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        disconnected: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        last_receive_ns: AtomicU64::new(0),
        connect_retries: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        progress: tokio::sync::Notify::new(),
    });
    // The publisher connects first, so a server that caps its connections refuses subscribers
    // (reported as not connected) rather than the publisher.
    let publisher =
        connect_one(&args.url, target, Ipv4Addr::new(127, 0, 0, 1), args.protocol, args.deflate, &sh.connect_retries)
            .await
            .map_err(|e| e.context("publisher connection"))?;
    let rss0 = args.server_pid.and_then(procfs::rss_bytes);
    let gate = Arc::new(Semaphore::new(256));
    let subscribe = match (args.protocol, &args.subscribe) {
        (Protocol::Weft, target) => {
            let target = target.as_deref().unwrap_or(&args.topic);
            format!(r#"{{"type":"subscribe","topics":[{}]"#, serde_json::to_string(target)?)
        }
        (Protocol::Plain, None) if args.filters.is_none() => format!("S {}", args.topic),
        (Protocol::Plain, None) => anyhow::bail!("--filters is for the engine protocol (--protocol weft)"),
        (Protocol::Plain, Some(_)) => anyhow::bail!("--subscribe is for the engine protocol (--protocol weft)"),
    };
    let (protocol, deflate) = (args.protocol, args.deflate);
    let path = match (args.receiver, deflate) {
        (Some(ReceivePath::Raw), true) => {
            anyhow::bail!("--deflate needs --receiver full (the raw receiver does not inflate)")
        }
        (Some(p), _) => p,
        (None, true) => ReceivePath::Full,
        (None, false) => ReceivePath::Raw,
    };
    let mut tasks = Vec::with_capacity(n);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for i in 0..n {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + (i % args.source_ips.max(1) as usize) as u8);
        let (url, target) = sub_urls[i % sub_urls.len()].clone();
        let sub = match (protocol, args.filters) {
            (Protocol::Plain, _) => subscribe.clone(),
            (Protocol::Weft, None) => format!("{subscribe}}}"),
            (Protocol::Weft, Some(k)) => {
                format!(r#"{subscribe},"filter":{{"payload.t":{{"$gt":{}}}}}}}"#, i % k.max(1))
            }
        };
        let (gate, sh, ready) = (gate.clone(), sh.clone(), ready_tx.clone());
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("open");
            let ws = async {
                let mut ws = connect_one(&url, target, ip, protocol, deflate, &sh.connect_retries).await?;
                ws.send(Message::text(sub)).await?;
                match ws.recv().await {
                    Some(Ok(Message::Text(t)))
                        if t.as_str().contains("\"subscribed\"") && t.as_str().contains("\"ok\":true") =>
                    {
                        Ok(ws)
                    }
                    other => anyhow::bail!("subscribe failed: {other:?}"),
                }
            }
            .await;
            drop(permit);
            let ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Some(e.to_string());
                }
            };
            sh.connected.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(Ok(()));
            drop(ready);
            if path == ReceivePath::Full {
                receive_full(ws, &sh, &mut stop).await
            } else {
                receive_raw(ws, &sh, &mut stop, i as u32).await
            }
        }));
        if i % 1000 == 999 {
            tokio::task::yield_now().await;
        }
    }
    drop(ready_tx);
    let (mut answered, mut failed) = (0, 0);
    while answered < n {
        match ready_rx.recv().await {
            None => break,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                if failed == 0 {
                    eprintln!("weft bench fanout: a subscriber failed: {e}");
                }
                failed += 1;
            }
        }
        answered += 1;
    }
    if failed > 0 {
        eprintln!("weft bench fanout: {failed} of {n} subscribers failed to connect or subscribe");
    }
    let connected = sh.connected.load(Ordering::Relaxed);
    anyhow::ensure!(connected > 0, "no subscriber could connect and subscribe");
    tokio::time::sleep(Duration::from_secs_f64(args.settle.clamp(0.0, 600.0))).await;
    let rss1 = args.server_pid.and_then(procfs::rss_bytes);

    // Publisher: its own connection, pipelined publishes.
    // Text that compresses like prose or JSON (about 3:1), not like a run of one byte.
    let pad = filler(args.size.saturating_sub(40));
    let (srv0, gen0) = (super::server_cpu(args.server_pid), procfs::cpu(None));
    let t0 = Instant::now();
    let start_ns = now_ns();
    let end = t0 + Duration::from_secs_f64(args.duration);
    let mut published = 0u64;
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let pub_errors = Arc::new(AtomicU64::new(0));
    let first_pub_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (mut pub_rx_task, mut pub_ack) = {
        // Read the publisher's replies in the background (and keep its connection serviced):
        // acks and refusals, counted together in the watch.
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let (mut rd, wr) = publisher.split();
        let (errors, first) = (pub_errors.clone(), first_pub_error.clone());
        let task = tokio::spawn(async move {
            let mut answered = 0u64;
            while let Some(Ok(m)) = rd.recv().await {
                if let Message::Text(t) = m {
                    if t.as_str().contains("\"published\"") {
                        answered += 1;
                    } else if t.as_str().contains("\"error\"") {
                        answered += 1;
                        errors.fetch_add(1, Ordering::Relaxed);
                        first.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| t.as_str().to_owned());
                    } else {
                        continue;
                    }
                    let _ = tx.send(answered);
                }
            }
            rd
        });
        publish_loop(wr, &mut published, &args, &pad, interval, end, &sh, connected as u64).await?;
        (task, rx)
    };
    let publish_seconds = t0.elapsed().as_secs_f64();
    if args.protocol == Protocol::Weft {
        // Every publish is answered (published or error): wait for the answers, up to 5 s.
        let _ = tokio::time::timeout(Duration::from_secs(5), pub_ack.wait_for(|n| *n >= published)).await;
    }
    // Wait for the tail to arrive (everything, or 5 s of silence).
    let expected = published * connected as u64;
    // Refused publishes never arrive: wait for the ones the server took.
    let deliverable = published.saturating_sub(pub_errors.load(Ordering::Relaxed)) * connected as u64;
    let mut idle_since = Instant::now();
    let mut last_seen = 0;
    while sh.delivered.load(Ordering::Relaxed) < deliverable {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = sh.delivered.load(Ordering::Relaxed);
        if d != last_seen {
            last_seen = d;
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let (srv1, gen1) = (super::server_cpu(args.server_pid), procfs::cpu(None));
    let delivered = sh.delivered.load(Ordering::Relaxed);
    let last_ns = sh.last_receive_ns.load(Ordering::Relaxed).max(start_ns + 1);
    let seconds = (last_ns - start_ns) as f64 / 1e9;
    let _ = publish_seconds;
    sh.stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    pub_rx_task.abort();
    let _ = (&mut pub_rx_task).await;
    for t in tasks {
        let _ = t.await;
    }
    let hist = receiver::latencies();
    let srv = procfs::cpu_delta(srv0, srv1);
    let gen_cpu = procfs::cpu_delta(gen0, gen1);
    Ok(FanoutReport {
        scenario: "fanout",
        url: args.url.clone(),
        protocol: args.protocol,
        subscribers: n,
        connected,
        size: args.size,
        seconds,
        published,
        publish_errors: pub_errors.load(Ordering::Relaxed),
        first_publish_error: first_pub_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        deliveries: delivered,
        expected,
        missing: expected.saturating_sub(delivered),
        deliveries_per_sec: delivered as f64 / seconds.max(1e-9),
        latency_us: Percentiles::from_hist(&hist),
        gaps: sh.gaps.load(Ordering::Relaxed),
        duplicates: sh.dupes.load(Ordering::Relaxed),
        out_of_order: sh.out_of_order.load(Ordering::Relaxed),
        disconnected: sh.disconnected.load(Ordering::Relaxed),
        connect_retries: sh.connect_retries.load(Ordering::Relaxed),
        server_rss_per_subscriber: match (rss0, rss1) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) / connected.max(1) as f64),
            _ => None,
        },
        server_cpu_cores: srv.map(|(_, c)| c),
        server_cpu_us_per_delivery: srv.map(|(secs, _)| secs * 1e6 / delivered.max(1) as f64),
        generator_cpu_cores: gen_cpu.map(|(_, c)| c),
        generator_cpu_us_per_delivery: gen_cpu.map(|(secs, _)| secs * 1e6 / delivered.max(1) as f64),
        receiver: path,
        generator_bound: gen_cpu.is_some_and(|(_, c)| c >= 0.9 * args.threads as f64),
    })
}

#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    mut wr: weft::WriteHalf<tokio::net::TcpStream>,
    published: &mut u64,
    args: &FanoutArgs,
    pad: &str,
    interval: Option<Duration>,
    end: Instant,
    sh: &Shared,
    subscribers: u64,
) -> anyhow::Result<()> {
    let mut next = Instant::now();
    while Instant::now() < end {
        match interval {
            Some(iv) => {
                tokio::time::sleep_until(next.into()).await;
                next += iv;
            }
            None => {
                // Stay at most `window` events ahead of full delivery.
                // Sleeps until deliveries progress (no spinning: the generator's one core is
                // for receiving).
                while (*published).saturating_mul(subscribers).saturating_sub(sh.delivered.load(Ordering::Relaxed))
                    > args.window * subscribers
                {
                    if Instant::now() >= end {
                        return Ok(());
                    }
                    let _ = tokio::time::timeout_at(end.into(), sh.progress.notified()).await;
                }
            }
        }
        let msg = match args.protocol {
            Protocol::Weft => {
                format!(r#"{{"type":"publish","topic":"{}","payload":{{"t":{},"p":"{}"}}}}"#, args.topic, now_ns(), pad)
            }
            Protocol::Plain => format!(
                r#"P {} {{"type":"event","topic":"{}","offset":{},"payload":{{"t":{},"p":"{}"}}}}"#,
                args.topic,
                args.topic,
                *published + 1,
                now_ns(),
                pad
            ),
        };
        wr.send(Message::text(msg)).await?;
        *published += 1;
    }
    Ok(())
}

/// `len` bytes of words drawn from a small vocabulary by a fixed pseudo-random sequence.
fn filler(len: usize) -> String {
    const WORDS: [&str; 16] = [
        "price", "order", "alpha", "delta", "quote", "north", "sigma", "ticket", "update", "market", "level", "volume",
        "orbit", "lambda", "signal", "vector",
    ];
    let mut x = 0x2545_f491_u32;
    let mut s = String::with_capacity(len + 8);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.push_str(WORDS[(x % 16) as usize]);
        s.push(if x & 0x100 == 0 { ' ' } else { '-' });
        if x & 0x3000 == 0 {
            s.push_str(&(x % 1000).to_string());
        }
    }
    s.truncate(len);
    s
}
