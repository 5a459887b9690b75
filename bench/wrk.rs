//! Load from Debian's `wrk`: a closed loop of keep-alive connections, with a Lua script that
//! sends the session cookie and reports the percentiles wrk's own summary lacks (p99.9).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One wrk run.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub cookie: Option<String>,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// Each connection waits this long after a response before its next request, which turns
    /// the closed loop into a roughly fixed rate of `connections / think` (wrk2 is not in Debian).
    pub think_ms: Option<u32>,
}

/// What wrk measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Connect, read, write and timeout errors plus non-2xx/3xx answers.
    pub errors: u64,
    /// CPU time (user and system) the serving process spent per request, in µs: the
    /// origin's for the direct row, the proxy's for the others. Unlike requests/s, it hardly
    /// moves with what else the machine's cores are doing.
    pub cpu_us: f64,
}

/// Runs wrk once; `script_dir` holds the generated Lua script.
pub fn run(load: &Load, script_dir: &Path, tag: &str) -> Result<Outcome, String> {
    let script = script_dir.join(format!("{tag}.lua"));
    std::fs::write(&script, lua(load)).map_err(|e| e.to_string())?;
    let output = Command::new("wrk")
        .arg(format!("-t{}", load.threads.min(load.connections).max(1)))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&script)
        .arg(&load.url)
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse(&stdout).ok_or_else(|| {
        format!(
            "wrk gave no result ({}): {} {}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

/// Runs h2load (nghttp2-client) once over HTTP/2 with TLS: `connections` connections, one
/// stream at a time on each (as wrk's closed loop), for the load's duration. h2load reports
/// no percentiles: p50 carries its mean time per request, p99 and p99.9 are not known (NaN).
pub fn run_h2(load: &Load) -> Result<Outcome, String> {
    let mut command = Command::new("h2load");
    command
        .arg(format!("-c{}", load.connections))
        .arg(format!("-t{}", load.threads.min(load.connections).max(1)))
        .arg("-m1")
        .arg(format!("-D{}", load.duration.as_secs().max(1)));
    if let Some(cookie) = &load.cookie {
        command.arg("-H").arg(format!("cookie: {cookie}"));
    }
    let output = command
        .arg(&load.url)
        .output()
        .map_err(|e| format!("cannot run h2load: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_h2(&stdout).ok_or_else(|| {
        format!(
            "h2load gave no result ({}): {} {}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

fn parse_h2(stdout: &str) -> Option<Outcome> {
    let rps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))?
        .split(", ")
        .find_map(|f| f.strip_suffix(" req/s"))?
        .parse::<f64>()
        .ok()?;
    // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout"
    let counts = |prefix: &str, names: &[&str]| -> Option<u64> {
        let line = stdout.lines().find_map(|l| l.strip_prefix(prefix))?;
        Some(
            line.split(", ")
                .filter_map(|f| f.trim().split_once(' '))
                .filter(|(_, name)| names.contains(name))
                .filter_map(|(n, _)| n.parse::<u64>().ok())
                .sum(),
        )
    };
    let failed = counts("requests: ", &["failed", "errored", "timeout"])?;
    let refused = counts("status codes: ", &["4xx", "5xx"])?;
    let mean = stdout
        .lines()
        .find_map(|l| l.strip_prefix("time for request:"))
        .and_then(|rest| rest.split_whitespace().nth(2))
        .and_then(micros);
    Some(Outcome {
        rps,
        p50_us: mean.unwrap_or(f64::NAN),
        p99_us: f64::NAN,
        p999_us: f64::NAN,
        errors: failed + refused,
        cpu_us: 0.0,
    })
}

/// h2load's durations: `358us`, `12.42ms`, `1.02s`.
fn micros(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else {
        (text.strip_suffix('s')?, 1e6)
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn lua(load: &Load) -> String {
    let mut script = String::new();
    if let Some(cookie) = &load.cookie {
        script.push_str(&format!("wrk.headers[\"Cookie\"] = \"{cookie}\"\n"));
    }
    if let Some(ms) = load.think_ms {
        script.push_str(&format!("function delay() return {ms} end\n"));
    }
    script.push_str(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT %d %d %d %d %f %f %f\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#,
    );
    script
}

fn parse(stdout: &str) -> Option<Outcome> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("WRK_RESULT "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(|f| f.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    let &[
        requests,
        duration_us,
        io_errors,
        status_errors,
        p50,
        p99,
        p999,
    ] = &fields[..]
    else {
        return None;
    };
    let seconds = duration_us / 1e6;
    Some(Outcome {
        rps: if seconds > 0.0 {
            requests / seconds
        } else {
            0.0
        },
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
        errors: (io_errors + status_errors) as u64,
        // Read from /proc by the caller, which knows the serving process.
        cpu_us: 0.0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn h2loads_summary_is_read() {
        let out = "starting benchmark...\n\
finished in 5.00s, 41234.40 req/s, 5.12MB/s\n\
requests: 206172 total, 206172 started, 206172 done, 206170 succeeded, 2 failed, 0 errored, 0 timeout\n\
status codes: 206170 2xx, 0 3xx, 1 4xx, 0 5xx\n\
traffic: 25.60MB (26843545) total\n\
                     min         max         mean         sd        +/- sd\n\
time for request:      358us     12.42ms      1.54ms       567us    78.12%\n";
        let o = super::parse_h2(out).unwrap();
        assert!((o.rps - 41234.40).abs() < 1e-6);
        assert_eq!(o.errors, 3);
        assert!((o.p50_us - 1540.0).abs() < 1e-6);
        assert!(o.p99_us.is_nan());
    }

    #[test]
    fn the_result_line_is_read() {
        let out = super::parse("Running 1s test\nWRK_RESULT 1000 2000000 1 2 100.0 900.5 1500.0\n")
            .unwrap();
        assert_eq!(out.errors, 3);
        assert!((out.rps - 500.0).abs() < 1e-9);
        assert!((out.p99_us - 900.5).abs() < 1e-9);
    }
}
