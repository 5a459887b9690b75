//! The shared session store: Redis, for several gateways behind one load balancer. A login
//! on one gateway is a session on all; a logout on one reaches the others through the
//! cache's one-second staleness bound (`StoreSharing::Shared`).
//!
//! Keys:
//! - `wxgate:s:<storage key hex>` holds the sealed record (see `encoding`) and expires
//!   natively at the session's `expires_at` (`PXAT`/`PEXPIREAT`);
//! - `wxgate:l:{wxgate:s:<storage key hex>}` is its refresh lease (`SET NX PX`). The braces
//!   are a Redis Cluster hash tag naming the record's key, so the lease hashes to the
//!   record's slot: a session's keys share one slot while the record keeps the name earlier
//!   releases gave it (an upgrade logs nobody out);
//! - `wxgate:u:<user tag hex>` is the set of one user's storage keys (for `delete_user`),
//!   kept alive as long as its longest session;
//! - `wxgate:v:<name>` a short-lived shared value (login single flights and used states, see
//!   `login::flight`; JS-SDK credentials), `wxgate:nl:<name>` a named lease.
//!
//! Every command and script touches one key, so the same code runs on a standalone Redis, a
//! Sentinel-managed primary and a Redis Cluster (see `redis_link`). A user's index and their
//! records live in different slots, so they are written in an order that never leaves a
//! record out of its index: index first, then record (a record whose write failed leaves a
//! member behind, which `delete_user` skips). A script reading a record is atomic on it.
//!
//! One multiplexed connection (per node on a cluster), reconnected by itself; every command
//! is bounded by the store timeout, so a dead Redis costs a request that long at most.

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

/// KEYS: user set. ARGV: storage key hex, expires_at ms. The set lives as long as its
/// longest session.
const INDEX: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'NX')
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'GT')
return 1
";

/// KEYS: record. ARGV: clock bytes, expires_at ms. Never revives a record; answers the
/// record's user tag (header bytes 17..32), whose set the caller then keeps alive.
const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('SETRANGE', KEYS[1], 1, ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return redis.call('GETRANGE', KEYS[1], 17, 32)
";

/// KEYS: record. Answers the removed record's user tag, or nil when there was none.
const DELETE: &str = r"
local tag = redis.call('GETRANGE', KEYS[1], 17, 32)
if redis.call('DEL', KEYS[1]) == 0 then return false end
return tag
";

/// Length of the user tag in a record's header.
const USER_TAG_LEN: usize = 16;

/// Why the Redis store cannot be set up (connecting happens later, on first use).
#[derive(Debug, thiserror::Error)]
pub enum RedisOpenError {
    /// The URL is never repeated: it may hold a password.
    #[error(
        "session.redis_url is not a usable redis://, rediss://, redis+sentinel:// or \
         redis+cluster:// URL ({0})"
    )]
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
    index: Script,
    touch: Script,
    delete: Script,
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
            LinkError::BadSentinelUrl | LinkError::BadClusterUrl => {
                RedisOpenError::BadUrl(e.to_string())
            }
        })?;
        Ok(RedisStore {
            link,
            keys,
            clock,
            timeout,
            index: Script::new(INDEX),
            touch: Script::new(TOUCH),
            delete: Script::new(DELETE),
        })
    }

    /// The live sessions of one user, for `wxgate sessions inspect`.
    pub async fn user_sessions(
        &self,
        appid: &str,
        openid: &str,
    ) -> Result<Vec<Session>, StoreError> {
        let users = user_key(&self.keys.user_tag(appid, openid));
        let members = self.members(&users).await?;
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

    /// The members of a user's index set: the storage keys of their sessions.
    async fn members(&self, users: &str) -> Result<Vec<String>, StoreError> {
        self.bounded(
            ::redis::cmd("SMEMBERS")
                .arg(users)
                .query_async(&mut self.conn().await?),
        )
        .await
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
        let expires_ms = encoding::to_ms(session.expires_at);
        let users = user_key(&self.keys.user_tag(&session.appid, &session.openid));
        // The index first: a record that exists is always one `delete_user` finds.
        let mut call = self.index.prepare_invoke();
        call.key(users).arg(key.to_string()).arg(expires_ms);
        let _: i64 = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        let _: String = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(session_key(key))
                    .arg(bytes)
                    .arg("PXAT")
                    .arg(expires_ms)
                    .query_async(&mut self.conn().await?),
            )
            .await?;
        Ok(())
    }

    async fn touch_now(
        &self,
        key: &StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> Result<bool, StoreError> {
        let expires_ms = encoding::to_ms(expires_at);
        let mut call = self.touch.prepare_invoke();
        call.key(session_key(key))
            .arg(encoding::clock_bytes(last_seen, expires_at).to_vec())
            .arg(expires_ms);
        let tag: Option<Vec<u8>> = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        let Some(tag) = tag else { return Ok(false) };
        if tag.len() == USER_TAG_LEN {
            // The index must outlive the record, or a revocation would miss it; a failure
            // here is the touch's failure, and a later request touches again.
            let _: i64 = self
                .bounded(
                    ::redis::cmd("PEXPIREAT")
                        .arg(user_key(&tag))
                        .arg(expires_ms)
                        .arg("GT")
                        .query_async(&mut self.conn().await?),
                )
                .await?;
        }
        Ok(true)
    }

    async fn delete_now(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let mut call = self.delete.prepare_invoke();
        call.key(session_key(key));
        let tag: Option<Vec<u8>> = self
            .bounded(call.invoke_async(&mut self.conn().await?))
            .await?;
        let Some(tag) = tag else { return Ok(false) };
        if tag.len() == USER_TAG_LEN {
            // Only tidying: the logout itself is done, and a member without its record is
            // skipped by `delete_user` and gone when the set expires.
            let tidied: Result<i64, StoreError> = self
                .bounded(
                    ::redis::cmd("SREM")
                        .arg(user_key(&tag))
                        .arg(key.to_string())
                        .query_async(&mut self.conn().await?),
                )
                .await;
            if let Err(e) = tidied {
                tracing::debug!(reason = %e, "a logged-out session stays in its user's index");
            }
        }
        Ok(true)
    }

    /// Deletes each record the user's index names, one key at a time (on a cluster they live
    /// on different masters). Only the members whose record it deleted leave the index: a
    /// member without a record may be a login whose record is being written right now.
    async fn delete_user_now(&self, appid: &str, openid: &str) -> Result<u64, StoreError> {
        let users = user_key(&self.keys.user_tag(appid, openid));
        let members = self.members(&users).await?;
        let mut removed = Vec::new();
        for member in members {
            let Some(key) = parse_key(&member) else {
                continue;
            };
            let deleted: i64 = self
                .bounded(
                    ::redis::cmd("DEL")
                        .arg(session_key(&key))
                        .query_async(&mut self.conn().await?),
                )
                .await?;
            if deleted == 1 {
                removed.push(member);
            }
        }
        if !removed.is_empty() {
            let _: i64 = self
                .bounded(
                    ::redis::cmd("SREM")
                        .arg(&users)
                        .arg(&removed)
                        .query_async(&mut self.conn().await?),
                )
                .await?;
        }
        Ok(removed.len() as u64)
    }

    /// Counts record keys with `SCAN`, a bounded step at a time: Redis keeps serving others
    /// meanwhile, and keys it expires natively are not counted. On a cluster each master is
    /// walked in turn (a `SCAN` sees one server's keys); slots moving during the walk may
    /// make the count a little off, as any count of a changing store is.
    async fn count_now(&self) -> Result<u64, StoreError> {
        let pattern = format!("{SESSION_PREFIX}*");
        let primaries = match tokio::time::timeout(self.timeout, self.link.primaries()).await {
            Ok(Ok(primaries)) => primaries,
            Ok(Err(e)) => return Err(StoreError::Unavailable(format!("redis: {}", category(&e)))),
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        let mut count = 0;
        for mut primary in primaries {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = self
                    .bounded(primary.scan(cursor, &pattern, SCAN_BATCH))
                    .await?;
                count += keys.len() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(count)
    }

    async fn claim_now(&self, key: &StorageKey, lease: Duration) -> Result<bool, StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(lease_key(key))
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

/// The session's refresh lease: the record's whole key as the hash tag puts it in the
/// record's Redis Cluster slot (a key without braces hashes whole).
fn lease_key(key: &StorageKey) -> String {
    format!("{LEASE_PREFIX}{{{}}}", session_key(key))
}

fn user_key(tag: &[u8]) -> String {
    format!("{USER_PREFIX}{}", hex::encode(tag))
}

fn parse_key(hex_key: &str) -> Option<StorageKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    Some(StorageKey::from_bytes(bytes))
}

/// The record header's user tag sits where the Lua helper reads it.
const _: () = assert!(
    CLOCK_OFFSET == 1 && encoding::HEADER_LEN == 33 && encoding::HEADER_LEN - 17 == USER_TAG_LEN
);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What Redis Cluster hashes: the text between the first `{` and the next `}`, if not
    /// empty; else the whole key.
    fn hashed(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn a_sessions_lease_hashes_to_its_records_slot_and_the_record_keeps_its_name() {
        let key = StorageKey::from_bytes([0xab; 32]);
        let record = session_key(&key);
        assert_eq!(record, format!("wxgate:s:{}", "ab".repeat(32)));
        assert_eq!(hashed(&record), record, "the record hashes whole");
        let lease = lease_key(&key);
        assert!(lease.starts_with("wxgate:l:"), "{lease}");
        assert_eq!(hashed(&lease), record);
    }
}
