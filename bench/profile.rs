//! `bench/run --profile`: instructions per request, counted by valgrind's callgrind, which a
//! busy machine does not disturb. The gateway runs under callgrind; counters are zeroed after a
//! login and a warm-up, then `requests` sequential keep-alive requests run and are dumped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::gateway::{self, Setup, Variant};
use crate::procs::have;

/// Instructions per request of one case, and where the annotated profile went.
pub struct Profiled {
    pub label: String,
    pub instructions_per_request: f64,
    pub annotated: PathBuf,
}

pub async fn profile(
    setup: &Setup<'_>,
    variant: Variant,
    path: &str,
    logged_in: bool,
    requests: u64,
    label: &str,
) -> Result<Profiled, String> {
    if !have("valgrind") || !have("callgrind_control") {
        return Err("valgrind (callgrind) not found: apt-get install valgrind".into());
    }
    let name = format!("profile-{label}");
    let gw = gateway::start(setup, variant, &name).map_err(|e| format!("{e:?}"))?;
    let client = crate::login::client();
    let cookie = if logged_in {
        Some(crate::login::login(&client, &gw.origin(), path, Some("lilei")).await?)
    } else {
        None
    };
    let url = format!("{}{path}", gw.origin());
    send(&client, &url, cookie.as_deref(), 300).await?;
    let pid = gw.proc.pid().to_string();
    callgrind_control(&["-z", &pid])?;
    send(&client, &url, cookie.as_deref(), requests).await?;
    callgrind_control(&["-d", &pid])?;
    let home = setup.dir.join(&name);
    let dump = newest_dump(&home)?;
    let total = totals(&dump)?;
    drop(gw);
    // Kept beside the build for callgrind_annotate or kcachegrind; the report lists the
    // functions by their own instructions.
    let kept = PathBuf::from("target").join(format!("bench-{name}.callgrind"));
    std::fs::copy(&dump, &kept).map_err(|e| e.to_string())?;
    let annotated = PathBuf::from("target").join(format!("bench-{name}.txt"));
    let report = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=95"])
        .arg(&kept)
        .output()
        .map_err(|e| e.to_string())?;
    std::fs::write(&annotated, &report.stdout).map_err(|e| e.to_string())?;
    Ok(Profiled {
        label: label.to_owned(),
        instructions_per_request: total as f64 / requests as f64,
        annotated,
    })
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    count: u64,
) -> Result<(), String> {
    for _ in 0..count {
        let mut request = client.get(url);
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        response.bytes().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn callgrind_control(args: &[&str]) -> Result<(), String> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    // Dumps are written asynchronously by the profiled process.
    std::thread::sleep(Duration::from_millis(500));
    if status.success() {
        Ok(())
    } else {
        Err(format!("callgrind_control {args:?} failed"))
    }
}

fn newest_dump(home: &Path) -> Result<PathBuf, String> {
    std::fs::read_dir(home)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("callgrind.out"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .ok_or_else(|| format!("no callgrind dump in {}", home.display()))
}

fn totals(dump: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(dump).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no totals in {}", dump.display()))
}
