//! The one place a session store is built from the configuration: which backend, its keys,
//! its timeout, its sweep, and how the hot-path cache in front of it must behave.

use std::sync::Arc;
use std::time::Duration;

use super::redb::{RedbOpenError, RedbStore};
use super::redis::{RedisOpenError, RedisStore};
use super::sealing::{RecordKeys, SecretTooShort};
use super::{CacheSettings, Clock, Lifetimes, MemoryStore, SessionStore, StoreSharing};
use crate::config::{SessionConfig, StoreKind};

/// The memory store's bound: about 1 KiB a session, so 1 GiB at most.
const MEMORY_MAX_ENTRIES: u64 = 1_000_000;
/// How often redb is swept of expired sessions. Expired ones are never served meanwhile;
/// the sweep only gives their space back.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why the configured store cannot be used; each message names its configuration key.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error(transparent)]
    Secret(#[from] SecretTooShort),
    #[error("session.path: {0}")]
    Redb(#[from] RedbOpenError),
    #[error(transparent)]
    Redis(#[from] RedisOpenError),
}

/// A store by its concrete type, for what only some backends offer (`wxgate sessions`).
pub enum Backend {
    Memory(Arc<MemoryStore>),
    Redb(Arc<RedbStore>),
    Redis(Arc<RedisStore>),
}

impl Backend {
    pub fn as_store(&self) -> Arc<dyn SessionStore> {
        match self {
            Backend::Memory(store) => store.clone(),
            Backend::Redb(store) => store.clone(),
            Backend::Redis(store) => store.clone(),
        }
    }
}

/// The gateway's store: the configured backend, swept in the background when it does not
/// expire records by itself. Call it inside the tokio runtime.
pub fn open_store(config: &SessionConfig) -> Result<Arc<dyn SessionStore>, StoreOpenError> {
    let backend = open_backend(config, config.store_timeout)?;
    if let Backend::Redb(store) = &backend {
        if tokio::runtime::Handle::try_current().is_ok() {
            store.spawn_sweeper(SWEEP_EVERY);
        }
    }
    Ok(backend.as_store())
}

/// The configured backend with `timeout` per operation, without a background sweep.
pub fn open_backend(config: &SessionConfig, timeout: Duration) -> Result<Backend, StoreOpenError> {
    Ok(match config.store {
        StoreKind::Memory => Backend::Memory(Arc::new(MemoryStore::new(MEMORY_MAX_ENTRIES))),
        StoreKind::Redb => Backend::Redb(Arc::new(RedbStore::open(
            &config.path,
            record_keys(config)?,
            timeout,
            Clock::system(),
        )?)),
        StoreKind::Redis => Backend::Redis(Arc::new(RedisStore::open(
            config.redis_url.expose(),
            record_keys(config)?,
            timeout,
            Clock::system(),
        )?)),
    })
}

/// For `wxgate check`: an existing redb file must open, so a corrupt one is reported by
/// name before a start fails on it. Nothing is created, and a file locked by a running
/// gateway is fine (the gateway opened it).
pub fn check_existing_store(config: &SessionConfig) -> Result<(), StoreOpenError> {
    if config.store != StoreKind::Redb || !config.path.exists() {
        return Ok(());
    }
    match open_backend(config, config.store_timeout) {
        Ok(_) | Err(StoreOpenError::Redb(RedbOpenError::Locked(_))) => Ok(()),
        Err(e) => Err(e),
    }
}

fn record_keys(config: &SessionConfig) -> Result<RecordKeys, SecretTooShort> {
    RecordKeys::derive(config.secret.expose().as_bytes())
}

/// Whether other gateways write to the same store.
pub fn sharing(kind: StoreKind) -> StoreSharing {
    match kind {
        StoreKind::Redis => StoreSharing::Shared,
        StoreKind::Memory | StoreKind::Redb => StoreSharing::Exclusive,
    }
}

/// The hot-path cache for the configured store: with Redis, a logout on another gateway is
/// seen here within a second.
pub fn cache_settings(config: &SessionConfig) -> CacheSettings {
    CacheSettings::for_store(sharing(config.store))
}

/// The sliding ttl and the absolute lifetime the configuration gives sessions.
pub fn lifetimes(config: &SessionConfig) -> Lifetimes {
    Lifetimes::new(config.ttl, config.max_lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use crate::session::MAX_SHARED_STALENESS;

    fn config(store: StoreKind) -> SessionConfig {
        SessionConfig {
            store,
            secret: Secret::new("test-session-secret-0123456789-abcdefghij"),
            ..SessionConfig::default()
        }
    }

    #[test]
    fn only_redis_is_shared_and_its_cache_is_never_more_than_a_second_stale() {
        for (kind, sharing) in [
            (StoreKind::Memory, StoreSharing::Exclusive),
            (StoreKind::Redb, StoreSharing::Exclusive),
            (StoreKind::Redis, StoreSharing::Shared),
        ] {
            let settings = cache_settings(&config(kind));
            assert_eq!(settings.sharing, sharing, "{kind:?}");
            if sharing == StoreSharing::Shared {
                assert!(settings.effective_ttl() <= MAX_SHARED_STALENESS);
            }
        }
    }

    #[test]
    fn lifetimes_come_from_ttl_and_max_lifetime() {
        let mut c = config(StoreKind::Memory);
        c.ttl = Duration::from_secs(60);
        c.max_lifetime = Duration::from_secs(600);
        assert_eq!(
            lifetimes(&c),
            Lifetimes::new(Duration::from_secs(60), Duration::from_secs(600))
        );
        assert_eq!(
            SessionConfig::default().max_lifetime,
            Lifetimes::DEFAULT_MAX_LIFETIME
        );
    }

    #[tokio::test]
    async fn a_short_secret_or_a_bad_redis_url_is_an_error_naming_the_key() {
        let mut short = config(StoreKind::Redis);
        short.secret = Secret::new("short");
        let error = open_store(&short).err().unwrap().to_string();
        assert!(error.contains("session.secret"), "{error}");

        let mut bad = config(StoreKind::Redis);
        bad.redis_url = Secret::new("redis://:hunter2@[::1:6379/0");
        let error = open_store(&bad).err().unwrap().to_string();
        assert!(error.contains("session.redis_url"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn a_foreign_file_is_refused_by_name_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        std::fs::write(
            &path,
            b"this is not a redb database, but somebody's notes\n".repeat(100),
        )
        .unwrap();
        let mut c = config(StoreKind::Redb);
        c.path = path.clone();
        let error = open_store(&c).err().unwrap().to_string();
        assert!(error.starts_with("session.path: "), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(
            std::fs::read(&path)
                .unwrap()
                .starts_with(b"this is not a redb"),
            "the file is left as it was"
        );
    }

    #[tokio::test]
    async fn a_second_opener_of_one_redb_file_is_told_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(StoreKind::Redb);
        c.path = dir.path().join("nested/dir/sessions.redb");
        let first = open_store(&c).unwrap();
        first.ping().await.unwrap();
        let error = open_store(&c).err().unwrap().to_string();
        assert!(error.contains("in use by another process"), "{error}");
        drop(first);
        // The sweeper holds no strong reference: dropping the store frees the file.
        assert!(open_store(&c).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&c.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
