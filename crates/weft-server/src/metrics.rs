//! Counters, rates, `/metrics` (Prometheus text format) and `/api/stats` (JSON).

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// The engine's counters. Monotonic counters end in `_total` in `/metrics`.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
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
    rates: Mutex<Rates>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Rates {
    messages_in_per_sec: f64,
    publishes_per_sec: f64,
    deliveries_per_sec: f64,
    #[serde(skip)]
    last: Option<(Instant, [u64; 3])>,
}

/// What `/api/stats` returns.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct Stats {
    pub uptime_seconds: u64,
    pub connections: u64,
    pub connections_total: u64,
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
    pub anonymous: bool,
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
    }

    /// A snapshot for `/api/stats`.
    pub fn stats(&self, topics: usize, started: Instant, anonymous: bool) -> Stats {
        let r = *self.rates.lock().unwrap_or_else(|e| e.into_inner());
        Stats {
            uptime_seconds: started.elapsed().as_secs(),
            connections: Self::get(&self.connections),
            connections_total: Self::get(&self.connections_total),
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
            anonymous,
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
            "Events dropped or replaced by the drop-oldest and latest policies.",
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
            "weft_token_expiries_total",
            "counter",
            "Sessions closed because their token expired without a refresh.",
            Self::get(&self.token_expiries),
        );
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
            let (name, value) = line.split_once(' ').unwrap();
            assert!(name.starts_with("weft_"));
            value.parse::<u64>().unwrap();
        }
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
