//! Snapshots on subscribe: a topic's current state, sent to a subscriber that asks for it
//! (`"snapshot": true` in `subscribe`) after the `subscribed` reply and before the topic's live
//! events.
//!
//! A snapshot names the offset its state includes. Events at or below it are already in the
//! state: a client skips them. When the state is older than the subscription (its offset below
//! the position the subscription started at), the events in between follow the snapshot, from
//! history, before the live ones; if history no longer holds them the snapshot fails (error
//! 4011). Either way nothing is applied twice and nothing is missed.
//!
//! Where the state comes from is the engine's [`Snapshots`] setting:
//! - [`Snapshots::LastEvent`]: the topic's last event, from history (built in, cheap);
//! - [`Snapshots::Provider`]: the host application's [`SnapshotProvider`] (Rust), a Python
//!   callback on `weft.Server`, or [`HttpSnapshots`] (an HTTP endpoint, `weft serve
//!   --snapshots URL`).
//!
//! ```
//! use std::sync::Arc;
//! use weft_server::snapshot::{Snapshot, SnapshotFuture, SnapshotProvider, SnapshotRequest, Snapshots};
//!
//! struct Prices;
//! impl SnapshotProvider for Prices {
//!     fn snapshot(&self, req: SnapshotRequest) -> SnapshotFuture {
//!         Box::pin(async move {
//!             // The state as of the position the subscription started at.
//!             Ok(Some(Snapshot { data: serde_json::json!({ "topic": req.topic, "price": 101 }), offset: None }))
//!         })
//!     }
//! }
//! let mut config = weft_server::EngineConfig::default();
//! config.snapshots = Snapshots::Provider(Arc::new(Prices));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::wire::Position;

/// What a provider is asked for: one exact topic's state for one subscriber.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The topic.
    pub topic: String,
    /// Where the subscription started: events after `position.offset` are delivered live.
    pub position: Position,
    /// The subscriber's user id (the token's `sub`; `anon` without auth).
    pub user: Arc<str>,
    /// The subscriber's session id.
    pub session: Arc<str>,
}

/// A topic's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The state, any JSON value.
    pub data: Value,
    /// The offset (in the request's epoch) of the last event the state includes; `None`: the
    /// state is as of the request's position.
    pub offset: Option<u64>,
}

/// The future a [`SnapshotProvider`] returns: the state, `None` when the topic has none, or why
/// it could not be had.
pub type SnapshotFuture = Pin<Box<dyn Future<Output = Result<Option<Snapshot>, String>> + Send>>;

/// The host application's source of topic state. Called once per exact topic a client
/// subscribes to with `snapshot`, bounded by [`crate::EngineConfig::snapshot_timeout`] and, over
/// all connections, [`crate::EngineConfig::snapshot_concurrency`].
pub trait SnapshotProvider: Send + Sync + 'static {
    /// The state of `req.topic` for `req.user`.
    fn snapshot(&self, req: SnapshotRequest) -> SnapshotFuture;
}

/// Where snapshots come from.
#[derive(Clone, Default)]
pub enum Snapshots {
    /// None: a subscribe asking for one gets a `snapshot` message with error 4011.
    #[default]
    Off,
    /// The topic's last event in history: its payload is the state, its offset the snapshot's.
    LastEvent,
    /// The host application's provider.
    Provider(Arc<dyn SnapshotProvider>),
}

impl fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Snapshots::Off => f.write_str("Off"),
            Snapshots::LastEvent => f.write_str("LastEvent"),
            Snapshots::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// A [`SnapshotProvider`] that asks an HTTP endpoint: `POST url` with the JSON body
/// `{"topic", "offset", "epoch", "user", "session"}`. The answer:
/// - `200` with a JSON object `{"data": <state>, "offset": <n>}` (`offset` optional);
/// - `204` or `404`: the topic has no state;
/// - anything else, a body over the size limit, or no answer in time: the snapshot fails (the
///   subscriber is told, with error 4011; the subscription stands).
///
/// One connection per request (HTTP/1.1; `https://` with the webpki roots).
pub struct HttpSnapshots {
    url: http::Uri,
    authority: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_body: usize,
}

impl fmt::Debug for HttpSnapshots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's query may hold a credential: only scheme and authority.
        f.debug_struct("HttpSnapshots").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl HttpSnapshots {
    /// An endpoint at `url` (`http://` or `https://`), whose answers may be up to `max_body`
    /// bytes.
    pub fn new(url: &str, max_body: usize) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad snapshot URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(weft::tls::client_config(&[]).map_err(|e| e.to_string())?),
            _ => return Err("the snapshot URL must be http:// or https://".into()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("the snapshot URL has no host")?;
        let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
        let authority = format!("{host}:{port}");
        Ok(Self { url: uri, authority, tls, max_body })
    }

    async fn fetch(
        url: http::Uri,
        authority: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        max_body: usize,
        body: Vec<u8>,
    ) -> Result<Option<Snapshot>, String> {
        let tcp = tokio::net::TcpStream::connect(&authority).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let host = url.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let req = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, url.authority().map_or(host.as_str(), |a| a.as_str()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = match tls {
            None => send(tcp, req).await?,
            Some(cfg) => {
                let io = weft::tls::wrap(tcp, &host, cfg).await.map_err(|e| e.to_string())?;
                send(io, req).await?
            }
        };
        let status = resp.status();
        if status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != http::StatusCode::OK {
            return Err(format!("the snapshot endpoint answered {status}"));
        }
        let bytes = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))?;
        let Value::Object(mut m) = v else { return Err("the answer is not a JSON object".into()) };
        let offset = match m.remove("offset") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
            Some(_) => return Err("the answer's `offset` is not an unsigned integer".into()),
        };
        let Some(data) = m.remove("data") else { return Err("the answer has no `data`".into()) };
        Ok(Some(Snapshot { data, offset }))
    }
}

async fn send<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| format!("request: {e}"))
}

impl SnapshotProvider for HttpSnapshots {
    fn snapshot(&self, req: SnapshotRequest) -> SnapshotFuture {
        let body = serde_json::to_vec(&serde_json::json!({
            "topic": req.topic,
            "offset": req.position.offset,
            "epoch": req.position.epoch,
            "user": &*req.user,
            "session": &*req.session,
        }))
        .expect("plain JSON");
        Box::pin(Self::fetch(self.url.clone(), self.authority.clone(), self.tls.clone(), self.max_body, body))
    }
}

/// A snapshot's outcome for the wire: the offset it is at, the state (if any), or an error;
/// and the events that bring a state older than its subscription up to it.
pub(crate) struct Taken {
    pub(crate) offset: u64,
    pub(crate) data: Option<Value>,
    pub(crate) error: Option<crate::wire::ErrorBody>,
    pub(crate) replay: Vec<Arc<crate::wire::Event>>,
}

impl Taken {
    /// A snapshot that failed with `message`, at `offset`.
    pub(crate) fn failed(offset: u64, message: impl Into<String>) -> Self {
        let error = crate::wire::ErrorBody::new(crate::wire::ErrorCode::SnapshotFailed, message);
        Self { offset, data: None, error: Some(error), replay: Vec::new() }
    }
}

/// Take `req`'s snapshot for subscriber `sub` within the engine's bounds: the source and the
/// catch-up read together within `snapshot_timeout`; a state larger than `max_message_size`
/// fails (the client could not take it).
pub(crate) async fn take(
    shared: &crate::engine::Shared,
    sub: &crate::broker::Subscriber,
    req: SnapshotRequest,
) -> Taken {
    use std::sync::atomic::Ordering;
    let at = req.position.offset;
    let (topic, epoch, user) = (req.topic.clone(), req.position.epoch.clone(), Arc::clone(&req.user));
    if sub.outbox.is_closing() {
        // The connection is going: nobody to take it to.
        return Taken::failed(at, "the connection is closing");
    }
    if matches!(shared.config.snapshots, Snapshots::Off) {
        // Not a failure of a source: nothing to keep as a dead letter.
        shared.metrics.snapshot_failures.fetch_add(1, Ordering::Relaxed);
        return Taken::failed(at, "this server has no snapshots");
    }
    let limit = shared.config.snapshot_timeout;
    let work = async {
        let got = match &shared.config.snapshots {
            Snapshots::Off => unreachable!("answered above"),
            Snapshots::LastEvent => match shared.broker.last_event(&req.topic).await {
                Ok(Some(e)) if *e.epoch == *epoch && sub.passes(&e) => {
                    Some(Snapshot { data: e.payload.clone(), offset: Some(e.offset) })
                }
                Ok(_) => None,
                Err(e) => return Err(e.to_string()),
            },
            Snapshots::Provider(p) => {
                let _permit = shared.snapshot_permits.acquire().await.map_err(|_| "closed".to_owned())?;
                p.snapshot(req).await?
            }
        };
        let Some(s) = got else { return Ok(None) };
        let size = serde_json::to_vec(&s.data).map_or(usize::MAX, |v| v.len());
        if size > shared.config.max_message_size {
            return Err(format!(
                "the state is {size} bytes, more than max_message_size ({})",
                shared.config.max_message_size
            ));
        }
        let offset = s.offset.unwrap_or(at);
        // A state older than the subscription: the events in between follow it, from history.
        let mut replay = Vec::new();
        if offset < at {
            match shared.broker.between(&topic, &epoch, offset, at).await {
                Ok(Some(events)) => replay = events.into_iter().filter(|e| sub.passes(e)).collect(),
                Ok(None) => {
                    return Err(format!(
                        "the state (at offset {offset}) is older than the history kept (the subscription starts at {at})"
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Some((s.data, offset, replay)))
    };
    let outcome = match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no snapshot within {}", fmt_duration(limit))),
    };
    match outcome {
        Ok(Some((data, offset, replay))) => {
            shared.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
            Taken { offset, data: Some(data), error: None, replay }
        }
        Ok(None) => {
            shared.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
            Taken { offset: at, data: None, error: None, replay: Vec::new() }
        }
        Err(m) => {
            shared.metrics.snapshot_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("snapshot failed: {m}");
            let t = Taken::failed(at, m);
            let error = t.error.clone().expect("failed");
            shared.dead_letters.push(crate::dead::DeadLetter::snapshot(&topic, &user, error));
            t
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
