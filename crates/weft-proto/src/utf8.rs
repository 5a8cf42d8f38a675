//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! Text may be split across fragments, and a fragment may itself arrive in several reads, so a
//! code point can straddle any boundary. [`Utf8Validator`] keeps at most three bytes of an
//! unfinished code point between calls and validates everything else with simdutf8. It fails as
//! soon as the input can no longer be the prefix of valid UTF-8 (for example `F4 90`, which
//! would encode a code point above U+10FFFF), not only at the end of the message: this is what
//! Autobahn's fail-fast cases (6.4.*) check.

/// Error: the bytes seen so far cannot be (a prefix of) valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validate a complete buffer (fast path for unfragmented text).
#[inline]
pub fn validate(bytes: &[u8]) -> Result<(), InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes).map(|_| ()).map_err(|_| InvalidUtf8)
}

/// Validate a complete buffer and view it as text.
#[inline]
pub fn as_str(bytes: &[u8]) -> Result<&str, InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| InvalidUtf8)
}

/// State carried between pieces of one text message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget any carried state (start of a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Whether the input so far ends exactly on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }

    /// Validate the next piece. Afterwards, call [`finish`](Self::finish) at the end of the
    /// message to reject a truncated final code point.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            // Complete the carried code point one byte at a time; it needs at most 3 more.
            while self.partial_len < 4 && !data.is_empty() {
                self.partial[self.partial_len as usize] = data[0];
                self.partial_len += 1;
                data = &data[1..];
                match std::str::from_utf8(&self.partial[..self.partial_len as usize]) {
                    Ok(_) => {
                        self.partial_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
            if self.partial_len > 0 {
                // Still unfinished: `data` is exhausted (the loop above stops at 4 bytes only
                // through Ok or a definite error).
                return Ok(());
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.error_len().is_some() {
                    return Err(InvalidUtf8);
                }
                // A valid but unfinished code point at the end: keep it.
                let tail = &data[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// End of message: the last code point must be complete.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<(), InvalidUtf8>> {
        (0..=bytes.len())
            .map(|cut| {
                let mut v = Utf8Validator::new();
                v.feed(&bytes[..cut])?;
                v.feed(&bytes[cut..])?;
                v.finish()
            })
            .collect()
    }

    #[test]
    fn valid_text_passes_at_every_split() {
        let s = "κόσμε ascii 😀 \u{10FFFF} \u{800} \u{FFFD}".as_bytes();
        assert!(split_everywhere(s).iter().all(|r| r.is_ok()));
        // Byte at a time.
        let mut v = Utf8Validator::new();
        for b in s {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn invalid_text_fails_at_every_split() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"abc\xff",
            b"\xe0\x80\xaf",
        ] {
            assert!(split_everywhere(bad).iter().all(|r| r.is_err()), "{bad:?}");
        }
    }

    #[test]
    fn fails_fast_on_an_impossible_prefix() {
        // The beginning of U+110000 is impossible even though the sequence is unfinished.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xce\xba\xf4\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        v.feed(b"\xf4").unwrap();
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_final_code_point_fails_at_finish() {
        let mut v = Utf8Validator::new();
        v.feed(b"ab\xe2\x82").unwrap();
        assert!(!v.is_complete());
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn agrees_with_std_on_all_two_byte_inputs() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let bytes = [a, b];
                let std_ok = std::str::from_utf8(&bytes).is_ok();
                let mut v = Utf8Validator::new();
                let ours = v.feed(&bytes[..1]).and_then(|_| v.feed(&bytes[1..])).and_then(|_| v.finish());
                assert_eq!(ours.is_ok(), std_ok, "{bytes:?}");
                assert_eq!(validate(&bytes).is_ok(), std_ok);
            }
        }
    }
}
