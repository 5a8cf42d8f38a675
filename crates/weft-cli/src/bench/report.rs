//! Results: a JSON object per run and a human summary.

use serde::Serialize;

/// Round-trip time percentiles in microseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Percentiles {
    pub(crate) fn from_hist(h: &hdrhistogram::Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One echo run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EchoReport {
    pub(crate) scenario: &'static str,
    pub(crate) url: String,
    pub(crate) connections: usize,
    pub(crate) connected: usize,
    pub(crate) size: usize,
    pub(crate) in_flight: usize,
    pub(crate) text: bool,
    pub(crate) deflate: bool,
    /// WebSockets over HTTP/2, one connection per generator thread.
    pub(crate) http2: bool,
    pub(crate) http3: bool,
    pub(crate) threads: usize,
    pub(crate) seconds: f64,
    pub(crate) messages: u64,
    pub(crate) msg_per_sec: f64,
    pub(crate) mib_per_sec: f64,
    pub(crate) rtt_us: Percentiles,
    pub(crate) server_cpu_us_per_msg: Option<f64>,
    pub(crate) server_cpu_cores: Option<f64>,
    pub(crate) server_rss_bytes: Option<u64>,
    pub(crate) generator_cpu_us_per_msg: Option<f64>,
    pub(crate) generator_cpu_cores: Option<f64>,
    /// The generator used ≥ 90 % of its threads: numbers may understate the server.
    pub(crate) generator_bound: bool,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl EchoReport {
    pub(crate) fn print(&self) {
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        println!("weft bench {} — {}", self.scenario, self.url);
        println!(
            "  {} {}/{}  size {} B {}  in flight {}  deflate {}  threads {}",
            if self.http2 {
                "HTTP/2 streams"
            } else if self.http3 {
                "HTTP/3 streams"
            } else {
                "connections"
            },
            self.connected,
            self.connections,
            self.size,
            if self.text { "text" } else { "binary" },
            self.in_flight,
            self.deflate,
            self.threads
        );
        println!(
            "  {:.0} msg/s  {:.1} MiB/s  ({} messages in {:.1} s)",
            self.msg_per_sec, self.mib_per_sec, self.messages, self.seconds
        );
        let r = &self.rtt_us;
        println!(
            "  RTT µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            r.p50, r.p90, r.p99, r.p999, r.max, r.mean
        );
        let server = match (self.server_cpu_us_per_msg, self.server_cpu_cores) {
            (Some(us), Some(cores)) => format!("server CPU {us:.2} µs per message, {cores:.2} cores"),
            _ => "server CPU unknown (give --server-pid)".to_owned(),
        };
        println!(
            "  {server};  generator CPU {} per message, {} cores{}",
            opt(self.generator_cpu_us_per_msg, " µs"),
            opt(self.generator_cpu_cores, ""),
            if self.generator_bound { "  ⚠ generator-bound: the server may be faster than shown" } else { "" }
        );
        if self.errors > 0 {
            println!("  errors: {} (first: {})", self.errors, self.first_error.as_deref().unwrap_or("?"));
        }
    }
}

/// One connection-capacity run.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub(crate) struct ConnReport {
    pub(crate) url: String,
    pub(crate) requested: usize,
    pub(crate) opened: usize,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) open_seconds: f64,
    pub(crate) connects_per_sec: f64,
    pub(crate) held_seconds: f64,
    pub(crate) still_open: usize,
    pub(crate) processes: usize,
    pub(crate) server_rss_before: Option<u64>,
    pub(crate) server_rss_after: Option<u64>,
    pub(crate) server_rss_per_conn_bytes: Option<f64>,
}

impl ConnReport {
    pub(crate) fn print(&self) {
        println!("weft bench connections — {}", self.url);
        println!(
            "  opened {}/{} ({} failed) in {:.1} s = {:.0} connects/s, {} processes",
            self.opened, self.requested, self.failed, self.open_seconds, self.connects_per_sec, self.processes
        );
        println!("  held {:.1} s with pings; still open at the end: {}", self.held_seconds, self.still_open);
        if let (Some(b), Some(a)) = (self.server_rss_before, self.server_rss_after) {
            println!(
                "  server RSS {:.1} MiB -> {:.1} MiB = {:.2} KiB per connection",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0,
                self.server_rss_per_conn_bytes.unwrap_or(0.0) / 1024.0
            );
        }
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
    }
}
