//! Shared by the binary's integration tests: start `weft` listening on a port the kernel
//! picks.
//!
//! A test that asks for a free port, frees it and waits until *something* accepts on it can
//! race with another test doing the same at once, and then talk to the other test's server.
//! So servers listen on `127.0.0.1:0` and the port comes from their "listening" log line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// A started server: its process, its port, and the thread copying its log (which ends when
/// the process has exited, so joining it after `wait` means the copy is complete).
pub(crate) struct Listening {
    pub(crate) child: Child,
    pub(crate) port: u16,
    #[allow(dead_code)] // read by the tests that check the log
    pub(crate) log: JoinHandle<()>,
}

/// Spawns `cmd` (which must listen on `127.0.0.1:0`), reads its log until the "listening" line,
/// and goes on copying the log to `log` so the server never blocks on a full pipe.
pub(crate) fn spawn_listening(cmd: &mut Command, mut log: Box<dyn Write + Send>) -> Listening {
    let mut child = cmd.env("NO_COLOR", "1").stderr(Stdio::piped()).spawn().expect("spawn weft");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mut seen = String::new();
    let port = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("{cmd:?} exited before listening:\n{seen}");
        };
        let line = strip_ansi(&line);
        let _ = writeln!(log, "{line}");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("listening") {
            let at = line.find("127.0.0.1:").expect("an address in the listening line") + "127.0.0.1:".len();
            let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
            break digits.parse::<u16>().expect("a port");
        }
    };
    let log = std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(log, "{}", strip_ansi(&line));
        }
        let _ = log.flush();
    });
    Listening { child, port, log }
}

/// The text of a log line without terminal colour sequences.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
