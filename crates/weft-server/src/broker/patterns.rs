//! This node's pattern subscriptions (`chat.*`, `prices.>`): the local fan-out that both
//! brokers share. Patterns start live; every publish on a matching topic is queued to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::Subscriber;
use crate::outbox::SlowConsumerPolicy;
use crate::topic::Pattern;
use crate::wire::{Event, Notice};

/// Pattern → subscribers, read by every publish (a relaxed count skips the lock when empty).
#[derive(Default)]
pub(crate) struct Patterns {
    table: RwLock<HashMap<Pattern, HashMap<u64, Arc<Subscriber>>>>,
    count: AtomicUsize,
}

impl Patterns {
    /// Add a subscription; returns whether it is new.
    pub(crate) fn add(&self, p: &Pattern, sub: &Arc<Subscriber>) -> bool {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let new = t.entry(p.clone()).or_default().insert(sub.id, Arc::clone(sub)).is_none();
        if new {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        new
    }

    /// Remove a subscription; returns whether it existed and whether the pattern has no
    /// subscriber left on this node.
    pub(crate) fn remove(&self, p: &Pattern, sub: &Subscriber) -> (bool, bool) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let Some(map) = t.get_mut(p) else { return (false, true) };
        let removed = map.remove(&sub.id).is_some();
        let last = map.is_empty();
        if last {
            t.remove(p);
        }
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        (removed, last)
    }

    /// Whether any pattern subscription exists.
    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// Whether a pattern subscription on this node covers `topic`.
    pub(crate) fn covers(&self, topic: &str) -> bool {
        !self.is_empty() && self.table.read().unwrap_or_else(|e| e.into_inner()).keys().any(|p| p.matches(topic))
    }

    /// Tell every pattern subscriber whose pattern covers `topic` (once per connection, except
    /// those for which `skip` is true) that the topic's stream moved on (cluster mode).
    pub(crate) fn notify(&self, topic: &str, notice: &Arc<Notice>, skip: impl Fn(u64) -> bool) {
        if self.is_empty() {
            return;
        }
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut seen: Vec<u64> = Vec::new();
        for subs in t.iter().filter(|(p, _)| p.matches(topic)).map(|(_, subs)| subs) {
            for (id, s) in subs {
                if !skip(*id) && !seen.contains(id) {
                    seen.push(*id);
                    s.notify(notice);
                }
            }
        }
    }

    /// Queue `ev` to every pattern subscriber matching its topic, once per connection, except
    /// connections for which `skip` is true (they hold an exact subscription and get it there).
    /// Returns how many connections it was queued to.
    pub(crate) fn deliver(&self, ev: &Arc<Event>, policy: SlowConsumerPolicy, skip: impl Fn(u64) -> bool) -> usize {
        if self.is_empty() {
            return 0;
        }
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut seen: Vec<u64> = Vec::new();
        let mut matched = 0;
        for (p, subs) in t.iter() {
            if !p.matches(&ev.topic) {
                continue;
            }
            matched += 1;
            for (id, s) in subs {
                if skip(*id) || (matched > 1 && seen.contains(id)) {
                    continue;
                }
                seen.push(*id);
                s.deliver_via_pattern(ev, policy);
            }
        }
        seen.len()
    }
}
