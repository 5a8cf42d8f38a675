//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the seed-corpus test, so the
//! fuzzed code is exactly what ships. Not a public API.

use std::time::Instant;

use crate::{Config, Connection, DeflateConfig, DeflateParams, Event, Input, Message, Role};

/// Feed arbitrary bytes to a server connection (with permessage-deflate negotiated) in pieces
/// whose sizes come from the input itself; drain every event. Must never panic. The same bytes
/// go to a second connection through [`Connection::poll_input`] (parsed in the caller's
/// buffer): both must report the same events and send the same bytes.
pub fn frame_decoder(data: &[u8]) {
    let now = Instant::now();
    let cfg =
        Config::default().max_message_size(1 << 20).max_frame_size(1 << 20).deflate(Some(DeflateConfig::default()));
    for role in [Role::Server, Role::Client] {
        let [mut owned, mut borrowed] = [0, 1].map(|_| {
            #[allow(unused_mut)]
            let mut conn = Connection::new(role, cfg.clone(), now);
            #[cfg(feature = "deflate")]
            conn.set_deflate(DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            });
            conn
        });
        let (mut seen_owned, mut seen_borrowed) = (Vec::new(), Vec::new());
        let split = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
        let mut scratch = data.to_vec();
        for (piece, in_place) in data.chunks(split).zip(scratch.chunks_mut(split)) {
            owned.handle_read(piece, now);
            while let Some(ev) = owned.poll_event() {
                seen_owned.push(ev);
            }
            let mut input = in_place;
            while let Some(i) = borrowed.poll_input(&mut input, now) {
                seen_borrowed.push(match i {
                    Input::Text(t) => Event::Message(Message::text(t.to_owned())),
                    Input::Binary(b) => Event::Message(Message::binary(b.to_vec())),
                    Input::Event(ev) => ev,
                });
            }
            assert!(input.is_empty(), "poll_input left input behind");
        }
        for (conn, seen) in [(&mut owned, &mut seen_owned), (&mut borrowed, &mut seen_borrowed)] {
            conn.handle_eof();
            seen.extend(std::iter::from_fn(|| conn.poll_event()));
        }
        assert!(seen_owned == seen_borrowed, "poll_input and poll_event disagree");
        // A client masks with fresh random keys: only a server's bytes are comparable.
        if role == Role::Server {
            let out = |c: &mut Connection| std::iter::from_fn(|| c.poll_transmit()).flatten().collect::<Vec<u8>>();
            assert!(out(&mut owned) == out(&mut borrowed), "poll_input and poll_event answer differently");
        }
    }
}

/// Parse arbitrary bytes as an upgrade request and a response. Must never panic.
pub fn handshake(data: &[u8]) {
    if let Ok(Some((req, _))) = crate::handshake::parse_request(data) {
        let _ = crate::handshake::server_accept(&req, &["chat".into()], Some(&DeflateConfig::default()));
    }
    if let Ok(Some((resp, _))) = crate::handshake::parse_response(data) {
        let _ =
            crate::handshake::client_verify(&resp, "dGhlIHNhbXBsZSBub25jZQ==", &[], Some(&DeflateConfig::default()));
    }
    for ext in std::str::from_utf8(data).into_iter().flat_map(crate::extension::parse).flatten() {
        let _ = crate::deflate::server_negotiate([&ext], &DeflateConfig::default());
        let _ = crate::deflate::client_accept(&ext, &DeflateConfig::default());
    }
}

/// permessage-deflate both ways: whatever the first bytes choose (window bits, context
/// takeover, level), the rest compressed then inflated comes back unchanged; and the same bytes
/// inflated as if they came from a peer never panic and never exceed the limit. Must never panic.
#[cfg(feature = "deflate")]
pub fn deflate(data: &[u8]) {
    use crate::deflate::{Deflater, Inflater};
    let (params, payload) = data.split_at(data.len().min(2));
    let bits = 9 + params.first().map_or(6, |b| b % 7);
    let nct = params.get(1).is_some_and(|b| b & 1 == 1);
    let level = params.get(1).map_or(6, |b| u32::from(b >> 4) % 10);
    let mut d = Deflater::new(level, bits, nct, 0);
    let mut i = Inflater::new(bits, nct);
    for chunk in payload.chunks(payload.len() / 3 + 1) {
        let mut z = Vec::new();
        d.compress(chunk, &mut z);
        let mut out = Vec::new();
        i.inflate(&z, &mut out, 1 << 20).expect("our own output inflates");
        i.finish(&mut out, 1 << 20).expect("our own output finishes");
        assert_eq!(out, chunk, "deflate round trip");
    }
    // Output stops one byte past the limit (how the overflow is detected), and only an error
    // may hold that byte.
    let mut hostile = Inflater::new(bits, nct);
    let mut out = Vec::new();
    let ok = hostile.inflate(payload, &mut out, 64 << 10).and_then(|()| hostile.finish(&mut out, 64 << 10)).is_ok();
    let max = if ok { 64 << 10 } else { (64 << 10) + 1 };
    assert!(out.len() <= max && out.capacity() <= max.max(4096), "inflate limit exceeded: {}", out.len());
}
