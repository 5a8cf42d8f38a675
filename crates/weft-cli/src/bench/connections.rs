//! `weft bench connections`: open N idle connections, hold them with pings, measure the server.
//!
//! One process may hold at most as many sockets as its open-file limit allows (here a hard
//! 20,000), so `--processes P` runs P generator processes, each with its share, and aggregates.
//! Client sockets are bound to several 127.0.0.x source addresses so ephemeral ports never run
//! out.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use weft::{ClientBuilder, Config};

use super::report::ConnReport;
use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// Server URL (ws:// on a loopback address).
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    pub(crate) url: String,
    /// Connections to open in total.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Seconds to hold them open after the last one connected (`-d`, like the other modes'
    /// duration).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub(crate) hold: f64,
    /// Seconds to wait after the last connection opened before reading the server's memory:
    /// long enough for servers that store idle connections small after a quiet period
    /// (`weft echo --core`: between 1 and 2 s), shorter than the ping interval.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle: f64,
    /// Keep-alive ping interval in seconds while holding.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) ping_interval: f64,
    /// Generator processes (each holds connections / processes).
    #[arg(long, default_value_t = 1)]
    pub(crate) processes: usize,
    /// Number of 127.0.0.x source addresses to spread client sockets over.
    #[arg(long, default_value_t = 16)]
    pub(crate) source_ips: u8,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// Server processes to measure (RSS summed); repeat for several `weft echo --reuseport`.
    #[arg(long = "server-pid")]
    pub(crate) server_pids: Vec<u32>,
    /// Print one JSON object and nothing else.
    #[arg(long)]
    pub(crate) json: bool,
    /// Internal: run as worker number N of a multi-process run.
    #[arg(long, hide = true)]
    pub(crate) worker: Option<usize>,
}

fn rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| procfs::rss_bytes(*p)).sum()
}

pub(crate) fn run(args: ConnArgs) -> anyhow::Result<ConnReport> {
    let limit = procfs::raise_nofile_limit();
    let per_process = args.connections.div_ceil(args.processes.max(1));
    if per_process as u64 + 64 > limit {
        anyhow::bail!(
            "{per_process} connections per process exceed the open-file limit of {limit} (hard limit here); \
             use --processes {}",
            (args.connections as u64).div_ceil(limit.saturating_sub(64).max(1))
        );
    }
    if args.worker.is_some() {
        return worker(&args, per_process);
    }
    let rss_before = rss(&args.server_pids);
    if args.processes <= 1 {
        let mut r = worker(&args, args.connections)?;
        r.server_rss_before = rss_before;
        return Ok(r);
    }
    // Several generator processes: each prints "opened <n>" when done connecting, then a JSON
    // report when done holding.
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    for i in 0..args.processes {
        let share = args.connections / args.processes + usize::from(i < args.connections % args.processes);
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "connections", "--url", &args.url, "--connections", &share.to_string()])
            .args(["--hold", &args.hold.to_string(), "--ping-interval", &args.ping_interval.to_string()])
            .args(["--source-ips", &args.source_ips.to_string(), "--concurrency", &args.concurrency.to_string()])
            .args(["--worker", &i.to_string(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        children.push(cmd.spawn()?);
    }
    let mut readers: Vec<_> = children.iter_mut().map(|c| BufReader::new(c.stdout.take().expect("piped"))).collect();
    for r in &mut readers {
        let mut line = String::new();
        r.read_line(&mut line)?;
        anyhow::ensure!(line.starts_with("opened"), "worker failed before connecting: {line:?}");
    }
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    let rss_after = rss(&args.server_pids);
    warn_if_pinged(&args, t0.elapsed().as_secs_f64());
    let mut total = ConnReport {
        url: args.url.clone(),
        requested: args.connections,
        processes: args.processes,
        ..Default::default()
    };
    for (mut r, mut c) in readers.into_iter().zip(children) {
        let mut json = String::new();
        r.read_line(&mut json)?;
        let _ = c.wait();
        let w: ConnReport = serde_json::from_str(json.trim())?;
        total.opened += w.opened;
        total.failed += w.failed;
        total.still_open += w.still_open;
        total.open_seconds = total.open_seconds.max(w.open_seconds);
        total.held_seconds = total.held_seconds.max(w.held_seconds);
        total.first_error = total.first_error.or(w.first_error);
    }
    total.connects_per_sec = total.opened as f64 / total.open_seconds.max(1e-9);
    total.server_rss_before = rss_before;
    total.server_rss_after = rss_after;
    total.server_rss_per_conn_bytes = per_conn(rss_before, rss_after, total.opened);
    Ok(total)
}

/// Keep-alive pings that began before the server's memory was read wake connections up: the
/// figure is then not one of idle connections. Said on stderr (`--json` keeps stdout clean).
fn warn_if_pinged(args: &ConnArgs, elapsed: f64) {
    if !args.server_pids.is_empty() && elapsed >= args.ping_interval {
        eprintln!(
            "warning: keep-alive pings ({} s) began before the server's memory was read ({elapsed:.1} s after \
             the first connection): pinged connections are not idle; raise --ping-interval",
            args.ping_interval
        );
    }
}

fn per_conn(before: Option<u64>, after: Option<u64>, n: usize) -> Option<f64> {
    Some((after? as f64 - before? as f64) / n.max(1) as f64)
}

fn worker(args: &ConnArgs, n: usize) -> anyhow::Result<ConnReport> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let uri: weft::http::Uri = args.url.parse()?;
        let host: Ipv4Addr = uri.host().unwrap_or("127.0.0.1").parse()?;
        anyhow::ensure!(host.is_loopback(), "only loopback targets are allowed");
        let target = SocketAddr::V4(SocketAddrV4::new(host, uri.port_u16().unwrap_or(80)));
        let offset = args.worker.unwrap_or(0);
        let cfg = Config::default().ping_interval(Some(Duration::from_secs_f64(args.ping_interval)));
        let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
        let open = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let (hold_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + ((i + offset * 7) % args.source_ips.max(1) as usize) as u8);
            let (gate, open, failed, first_error) = (gate.clone(), open.clone(), failed.clone(), first_error.clone());
            let (cfg, url, mut hold) = (cfg.clone(), args.url.clone(), hold_tx.subscribe());
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("open");
                let res = async {
                    let sock = TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
                    let tcp = sock.connect(target).await?;
                    ClientBuilder::new(url).config(cfg).connect_on(tcp).await
                }
                .await;
                drop(permit);
                let mut ws = match res {
                    Ok(ws) => ws,
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
                        return false;
                    }
                };
                open.fetch_add(1, Ordering::Relaxed);
                // Idle: only keep-alive pings until told to stop.
                tokio::select! {
                    _ = hold.recv() => { let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await; true }
                    _ = async { while ws.recv().await.is_some() {} } => false,
                }
            }));
            if i % 1000 == 999 {
                tokio::task::yield_now().await;
            }
        }
        while open.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open_seconds = t0.elapsed().as_secs_f64();
        let opened = open.load(Ordering::Relaxed);
        if args.worker.is_some() {
            println!("opened {opened}");
        }
        let rss_after_open = if args.worker.is_none() {
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
            warn_if_pinged(args, t0.elapsed().as_secs_f64());
            rss(&args.server_pids)
        } else {
            None
        };
        let t_hold = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        let _ = hold_tx.send(());
        let mut still_open = 0;
        for t in tasks {
            if t.await.unwrap_or(false) {
                still_open += 1;
            }
        }
        Ok(ConnReport {
            url: args.url.clone(),
            requested: n,
            opened,
            failed: failed.load(Ordering::Relaxed),
            first_error: first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            open_seconds,
            connects_per_sec: opened as f64 / open_seconds.max(1e-9),
            held_seconds: t_hold.elapsed().as_secs_f64(),
            still_open,
            processes: 1,
            server_rss_before: None,
            server_rss_after: rss_after_open,
            server_rss_per_conn_bytes: None,
        })
    })
}

/// Fill in the per-connection figure once `server_rss_before` is known.
pub(crate) fn finish(mut r: ConnReport) -> ConnReport {
    if r.server_rss_per_conn_bytes.is_none() {
        r.server_rss_per_conn_bytes = per_conn(r.server_rss_before, r.server_rss_after, r.opened);
    }
    r
}
