//! The in-process session store, for `wxgate demo` and tests: sharded hash maps behind
//! short locks, bounded at a maximum number of entries, expired lazily on read and by sweep.
//! Sessions are kept packed (`packed.rs`), one allocation each. Nothing survives a restart
//! and nothing is shared with another gateway.

use std::collections::HashMap;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::packed::Packed;
use super::{Clock, Session, SessionStore, StorageKey, StoreError};

/// Enough to spread contention over the 2–16 cores a gateway runs on.
const SHARDS: usize = 16;

type Shard = HashMap<StorageKey, Packed>;

/// Sessions in memory. When full, a new session first clears expired entries and then
/// evicts the one closest to expiry (the least recently active), so the bound holds
/// exactly and a flood of logins costs old idle sessions, never memory.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Entries held, live or expired-but-not-yet-removed; only changed under a shard lock
    /// or by reserving a slot before an insert.
    held: AtomicU64,
    max_entries: u64,
    /// Refresh leases by session, with the moment each ends. Few at a time: a lease is
    /// taken only when a profile is due for refresh, and ended ones are dropped on claim.
    leases: Mutex<HashMap<StorageKey, SystemTime>>,
    /// Shared values and named leases (`get_value`, `claim_lease`): a handful per account.
    values: Mutex<HashMap<String, (Vec<u8>, SystemTime)>>,
    named_leases: Mutex<HashMap<String, SystemTime>>,
    clock: Clock,
}

impl MemoryStore {
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

    /// A store holding at most `max_entries` sessions (at least one).
    pub fn new(max_entries: u64) -> Self {
        MemoryStore::with_clock(max_entries, Clock::system())
    }

    /// The same, judging expiry by `clock`.
    pub fn with_clock(max_entries: u64, clock: Clock) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            held: AtomicU64::new(0),
            max_entries: max_entries.max(1),
            leases: Mutex::new(HashMap::new()),
            values: Mutex::new(HashMap::new()),
            named_leases: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic elsewhere cannot leave a map half-updated: every change is one call.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shard_of(&self, key: &StorageKey) -> MutexGuard<'_, Shard> {
        self.shard(key.shard(SHARDS))
    }

    fn forget(&self, removed: u64) {
        self.held.fetch_sub(removed, Ordering::AcqRel);
    }

    fn get_now(&self, key: &StorageKey) -> Option<Session> {
        let now = self.clock.now();
        let mut shard = self.shard_of(key);
        match shard.get(key) {
            Some(packed) if !packed.is_expired(now) => packed.unpack(),
            Some(_) => {
                shard.remove(key);
                self.forget(1);
                None
            }
            None => None,
        }
    }

    fn put_now(&self, key: &StorageKey, session: &Session) {
        let now = self.clock.now();
        if session.is_expired(now) {
            self.delete_now(key);
            return;
        }
        if let Some(slot) = self.shard_of(key).get_mut(key) {
            *slot = Packed::pack(session);
            return;
        }
        self.reserve_slot();
        if self
            .shard_of(key)
            .insert(*key, Packed::pack(session))
            .is_some()
        {
            // Another caller inserted the same key meanwhile; ours replaced it.
            self.forget(1);
        }
    }

    /// Counts a new entry in, evicting until there is room.
    fn reserve_slot(&self) {
        loop {
            let held = self.held.load(Ordering::Acquire);
            if held < self.max_entries {
                if self
                    .held
                    .compare_exchange(held, held + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if !self.evict_one(self.clock.now()) {
                // Every slot is reserved by inserts still in flight; let them land.
                std::thread::yield_now();
            }
        }
    }

    /// Frees room: every expired entry if there are any, or else the entry closest to
    /// expiry. O(entries) — the price of a full store, paid only when it is full. One
    /// shard lock at a time, so there is no lock order to get wrong.
    fn evict_one(&self, now: SystemTime) -> bool {
        if self.sweep_at(now) > 0 {
            return true;
        }
        let soonest = (0..SHARDS)
            .filter_map(|index| {
                let shard = self.shard(index);
                shard
                    .iter()
                    .map(|(key, packed)| (packed.expires_at(), *key))
                    .min()
            })
            .min();
        match soonest {
            Some((_, key)) => {
                // Gone meanwhile is as good as evicted: the loop re-counts either way.
                self.delete_now(&key);
                true
            }
            None => false,
        }
    }

    fn touch_now(&self, key: &StorageKey, last_seen: SystemTime, expires_at: SystemTime) -> bool {
        let now = self.clock.now();
        let mut shard = self.shard_of(key);
        match shard.get_mut(key) {
            Some(packed) if !packed.is_expired(now) => {
                packed.set_seen(last_seen, expires_at);
                true
            }
            Some(_) => {
                shard.remove(key);
                self.forget(1);
                false
            }
            None => false,
        }
    }

    fn delete_now(&self, key: &StorageKey) -> bool {
        let now = self.clock.now();
        let removed = self.shard_of(key).remove(key);
        if removed.is_some() {
            self.forget(1);
        }
        removed.is_some_and(|packed| !packed.is_expired(now))
    }

    /// Removes the entries `doomed` picks in every shard; returns how many of them were
    /// still live.
    fn remove_where(&self, doomed: impl Fn(&Session) -> bool) -> u64 {
        let now = self.clock.now();
        let mut live_removed = 0;
        for index in 0..SHARDS {
            let mut shard = self.shard(index);
            let before = shard.len();
            shard.retain(|_, packed| {
                let remove = packed.unpack().is_some_and(|session| doomed(&session));
                if remove && !packed.is_expired(now) {
                    live_removed += 1;
                }
                !remove
            });
            self.forget((before - shard.len()) as u64);
        }
        live_removed
    }

    fn count_now(&self) -> u64 {
        let now = self.clock.now();
        (0..SHARDS)
            .map(|index| {
                let shard = self.shard(index);
                shard.values().filter(|p| !p.is_expired(now)).count() as u64
            })
            .sum()
    }

    fn claim_now(&self, key: &StorageKey, lease: Duration) -> bool {
        let now = self.clock.now();
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        leases.retain(|_, ends| *ends > now);
        if leases.contains_key(key) {
            return false;
        }
        leases.insert(*key, now + lease);
        true
    }

    fn value_now(&self, name: &str) -> Option<Vec<u8>> {
        let now = self.clock.now();
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        values.retain(|_, (_, expires_at)| *expires_at > now);
        values.get(name).map(|(value, _)| value.clone())
    }

    fn put_value_now(&self, name: &str, value: &[u8], expires_at: SystemTime) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        if expires_at > self.clock.now() {
            values.insert(name.to_owned(), (value.to_vec(), expires_at));
        } else {
            values.remove(name);
        }
    }

    fn claim_named_now(&self, name: &str, lease: Duration) -> bool {
        let now = self.clock.now();
        let mut leases = self
            .named_leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        leases.retain(|_, ends| *ends > now);
        if leases.contains_key(name) {
            return false;
        }
        leases.insert(name.to_owned(), now + lease);
        true
    }

    fn sweep_at(&self, now: SystemTime) -> u64 {
        let mut swept = 0;
        for index in 0..SHARDS {
            let mut shard = self.shard(index);
            let before = shard.len();
            shard.retain(|_, packed| !packed.is_expired(now));
            let removed = (before - shard.len()) as u64;
            self.forget(removed);
            swept += removed;
        }
        swept
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_MAX_ENTRIES)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("held", &self.held.load(Ordering::Relaxed))
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl SessionStore for MemoryStore {
    fn get<'a>(
        &'a self,
        key: &'a StorageKey,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(ready(Ok(self.get_now(key))))
    }

    fn put<'a>(
        &'a self,
        key: &'a StorageKey,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_now(key, session);
        Box::pin(ready(Ok(())))
    }

    fn touch<'a>(
        &'a self,
        key: &'a StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ready(Ok(self.touch_now(key, last_seen, expires_at))))
    }

    fn delete<'a>(&'a self, key: &'a StorageKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ready(Ok(self.delete_now(key))))
    }

    fn delete_user<'a>(
        &'a self,
        appid: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let removed = self.remove_where(|s| s.appid == appid && s.openid == openid);
        Box::pin(ready(Ok(removed)))
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(ready(Ok(self.count_now())))
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(ready(Ok(self.sweep_at(self.clock.now()))))
    }

    fn claim_refresh<'a>(
        &'a self,
        key: &'a StorageKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ready(Ok(self.claim_now(key, lease))))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(ready(Ok(())))
    }

    fn get_value<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(ready(Ok(self.value_now(name))))
    }

    fn put_value<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_value_now(name, value, expires_at);
        Box::pin(ready(Ok(())))
    }

    fn claim_lease<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ready(Ok(self.claim_named_now(name, lease))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::session::test_support::{ManualClock, at, login, put_new, put_replace_delete};
    use crate::session::{Lifetimes, SessionId};

    const TTL: Duration = Duration::from_secs(600);
    const MAX: Duration = Duration::from_secs(3600);

    fn lifetimes() -> Lifetimes {
        Lifetimes::new(TTL, MAX)
    }

    fn store(max_entries: u64) -> (MemoryStore, ManualClock) {
        let clock = ManualClock::starting_at(at(0));
        (MemoryStore::with_clock(max_entries, clock.clock()), clock)
    }

    fn session_for(openid: &str, clock: &ManualClock) -> Session {
        Session::new(login(openid), clock.now(), lifetimes())
    }

    #[tokio::test]
    async fn one_refresh_lease_at_a_time_until_it_ends() {
        let (store, clock) = store(100);
        let key = SessionId::generate().storage_key();
        let other = SessionId::generate().storage_key();
        assert!(store.claim_refresh(&key, TTL).await.unwrap());
        assert!(!store.claim_refresh(&key, TTL).await.unwrap(), "lease held");
        assert!(
            store.claim_refresh(&other, TTL).await.unwrap(),
            "per session"
        );
        clock.advance(TTL);
        assert!(store.claim_refresh(&key, TTL).await.unwrap(), "lease ended");
    }

    #[tokio::test]
    async fn shared_values_expire_and_named_leases_exclude() {
        let (store, clock) = store(100);
        crate::session::test_support::values_and_named_leases(&store, &clock).await;
    }

    #[tokio::test]
    async fn put_then_get_returns_the_session_and_delete_revokes_it() {
        let (store, clock) = store(100);
        put_replace_delete(&store, session_for("o1", &clock)).await;
    }

    #[tokio::test]
    async fn an_expired_session_is_never_served_even_before_a_sweep() {
        let (store, clock) = store(100);
        let key = put_new(&store, &session_for("o1", &clock)).await;
        clock.advance(TTL - Duration::from_secs(1));
        assert!(store.get(&key).await.unwrap().is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert!(!store.touch(&key, clock.now(), at(10_000)).await.unwrap());
        assert_eq!(store.get(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn touching_slides_the_ttl_until_the_absolute_lifetime() {
        let (store, clock) = store(100);
        let session = session_for("o1", &clock);
        let key = put_new(&store, &session).await;
        let mut current = session;
        // A request every 500 s keeps a 600 s-ttl session alive, but not past 3600 s.
        for _ in 0..7 {
            clock.advance(Duration::from_secs(500));
            let seen = store.get(&key).await.unwrap().unwrap();
            assert_eq!(seen.last_seen, current.last_seen);
            current = seen.touched(clock.now(), lifetimes());
            assert!(
                store
                    .touch(&key, current.last_seen, current.expires_at)
                    .await
                    .unwrap()
            );
        }
        assert_eq!(clock.now(), at(3500));
        assert_eq!(
            current.expires_at,
            at(3600),
            "capped by the absolute lifetime"
        );
        clock.advance(Duration::from_secs(99));
        assert!(store.get(&key).await.unwrap().is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.get(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_user_revokes_every_session_of_that_user_only() {
        let (store, clock) = store(100);
        let mine: Vec<StorageKey> = futures_util::future::join_all(
            (0..3).map(|_| async { put_new(&store, &session_for("me", &clock)).await }),
        )
        .await;
        let other = put_new(&store, &session_for("other", &clock)).await;
        let mut other_app = session_for("me", &clock);
        other_app.appid = "wx0000000000000000".to_owned();
        let other_app = put_new(&store, &other_app).await;

        let appid = login("me").appid;
        assert_eq!(store.delete_user(&appid, "me").await.unwrap(), 3);
        for key in &mine {
            assert_eq!(store.get(key).await.unwrap(), None);
        }
        assert!(store.get(&other).await.unwrap().is_some());
        assert!(store.get(&other_app).await.unwrap().is_some());
        assert_eq!(store.delete_user(&appid, "me").await.unwrap(), 0);
        assert_eq!(store.count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn count_and_sweep_see_only_live_sessions() {
        let (store, clock) = store(100);
        for _ in 0..4 {
            put_new(&store, &session_for("early", &clock)).await;
        }
        clock.advance(Duration::from_secs(300));
        for _ in 0..2 {
            put_new(&store, &session_for("late", &clock)).await;
        }
        assert_eq!(store.count().await.unwrap(), 6);
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            store.count().await.unwrap(),
            2,
            "expired ones are not counted"
        );
        assert_eq!(store.held.load(Ordering::Relaxed), 6, "but still held");
        assert_eq!(store.sweep_expired().await.unwrap(), 4);
        assert_eq!(store.held.load(Ordering::Relaxed), 2);
        assert_eq!(store.sweep_expired().await.unwrap(), 0);
        assert_eq!(store.count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_full_store_evicts_expired_then_least_recently_active_sessions() {
        let (store, clock) = store(3);
        let oldest = put_new(&store, &session_for("a", &clock)).await;
        clock.advance(Duration::from_secs(10));
        let middle = put_new(&store, &session_for("b", &clock)).await;
        clock.advance(Duration::from_secs(10));
        let newest = put_new(&store, &session_for("c", &clock)).await;
        clock.advance(Duration::from_secs(10));
        let incoming = put_new(&store, &session_for("d", &clock)).await;
        assert_eq!(store.count().await.unwrap(), 3);
        assert_eq!(
            store.get(&oldest).await.unwrap(),
            None,
            "closest to expiry goes"
        );
        for key in [&middle, &newest, &incoming] {
            assert!(store.get(key).await.unwrap().is_some());
        }
        // Once some have expired, those go first, whatever their order.
        clock.advance(TTL - Duration::from_secs(15));
        let fresh = put_new(&store, &session_for("e", &clock)).await;
        assert_eq!(
            store.get(&middle).await.unwrap(),
            None,
            "expired b made room"
        );
        for key in [newest, incoming, fresh] {
            assert!(store.get(&key).await.unwrap().is_some());
        }
        assert_eq!(store.held.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn concurrent_logins_never_exceed_the_bound() {
        let clock = ManualClock::starting_at(at(0));
        let store = Arc::new(MemoryStore::with_clock(50, clock.clock()));
        let session = Session::new(login("o"), at(0), lifetimes());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let store = store.clone();
                let session = session.clone();
                scope.spawn(move || {
                    for _ in 0..500 {
                        store.put_now(&SessionId::generate().storage_key(), &session);
                    }
                });
            }
        });
        assert_eq!(store.held.load(Ordering::Relaxed), 50);
        assert_eq!(store.count_now(), 50);
    }

    #[tokio::test]
    async fn an_already_expired_session_is_not_stored() {
        let (store, clock) = store(10);
        let session = session_for("o1", &clock);
        let key = put_new(&store, &session).await;
        clock.advance(TTL);
        store.put(&key, &session).await.unwrap();
        assert_eq!(store.held.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_store_is_usable_as_a_shared_trait_object() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        store.ping().await.unwrap();
        assert_eq!(store.count().await.unwrap(), 0);
    }
}
