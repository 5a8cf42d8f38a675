//! Peer servers for the benchmark suite.
//!
//! - `tungstenite`, `fastwebsockets`, `tokio-websockets`: echo servers with the same behaviour as
//!   `weft echo` (echo every text and binary message, no compression).
//! - `broadcast`: the fan-out floor, a plain tokio-tungstenite broadcast loop speaking the
//!   `plain` protocol of `weft bench fanout --protocol plain`: `S <topic>` subscribes (answered
//!   `{"type":"subscribed","ok":true}`), `P <topic> <event>` sends `<event>` to every subscriber.
//!   One topic is enough for the benchmark, so the topic name is not looked at. A subscriber
//!   that falls more than 1024 events behind is disconnected.
//!
//! usage: weft-bench-peers <tungstenite|fastwebsockets|tokio-websockets|broadcast> [--port N] [--threads T]

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{Sender, error::RecvError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

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
        eprintln!("{which} on {addr}");
        let (events, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(1024);
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            match which.as_str() {
                "tungstenite" => tokio::spawn(tungstenite(tcp)),
                "fastwebsockets" => tokio::spawn(fastws(tcp)),
                "tokio-websockets" => tokio::spawn(tokio_websockets_echo(tcp)),
                "broadcast" => tokio::spawn(broadcast(tcp, events.clone())),
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

async fn broadcast(tcp: TcpStream, events: Sender<Utf8Bytes>) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
    let (mut tx, mut rx) = ws.split();
    let mut feed: Option<tokio::sync::broadcast::Receiver<Utf8Bytes>> = None;
    loop {
        tokio::select! {
            m = rx.next() => {
                let Some(Ok(Message::Text(t))) = m else {
                    match m {
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                if t.starts_with("S ") {
                    feed = Some(events.subscribe());
                    if tx.send(Message::text(r#"{"type":"subscribed","ok":true}"#)).await.is_err() {
                        return;
                    }
                } else if let Some(rest) = t.strip_prefix("P ") {
                    let body = rest.split_once(' ').map_or("", |(_, body)| body);
                    let _ = events.send(Utf8Bytes::from(body.to_owned()));
                }
            }
            e = async { feed.as_mut().expect("subscribed").recv().await }, if feed.is_some() => {
                // Write everything already waiting, then flush once.
                let mut next = e;
                loop {
                    match next {
                        Ok(ev) => {
                            if tx.feed(Message::Text(ev)).await.is_err() {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                    }
                    next = match feed.as_mut().expect("subscribed").try_recv() {
                        Ok(ev) => Ok(ev),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(_) => break,
                    };
                }
                if tx.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
