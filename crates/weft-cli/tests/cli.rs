//! The `weft` binary end to end: `weft echo` serving `weft client`, and the client's exit codes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_echo(extra: &[&str]) -> (Kill, u16) {
    let port = free_port();
    let child = Command::new(WEFT)
        .args(["echo", "--addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "weft echo did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Kill(child), port)
}

#[test]
fn client_lines_are_echoed_and_end_of_input_closes_cleanly() {
    for (echo_args, client_args) in [(&[][..], &[][..]), (&["--deflate", "--threads", "1"][..], &["--deflate"][..])] {
        let (_echo, port) = start_echo(echo_args);
        let mut client = Command::new(WEFT)
            .args(["client", &format!("ws://127.0.0.1:{port}/"), "-H", "X-Test: 1"])
            .args(client_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        let mut stdout = BufReader::new(client.stdout.take().unwrap());
        for line in ["hello", "κόσμε", &"long ".repeat(5000)] {
            writeln!(stdin, "{line}").unwrap();
            let mut got = String::new();
            stdout.read_line(&mut got).unwrap();
            assert_eq!(got.trim_end_matches('\n'), line);
        }
        drop(stdin);
        let status = client.wait().unwrap();
        assert_eq!(status.code(), Some(0), "clean close exits 0");
    }
}

#[test]
fn client_exit_codes_tell_why_it_stopped() {
    // Nothing listening: 1.
    let port = free_port();
    let s = Command::new(WEFT)
        .args(["client", &format!("ws://127.0.0.1:{port}/"), "--connect-timeout", "5"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(s.code(), Some(1));
    // Bad header syntax: 2.
    let s = Command::new(WEFT)
        .args(["client", "ws://127.0.0.1:1/", "-H", "no-colon"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(s.code(), Some(2));
    // A server that breaks the protocol (sends a masked frame to a client): 3.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::Read;
        let (mut tcp, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).to_string();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: ").or_else(|| l.strip_prefix("Sec-WebSocket-Key: ")))
            .unwrap()
            .trim()
            .to_owned();
        let accept = weft_accept(&key);
        write!(tcp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").unwrap();
        tcp.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]).unwrap();
        let _ = tcp.read(&mut buf);
    });
    let s = Command::new(WEFT)
        .args(["client", &format!("ws://127.0.0.1:{port}/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(s.code(), Some(3));
    server.join().unwrap();
}

fn weft_accept(key: &str) -> String {
    weft::proto::handshake::accept_key(key.as_bytes())
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(WEFT).arg("bench").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "weft bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn bench_echo_reports_rates_latency_and_server_cpu() {
    let (echo, port) = start_echo(&["--threads", "1"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let pid = echo.0.id().to_string();
    for inflight in ["1", "8"] {
        let r = bench_json(&[
            "echo",
            "--url",
            &url,
            "-c",
            "4",
            "-s",
            "100",
            "-d",
            "0.5",
            "--warmup",
            "0.1",
            "--in-flight",
            inflight,
            "--server-pid",
            &pid,
        ]);
        assert_eq!(r["connected"], 4);
        assert_eq!(r["errors"], 0);
        assert!(r["messages"].as_u64().unwrap() > 100, "{r}");
        assert!(r["rtt_us"]["p50"].as_f64().unwrap() > 0.0);
        assert!(r["rtt_us"]["p99"].as_f64().unwrap() >= r["rtt_us"]["p50"].as_f64().unwrap());
        assert!(r["server_cpu_us_per_msg"].as_f64().is_some(), "{r}");
        assert!(r["server_rss_bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn bench_connections_holds_them_and_measures_rss_with_several_processes() {
    let (echo, port) = start_echo(&["--threads", "1"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let pid = echo.0.id().to_string();
    for procs in ["1", "2"] {
        let r = bench_json(&[
            "connections",
            "--url",
            &url,
            "-c",
            "200",
            "--hold",
            "0.5",
            "--processes",
            procs,
            "--server-pid",
            &pid,
        ]);
        assert_eq!(r["opened"], 200, "{r}");
        assert_eq!(r["still_open"], 200, "{r}");
        assert!(r["server_rss_per_conn_bytes"].as_f64().is_some(), "{r}");
    }
    // More sockets than one process may hold: refused with the number of processes needed.
    let out = Command::new(WEFT).args(["bench", "connections", "--url", &url, "-c", "50000"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--processes"));
}

/// `weft serve` end to end: fan-out through it with `weft bench fanout` (no gaps, nothing
/// missing), then SIGTERM ends it gracefully with exit 0.
#[test]
fn serve_fans_out_and_stops_on_sigterm() {
    let port = free_port();
    let mut serve = Command::new(WEFT)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--rate-limit", "1000000", "--rate-burst", "1000000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "weft serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = serve.id().to_string();
    let r = bench_json(&["fanout", "--url", &url, "--subscribers", "50", "--duration", "1", "--server-pid", &pid]);
    assert_eq!(r["connected"], 50, "{r}");
    assert!(r["published"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["deliveries"], r["expected"], "{r}");
    assert_eq!((r["gaps"].as_u64(), r["duplicates"].as_u64(), r["disconnected"].as_u64()), (Some(0), Some(0), Some(0)));
    assert!(r["latency_us"]["p99"].as_f64().unwrap() > 0.0, "{r}");
    // Graceful stop.
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = serve.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "weft serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
