//! The state machine driven as a client/server pair over an in-memory pipe with a virtual clock:
//! no sockets, no sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_proto::deflate::SharedDeflater;
use weft_proto::frame::{FrameHeader, OpCode};
use weft_proto::{
    CloseCode, CloseFrame, Config, Connection, ConnectionError, DataKind, DeflateConfig, DeflateParams, EncodedMessage,
    Event, Input, Message, ProtocolError, Role, SendError, Timeout,
};

struct Pair {
    client: Connection,
    server: Connection,
    now: Instant,
}

impl Pair {
    fn new(cfg: Config) -> Self {
        Self::with(cfg.clone(), cfg)
    }

    fn with(client: Config, server: Config) -> Self {
        let now = Instant::now();
        Self {
            client: Connection::new(Role::Client, client, now),
            server: Connection::new(Role::Server, server, now),
            now,
        }
    }

    fn deflate(mut self, p: DeflateParams) -> Self {
        self.client.set_deflate(p);
        self.server.set_deflate(p);
        self
    }

    /// Move all bytes both ways until quiet; return the events each side produced.
    fn drive(&mut self) -> (Vec<Event>, Vec<Event>) {
        let (mut ce, mut se) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                self.server.handle_read(&b, self.now);
                moved = true;
            }
            while let Some(ev) = self.server.poll_event() {
                se.push(ev);
            }
            while let Some(b) = self.server.poll_transmit() {
                self.client.handle_read(&b, self.now);
                moved = true;
            }
            while let Some(ev) = self.client.poll_event() {
                ce.push(ev);
            }
            if !moved {
                return (ce, se);
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }
}

fn msg(ev: &Event) -> &Message {
    match ev {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn params(nct: bool) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: nct,
        client_no_context_takeover: nct,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

/// Raw masked client frame bytes.
fn client_frame(fin: bool, op: u8, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = FrameHeader::new(OpCode::Binary, payload.len() as u64);
    h.fin = fin;
    h.mask = Some([1, 2, 3, 4]);
    let mut buf = [0u8; 14];
    let n = h.encode(&mut buf);
    buf[0] = (if fin { 0x80 } else { 0 }) | (rsv << 4) | op;
    let mut v = buf[..n].to_vec();
    let mut p = payload.to_vec();
    weft_proto::mask::apply_mask(&mut p, [1, 2, 3, 4], 0);
    v.extend_from_slice(&p);
    v
}

/// Feed raw bytes to a fresh server; return its events and what it wrote back.
fn server_gets(cfg: Config, bytes: &[u8]) -> (Vec<Event>, Vec<u8>) {
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, cfg, now);
    s.handle_read(bytes, now);
    let mut evs = Vec::new();
    while let Some(e) = s.poll_event() {
        evs.push(e);
    }
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    (evs, out)
}

fn close_code_sent(out: &[u8]) -> u16 {
    let (h, n) = FrameHeader::decode(out).unwrap().unwrap();
    assert_eq!(h.opcode, OpCode::Close);
    u16::from_be_bytes([out[n], out[n + 1]])
}

#[test]
fn text_and_binary_roundtrip_both_ways() {
    for deflate in [None, Some(false), Some(true)] {
        let mut p = Pair::new(Config::default());
        if let Some(nct) = deflate {
            p = p.deflate(params(nct));
        }
        for i in 0..50 {
            let text = format!("héllo {i} {}", "x".repeat(i * 37));
            p.client.send(Message::text(text.clone())).unwrap();
            p.server.send(Message::binary(vec![i as u8; i * 100])).unwrap();
            let (ce, se) = p.drive();
            assert_eq!(msg(&se[0]), &Message::text(text));
            assert_eq!(msg(&ce[0]), &Message::binary(vec![i as u8; i * 100]));
        }
    }
}

#[test]
fn borrowed_sends_arrive_like_owned_ones() {
    for deflate in [None, Some(false), Some(true)] {
        let mut p = Pair::new(Config::default());
        if let Some(nct) = deflate {
            p = p.deflate(params(nct));
        }
        // Sizes around the server's cork threshold (large server payloads take their own slice).
        for n in [0, 1, 125, 126, 4096, 70_000, 300_000] {
            let text = "é".repeat(n / 2);
            let bin: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            p.client.send_borrowed(true, text.as_bytes()).unwrap();
            p.client.send_borrowed(false, &bin).unwrap();
            p.server.send_borrowed(false, &bin).unwrap();
            let (ce, se) = p.drive();
            assert_eq!(msg(&se[0]), &Message::text(text.clone()), "n={n} deflate={deflate:?}");
            assert_eq!(msg(&se[1]), &Message::binary(bin.clone()));
            assert_eq!(msg(&ce[0]), &Message::binary(bin));
        }
    }
}

#[test]
fn fragments_are_reassembled_with_interleaved_control_frames() {
    let mut bytes = client_frame(false, 0x1, 0, "κό".as_bytes());
    bytes.extend(client_frame(true, 0x9, 0, b"ping!"));
    bytes.extend(client_frame(false, 0x0, 0, "σμ".as_bytes()));
    bytes.extend(client_frame(true, 0x0, 0, "ε".as_bytes()));
    let (evs, out) = server_gets(Config::default(), &bytes);
    assert_eq!(msg(&evs[0]), &Message::Ping(Bytes::from_static(b"ping!")));
    assert_eq!(msg(&evs[1]), &Message::text("κόσμε"));
    // The automatic pong carries the ping's payload.
    assert_eq!(&out[..], &[0x8A, 5, b'p', b'i', b'n', b'g', b'!']);
}

#[test]
fn every_violation_closes_with_its_code() {
    let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
        (client_frame(true, 0x3, 0, b""), ProtocolError::ReservedOpcode(3), 1002),
        (client_frame(true, 0x1, 2, b"a"), ProtocolError::ReservedBits, 1002),
        (client_frame(true, 0x1, 4, b"a"), ProtocolError::ReservedBits, 1002),
        (client_frame(true, 0x0, 0, b"a"), ProtocolError::UnexpectedContinuation, 1002),
        (
            [client_frame(false, 0x1, 0, b"a"), client_frame(true, 0x1, 0, b"b")].concat(),
            ProtocolError::ExpectedContinuation,
            1002,
        ),
        (vec![0x81, 0x01, b'a'], ProtocolError::UnmaskedFrame, 1002),
        (client_frame(true, 0x1, 0, b"\xff"), ProtocolError::InvalidUtf8, 1007),
        (client_frame(true, 0x8, 0, b"\x03\xe8\xff"), ProtocolError::InvalidUtf8, 1007),
        (client_frame(true, 0x8, 0, b"\x03\xed"), ProtocolError::InvalidCloseCode(1005), 1002),
        (client_frame(true, 0x8, 0, b"\x03"), ProtocolError::InvalidClosePayload, 1002),
        (client_frame(true, 0x2, 0, &[0; 200]), ProtocolError::FrameTooLarge { size: 200, max: 100 }, 1009),
    ];
    for (bytes, err, code) in cases {
        let cfg = Config::default().max_frame_size(100);
        let (evs, out) = server_gets(cfg, &bytes);
        assert_eq!(evs.last(), Some(&Event::Closed(ConnectionError::ProtocolViolation(err.clone()))), "{err:?}");
        assert_eq!(close_code_sent(&out), code, "{err:?}");
    }
}

#[test]
fn message_and_fragment_limits() {
    let two = [client_frame(false, 0x2, 0, &[0; 60]), client_frame(true, 0x0, 0, &[0; 60])].concat();
    let (evs, out) = server_gets(Config::default().max_message_size(100), &two);
    assert_eq!(
        evs.last(),
        Some(&Event::Closed(ConnectionError::ProtocolViolation(ProtocolError::MessageTooLarge { max: 100 })))
    );
    assert_eq!(close_code_sent(&out), 1009);

    let mut many = Vec::new();
    for _ in 0..5 {
        many.extend(client_frame(false, if many.is_empty() { 0x2 } else { 0x0 }, 0, b"x"));
    }
    let (evs, out) = server_gets(Config::default().max_fragments(4), &many);
    assert_eq!(
        evs.last(),
        Some(&Event::Closed(ConnectionError::ProtocolViolation(ProtocolError::TooManyFragments { max: 4 })))
    );
    assert_eq!(close_code_sent(&out), 1009);
}

#[test]
fn compressed_bomb_is_refused_with_1009() {
    let mut p = Pair::with(Config::default(), Config::default().max_message_size(10_000)).deflate(params(false));
    p.client.send(Message::binary(vec![0u8; 1 << 20])).unwrap();
    let (_, se) = p.drive();
    assert_eq!(
        se.last(),
        Some(&Event::Closed(ConnectionError::ProtocolViolation(ProtocolError::MessageTooLarge { max: 10_000 })))
    );
}

#[test]
fn invalid_utf8_fails_before_the_frame_is_complete() {
    // Header announcing 100 bytes of text, then only an impossible prefix arrives.
    let full = client_frame(true, 0x1, 0, &[b"\xce\xba\xf4\x90".as_slice(), &[b'a'; 96]].concat());
    let header_len = 2 + 4;
    let (evs, out) = server_gets(Config::default(), &full[..header_len + 4]);
    assert_eq!(evs, vec![Event::Closed(ConnectionError::ProtocolViolation(ProtocolError::InvalidUtf8))]);
    assert_eq!(close_code_sent(&out), 1007);
    // Across fragments, too: the first fragment alone is enough.
    let first = client_frame(false, 0x1, 0, b"ok\xed\xa0\x80");
    let (evs, _) = server_gets(Config::default(), &first);
    assert_eq!(evs, vec![Event::Closed(ConnectionError::ProtocolViolation(ProtocolError::InvalidUtf8))]);
}

#[test]
fn byte_at_a_time_input_gives_the_same_messages() {
    let mut bytes = Vec::new();
    for i in 0..20u8 {
        bytes.extend(client_frame(true, 0x1, 0, "ünïcödé".repeat(i as usize).as_bytes()));
        bytes.extend(client_frame(false, 0x2, 0, &[i; 300]));
        bytes.extend(client_frame(true, 0x0, 0, &[i; 70_000]));
    }
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, Config::default(), now);
    let mut got = Vec::new();
    for b in &bytes {
        s.handle_read(std::slice::from_ref(b), now);
        while let Some(e) = s.poll_event() {
            got.push(e);
        }
    }
    assert_eq!(got.len(), 40);
    assert_eq!(msg(&got[2]), &Message::text("ünïcödé"));
    assert_eq!(msg(&got[3]), &Message::binary([vec![1u8; 300], vec![1u8; 70_000]].concat()));
}

#[test]
fn close_handshake_taxonomy() {
    // Client starts, server echoes, both end cleanly.
    let mut p = Pair::new(Config::default());
    p.client.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye"))).unwrap();
    assert_eq!(p.client.send(Message::text("late")), Err(SendError::Closed));
    let (ce, se) = p.drive();
    assert_eq!(
        se.last(),
        Some(&Event::Closed(ConnectionError::PeerClosed(Some(CloseFrame::new(CloseCode::NORMAL, "bye")))))
    );
    assert!(
        matches!(ce.last(), Some(Event::Closed(ConnectionError::LocallyClosed(Some(f)))) if f.code == CloseCode::NORMAL)
    );
    assert!(p.client.is_finished() && p.server.is_finished());

    // Peer sends a close without status: we answer with an empty close.
    let (evs, out) = server_gets(Config::default(), &client_frame(true, 0x8, 0, b""));
    assert_eq!(evs, vec![Event::Message(Message::Close(None)), Event::Closed(ConnectionError::PeerClosed(None))]);
    assert_eq!(out, vec![0x88, 0x00]);

    // Transport vanishes: reset.
    let mut p = Pair::new(Config::default());
    p.server.handle_eof();
    assert_eq!(p.server.poll_event(), Some(Event::Closed(ConnectionError::Reset)));
    assert_eq!(ConnectionError::Reset.code(), CloseCode::ABNORMAL);

    // Invalid codes can't be sent.
    let mut p = Pair::new(Config::default());
    assert_eq!(p.client.close(Some(CloseFrame::new(CloseCode(1006), ""))), Err(SendError::InvalidCloseCode(1006)));
}

#[test]
fn close_handshake_times_out() {
    let mut p = Pair::new(Config::default().close_timeout(Duration::from_secs(3)));
    p.client.close(None).unwrap();
    while p.client.poll_transmit().is_some() {} // the peer never sees it
    assert_eq!(p.client.poll_timeout(), Some(p.now + Duration::from_secs(3)));
    p.advance(Duration::from_secs(2));
    assert_eq!(p.client.poll_event(), None);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.client.poll_event(), Some(Event::Closed(ConnectionError::TimedOut(Timeout::CloseHandshake))));
}

#[test]
fn keepalive_pings_and_pong_timeout() {
    let cfg = Config::default().ping_interval(Some(Duration::from_secs(10))).ping_timeout(Duration::from_secs(5));
    let mut p = Pair::with(Config::default(), cfg);
    p.advance(Duration::from_secs(10));
    let (ce, se) = p.drive();
    assert!(matches!(msg(&ce[0]), Message::Ping(_)));
    assert!(matches!(msg(&se[0]), Message::Pong(_)));
    // Pong arrived: no timeout at +5 s.
    p.advance(Duration::from_secs(5));
    assert!(!p.server.is_closed());
    // Next ping is not answered (the client stops reading): closed with 1011 after 5 s.
    p.advance(Duration::from_secs(5));
    while p.server.poll_transmit().is_some() {}
    p.advance(Duration::from_secs(5));
    assert_eq!(p.server.poll_event(), Some(Event::Closed(ConnectionError::TimedOut(Timeout::Pong))));
    let close = p.server.poll_transmit().unwrap();
    assert_eq!(close_code_sent(&close), 1011);
}

#[test]
fn idle_timeout_closes_with_1001() {
    let mut p = Pair::with(Config::default(), Config::default().idle_timeout(Some(Duration::from_secs(30))));
    p.advance(Duration::from_secs(20));
    p.client.send(Message::text("still here")).unwrap();
    p.drive();
    p.advance(Duration::from_secs(20));
    assert!(!p.server.is_closed(), "input at +20 s resets the idle timer");
    p.advance(Duration::from_secs(10));
    assert_eq!(p.server.poll_event(), Some(Event::Closed(ConnectionError::TimedOut(Timeout::Idle))));
    assert_eq!(close_code_sent(&p.server.poll_transmit().unwrap()), 1001);
}

#[test]
fn backpressure_is_a_clear_error() {
    let mut p = Pair::new(Config::default().max_buffered(10_000));
    let mut refused = None;
    for i in 0..100 {
        if let Err(e) = p.server.send(Message::binary(vec![0; 1000])) {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("sending must be refused once over the limit");
    assert_eq!(i, 10, "ten 1004-byte frames exceed 10,000 bytes");
    assert!(matches!(e, SendError::Backpressure { limit: 10_000, .. }));
    // Draining the queue makes room again.
    while p.server.poll_transmit().is_some() {}
    p.server.send(Message::binary(vec![0; 1000])).unwrap();
}

#[test]
fn streaming_fragments_are_handed_out_as_they_come() {
    for deflate in [false, true] {
        let cfg = Config::default().stream_fragments(true).max_message_size(250);
        let mut p = Pair::new(cfg);
        if deflate {
            p = p.deflate(params(false));
        }
        // Build a fragmented message by hand with the client's framing rules.
        let mut bytes = client_frame(false, 0x2, 0, &[1; 100]);
        bytes.extend(client_frame(true, 0x0, 0, &[2; 100]));
        p.server.handle_read(&bytes, p.now);
        let a = p.server.poll_event().unwrap();
        let b = p.server.poll_event().unwrap();
        assert_eq!(a, Event::Fragment { kind: DataKind::Binary, payload: Bytes::from(vec![1; 100]), fin: false });
        assert_eq!(b, Event::Fragment { kind: DataKind::Binary, payload: Bytes::from(vec![2; 100]), fin: true });
        // The limit still applies to the whole message.
        let mut bytes = client_frame(false, 0x2, 0, &[1; 200]);
        bytes.extend(client_frame(true, 0x0, 0, &[2; 100]));
        p.server.handle_read(&bytes, p.now);
        let mut last = None;
        while let Some(e) = p.server.poll_event() {
            last = Some(e);
        }
        assert!(matches!(
            last,
            Some(Event::Closed(ConnectionError::ProtocolViolation(ProtocolError::MessageTooLarge { .. })))
        ));
    }
}

#[test]
fn encoded_message_is_shared_between_connections() {
    let mut shared = SharedDeflater::new(6, 0);
    let text = "the same event for every subscriber ".repeat(40);
    let enc = EncodedMessage::new(&Message::text(text.clone()), Some(&mut shared)).unwrap();
    let mut plain = Pair::new(Config::default());
    let mut compressed = Pair::new(Config::default()).deflate(params(false));
    for p in [&mut plain, &mut compressed] {
        // Interleave with per-connection messages (context takeover) to prove the window stays consistent.
        for i in 0..3 {
            p.server.send(Message::text(format!("{text}{i}"))).unwrap();
            p.server.send_encoded(&enc).unwrap();
        }
        let (ce, _) = p.drive();
        assert_eq!(ce.len(), 6);
        for (i, e) in ce.iter().enumerate() {
            let want = if i % 2 == 0 { format!("{text}{}", i / 2) } else { text.clone() };
            assert_eq!(msg(e), &Message::text(want));
        }
    }
}

#[test]
fn idle_connection_holds_no_buffers() {
    let mut p = Pair::new(Config::default());
    p.client.send(Message::text("hi")).unwrap();
    p.server.send(Message::text("hello")).unwrap();
    p.drive();
    assert!(p.server.buffer_capacity() > 0);
    p.server.release_idle_buffers();
    p.client.release_idle_buffers();
    assert_eq!(p.server.buffer_capacity(), 0);
    assert_eq!(p.client.buffer_capacity(), 0);
    // A partial frame keeps its buffer.
    p.server.handle_read(&client_frame(true, 0x2, 0, &[0; 10])[..5], p.now);
    p.server.release_idle_buffers();
    assert!(p.server.buffer_capacity() > 0);
}

#[test]
fn client_frames_are_masked_with_fresh_keys() {
    let now = Instant::now();
    let mut c = Connection::new(Role::Client, Config::default(), now);
    let mut keys = std::collections::HashSet::new();
    for _ in 0..64 {
        c.send(Message::binary(vec![0; 4])).unwrap();
        let b = c.poll_transmit().unwrap();
        let (h, _) = FrameHeader::decode(&b).unwrap().unwrap();
        keys.insert(h.mask.expect("client frames are masked"));
    }
    assert!(keys.len() > 60, "mask keys must not repeat: {} distinct of 64", keys.len());
}

#[test]
fn window_bits_8_negotiated_sends_uncompressed() {
    let p8 = DeflateParams { server_max_window_bits: 8, ..params(false) };
    let mut p = Pair::new(Config::default().deflate(Some(DeflateConfig::default()))).deflate(p8);
    let text = "compressible ".repeat(100);
    p.server.send(Message::text(text.clone())).unwrap();
    let wire = p.server.poll_transmit().unwrap();
    assert_eq!(wire[0] & 0x40, 0, "RSV1 must be clear: sent uncompressed");
    p.client.handle_read(&wire, p.now);
    assert_eq!(msg(&p.client.poll_event().unwrap()), &Message::text(text));
}

#[test]
fn fuzz_seed_corpus_does_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut n = 0;
    for (target, f) in [
        ("frame_decoder", weft_proto::fuzzing::frame_decoder as fn(&[u8])),
        ("handshake", weft_proto::fuzzing::handshake),
        ("deflate", weft_proto::fuzzing::deflate),
    ] {
        for entry in std::fs::read_dir(dir.join(target)).expect("seed corpus exists") {
            f(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n >= 6);
    // And a few thousand pseudo-random inputs derived from the seeds' shapes.
    let mut x = 0x1234_5678_u64;
    for len in 0..3000usize {
        let data: Vec<u8> = (0..len % 300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        weft_proto::fuzzing::frame_decoder(&data);
        weft_proto::fuzzing::handshake(&data);
        weft_proto::fuzzing::deflate(&data);
    }
}

#[test]
fn a_ping_flood_costs_one_pending_pong() {
    // 10,000 pings read before the adapter writes anything: one pong, for the last ping.
    let mut bytes = Vec::new();
    for i in 0..10_000u32 {
        bytes.extend(client_frame(true, 0x9, 0, &i.to_be_bytes()));
    }
    let (evs, out) = server_gets(Config::default(), &bytes);
    assert_eq!(evs.len(), 10_000);
    let (h, n) = FrameHeader::decode(&out).unwrap().unwrap();
    assert_eq!(h.opcode, OpCode::Pong);
    assert_eq!(&out[n..], &9_999u32.to_be_bytes());
    assert_eq!(out.len(), n + 4, "exactly one pong");
}

#[test]
fn a_pending_pong_precedes_the_close_reply() {
    let mut bytes = client_frame(true, 0x9, 0, b"last");
    bytes.extend(client_frame(true, 0x8, 0, &1000u16.to_be_bytes()));
    let (_, out) = server_gets(Config::default(), &bytes);
    let (h, n) = FrameHeader::decode(&out).unwrap().unwrap();
    assert_eq!((h.opcode, &out[n..n + 4]), (OpCode::Pong, &b"last"[..]));
    assert_eq!(close_code_sent(&out[n + 4..]), 1000);
}

#[test]
fn reading_pauses_while_output_is_above_the_high_water_mark() {
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, Config::default().write_buffer_high_water(4096), now);
    assert!(s.wants_input());
    s.send(Message::binary(vec![7u8; 8192])).unwrap();
    assert!(!s.wants_input());
    while s.poll_transmit().is_some() {}
    assert!(s.wants_input());
}

#[test]
fn a_frame_header_alone_reserves_no_large_buffer() {
    // A header announcing 16 MiB followed by 10 bytes: the buffer grows with what arrived.
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, Config::default(), now);
    let mut h = FrameHeader::new(OpCode::Binary, 16 << 20);
    h.mask = Some([1, 2, 3, 4]);
    let mut hb = [0u8; 14];
    let n = h.encode(&mut hb);
    s.handle_read(&hb[..n], now);
    s.handle_read(&[0u8; 10], now);
    assert!(s.poll_event().is_none());
    let cap = s.read_buffer().capacity();
    assert!(cap <= 256 << 10, "reserved {cap} bytes for 10 received");
    // Feeding the whole frame in 1 MiB pieces still assembles it.
    let mut left = (16 << 20) - 10;
    while left > 0 {
        let k = left.min(1 << 20);
        s.handle_read(&vec![0u8; k], now);
        left -= k;
    }
    match s.poll_event() {
        Some(Event::Message(Message::Binary(b))) => assert_eq!(b.len(), 16 << 20),
        other => panic!("{other:?}"),
    }
}

#[test]
fn keepalive_ping_payloads_are_unpredictable() {
    let cfg = Config::default().ping_interval(Some(Duration::from_secs(1)));
    let payloads: Vec<Bytes> = (0..4)
        .map(|_| {
            let mut p = Pair::with(Config::default(), cfg.clone());
            p.advance(Duration::from_secs(1));
            let (ce, _) = p.drive();
            match msg(&ce[0]) {
                Message::Ping(b) => b.clone(),
                m => panic!("{m:?}"),
            }
        })
        .collect();
    assert!(payloads.iter().all(|b| b.len() == 8));
    assert_ne!(payloads[0], payloads[1]);
    assert!(payloads.iter().all(|b| b[..] != 1u64.to_be_bytes()), "not a counter");
}

/// [`server_gets`] through `poll_input`, `chunk` bytes per read: borrowed messages reported as
/// the owned ones they stand for.
fn server_gets_borrowed(cfg: Config, bytes: &[u8], chunk: usize) -> (Vec<Event>, Vec<u8>) {
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, cfg, now);
    let mut evs = Vec::new();
    let mut wire = bytes.to_vec();
    for piece in wire.chunks_mut(chunk) {
        let mut input = piece;
        while let Some(i) = s.poll_input(&mut input, now) {
            evs.push(match i {
                Input::Text(t) => Event::Message(Message::text(t.to_owned())),
                Input::Binary(b) => Event::Message(Message::binary(b.to_vec())),
                Input::Event(e) => e,
            });
        }
        assert!(input.is_empty(), "poll_input returned None with input left");
    }
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    (evs, out)
}

#[test]
fn borrowed_input_gives_the_same_events_and_replies_as_owned_input() {
    let mut bytes = Vec::new();
    for i in 0..20u8 {
        bytes.extend(client_frame(true, 0x1, 0, "ünïcödé".repeat(i as usize).as_bytes()));
        bytes.extend(client_frame(true, 0x9, 0, &[i; 3])); // ping: answered
        bytes.extend(client_frame(false, 0x2, 0, &[i; 300]));
        bytes.extend(client_frame(true, 0xA, 0, b"pong"));
        bytes.extend(client_frame(true, 0x0, 0, &[i; 70_000]));
        bytes.extend(client_frame(true, 0x2, 0, &[i; 1000]));
    }
    bytes.extend(client_frame(true, 0x8, 0, b"\x03\xe8bye"));
    let (owned, owned_out) = server_gets(Config::default(), &bytes);
    assert_eq!(owned.len(), 20 * 5 + 2);
    for chunk in [1, 2, 3, 4, 5, 6, 7, 13, 100, 4096, 65_536, bytes.len()] {
        let (evs, out) = server_gets_borrowed(Config::default(), &bytes, chunk);
        if let Some(i) = (0..evs.len().max(owned.len())).find(|&i| evs.get(i) != owned.get(i)) {
            let brief = |e: Option<&Event>| format!("{e:?}").chars().take(200).collect::<String>();
            panic!("chunk {chunk}: event {i} differs: {} vs {}", brief(evs.get(i)), brief(owned.get(i)));
        }
        assert_eq!(out, owned_out, "chunk {chunk}: replies differ");
    }
}

#[test]
fn borrowed_input_fails_like_owned_input() {
    let cases: Vec<Vec<u8>> = vec![
        client_frame(true, 0x3, 0, b""),
        client_frame(true, 0x1, 2, b"a"),
        client_frame(true, 0x1, 4, b"a"),
        client_frame(true, 0x0, 0, b"a"),
        [client_frame(false, 0x1, 0, b"a"), client_frame(true, 0x1, 0, b"b")].concat(),
        vec![0x81, 0x01, b'a'],
        client_frame(true, 0x1, 0, b"ok\xff"),
        [client_frame(true, 0x2, 0, b"fine"), client_frame(true, 0x1, 0, b"\xed\xa0\x80")].concat(),
        client_frame(true, 0x8, 0, b"\x03\xed"),
        client_frame(true, 0x2, 0, &[0; 200]),
        [
            client_frame(true, 0x1, 0, b"before"),
            client_frame(true, 0x2, 0, &[0; 200]),
            client_frame(true, 0x1, 0, b"after"),
        ]
        .concat(),
        // Invalid UTF-8 at the start of a text frame that has not fully arrived: fails early.
        client_frame(true, 0x1, 0, &[b"\xce\xba\xf4\x90".as_slice(), &[b'a'; 96]].concat())[..10].to_vec(),
    ];
    for bytes in cases {
        let cfg = Config::default().max_frame_size(100);
        let (owned, owned_out) = server_gets(cfg.clone(), &bytes);
        assert!(matches!(owned.last(), Some(Event::Closed(_))));
        for chunk in [1, 3, bytes.len()] {
            let (evs, out) = server_gets_borrowed(cfg.clone(), &bytes, chunk);
            assert_eq!(evs, owned, "chunk {chunk} of {bytes:?}");
            assert_eq!(out, owned_out, "chunk {chunk} of {bytes:?}");
        }
    }
}

#[test]
fn borrowed_input_keeps_only_the_incomplete_frame() {
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, Config::default(), now);
    let mut wire = [client_frame(true, 0x2, 0, &[7; 5000]), client_frame(true, 0x2, 0, &[8; 5000])].concat();
    let cut = wire.len() - 100;
    let mut input = &mut wire[..cut];
    let Some(Input::Binary(payload)) = s.poll_input(&mut input, now) else { panic!("first message") };
    assert_eq!(payload, &[7; 5000][..]);
    // Whole frames were never copied: the connection holds no buffer for them.
    assert_eq!(s.buffer_capacity(), 0);
    assert_eq!(s.poll_input(&mut input, now), None);
    assert!(input.is_empty());
    // The second frame's first part waits in the connection; the rest completes it.
    assert!(s.has_partial_input());
    let mut rest = wire[cut..].to_vec();
    let mut input = &mut rest[..];
    match s.poll_input(&mut input, now) {
        Some(Input::Event(Event::Message(Message::Binary(b)))) => assert_eq!(b, vec![8u8; 5000]),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.poll_input(&mut input, now), None);
    assert!(!s.has_partial_input());
}

/// `take_unread` hands over exactly the bytes not yet turned into events, and refuses (taking
/// nothing) when that would lose data.
#[test]
fn take_unread_hands_over_only_what_nothing_has_used() {
    let now = Instant::now();
    let frame = |op: u8, fin: bool, payload: &[u8]| {
        let mut f = vec![if fin { 0x80 } else { 0 } | op, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    };
    // Two complete binary messages and the start of a third.
    let mut input = frame(2, true, b"one");
    input.extend(frame(2, true, b"two"));
    input.extend(&frame(2, true, b"three")[..3]);
    // Nothing polled yet: everything, as it came.
    let mut c = Connection::new(Role::Client, Config::default(), now);
    c.handle_read(&input, now);
    assert_eq!(&c.take_unread().unwrap()[..], &input[..]);
    // Two messages taken: the start of the third.
    let mut c = Connection::new(Role::Client, Config::default(), now);
    c.handle_read(&input, now);
    assert!(c.poll_event().is_some() && c.poll_event().is_some());
    assert!(c.poll_event().is_none());
    assert_eq!(&c.take_unread().unwrap()[..], &frame(2, true, b"three")[..3]);
    assert!(c.take_unread().unwrap().is_empty(), "taken once");

    // Part of a fragmented message received: its bytes are gone, so nothing is handed over.
    let mut c = Connection::new(Role::Client, Config::default(), now);
    c.handle_read(&frame(2, false, b"first half"), now);
    assert!(c.poll_event().is_none());
    assert!(c.take_unread().is_none());
    c.handle_read(&frame(0, true, b" second"), now);
    assert_eq!(msg(&c.poll_event().unwrap()), &Message::binary(Bytes::from_static(b"first half second")));

    // A text frame in progress is checked as it comes: refused too.
    let mut c = Connection::new(Role::Client, Config::default(), now);
    c.handle_read(&frame(1, true, b"hello")[..4], now);
    assert!(c.poll_event().is_none());
    assert!(c.take_unread().is_none());
}

/// Store the server small if it is idle; either way hand it back whole.
fn store_and_resume(pair: &mut Pair) -> bool {
    let now = pair.now;
    let placeholder = Connection::new(Role::Server, Config::default(), now);
    let server = std::mem::replace(&mut pair.server, placeholder);
    let (server, stored) = match server.into_idle() {
        Ok(idle) => (idle.resume(now), true),
        Err(s) => (s, false),
    };
    pair.server = server;
    stored
}

/// A connection stored small while idle goes on exactly where it was: its keep-alive timer,
/// the pong it waits for, the idle deadline.
#[test]
fn an_idle_connection_resumes_where_it_was() {
    let cfg =
        Config::default().ping_interval(Some(Duration::from_secs(10))).idle_timeout(Some(Duration::from_secs(60)));
    let mut p = Pair::with(Config::default(), cfg);
    let deadline = p.server.poll_timeout();
    let now = p.now;
    let server = std::mem::replace(&mut p.server, Connection::new(Role::Server, Config::default(), now));
    let idle = server.into_idle().expect("a new connection is idle");
    assert!(std::mem::size_of_val(&idle) <= 96, "{}", std::mem::size_of_val(&idle));
    assert_eq!(idle.poll_timeout(), deadline);
    assert_eq!(idle.role(), Role::Server);
    p.server = idle.resume(now);
    // The keep-alive ping is due: queued, so not idle until written.
    p.now += Duration::from_secs(10);
    p.server.handle_timeout(p.now);
    assert!(!p.server.is_idle());
    while let Some(b) = p.server.poll_transmit() {
        p.client.handle_read(&b, p.now);
    }
    // Written: idle again, with its pong awaited. Stored and resumed, the pong deadline holds.
    assert!(p.server.is_idle());
    assert_eq!(p.server.keepalive_ping().map(<[u8]>::len), Some(8));
    assert!(store_and_resume(&mut p));
    p.advance(Duration::from_secs(30));
    assert!(p.server.is_closed(), "the missing pong was noticed");
    assert!(!store_and_resume(&mut p), "a closed connection is not idle");
}

/// An answered ping, a partial frame, a message not polled: none of these is idle.
#[test]
fn a_connection_with_anything_in_progress_is_not_idle() {
    let mut p = Pair::new(Config::default());
    p.client.send(Message::Ping(Bytes::from_static(b"hi"))).unwrap();
    let b = p.client.poll_transmit().unwrap();
    p.server.handle_read(&b, p.now);
    assert!(!p.server.is_idle(), "an event waits");
    assert!(p.server.poll_event().is_some());
    assert!(!p.server.is_idle(), "its pong waits");
    while p.server.poll_transmit().is_some() {}
    assert!(p.server.is_idle());
    p.server.handle_read(&client_frame(true, 0x2, 0, b"hello")[..4], p.now);
    assert!(!p.server.is_idle(), "part of a frame waits");
    assert!(!store_and_resume(&mut p));
    p.server.handle_read(&client_frame(true, 0x2, 0, b"hello")[4..], p.now);
    assert_eq!(p.server.poll_event(), Some(Event::Message(Message::binary(&b"hello"[..]))));
    assert!(p.server.is_idle());
}

/// Compression contexts that remember earlier messages (context takeover, once used) keep a
/// connection whole; without context takeover they are dropped when it is stored, and made
/// again for the next message.
#[test]
fn compression_contexts_decide_whether_a_connection_is_idle() {
    for nct in [false, true] {
        let mut deflate = DeflateConfig::default();
        deflate.threshold = 0;
        let cfg = Config::default().deflate(Some(deflate));
        let mut p = Pair::new(cfg).deflate(params(nct));
        assert!(p.server.is_idle(), "contexts not used yet");
        for round in 0..3 {
            let text = format!("{round}: the same words again and again and again and again");
            p.client.send(Message::text(text.clone())).unwrap();
            let (_, se) = p.drive();
            assert_eq!(msg(&se[0]), &Message::text(text.clone()));
            p.server.send(Message::text(text.clone())).unwrap();
            let (ce, _) = p.drive();
            assert_eq!(msg(&ce[0]), &Message::text(text));
            assert_eq!(store_and_resume(&mut p), nct, "round {round}, no context takeover {nct}");
            assert_eq!(p.server.deflate_params(), Some(params(nct)));
        }
    }
}

/// Output lent to a write in flight (`transmit_chunks`, as io_uring sends) is not discarded by
/// `discard_unsent`: the kernel may still be sending it, and its completion advances past it.
/// (Dropping it left the count of queued bytes short, and the completion underflowed it.)
#[test]
fn discard_unsent_keeps_what_is_lent_to_a_write_in_flight() {
    let mut c = Connection::new(Role::Server, Config::default(), Instant::now());
    for _ in 0..4 {
        c.send(Message::binary(vec![7u8; 100])).unwrap();
        c.transmit_chunks(0, |_| {}); // lends nothing; each message its own chunk
    }
    let total = c.buffered_amount();
    let mut lent = Vec::new();
    assert_eq!(c.transmit_chunks(2, |b| lent.push(b)), 2);
    let lent_bytes: usize = lent.iter().map(|b| b.len()).sum();
    // The two chunks not lent go; the two lent stay.
    assert_eq!(c.discard_unsent(), total - lent_bytes);
    c.close(Some(CloseFrame::new(CloseCode::POLICY, "slow consumer"))).unwrap();
    let close = c.buffered_amount() - lent_bytes;
    // The write completes in two parts; then the close frame is all that is left.
    c.advance_transmit(150);
    c.advance_transmit(lent_bytes - 150);
    assert_eq!(c.buffered_amount(), close);
    let mut rest = Vec::new();
    c.transmit_chunks(8, |b| rest.push(b));
    assert_eq!(rest.concat()[..2], [0x88, 15]);
    c.advance_transmit(close);
    assert!(!c.has_transmit());
}
