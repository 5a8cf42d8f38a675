//! Bounded per-topic history (count and age) and the resume decision.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::Event;

/// The most recent events of one topic, bounded by count, bytes and age.
#[derive(Debug, Default)]
pub(crate) struct History {
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
}

/// The answer to a resume request.
#[derive(Debug)]
pub(crate) enum Resume {
    /// These events (possibly none) follow the position, in order.
    Replay(Vec<Arc<Event>>),
    /// The position cannot be resumed.
    NotRecoverable,
}

impl History {
    /// Keep `ev` (whose size is `size` bytes) within `max` events and `max_bytes` bytes,
    /// dropping the oldest. Returns the bytes dropped (the new event included when it alone
    /// is larger than `max_bytes`) and how many events were dropped for the byte limit.
    pub(crate) fn push(&mut self, ev: Arc<Event>, size: usize, max: usize, max_bytes: usize) -> (usize, u64) {
        if max == 0 {
            return (0, 0);
        }
        let mut freed = 0;
        while self.events.len() >= max {
            freed += self.pop_front();
        }
        let mut evicted = 0;
        if size > max_bytes {
            // Too large to keep: the history must not skip it, so it starts after it.
            freed += self.clear();
            return (freed, 1);
        }
        while self.bytes + size > max_bytes {
            freed += self.pop_front();
            evicted += 1;
        }
        self.events.push_back((ev, size));
        self.bytes += size;
        (freed, evicted)
    }

    /// Drop the oldest event; returns its size.
    pub(crate) fn pop_front(&mut self) -> usize {
        match self.events.pop_front() {
            Some((_, size)) => {
                self.bytes -= size;
                size
            }
            None => 0,
        }
    }

    /// Drop everything; returns the bytes freed.
    pub(crate) fn clear(&mut self) -> usize {
        let freed = self.bytes;
        self.events.clear();
        self.bytes = 0;
        freed
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Publication time of the oldest event kept.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.events.front().map(|(e, _)| e.published_at)
    }

    /// Publication times and sizes of every event kept.
    pub(crate) fn ages(&self) -> impl Iterator<Item = (Instant, usize)> + '_ {
        self.events.iter().map(|(e, size)| (e.published_at, *size))
    }

    /// The `n` most recent events, oldest first.
    pub(crate) fn recent(&self, n: usize) -> Vec<Arc<Event>> {
        let skip = self.events.len().saturating_sub(n);
        self.events.iter().skip(skip).map(|(e, _)| e.clone()).collect()
    }

    /// Forget events published before `cutoff`; returns the bytes freed and the count.
    pub(crate) fn drop_before(&mut self, cutoff: Instant) -> (usize, u64) {
        let (mut freed, mut n) = (0, 0);
        while self.events.front().is_some_and(|(e, _)| e.published_at < cutoff) {
            freed += self.pop_front();
            n += 1;
        }
        self.shrink();
        (freed, n)
    }

    /// Forget events older than `ttl`; returns the bytes freed.
    pub(crate) fn trim(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut freed = 0;
        while self.events.front().is_some_and(|(e, _)| now.duration_since(e.published_at) > ttl) {
            freed += self.pop_front();
        }
        self.shrink();
        freed
    }

    fn shrink(&mut self) {
        if self.events.is_empty() && self.events.capacity() > 16 {
            self.events.shrink_to(0);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// What to replay for a client whose last seen event is `(offset, epoch)`, given the
    /// topic's current `(top, current_epoch)`.
    pub(crate) fn resume(&self, offset: u64, epoch: &str, top: u64, current_epoch: &str) -> Resume {
        if epoch != current_epoch || offset > top {
            return Resume::NotRecoverable;
        }
        if offset == top {
            return Resume::Replay(Vec::new());
        }
        match self.events.front() {
            Some((first, _)) if first.offset <= offset + 1 => {
                Resume::Replay(self.events.iter().filter(|(e, _)| e.offset > offset).map(|(e, _)| e.clone()).collect())
            }
            _ => Resume::NotRecoverable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(off: u64) -> Arc<Event> {
        Arc::new(Event::new("t".into(), off, "e".into(), None, json!(off)))
    }

    fn offsets(r: Resume) -> Option<Vec<u64>> {
        match r {
            Resume::Replay(v) => Some(v.iter().map(|e| e.offset).collect()),
            Resume::NotRecoverable => None,
        }
    }

    #[test]
    fn resume_rules() {
        let mut h = History::default();
        for i in 1..=10 {
            h.push(ev(i), 10, 5, usize::MAX);
        }
        assert_eq!(h.len(), 5); // 6..=10
        assert_eq!(offsets(h.resume(7, "e", 10, "e")), Some(vec![8, 9, 10]));
        assert_eq!(offsets(h.resume(5, "e", 10, "e")), Some(vec![6, 7, 8, 9, 10]));
        assert_eq!(offsets(h.resume(4, "e", 10, "e")), None); // 5 fell out
        assert_eq!(offsets(h.resume(10, "e", 10, "e")), Some(vec![]));
        assert_eq!(offsets(h.resume(11, "e", 10, "e")), None); // from the future
        assert_eq!(offsets(h.resume(8, "other", 10, "e")), None);
        assert_eq!(offsets(History::default().resume(0, "e", 0, "e")), Some(vec![]));
        assert_eq!(offsets(History::default().resume(0, "e", 3, "e")), None);
    }

    #[test]
    fn trims_by_age() {
        let mut h = History::default();
        h.push(ev(1), 10, 10, usize::MAX);
        h.trim(Instant::now() + Duration::from_secs(2), Duration::from_secs(1));
        assert!(h.is_empty());
        h.push(ev(2), 10, 0, usize::MAX);
        assert!(h.is_empty());
    }

    #[test]
    fn byte_limit_evicts_the_oldest_and_recovery_stays_exact() {
        let mut h = History::default();
        for i in 1..=10 {
            h.push(ev(i), 100, 100, 450);
        }
        assert_eq!((h.len(), h.bytes()), (4, 400)); // 7..=10
        assert_eq!(offsets(h.resume(6, "e", 10, "e")), Some(vec![7, 8, 9, 10]));
        assert_eq!(offsets(h.resume(5, "e", 10, "e")), None, "evicted events are never skipped");
        // An event larger than the limit empties the history: resuming before it fails.
        let (freed, _) = h.push(ev(11), 1000, 100, 450);
        assert_eq!((freed, h.bytes(), h.len()), (400, 0, 0));
        assert_eq!(offsets(h.resume(10, "e", 11, "e")), None);
        assert_eq!(offsets(h.resume(11, "e", 11, "e")), Some(vec![]));
    }
}
