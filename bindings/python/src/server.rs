//! `weft.Server`: the weft engine (`weft-server`) on its own tokio threads, driven from Python.
//!
//! Python never runs on the engine's threads: it publishes by handing events to the runtime
//! (never waiting), and it takes inbound client messages in batches with `drain_inbound`, which
//! waits without the GIL and converts a whole batch under one GIL acquisition.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;
use tokio::sync::mpsc;
use weft_server::snapshot::{HttpSnapshots, Snapshot, SnapshotFuture, SnapshotProvider, SnapshotRequest, Snapshots};
use weft_server::{Engine, EngineConfig, Inbound, JwtAuth, SlowConsumerPolicy};

struct Running {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    /// Publishes from Python, applied in order by one task (per-topic order is the order of
    /// the `publish` calls).
    publish: mpsc::Sender<(String, Value)>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    port: u16,
}

/// The weft engine, served on `host:port` by its own Rust threads.
#[pyclass(module = "weft._weft")]
pub(crate) struct Server {
    host: String,
    port: u16,
    threads: usize,
    inbound_capacity: usize,
    publish_capacity: usize,
    config: EngineConfig,
    running: RwLock<Option<Running>>,
    inbound: Mutex<Option<mpsc::Receiver<Inbound>>>,
}

fn secs(v: &Bound<'_, PyAny>, name: &str) -> PyResult<Duration> {
    let s: f64 = v.extract()?;
    if !(s.is_finite() && s > 0.0) {
        return Err(PyValueError::new_err(format!("{name} must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(s))
}

fn config_from(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<(EngineConfig, usize, usize, usize)> {
    let mut cfg = EngineConfig::default();
    let mut threads = 2;
    let mut inbound_capacity = 4096;
    let mut publish_capacity = 65536;
    let mut jwt: Option<JwtAuth> = None;
    let (mut issuer, mut audience) = (None::<String>, None::<String>);
    let mut snapshots: Option<Py<PyAny>> = None;
    if let Some(kw) = kwargs {
        for (k, v) in kw.iter() {
            let key: String = k.extract()?;
            match key.as_str() {
                "jwt_secret" => {
                    let secret: Vec<u8> = match v.cast::<PyString>() {
                        Ok(s) => s.to_str()?.as_bytes().to_vec(),
                        Err(_) => v.extract()?,
                    };
                    jwt = Some(JwtAuth::hs256(&secret).map_err(|e| PyValueError::new_err(e.to_string()))?);
                }
                "jwt_issuer" => issuer = Some(v.extract()?),
                "jwt_audience" => audience = Some(v.extract()?),
                "api_key" => cfg.api_key = v.extract()?,
                "max_connections" => cfg.max_connections = v.extract()?,
                "max_message_size" => cfg.max_message_size = v.extract()?,
                "max_subscriptions" => cfg.max_subscriptions = v.extract()?,
                "queue_size" => cfg.queue_size = v.extract()?,
                "history_size" => cfg.history_size = v.extract()?,
                "history_ttl" => cfg.history_ttl = secs(&v, &key)?,
                "slow_consumer" => {
                    let s: String = v.extract()?;
                    cfg.slow_consumer = s
                        .parse::<SlowConsumerPolicy>()
                        .map_err(|e| PyValueError::new_err(format!("slow_consumer: {e}")))?;
                }
                "rate_limit" => cfg.rate_limit = v.extract()?,
                "rate_burst" => cfg.rate_burst = v.extract()?,
                "heartbeat" => cfg.heartbeat = secs(&v, &key)?,
                "ping_timeout" => cfg.ping_timeout = secs(&v, &key)?,
                "idle_timeout" => cfg.idle_timeout = secs(&v, &key)?,
                "shutdown_grace" => cfg.shutdown_grace = secs(&v, &key)?,
                "max_topics" => cfg.max_topics = v.extract()?,
                "topic_churn_limit" => cfg.topic_churn_limit = v.extract()?,
                "history_memory" => cfg.history_memory = v.extract()?,
                "history_topic_bytes" => cfg.history_topic_bytes = v.extract()?,
                "http_header_timeout" => cfg.http_header_timeout = secs(&v, &key)?,
                "http_body_timeout" => cfg.http_body_timeout = secs(&v, &key)?,
                "max_token_size" => cfg.max_token_size = v.extract()?,
                "deflate" => cfg.deflate = v.extract()?,
                "broker" => cfg.broker = v.extract()?,
                "broker_ca_file" => cfg.broker_ca_file = v.extract::<Option<String>>()?.map(Into::into),
                "broker_prefix" => cfg.broker_prefix = v.extract()?,
                "node_name" => cfg.node_name = v.extract()?,
                "node_ttl" => cfg.node_ttl = secs(&v, &key)?,
                "broker_buffer_bytes" => cfg.broker_buffer_bytes = v.extract()?,
                "snapshots" => snapshots = Some(v.clone().unbind()),
                "snapshot_timeout" => cfg.snapshot_timeout = secs(&v, &key)?,
                "snapshot_concurrency" => cfg.snapshot_concurrency = v.extract()?,
                "dead_letter_max" => cfg.dead_letter_max = v.extract()?,
                "dead_letter_bytes" => cfg.dead_letter_bytes = v.extract()?,
                "secure" => {
                    let s: String = v.extract()?;
                    cfg.secure = s.parse().map_err(|e| PyValueError::new_err(format!("secure: {e}")))?;
                }
                "secure_key" => {
                    // A path to a PEM/DER PKCS#8 P-256 key, or the key's bytes.
                    let bytes: Vec<u8> = match v.extract::<std::path::PathBuf>() {
                        Ok(path) if v.cast::<pyo3::types::PyBytes>().is_err() => std::fs::read(&path)
                            .map_err(|e| PyValueError::new_err(format!("secure_key: {}: {e}", path.display())))?,
                        _ => v.extract()?,
                    };
                    let key = weft_server::secure::IdentityKey::from_pkcs8(&bytes)
                        .map_err(|e| PyValueError::new_err(format!("secure_key: {e}")))?;
                    cfg.secure_identity = Some(std::sync::Arc::new(key));
                }
                "threads" => threads = v.extract::<usize>()?.max(1),
                "inbound_capacity" => inbound_capacity = v.extract::<usize>()?.max(1),
                "publish_capacity" => publish_capacity = v.extract::<usize>()?.max(1),
                other => {
                    return Err(PyTypeError::new_err(format!("Server() got an unexpected keyword argument {other:?}")));
                }
            }
        }
    }
    if let Some(mut j) = jwt {
        if let Some(i) = &issuer {
            j = j.issuer(i);
        }
        if let Some(a) = &audience {
            j = j.audience(a);
        }
        cfg.jwt = Some(j);
    } else if issuer.is_some() || audience.is_some() {
        return Err(PyValueError::new_err("jwt_issuer and jwt_audience need jwt_secret"));
    }
    if let Some(s) = snapshots {
        cfg.snapshots =
            Python::attach(|py| snapshots_from(s.bind(py), cfg.max_message_size, cfg.snapshot_concurrency))?;
    }
    cfg.validate().map_err(PyValueError::new_err)?;
    Ok((cfg, threads, inbound_capacity, publish_capacity))
}

/// `snapshots=`: `None` or `"off"`, `"last"`, an `http://` / `https://` URL, or a callable.
fn snapshots_from(v: &Bound<'_, PyAny>, max_body: usize, threads: usize) -> PyResult<Snapshots> {
    if v.is_none() {
        return Ok(Snapshots::Off);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return match s.to_str()? {
            "off" => Ok(Snapshots::Off),
            "last" => Ok(Snapshots::LastEvent),
            url => HttpSnapshots::new(url, max_body)
                .map(|h| Snapshots::Provider(std::sync::Arc::new(h)))
                .map_err(|e| PyValueError::new_err(format!("snapshots: {e}"))),
        };
    }
    if v.is_callable() {
        return Ok(Snapshots::Provider(std::sync::Arc::new(PySnapshots {
            callback: std::sync::Arc::new(v.clone().unbind()),
            threads: std::sync::Arc::new(tokio::sync::Semaphore::new(threads.max(1))),
        })));
    }
    Err(PyTypeError::new_err("snapshots must be None, \"off\", \"last\", an http(s):// URL or a callable"))
}

/// A Python callable as the engine's snapshot provider: `callback(topic, position, user,
/// session)` on a thread of the runtime's blocking pool (never on the engine's threads), with
/// `position` a dict `{"offset", "epoch"}`. It returns `None` (no state), the state, or a tuple
/// `(state, offset)` naming the offset the state includes. An exception fails the snapshot
/// (the client gets error 4011 with the exception's text).
/// A callback that hangs past the snapshot timeout keeps its thread: each call holds one of
/// `threads` permits (`snapshot_concurrency`) until the callback returns, so hung callbacks
/// hold at most that many threads and later snapshots wait (and time out) instead of
/// starting more.
struct PySnapshots {
    callback: std::sync::Arc<Py<PyAny>>,
    threads: std::sync::Arc<tokio::sync::Semaphore>,
}

impl SnapshotProvider for PySnapshots {
    fn snapshot(&self, req: SnapshotRequest) -> SnapshotFuture {
        let (callback, threads) = (std::sync::Arc::clone(&self.callback), std::sync::Arc::clone(&self.threads));
        Box::pin(async move {
            let permit = threads.acquire_owned().await.map_err(|_| "closed".to_owned())?;
            let call = move || {
                let _permit = permit;
                Python::attach(|py| -> PyResult<Option<Snapshot>> {
                    let position = PyDict::new(py);
                    position.set_item("offset", req.position.offset)?;
                    position.set_item("epoch", &req.position.epoch)?;
                    let r = callback.bind(py).call1((&req.topic, position, &*req.user, &*req.session))?;
                    let r = &r;
                    if r.is_none() {
                        return Ok(None);
                    }
                    if let Ok(t) = r.cast::<PyTuple>() {
                        if t.len() != 2 {
                            return Err(PyValueError::new_err("a snapshot tuple is (state, offset)"));
                        }
                        let offset: u64 = t.get_item(1)?.extract()?;
                        return Ok(Some(Snapshot { data: to_value(&t.get_item(0)?, 0)?, offset: Some(offset) }));
                    }
                    Ok(Some(Snapshot { data: to_value(r, 0)?, offset: None }))
                })
                .map_err(|e| e.to_string())
            };
            tokio::task::spawn_blocking(call).await.map_err(|e| format!("the snapshot callback failed: {e}"))?
        })
    }
}

/// A Python object as JSON: None, bool, int, float, str, list/tuple, dict with str keys.
fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > 128 {
        return Err(PyValueError::new_err("payload nested too deeply"));
    }
    if obj.is_none() {
        Ok(Value::Null)
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            Ok(Value::from(v))
        } else {
            Ok(Value::from(i.extract::<u64>().map_err(|_| PyValueError::new_err("integer out of range"))?))
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        serde_json::Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err("NaN and infinity are not JSON"))
    } else if let Ok(s) = obj.cast::<PyString>() {
        Ok(Value::String(s.to_str()?.to_owned()))
    } else if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = serde_json::Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = k.cast::<PyString>().map_err(|_| PyTypeError::new_err("payload dict keys must be str"))?;
            map.insert(key.to_str()?.to_owned(), to_value(&v, depth + 1)?);
        }
        Ok(Value::Object(map))
    } else if let Ok(l) = obj.cast::<PyList>() {
        l.iter().map(|v| to_value(&v, depth + 1)).collect::<PyResult<_>>().map(Value::Array)
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().map(|v| to_value(&v, depth + 1)).collect::<PyResult<_>>().map(Value::Array)
    } else if obj.cast::<PyBytes>().is_ok() {
        Err(PyTypeError::new_err("bytes are not JSON; decode them or use a str"))
    } else {
        Err(PyTypeError::new_err(format!("{} is not JSON-serializable", obj.get_type().name()?)))
    }
}

fn to_python(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any().unbind()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(a) => {
            let items = a.iter().map(|x| to_python(py, x)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, to_python(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

fn event_dict(py: Python<'_>, ev: &Inbound) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    match ev {
        Inbound::Connected { session, user } => {
            d.set_item("type", "connect")?;
            d.set_item("session", &**session)?;
            d.set_item("user", &**user)?;
        }
        Inbound::Message { session, user, id, payload } => {
            d.set_item("type", "message")?;
            d.set_item("session", &**session)?;
            d.set_item("user", &**user)?;
            d.set_item("id", id.as_ref().map(|v| to_python(py, v)).transpose()?)?;
            d.set_item("payload", to_python(py, payload)?)?;
        }
        Inbound::Disconnected { session, user } => {
            d.set_item("type", "disconnect")?;
            d.set_item("session", &**session)?;
            d.set_item("user", &**user)?;
        }
    }
    Ok(d.into_any().unbind())
}

/// Wakes the thread parked in [`recv_timeout`].
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// The next inbound event, waiting at most `timeout` by parking this thread: no runtime is
/// involved (a tokio channel needs none), so this works while `stop()` shuts the engine's
/// runtime down. `None` on timeout or when the engine has dropped its end.
fn recv_timeout(rx: &mut mpsc::Receiver<Inbound>, timeout: Duration) -> Option<Inbound> {
    use std::task::{Context, Poll, Waker};
    let deadline = std::time::Instant::now() + timeout;
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match rx.poll_recv(&mut cx) {
            Poll::Ready(ev) => return ev,
            Poll::Pending => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return None;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }
}

impl Server {
    /// Run `f` on the running engine. The shared lock is only held exclusively inside `start`
    /// and `stop`, which never need the GIL, so waiting for it with the GIL held cannot deadlock.
    fn with_running<T>(&self, _py: Python<'_>, f: impl FnOnce(&Running) -> PyResult<T>) -> PyResult<T> {
        let guard = self.running.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(r) => f(r),
            None => Err(PyRuntimeError::new_err("the server is not running; call start() first")),
        }
    }
}

#[pymethods]
impl Server {
    /// `Server(host="127.0.0.1", port=0, **config)`. Port 0 picks a free port (see `port`
    /// after `start()`). Config keywords: `jwt_secret`, `jwt_issuer`, `jwt_audience`, `api_key`,
    /// `max_connections`, `max_message_size`, `max_subscriptions`, `queue_size`,
    /// `history_size`, `history_ttl`, `slow_consumer`, `rate_limit`, `rate_burst`, `heartbeat`,
    /// `ping_timeout`, `idle_timeout`, `shutdown_grace`, `max_topics`, `topic_churn_limit`,
    /// `history_memory`, `history_topic_bytes` (bytes), `http_header_timeout`,
    /// `http_body_timeout`, `max_token_size`, `deflate`, `broker` (`"redis://host:port"`,
    /// `"redis+sentinel://host:port/MASTER"` or `"nats://host:port"`:
    /// cluster mode, docs/CLUSTER.md), `broker_ca_file`, `broker_prefix`, `node_name`,
    /// `node_ttl` (seconds where a time), `broker_buffer_bytes`, `threads`
    /// (engine worker threads, default 2), `inbound_capacity` (default 4096),
    /// `publish_capacity` (publishes queued from Python, default 65536).
    #[new]
    #[pyo3(signature = (host = "127.0.0.1".to_owned(), port = 0, **config))]
    fn new(host: String, port: u16, config: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let (config, threads, inbound_capacity, publish_capacity) = config_from(config)?;
        Ok(Self {
            host,
            port,
            threads,
            inbound_capacity,
            publish_capacity,
            config,
            running: RwLock::new(None),
            inbound: Mutex::new(None),
        })
    }

    /// Bind and start serving (returns once the port is listening). Raises `OSError` when the
    /// address cannot be bound, `ConnectionError` when the cluster broker cannot be reached,
    /// `RuntimeError` when already running.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let mut running = self.running.write().unwrap_or_else(|e| e.into_inner());
            if running.is_some() {
                return Err(PyRuntimeError::new_err("the server is already running"));
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .thread_name("weft-engine")
                .enable_all()
                .build()
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            let config = self.config.clone();
            let addr = (self.host.clone(), self.port);
            let cap = self.inbound_capacity;
            let (engine, listener, rx) = rt.block_on(async move {
                config.validate().map_err(PyValueError::new_err)?;
                let cluster = config.broker.is_some();
                let engine = Engine::connect(config)
                    .await
                    .map_err(|e| if cluster { PyConnectionError::new_err(e) } else { PyValueError::new_err(e) })?;
                let listener =
                    tokio::net::TcpListener::bind(addr).await.map_err(|e| PyOSError::new_err(e.to_string()))?;
                let rx = engine.inbound(cap).expect("a new engine has no application yet");
                Ok::<_, PyErr>((engine, listener, rx))
            })?;
            let port = listener.local_addr().map_err(|e| PyOSError::new_err(e.to_string()))?.port();
            let serve = rt.spawn({
                let engine = engine.clone();
                async move { engine.serve(listener).await }
            });
            let (publish, mut queue) = mpsc::channel::<(String, Value)>(self.publish_capacity);
            rt.spawn({
                let engine = engine.clone();
                async move {
                    while let Some((topic, value)) = queue.recv().await {
                        if let Err(e) = engine.publish(&topic, value).await {
                            tracing::warn!(topic = %topic, error = %e, "publish from Python failed");
                        }
                    }
                }
            });
            *self.inbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
            *running = Some(Running { rt, engine, publish, serve, port });
            Ok(())
        })
    }

    /// Close every connection with 1001 (after writing what is queued), stop listening and stop
    /// the engine's threads. Waits at most `shutdown_grace`. Does nothing when not running.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let taken = self.running.write().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(r) = taken {
                r.engine.shutdown();
                let grace = self.config.shutdown_grace + Duration::from_secs(1);
                let _ = r.rt.block_on(async { tokio::time::timeout(grace, r.serve).await });
                r.rt.shutdown_timeout(Duration::from_secs(1));
            }
            self.inbound.lock().unwrap_or_else(|e| e.into_inner()).take();
            Ok(())
        })
    }

    /// Publish `payload` (JSON-compatible: dict, list, str, int, float, bool, None) on a
    /// concrete `topic`. Never blocks: the event is queued for the engine's threads, which
    /// apply publishes in call order. Raises `ValueError` for an invalid topic, `TypeError` for
    /// a payload that is not JSON, `BufferError` when `publish_capacity` publishes are already
    /// waiting (the engine is behind; nothing was queued).
    fn publish(&self, py: Python<'_>, topic: &str, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        weft_server::topic::validate_topic(topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let value = to_value(payload, 0)?;
        self.with_running(py, |r| match r.publish.try_send((topic.to_owned(), value)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(pyo3::exceptions::PyBufferError::new_err(format!(
                "the engine is behind: {} publishes are waiting",
                self.publish_capacity
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PyRuntimeError::new_err("the server is stopping")),
        })
    }

    /// Up to `max_batch` inbound events, waiting at most `timeout_ms` for the first one (the
    /// GIL is released while waiting; the batch is converted under one acquisition). Each is
    /// a dict: `{"type": "connect" | "message" | "disconnect", "session", "user"}`, messages
    /// also with `payload` and `id`. An empty list means nothing arrived in time; when the
    /// server is not running (e.g. `stop()` ran meanwhile, from another thread) it waits
    /// `timeout_ms` and returns an empty list, so a loop on `server.running` ends cleanly.
    #[pyo3(signature = (max_batch = 256, timeout_ms = 50))]
    fn drain_inbound(&self, py: Python<'_>, max_batch: usize, timeout_ms: u64) -> PyResult<Py<PyList>> {
        let timeout = Duration::from_millis(timeout_ms);
        let batch = py.detach(|| {
            let mut guard = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
            let Some(rx) = guard.as_mut() else {
                // Not running (never started, or stopped meanwhile): nothing arrives in time.
                drop(guard);
                std::thread::sleep(timeout);
                return Vec::new();
            };
            let mut out = Vec::new();
            // Waited for on this thread, not on the engine's runtime: `stop()` shuts the
            // runtime down meanwhile, and a timer of a runtime being shut down panics.
            let first = recv_timeout(rx, timeout);
            if let Some(ev) = first {
                out.push(ev);
                while out.len() < max_batch.max(1) {
                    match rx.try_recv() {
                        Ok(ev) => out.push(ev),
                        Err(_) => break,
                    }
                }
            }
            out
        });
        let items = batch.iter().map(|ev| event_dict(py, ev)).collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.unbind())
    }

    /// Open WebSocket connections: an atomic read, never waits (0 when not running, and while
    /// `start` or `stop` is in progress).
    fn connection_count(&self) -> usize {
        match self.running.try_read() {
            Ok(g) => g.as_ref().map_or(0, |r| r.engine.connection_count()),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().as_ref().map_or(0, |r| r.engine.connection_count())
            }
            Err(std::sync::TryLockError::WouldBlock) => 0,
        }
    }

    /// The engine's counters, as `GET /api/stats` shows them (a dict).
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let stats = self.with_running(py, |r| Ok(r.engine.stats()))?;
        let value = serde_json::to_value(stats).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        to_python(py, &value)
    }

    /// The dead letters (publishes the cluster broker refused — `publish` has no caller to
    /// tell —, snapshots that failed), as `GET /api/dead-letters` shows them: a dict with
    /// `count`, `bytes`, `dropped` and `items` (at most `limit`: in cluster mode over Redis the
    /// shared letters with ids above `after`, then this node's not moved yet, above
    /// `local_after`; each item says its `node` and whether it is `shared`).
    #[pyo3(signature = (after = 0, limit = 100, local_after = 0))]
    fn dead_letters(&self, py: Python<'_>, after: u64, limit: usize, local_after: u64) -> PyResult<Py<PyAny>> {
        let page = self.with_running(py, |r| {
            let engine = r.engine.clone();
            let limit = limit.clamp(1, 10_000);
            Ok(py.detach(|| r.rt.block_on(async move { engine.list_dead_letters(after, local_after, limit).await })))
        })?;
        let value = serde_json::to_value(page).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        to_python(py, &value)
    }

    /// Publish the dead-letter publishes again, oldest first (only `ids`, when given); stops
    /// at the first that fails again. Returns `{"replayed", "remaining"[, "error"]}`.
    #[pyo3(signature = (ids = None))]
    fn replay_dead_letters(&self, py: Python<'_>, ids: Option<Vec<u64>>) -> PyResult<Py<PyAny>> {
        let done = self.with_running(py, |r| {
            let engine = r.engine.clone();
            Ok(py.detach(|| r.rt.block_on(async move { engine.replay_dead_letters(ids.as_deref()).await })))
        })?;
        let value = serde_json::to_value(done).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        to_python(py, &value)
    }

    /// Remove dead letters (all, or those in `ids` — shared ones in cluster mode over Redis —
    /// and `local_ids`, this node's not moved yet); returns how many went.
    #[pyo3(signature = (ids = None, local_ids = None))]
    fn purge_dead_letters(
        &self,
        py: Python<'_>,
        ids: Option<Vec<u64>>,
        local_ids: Option<Vec<u64>>,
    ) -> PyResult<usize> {
        let (n, err) = self.with_running(py, |r| {
            let engine = r.engine.clone();
            Ok(py.detach(|| {
                r.rt.block_on(async move { engine.purge_dead_letters(ids.as_deref(), local_ids.as_deref()).await })
            }))
        })?;
        match err {
            Some(e) => Err(PyRuntimeError::new_err(format!("dead letters: {}", e.message))),
            None => Ok(n),
        }
    }

    /// Serve one connection over the connected stream socket `fd` (a Unix socket from
    /// `socket.socketpair()`; the engine takes the descriptor and closes it when done): HTTP/1.1
    /// and the WebSocket upgrade on `/ws`, exactly as on the port. `weft.asgi` uses it.
    fn serve_socket(&self, py: Python<'_>, fd: i32) -> PyResult<()> {
        use std::os::fd::FromRawFd;
        if fd < 0 {
            return Err(PyValueError::new_err("not a file descriptor"));
        }
        self.with_running(py, |r| {
            // SAFETY: the caller hands the descriptor over (`socket.detach()`); nothing else
            // closes it.
            #[allow(unsafe_code)]
            let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(|e| PyOSError::new_err(e.to_string()))?;
            let _guard = r.rt.enter();
            let io = tokio::net::UnixStream::from_std(std).map_err(|e| PyOSError::new_err(e.to_string()))?;
            let engine = r.engine.clone();
            r.rt.spawn(async move { engine.serve_stream(io).await });
            Ok(())
        })
    }

    /// The port being served (the chosen one when constructed with 0), or None when stopped.
    #[getter]
    fn port(&self, py: Python<'_>) -> Option<u16> {
        self.with_running(py, |r| Ok(r.port)).ok()
    }

    /// Whether the server is running.
    #[getter]
    fn running(&self, py: Python<'_>) -> bool {
        self.with_running(py, |_| Ok(())).is_ok()
    }

    fn __enter__(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        slf.borrow(py).start(py)?;
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            r.engine.shutdown();
            r.rt.shutdown_background();
        }
    }
}
