//! The fan-out generator's receive path: frames read straight off the socket, many per read,
//! and each event's offset and send time found with two substring searches — no message
//! allocated, no JSON parsed, no UTF-8 checked. A subscriber is handed over here once its
//! handshake and subscription are done (over weft's client), with the bytes that client had
//! already read ([`weft::proto::Connection::take_unread`]).
//!
//! What it does not handle is refused with a reason rather than miscounted: compressed or
//! fragmented messages (`--deflate` keeps weft's full client) and masked frames.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock, Mutex};

use memchr::memmem::Finder;
use weft::proto::frame::{FrameHeader, OpCode};

/// Bytes one subscriber may hold of a frame not complete yet (events are small; a peer
/// sending more is misbehaving).
const CARRY_LIMIT: usize = 1 << 20;

/// One read's worth of input, shared by every subscriber of the thread.
pub(crate) const READ_BUFFER: usize = 256 << 10;

thread_local! {
    pub(crate) static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

type Hist = hdrhistogram::Histogram<u64>;

/// Every generator thread's latency histogram: one per thread, not one per subscriber (with 3
/// significant digits each grows to ~100 KB, which for 10,000 subscribers is a gigabyte and
/// a cache miss per event).
static LATENCIES: Mutex<Vec<Arc<Mutex<Hist>>>> = Mutex::new(Vec::new());

thread_local! {
    static LATENCY: Arc<Mutex<Hist>> = {
        let h = Arc::new(Mutex::new(Hist::new(3).expect("histogram")));
        LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&h));
        h
    };
}

/// Record into this thread's latency histogram.
pub(crate) fn with_latency<R>(f: impl FnOnce(&mut Hist) -> R) -> R {
    LATENCY.with(|h| f(&mut h.lock().unwrap_or_else(|e| e.into_inner())))
}

/// Every thread's latencies, merged.
pub(crate) fn latencies() -> Hist {
    let mut all = Hist::new(3).expect("histogram");
    for h in LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = all.add(&*h.lock().unwrap_or_else(|e| e.into_inner()));
    }
    all
}

static OFFSET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"offset\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));

/// The digits at the start of `s`.
fn digits(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s.iter().take(20) {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some(v)
}

/// An event's offset and the time (ns since the epoch) its publisher stamped into it.
pub(crate) fn offset_and_sent(payload: &[u8]) -> Option<(u64, u64)> {
    let i = OFFSET.find(payload)? + OFFSET.needle().len();
    let offset = digits(&payload[i..])?;
    let j = i + SENT.find(&payload[i..])? + SENT.needle().len();
    Some((offset, digits(&payload[j..])?))
}

/// Order checks for one subscriber.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) delivered: u64,
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
}

/// One subscriber's receive state.
pub(crate) struct Receiver {
    /// The start of a frame not complete yet.
    carry: Vec<u8>,
    last: u64,
    pub(crate) tally: Tally,
    /// Pongs (and a close reply) to write, masked.
    pub(crate) replies: Vec<u8>,
    /// The server sent a close frame (its code, 1005 without one).
    pub(crate) closed: Option<u16>,
    mask: [u8; 4],
}

impl Receiver {
    /// A receiver starting with `unread`, the bytes the handshake's client read ahead.
    pub(crate) fn new(unread: &[u8], seed: u32) -> Self {
        let m = seed.wrapping_mul(0x9e37_79b9) | 0x0101_0101;
        Self {
            carry: unread.to_vec(),
            last: 0,
            tally: Tally::default(),
            replies: Vec::new(),
            closed: None,
            mask: m.to_le_bytes(),
        }
    }

    /// Take `data` (one read) received at `now_ns`; every complete event is counted and its
    /// latency recorded. An error ends the subscriber with its reason.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        now_ns: u64,
        hist: &mut hdrhistogram::Histogram<u64>,
    ) -> Result<(), String> {
        if self.carry.is_empty() {
            let used = self.frames(data, now_ns, hist)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(data);
            let used = self.frames(&carry, now_ns, hist)?;
            carry.drain(..used);
            self.carry = carry;
        }
        if self.carry.len() > CARRY_LIMIT {
            return Err(format!("a frame of more than {CARRY_LIMIT} bytes"));
        }
        Ok(())
    }

    /// Handle the complete frames at the start of `buf`; how many bytes they took.
    fn frames(&mut self, buf: &[u8], now_ns: u64, hist: &mut hdrhistogram::Histogram<u64>) -> Result<usize, String> {
        let mut at = 0;
        while self.closed.is_none() {
            let Some((h, hl)) = FrameHeader::decode(&buf[at..]).map_err(|e| e.to_string())? else { break };
            let len = usize::try_from(h.payload_len).map_err(|_| "frame too long".to_owned())?;
            if buf.len() - at - hl < len {
                break;
            }
            if h.mask.is_some() {
                return Err("a masked frame from the server".into());
            }
            let payload = &buf[at + hl..at + hl + len];
            match h.opcode {
                OpCode::Text if h.fin && !h.rsv1 => self.event(payload, now_ns, hist),
                OpCode::Text | OpCode::Binary | OpCode::Continuation if h.rsv1 || !h.fin => {
                    return Err("a compressed or fragmented message (use --deflate's full client)".into());
                }
                OpCode::Binary | OpCode::Continuation | OpCode::Pong => {}
                OpCode::Ping => self.reply(OpCode::Ping, payload),
                OpCode::Close => {
                    self.closed = Some(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])));
                    self.reply(OpCode::Close, payload.get(..2).unwrap_or_default());
                }
                OpCode::Text => unreachable!("handled above"),
            }
            at += hl + len;
        }
        Ok(at)
    }

    fn event(&mut self, payload: &[u8], now_ns: u64, hist: &mut hdrhistogram::Histogram<u64>) {
        // Replies (to the subscribe, say) carry no offset and are not events.
        if let Some((off, sent)) = offset_and_sent(payload) {
            self.count(off, sent, now_ns, hist);
        }
    }

    /// Count the event at `off`, sent at `sent` and received at `now_ns`.
    pub(crate) fn count(&mut self, off: u64, sent: u64, now_ns: u64, hist: &mut hdrhistogram::Histogram<u64>) {
        let _ = hist.record(now_ns.saturating_sub(sent).max(1));
        let t = &mut self.tally;
        if off > self.last + 1 && self.last != 0 {
            t.gaps += off - self.last - 1;
        } else if off == self.last {
            t.duplicates += 1;
        } else if off < self.last {
            t.out_of_order += 1;
        }
        self.last = self.last.max(off);
        t.delivered += 1;
    }

    /// Queue a pong for a ping (or a close for a close), masked as a client must.
    fn reply(&mut self, to: OpCode, payload: &[u8]) {
        let op = if to == OpCode::Ping { OpCode::Pong } else { OpCode::Close };
        self.replies.push(0x80 | op.as_u8());
        self.replies.push(0x80 | payload.len().min(125) as u8);
        self.replies.extend_from_slice(&self.mask);
        for (i, b) in payload.iter().take(125).enumerate() {
            self.replies.push(b ^ self.mask[i % 4]);
        }
    }

    /// A close frame to end the subscription with (1000), masked.
    pub(crate) fn close_frame(&mut self) -> Vec<u8> {
        self.reply(OpCode::Close, &1000u16.to_be_bytes());
        std::mem::take(&mut self.replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![op];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn event(offset: u64, sent: u64) -> Vec<u8> {
        let pad = "x".repeat(200);
        let text = format!(
            r#"{{"type":"event","topic":"bench","offset":{offset},"epoch":"e1","payload":{{"t":{sent},"p":"{pad}"}}}}"#
        );
        frame(0x81, text.as_bytes())
    }

    fn hist() -> hdrhistogram::Histogram<u64> {
        hdrhistogram::Histogram::new(3).unwrap()
    }

    #[test]
    fn events_split_anywhere_are_counted_once_in_order() {
        let mut all = Vec::new();
        for o in 1..=50 {
            all.extend(event(o, 1_000));
        }
        // Every split point of the first frames, and reads of every size.
        for step in [1, 2, 3, 7, 13, 100, 257, all.len()] {
            let mut r = Receiver::new(&all[..step.min(all.len())], 1);
            let mut h = hist();
            for chunk in all[step.min(all.len())..].chunks(step) {
                r.feed(chunk, 2_000, &mut h).unwrap();
            }
            r.feed(&[], 2_000, &mut h).unwrap();
            assert_eq!(r.tally, Tally { delivered: 50, ..Tally::default() }, "step {step}");
            assert_eq!(h.len(), 50);
            assert_eq!(h.max(), 1_000);
        }
    }

    #[test]
    fn gaps_duplicates_and_disorder_are_told_apart() {
        let mut r = Receiver::new(&[], 1);
        let mut h = hist();
        for o in [1, 2, 5, 5, 3, 6] {
            r.feed(&event(o, 1), 2, &mut h).unwrap();
        }
        assert_eq!(r.tally, Tally { delivered: 6, gaps: 2, duplicates: 1, out_of_order: 1 });
    }

    #[test]
    fn replies_without_offsets_are_not_events_and_pings_get_masked_pongs() {
        let mut r = Receiver::new(&[], 7);
        let mut h = hist();
        let mut input = frame(0x81, br#"{"type":"subscribed","results":[{"ok":true}]}"#);
        input.extend(frame(0x89, b"abc"));
        r.feed(&input, 2, &mut h).unwrap();
        assert_eq!(r.tally.delivered, 0);
        assert_eq!(r.replies.len(), 2 + 4 + 3);
        assert_eq!(r.replies[..2], [0x8a, 0x83]);
        let key = &r.replies[2..6];
        let unmasked: Vec<u8> = r.replies[6..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(unmasked, b"abc");
    }

    #[test]
    fn a_close_ends_and_what_cannot_be_counted_is_refused() {
        let mut r = Receiver::new(&[], 1);
        r.feed(&frame(0x88, &1001u16.to_be_bytes()), 0, &mut hist()).unwrap();
        assert_eq!(r.closed, Some(1001));
        for bad in [frame(0x01, b"{\"offset\":1"), frame(0xc1, b"compressed")] {
            let err = Receiver::new(&[], 1).feed(&bad, 0, &mut hist()).unwrap_err();
            assert!(err.contains("compressed or fragmented"), "{err}");
        }
        let mut masked = vec![0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1];
        masked.truncate(7);
        assert!(Receiver::new(&[], 1).feed(&masked, 0, &mut hist()).unwrap_err().contains("masked"));
    }

    #[test]
    fn offsets_and_times_are_found_in_both_protocols() {
        let weft = br#"{"type":"event","topic":"bench","offset":42,"epoch":"a","time":5,"payload":{"t":123,"p":"x"}}"#;
        assert_eq!(offset_and_sent(weft), Some((42, 123)));
        let plain = br#"{"type":"event","topic":"bench","offset":7,"payload":{"t":9,"p":"price-level"}}"#;
        assert_eq!(offset_and_sent(plain), Some((7, 9)));
        assert_eq!(offset_and_sent(br#"{"type":"published","offset":3}"#), None);
    }
}
