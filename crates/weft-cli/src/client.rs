//! `weft client`: an interactive client, like websocat.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
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
    /// WebSocket over HTTP/2 (RFC 8441): for wss:// offer ALPN h2 (HTTP/1.1 if the server
    /// declines), for ws:// cleartext HTTP/2 with prior knowledge.
    #[arg(long)]
    http2: bool,
    /// WebSocket over HTTP/3 (RFC 9220): QUIC (UDP) to the URL's host and port, always TLS
    /// (ws:// and wss:// alike); trust a test CA with --ca-file.
    #[arg(long, conflicts_with = "http2")]
    http3: bool,
}

pub(crate) fn run(args: ClientArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let code = rt.block_on(client(args));
    // The stdin reader sits in a blocking read that cannot be cancelled: do not wait for it
    // (dropping the runtime would, until the user pressed Enter).
    rt.shutdown_background();
    ExitCode::from(code)
}

/// Only WebSocket URLs (the library refuses the others too; this says so before anything else,
/// with the usage exit status).
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
    if args.http2 {
        b = b.http2(weft::h2::Http2Config::default());
    }
    if args.http3 {
        b = match crate::quic::client(b) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("weft client: {e}");
                return EXIT_USAGE;
            }
        };
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
    match b.connect().await {
        Ok(ws) => {
            let over = match ws.get_ref() {
                weft::MaybeTlsStream::H2(_) => " over HTTP/2",
                #[cfg(feature = "http3")]
                weft::MaybeTlsStream::H3(_) => " over HTTP/3",
                _ => "",
            };
            session(ws, &args, over).await
        }
        Err(e) => {
            match (e.status(), e.response_body()) {
                // A refused upgrade (401, 403, 503…): its body says why.
                (Some(status), Some(body)) => {
                    let body = String::from_utf8_lossy(body);
                    let body = body.trim();
                    let sep = if body.is_empty() { "" } else { ": " };
                    eprintln!("weft client: the server refused the upgrade: {status}{sep}{body}");
                }
                _ => eprintln!("weft client: {e}"),
            }
            EXIT_CONNECT
        }
    }
}

/// Run the interactive session on a connected WebSocket; returns the exit status.
async fn session<S>(ws: WebSocket<S>, args: &ClientArgs, over: &str) -> u8
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    eprintln!("connected to {}{over}{}", args.url, ws.subprotocol().map(|p| format!(" ({p})")).unwrap_or_default());
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
