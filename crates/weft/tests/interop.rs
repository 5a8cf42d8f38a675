//! Interop over real loopback sockets: weft against Python `websockets` and tokio-tungstenite,
//! both directions, with and without permessage-deflate; over HTTP/2 (RFC 8441) against Python
//! `h2` + `wsproto`, and over HTTP/3 (RFC 9220) against Python `aioquic` + `wsproto`, both
//! directions, several WebSockets per connection.

mod support;

use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use support::*;
use weft::{Acceptor, ClientBuilder, Config, ConnectionError, DeflateConfig, Message};

/// Run a Python peer script to its end (`--deflate` added when asked); it must exit 0.
async fn run_python(py: std::path::PathBuf, script: &'static str, args: Vec<String>, deflate: bool, what: &str) {
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(py);
        cmd.arg(py_script(script)).args(&args);
        if deflate {
            cmd.arg("--deflate");
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{what} failed (deflate={deflate}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn payloads() -> Vec<Message> {
    let mut v = Vec::new();
    for size in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20] {
        v.push(Message::text("ü".repeat(size / 2)));
        v.push(Message::binary((0..size).map(|i| (i * 31) as u8).collect::<Vec<_>>()));
    }
    v
}

async fn weft_client_roundtrip(url: String, deflate: bool) {
    let mut b = ClientBuilder::new(url).config(Config::default().max_message_size(1 << 24));
    if deflate {
        b = b.deflate(DeflateConfig::default());
    }
    roundtrip(b.connect().await.unwrap(), deflate).await;
}

async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut ws: weft::WebSocket<S>, deflate: bool) {
    assert_eq!(ws.deflate_params().is_some(), deflate, "deflate negotiated as requested");
    for m in payloads() {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), m);
    }
    // Pipelined: many messages fed, one flush.
    for i in 0..200 {
        ws.feed(Message::text(format!("pipelined {i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..200 {
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(format!("pipelined {i}")));
    }
    let end = ws.close(None).await.unwrap();
    assert!(matches!(end, ConnectionError::LocallyClosed(Some(ref f)) if f.code == weft::CloseCode::NORMAL), "{end:?}");
}

#[tokio::test]
async fn weft_client_to_python_websockets_server() {
    for deflate in [false, true] {
        let Some((_server, port)) = python_echo_server(deflate) else { return };
        weft_client_roundtrip(format!("ws://127.0.0.1:{port}/"), deflate).await;
    }
}

#[tokio::test]
async fn python_websockets_client_to_weft_server() {
    for deflate in [false, true] {
        let acceptor = Acceptor::new()
            .config(Config::default().deflate(deflate.then(DeflateConfig::default)))
            .subprotocols(["weft.v1.json", "chat"]);
        let addr = weft_echo_server(acceptor).await;
        let Some(py) = python() else { return };
        let url = format!("ws://{addr}/");
        run_python(
            py,
            "client.py",
            vec![url.clone(), "--subprotocol".to_owned(), "chat".to_owned()],
            deflate,
            "python client",
        )
        .await;
    }
}

#[tokio::test]
async fn weft_client_to_tungstenite_server() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
    });
    weft_client_roundtrip(format!("ws://{addr}/"), false).await;
}

#[tokio::test]
async fn tungstenite_client_to_weft_server() {
    use tokio_tungstenite::tungstenite::Message as TMessage;
    let addr = weft_echo_server(Acceptor::new()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
    for size in [0usize, 125, 126, 65_536, 1 << 20] {
        let text = "é".repeat(size / 2);
        ws.send(TMessage::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), TMessage::text(text));
        let bin = vec![7u8; size];
        ws.send(TMessage::binary(bin.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), TMessage::binary(bin));
    }
    ws.close(None).await.unwrap();
    // The server answers the close and the stream ends.
    while let Some(m) = ws.next().await {
        if m.is_err() {
            break;
        }
    }
}

/// weft's HTTP/2 client against an independent server (Python `h2` + `wsproto`): three
/// WebSockets at once on one connection, every payload size, pipelining, clean close.
#[tokio::test]
async fn weft_h2_client_to_python_h2_server() {
    for deflate in [false, true] {
        let Some(py) = python_with(&["h2", "wsproto"]) else { return };
        let (_server, port) =
            python_server(py, "h2ws.py", if deflate { &["server", "--deflate"] } else { &["server"] });
        let mut b =
            ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).config(Config::default().max_message_size(1 << 24));
        if deflate {
            b = b.deflate(DeflateConfig::default());
        }
        let client = weft::h2::H2Client::connect(b).await.unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { roundtrip(client.open(&format!("/s{i}")).await.unwrap(), deflate).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// An independent HTTP/2 client (Python `h2` + `wsproto`) against weft's HTTP/2 server: five
/// WebSockets on one connection, payloads up to 1 MiB, with and without permessage-deflate.
#[tokio::test]
async fn python_h2_client_to_weft_h2_server() {
    for deflate in [false, true] {
        let Some(py) = python_with(&["h2", "wsproto"]) else { return };
        let acceptor = Acceptor::new().config(Config::default().deflate(deflate.then(DeflateConfig::default)));
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = weft::h2::serve(
                        tcp,
                        &acceptor,
                        |_, _| Ok(()),
                        |mut ws| async move {
                            while let Some(Ok(m)) = ws.recv().await {
                                if m.is_data() && ws.send(m).await.is_err() {
                                    break;
                                }
                            }
                        },
                    )
                    .await;
                });
            }
        });
        let url = format!("ws://{addr}/");
        run_python(
            py,
            "h2ws.py",
            vec!["client".to_owned(), url.clone(), "--streams".to_owned(), "5".to_owned()],
            deflate,
            "python h2 client",
        )
        .await;
    }
}

/// A throwaway certificate for localhost in PEM files (for the Python HTTP/3 peer), and its DER.
#[cfg(feature = "http3")]
fn h3_cert_files(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>, String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("weft-h3-interop-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert_pem, key_pem) = (c.cert.pem(), c.signing_key.serialize_pem());
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    (cert, key, c.cert.der().to_vec(), cert_pem, key_pem)
}

/// weft's HTTP/3 client against an independent server (Python `aioquic` + `wsproto`): three
/// WebSockets at once on one QUIC connection, every payload size, pipelining, clean close.
#[cfg(feature = "http3")]
#[tokio::test]
async fn weft_h3_client_to_python_aioquic_server() {
    for deflate in [false, true] {
        let Some(py) = python_with(&["aioquic", "wsproto"]) else { return };
        let (cert, key, der, _, _) = h3_cert_files(if deflate { "client-d" } else { "client" });
        let (cert_s, key_s) = (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned());
        let mut args = vec!["server", cert_s.as_str(), key_s.as_str()];
        if deflate {
            args.push("--deflate");
        }
        let (_server, port) = python_server(py, "h3ws.py", &args);
        let mut b = ClientBuilder::new(format!("wss://localhost:{port}/"))
            .add_root_certificate(der)
            .config(Config::default().max_message_size(1 << 24));
        if deflate {
            b = b.deflate(DeflateConfig::default());
        }
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let client = weft::h3::H3Client::connect_to(b, addr).await.unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { roundtrip(client.open(&format!("/s{i}")).await.unwrap(), deflate).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// An independent HTTP/3 client (Python `aioquic` + `wsproto`) against weft's HTTP/3 server:
/// five WebSockets on one QUIC connection, payloads up to 1 MiB, with and without
/// permessage-deflate.
#[cfg(feature = "http3")]
#[tokio::test]
async fn python_aioquic_client_to_weft_h3_server() {
    for deflate in [false, true] {
        let Some(py) = python_with(&["aioquic", "wsproto"]) else { return };
        let (cert, _key, _, cert_pem, key_pem) = h3_cert_files(if deflate { "server-d" } else { "server" });
        let acceptor = Acceptor::new().config(Config::default().deflate(deflate.then(DeflateConfig::default)));
        let tls = weft::h3::H3Tls::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        let mut server = weft::h3::H3Server::bind("127.0.0.1:0".parse().unwrap(), tls, &acceptor).await.unwrap();
        let port = server.local_addr().port();
        tokio::spawn(async move {
            while let Some(req) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = req.accept().await else { return };
                    while let Some(Ok(m)) = ws.recv().await {
                        if m.is_data() && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let url = format!("wss://localhost:{port}/");
        let ca = cert.to_str().unwrap().to_owned();
        run_python(
            py,
            "h3ws.py",
            vec!["client".to_owned(), url.clone(), ca.clone(), "--streams".to_owned(), "5".to_owned()],
            deflate,
            "python aioquic client",
        )
        .await;
    }
}
