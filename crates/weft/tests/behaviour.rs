//! The tokio adapter's behaviour over real loopback sockets: handshake callback and rejections,
//! TLS, cancel safety, split halves, backpressure, keep-alive, idle buffers.

mod support;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use weft::{
    Acceptor, ClientBuilder, CloseCode, CloseFrame, Config, ConnectionError, Message, Rejection, Role, Timeout,
};

#[tokio::test]
async fn accept_callback_sees_the_request_and_can_refuse() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        for _ in 0..2 {
            let (tcp, _) = l.accept().await.unwrap();
            let res = Acceptor::new()
                .accept_with(tcp, |req, resp| {
                    assert_eq!(req.uri().path(), "/room");
                    match req.headers().get("authorization").map(|v| v.to_str().unwrap()) {
                        Some("Bearer good") => {
                            resp.headers_mut().insert("x-user", "alice".parse().unwrap());
                            Ok(())
                        }
                        _ => Err(Rejection::new(StatusCode::UNAUTHORIZED, "bad token")),
                    }
                })
                .await;
            if let Ok(mut ws) = res {
                let q = "user=alice";
                ws.send(Message::text(q)).await.unwrap();
                let _ = ws.close(None).await;
            }
        }
    });
    let err = ClientBuilder::new(format!("ws://{addr}/room?x=1"))
        .header("Authorization", "Bearer bad")
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_handshake());
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));

    let mut ws =
        ClientBuilder::new(format!("ws://{addr}/room")).header("Authorization", "Bearer good").connect().await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("user=alice"));
}

/// A TCP connection that has sent a valid upgrade request by hand (the 101 is not read).
async fn raw_upgrade(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    tcp
}

async fn raw_request(addr: std::net::SocketAddr, req: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bad_upgrade_requests_get_the_right_status() {
    let addr = weft_echo_server(Acceptor::new()).await;
    let ok = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert!(raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 426"));
    assert!(raw_request(addr, &ok.replace("Version: 13", "Version: 7")).await.starts_with("HTTP/1.1 426"));
    assert!(raw_request(addr, &ok.replace("GET", "POST")).await.starts_with("HTTP/1.1 405"));
    assert!(raw_request(addr, &ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc")).await.starts_with("HTTP/1.1 400"));
    assert!(raw_request(addr, "\x16\x03\x01 garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    // The server still serves valid clients afterwards.
    let mut ws = weft::connect(&format!("ws://{addr}/")).await.unwrap();
    ws.send("still alive").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("still alive"));
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let addr = weft_echo_server(Acceptor::new().subprotocols(["v2", "v1"])).await;
    let ws = ClientBuilder::new(format!("ws://{addr}/")).subprotocol("v1").subprotocol("v2").connect().await.unwrap();
    assert_eq!(ws.subprotocol(), Some("v2"), "the server's preference among offered ones");
    let ws = ClientBuilder::new(format!("ws://{addr}/")).subprotocol("other").connect().await.unwrap();
    assert_eq!(ws.subprotocol(), None);
}

#[tokio::test]
async fn tls_with_a_self_signed_root() {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().to_vec();
    let key = rustls_pki_types_key(cert.signing_key.serialize_der());
    let server_cfg = rustls::ServerConfig::builder_with_provider(weft::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone().into()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            // The first client does not trust our certificate: its handshake fails.
            let Ok(tls) = acceptor.accept(tcp).await else { continue };
            // A request for /private is refused with a reason (read over TLS by the client).
            let Ok(mut ws) = Acceptor::new()
                .accept_with(tls, |req, _| match req.uri().path() {
                    "/private" => Err(Rejection::new(StatusCode::FORBIDDEN, "no entry for you")),
                    _ => Ok(()),
                })
                .await
            else {
                continue;
            };
            while let Some(Ok(m)) = ws.recv().await {
                if m.is_data() {
                    ws.send(m).await.unwrap();
                }
            }
        }
    });
    // Unknown root: refused.
    let err = weft::connect(&format!("wss://localhost:{}/", addr.port())).await.unwrap_err();
    assert!(err.is_io(), "{err}");
    let mut ws = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .add_root_certificate(cert_der)
        .connect()
        .await
        .unwrap();
    ws.send(Message::binary(vec![5u8; 300_000])).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(vec![5u8; 300_000]));
    ws.close(None).await.unwrap();
    let err = ClientBuilder::new(format!("wss://localhost:{}/private", addr.port()))
        .add_root_certificate(cert.cert.der().to_vec())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(err.response_body(), Some(&b"no entry for you"[..]));
    assert!(err.to_string().ends_with("no entry for you"), "{err}");
}

fn rustls_pki_types_key(der: Vec<u8>) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls::pki_types::PrivateKeyDer::Pkcs8(der.into())
}

/// A transport that hands out one byte per read and is Pending every other poll.
struct Trickle<S> {
    inner: S,
    flip: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.flip = !self.flip;
        if self.flip {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut one = [0u8; 1];
        let mut rb = ReadBuf::new(&mut one);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        if let Poll::Ready(Ok(())) = r {
            buf.put_slice(rb.filled());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn recv_is_cancel_safe_with_byte_at_a_time_reads() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut server = weft::WebSocket::from_raw(Trickle { inner: a, flip: false }, Role::Server, Config::default());
    let mut client = weft::WebSocket::from_raw(b, Role::Client, Config::default());
    let sent: Vec<Message> = (0..40)
        .map(|i| if i % 2 == 0 { Message::text(format!("msg {i} ✓")) } else { Message::binary(vec![i as u8; 300 * i]) })
        .collect();
    let to_send = sent.clone();
    tokio::spawn(async move {
        for m in to_send {
            client.feed(m).await.unwrap();
        }
        client.flush().await.unwrap();
        // Keep reading so the close handshake can complete.
        while client.recv().await.is_some() {}
    });
    let mut got = Vec::new();
    let mut cancelled = 0;
    while got.len() < sent.len() {
        // A timer that fires constantly: the recv future is dropped mid-frame again and again.
        tokio::select! {
            m = server.recv() => got.push(m.unwrap().unwrap()),
            _ = tokio::task::yield_now() => cancelled += 1,
        }
    }
    assert_eq!(got, sent);
    assert!(cancelled > 100, "recv was dropped mid-read {cancelled} times");
}

#[tokio::test]
async fn split_halves_work_from_different_tasks_and_reunite() {
    let addr = weft_echo_server(Acceptor::new()).await;
    let ws = weft::connect(&format!("ws://{addr}/")).await.unwrap();
    let (mut rx, mut tx) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..1000 {
            tx.feed(Message::text(format!("{i}"))).await.unwrap();
            if i % 50 == 0 {
                tx.flush().await.unwrap();
            }
        }
        tx.flush().await.unwrap();
        tx
    });
    let reader = tokio::spawn(async move {
        for i in 0..1000 {
            assert_eq!(rx.recv().await.unwrap().unwrap(), Message::text(format!("{i}")));
        }
        rx
    });
    let (tx, rx) = (writer.await.unwrap(), reader.await.unwrap());
    let mut ws = rx.reunite(tx).unwrap();
    ws.send("reunited").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("reunited"));
}

#[tokio::test]
async fn a_peer_that_does_not_read_hits_backpressure() {
    let (l, addr) = listener().await;
    // The client completes the handshake, then never reads again.
    let client = tokio::spawn(async move {
        let ws = weft::connect(&format!("ws://{addr}/")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(ws);
    });
    let (tcp, _) = l.accept().await.unwrap();
    let mut ws = Acceptor::new().config(Config::default().max_buffered(1 << 20)).accept(tcp).await.unwrap();
    let chunk = Message::binary(vec![0u8; 64 << 10]);
    let mut err = None;
    for _ in 0..10_000 {
        if let Err(e) = ws.try_feed(chunk.clone()) {
            err = Some(e);
            break;
        }
        // Write what the socket takes without waiting.
        let _ = tokio::time::timeout(Duration::from_millis(1), ws.flush()).await;
    }
    let err = err.expect("queue must refuse once over max_buffered");
    assert!(err.is_backpressure(), "{err}");
    assert!(ws.buffered_amount() <= (1 << 20) + (64 << 10) + 14);
    client.abort();
}

#[tokio::test]
async fn keepalive_closes_a_silent_peer_with_1011() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        // Complete the handshake by hand, then go silent (never answer pings).
        let mut tcp = raw_upgrade(addr).await;
        let mut sink = vec![0u8; 4096];
        while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    let (tcp, _) = l.accept().await.unwrap();
    let cfg = Config::default()
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Duration::from_millis(100))
        .close_timeout(Duration::from_millis(200));
    let mut ws = Acceptor::new().config(cfg).accept(tcp).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.expect("must time out, not hang");
    let err = end.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.connection_error(), Some(&ConnectionError::TimedOut(Timeout::Pong)));
    assert_eq!(err.close_code(), Some(CloseCode::INTERNAL));
}

#[tokio::test]
async fn protocol_violation_is_reported_with_its_close_code() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = weft::accept(tcp).await.unwrap();
        ws.recv().await.unwrap().unwrap_err()
    });
    let mut tcp = raw_upgrade(addr).await;
    // Unmasked text frame from a client: 1002.
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let err = server.await.unwrap();
    assert!(err.is_protocol(), "{err}");
    assert_eq!(err.close_code(), Some(CloseCode::PROTOCOL));
    // The client received the close frame (after the 101 response) before the server shut down.
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(buf[head_end], 0x88, "a close frame");
    assert_eq!(&buf[head_end + 2..head_end + 4], &[0x03, 0xea], "with code 1002");
}

#[tokio::test]
async fn clean_close_from_the_server_ends_the_client_stream() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = weft::accept(tcp).await.unwrap();
        ws.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "restart"))).await.unwrap();
    });
    let mut ws = weft::connect(&format!("ws://{addr}/")).await.unwrap();
    let m = ws.recv().await.unwrap().unwrap();
    assert_eq!(m, Message::Close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "restart"))));
    assert!(ws.recv().await.is_none(), "a clean close ends the stream");
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffers() {
    let addr = weft_echo_server(Acceptor::new()).await;
    let mut ws = weft::connect(&format!("ws://{addr}/")).await.unwrap();
    for _ in 0..10 {
        ws.send(Message::binary(vec![1u8; 10_000])).await.unwrap();
        ws.recv().await.unwrap().unwrap();
    }
    // Poll once more so the reader sees "nothing to read" and releases its buffers.
    let _ = tokio::time::timeout(Duration::from_millis(20), ws.recv()).await;
    assert_eq!(ws.buffer_capacity(), 0);
}

#[tokio::test]
async fn handshake_refused_status_is_surfaced_and_connect_errors_are_io() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut tcp, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = tcp.read(&mut b).await;
        tcp.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.unwrap();
    });
    let err = weft::connect(&format!("ws://{addr}/missing")).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    let err = weft::connect("ws://127.0.0.1:1/").await.unwrap_err();
    assert!(err.is_io());
    let err = weft::connect("http//nope").await.unwrap_err();
    assert!(err.is_handshake());
}

/// Counts the write calls that reach the transport.
struct CountWrites<S> {
    inner: S,
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountWrites<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountWrites<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Regression: `recv` used to write out everything queued each time it returned a message, so
/// an echo loop made one write per message instead of one per batch (16 sendto per recvfrom).
#[tokio::test]
async fn fed_messages_leave_in_one_write_per_batch() {
    use futures_util::FutureExt;
    let (a, b) = tokio::io::duplex(1 << 20);
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut server =
        weft::WebSocket::from_raw(CountWrites { inner: a, writes: writes.clone() }, Role::Server, Config::default());
    let mut client = weft::WebSocket::from_raw(b, Role::Client, Config::default());
    for i in 0..16 {
        client.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    // Echo everything that is already available, then flush once.
    let mut echoed = 0;
    let mut next = server.recv().await;
    while let Some(Ok(m)) = next {
        server.feed(m).await.unwrap();
        echoed += 1;
        next = server.recv().now_or_never().flatten();
    }
    server.flush().await.unwrap();
    assert_eq!(echoed, 16);
    let n = writes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n <= 2, "{n} transport writes for one batch of 16 echoes");
    for i in 0..16 {
        assert_eq!(client.recv().await.unwrap().unwrap(), Message::text(format!("m{i}")));
    }
}

#[tokio::test]
async fn http_urls_are_refused_before_connecting() {
    for url in ["http://127.0.0.1:1/", "https://127.0.0.1:1/"] {
        let e = ClientBuilder::new(url).connect().await.unwrap_err();
        assert!(e.to_string().contains("ws://"), "{url}: {e}");
    }
}
