//! A byte-for-byte bridge between WebSockets over HTTP/1.1 and over HTTP/2 (RFC 8441), so that
//! tools that speak only HTTP/1.1 — the Autobahn TestSuite — can test an HTTP/2 server or client.
//!
//! ```text
//! h2_bridge to-h2   LISTEN_ADDR TARGET_URL   HTTP/1.1 upgrades in, extended CONNECT out
//!                                            (tests an HTTP/2 server: Autobahn's fuzzingclient
//!                                            -> bridge -> weft echo over cleartext HTTP/2)
//! h2_bridge from-h2 LISTEN_ADDR TARGET_URL   extended CONNECT in, HTTP/1.1 upgrades out
//!                                            (tests an HTTP/2 client: weft's client over
//!                                            HTTP/2 -> bridge -> Autobahn's fuzzingserver)
//! ```
//!
//! The handshake's path, `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` are passed on
//! both ways and the answer's status and extension parameters come back unchanged; after it,
//! frame bytes are relayed untouched (no parsing, no re-framing), so what the suite sees is the
//! far side's own framing, close handshake and permessage-deflate. It prints its listening
//! address on stdout and runs until killed.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft::h2::{H2Client, H2Server, Protocol};
use weft::http::{HeaderMap, Response, StatusCode, Uri, header};
use weft::proto::handshake;
use weft::{Acceptor, ClientBuilder};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FORWARDED: [header::HeaderName; 2] = [header::SEC_WEBSOCKET_PROTOCOL, header::SEC_WEBSOCKET_EXTENSIONS];

fn forward(from: &HeaderMap, to: &mut HeaderMap) {
    for name in &FORWARDED {
        for v in from.get_all(name) {
            to.append(name.clone(), v.clone());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, listen, target] = args.as_slice() else {
        return Err("usage: h2_bridge to-h2|from-h2 LISTEN_ADDR TARGET_URL".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let target: Uri = target.parse()?;
    let listener = TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    match mode.as_str() {
        "to-h2" => to_h2(listener, target).await,
        "from-h2" => from_h2(listener, target).await,
        _ => Err(format!("unknown mode {mode:?}").into()),
    }
}

/// HTTP/1.1 in, HTTP/2 out: one HTTP/2 connection to the target, every WebSocket a stream on it.
async fn to_h2(listener: TcpListener, target: Uri) -> Result<(), BoxError> {
    let mut client: Option<H2Client> = None;
    loop {
        let (tcp, _) = listener.accept().await?;
        let h2 = match &client {
            Some(c) => c.clone(),
            None => match H2Client::connect(ClientBuilder::new(target.to_string())).await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    eprintln!("h2_bridge: {target}: {e}");
                    continue;
                }
            },
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = relay_to_h2(tcp, h2, target).await {
                eprintln!("h2_bridge: {e}");
            }
        });
    }
}

async fn relay_to_h2(mut tcp: TcpStream, h2: H2Client, target: Uri) -> Result<(), BoxError> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let (req, used) = loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(done) = handshake::parse_request(&buf)? {
            break done;
        }
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).ok_or("no Sec-WebSocket-Key")?.to_str()?.to_owned();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url: Uri = format!("ws://{}{path}", target.authority().ok_or("target without authority")?).parse()?;
    let mut connect = handshake::client_request_connect(&url, &[], None, &HeaderMap::new())?;
    forward(req.headers(), connect.headers_mut());
    connect.extensions_mut().insert(Protocol::from_static("websocket"));
    let (resp, mut stream) = h2.send_connect(connect).await?;
    if !resp.status().is_success() {
        let head = format!(
            "HTTP/1.1 {} refused over HTTP/2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            resp.status().as_u16()
        );
        tcp.write_all(head.as_bytes()).await?;
        return Ok(());
    }
    let mut ok = Response::new(());
    *ok.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = ok.headers_mut();
    h.insert(header::UPGRADE, "websocket".parse()?);
    h.insert(header::CONNECTION, "Upgrade".parse()?);
    h.insert(header::SEC_WEBSOCKET_ACCEPT, handshake::accept_key(key.as_bytes()).parse()?);
    forward(resp.headers(), h);
    let mut head = Vec::new();
    handshake::write_response_head(&ok, &mut head);
    tcp.write_all(&head).await?;
    stream.write_all(&buf[used..]).await?;
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
    Ok(())
}

/// HTTP/2 in, HTTP/1.1 out: every extended CONNECT becomes an upgrade on a TCP connection of
/// its own to the target.
async fn from_h2(listener: TcpListener, target: Uri) -> Result<(), BoxError> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = H2Server::handshake(tcp, &Acceptor::new()).await else { return };
            while let Some(Ok(req)) = conn.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay_from_h2(req, target).await {
                        eprintln!("h2_bridge: {e}");
                    }
                });
            }
        });
    }
}

async fn relay_from_h2(req: weft::h2::H2Request, target: Uri) -> Result<(), BoxError> {
    if !req.is_websocket() {
        req.respond(StatusCode::BAD_REQUEST, "WebSocket only\n")?;
        return Ok(());
    }
    let authority = target.authority().ok_or("target without authority")?.clone();
    let path = req.request().uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut tcp = TcpStream::connect(authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    let key = handshake::generate_key();
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for name in &FORWARDED {
        for v in req.request().headers().get_all(name) {
            head.push_str(&format!("{name}: {}\r\n", v.to_str()?));
        }
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let (resp, used) = loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err("target closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(done) = handshake::parse_response(&buf)? {
            break done;
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        req.respond(resp.status(), "refused by the HTTP/1.1 target\n")?;
        return Ok(());
    }
    let mut ok = Response::new(());
    forward(resp.headers(), ok.headers_mut());
    let mut stream = req.respond_stream(ok)?;
    stream.write_all(&buf[used..]).await?;
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
    Ok(())
}
