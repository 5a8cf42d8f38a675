//! The HTTP side of the engine's port: publish API, stats, health, metrics and the pages.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::api_key_matches;
use crate::engine::{Engine, text};
use crate::wire::{ErrorBody, ErrorCode};

/// How long `/metrics` waits for the cluster's shared dead-letter store to say its size.
const SHARED_METRICS_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

const DASHBOARD: &str = include_str!("../assets/dashboard.html");
const CHAT: &str = include_str!("../assets/chat.html");

/// The one path `weft serve` accepts WebSocket upgrades on (an embedding application routes
/// [`Engine::upgrade`](crate::Engine::upgrade) wherever it likes).
pub const WS_PATH: &str = "/ws";

/// Route one request.
pub(crate) async fn route<B>(engine: &Engine, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let h2_websocket = req.method() == Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if h2_websocket || weft::proto::handshake::header_has_token(req.headers(), &header::UPGRADE, "websocket") {
        if req.uri().path() != WS_PATH {
            engine.metrics().connections_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return text(StatusCode::NOT_FOUND, "WebSocket connections are served on /ws only\n");
        }
        return engine.upgrade(req);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => match engine.health() {
            crate::broker::BrokerHealth::Ok => text(StatusCode::OK, "ok\n"),
            crate::broker::BrokerHealth::Degraded(why) => {
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("degraded: {why}\n"))
            }
        },
        (&Method::GET, "/metrics") => {
            let mut body = engine.metrics().render_prometheus(engine.broker().topic_count());
            engine.dead_letters().render(&mut body);
            if let Some(store) = engine.broker().shared_dead_letters() {
                // A scrape never waits on the broker (a frozen Redis would hold it for the
                // command timeout): the store's size if it answers at once, else the last seen.
                let shared = match engine.health() {
                    crate::broker::BrokerHealth::Ok => {
                        tokio::time::timeout(SHARED_METRICS_WAIT, store.list(0, 0)).await.ok().and_then(Result::ok)
                    }
                    crate::broker::BrokerHealth::Degraded(_) => None,
                };
                crate::dead::render_shared(engine.dead_letters(), shared.as_ref(), &mut body);
            }
            if let Some(c) = engine.broker().cluster() {
                let up = u8::from(c.state == "ok");
                body.push_str(&format!(
                    "# HELP weft_broker_up Whether the cluster broker is reachable (1) or not (0).\n# TYPE weft_broker_up gauge\nweft_broker_up{{broker=\"{}\",node={:?}}} {up}\n# HELP weft_cluster_nodes Nodes alive at the last heartbeat.\n# TYPE weft_cluster_nodes gauge\nweft_cluster_nodes {}\n",
                    c.broker, c.node, c.nodes
                ));
            }
            let mut r = text(StatusCode::OK, &body);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        (&Method::GET, "/api/stats") => {
            json_response(StatusCode::OK, &serde_json::to_value(engine.stats()).expect("stats"))
        }
        (&Method::GET, "/") => html(DASHBOARD),
        (&Method::GET, "/chat") => html(CHAT),
        (&Method::POST, "/api/publish") => publish(engine, req, false).await,
        (&Method::POST, "/api/broadcast") => publish(engine, req, true).await,
        (_, "/api/publish" | "/api/broadcast") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (&Method::GET | &Method::DELETE, "/api/dead-letters") | (&Method::POST, "/api/dead-letters/replay") => {
            dead_letters(engine, req).await
        }
        (_, "/api/dead-letters") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or DELETE\n"),
        (_, "/api/dead-letters/replay") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/ws") => text(StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn html(body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).expect("json"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": ErrorBody::new(code, message)}))
}

#[derive(Deserialize)]
struct PublishBody {
    topic: String,
    payload: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    priority: crate::wire::Priority,
}

#[derive(Deserialize)]
struct BroadcastBody {
    topics: Vec<String>,
    payload: Value,
}

/// The HTTP API's credential check: the API key when one is set; without one, only in
/// anonymous mode. `Some`: the refusal to send.
fn authorize(engine: &Engine, headers: &http::HeaderMap) -> Option<Response<Full<Bytes>>> {
    let cfg = engine.config();
    match &cfg.api_key {
        Some(key) if !api_key_matches(headers, key) => {
            engine.metrics().auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, "missing or wrong API key");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
        None if !cfg.anonymous() => Some(error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the HTTP API needs an API key when JWT auth is on (set api_key)",
        )),
        _ => None,
    }
}

/// A request body, at most `max_message_size` bytes, within `http_body_timeout`.
async fn read_body<B>(engine: &Engine, req: Request<B>) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let cfg = engine.config();
    let collect = Limited::new(req.into_body(), cfg.max_message_size).collect();
    match tokio::time::timeout(cfg.http_body_timeout, collect).await {
        Err(_) => {
            // A body that never finishes (a huge Content-Length, or a stall mid-way) is not
            // waited for: 408, and the connection closes.
            engine.metrics().http_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!("request body not received within {} s", cfg.http_body_timeout.as_secs_f64()),
            );
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BadRequest,
            format!("body larger than max_message_size ({} bytes)", cfg.max_message_size),
        )),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, format!("reading body: {e}"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    #[serde(default)]
    ids: Option<Vec<u64>>,
    /// This node's letters not moved to the shared store yet (cluster mode over Redis).
    #[serde(default)]
    local_ids: Option<Vec<u64>>,
}

/// `/api/dead-letters`: `GET ?after=ID&limit=N` lists (oldest first, at most 1,000), `DELETE`
/// purges (all, or `{"ids": [...]}`), `POST /replay` publishes again (all, or `{"ids": [...]}`).
/// With a shared store (cluster mode over Redis), `ids` and `after` name the shared letters
/// and `local_ids` and `local_after` this node's not moved yet.
async fn dead_letters<B>(engine: &Engine, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(refused) = authorize(engine, req.headers()) {
        return refused;
    }
    let shared = engine.broker().shared_dead_letters().is_some();
    if req.method() == Method::GET {
        let (mut after, mut local_after, mut limit) = (0u64, 0u64, 100usize);
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            let n = v.parse::<u64>();
            match (k.as_ref(), n) {
                ("after", Ok(n)) => after = n,
                ("local_after", Ok(n)) => local_after = n,
                ("limit", Ok(n)) => limit = (n as usize).clamp(1, 1000),
                (k, _) => {
                    return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, format!("bad query parameter {k:?}"));
                }
            }
        }
        let page = engine.list_dead_letters(after, local_after, limit).await;
        return json_response(StatusCode::OK, &serde_json::to_value(page).expect("json"));
    }
    let replay = req.method() == Method::POST;
    let body = match read_body(engine, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ids: IdsBody = if body.iter().all(u8::is_ascii_whitespace) {
        IdsBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, format!("bad body: {e}")),
        }
    };
    if replay {
        if !shared && ids.local_ids.is_some() {
            // One store: both name its letters.
            let all: Vec<u64> = ids.ids.iter().chain(&ids.local_ids).flatten().copied().collect();
            let done = engine.replay_dead_letters(Some(&all)).await;
            return json_response(StatusCode::OK, &serde_json::to_value(done).expect("json"));
        }
        let done = engine.replay_dead_letters(ids.ids.as_deref()).await;
        json_response(StatusCode::OK, &serde_json::to_value(done).expect("json"))
    } else {
        let (purged, shared_error) = engine.purge_dead_letters(ids.ids.as_deref(), ids.local_ids.as_deref()).await;
        let remaining = engine.dead_letter_count().await;
        let mut answer = json!({ "purged": purged, "remaining": remaining });
        if let Some(e) = shared_error {
            answer["shared_error"] = serde_json::to_value(e).expect("json");
        }
        json_response(StatusCode::OK, &answer)
    }
}

async fn publish<B>(engine: &Engine, req: Request<B>, broadcast: bool) -> Response<Full<Bytes>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(refused) = authorize(engine, req.headers()) {
        return refused;
    }
    let body = match read_body(engine, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let status_of = |e: &ErrorBody| match e.code {
        4002 | 4000 => StatusCode::BAD_REQUEST,
        4003 => StatusCode::FORBIDDEN,
        4008 => StatusCode::TOO_MANY_REQUESTS,
        5003 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if broadcast {
        let b: BroadcastBody = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, format!("bad broadcast body: {e}")),
        };
        let mut results = Vec::with_capacity(b.topics.len());
        for t in &b.topics {
            results.push(match engine.publish(t, b.payload.clone()).await {
                Ok(p) => json!({"topic": t, "offset": p.offset, "epoch": p.epoch}),
                Err(e) => json!({"topic": t, "error": e.0}),
            });
        }
        json_response(StatusCode::OK, &json!({ "results": results }))
    } else {
        let b: PublishBody = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, format!("bad publish body: {e}")),
        };
        let meta = crate::broker::PublishMeta { id: b.id, priority: b.priority, ..Default::default() };
        match engine.publish_with(&b.topic, b.payload, meta).await {
            Ok(p) => json_response(StatusCode::OK, &json!({"topic": b.topic, "offset": p.offset, "epoch": p.epoch})),
            Err(e) => json_response(status_of(&e.0), &json!({"error": e.0})),
        }
    }
}
