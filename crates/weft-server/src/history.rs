//! Bounded per-topic history (count and age) and the resume decision.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::Event;

/// The most recent events of one topic.
#[derive(Debug, Default)]
pub(crate) struct History {
    events: VecDeque<Arc<Event>>,
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
    pub(crate) fn push(&mut self, ev: Arc<Event>, max: usize) {
        if max == 0 {
            return;
        }
        while self.events.len() >= max {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Forget events older than `ttl`.
    pub(crate) fn trim(&mut self, now: Instant, ttl: Duration) {
        while self.events.front().is_some_and(|e| now.duration_since(e.published_at) > ttl) {
            self.events.pop_front();
        }
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
            Some(first) if first.offset <= offset + 1 => {
                Resume::Replay(self.events.iter().filter(|e| e.offset > offset).cloned().collect())
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
            h.push(ev(i), 5);
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
        h.push(ev(1), 10);
        h.trim(Instant::now() + Duration::from_secs(2), Duration::from_secs(1));
        assert!(h.is_empty());
        h.push(ev(2), 0);
        assert!(h.is_empty());
    }
}
