//! The engine's wire protocol (`docs/PROTOCOL.md`): message types, both encodings, error codes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft::Message;
use weft::proto::EncodedMessage;
use weft::proto::deflate::SharedDeflater;

/// Protocol version spoken by this server.
pub const PROTOCOL_VERSION: u32 = 1;
/// Subprotocol for JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "weft.v1.json";
/// Subprotocol for MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "weft.v1.msgpack";

/// Wire encoding of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON in text frames (`weft.v1.json`, and connections without a subprotocol).
    Json,
    /// MessagePack in binary frames (`weft.v1.msgpack`).
    Msgpack,
}

impl Format {
    /// The format selected by a negotiated subprotocol.
    pub fn from_subprotocol(p: Option<&str>) -> Self {
        match p {
            Some(SUBPROTOCOL_MSGPACK) => Format::Msgpack,
            _ => Format::Json,
        }
    }

    /// Encode a message as one frame of this format.
    pub fn encode<T: Serialize + ?Sized>(self, msg: &T) -> Message {
        match self {
            Format::Json => {
                Message::text(serde_json::to_string(msg).expect("server messages always serialise to JSON"))
            }
            Format::Msgpack => {
                Message::binary(rmp_serde::to_vec_named(msg).expect("server messages always serialise to msgpack"))
            }
        }
    }

    /// Encode once, as a frame that can be queued on many connections.
    pub fn encode_shared<T: Serialize + ?Sized>(self, msg: &T) -> EncodedMessage {
        EncodedMessage::new(&self.encode(msg), None).expect("data message")
    }

    /// A JSON text already encoded, as a shareable frame (compressed too when `deflate`).
    fn shared_text(self, json: &str, deflate: bool) -> EncodedMessage {
        let m = Message::text(json.to_owned());
        if !deflate {
            return EncodedMessage::new(&m, None).expect("data message");
        }
        thread_local! {
            static DEFLATER: std::cell::RefCell<SharedDeflater> = std::cell::RefCell::new(SharedDeflater::new(1, 64));
        }
        DEFLATER.with(|d| EncodedMessage::new(&m, Some(&mut d.borrow_mut()))).expect("data message")
    }

    /// Encode once, plain and compressed (permessage-deflate without context takeover, so the
    /// one compressed frame is valid on every connection that negotiated it). Messages below
    /// the compressor's threshold (64 bytes) stay plain.
    pub fn encode_shared_deflated<T: Serialize + ?Sized>(self, msg: &T) -> EncodedMessage {
        thread_local! {
            static DEFLATER: std::cell::RefCell<SharedDeflater> = std::cell::RefCell::new(SharedDeflater::new(1, 64));
        }
        let m = self.encode(msg);
        DEFLATER.with(|d| EncodedMessage::new(&m, Some(&mut d.borrow_mut()))).expect("data message")
    }
}

/// Stable error codes of the protocol (the table in `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Undecodable, not an object, or a field missing / of the wrong type.
    BadRequest = 4000,
    /// `type` unknown to this protocol version.
    UnknownType = 4001,
    /// A topic or pattern breaks the naming rules.
    InvalidTopic = 4002,
    /// The token does not allow it.
    Forbidden = 4003,
    /// `max_subscriptions` would be exceeded.
    TooManySubscriptions = 4004,
    /// Over the connection's rate limit.
    RateLimited = 4005,
    /// Unsubscribe from something not subscribed.
    NotSubscribed = 4006,
    /// A `send` message, but no application takes inbound messages on this server.
    NoHandler = 4007,
    /// The server holds `max_topics` topics, or the connection touched more than
    /// `topic_churn_limit` distinct topics within `topic_churn_window`.
    TooManyTopics = 4008,
    /// A `refresh` token was refused (bad, expired, or for another user).
    BadToken = 4009,
    /// A subscription filter is malformed, too large, or uses an unknown operator.
    BadFilter = 4010,
    /// The topic's snapshot could not be had (the provider failed, timed out or is busy); the
    /// subscription itself stands (in a `snapshot` message's `error`).
    SnapshotFailed = 4011,
    /// A `secure` request was refused (the server has the secure channel off, the key is not a
    /// P-256 point, the connection is already secured), or the server requires the secure
    /// channel and this request came before it.
    SecureFailed = 4012,
    /// The server failed (for example the broker).
    Internal = 5000,
    /// The cluster broker cannot be reached: nothing was done; retry later (HTTP 503).
    Unavailable = 5003,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// An error answer: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Numeric code from [`ErrorCode`].
    pub code: u16,
    /// What went wrong, for humans.
    pub message: String,
}

impl ErrorBody {
    /// Build from a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.code(), message: message.into() }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// A stream position: the offset of an event in its topic, and the epoch of the topic's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Offset of the latest event (0 when the topic has none).
    pub offset: u64,
    /// Names the history the offsets belong to.
    pub epoch: String,
}

/// A member of a topic's presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// User id (the token's `sub`).
    pub user: Arc<str>,
    /// Session id of the connection.
    pub session: Arc<str>,
    /// The token's `info` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Arc<Value>>,
}

/// One per-topic result in a `subscribed` reply.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeResult {
    /// The topic or pattern as requested.
    pub topic: String,
    /// Whether the subscription is in place.
    pub ok: bool,
    /// Current offset (exact topics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Current epoch (exact topics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// With `resume`: whether the missed events follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With `resume` and recovered: how many events are replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<usize>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl SubscribeResult {
    /// A failed result.
    pub fn failed(topic: &str, error: ErrorBody) -> Self {
        Self {
            topic: topic.to_owned(),
            ok: false,
            offset: None,
            epoch: None,
            recovered: None,
            replayed: None,
            error: Some(error),
        }
    }
}

/// Replies and notices a server sends to one connection.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Reply<'a> {
    Welcome {
        version: u32,
        session: &'a str,
        user: &'a str,
        time: u64,
        heartbeat: u64,
        /// `allow` or `require` when the server offers the secure channel.
        #[serde(skip_serializing_if = "Option::is_none")]
        secure: Option<&'static str>,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        results: &'a [SubscribeResult],
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        topics: &'a [String],
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        topic: &'a str,
        offset: u64,
        epoch: &'a str,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        topic: &'a str,
        count: usize,
        members: &'a [Member],
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        time: u64,
    },
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        exp: u64,
    },
    Lagged {
        dropped: u64,
    },
    /// A topic's state, asked for with `snapshot` in a subscribe: what the events up to and
    /// including `offset` add up to (`data` absent: the topic has none), or why it could not be
    /// had.
    Snapshot {
        topic: &'a str,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a ErrorBody>,
    },
    /// The answer to `secure`: the server's ephemeral key and, with an identity key, its
    /// signature of the handshake (both standard base64). Every message after it is sealed.
    Secured {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        mode: &'a str,
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<&'a str>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        code: u16,
        message: &'a str,
    },
}

/// A published event, shared by every subscriber, history and replay. Encoded at most once
/// per wire format.
#[derive(Debug)]
pub struct Event {
    /// Topic.
    pub topic: Arc<str>,
    /// Offset in the topic.
    pub offset: u64,
    /// Epoch of the topic's history.
    pub epoch: Arc<str>,
    /// Publisher-supplied id, if any (otherwise `epoch-offset`).
    pub id: Option<Box<str>>,
    /// Server time of publication, ms since the Unix epoch.
    pub time: u64,
    /// The payload.
    pub payload: Value,
    pub(crate) published_at: std::time::Instant,
    /// The whole JSON event as received from another node, reused as the JSON frame.
    raw_json: Option<Box<str>>,
    json: OnceLock<EncodedMessage>,
    msgpack: OnceLock<EncodedMessage>,
    /// The same, also compressed once for every subscriber with permessage-deflate.
    json_z: OnceLock<EncodedMessage>,
    msgpack_z: OnceLock<EncodedMessage>,
    /// Subscription filters' verdicts on this event, one per distinct filter.
    pub(crate) verdicts: crate::filter::Verdicts,
    /// What the `drop-lowest` slow-consumer policy drops first.
    pub priority: Priority,
}

/// How much an event matters when a connection's queue overflows under the `drop-lowest`
/// slow-consumer policy: lower priorities are dropped first, `high` and `critical` never (the
/// levels and their numbers are wse-server's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// 1: dropped first.
    Background = 1,
    /// 3.
    Low = 3,
    /// 5: the default.
    #[default]
    Normal = 5,
    /// 8: never dropped by `drop-lowest`.
    High = 8,
    /// 10: never dropped by `drop-lowest`.
    Critical = 10,
}

impl Priority {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Background => "background",
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Its number (1, 3, 5, 8, 10).
    pub fn level(self) -> u8 {
        self as u8
    }

    /// From a number of [`level`](Self::level).
    pub fn from_level(n: u64) -> Option<Priority> {
        Some(match n {
            1 => Priority::Background,
            3 => Priority::Low,
            5 => Priority::Normal,
            8 => Priority::High,
            10 => Priority::Critical,
            _ => return None,
        })
    }

    /// Whether `drop-lowest` may drop it.
    pub fn droppable(self) -> bool {
        self < Priority::High
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "background" => Priority::Background,
            "low" => Priority::Low,
            "normal" => Priority::Normal,
            "high" => Priority::High,
            "critical" => Priority::Critical,
            _ => {
                return Err(format!(
                    "unknown priority {s:?} (background, low, normal, high, critical, or 1, 3, 5, 8, 10)"
                ));
            }
        })
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            Value::Number(n) => n
                .as_u64()
                .and_then(Priority::from_level)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown priority {n} (1, 3, 5, 8 or 10)"))),
            other => Err(serde::de::Error::custom(format!("a priority is a name or a number, not {other}"))),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(Serialize)]
struct EventWire<'a> {
    r#type: &'static str,
    topic: &'a str,
    offset: u64,
    epoch: &'a str,
    id: &'a str,
    time: u64,
    #[serde(skip_serializing_if = "is_normal")]
    priority: Priority,
    payload: &'a Value,
}

fn is_normal(p: &Priority) -> bool {
    *p == Priority::Normal
}

impl Event {
    /// A new event (not yet encoded).
    pub fn new(topic: Arc<str>, offset: u64, epoch: Arc<str>, id: Option<Box<str>>, payload: Value) -> Self {
        Self {
            topic,
            offset,
            epoch,
            id,
            time: now_ms(),
            payload,
            published_at: std::time::Instant::now(),
            raw_json: None,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            json_z: OnceLock::new(),
            msgpack_z: OnceLock::new(),
            verdicts: OnceLock::new(),
            priority: Priority::Normal,
        }
    }

    /// Roughly the memory an event received from another node holds: its JSON text and the
    /// decoded payload (estimated at twice the text), for the byte budgets of the node's queues.
    pub fn size_estimate(&self) -> usize {
        3 * self.raw_json.as_ref().map_or(0, |r| r.len()) + 256
    }

    /// An event published on another node and carried here as `payload_json` (the payload's
    /// JSON text, as the publisher encoded it). The JSON frame is assembled around those bytes
    /// without re-encoding the payload; the payload is decoded once, for MessagePack
    /// subscribers and the [`payload`](Self::payload) field.
    pub fn from_cluster(
        topic: Arc<str>,
        offset: u64,
        epoch: Arc<str>,
        id: Option<Box<str>>,
        time: u64,
        priority: Priority,
        payload_json: &str,
    ) -> Result<Self, serde_json::Error> {
        let payload: Value = serde_json::from_str(payload_json)?;
        let mut ev = Self::new(topic, offset, epoch, id, payload);
        ev.time = time;
        ev.priority = priority;
        let wire_id = ev.wire_id();
        let mut raw = String::with_capacity(payload_json.len() + ev.topic.len() + wire_id.len() + 96);
        raw.push_str("{\"type\":\"event\",\"topic\":");
        raw.push_str(&serde_json::to_string(&*ev.topic)?);
        raw.push_str(",\"offset\":");
        raw.push_str(&offset.to_string());
        raw.push_str(",\"epoch\":");
        raw.push_str(&serde_json::to_string(&*ev.epoch)?);
        raw.push_str(",\"id\":");
        raw.push_str(&serde_json::to_string(&wire_id)?);
        raw.push_str(",\"time\":");
        raw.push_str(&time.to_string());
        if priority != Priority::Normal {
            raw.push_str(",\"priority\":\"");
            raw.push_str(priority.name());
            raw.push('"');
        }
        raw.push_str(",\"payload\":");
        raw.push_str(payload_json.trim());
        raw.push('}');
        ev.raw_json = Some(raw.into());
        Ok(ev)
    }

    /// The event's id as sent on the wire.
    pub fn wire_id(&self) -> String {
        match &self.id {
            Some(id) => id.to_string(),
            None => format!("{}-{}", self.epoch, self.offset),
        }
    }

    /// Bytes this event costs in history: its JSON frame (encoded now, once, and shared with
    /// every JSON subscriber) plus the bookkeeping around it.
    pub(crate) fn history_size(&self) -> usize {
        self.encoded(Format::Json).plain_frame().len() + std::mem::size_of::<Self>() + 16
    }

    /// The frame for `format`, encoded on first use.
    pub fn encoded(&self, format: Format) -> &EncodedMessage {
        self.encoded_for(format, false)
    }

    /// The frame for `format`, with its compressed form when `deflate` (for connections that
    /// negotiated permessage-deflate): encoded and compressed once, on first use.
    pub fn encoded_for(&self, format: Format, deflate: bool) -> &EncodedMessage {
        let cell = match (format, deflate) {
            (Format::Json, false) => &self.json,
            (Format::Msgpack, false) => &self.msgpack,
            (Format::Json, true) => &self.json_z,
            (Format::Msgpack, true) => &self.msgpack_z,
        };
        cell.get_or_init(|| {
            if let (Format::Json, Some(raw)) = (format, &self.raw_json) {
                return format.shared_text(raw, deflate);
            }
            let id = self.wire_id();
            let wire = EventWire {
                r#type: "event",
                topic: &self.topic,
                offset: self.offset,
                epoch: &self.epoch,
                id: &id,
                time: self.time,
                priority: self.priority,
                payload: &self.payload,
            };
            if deflate { format.encode_shared_deflated(&wire) } else { format.encode_shared(&wire) }
        })
    }
}

/// A notice shared by a topic's subscribers: presence (`join` / `leave`), or `reset` (the
/// topic's stream moved on without this node being able to deliver every event: history was
/// lost, or events fell out of it before they could be refilled).
#[derive(Debug)]
pub struct Notice {
    kind: &'static str,
    topic: Arc<str>,
    member: Member,
    reset: Option<Position>,
    json: OnceLock<EncodedMessage>,
    msgpack: OnceLock<EncodedMessage>,
}

#[derive(Serialize)]
struct ResetWire<'a> {
    r#type: &'static str,
    topic: &'a str,
    offset: u64,
    epoch: &'a str,
    recovered: bool,
}

#[derive(Serialize)]
struct NoticeWire<'a> {
    r#type: &'static str,
    topic: &'a str,
    member: &'a Member,
}

impl Notice {
    /// A `join` notice.
    pub fn join(topic: Arc<str>, member: Member) -> Self {
        Self { kind: "join", topic, member, reset: None, json: OnceLock::new(), msgpack: OnceLock::new() }
    }

    /// A `leave` notice.
    pub fn leave(topic: Arc<str>, member: Member) -> Self {
        Self { kind: "leave", topic, member, reset: None, json: OnceLock::new(), msgpack: OnceLock::new() }
    }

    /// A `reset` notice: the subscription continues from `position`; events before it that
    /// were not delivered cannot be (`recovered: false`).
    pub fn reset(topic: Arc<str>, position: Position) -> Self {
        let member = Member { user: "".into(), session: "".into(), info: None };
        Self { kind: "reset", topic, member, reset: Some(position), json: OnceLock::new(), msgpack: OnceLock::new() }
    }

    /// Whether this is a `reset` (which is never dropped: a full queue closes the connection).
    pub fn is_reset(&self) -> bool {
        self.reset.is_some()
    }

    /// The frame for `format`, encoded on first use.
    pub fn encoded(&self, format: Format) -> &EncodedMessage {
        let cell = match format {
            Format::Json => &self.json,
            Format::Msgpack => &self.msgpack,
        };
        cell.get_or_init(|| match &self.reset {
            Some(p) => format.encode_shared(&ResetWire {
                r#type: self.kind,
                topic: &self.topic,
                offset: p.offset,
                epoch: &p.epoch,
                recovered: false,
            }),
            None => format.encode_shared(&NoticeWire { r#type: self.kind, topic: &self.topic, member: &self.member }),
        })
    }
}

/// A decoded client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Subscribe to topics or patterns.
    Subscribe {
        /// Request id.
        id: Option<Value>,
        /// Topics or patterns.
        topics: Vec<String>,
        /// Resume positions per exact topic.
        resume: HashMap<String, Position>,
        /// Whether to receive join/leave.
        presence: bool,
        /// Start exact topics without a resume position with up to this many recent events
        /// (0: live only).
        history: usize,
        /// A filter over the events of every topic and pattern of this request.
        filter: Option<Value>,
        /// Send each exact topic's state (a `snapshot` message) before its live events, unless
        /// a resume recovers what was missed.
        snapshot: bool,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// Request id.
        id: Option<Value>,
        /// Topics or patterns, as subscribed.
        topics: Vec<String>,
    },
    /// Publish on a topic.
    Publish {
        /// Request id.
        id: Option<Value>,
        /// Concrete topic.
        topic: String,
        /// Payload.
        payload: Value,
        /// What the `drop-lowest` slow-consumer policy drops first (default normal).
        priority: Priority,
    },
    /// Presence query.
    Presence {
        /// Request id.
        id: Option<Value>,
        /// Concrete topic.
        topic: String,
    },
    /// A newer token for this session (see docs/PROTOCOL.md, "Token expiry and refresh").
    Refresh {
        /// Request id.
        id: Option<Value>,
        /// The JWT.
        token: String,
    },
    /// Application-level ping.
    Ping {
        /// Request id.
        id: Option<Value>,
    },
    /// A message for the server's application (see [`crate::Engine::inbound`]).
    Send {
        /// Request id.
        id: Option<Value>,
        /// Any value.
        payload: Value,
    },
    /// Start the secure channel (see [`crate::secure`]).
    Secure {
        /// Request id.
        id: Option<Value>,
        /// Encrypt or sign.
        mode: crate::secure::Mode,
        /// The client's ephemeral public key (decoded from base64).
        key: Vec<u8>,
    },
}

/// A request that could not be decoded: the error and the request id, if one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The id to echo.
    pub id: Option<Value>,
    /// Code and message.
    pub error: ErrorBody,
}

#[derive(Deserialize)]
struct SubscribeBody {
    topics: Vec<String>,
    #[serde(default)]
    resume: HashMap<String, Position>,
    #[serde(default)]
    presence: bool,
    #[serde(default)]
    history: usize,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    snapshot: bool,
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    topics: Vec<String>,
}

#[derive(Deserialize)]
struct PublishBody {
    topic: String,
    payload: Value,
    #[serde(default)]
    priority: Priority,
}

#[derive(Deserialize)]
struct SendBody {
    payload: Value,
}

#[derive(Deserialize)]
struct PresenceBody {
    topic: String,
}

impl Request {
    /// The request's id, if it has one.
    pub fn id(&self) -> Option<&Value> {
        match self {
            Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Publish { id, .. }
            | Request::Presence { id, .. }
            | Request::Refresh { id, .. }
            | Request::Ping { id }
            | Request::Send { id, .. }
            | Request::Secure { id, .. } => id.as_ref(),
        }
    }

    /// Decode one frame: text frames are JSON, binary frames MessagePack.
    pub fn decode(msg: &Message) -> Result<Request, DecodeError> {
        let bad = |m: String| DecodeError { id: None, error: ErrorBody::new(ErrorCode::BadRequest, m) };
        let value: Value = match msg {
            Message::Text(t) => serde_json::from_str(t.as_str()).map_err(|e| bad(format!("invalid JSON: {e}")))?,
            Message::Binary(b) => rmp_serde::from_slice::<MsgpackValue>(b)
                .map(|v| v.0)
                .map_err(|e| bad(format!("invalid MessagePack: {e}")))?,
            _ => return Err(bad("not a data message".into())),
        };
        Self::from_value(value)
    }

    /// Decode an already parsed value.
    pub fn from_value(value: Value) -> Result<Request, DecodeError> {
        let Value::Object(mut map) = value else {
            return Err(DecodeError {
                id: None,
                error: ErrorBody::new(ErrorCode::BadRequest, "a request must be an object"),
            });
        };
        let id = match map.remove("id") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Number(_)) => Some(v),
            Some(Value::String(s)) if s.len() <= 64 => Some(Value::String(s)),
            Some(_) => {
                return Err(DecodeError {
                    id: None,
                    error: ErrorBody::new(ErrorCode::BadRequest, "id must be a number or a string of at most 64 bytes"),
                });
            }
        };
        let fail = |code, m: String, id: &Option<Value>| DecodeError { id: id.clone(), error: ErrorBody::new(code, m) };
        let kind = match map.remove("type") {
            Some(Value::String(s)) => s,
            _ => return Err(fail(ErrorCode::BadRequest, "missing string field `type`".into(), &id)),
        };
        let rest = Value::Object(map);
        fn body<T: for<'de> Deserialize<'de>>(v: Value, kind: &str) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("bad {kind} request: {e}"))
        }
        let req = match kind.as_str() {
            "subscribe" => {
                let b: SubscribeBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                if b.topics.is_empty() {
                    return Err(fail(ErrorCode::BadRequest, "subscribe needs at least one topic".into(), &id));
                }
                Request::Subscribe {
                    id,
                    topics: b.topics,
                    resume: b.resume,
                    presence: b.presence,
                    history: b.history,
                    filter: b.filter.filter(|f| !f.is_null()),
                    snapshot: b.snapshot,
                }
            }
            "unsubscribe" => {
                let b: UnsubscribeBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                Request::Unsubscribe { id, topics: b.topics }
            }
            "publish" => {
                let b: PublishBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                Request::Publish { id, topic: b.topic, payload: b.payload, priority: b.priority }
            }
            "presence" => {
                let b: PresenceBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                Request::Presence { id, topic: b.topic }
            }
            "ping" => Request::Ping { id },
            "refresh" => {
                let b: RefreshBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                Request::Refresh { id, token: b.token }
            }
            "send" => {
                let b: SendBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                Request::Send { id, payload: b.payload }
            }
            "secure" => {
                use base64::Engine as _;
                let b: SecureBody = body(rest, &kind).map_err(|m| fail(ErrorCode::BadRequest, m, &id))?;
                let mode = match b.mode.as_deref() {
                    None => crate::secure::Mode::Encrypt,
                    Some(m) => {
                        m.parse().map_err(|e: crate::secure::SecureError| fail(ErrorCode::BadRequest, e.0, &id))?
                    }
                };
                if b.key.len() > 256 {
                    return Err(fail(ErrorCode::BadRequest, "secure key too long".into(), &id));
                }
                let key = base64::engine::general_purpose::STANDARD
                    .decode(&b.key)
                    .map_err(|e| fail(ErrorCode::BadRequest, format!("secure key is not base64: {e}"), &id))?;
                Request::Secure { id, mode, key }
            }
            other => return Err(fail(ErrorCode::UnknownType, format!("unknown request type {other:?}"), &id)),
        };
        Ok(req)
    }
}

#[derive(Deserialize)]
struct SecureBody {
    #[serde(default)]
    mode: Option<String>,
    key: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    token: String,
}

/// A MessagePack value in the JSON data model: like `serde_json::Value`, plus `bin`, which
/// becomes an array of byte values (serde_json's own `Value` refuses byte arrays).
struct MsgpackValue(Value);

impl<'de> Deserialize<'de> for MsgpackValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MsgpackVisitor).map(MsgpackValue)
    }
}

struct MsgpackVisitor;

impl<'de> serde::de::Visitor<'de> for MsgpackVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a MessagePack value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(v.iter().map(|b| Value::from(*b)).collect()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        MsgpackValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(MsgpackValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((k, MsgpackValue(v))) = map.next_entry::<String, MsgpackValue>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: &str) -> Message {
        Message::text(v.to_owned())
    }

    #[test]
    fn msgpack_bin_becomes_an_array_of_byte_values() {
        // {"type":"publish","topic":"t","payload":{"b": bin8 [1,2,255]}}, built by hand so the
        // payload really is a `bin` (serde would write a Vec<u8> as an array).
        let mut mp = vec![0x83];
        for (k, v) in [("type", "publish"), ("topic", "t")] {
            mp.push(0xa0 | k.len() as u8);
            mp.extend(k.as_bytes());
            mp.push(0xa0 | v.len() as u8);
            mp.extend(v.as_bytes());
        }
        mp.extend([0xa7]);
        mp.extend(b"payload");
        mp.extend([0x81, 0xa1, b'b', 0xc4, 3, 1, 2, 255]);
        let r = Request::decode(&Message::binary(mp)).unwrap();
        assert_eq!(
            r,
            Request::Publish {
                id: None,
                topic: "t".into(),
                payload: json!({"b": [1, 2, 255]}),
                priority: Priority::Normal
            }
        );
    }

    #[test]
    fn decodes_refresh() {
        assert_eq!(
            Request::decode(&text(r#"{"type":"refresh","id":2,"token":"a.b.c"}"#)).unwrap(),
            Request::Refresh { id: Some(json!(2)), token: "a.b.c".into() }
        );
        assert_eq!(Request::decode(&text(r#"{"type":"refresh"}"#)).unwrap_err().error.code, 4000);
    }

    #[test]
    fn decodes_requests() {
        let r = Request::decode(&text(r#"{"type":"subscribe","id":1,"topics":["a","b.*"],"resume":{"a":{"offset":4,"epoch":"e"}},"presence":true}"#)).unwrap();
        match r {
            Request::Subscribe { id, topics, resume, presence, .. } => {
                assert_eq!(id, Some(json!(1)));
                assert_eq!(topics, vec!["a", "b.*"]);
                assert_eq!(resume["a"], Position { offset: 4, epoch: "e".into() });
                assert!(presence);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Request::decode(&text(r#"{"type":"ping","id":"x"}"#)).unwrap(),
            Request::Ping { id: Some(json!("x")) }
        );
        assert_eq!(
            Request::decode(&text(r#"{"type":"send","id":7,"payload":{"q":1}}"#)).unwrap(),
            Request::Send { id: Some(json!(7)), payload: json!({"q":1}) }
        );
        assert_eq!(Request::decode(&text(r#"{"type":"send"}"#)).unwrap_err().error.code, 4000);
        let mp = rmp_serde::to_vec_named(&json!({"type":"publish","topic":"t","payload":{"a":[1,2]}})).unwrap();
        assert_eq!(
            Request::decode(&Message::binary(mp)).unwrap(),
            Request::Publish { id: None, topic: "t".into(), payload: json!({"a":[1,2]}), priority: Priority::Normal }
        );
    }

    #[test]
    fn decode_errors_have_codes() {
        let code = |s: &str| Request::decode(&text(s)).unwrap_err();
        assert_eq!(code("{nope").error.code, 4000);
        assert_eq!(code("[1]").error.code, 4000);
        assert_eq!(code(r#"{"id":1}"#).error.code, 4000);
        let e = code(r#"{"type":"fly","id":7}"#);
        assert_eq!((e.error.code, e.id), (4001, Some(json!(7))));
        let e = code(r#"{"type":"subscribe","id":2,"topics":"a"}"#);
        assert_eq!((e.error.code, e.id), (4000, Some(json!(2))));
        assert_eq!(code(r#"{"type":"subscribe","topics":[]}"#).error.code, 4000);
        assert_eq!(code(r#"{"type":"publish","topic":"a"}"#).error.code, 4000);
        assert_eq!(code(r#"{"type":"ping","id":{"x":1}}"#).error.code, 4000);
        assert_eq!(Request::decode(&Message::binary(vec![0xc1])).unwrap_err().error.code, 4000);
    }

    #[test]
    fn event_encodings_agree() {
        let e = Event::new("t".into(), 3, "ep".into(), None, json!({"x": 1}));
        let j: Value = serde_json::from_slice(&e.encoded(Format::Json).plain_frame()[2..]).unwrap();
        let m: Value = rmp_serde::from_slice(&e.encoded(Format::Msgpack).plain_frame()[2..]).unwrap();
        assert_eq!(j, m);
        assert_eq!(j["type"], "event");
        assert_eq!(j["id"], "ep-3");
        assert_eq!(j["payload"], json!({"x": 1}));
    }
}
