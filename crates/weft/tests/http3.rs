//! WebSockets over HTTP/3 (RFC 9220), weft to weft over real UDP sockets: multiplexing, flow
//! control, negotiation, refusals, certificates, limits, and a connection that goes away.
#![cfg(feature = "http3")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use weft::h3::{H3Client, H3Server, H3Tls, Http3Config};
use weft::{Acceptor, ClientBuilder, DeflateConfig, Message, Rejection};

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Cert { cert_pem: c.cert.pem(), key_pem: c.signing_key.serialize_pem(), der: c.cert.der().to_vec() }
}

static FLOOD_SENT: AtomicU64 = AtomicU64::new(0);

/// An HTTP/3 echo server: every WebSocket echoes data messages; `/private` is refused with 403
/// and a body; `/flood` sends 64 KiB messages until its writes stall, then reports how many it
/// got out; requests that are not WebSockets get 404.
async fn h3_echo(acceptor: Acceptor) -> (SocketAddr, Cert, tokio::sync::oneshot::Sender<()>) {
    let c = cert();
    let tls = H3Tls::from_pem(c.cert_pem.as_bytes(), c.key_pem.as_bytes()).unwrap();
    let mut server = H3Server::bind("127.0.0.1:0".parse().unwrap(), tls, &acceptor).await.unwrap();
    let addr = server.local_addr();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                r = server.accept() => match r { Some(r) => r, None => return },
                _ = &mut stopped => return, // drops the server: every connection closes
            };
            tokio::spawn(async move {
                if !req.is_websocket() {
                    req.respond(StatusCode::NOT_FOUND, "websockets only\n").await.unwrap();
                    return;
                }
                let path = req.request().uri().path().to_owned();
                let ws = req
                    .accept_with(|r, resp| {
                        if r.uri().path() == "/private" {
                            return Err(
                                Rejection::new(StatusCode::FORBIDDEN, "no entry for you").header("Connection", "close")
                            );
                        }
                        resp.headers_mut().insert("x-served-by", "weft-h3".parse().unwrap());
                        Ok(())
                    })
                    .await;
                let Ok(mut ws) = ws else { return };
                if path == "/flood" {
                    let mut sent = 0u64;
                    loop {
                        let chunk = Message::binary(vec![7u8; 64 * 1024]);
                        match tokio::time::timeout(Duration::from_millis(500), ws.send(chunk)).await {
                            Ok(Ok(())) => sent += 1,
                            _ => break,
                        }
                    }
                    FLOOD_SENT.store(sent, Ordering::SeqCst);
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
    (addr, c, stop)
}

fn options(addr: SocketAddr, c: &Cert) -> ClientBuilder {
    ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .add_root_certificate(c.der.clone())
        .connect_timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn many_websockets_share_one_quic_connection() {
    let (addr, c, _stop) = h3_echo(Acceptor::new()).await;
    let client = H3Client::connect_to(options(addr, &c), addr).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = client.open(&format!("/s{i}")).await.unwrap();
            for n in 0..20 {
                let text = format!("stream {i} message {n}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
            }
            // Larger than a stream window: flow control must keep it moving both ways.
            let big = vec![i as u8; 3 * 1024 * 1024 / 2];
            ws.send(Message::binary(big.clone())).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
            ws.close(None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn client_builder_connects_over_http3_with_subprotocol_and_deflate() {
    let acceptor = Acceptor::new()
        .subprotocols(["chat.v2"])
        .config(weft::Config::default().deflate(Some(DeflateConfig::default())));
    let (addr, c, _stop) = h3_echo(acceptor).await;
    let mut ws = options(addr, &c)
        .subprotocol("chat.v2")
        .deflate(DeflateConfig::default())
        .http3(Http3Config::default())
        .connect()
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), Some("chat.v2"));
    assert!(matches!(ws.get_ref(), weft::MaybeTlsStream::H3(_)));
    let text = "compressible ".repeat(1000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
}

#[tokio::test]
async fn refusals_carry_status_and_body_and_other_requests_are_answered() {
    let (addr, c, _stop) = h3_echo(Acceptor::new()).await;
    let client = H3Client::connect_to(options(addr, &c), addr).await.unwrap();
    let err = client.open("/private").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    assert_eq!(err.response_body(), Some(&b"no entry for you"[..]), "{err}");
    // A plain GET on the same connection: 404 from the application, body readable.
    let req = http::Request::get(format!("https://localhost:{}/page", addr.port())).body(()).unwrap();
    let (resp, mut body) = client.send_connect(req, None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut body, &mut text).await.unwrap();
    assert_eq!(text, "websockets only\n");
    // The connection still serves WebSockets.
    let mut ws = client.open("/after").await.unwrap();
    ws.send("still here").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("still here"));
}

#[tokio::test]
async fn unknown_certificate_and_mismatched_key_fail_clearly() {
    let (addr, _c, _stop) = h3_echo(Acceptor::new()).await;
    let other = cert();
    let err = H3Client::connect_to(options(addr, &other), addr).await.unwrap_err();
    assert!(err.is_io(), "{err}");
    let a = cert();
    let b = cert();
    let err = H3Tls::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = H3Tls::from_pem(b"", a.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn an_ip_address_must_be_in_the_certificate() {
    // The test certificate names only "localhost": reaching it as 127.0.0.1 must fail.
    let (addr, c, _stop) = h3_echo(Acceptor::new()).await;
    let by_ip = ClientBuilder::new(format!("wss://127.0.0.1:{}/", addr.port())).add_root_certificate(c.der.clone());
    let err = H3Client::connect_to(by_ip, addr).await.unwrap_err();
    assert!(err.is_io(), "{err}");
    // One that names 127.0.0.1 is accepted that way.
    let ip_cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let tls = H3Tls::from_pem(ip_cert.cert.pem().as_bytes(), ip_cert.signing_key.serialize_pem().as_bytes()).unwrap();
    let mut server = H3Server::bind("127.0.0.1:0".parse().unwrap(), tls, &Acceptor::new()).await.unwrap();
    let ip_addr = server.local_addr();
    tokio::spawn(async move {
        while let Some(req) = server.accept().await {
            tokio::spawn(async move {
                let mut ws = req.accept().await.unwrap();
                while let Some(Ok(m)) = ws.recv().await {
                    if m.is_data() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut ws = ClientBuilder::new(format!("wss://127.0.0.1:{}/", ip_addr.port()))
        .add_root_certificate(ip_cert.cert.der().to_vec())
        .http3(Http3Config::default())
        .connect()
        .await
        .unwrap();
    ws.send("by address").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("by address"));
}

#[tokio::test]
async fn a_reader_that_stops_stalls_its_sender_within_the_window() {
    let acceptor = Acceptor::new().http3(Http3Config::default().stream_window(256 * 1024));
    let (addr, c, _stop) = h3_echo(acceptor).await;
    let opts = options(addr, &c).http3(Http3Config::default().stream_window(256 * 1024));
    let client = H3Client::connect_to(opts, addr).await.unwrap();
    let ws = client.open("/flood").await.unwrap();
    // Never read `ws`: the server's sends must stall on flow control, bounded by the stream
    // window plus the WebSocket's own write buffer, not grow without limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while FLOOD_SENT.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = FLOOD_SENT.load(Ordering::SeqCst);
    assert!(sent > 0 && sent < 64, "server got {sent} × 64 KiB out to a client that reads nothing");
    // Another stream on the same connection still flows.
    let mut other = client.open("/other").await.unwrap();
    other.send("unblocked").await.unwrap();
    assert_eq!(other.recv().await.unwrap().unwrap(), Message::text("unblocked"));
    drop(ws);
}

#[tokio::test]
async fn the_stream_limit_makes_further_opens_wait() {
    let acceptor = Acceptor::new().http3(Http3Config::default().max_streams(2));
    let (addr, c, _stop) = h3_echo(acceptor).await;
    let client = H3Client::connect_to(options(addr, &c), addr).await.unwrap();
    let mut a = client.open("/a").await.unwrap();
    let _b = client.open("/b").await.unwrap();
    let third = tokio::time::timeout(Duration::from_millis(500), client.open("/c")).await;
    assert!(third.is_err(), "a third stream opened past a limit of 2");
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.recv().await {}
    drop(a);
    let mut c3 = tokio::time::timeout(Duration::from_secs(5), client.open("/c")).await.unwrap().unwrap();
    c3.send("third").await.unwrap();
    assert_eq!(c3.recv().await.unwrap().unwrap(), Message::text("third"));
}

#[tokio::test]
async fn a_server_that_goes_away_ends_the_client_websockets() {
    let (addr, c, stop) = h3_echo(Acceptor::new()).await;
    let client = H3Client::connect_to(options(addr, &c), addr).await.unwrap();
    let mut ws = client.open("/x").await.unwrap();
    ws.send("hi").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("hi"));
    stop.send(()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.expect("the WebSocket saw the end");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

#[tokio::test]
async fn quiet_websockets_outlive_the_idle_timeout_and_empty_connections_do_not() {
    let idle = Http3Config::default().idle_timeout(Duration::from_millis(600));
    let (addr, c, _stop) = h3_echo(Acceptor::new().http3(idle)).await;
    let client = H3Client::connect_to(options(addr, &c).http3(idle), addr).await.unwrap();
    let mut ws = client.open("/quiet").await.unwrap();
    // Silent for more than twice the idle timeout: PINGs keep the connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send("still there").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("still there"));
    ws.close(None).await.unwrap();
    drop(ws);
    // With no stream left, the connection ends after the idle timeout; opening then fails.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = client.open("/late").await.unwrap_err();
    assert!(err.is_io(), "{err}");
}

#[tokio::test]
async fn streams_open_while_the_connection_is_saturated() {
    // The server's response head may find no room (congestion window, flow control) under
    // load; it must wait for room, not cancel the stream.
    let (addr, c, _stop) = h3_echo(Acceptor::new()).await;
    let client = H3Client::connect_to(options(addr, &c), addr).await.unwrap();
    let mut busy = Vec::new();
    for i in 0..4 {
        let mut ws = client.open(&format!("/busy{i}")).await.unwrap();
        busy.push(tokio::spawn(async move {
            let msg = Message::binary(vec![i as u8; 64 * 1024]);
            for _ in 0..12 {
                for _ in 0..16 {
                    ws.feed(msg.clone()).await.unwrap();
                }
                ws.flush().await.unwrap();
                for _ in 0..16 {
                    assert_eq!(ws.recv().await.unwrap().unwrap(), msg);
                }
            }
        }));
    }
    let opens: Vec<_> = (0..90)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ws = client.open(&format!("/new{i}")).await.unwrap();
                ws.send(Message::text(format!("hello {i}"))).await.unwrap();
                assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
            })
        })
        .collect();
    for t in opens.into_iter().chain(busy) {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn malformed_requests_are_refused_and_rustls_settings_do_not_silently_apply() {
    let (addr, c, _stop) = h3_echo(Acceptor::new()).await;
    let client = H3Client::connect_to(options(addr, &c), addr).await.unwrap();
    // Connection-specific fields (an HTTP/1.1 upgrade smuggled into HTTP/3) make a request
    // malformed (RFC 9114 §4.2): 400 from the server, before the application sees it.
    let req = http::Request::get(format!("https://localhost:{}/", addr.port()))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(bytes::Bytes::new())
        .unwrap();
    let (resp, _) = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // `:protocol` outside CONNECT.
    let req = http::Request::get(format!("https://localhost:{}/", addr.port())).body(()).unwrap();
    let (resp, _) = client.send_connect(req, Some("websocket")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The connection still serves WebSockets.
    let mut ws = client.open("/ok").await.unwrap();
    ws.send("fine").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("fine"));
    // A rustls configuration cannot apply to QUIC's BoringSSL: refused, not ignored.
    let rustls_cfg = weft::tls::client_config(&[]).unwrap();
    let err = options(addr, &c).tls_config(rustls_cfg).http3(Http3Config::default()).connect().await.unwrap_err();
    assert!(err.to_string().contains("tls_config"), "{err}");
}
