//! `weft bench echo`: request-response (`--in-flight 1`) or pipelined echo load.
//!
//! Each generator thread runs a single-threaded runtime with its share of the connections, a
//! histogram and a counter of its own, so threads never contend. Every connection keeps
//! `in_flight` messages outstanding; echoes arrive in order, so the send time of the oldest
//! outstanding message gives the round-trip time. Replies that arrive together are answered with
//! one flush.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use weft::{ClientBuilder, Config, DeflateConfig, Message};

use super::report::{EchoReport, Percentiles};
use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EchoArgs {
    /// Server URL.
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    pub(crate) url: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub(crate) connections: usize,
    /// Payload size in bytes.
    #[arg(long, short = 's', default_value_t = 512)]
    pub(crate) size: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, short = 'd', default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Stop after this many measured messages instead of after `--duration`.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Messages outstanding per connection (1 = request-response).
    #[arg(long, default_value_t = 1)]
    pub(crate) in_flight: usize,
    /// Total target rate in messages per second, spread over the connections (request-response
    /// pacing; RTT is measured from the scheduled send time, so queueing delay is counted).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Send text frames instead of binary.
    #[arg(long)]
    pub(crate) text: bool,
    /// Offer permessage-deflate.
    #[arg(long)]
    pub(crate) deflate: bool,
    /// Trust this PEM certificate as a root for `wss://` (a test CA or self-signed server).
    #[arg(long)]
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// WebSockets over HTTP/2 (RFC 8441): each generator thread opens one HTTP/2 connection
    /// (ALPN h2 for `wss://`, prior knowledge for `ws://`) and multiplexes its share of the
    /// `--connections` on it as streams.
    #[arg(long)]
    pub(crate) http2: bool,
    /// WebSockets over HTTP/3 (RFC 9220): each generator thread opens one QUIC connection
    /// (UDP, TLS; trust the server with --ca-file) and multiplexes its share of the
    /// `--connections` on it as streams.
    #[arg(long, conflicts_with = "http2")]
    pub(crate) http3: bool,
    /// Server process to measure (CPU per message, RSS) from /proc; without it the server's
    /// CPU and RSS are unknown (null in `--json`).
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Print one JSON object and nothing else.
    #[arg(long)]
    pub(crate) json: bool,
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    measured: AtomicU64,
    connected: AtomicUsize,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut g = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e.to_string());
        }
    }
}

pub(crate) fn run(args: EchoArgs) -> anyhow::Result<EchoReport> {
    anyhow::ensure!(args.connections > 0 && args.in_flight > 0 && args.threads > 0, "counts must be positive");
    let per_thread = args.connections.div_ceil(args.threads);
    anyhow::ensure!(
        !(args.http2 || args.http3) || per_thread <= 100,
        "--http2/--http3 put each generator thread's connections on one connection, and servers allow \
         100 streams on one by default: {per_thread} per thread is too many (use --threads {})",
        args.connections.div_ceil(100)
    );
    if args.http3 {
        crate::quic::client(ClientBuilder::new(&args.url))?;
    }
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        weft::tls::certs_from_pem(&pem).map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
    }
    procfs::raise_nofile_limit();
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        measured: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let payload = Bytes::from(vec![b'w'; args.size]);
    let threads: Vec<_> = (0..args.threads)
        .map(|t| {
            let n = args.connections / args.threads + usize::from(t < args.connections % args.threads);
            let (args, shared, payload) = (args.clone(), shared.clone(), payload.clone());
            std::thread::spawn(move || worker(args, n, shared, payload))
        })
        .collect();

    // Wait for the connections, then warm up, then measure.
    let start = Instant::now();
    while shared.connected.load(Ordering::Relaxed) + (shared.errors.load(Ordering::Relaxed) as usize) < args.connections
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let (srv0, gen0) = (super::server_cpu(args.server_pid), procfs::cpu(None));
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::SeqCst);
    let progress = !args.json && std::io::stderr().is_terminal();
    let limit = Duration::from_secs_f64(args.duration);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let n = shared.measured.load(Ordering::Relaxed);
        let el = t0.elapsed();
        if progress {
            eprint!(
                "\r  {:>5.1} s  {:>12} messages  {:>10.0} msg/s ",
                el.as_secs_f64(),
                n,
                n as f64 / el.as_secs_f64()
            );
        }
        let done = match args.count {
            Some(c) => n >= c || el > Duration::from_secs(600),
            None => el >= limit,
        };
        if done {
            break;
        }
    }
    shared.measuring.store(false, Ordering::SeqCst);
    let seconds = t0.elapsed().as_secs_f64();
    let (srv1, gen1) = (super::server_cpu(args.server_pid), procfs::cpu(None));
    let server_rss_bytes = args.server_pid.and_then(procfs::rss_bytes);
    shared.stop.store(true, Ordering::SeqCst);
    if progress {
        eprintln!();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    for t in threads {
        if let Ok(h) = t.join() {
            let _ = hist.add(&h);
        }
    }
    let messages = shared.measured.load(Ordering::Relaxed);
    let per_msg = |d: Option<(f64, f64)>| d.map(|(secs, _)| secs * 1e6 / messages.max(1) as f64);
    let srv = procfs::cpu_delta(srv0, srv1);
    let gen_cpu = procfs::cpu_delta(gen0, gen1);
    Ok(EchoReport {
        scenario: if args.in_flight > 1 { "echo-pipelined" } else { "echo" },
        url: args.url.clone(),
        connections: args.connections,
        connected: shared.connected.load(Ordering::Relaxed),
        size: args.size,
        in_flight: args.in_flight,
        text: args.text,
        deflate: args.deflate,
        http2: args.http2,
        http3: args.http3,
        threads: args.threads,
        seconds,
        messages,
        msg_per_sec: messages as f64 / seconds,
        mib_per_sec: messages as f64 * args.size as f64 / seconds / 1048576.0,
        rtt_us: Percentiles::from_hist(&hist),
        server_cpu_us_per_msg: per_msg(srv),
        server_cpu_cores: srv.map(|d| d.1),
        server_rss_bytes,
        generator_cpu_us_per_msg: per_msg(gen_cpu),
        generator_cpu_cores: gen_cpu.map(|d| d.1),
        generator_bound: gen_cpu.is_some_and(|(_, cores)| cores >= 0.9 * args.threads as f64),
        errors: shared.errors.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

fn worker(args: EchoArgs, n: usize, shared: Arc<Shared>, payload: Bytes) -> Histogram<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds")));
    let local = tokio::task::LocalSet::new();
    let per_conn_interval = args.rate.map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1e-9)));
    local.block_on(&rt, async {
        let mux = if args.http2 && n > 0 {
            weft::h2::H2Client::connect(builder(&args)).await.map(|c| Some(Mux::H2(c)))
        } else if args.http3 && n > 0 {
            #[cfg(feature = "http3")]
            {
                let b = builder(&args).http3(weft::h3::Http3Config::default());
                weft::h3::H3Client::connect(b).await.map(|c| Some(Mux::H3(c)))
            }
            #[cfg(not(feature = "http3"))]
            unreachable!("checked in run")
        } else {
            Ok(None)
        };
        let mux = match mux {
            Ok(m) => m,
            Err(e) => {
                for _ in 0..n {
                    shared.error(weft::Error::from(std::io::Error::other(e.to_string())));
                }
                return;
            }
        };
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (args, shared, payload, hist) = (args.clone(), shared.clone(), payload.clone(), hist.clone());
            let mux = mux.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let res = match mux {
                    Some(Mux::H2(c)) => match c.open_with(builder(&args)).await {
                        Ok(ws) => connection(ws, &args, &shared, payload, &hist, per_conn_interval).await,
                        Err(e) => Err(e),
                    },
                    #[cfg(feature = "http3")]
                    Some(Mux::H3(c)) => match c.open_with(builder(&args)).await {
                        Ok(ws) => connection(ws, &args, &shared, payload, &hist, per_conn_interval).await,
                        Err(e) => Err(e),
                    },
                    None => match builder(&args).connect().await {
                        Ok(ws) => connection(ws, &args, &shared, payload, &hist, per_conn_interval).await,
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = res {
                    shared.error(e);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    Rc::try_unwrap(hist).map(RefCell::into_inner).unwrap_or_else(|h| h.borrow().clone())
}

/// One generator thread's multiplexed connection.
#[derive(Clone)]
enum Mux {
    H2(weft::h2::H2Client),
    #[cfg(feature = "http3")]
    H3(weft::h3::H3Client),
}

/// The client options every benchmark connection uses.
fn builder(args: &EchoArgs) -> ClientBuilder {
    let mut cfg = Config::default().max_message_size(256 << 20).max_frame_size(256 << 20);
    if args.deflate {
        cfg = cfg.deflate(Some(DeflateConfig::default()));
    }
    let mut b = ClientBuilder::new(&args.url).config(cfg);
    if let Some(path) = &args.ca_file {
        // Read and checked once in `run` before any connection: here it cannot fail.
        let pem = std::fs::read(path).unwrap_or_default();
        for c in weft::tls::certs_from_pem(&pem).unwrap_or_default() {
            b = b.add_root_certificate(c.to_vec());
        }
    }
    b
}

async fn connection<S>(
    mut ws: weft::WebSocket<S>,
    args: &EchoArgs,
    shared: &Shared,
    payload: Bytes,
    hist: &RefCell<Histogram<u64>>,
    pace: Option<Duration>,
) -> weft::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let make = || {
        if args.text {
            Message::Text(payload.clone().try_into().expect("ascii"))
        } else {
            Message::Binary(payload.clone())
        }
    };
    if pace.is_none() && args.in_flight > 1 {
        return pipelined(ws, args, shared, &make, hist).await;
    }
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(args.in_flight);
    let mut next_at = Instant::now();
    let in_flight = if pace.is_some() { 1 } else { args.in_flight };
    for _ in 0..in_flight {
        sent.push_back(Instant::now());
        ws.feed(make()).await?;
    }
    ws.flush().await?;
    'outer: loop {
        let mut item = ws.recv().await;
        loop {
            match item {
                Some(Ok(m)) if m.is_data() => {
                    let now = Instant::now();
                    let t = sent.pop_front().unwrap_or(now);
                    if shared.measuring.load(Ordering::Relaxed) {
                        let _ = hist.borrow_mut().record(now.duration_since(t).as_nanos().max(1) as u64);
                        shared.measured.fetch_add(1, Ordering::Relaxed);
                    }
                    if shared.stop.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    if let Some(p) = pace {
                        next_at += p;
                        if next_at > now {
                            ws.flush().await?;
                            tokio::time::sleep_until(next_at.into()).await;
                        }
                        // Measured from the scheduled time: queueing delay is not hidden.
                        sent.push_back(next_at.min(Instant::now()));
                    } else {
                        sent.push_back(now);
                    }
                    ws.feed(make()).await?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
            match ws.recv().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        ws.flush().await?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(())
}

/// `--in-flight N > 1`: a writer and a reader on the split halves, so the generator reads echoes
/// while its writes wait. (Writing N messages before reading any deadlocks once N × size is
/// more than the transport holds both ways — an HTTP/2 stream's windows are far smaller than a
/// TCP socket's buffers; weft, like any server with backpressure, stops reading a peer that
/// does not read.) The writer keeps exactly N messages outstanding and flushes whenever it has
/// no credit left; each echo returns one credit.
async fn pipelined<S>(
    ws: weft::WebSocket<S>,
    args: &EchoArgs,
    shared: &Shared,
    make: &dyn Fn() -> Message,
    hist: &RefCell<Histogram<u64>>,
) -> weft::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rx, mut tx) = ws.split();
    let sent: RefCell<VecDeque<Instant>> = RefCell::new(VecDeque::with_capacity(args.in_flight));
    let credit = tokio::sync::Semaphore::new(args.in_flight);
    let writer = async {
        loop {
            credit.acquire().await.expect("never closed").forget();
            sent.borrow_mut().push_back(Instant::now());
            tx.feed(make()).await?;
            if credit.available_permits() == 0 {
                tx.flush().await?;
            }
        }
    };
    let reader = async {
        loop {
            match rx.recv().await {
                Some(Ok(m)) if m.is_data() => {
                    let now = Instant::now();
                    let t = sent.borrow_mut().pop_front().unwrap_or(now);
                    if shared.measuring.load(Ordering::Relaxed) {
                        let _ = hist.borrow_mut().record(now.duration_since(t).as_nanos().max(1) as u64);
                        shared.measured.fetch_add(1, Ordering::Relaxed);
                    }
                    if shared.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    credit.add_permits(1);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    };
    let res: weft::Result<()> = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    res?;
    if let Ok(mut ws) = rx.reunite(tx) {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    Ok(())
}
