//! The wxgate benchmark (`bench/run`, see `bench/README.md`): wxgate against nginx as a plain
//! reverse proxy, side by side in one run on this machine, with rows alternating; logins per
//! second against the mock WeChat; resident memory idle, per connection and per session.
//! Results are printed and written to `bench/results.md` between its generated-section markers.
#![forbid(unsafe_code)]

/// The allocator wxgate itself runs on (`src/main.rs`), so the per-session figure measured in
/// this process is the gateway's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod gateway;
mod login;
mod memory;
mod nginx;
mod procs;
mod profile;
mod report;
mod rows;
mod wrk;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;

use gateway::{APP_PATH, Gateway, PUBLIC_PATH, Setup, Store, Unavailable, Variant};
use procs::{Proc, free_addr, have};
use rows::{Protocol, ROWS, Row, Target};

#[derive(Debug, Parser)]
#[command(about = "wxgate against nginx, logins, memory; writes bench/results.md")]
struct Args {
    /// `cargo bench` passes this; it means nothing here.
    #[arg(long, hide = true)]
    bench: bool,
    /// The wxgate binary (a release build).
    #[arg(long, default_value = "target/dist/wxgate")]
    wxgate: PathBuf,
    /// Seconds of load per row and round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Rounds over all rows; each figure is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections for the peak throughput table.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Idle keep-alive connections for the per-connection memory figure.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Sessions for the per-session memory figure.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Where the results go (the generated section is replaced, the rest kept).
    #[arg(long, default_value = "bench/results.md")]
    out: PathBuf,
    /// A short smoke run: 2 s per row, one round, fewer connections and sessions; writes nothing.
    #[arg(long)]
    quick: bool,
    /// Only the memory figures (gateway idle, per connection, per session); writes nothing.
    #[arg(long)]
    memory_only: bool,
    /// Only the peak throughput of the rows, with ratios; writes nothing (for quick comparisons
    /// while changing the hot path).
    #[arg(long)]
    peak_only: bool,
    /// Only the rows whose name contains this text (repeatable); nginx's rows always run.
    #[arg(long = "row")]
    rows: Vec<String>,
    /// Instead of the comparison: instructions per request under callgrind.
    #[arg(long)]
    profile: bool,
    /// Requests counted per profiled case.
    #[arg(long, default_value_t = 5000)]
    profile_requests: u64,
    /// Profile only the case of this label (public, logged-in-hs256, logged-in-es256,
    /// logged-in-1000-routes).
    #[arg(long)]
    profile_only: Option<String>,
    /// Internal: fill a memory or redb store with N sessions and print RSS (run in a child
    /// process).
    #[arg(hide = true)]
    mode: Option<String>,
    #[arg(hide = true)]
    count: Option<u64>,
    #[arg(hide = true)]
    store: Option<String>,
}

impl Args {
    /// Whether `row` runs: every row without `--row`; the nginx rows always, for the ratios.
    fn selects(&self, row: &Row) -> bool {
        matches!(row.target, Target::Origin | Target::NginxProxy)
            || self.rows.is_empty()
            || self.rows.iter().any(|r| row.name.contains(r.as_str()))
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.mode.as_deref() == Some("session-memory") {
        let store = args.store.as_deref().unwrap_or("memory");
        return match memory::fill_sessions(args.count.unwrap_or(1_000_000), store) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("session-memory: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.quick {
        args.duration = 2;
        args.rounds = 1;
        args.idle_connections = args.idle_connections.min(1000);
        args.sessions = args.sessions.min(100_000);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Shared processes: origin, nginx proxy, mock WeChat.
struct World {
    dir: tempfile::TempDir,
    origin: (Proc, SocketAddr),
    proxy: (Proc, nginx::ProxyAddrs),
    mock: (Proc, SocketAddr),
    /// The run's self-signed certificate and key (127.0.0.1), on nginx's TLS listener and
    /// the TLS gateways alike; and the certificate as PEM, for the login client to trust.
    tls: (PathBuf, PathBuf),
    tls_pem: String,
}

/// A self-signed certificate for 127.0.0.1 in `dir`.
fn certificate(dir: &Path) -> Result<((PathBuf, PathBuf), String), String> {
    let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .map_err(|e| e.to_string())?;
    let cert = dir.join("bench-cert.pem");
    let key = dir.join("bench-key.pem");
    let pem = issued.cert.pem();
    std::fs::write(&cert, &pem).map_err(|e| e.to_string())?;
    std::fs::write(&key, issued.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok(((cert, key), pem))
}

fn world(args: &Args) -> Result<World, String> {
    for tool in ["nginx", "wrk"] {
        if !have(tool) {
            return Err(format!(
                "{tool} not found; bench/run installs it when run as root (apt-get install nginx wrk)"
            ));
        }
    }
    if !args.wxgate.exists() {
        return Err(format!(
            "{} not found; build it with cargo build --profile dist",
            args.wxgate.display()
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("wxgate-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let origin = nginx::start_origin(dir.path())?;
    let (tls, tls_pem) = certificate(dir.path())?;
    let proxy = nginx::start_proxy(dir.path(), origin.1, &tls)?;
    let mock_addr = free_addr()?;
    let mut command = Command::new(&args.wxgate);
    command
        .args(["mock-wechat", "--auto-consent", "--listen"])
        .arg(mock_addr.to_string())
        .env("RUST_LOG", "warn");
    let mut mock = Proc::spawn("mock-wechat", command, dir.path())?;
    mock.wait_listening(mock_addr, Duration::from_secs(10))?;
    Ok(World {
        dir,
        origin,
        proxy,
        mock: (mock, mock_addr),
        tls,
        tls_pem,
    })
}

fn run(args: &Args) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let world = world(args)?;
    let setup = Setup {
        wxgate: &args.wxgate,
        dir: world.dir.path(),
        origin: world.origin.1,
        mock: world.mock.1,
        callgrind: args.profile,
        tls: &world.tls,
    };
    if args.profile {
        return runtime.block_on(profile_cases(&setup, args));
    }
    let machine = report::Machine::now();
    println!("bench: {}", machine.summary());
    if args.memory_only {
        let variant = Variant {
            store: Store::Memory,
            algorithm: "HS256",
            campaigns: 0,
            access_ids: 0,
            tls: false,
            fast_paths: true,
        };
        let g = runtime.block_on(gateway_memory(&setup, variant, args.idle_connections))?;
        let s = memory::measure_sessions(args.sessions, "memory")?;
        let r = memory::measure_sessions(args.sessions, "redb")?;
        println!(
            "bench: idle {} KiB, after login {} KiB, with {} connections {} KiB just answered ({} parked, {:.1} KiB each), {} KiB parked ({} of {} open): {:.1} KiB per connection; {:.0} bytes per session",
            g.idle_kib,
            g.before_kib,
            g.connections,
            g.live_kib,
            g.live_parked,
            g.live_per_connection_kib(),
            g.with_kib,
            g.parked,
            g.gauge,
            g.per_connection_kib(),
            s.bytes_per_session()
        );
        println!(
            "bench: redb with {} sessions: {:.0} bytes resident and {:.0} bytes of file per session (RSS {} -> {} KiB)",
            r.count,
            r.bytes_per_session(),
            r.file_bytes_per_session(),
            r.before_kib,
            r.after_kib
        );
        return Ok(());
    }

    // One gateway per variant the rows name, logged in once where a row needs a session.
    let mut gateways: HashMap<Variant, Result<(Gateway, Option<String>), Unavailable>> =
        HashMap::new();
    for row in ROWS.iter().filter(|r| args.selects(r)) {
        let Target::Gateway { variant, .. } = row.target else {
            continue;
        };
        if gateways.contains_key(&variant) {
            continue;
        }
        let name = format!("gw-{}", gateways.len());
        let started = gateway::start(&setup, variant, &name).and_then(|gw| {
            let client = if variant.tls {
                login::client_trusting(&world.tls_pem)
            } else {
                login::client()
            };
            let cookie = runtime
                .block_on(login::login(
                    &client,
                    &gw.origin(),
                    login_path(variant),
                    Some("lilei"),
                ))
                .map_err(|e| Unavailable::Other(format!("login failed: {e}")))?;
            Ok((gw, Some(cookie)))
        });
        if let Err(e) = &started {
            println!("bench: {:?} store: {e:?}", variant.store.as_str());
        }
        gateways.insert(variant, started);
    }
    let load_of = |row: &Row| -> Result<(String, Option<String>), String> {
        if row.protocol == Protocol::H2 && !have("h2load") {
            return Err("h2load not found (apt-get install nghttp2-client)".into());
        }
        match row.target {
            Target::Origin => Ok((format!("http://{}/", world.origin.1), None)),
            Target::NginxProxy if row.protocol == Protocol::Http1 => {
                Ok((format!("http://{}/", world.proxy.1.plain), None))
            }
            Target::NginxProxy => Ok((format!("https://{}/", world.proxy.1.tls), None)),
            Target::Gateway {
                variant,
                path,
                logged_in,
            } => match gateways.get(&variant) {
                Some(Ok((gw, cookie))) => Ok((
                    format!("{}{path}", gw.origin()),
                    if logged_in { cookie.clone() } else { None },
                )),
                Some(Err(Unavailable::Store)) => Err("store not available in this build".into()),
                Some(Err(Unavailable::Other(e))) => Err(e.clone()),
                None => Err("not started".into()),
            },
        }
    };

    // The process that serves a row's requests, whose CPU time is counted.
    let server_pid = |row: &Row| -> u32 {
        match row.target {
            Target::Origin => world.origin.0.pid(),
            Target::NginxProxy => world.proxy.0.pid(),
            Target::Gateway { variant, .. } => match gateways.get(&variant) {
                Some(Ok((gw, _))) => gw.proc.pid(),
                _ => 0,
            },
        }
    };

    // Peak throughput, rows alternating within each round.
    let duration = Duration::from_secs(args.duration);
    let mut peak: Vec<Vec<wrk::Outcome>> = vec![Vec::new(); ROWS.len()];
    let mut skipped: Vec<Option<String>> = vec![None; ROWS.len()];
    for (i, row) in ROWS.iter().enumerate() {
        if !args.selects(row) {
            skipped[i] = Some("not selected (--row)".into());
        } else if let Err(e) = load_of(row) {
            skipped[i] = Some(e);
        }
    }
    println!("bench: warm-up");
    for (i, row) in ROWS.iter().enumerate() {
        if skipped[i].is_some() {
            continue;
        }
        if let Ok((url, cookie)) = load_of(row) {
            let warm = wrk::Load {
                url,
                cookie,
                threads: 2,
                connections: args.connections,
                duration: Duration::from_secs(2),
                think_ms: None,
            };
            load_once(row, &warm, world.dir.path(), &format!("warm-{i}"))?;
        }
    }
    for round in 0..args.rounds {
        for (i, row) in ROWS.iter().enumerate() {
            if skipped[i].is_some() {
                continue;
            }
            let Ok((url, cookie)) = load_of(row) else {
                continue;
            };
            let load = wrk::Load {
                url,
                cookie,
                threads: 2,
                connections: args.connections,
                duration,
                think_ms: None,
            };
            let server = server_pid(row);
            let cpu_before = procs::cpu_seconds(server);
            let mut outcome = load_once(row, &load, world.dir.path(), &format!("peak-{i}"))?;
            let served = outcome.rps * duration.as_secs_f64();
            outcome.cpu_us = (procs::cpu_seconds(server) - cpu_before) * 1e6 / served.max(1.0);
            println!(
                "bench: round {} {:<40} {:>9.0} req/s p99 {:>7.0} µs errors {} cpu {:>5.1} µs/req",
                round + 1,
                row.name,
                outcome.rps,
                outcome.p99_us,
                outcome.errors,
                outcome.cpu_us
            );
            peak[i].push(outcome);
        }
    }
    let peak: Vec<Option<wrk::Outcome>> = peak.iter().map(|o| report::median(o)).collect();
    if args.peak_only {
        print_peak(&peak);
        return Ok(());
    }

    // Latency at one fixed rate for every row: half of nginx's peak.
    let nginx_peak = ROWS
        .iter()
        .position(|r| matches!(r.target, Target::NginxProxy) && r.protocol == Protocol::Http1)
        .and_then(|i| peak[i])
        .map_or(0.0, |o| o.rps);
    let rate = (nginx_peak / 2.0).max(100.0);
    let think_ms: u32 = 5;
    let latency_connections = ((rate * f64::from(think_ms) / 1000.0).round() as u32).max(2);
    let mut latency: Vec<Vec<wrk::Outcome>> = vec![Vec::new(); ROWS.len()];
    for round in 0..args.rounds {
        for (i, row) in ROWS
            .iter()
            .enumerate()
            .filter(|(_, r)| r.latency && args.selects(r))
        {
            let Ok((url, cookie)) = load_of(row) else {
                continue;
            };
            let load = wrk::Load {
                url,
                cookie,
                threads: 2,
                connections: latency_connections,
                duration,
                think_ms: Some(think_ms),
            };
            let outcome = wrk::run(&load, world.dir.path(), &format!("latency-{i}"))?;
            println!(
                "bench: latency round {} {:<32} {:>9.0} req/s p99 {:>7.0} µs",
                round + 1,
                row.name,
                outcome.rps,
                outcome.p99_us
            );
            latency[i].push(outcome);
        }
    }
    let latency: Vec<Option<wrk::Outcome>> = latency.iter().map(|o| report::median(o)).collect();

    // Logins per second through the memory-store gateway, mock without and with latency.
    let main_variant = Variant {
        store: Store::Memory,
        algorithm: "HS256",
        campaigns: 0,
        access_ids: 0,
        tls: false,
        fast_paths: true,
    };
    let logins = match gateways.get(&main_variant) {
        Some(Ok((gw, _))) => runtime.block_on(login_rates(&gw.origin(), world.mock.1, duration))?,
        _ => Vec::new(),
    };
    drop(gateways);

    // Memory of a fresh gateway: idle, then holding idle keep-alive connections.
    let memory = runtime.block_on(gateway_memory(&setup, main_variant, args.idle_connections))?;
    println!(
        "bench: filling a memory store with {} sessions",
        args.sessions
    );
    let sessions = memory::measure_sessions(args.sessions, "memory")?;
    println!(
        "bench: filling a redb store with {} sessions",
        args.sessions
    );
    let redb_sessions = memory::measure_sessions(args.sessions, "redb")?;

    let results = report::Results {
        machine,
        machine_after: report::Machine::now(),
        command: user_args(),
        duration,
        rounds: args.rounds,
        connections: args.connections,
        rows: ROWS,
        peak,
        skipped,
        latency,
        rate,
        latency_connections,
        think_ms,
        logins,
        memory,
        sessions,
        redb_sessions,
    };
    let text = results.markdown();
    println!("\n{text}");
    if args.quick {
        println!("bench: --quick, {} left alone", args.out.display());
    } else {
        report::write_section(&args.out, &text)?;
        println!("bench: written to {}", args.out.display());
    }
    Ok(())
}

/// The median requests/s of each row that ran and its ratio to the nginx proxy.
/// One load of a row: wrk for HTTP/1.1 (plain or TLS), h2load for HTTP/2.
fn load_once(row: &Row, load: &wrk::Load, dir: &Path, tag: &str) -> Result<wrk::Outcome, String> {
    match row.protocol {
        Protocol::Http1 | Protocol::Tls => wrk::run(load, dir, tag),
        Protocol::H2 => wrk::run_h2(load),
    }
}

fn print_peak(peak: &[Option<wrk::Outcome>]) {
    for (row, outcome) in ROWS.iter().zip(peak) {
        let nginx = rows::bar(ROWS, row)
            .and_then(|i| peak[i])
            .unwrap_or_default();
        if let Some(o) = outcome {
            println!(
                "bench: {:<40} {:>9.0} req/s {:>5.2}x nginx, cpu {:>5.1} µs/req {:>5.2}x nginx",
                row.name,
                o.rps,
                o.rps / nginx.rps,
                o.cpu_us,
                o.cpu_us / nginx.cpu_us
            );
        }
    }
}

/// The flags the user gave `bench/run` (without those `bench/run` and `cargo bench` add).
fn user_args() -> String {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--wxgate" => {
                args.next();
            }
            _ => out.push(arg),
        }
    }
    out.join(" ")
}

/// The path a variant's login lands on (the 1 000-route variant logs in on a campaign).
fn login_path(variant: Variant) -> &'static str {
    ROWS.iter()
        .find_map(|r| match r.target {
            Target::Gateway {
                variant: v,
                path,
                logged_in: true,
            } if v == variant => Some(path),
            _ => None,
        })
        .unwrap_or(APP_PATH)
}

async fn set_mock_latency(mock: SocketAddr, ms: u64) -> Result<(), String> {
    let response = reqwest::Client::new()
        .post(format!("http://{mock}/_mock/faults"))
        .body(format!("{{\"latency_ms\": {ms}}}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("/_mock/faults answered {}", response.status()))
    }
}

const LOGIN_USERS: &[&str] = &["lilei", "hanmeimei", "bell", "laowang"];

async fn login_rates(
    origin: &str,
    mock: SocketAddr,
    duration: Duration,
) -> Result<Vec<report::Logins>, String> {
    let mut out = Vec::new();
    for (latency_ms, concurrency) in [(0, 32), (100, 25), (100, 100)] {
        set_mock_latency(mock, latency_ms).await?;
        let rate = login::rate(origin, APP_PATH, concurrency, duration, LOGIN_USERS).await;
        println!(
            "bench: logins, mock latency {latency_ms} ms, {concurrency} browsers: {:.0}/s ({} failed)",
            rate.per_second, rate.failed
        );
        out.push(report::Logins { latency_ms, rate });
    }
    set_mock_latency(mock, 0).await?;
    Ok(out)
}

async fn gateway_memory(
    setup: &Setup<'_>,
    variant: Variant,
    connections: usize,
) -> Result<report::GatewayMemory, String> {
    let gw = gateway::start(setup, variant, "gw-memory").map_err(|e| format!("{e:?}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = gw.proc.rss_kib().ok_or("no RSS")?;
    let client = login::client();
    login::login(&client, &gw.origin(), APP_PATH, Some("lilei")).await?;
    // Fill the upstream pool first (the measured connections open 256 at a time), so the
    // figure is the client connections' own and not the pool's.
    let (warm, _) = memory::hold_idle(gw.addr, PUBLIC_PATH, 512).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kib = gw.proc.rss_kib().ok_or("no RSS")?;
    println!("bench: opening {connections} idle keep-alive connections");
    let (held, ok) = memory::hold_idle(gw.addr, PUBLIC_PATH, connections).await?;
    // At once, while (most of) the connections still hold hyper's state...
    let live_kib = gw.proc.rss_kib().ok_or("no RSS")?;
    let live_parked = gauge(gw.admin, "wxgate_parked_connections")
        .await
        .unwrap_or(-1);
    // ...and once the gateway has parked them (a second or two of quiet).
    let wait = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut parked = live_parked;
    while parked < connections as i64 && tokio::time::Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(200)).await;
        parked = gauge(gw.admin, "wxgate_parked_connections")
            .await
            .unwrap_or(-1);
    }
    // What parking freed goes back to the system as jemalloc's background thread purges it,
    // over its 10 s decay time.
    tokio::time::sleep(PURGED).await;
    let with_kib = gw.proc.rss_kib().ok_or("no RSS")?;
    let open = gauge(gw.admin, "wxgate_open_connections")
        .await
        .unwrap_or(-1);
    drop(held);
    Ok(report::GatewayMemory {
        idle_kib,
        before_kib,
        live_kib,
        live_parked,
        with_kib,
        connections,
        answered: ok,
        gauge: open,
        parked,
    })
}

/// How long after parking the idle-connection memory is read: jemalloc's dirty-page decay
/// (10 s) and some.
const PURGED: Duration = Duration::from_secs(13);

/// A gauge from the admin listener's metrics: the gateway's own count.
async fn gauge(admin: SocketAddr, name: &str) -> Option<i64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn profile_cases(setup: &Setup<'_>, args: &Args) -> Result<(), String> {
    let hs = Variant {
        store: Store::Memory,
        algorithm: "HS256",
        campaigns: 0,
        access_ids: 0,
        tls: false,
        fast_paths: true,
    };
    let es = Variant {
        algorithm: "ES256",
        ..hs
    };
    let many = Variant {
        campaigns: 1000,
        ..hs
    };
    let cases = [
        (hs, PUBLIC_PATH, false, "public"),
        (hs, APP_PATH, true, "logged-in-hs256"),
        (es, APP_PATH, true, "logged-in-es256"),
        (many, "/campaign/737/", true, "logged-in-1000-routes"),
    ];
    println!(
        "bench: callgrind, {} requests per case (instructions per request, load-independent)",
        args.profile_requests
    );
    for (variant, path, logged_in, label) in cases {
        if args
            .profile_only
            .as_deref()
            .is_some_and(|only| only != label)
        {
            continue;
        }
        let p = profile::profile(
            setup,
            variant,
            path,
            logged_in,
            args.profile_requests,
            label,
        )
        .await?;
        println!(
            "| {} | {:.0} | {} |",
            p.label,
            p.instructions_per_request,
            p.annotated.display()
        );
    }
    Ok(())
}
