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
