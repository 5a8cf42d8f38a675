//! `weft client`: an interactive client, like websocat.

use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use weft::{ClientBuilder, ConnectionError, DeflateConfig, Message, WebSocket};

/// Exit codes (also in `--help`).
const EXIT_CONNECT: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_PROTOCOL: u8 = 3;
const EXIT_ABNORMAL: u8 = 4;

#[derive(Args, Debug)]
#[command(after_help = "Exit status: 0 clean close (by either side, or end of input); 1 could not connect or \
the handshake failed; 2 bad arguments; 3 the peer broke the protocol; 4 the connection was reset or timed out.")]
pub(crate) struct ClientArgs {
    /// ws:// or wss:// URL (anything else, http:// included, is refused).
    url: String,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Offer a subprotocol (repeatable).
    #[arg(long = "subprotocol")]
    subprotocols: Vec<String>,
    /// Offer permessage-deflate.
    #[arg(long)]
    deflate: bool,
    /// Send stdin lines as binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Trust this PEM certificate as a root (self-signed servers).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
}

pub(crate) fn run(args: ClientArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    ExitCode::from(rt.block_on(client(args)))
}

/// Only WebSocket URLs: `http://…` would work by accident (the library maps it to ws), but it
/// is not what the user should write, and the README promises it is refused.
fn check_scheme(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("ws" | "wss") => Ok(()),
        Some(s) => Err(format!("{url:?}: scheme {s}:// is not a WebSocket URL; use ws:// or wss://")),
        None => Err(format!("{url:?} has no scheme; use ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH")),
    }
}

async fn client(args: ClientArgs) -> u8 {
    if let Err(e) = check_scheme(&args.url) {
        eprintln!("weft client: {e}");
        return EXIT_USAGE;
    }
    let mut b = ClientBuilder::new(&args.url).connect_timeout(Duration::from_secs_f64(args.connect_timeout));
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            eprintln!("weft client: header {h:?} is not `Name: value`");
            return EXIT_USAGE;
        };
        b = b.header(k.trim(), v.trim());
    }
    for p in &args.subprotocols {
        b = b.subprotocol(p);
    }
    if args.deflate {
        b = b.deflate(DeflateConfig::default());
    }
    if let Some(path) = &args.ca_file {
        match std::fs::read(path).map_err(weft::Error::from).and_then(|pem| weft::tls::certs_from_pem(&pem)) {
            Ok(certs) => {
                for c in certs {
                    b = b.add_root_certificate(c.to_vec());
                }
            }
            Err(e) => {
                eprintln!("weft client: {}: {e}", path.display());
                return EXIT_CONNECT;
            }
        }
    }
    let tls = args.url.to_ascii_lowercase().starts_with("wss://");
    if tls {
        match b.connect().await {
            Ok(ws) => session(ws, &args).await,
            Err(e) => {
                eprintln!("weft client: {e}");
                EXIT_CONNECT
            }
        }
    } else {
        match connect_plain(b, &args).await {
            Ok(ws) => session(ws, &args).await,
            Err(e) => {
                eprintln!("weft client: {e}");
                EXIT_CONNECT
            }
        }
    }
}

/// ws://: connect the TCP socket here and keep what the server answered, so a refused upgrade
/// (401, 403, 503…) can be shown with its body, which says why.
async fn connect_plain(b: ClientBuilder, args: &ClientArgs) -> Result<WebSocket<Recorded<TcpStream>>, String> {
    let uri: weft::http::Uri = args.url.parse().map_err(|e| format!("{:?}: {e}", args.url))?;
    let (host, port) = weft::proto::handshake::host_port(&uri).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs_f64(args.connect_timeout);
    let tcp = match tokio::time::timeout(limit, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("I/O error: {e}")),
        Err(_) => return Err("timed out: connect".into()),
    };
    let _ = tcp.set_nodelay(true);
    let seen = Arc::new(Mutex::new(Some(Vec::new())));
    let io = Recorded { inner: tcp, seen: seen.clone() };
    match b.connect_on(io).await {
        Ok(ws) => {
            // Connected: stop recording.
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Ok(ws)
        }
        Err(e) => match e.handshake_error() {
            Some(weft::proto::handshake::HandshakeError::Status(status)) => {
                let bytes = seen.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
                Err(refusal(*status, &bytes))
            }
            _ => Err(e.to_string()),
        },
    }
}

/// "the server refused the upgrade: 401 Unauthorized: missing token".
fn refusal(status: weft::http::StatusCode, response: &[u8]) -> String {
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| String::from_utf8_lossy(&response[i + 4..]).trim().to_owned())
        .unwrap_or_default();
    let mut body: String = body.chars().take(2000).collect();
    if !body.is_empty() {
        body.insert_str(0, ": ");
    }
    format!("the server refused the upgrade: {status}{body}")
}

/// A transport that keeps a copy of what it read until told to stop (`seen` set to `None`).
struct Recorded<S> {
    inner: S,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Ok(mut g) = self.seen.try_lock() {
            if let Some(v) = g.as_mut() {
                if v.len() < 64 << 10 {
                    v.extend_from_slice(&buf.filled()[before..]);
                }
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Run the interactive session on a connected WebSocket; returns the exit status.
async fn session<S>(ws: WebSocket<S>, args: &ClientArgs) -> u8
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    eprintln!("connected to {}{}", args.url, ws.subprotocol().map(|p| format!(" ({p})")).unwrap_or_default());
    let (mut rx, mut tx) = ws.split();
    let binary = args.binary;
    let sender = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let msg = if binary { Message::binary(line.into_bytes()) } else { Message::text(line) };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = tx.close(None).await;
    });
    let mut out = tokio::io::stdout();
    let code = loop {
        match rx.recv_event().await {
            Some(Ok(weft::Event::Message(Message::Text(t)))) => {
                let _ = out.write_all(t.as_bytes()).await;
                let _ = out.write_all(b"\n").await;
                let _ = out.flush().await;
            }
            Some(Ok(weft::Event::Message(Message::Binary(b)))) => {
                let _ = out.write_all(&b).await;
                let _ = out.write_all(b"\n").await;
                let _ = out.flush().await;
            }
            Some(Ok(weft::Event::Closed(end))) => {
                eprintln!("{end}");
                break match end {
                    e if e.is_clean() => 0,
                    ConnectionError::ProtocolViolation(_) => EXIT_PROTOCOL,
                    _ => EXIT_ABNORMAL,
                };
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                eprintln!("weft client: {e}");
                break EXIT_ABNORMAL;
            }
            None => break 0,
        }
    };
    sender.abort();
    code
}
