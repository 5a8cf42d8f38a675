//! The NATS backend, over JetStream. One stream holds every topic's history (subject
//! `{prefix}.h.{topic}`, capped per subject by count and by age, and over all topics by
//! bytes). JetStream numbers messages across the whole stream, so a topic's consecutive offsets
//! come from an optimistic check: a message carries the offsets after the topic's last one and
//! `Nats-Expected-Last-Subject-Sequence` (the stream sequence of that last message), and the
//! server refuses it when another publish got there first; the node then reads the new last
//! message and tries again. The publishes that queue for a topic while one is stored go
//! together as the next message (a batch of events with consecutive offsets). Stored events are republished by the stream to
//! `{prefix}.e.{topic}`, which the nodes with subscribers listen to (interest-routed by NATS).
//! Presence lives in a second stream, one subject per member and one per node heartbeat.
//! `docs/CLUSTER.md` has the subjects, the guarantees and the costs.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{
    Backend, ClusterSettings, Health, Heartbeat, Inbound, Outgoing, PAGE, QueueBudget, Reply, new_epoch,
    parse_time_field, time_field,
};
use crate::broker::{BrokerError, BrokerFuture};
use crate::metrics::Metrics;
use crate::topic::Pattern;
use crate::wire::{Event, Member, Position, now_ms};

/// Attempts at one publish while other nodes keep getting there first.
const PUBLISH_TRIES: usize = 32;
/// Most bytes of events stored as one message (a topic's history is read whole: at most
/// `history_size + 1` such messages).
const BATCH_BYTES: usize = 64 * 1024;
/// Most events stored as one message.
const BATCH_EVENTS: usize = 256;
/// Topics whose last position this node remembers between publishes.
const LAST_CACHE: usize = 10_000;
/// JetStream's error code for a failed `Nats-Expected-Last-Subject-Sequence` check.
const WRONG_LAST_SEQUENCE: u64 = 10071;

const H_EPOCH: &str = "Weft-Epoch";
const H_OFFSET: &str = "Weft-Offset";
const H_COUNT: &str = "Weft-Count";
const H_PRESENCE: &str = "Weft-Presence";
const H_EXPECT: &str = "Nats-Expected-Last-Subject-Sequence";
/// Written over a dead node's heartbeat by the node that sweeps it.
const SWEEP_MARK: &str = "swept by ";

type PublishReply = tokio::sync::oneshot::Sender<Result<Position, BrokerError>>;

/// A topic's last stored event as this node last saw it.
#[derive(Debug, Clone)]
struct Last {
    seq: u64,
    epoch: String,
    offset: u64,
}

/// One topic's publishes, sent one after the other (each needs the sequence of the one before).
#[derive(Default)]
struct TopicQueue {
    queue: VecDeque<(Outgoing, PublishReply)>,
    running: bool,
    last: Option<Last>,
}

#[derive(Default)]
struct Publishes {
    topics: HashMap<String, TopicQueue>,
    budget: QueueBudget,
}

struct Link {
    client: async_nats::Client,
    history: stream::Stream,
    presence: stream::Stream,
}

struct Inner {
    settings: ClusterSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    link: Mutex<Option<Arc<Link>>>,
    /// Listen target (topic, or pattern key) → the task reading its subscription.
    listening: Mutex<HashMap<(String, bool), JoinHandle<()>>>,
    inbound: Mutex<Option<Weak<dyn Inbound>>>,
    publishes: Mutex<Publishes>,
    /// Sequence of this node's last heartbeat (0: none yet).
    beat_seq: Mutex<u64>,
    /// Nodes the last heartbeat round found dead, with the sequence of their stale heartbeat.
    dead: Mutex<HashMap<String, u64>>,
    node_hex: String,
}

/// The wire to NATS with JetStream (see [`NatsBroker`](super::NatsBroker)).
pub struct NatsBackend {
    inner: Arc<Inner>,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let digit = |b: u8| (b as char).to_digit(16);
    let bytes: Option<Vec<u8>> = s
        .as_bytes()
        .chunks(2)
        .map(|p| match p {
            [h, l] => Some((digit(*h)? * 16 + digit(*l)?) as u8),
            _ => None,
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// The events one stored or republished message carries: `Weft-Count` events from
/// `Weft-Offset` on, each record `time\nid\nlength\n` + the payload's JSON (an epoch marker
/// has offset 0 and none).
fn events_of(topic: &Arc<str>, h: &HeaderMap, body: &[u8]) -> Option<Vec<Arc<Event>>> {
    let first: u64 = header(h, H_OFFSET)?.parse().ok()?;
    let count: u64 = header(h, H_COUNT)?.parse().ok()?;
    let epoch: Arc<str> = header(h, H_EPOCH)?.into();
    let mut out = Vec::with_capacity(count.min(BATCH_EVENTS as u64) as usize);
    let mut rest = body;
    for k in 0..count {
        let mut line = || -> Option<&[u8]> {
            let at = rest.iter().position(|&b| b == b'\n')?;
            let (l, r) = rest.split_at(at);
            rest = &r[1..];
            Some(l)
        };
        let (time, priority) = parse_time_field(std::str::from_utf8(line()?).ok()?)?;
        let id = std::str::from_utf8(line()?).ok()?;
        let len: usize = std::str::from_utf8(line()?).ok()?.parse().ok()?;
        if rest.len() < len {
            return None;
        }
        let (payload, r) = rest.split_at(len);
        rest = r;
        let payload = std::str::from_utf8(payload).ok()?;
        let id = (!id.is_empty()).then(|| Box::from(id));
        let ev =
            Event::from_cluster(Arc::clone(topic), first + k, Arc::clone(&epoch), id, time, priority, payload).ok()?;
        out.push(Arc::new(ev));
    }
    Some(out)
}

/// The records of [`events_of`] for `batch`.
fn encode_batch(batch: &[(Outgoing, PublishReply)]) -> Bytes {
    let mut b = Vec::with_capacity(batch.iter().map(|(o, _)| o.payload.len() + 40).sum());
    for (o, _) in batch {
        let time = time_field(o.time, o.priority);
        b.extend_from_slice(format!("{time}\n{}\n{}\n", o.id.as_deref().unwrap_or(""), o.payload.len()).as_bytes());
        b.extend_from_slice(o.payload.as_bytes());
    }
    Bytes::from(b)
}

/// `(seq, epoch, last offset)` of a stored message (markers included).
fn last_of_message(seq: u64, h: &HeaderMap) -> Option<Last> {
    let first: u64 = header(h, H_OFFSET)?.parse().ok()?;
    let count: u64 = header(h, H_COUNT)?.parse().ok()?;
    Some(Last { seq, epoch: header(h, H_EPOCH)?.to_owned(), offset: (first + count).saturating_sub(1) })
}

/// A JetStream API reply to a publish: `{"seq": N}` or `{"error": {"err_code": C, ...}}`.
#[derive(serde::Deserialize)]
struct PubAck {
    seq: Option<u64>,
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

enum Sent {
    Stored(u64),
    /// Another publish changed the subject first.
    Raced,
}

impl NatsBackend {
    pub(super) fn new(settings: &ClusterSettings, health: Arc<Health>, metrics: Arc<Metrics>) -> Result<Self, String> {
        if settings.prefix.is_empty()
            || !settings.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "broker prefix {:?}: with NATS it must be letters, digits, '-' and '_' (it names streams)",
                settings.prefix
            ));
        }
        if settings.ca_file.is_some() && !settings.url.starts_with("tls://") {
            return Err("a broker CA file is for tls:// (TLS) NATS URLs".into());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                node_hex: hex(&settings.node),
                settings: settings.clone(),
                metrics,
                health,
                link: Mutex::new(None),
                listening: Mutex::new(HashMap::new()),
                inbound: Mutex::new(None),
                publishes: Mutex::new(Publishes::default()),
                beat_seq: Mutex::new(0),
                dead: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    fn subject(&self, kind: &str, rest: &str) -> String {
        format!("{}.{kind}.{rest}", self.settings.prefix)
    }

    fn member_subject(&self, node_hex: &str, session: &str, topic: &str) -> String {
        self.subject("pm", &format!("{node_hex}.{}.{topic}", hex(session)))
    }

    fn link(&self) -> Result<Arc<Link>, BrokerError> {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| self.health.unavailable())
    }

    /// The link while the broker counts as up.
    fn link_up(&self) -> Result<Arc<Link>, BrokerError> {
        if !self.health.is_up() {
            return Err(self.health.unavailable());
        }
        self.link()
    }

    /// Map a NATS failure: a timeout or a lost connection marks the broker down (error 5003);
    /// anything else is error 5000.
    fn failed(&self, what: &str, e: impl std::fmt::Display, link_lost: bool) -> BrokerError {
        if link_lost {
            self.health.down(&format!("NATS: {what}: {e}"));
            self.health.unavailable()
        } else {
            BrokerError::failed(format!("NATS: {what}: {e}"))
        }
    }

    /// A JetStream API request with headers, answered within the command timeout.
    async fn request(&self, subject: String, headers: HeaderMap, payload: Bytes) -> Result<Bytes, BrokerError> {
        let link = self.link()?;
        let req = link.client.request_with_headers(subject, headers, payload);
        match tokio::time::timeout(self.settings.command_timeout, req).await {
            Ok(Ok(msg)) => Ok(msg.payload),
            Ok(Err(e)) => {
                use async_nats::RequestErrorKind as K;
                let lost = matches!(e.kind(), K::TimedOut | K::Other);
                if e.kind() == K::NoResponders {
                    return Err(BrokerError::failed("NATS: no JetStream answered (is it enabled with -js?)"));
                }
                Err(self.failed("request", e, lost))
            }
            Err(_) => Err(self.failed("request", "timed out", true)),
        }
    }

    /// Store one message on `subject` when the subject's last sequence is `expect` (`None`:
    /// whatever it is).
    async fn store(
        &self,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
        expect: Option<u64>,
    ) -> Result<Sent, BrokerError> {
        if let Some(seq) = expect {
            headers.insert(H_EXPECT, seq.to_string().as_str());
        }
        let reply = self.request(subject, headers, payload).await?;
        let ack: PubAck = serde_json::from_slice(&reply)
            .map_err(|e| BrokerError::failed(format!("NATS: unreadable publish acknowledgement: {e}")))?;
        match (ack.seq, ack.error) {
            (_, Some(err)) if err.err_code == WRONG_LAST_SEQUENCE => Ok(Sent::Raced),
            (_, Some(err)) => Err(BrokerError::failed(format!("NATS refused the publish: {}", err.description))),
            (Some(seq), None) => Ok(Sent::Stored(seq)),
            (None, None) => Err(BrokerError::failed("NATS: a publish acknowledgement without a sequence")),
        }
    }

    /// The topic's last stored message (`None`: the topic has none).
    async fn last(&self, topic: &str) -> Result<Option<Last>, BrokerError> {
        let link = self.link()?;
        let subject = self.subject("h", topic);
        let get = link.history.get_last_raw_message_by_subject(&subject);
        match tokio::time::timeout(self.settings.command_timeout, get).await {
            Ok(Ok(m)) => Ok(last_of_message(m.sequence, &m.headers)),
            Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(e)) => Err(self.failed("reading a topic's position", e, true)),
            Err(_) => Err(self.failed("reading a topic's position", "timed out", true)),
        }
    }

    /// Store a batch of a topic's events as one message: offsets from the one after the
    /// topic's last, checked by JetStream against the subject's last sequence; retried when
    /// another publish got there first. Returns the epoch and the first offset.
    async fn publish_batch(
        &self,
        topic: &str,
        batch: &[(Outgoing, PublishReply)],
        cache: &mut Option<Last>,
    ) -> Result<(String, u64), BrokerError> {
        let body = encode_batch(batch);
        for _ in 0..PUBLISH_TRIES {
            let last = match cache.take() {
                Some(l) => Some(l),
                None => self.last(topic).await?,
            };
            let (expect, epoch, first) = match &last {
                Some(l) => (l.seq, l.epoch.clone(), l.offset + 1),
                None => (0, new_epoch(), 1),
            };
            let mut h = HeaderMap::new();
            h.insert(H_EPOCH, epoch.as_str());
            h.insert(H_OFFSET, first.to_string().as_str());
            h.insert(H_COUNT, batch.len().to_string().as_str());
            match self.store(self.subject("h", topic), h, body.clone(), Some(expect)).await? {
                Sent::Stored(seq) => {
                    *cache = Some(Last { seq, epoch: epoch.clone(), offset: first + batch.len() as u64 - 1 });
                    return Ok((epoch, first));
                }
                Sent::Raced => continue,
            }
        }
        Err(BrokerError::unavailable("too many concurrent publishes on this topic; retry later"))
    }

    /// Publish the topic's queued events, what queued meanwhile as one message each round, then
    /// stop.
    async fn drain(self: Arc<Self>, topic: String) {
        loop {
            let (batch, mut cache) = {
                let mut p = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
                let p = &mut *p;
                let Some(q) = p.topics.get_mut(&topic) else { return };
                if q.queue.is_empty() {
                    q.running = false;
                    if p.topics.len() > LAST_CACHE {
                        p.topics.remove(&topic);
                    }
                    return;
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some((out, _)) = q.queue.front() {
                    let size = out.payload.len() + out.id.as_ref().map_or(0, |i| i.len()) + 32;
                    if !batch.is_empty() && (bytes + size > BATCH_BYTES || batch.len() >= BATCH_EVENTS) {
                        break;
                    }
                    bytes += size;
                    batch.extend(q.queue.pop_front());
                }

                (batch, q.last.take())
            };
            let r = if self.health.is_up() {
                self.publish_batch(&topic, &batch, &mut cache).await
            } else {
                Err(self.health.unavailable())
            };
            if let Some(q) = self.publishes.lock().unwrap_or_else(|e| e.into_inner()).topics.get_mut(&topic) {
                q.last = cache;
            }
            // Their room is given back once they are answered: what is on its way to NATS
            // counts too.
            let held: usize = batch.iter().map(|(o, _)| o.size()).sum();
            let n = batch.len();
            for (k, (_, reply)) in batch.into_iter().enumerate() {
                let _ = reply.send(match &r {
                    Ok((epoch, first)) => Ok(Position { offset: first + k as u64, epoch: epoch.clone() }),
                    Err(e) => Err(e.clone()),
                });
            }
            self.publishes.lock().unwrap_or_else(|e| e.into_inner()).budget.give_sized(n, held, &self.metrics);
        }
    }

    /// Read messages of `filter` from `stream` through a short-lived consumer: up to `max`
    /// after skipping none, oldest first; also returns how many matched when it started.
    async fn read(
        &self,
        stream: &stream::Stream,
        filter: String,
        deliver: consumer::DeliverPolicy,
        max: usize,
    ) -> Result<(u64, Vec<jetstream::Message>), BrokerError> {
        let timeout = self.settings.command_timeout;
        let config = consumer::pull::Config {
            filter_subject: filter,
            deliver_policy: deliver,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            ..Default::default()
        };
        let c = tokio::time::timeout(timeout, stream.create_consumer(config))
            .await
            .map_err(|_| self.failed("creating a reader", "timed out", true))?
            .map_err(|e| self.failed("creating a reader", e, false))?;
        let total = c.cached_info().num_pending;
        let want = (total as usize).min(max);
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            let n = (want - out.len()).min(256);
            let batch = tokio::time::timeout(timeout, c.fetch().max_messages(n).messages())
                .await
                .map_err(|_| self.failed("reading", "timed out", true))?
                .map_err(|e| self.failed("reading", e, false))?;
            let got: Vec<_> = tokio::time::timeout(timeout, batch.take(n).collect::<Vec<_>>())
                .await
                .map_err(|_| self.failed("reading", "timed out", true))?;
            let before = out.len();
            for m in got {
                out.push(m.map_err(|e| self.failed("reading", e, false))?);
            }
            if out.len() == before {
                break;
            }
        }
        let name = c.cached_info().name.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        Ok((total, out))
    }

    /// Every retained event of a topic, oldest first, without those older than the history
    /// TTL (they count as gone).
    async fn history(&self, topic: &Arc<str>) -> Result<Vec<Arc<Event>>, BrokerError> {
        if self.settings.history_size == 0 {
            return Ok(Vec::new());
        }
        let link = self.link_up()?;
        let (_, msgs) = self
            .read(&link.history, self.subject("h", topic), consumer::DeliverPolicy::All, self.settings.history_size + 1)
            .await?;
        let oldest = now_ms().saturating_sub(self.settings.history_ttl.as_millis() as u64);
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let Some(h) = &m.headers else { continue };
            for ev in events_of(topic, h, &m.payload).unwrap_or_default() {
                if ev.time >= oldest {
                    out.push(ev);
                } else {
                    out.clear();
                }
            }
        }
        // The stream keeps one message more per topic than the history (room for the epoch
        // marker); once the marker is gone, that one is over the history size.
        let over = out.len().saturating_sub(self.settings.history_size);
        out.drain(..over);
        Ok(out)
    }

    /// Sequence of the last message on a subject of `stream` (`None`: there is none).
    async fn last_seq(&self, stream: &stream::Stream, subject: &str) -> Result<Option<u64>, BrokerError> {
        match tokio::time::timeout(self.settings.command_timeout, stream.get_last_raw_message_by_subject(subject)).await
        {
            Ok(Ok(m)) => Ok(Some(m.sequence)),
            Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(e)) => Err(self.failed("reading a heartbeat", e, true)),
            Err(_) => Err(self.failed("reading a heartbeat", "timed out", true)),
        }
    }

    /// Announce a join or leave to the nodes listening to the topic.
    async fn announce(&self, topic: &str, what: &str, member_json: Bytes) -> Result<(), BrokerError> {
        let link = self.link()?;
        let mut h = HeaderMap::new();
        h.insert(H_PRESENCE, what);
        link.client
            .publish_with_headers(self.subject("e", topic), h, member_json)
            .await
            .map_err(|e| self.failed("announcing presence", e, true))
    }

    /// Purge one subject of the presence stream; whether it held a message.
    async fn purge(&self, subject: &str) -> Result<bool, BrokerError> {
        let link = self.link()?;
        let purge = link.presence.purge().filter(subject);
        match tokio::time::timeout(self.settings.command_timeout, purge).await {
            Ok(Ok(r)) => Ok(r.purged > 0),
            Ok(Err(e)) => Err(self.failed("removing a member", e, false)),
            Err(_) => Err(self.failed("removing a member", "timed out", true)),
        }
    }

    /// Remove the member on `subject`, announcing its leave when it was there.
    async fn remove_member(&self, subject: &str, topic: &str) -> Result<bool, BrokerError> {
        let link = self.link()?;
        let member = match tokio::time::timeout(
            self.settings.command_timeout,
            link.presence.get_last_raw_message_by_subject(subject),
        )
        .await
        {
            Ok(Ok(m)) => m.payload,
            Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(false),
            Ok(Err(e)) => return Err(self.failed("reading a member", e, true)),
            Err(_) => return Err(self.failed("reading a member", "timed out", true)),
        };
        if self.purge(subject).await? {
            self.announce(topic, "leave", member).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The members of a node: `(subject, topic, session)`.
    async fn members_of(&self, node_hex: &str) -> Result<Vec<(String, String, String)>, BrokerError> {
        let link = self.link()?;
        let filter = self.subject("pm", &format!("{node_hex}.>"));
        let (_, msgs) = self.read(&link.presence, filter, consumer::DeliverPolicy::All, usize::MAX).await?;
        let head = self.subject("pm", &format!("{node_hex}."));
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let rest = m.subject.strip_prefix(&head)?;
                let (session, topic) = rest.split_once('.')?;
                Some((m.subject.to_string(), topic.to_owned(), unhex(session)?))
            })
            .collect())
    }

    /// Connect (first time) or wait for the client's own reconnection (later).
    async fn open(self: &Arc<Self>, inbound: Weak<dyn Inbound>) -> Result<(), BrokerError> {
        *self.inbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(inbound);
        let existing = self.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(link) = existing {
            // The client reconnects and resubscribes by itself; the node resyncs once it has.
            // The streams are made again in case the server lost them (a new, empty server).
            if link.client.connection_state() != async_nats::connection::State::Connected {
                return Err(BrokerError::unavailable("the NATS connection is not back yet"));
            }
            let js = jetstream::new(link.client.clone());
            let history = self.ensure_stream(&js, self.history_config()).await?;
            let presence = self.ensure_stream(&js, self.presence_config()).await?;
            let client = link.client.clone();
            *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Link { client, history, presence }));
            // The server may have lost its store: cached positions could name sequences that
            // now belong to other messages.
            for q in self.publishes.lock().unwrap_or_else(|e| e.into_inner()).topics.values_mut() {
                q.last = None;
            }
            return Ok(());
        }
        let timeout = self.settings.command_timeout;
        let weak = Arc::downgrade(self);
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .subscription_capacity(subscription_capacity(&self.settings))
            .name(format!("weft {}", self.settings.node))
            .event_callback(move |ev| {
                let weak = weak.clone();
                async move {
                    let Some(me) = weak.upgrade() else { return };
                    match ev {
                        async_nats::Event::Disconnected => me.health.down("the NATS connection closed"),
                        async_nats::Event::SlowConsumer(_) => {
                            // The client dropped messages of a full subscription: refilled
                            // from history.
                            me.metrics.cluster_pubsub_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
        if let Some(ca) = &self.settings.ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        let url = self.settings.url.replacen("tls://", "nats://", 1);
        let client = tokio::time::timeout(timeout * 2, opts.connect(url.as_str()))
            .await
            .map_err(|_| BrokerError::unavailable("connecting timed out"))?
            .map_err(|e| BrokerError::unavailable(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let history = self.ensure_stream(&js, self.history_config()).await?;
        let presence = self.ensure_stream(&js, self.presence_config()).await?;
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Link { client, history, presence }));
        Ok(())
    }

    fn history_config(&self) -> stream::Config {
        let p = &self.settings.prefix;
        stream::Config {
            name: format!("{p}-history"),
            subjects: vec![format!("{p}.h.>")],
            max_messages_per_subject: (self.settings.history_size as i64 + 1).max(1),
            max_age: self.settings.meta_ttl(),
            max_bytes: self.settings.history_bytes.min(i64::MAX as u64) as i64,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: format!("{p}.h.>"),
                destination: format!("{p}.e.>"),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    fn presence_config(&self) -> stream::Config {
        let p = &self.settings.prefix;
        stream::Config {
            name: format!("{p}-presence"),
            subjects: vec![format!("{p}.pm.>"), format!("{p}.hb.>")],
            max_messages_per_subject: 1,
            max_bytes: 256 << 20,
            // A join that does not fit fails (and is retried at the next resync) rather than
            // pushing out other members.
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::Memory,
            ..Default::default()
        }
    }

    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        config: stream::Config,
    ) -> Result<stream::Stream, BrokerError> {
        let name = config.name.clone();
        let (max_bytes, storage) = (config.max_bytes, config.storage);
        let r = tokio::time::timeout(self.settings.command_timeout, js.get_or_create_stream(config)).await;
        match r {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                let e = e.to_string();
                // JetStream reserves each stream's max_bytes up front (error 10047 when the
                // server's max_file_store / max_memory_store cannot hold it).
                let hint = if e.contains("10047") {
                    format!(
                        "JetStream cannot reserve the stream's {max_bytes} bytes of {storage:?} storage: \
                         raise the server's max_file_store / max_memory_store"
                    )
                } else {
                    "is JetStream enabled?".to_owned()
                };
                Err(BrokerError::unavailable(format!("JetStream stream {name}: {e} ({hint})")))
            }
            Err(_) => {
                Err(BrokerError::unavailable(format!("JetStream stream {name}: timed out (is JetStream enabled?)")))
            }
        }
    }
}

/// Messages each subscription may buffer: async-nats counts them per subscription, so the
/// node's `inbound_bytes` is spread as messages of NATS's largest size (1 MiB by default),
/// within [64, `pubsub_buffer`].
fn subscription_capacity(settings: &ClusterSettings) -> usize {
    (settings.inbound_bytes >> 20).clamp(64, settings.pubsub_buffer.max(64))
}

/// Read one subscription (a topic's or a pattern's) into the node.
async fn read_subscription(inner: Weak<Inner>, mut sub: async_nats::Subscriber, pattern_key: Option<String>) {
    while let Some(msg) = sub.next().await {
        let Some(me) = inner.upgrade() else { return };
        let Some(node) = me.inbound.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(Weak::upgrade) else {
            return;
        };
        let head = format!("{}.e.", me.settings.prefix);
        let Some(topic) = msg.subject.strip_prefix(&head) else { continue };
        let Some(h) = &msg.headers else { continue };
        if let Some(what) = header(h, H_PRESENCE) {
            if pattern_key.is_none() {
                if let Ok(member) = serde_json::from_slice::<Member>(&msg.payload) {
                    node.presence(topic, what == "join", member);
                }
            }
            continue;
        }
        let t: Arc<str> = topic.into();
        let Some(events) = events_of(&t, h, &msg.payload) else {
            tracing::warn!(topic, "unreadable event from NATS");
            continue;
        };
        for ev in events {
            match &pattern_key {
                None => node.event(topic, ev),
                Some(key) => node.pattern_event(key, ev),
            }
        }
    }
}

impl Backend for NatsBackend {
    const NAME: &'static str = "nats";
    const TITLE: &'static str = "NATS";

    fn open(&self, inbound: Weak<dyn Inbound>) -> Reply<'_, ()> {
        Box::pin(self.inner.open(inbound))
    }

    fn ping(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let Ok(link) = self.inner.link() else { return false };
            if link.client.connection_state() != async_nats::connection::State::Connected {
                return false;
            }
            matches!(tokio::time::timeout(self.inner.settings.command_timeout, link.client.flush()).await, Ok(Ok(())))
        })
    }

    fn publish(&self, out: Outgoing) -> BrokerFuture<'static, Position> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut p = self.inner.publishes.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = p.budget.take(&out, &self.inner.settings, &self.inner.metrics) {
                return Box::pin(std::future::ready(Err(e)));
            }
            let topic = out.topic.clone();
            let q = p.topics.entry(topic.clone()).or_default();
            q.queue.push_back((out, tx));
            let start = !q.running;
            q.running = true;
            start.then_some(topic)
        };
        if let Some(topic) = start {
            tokio::spawn(Arc::clone(&self.inner).drain(topic));
        }
        Box::pin(async move {
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(BrokerError::unavailable("the broker stopped")),
            }
        })
    }

    fn position<'a>(&'a self, topic: &'a str) -> Reply<'a, (u64, String)> {
        Box::pin(async move {
            let me = &self.inner;
            for _ in 0..PUBLISH_TRIES {
                if let Some(l) = me.last(topic).await? {
                    return Ok((l.offset, l.epoch));
                }
                // A topic without messages gets its epoch now (an offset-0 marker), so a
                // subscriber holds a position it can resume from.
                let epoch = new_epoch();
                let mut h = HeaderMap::new();
                h.insert(H_EPOCH, epoch.as_str());
                h.insert(H_OFFSET, "0");
                h.insert(H_COUNT, "0");
                if let Sent::Stored(_) = me.store(me.subject("h", topic), h, Bytes::new(), Some(0)).await? {
                    return Ok((0, epoch));
                }
            }
            Err(BrokerError::unavailable("could not read the topic's position; retry later"))
        })
    }

    fn range<'a>(&'a self, topic: &'a Arc<str>, from: u64) -> Reply<'a, Vec<Arc<Event>>> {
        Box::pin(async move {
            let mut events = self.inner.history(topic).await?;
            events.retain(|e| e.offset >= from);
            events.truncate(PAGE);
            Ok(events)
        })
    }

    fn recent<'a>(&'a self, topic: &'a Arc<str>, n: usize) -> Reply<'a, Vec<Arc<Event>>> {
        Box::pin(async move {
            let mut events = self.inner.history(topic).await?;
            let skip = events.len().saturating_sub(n.min(PAGE));
            events.drain(..skip);
            Ok(events)
        })
    }

    fn tops<'a>(&'a self, topics: &'a [Arc<str>]) -> Reply<'a, Vec<Option<(String, u64)>>> {
        Box::pin(async move {
            let me = &self.inner;
            me.link_up()?;
            let mut out = Vec::with_capacity(topics.len());
            for chunk in topics.chunks(32) {
                for r in futures_util::future::join_all(chunk.iter().map(|t| me.last(t))).await {
                    out.push(r?.map(|l| (l.epoch, l.offset)));
                }
            }
            Ok(out)
        })
    }

    fn pattern_key(&self, p: &Pattern) -> String {
        p.as_str().to_owned()
    }

    fn key_matches(&self, key: &str, topic: &str) -> bool {
        Pattern::parse(key).is_ok_and(|p| p.matches(topic))
    }

    fn listen<'a>(&'a self, target: &'a str, pattern: bool) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            let k = (target.to_owned(), pattern);
            if me.listening.lock().unwrap_or_else(|e| e.into_inner()).get(&k).is_some_and(|t| !t.is_finished()) {
                // Still subscribed: the client resubscribes by itself after a reconnection.
                return Ok(());
            }
            let link = me.link()?;
            let sub =
                link.client.subscribe(me.subject("e", target)).await.map_err(|e| me.failed("subscribing", e, true))?;
            // The subscription is registered once the server has seen it.
            tokio::time::timeout(me.settings.command_timeout, link.client.flush())
                .await
                .map_err(|_| me.failed("subscribing", "timed out", true))?
                .map_err(|e| me.failed("subscribing", e, true))?;
            let task = tokio::spawn(read_subscription(Arc::downgrade(me), sub, pattern.then(|| target.to_owned())));
            if let Some(old) = me.listening.lock().unwrap_or_else(|e| e.into_inner()).insert(k, task) {
                old.abort();
            }
            Ok(())
        })
    }

    fn unlisten<'a>(&'a self, target: &'a str, pattern: bool) -> Reply<'a, ()> {
        Box::pin(async move {
            // Dropping the subscription (with its task) unsubscribes.
            if let Some(task) =
                self.inner.listening.lock().unwrap_or_else(|e| e.into_inner()).remove(&(target.to_owned(), pattern))
            {
                task.abort();
            }
            Ok(())
        })
    }

    fn join<'a>(&'a self, topic: &'a str, member: &'a Member) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            let json = Bytes::from(serde_json::to_vec(member).map_err(|e| BrokerError::failed(e.to_string()))?);
            let subject = me.member_subject(&me.node_hex, &member.session, topic);
            // New only if the subject holds nothing: a member already there is not announced.
            if let Sent::Stored(_) = me.store(subject, HeaderMap::new(), json.clone(), Some(0)).await? {
                me.announce(topic, "join", json).await?;
            }
            Ok(())
        })
    }

    fn leave<'a>(&'a self, topic: &'a str, session: &'a str) -> Reply<'a, ()> {
        Box::pin(async move {
            let me = &self.inner;
            me.remove_member(&me.member_subject(&me.node_hex, session, topic), topic).await.map(|_| ())
        })
    }

    fn members<'a>(&'a self, topic: &'a str, limit: usize) -> Reply<'a, (usize, Vec<Member>)> {
        Box::pin(async move {
            let me = &self.inner;
            let link = me.link_up()?;
            let filter = me.subject("pm", &format!("*.*.{topic}"));
            let (count, msgs) = me.read(&link.presence, filter, consumer::DeliverPolicy::All, limit).await?;
            let members = msgs.iter().filter_map(|m| serde_json::from_slice::<Member>(&m.payload).ok()).collect();
            Ok((count as usize, members))
        })
    }

    fn own_members(&self) -> Reply<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let me = &self.inner;
            Ok(me.members_of(&me.node_hex).await?.into_iter().map(|(_, t, s)| (t, s)).collect())
        })
    }

    fn heartbeat(&self) -> Reply<'_, Heartbeat> {
        Box::pin(async move {
            let me = &self.inner;
            let subject = me.subject("hb", &me.node_hex);
            let now = Bytes::from(now_ms().to_string());
            let mut beat = Heartbeat::default();
            let prev = *me.beat_seq.lock().unwrap_or_else(|e| e.into_inner());
            // The previous heartbeat must still be the last: otherwise another node marked this
            // one swept (or purged it) and may have removed its members.
            let expect = (prev > 0).then_some(prev);
            let seq = match me.store(subject.clone(), HeaderMap::new(), now.clone(), expect).await? {
                Sent::Stored(seq) => seq,
                Sent::Raced => {
                    beat.lapsed = true;
                    match me.store(subject, HeaderMap::new(), now, None).await? {
                        Sent::Stored(seq) => seq,
                        Sent::Raced => return Err(BrokerError::failed("NATS: the heartbeat was refused")),
                    }
                }
            };
            *me.beat_seq.lock().unwrap_or_else(|e| e.into_inner()) = seq;
            let link = me.link()?;
            let (_, msgs) =
                me.read(&link.presence, me.subject("hb", "*"), consumer::DeliverPolicy::All, usize::MAX).await?;
            // Ages by the NATS server's clock (each message's store time against that of this
            // node's own heartbeat just stored), so node clocks need not agree.
            let stamp = |m: &jetstream::Message| m.info().ok().map(|i| i.published.unix_timestamp_nanos() / 1_000_000);
            let reference = msgs.iter().find(|m| m.info().is_ok_and(|i| i.stream_sequence == seq)).and_then(stamp);
            let reference = reference.unwrap_or(now_ms() as i128);
            let ttl = me.settings.node_ttl.as_millis() as i128;
            let head = me.subject("hb", "");
            let mut dead = HashMap::new();
            for m in &msgs {
                let Some(name) = m.subject.strip_prefix(&head).and_then(unhex) else { continue };
                let Some(at) = stamp(m) else { continue };
                let Ok(info) = m.info() else { continue };
                let fresh = reference - at < ttl;
                let swept_mark = m.payload.starts_with(SWEEP_MARK.as_bytes());
                match (fresh, swept_mark) {
                    (true, false) => beat.alive += 1,
                    // Being swept by a node that marked it within the TTL.
                    (true, true) => {}
                    // Dead, or a sweep that never finished: sweepable.
                    (false, _) => {
                        dead.insert(name.clone(), info.stream_sequence);
                        beat.dead.push(name);
                    }
                }
            }
            *me.dead.lock().unwrap_or_else(|e| e.into_inner()) = dead;
            Ok(beat)
        })
    }

    fn sweep<'a>(&'a self, node: &'a str) -> Reply<'a, Option<u64>> {
        Box::pin(async move {
            let me = &self.inner;
            let Some(seen) = me.dead.lock().unwrap_or_else(|e| e.into_inner()).get(node).copied() else {
                return Ok(None);
            };
            let node_hex = hex(node);
            let hb = me.subject("hb", &node_hex);
            // Claim the sweep with a mark stored only if the heartbeat seen stale is still the
            // last: a node that came back (or another sweeper) got there first otherwise. The
            // mark also tells the node, should it come back, that its members may be gone.
            let mark = Bytes::from(format!("{SWEEP_MARK}{}", me.settings.node));
            let claim = match me.store(hb.clone(), HeaderMap::new(), mark, Some(seen)).await? {
                Sent::Stored(seq) => seq,
                Sent::Raced => return Ok(None),
            };
            let mut n = 0;
            for (subject, topic, _) in me.members_of(&node_hex).await? {
                // The node came back meanwhile (its heartbeat replaced the mark): it registers
                // its members again itself; stop.
                if me.last_seq(&link_presence(me)?, &hb).await? != Some(claim) {
                    return Ok(Some(n));
                }
                if me.remove_member(&subject, &topic).await? {
                    n += 1;
                }
            }
            // Done: the mark goes, unless the node came back.
            if me.last_seq(&link_presence(me)?, &hb).await? == Some(claim) {
                me.purge(&hb).await?;
            }
            Ok(Some(n))
        })
    }
}

fn link_presence(me: &Inner) -> Result<stream::Stream, BrokerError> {
    Ok(me.link()?.presence.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Priority;

    #[test]
    fn names_survive_hex() {
        for s in ["node-1", "a.b c", "żółw", ""] {
            assert_eq!(unhex(&hex(s)).as_deref(), Some(s));
        }
        assert_eq!(unhex("6"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("żó"), None, "foreign subjects are refused, not a panic");
    }

    #[test]
    fn batches_round_trip() {
        let t: Arc<str> = "chat.a".into();
        let out = |time: u64, id: Option<&str>, payload: &str| {
            let (tx, _) = tokio::sync::oneshot::channel();
            let priority = if time == 3 { Priority::Critical } else { Priority::Normal };
            (Outgoing { topic: "chat.a".into(), time, id: id.map(Into::into), payload: payload.into(), priority }, tx)
        };
        let batch = vec![out(1, None, r#"{"x":1}"#), out(2, Some("my-id"), "\"a\\nb\""), out(3, None, "[]")];
        let body = encode_batch(&batch);
        let mut h = HeaderMap::new();
        h.insert(H_EPOCH, "ab12");
        h.insert(H_OFFSET, "7");
        h.insert(H_COUNT, "3");
        let evs = events_of(&t, &h, &body).unwrap();
        let got: Vec<_> = evs.iter().map(|e| (e.offset, e.time, e.payload.clone())).collect();
        assert_eq!(
            got,
            [(7, 1, serde_json::json!({"x": 1})), (8, 2, serde_json::json!("a\nb")), (9, 3, serde_json::json!([]))]
        );
        assert_eq!(&*evs[0].epoch, "ab12");
        assert_eq!(evs[1].wire_id(), "my-id");
        assert_eq!(
            evs.iter().map(|e| e.priority).collect::<Vec<_>>(),
            [Priority::Normal, Priority::Normal, Priority::Critical]
        );
        assert_eq!(last_of_message(40, &h).map(|l| (l.seq, l.offset)), Some((40, 9)));
        // A marker: an epoch, no events, offset 0.
        h.insert(H_OFFSET, "0");
        h.insert(H_COUNT, "0");
        assert_eq!(events_of(&t, &h, b"").map(|v| v.len()), Some(0));
        assert_eq!(last_of_message(41, &h).map(|l| l.offset), Some(0));
        // Truncated or malformed bodies are refused, not half-read.
        h.insert(H_OFFSET, "7");
        h.insert(H_COUNT, "3");
        assert!(events_of(&t, &h, &body[..body.len() - 1]).is_none());
        h.insert(H_COUNT, "x");
        assert!(events_of(&t, &h, &body).is_none());
    }
}
