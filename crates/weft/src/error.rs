//! The library's error: opaque, with predicates for what callers act on.

use std::fmt;
use std::io;

use http::StatusCode;
use weft_proto::{CloseCode, ConnectionError, HandshakeError, SendError};

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a WebSocket. Use the predicates (`is_closed`,
/// `is_handshake`, …) and accessors rather than matching on the `Display` text, which may change.
pub struct Error {
    kind: Box<Kind>,
}

/// Most bytes of a refused upgrade's response body kept in the error.
pub(crate) const MAX_REFUSAL_BODY: usize = 4096;

#[derive(Debug)]
pub(crate) enum Kind {
    Io(io::Error),
    Handshake(HandshakeError),
    /// The server answered the upgrade with another status; the body says why.
    Refused(HandshakeError, bytes::Bytes),
    Closed(ConnectionError),
    Send(SendError),
    Tls(String),
    Timeout(&'static str),
    Fragment,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Self { kind: Box::new(kind) }
    }

    /// The connection ended (any way but a local I/O error); see [`connection_error`](Self::connection_error).
    pub fn is_closed(&self) -> bool {
        matches!(*self.kind, Kind::Closed(_) | Kind::Send(SendError::Closed))
    }

    /// The opening handshake failed (bad status, bad headers, refused upgrade).
    pub fn is_handshake(&self) -> bool {
        matches!(*self.kind, Kind::Handshake(_) | Kind::Refused(..))
    }

    /// A timeout: connect/handshake time limit, keep-alive pong, idle or close handshake.
    pub fn is_timeout(&self) -> bool {
        matches!(*self.kind, Kind::Timeout(_) | Kind::Closed(ConnectionError::TimedOut(_)))
    }

    /// More than `max_buffered` bytes wait to be written: the peer is not reading.
    pub fn is_backpressure(&self) -> bool {
        matches!(*self.kind, Kind::Send(SendError::Backpressure { .. }))
    }

    /// The peer broke the protocol (we closed with 1002, 1007 or 1009).
    pub fn is_protocol(&self) -> bool {
        matches!(*self.kind, Kind::Closed(ConnectionError::ProtocolViolation(_)))
    }

    /// A transport error (socket or TLS).
    pub fn is_io(&self) -> bool {
        matches!(*self.kind, Kind::Io(_) | Kind::Tls(_))
    }

    /// How the connection ended, when it did.
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        match &*self.kind {
            Kind::Closed(e) => Some(e),
            _ => None,
        }
    }

    /// The handshake failure, when it was one.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match &*self.kind {
            Kind::Handshake(e) | Kind::Refused(e, _) => Some(e),
            _ => None,
        }
    }

    /// The body of the server's answer when it refused the upgrade (a 401's reason, say), up
    /// to 4 KiB; what arrived within the handshake time limit.
    pub fn response_body(&self) -> Option<&[u8]> {
        match &*self.kind {
            Kind::Refused(_, body) => Some(body),
            _ => None,
        }
    }

    /// The HTTP status of a failed handshake: what the server answered (client side) or what
    /// we answered (server side).
    pub fn status(&self) -> Option<StatusCode> {
        self.handshake_error().map(HandshakeError::status)
    }

    /// The close code describing how the connection ended.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.connection_error().map(ConnectionError::code)
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &*self.kind {
            Kind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            Kind::Io(e) => write!(f, "I/O error: {e}"),
            Kind::Handshake(e) => write!(f, "handshake failed: {e}"),
            Kind::Refused(e, body) => {
                write!(f, "handshake failed: {e}")?;
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if !text.is_empty() { write!(f, ": {text}") } else { Ok(()) }
            }
            Kind::Closed(e) => write!(f, "connection closed: {e}"),
            Kind::Send(e) => write!(f, "cannot send: {e}"),
            Kind::Tls(e) => write!(f, "TLS error: {e}"),
            Kind::Timeout(what) => write!(f, "timed out: {what}"),
            Kind::Fragment => f.write_str("fragment events need WebSocket::recv_event (stream_fragments is on)"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            Kind::Io(e) => Some(e),
            Kind::Handshake(e) | Kind::Refused(e, _) => Some(e),
            Kind::Closed(e) => Some(e),
            Kind::Send(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::new(Kind::Io(e))
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Self::new(Kind::Handshake(e))
    }
}

impl From<ConnectionError> for Error {
    fn from(e: ConnectionError) -> Self {
        Self::new(Kind::Closed(e))
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        Self::new(Kind::Send(e))
    }
}
