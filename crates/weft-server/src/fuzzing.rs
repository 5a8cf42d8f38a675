//! Entry point of the `request` cargo-fuzz target in `fuzz/` and of its seed-corpus test, so
//! the fuzzed code is exactly what ships. Not a public API.

use weft::Message;

use crate::wire::Request;

/// Decode arbitrary bytes as a client request: the first byte picks the frame type (even:
/// text/JSON, odd: binary/MessagePack). Must never panic; an error always has a 4xxx code. A
/// subscribe's filter is compiled and evaluated too.
pub fn request(data: &[u8]) {
    let Some((kind, body)) = data.split_first() else { return };
    let msg = if kind % 2 == 0 {
        match std::str::from_utf8(body) {
            Ok(s) => Message::text(s.to_owned()),
            Err(_) => return,
        }
    } else {
        Message::binary(body.to_vec())
    };
    match Request::decode(&msg) {
        Ok(r) => {
            let _ = r.id();
            // A subscribe's filter: compiled (or refused with a reason) and evaluated against a
            // few payloads, the filter's own JSON among them, without panicking.
            if let Request::Subscribe { filter: Some(f), .. } = &r {
                if let Ok(compiled) = crate::filter::Filter::compile(f) {
                    let shapes = [serde_json::json!(null), serde_json::json!({"a": [1, "x", {"b": 2.5}], "s": "abc"})];
                    for payload in shapes.iter().chain([f]) {
                        let _ = compiled.matches_value("t.x", payload);
                    }
                }
            }
        }
        Err(e) => assert!((4000..5000).contains(&e.error.code), "{:?}", e.error),
    }
}
