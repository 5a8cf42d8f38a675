//! A connection's bounded outbound queue and the slow-consumer policies.
//!
//! Publishers push without ever waiting; the connection's task drains everything queued into
//! one batch of frames and one flush. When the queue is full the topic's
//! [`SlowConsumerPolicy`] decides what happens, and every drop is counted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use weft::proto::EncodedMessage;

use crate::metrics::Metrics;
use crate::wire::{Event, Notice, Priority};

/// What to do when an event finds a subscriber's queue full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1008 `slow consumer` (the default).
    #[default]
    Disconnect,
    /// Discard the oldest queued event; the client is told with `lagged`.
    DropOldest,
    /// Keep only the newest queued event per topic (always, not only when full).
    Latest,
    /// When full, discard the queued event of the lowest priority (the oldest of those), or
    /// the new one when it is lower still; `high` and `critical` events are never discarded:
    /// with only those queued, the connection closes as a slow consumer. The client is told
    /// with `lagged`.
    DropLowest,
}

impl std::str::FromStr for SlowConsumerPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disconnect" => Ok(Self::Disconnect),
            "drop-oldest" => Ok(Self::DropOldest),
            "latest" => Ok(Self::Latest),
            "drop-lowest" => Ok(Self::DropLowest),
            _ => Err(format!("unknown slow-consumer policy {s:?} (disconnect, drop-oldest, latest, drop-lowest)")),
        }
    }
}

/// One queued item.
#[derive(Debug)]
pub(crate) enum Out {
    /// An event, and whether it is live (`false`: replayed from history, so its age is not a
    /// delivery latency).
    Event(Arc<Event>, SlowConsumerPolicy, bool),
    Notice(Arc<Notice>),
    /// (Boxed, like the other replies: an entry is 16 bytes instead of 112, which every
    /// connection's queue holds room for and every event moves.)
    Reply(Box<EncodedMessage>),
    /// The `secured` reply: written in clear, and everything after it sealed.
    Secured(Box<EncodedMessage>),
    /// A snapshot: like a reply, but no later event may be moved ahead of it (the `latest`
    /// policy's conflation stops here), as its state would then overwrite a newer event's.
    Fence(Box<EncodedMessage>),
    /// A reply whose content is not known yet; draining stops here until it is filled.
    Slot(u64),
}

/// Why the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    SlowConsumer,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Out>,
    /// Entries queued at each `drop-lowest` level (see [`level`]), lowest first: the policy
    /// finds the lowest level present without scanning the queue.
    levels: [u32; 5],
    dropped: u64,
    closing: Option<Closing>,
    next_slot: u64,
}

/// The levels, lowest first.
const LEVELS: [Priority; 5] =
    [Priority::Background, Priority::Low, Priority::Normal, Priority::High, Priority::Critical];

/// The `drop-lowest` level an entry counts at: an event's priority; a join/leave notice as
/// normal; none for a reset notice (never dropped), replies and slots.
fn level(o: &Out) -> Option<Priority> {
    match o {
        Out::Event(e, ..) => Some(e.priority),
        Out::Notice(n) if !n.is_reset() => Some(Priority::Normal),
        _ => None,
    }
}

fn rank(p: Priority) -> usize {
    LEVELS.iter().position(|l| *l == p).expect("every priority is a level")
}

impl State {
    /// Count `o` in (`add`) or out of the levels.
    fn count(levels: &mut [u32; 5], o: &Out, add: bool) {
        if let Some(p) = level(o) {
            let c = &mut levels[rank(p)];
            *c = if add { *c + 1 } else { *c - 1 };
        }
    }

    fn push_back(&mut self, o: Out) {
        Self::count(&mut self.levels, &o, true);
        self.queue.push_back(o);
    }

    fn remove(&mut self, i: usize) {
        if let Some(o) = self.queue.remove(i) {
            Self::count(&mut self.levels, &o, false);
        }
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.levels = [0; 5];
    }
}

/// The bounded outbound queue of one connection.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Signal,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// How an outbox tells its session that something arrived.
#[derive(Debug)]
enum Signal {
    /// A session task waits in [`Outbox::notified`].
    Notify(Notify),
    /// A session on the event-driven core: its connection's waker.
    Waker(std::task::Waker),
}

impl Signal {
    fn notify_one(&self) {
        match self {
            Signal::Notify(n) => n.notify_one(),
            Signal::Waker(w) => w.wake_by_ref(),
        }
    }
}

impl Outbox {
    pub(crate) fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self::with_signal(capacity, metrics, Signal::Notify(Notify::new()))
    }

    /// An outbox that wakes `waker` (a connection of the event-driven core) when something
    /// arrives.
    pub(crate) fn waking(capacity: usize, metrics: Arc<Metrics>, waker: std::task::Waker) -> Self {
        Self::with_signal(capacity, metrics, Signal::Waker(waker))
    }

    fn with_signal(capacity: usize, metrics: Arc<Metrics>, notify: Signal) -> Self {
        Self { state: Mutex::new(State::default()), notify, capacity: capacity.max(1), metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close as a slow consumer: what is queued goes, the session is woken to close 1008.
    fn close_slow(&self, mut st: std::sync::MutexGuard<'_, State>) {
        st.closing = Some(Closing::SlowConsumer);
        st.clear();
        self.metrics.slow_consumer_disconnects.fetch_add(1, Ordering::Relaxed);
        drop(st);
        self.notify.notify_one();
    }

    /// Queue a live event. Never waits.
    pub(crate) fn push_event(&self, ev: &Arc<Event>, policy: SlowConsumerPolicy) {
        self.push(ev, policy, true);
    }

    /// Queue an event replayed from history (a resume or recent history). Never waits; a full
    /// queue closes the connection as a slow consumer.
    pub(crate) fn push_replay(&self, ev: &Arc<Event>) {
        self.push(ev, SlowConsumerPolicy::Disconnect, false);
    }

    fn push(&self, ev: &Arc<Event>, policy: SlowConsumerPolicy, live: bool) {
        let mut st = self.lock();
        if st.closing.is_some() {
            return;
        }
        if policy == SlowConsumerPolicy::Latest {
            let State { queue, levels, .. } = &mut *st;
            // Only events after the last barrier: a newer event must not move ahead of the
            // `secured` reply (it would go out in clear), a snapshot (whose older state would
            // overwrite it) or a place kept for one.
            let same = queue
                .iter_mut()
                .rev()
                .take_while(|o| !matches!(o, Out::Secured(_) | Out::Fence(_) | Out::Slot(_)))
                .find_map(|o| match o {
                    Out::Event(e, SlowConsumerPolicy::Latest, _) if e.topic == ev.topic => Some(e),
                    _ => None,
                });
            if let Some(slot) = same {
                levels[rank(slot.priority)] -= 1;
                levels[rank(ev.priority)] += 1;
                *slot = Arc::clone(ev);
                st.dropped += 1;
                self.metrics.dropped_events.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if st.queue.len() >= self.capacity {
            match policy {
                SlowConsumerPolicy::Disconnect => return self.close_slow(st),
                SlowConsumerPolicy::DropOldest | SlowConsumerPolicy::Latest => {
                    match st.queue.iter().position(|o| matches!(o, Out::Event(..) | Out::Notice(_))) {
                        Some(i) => {
                            st.remove(i);
                            st.dropped += 1;
                            self.metrics.dropped_events.fetch_add(1, Ordering::Relaxed);
                        }
                        // Only replies queued: the client is not reading its own answers.
                        None => return self.close_slow(st),
                    }
                }
                SlowConsumerPolicy::DropLowest => {
                    // The lowest priority queued (counted per level, so no scan to find it),
                    // the oldest of those (a join/leave notice counts as normal; a reset is
                    // never a candidate).
                    let lowest = st.levels.iter().position(|c| *c > 0).map(|r| LEVELS[r]);
                    match lowest {
                        Some(p) if p.droppable() && p <= ev.priority => {
                            let i = st.queue.iter().position(|o| level(o) == Some(p)).expect("counted, so queued");
                            st.remove(i);
                        }
                        // The new event is the lowest: it goes.
                        _ if ev.priority.droppable() => {
                            st.dropped += 1;
                            self.metrics.dropped_events.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        // Nothing that may be dropped: high-priority events never are.
                        _ => return self.close_slow(st),
                    }
                    st.dropped += 1;
                    self.metrics.dropped_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let was_empty = st.queue.is_empty();
        st.push_back(Out::Event(Arc::clone(ev), policy, live));
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Queue a join/leave notice (dropped, and counted, when the queue is full). A `reset`
    /// is never dropped: with the queue full, the connection closes as a slow consumer.
    pub(crate) fn push_notice(&self, n: &Arc<Notice>) {
        let mut st = self.lock();
        if st.closing.is_some() {
            return;
        }
        if st.queue.len() >= self.capacity && n.is_reset() {
            return self.close_slow(st);
        }
        if st.queue.len() >= self.capacity {
            st.dropped += 1;
            self.metrics.dropped_events.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = st.queue.is_empty();
        st.push_back(Out::Notice(Arc::clone(n)));
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Queue a reply to this connection's own request (never dropped; a client that does not
    /// read its own replies is a slow consumer).
    pub(crate) fn push_reply(&self, m: EncodedMessage) {
        let mut st = self.lock();
        if st.closing.is_some() {
            return;
        }
        if st.queue.len() >= self.capacity.saturating_mul(2) {
            st.closing = Some(Closing::SlowConsumer);
            st.clear();
            self.metrics.slow_consumer_disconnects.fetch_add(1, Ordering::Relaxed);
        } else {
            st.queue.push_back(Out::Reply(Box::new(m)));
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Queue the `secured` reply, the last message in clear (a reply: never dropped).
    pub(crate) fn push_secured(&self, m: EncodedMessage) {
        let mut st = self.lock();
        if st.closing.is_none() {
            st.queue.push_back(Out::Secured(Box::new(m)));
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Reserve the place of a reply that is filled later with [`fill`](Self::fill): everything
    /// queued after it waits until then.
    pub(crate) fn reserve(&self) -> u64 {
        let mut st = self.lock();
        st.next_slot += 1;
        let id = st.next_slot;
        st.queue.push_back(Out::Slot(id));
        id
    }

    /// Fill a reserved place.
    pub(crate) fn fill(&self, slot: u64, m: EncodedMessage) {
        let mut st = self.lock();
        if let Some(o) = st.queue.iter_mut().find(|o| matches!(o, Out::Slot(s) if *s == slot)) {
            *o = Out::Reply(Box::new(m));
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Fill a reserved place with a snapshot followed by replayed events (more than the queue holds:
    /// the connection closes as a slow consumer, as a replay would).
    pub(crate) fn fill_with_replay(&self, slot: u64, m: EncodedMessage, events: &[Arc<Event>]) {
        let mut st = self.lock();
        let Some(i) = st.queue.iter().position(|o| matches!(o, Out::Slot(s) if *s == slot)) else { return };
        if st.queue.len() + events.len() > self.capacity {
            return self.close_slow(st);
        }
        st.queue[i] = Out::Fence(Box::new(m));
        for (k, e) in events.iter().enumerate() {
            let o = Out::Event(Arc::clone(e), SlowConsumerPolicy::Disconnect, false);
            State::count(&mut st.levels, &o, true);
            st.queue.insert(i + 1 + k, o);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Give up a reserved place: nothing is sent there.
    pub(crate) fn cancel(&self, slot: u64) {
        let mut st = self.lock();
        if let Some(i) = st.queue.iter().position(|o| matches!(o, Out::Slot(s) if *s == slot)) {
            st.queue.remove(i);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Move everything ready into `batch`. Returns the number of events dropped since the last
    /// call and whether the connection must close.
    pub(crate) fn drain(&self, batch: &mut Vec<Out>) -> (u64, Option<Closing>) {
        let mut st = self.lock();
        if let Some(c) = st.closing {
            return (0, Some(c));
        }
        let ready = st.queue.iter().position(|o| matches!(o, Out::Slot(_))).unwrap_or(st.queue.len());
        let State { queue, levels, .. } = &mut *st;
        batch.extend(queue.drain(..ready).inspect(|o| State::count(levels, o, false)));
        if st.queue.is_empty() && st.queue.capacity() > 64 {
            st.queue.shrink_to(0);
        }
        (std::mem::take(&mut st.dropped), None)
    }

    /// Free the queue's room if nothing is queued (it is kept while events flow, so that a
    /// busy connection does not allocate for each).
    pub(crate) fn release_idle(&self) {
        let mut st = self.lock();
        if st.queue.is_empty() {
            st.queue = VecDeque::new();
        }
    }

    /// Mark closed (no more pushes are accepted).
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.clear();
        st.queue.shrink_to(0);
        if st.closing.is_none() {
            st.closing = Some(Closing::SlowConsumer);
        }
    }

    /// Until something arrives (for an outbox made by [`new`](Self::new); one that wakes a
    /// waker never completes this).
    pub(crate) async fn notified(&self) {
        match &self.notify {
            Signal::Notify(n) => n.notified().await,
            Signal::Waker(_) => std::future::pending().await,
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Format;
    use serde_json::json;

    /// Every connection's queue holds room for a few entries, and every event moves one.
    #[test]
    fn an_entry_is_small() {
        assert!(std::mem::size_of::<Out>() <= 16, "{} bytes", std::mem::size_of::<Out>());
    }

    fn ev(topic: &str, off: u64) -> Arc<Event> {
        Arc::new(Event::new(topic.into(), off, "e".into(), None, json!(off)))
    }

    fn offsets(b: &[Out]) -> Vec<(String, u64)> {
        b.iter()
            .filter_map(|o| match o {
                Out::Event(e, ..) => Some((e.topic.to_string(), e.offset)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn disconnect_policy_closes_when_full() {
        let m = Arc::new(Metrics::default());
        let o = Outbox::new(2, Arc::clone(&m));
        for i in 1..=3 {
            o.push_event(&ev("t", i), SlowConsumerPolicy::Disconnect);
        }
        let mut b = Vec::new();
        assert_eq!(o.drain(&mut b), (0, Some(Closing::SlowConsumer)));
        assert_eq!(m.slow_consumer_disconnects.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn drop_oldest_keeps_newest_and_counts() {
        let m = Arc::new(Metrics::default());
        let o = Outbox::new(2, Arc::clone(&m));
        for i in 1..=5 {
            o.push_event(&ev("t", i), SlowConsumerPolicy::DropOldest);
        }
        let mut b = Vec::new();
        assert_eq!(o.drain(&mut b), (3, None));
        assert_eq!(offsets(&b), vec![("t".into(), 4), ("t".into(), 5)]);
        assert_eq!(m.dropped_events.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn latest_conflates_per_topic() {
        let m = Arc::new(Metrics::default());
        let o = Outbox::new(8, Arc::clone(&m));
        o.push_event(&ev("a", 1), SlowConsumerPolicy::Latest);
        o.push_event(&ev("b", 1), SlowConsumerPolicy::Latest);
        o.push_event(&ev("a", 2), SlowConsumerPolicy::Latest);
        o.push_event(&ev("a", 3), SlowConsumerPolicy::Latest);
        let mut b = Vec::new();
        assert_eq!(o.drain(&mut b), (2, None));
        assert_eq!(offsets(&b), vec![("a".into(), 3), ("b".into(), 1)]);
    }

    /// `drop-lowest` against a model that scans the queue (as it did before the per-level
    /// counts): the same events kept, in the same order, over random pushes and drains; and the
    /// counts always match the queue.
    #[test]
    fn drop_lowest_matches_a_scanning_model_and_counts_stay_exact() {
        let m = Arc::new(Metrics::default());
        let o = Outbox::new(8, Arc::clone(&m));
        let mut model: std::collections::VecDeque<(Priority, u64)> = Default::default();
        let levels = [Priority::Background, Priority::Low, Priority::Normal];
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        for off in 1..=2000u64 {
            if next() % 5 == 0 {
                let mut b = Vec::new();
                o.drain(&mut b);
                let got: Vec<u64> =
                    b.iter().filter_map(|x| if let Out::Event(e, ..) = x { Some(e.offset) } else { None }).collect();
                let want: Vec<u64> = model.drain(..).map(|(_, o)| o).collect();
                assert_eq!(got, want);
            }
            let p = levels[(next() % 3) as usize];
            let mut e = Event::new("t".into(), off, "e".into(), None, json!(off));
            e.priority = p;
            o.push_event(&Arc::new(e), SlowConsumerPolicy::DropLowest);
            if model.len() >= 8 {
                let (i, lp) = model.iter().enumerate().map(|(i, (q, _))| (*q, i)).min().map(|(q, i)| (i, q)).unwrap();
                if lp <= p {
                    model.remove(i);
                    model.push_back((p, off));
                }
            } else {
                model.push_back((p, off));
            }
            let st = o.lock();
            let mut counts = [0u32; 5];
            for x in &st.queue {
                if let Some(p) = level(x) {
                    counts[rank(p)] += 1;
                }
            }
            assert_eq!(st.levels, counts);
        }
    }

    #[test]
    fn slots_hold_back_what_follows() {
        let m = Arc::new(Metrics::default());
        let o = Outbox::new(8, m);
        o.push_event(&ev("a", 1), SlowConsumerPolicy::Disconnect);
        let s = o.reserve();
        o.push_event(&ev("a", 2), SlowConsumerPolicy::Disconnect);
        let mut b = Vec::new();
        o.drain(&mut b);
        assert_eq!(offsets(&b), vec![("a".into(), 1)]);
        o.fill(s, Format::Json.encode_shared(&json!({"type": "x"})));
        b.clear();
        o.drain(&mut b);
        assert!(matches!(b[0], Out::Reply(_)));
        assert_eq!(offsets(&b), vec![("a".into(), 2)]);
    }

    /// `latest` conflation never moves a newer event ahead of a barrier: the `secured` reply
    /// (the event would go out in clear), a snapshot or the place kept for one (its older
    /// state would overwrite the event). Behind the barrier it conflates as before.
    #[test]
    fn latest_conflation_stops_at_secured_snapshots_and_slots() {
        let m = Arc::new(Metrics::default());
        let reply = || Format::Json.encode_shared(&json!({"type": "x"}));
        let kinds = |b: &[Out]| -> Vec<String> {
            b.iter()
                .map(|o| match o {
                    Out::Event(e, ..) => format!("{}", e.offset),
                    Out::Secured(_) => "secured".into(),
                    Out::Fence(_) => "snapshot".into(),
                    Out::Reply(_) => "reply".into(),
                    Out::Notice(_) => "notice".into(),
                    Out::Slot(_) => "slot".into(),
                })
                .collect()
        };
        for barrier in ["secured", "slot", "snapshot"] {
            let o = Outbox::new(16, Arc::clone(&m));
            o.push_event(&ev("t", 1), SlowConsumerPolicy::Latest);
            let slot = match barrier {
                "secured" => {
                    o.push_secured(reply());
                    None
                }
                _ => Some(o.reserve()),
            };
            o.push_event(&ev("t", 2), SlowConsumerPolicy::Latest);
            o.push_event(&ev("t", 3), SlowConsumerPolicy::Latest);
            if let Some(s) = slot {
                if barrier == "snapshot" {
                    o.fill_with_replay(s, reply(), &[]);
                } else {
                    o.fill(s, reply());
                }
            }
            o.push_event(&ev("t", 4), SlowConsumerPolicy::Latest);
            let mut b = Vec::new();
            o.drain(&mut b);
            let want = match barrier {
                "secured" => vec!["1", "secured", "4"],
                "slot" => vec!["1", "reply", "4"],
                _ => vec!["1", "snapshot", "4"],
            };
            assert_eq!(kinds(&b), want, "{barrier}");
        }
    }
}
