//! Whether the session store can serve, as `/readyz` asks it: a ping within the store
//! timeout, remembered for a second so that frequent probes (several load balancers, a
//! Kubernetes kubelet) cost the store one ping per second at most.

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use tokio::sync::Mutex;

use super::{SessionStore, StoreError};

/// How long one ping's answer stands.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The store's readiness, probed at most once per [`PROBE_INTERVAL`].
pub struct StoreHealth {
    store: Arc<dyn SessionStore>,
    timeout: Duration,
    interval: Duration,
    /// The last answer and when it was taken. Held across the ping, so concurrent probes
    /// wait for one ping instead of each sending theirs.
    last: Mutex<Option<(Instant, Result<(), StoreError>)>>,
}

impl StoreHealth {
    /// `timeout` bounds a ping even if the store's own commands would wait longer.
    pub fn new(store: Arc<dyn SessionStore>, timeout: Duration) -> Self {
        StoreHealth::with_interval(store, timeout, PROBE_INTERVAL)
    }

    /// The same, remembering each answer for `interval`.
    pub fn with_interval(
        store: Arc<dyn SessionStore>,
        timeout: Duration,
        interval: Duration,
    ) -> Self {
        StoreHealth {
            store,
            timeout,
            interval,
            last: Mutex::new(None),
        }
    }

    /// `Ok` when the store answered a ping in the last interval, or answers one now.
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < self.interval {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(self.timeout, self.store.ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

impl std::fmt::Debug for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHealth")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::SystemTime;

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::session::{MemoryStore, Session, StorageKey};

    /// A memory store whose ping can be made to fail or hang, counting pings.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        down: AtomicBool,
        hang: AtomicBool,
        pings: AtomicUsize,
    }

    impl SessionStore for Flaky {
        fn get<'a>(
            &'a self,
            key: &'a StorageKey,
        ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
            self.inner.get(key)
        }
        fn put<'a>(
            &'a self,
            key: &'a StorageKey,
            session: &'a Session,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.inner.put(key, session)
        }
        fn touch<'a>(
            &'a self,
            key: &'a StorageKey,
            last_seen: SystemTime,
            expires_at: SystemTime,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.inner.touch(key, last_seen, expires_at)
        }
        fn delete<'a>(&'a self, key: &'a StorageKey) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.inner.delete(key)
        }
        fn delete_user<'a>(
            &'a self,
            appid: &'a str,
            openid: &'a str,
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            self.inner.delete_user(appid, openid)
        }
        fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.count()
        }
        fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.sweep_expired()
        }
        fn claim_refresh<'a>(
            &'a self,
            key: &'a StorageKey,
            lease: Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.inner.claim_refresh(key, lease)
        }
        fn get_value<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
            self.inner.get_value(name)
        }
        fn put_value<'a>(
            &'a self,
            name: &'a str,
            value: &'a [u8],
            expires_at: SystemTime,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.inner.put_value(name, value, expires_at)
        }
        fn claim_lease<'a>(
            &'a self,
            name: &'a str,
            lease: Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.inner.claim_lease(name, lease)
        }
        fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.pings.fetch_add(1, Ordering::SeqCst);
            let down = self.down.load(Ordering::SeqCst);
            let hang = self.hang.load(Ordering::SeqCst);
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                if down {
                    Err(StoreError::Unavailable("connection refused".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    #[tokio::test]
    async fn probes_within_the_interval_share_one_ping() {
        let store = Arc::new(Flaky::default());
        let hour = Duration::from_secs(3600);
        let health = StoreHealth::with_interval(store.clone(), Duration::from_secs(5), hour);
        store.down.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            assert!(health.check().await.is_err());
        }
        assert_eq!(store.pings.load(Ordering::SeqCst), 1);
        store.down.store(false, Ordering::SeqCst);
        assert!(health.check().await.is_err(), "remembered for the interval");
        assert_eq!(store.pings.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_recovered_store_is_ready_at_the_next_probe_after_the_interval() {
        let store = Arc::new(Flaky::default());
        let health =
            StoreHealth::with_interval(store.clone(), Duration::from_secs(5), Duration::ZERO);
        store.down.store(true, Ordering::SeqCst);
        assert!(health.check().await.is_err());
        store.down.store(false, Ordering::SeqCst);
        assert!(health.check().await.is_ok());
        assert_eq!(store.pings.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_ping_that_hangs_is_a_timeout() {
        let store = Arc::new(Flaky::default());
        store.hang.store(true, Ordering::SeqCst);
        let health = StoreHealth::new(store, Duration::from_millis(50));
        assert!(matches!(health.check().await, Err(StoreError::Timeout(_))));
    }
}
