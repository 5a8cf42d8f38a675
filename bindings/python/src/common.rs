//! What both clients share: options, the handshake request, message conversion and the
//! exceptions of `weft.exceptions`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyType};
use weft_proto::handshake::{self, ClientHandshake, ClientHandshakeFailed, HandshakeError};
use weft_proto::{CloseFrame, Config, Connection, ConnectionError, DeflateConfig, Message, SendError};

/// Connection options, from the keyword arguments of `connect`.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) compression: bool,
    pub(crate) max_size: Option<usize>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) ca_file: Option<String>,
    pub(crate) server_hostname: Option<String>,
}

fn seconds(name: &str, v: Option<f64>) -> PyResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!("{name} must be a non-negative number of seconds, not {s}"))),
    }
}

impl Options {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        url: &str,
        headers: Option<&Bound<'_, PyAny>>,
        subprotocols: Option<Vec<String>>,
        compression: bool,
        max_size: Option<usize>,
        ping_interval: Option<f64>,
        ping_timeout: Option<f64>,
        close_timeout: Option<f64>,
        ca_file: Option<String>,
        server_hostname: Option<String>,
    ) -> PyResult<Self> {
        let uri = parse_uri(url)?;
        let mut map = HeaderMap::new();
        if let Some(h) = headers {
            for (k, v) in header_pairs(h)? {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| PyValueError::new_err(format!("invalid header name {k:?}")))?;
                let value =
                    HeaderValue::from_str(&v).map_err(|_| PyValueError::new_err(format!("invalid value for {k}")))?;
                map.append(name, value);
            }
        }
        Ok(Self {
            uri,
            headers: map,
            subprotocols: subprotocols.unwrap_or_default(),
            compression,
            max_size,
            ping_interval: seconds("ping_interval", ping_interval)?,
            ping_timeout: seconds("ping_timeout", ping_timeout)?,
            close_timeout: seconds("close_timeout", close_timeout)?.unwrap_or(Duration::from_secs(10)),
            ca_file,
            server_hostname,
        })
    }

    pub(crate) fn deflate(&self) -> Option<DeflateConfig> {
        self.compression.then(DeflateConfig::default)
    }

    /// The codec configuration. `timers`: whether weft-proto drives pings (the sync client);
    /// the async client keeps time on the event loop instead.
    pub(crate) fn config(&self, timers: bool) -> Config {
        let limit = self.max_size.unwrap_or(usize::MAX);
        let mut cfg = Config::default()
            .max_message_size(limit)
            .max_frame_size(limit)
            // No size limit means no fragment-count limit either.
            .max_fragments(if self.max_size.is_none() { usize::MAX } else { Config::default().max_fragments })
            .close_timeout(self.close_timeout)
            .deflate(self.deflate());
        if timers {
            cfg = cfg.ping_interval(self.ping_interval);
            if let Some(t) = self.ping_timeout {
                cfg = cfg.ping_timeout(t);
            }
        }
        cfg
    }

    /// weft-proto's sans-IO client handshake for these options (the request to write, then
    /// what the server answers fed to it).
    pub(crate) fn handshake(&self) -> PyResult<ClientHandshake> {
        ClientHandshake::new(&self.uri, &self.subprotocols, self.deflate().as_ref(), &self.headers)
            .map_err(|e| handshake_error(None, &e))
    }

    /// Host and port to connect to, and whether TLS is wanted.
    pub(crate) fn target(&self) -> PyResult<(String, u16, bool)> {
        let (host, port) = handshake::host_port(&self.uri).map_err(|e| invalid_uri(&e.to_string()))?;
        Ok((host.to_owned(), port, handshake::is_tls(&self.uri)))
    }
}

fn header_pairs(h: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    // A mapping (dict, websockets' Headers, ...) through items(); else (name, value) pairs.
    let items = if h.hasattr("items")? { h.call_method0("items")? } else { h.clone() };
    items
        .try_iter()
        .map_err(|_| PyTypeError::new_err("headers must be a mapping or an iterable of (name, value) pairs"))?
        .map(|kv| kv?.extract::<(String, String)>())
        .collect()
}

fn parse_uri(url: &str) -> PyResult<Uri> {
    let uri: Uri = url.parse().map_err(|e| invalid_uri(&format!("{url:?} is not a valid URI: {e}")))?;
    // weft-proto's `host_port` also takes http:// and https:// (the server side's view); a
    // WebSocket client URL is ws:// or wss:// only, as in `websockets`.
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("ws") || s.eq_ignore_ascii_case("wss") => {}
        Some(s) => return Err(invalid_uri(&format!("{url:?}: scheme isn't ws or wss (got {s:?})"))),
        None => return Err(invalid_uri(&format!("{url:?}: missing scheme (ws:// or wss://)"))),
    }
    handshake::host_port(&uri).map_err(|e| invalid_uri(&format!("{url:?}: {e}")))?;
    Ok(uri)
}

/// `parse_url(url) -> (secure, host, port, resource)`.
#[pyfunction]
pub(crate) fn parse_url(url: &str) -> PyResult<(bool, String, u16, String)> {
    let uri = parse_uri(url)?;
    let (host, port) = handshake::host_port(&uri).map_err(|e| invalid_uri(&e.to_string()))?;
    let resource = uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((handshake::is_tls(&uri), host.to_owned(), port, if resource.is_empty() { "/".into() } else { resource }))
}

static EXCEPTIONS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A class of `weft.exceptions`.
pub(crate) fn exception<'py>(py: Python<'py>, name: &str) -> Bound<'py, PyType> {
    let module = EXCEPTIONS
        .get_or_try_init(py, || py.import("weft.exceptions").map(|m| m.into_any().unbind()))
        .expect("weft.exceptions is importable");
    module.bind(py).getattr(name).and_then(|c| Ok(c.cast_into::<PyType>()?)).expect("exception class exists")
}

pub(crate) fn invalid_uri(msg: &str) -> PyErr {
    Python::attach(|py| PyErr::from_type(exception(py, "InvalidURI"), msg.to_owned()))
}

/// The exception for a refused or malformed handshake: `InvalidStatus` (with the status code,
/// headers and body) when the server answered with something other than 101.
pub(crate) fn handshake_error(response: Option<(&http::Response<()>, &[u8])>, e: &HandshakeError) -> PyErr {
    Python::attach(|py| match (e, response) {
        (HandshakeError::Status(status), Some((resp, body))) => {
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            match exception(py, "InvalidStatus").call1((status.as_u16(), headers, PyBytes::new(py, body))) {
                Ok(obj) => PyErr::from_value(obj),
                Err(err) => err,
            }
        }
        (HandshakeError::InvalidAccept, Some((resp, _))) if !resp.headers().contains_key("sec-websocket-accept") => {
            PyErr::from_type(exception(py, "InvalidHandshake"), "missing Sec-WebSocket-Accept header")
        }
        (HandshakeError::InvalidUri(m), _) => PyErr::from_type(exception(py, "InvalidURI"), m.clone()),
        (HandshakeError::Malformed(m), _) => PyErr::from_type(exception(py, "InvalidMessage"), m.clone()),
        _ => PyErr::from_type(exception(py, "InvalidHandshake"), e.to_string()),
    })
}

/// `handshake_error` for a failed response, given what the server sent: when that was not
/// HTTP, its first line goes on the exception as `first_line` (the `websockets` drop-in reports
/// it as websockets does).
pub(crate) fn feed_error(f: &ClientHandshakeFailed, received: &[u8]) -> PyErr {
    let err = handshake_error(f.response.as_ref().map(|r| (r, &f.body[..])), &f.error);
    if matches!(f.error, HandshakeError::Malformed(_)) {
        let line = received.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line).trim_end_matches('\r').to_owned();
        Python::attach(|py| {
            let _ = err.value(py).setattr("first_line", line);
        });
    }
    err
}

/// How a connection ended, kept to raise the same exception on every later call.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub(crate) code: u16,
    pub(crate) reason: String,
    /// Close frames went both ways with 1000, 1001 or no code: `ConnectionClosedOK`.
    pub(crate) ok: bool,
}

impl Ended {
    pub(crate) fn from_error(e: &ConnectionError) -> Self {
        let code = e.code().0;
        let reason = match e {
            ConnectionError::PeerClosed(Some(f)) | ConnectionError::LocallyClosed(Some(f)) => f.reason.to_string(),
            ConnectionError::ProtocolViolation(p) => p.to_string(),
            ConnectionError::TimedOut(t) => format!("{t:?} timeout"),
            _ => String::new(),
        };
        Self { code, reason, ok: e.is_clean() && matches!(code, 1000 | 1001 | 1005) }
    }

    pub(crate) fn reset() -> Self {
        Self { code: 1006, reason: String::new(), ok: false }
    }

    pub(crate) fn to_err(&self, py: Python<'_>) -> PyErr {
        let class = exception(py, if self.ok { "ConnectionClosedOK" } else { "ConnectionClosedError" });
        match class.call1((self.code, self.reason.as_str())) {
            Ok(obj) => PyErr::from_value(obj),
            Err(err) => err,
        }
    }
}

/// A data message as `str` or `bytes`.
pub(crate) fn to_python(py: Python<'_>, m: &Message) -> Option<Py<PyAny>> {
    match m {
        Message::Text(t) => Some(PyString::new(py, t.as_str()).into_any().unbind()),
        Message::Binary(b) => Some(PyBytes::new(py, b).into_any().unbind()),
        _ => None,
    }
}

/// `str` → text message, bytes-like → binary message.
pub(crate) fn from_python(data: &Bound<'_, PyAny>) -> PyResult<Message> {
    if let Ok(s) = data.cast::<PyString>() {
        return Ok(Message::text(s.to_str()?.to_owned()));
    }
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(Message::binary(bytes::Bytes::copy_from_slice(b.as_bytes())));
    }
    if let Ok(v) = data.extract::<Vec<u8>>() {
        if !data.is_instance_of::<pyo3::types::PyList>() {
            return Ok(Message::binary(v));
        }
    }
    Err(PyTypeError::new_err(format!(
        "data must be str (text message) or bytes-like (binary message), not {}",
        data.get_type().name()?
    )))
}

/// Frame `data` (`str`: text, bytes-like: binary) into `conn`, straight from Python's memory
/// for `str` and `bytes` (one copy fewer than building a `Message`). Returns the payload length,
/// or the codec's refusal.
pub(crate) fn send_python(conn: &mut Connection, data: &Bound<'_, PyAny>) -> PyResult<Result<usize, SendError>> {
    if let Ok(s) = data.cast::<PyString>() {
        let s = s.to_str()?;
        return Ok(conn.send_borrowed(true, s.as_bytes()).map(|()| s.len()));
    }
    if let Ok(b) = data.cast::<PyBytes>() {
        let b = b.as_bytes();
        return Ok(conn.send_borrowed(false, b).map(|()| b.len()));
    }
    let msg = from_python(data)?;
    let n = msg.payload().len();
    Ok(conn.send(msg).map(|()| n))
}

pub(crate) fn close_frame(code: u16, reason: &str) -> PyResult<Option<CloseFrame>> {
    if reason.len() > CloseFrame::MAX_REASON {
        return Err(PyValueError::new_err("close reason longer than 123 bytes"));
    }
    Ok(Some(CloseFrame::new(weft_proto::CloseCode::from(code), reason)))
}
