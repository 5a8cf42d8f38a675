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
//! Every letter first goes to the node's memory ([`DeadLetters`]), bounded in entries and
//! bytes; past either, the oldest entries go (snapshot letters first; they hold at most a tenth
//! of the entries), counted in `weft_dead_letters_dropped_total`.
//!
//! In cluster mode over Redis the cluster core then moves them, oldest first, into a store in
//! the broker shared by every node ([`SharedDeadLetters`]): a background task woken when a
//! letter arrives or the broker comes back (letters arise exactly when the broker cannot be
//! reached). A letter leaves the node's memory only once the broker acknowledged it (a retry
//! after a lost answer does not store it twice); failures back off, up to 30 s. The shared
//! store has the same bounds and the same dropping rule, over the whole cluster; each letter
//! there carries the node that made it and a cluster-wide id. Any node lists, replays and purges
//! the shared letters; a replay claims each letter atomically (removes it) before publishing it
//! and puts it back under its id when the publish fails, so two nodes replaying at once publish
//! each letter once. Over NATS each node keeps its letters in its memory, as on one node.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::{BrokerError, BrokerFuture};
use crate::wire::{ErrorBody, Priority, now_ms};

/// What a dead letter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Its number (increasing): in the cluster's shared store when `shared`, else on this node.
    pub id: u64,
    /// The node that made it (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Whether it is in the cluster's shared store (any node lists, replays and purges it)
    /// rather than in this node's memory (not moved yet: the broker unreachable since).
    pub shared: bool,
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
            node: None,
            shared: false,
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
            node: None,
            shared: false,
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

/// A letter as the shared store keeps it (its JSON without `id` and `shared`).
#[derive(Deserialize)]
struct Stored {
    time: u64,
    kind: DeadKind,
    topic: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    user: Option<String>,
    error: StoredError,
    attempts: u32,
    #[serde(default)]
    node: Option<String>,
}

#[derive(Deserialize)]
struct StoredError {
    code: u16,
    message: String,
}

impl DeadLetter {
    /// Its JSON for the shared store.
    pub(crate) fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A letter of the shared store, from its id and JSON.
    pub(crate) fn from_stored(id: u64, json: &str) -> Option<Self> {
        let s: Stored = serde_json::from_str(json).ok()?;
        let mut d = Self {
            id,
            node: s.node,
            shared: true,
            time: s.time,
            kind: s.kind,
            topic: s.topic,
            payload: s.payload,
            event_id: s.event_id,
            priority: s.priority,
            user: s.user,
            error: ErrorBody { code: s.error.code, message: s.error.message },
            attempts: s.attempts,
            size: 0,
        };
        d.size = d.cost();
        Some(d)
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
    /// Publishes replayed successfully (by this node, from either store).
    pub replayed: AtomicU64,
    /// Letters moved into the cluster's shared store.
    pub moved: AtomicU64,
    /// Attempts to move letters into the shared store that failed.
    pub move_failures: AtomicU64,
    /// Woken when a letter arrives (or the broker comes back): the cluster core moves letters
    /// into the shared store then.
    pub(crate) arrived: tokio::sync::Notify,
    /// Held while letters move into the shared store, and by whatever must not see a letter in
    /// both stores or in neither (a listing, a purge, a replay).
    pub(crate) moving: tokio::sync::Mutex<()>,
    /// The shared store's size as last read (count, bytes, dropped), for `/metrics` when the
    /// store does not answer at once.
    pub(crate) shared_seen: Mutex<Option<(usize, usize, u64)>>,
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
    /// The letters asked for, oldest first (in cluster mode over Redis: the shared store's,
    /// then this node's not moved yet).
    pub items: Vec<DeadLetter>,
    /// Why the cluster's shared store could not be read (only this node's letters are listed
    /// and counted then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_error: Option<ErrorBody>,
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
            moved: AtomicU64::new(0),
            move_failures: AtomicU64::new(0),
            arrived: tokio::sync::Notify::new(),
            moving: tokio::sync::Mutex::new(()),
            shared_seen: Mutex::new(None),
        }
    }

    /// `(max_entries, max_bytes)`.
    pub(crate) fn bounds(&self) -> (usize, usize) {
        (self.max_entries, self.max_bytes)
    }

    /// Up to `n` of the oldest letters and at most `bytes` of them (at least one), oldest
    /// first.
    pub(crate) fn oldest(&self, n: usize, bytes: usize) -> Vec<DeadLetter> {
        let st = self.lock();
        let mut out = Vec::new();
        let mut held = 0;
        for l in st.letters.iter().take(n) {
            if !out.is_empty() && held + l.size > bytes {
                break;
            }
            held += l.size;
            out.push(l.clone());
        }
        out
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
        drop(st);
        self.arrived.notify_one();
        Some(id)
    }

    /// Keep a letter that was already counted (a shared letter the broker could not take back
    /// after its replay failed).
    pub(crate) fn push_kept(&self, letter: DeadLetter) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.push(letter);
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
            shared_error: None,
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

/// The cluster's shared dead-letter store, seen from one node (cluster mode over Redis; see
/// the module docs).
pub trait SharedDeadLetters: Send + Sync {
    /// This node's name.
    fn node(&self) -> &str;

    /// Move this node's letters into the shared store, oldest first, until none is left or the
    /// broker fails. The caller holds `DeadLetters::moving`.
    fn move_local(&self) -> BrokerFuture<'_, ()>;

    /// Up to `limit` letters with ids above `after`, oldest first, with the store's totals
    /// (`count`, `bytes`, `dropped`).
    fn list(&self, after: u64, limit: usize) -> BrokerFuture<'_, DeadLetterPage>;

    /// Take letter `id` out of the store, atomically (`None`: another node took it, or it was
    /// purged).
    fn claim(&self, id: u64) -> BrokerFuture<'_, Option<DeadLetter>>;

    /// Put a claimed letter back under its id (its replay failed).
    fn restore(&self, letter: DeadLetter) -> BrokerFuture<'_, ()>;

    /// Remove the letters with these ids (all, with `None`); returns how many went.
    fn purge<'a>(&'a self, ids: Option<&'a [u64]>) -> BrokerFuture<'a, usize>;
}

/// List the shared letters (ids above `after`) and then, on the last page, this node's not
/// moved yet (ids above `local_after`), moving what can be moved first (unless a replay or a
/// move is in progress). The counts are over both stores.
pub(crate) async fn list_all(
    local: &DeadLetters,
    store: &dyn SharedDeadLetters,
    after: u64,
    local_after: u64,
    limit: usize,
) -> DeadLetterPage {
    // A move holds the lock briefly, a replay for its whole run: the listing waits a few
    // seconds at most, then lists without moving first.
    let moving = tokio::time::timeout(std::time::Duration::from_secs(5), local.moving.lock()).await;
    if moving.is_ok() {
        let _ = store.move_local().await;
    }
    let mine = local.list(local_after, limit);
    let mut page = match store.list(after, limit).await {
        Ok(p) => p,
        Err(e) => DeadLetterPage { count: 0, bytes: 0, dropped: 0, items: Vec::new(), shared_error: Some(e.body()) },
    };
    page.count += mine.count;
    page.bytes += mine.bytes;
    page.dropped += mine.dropped;
    let room = limit.saturating_sub(page.items.len());
    page.items.extend(mine.items.into_iter().take(room).map(|mut l| {
        l.node = Some(store.node().to_owned());
        l
    }));
    page
}

/// Remove shared letters (`ids`) and this node's (`local_ids`); neither given: all of both.
/// Returns how many went, and why the shared store could not be reached.
pub(crate) async fn purge_all(
    local: &DeadLetters,
    store: &dyn SharedDeadLetters,
    ids: Option<&[u64]>,
    local_ids: Option<&[u64]>,
) -> (usize, Option<ErrorBody>) {
    let _moving = local.moving.lock().await;
    let all = ids.is_none() && local_ids.is_none();
    let mut purged = 0;
    if all || local_ids.is_some() {
        purged += local.purge(local_ids);
    }
    let mut error = None;
    if all || ids.is_some() {
        match store.purge(ids).await {
            Ok(n) => purged += n,
            Err(e) => error = Some(e.body()),
        }
    }
    (purged, error)
}

/// Letters held over both stores (this node's only, when the shared one cannot be read).
pub(crate) async fn count_all(local: &DeadLetters, store: Option<&dyn SharedDeadLetters>) -> usize {
    let shared = match store {
        Some(s) => s.list(0, 0).await.map_or(0, |p| p.count),
        None => 0,
    };
    local.size().0 + shared
}

/// Publish the shared store's publish letters again, oldest first (those in `ids`, when
/// given): each is claimed before its publish, so a letter another node is replaying is passed
/// over; one whose publish fails goes back under its id with the new error (or, when the
/// broker cannot take it back, into this node's memory, to be moved again later); a 4xxx is
/// passed over, the first 5xxx stops the replay. Returns the letters replayed and why it
/// stopped.
pub(crate) async fn replay_shared<F, Fut>(
    store: &dyn SharedDeadLetters,
    local: &DeadLetters,
    ids: Option<&[u64]>,
    mut publish: F,
) -> (usize, Option<ErrorBody>)
where
    F: FnMut(DeadLetter) -> Fut,
    Fut: std::future::Future<Output = Result<(), ErrorBody>>,
{
    let (mut after, mut replayed) = (0, 0);
    loop {
        let page = match store.list(after, 100).await {
            Ok(p) => p,
            Err(e) => return (replayed, Some(e.body())),
        };
        let Some(last) = page.items.last() else { return (replayed, None) };
        after = last.id;
        let wanted =
            page.items.into_iter().filter(|l| l.kind == DeadKind::Publish && ids.is_none_or(|ids| ids.contains(&l.id)));
        for l in wanted {
            let mut l = match store.claim(l.id).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => return (replayed, Some(e.body())),
            };
            match publish(l.clone()).await {
                Ok(()) => {
                    replayed += 1;
                    local.replayed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    l.attempts += 1;
                    l.error = e.clone();
                    if let Err(why) = store.restore(l.clone()).await {
                        tracing::warn!(id = l.id, error = %why.message, "a dead letter could not go back to the shared store; kept on this node");
                        l.shared = false;
                        local.push_kept(l);
                    }
                    if e.code >= 5000 {
                        return (replayed, Some(e));
                    }
                }
            }
        }
    }
}

/// Prometheus lines of the shared store (cluster mode over Redis): what this node moved, its
/// failures, and the store's size when it could be read (`shared`).
pub(crate) fn render_shared(local: &DeadLetters, shared: Option<&DeadLetterPage>, out: &mut String) {
    // What the store said last, when it did not answer this time.
    let shared = {
        let mut seen = local.shared_seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = shared {
            *seen = Some((p.count, p.bytes, p.dropped));
        }
        *seen
    };
    let mut lines: Vec<(&str, &str, &str, u64)> = vec![
        (
            "weft_dead_letters_moved_total",
            "counter",
            "Dead letters this node moved into the cluster's shared store.",
            local.moved.load(Ordering::Relaxed),
        ),
        (
            "weft_dead_letters_move_failures_total",
            "counter",
            "Attempts of this node to move dead letters into the shared store that failed.",
            local.move_failures.load(Ordering::Relaxed),
        ),
    ];
    if let Some((count, bytes, dropped)) = shared {
        lines.push((
            "weft_dead_letters_shared",
            "gauge",
            "Dead letters in the cluster's shared store (the same on every node).",
            count as u64,
        ));
        lines.push((
            "weft_dead_letter_shared_bytes",
            "gauge",
            "Bytes of the dead letters in the cluster's shared store.",
            bytes as u64,
        ));
        lines.push((
            "weft_dead_letters_shared_dropped_total",
            "counter",
            "Dead letters the shared store dropped to stay within its bounds (cluster-wide).",
            dropped,
        ));
    }
    for (name, kind, help, v) in lines {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
}

/// Why a shared-store request cannot be made: this broker keeps none.
pub(crate) fn no_shared_store() -> BrokerError {
    BrokerError::failed("this broker keeps no shared dead-letter store")
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

    /// A letter keeps every field through the shared store's JSON (its id is the store's).
    #[test]
    fn letters_round_trip_through_the_shared_store_form() {
        let mut l = DeadLetter::publish(
            "t",
            json!({"a": [1, 2]}),
            Some("e-1".into()),
            Priority::High,
            ErrorBody::new(ErrorCode::Unavailable, "down"),
        );
        l.id = 7;
        l.node = Some("web-1".into());
        l.attempts = 3;
        let back = DeadLetter::from_stored(42, &l.to_stored()).unwrap();
        assert_eq!((back.id, back.shared, back.size), (42, true, l.size));
        let (mut a, mut b) = (serde_json::to_value(&l).unwrap(), serde_json::to_value(&back).unwrap());
        for v in [&mut a, &mut b] {
            v.as_object_mut().unwrap().retain(|k, _| k != "id" && k != "shared");
        }
        assert_eq!(a, b);
        let s = DeadLetter::snapshot("s", "ann", ErrorBody::new(ErrorCode::SnapshotFailed, "no"));
        let back = DeadLetter::from_stored(1, &s.to_stored()).unwrap();
        assert_eq!((back.kind, back.user.as_deref(), back.payload), (DeadKind::Snapshot, Some("ann"), None));
        assert!(DeadLetter::from_stored(1, "{}").is_none());
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
