//! Session stores side by side: bytes a stored session costs in memory, redb and Redis, and
//! the cost of a session lookup through the hot-path cache (hit) and straight from the
//! store (what a cache miss pays).
//!
//!     cargo bench --bench stores            # figures go to stdout as a Markdown table
//!
//! Redis is measured when `redis-server` is installed: the bench starts its own on a free
//! loopback port with persistence off and stops it at the end.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wxgate::login::AuthScope;
use wxgate::session::{
    CacheSettings, Clock, Lifetimes, MemoryStore, NewSession, Profile, RecordKeys, RedbStore,
    RedisStore, Session, SessionCache, SessionId, SessionStore, StorageKey, StoreSharing,
    WeChatToken, WeChatTokens,
};

/// Sessions stored to measure their size.
const SESSIONS: usize = 20_000;
/// Lookups timed per store and path.
const LOOKUPS: usize = 20_000;
/// Puts in flight at once while filling a store.
const CONCURRENT_LOGINS: usize = 64;
const SECRET: &[u8] = b"bench-session-secret-0123456789-abcdefghij";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

struct Row {
    store: &'static str,
    bytes_per_session: String,
    puts_per_second: f64,
    cached: Timing,
    uncached: Timing,
}

async fn run() {
    let lifetimes = Lifetimes::new(
        Duration::from_secs(7 * 86_400),
        Duration::from_secs(30 * 86_400),
    );
    let sessions: Vec<(StorageKey, Session)> = (0..SESSIONS)
        .map(|n| (SessionId::generate().storage_key(), session(n, lifetimes)))
        .collect();
    let mut rows = Vec::new();

    // Memory: the resident set grows by what the sessions cost, hash map included.
    let memory = Arc::new(MemoryStore::new(SESSIONS as u64 * 2));
    let before = resident_bytes();
    let rate = fill(memory.as_ref(), &sessions).await;
    let grown = resident_bytes().saturating_sub(before);
    rows.push(
        measure(
            "memory",
            format!("{} (resident set growth)", grown / SESSIONS as u64),
            rate,
            memory,
            &sessions,
            lifetimes,
        )
        .await,
    );

    // redb: the file's size over the sessions in it.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("sessions.redb");
    let redb = Arc::new(
        RedbStore::open(&path, keys(), Duration::from_secs(30), Clock::system())
            .expect("redb opens"),
    );
    let rate = fill(redb.as_ref(), &sessions).await;
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    rows.push(
        measure(
            "redb",
            format!("{} (file size)", file / SESSIONS as u64),
            rate,
            redb,
            &sessions,
            lifetimes,
        )
        .await,
    );

    // Redis: used_memory growth over the sessions (records, user sets, key names).
    match RedisProcess::start() {
        Some(server) => {
            let url = format!("redis://127.0.0.1:{}/0", server.port);
            let redis = Arc::new(
                RedisStore::open(&url, keys(), Duration::from_secs(5), Clock::system())
                    .expect("redis store"),
            );
            redis.ping().await.expect("redis answers");
            let before = server.used_memory();
            let rate = fill(redis.as_ref(), &sessions).await;
            let grown = server.used_memory().saturating_sub(before);
            rows.push(
                measure(
                    "redis",
                    format!("{} (used_memory growth)", grown / SESSIONS as u64),
                    rate,
                    redis,
                    &sessions,
                    lifetimes,
                )
                .await,
            );
        }
        None => eprintln!("redis: skipped, redis-server not found"),
    }

    println!(
        "| store | bytes per stored session | puts/s ({CONCURRENT_LOGINS} in flight) | cached lookup mean / p99 | uncached lookup mean / p99 |"
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} |",
            row.store, row.bytes_per_session, row.puts_per_second, row.cached, row.uncached
        );
    }
}

/// Stores every session, `CONCURRENT_LOGINS` at a time as a busy gateway would; returns
/// puts per second.
async fn fill(store: &dyn SessionStore, sessions: &[(StorageKey, Session)]) -> f64 {
    use futures_util::StreamExt;
    let started = Instant::now();
    futures_util::stream::iter(sessions)
        .map(|(key, session)| async move { store.put(key, session).await.expect("put") })
        .buffer_unordered(CONCURRENT_LOGINS)
        .collect::<Vec<()>>()
        .await;
    sessions.len() as f64 / started.elapsed().as_secs_f64()
}

/// Times lookups of stored sessions: through a warm cache, then straight from the store.
async fn measure(
    name: &'static str,
    bytes_per_session: String,
    puts_per_second: f64,
    store: Arc<dyn SessionStore>,
    sessions: &[(StorageKey, Session)],
    lifetimes: Lifetimes,
) -> Row {
    let keys: Vec<StorageKey> = (0..LOOKUPS)
        .map(|n| sessions[(n * 7919) % sessions.len()].0)
        .collect();

    let mut uncached = Vec::with_capacity(LOOKUPS);
    for key in &keys {
        let started = Instant::now();
        let found = store.get(key).await.expect("get");
        uncached.push(started.elapsed());
        assert!(found.is_some());
    }

    let settings = CacheSettings {
        max_entries: SESSIONS as u64,
        ttl: Duration::from_secs(3600),
        sharing: StoreSharing::Exclusive,
    };
    let cache = SessionCache::new(store, settings, lifetimes);
    for key in &keys {
        cache.load(key).await.expect("warm");
    }
    let mut cached = Vec::with_capacity(LOOKUPS);
    for key in &keys {
        let started = Instant::now();
        let found = cache.load(key).await.expect("load");
        cached.push(started.elapsed());
        assert!(found.is_some());
    }
    Row {
        store: name,
        bytes_per_session,
        puts_per_second,
        cached: Timing::of(cached),
        uncached: Timing::of(uncached),
    }
}

struct Timing {
    mean: Duration,
    p99: Duration,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let total: Duration = samples.iter().sum();
        Timing {
            mean: total / samples.len().max(1) as u32,
            p99: samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
        }
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} µs / {:.1} µs",
            self.mean.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6
        )
    }
}

fn keys() -> RecordKeys {
    RecordKeys::derive(SECRET).expect("a long enough secret")
}

/// A userinfo session shaped like a real one: WeChat's tokens are about 110 characters.
fn session(n: usize, lifetimes: Lifetimes) -> Session {
    let now = SystemTime::now();
    let token = |prefix: &str| WeChatToken::new(format!("{prefix}{n:0>104}"));
    Session::new(
        NewSession {
            appid: "wx2ebfe5f20389c64a".to_owned(),
            openid: format!("oLVPpjqs9BhvzwPj5A-vTYAX{n:0>4}"),
            unionid: Some(format!("o6_bmasdasdsad6_2sgVt7hMZOP{n:0>4}")),
            scope: AuthScope::UserInfo,
            snapshot: false,
            profile: Some(Profile {
                nickname: "微信用户".to_owned(),
                headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/POgEwh4mIHO4nibH0KlMECNjjGxQUq24ZEaGT4poC6icRiccVGKSyXwibcPq4BWmiaIGuG1icwxaQX6grC9VemZoJ8rg/132".to_owned(),
                sex: 0,
                province: String::new(),
                city: String::new(),
                country: String::new(),
                privilege: Vec::new(),
            }),
            tokens: WeChatTokens {
                access_token: token("93_"),
                access_expires_at: now + Duration::from_secs(7200),
                refresh_token: token("93_R"),
                refresh_expires_at: now + Duration::from_secs(30 * 86_400),
            },
        },
        now,
        lifetimes,
    )
}

/// Resident set size from /proc (Linux); 0 elsewhere.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

struct RedisProcess {
    port: u16,
    child: Child,
}

impl RedisProcess {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisProcess { port, child };
        for _ in 0..100 {
            if server
                .cli(&["PING"])
                .is_some_and(|out| out.contains("PONG"))
            {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn used_memory(&self) -> u64 {
        self.cli(&["INFO", "memory"])
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
