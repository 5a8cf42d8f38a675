//! Counters, rates, `/metrics` (Prometheus text format) and `/api/stats` (JSON).

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

/// The engine's counters. Monotonic counters end in `_total` in `/metrics`.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    /// Of `connections_total`, those over HTTP/2 (extended CONNECT, RFC 8441).
    pub connections_http2_total: AtomicU64,
    /// Of `connections_total`, those over HTTP/3 (extended CONNECT, RFC 9220).
    pub connections_http3_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub auth_failures: AtomicU64,
    pub messages_in: AtomicU64,
    pub publishes: AtomicU64,
    pub deliveries: AtomicU64,
    pub bytes_out: AtomicU64,
    pub subscriptions: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub dropped_events: AtomicU64,
    pub rate_limited: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub replayed_events: AtomicU64,
    pub recoveries_failed: AtomicU64,
    /// Snapshots sent on subscribe (with state or without).
    pub snapshots: AtomicU64,
    /// Snapshots that failed (provider error, timeout, none configured).
    pub snapshot_failures: AtomicU64,
    /// Secure channels established.
    pub secure_channels: AtomicU64,
    /// Secure handshakes refused and connections closed for a sealed frame that failed.
    pub secure_failures: AtomicU64,
    /// Bytes of history held (gauge).
    pub history_bytes: AtomicU64,
    pub history_evicted: AtomicU64,
    pub topics_refused: AtomicU64,
    pub http_timeouts: AtomicU64,
    pub token_expiries: AtomicU64,
    /// Publishes refused because the cluster broker was unavailable or failed.
    pub publishes_refused: AtomicU64,
    /// Reconnections to the cluster broker.
    pub cluster_reconnects: AtomicU64,
    /// Gaps in a topic's offsets seen on pub/sub (or by the periodic top check).
    pub cluster_gaps: AtomicU64,
    /// Gaps filled from the topic's stream.
    pub cluster_refilled: AtomicU64,
    /// `reset` notices: events that could not be refilled, or a topic that started a new epoch.
    pub cluster_unrecovered: AtomicU64,
    /// Events received twice from the broker and delivered once.
    pub cluster_duplicates: AtomicU64,
    /// Pub/sub messages dropped because the node's buffer was full (then refilled).
    pub cluster_pubsub_dropped: AtomicU64,
    /// Presence members of dead nodes removed by this node.
    pub cluster_members_swept: AtomicU64,
    /// Events of topics seen only through a pattern, past `max_topics` such topics, delivered
    /// without gap detection.
    pub cluster_pattern_untracked: AtomicU64,
    /// Bytes of broker messages received and not yet fanned out (gauge; Redis's pub/sub
    /// buffer).
    pub cluster_inbound_bytes: AtomicU64,
    /// Bytes of events held while their topics are set up or refilled (gauge).
    pub cluster_pending_bytes: AtomicU64,
    /// Bytes of publishes waiting for the broker (gauge).
    pub cluster_publish_queue_bytes: AtomicU64,
    /// How long live events took from publish to being written to a client's socket.
    pub delivery_latency: Latency,
    rates: Mutex<Rates>,
}

/// Upper bounds, in ms, of the delivery latency buckets; one more bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A histogram of delivery latencies: from an event's publish (its `time`, on the publishing
/// node's clock) to the moment its frame is handed to a client's socket. Replayed events are
/// not counted. Sessions count a batch locally and add it here once per write.
#[derive(Debug, Default)]
pub struct Latency {
    counts: [AtomicU64; BUCKETS],
    sum_ms: AtomicU64,
}

/// One write's worth of latencies, counted without touching shared state.
#[derive(Debug, Default)]
pub struct LatencyBatch {
    counts: [u32; BUCKETS],
    sum_ms: u64,
    any: bool,
}

impl LatencyBatch {
    /// Count one event that is `ms` old.
    #[inline]
    pub fn add(&mut self, ms: u64) {
        let i = LATENCY_BOUNDS_MS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS - 1);
        self.counts[i] += 1;
        self.sum_ms += ms;
        self.any = true;
    }
}

impl Latency {
    /// Add a batch (and clear it).
    pub fn record(&self, b: &mut LatencyBatch) {
        if !b.any {
            return;
        }
        for (c, n) in self.counts.iter().zip(b.counts.iter_mut()) {
            if *n > 0 {
                c.fetch_add(u64::from(*n), Ordering::Relaxed);
                *n = 0;
            }
        }
        self.sum_ms.fetch_add(b.sum_ms, Ordering::Relaxed);
        b.sum_ms = 0;
        b.any = false;
    }

    fn snapshot(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// Delivery latency over the last few seconds (`/api/stats`). A percentile is the upper bound
/// of the bucket it falls in (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000 ms); 10000
/// means more than 5 s.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Live events written in the window.
    pub count: u64,
    /// Median, in ms (absent without events).
    pub p50_ms: Option<u64>,
    /// 99th percentile, in ms.
    pub p99_ms: Option<u64>,
    /// The window's length.
    pub window_seconds: u64,
}

fn summarize(window: &VecDeque<(Instant, [u64; BUCKETS])>) -> LatencySummary {
    let (Some((t0, first)), Some((t1, last))) = (window.front(), window.back()) else {
        return LatencySummary::default();
    };
    let d: [u64; BUCKETS] = std::array::from_fn(|i| last[i] - first[i]);
    let count: u64 = d.iter().sum();
    let quantile = |q: f64| -> Option<u64> {
        if count == 0 {
            return None;
        }
        let want = (q * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in d.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(10_000));
            }
        }
        None
    };
    LatencySummary {
        count,
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        window_seconds: t1.duration_since(*t0).as_secs_f64().round() as u64,
    }
}

/// How busy one topic has been lately: events counted in windows of [`ACTIVITY_WINDOW`]
/// seconds, the current and the one before.
#[derive(Debug, Default, Clone, Copy)]
pub struct Activity {
    window: u64,
    cur: u32,
    prev: u32,
}

/// Seconds per [`Activity`] window.
pub const ACTIVITY_WINDOW: f64 = 5.0;

fn since_start(at: Instant) -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now)).as_secs_f64()
}

impl Activity {
    /// Count one event published (or received) at `at`.
    pub fn hit(&mut self, at: Instant) {
        let w = (since_start(at) / ACTIVITY_WINDOW) as u64;
        if w != self.window {
            self.prev = if w == self.window + 1 { self.cur } else { 0 };
            self.cur = 0;
            self.window = w;
        }
        self.cur = self.cur.saturating_add(1);
    }

    /// Events per second over the last one to two windows.
    pub fn per_sec(&self, now: Instant) -> f64 {
        let t = since_start(now);
        let w = (t / ACTIVITY_WINDOW) as u64;
        let into = t - w as f64 * ACTIVITY_WINDOW;
        let n = if w == self.window {
            self.cur + self.prev
        } else if w == self.window + 1 {
            self.cur
        } else {
            0
        };
        f64::from(n) / (ACTIVITY_WINDOW + into)
    }
}

/// One of the busiest topics (`/api/stats`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopicActivity {
    /// The topic's name.
    pub topic: String,
    /// Events per second over the last 5 to 10 seconds.
    pub events_per_sec: f64,
    /// Subscriptions to it on this node (exact ones; patterns not counted).
    pub subscribers: usize,
}

/// Collects the busiest topics of a broker's scan: [`add`](Self::add) each topic, then
/// [`top`](Self::top).
#[derive(Debug)]
pub struct Busiest {
    now: Instant,
    topics: Vec<TopicActivity>,
}

impl Busiest {
    /// A scan at `now`.
    pub fn new(now: Instant) -> Self {
        Self { now, topics: Vec::new() }
    }

    /// One topic, if it had events lately.
    pub fn add(&mut self, topic: &str, activity: &Activity, subscribers: usize) {
        let events_per_sec = activity.per_sec(self.now);
        if events_per_sec > 0.0 {
            self.topics.push(TopicActivity { topic: topic.to_owned(), events_per_sec, subscribers });
        }
    }

    /// The `n` busiest, busiest first (ties by name), rates to one decimal.
    pub fn top(mut self, n: usize) -> Vec<TopicActivity> {
        let topics = &mut self.topics;
        topics.sort_by(|a, b| b.events_per_sec.total_cmp(&a.events_per_sec).then_with(|| a.topic.cmp(&b.topic)));
        topics.truncate(n);
        for t in topics.iter_mut() {
            t.events_per_sec = (t.events_per_sec * 10.0).round() / 10.0;
        }
        self.topics
    }
}

/// This process's resident memory in bytes (Linux: `VmRSS` of /proc/self/status).
pub fn resident_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[derive(Debug, Clone, Default, Serialize)]
struct Rates {
    messages_in_per_sec: f64,
    publishes_per_sec: f64,
    deliveries_per_sec: f64,
    #[serde(skip)]
    last: Option<(Instant, [u64; 3])>,
    /// Latency histogram snapshots of the last ten or so seconds.
    #[serde(skip)]
    latency: VecDeque<(Instant, [u64; BUCKETS])>,
}

/// What `/api/stats` returns.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct Stats {
    pub uptime_seconds: u64,
    pub connections: u64,
    pub connections_total: u64,
    pub connections_http2_total: u64,
    pub connections_http3_total: u64,
    pub topics: usize,
    pub subscriptions: u64,
    pub messages_in_total: u64,
    pub publishes_total: u64,
    pub deliveries_total: u64,
    pub messages_in_per_sec: f64,
    pub publishes_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub slow_consumer_disconnects_total: u64,
    pub dropped_events_total: u64,
    pub rate_limited_total: u64,
    pub history_bytes: u64,
    pub history_evicted_total: u64,
    pub topics_refused_total: u64,
    pub publishes_refused_total: u64,
    pub cluster_reconnects_total: u64,
    pub cluster_gaps_total: u64,
    pub cluster_refilled_total: u64,
    pub cluster_unrecovered_total: u64,
    pub cluster_duplicates_total: u64,
    pub cluster_pubsub_dropped_total: u64,
    pub cluster_pattern_untracked_total: u64,
    pub cluster_inbound_bytes: u64,
    pub cluster_pending_bytes: u64,
    pub cluster_publish_queue_bytes: u64,
    pub anonymous: bool,
    /// Live events from publish to a client's socket, over the last ten seconds or so.
    pub delivery_latency: LatencySummary,
    /// This process's resident memory (absent where it cannot be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_rss_bytes: Option<u64>,
    /// The busiest topics on this node, busiest first (at most 10).
    pub busiest_topics: Vec<TopicActivity>,
    /// The cluster broker's node and state (absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::broker::ClusterInfo>,
}

impl Metrics {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Recompute the per-second rates (called about once a second).
    pub fn sample(&self, now: Instant) {
        let cur = [Self::get(&self.messages_in), Self::get(&self.publishes), Self::get(&self.deliveries)];
        let mut r = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, prev)) = r.last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let rate = |i: usize| (cur[i] - prev[i]) as f64 / dt;
                r.messages_in_per_sec = rate(0);
                r.publishes_per_sec = rate(1);
                r.deliveries_per_sec = rate(2);
            }
        }
        r.last = Some((now, cur));
        r.latency.push_back((now, self.delivery_latency.snapshot()));
        while r.latency.len() > 11 {
            r.latency.pop_front();
        }
    }

    /// A snapshot for `/api/stats`.
    pub fn stats(&self, topics: usize, started: Instant, anonymous: bool) -> Stats {
        let (r, delivery_latency) = {
            let r = self.rates.lock().unwrap_or_else(|e| e.into_inner());
            let mut window = r.latency.clone();
            if window.len() < 11 {
                // Younger than the window (or not sampled yet): everything since the start,
                // not only since the first sample, which may come after the first deliveries.
                window.push_front((started, [0; BUCKETS]));
            }
            // Up to now, not only to the last sample.
            window.push_back((Instant::now(), self.delivery_latency.snapshot()));
            (r.clone(), summarize(&window))
        };
        Stats {
            uptime_seconds: started.elapsed().as_secs(),
            connections: Self::get(&self.connections),
            connections_total: Self::get(&self.connections_total),
            connections_http2_total: Self::get(&self.connections_http2_total),
            connections_http3_total: Self::get(&self.connections_http3_total),
            topics,
            subscriptions: Self::get(&self.subscriptions),
            messages_in_total: Self::get(&self.messages_in),
            publishes_total: Self::get(&self.publishes),
            deliveries_total: Self::get(&self.deliveries),
            messages_in_per_sec: r.messages_in_per_sec,
            publishes_per_sec: r.publishes_per_sec,
            deliveries_per_sec: r.deliveries_per_sec,
            slow_consumer_disconnects_total: Self::get(&self.slow_consumer_disconnects),
            dropped_events_total: Self::get(&self.dropped_events),
            rate_limited_total: Self::get(&self.rate_limited),
            history_bytes: Self::get(&self.history_bytes),
            history_evicted_total: Self::get(&self.history_evicted),
            topics_refused_total: Self::get(&self.topics_refused),
            publishes_refused_total: Self::get(&self.publishes_refused),
            cluster_reconnects_total: Self::get(&self.cluster_reconnects),
            cluster_gaps_total: Self::get(&self.cluster_gaps),
            cluster_refilled_total: Self::get(&self.cluster_refilled),
            cluster_unrecovered_total: Self::get(&self.cluster_unrecovered),
            cluster_duplicates_total: Self::get(&self.cluster_duplicates),
            cluster_pubsub_dropped_total: Self::get(&self.cluster_pubsub_dropped),
            cluster_pattern_untracked_total: Self::get(&self.cluster_pattern_untracked),
            cluster_inbound_bytes: Self::get(&self.cluster_inbound_bytes),
            cluster_pending_bytes: Self::get(&self.cluster_pending_bytes),
            cluster_publish_queue_bytes: Self::get(&self.cluster_publish_queue_bytes),
            anonymous,
            delivery_latency,
            memory_rss_bytes: resident_memory(),
            busiest_topics: Vec::new(),
            cluster: None,
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self, topics: usize) -> String {
        let mut s = String::with_capacity(2048);
        let mut put = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        put("weft_connections", "gauge", "Open WebSocket connections.", Self::get(&self.connections));
        put("weft_connections_total", "counter", "WebSocket connections accepted.", Self::get(&self.connections_total));
        put(
            "weft_connections_http2_total",
            "counter",
            "WebSocket connections accepted over HTTP/2 (extended CONNECT).",
            Self::get(&self.connections_http2_total),
        );
        put(
            "weft_connections_http3_total",
            "counter",
            "WebSocket connections accepted over HTTP/3 (extended CONNECT).",
            Self::get(&self.connections_http3_total),
        );
        put(
            "weft_connections_rejected_total",
            "counter",
            "Upgrades refused (auth, limits, bad requests).",
            Self::get(&self.connections_rejected),
        );
        put("weft_auth_failures_total", "counter", "Tokens or API keys refused.", Self::get(&self.auth_failures));
        put("weft_topics", "gauge", "Topics with state (subscribers, members or history).", topics as u64);
        put("weft_subscriptions", "gauge", "Subscriptions (exact and pattern).", Self::get(&self.subscriptions));
        put("weft_messages_in_total", "counter", "Requests received from clients.", Self::get(&self.messages_in));
        put("weft_publishes_total", "counter", "Events published.", Self::get(&self.publishes));
        put("weft_deliveries_total", "counter", "Events and notices written to clients.", Self::get(&self.deliveries));
        put("weft_bytes_out_total", "counter", "Bytes of frames queued to clients.", Self::get(&self.bytes_out));
        put(
            "weft_slow_consumer_disconnects_total",
            "counter",
            "Connections closed as slow consumers.",
            Self::get(&self.slow_consumer_disconnects),
        );
        put(
            "weft_dropped_events_total",
            "counter",
            "Events dropped or replaced by the drop-oldest, latest and drop-lowest policies.",
            Self::get(&self.dropped_events),
        );
        put("weft_rate_limited_total", "counter", "Requests refused by the rate limit.", Self::get(&self.rate_limited));
        put(
            "weft_protocol_errors_total",
            "counter",
            "Requests answered with an error.",
            Self::get(&self.protocol_errors),
        );
        put("weft_replayed_events_total", "counter", "Events replayed on resume.", Self::get(&self.replayed_events));
        put(
            "weft_recoveries_failed_total",
            "counter",
            "Resume requests answered not recoverable.",
            Self::get(&self.recoveries_failed),
        );
        put("weft_snapshots_total", "counter", "Snapshots sent on subscribe.", Self::get(&self.snapshots));
        put(
            "weft_snapshot_failures_total",
            "counter",
            "Snapshots that failed (provider error or timeout, or none configured).",
            Self::get(&self.snapshot_failures),
        );
        put("weft_secure_channels_total", "counter", "Secure channels established.", Self::get(&self.secure_channels));
        put(
            "weft_secure_failures_total",
            "counter",
            "Secure handshakes refused, and connections closed for a sealed frame that failed authentication or sequence.",
            Self::get(&self.secure_failures),
        );
        put("weft_history_bytes", "gauge", "Bytes of history held for all topics.", Self::get(&self.history_bytes));
        put(
            "weft_history_evicted_total",
            "counter",
            "History events evicted early by the history_memory or history_topic_bytes budget.",
            Self::get(&self.history_evicted),
        );
        put(
            "weft_topics_refused_total",
            "counter",
            "Requests refused because of max_topics or topic_churn_limit.",
            Self::get(&self.topics_refused),
        );
        put(
            "weft_http_timeouts_total",
            "counter",
            "HTTP requests whose body did not arrive within http_body_timeout.",
            Self::get(&self.http_timeouts),
        );
        put(
            "weft_publishes_refused_total",
            "counter",
            "Publishes refused because the cluster broker was unavailable or failed.",
            Self::get(&self.publishes_refused),
        );
        put(
            "weft_cluster_reconnects_total",
            "counter",
            "Reconnections to the cluster broker.",
            Self::get(&self.cluster_reconnects),
        );
        put(
            "weft_cluster_gaps_total",
            "counter",
            "Gaps in topic offsets detected by this node.",
            Self::get(&self.cluster_gaps),
        );
        put(
            "weft_cluster_refilled_total",
            "counter",
            "Gaps refilled from the topic streams.",
            Self::get(&self.cluster_refilled),
        );
        put(
            "weft_cluster_unrecovered_total",
            "counter",
            "reset notices sent: events that could not be refilled, or a topic's new epoch.",
            Self::get(&self.cluster_unrecovered),
        );
        put(
            "weft_cluster_duplicates_total",
            "counter",
            "Events the broker delivered twice, passed on once.",
            Self::get(&self.cluster_duplicates),
        );
        put(
            "weft_cluster_pubsub_dropped_total",
            "counter",
            "Pub/sub messages dropped by a full node buffer (refilled from the streams).",
            Self::get(&self.cluster_pubsub_dropped),
        );
        put(
            "weft_cluster_members_swept_total",
            "counter",
            "Presence members of dead nodes removed by this node.",
            Self::get(&self.cluster_members_swept),
        );
        put(
            "weft_cluster_pattern_untracked_total",
            "counter",
            "Events of topics seen only through a pattern, past max_topics such topics, delivered without gap detection.",
            Self::get(&self.cluster_pattern_untracked),
        );
        put(
            "weft_cluster_inbound_bytes",
            "gauge",
            "Bytes of broker messages received and not yet fanned out (bounded by inbound_bytes).",
            Self::get(&self.cluster_inbound_bytes),
        );
        put(
            "weft_cluster_pending_bytes",
            "gauge",
            "Bytes of events held while their topics are set up or refilled (bounded by pending_bytes).",
            Self::get(&self.cluster_pending_bytes),
        );
        put(
            "weft_cluster_publish_queue_bytes",
            "gauge",
            "Bytes of publishes waiting for the broker (bounded by publish_queue_bytes).",
            Self::get(&self.cluster_publish_queue_bytes),
        );
        put(
            "weft_token_expiries_total",
            "counter",
            "Sessions closed because their token expired without a refresh.",
            Self::get(&self.token_expiries),
        );
        if let Some(rss) = resident_memory() {
            put("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss);
        }
        let counts = self.delivery_latency.snapshot();
        let name = "weft_delivery_latency_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Live events from publish to a client's socket (replays not counted).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            match LATENCY_BOUNDS_MS.get(i) {
                Some(ms) => _ = writeln!(s, "{name}_bucket{{le=\"{}\"}} {cumulative}", *ms as f64 / 1000.0),
                None => _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {cumulative}"),
            }
        }
        let sum = self.delivery_latency.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(s, "{name}_sum {sum}\n{name}_count {cumulative}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_well_formed() {
        let m = Metrics::default();
        m.publishes.fetch_add(3, Ordering::Relaxed);
        let text = m.render_prometheus(2);
        assert!(text.contains("\nweft_publishes_total 3\n"));
        assert!(text.contains("\nweft_topics 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("weft_") || name.starts_with("process_"), "{line}");
            value.parse::<f64>().unwrap();
        }
        assert!(text.contains("weft_delivery_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
    }

    #[test]
    fn latency_percentiles_over_the_window() {
        let m = Metrics::default();
        let t0 = Instant::now();
        m.sample(t0);
        let mut b = LatencyBatch::default();
        for _ in 0..98 {
            b.add(0);
        }
        b.add(30);
        b.add(7000);
        m.delivery_latency.record(&mut b);
        let s = m.stats(0, t0, true).delivery_latency;
        assert_eq!((s.count, s.p50_ms, s.p99_ms), (100, Some(1), Some(50)));
        b.add(7000);
        m.delivery_latency.record(&mut b);
        assert_eq!(m.stats(0, t0, true).delivery_latency.p99_ms, Some(10_000));
        // Older than the window: forgotten.
        for k in 1..=12 {
            m.sample(t0 + std::time::Duration::from_secs(k));
        }
        assert_eq!(m.stats(0, t0, true).delivery_latency.count, 0);
        let text = m.render_prometheus(0);
        assert!(text.contains("weft_delivery_latency_seconds_bucket{le=\"0.001\"} 98\n"), "{text}");
        assert!(text.contains("weft_delivery_latency_seconds_count 101\n"));
    }

    #[test]
    fn deliveries_before_the_first_sample_are_in_a_young_engines_window() {
        // The sampler's first tick may come after the first deliveries (a loaded machine): they
        // still count, since the window of an engine younger than it starts at the start.
        let m = Metrics::default();
        let started = Instant::now();
        let mut b = LatencyBatch::default();
        for _ in 0..31 {
            b.add(0);
        }
        m.delivery_latency.record(&mut b);
        m.sample(started + std::time::Duration::from_millis(300));
        assert_eq!(m.stats(0, started, true).delivery_latency.count, 31);
    }

    #[test]
    fn topic_activity_and_the_busiest() {
        let t0 = Instant::now();
        let mut a = Activity::default();
        for _ in 0..50 {
            a.hit(t0);
        }
        let rate = a.per_sec(t0);
        assert!(rate > 4.9 && rate <= 10.0, "{rate}");
        // Two windows later it is quiet again.
        assert_eq!(a.per_sec(t0 + std::time::Duration::from_secs(11)), 0.0);
        let t = |name: &str, r: f64| TopicActivity { topic: name.into(), events_per_sec: r, subscribers: 0 };
        let mut b = Busiest::new(t0);
        let quiet = Activity::default();
        let mut one = Activity::default();
        for _ in 0..10 {
            one.hit(t0);
        }
        for (name, act) in [("b", &quiet), ("d", &one), ("c", &a), ("a", &one)] {
            b.add(name, act, 0);
        }
        let r = |x: f64| (x * 10.0).round() / 10.0;
        assert_eq!(b.top(2), vec![t("c", r(rate)), t("a", r(one.per_sec(t0)))]);
    }

    #[test]
    fn rates_from_samples() {
        let m = Metrics::default();
        let t0 = Instant::now();
        m.sample(t0);
        m.deliveries.fetch_add(500, Ordering::Relaxed);
        m.sample(t0 + std::time::Duration::from_millis(500));
        let s = m.stats(0, t0, true);
        assert!((s.deliveries_per_sec - 1000.0).abs() < 1e-6);
    }
}
