//! The embedded session store (the default): one redb file at `session.path`, so sessions
//! survive a restart with nothing else to run. Records are sealed (see `encoding`); an
//! expiry table lets the sweep find dead sessions without reading live ones, and a user
//! table finds every session of one user for `delete_user`.
//!
//! redb locks its file: one process at a time. A second gateway, or `wxgate sessions`
//! while a gateway runs, gets [`RedbOpenError::Locked`]. redb is blocking I/O: reads run on
//! tokio's blocking pool; writes go to one writer thread that commits whatever is queued in
//! one durable transaction (group commit), so a burst of logins costs one fsync, not one
//! each. Every operation is bounded by the store timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use ::redb::{
    Database, DatabaseError, Durability, MultimapTableDefinition, ReadableMultimapTable,
    ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::encoding::{self, CLOCK_LEN, CLOCK_OFFSET, Header};
use super::sealing::{RecordKeys, TAG_LEN};
use super::{Clock, Session, SessionStore, StorageKey, StoreError};

/// Storage key → sealed record.
const SESSIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("sessions");
/// (expires_at ms, storage key) → (): the sweep reads this in order.
const EXPIRY: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("expiry");
/// User tag → storage keys of that user's sessions.
const USERS: MultimapTableDefinition<&[u8; TAG_LEN], &[u8; 32]> =
    MultimapTableDefinition::new("users");
/// Storage key → end of its refresh lease (ms).
const LEASES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("leases");
/// Name → expires_at ms (8 bytes, big-endian) ‖ sealed value: `get_value`, `put_value`.
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
/// Name → end of its lease (ms): `claim_lease`.
const NAMED_LEASES: TableDefinition<&str, u64> = TableDefinition::new("named_leases");

/// Expired sessions removed per write transaction, so a sweep never holds the writer long.
const SWEEP_BATCH: usize = 1000;
/// redb's in-process page cache. Its default (1 GiB) kept a million sessions' whole file
/// resident, 1.2 KiB a session; the session cache in front of the store serves the hot path,
/// so a miss may read a page through the kernel's cache instead, which is not the gateway's
/// memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Writes committed together at most, and queued at most before callers wait.
const MAX_GROUP: usize = 512;
const QUEUE: usize = 4096;

/// Why the store file cannot be used. Each names the file: a corrupt or foreign file is an
/// error at start, never silently replaced.
#[derive(Debug, thiserror::Error)]
pub enum RedbOpenError {
    #[error(
        "{0} is in use by another process (a running gateway?); redb allows one process per file"
    )]
    Locked(PathBuf),
    #[error("{path} cannot be created: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable session store ({reason}); move it aside to start with an empty one"
    )]
    Unreadable { path: PathBuf, reason: String },
}

/// Sessions in a redb file.
pub struct RedbStore {
    inner: Arc<Inner>,
    timeout: Duration,
    writer: Option<Writer>,
}

/// The writer thread and its queue. Dropping the store closes the queue and waits for the
/// thread, so the file is free again when the drop returns.
struct Writer {
    jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

/// One change, applied in the writer's transaction in arrival order.
enum Write {
    Put {
        key: StorageKey,
        bytes: Vec<u8>,
        header: Header,
    },
    Touch {
        key: StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    },
    Delete(StorageKey),
    DeleteUser([u8; TAG_LEN]),
    Claim {
        key: StorageKey,
        lease: Duration,
    },
    PutValue {
        name: String,
        /// Expiry and sealed value, as `VALUES` holds them; empty: remove.
        framed: Vec<u8>,
    },
    ClaimNamed {
        name: String,
        lease: Duration,
    },
}

/// What a write reports: `put` nothing, the others a flag or a count.
enum Written {
    Done,
    Flag(bool),
    Count(u64),
}

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

struct Inner {
    db: Database,
    keys: RecordKeys,
    clock: Clock,
}

impl RedbStore {
    /// Opens (or creates, mode 0600, with its directory) the store file at `path`.
    pub fn open(
        path: &Path,
        keys: RecordKeys,
        timeout: Duration,
        clock: Clock,
    ) -> Result<Self, RedbOpenError> {
        create_private(path)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => RedbOpenError::Locked(path.to_owned()),
                other => RedbOpenError::Unreadable {
                    path: path.to_owned(),
                    reason: other.to_string(),
                },
            })?;
        let unreadable = |e: DbError| RedbOpenError::Unreadable {
            path: path.to_owned(),
            reason: e.0.to_string(),
        };
        create_tables(&db).map_err(unreadable)?;
        let inner = Arc::new(Inner { db, keys, clock });
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("wxgate-redb-writer".into())
            .spawn(move || writer_inner.write_groups(queue))
            .map_err(|source| RedbOpenError::Create {
                path: path.to_owned(),
                source,
            })?;
        Ok(RedbStore {
            inner,
            timeout,
            writer: Some(Writer { jobs, thread }),
        })
    }

    /// Removes expired sessions every `every` until the store is dropped.
    pub fn spawn_sweeper(&self, every: Duration) {
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else { return };
                match tokio::task::spawn_blocking(move || inner.sweep()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(swept)) => tracing::debug!(swept, "expired sessions removed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "session sweep failed"),
                    Err(e) => tracing::warn!(error = %e, "session sweep task failed"),
                }
            }
        });
    }

    /// The live sessions of one user, for `wxgate sessions inspect`.
    pub async fn user_sessions(
        &self,
        appid: &str,
        openid: &str,
    ) -> Result<Vec<Session>, StoreError> {
        let tag = self.inner.keys.user_tag(appid, openid);
        self.run(move |inner| inner.user_sessions(&tag)).await
    }

    /// Runs `op` on the blocking pool within the store timeout. A timed-out transaction
    /// still finishes in the background; the caller has moved on with an error.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let inner = self.inner.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || op(&inner));
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(StoreError::Unavailable("redb operation aborted".into())),
                Err(_) => Err(StoreError::Timeout(timeout)),
            }
        })
    }
}

impl RedbStore {
    /// Queues `write` for the writer thread and waits for its commit, within the timeout.
    fn submit(&self, write: Write) -> BoxFuture<'static, Result<Written, StoreError>> {
        let jobs = self.writer.as_ref().map(|w| w.jobs.clone());
        let timeout = self.timeout;
        let stopped = || StoreError::Unavailable("redb writer stopped".into());
        Box::pin(async move {
            let committed = async {
                let jobs = jobs.ok_or_else(stopped)?;
                let (reply, answer) = oneshot::channel();
                jobs.send(Job { write, reply })
                    .await
                    .map_err(|_| stopped())?;
                // Only the store keeps the queue open, so dropping it always ends the writer.
                drop(jobs);
                answer.await.map_err(|_| stopped())?
            };
            tokio::time::timeout(timeout, committed)
                .await
                .unwrap_or(Err(StoreError::Timeout(timeout)))
        })
    }

    fn flag(&self, write: Write) -> BoxFuture<'static, Result<bool, StoreError>> {
        let submitted = self.submit(write);
        Box::pin(async move {
            match submitted.await? {
                Written::Flag(flag) => Ok(flag),
                _ => Err(StoreError::Corrupt(
                    "redb writer answered out of kind".into(),
                )),
            }
        })
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if let Some(Writer { jobs, thread }) = self.writer.take() {
            drop(jobs);
            // The thread ends once the queue is empty: at most one group's commit away.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Creates the file readable by its owner only when it does not exist yet: it holds sealed
/// WeChat tokens.
fn create_private(path: &Path) -> Result<(), RedbOpenError> {
    let create = |source| RedbOpenError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(create(e)),
    }
}

fn create_tables(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_write()?;
    txn.open_table(SESSIONS)?;
    txn.open_table(EXPIRY)?;
    txn.open_multimap_table(USERS)?;
    txn.open_table(LEASES)?;
    txn.open_table(VALUES)?;
    txn.open_table(NAMED_LEASES)?;
    txn.commit()?;
    Ok(())
}

/// redb's error, boxed: it is large, and only its category leaves this module.
struct DbError(Box<::redb::Error>);

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError(Box::new(e.into()))
            }
        }
    )*};
}
db_error_from!(
    ::redb::Error,
    ::redb::TableError,
    ::redb::StorageError,
    ::redb::CommitError,
    ::redb::TransactionError
);

fn failed(e: impl Into<DbError>) -> StoreError {
    match *e.into().0 {
        ::redb::Error::Corrupted(reason) => StoreError::Corrupt(reason),
        ::redb::Error::Io(io) => StoreError::Unavailable(format!("redb I/O: {}", io.kind())),
        other => StoreError::Unavailable(format!("redb: {other}")),
    }
}

fn ms(time: SystemTime) -> u64 {
    encoding::to_ms(time)
}

impl Inner {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn write(&self, durability: Durability) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        txn.set_durability(durability);
        Ok(txn)
    }

    fn get(&self, key: &StorageKey) -> Result<Option<Session>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let sessions = txn.open_table(SESSIONS).map_err(failed)?;
        let Some(bytes) = sessions.get(key.as_bytes()).map_err(failed)? else {
            return Ok(None);
        };
        Ok(self.readable(key, bytes.value()))
    }

    /// The live session in `bytes`; an expired or undecodable record is no session (an
    /// undecodable one most likely predates a change of `session.secret`: its visitor logs
    /// in again).
    fn readable(&self, key: &StorageKey, bytes: &[u8]) -> Option<Session> {
        match encoding::decode(&self.keys, key, bytes) {
            Ok(session) if !session.is_expired(self.now()) => Some(session),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(key = %key, reason = %e, "stored session ignored");
                None
            }
        }
    }

    /// The writer thread: takes whatever is queued (up to a group), applies it in one
    /// transaction, commits durably once, answers every caller. Ends when the queue closes.
    fn write_groups(&self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            match self.apply(&group) {
                Ok(results) => {
                    for (job, result) in group.into_iter().zip(results) {
                        let _ = job.reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    // The transaction was dropped uncommitted: none of the group happened.
                    for job in group {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn apply(&self, group: &[Job]) -> Result<Vec<Written>, StoreError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        // Logouts must survive a crash; logins ride along in the same fsync.
        txn.set_durability(Durability::Immediate);
        let now = self.now();
        let mut results = Vec::with_capacity(group.len());
        for job in group {
            results.push(apply_one(&txn, &job.write, now).map_err(failed)?);
        }
        txn.commit().map_err(failed)?;
        Ok(results)
    }

    /// Records held minus those already expired: every record has one expiry entry, and
    /// the expired ones are few (the sweep removes them every minute), so this reads a
    /// handful of entries rather than every live session (metrics sample it often).
    fn count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let held = txn
            .open_table(SESSIONS)
            .map_err(failed)?
            .len()
            .map_err(failed)?;
        let expiry = txn.open_table(EXPIRY).map_err(failed)?;
        let last_dead = (ms(self.now()), &[0xffu8; 32]);
        let mut dead = 0;
        for entry in expiry.range(..=last_dead).map_err(failed)? {
            entry.map_err(failed)?;
            dead += 1;
        }
        Ok(held.saturating_sub(dead))
    }

    /// Removes every expired session and ended lease, a batch per transaction.
    fn sweep(&self) -> Result<u64, StoreError> {
        let now = self.now();
        let mut swept = 0;
        loop {
            let txn = self.write(Durability::Immediate)?;
            let doomed: Vec<[u8; 32]> = {
                let expiry = txn.open_table(EXPIRY).map_err(failed)?;
                let last_dead = (ms(now), &[0xffu8; 32]);
                let mut doomed = Vec::new();
                for entry in expiry
                    .range(..=last_dead)
                    .map_err(failed)?
                    .take(SWEEP_BATCH)
                {
                    let (key, _) = entry.map_err(failed)?;
                    doomed.push(*key.value().1);
                }
                doomed
            };
            for key in &doomed {
                remove_record(&txn, &StorageKey::from_bytes(*key)).map_err(failed)?;
            }
            if doomed.len() < SWEEP_BATCH {
                let now_ms = ms(now);
                remove_ended_leases(&txn, now_ms).map_err(failed)?;
            }
            txn.commit().map_err(failed)?;
            swept += doomed.len() as u64;
            if doomed.len() < SWEEP_BATCH {
                return Ok(swept);
            }
        }
    }

    fn value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let values = txn.open_table(VALUES).map_err(failed)?;
        let Some(framed) = values.get(name).map_err(failed)? else {
            return Ok(None);
        };
        let framed = framed.value();
        let Some((expiry, sealed)) = framed.split_first_chunk::<8>() else {
            return Ok(None);
        };
        if u64::from_be_bytes(*expiry) <= ms(self.now()) {
            return Ok(None);
        }
        match self.keys.open(&value_context(name), sealed) {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                tracing::warn!(value = name, reason = %e, "stored value ignored");
                Ok(None)
            }
        }
    }

    fn ping(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let sessions = txn.open_table(SESSIONS).map_err(failed)?;
        sessions.len().map_err(failed)?;
        Ok(())
    }

    fn user_sessions(&self, tag: &[u8; TAG_LEN]) -> Result<Vec<Session>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let users = txn.open_multimap_table(USERS).map_err(failed)?;
        let sessions = txn.open_table(SESSIONS).map_err(failed)?;
        let mut found = Vec::new();
        for value in users.get(tag).map_err(failed)? {
            let key = StorageKey::from_bytes(*value.map_err(failed)?.value());
            if let Some(bytes) = sessions.get(key.as_bytes()).map_err(failed)? {
                found.extend(self.readable(&key, bytes.value()));
            }
        }
        Ok(found)
    }
}

fn apply_one(txn: &WriteTransaction, write: &Write, now: SystemTime) -> Result<Written, DbError> {
    Ok(match write {
        Write::Put { key, bytes, header } => {
            remove_record(txn, key)?;
            if header.expires_at > now {
                insert_record(txn, key, bytes, header)?;
            }
            Written::Done
        }
        Write::Touch {
            key,
            last_seen,
            expires_at,
        } => Written::Flag(touch_record(txn, key, *last_seen, *expires_at, now)?),
        Write::Delete(key) => {
            let removed = remove_record(txn, key)?;
            Written::Flag(removed.is_some_and(|h| h.expires_at > now))
        }
        Write::DeleteUser(tag) => Written::Count(remove_user(txn, tag, now)?),
        Write::Claim { key, lease } => Written::Flag(claim_lease(txn, key, *lease, now)?),
        Write::PutValue { name, framed } => {
            let mut values = txn.open_table(VALUES)?;
            if framed.is_empty() {
                values.remove(name.as_str())?;
            } else {
                values.insert(name.as_str(), framed.as_slice())?;
            }
            Written::Done
        }
        Write::ClaimNamed { name, lease } => {
            Written::Flag(claim_named_lease(txn, name, *lease, now)?)
        }
    })
}

/// Slides a live record's clock; a dead or unreadable one is left for the sweep, never
/// brought back to life.
fn touch_record(
    txn: &WriteTransaction,
    key: &StorageKey,
    last_seen: SystemTime,
    expires_at: SystemTime,
    now: SystemTime,
) -> Result<bool, DbError> {
    let mut sessions = txn.open_table(SESSIONS)?;
    let current = sessions.get(key.as_bytes())?.map(|b| b.value().to_vec());
    let Some((mut bytes, old)) =
        current.and_then(|bytes| encoding::header(&bytes).ok().map(|h| (bytes, h)))
    else {
        return Ok(false);
    };
    if old.expires_at <= now {
        return Ok(false);
    }
    bytes[CLOCK_OFFSET..CLOCK_OFFSET + CLOCK_LEN]
        .copy_from_slice(&encoding::clock_bytes(last_seen, expires_at));
    sessions.insert(key.as_bytes(), bytes.as_slice())?;
    let mut expiry = txn.open_table(EXPIRY)?;
    expiry.remove((ms(old.expires_at), key.as_bytes()))?;
    expiry.insert((ms(expires_at), key.as_bytes()), ())?;
    Ok(true)
}

/// Removes every session of one user; how many of them were live.
fn remove_user(
    txn: &WriteTransaction,
    tag: &[u8; TAG_LEN],
    now: SystemTime,
) -> Result<u64, DbError> {
    let keys: Vec<[u8; 32]> = {
        let users = txn.open_multimap_table(USERS)?;
        let values = users.get(tag)?;
        values
            .map(|v| v.map(|v| *v.value()))
            .collect::<Result<_, _>>()?
    };
    let mut live = 0;
    for key in keys {
        if remove_record(txn, &StorageKey::from_bytes(key))?.is_some_and(|h| h.expires_at > now) {
            live += 1;
        }
    }
    txn.open_multimap_table(USERS)?.remove_all(tag)?;
    Ok(live)
}

fn claim_lease(
    txn: &WriteTransaction,
    key: &StorageKey,
    lease: Duration,
    now: SystemTime,
) -> Result<bool, DbError> {
    let now = ms(now);
    let mut leases = txn.open_table(LEASES)?;
    let held = leases
        .get(key.as_bytes())?
        .is_some_and(|ends| ends.value() > now);
    if !held {
        let ends = now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        leases.insert(key.as_bytes(), ends)?;
    }
    Ok(!held)
}

fn claim_named_lease(
    txn: &WriteTransaction,
    name: &str,
    lease: Duration,
    now: SystemTime,
) -> Result<bool, DbError> {
    let now = ms(now);
    let mut leases = txn.open_table(NAMED_LEASES)?;
    let held = leases.get(name)?.is_some_and(|ends| ends.value() > now);
    if !held {
        let ends = now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        leases.insert(name, ends)?;
    }
    Ok(!held)
}

/// What a value is sealed together with, so a value copied under another name does not open.
fn value_context(name: &str) -> Vec<u8> {
    [b"value:".as_slice(), name.as_bytes()].concat()
}

fn insert_record(
    txn: &WriteTransaction,
    key: &StorageKey,
    bytes: &[u8],
    header: &Header,
) -> Result<(), DbError> {
    txn.open_table(SESSIONS)?.insert(key.as_bytes(), bytes)?;
    txn.open_table(EXPIRY)?
        .insert((ms(header.expires_at), key.as_bytes()), ())?;
    txn.open_multimap_table(USERS)?
        .insert(&header.user_tag, key.as_bytes())?;
    Ok(())
}

fn remove_ended_leases(txn: &WriteTransaction, now_ms: u64) -> Result<(), DbError> {
    txn.open_table(LEASES)?.retain(|_, ends| ends > now_ms)?;
    txn.open_table(NAMED_LEASES)?
        .retain(|_, ends| ends > now_ms)?;
    txn.open_table(VALUES)?.retain(|_, framed| {
        framed
            .first_chunk::<8>()
            .is_some_and(|expiry| u64::from_be_bytes(*expiry) > now_ms)
    })?;
    Ok(())
}

/// Removes one record and its index entries; its header if there was one.
fn remove_record(txn: &WriteTransaction, key: &StorageKey) -> Result<Option<Header>, DbError> {
    let removed = txn
        .open_table(SESSIONS)?
        .remove(key.as_bytes())?
        .map(|bytes| encoding::header(bytes.value()));
    let Some(header) = removed else {
        // No record; an expiry entry may still name it (the sweep's own leftovers).
        return Ok(None);
    };
    let Ok(header) = header else {
        return Ok(None);
    };
    txn.open_table(EXPIRY)?
        .remove((ms(header.expires_at), key.as_bytes()))?;
    txn.open_multimap_table(USERS)?
        .remove(&header.user_tag, key.as_bytes())?;
    Ok(Some(header))
}

impl SessionStore for RedbStore {
    fn get<'a>(
        &'a self,
        key: &'a StorageKey,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        let key = *key;
        self.run(move |inner| inner.get(&key))
    }

    fn put<'a>(
        &'a self,
        key: &'a StorageKey,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = *key;
        let encoded = encoding::encode(&self.inner.keys, &key, session)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
            .and_then(|bytes| {
                let header =
                    encoding::header(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((bytes, header))
            });
        match encoded {
            Ok((bytes, header)) => {
                let submitted = self.submit(Write::Put { key, bytes, header });
                Box::pin(async move { submitted.await.map(drop) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn touch<'a>(
        &'a self,
        key: &'a StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.flag(Write::Touch {
            key: *key,
            last_seen,
            expires_at,
        })
    }

    fn delete<'a>(&'a self, key: &'a StorageKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.flag(Write::Delete(*key))
    }

    fn delete_user<'a>(
        &'a self,
        appid: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let submitted = self.submit(Write::DeleteUser(self.inner.keys.user_tag(appid, openid)));
        Box::pin(async move {
            match submitted.await? {
                Written::Count(count) => Ok(count),
                _ => Err(StoreError::Corrupt(
                    "redb writer answered out of kind".into(),
                )),
            }
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.run(|inner| inner.count())
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.run(|inner| inner.sweep())
    }

    fn claim_refresh<'a>(
        &'a self,
        key: &'a StorageKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.flag(Write::Claim { key: *key, lease })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(|inner| inner.ping())
    }

    fn get_value<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let name = name.to_owned();
        self.run(move |inner| inner.value(&name))
    }

    fn put_value<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let framed = if expires_at > self.inner.now() {
            match self.inner.keys.seal(&value_context(name), value) {
                Ok(sealed) => [ms(expires_at).to_be_bytes().as_slice(), &sealed].concat(),
                Err(e) => {
                    return Box::pin(std::future::ready(Err(StoreError::Corrupt(e.to_string()))));
                }
            }
        } else {
            Vec::new()
        };
        let submitted = self.submit(Write::PutValue {
            name: name.to_owned(),
            framed,
        });
        Box::pin(async move { submitted.await.map(|_| ()) })
    }

    fn claim_lease<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.flag(Write::ClaimNamed {
            name: name.to_owned(),
            lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::test_support::{
        ACCESS, ManualClock, REFRESH, at, login, put_new, put_replace_delete,
    };
    use crate::session::{Lifetimes, SessionId};

    const SECRET: &[u8] = b"test-session-secret-0123456789-abcdefghij";
    const TTL: Duration = Duration::from_secs(600);
    const MAX: Duration = Duration::from_secs(3600);

    fn lifetimes() -> Lifetimes {
        Lifetimes::new(TTL, MAX)
    }

    struct Fixture {
        dir: tempfile::TempDir,
        clock: ManualClock,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                clock: ManualClock::starting_at(at(0)),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("sessions.redb")
        }

        fn open(&self) -> RedbStore {
            self.open_with(SECRET)
        }

        fn open_with(&self, secret: &[u8]) -> RedbStore {
            RedbStore::open(
                &self.path(),
                RecordKeys::derive(secret).unwrap(),
                Duration::from_secs(10),
                self.clock.clock(),
            )
            .unwrap()
        }

        fn session(&self, openid: &str) -> Session {
            Session::new(login(openid), self.clock.now(), lifetimes())
        }
    }

    #[tokio::test]
    async fn put_then_get_returns_the_session_and_delete_revokes_it() {
        let f = Fixture::new();
        put_replace_delete(&f.open(), f.session("o1")).await;
    }

    #[tokio::test]
    async fn sessions_survive_reopening_the_file() {
        let f = Fixture::new();
        let session = f.session("o1");
        let key = {
            let store = f.open();
            put_new(&store, &session).await
        };
        let store = f.open();
        assert_eq!(store.get(&key).await.unwrap(), Some(session));
    }

    #[tokio::test]
    async fn touching_slides_the_ttl_until_the_absolute_lifetime() {
        let f = Fixture::new();
        let store = f.open();
        let mut current = f.session("o1");
        let key = put_new(&store, &current).await;
        for _ in 0..7 {
            f.clock.advance(Duration::from_secs(500));
            let seen = store.get(&key).await.unwrap().unwrap();
            assert_eq!(seen.last_seen, current.last_seen);
            current = seen.touched(f.clock.now(), lifetimes());
            let (last_seen, expires_at) = (current.last_seen, current.expires_at);
            assert!(store.touch(&key, last_seen, expires_at).await.unwrap());
        }
        assert_eq!(
            current.expires_at,
            at(3600),
            "capped by the absolute lifetime"
        );
        f.clock.advance(Duration::from_secs(99));
        assert!(store.get(&key).await.unwrap().is_some());
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert!(!store.touch(&key, f.clock.now(), at(9000)).await.unwrap());
        assert_eq!(store.get(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_user_revokes_every_session_of_that_user_only() {
        let f = Fixture::new();
        let store = f.open();
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(put_new(&store, &f.session("me")).await);
        }
        let other = put_new(&store, &f.session("other")).await;
        let mut other_app = f.session("me");
        other_app.appid = "wx0000000000000000".to_owned();
        let other_app = put_new(&store, &other_app).await;

        let appid = login("me").appid;
        assert_eq!(store.user_sessions(&appid, "me").await.unwrap().len(), 3);
        assert_eq!(store.delete_user(&appid, "me").await.unwrap(), 3);
        for key in &mine {
            assert_eq!(store.get(key).await.unwrap(), None);
        }
        assert!(store.get(&other).await.unwrap().is_some());
        assert!(store.get(&other_app).await.unwrap().is_some());
        assert_eq!(store.delete_user(&appid, "me").await.unwrap(), 0);
        assert!(store.user_sessions(&appid, "me").await.unwrap().is_empty());
        assert_eq!(store.count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn count_and_sweep_see_only_live_sessions() {
        let f = Fixture::new();
        let store = f.open();
        let mut early = Vec::new();
        for _ in 0..4 {
            early.push(put_new(&store, &f.session("early")).await);
        }
        f.clock.advance(Duration::from_secs(300));
        for _ in 0..2 {
            put_new(&store, &f.session("late")).await;
        }
        assert_eq!(store.count().await.unwrap(), 6);
        f.clock.advance(Duration::from_secs(300));
        assert_eq!(
            store.count().await.unwrap(),
            2,
            "expired ones are not counted"
        );
        let appid = login("early").appid;
        assert!(
            store
                .user_sessions(&appid, "early")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.sweep_expired().await.unwrap(), 4);
        assert_eq!(store.sweep_expired().await.unwrap(), 0);
        assert_eq!(store.count().await.unwrap(), 2);
        // Swept means gone from the file, index included.
        assert_eq!(store.delete_user(&appid, "early").await.unwrap(), 0);
        let txn = store.inner.db.begin_read().unwrap();
        assert_eq!(txn.open_table(SESSIONS).unwrap().len().unwrap(), 2);
        assert_eq!(txn.open_table(EXPIRY).unwrap().len().unwrap(), 2);
    }

    #[tokio::test]
    async fn one_refresh_lease_at_a_time_until_it_ends() {
        let f = Fixture::new();
        let store = f.open();
        let key = SessionId::generate().storage_key();
        let other = SessionId::generate().storage_key();
        assert!(store.claim_refresh(&key, TTL).await.unwrap());
        assert!(!store.claim_refresh(&key, TTL).await.unwrap(), "lease held");
        assert!(
            store.claim_refresh(&other, TTL).await.unwrap(),
            "per session"
        );
        f.clock.advance(TTL);
        assert!(store.claim_refresh(&key, TTL).await.unwrap(), "lease ended");
    }

    #[tokio::test]
    async fn shared_values_expire_and_named_leases_exclude() {
        let f = Fixture::new();
        let store = f.open();
        crate::session::test_support::values_and_named_leases(&store, &f.clock).await;
        store
            .put_value("jssdk:wx1:token", b"93_TOKEN_IN_CLEAR", f.clock.now() + TTL)
            .await
            .unwrap();
        drop(store);
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(
            !bytes.windows(17).any(|w| w == b"93_TOKEN_IN_CLEAR"),
            "sealed at rest"
        );
        let reopened = f.open();
        assert_eq!(
            reopened
                .get_value("jssdk:wx1:token")
                .await
                .unwrap()
                .as_deref(),
            Some(b"93_TOKEN_IN_CLEAR".as_slice()),
            "survives a restart"
        );
        drop(reopened);
        let other_secret = f.open_with(&[7u8; 32]);
        assert_eq!(
            other_secret.get_value("jssdk:wx1:token").await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn the_file_holds_no_token_id_or_openid_in_clear() {
        let f = Fixture::new();
        let id = SessionId::generate();
        {
            let store = f.open();
            store
                .put(&id.storage_key(), &f.session("o-visible-openid"))
                .await
                .unwrap();
        }
        let bytes = std::fs::read(f.path()).unwrap();
        let cookie = id.cookie_value();
        for secret in [ACCESS, REFRESH, &cookie, "o-visible-openid"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} readable in the file"
            );
        }
    }

    #[tokio::test]
    async fn records_sealed_under_another_secret_are_no_session() {
        let f = Fixture::new();
        let key = {
            let store = f.open();
            put_new(&store, &f.session("o1")).await
        };
        let store = f.open_with(b"a-rotated-session-secret-of-32-bytes-or-more");
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert_eq!(
            store.count().await.unwrap(),
            1,
            "still held until it expires"
        );
    }

    #[tokio::test]
    async fn an_already_expired_session_is_not_stored() {
        let f = Fixture::new();
        let store = f.open();
        let session = f.session("o1");
        let key = put_new(&store, &session).await;
        f.clock.advance(TTL);
        store.put(&key, &session).await.unwrap();
        let txn = store.inner.db.begin_read().unwrap();
        assert_eq!(txn.open_table(SESSIONS).unwrap().len().unwrap(), 0);
    }
}
