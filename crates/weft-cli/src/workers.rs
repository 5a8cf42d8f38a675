//! `weft serve --workers N`: N engine processes on one port (SO_REUSEPORT; the kernel spreads
//! new connections over them), each its own cluster node. The parent starts them, forwards
//! SIGTERM/SIGINT, and stops the others (exit 1) when one dies on its own, so a service manager
//! restarts the whole set.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use super::serve::shutdown_signal;

/// Start `n` copies of this command line as workers and wait for them.
pub(crate) fn supervise(n: usize) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("weft serve: cannot find my own executable to start workers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft serve: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Handled before the first worker starts: a SIGTERM must reach the workers through us, not
    // kill us and leave them running (see `shutdown_signal`).
    let signal = {
        let _in_rt = rt.enter();
        shutdown_signal()
    };
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for i in 0..n {
        match Command::new(&exe).args(&args).env("WEFT_WORKER_INDEX", i.to_string()).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("weft serve: cannot start worker {i}: {e}");
                stop(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    let failed = rt.block_on(async {
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => return None,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    for (i, c) in children.iter_mut().enumerate() {
                        if let Ok(Some(status)) = c.try_wait() {
                            return Some((i, status));
                        }
                    }
                }
            }
        }
    });
    let all_ok = stop(&mut children);
    match failed {
        Some((i, status)) => {
            eprintln!("weft serve: worker {i} exited ({status}); stopped the others");
            ExitCode::FAILURE
        }
        None if all_ok => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// SIGTERM every worker still running and wait for all; whether every one exited 0.
fn stop(children: &mut [Child]) -> bool {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            let pid = rustix::process::Pid::from_raw(c.id() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    let mut ok = true;
    for c in children.iter_mut() {
        match c.wait() {
            Ok(s) if s.success() => {}
            _ => ok = false,
        }
    }
    ok
}

/// A listener that shares its port with the other workers.
pub(crate) fn reuseport_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// A UDP socket on `addr` that several worker processes share (SO_REUSEPORT): the kernel
/// sends each client's datagrams (by address and port) to one of them, so every QUIC connection
/// stays with one worker.
#[cfg(feature = "http3")]
pub(crate) fn reuseport_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    let std = std::net::UdpSocket::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(std)
}

/// Pin this process (and the threads it starts from now on) to CPU `i` modulo the CPUs it may
/// use.
pub(crate) fn pin_to_cpu(i: usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = rustix::thread::CpuSet::new();
    set.set(i % n);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("weft: cannot pin worker {i} to CPU {}: {e}", i % n);
    }
}
