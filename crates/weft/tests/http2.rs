//! WebSockets over HTTP/2 (RFC 8441), weft to weft over real sockets: multiplexing, flow
//! control, negotiation, refusals, TLS with ALPN, and a stalled stream that must not stall the
//! others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use weft::h2::{H2Client, H2Server, Http2Config};
use weft::{Acceptor, ClientBuilder, CloseCode, DeflateConfig, Message, Rejection};

/// A cleartext HTTP/2 (prior knowledge) echo server: every WebSocket echoes data messages;
/// `/private` is refused with 403 and a body; `/flood` sends 64 KiB messages until its writes
/// stall, then reports how many it got out and keeps reading.
async fn h2_echo(acceptor: Acceptor) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut h2 = H2Server::handshake(tcp, &acceptor).await.unwrap();
                while let Some(Ok(req)) = h2.accept().await {
                    if !req.is_websocket() {
                        req.respond(StatusCode::NOT_FOUND, "websockets only\n").unwrap();
                        continue;
                    }
                    let path = req.request().uri().path().to_owned();
                    let ws = req.accept_with(|r, resp| {
                        if r.uri().path() == "/private" {
                            // A callback written for HTTP/1.1 may add headers HTTP/2 forbids.
                            return Err(
                                Rejection::new(StatusCode::FORBIDDEN, "no entry for you").header("Connection", "close")
                            );
                        }
                        resp.headers_mut().insert("x-served-by", "weft-h2".parse().unwrap());
                        Ok(())
                    });
                    let Ok(mut ws) = ws else { continue };
                    tokio::spawn(async move {
                        if path == "/flood" {
                            let mut sent = 0u64;
                            loop {
                                let chunk = Message::binary(vec![7u8; 64 * 1024]);
                                match tokio::time::timeout(Duration::from_millis(500), ws.send(chunk)).await {
                                    Ok(Ok(())) => sent += 1,
                                    _ => break,
                                }
                            }
                            // Report on a side channel: the stalled client never reads this one.
                            FLOOD_SENT.store(sent, std::sync::atomic::Ordering::SeqCst);
                            while let Some(Ok(_)) = ws.recv().await {}
                            return;
                        }
                        while let Some(Ok(m)) = ws.recv().await {
                            if m.is_data() && ws.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    });
    addr
}

static FLOOD_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

#[tokio::test]
async fn many_websockets_share_one_connection() {
    let addr = h2_echo(Acceptor::new()).await;
    let client = H2Client::connect(ClientBuilder::new(format!("ws://{addr}/"))).await.unwrap();
    assert_eq!(client.max_streams(), 100);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = client.open(&format!("/n/{i}")).await.unwrap();
            for j in 0..20 {
                let text = format!("{i}:{j}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
            }
            // Larger than every window: flow control must move it in pieces, both ways.
            let big = Message::binary((0..3_000_000u32).map(|x| (x % 251) as u8).collect::<Vec<_>>());
            ws.send(big.clone()).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap(), big);
            ws.close(None).await.unwrap();
            // The close handshake completes and the stream ends cleanly.
            assert!(ws.recv().await.is_none());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn negotiation_and_refusals_match_http1() {
    let acceptor = Acceptor::new()
        .subprotocols(["v2", "v1"])
        .config(weft::Config::default().deflate(Some(DeflateConfig::default())));
    let addr = h2_echo(acceptor).await;
    let base = ClientBuilder::new(format!("ws://{addr}/"))
        .subprotocol("v1")
        .subprotocol("v2")
        .deflate(DeflateConfig::default());
    let client = H2Client::connect(base.clone()).await.unwrap();
    let mut ws = client.open("/x").await.unwrap();
    assert_eq!(ws.subprotocol(), Some("v2"));
    let text = "compress me ".repeat(1000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
    // A refusal reaches the client with its status and body.
    let err = client.open("/private").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    assert_eq!(err.response_body(), Some(&b"no entry for you"[..]));
    // The connection is still good after a refused stream.
    let mut again = client.open("/y").await.unwrap();
    again.send("still here").await.unwrap();
    assert_eq!(again.recv().await.unwrap().unwrap(), Message::text("still here"));
    // A close code travels like over HTTP/1.1.
    ws.close(Some(weft::CloseFrame::new(CloseCode::from(4000), "bye"))).await.unwrap();
    assert!(ws.recv().await.is_none());
}

/// One WebSocket whose reader stopped: the server's writes to it stall (bounded by the stream
/// window and h2's send buffer), and the other WebSockets on the same connection keep working.
#[tokio::test]
async fn a_stalled_stream_does_not_stall_the_others() {
    let addr = h2_echo(Acceptor::new()).await;
    let client = H2Client::connect(ClientBuilder::new(format!("ws://{addr}/"))).await.unwrap();
    let _stalled = client.open("/flood").await.unwrap(); // never read
    let mut live = client.open("/live").await.unwrap();
    for i in 0..50 {
        let m = Message::binary(vec![i as u8; 32 * 1024]);
        live.send(m.clone()).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), live.recv()).await.unwrap().unwrap().unwrap(), m);
    }
    // The flood stopped: at most the stream window (1 MiB), h2's send buffer (1 MiB) and the
    // connection's own high-water mark made it out, not an unbounded amount.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let sent = loop {
        let s = FLOOD_SENT.load(std::sync::atomic::Ordering::SeqCst);
        if s != u64::MAX {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the flood never stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("flood: {sent} messages of 64 KiB before the stall");
    assert!(sent * 64 * 1024 <= 3 * 1024 * 1024, "{sent} messages of 64 KiB left before the stall");
}

#[tokio::test]
async fn clientbuilder_http2_uses_h2_and_plain_http_gets_404() {
    let addr = h2_echo(Acceptor::new()).await;
    let mut ws = ClientBuilder::new(format!("ws://{addr}/one")).http2(Http2Config::default()).connect().await.unwrap();
    assert!(matches!(ws.get_ref(), weft::MaybeTlsStream::H2(_)));
    ws.send("hi").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("hi"));
    // A server that does not announce extended CONNECT is refused with a clear error.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut c = h2::server::handshake(tcp).await.unwrap();
        while c.accept().await.is_some() {}
    });
    let err = H2Client::connect(ClientBuilder::new(format!("ws://{plain}/"))).await.unwrap_err();
    assert!(err.to_string().contains("extended CONNECT"), "{err}");
}

#[tokio::test]
async fn tls_alpn_chooses_h2_or_falls_back_to_http1() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    // h2 with extended CONNECT; http/1.1 only; h2 *without* extended CONNECT (a proxy's HTTP/2).
    for (alpn, connect_protocol) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], true),
        (vec![b"http/1.1".to_vec()], true),
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], false),
    ] {
        let mut cfg = rustls::ServerConfig::builder_with_provider(weft::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone().into()], key.clone_key())
            .unwrap();
        cfg.alpn_protocols = alpn.clone();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let tls = tls.clone();
                tokio::spawn(async move {
                    // H2Client offers only h2: an http/1.1-only server fails its TLS handshake.
                    let Ok(s) = tls.accept(tcp).await else { return };
                    if s.get_ref().1.alpn_protocol() == Some(b"h2") && !connect_protocol {
                        let mut c = h2::server::handshake(s).await.unwrap();
                        while c.accept().await.is_some() {}
                    } else if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                        weft::h2::serve(s, &Acceptor::new(), |_, _| Ok(()), echo).await.unwrap();
                    } else {
                        echo(Acceptor::new().accept(s).await.unwrap()).await;
                    }
                });
            }
        });
        let url = format!("wss://localhost:{port}/");
        let mut ws = ClientBuilder::new(&url)
            .add_root_certificate(der.clone())
            .http2(Http2Config::default())
            .connect()
            .await
            .unwrap();
        let over_h2 = matches!(ws.get_ref(), weft::MaybeTlsStream::H2(_));
        assert_eq!(over_h2, alpn.len() == 2 && connect_protocol, "ALPN {alpn:?}, extended CONNECT {connect_protocol}");
        ws.send(Message::binary(vec![1u8; 200_000])).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(vec![1u8; 200_000]));
        // H2Client insists on h2.
        let r = H2Client::connect(ClientBuilder::new(&url).add_root_certificate(der.clone())).await;
        assert_eq!(r.is_ok(), alpn.len() == 2 && connect_protocol);
    }
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut ws: weft::WebSocket<S>) {
    while let Some(Ok(m)) = ws.recv().await {
        if m.is_data() && ws.send(m).await.is_err() {
            break;
        }
    }
}

/// A client that keeps 16 messages of 64 KiB (1 MiB) outstanding on one stream, reading echoes
/// while it writes: flow control must move all of it, both ways. With 128 KiB windows both ends
/// stopped reading each other (each had more than its high-water mark to write) and this
/// stalled; the default windows hold it, as TCP's buffers do.
#[tokio::test]
async fn pipelined_messages_larger_than_the_windows_flow() {
    let addr = h2_echo(Acceptor::new()).await;
    let client = H2Client::connect(ClientBuilder::new(format!("ws://{addr}/"))).await.unwrap();
    let (mut rx, mut tx) = client.open("/pipe").await.unwrap().split();
    let total = 400usize;
    let credit = tokio::sync::Semaphore::new(16);
    let writer = async {
        for i in 0..total {
            credit.acquire().await.unwrap().forget();
            tx.feed(Message::binary(vec![(i % 251) as u8; 64 * 1024])).await.unwrap();
            if credit.available_permits() == 0 || i + 1 == total {
                tx.flush().await.unwrap();
            }
        }
    };
    let reader = async {
        for i in 0..total {
            let m = rx.recv().await.unwrap().unwrap();
            assert_eq!(m, Message::binary(vec![(i % 251) as u8; 64 * 1024]), "echo {i}");
            credit.add_permits(1);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(writer, reader) }).await.expect("stalled");
}

/// A server connection that carries no stream is closed after the idle timeout: at once if
/// nothing is ever opened, and again after its last WebSocket has closed.
#[tokio::test]
async fn idle_connections_are_closed() {
    let cfg = Http2Config::default().idle_timeout(Duration::from_millis(300));
    let addr = h2_echo(Acceptor::new().http2(cfg)).await;
    // Nothing opened: a raw HTTP/2 client sees the connection end.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_send, conn) = h2::client::handshake(tcp).await.unwrap();
    let t0 = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("an idle connection was kept");
    assert!(end.is_ok(), "closed with GOAWAY(NO_ERROR), not an error: {end:?}");
    assert!(t0.elapsed() >= Duration::from_millis(250), "closed before the idle timeout");
    // A WebSocket keeps it open past the timeout; after it closes, the connection ends.
    let client = H2Client::connect(ClientBuilder::new(format!("ws://{addr}/"))).await.unwrap();
    let mut ws = client.open("/a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.send("still open").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("still open"));
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(client.open("/b").await.is_err(), "the connection outlived its last WebSocket");
}

/// Tiny messages to a WebSocket whose reader stopped: the sender stalls on that stream's
/// window, the connection is not ended by h2's small-frame protection (a whole window of the
/// smallest frames fits its budget), and another WebSocket on it keeps working.
#[tokio::test]
async fn a_window_of_tiny_frames_to_a_stalled_reader_does_not_end_the_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut h2 = H2Server::handshake(tcp, &Acceptor::new()).await.unwrap();
        let mut held = Vec::new();
        while let Some(Ok(req)) = h2.accept().await {
            let path = req.request().uri().path().to_owned();
            let ws = req.accept().unwrap();
            if path == "/stalled" {
                held.push(ws); // never read
            } else {
                tokio::spawn(echo(ws));
            }
        }
    });
    let client = H2Client::connect(ClientBuilder::new(format!("ws://{addr}/"))).await.unwrap();
    let mut stalled = client.open("/stalled").await.unwrap();
    let mut sent = 0u64;
    // Each `send` is one DATA frame of 7 bytes (2 header, 4 mask, 1 payload).
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stalled.send("x")).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("the connection ended after {sent} tiny frames: {e}"),
            Err(_) => break,
        }
        assert!(sent < 1_000_000, "never stalled");
    }
    assert!(sent > 100_000, "stalled after only {sent} frames");
    let mut live = client.open("/live").await.unwrap();
    live.send("alive").await.unwrap();
    assert_eq!(live.recv().await.unwrap().unwrap(), Message::text("alive"));
}
