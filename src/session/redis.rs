//! The shared session store: Redis, for several gateways behind one load balancer. A login
//! on one gateway is a session on all; a logout on one reaches the others through the
//! cache's one-second staleness bound (`StoreSharing::Shared`).
//!
//! Keys: `wxgate:s:{storage key hex}` holds the sealed record (see `encoding`) and expires
//! natively at the session's `expires_at` (`PXAT`/`PEXPIREAT`); `wxgate:u:{user tag hex}` is
//! the set of one user's storage keys (for `delete_user`), kept alive as long as its longest
//! session; `wxgate:l:{storage key hex}` is a refresh lease (`SET NX PX`);
//! `wxgate:v:{name}` a short-lived shared value (login single flights and used states, see
//! `login::flight`). Multi-key
//! changes are Lua scripts, so each is atomic. Standalone Redis (or a Sentinel-managed
//! primary, found through the sentinels by `redis+sentinel://`, see `redis_link`); Redis Cluster
//! is not supported.
//!
//! One multiplexed connection, reconnected with backoff by `ConnectionManager`; every
//! command is bounded by the store timeout, so a dead Redis costs a request that long at most.

use std::time::{Duration, SystemTime};

use ::redis::{FromRedisValue, RedisError, Script};
use futures_util::future::BoxFuture;

use super::encoding::{self, CLOCK_OFFSET};
use super::redis_link::{Conn, Link, LinkError};
use super::sealing::RecordKeys;
use super::{Clock, Session, SessionStore, SharedValues, StorageKey, StoreError};

const SESSION_PREFIX: &str = "wxgate:s:";
const USER_PREFIX: &str = "wxgate:u:";
const LEASE_PREFIX: &str = "wxgate:l:";
/// Shared values and named leases (`get_value`, `claim_lease`), by name.
const VALUE_PREFIX: &str = "wxgate:v:";
const NAMED_LEASE_PREFIX: &str = "wxgate:nl:";
/// Keys looked at per `SCAN` step when counting.
const SCAN_BATCH: usize = 1000;

/// Lua turning the user tag stored in a record (header bytes 17..32) into its set's key.
const USER_KEY_OF_RECORD: &str = r"
local function user_key(prefix, record_key)
  local tag = redis.call('GETRANGE', record_key, 17, 32)
  if #tag ~= 16 then return nil end
  return prefix .. tag:gsub('.', function(c) return string.format('%02x', string.byte(c)) end)
end
";

/// KEYS: record, user set. ARGV: record bytes, expires_at ms, storage key hex.
const PUT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[2], ARGV[2], 'NX')
redis.call('PEXPIREAT', KEYS[2], ARGV[2], 'GT')
return 1
";

/// KEYS: record. ARGV: clock bytes, expires_at ms, user prefix. Never revives a record.
const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SETRANGE', KEYS[1], 1, ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
local users = user_key(ARGV[3], KEYS[1])
if users then redis.call('PEXPIREAT', users, ARGV[2], 'GT') end
return 1
";

/// KEYS: record. ARGV: user prefix, storage key hex.
const DELETE: &str = r"
local users = user_key(ARGV[1], KEYS[1])
local removed = redis.call('DEL', KEYS[1])
if removed == 1 and users then redis.call('SREM', users, ARGV[2]) end
return removed
";

/// KEYS: user set. ARGV: record prefix.
const DELETE_USER: &str = r"
local removed = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  removed = removed + redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', KEYS[1])
return removed
";

/// Why the Redis store cannot be set up (connecting happens later, on first use).
#[derive(Debug, thiserror::Error)]
pub enum RedisOpenError {
    /// The URL is never repeated: it may hold a password.
    #[error("session.redis_url is not a usable redis://, rediss:// or redis+sentinel:// URL ({0})")]
    BadUrl(String),
    #[error("the Redis store needs a running tokio runtime")]
    NoRuntime,
}

/// Sessions in Redis.
pub struct RedisStore {
    link: Link,
    keys: RecordKeys,
    clock: Clock,
    timeout: Duration,
    put: Script,
    touch: Script,
    delete: Script,
    delete_user: Script,
}

impl RedisStore {
    /// A store for `url`; it connects on first use and reconnects by itself, so a gateway
    /// starts (and reports not ready) while Redis is down.
    pub fn open(
        url: &str,
        keys: RecordKeys,
        timeout: Duration,
        clock: Clock,
    ) -> Result<Self, RedisOpenError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisOpenError::NoRuntime);
        }
        let link = Link::open(url, timeout, category).map_err(|e| match e {
            LinkError::Redis(reason) => RedisOpenError::BadUrl(reason),
            LinkError::BadSentinelUrl => RedisOpenError::BadUrl(e.to_string()),
        })?;
        let with_user_key = |body: &str| Script::new(&format!("{USER_KEY_OF_RECORD}{body}"));
        Ok(RedisStore {
            link,
            keys,
            clock,
            timeout,
            put: Script::new(PUT),
            touch: with_user_key(TOUCH),
            delete: with_user_key(DELETE),
            delete_user: Script::new(DELETE_USER),
        })
    }

    /// The live sessions of one user, for `wxgate sessions inspect`.
    pub async fn user_sessions(
        &self,
        appid: &str,
        openid: &str,
    ) -> Result<Vec<Session>, StoreError> {
        let users = user_key(&self.keys.user_tag(appid, openid));
        let members: Vec<String> = self
            .bounded(
                ::redis::cmd("SMEMBERS")
                    .arg(&users)
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        let mut found = Vec::new();
        for member in members {
            let Some(key) = parse_key(&member) else {
                continue;
            };
            if let Some(session) = self.get_now(&key).await? {
                found.push(session);
            }
        }
        Ok(found)
    }

    async fn get_now(&self, key: &StorageKey) -> Result<Option<Session>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .bounded(
                ::redis::cmd("GET")
                    .arg(session_key(key))
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        let Some(bytes) = bytes else { return Ok(None) };
        match encoding::decode(&self.keys, key, &bytes) {
            Ok(session) if !session.is_expired(self.clock.now()) => Ok(Some(session)),
            Ok(_) => Ok(None),
            Err(e) => {
                // Most likely written under another session.secret: its visitor logs in again.
                tracing::warn!(key = %key, reason = %e, "stored session ignored");
                Ok(None)
            }
        }
    }

    async fn put_now(&self, key: &StorageKey, session: &Session) -> Result<(), StoreError> {
        if session.is_expired(self.clock.now()) {
            self.delete_now(key).await?;
            return Ok(());
        }
        let bytes = encoding::encode(&self.keys, key, session)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let users = user_key(&self.keys.user_tag(&session.appid, &session.openid));
        let mut call = self.put.prepare_invoke();
        call.key(session_key(key))
            .key(users)
            .arg(bytes)
            .arg(encoding::to_ms(session.expires_at))
            .arg(key.to_string());
        let _: i64 = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        Ok(())
    }

    async fn touch_now(
        &self,
        key: &StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut call = self.touch.prepare_invoke();
        call.key(session_key(key))
            .arg(encoding::clock_bytes(last_seen, expires_at).to_vec())
            .arg(encoding::to_ms(expires_at))
            .arg(USER_PREFIX);
        let touched: i64 = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        Ok(touched == 1)
    }

    async fn delete_now(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let mut call = self.delete.prepare_invoke();
        call.key(session_key(key))
            .arg(USER_PREFIX)
            .arg(key.to_string());
        let removed: i64 = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        Ok(removed == 1)
    }

    async fn delete_user_now(&self, appid: &str, openid: &str) -> Result<u64, StoreError> {
        let mut call = self.delete_user.prepare_invoke();
        call.key(user_key(&self.keys.user_tag(appid, openid)))
            .arg(SESSION_PREFIX);
        let removed: u64 = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        Ok(removed)
    }

    /// Counts record keys with `SCAN`, a bounded step at a time: Redis keeps serving others
    /// meanwhile, and keys it expires natively are not counted.
    async fn count_now(&self) -> Result<u64, StoreError> {
        let pattern = format!("{SESSION_PREFIX}*");
        let mut cursor: u64 = 0;
        let mut count = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .bounded(
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async(&mut self.conn().await?),
                )
                .await?;
            count += keys.len() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }

    async fn claim_now(&self, key: &StorageKey, lease: Duration) -> Result<bool, StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(format!("{LEASE_PREFIX}{key}"))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        Ok(set.is_some())
    }

    /// `SET NX GET` (Redis 7): one round trip claims the name or reads who holds it.
    async fn set_if_absent_now(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.bounded(
            ::redis::cmd("SET")
                .arg(format!("{VALUE_PREFIX}{name}"))
                .arg(value)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut self.conn().await?),
        )
        .await
    }

    async fn set_value_now(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let _: Option<String> = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(format!("{VALUE_PREFIX}{name}"))
                    .arg(value)
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        Ok(())
    }

    async fn get_value_now(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .bounded(
                ::redis::cmd("GET")
                    .arg(format!("{VALUE_PREFIX}{name}"))
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        match self.keys.open(&value_context(name), &sealed) {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                // Written under another session.secret: fetched again and replaced.
                tracing::warn!(value = name, reason = %e, "stored value ignored");
                Ok(None)
            }
        }
    }

    async fn put_value_now(
        &self,
        name: &str,
        value: &[u8],
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        let key = format!("{VALUE_PREFIX}{name}");
        if expires_at <= self.clock.now() {
            let _: i64 = self
                .bounded(
                    ::redis::cmd("DEL")
                        .arg(key)
                        .query_async(&mut self.conn().await?),
                )
                .await?;
            return Ok(());
        }
        let sealed = self
            .keys
            .seal(&value_context(name), value)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let _: String = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(key)
                    .arg(sealed)
                    .arg("PXAT")
                    .arg(encoding::to_ms(expires_at))
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        Ok(())
    }

    async fn claim_named_now(&self, name: &str, lease: Duration) -> Result<bool, StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(format!("{NAMED_LEASE_PREFIX}{name}"))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        Ok(set.is_some())
    }

    /// A raw [`SharedValues`] value (callers seal their own).
    async fn get_shared_now(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.bounded(
            ::redis::cmd("GET")
                .arg(format!("{VALUE_PREFIX}{name}"))
                .query_async(&mut self.conn().await?),
        )
        .await
    }

    async fn ping_now(&self) -> Result<(), StoreError> {
        let _: String = self
            .bounded(::redis::cmd("PING").query_async(&mut self.conn().await?))
            .await?;
        Ok(())
    }

    /// A connection to the primary, found within the store timeout.
    async fn conn(&self) -> Result<Conn, StoreError> {
        match tokio::time::timeout(self.timeout, self.link.conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                self.link.failed();
                Err(StoreError::Unavailable(format!("redis: {}", category(&e))))
            }
            Err(_) => {
                self.link.failed();
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    /// `command` within the store timeout, its error in the store's terms.
    async fn bounded<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError>
    where
        T: FromRedisValue,
    {
        let result = match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("redis: {}", category(&e)))),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        // Through Sentinel the primary may have moved (or been demoted: READONLY).
        self.link.failed();
        result
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What went wrong, from the error's kind, code and I/O kind only: a Redis error's text may
/// quote a URL or a command argument.
fn category(e: &RedisError) -> String {
    let mut out = format!("{:?}", e.kind());
    if let Some(code) = e.code() {
        out.push(' ');
        out.push_str(code);
    }
    if e.is_connection_refusal() {
        out.push_str(" (connection refused)");
    } else if e.is_io_error() {
        out.push_str(" (I/O)");
    }
    out
}

/// What a value is sealed together with, so a value copied under another name does not open.
fn value_context(name: &str) -> Vec<u8> {
    [b"value:".as_slice(), name.as_bytes()].concat()
}

/// A TTL in whole milliseconds, at least one (0 is an error to Redis).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn session_key(key: &StorageKey) -> String {
    format!("{SESSION_PREFIX}{key}")
}

fn user_key(tag: &[u8]) -> String {
    format!("{USER_PREFIX}{}", hex::encode(tag))
}

fn parse_key(hex_key: &str) -> Option<StorageKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    Some(StorageKey::from_bytes(bytes))
}

/// The record header's user tag sits where the Lua helper reads it.
const _: () = assert!(CLOCK_OFFSET == 1 && encoding::HEADER_LEN == 33);

impl SessionStore for RedisStore {
    fn get<'a>(
        &'a self,
        key: &'a StorageKey,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(self.get_now(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a StorageKey,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_now(key, session))
    }

    fn touch<'a>(
        &'a self,
        key: &'a StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.touch_now(key, last_seen, expires_at))
    }

    fn delete<'a>(&'a self, key: &'a StorageKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.delete_now(key))
    }

    fn delete_user<'a>(
        &'a self,
        appid: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.delete_user_now(appid, openid))
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.count_now())
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        // Redis expires records itself at their PXAT.
        Box::pin(std::future::ready(Ok(0)))
    }

    fn claim_refresh<'a>(
        &'a self,
        key: &'a StorageKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.claim_now(key, lease))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ping_now())
    }

    fn get_value<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.get_value_now(name))
    }

    fn put_value<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_value_now(name, value, expires_at))
    }

    fn claim_lease<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.claim_named_now(name, lease))
    }

    fn shared_values(&self) -> Option<&dyn SharedValues> {
        Some(self)
    }
}

impl SharedValues for RedisStore {
    fn set_if_absent<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.set_if_absent_now(name, value, ttl))
    }

    fn set<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.set_value_now(name, value, ttl))
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.get_shared_now(name))
    }
}
