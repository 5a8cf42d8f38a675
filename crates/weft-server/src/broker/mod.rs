//! The broker: where topics live. It assigns offsets, keeps history and presence, and fans
//! events out to subscribers.
//!
//! [`MemoryBroker`] is the single-node default. The trait is shaped for a Redis broker
//! (cluster mode): `publish` may cross the network before it knows the position, so methods
//! return futures; delivery to this node's connections always goes through their
//! [`Outbox`](crate::outbox) queues, so a cluster broker keeps a local subscription table
//! (the memory broker's) and feeds it from Redis pub/sub.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::outbox::Outbox;
use crate::topic::Pattern;
use crate::wire::{ErrorBody, ErrorCode, Member, Position};

mod memory;

pub use memory::{MemoryBroker, TopicSettings};

/// A boxed future returned by [`Broker`] methods.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// The broker refused or failed a request: a limit (a clear client error) or a failure (for
/// example, lost its connection to Redis).
#[derive(Debug, Clone)]
pub struct BrokerError {
    /// The protocol error code the client gets.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl BrokerError {
    /// The broker failed (error 5000).
    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::Internal, message: message.into() }
    }

    /// The server holds `max` topics already (error 4008).
    pub fn too_many_topics(max: usize) -> Self {
        Self { code: ErrorCode::TooManyTopics, message: format!("the server holds its limit of {max} topics") }
    }

    /// The error as the client sees it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BrokerError {}

/// One connection as the broker sees it.
#[derive(Debug)]
pub struct Subscriber {
    pub(crate) id: u64,
    pub(crate) member: Member,
    pub(crate) outbox: Arc<Outbox>,
}

impl Subscriber {
    /// The session id.
    pub fn session(&self) -> &str {
        &self.member.session
    }
}

/// Where a subscription to an exact topic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    /// With the next event published.
    Live,
    /// Right after this position: the missed events are replayed, or it is not recoverable.
    Resume(&'a Position),
    /// With up to this many of the most recent events kept in history, then live.
    Recent(usize),
}

/// The result of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// Current position (exact topics only).
    pub position: Option<Position>,
    /// `Some(n)` when `n` events were queued right after the reply (missed since the resume
    /// position, or the most recent ones); `None` when starting live or not recoverable.
    pub replayed: Option<usize>,
}

/// Where topics live: offsets, history, presence, fan-out.
pub trait Broker: Send + Sync + 'static {
    /// Publish `payload` on the concrete `topic`: assign the next offset, keep it in history,
    /// and queue it to every subscriber (exact and pattern) — in offset order per topic.
    /// Never waits for subscribers.
    fn publish<'a>(&'a self, topic: &'a str, payload: Value, id: Option<String>) -> BrokerFuture<'a, Position>;

    /// Subscribe `sub` to `target` (a topic or pattern), starting as `start` says (exact
    /// topics; patterns always start live). Events to replay (missed since a resume position, or
    /// the most recent ones) are queued to the subscriber right away, atomically with respect
    /// to publishes on the topic, so the subscriber sees no gap and no duplicate. An exact
    /// subscription makes the connection a presence member; `presence` asks for join/leave
    /// notices.
    fn subscribe<'a>(
        &'a self,
        sub: &'a Arc<Subscriber>,
        target: &'a Pattern,
        start: Start<'a>,
        presence: bool,
    ) -> BrokerFuture<'a, SubscribeOutcome>;

    /// Remove one subscription. Returns whether it existed.
    fn unsubscribe<'a>(&'a self, sub: &'a Arc<Subscriber>, target: &'a Pattern) -> BrokerFuture<'a, bool>;

    /// Member count and up to `limit` members of a topic.
    fn presence<'a>(&'a self, topic: &'a str, limit: usize) -> BrokerFuture<'a, (usize, Vec<Member>)>;

    /// Drop every subscription of a closed connection (no reply is needed).
    fn remove_all(&self, sub: &Arc<Subscriber>, targets: &[Pattern]);

    /// Number of topics with state.
    fn topic_count(&self) -> usize;

    /// Periodic upkeep: trim history by age, forget topics nobody uses.
    fn maintain(&self, now: Instant);
}
