//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::message::Utf8Bytes;

/// A close status code. Constants name the registered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: endpoint going away (server shutdown, page navigation).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL: Self = Self(1002);
    /// 1003: unsupported data type.
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1005: no status code present (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: closed abnormally (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: invalid frame payload data (e.g. invalid UTF-8 in text).
    pub const INVALID_DATA: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY: Self = Self(1008);
    /// 1009: message too big.
    pub const TOO_BIG: Self = Self(1009);
    /// 1010: client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: internal server error.
    pub const INTERNAL: Self = Self(1011);
    /// 1012: service restart (IANA registry).
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (IANA registry).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: bad gateway (IANA registry).
    pub const BAD_GATEWAY: Self = Self(1014);

    /// Whether this code may appear in a close frame on the wire.
    ///
    /// Allowed: 1000–1003, 1007–1011, the IANA-registered 1012–1014, and 3000–4999 (registered
    /// and private use). Rejected: 0–999, 1004–1006, 1015, 1016–2999 and 5000 and above.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The payload of a close frame: a code and a UTF-8 reason (at most 123 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Status code.
    pub code: CloseCode,
    /// Human-readable reason; may be empty.
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// Longest reason that fits in a control frame.
    pub const MAX_REASON: usize = 123;

    /// A close frame with `code` and `reason` (truncated on a char boundary to fit).
    pub fn new(code: CloseCode, reason: &str) -> Self {
        let mut end = reason.len().min(Self::MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self { code, reason: Utf8Bytes::from(reason[..end].to_owned()) }
    }

    /// Parse a close frame payload. An empty payload means "no status" (`Ok(None)`).
    pub fn parse(payload: &Bytes) -> Result<Option<Self>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::InvalidClosePayload),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(Self { code, reason }))
            }
        }
    }

    /// Encoded payload length.
    pub fn encoded_len(&self) -> usize {
        2 + self.reason.len()
    }

    /// Append the wire payload (code then reason) to `dst`.
    pub fn encode_into(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(&self.code.0.to_be_bytes());
        dst.extend_from_slice(self.reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_validity_table() {
        let valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1014, 3000, 3999, 4000, 4999];
        let invalid = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
        for c in valid {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        for c in invalid {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }

    #[test]
    fn parse_close_payloads() {
        assert_eq!(CloseFrame::parse(&Bytes::new()), Ok(None));
        assert_eq!(CloseFrame::parse(&Bytes::from_static(&[3])), Err(ProtocolError::InvalidClosePayload));
        assert_eq!(CloseFrame::parse(&Bytes::from_static(&[0x03, 0xEC])), Err(ProtocolError::InvalidCloseCode(1004)));
        assert_eq!(CloseFrame::parse(&Bytes::from_static(b"\x03\xe8\xff")), Err(ProtocolError::InvalidUtf8));
        let f = CloseFrame::parse(&Bytes::from_static(b"\x03\xe8bye")).unwrap().unwrap();
        assert_eq!((f.code, &*f.reason), (CloseCode::NORMAL, "bye"));
    }

    #[test]
    fn reason_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let f = CloseFrame::new(CloseCode::NORMAL, &long);
        assert!(f.reason.len() <= CloseFrame::MAX_REASON);
        assert_eq!(f.reason.len() % 2, 0);
    }
}
