//! Typed errors and the close taxonomy.
//!
//! Every way the peer can break the protocol is one [`ProtocolError`] variant, and
//! [`ProtocolError::close_code`] is the single place that maps it to the close code we send.
//! How a connection ended is one [`ConnectionError`] variant: who closed and why.

use std::fmt;

use crate::close::{CloseCode, CloseFrame};

/// The peer violated RFC 6455 / RFC 7692 or one of our limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame used a reserved opcode (3–7, 0xB–0xF).
    ReservedOpcode(u8),
    /// A control frame without FIN.
    FragmentedControl,
    /// A control frame with more than 125 payload bytes.
    ControlTooLarge,
    /// A 64-bit payload length with the most significant bit set.
    InvalidLength,
    /// An RSV bit was set that no negotiated extension defines.
    ReservedBits,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message was in progress.
    ExpectedContinuation,
    /// A client sent an unmasked frame (servers must reject it).
    UnmaskedFrame,
    /// A server sent a masked frame (clients must reject it).
    MaskedFrame,
    /// A close frame carried a code that must not appear on the wire.
    InvalidCloseCode(u16),
    /// A close frame with a one-byte payload.
    InvalidClosePayload,
    /// Text (or a close reason) that is not valid UTF-8.
    InvalidUtf8,
    /// A frame larger than `max_frame_size`.
    FrameTooLarge {
        /// The frame's payload length.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message (after decompression) larger than `max_message_size`.
    MessageTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// A message made of more fragments than `max_fragments`.
    TooManyFragments {
        /// The configured limit.
        max: usize,
    },
    /// Compressed data that does not inflate.
    InvalidCompressedData,
    /// A data frame after the peer's close frame.
    DataAfterClose,
}

impl ProtocolError {
    /// The close code we send when failing the connection for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8 | Self::InvalidCompressedData => CloseCode::INVALID_DATA,
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } | Self::TooManyFragments { .. } => {
                CloseCode::TOO_BIG
            }
            _ => CloseCode::PROTOCOL,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::FragmentedControl => f.write_str("fragmented control frame"),
            Self::ControlTooLarge => f.write_str("control frame payload over 125 bytes"),
            Self::InvalidLength => f.write_str("invalid 64-bit payload length"),
            Self::ReservedBits => f.write_str("reserved bits set without a negotiated extension"),
            Self::UnexpectedContinuation => f.write_str("continuation frame without a message in progress"),
            Self::ExpectedContinuation => f.write_str("new data frame inside a fragmented message"),
            Self::UnmaskedFrame => f.write_str("client frame is not masked"),
            Self::MaskedFrame => f.write_str("server frame is masked"),
            Self::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            Self::InvalidClosePayload => f.write_str("close frame with a 1-byte payload"),
            Self::InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            Self::FrameTooLarge { size, max } => write!(f, "frame of {size} bytes exceeds the limit of {max}"),
            Self::MessageTooLarge { max } => write!(f, "message exceeds the limit of {max} bytes"),
            Self::TooManyFragments { max } => write!(f, "message has more than {max} fragments"),
            Self::InvalidCompressedData => f.write_str("compressed data does not inflate"),
            Self::DataAfterClose => f.write_str("data frame after close"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Which timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timeout {
    /// No pong arrived within `ping_timeout` of a keep-alive ping (we sent close 1011).
    Pong,
    /// Nothing arrived for `idle_timeout` (we sent close 1001).
    Idle,
    /// The peer did not answer our close frame within `close_timeout`.
    CloseHandshake,
}

/// How a connection ended: the close taxonomy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer started the close handshake; its frame (`None`: no status code). We answered.
    PeerClosed(Option<CloseFrame>),
    /// We started the close handshake and the peer answered; our frame.
    LocallyClosed(Option<CloseFrame>),
    /// The peer broke the protocol; we sent a close frame with [`ProtocolError::close_code`].
    ProtocolViolation(ProtocolError),
    /// A timer fired.
    TimedOut(Timeout),
    /// The transport ended without a close handshake (close code 1006, "abnormal").
    Reset,
}

impl ConnectionError {
    /// Whether the close handshake completed (either side started it).
    pub fn is_clean(&self) -> bool {
        matches!(self, Self::PeerClosed(_) | Self::LocallyClosed(_))
    }

    /// The close code that best describes the end: the code exchanged in a clean close,
    /// the code we sent on a violation or timeout, 1006 on reset and 1005 when none was given.
    pub fn code(&self) -> CloseCode {
        match self {
            Self::PeerClosed(f) | Self::LocallyClosed(f) => f.as_ref().map_or(CloseCode::NO_STATUS, |f| f.code),
            Self::ProtocolViolation(e) => e.close_code(),
            Self::TimedOut(Timeout::Pong) => CloseCode::INTERNAL,
            Self::TimedOut(Timeout::Idle) => CloseCode::GOING_AWAY,
            Self::TimedOut(Timeout::CloseHandshake) | Self::Reset => CloseCode::ABNORMAL,
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerClosed(Some(c)) => write!(f, "closed by peer: {} {:?}", c.code, &*c.reason),
            Self::PeerClosed(None) => f.write_str("closed by peer without status"),
            Self::LocallyClosed(Some(c)) => write!(f, "closed locally: {} {:?}", c.code, &*c.reason),
            Self::LocallyClosed(None) => f.write_str("closed locally"),
            Self::ProtocolViolation(e) => write!(f, "peer violated the protocol: {e}"),
            Self::TimedOut(Timeout::Pong) => f.write_str("keep-alive ping timed out"),
            Self::TimedOut(Timeout::Idle) => f.write_str("idle timeout"),
            Self::TimedOut(Timeout::CloseHandshake) => f.write_str("close handshake timed out"),
            Self::Reset => f.write_str("connection reset without close handshake"),
        }
    }
}

impl std::error::Error for ConnectionError {}

/// Why a message could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed: no data may be sent any more.
    Closed,
    /// More than `max_buffered` bytes wait to be written; the peer is not reading.
    Backpressure {
        /// Bytes waiting.
        buffered: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A ping, pong or close payload over 125 bytes.
    ControlTooLarge,
    /// A close code that may not be sent (1005, 1006, 1015, out of range).
    InvalidCloseCode(u16),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("connection is closed or closing"),
            Self::Backpressure { buffered, limit } => {
                write!(f, "{buffered} bytes are waiting to be written (limit {limit}): peer is not reading")
            }
            Self::ControlTooLarge => f.write_str("control frame payload over 125 bytes"),
            Self::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
        }
    }
}

impl std::error::Error for SendError {}
