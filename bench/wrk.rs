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
    fn the_result_line_is_read() {
        let out = super::parse("Running 1s test\nWRK_RESULT 1000 2000000 1 2 100.0 900.5 1500.0\n")
            .unwrap();
        assert_eq!(out.errors, 3);
        assert!((out.rps - 500.0).abs() < 1e-9);
        assert!((out.p99_us - 900.5).abs() < 1e-9);
    }
}
