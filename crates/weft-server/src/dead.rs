//! Dead letters: what could not be delivered is kept, bounded, for an operator to list,
//! replay or purge (HTTP API `/api/dead-letters`, [`crate::Engine::dead_letters`]).
//!
//! Two kinds are kept:
//! - **publish**: a publish the cluster broker refused or lost (the broker down, its answer
//!   timed out, this node's publish buffer full), from any publisher — a client, the HTTP API,
//!   the host application, Python's `Server.publish` (which has no caller to tell). A replay
//!   publishes it again, with its event id and priority;
//! - **snapshot**: a snapshot whose source failed or timed out (kept to be seen; a replay
//!   leaves it, as there is no publish to make again).
//!
//! The store is bounded in entries and bytes; past either, the oldest entries go (snapshot
//! letters first; they hold at most a tenth of the entries), counted in
//! `weft_dead_letters_dropped_total`. It lives in the node's memory: in cluster mode each node
//! keeps the letters of the publishes it made.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;

use crate::wire::{ErrorBody, Priority, now_ms};

/// What a dead letter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadKind {
    /// A publish that did not reach the broker.
    Publish,
    /// A snapshot whose source failed.
    Snapshot,
}

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its number on this node (increasing).
    pub id: u64,
    /// When it failed, ms since the Unix epoch.
    pub time: u64,
    /// What failed.
    pub kind: DeadKind,
    /// The topic.
    pub topic: String,
    /// A publish's payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// A publish's event id, if the publisher gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// A publish's priority.
    #[serde(skip_serializing_if = "is_normal")]
    pub priority: Priority,
    /// A snapshot's subscriber.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Why it failed.
    pub error: ErrorBody,
    /// Times it was tried (a replay that fails again counts).
    pub attempts: u32,
    #[serde(skip)]
    size: usize,
}

impl DeadLetter {
    /// A publish that failed with `error`.
    pub fn publish(
        topic: &str,
        payload: Value,
        event_id: Option<String>,
        priority: Priority,
        error: ErrorBody,
    ) -> Self {
        let mut d = Self {
            id: 0,
            time: now_ms(),
            kind: DeadKind::Publish,
            topic: topic.to_owned(),
            payload: Some(payload),
            event_id,
            priority,
            user: None,
            error,
            attempts: 1,
            size: 0,
        };
        d.size = d.cost();
        d
    }

    /// A snapshot of `topic` for `user` that failed with `error`.
    pub fn snapshot(topic: &str, user: &str, error: ErrorBody) -> Self {
        let mut d = Self {
            id: 0,
            time: now_ms(),
            kind: DeadKind::Snapshot,
            topic: topic.to_owned(),
            payload: None,
            event_id: None,
            priority: Priority::Normal,
            user: Some(user.to_owned()),
            error,
            attempts: 1,
            size: 0,
        };
        d.size = d.cost();
        d
    }

    /// Bytes it is counted for: its JSON, plus a fixed overhead.
    fn cost(&self) -> usize {
        let payload = self.payload.as_ref().map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()));
        128 + self.topic.len()
            + payload
            + self.event_id.as_ref().map_or(0, String::len)
            + self.user.as_ref().map_or(0, String::len)
            + self.error.message.len()
    }
}

#[derive(Debug, Default)]
struct Inner {
    letters: VecDeque<DeadLetter>,
    bytes: usize,
    next_id: u64,
}

/// The bounded store (one per engine).
#[derive(Debug)]
pub struct DeadLetters {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    /// Letters kept since start (of both kinds).
    pub total: AtomicU64,
    /// Letters dropped to stay within bounds.
    pub dropped: AtomicU64,
    /// Publishes replayed successfully.
    pub replayed: AtomicU64,
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self::new(10_000, 16 << 20)
    }
}

/// What `list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterPage {
    /// Letters held.
    pub count: usize,
    /// Bytes they are counted for.
    pub bytes: usize,
    /// Letters dropped since start to stay within bounds.
    pub dropped: u64,
    /// The letters asked for, oldest first.
    pub items: Vec<DeadLetter>,
}

impl DeadLetters {
    /// A store of at most `max_entries` letters and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1024),
            total: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `letter` (the oldest go when the store is full); returns its id (`None`: larger
    /// than the whole store, dropped).
    pub fn push(&self, mut letter: DeadLetter) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        if letter.size > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut st = self.lock();
        // Snapshot letters are there to be seen, publish letters to be replayed: snapshots hold
        // at most a tenth of the store, and go first when room is needed.
        let snapshot_cap = (self.max_entries / 10).max(1);
        loop {
            let snapshots = st.letters.iter().filter(|l| l.kind == DeadKind::Snapshot).count();
            let full = st.letters.len() >= self.max_entries || st.bytes + letter.size > self.max_bytes;
            let too_many = letter.kind == DeadKind::Snapshot && snapshots >= snapshot_cap;
            if st.letters.is_empty() || !(full || too_many) {
                break;
            }
            let i = st.letters.iter().position(|l| l.kind == DeadKind::Snapshot).unwrap_or(0);
            let old = st.letters.remove(i).expect("not empty");
            st.bytes -= old.size;
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        st.next_id += 1;
        letter.id = st.next_id;
        st.bytes += letter.size;
        let id = letter.id;
        st.letters.push_back(letter);
        Some(id)
    }

    /// Up to `limit` letters with ids above `after`, oldest first.
    pub fn list(&self, after: u64, limit: usize) -> DeadLetterPage {
        let st = self.lock();
        let items = st.letters.iter().filter(|l| l.id > after).take(limit).cloned().collect();
        DeadLetterPage {
            count: st.letters.len(),
            bytes: st.bytes,
            dropped: self.dropped.load(Ordering::Relaxed),
            items,
        }
    }

    /// Letters held and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let st = self.lock();
        (st.letters.len(), st.bytes)
    }

    /// Remove the letters with these ids (all, with `None`); returns how many went.
    pub fn purge(&self, ids: Option<&[u64]>) -> usize {
        let mut st = self.lock();
        let before = st.letters.len();
        match ids {
            None => st.letters.clear(),
            Some(ids) => st.letters.retain(|l| !ids.contains(&l.id)),
        }
        st.bytes = st.letters.iter().map(|l| l.size).sum();
        before - st.letters.len()
    }

    /// The oldest publish letter with an id above `after` (among `ids`, when given).
    pub(crate) fn next_publish(&self, after: u64, ids: Option<&[u64]>) -> Option<DeadLetter> {
        let st = self.lock();
        st.letters
            .iter()
            .find(|l| l.id > after && l.kind == DeadKind::Publish && ids.is_none_or(|ids| ids.contains(&l.id)))
            .cloned()
    }

    /// A replay of letter `id` failed again with `error`: it stays, with the new error.
    pub(crate) fn failed_again(&self, id: u64, error: ErrorBody) {
        let mut st = self.lock();
        if let Some(l) = st.letters.iter_mut().find(|l| l.id == id) {
            l.attempts += 1;
            l.error = error;
        }
    }

    /// A replay of letter `id` worked: it goes.
    pub(crate) fn delivered(&self, id: u64) {
        self.replayed.fetch_add(1, Ordering::Relaxed);
        self.purge(Some(&[id]));
    }

    /// Prometheus lines.
    pub(crate) fn render(&self, out: &mut String) {
        let (count, bytes) = self.size();
        let lines: [(&str, &str, &str, u64); 5] = [
            ("weft_dead_letters", "gauge", "Dead letters held (publishes and snapshots that failed).", count as u64),
            ("weft_dead_letter_bytes", "gauge", "Bytes the dead letters held are counted for.", bytes as u64),
            (
                "weft_dead_letters_total",
                "counter",
                "Dead letters kept since start.",
                self.total.load(Ordering::Relaxed),
            ),
            (
                "weft_dead_letters_dropped_total",
                "counter",
                "Dead letters dropped to stay within the store's bounds.",
                self.dropped.load(Ordering::Relaxed),
            ),
            (
                "weft_dead_letters_replayed_total",
                "counter",
                "Dead-letter publishes replayed successfully.",
                self.replayed.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in lines {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        }
    }
}

fn is_normal(p: &Priority) -> bool {
    *p == Priority::Normal
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayOutcome {
    /// Publishes made again and removed from the store.
    pub replayed: usize,
    /// Letters still held.
    pub remaining: usize,
    /// Why the replay stopped early (the first publish that failed again; it stays, as do the
    /// letters after it, in order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;
    use serde_json::json;

    fn letter(n: usize) -> DeadLetter {
        DeadLetter::publish(
            "t",
            json!("x".repeat(n)),
            None,
            Priority::Normal,
            ErrorBody::new(ErrorCode::Unavailable, "down"),
        )
    }

    #[test]
    fn bounded_in_entries_and_bytes_oldest_first() {
        let d = DeadLetters::new(3, 2048);
        for _ in 0..5 {
            d.push(letter(10));
        }
        let p = d.list(0, 100);
        assert_eq!((p.count, p.items.iter().map(|l| l.id).collect::<Vec<_>>()), (3, vec![3, 4, 5]));
        assert_eq!(d.dropped.load(Ordering::Relaxed), 2);
        // Bytes: a large letter pushes out as many old ones as it needs.
        d.push(letter(1800));
        assert_eq!(d.list(0, 100).items.iter().map(|l| l.id).collect::<Vec<_>>(), vec![6]);
        assert!(d.size().1 <= 2048);
        // Larger than the store: dropped, the store unchanged.
        assert_eq!(d.push(letter(5000)), None);
        assert_eq!(d.size().0, 1);
        assert_eq!(d.purge(None), 1);
        assert_eq!(d.size(), (0, 0));
    }

    #[test]
    fn snapshot_letters_never_push_out_publish_letters() {
        let d = DeadLetters::new(20, 1 << 20);
        for _ in 0..10 {
            d.push(letter(10));
        }
        let snap = || DeadLetter::snapshot("s", "u", ErrorBody::new(ErrorCode::SnapshotFailed, "down"));
        for _ in 0..100 {
            d.push(snap());
        }
        let kinds = |d: &DeadLetters, k: DeadKind| d.list(0, 100).items.iter().filter(|l| l.kind == k).count();
        // At most a tenth are snapshots; every publish letter is still there.
        assert_eq!((kinds(&d, DeadKind::Publish), kinds(&d, DeadKind::Snapshot)), (10, 2));
        // A full store makes room from the snapshots first.
        for _ in 0..10 {
            d.push(letter(10));
        }
        assert_eq!((kinds(&d, DeadKind::Publish), kinds(&d, DeadKind::Snapshot)), (20, 0));
    }
}
