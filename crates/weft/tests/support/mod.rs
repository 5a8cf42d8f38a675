//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tokio::net::TcpListener;

/// The Python with `websockets` installed: `WEFT_PYTHON` (set by scripts/test.sh), else the
/// venv that scripts/test.sh creates. `None` (with a message) when it is missing, so a plain
/// `cargo test` on a new machine skips the interop tests; with `WEFT_REQUIRE_PYTHON=1`
/// (scripts/test.sh) a missing environment fails instead.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("WEFT_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/autobahn-peers/bin/python")
    });
    let ok = Command::new(&p)
        .args(["-c", "import websockets"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let msg = format!(
            "{} cannot import websockets: run scripts/test.sh (it installs it) or set WEFT_PYTHON",
            p.display()
        );
        assert!(std::env::var_os("WEFT_REQUIRE_PYTHON").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    Some(p)
}

/// [`python`], when it can also import `modules` (e.g. `h2`, `wsproto` for the HTTP/2 peers);
/// skips (or fails under `WEFT_REQUIRE_PYTHON`) like it.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let p = python()?;
    let ok = Command::new(&p)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let msg =
            format!("{} cannot import {}: run scripts/test.sh (it installs them)", p.display(), modules.join(", "));
        assert!(std::env::var_os("WEFT_REQUIRE_PYTHON").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    Some(p)
}

pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(name)
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the Python echo server; returns it and its port.
pub fn python_echo_server(deflate: bool) -> Option<(Proc, u16)> {
    use std::io::BufRead;
    let mut cmd = Command::new(python()?);
    cmd.arg(py_script("echo_server.py")).stdout(Stdio::piped());
    if deflate {
        cmd.arg("--deflate");
    }
    let mut child = cmd.spawn().expect("spawn python");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().expect("port from echo_server.py");
    Some((Proc(child), port))
}

/// Start a Python server script that prints its port first; returns it and the port.
pub fn python_server(py: PathBuf, script: &str, args: &[&str]) -> (Proc, u16) {
    use std::io::BufRead;
    let mut child =
        Command::new(py).arg(py_script(script)).args(args).stdout(Stdio::piped()).spawn().expect("spawn python");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("port from {script}: {line:?}"));
    (Proc(child), port)
}

/// A listener on a free loopback port.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// A weft echo server (one task per connection) for `n` connections.
pub async fn weft_echo_server(acceptor: weft::Acceptor) -> SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = acceptor.accept(tcp).await else { return };
                while let Some(Ok(m)) = ws.recv().await {
                    if m.is_data() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
