//! Resident memory: a gateway idle, the same gateway holding 10 000 idle keep-alive
//! connections, and the memory and redb stores each holding a million sessions (in a child
//! process of its own, so nothing else is in its RSS).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use wxgate::login::AuthScope;
use wxgate::session::{
    Clock, Lifetimes, MemoryStore, NewSession, Profile, RecordKeys, RedbStore, Session, SessionId,
    SessionStore, WeChatToken, WeChatTokens,
};

use crate::procs::rss_kib;

/// Opens `count` connections, sends one keep-alive request on each and keeps them open.
/// Returns them with how many answered 200.
pub async fn hold_idle(
    addr: SocketAddr,
    path: &str,
    count: usize,
) -> Result<(Vec<TcpStream>, usize), String> {
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let result = one_request(addr, &path).await;
            drop(permit);
            result
        }));
    }
    let mut streams = Vec::with_capacity(count);
    let mut ok = 0;
    for task in tasks {
        match task.await {
            Ok(Ok((stream, status_ok))) => {
                ok += usize::from(status_ok);
                streams.push(stream);
            }
            Ok(Err(e)) => return Err(format!("connection {}: {e}", streams.len())),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((streams, ok))
}

async fn one_request(addr: SocketAddr, path: &str) -> Result<(TcpStream, bool), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the head, then the body it announces, leaving the connection clean for reuse.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return Ok((stream, text.starts_with("HTTP/1.1 200")));
            }
        }
    }
}

/// What `session-memory` measured in its own process.
#[derive(Debug, Clone, Copy)]
pub struct SessionMemory {
    pub count: u64,
    pub before_kib: u64,
    pub after_kib: u64,
    /// The redb file's size once filled (0 for the memory store).
    pub file_bytes: u64,
}

impl SessionMemory {
    pub fn bytes_per_session(&self) -> f64 {
        (self.after_kib.saturating_sub(self.before_kib) * 1024) as f64 / self.count as f64
    }

    pub fn file_bytes_per_session(&self) -> f64 {
        self.file_bytes as f64 / self.count as f64
    }
}

/// Runs this bench binary again as `session-memory COUNT STORE` and reads its answer.
pub fn measure_sessions(count: u64, store: &'static str) -> Result<SessionMemory, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args(["session-memory", &count.to_string(), store])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SESSION_MEMORY "))
        .ok_or_else(|| {
            format!(
                "session-memory gave no answer: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [count, before_kib, after_kib, file_bytes] => Ok(SessionMemory {
            count,
            before_kib,
            after_kib,
            file_bytes,
        }),
        _ => Err(format!("session-memory answered {line:?}")),
    }
}

/// Logins in flight at once while a store is filled: a redb commit is shared by the puts
/// waiting for it, as on a busy gateway.
const FILLING: usize = 64;

/// The child's side: fills a store (`memory`, or `redb` in a temporary file) with `count`
/// sessions as logins through the mock leave them (snsapi_userinfo, unionid, profile, both
/// tokens) and prints RSS before and after, and the redb file's size.
pub fn fill_sessions(count: u64, store: &str) -> Result<(), String> {
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("sessions.redb");
    let pid = std::process::id();
    let before = rss_kib(pid).ok_or("no /proc/self/status")?;
    let store: Arc<dyn SessionStore> = match store {
        "memory" => Arc::new(MemoryStore::new(count)),
        "redb" => {
            let keys = RecordKeys::derive(b"bench-session-memory-secret-0123456789abcdef")
                .map_err(|e| e.to_string())?;
            Arc::new(
                RedbStore::open(&path, keys, Duration::from_secs(60), Clock::system())
                    .map_err(|e| e.to_string())?,
            )
        }
        other => return Err(format!("no store {other:?}")),
    };
    let now = SystemTime::now();
    let lifetimes = Lifetimes::with_ttl(Duration::from_secs(7 * 86_400));
    runtime.block_on(async {
        futures_util::stream::iter(0..count)
            .map(|n| {
                let store = store.clone();
                async move {
                    let session = Session::new(typical_login(n), now, lifetimes);
                    let key = SessionId::generate().storage_key();
                    store.put(&key, &session).await.map_err(|e| e.to_string())
                }
            })
            .buffer_unordered(FILLING)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
    })?;
    let after = rss_kib(pid).ok_or("no /proc/self/status")?;
    let held = runtime.block_on(store.count()).map_err(|e| e.to_string())?;
    if held != count {
        return Err(format!("the store holds {held} sessions, not {count}"));
    }
    let file = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!("SESSION_MEMORY {count} {before} {after} {file}");
    Ok(())
}

/// The shapes the mock gives (and WeChat does): 28-character openid and unionid, a
/// thirdwx.qlogo.cn avatar URL, 110-character tokens, the empty regions of post-2021 WeChat.
fn typical_login(n: u64) -> NewSession {
    let id = format!("{n:027}");
    let now = SystemTime::now();
    NewSession {
        appid: wxgate::mock::DEFAULT_APPID.to_owned(),
        openid: format!("o{id}"),
        unionid: Some(format!("u{id}")),
        scope: AuthScope::UserInfo,
        snapshot: false,
        profile: Some(Profile {
            nickname: format!("用户{}", n % 100_000),
            headimgurl: format!("https://thirdwx.qlogo.cn/mmopen/vi_32/{n:064x}/132"),
            sex: 0,
            province: String::new(),
            city: String::new(),
            country: String::new(),
            privilege: Vec::new(),
        }),
        tokens: WeChatTokens {
            access_token: WeChatToken::new(format!("93_{n:0107}")),
            access_expires_at: now + Duration::from_secs(7200),
            refresh_token: WeChatToken::new(format!("93_{:0107}", n + 1)),
            refresh_expires_at: now + Lifetimes::DEFAULT_MAX_LIFETIME,
        },
    }
}
