//! A byte-for-byte bridge between WebSockets over HTTP/1.1 and over HTTP/2 (RFC 8441) or
//! HTTP/3 (RFC 9220), so that tools that speak only HTTP/1.1 — the Autobahn TestSuite — can
//! test an HTTP/2 or HTTP/3 server or client.
//!
//! ```text
//! bridge to-h2   LISTEN_ADDR TARGET_URL      HTTP/1.1 upgrades in, extended CONNECT out
//!                                            (tests an HTTP/2 server: Autobahn's fuzzingclient
//!                                            -> bridge -> weft echo over cleartext HTTP/2)
//! bridge from-h2 LISTEN_ADDR TARGET_URL      extended CONNECT in, HTTP/1.1 upgrades out
//!                                            (tests an HTTP/2 client: weft's client over
//!                                            HTTP/2 -> bridge -> Autobahn's fuzzingserver)
//! bridge to-h3   LISTEN_ADDR TARGET_URL CA   the same to an HTTP/3 server (QUIC), trusting
//!                                            the PEM certificate CA
//! bridge from-h3 LISTEN_ADDR TARGET_URL CERT KEY
//!                                            the same from HTTP/3 clients: QUIC on UDP
//!                                            LISTEN_ADDR with this PEM certificate and key
//! ```
//!
//! The handshake's path, `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` are passed on
//! both ways and the answer's status and extension parameters come back unchanged; after it,
//! frame bytes are relayed untouched (no parsing, no re-framing), so what the suite sees is the
//! far side's own framing, close handshake and permessage-deflate. It prints its listening
//! address on stdout and runs until killed.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft::h2::{H2Client, H2Server, Protocol};
use weft::h3::{H3Client, H3Server, H3Tls};
use weft::http::{HeaderMap, Request, Response, StatusCode, Uri, header};
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
    let [mode, listen, target, files @ ..] = args.as_slice() else {
        return Err("usage: bridge to-h2|from-h2|to-h3|from-h3 LISTEN_ADDR TARGET_URL [CA | CERT KEY]".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let target: Uri = target.parse()?;
    if let ("from-h3", [cert, key]) = (mode.as_str(), files) {
        let tls = H3Tls::from_pem_files(cert.as_ref(), key.as_ref())?;
        let server = H3Server::bind(listen, tls, &Acceptor::new()).await?;
        println!("{}", server.local_addr());
        return from_h3(server, target).await;
    }
    let listener = TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    match (mode.as_str(), files) {
        ("to-h2", []) => to_h2(listener, target).await,
        ("from-h2", []) => from_h2(listener, target).await,
        ("to-h3", [ca]) => to_h3(listener, target, ca).await,
        _ => Err(format!("unknown mode {mode:?} or wrong arguments").into()),
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
            let open = |mut connect: Request<()>| async move {
                connect.extensions_mut().insert(Protocol::from_static("websocket"));
                h2.send_connect(connect).await
            };
            if let Err(e) = relay_to(tcp, target, open).await {
                eprintln!("bridge: {e}");
            }
        });
    }
}

/// HTTP/1.1 in, HTTP/3 out: one QUIC connection to the target, every WebSocket a stream on it
/// (a new connection once the old one has gone).
async fn to_h3(listener: TcpListener, target: Uri, ca: &str) -> Result<(), BoxError> {
    let mut options = ClientBuilder::new(target.to_string());
    for c in weft::tls::certs_from_pem(&std::fs::read(ca)?)? {
        options = options.add_root_certificate(c.to_vec());
    }
    let mut client: Option<H3Client> = None;
    loop {
        let (tcp, _) = listener.accept().await?;
        // A connection that has gone (idle timeout, server restart) is replaced.
        if client.as_ref().is_some_and(H3Client::is_closed) {
            client = None;
        }
        let h3 = match &client {
            Some(c) => c.clone(),
            None => match H3Client::connect(options.clone()).await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    eprintln!("bridge: {target}: {e}");
                    continue;
                }
            },
        };
        let target = target.clone();
        tokio::spawn(async move {
            let open = |connect: Request<()>| async move { h3.send_connect(connect, Some("websocket")).await };
            if let Err(e) = relay_to(tcp, target, open).await {
                eprintln!("bridge: {e}");
            }
        });
    }
}

/// Read one HTTP/1.1 upgrade from `tcp`, send it on as an extended CONNECT with `open`, answer
/// the upgrade as the far side answered, then relay bytes both ways.
async fn relay_to<F, Fut, S>(mut tcp: TcpStream, target: Uri, open: F) -> Result<(), BoxError>
where
    F: FnOnce(Request<()>) -> Fut,
    Fut: std::future::Future<Output = weft::Result<(Response<()>, S)>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    let (resp, mut stream) = open(connect).await?;
    if !resp.status().is_success() {
        let head = format!(
            "HTTP/1.1 {} refused by the target\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
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
                    if !req.is_websocket() {
                        let _ = req.respond(StatusCode::BAD_REQUEST, "WebSocket only\n");
                        return;
                    }
                    let head = req.request().clone();
                    let res = relay_from(&head, target).await;
                    let res = match res {
                        Ok(Upstream::Refused(status)) => {
                            req.respond(status, "refused by the HTTP/1.1 target\n").map_err(Into::into)
                        }
                        Ok(Upstream::Open(ok, tcp, early)) => match req.respond_stream(ok) {
                            Ok(stream) => pipe(tcp, stream, early).await,
                            Err(e) => Err(e.into()),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(e) = res {
                        eprintln!("bridge: {e}");
                    }
                });
            }
        });
    }
}

/// HTTP/3 in, HTTP/1.1 out: every extended CONNECT becomes an upgrade on a TCP connection of
/// its own to the target.
async fn from_h3(mut server: H3Server, target: Uri) -> Result<(), BoxError> {
    while let Some(req) = server.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            if !req.is_websocket() {
                let _ = req.respond(StatusCode::BAD_REQUEST, "WebSocket only\n").await;
                return;
            }
            let head = req.request().clone();
            let res = match relay_from(&head, target).await {
                Ok(Upstream::Refused(status)) => {
                    req.respond(status, "refused by the HTTP/1.1 target\n").await.map_err(Into::into)
                }
                Ok(Upstream::Open(ok, tcp, early)) => match req.respond_stream(ok).await {
                    Ok(stream) => pipe(tcp, stream, early).await,
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                eprintln!("bridge: {e}");
            }
        });
    }
    Ok(())
}

/// What the HTTP/1.1 target said to the upgrade.
enum Upstream {
    Refused(StatusCode),
    /// Accepted: the answer to pass on, the connection, and bytes that came after its head.
    Open(Response<()>, TcpStream, Vec<u8>),
}

/// Relay `stream` and `tcp` both ways, starting with the target's early bytes.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: TcpStream,
    mut stream: S,
    early: Vec<u8>,
) -> Result<(), BoxError> {
    stream.write_all(&early).await?;
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
    Ok(())
}

/// Send the extended CONNECT's WebSocket to the HTTP/1.1 target as an upgrade.
async fn relay_from(request: &Request<()>, target: Uri) -> Result<Upstream, BoxError> {
    let authority = target.authority().ok_or("target without authority")?.clone();
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut tcp = TcpStream::connect(authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    let key = handshake::generate_key();
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for name in &FORWARDED {
        for v in request.headers().get_all(name) {
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
        return Ok(Upstream::Refused(resp.status()));
    }
    let mut ok = Response::new(());
    forward(resp.headers(), ok.headers_mut());
    Ok(Upstream::Open(ok, tcp, buf[used..].to_vec()))
}
