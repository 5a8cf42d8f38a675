//! `weft echo --core io-uring` and `--core epoll`: the echo server on weft's event-driven core
//! ([`weft::event_loop`]): one loop per thread, each with a listener of its own on the same
//! port (SO_REUSEPORT, so the kernel spreads connections over them), no task per connection.
//! Cleartext HTTP/1.1 only; TLS, HTTP/2 and HTTP/3 run on `--core tokio`.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use weft::event_loop::{Backend, Conn, EventLoop, Handler, LoopConfig, LoopHandle, Payload};
use weft::{Acceptor, CloseCode, Rejection};

/// Echo every data message back on the connection it came from.
struct Echo;

impl Handler for Echo {
    type Session = ();

    fn upgrade(
        &mut self,
        _req: &weft::http::Request<()>,
        _resp: &mut weft::http::Response<()>,
    ) -> Result<(), Rejection> {
        Ok(())
    }

    fn on_message(&mut self, _: &mut (), conn: &mut Conn<'_>, msg: Payload<'_>) {
        if conn.send(msg).is_err() {
            // Above `max_buffered` (the peer does not read what it asks for), or closing.
            conn.close(CloseCode::POLICY, "not reading its echoes");
        }
    }
}

/// How the loops run.
pub(crate) struct Options {
    /// Loops, one per thread.
    pub(crate) threads: usize,
    /// SO_REUSEPORT even with one loop (several processes on one port).
    pub(crate) reuseport: bool,
    /// Pin loop i to CPU i.
    pub(crate) pin: bool,
    /// How long a graceful stop waits.
    pub(crate) grace: std::time::Duration,
    /// The I/O backend asked for.
    pub(crate) backend: Backend,
}

/// Serve until SIGTERM or Ctrl-C, then close every connection with 1001.
pub(crate) fn run(addr: SocketAddr, opts: Options, acceptor: Acceptor) -> anyhow::Result<()> {
    let Options { threads, reuseport, pin, grace, backend } = opts;
    // SIGTERM handled from before the first connection is answered (see `shutdown_signal`).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = {
        let _in_rt = rt.enter();
        crate::serve::shutdown_signal()
    };
    crate::procfs::raise_nofile_limit();
    let reuseport = reuseport || threads > 1;
    let first = listener(addr, reuseport)?;
    let addr = first.local_addr()?; // the port actually bound, when asked for port 0
    let config = LoopConfig { shutdown_grace: grace, backend, ..LoopConfig::default() };
    let acceptor = Arc::new(acceptor);
    let mut loops = Vec::with_capacity(threads);
    let mut handles: Vec<LoopHandle> = Vec::with_capacity(threads);
    let mut running = backend;
    for i in 0..threads {
        let l = if i == 0 { first.try_clone()? } else { listener(addr, reuseport)? };
        let mut ev = EventLoop::new(l, (*acceptor).clone(), config.clone(), Echo)?;
        if i == 0 {
            running = ev.backend();
            if let Some(why) = ev.fallback() {
                tracing::warn!("{why}: running on epoll");
            }
        }
        handles.push(ev.stop_handle());
        loops.push(std::thread::Builder::new().name(format!("weft-loop-{i}")).spawn(move || {
            if pin {
                crate::workers::pin_to_cpu(i);
            }
            let r = ev.run();
            (r, ev.stats())
        })?);
    }
    drop(first);
    tracing::info!(%addr, core = %running, threads, pin, "weft echo listening");
    rt.block_on(stop);
    tracing::info!("shutting down: closing connections with 1001");
    for h in &handles {
        h.stop();
    }
    for t in loops {
        match t.join() {
            Ok((Ok(()), stats)) => tracing::debug!(?stats, "loop stopped"),
            Ok((Err(e), _)) => return Err(anyhow::anyhow!("event loop failed: {e}")),
            Err(_) => return Err(anyhow::anyhow!("event loop panicked")),
        }
    }
    tracing::info!("bye");
    Ok(())
}

/// A listening socket on `addr`; with `reuseport`, one that other listeners may share.
pub(crate) fn listener(addr: SocketAddr, reuseport: bool) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd: OwnedFd = rustix::net::socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 4096)?;
    Ok(std::net::TcpListener::from(fd))
}
