//! permessage-deflate (RFC 7692): parameter negotiation for both roles, and the per-message
//! compressor and decompressor (flate2 on the zlib-rs backend, which can set window bits).
//!
//! # Window bits 8
//! zlib cannot produce a raw deflate stream with a 256-byte window (`windowBits = 8`). When the
//! negotiation would bind *our compressor* to 8 bits, weft still accepts (the peer keeps
//! compressing what it sends) but sends its own messages uncompressed, which RFC 7692 allows
//! per message (RSV1 clear). Inflating with a larger window than the peer used is always
//! correct, so an 8-bit peer is inflated with 9 bits.
//!
//! # Compress once, send to many
//! [`SharedDeflater`] compresses with no context takeover, so its output does not depend on
//! earlier messages and may be sent to every connection that negotiated permessage-deflate
//! (see [`EncodedMessage`](crate::EncodedMessage)).

#[cfg(feature = "deflate")]
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::ProtocolError;
use crate::extension::ExtensionOffer;

/// The extension token.
pub const EXTENSION_NAME: &str = "permessage-deflate";
#[cfg(feature = "deflate")]
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What this endpoint wants and allows for permessage-deflate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// zlib compression level 0–9 (default 1: fast, most of the gain on typical JSON).
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (default 64 bytes).
    pub threshold: usize,
    /// Ask (client) or require (server) that the server reset its compressor after each message.
    pub server_no_context_takeover: bool,
    /// Ask (client) or require (server) that the client reset its compressor after each message.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window (bits, 9–15) the server may use (default 15).
    pub server_max_window_bits: u8,
    /// Largest LZ77 window (bits, 9–15) the client may use (default 15).
    pub client_max_window_bits: u8,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            level: 1,
            threshold: 64,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// Negotiated parameters, from the point of view of the wire (server and client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// Window bits of the server's compressor.
    pub server_max_window_bits: u8,
    /// Window bits of the client's compressor.
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value that states these parameters (server response).
    pub fn to_header(&self, include_client_bits: bool) -> String {
        let mut s = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        if include_client_bits && self.client_max_window_bits < 15 {
            s.push_str(&format!("; client_max_window_bits={}", self.client_max_window_bits));
        }
        s
    }
}

#[derive(Default)]
struct Parsed {
    server_nct: bool,
    client_nct: bool,
    server_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_bits: Option<Option<u8>>,
}

fn parse_bits(v: &str) -> Result<u8, ()> {
    // RFC 7692 §7.1.2: 1*DIGIT without leading zeros, 8..=15.
    if v.starts_with('0') {
        return Err(());
    }
    match v.parse::<u8>() {
        Ok(b @ 8..=15) => Ok(b),
        _ => Err(()),
    }
}

fn parse_params(offer: &ExtensionOffer, is_offer: bool) -> Result<Parsed, ()> {
    let mut p = Parsed::default();
    for (k, v) in &offer.params {
        match (k.as_str(), v) {
            ("server_no_context_takeover", None) if !p.server_nct => p.server_nct = true,
            ("client_no_context_takeover", None) if !p.client_nct => p.client_nct = true,
            ("server_max_window_bits", Some(v)) if p.server_bits.is_none() => p.server_bits = Some(parse_bits(v)?),
            ("client_max_window_bits", None) if is_offer && p.client_bits.is_none() => p.client_bits = Some(None),
            ("client_max_window_bits", Some(v)) if p.client_bits.is_none() => {
                p.client_bits = Some(Some(parse_bits(v)?))
            }
            _ => return Err(()),
        }
    }
    Ok(p)
}

/// Server side: pick the first acceptable `permessage-deflate` offer. Returns the negotiated
/// parameters and the response header value, or `None` to decline.
pub fn server_negotiate<'a>(
    offers: impl IntoIterator<Item = &'a ExtensionOffer>,
    cfg: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    for offer in offers.into_iter().filter(|o| o.name == EXTENSION_NAME) {
        let Ok(p) = parse_params(offer, true) else { continue };
        let server_bits = p.server_bits.unwrap_or(15).min(cfg.server_max_window_bits.clamp(9, 15));
        // We may only restrict the client's window if it said it can be restricted.
        let (client_bits, state_client_bits) = match p.client_bits {
            Some(offered) => {
                let limit = offered.unwrap_or(15).min(cfg.client_max_window_bits.clamp(9, 15));
                (limit, limit < 15 || offered.is_some())
            }
            None => (15, false),
        };
        let params = DeflateParams {
            server_no_context_takeover: p.server_nct || cfg.server_no_context_takeover,
            client_no_context_takeover: p.client_nct || cfg.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        };
        let header = params.to_header(state_client_bits);
        return Some((params, header));
    }
    None
}

/// Client side: the offer to put in `Sec-WebSocket-Extensions`.
pub fn client_offer(cfg: &DeflateConfig) -> String {
    let mut s = String::from(EXTENSION_NAME);
    if cfg.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if cfg.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if cfg.server_max_window_bits < 15 {
        s.push_str(&format!("; server_max_window_bits={}", cfg.server_max_window_bits.clamp(9, 15)));
    }
    if cfg.client_max_window_bits < 15 {
        s.push_str(&format!("; client_max_window_bits={}", cfg.client_max_window_bits.clamp(9, 15)));
    } else {
        s.push_str("; client_max_window_bits");
    }
    s
}

/// Client side: check the server's response against what we offered.
pub fn client_accept(resp: &ExtensionOffer, cfg: &DeflateConfig) -> Result<DeflateParams, String> {
    let p = parse_params(resp, false).map_err(|()| "invalid permessage-deflate parameters".to_owned())?;
    if cfg.server_max_window_bits < 15 && p.server_bits.is_none_or(|b| b > cfg.server_max_window_bits) {
        return Err("server ignored our server_max_window_bits".into());
    }
    if cfg.server_no_context_takeover && !p.server_nct {
        return Err("server ignored our server_no_context_takeover".into());
    }
    let client_bits = match p.client_bits {
        Some(Some(b)) => b.min(cfg.client_max_window_bits),
        _ => cfg.client_max_window_bits,
    };
    Ok(DeflateParams {
        server_no_context_takeover: p.server_nct,
        client_no_context_takeover: p.client_nct || cfg.client_no_context_takeover,
        server_max_window_bits: p.server_bits.unwrap_or(15),
        client_max_window_bits: client_bits,
    })
}

#[cfg(feature = "deflate")]
/// Compressor for one direction of one connection.
pub struct Deflater {
    c: Option<Compress>,
    level: u32,
    window_bits: u8,
    no_context_takeover: bool,
    threshold: usize,
}

#[cfg(feature = "deflate")]
impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").field("window_bits", &self.window_bits).finish()
    }
}

#[cfg(feature = "deflate")]
impl Deflater {
    /// A compressor with a `window_bits` LZ77 window. With 8 bits (which zlib cannot produce)
    /// [`compress`](Self::compress) declines every message.
    pub fn new(level: u32, window_bits: u8, no_context_takeover: bool, threshold: usize) -> Self {
        Self { c: None, level: level.min(9), window_bits, no_context_takeover, threshold }
    }

    /// Whether the compressor keeps nothing a later message needs: never used yet, or no
    /// context takeover (each message starts afresh).
    pub fn can_forget(&self) -> bool {
        self.c.is_none() || self.no_context_takeover
    }

    /// Free the compression context if it keeps nothing a later message needs (it is made
    /// again on the next message).
    pub fn forget(&mut self) {
        if self.no_context_takeover {
            self.c = None;
        }
    }

    /// Whether a message of `len` bytes should be compressed.
    pub fn wants(&self, len: usize) -> bool {
        self.window_bits >= 9 && len >= self.threshold
    }

    /// Compress one whole message, appending to `out` (without the 4-byte sync trailer).
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let (level, bits) = (self.level, self.window_bits);
        let c = self.c.get_or_insert_with(|| Compress::new_with_window_bits(Compression::new(level), false, bits));
        let start = out.len();
        let mut consumed = 0usize;
        loop {
            out.reserve((input.len() - consumed) / 2 + 64);
            let before = c.total_in();
            // Sync flush: byte-aligned output ending in 00 00 ff ff (RFC 7692 §7.2.1).
            let _ = c.compress_vec(&input[consumed..], out, FlushCompress::Sync);
            consumed += (c.total_in() - before) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.len() >= start + 4 && out[out.len() - 4..] == TRAILER {
            out.truncate(out.len() - 4);
        }
        if out.len() == start {
            // Never emit an empty payload for a compressed message: an empty stored block.
            out.push(0x00);
        }
        if self.no_context_takeover {
            c.reset();
        }
    }
}

#[cfg(feature = "deflate")]
/// Decompressor for one direction of one connection, with bomb protection.
pub struct Inflater {
    d: Option<Decompress>,
    window_bits: u8,
    no_context_takeover: bool,
}

#[cfg(feature = "deflate")]
impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("window_bits", &self.window_bits).finish()
    }
}

#[cfg(feature = "deflate")]
impl Inflater {
    /// A decompressor for a peer compressing with `window_bits` (8 is inflated with 9).
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        Self { d: None, window_bits: window_bits.clamp(9, 15), no_context_takeover }
    }

    /// Whether the decompressor keeps nothing a later message needs: never used yet, or no
    /// context takeover (each message starts afresh).
    pub fn can_forget(&self) -> bool {
        self.d.is_none() || self.no_context_takeover
    }

    /// Free the decompression context if it keeps nothing a later message needs. Call only
    /// between messages.
    pub fn forget(&mut self) {
        if self.no_context_takeover {
            self.d = None;
        }
    }

    /// Inflate the next piece of a compressed message into `out`. `limit` caps `out.len()`:
    /// exceeding it is [`ProtocolError::MessageTooLarge`] (decompression bomb protection); the
    /// output buffer never grows past `limit + 1` bytes.
    pub fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        let bits = self.window_bits;
        let d = self.d.get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        let mut consumed = 0usize;
        loop {
            if out.len() > limit {
                return Err(ProtocolError::MessageTooLarge { max: limit });
            }
            // Grow geometrically (amortised O(n)) but never past the limit plus one byte, so the
            // output buffer can't be inflated beyond `limit` by a bomb.
            if out.len() == out.capacity() {
                let step = out.len().max((input.len() - consumed).saturating_mul(4)).clamp(4096, 16 << 20);
                out.reserve_exact(step.min(limit.saturating_add(1) - out.len()));
            }
            let (before_in, before_out) = (d.total_in(), out.len());
            let status = d.decompress_vec(&input[consumed..], out, FlushDecompress::Sync);
            let used = (d.total_in() - before_in) as usize;
            consumed += used;
            match status {
                Ok(Status::Ok | Status::BufError) => {}
                // A block with BFINAL set (RFC 7692 §7.2.3.3): the deflate stream ended; whatever
                // follows starts a new one.
                Ok(Status::StreamEnd) => d.reset(false),
                Err(_) => return Err(ProtocolError::InvalidCompressedData),
            }
            if out.len() > limit {
                return Err(ProtocolError::MessageTooLarge { max: limit });
            }
            let progressed = out.len() > before_out || used > 0;
            if consumed == input.len() && (out.len() < out.capacity() || !progressed) {
                return Ok(());
            }
            if !progressed {
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }

    /// End of a compressed message: feed the sync trailer, reset if no context takeover.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        self.inflate(&TRAILER, out, limit)?;
        if self.no_context_takeover {
            if let Some(d) = &mut self.d {
                d.reset(false);
            }
        }
        Ok(())
    }
}

/// A compressor whose output is independent of earlier messages (no context takeover), so one
/// compressed payload can be sent on many connections. Use it with
/// [`EncodedMessage::new`](crate::EncodedMessage::new).
#[cfg(feature = "deflate")]
#[derive(Debug)]
pub struct SharedDeflater(Deflater);

#[cfg(feature = "deflate")]
impl SharedDeflater {
    /// A shared compressor at `level` (0–9) with a full 15-bit window. Peers that negotiated a
    /// smaller server window get the uncompressed form instead.
    pub fn new(level: u32, threshold: usize) -> Self {
        Self(Deflater::new(level, 15, true, threshold))
    }

    /// Compress one message; `None` when below the threshold.
    pub fn compress(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        if !self.0.wants(payload.len()) {
            return None;
        }
        let mut out = Vec::new();
        self.0.compress(payload, &mut out);
        Some(out)
    }
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use super::*;
    use crate::extension;

    fn offer(s: &str) -> Vec<ExtensionOffer> {
        extension::parse(s).into_iter().map(Result::unwrap).collect()
    }

    #[test]
    fn roundtrip_with_and_without_context_takeover() {
        for nct in [false, true] {
            for bits in [9u8, 12, 15] {
                let mut c = Deflater::new(6, bits, nct, 0);
                let mut d = Inflater::new(bits, nct);
                for i in 0..20 {
                    let msg = format!("hello hello hello {i} {}", "abc".repeat(i * 50));
                    let mut z = Vec::new();
                    c.compress(msg.as_bytes(), &mut z);
                    let mut out = Vec::new();
                    d.inflate(&z, &mut out, 1 << 20).unwrap();
                    d.finish(&mut out, 1 << 20).unwrap();
                    assert_eq!(out, msg.as_bytes());
                }
            }
        }
    }

    #[test]
    fn rfc7692_examples_inflate() {
        // RFC 7692 §7.2.3.1: "Hello" compressed.
        let mut d = Inflater::new(15, false);
        let mut out = Vec::new();
        d.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100).unwrap();
        d.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.2: the second "Hello" using the shared window.
        let mut out = Vec::new();
        d.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], &mut out, 100).unwrap();
        d.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn decompression_bomb_is_stopped_at_the_limit() {
        let mut c = Deflater::new(9, 15, false, 0);
        let big = vec![b'a'; 10 << 20];
        let mut z = Vec::new();
        c.compress(&big, &mut z);
        assert!(z.len() < 20_000);
        let mut d = Inflater::new(15, false);
        let mut out = Vec::new();
        assert_eq!(d.inflate(&z, &mut out, 1 << 20), Err(ProtocolError::MessageTooLarge { max: 1 << 20 }));
        assert!(out.len() <= (1 << 20) + 1, "inflated {} bytes", out.len());
    }

    #[test]
    fn no_limit_inflates() {
        // usize::MAX as the limit ("no limit") once overflowed `limit + 1` and stalled inflation.
        let mut c = Deflater::new(1, 15, false, 0);
        let text = b"hello hello hello hello".repeat(100);
        let mut z = Vec::new();
        c.compress(&text, &mut z);
        let mut d = Inflater::new(15, false);
        let mut out = Vec::new();
        d.inflate(&z, &mut out, usize::MAX).unwrap();
        d.finish(&mut out, usize::MAX).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Inflater::new(15, false);
        let mut out = Vec::new();
        let r = d.inflate(&[0xff; 64], &mut out, 1 << 20).and_then(|_| d.finish(&mut out, 1 << 20));
        assert_eq!(r, Err(ProtocolError::InvalidCompressedData));
    }

    #[test]
    fn window_bits_8_never_panics() {
        // Our compressor bound to 8 bits: accepted, but messages go out uncompressed.
        let c = Deflater::new(6, 8, false, 0);
        assert!(!c.wants(1000));
        // Peer compressing with 8 bits: inflated with 9.
        let mut d = Inflater::new(8, false);
        let mut z = Vec::new();
        Deflater::new(6, 9, false, 0).compress(b"abcabcabc", &mut z);
        let mut out = Vec::new();
        d.inflate(&z, &mut out, 100).unwrap();
        d.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"abcabcabc");
        let cfg = DeflateConfig::default();
        let (p, h) = server_negotiate(&offer("permessage-deflate; server_max_window_bits=8"), &cfg).unwrap();
        assert_eq!(p.server_max_window_bits, 8);
        assert!(h.contains("server_max_window_bits=8"));
    }

    #[test]
    fn server_negotiation() {
        let cfg = DeflateConfig::default();
        let (p, h) = server_negotiate(&offer("permessage-deflate; client_max_window_bits"), &cfg).unwrap();
        assert_eq!(h, "permessage-deflate");
        assert_eq!(p.client_max_window_bits, 15);
        // Invalid first offer is skipped, second accepted.
        let (p, h) = server_negotiate(
            &offer("permessage-deflate; server_max_window_bits=7, permessage-deflate; server_no_context_takeover"),
            &cfg,
        )
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(h, "permessage-deflate; server_no_context_takeover");
        // Client bits value is honoured and stated.
        let (p, h) = server_negotiate(&offer("permessage-deflate; client_max_window_bits=10"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        assert_eq!(h, "permessage-deflate; client_max_window_bits=10");
        // Unknown parameters and duplicates decline.
        assert!(server_negotiate(&offer("permessage-deflate; foo"), &cfg).is_none());
        assert!(
            server_negotiate(
                &offer("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
                &cfg
            )
            .is_none()
        );
        assert!(server_negotiate(&offer("x-webkit-deflate-frame"), &cfg).is_none());
    }

    #[test]
    fn client_checks_the_response() {
        let cfg = DeflateConfig::default();
        assert_eq!(client_offer(&cfg), "permessage-deflate; client_max_window_bits");
        let p =
            client_accept(&offer("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9")[0], &cfg)
                .unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (10, 9));
        assert!(client_accept(&offer("permessage-deflate; bogus")[0], &cfg).is_err());
        assert!(client_accept(&offer("permessage-deflate; client_max_window_bits")[0], &cfg).is_err());
    }
}
