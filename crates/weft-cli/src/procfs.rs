//! What the benchmark reads from /proc: CPU time and RSS of a process, and the fd limit.

use std::time::Instant;

/// CPU time (user + system) of a process at an instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    pub(crate) at: Instant,
    pub(crate) cpu_secs: f64,
}

/// User+system CPU seconds of `pid` (`None`: this process).
pub(crate) fn cpu(pid: Option<u32>) -> Option<CpuSample> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Some(CpuSample { at: Instant::now(), cpu_secs: ticks / hz })
}

/// CPU used between two samples, as seconds and as a fraction of one core.
pub(crate) fn cpu_delta(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    let secs = (b.cpu_secs - a.cpu_secs).max(0.0);
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    Some((secs, secs / wall))
}

/// Resident set size of `pid` in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Raise the soft open-file limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(hard) = lim.maximum {
        if lim.current.is_none_or(|c| c < hard) {
            lim.current = Some(hard);
            let _ = setrlimit(Resource::Nofile, lim);
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
