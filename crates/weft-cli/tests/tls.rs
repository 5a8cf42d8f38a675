//! TLS in `weft serve` and `weft echo`: `wss://` and `https://` with a test CA, certificate
//! reload on SIGHUP, and clear refusals of bad or mismatched keys at start.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

fn start(cmd: &str, args: &[&str]) -> (Kill, u16) {
    let l = common::spawn_listening(
        Command::new(WEFT).arg(cmd).args(["--addr", "127.0.0.1:0"]).args(args),
        Box::new(std::io::sink()),
    );
    (Kill(l.child), l.port)
}

/// `weft client URL --ca-file CA`: send `line` (if any), return the first line it prints, or
/// the exit status and stderr when it could not connect.
fn client(url: &str, ca: &Path, line: Option<&str>) -> Result<String, String> {
    let mut c = Command::new(WEFT)
        .args(["client", url, "--ca-file", ca.to_str().unwrap(), "--connect-timeout", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    if let Some(l) = line {
        writeln!(stdin, "{l}").unwrap();
    }
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    drop(stdin);
    let status = c.wait().unwrap();
    if first.is_empty() {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
        return Err(format!("{status}: {err}"));
    }
    Ok(first)
}

#[test]
fn serve_and_echo_over_tls_with_reload_on_sighup() {
    let d = dir();
    let (cert_a, key_a) = self_signed();
    let (cert_b, key_b) = self_signed();
    let (ca_a, ca_b) = (d.join("ca-a.pem"), d.join("ca-b.pem"));
    write(&ca_a, &cert_a);
    write(&ca_b, &cert_b);
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    write(&cert, &cert_a);
    write(&key, &key_a);
    let tls = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];

    let (mut srv, port) = start("serve", &tls);
    let url = format!("wss://localhost:{port}/ws");
    let welcome = client(&url, &ca_a, None).unwrap();
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    // Plain ws:// to a TLS port does not get a WebSocket.
    assert!(client(&format!("ws://localhost:{port}/ws"), &ca_a, None).is_err());
    // https on the same port (curl, when the machine has it).
    if let Ok(out) = Command::new("curl")
        .args(["-sS", "--cacert", ca_a.to_str().unwrap()])
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", String::from_utf8_lossy(&out.stderr));
    }
    // SIGHUP with new files: new handshakes use certificate B.
    write(&cert, &cert_b);
    write(&key, &key_b);
    let hup = Command::new("kill").args(["-HUP", &srv.0.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let t0 = Instant::now();
    loop {
        match client(&url, &ca_b, None) {
            Ok(w) => {
                assert!(w.contains("\"welcome\""), "{w}");
                break;
            }
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(5), "not reloaded: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(client(&url, &ca_a, None).is_err(), "the old certificate is no longer served");
    // A reload with a broken key keeps serving the current certificate.
    write(&key, "not a key");
    Command::new("kill").args(["-HUP", &srv.0.id().to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(client(&url, &ca_b, None).unwrap().contains("\"welcome\""));
    assert!(srv.0.try_wait().unwrap().is_none(), "still running");

    // weft echo over TLS.
    write(&key, &key_b);
    let (_echo, port) = start("echo", &tls);
    assert_eq!(client(&format!("wss://localhost:{port}/"), &ca_b, Some("hello tls")).unwrap(), "hello tls\n");
    // weft echo and weft serve offer ALPN h2: `--http2` gets a WebSocket over HTTP/2 (extended
    // CONNECT) on the same port as HTTP/1.1.
    let over_with = |url: &str, flag: &str, ca: &Path| {
        let mut c = Command::new(WEFT)
            .args(["client", url, flag, "--ca-file", ca.to_str().unwrap(), "--connect-timeout", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "hi").unwrap();
        let out = c.wait_with_output().unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let over = |url: &str| over_with(url, "--http2", &ca_b);
    let (out, err) = over(&format!("wss://localhost:{port}/"));
    assert_eq!(out, "hi\n", "{err}");
    assert!(err.contains("over HTTP/2"), "{err}");
    let (out, err) = over(&url);
    assert!(out.contains("\"welcome\""), "{out} {err}");
    assert!(err.contains("over HTTP/2"), "{err}");
    // And HTTP/3 (QUIC on UDP at the same port number) in a binary built with it, with the
    // certificate the SIGHUP loaded: `weft serve` reloaded it for HTTP/3 too. Without the
    // feature, `--http3` says how to get it.
    if !cfg!(feature = "http3") {
        let (out, err) = over_with(&format!("wss://localhost:{port}/"), "--http3", &ca_b);
        assert!(out.is_empty() && err.contains("--features http3"), "{out} {err}");
        let _ = std::fs::remove_dir_all(&d);
        return;
    }
    let (out, err) = over_with(&format!("wss://localhost:{port}/"), "--http3", &ca_b);
    assert_eq!(out, "hi\n", "{err}");
    assert!(err.contains("over HTTP/3"), "{err}");
    let (out, err) = over_with(&url, "--http3", &ca_b);
    assert!(out.contains("\"welcome\""), "{out} {err}");
    assert!(err.contains("over HTTP/3"), "{err}");
    let (out, err) = over_with(&url, "--http3", &ca_a);
    assert!(out.is_empty() && !err.contains("over HTTP/3"), "the old certificate over HTTP/3: {out} {err}");
    // `weft serve` advertises it on its HTTP responses (curl, when the machine has it).
    if let Ok(out) = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca_b.to_str().unwrap()])
        .arg(format!("https://localhost:{}/healthz", url.split(':').nth(2).unwrap().trim_end_matches("/ws")))
        .output()
    {
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(head.contains("alt-svc: h3=\":"), "{head}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_or_mismatched_keys_are_refused_at_start() {
    let d = dir();
    let (cert_a, key_a) = self_signed();
    let (_, key_b) = self_signed();
    let (cert, key, other, junk) = (d.join("cert.pem"), d.join("key.pem"), d.join("other.pem"), d.join("junk.pem"));
    write(&cert, &cert_a);
    write(&key, &key_a);
    write(&other, &key_b);
    write(&junk, "-----BEGIN NOTHING-----\n");
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(WEFT).args([cmd, "--addr", "127.0.0.1:0"]).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (c, k, o, j) = (cert.to_str().unwrap(), key.to_str().unwrap(), other.to_str().unwrap(), junk.to_str().unwrap());
    for cmd in ["serve", "echo"] {
        let (code, err) = run(cmd, &["--tls-cert", c, "--tls-key", o]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains("does not belong to the certificate"), "{cmd}: {err}");
        let (code, err) = run(cmd, &["--tls-cert", c, "--tls-key", j]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains("no usable private key"), "{cmd}: {err}");
        let (code, err) = run(cmd, &["--tls-cert", c]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains("both --tls-cert and --tls-key"), "{cmd}: {err}");
        let (code, err) = run(cmd, &["--tls-cert", d.join("missing.pem").to_str().unwrap(), "--tls-key", k]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains("missing.pem"), "{cmd}: {err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
