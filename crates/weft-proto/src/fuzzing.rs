//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the seed-corpus test, so the
//! fuzzed code is exactly what ships. Not a public API.

use std::time::Instant;

use crate::{Config, Connection, DeflateConfig, DeflateParams, Event, Role};

/// Feed arbitrary bytes to a server connection (with permessage-deflate negotiated) in pieces
/// whose sizes come from the input itself; drain every event. Must never panic.
pub fn frame_decoder(data: &[u8]) {
    let now = Instant::now();
    let cfg =
        Config::default().max_message_size(1 << 20).max_frame_size(1 << 20).deflate(Some(DeflateConfig::default()));
    for role in [Role::Server, Role::Client] {
        let mut conn = Connection::new(role, cfg.clone(), now);
        #[cfg(feature = "deflate")]
        conn.set_deflate(DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        });
        let split = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
        for piece in data.chunks(split) {
            conn.handle_read(piece, now);
            while let Some(ev) = conn.poll_event() {
                if matches!(ev, Event::Closed(_)) {
                    break;
                }
            }
        }
        conn.handle_eof();
        while conn.poll_event().is_some() {}
        while conn.poll_transmit().is_some() {}
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
