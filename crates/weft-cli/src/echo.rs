//! `weft echo`: the echo server.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use weft::{Acceptor, Config, DeflateConfig};

#[derive(Args, Debug, Clone)]
pub(crate) struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: SocketAddr,
    /// Accept permessage-deflate.
    #[arg(long)]
    deflate: bool,
    /// Runtime threads; 1 runs everything on one thread (current-thread runtime).
    #[arg(long)]
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
    /// Set SO_REUSEPORT so several `weft echo` processes can share the port.
    #[arg(long)]
    reuseport: bool,
}

pub(crate) fn run(args: EchoArgs) -> ExitCode {
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
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: EchoArgs) -> anyhow::Result<()> {
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
    let config = Config::default()
        .max_message_size(args.max_message_size)
        .max_frame_size(args.max_frame_size)
        .max_fragments(args.max_fragments)
        .deflate(args.deflate.then(DeflateConfig::default));
    let acceptor = std::sync::Arc::new(Acceptor::new().config(config));
    tracing::info!(addr = %listener.local_addr()?, deflate = args.deflate, "weft echo listening");
    loop {
        tokio::select! {
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
                tokio::spawn(async move {
                    if let Err(e) = echo_one(&acceptor, tcp).await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

/// Echo one connection.
pub(crate) async fn echo_one(acceptor: &Acceptor, tcp: TcpStream) -> weft::Result<()> {
    tcp.set_nodelay(true)?;
    // Boxed: the handshake's state (request buffer, parsed headers) is freed after the upgrade
    // instead of staying part of this long-lived task's future.
    let mut ws = Box::pin(acceptor.accept(tcp)).await?;
    echo_messages(&mut ws).await
}

/// Echo every data message until the connection ends. Everything one read produced is answered
/// with one write: after each message the next is taken only if it is already available, and
/// the queue is flushed when none is.
pub(crate) async fn echo_messages<S>(ws: &mut weft::WebSocket<S>) -> weft::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.recv().await {
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
    Ok(())
}
