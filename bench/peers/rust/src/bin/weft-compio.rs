//! weft's sans-IO protocol core (`weft-proto`) on the compio runtime (io_uring): what weft's
//! io_uring core would be if it were built on a completion runtime instead of its own loop over
//! the `io-uring` crate. A task per connection, an owned read buffer per connection (compio's
//! read takes a buffer and gives it back), the same `Connection` and the same in-place parsing.
//! Measured beside `weft echo --core io-uring` (bench/compare.sh) to choose between the two; see
//! docs/ARCHITECTURE.md.
//!
//! usage: weft-compio --port PORT

use std::time::Instant;

use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use weft_proto::handshake;
use weft_proto::{Config, Connection, Event, Input, Message, Role};

/// The read buffer each connection owns (the event loop's ring buffers are 256 KiB, shared).
const READ_BUFFER: usize = 64 << 10;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or_else(|| anyhow::anyhow!("--port PORT"))?.parse()?,
        None => 9001,
    };
    compio::runtime::Runtime::new()?.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("weft-compio listening on 127.0.0.1:{port}");
        loop {
            let (s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            compio::runtime::spawn(async move {
                let _ = serve(s).await;
            })
            .detach();
        }
    })
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(READ_BUFFER);
    let mut head = Vec::new();
    let (req, used) = loop {
        buf.clear();
        let BufResult(n, b) = s.read(buf).await;
        buf = b;
        if n? == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf);
        match handshake::parse_request(&head) {
            Ok(Some(r)) => break r,
            Ok(None) => continue,
            Err(_) => return Ok(()),
        }
    };
    let Ok(accepted) = handshake::server_accept(&req, &[], None) else { return Ok(()) };
    let mut out = Vec::new();
    handshake::write_response_head(&accepted.response, &mut out);
    let BufResult(r, _) = s.write_all(out).await;
    r?;
    let mut conn = Connection::new(Role::Server, Config::default(), Instant::now());
    let mut rest = head[used..].to_vec();
    let mut pending: &mut [u8] = &mut rest;
    loop {
        let now = Instant::now();
        let mut input = std::mem::take(&mut pending);
        if input.is_empty() {
            buf.clear(); // compio reads into the spare capacity
            let BufResult(n, b) = s.read(buf).await;
            buf = b;
            let n = n?;
            if n == 0 {
                conn.handle_eof();
            }
            input = &mut buf[..];
        }
        while let Some(i) = conn.poll_input(&mut input, now) {
            let _ = match i {
                Input::Text(t) => conn.send_borrowed(true, t.as_bytes()),
                Input::Binary(b) => conn.send_borrowed(false, b),
                Input::Event(Event::Message(Message::Text(t))) => conn.send(Message::Text(t)),
                Input::Event(Event::Message(Message::Binary(b))) => conn.send(Message::Binary(b)),
                Input::Event(Event::Message(Message::Ping(_))) => {
                    conn.queue_pong();
                    Ok(())
                }
                Input::Event(_) => Ok(()),
            };
        }
        while let Some(chunk) = conn.poll_transmit() {
            let BufResult(r, _) = s.write_all(chunk).await;
            r?;
        }
        if conn.is_finished() {
            return Ok(());
        }
    }
}
