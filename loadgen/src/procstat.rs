//! CPU time and RSS from /proc: of the server processes (`--server-pid`), of
//! the generator itself and of the whole machine, and [`CpuWindow`], the
//! `cpu` object of the JSON summaries.

use std::time::Instant;

use serde_json::{json, Value};

use crate::report::round2;

/// Kernel clock ticks per second in /proc (USER_HZ, fixed at 100 on Linux).
const USER_HZ: f64 = 100.0;

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process (`self` or a pid), in seconds.
fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// Summed RSS (KiB) of the server processes, when all could be read.
pub fn servers_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

fn servers_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(&p.to_string())).sum()
}

/// Busy CPU time of the whole machine (all cores), in seconds, from /proc/stat.
fn machine_busy_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / USER_HZ)
}

/// CPU usage over a window, in percent of one core (200 = two cores busy).
pub struct CpuWindow {
    at: Instant,
    server: Option<f64>,
    by_pid: Vec<Option<f64>>,
    me: Option<f64>,
    machine: Option<f64>,
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            server: servers_cpu(pids),
            by_pid: pids.iter().map(|p| cpu_secs(&p.to_string())).collect(),
            me: cpu_secs("self"),
            machine: machine_busy_secs(),
        }
    }

    /// Server, generator and whole-machine CPU over the window. `others_cpu_pct`
    /// is what the rest of the machine used: a noisy neighbour shows up there.
    pub fn finish(&self, pids: &[u32]) -> Value {
        let secs = self.at.elapsed().as_secs_f64().max(1e-6);
        let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(((b - a) / secs * 1000.0).round() / 10.0),
            _ => None,
        };
        let server = pct(self.server, servers_cpu(pids));
        let me = pct(self.me, cpu_secs("self"));
        let machine = pct(self.machine, machine_busy_secs());
        let others = machine.map(|m| {
            ((m - server.unwrap_or(0.0) - me.unwrap_or(0.0)).max(0.0) * 10.0).round() / 10.0
        });
        let server_secs = match (self.server, servers_cpu(pids)) {
            (Some(a), Some(b)) => Some(round2(b - a)),
            _ => None,
        };
        let now_by_pid: Vec<Option<f64>> = pids.iter().map(|p| cpu_secs(&p.to_string())).collect();
        let by_pid: Vec<Option<f64>> = self
            .by_pid
            .iter()
            .zip(&now_by_pid)
            .map(|(a, b)| pct(*a, *b))
            .collect();
        let secs_by_pid: Vec<Option<f64>> = self
            .by_pid
            .iter()
            .zip(&now_by_pid)
            .map(|(a, b)| Some(round2((*b)? - (*a)?)))
            .collect();
        json!({
            "window_secs": (secs * 100.0).round() / 100.0,
            "server_cpu_secs": server_secs,
            "server_cpu_pct": server,
            "server_cpu_pct_by_pid": if pids.len() > 1 { json!(by_pid) } else { Value::Null },
            "server_cpu_secs_by_pid": if pids.len() > 1 { json!(secs_by_pid) } else { Value::Null },
            "loadgen_cpu_pct": me,
            "machine_cpu_pct": machine,
            "others_cpu_pct": if pids.is_empty() { None } else { others },
        })
    }
}
