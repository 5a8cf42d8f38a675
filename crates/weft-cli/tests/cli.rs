//! The `weft` binary end to end: `weft echo` serving `weft client`, and the client's exit codes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

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

/// Starts `weft echo` on a port the kernel picks (see [`spawn_listening`]).
fn start_echo(extra: &[&str]) -> (Kill, u16) {
    let mut args = vec!["echo", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (child, port) = spawn_listening(&args);
    (Kill(child), port)
}

fn spawn_listening(args: &[&str]) -> (Child, u16) {
    let l = common::spawn_listening(Command::new(WEFT).args(args), Box::new(std::io::sink()));
    (l.child, l.port)
}

#[test]
fn client_lines_are_echoed_and_end_of_input_closes_cleanly() {
    for (echo_args, client_args) in [
        (&[][..], &[][..]),
        (&["--deflate", "--threads", "1"][..], &["--deflate"][..]),
        (&["--core", "epoll", "--deflate", "--threads", "2"][..], &["--deflate"][..]),
        (&["--core", "io-uring", "--deflate", "--workers", "2"][..], &["--deflate"][..]),
        (&["--core", "io-uring", "--threads", "1"][..], &[][..]),
    ] {
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
    assert!(
        out.status.success(),
        "weft bench {args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
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
            "-d",
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
    let (mut serve, port) =
        spawn_listening(&["serve", "--addr", "127.0.0.1:0", "--rate-limit", "1000000", "--rate-burst", "1000000"]);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = serve.id().to_string();
    let r = bench_json(&["fanout", "--url", &url, "--subscribers", "50", "--duration", "1", "--server-pid", &pid]);
    assert_eq!(r["connected"], 50, "{r}");
    assert!(r["published"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["deliveries"], r["expected"], "{r}");
    assert_eq!((r["gaps"].as_u64(), r["duplicates"].as_u64(), r["disconnected"].as_u64()), (Some(0), Some(0), Some(0)));
    assert!(r["latency_us"]["p99"].as_f64().unwrap() > 0.0, "{r}");
    // With --deflate the subscribers receive through weft's full client (inflating every event)
    // instead of the raw receiver: the same counts.
    let r = bench_json(&["fanout", "--url", &url, "--subscribers", "20", "-d", "0.5", "--deflate"]);
    assert_eq!(r["connected"], 20, "{r}");
    assert_eq!(r["deliveries"], r["expected"], "{r}");
    assert_eq!((r["gaps"].as_u64(), r["duplicates"].as_u64(), r["disconnected"].as_u64()), (Some(0), Some(0), Some(0)));
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

fn start_serve(extra: &[&str]) -> (Kill, u16) {
    let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (child, port) = spawn_listening(&args);
    (Kill(child), port)
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Without `--server-pid` the benchmark cannot know the server's CPU: it must not report its
/// own CPU under that name (JSON null, "unknown" in the text).
#[test]
fn bench_without_server_pid_reports_no_server_cpu() {
    let (_echo, port) = start_echo(&["--threads", "1"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let r = bench_json(&["echo", "--url", &url, "-c", "2", "-s", "64", "-d", "0.3", "--warmup", "0.1"]);
    assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server_cpu_us_per_msg"].is_null(), "server CPU without --server-pid: {r}");
    assert!(r["server_cpu_cores"].is_null(), "server CPU without --server-pid: {r}");
    assert!(r["generator_cpu_cores"].as_f64().is_some(), "{r}");
    let out = Command::new(WEFT)
        .args(["bench", "echo", "--url", &url, "-c", "2", "-s", "64", "-d", "0.3", "--warmup", "0.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server CPU unknown"), "{text}");

    let (_serve, sport) = start_serve(&["--rate-limit", "1000000", "--rate-burst", "1000000"]);
    let surl = format!("ws://127.0.0.1:{sport}/ws");
    let r = bench_json(&["fanout", "--url", &surl, "--subscribers", "2", "-d", "0.3", "--rate", "200"]);
    assert!(r["published"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server_cpu_cores"].is_null(), "server CPU without --server-pid: {r}");
    assert!(r["server_cpu_us_per_delivery"].is_null(), "server CPU without --server-pid: {r}");
}

/// `weft bench fanout` fails (non-zero, says why) when publishes were refused and events are
/// missing; `-d` is its duration flag like the other modes'.
#[test]
fn bench_fanout_fails_on_publish_errors_and_missing_events() {
    // 50 publishes/s allowed, 400/s attempted: most are refused with 4005 (never 50 refused in
    // a row, so the connection is not closed for it).
    let (_serve, port) = start_serve(&["--rate-limit", "50", "--rate-burst", "50"]);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let out = Command::new(WEFT)
        .args(["bench", "fanout", "--url", &url, "--subscribers", "2", "-d", "1", "--rate", "400", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?} after refused publishes; stderr: {stderr}", out.status);
    assert!(stderr.contains("publish"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report even on failure");
    assert!(r["publish_errors"].as_u64().unwrap() > 0, "{r}");
    assert!(r["missing"].as_u64().unwrap() > 0, "{r}");
}

/// Read one HTTP head from a raw socket (up to the blank line).
fn read_head(tcp: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut b).unwrap(), 1, "closed during the handshake");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// SIGTERM makes `weft echo` close its connections with 1001 (going away) and exit 0, on
/// every core.
#[test]
fn echo_closes_connections_with_1001_on_sigterm_and_exits_0() {
    for core in ["tokio", "epoll", "io-uring"] {
        echo_closes_with_1001_on_sigterm(&["--core", core, "--threads", "2"]);
    }
}

fn echo_closes_with_1001_on_sigterm(args: &[&str]) {
    use std::io::Read;
    let (mut echo, port) = start_echo(args);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    assert!(read_head(&mut tcp).starts_with("HTTP/1.1 101"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(Command::new("kill").args(["-TERM", &echo.0.id().to_string()]).status().unwrap().success());
    let mut frame = [0u8; 4];
    if let Err(e) = tcp.read_exact(&mut frame) {
        panic!("a close frame, not a reset ({args:?}): {e}");
    }
    assert_eq!(frame[0], 0x88, "close frame");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1001, "going away");
    // Answer the close (masked, as a client must), then the server ends.
    tcp.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9]).unwrap();
    let status = wait_exit(&mut echo.0, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM ({args:?})");
}

/// The event-driven core serves cleartext HTTP/1.1 only: asked for TLS it says so and exits 2.
#[test]
fn echo_on_the_event_driven_core_refuses_tls_with_a_clear_error() {
    for core in ["epoll", "io-uring"] {
        let out = Command::new(WEFT)
            .args(["echo", "--core", core, "--tls-cert", "cert.pem", "--tls-key", "key.pem"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--core io-uring serve cleartext HTTP/1.1 only"), "{err}");
    }
}

/// `weft echo` also speaks cleartext HTTP/2 (prior knowledge) on the same port: `weft client
/// --http2` and `weft bench echo --http2` (many WebSockets as streams of one connection) get
/// their echoes, and SIGTERM closes HTTP/2 WebSockets with 1001 like HTTP/1.1 ones.
#[test]
fn echo_serves_http2_streams_on_the_same_port() {
    let (mut echo, port) = start_echo(&["--threads", "1"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let pid = echo.0.id().to_string();
    let r = bench_json(&[
        "echo",
        "--url",
        &url,
        "--http2",
        "-c",
        "20",
        "-d",
        "0.5",
        "--warmup",
        "0.1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(
        (r["connected"].as_u64(), r["errors"].as_u64(), r["http2"].as_bool()),
        (Some(20), Some(0), Some(true)),
        "{r}"
    );
    assert!(r["messages"].as_u64().unwrap() > 100, "{r}");
    // HTTP/1.1 still works on the same port.
    let r = bench_json(&["echo", "--url", &url, "-c", "2", "-d", "0.3", "--warmup", "0.1"]);
    assert_eq!(r["connected"], 2, "{r}");

    let mut client = Command::new(WEFT)
        .args(["client", &url, "--http2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    writeln!(stdin, "over h2").unwrap();
    let mut got = String::new();
    stdout.read_line(&mut got).unwrap();
    assert_eq!(got, "over h2\n");
    // SIGTERM: the server closes the stream's WebSocket with 1001 and exits 0.
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_exit(&mut client, Duration::from_secs(10));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("1001"), "client saw: {err}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(wait_exit(&mut echo.0, Duration::from_secs(10)).code(), Some(0));
    drop(stdin);
}

/// `weft client` takes only ws:// and wss:// URLs, and shows why an upgrade was refused.
#[test]
fn client_refuses_http_urls_and_shows_refused_upgrades() {
    let (_echo, port) = start_echo(&[]);
    for url in [format!("http://127.0.0.1:{port}/"), format!("https://127.0.0.1:{port}/"), "127.0.0.1:1".into()] {
        let out = Command::new(WEFT).args(["client", &url]).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("ws://") && stderr.contains("wss://"), "{url}: {stderr}");
    }
    // A JWT server refuses an upgrade without a token: 401 with the reason in the body.
    let (_serve, sport) = start_serve(&["--jwt-secret", "cli-test-secret-of-at-least-32-bytes"]);
    let out = Command::new(WEFT)
        .args(["client", &format!("ws://127.0.0.1:{sport}/ws")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("missing token"), "the body of the refusal: {stderr}");
}

/// A log that the test can read while the server runs.
#[derive(Clone, Default)]
struct SharedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `weft serve --core epoll|io-uring`: WebSockets on the event loops (fan-out through them
/// without gaps or losses), the HTTP API on `--http-addr` (whose /metrics counts the loops'
/// connections), nothing but WebSockets on `--addr`, and SIGTERM ends it with exit 0.
#[test]
fn serve_on_the_event_driven_core() {
    for (core, says) in [("epoll", "epoll"), ("io-uring", "io_uring")] {
        let log = SharedLog::default();
        let args = [
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--core",
            core,
            "--threads",
            "2",
            "--http-addr",
            "127.0.0.1:0",
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
        ];
        let l = common::spawn_listening(Command::new(WEFT).args(args), Box::new(log.clone()));
        let (mut serve, port) = (Kill(l.child), l.port);
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let fell_back =
            says == "io_uring" && std::env::var_os("WEFT_REQUIRE_IO_URING").is_none() && text.contains("core=epoll");
        assert!(fell_back || text.contains(&format!("core={says}")), "{core}: {text}");
        let at = text.find("dashboard http://127.0.0.1:").expect("the HTTP API's address") + 27;
        let http: u16 = text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap();
        let url = format!("ws://127.0.0.1:{port}/ws");
        let pid = serve.0.id().to_string();
        let r = bench_json(&["fanout", "--url", &url, "--subscribers", "50", "--duration", "1", "--server-pid", &pid]);
        assert_eq!(r["connected"], 50, "{core}: {r}");
        assert!(r["published"].as_u64().unwrap() > 0, "{core}: {r}");
        assert_eq!(r["deliveries"], r["expected"], "{core}: {r}");
        assert_eq!(
            (r["gaps"].as_u64(), r["duplicates"].as_u64(), r["disconnected"].as_u64()),
            (Some(0), Some(0), Some(0)),
            "{core}: {r}"
        );
        // The HTTP API is on its own port; the WebSocket port serves WebSockets only.
        let health = http_get(http, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200"), "{core}: {health}");
        let metrics = http_get(http, "/metrics");
        let total = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weft_connections_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{core}: no weft_connections_total in {metrics}"));
        assert!(total >= 51.0, "{core}: the loops' connections are counted: {total}");
        let other = http_get(port, "/healthz");
        assert!(other.starts_with("HTTP/1.1 426"), "{core}: {other}"); // an upgrade, or nothing
        // Graceful stop.
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert_eq!(wait_exit(&mut serve.0, Duration::from_secs(10)).code(), Some(0), "{core}");
    }
}
