//! The in-memory broker: a sharded topic table in this process.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Broker, BrokerError, BrokerFuture, Patterns, PublishMeta, Start, SubscribeOutcome, Subscriber};
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
    /// Most topics held at once.
    pub max_topics: usize,
    /// Bytes of history for all topics together.
    pub history_memory: usize,
    /// Bytes of history per topic.
    pub history_topic_bytes: usize,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            policy: SlowConsumerPolicy::Disconnect,
            topic_policies: Vec::new(),
            max_topics: 100_000,
            history_memory: 256 << 20,
            history_topic_bytes: 4 << 20,
        }
    }
}

/// A sweep over all topics frees history down to this share of `history_memory`...
const SWEEP_TARGET: f64 = 0.75;
/// ...and starts when history passes this share.
const SWEEP_START: f64 = 0.9;

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
    activity: crate::metrics::Activity,
}

#[derive(Default)]
struct Shard {
    topics: HashMap<Arc<str>, TopicState>,
}

/// The single-node broker (the default): topics sharded by name hash, so work on different
/// topics rarely contends; pattern subscriptions in one table read by every publish.
pub struct MemoryBroker {
    shards: Box<[Mutex<Shard>]>,
    patterns: Patterns,
    topics: AtomicUsize,
    history_bytes: AtomicUsize,
    sweeping: AtomicBool,
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
            patterns: Patterns::default(),
            topics: AtomicUsize::new(0),
            history_bytes: AtomicUsize::new(0),
            sweeping: AtomicBool::new(false),
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
        super::policy_for(&self.settings.topic_policies, self.settings.policy, topic)
    }

    fn topic<'s>(&self, shard: &'s mut Shard, name: &str) -> Result<&'s mut TopicState, BrokerError> {
        if !shard.topics.contains_key(name) {
            // Reserve a place first, so concurrent creations cannot overshoot the limit.
            if self.topics.fetch_add(1, Ordering::Relaxed) >= self.settings.max_topics {
                self.topics.fetch_sub(1, Ordering::Relaxed);
                self.metrics.topics_refused.fetch_add(1, Ordering::Relaxed);
                return Err(BrokerError::too_many_topics(self.settings.max_topics));
            }
            let name: Arc<str> = name.into();
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
                    activity: Default::default(),
                },
            );
        }
        Ok(shard.topics.get_mut(name).expect("just inserted"))
    }

    /// Forget a topic nobody subscribes to and that keeps no history: its offset and epoch
    /// go with it (a later resume gets a new epoch, so `recovered: false`, never a gap).
    fn forget_if_unused(&self, shard: &mut Shard, name: &str) {
        if shard.topics.get(name).is_some_and(|t| t.subs.is_empty() && t.history.is_empty()) {
            shard.topics.remove(name);
            self.topics.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Account history bytes: `added` kept, `freed` released, `evicted` events dropped early.
    fn account(&self, added: usize, freed: usize, evicted: u64) {
        if added >= freed {
            self.history_bytes.fetch_add(added - freed, Ordering::Relaxed);
        } else {
            self.history_bytes.fetch_sub(freed - added, Ordering::Relaxed);
        }
        if evicted > 0 {
            self.metrics.history_evicted.fetch_add(evicted, Ordering::Relaxed);
        }
        self.metrics.history_bytes.store(self.history_bytes.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
    }

    fn publish_now(&self, topic: &str, payload: Value, meta: PublishMeta) -> Result<Position, BrokerError> {
        let pos = {
            let mut shard = self.shard(topic);
            let t = self.topic(&mut shard, topic)?;
            t.offset += 1;
            t.touched = Instant::now();
            let mut ev =
                Event::new(Arc::clone(&t.name), t.offset, Arc::clone(&t.epoch), meta.id.map(Into::into), payload);
            ev.priority = meta.priority;
            let ev = Arc::new(ev);
            let (added, mut freed, mut evicted) = if self.settings.history_size > 0 {
                let size = ev.history_size();
                let (freed, evicted) = t.history.push(
                    Arc::clone(&ev),
                    size,
                    self.settings.history_size,
                    self.settings.history_topic_bytes,
                );
                let stored = size <= self.settings.history_topic_bytes;
                (if stored { size } else { 0 }, freed, evicted)
            } else {
                (0, 0, 0)
            };
            // The hard bound: over the global budget, this topic gives up its own oldest events
            // (a sweep below frees the globally oldest ones, which is the usual case).
            let budget = self.settings.history_memory;
            while self.history_bytes.load(Ordering::Relaxed) + added > budget + freed && !t.history.is_empty() {
                freed += t.history.pop_front();
                evicted += 1;
            }
            self.account(added, freed, evicted);
            t.activity.hit(ev.published_at);
            for s in t.subs.values() {
                s.handle.deliver(&ev, t.policy);
            }
            self.patterns.deliver(&ev, t.policy, |id| t.subs.contains_key(&id));
            let pos = Position { offset: t.offset, epoch: t.epoch.to_string() };
            self.forget_if_unused(&mut shard, topic);
            pos
        };
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        if self.history_bytes.load(Ordering::Relaxed) as f64 > self.settings.history_memory as f64 * SWEEP_START {
            self.sweep();
        }
        Ok(pos)
    }

    /// Free the globally oldest history down to `SWEEP_TARGET` of the budget. Runs outside any
    /// shard lock except one at a time; one sweep at a time.
    fn sweep(&self) {
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let target = (self.settings.history_memory as f64 * SWEEP_TARGET) as usize;
        let held = self.history_bytes.load(Ordering::Relaxed);
        if held > target {
            let mut ages: Vec<(Instant, usize)> = Vec::new();
            for shard in self.shards.iter() {
                let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                for t in shard.topics.values() {
                    ages.extend(t.history.ages());
                }
            }
            ages.sort_unstable_by_key(|(at, _)| *at);
            let mut to_free = held - target;
            let mut cutoff = None;
            for (at, size) in ages {
                if to_free == 0 {
                    cutoff = Some(at);
                    break;
                }
                to_free = to_free.saturating_sub(size);
            }
            let cutoff = cutoff.unwrap_or_else(Instant::now);
            for shard in self.shards.iter() {
                let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                let (mut freed, mut evicted) = (0, 0);
                let mut empty = Vec::new();
                for (name, t) in shard.topics.iter_mut() {
                    if t.history.oldest().is_some_and(|o| o < cutoff) {
                        let (f, n) = t.history.drop_before(cutoff);
                        freed += f;
                        evicted += n;
                        if t.history.is_empty() && t.subs.is_empty() {
                            empty.push(Arc::clone(name));
                        }
                    }
                }
                for name in empty {
                    self.forget_if_unused(&mut shard, &name);
                }
                self.account(0, freed, evicted);
            }
        }
        self.sweeping.store(false, Ordering::Release);
    }

    fn subscribe_now(
        &self,
        sub: &Arc<Subscriber>,
        target: &Pattern,
        start: Start<'_>,
        presence: bool,
    ) -> Result<SubscribeOutcome, BrokerError> {
        if target.is_wildcard() {
            if self.patterns.add(target, sub) {
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(SubscribeOutcome { position: None, replayed: None });
        }
        let mut shard = self.shard(target.as_str());
        let t = self.topic(&mut shard, target.as_str())?;
        t.touched = Instant::now();
        let freed = t.history.trim(Instant::now(), self.settings.history_ttl);
        self.account(0, freed, 0);
        let replayed = match start {
            Start::Live => None,
            Start::Recent(n) => {
                // Those of the n most recent events that pass the subscription's filter.
                let replayed = t.history.recent(n).iter().filter(|e| sub.replay(e)).count();
                self.metrics.replayed_events.fetch_add(replayed as u64, Ordering::Relaxed);
                Some(Some(replayed))
            }
            Start::Resume(pos) => Some(match t.history.resume(pos.offset, &pos.epoch, t.offset, &t.epoch) {
                Resume::Replay(events) => {
                    // Filtered events count as seen: the position still moves past them.
                    let replayed = events.iter().filter(|e| sub.replay(e)).count();
                    self.metrics.replayed_events.fetch_add(replayed as u64, Ordering::Relaxed);
                    Some(replayed)
                }
                Resume::NotRecoverable => {
                    self.metrics.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }),
        };
        let position = Some(Position { offset: t.offset, epoch: t.epoch.to_string() });
        let new = t.subs.insert(sub.id, Sub { handle: Arc::clone(sub), presence }).is_none();
        if new {
            self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            let notice = Arc::new(Notice::join(Arc::clone(&t.name), sub.member.clone()));
            for s in t.subs.values().filter(|s| s.presence && s.handle.id != sub.id) {
                s.handle.outbox.push_notice(&notice);
            }
        }
        Ok(SubscribeOutcome { position, replayed: replayed.flatten() })
    }

    fn unsubscribe_now(&self, sub: &Arc<Subscriber>, target: &Pattern) -> bool {
        if target.is_wildcard() {
            let (removed, _) = self.patterns.remove(target, sub);
            if removed {
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
        self.forget_if_unused(&mut shard, target.as_str());
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
    fn publish<'a>(&'a self, topic: &'a str, payload: Value, meta: PublishMeta) -> BrokerFuture<'a, Position> {
        Box::pin(std::future::ready(self.publish_now(topic, payload, meta)))
    }

    fn subscribe<'a>(
        &'a self,
        sub: &'a Arc<Subscriber>,
        target: &'a Pattern,
        start: Start<'a>,
        presence: bool,
    ) -> BrokerFuture<'a, SubscribeOutcome> {
        Box::pin(std::future::ready(self.subscribe_now(sub, target, start, presence)))
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

    fn busiest(&self, n: usize) -> Vec<crate::metrics::TopicActivity> {
        let mut b = crate::metrics::Busiest::new(Instant::now());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for t in shard.topics.values() {
                b.add(&t.name, &t.activity, t.subs.len());
            }
        }
        b.top(n)
    }

    fn topic_count(&self) -> usize {
        self.topics.load(Ordering::Relaxed)
    }

    fn last_event<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Option<Arc<crate::wire::Event>>> {
        let shard = self.shard(topic);
        let last = shard.topics.get(topic).and_then(|t| t.history.recent(1).pop());
        Box::pin(std::future::ready(Ok(last)))
    }

    fn between<'a>(
        &'a self,
        topic: &'a str,
        epoch: &'a str,
        after: u64,
        upto: u64,
    ) -> BrokerFuture<'a, Option<Vec<Arc<crate::wire::Event>>>> {
        let shard = self.shard(topic);
        let events = shard.topics.get(topic).and_then(|t| match t.history.resume(after, epoch, t.offset, &t.epoch) {
            Resume::Replay(mut v) if t.offset >= upto => {
                v.retain(|e| e.offset <= upto);
                Some(v)
            }
            _ => None,
        });
        Box::pin(std::future::ready(Ok(events)))
    }

    fn maintain(&self, now: Instant) -> BrokerFuture<'_, ()> {
        self.maintain_now(now);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl MemoryBroker {
    fn maintain_now(&self, now: Instant) {
        let ttl = self.settings.history_ttl;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.topics.len();
            let mut freed = 0;
            shard.topics.retain(|_, t| {
                freed += t.history.trim(now, ttl);
                !(t.subs.is_empty() && t.history.is_empty())
            });
            let removed = before - shard.topics.len();
            if removed > 0 {
                self.topics.fetch_sub(removed, Ordering::Relaxed);
            }
            self.account(0, freed, 0);
        }
        if self.history_bytes.load(Ordering::Relaxed) as f64 > self.settings.history_memory as f64 * SWEEP_START {
            self.sweep();
        }
    }
}
