//! `weft echo`: the echo server.
//!
//! SIGTERM or Ctrl-C stop it gracefully, like `weft serve`: no new connections, every open one
//! is closed with 1001 (going away), and the process exits 0 once they are closed (or after
//! `--shutdown-grace`).

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weft::event_loop::Backend;
use weft::{Acceptor, CloseCode, CloseFrame, Config, DeflateConfig};

#[derive(Args, Debug, Clone)]
pub(crate) struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: SocketAddr,
    /// Accept permessage-deflate.
    #[arg(long)]
    deflate: bool,
    /// The server core: `tokio` (a task per connection; every transport), or weft's
    /// event-driven core (one loop per thread, no task per connection; cleartext HTTP/1.1) on
    /// `io-uring` (epoll where the kernel lacks it, said in the log) or on `epoll`.
    #[arg(long, value_enum, default_value_t = Core::Tokio)]
    core: Core,
    /// Threads: runtime threads with `--core tokio` (1: a current-thread runtime), event loops
    /// with the event-driven cores (each with its own listener on the port). Default: one per
    /// CPU.
    #[arg(long, visible_alias = "workers")]
    threads: Option<usize>,
    /// Largest message in bytes (after decompression).
    #[arg(long, default_value_t = 64 << 20)]
    max_message_size: usize,
    /// Largest frame in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame_size: usize,
    /// Most fragments per message (Autobahn 9.3/9.4 send up to 65,536).
    #[arg(long, default_value_t = 1 << 20)]
    max_fragments: usize,
    /// With the event-driven cores: pin event loop i to CPU i (modulo the CPUs available).
    #[arg(long)]
    pin: bool,
    /// Set SO_REUSEPORT so several `weft echo` processes can share the port.
    #[arg(long)]
    reuseport: bool,
    /// Seconds a graceful shutdown (SIGTERM, Ctrl-C) waits for connections to close.
    #[arg(long, default_value_t = 5.0)]
    shutdown_grace: f64,
    #[command(flatten)]
    tls: crate::serve::TlsArgs,
}

/// Which server core runs `weft echo` (and `weft serve`'s WebSockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Core {
    /// A tokio task per connection, over every transport.
    Tokio,
    /// weft's event-driven core ([`weft::event_loop`]) on epoll.
    Epoll,
    /// weft's event-driven core on io_uring, or on epoll where io_uring is not available.
    IoUring,
}

pub(crate) fn run(args: EchoArgs) -> ExitCode {
    if args.core != Core::Tokio {
        if args.tls.tls_cert.is_some() || args.tls.tls_key.is_some() {
            // Before anything else, so the refusal is the same whatever the files hold.
            eprintln!(
                "weft echo: --core epoll and --core io-uring serve cleartext HTTP/1.1 only; TLS, HTTP/2 and HTTP/3 run on --core tokio"
            );
            return ExitCode::from(2);
        }
        let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let grace = Duration::from_secs_f64(args.shutdown_grace.max(0.0));
        let acceptor = Acceptor::new().config(ws_config(&args));
        let backend = if args.core == Core::Epoll { Backend::Epoll } else { Backend::Auto };
        let opts = crate::echo_loop::Options {
            threads: threads.max(1),
            reuseport: args.reuseport,
            pin: args.pin,
            grace,
            backend,
        };
        return match crate::echo_loop::run(args.addr, opts, acceptor) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft echo: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // A bad certificate or key is a usage error, found before anything starts.
    let tls = match crate::serve::TlsArgs::load(args.tls.tls_cert.clone(), args.tls.tls_key.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("weft echo: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n.max(1)).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft echo: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: EchoArgs, tls: Option<std::sync::Arc<weft::tls::ReloadableCert>>) -> anyhow::Result<()> {
    crate::procfs::raise_nofile_limit();
    let listener = if args.reuseport {
        let sock = if args.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(args.addr)?;
        sock.listen(4096)?
    } else {
        TcpListener::bind(args.addr).await?
    };
    let acceptor = std::sync::Arc::new(Acceptor::new().config(ws_config(&args)));
    // With TLS, HTTP/3 too: QUIC on the same port number (UDP), advertised with Alt-Svc on
    // every HTTP/1.1 and HTTP/2 answer.
    let (tls, h3) = match tls {
        Some(cert) => {
            let h3 = crate::quic::server(&cert, listener.local_addr()?, &acceptor, args.reuseport).await?;
            crate::serve::reload_on_sighup(cert.clone(), h3.as_ref().map(|(s, _)| crate::quic::reloader(s)));
            let tls = weft::tls::TlsAcceptor::from(weft::tls::server_config_alpn(cert, &[b"h2", b"http/1.1"]));
            (Some(tls), h3)
        }
        None => (None, None),
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        deflate = args.deflate,
        tls = tls.is_some(),
        http2 = true,
        http3 = h3.is_some(),
        "weft echo listening"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let alt_svc = h3.as_ref().map(|(_, a)| a.clone());
    if let Some((server, _)) = h3 {
        #[cfg(feature = "http3")]
        conns.spawn(echo_h3(server, stop_rx.clone()));
        #[cfg(not(feature = "http3"))]
        match server {}
    }
    let shutdown = crate::serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            res = listener.accept() => {
                let (tcp, peer) = match res {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: keep serving the connections we have.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tls = tls.clone();
                let stop = stop_rx.clone();
                let alt_svc = alt_svc.clone();
                conns.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let res = match tls {
                        None => {
                            // Cleartext HTTP/2 (prior knowledge) or HTTP/1.1, told apart by the
                            // first bytes; a peer that sends nothing for 10 s is dropped.
                            match tokio::time::timeout(Duration::from_secs(10), weft::h2::starts_with_preface(&tcp)).await {
                                Ok(Ok(true)) => echo_h2(&acceptor, tcp, stop, None).await,
                                Ok(Ok(false)) => echo_one(&acceptor, tcp, stopped(stop)).await,
                                Ok(Err(e)) => Err(e.into()),
                                Err(_) => Ok(()),
                            }
                        }
                        Some(tls) => match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                            Ok(Ok(io)) if io.get_ref().1.alpn_protocol() == Some(b"h2") => {
                                echo_h2(&acceptor, io, stop, alt_svc).await
                            }
                            Ok(Ok(io)) => echo_one_with(&acceptor, io, stopped(stop), alt_svc).await,
                            Ok(Err(e)) => Err(e.into()),
                            Err(_) => Ok(()), // TLS handshake not finished in 10 s: dropped
                        },
                    };
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(connections = conns.len(), "shutting down: closing connections with 1001");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs_f64(args.shutdown_grace.max(0.0));
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(left = conns.len(), "shutdown grace over: dropping the connections left");
    }
    tracing::info!("bye");
    Ok(())
}

/// The WebSocket settings both cores use.
fn ws_config(args: &EchoArgs) -> Config {
    Config::default()
        .max_message_size(args.max_message_size)
        .max_frame_size(args.max_frame_size)
        .max_fragments(args.max_fragments)
        .deflate(args.deflate.then(DeflateConfig::default))
}

/// Completes once the shutdown flag is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Echo every WebSocket of one HTTP/2 connection, each on its own task, while this task keeps
/// driving the connection. On shutdown: GOAWAY (no new streams), every WebSocket closed with
/// 1001, and the connection ends when the last stream has.
async fn echo_h2<I>(
    acceptor: &Acceptor,
    io: I,
    stop: watch::Receiver<bool>,
    alt_svc: Option<weft::http::HeaderValue>,
) -> weft::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut h2 = weft::h2::H2Server::handshake(io, acceptor).await?;
    let mut streams = JoinSet::new();
    let mut stopping = false;
    let mut watch_stop = stop.clone();
    loop {
        tokio::select! {
            req = h2.accept() => match req {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(req)) if !req.is_websocket() => {
                    let _ = req.respond(weft::http::StatusCode::NOT_FOUND, "weft echo: WebSocket (RFC 8441 extended CONNECT) only\n");
                }
                Some(Ok(req)) => {
                    let Ok(mut ws) = req.accept_with(|_, resp| {
                        if let Some(v) = &alt_svc {
                            resp.headers_mut().insert(weft::http::header::ALT_SVC, v.clone());
                        }
                        Ok(())
                    }) else { continue };
                    let stop = stopped(stop.clone());
                    streams.spawn(async move {
                        let _ = echo_until(&mut ws, stop).await;
                    });
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = watch_stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                h2.graceful_shutdown();
            }
        }
    }
    Ok(())
}

/// Every WebSocket of the HTTP/3 server, each on its own task, until shutdown: then each is
/// closed with 1001 and the server (every QUIC connection) once they have.
#[cfg(feature = "http3")]
async fn echo_h3(mut server: weft::h3::H3Server, stop: watch::Receiver<bool>) {
    let mut streams = JoinSet::new();
    let mut watch_stop = stop.clone();
    loop {
        tokio::select! {
            req = server.accept() => match req {
                None => break,
                Some(req) if !req.is_websocket() => {
                    streams.spawn(async move {
                        let _ = req
                            .respond(weft::http::StatusCode::NOT_FOUND, "weft echo: WebSocket (RFC 9220 extended CONNECT) only\n")
                            .await;
                    });
                }
                Some(req) => {
                    let stop = stopped(stop.clone());
                    streams.spawn(async move {
                        if let Ok(mut ws) = req.accept().await {
                            let _ = echo_until(&mut ws, stop).await;
                        }
                    });
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = watch_stop.wait_for(|s| *s) => break,
        }
    }
    while streams.join_next().await.is_some() {}
    // Let the last close frames and QUIC acknowledgements go out before the endpoint closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::debug!(dropped_datagrams = server.dropped_datagrams(), "HTTP/3 server closed");
}

/// Echo one connection until it ends or `stop` completes (then close it with 1001).
pub(crate) async fn echo_one<I>(acceptor: &Acceptor, io: I, stop: impl Future<Output = ()>) -> weft::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    echo_one_with(acceptor, io, stop, None).await
}

/// [`echo_one`], answering the upgrade with `Alt-Svc` when HTTP/3 is served too.
async fn echo_one_with<I>(
    acceptor: &Acceptor,
    io: I,
    stop: impl Future<Output = ()>,
    alt_svc: Option<weft::http::HeaderValue>,
) -> weft::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Boxed: the handshake's state (request buffer, parsed headers) is freed after the upgrade
    // instead of staying part of this long-lived task's future.
    let accept = acceptor.accept_with(io, |_, resp| {
        if let Some(v) = &alt_svc {
            resp.headers_mut().insert(weft::http::header::ALT_SVC, v.clone());
        }
        Ok(())
    });
    let mut ws = Box::pin(accept).await?;
    echo_until(&mut ws, stop).await
}

/// Echo every data message until the connection ends. Everything one read produced is answered
/// with one write: after each message the next is taken only if it is already available, and
/// the queue is flushed when none is.
pub(crate) async fn echo_messages<S>(ws: &mut weft::WebSocket<S>) -> weft::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    echo_until(ws, std::future::pending()).await
}

/// [`echo_messages`] until `stop` completes; then close with 1001 (going away) and wait for
/// the peer's answer (the library's close timeout bounds the wait).
async fn echo_until<S>(ws: &mut weft::WebSocket<S>, stop: impl Future<Output = ()>) -> weft::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::pin!(stop);
    loop {
        // `recv` is cancel-safe: a message half read when `stop` wins is not lost or corrupted.
        let msg = tokio::select! {
            biased;
            m = ws.recv() => m,
            _ = &mut stop => {
                let _ = ws.flush().await;
                ws.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down"))).await?;
                return Ok(());
            }
        };
        let Some(msg) = msg else { return Ok(()) };
        let mut next = Some(msg?);
        while let Some(msg) = next.take() {
            if msg.is_data() {
                ws.feed(msg).await?;
            }
            next = match ws.recv().now_or_never() {
                Some(Some(m)) => Some(m?),
                Some(None) => {
                    let _ = ws.flush().await;
                    return Ok(());
                }
                None => None,
            };
        }
        ws.flush().await?;
    }
}
