//! The report: the machine and its load, the tables in Markdown, and the generated section of
//! `bench/results.md` (between its markers; everything else in the file is kept).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::login::LoginRate;
use crate::memory::SessionMemory;
use crate::procs::output_of;
use crate::rows::{Row, Target};
use crate::wrk::Outcome;

const START: &str = "<!-- bench:start -->";
const END: &str = "<!-- bench:end -->";

/// What the machine is and how busy it was.
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: String,
    pub memory: String,
    pub kernel: String,
    pub load: String,
}

impl Machine {
    pub fn now() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(String::new, |kib| {
                format!("{:.0} GiB", kib as f64 / 1048576.0)
            });
        Machine {
            date: output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu,
            cores: output_of("nproc", &[]),
            memory,
            kernel: output_of("uname", &["-sr"]),
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{}, {} cores, {}, {}; load average {}",
            self.cpu, self.cores, self.memory, self.kernel, self.load
        )
    }
}

pub struct Logins {
    pub latency_ms: u64,
    pub rate: LoginRate,
}

pub struct GatewayMemory {
    pub idle_kib: u64,
    pub before_kib: u64,
    /// Right after the last connection was answered, `live_parked` of them parked by then.
    pub live_kib: u64,
    pub live_parked: i64,
    /// Once the gateway has parked them (`parked` of them).
    pub with_kib: u64,
    pub connections: usize,
    pub answered: usize,
    pub gauge: i64,
    pub parked: i64,
}

impl GatewayMemory {
    /// Per idle connection once parked: the steady state of an idle keep-alive connection.
    pub fn per_connection_kib(&self) -> f64 {
        self.with_kib.saturating_sub(self.before_kib) as f64 / self.connections.max(1) as f64
    }

    /// Per connection in its first second of quiet, before parking.
    pub fn live_per_connection_kib(&self) -> f64 {
        self.live_kib.saturating_sub(self.before_kib) as f64 / self.connections.max(1) as f64
    }
}

pub struct Results {
    pub machine: Machine,
    pub machine_after: Machine,
    pub command: String,
    pub duration: Duration,
    pub rounds: usize,
    pub connections: u32,
    pub rows: &'static [Row],
    pub peak: Vec<Option<Outcome>>,
    pub skipped: Vec<Option<String>>,
    pub latency: Vec<Option<Outcome>>,
    pub rate: f64,
    pub latency_connections: u32,
    pub think_ms: u32,
    pub logins: Vec<Logins>,
    pub memory: GatewayMemory,
    pub sessions: SessionMemory,
    pub redb_sessions: SessionMemory,
}

/// The run whose requests per second is the median (percentiles are taken from it as well).
/// The round with the median requests/s, carrying the median CPU per request of all rounds
/// (taken on its own, as the two need not come from one round).
pub fn median(outcomes: &[Outcome]) -> Option<Outcome> {
    let mut sorted = outcomes.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let mut median = sorted.get(sorted.len() / 2).copied()?;
    sorted.sort_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us));
    median.cpu_us = sorted[sorted.len() / 2].cpu_us;
    Some(median)
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        return "—".to_owned();
    }
    format!("{:.2} ms", us / 1000.0)
}

impl Results {
    fn index_of(&self, wanted: fn(&Target) -> bool) -> Option<usize> {
        self.rows.iter().position(|r| wanted(&r.target))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "## Run of {}\n", m.date);
        let _ = writeln!(
            md,
            "- Machine: {}, {} cores, {}, {}.",
            m.cpu, m.cores, m.memory, m.kernel
        );
        let _ = writeln!(
            md,
            "- Load average (1/5/15 min) at the start: {}; at the end: {}.",
            m.load, self.machine_after.load
        );
        let _ = writeln!(
            md,
            "- Command: `{}`",
            format!("bench/run {}", self.command).trim_end()
        );
        let _ = writeln!(
            md,
            "- wrk: 2 threads, {} connections, {} s per row, {} round(s) with the rows alternating; \
             each figure is the median round's.\n",
            self.connections,
            self.duration.as_secs(),
            self.rounds
        );
        self.throughput(&mut md);
        self.latency_table(&mut md);
        self.logins_table(&mut md);
        self.memory_table(&mut md);
        md
    }

    fn throughput(&self, md: &mut String) {
        let _ = writeln!(md, "### Throughput at peak load\n");
        let _ = writeln!(
            md,
            "CPU per request is the CPU time (user and system) of the serving process, the \
             origin's on the first row and the proxy's on the others, over the requests it \
             served: what requests/s would be if the proxy had a core to itself, and nearly \
             independent of what else the cores were doing.\n"
        );
        let _ = writeln!(
            md,
            "| row | requests/s | × nginx proxy | p50 | p99 | p99.9 | errors | CPU per request | CPU × nginx proxy |"
        );
        // Each row's bar is nginx over the same protocol (HTTP/1.1, TLS or HTTP/2); h2load
        // reports a mean (shown as p50) and no percentiles.
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (i, row) in self.rows.iter().enumerate() {
            let nginx_row = crate::rows::bar(self.rows, row).and_then(|b| self.peak[b]);
            let nginx = nginx_row.map(|o| o.rps);
            let nginx_cpu = nginx_row.map(|o| o.cpu_us);
            match (&self.peak[i], &self.skipped[i]) {
                (Some(o), _) => {
                    let ratio = nginx.map_or("—".to_owned(), |n| format!("{:.2}×", o.rps / n));
                    let cpu_ratio = nginx_cpu
                        .filter(|n| *n > 0.0)
                        .map_or("—".to_owned(), |n| format!("{:.2}×", o.cpu_us / n));
                    let _ = writeln!(
                        md,
                        "| {} | {:.0} | {} | {} | {} | {} | {} | {:.1} µs | {} |",
                        row.name,
                        o.rps,
                        ratio,
                        ms(o.p50_us),
                        ms(o.p99_us),
                        ms(o.p999_us),
                        o.errors,
                        o.cpu_us,
                        cpu_ratio
                    );
                }
                (None, reason) => {
                    let reason = reason.as_deref().unwrap_or("no result");
                    let _ = writeln!(md, "| {} | {reason} | | | | | | | |", row.name);
                }
            }
        }
        md.push('\n');
    }

    fn latency_table(&self, md: &mut String) {
        let direct = self
            .index_of(|t| matches!(t, Target::Origin))
            .and_then(|i| self.latency[i]);
        let _ = writeln!(
            md,
            "### Latency at half of nginx's peak\n\n\
             A fixed rate of about {:.0} requests/s for every row: {} keep-alive connections, each \
             waiting {} ms after a response before its next request (wrk's `delay()`; wrk2 is not in \
             Debian). \"Added\" is the row's p99 minus the direct origin's p99.\n",
            self.rate, self.latency_connections, self.think_ms
        );
        let _ = writeln!(
            md,
            "| row | requests/s | p50 | p99 | p99.9 | p99 added over direct | errors |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for (i, row) in self.rows.iter().enumerate() {
            let Some(o) = self.latency[i] else { continue };
            let added = direct.map_or("—".to_owned(), |d| ms(o.p99_us - d.p99_us));
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} | {} | {} |",
                row.name,
                o.rps,
                ms(o.p50_us),
                ms(o.p99_us),
                ms(o.p999_us),
                added,
                o.errors
            );
        }
        md.push('\n');
    }

    fn logins_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "### Logins\n\n\
             Each login is the whole browser trip on an `snsapi_userinfo` route: the gateway's 302 to \
             the mock's authorize (auto-consent), the mock's 302 back, and the callback, which \
             exchanges the code and fetches the profile (two mock API calls) and creates the session. \
             Every browser starts its next login when the last one ends. With latency, two calls \
             of 100 ms bound a browser to 5 logins/s, so the bound is 5 × browsers.\n"
        );
        let _ = writeln!(
            md,
            "| mock API latency | browsers | logins/s | logins done | failed | bound by concurrency |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
        for l in &self.logins {
            let bound = if l.latency_ms == 0 {
                "—".to_owned()
            } else {
                let per_browser = 1000.0 / (2.0 * l.latency_ms as f64);
                format!(
                    "{:.0}/s ({:.0} % reached)",
                    per_browser * l.rate.concurrency as f64,
                    100.0 * l.rate.per_second / (per_browser * l.rate.concurrency as f64)
                )
            };
            let _ = writeln!(
                md,
                "| {} ms | {} | {:.0} | {} | {} | {bound} |",
                l.latency_ms, l.rate.concurrency, l.rate.per_second, l.rate.done, l.rate.failed
            );
        }
        md.push('\n');
    }

    fn memory_table(&self, md: &mut String) {
        let g = &self.memory;
        let s = &self.sessions;
        let _ = writeln!(md, "### Resident memory\n");
        let _ = writeln!(md, "| what | resident |");
        let _ = writeln!(md, "|---|---:|");
        let _ = writeln!(
            md,
            "| wxgate idle (memory store, started, no request yet) | {:.1} MiB |",
            g.idle_kib as f64 / 1024.0
        );
        let _ = writeln!(
            md,
            "| the same after one login and 512 proxied connections (upstream pool full) | {:.1} MiB |",
            g.before_kib as f64 / 1024.0
        );
        let _ = writeln!(
            md,
            "| the same holding {} keep-alive connections right after each was answered ({} answered 200; {} parked by then) | {:.1} MiB |",
            g.connections,
            g.answered,
            g.live_parked,
            g.live_kib as f64 / 1024.0
        );
        let _ = writeln!(
            md,
            "| per connection in its first second of quiet (its HTTP state still held) | {:.1} KiB |",
            g.live_per_connection_kib()
        );
        let _ = writeln!(
            md,
            "| the same once idle: {} parked (the gateway counts {} open) | {:.1} MiB |",
            g.parked,
            g.gauge,
            g.with_kib as f64 / 1024.0
        );
        let _ = writeln!(
            md,
            "| **per idle connection** (parked) | **{:.1} KiB** |",
            g.per_connection_kib()
        );
        let _ = writeln!(md, "{}", filled_row("memory", s, ""));
        let _ = writeln!(
            md,
            "| **per stored session** | **{:.0} bytes** |",
            s.bytes_per_session()
        );
        let r = &self.redb_sessions;
        let file = format!("; file {:.0} MiB", r.file_bytes as f64 / 1_048_576.0);
        let _ = writeln!(md, "{}", filled_row("redb", r, &file));
        let _ = writeln!(
            md,
            "| per stored session in redb: resident / on disk | {:.0} / {:.0} bytes |",
            r.bytes_per_session(),
            r.file_bytes_per_session()
        );
        md.push('\n');
    }
}

/// The row of a store filled with sessions in a process of its own: its RSS before and after.
fn filled_row(store: &str, s: &SessionMemory, more: &str) -> String {
    format!(
        "| {store} store with {} typical sessions (own process, RSS {:.0} → {:.0} MiB{more}) | {:.0} MiB |",
        s.count,
        s.before_kib as f64 / 1024.0,
        s.after_kib as f64 / 1024.0,
        (s.after_kib.saturating_sub(s.before_kib)) as f64 / 1024.0
    )
}

/// Replaces the generated section of `path` (creating the file if needed).
pub fn write_section(path: &Path, section: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let generated = format!("{START}\n{section}{END}");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{generated}{}", &old[..a], &old[b + END.len()..])
        }
        _ => format!("{old}\n{generated}\n"),
    };
    std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}
