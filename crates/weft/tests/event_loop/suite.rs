use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message as TMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as TCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TCloseCode;
use weft::event_loop::{Conn, EventLoop, Handler, LoopConfig, LoopHandle, LoopStats, Payload};
use weft::{Acceptor, CloseCode, Config, ConnectionError, Message, Rejection};

/// What the test handler saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Open(String),
    Ping(Vec<u8>),
    Close(String, u16),
}

/// Echoes data; refuses `/forbidden`; reports opens, pings and closes.
struct Echo {
    seen: mpsc::Sender<Seen>,
    /// The most output any connection had queued when a message or ping arrived.
    max_buffered: Arc<AtomicUsize>,
    /// `on_idle` calls.
    idled: Arc<AtomicUsize>,
}

impl Handler for Echo {
    type Session = String;

    fn upgrade(&mut self, req: &http::Request<()>, resp: &mut http::Response<()>) -> Result<String, Rejection> {
        if req.uri().path() == "/forbidden" {
            return Err(Rejection::new(StatusCode::FORBIDDEN, "not here"));
        }
        assert_ne!(req.uri().path(), "/panic", "a handler bug in upgrade (the test's)");
        resp.headers_mut().insert("x-path", req.uri().path().parse().unwrap());
        Ok(req.uri().path().to_owned())
    }

    fn on_open(&mut self, session: &mut String, _conn: &mut Conn<'_>) {
        let _ = self.seen.send(Seen::Open(session.clone()));
    }

    fn on_message(&mut self, session: &mut String, conn: &mut Conn<'_>, msg: Payload<'_>) {
        if msg == Payload::Text("close me") {
            conn.close(CloseCode::NORMAL, session);
            return;
        }
        assert_ne!(msg, Payload::Text("panic"), "a handler bug in on_message (the test's)");
        self.max_buffered.fetch_max(conn.buffered_amount(), Ordering::Relaxed);
        // Refused once we sent a close frame (data may still arrive until the peer answers).
        let _ = conn.send(msg);
    }

    fn on_control(&mut self, _: &mut String, conn: &mut Conn<'_>, msg: &Message) {
        self.max_buffered.fetch_max(conn.buffered_amount(), Ordering::Relaxed);
        if let Message::Ping(p) = msg {
            if p.len() < 100 {
                let _ = self.seen.send(Seen::Ping(p.to_vec()));
            }
        }
    }

    fn on_close(&mut self, session: String, reason: &ConnectionError) {
        let _ = self.seen.send(Seen::Close(session, reason.code().0));
    }

    fn on_idle(&mut self, session: &mut String) {
        assert_ne!(session, "/panic-idle", "a handler bug in on_idle (the test's)");
        self.idled.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether this suite's backend cannot run here: io_uring may be missing (a kernel before 6.1,
/// a container whose seccomp profile forbids it). The suite then says so and passes, unless
/// `WEFT_REQUIRE_IO_URING` is set (scripts/test.sh sets it: CI's kernel has io_uring).
fn backend_missing() -> bool {
    if BACKEND != weft::event_loop::Backend::IoUring {
        return false;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = LoopConfig { backend: weft::event_loop::Backend::Auto, ..LoopConfig::default() };
    let Some(why) = EventLoop::new(l, Acceptor::new(), config, Nop).unwrap().fallback().map(str::to_owned) else {
        return false;
    };
    assert!(std::env::var_os("WEFT_REQUIRE_IO_URING").is_none(), "io_uring is required here but unavailable: {why}");
    eprintln!("skipped: io_uring is unavailable here ({why})");
    true
}

struct Nop;

impl Handler for Nop {
    type Session = ();
    fn upgrade(&mut self, _: &http::Request<()>, _: &mut http::Response<()>) -> Result<(), Rejection> {
        Ok(())
    }
    fn on_message(&mut self, _: &mut (), _: &mut Conn<'_>, _: Payload<'_>) {}
}

/// The loop settings of this suite's backend.
fn loop_config() -> LoopConfig {
    LoopConfig { backend: BACKEND, ..LoopConfig::default() }
}

struct Server {
    addr: SocketAddr,
    stop: LoopHandle,
    seen: mpsc::Receiver<Seen>,
    max_buffered: Arc<AtomicUsize>,
    idled: Arc<AtomicUsize>,
    thread: Option<JoinHandle<LoopStats>>,
}

impl Server {
    fn start(acceptor: Acceptor, config: LoopConfig) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, seen) = mpsc::channel();
        let max_buffered = Arc::new(AtomicUsize::new(0));
        let idled = Arc::new(AtomicUsize::new(0));
        let echo = Echo { seen: tx, max_buffered: Arc::clone(&max_buffered), idled: Arc::clone(&idled) };
        let mut ev = EventLoop::new(l, acceptor, config, echo).unwrap();
        assert_eq!(ev.backend(), BACKEND, "the backend asked for runs");
        let stop = ev.stop_handle();
        let thread = Some(std::thread::spawn(move || {
            ev.run().unwrap();
            ev.stats()
        }));
        Server { addr, stop, seen, max_buffered, idled, thread }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Stop the loop and return its counters.
    fn stop(mut self) -> LoopStats {
        self.stop.stop();
        self.thread.take().unwrap().join().unwrap()
    }

    fn next_seen(&self) -> Seen {
        self.seen.recv_timeout(Duration::from_secs(5)).expect("handler callback")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// Send a raw request head and read the answer until the server closes.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn echoes_every_size_and_shape_to_tungstenite() {
    if backend_missing() {
        return;
    }
    let server = Server::start(Acceptor::new(), loop_config());
    let (mut ws, resp) = tokio_tungstenite::connect_async(server.url("/chat")).await.unwrap();
    assert_eq!(resp.headers()["x-path"], "/chat");
    assert_eq!(server.next_seen(), Seen::Open("/chat".into()));
    // Sizes on both sides of every header form and of the loop's 256 KiB receive buffer.
    for size in [0usize, 1, 125, 126, 65_535, 65_536, 200_000, 262_144, 1 << 20, 3 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(TMessage::binary(payload.clone())).await.unwrap();
        let text = "ü".repeat(size / 2);
        ws.send(TMessage::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), TMessage::binary(payload), "binary {size}");
        assert_eq!(ws.next().await.unwrap().unwrap(), TMessage::text(text), "text {size}");
    }
    // Many small messages in one write: each answered, in order.
    let batch: Vec<TMessage> = (0..1000).map(|i| TMessage::text(format!("m{i}"))).collect();
    for m in &batch {
        ws.feed(m.clone()).await.unwrap();
    }
    ws.flush().await.unwrap();
    for m in batch {
        assert_eq!(ws.next().await.unwrap().unwrap(), m);
    }
    // A ping is answered (and reported to the handler).
    ws.send(TMessage::Ping(b"are you there".to_vec().into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), TMessage::Pong(b"are you there".to_vec().into()));
    assert_eq!(server.next_seen(), Seen::Ping(b"are you there".to_vec()));
    // The close handshake: our code comes back, the handler hears it.
    ws.close(Some(TCloseFrame { code: TCloseCode::Away, reason: "bye".into() })).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if let TMessage::Close(Some(f)) = m {
            assert_eq!(f.code, TCloseCode::Away);
        }
    }
    assert_eq!(server.next_seen(), Seen::Close("/chat".into(), 1001));
    let stats = server.stop();
    assert_eq!((stats.opened, stats.open), (1, 0));
}

#[tokio::test]
async fn fragmented_messages_and_server_initiated_close() {
    if backend_missing() {
        return;
    }
    let server = Server::start(Acceptor::new(), loop_config());
    let (ws, _) = tokio_tungstenite::connect_async(server.url("/frag")).await.unwrap();
    let mut ws = ws;
    // tungstenite splits nothing by itself: send raw fragments through its frame API.
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};
    let parts = ["hel", "lo ", "wörld"];
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        ws.send(TMessage::Frame(Frame::message(p.as_bytes().to_vec(), op, i == parts.len() - 1))).await.unwrap();
    }
    assert_eq!(ws.next().await.unwrap().unwrap(), TMessage::text("hello wörld"));
    ws.send(TMessage::text("close me")).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        TMessage::Close(Some(f)) => {
            assert_eq!(f.code, TCloseCode::Normal);
            assert_eq!(f.reason, "/frag");
        }
        other => panic!("{other:?}"),
    }
    server.stop();
}

#[test]
fn bad_requests_get_their_status_and_others_are_still_served() {
    if backend_missing() {
        return;
    }
    let server = Server::start(Acceptor::new(), loop_config());
    let plain = raw_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    let bad_key = raw_exchange(server.addr, UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short").as_bytes());
    assert!(bad_key.starts_with("HTTP/1.1 400"), "{bad_key}");
    let garbage = raw_exchange(server.addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let refused = raw_exchange(server.addr, UPGRADE.replace("/chat", "/forbidden").as_bytes());
    assert!(refused.starts_with("HTTP/1.1 403") && refused.ends_with("not here"), "{refused}");
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let too_large = raw_exchange(server.addr, huge.as_bytes());
    assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
    // The upgrade itself, with a frame right behind the head (one write): answered too.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = [0x81u8, 0x82, 0, 0, 0, 0, b'h', b'i'];
    s.write_all(&[UPGRADE.as_bytes(), &frame].concat()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(&[0x81, 0x02, b'h', b'i']) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let stats = server.stop();
    assert_eq!(stats.failed_handshakes, 5);
}

#[test]
fn handshakes_are_bounded_in_number_and_time() {
    if backend_missing() {
        return;
    }
    let acceptor = Acceptor::new().handshake_timeout(Duration::from_millis(300));
    let server = Server::start(acceptor, LoopConfig { max_handshakes: 4, ..loop_config() });
    // Four peers that never finish their request, then a fifth: closed at once.
    let mut slow: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    for s in &mut slow {
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut fifth = TcpStream::connect(server.addr).unwrap();
    fifth.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(fifth.read(&mut [0u8; 16]).unwrap_or(0), 0, "the fifth handshake is closed");
    // The slow ones are dropped once their time is up.
    let t = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0);
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // And a prompt client is served afterwards.
    let ok = raw_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 426"), "{ok}");
    let stats = server.stop();
    assert_eq!(stats.refused_handshakes, 1);
    assert!(stats.failed_handshakes >= 4, "{stats:?}");
}

#[test]
fn a_peer_that_never_reads_stops_being_read() {
    if backend_missing() {
        return;
    }
    // Echoes from a peer that reads nothing: the server must stop reading once its output for
    // the peer is above the high-water mark, so what the peer manages to write before its
    // socket blocks is bounded by kernel buffers, not by the server's memory. Pings from such a
    // peer cost one pending pong however many arrive: output stays bounded too.
    let config = Config::default().write_buffer_high_water(64 << 10);
    let server = Server::start(Acceptor::new().config(config), loop_config());
    for ping in [false, true] {
        let mut s = raw_upgrade(server.addr);
        let payload = vec![b'x'; 16 << 10];
        let mut frame = vec![if ping { 0x89 } else { 0x82 }, 0x80 | if ping { 125 } else { 126 }];
        if !ping {
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(if ping { &payload[..125] } else { &payload });
        s.set_nonblocking(true).unwrap();
        let mut written = 0usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut blocked_since: Option<Instant> = None;
        let limit = if ping { 64 << 20 } else { 256 << 20 };
        while Instant::now() < deadline && written < limit {
            // Whole frames in a row, however the writes split them.
            let at = written % frame.len();
            match s.write(&frame[at..]) {
                Ok(n) => {
                    written += n;
                    blocked_since = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("ping={ping} after {written} bytes: {e}"),
            }
        }
        if !ping {
            // Kernel buffers on both sides are a few MiB on loopback; 256 MiB would mean the
            // server kept reading.
            assert!(written < (64 << 20), "the peer wrote {written} bytes without reading");
            assert!(blocked_since.is_some(), "the writes never blocked");
        }
        let max = server.max_buffered.load(Ordering::Relaxed);
        assert!(max <= (64 << 10) + (256 << 10), "ping={ping}: {max} bytes queued for a peer that does not read");
    }
    server.stop();
}

#[tokio::test]
async fn stop_closes_every_websocket_with_1001() {
    if backend_missing() {
        return;
    }
    let server = Server::start(Acceptor::new(), loop_config());
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (ws, _) = tokio_tungstenite::connect_async(server.url("/s")).await.unwrap();
        clients.push(ws);
    }
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    for mut ws in clients {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            Some(Ok(TMessage::Close(Some(f)))) => assert_eq!(f.code, TCloseCode::Away),
            other => panic!("{other:?}"),
        }
        // Answer, as a well-behaved client does; the loop may then finish.
        let _ = ws.close(None).await;
    }
    let stats = stopping.await.unwrap();
    assert_eq!((stats.opened, stats.open), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_receive_buffers_carry_every_message_of_many_busy_peers() {
    if backend_missing() {
        return;
    }
    // Two 4 KiB buffers for 24 peers sending at once: io_uring runs out of ring buffers (its
    // receives end and are re-armed) and every frame larger than a buffer is assembled across
    // several receives; epoll reads 4 KiB at a time. Nothing may be lost or reordered.
    // (io_uring: with and without incremental consumption, whatever this kernel has.)
    for ring_incremental in [true, false] {
        let config = LoopConfig { read_buffer_size: 4096, ring_buffers: 2, ring_incremental, ..loop_config() };
        many_busy_peers(config).await;
    }
}

async fn many_busy_peers(config: LoopConfig) {
    let server = Server::start(Acceptor::new(), config);
    let mut peers = Vec::new();
    for p in 0..24u8 {
        let url = server.url("/busy");
        peers.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let sizes = [1usize, 100, 4000, 4096, 5000, 70_000, 200_000, 3];
            let writer = tokio::spawn(async move {
                for (i, &n) in sizes.iter().enumerate() {
                    let body: Vec<u8> = (0..n).map(|j| (j as u8) ^ p ^ i as u8).collect();
                    tx.send(TMessage::binary(body)).await.unwrap();
                }
                tx
            });
            for (i, &n) in sizes.iter().enumerate() {
                let m = tokio::time::timeout(Duration::from_secs(20), rx.next()).await.expect("echo").unwrap().unwrap();
                let want: Vec<u8> = (0..n).map(|j| (j as u8) ^ p ^ i as u8).collect();
                assert!(m.into_data()[..] == want[..], "peer {p}, message {i} ({n} bytes) differs");
            }
            let mut tx = writer.await.unwrap();
            tx.send(TMessage::Close(None)).await.unwrap();
        }));
    }
    for p in peers {
        p.await.unwrap();
    }
    server.stop();
}

#[test]
fn a_burst_then_close_then_end_of_stream_is_all_handled_in_order() {
    if backend_missing() {
        return;
    }
    // A peer sends a burst of messages, its close frame and the end of its stream in one go,
    // before reading. With a high-water mark of one byte, every echo stops the hand-over of
    // input (io_uring: the receive is cancelled and what already arrived waits in a stash), so
    // the end of the stream is known while input still waits: every message must still be
    // echoed, in order, and the close answered with the peer's code, not dropped as a reset.
    let config = Config::default().write_buffer_high_water(1);
    let server = Server::start(Acceptor::new().config(config), loop_config());
    for round in 0..5 {
        let mut s = raw_upgrade(server.addr);
        assert_eq!(server.next_seen(), Seen::Open("/chat".into()));
        const N: usize = 8;
        let mut burst = Vec::new();
        for i in 0..N {
            burst.extend_from_slice(&[0x82, 0x80 | 100, 0, 0, 0, 0]);
            burst.extend(std::iter::repeat_n(i as u8, 100));
        }
        burst.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]); // close 1000, masked
        s.write_all(&burst).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let mut want = Vec::new();
        for i in 0..N {
            want.extend_from_slice(&[0x82, 100]);
            want.extend(std::iter::repeat_n(i as u8, 100));
        }
        want.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]);
        assert!(all == want, "round {round}: {} bytes back, want {}", all.len(), want.len());
        assert_eq!(server.next_seen(), Seen::Close("/chat".into(), 1000));
    }
    let stats = server.stop();
    assert_eq!((stats.open, stats.opened), (0, 5));
}

#[test]
fn refuses_stream_fragments() {
    if backend_missing() {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (tx, _rx) = mpsc::channel();
    let acceptor = Acceptor::new().config(Config::default().stream_fragments(true));
    let echo = Echo { seen: tx, max_buffered: Default::default(), idled: Default::default() };
    let err = EventLoop::new(l, acceptor, loop_config(), echo).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn pipelined_large_messages_all_come_back() {
    if backend_missing() {
        return;
    }
    // Reading pauses whenever the echoes queued for a connection pass the high-water mark;
    // once they are written, reading must resume even though no new bytes arrive (the peer
    // has sent everything and waits): a loop that waited for a new readiness edge would hang.
    let config = Config::default().write_buffer_high_water(16 << 10);
    let server = Server::start(Acceptor::new().config(config), loop_config());
    let mut tasks = Vec::new();
    for c in 0..4u8 {
        let url = server.url("/p");
        tasks.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let n = 100;
            let writer = tokio::spawn(async move {
                for i in 0..n {
                    tx.feed(TMessage::binary(vec![c ^ i as u8; 64 << 10])).await.unwrap();
                }
                tx.flush().await.unwrap();
                tx
            });
            for i in 0..n {
                let m = tokio::time::timeout(Duration::from_secs(10), rx.next()).await.expect("echo stalled");
                assert_eq!(m.unwrap().unwrap(), TMessage::binary(vec![c ^ i as u8; 64 << 10]));
            }
            let _sink = writer.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop();
}

/// Upgrade a raw socket; return it after the 101 head.
fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(UPGRADE.as_bytes()).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

#[test]
fn a_peer_that_sends_and_closes_at_once_is_noticed() {
    if backend_missing() {
        return;
    }
    // Bytes and the end of file arriving together make one readiness event: the loop must
    // read on to the end of file rather than take a short read as "nothing more".
    let server = Server::start(Acceptor::new(), loop_config());
    for _ in 0..20 {
        let mut s = raw_upgrade(server.addr);
        assert_eq!(server.next_seen(), Seen::Open("/chat".into()));
        s.write_all(&[0x82, 0x85, 0, 0, 0, 0, b'h']).unwrap(); // half a frame
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(server.next_seen(), Seen::Close("/chat".into(), 1006));
    }
    let stats = server.stop();
    assert_eq!(stats.open, 0);
}

#[test]
fn stop_does_not_wait_for_a_peer_that_never_reads() {
    if backend_missing() {
        return;
    }
    // A peer that stops reading keeps our close frame queued behind its echoes: after the
    // close timeout the connection is dropped, not held until the end of the grace period.
    let config = Config::default().write_buffer_high_water(16 << 10).close_timeout(Duration::from_millis(300));
    let server = Server::start(
        Acceptor::new().config(config),
        LoopConfig { shutdown_grace: Duration::from_secs(60), ..loop_config() },
    );
    let mut s = raw_upgrade(server.addr);
    assert_eq!(server.next_seen(), Seen::Open("/chat".into()));
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&(16u16 << 10).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&[b'x'; 16 << 10]);
    s.set_nonblocking(true).unwrap();
    let (mut written, mut blocked) = (0usize, 0);
    while blocked < 50 && written < (256 << 20) {
        match s.write(&frame[written % frame.len()..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                blocked += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let t = Instant::now();
    server.stop.stop();
    let seen = server.seen.recv_timeout(Duration::from_secs(10)).expect("the connection ended");
    // Not a clean close: the peer never answered (it read nothing).
    assert_eq!(seen, Seen::Close("/chat".into(), 1006));
    let mut server = server;
    let stats = server.thread.take().unwrap().join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
    assert_eq!(stats.open, 0);
}

#[tokio::test]
async fn extreme_timer_settings_neither_panic_nor_spin() {
    if backend_missing() {
        return;
    }
    // `Duration::MAX` means no handshake limit (no overflow); a zero ping interval pings at
    // most once per loop turn instead of spinning in the timer queue.
    let config = Config::default().ping_interval(Some(Duration::ZERO));
    let acceptor = Acceptor::new().config(config).handshake_timeout(Duration::MAX);
    let server = Server::start(acceptor, loop_config());
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/t")).await.unwrap();
    ws.send(TMessage::text("still here")).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer").unwrap().unwrap() {
            TMessage::Ping(_) | TMessage::Pong(_) => continue,
            m => {
                assert_eq!(m, TMessage::text("still here"));
                break;
            }
        }
    }
    drop(ws);
    server.stop();
}

/// A handler that panics loses only the connection it was called for: 1011 there (500 for a
/// panicking `upgrade`), every other connection served on, the panics counted.
#[tokio::test]
async fn a_panicking_handler_closes_its_connection_with_1011_and_the_loop_goes_on() {
    if backend_missing() {
        return;
    }
    let server = Server::start(Acceptor::new(), loop_config());
    let (mut a, _) = tokio_tungstenite::connect_async(server.url("/a")).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(server.url("/b")).await.unwrap();
    a.send(TMessage::text("panic")).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), a.next()).await.expect("close") {
            Some(Ok(TMessage::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1011);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let addr = server.addr;
    let refused = tokio::task::spawn_blocking(move || raw_exchange(addr, UPGRADE.replace("/chat", "/panic").as_bytes()));
    let refused = refused.await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 500"), "{refused}");
    b.send(TMessage::text("still served")).await.unwrap();
    assert_eq!(b.next().await.unwrap().unwrap(), TMessage::text("still served"));
    b.close(None).await.unwrap();
    drop(a);
    let stats = server.stop();
    assert_eq!(stats.handler_panics, 2, "{stats:?}");
}

/// A run that fails (here: made to, as if the kernel refused the loop's wait) returns the
/// error and ends every connection: each handler hears of it and each socket closes, so peers
/// see the end instead of waiting on descriptors nobody owns.
#[test]
fn a_failed_run_closes_every_connection() {
    if backend_missing() {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, seen) = mpsc::channel();
    let echo = Echo { seen: tx, max_buffered: Arc::default(), idled: Arc::default() };
    let mut ev = EventLoop::new(l, Acceptor::new(), loop_config(), echo).unwrap();
    let handle = ev.stop_handle();
    let thread = std::thread::spawn(move || {
        let r = ev.run();
        (r, ev)
    });
    let mut peers: Vec<TcpStream> = (0..3).map(|_| raw_upgrade(addr)).collect();
    for _ in 0..3 {
        assert!(matches!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), Seen::Open(_)));
    }
    handle.fail_next_turn();
    let (r, ev) = thread.join().unwrap();
    assert!(r.unwrap_err().to_string().contains("injected"));
    for _ in 0..3 {
        assert!(matches!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), Seen::Close(..)));
    }
    // The loop still exists: its sockets are closed all the same.
    for p in &mut peers {
        let mut b = [0u8; 64];
        match p.read(&mut b) {
            Ok(0) => {}
            Ok(_) => {} // a close frame is fine too; the end must follow
            Err(e) => assert!(e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut, "{e}"),
        }
    }
    drop(ev);
}

/// Connections quiet for a pass (`LoopConfig::idle_after`) are stored small, and come back
/// whole for whatever happens next: a message, a keep-alive ping the server's timer sends while
/// the connection is stored, the peer's close.
#[tokio::test]
async fn idle_connections_are_stored_small_and_come_back_whole() {
    if backend_missing() {
        return;
    }
    let acceptor = Acceptor::new().config(Config::default().ping_interval(Some(Duration::from_millis(400))));
    let config = LoopConfig { idle_after: Some(Duration::from_millis(20)), ..loop_config() };
    let server = Server::start(acceptor, config);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/quiet")).await.unwrap();
    assert_eq!(server.next_seen(), Seen::Open("/quiet".into()));
    async fn echo(ws: &mut (impl StreamExt<Item = Result<TMessage, tokio_tungstenite::tungstenite::Error>> + SinkExt<TMessage> + Unpin), text: &str) -> usize {
        let _ = ws.send(TMessage::text(text)).await;
        let mut pings = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the echo").unwrap().unwrap() {
                TMessage::Ping(_) => pings += 1,
                m => {
                    assert_eq!(m, TMessage::text(text));
                    return pings;
                }
            }
        }
    }
    for round in 0..3 {
        echo(&mut ws, &format!("round {round}")).await;
        // Several passes: stored small after the echo.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The keep-alive timer fires while the connection is stored: the ping comes, and the
    // connection answers messages after it.
    let mut pings = 0;
    let t = Instant::now();
    while pings == 0 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        pings += echo(&mut ws, "after a while").await;
    }
    assert!(pings > 0, "no keep-alive ping reached a stored connection");
    let big = "x".repeat(100_000);
    echo(&mut ws, &big).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.close(Some(TCloseFrame { code: TCloseCode::Normal, reason: "".into() })).await.unwrap();
    while ws.next().await.is_some() {}
    assert_eq!(server.next_seen(), Seen::Close("/quiet".into(), 1000));
    let idled = Arc::clone(&server.idled);
    let stats = server.stop();
    // Stored at its opening and after each quiet spell; the handler told of each spell.
    assert!(stats.stored_idle >= 5, "{stats:?}");
    let idled = idled.load(Ordering::Relaxed) as u64;
    assert!(idled >= 4 && idled <= stats.stored_idle, "on_idle {idled} times, {stats:?}");
}

/// A connection made whole only for its keep-alive exchange is stored again right after it,
/// and the next pass tells the handler each time (a subscriber that only receives is stored
/// that way after every event, never by a pass of its own).
#[tokio::test]
async fn on_idle_comes_after_each_quiet_storing_too() {
    if backend_missing() {
        return;
    }
    let acceptor = Acceptor::new().config(Config::default().ping_interval(Some(Duration::from_millis(100))));
    let config = LoopConfig { idle_after: Some(Duration::from_millis(20)), ..loop_config() };
    let server = Server::start(acceptor, config);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/pinged")).await.unwrap();
    assert_eq!(server.next_seen(), Seen::Open("/pinged".into()));
    // tungstenite answers the pings while it is read; no data message is exchanged.
    let reader = tokio::spawn(async move {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(1200) {
            let _ = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
        }
        ws
    });
    let mut ws = reader.await.unwrap();
    let idled = Arc::clone(&server.idled);
    let _ = ws.close(None).await;
    let stats = server.stop();
    let idled = idled.load(Ordering::Relaxed);
    assert!(idled >= 4, "on_idle {idled} times over ~11 keep-alive exchanges, {stats:?}");
}

/// A handler that panics in `on_idle` (it only lets go of memory) costs nothing but the count:
/// the loop and the connection go on.
#[tokio::test]
async fn a_panic_in_on_idle_is_caught_and_the_connection_goes_on() {
    if backend_missing() {
        return;
    }
    let config = LoopConfig { idle_after: Some(Duration::from_millis(20)), ..loop_config() };
    let server = Server::start(Acceptor::new(), config);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/panic-idle")).await.unwrap();
    assert_eq!(server.next_seen(), Seen::Open("/panic-idle".into()));
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = format!("round {round}");
        ws.send(TMessage::text(text.clone())).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the echo").unwrap().unwrap();
        assert_eq!(m, TMessage::text(text));
    }
    let stats = server.stop();
    assert!(stats.handler_panics >= 2, "{stats:?}");
}

/// A keep-alive exchange makes a stored connection whole only while it is answered, and a
/// timer that no longer applies (here the handshake's) does not make it whole at all.
#[tokio::test]
async fn keep_alive_pings_and_stale_timers_leave_connections_stored() {
    if backend_missing() {
        return;
    }
    let acceptor = Acceptor::new().handshake_timeout(Duration::from_millis(100));
    let server = Server::start(acceptor, loop_config());
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/kept")).await.unwrap();
    assert_eq!(server.next_seen(), Seen::Open("/kept".into()));
    // The handshake's deadline passes: stale, since the connection opened.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..2u8 {
        ws.send(TMessage::Ping(vec![i].into())).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the pong").unwrap().unwrap() {
            TMessage::Pong(p) => assert_eq!(&p[..], &[i]),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.next_seen(), Seen::Ping(vec![i]));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.close(Some(TCloseFrame { code: TCloseCode::Normal, reason: "".into() })).await.unwrap();
    while ws.next().await.is_some() {}
    assert_eq!(server.next_seen(), Seen::Close("/kept".into(), 1000));
    let stats = server.stop();
    // Stored at its opening and again after each pong was written; made whole for each ping
    // and for the close, never for the stale timer. (`idle_after` is 1 s: no pass ran.)
    assert_eq!((stats.stored_idle, stats.resumed), (3, 3), "{stats:?}");
}

/// A session of [`Hub`]: messages other threads leave for it, and what it still has to send.
#[derive(Default)]
struct Inbox {
    messages: std::sync::Mutex<Vec<String>>,
}

/// A connection's waker and the inbox it reads when woken.
type Registered = (std::task::Waker, Arc<Inbox>);

/// Connections registered with their wakers; other threads leave messages and wake them.
/// `pause` stops reading a connection until a `resume` is left for it; `burst N` sends N
/// 1 KiB messages, moving on only when the output drains (`on_writable`).
#[derive(Clone, Default)]
struct Hub {
    registry: Arc<std::sync::Mutex<Vec<Registered>>>,
    writable_calls: Arc<AtomicUsize>,
}

struct HubSession {
    inbox: Arc<Inbox>,
    burst_left: usize,
}

impl HubSession {
    fn burst(&mut self, conn: &mut Conn<'_>) {
        while self.burst_left > 0 && !conn.connection().above_high_water() {
            self.burst_left -= 1;
            let _ = conn.send(Payload::Binary(&[7u8; 1024]));
        }
    }
}

impl Handler for Hub {
    type Session = HubSession;

    fn upgrade(&mut self, _: &http::Request<()>, _: &mut http::Response<()>) -> Result<HubSession, Rejection> {
        Ok(HubSession { inbox: Arc::default(), burst_left: 0 })
    }

    fn on_open(&mut self, s: &mut HubSession, conn: &mut Conn<'_>) {
        self.registry.lock().unwrap().push((conn.waker(), Arc::clone(&s.inbox)));
    }

    fn on_message(&mut self, s: &mut HubSession, conn: &mut Conn<'_>, msg: Payload<'_>) {
        match msg {
            Payload::Text("pause") => conn.connection().pause_input(true),
            Payload::Text(t) if t.starts_with("burst ") => {
                s.burst_left = t[6..].parse().unwrap();
                s.burst(conn);
            }
            m => {
                let _ = conn.send(m);
            }
        }
    }

    fn on_wake(&mut self, s: &mut HubSession, conn: &mut Conn<'_>) {
        let messages = std::mem::take(&mut *s.inbox.messages.lock().unwrap());
        for m in messages {
            if m == "resume" {
                conn.connection().pause_input(false);
            } else {
                let _ = conn.send(Payload::Text(&m));
            }
        }
    }

    fn on_writable(&mut self, s: &mut HubSession, conn: &mut Conn<'_>) {
        self.writable_calls.fetch_add(1, Ordering::Relaxed);
        s.burst(conn);
    }
}

fn start_hub(hub: Hub, acceptor: Acceptor) -> (SocketAddr, LoopHandle, JoinHandle<LoopStats>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut ev = EventLoop::new(l, acceptor, loop_config(), hub).unwrap();
    let stop = ev.stop_handle();
    let thread = std::thread::spawn(move || {
        ev.run().unwrap();
        ev.stats()
    });
    (addr, stop, thread)
}

/// Work from other threads reaches connections through their wakers: messages left by many
/// threads arrive, each once; a connection paused by its handler is not read until a wake
/// resumes it; and a handler that stops at the high-water mark is told when output drains.
#[tokio::test]
async fn wakers_from_other_threads_pausing_and_draining() {
    if backend_missing() {
        return;
    }
    let hub = Hub::default();
    let (addr, stop, thread) = start_hub(hub.clone(), Acceptor::new());
    let url = format!("ws://{addr}/");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    let t = Instant::now();
    while hub.registry.lock().unwrap().len() < 20 {
        assert!(t.elapsed() < Duration::from_secs(5), "every connection opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Four threads, each leaving 50 messages for every connection, waking it each time.
    let posters: Vec<_> = (0..4)
        .map(|p| {
            let registry = Arc::clone(&hub.registry);
            std::thread::spawn(move || {
                for i in 0..50 {
                    for (waker, inbox) in registry.lock().unwrap().iter() {
                        inbox.messages.lock().unwrap().push(format!("{p}:{i}"));
                        waker.wake_by_ref();
                    }
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    for ws in &mut clients {
        let mut got = Vec::new();
        while got.len() < 200 {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("every message").unwrap().unwrap();
            got.push(m.into_text().unwrap().to_string());
        }
        // Each poster's messages in its order, each once.
        for p in 0..4 {
            let mine: Vec<&String> = got.iter().filter(|m| m.starts_with(&format!("{p}:"))).collect();
            let want: Vec<String> = (0..50).map(|i| format!("{p}:{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
    }

    // Paused: what the client sends after `pause` waits until a wake resumes the connection.
    let ws = &mut clients[0];
    ws.send(TMessage::text("pause")).await.unwrap();
    ws.send(TMessage::text("after the pause")).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), ws.next()).await.is_err(), "read while paused");
    {
        let registry = hub.registry.lock().unwrap();
        let (waker, inbox) = &registry[0];
        inbox.messages.lock().unwrap().push("resume".into());
        waker.wake_by_ref();
    }
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("read once resumed").unwrap().unwrap();
    assert_eq!(m, TMessage::text("after the pause"));

    // 4 MiB through the 128 KiB high-water mark, the client reading slowly at first.
    let ws = &mut clients[1];
    ws.send(TMessage::text("burst 4096")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4096 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the burst").unwrap().unwrap();
        assert_eq!(m.len(), 1024);
    }
    assert!(hub.writable_calls.load(Ordering::Relaxed) > 0, "on_writable was never called");
    drop(clients);
    stop.stop();
    thread.join().unwrap();
}
