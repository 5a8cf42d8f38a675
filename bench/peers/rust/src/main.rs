//! Peer echo servers for the benchmark suite, same behaviour as `weft echo`: echo every text
//! and binary message, no compression.
//!
//! usage: weft-bench-peers <tungstenite|fastwebsockets|tokio-websockets> [--port N] [--threads T]

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).cloned().unwrap_or_default();
    let get = |flag: &str, default: usize| {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let port = get("--port", 9201) as u16;
    let threads = get("--threads", 1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    rt.block_on(async move {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(addr).await?;
        eprintln!("{which} echo on {addr}");
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            match which.as_str() {
                "tungstenite" => tokio::spawn(tungstenite(tcp)),
                "fastwebsockets" => tokio::spawn(fastws(tcp)),
                "tokio-websockets" => tokio::spawn(tokio_websockets_echo(tcp)),
                other => anyhow::bail!("unknown peer {other:?}"),
            };
        }
    })
}

async fn tungstenite(tcp: TcpStream) {
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await else { return };
    let (mut tx, mut rx) = ws.split();
    // Answer everything already received with one flush, like weft echo.
    while let Some(Ok(m)) = rx.next().await {
        let mut next = Some(m);
        while let Some(m) = next.take() {
            if (m.is_text() || m.is_binary()) && tx.feed(m).await.is_err() {
                return;
            }
            next = match futures_util::FutureExt::now_or_never(rx.next()) {
                Some(Some(Ok(m))) => Some(m),
                Some(_) => return,
                None => None,
            };
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

async fn tokio_websockets_echo(tcp: TcpStream) {
    let Ok((_req, mut ws)) = tokio_websockets::ServerBuilder::new().limits(tokio_websockets::Limits::default().max_payload_len(Some(256 << 20))).accept(tcp).await else { return };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

async fn fastws(tcp: TcpStream) {
    use http_body_util::Empty;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
        let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            let Ok(ws) = fut.await else { return };
            let mut ws = fastwebsockets::FragmentCollector::new(ws);
            loop {
                let Ok(frame) = ws.read_frame().await else { return };
                match frame.opcode {
                    fastwebsockets::OpCode::Close => return,
                    fastwebsockets::OpCode::Text | fastwebsockets::OpCode::Binary => {
                        if ws.write_frame(frame).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok::<Response<Empty<Bytes>>, fastwebsockets::WebSocketError>(resp)
    });
    let io = hyper_util::rt::TokioIo::new(tcp);
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await;
}
