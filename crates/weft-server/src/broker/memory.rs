//! The in-memory broker: a sharded topic table in this process.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Broker, BrokerFuture, SubscribeOutcome, Subscriber};
use crate::history::{History, Resume};
use crate::metrics::Metrics;
use crate::outbox::SlowConsumerPolicy;
use crate::topic::Pattern;
use crate::wire::{Event, Member, Notice, Position};

const SHARDS: usize = 64;

/// History and policy settings of a [`MemoryBroker`].
#[derive(Debug, Clone)]
pub struct TopicSettings {
    /// Events kept per topic.
    pub history_size: usize,
    /// How long events are kept.
    pub history_ttl: Duration,
    /// Default slow-consumer policy.
    pub policy: SlowConsumerPolicy,
    /// Per-topic policies, first match wins.
    pub topic_policies: Vec<(Pattern, SlowConsumerPolicy)>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            policy: SlowConsumerPolicy::Disconnect,
            topic_policies: Vec::new(),
        }
    }
}

struct Sub {
    handle: Arc<Subscriber>,
    presence: bool,
}

struct TopicState {
    name: Arc<str>,
    epoch: Arc<str>,
    offset: u64,
    history: History,
    subs: HashMap<u64, Sub>,
    policy: SlowConsumerPolicy,
    touched: Instant,
}

#[derive(Default)]
struct Shard {
    topics: HashMap<Arc<str>, TopicState>,
}

/// The single-node broker (the default): topics sharded by name hash, so work on different
/// topics rarely contends; pattern subscriptions in one table read by every publish.
pub struct MemoryBroker {
    shards: Box<[Mutex<Shard>]>,
    patterns: RwLock<HashMap<Pattern, HashMap<u64, Arc<Subscriber>>>>,
    pattern_subs: AtomicUsize,
    topics: AtomicUsize,
    settings: TopicSettings,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").field("topics", &self.topic_count()).finish_non_exhaustive()
    }
}

fn new_epoch() -> Arc<str> {
    format!("{:08x}", rand::random::<u32>()).into()
}

impl MemoryBroker {
    /// A broker with these settings, counting into `metrics`.
    pub fn new(settings: TopicSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            patterns: RwLock::new(HashMap::new()),
            pattern_subs: AtomicUsize::new(0),
            topics: AtomicUsize::new(0),
            settings,
            metrics,
        }
    }

    fn shard(&self, topic: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        topic.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn policy_for(&self, topic: &str) -> SlowConsumerPolicy {
        self.settings
            .topic_policies
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, pol)| *pol)
            .unwrap_or(self.settings.policy)
    }

    fn topic<'s>(&self, shard: &'s mut Shard, name: &str) -> &'s mut TopicState {
        if !shard.topics.contains_key(name) {
            let name: Arc<str> = name.into();
            self.topics.fetch_add(1, Ordering::Relaxed);
            shard.topics.insert(
                Arc::clone(&name),
                TopicState {
                    policy: self.policy_for(&name),
                    name,
                    epoch: new_epoch(),
                    offset: 0,
                    history: History::default(),
                    subs: HashMap::new(),
                    touched: Instant::now(),
                },
            );
        }
        shard.topics.get_mut(name).expect("just inserted")
    }

    fn publish_now(&self, topic: &str, payload: Value, id: Option<String>) -> Position {
        let mut shard = self.shard(topic);
        let t = self.topic(&mut shard, topic);
        t.offset += 1;
        t.touched = Instant::now();
        let ev = Arc::new(Event::new(Arc::clone(&t.name), t.offset, Arc::clone(&t.epoch), id.map(Into::into), payload));
        t.history.push(Arc::clone(&ev), self.settings.history_size);
        for s in t.subs.values() {
            s.handle.outbox.push_event(&ev, t.policy);
        }
        if self.pattern_subs.load(Ordering::Relaxed) > 0 {
            let patterns = self.patterns.read().unwrap_or_else(|e| e.into_inner());
            let mut seen: Vec<u64> = Vec::new();
            let mut matched = 0;
            for (p, subs) in patterns.iter() {
                if !p.matches(topic) {
                    continue;
                }
                matched += 1;
                for (id, s) in subs {
                    if t.subs.contains_key(id) || (matched > 1 && seen.contains(id)) {
                        continue;
                    }
                    seen.push(*id);
                    s.outbox.push_event(&ev, t.policy);
                }
            }
        }
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        Position { offset: t.offset, epoch: t.epoch.to_string() }
    }

    fn subscribe_now(
        &self,
        sub: &Arc<Subscriber>,
        target: &Pattern,
        resume: Option<&Position>,
        presence: bool,
    ) -> SubscribeOutcome {
        if target.is_wildcard() {
            let mut patterns = self.patterns.write().unwrap_or_else(|e| e.into_inner());
            if patterns.entry(target.clone()).or_default().insert(sub.id, Arc::clone(sub)).is_none() {
                self.pattern_subs.fetch_add(1, Ordering::Relaxed);
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            return SubscribeOutcome { position: None, replayed: None };
        }
        let mut shard = self.shard(target.as_str());
        let t = self.topic(&mut shard, target.as_str());
        t.touched = Instant::now();
        let replayed = resume.map(|pos| {
            t.history.trim(Instant::now(), self.settings.history_ttl);
            match t.history.resume(pos.offset, &pos.epoch, t.offset, &t.epoch) {
                Resume::Replay(events) => {
                    for e in &events {
                        sub.outbox.push_event(e, SlowConsumerPolicy::Disconnect);
                    }
                    self.metrics.replayed_events.fetch_add(events.len() as u64, Ordering::Relaxed);
                    Some(events.len())
                }
                Resume::NotRecoverable => {
                    self.metrics.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        });
        let position = Some(Position { offset: t.offset, epoch: t.epoch.to_string() });
        let new = t.subs.insert(sub.id, Sub { handle: Arc::clone(sub), presence }).is_none();
        if new {
            self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            let notice = Arc::new(Notice::join(Arc::clone(&t.name), sub.member.clone()));
            for s in t.subs.values().filter(|s| s.presence && s.handle.id != sub.id) {
                s.handle.outbox.push_notice(&notice);
            }
        }
        SubscribeOutcome { position, replayed: replayed.flatten() }
    }

    fn unsubscribe_now(&self, sub: &Arc<Subscriber>, target: &Pattern) -> bool {
        if target.is_wildcard() {
            let mut patterns = self.patterns.write().unwrap_or_else(|e| e.into_inner());
            let Some(map) = patterns.get_mut(target) else { return false };
            let removed = map.remove(&sub.id).is_some();
            if map.is_empty() {
                patterns.remove(target);
            }
            if removed {
                self.pattern_subs.fetch_sub(1, Ordering::Relaxed);
                self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            return removed;
        }
        let mut shard = self.shard(target.as_str());
        let Some(t) = shard.topics.get_mut(target.as_str()) else { return false };
        let Some(_) = t.subs.remove(&sub.id) else { return false };
        self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
        t.touched = Instant::now();
        let notice = Arc::new(Notice::leave(Arc::clone(&t.name), sub.member.clone()));
        for s in t.subs.values().filter(|s| s.presence) {
            s.handle.outbox.push_notice(&notice);
        }
        true
    }

    fn presence_now(&self, topic: &str, limit: usize) -> (usize, Vec<Member>) {
        let shard = self.shard(topic);
        match shard.topics.get(topic) {
            Some(t) => (t.subs.len(), t.subs.values().take(limit).map(|s| s.handle.member.clone()).collect()),
            None => (0, Vec::new()),
        }
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(&'a self, topic: &'a str, payload: Value, id: Option<String>) -> BrokerFuture<'a, Position> {
        let pos = self.publish_now(topic, payload, id);
        Box::pin(std::future::ready(Ok(pos)))
    }

    fn subscribe<'a>(
        &'a self,
        sub: &'a Arc<Subscriber>,
        target: &'a Pattern,
        resume: Option<&'a Position>,
        presence: bool,
    ) -> BrokerFuture<'a, SubscribeOutcome> {
        let out = self.subscribe_now(sub, target, resume, presence);
        Box::pin(std::future::ready(Ok(out)))
    }

    fn unsubscribe<'a>(&'a self, sub: &'a Arc<Subscriber>, target: &'a Pattern) -> BrokerFuture<'a, bool> {
        let out = self.unsubscribe_now(sub, target);
        Box::pin(std::future::ready(Ok(out)))
    }

    fn presence<'a>(&'a self, topic: &'a str, limit: usize) -> BrokerFuture<'a, (usize, Vec<Member>)> {
        let out = self.presence_now(topic, limit);
        Box::pin(std::future::ready(Ok(out)))
    }

    fn remove_all(&self, sub: &Arc<Subscriber>, targets: &[Pattern]) {
        for t in targets {
            self.unsubscribe_now(sub, t);
        }
    }

    fn topic_count(&self) -> usize {
        self.topics.load(Ordering::Relaxed)
    }

    fn maintain(&self, now: Instant) {
        let ttl = self.settings.history_ttl;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.topics.len();
            shard.topics.retain(|_, t| {
                t.history.trim(now, ttl);
                !(t.subs.is_empty() && t.history.is_empty() && now.duration_since(t.touched) > ttl)
            });
            let removed = before - shard.topics.len();
            if removed > 0 {
                self.topics.fetch_sub(removed, Ordering::Relaxed);
            }
        }
    }
}
