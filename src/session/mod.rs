//! Sessions: the id in the browser's cookie, the record kept server-side under a hash of
//! it, the store trait every backend implements (one file per backend: memory, redb, redis),
//! the sealed record format of the persistent ones, the one place a store is opened from
//! the configuration, and the hot-path cache the gateway puts in front of it.

mod cache;
mod encoding;
mod health;
mod id;
pub mod manage;
mod memory;
mod open;
mod packed;
mod record;
mod redb;
mod redis;
mod redis_link;
mod sealing;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

pub use cache::{CacheSettings, CachedSession, MAX_SHARED_STALENESS, SessionCache, StoreSharing};
pub use health::StoreHealth;
pub use id::{SessionId, StorageKey};
pub use memory::MemoryStore;
pub use open::{
    Backend, StoreOpenError, cache_settings, check_existing_store, lifetimes, open_backend,
    open_store, sharing,
};
pub use record::{Lifetimes, NewSession, Profile, Session, WeChatToken, WeChatTokens};
pub use redb::{RedbOpenError, RedbStore};
pub use redis::{RedisOpenError, RedisStore};
pub use sealing::RecordKeys;

/// A session store failed. Messages are built from static reasons and error kinds only:
/// never a key, a token, a record's bytes or a connection URL (it may hold a password).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refused the operation; retrying later may work.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("session store did not answer within {0:?}")]
    Timeout(Duration),
    /// A record or the store file cannot be decoded; retrying will not help.
    #[error("session store data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the same call may succeed later (a request fails closed with 503 meanwhile).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// Where sessions live. The gateway holds one as `Arc<dyn SessionStore>`, so methods return
/// boxed futures rather than `async fn`.
///
/// Every backend keeps a [`Session`] under its [`StorageKey`], never the cookie value, and
/// never hands back a session whose `expires_at` has passed, whether or not it was swept.
pub trait SessionStore: Send + Sync {
    /// The live session under `key`, if any.
    fn get<'a>(&'a self, key: &'a StorageKey)
    -> BoxFuture<'a, Result<Option<Session>, StoreError>>;

    /// Creates or replaces the session under `key`; the store drops it at its `expires_at`.
    fn put<'a>(
        &'a self,
        key: &'a StorageKey,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Slides a live session's expiry. `false` when there is no live session under `key`:
    /// a touch never brings a deleted or expired session back.
    fn touch<'a>(
        &'a self,
        key: &'a StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes one session (logout); `false` when there was none.
    fn delete<'a>(&'a self, key: &'a StorageKey) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes every session of one user of one app; returns how many.
    fn delete_user<'a>(
        &'a self,
        appid: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// How many live sessions the store holds.
    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Removes expired sessions now; returns how many. Backends that expire natively may
    /// return 0.
    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Takes a short lease on refreshing one session's WeChat token and profile: `true` when
    /// this caller holds it now, `false` when another caller (or another gateway sharing the
    /// store) took it less than `lease` ago. The lease ends by itself, so a caller that dies
    /// mid-refresh delays the next refresh by at most `lease`; there is no unlock.
    fn claim_refresh<'a>(
        &'a self,
        key: &'a StorageKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Whether the store can serve requests (`/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A short-lived value every gateway sharing the store sees (not a session): the live
    /// value named `name`, or `None` once its `expires_at` has passed. Persistent backends
    /// keep it sealed under `session.secret`, bound to its name.
    fn get_value<'a>(&'a self, name: &'a str)
    -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Creates or replaces the value named `name`; the store drops it at `expires_at`.
    fn put_value<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Takes the lease named `name` for `lease`: `true` when this caller holds it now, `false`
    /// when someone (here or on another gateway) took it less than `lease` ago. Like
    /// [`SessionStore::claim_refresh`] it ends by itself and has no unlock.
    fn claim_lease<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Short-lived values every gateway sharing this store sees (login single flights,
    /// used states, leases of other features); `None` for a store only this process uses,
    /// whose callers keep such values in process.
    fn shared_values(&self) -> Option<&dyn SharedValues> {
        None
    }
}

/// Short-lived named values with a time to live, in a store several gateways share. Names
/// are chosen by callers under their own prefix; a value may be any bytes. Nothing here is
/// ever a secret in the clear: callers seal what must not be read from a store dump.
pub trait SharedValues: Send + Sync {
    /// Sets `name` to `value` for `ttl` unless it is set; `None` when this call set it, else
    /// the value already there (left as it was). The claim of a lease or a single flight.
    fn set_if_absent<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Sets `name` to `value` for `ttl`, whatever was there.
    fn set<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The value under `name`, if set and not expired.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
}

/// The wall clock sessions are judged by; tests and benchmarks inject their own.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl Clock {
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that reads `now` from `f`.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock(Some(Arc::new(f)))
    }

    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(f) => f(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(custom)"
        } else {
            "Clock(system)"
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    pub(crate) use super::record::tests::{ACCESS, REFRESH, at, login};
    use super::{Clock, Session, SessionId, SessionStore, StorageKey};

    /// A clock the test moves by hand.
    #[derive(Clone)]
    pub(crate) struct ManualClock(Arc<Mutex<SystemTime>>);

    impl ManualClock {
        pub(crate) fn starting_at(now: SystemTime) -> Self {
            ManualClock(Arc::new(Mutex::new(now)))
        }

        pub(crate) fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }

        pub(crate) fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }

        pub(crate) fn clock(&self) -> Clock {
            let shared = self.0.clone();
            Clock::from_fn(move || *shared.lock().unwrap())
        }
    }

    /// Stores `session` under a new key.
    pub(crate) async fn put_new(store: &dyn SessionStore, session: &Session) -> StorageKey {
        let key = SessionId::generate().storage_key();
        store.put(&key, session).await.unwrap();
        key
    }

    /// What every store must do with shared values and named leases: serve a value until its
    /// expiry and not after, replace it in place, keep names apart, and hold a lease until
    /// it ends.
    pub(crate) async fn values_and_named_leases(store: &dyn SessionStore, clock: &ManualClock) {
        let ttl = Duration::from_secs(7200);
        assert_eq!(store.get_value("jssdk:wx1:ticket").await.unwrap(), None);
        store
            .put_value("jssdk:wx1:ticket", b"T1", clock.now() + ttl)
            .await
            .unwrap();
        store
            .put_value("jssdk:wx2:ticket", b"other", clock.now() + ttl)
            .await
            .unwrap();
        assert_eq!(
            store
                .get_value("jssdk:wx1:ticket")
                .await
                .unwrap()
                .as_deref(),
            Some(b"T1".as_slice())
        );
        store
            .put_value("jssdk:wx1:ticket", b"T2", clock.now() + ttl)
            .await
            .unwrap();
        assert_eq!(
            store
                .get_value("jssdk:wx1:ticket")
                .await
                .unwrap()
                .as_deref(),
            Some(b"T2".as_slice())
        );
        clock.advance(ttl);
        assert_eq!(
            store.get_value("jssdk:wx1:ticket").await.unwrap(),
            None,
            "expired"
        );

        let lease = Duration::from_secs(10);
        assert!(store.claim_lease("jssdk:wx1", lease).await.unwrap());
        assert!(
            !store.claim_lease("jssdk:wx1", lease).await.unwrap(),
            "held"
        );
        assert!(
            store.claim_lease("jssdk:wx2", lease).await.unwrap(),
            "per name"
        );
        clock.advance(lease);
        assert!(
            store.claim_lease("jssdk:wx1", lease).await.unwrap(),
            "ended"
        );
    }

    /// What every store must do with one session: serve it, replace it in place, and once
    /// deleted never serve it again, not even after a touch.
    pub(crate) async fn put_replace_delete(store: &dyn SessionStore, session: Session) {
        let key = put_new(store, &session).await;
        assert_eq!(store.get(&key).await.unwrap(), Some(session.clone()));
        let unknown = SessionId::generate().storage_key();
        assert_eq!(store.get(&unknown).await.unwrap(), None);

        let mut refreshed = session.clone();
        refreshed.profile = None;
        store.put(&key, &refreshed).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), Some(refreshed));
        assert_eq!(store.count().await.unwrap(), 1, "replacing is not adding");

        assert!(store.delete(&key).await.unwrap());
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert!(!store.delete(&key).await.unwrap());
        assert!(
            !store.touch(&key, at(1), at(601)).await.unwrap(),
            "no resurrection"
        );
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert_eq!(store.count().await.unwrap(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_say_whether_to_retry() {
        assert!(StoreError::Unavailable("connection refused".into()).is_transient());
        assert!(StoreError::Timeout(Duration::from_millis(200)).is_transient());
        assert!(!StoreError::Corrupt("record does not decode".into()).is_transient());
    }
}
