//! The hot-path cache in front of any session store: a bounded in-process map from storage
//! key to the session and its signed identity JWT, so a busy visitor costs at most one store
//! read per cache ttl and one signature per JWT lifetime, and `last_seen` is written back
//! only when it has gone stale.
//!
//! The staleness rule. A cached entry may be served until its ttl runs out, so a logout is
//! seen by this process at once (it invalidates its own entry) but by another gateway only
//! when that gateway's entry expires. Who wrote the entry does not matter: a session this
//! gateway created can be logged out through another one behind the same load balancer.
//! Hence: with a store shared between processes (Redis) every entry lives at most
//! [`MAX_SHARED_STALENESS`] (1 s) from the moment the store last confirmed it, whatever ttl is
//! configured; with a store only this process uses (memory, redb — redb locks its file),
//! every delete passes through this cache, so the configured ttl holds as given. No entry
//! ever outlives the session's own `expires_at`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::{
    Clock, Lifetimes, NewSession, Session, SessionId, SessionStore, StorageKey, StoreError,
};
use crate::identity::MintedIdentity;

/// How long another gateway's logout may go unnoticed here, with a shared store.
pub const MAX_SHARED_STALENESS: Duration = Duration::from_secs(1);

/// Whether other processes write to the same store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreSharing {
    /// Only this process: memory, redb.
    Exclusive,
    /// Several gateways: Redis.
    Shared,
}

/// Size and freshness of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Sessions kept; the least used go first.
    pub max_entries: u64,
    /// How long an entry is served without asking the store; capped at
    /// [`MAX_SHARED_STALENESS`] when the store is shared.
    pub ttl: Duration,
    pub sharing: StoreSharing,
}

impl CacheSettings {
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
    pub const DEFAULT_EXCLUSIVE_TTL: Duration = Duration::from_secs(5);

    /// The defaults for a store shared or not.
    pub fn for_store(sharing: StoreSharing) -> Self {
        CacheSettings {
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            ttl: match sharing {
                StoreSharing::Exclusive => Self::DEFAULT_EXCLUSIVE_TTL,
                StoreSharing::Shared => MAX_SHARED_STALENESS,
            },
            sharing,
        }
    }

    /// The ttl entries actually get.
    pub fn effective_ttl(&self) -> Duration {
        match self.sharing {
            StoreSharing::Exclusive => self.ttl,
            StoreSharing::Shared => self.ttl.min(MAX_SHARED_STALENESS),
        }
    }
}

/// A session as the hot path uses it, with the identity JWT signed for it. Shared by every
/// request of the session; a changed session is a new `CachedSession`, never a mutated one.
pub struct CachedSession {
    pub session: Session,
    /// The JWT and the signer it was minted by (see [`CachedSession::identity_or_mint`]).
    /// Read by every request of the session (all of a busy visitor's requests at once),
    /// written once per JWT lifetime: a read-write lock, so readers never wait on each other.
    identity: RwLock<Option<(u64, MintedIdentity)>>,
    /// Set by the request that writes `last_seen` back, so a burst of requests makes one write.
    touching: AtomicBool,
}

impl CachedSession {
    pub fn new(session: Session) -> Self {
        CachedSession::with_identity(session, None)
    }

    fn with_identity(session: Session, identity: Option<(u64, MintedIdentity)>) -> Self {
        CachedSession {
            session,
            identity: RwLock::new(identity),
            touching: AtomicBool::new(false),
        }
    }

    fn identity_slot(&self) -> std::sync::RwLockReadGuard<'_, Option<(u64, MintedIdentity)>> {
        // The slot holds a whole value or none; a panic cannot leave it half-written.
        self.identity.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached JWT if it can still be sent at `now`.
    pub fn identity(&self, now: SystemTime) -> Option<MintedIdentity> {
        self.identity_slot()
            .as_ref()
            .map(|(_, minted)| minted)
            .filter(|minted| minted.is_fresh(now))
            .cloned()
    }

    /// The cached JWT, or a new one from `mint` (kept for the next requests). Concurrent
    /// requests wait for one signature rather than each signing. `signer` names the key and
    /// claim settings `mint` uses: a token minted by another signer (before a reload that
    /// rotated the key, say) is minted again, not served.
    pub fn identity_or_mint<E>(
        &self,
        now: SystemTime,
        signer: u64,
        mint: impl FnOnce(&Session) -> Result<MintedIdentity, E>,
    ) -> Result<MintedIdentity, E> {
        let fresh = |slot: &Option<(u64, MintedIdentity)>| {
            slot.as_ref()
                .filter(|(by, minted)| *by == signer && minted.is_fresh(now))
                .map(|(_, minted)| minted.clone())
        };
        if let Some(minted) = fresh(&self.identity_slot()) {
            return Ok(minted);
        }
        let mut slot = self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another request may have signed while this one waited for the write lock.
        if let Some(minted) = fresh(&slot) {
            return Ok(minted);
        }
        let minted = mint(&self.session)?;
        *slot = Some((signer, minted.clone()));
        Ok(minted)
    }
}

impl fmt::Debug for CachedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSession")
            .field("session", &self.session)
            .field("identity", &*self.identity_slot())
            .finish_non_exhaustive()
    }
}

/// A cached session and the moment this process stops serving it without asking the store.
#[derive(Clone)]
struct Entry {
    cached: Arc<CachedSession>,
    fresh_until: Instant,
}

/// A store read that every request missing the same key at the same moment awaits; its
/// result, an error included, is theirs alike.
type Load = Shared<BoxFuture<'static, Result<Option<Arc<CachedSession>>, StoreError>>>;

/// The cached entries, shared with the store reads in flight (which fill them even when the
/// request that started them has gone).
struct Entries {
    map: quick_cache::sync::Cache<StorageKey, Entry>,
    /// The reads in flight, one per key. Touched only on a miss.
    loading: Mutex<HashMap<StorageKey, Load>>,
    ttl: Duration,
    clock: Clock,
    /// Bumped by every delete. A load or touch that overlaps one drops what it cached,
    /// since it may have read the session just before the store forgot it.
    deletions: AtomicU64,
}

impl Entries {
    /// The entry under `key` while it is fresh. A stale one is dropped, unless another
    /// request has put a fresher one in its place meanwhile.
    fn get(&self, key: &StorageKey) -> Option<Arc<CachedSession>> {
        let entry = self.map.get(key)?;
        if Instant::now() < entry.fresh_until {
            return Some(entry.cached);
        }
        self.map
            .remove_if(key, |e| Arc::ptr_eq(&e.cached, &entry.cached));
        None
    }

    /// Caches `cached` for the ttl, never past its session's expiry.
    fn insert(&self, key: StorageKey, cached: Arc<CachedSession>) {
        let left = cached
            .session
            .expires_at
            .duration_since(self.clock.now())
            .unwrap_or(Duration::ZERO);
        let fresh_until = Instant::now() + self.ttl.min(left);
        self.map.insert(
            key,
            Entry {
                cached,
                fresh_until,
            },
        );
    }

    fn invalidate(&self, key: &StorageKey) {
        self.map.remove(key);
    }

    /// A delete that ran while we were reading or writing may have been overtaken by our
    /// insert; dropping the entry is always safe (the next request reads the store).
    fn forget_if_deleted_since(&self, key: &StorageKey, generation: u64) {
        if self.deletions.load(Ordering::SeqCst) != generation {
            self.invalidate(key);
        }
    }

    fn loading(&self) -> std::sync::MutexGuard<'_, HashMap<StorageKey, Load>> {
        // The map is consistent between statements; a panic elsewhere cannot tear it.
        self.loading.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The session store as the gateway uses it: reads through the cache, writes through to
/// the store. See the module documentation for the staleness rule.
pub struct SessionCache {
    store: Arc<dyn SessionStore>,
    entries: Arc<Entries>,
    lifetimes: Lifetimes,
}

impl SessionCache {
    pub fn new(
        store: Arc<dyn SessionStore>,
        settings: CacheSettings,
        lifetimes: Lifetimes,
    ) -> Self {
        SessionCache::with_clock(store, settings, lifetimes, Clock::system())
    }

    /// The same, judging session expiry by `clock` (the cache ttl itself runs on the
    /// monotonic clock).
    pub fn with_clock(
        store: Arc<dyn SessionStore>,
        settings: CacheSettings,
        lifetimes: Lifetimes,
        clock: Clock,
    ) -> Self {
        let capacity = usize::try_from(settings.max_entries).unwrap_or(usize::MAX);
        let entries = Entries {
            map: quick_cache::sync::Cache::new(capacity),
            loading: Mutex::new(HashMap::new()),
            ttl: settings.effective_ttl(),
            clock,
            deletions: AtomicU64::new(0),
        };
        SessionCache {
            store,
            entries: Arc::new(entries),
            lifetimes,
        }
    }

    /// The wall-clock time sessions' expiry is judged by.
    fn now(&self) -> SystemTime {
        self.entries.clock.now()
    }

    /// The store behind the cache, for `count`, `sweep_expired` and `ping`.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// How long an entry is served without asking the store.
    pub fn ttl(&self) -> Duration {
        self.entries.ttl
    }

    /// The live session under `key`: from the cache, or one store read shared by every
    /// request that misses at the same moment.
    pub async fn load(&self, key: &StorageKey) -> Result<Option<Arc<CachedSession>>, StoreError> {
        let generation = self.entries.deletions.load(Ordering::SeqCst);
        let cached = match self.entries.get(key) {
            Some(cached) => cached,
            // Boxed: the miss is rare, and its future would size every request's.
            None => match Box::pin(self.load_missing(key)).await? {
                Some(cached) => cached,
                None => return Ok(None),
            },
        };
        self.entries.forget_if_deleted_since(key, generation);
        if cached.session.is_expired(self.now()) {
            self.entries.invalidate(key);
            return Ok(None);
        }
        Ok(Some(cached))
    }

    /// Reads a session the cache does not hold from the store, once for all the requests
    /// that miss it at the same moment.
    async fn load_missing(
        &self,
        key: &StorageKey,
    ) -> Result<Option<Arc<CachedSession>>, StoreError> {
        let load = self
            .entries
            .loading()
            .entry(*key)
            .or_insert_with(|| self.start_load(*key))
            .clone();
        load.await
    }

    /// The shared read of `key`, run as a task of its own: it finishes, caches what it
    /// found and leaves the map of reads in flight even when every request that awaited it
    /// has gone (a visitor closing the page, or a client hanging up on purpose, which would
    /// otherwise leave an entry in the map for good).
    fn start_load(&self, key: StorageKey) -> Load {
        let store = Arc::clone(&self.store);
        let entries = Arc::clone(&self.entries);
        let read = tokio::spawn(async move {
            let generation = entries.deletions.load(Ordering::SeqCst);
            let found = store.get(&key).await;
            let result = match found {
                Ok(Some(session)) => {
                    let cached = Arc::new(CachedSession::new(session));
                    entries.insert(key, Arc::clone(&cached));
                    entries.forget_if_deleted_since(&key, generation);
                    Ok(Some(cached))
                }
                Ok(None) => Ok(None),
                Err(error) => Err(error),
            };
            entries.loading().remove(&key);
            result
        });
        let joined = async move {
            read.await.unwrap_or_else(|stopped| {
                // Only a runtime shutting down or a panic in the store stops the task.
                Err(StoreError::Unavailable(format!(
                    "session read stopped: {stopped}"
                )))
            })
        };
        joined.boxed().shared()
    }

    /// Starts a session for a login: a new id (never one the browser offered), stored and
    /// cached. The id goes in the cookie; only its hash is kept.
    pub async fn create(
        &self,
        login: NewSession,
    ) -> Result<(SessionId, Arc<CachedSession>), StoreError> {
        let id = SessionId::generate();
        let session = Session::new(login, self.now(), self.lifetimes);
        let cached = self.save(&id.storage_key(), session).await?;
        Ok((id, cached))
    }

    /// Stores a changed session (a refreshed profile or token) and caches it. The identity
    /// JWT is signed again from the new facts.
    pub async fn save(
        &self,
        key: &StorageKey,
        session: Session,
    ) -> Result<Arc<CachedSession>, StoreError> {
        let generation = self.entries.deletions.load(Ordering::SeqCst);
        self.store.put(key, &session).await?;
        let cached = Arc::new(CachedSession::new(session));
        self.entries.insert(*key, cached.clone());
        self.entries.forget_if_deleted_since(key, generation);
        Ok(cached)
    }

    /// Records a request of `cached`'s visitor. Writes to the store only once `last_seen`
    /// is a touch interval old, and then once per burst of requests. `false` means the
    /// store no longer has the session (logged out elsewhere or expired): refuse it.
    pub async fn touch(
        &self,
        key: &StorageKey,
        cached: &Arc<CachedSession>,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        if !cached.session.needs_touch(now, self.lifetimes)
            || cached.touching.swap(true, Ordering::AcqRel)
        {
            return Ok(true);
        }
        // Boxed: the write is the rare path, and its futures (store, cache) would otherwise
        // size the future of every request that only checks.
        Box::pin(self.write_touch(key, cached, now)).await
    }

    async fn write_touch(
        &self,
        key: &StorageKey,
        cached: &Arc<CachedSession>,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let generation = self.entries.deletions.load(Ordering::SeqCst);
        let touched = cached.session.touched(now, self.lifetimes);
        match self
            .store
            .touch(key, touched.last_seen, touched.expires_at)
            .await
        {
            Ok(true) => {
                let identity = cached.identity_slot().clone();
                let next = Arc::new(CachedSession::with_identity(touched, identity));
                self.entries.insert(*key, next);
                self.entries.forget_if_deleted_since(key, generation);
                Ok(true)
            }
            Ok(false) => {
                self.entries.invalidate(key);
                Ok(false)
            }
            Err(error) => {
                // Let a later request try again.
                cached.touching.store(false, Ordering::Release);
                Err(error)
            }
        }
    }

    /// Logs one session out: gone from the store, and from this cache at once.
    pub async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let deleted = self.store.delete(key).await;
        // Even when the store failed: this gateway stops serving the session regardless.
        self.entries.deletions.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
        deleted
    }

    /// Logs every session of one user out; returns how many the store held.
    pub async fn delete_user(&self, appid: &str, openid: &str) -> Result<u64, StoreError> {
        let deleted = self.store.delete_user(appid, openid).await;
        self.entries.deletions.fetch_add(1, Ordering::SeqCst);
        self.entries.map.retain(|_, entry| {
            let session = &entry.cached.session;
            session.appid != appid || session.openid != openid
        });
        deleted
    }

    /// Drops this process's copy of one session (the store is left alone).
    pub async fn invalidate(&self, key: &StorageKey) {
        self.entries.invalidate(key);
    }
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCache")
            .field("entries", &self.entries.map.len())
            .field("ttl", &self.entries.ttl)
            .field("lifetimes", &self.lifetimes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::identity::{Claims, IdentityFacts};
    use crate::session::MemoryStore;
    use crate::session::test_support::{ACCESS, ManualClock, REFRESH, at, login};

    const LIFETIMES: Lifetimes = Lifetimes {
        ttl: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
    };

    /// A memory store that counts what reaches it, and can be slowed down or made to fail.
    struct CountingStore {
        inner: MemoryStore,
        gets: AtomicUsize,
        touches: AtomicUsize,
        get_delay: Duration,
        down: AtomicBool,
    }

    impl CountingStore {
        fn new(clock: &ManualClock, get_delay: Duration) -> Arc<Self> {
            Arc::new(CountingStore {
                inner: MemoryStore::with_clock(1000, clock.clock()),
                gets: AtomicUsize::new(0),
                touches: AtomicUsize::new(0),
                get_delay,
                down: AtomicBool::new(false),
            })
        }

        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            Ok(())
        }

        fn gets(&self) -> usize {
            self.gets.load(Ordering::SeqCst)
        }
    }

    impl SessionStore for CountingStore {
        fn get<'a>(
            &'a self,
            key: &'a StorageKey,
        ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
            Box::pin(async move {
                self.gets.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.get_delay).await;
                self.check()?;
                self.inner.get(key).await
            })
        }
        fn put<'a>(
            &'a self,
            key: &'a StorageKey,
            session: &'a Session,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                self.check()?;
                self.inner.put(key, session).await
            })
        }
        fn touch<'a>(
            &'a self,
            key: &'a StorageKey,
            last_seen: SystemTime,
            expires_at: SystemTime,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(async move {
                self.touches.fetch_add(1, Ordering::SeqCst);
                self.check()?;
                self.inner.touch(key, last_seen, expires_at).await
            })
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
            Box::pin(async move { self.check() })
        }
    }

    fn settings(ttl: Duration, sharing: StoreSharing) -> CacheSettings {
        CacheSettings {
            max_entries: 1000,
            ttl,
            sharing,
        }
    }

    fn cache_over(store: Arc<CountingStore>, ttl: Duration, clock: &ManualClock) -> SessionCache {
        SessionCache::with_clock(
            store,
            settings(ttl, StoreSharing::Exclusive),
            LIFETIMES,
            clock.clock(),
        )
    }

    fn minted(session: &Session, now: SystemTime, token: &str) -> MintedIdentity {
        let facts: IdentityFacts = session.identity_facts();
        let claims = Claims::new(facts, "wxgate", "up", Duration::from_secs(300), now);
        MintedIdentity::new(token, &claims).unwrap()
    }

    #[test]
    fn a_shared_store_caps_the_cache_ttl_at_one_second() {
        // (configured ttl, sharing, effective ttl)
        let cases = [
            (30_000, StoreSharing::Shared, 1000),
            (1000, StoreSharing::Shared, 1000),
            (250, StoreSharing::Shared, 250),
            (30_000, StoreSharing::Exclusive, 30_000),
        ];
        for (ttl, sharing, effective) in cases {
            let settings = settings(Duration::from_millis(ttl), sharing);
            assert_eq!(
                settings.effective_ttl(),
                Duration::from_millis(effective),
                "{settings:?}"
            );
        }
        assert!(
            CacheSettings::for_store(StoreSharing::Shared).effective_ttl() <= MAX_SHARED_STALENESS
        );
    }

    #[tokio::test]
    async fn twenty_requests_of_one_visitor_make_one_store_read() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(60), &clock);
        let (id, _) = cache.create(login("o1")).await.unwrap();
        cache.invalidate(&id.storage_key()).await;
        for _ in 0..20 {
            let cached = cache.load(&id.storage_key()).await.unwrap().unwrap();
            assert_eq!(cached.session.openid, "o1");
        }
        assert_eq!(store.gets(), 1);
    }

    #[tokio::test]
    async fn a_created_session_is_served_without_a_store_read_and_under_the_hash_of_its_id() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(60), &clock);
        let (id, created) = cache.create(login("o1")).await.unwrap();
        let key = SessionId::from_cookie(&id.cookie_value())
            .unwrap()
            .storage_key();
        let loaded = cache.load(&key).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&created, &loaded));
        assert_eq!(store.gets(), 0);
        assert_eq!(
            store.inner.get(&key).await.unwrap(),
            Some(created.session.clone())
        );
        assert_eq!(created.session.expires_at, at(600));
    }

    /// A store that takes 50 ms to read and holds one session, under an empty cache.
    async fn slow_store_with_one_session() -> (Arc<CountingStore>, Arc<SessionCache>, StorageKey) {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::from_millis(50));
        let cache = Arc::new(cache_over(store.clone(), Duration::from_secs(60), &clock));
        let key = SessionId::generate().storage_key();
        store
            .inner
            .put(&key, &Session::new(login("o1"), at(0), LIFETIMES))
            .await
            .unwrap();
        (store, cache, key)
    }

    /// `requests` loads of `key` at the same moment.
    async fn load_together(
        cache: &Arc<SessionCache>,
        key: StorageKey,
        requests: usize,
    ) -> Vec<Result<Option<Arc<CachedSession>>, StoreError>> {
        let loads = (0..requests).map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.load(&key).await })
        });
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .map(|joined| joined.expect("load task panicked"))
            .collect()
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_store_read() {
        let (store, cache, key) = slow_store_with_one_session().await;
        for load in load_together(&cache, key, 10).await {
            assert!(load.unwrap().is_some());
        }
        assert_eq!(store.gets(), 1);
    }

    /// A dead store costs each request one store timeout at most: the requests that miss
    /// together share the failed read rather than queueing to repeat it one by one.
    #[tokio::test]
    async fn concurrent_misses_share_one_failed_store_read_and_the_next_retries() {
        let (store, cache, key) = slow_store_with_one_session().await;
        store.down.store(true, Ordering::SeqCst);
        for load in load_together(&cache, key, 10).await {
            assert!(matches!(load, Err(StoreError::Unavailable(_))));
        }
        assert_eq!(store.gets(), 1);
        store.down.store(false, Ordering::SeqCst);
        assert!(cache.load(&key).await.unwrap().is_some());
        assert_eq!(store.gets(), 2);
    }

    /// A read whose requests all went away (visitors closing the page) still completes,
    /// caches the session and leaves no trace in the map of reads in flight.
    #[tokio::test]
    async fn a_read_abandoned_by_its_requests_still_completes() {
        let (store, cache, key) = slow_store_with_one_session().await;
        let abandoned = tokio::time::timeout(Duration::from_millis(10), cache.load(&key)).await;
        assert!(abandoned.is_err(), "the read takes 50 ms");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(cache.entries.loading().is_empty());
        assert!(cache.load(&key).await.unwrap().is_some());
        assert_eq!(store.gets(), 1);
    }

    #[tokio::test]
    async fn logout_is_refused_at_once_by_the_gateway_that_did_it() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(60), &clock);
        let (id, _) = cache.create(login("o1")).await.unwrap();
        let key = id.storage_key();
        assert!(cache.load(&key).await.unwrap().is_some());
        assert!(cache.delete(&key).await.unwrap());
        assert!(cache.load(&key).await.unwrap().is_none());
        assert!(store.inner.get(&key).await.unwrap().is_none());
        assert!(!cache.delete(&key).await.unwrap());
    }

    #[tokio::test]
    async fn logout_on_another_gateway_is_refused_here_within_the_cache_ttl() {
        let clock = ManualClock::starting_at(at(0));
        let shared = CountingStore::new(&clock, Duration::ZERO);
        let ttl = Duration::from_millis(150);
        let gateway = |ttl| {
            SessionCache::with_clock(
                shared.clone(),
                settings(ttl, StoreSharing::Shared),
                LIFETIMES,
                clock.clock(),
            )
        };
        // Even a long configured ttl is capped with a shared store.
        assert_eq!(gateway(Duration::from_secs(30)).ttl(), MAX_SHARED_STALENESS);
        let (a, b) = (gateway(ttl), gateway(ttl));
        // The login happened on b, so b's entry was "written by this process".
        let (id, _) = b.create(login("o1")).await.unwrap();
        let key = id.storage_key();
        assert!(
            a.load(&key).await.unwrap().is_some(),
            "a login on one is valid on all"
        );
        assert!(a.delete(&key).await.unwrap());
        let logged_out = Instant::now();
        assert!(a.load(&key).await.unwrap().is_none());
        assert!(
            b.load(&key).await.unwrap().is_some(),
            "b still holds its copy"
        );
        // b may serve its copy until the ttl runs out, not longer.
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        assert!(b.load(&key).await.unwrap().is_none());
        assert!(logged_out.elapsed() < MAX_SHARED_STALENESS);
    }

    #[tokio::test]
    async fn a_cached_session_is_never_served_past_its_expiry() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (id, _) = cache.create(login("o1")).await.unwrap();
        clock.advance(Duration::from_secs(599));
        assert!(cache.load(&id.storage_key()).await.unwrap().is_some());
        clock.advance(Duration::from_secs(1));
        assert!(cache.load(&id.storage_key()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn last_seen_reaches_the_store_once_per_touch_interval_not_per_request() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (id, _) = cache.create(login("o1")).await.unwrap();
        let key = id.storage_key();
        // One request every 5 s for 100 s; the touch interval of a 600 s ttl is 60 s.
        for _ in 0..20 {
            clock.advance(Duration::from_secs(5));
            let cached = cache.load(&key).await.unwrap().unwrap();
            assert!(cache.touch(&key, &cached).await.unwrap());
        }
        assert_eq!(store.touches.load(Ordering::SeqCst), 1);
        let stored = store.inner.get(&key).await.unwrap().unwrap();
        assert_eq!(stored.last_seen, at(60));
        assert_eq!(stored.expires_at, at(660));
        let cached = cache.load(&key).await.unwrap().unwrap();
        assert_eq!(
            cached.session.last_seen,
            at(60),
            "the cache holds the touched session"
        );
    }

    #[tokio::test]
    async fn a_burst_of_requests_writes_last_seen_once() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (id, cached) = cache.create(login("o1")).await.unwrap();
        clock.advance(Duration::from_secs(61));
        for _ in 0..5 {
            assert!(cache.touch(&id.storage_key(), &cached).await.unwrap());
        }
        assert_eq!(store.touches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn touching_a_session_deleted_elsewhere_reports_it_gone() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (id, cached) = cache.create(login("o1")).await.unwrap();
        let key = id.storage_key();
        store.inner.delete(&key).await.unwrap();
        clock.advance(Duration::from_secs(61));
        assert!(!cache.touch(&key, &cached).await.unwrap());
        assert!(cache.load(&key).await.unwrap().is_none());
        assert!(
            store.inner.get(&key).await.unwrap().is_none(),
            "not resurrected"
        );
    }

    #[tokio::test]
    async fn the_identity_jwt_is_signed_once_and_kept_across_touches_but_not_profile_changes() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (id, _) = cache.create(login("o1")).await.unwrap();
        let key = id.storage_key();
        let signatures = AtomicUsize::new(0);
        let mint = |session: &Session| {
            signatures.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(minted(session, clock.now(), "h.p.s"))
        };
        for _ in 0..10 {
            let cached = cache.load(&key).await.unwrap().unwrap();
            let identity = cached.identity_or_mint(clock.now(), 1, mint).unwrap();
            assert_eq!(identity.value(), "h.p.s");
        }
        assert_eq!(signatures.load(Ordering::SeqCst), 1);

        clock.advance(Duration::from_secs(61));
        let cached = cache.load(&key).await.unwrap().unwrap();
        assert!(cache.touch(&key, &cached).await.unwrap());
        let touched = cache.load(&key).await.unwrap().unwrap();
        assert!(!Arc::ptr_eq(&cached, &touched));
        assert!(touched.identity(clock.now()).is_some(), "carried over");

        // Close to the JWT's expiry it is signed again.
        clock.advance(Duration::from_secs(200));
        assert!(touched.identity(clock.now()).is_none());
        touched.identity_or_mint(clock.now(), 1, mint).unwrap();
        assert_eq!(signatures.load(Ordering::SeqCst), 2);
        touched.identity_or_mint(clock.now(), 1, mint).unwrap();
        assert_eq!(signatures.load(Ordering::SeqCst), 2);
        touched.identity_or_mint(clock.now(), 2, mint).unwrap();
        assert_eq!(
            signatures.load(Ordering::SeqCst),
            3,
            "another signer, a new token"
        );

        let mut renamed = touched.session.clone();
        renamed.profile.as_mut().unwrap().nickname = "新名字".to_owned();
        let saved = cache.save(&key, renamed).await.unwrap();
        assert!(
            saved.identity(clock.now()).is_none(),
            "new facts, new signature"
        );
        let loaded = cache.load(&key).await.unwrap().unwrap();
        assert_eq!(loaded.session.profile.as_ref().unwrap().nickname, "新名字");
    }

    #[tokio::test]
    async fn revoking_a_user_drops_their_cached_sessions_too() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (phone, _) = cache.create(login("me")).await.unwrap();
        let (laptop, _) = cache.create(login("me")).await.unwrap();
        let (other, _) = cache.create(login("other")).await.unwrap();
        let appid = login("me").appid;
        assert_eq!(cache.delete_user(&appid, "me").await.unwrap(), 2);
        assert!(cache.load(&phone.storage_key()).await.unwrap().is_none());
        assert!(cache.load(&laptop.storage_key()).await.unwrap().is_none());
        assert!(cache.load(&other.storage_key()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_store_failure_is_an_error_never_a_missing_session_and_is_not_cached() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let key = SessionId::generate().storage_key();
        store
            .inner
            .put(&key, &Session::new(login("o1"), at(0), LIFETIMES))
            .await
            .unwrap();
        store.down.store(true, Ordering::SeqCst);
        let error = cache.load(&key).await.unwrap_err();
        assert!(error.is_transient());
        assert!(cache.store().ping().await.is_err());
        store.down.store(false, Ordering::SeqCst);
        assert!(
            cache.load(&key).await.unwrap().is_some(),
            "service resumes by itself"
        );
        assert!(cache.store().ping().await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_touch_is_retried_by_the_next_request() {
        let clock = ManualClock::starting_at(at(0));
        let store = CountingStore::new(&clock, Duration::ZERO);
        let cache = cache_over(store.clone(), Duration::from_secs(3600), &clock);
        let (id, cached) = cache.create(login("o1")).await.unwrap();
        clock.advance(Duration::from_secs(61));
        store.down.store(true, Ordering::SeqCst);
        assert!(cache.touch(&id.storage_key(), &cached).await.is_err());
        store.down.store(false, Ordering::SeqCst);
        assert!(cache.touch(&id.storage_key(), &cached).await.unwrap());
        assert_eq!(store.touches.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn debug_of_a_cached_session_shows_no_token() {
        let session = Session::new(login("o1"), at(0), LIFETIMES);
        let cached = CachedSession::new(session.clone());
        cached
            .identity_or_mint(at(0), 1, |s| {
                Ok::<_, ()>(minted(s, at(0), "jwt.secret.signature"))
            })
            .unwrap();
        let debug = format!("{cached:?}");
        for secret in [ACCESS, REFRESH, "jwt.secret.signature"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
