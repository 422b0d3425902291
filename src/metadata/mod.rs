//! The metadata store: repositories, tags, manifests, blobs and the references between
//! them, in an embedded transactional database (SQLite in WAL mode).
//!
//! It is the single source of truth. Storage is asked only for bytes; every "does this
//! exist, may this repository read it, who references it" question is answered here.
//!
//! Access goes through [`Metadata::read`] and [`Metadata::write`]: a closure runs on a
//! blocking thread with a connection (reads) or inside one transaction (writes). The query
//! modules below are plain functions over a connection, so the registry core composes
//! several of them into one transaction: a write is all or nothing.

pub mod accounting;
pub mod blobs;
mod checkpoint;
pub mod counts;
pub mod gc;
pub mod gc_pause;
mod group_commit;
pub mod history;
pub mod manifests;
pub mod quota;
pub mod repositories;
mod reserve;
pub mod retention;
pub mod tags;
mod upgrade;
pub mod uploads;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::storage::space::{DiskSpace, disk_space};
use checkpoint::Checkpointer;
use group_commit::GroupCommit;

/// The schema of a new database, at the newest version.
const SCHEMA: &str = include_str!("schema.sql");
/// Upgrades of older databases, in order: `MIGRATIONS[i]` takes version `i + 1` to `i + 2`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/2.sql"),
    include_str!("migrations/3.sql"),
    include_str!("migrations/4.sql"),
    include_str!("migrations/5.sql"),
    include_str!("migrations/6.sql"),
    include_str!("migrations/7.sql"),
    include_str!("migrations/8.sql"),
    include_str!("migrations/9.sql"),
    include_str!("migrations/10.sql"),
    include_str!("migrations/11.sql"),
];
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64 + 1;
/// A commit that failed, as the error to tell. SQLite reports a full disk as
/// `SQLITE_FULL`, but an exceeded disk quota (a volume's project quota, say) as a failed
/// write, `SQLITE_IOERR_WRITE`, the same as a device error (`unixWrite` in sqlite3.c); the
/// errno of the failed call tells them apart, so that a client whose push ran into the
/// quota hears that storage is full (507), as for a full disk, not that the server broke.
fn commit_failure(conn: &Connection, e: rusqlite::Error) -> MetadataError {
    match failed_write_errno(conn, &e) {
        Some(libc::EDQUOT) => MetadataError::Io(std::io::Error::new(std::io::ErrorKind::QuotaExceeded, e)),
        _ => e.into(),
    }
}

/// The errno of the write that `e` says failed on `conn`, if `e` is a failed write.
fn failed_write_errno(conn: &Connection, e: &rusqlite::Error) -> Option<i32> {
    // SAFETY: the handle of a connection that is open, used by the thread that holds it.
    is_failed_write(e).then(|| unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) })
}

/// Whether `e` is a write that the file system refused (`SQLITE_IOERR_WRITE`): an exceeded
/// quota, a device error, a file past its size limit; not a failed flush.
fn is_failed_write(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_IOERR_WRITE)
}

/// A connection to a new database with the current schema (the directory holds it), for
/// the query modules' tests.
#[cfg(test)]
pub(crate) fn fresh_database() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.sqlite");
    drop(Metadata::open(&path, false).unwrap());
    (dir, Connection::open(&path).unwrap())
}

/// How long a health check waits for a read before it calls the database unhealthy.
const HEALTH_READ_LIMIT: Duration = Duration::from_secs(3);
/// Readers kept open for reuse; more are opened on demand under load.
const IDLE_READERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata database task failed: {0}")]
    Task(String),
    /// A copy to simulate on could not be made ([`Metadata::simulate_on_copy`]).
    #[error("no copy of the metadata database: {0}")]
    NoCopy(String),
    #[error("metadata database files: {0}")]
    Io(#[from] std::io::Error),
    /// Flushing the log failed: nothing is acknowledged until a restart, whatever the
    /// cause (a full disk included: freeing space does not bring back a lost write-back).
    #[error("flushing the metadata log failed: {0}")]
    LogFlush(std::io::Error),
    #[error("inconsistent data: {0}")]
    Corrupt(String),
    #[error("metadata database has schema version {found}, this Bosun knows {expected}")]
    SchemaVersion { found: i64, expected: i64 },
    /// An older database opened with [`SchemaChange::Refused`].
    #[error(
        "metadata database has schema version {found}, older than this Bosun's {expected}: `bosun serve` upgrades \
         it (the release that wrote it cannot open it afterwards); a command on a stopped instance does not"
    )]
    NotUpgraded { found: i64, expected: i64 },
    /// A database without Bosun's schema (an empty file) opened with
    /// [`SchemaChange::Refused`].
    #[error(
        "{0} holds no Bosun metadata (no schema): a command on a stopped instance does not make a data directory of it"
    )]
    NoSchema(String),
}

impl MetadataError {
    /// The disk (or the volume's quota) is full: not a bug, and freeing space ends it.
    pub fn is_full(&self) -> bool {
        match self {
            MetadataError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => f.code == rusqlite::ErrorCode::DiskFull,
            MetadataError::Io(io) => is_full(io),
            _ => false,
        }
    }
}

/// No space left: the disk is full, or the user's quota on it is used up.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Whether opening a database may write Bosun's schema into it: create it in an empty one,
/// or upgrade an older one. Only a server's start does: a command on a stopped instance
/// (`bosun gc --dry-run`, `--status`) must not make the data directory unreadable to the
/// release that wrote it, nor make a data directory of a file that was none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaChange {
    Allowed,
    Refused,
}

pub type Result<T> = std::result::Result<T, MetadataError>;

#[derive(Clone)]
pub struct Metadata {
    inner: Arc<Inner>,
}

struct Inner {
    path: std::path::PathBuf,
    writer: WriterLock,
    readers: Mutex<Vec<Connection>>,
    /// Flushes commits to disk; none when the operator turned `sync_writes` off.
    group: Option<GroupCommit>,
    /// Folds the log back into the database beside the writers.
    checkpointer: Checkpointer,
    /// Makes every copy for a simulation fail (tests of the fallback).
    #[cfg(test)]
    fail_copies: std::sync::atomic::AtomicBool,
    /// The log's index file as `reserve` opened it, closed after every connection (fields
    /// drop in order, after `Drop::drop`): see `reserve::reserve_log_room`.
    _index_file: Option<std::fs::File>,
}

impl Drop for Inner {
    /// Closing: the log is copied into the database and left with its blocks for the next
    /// start (`reserve::settle_log`). The checkpoint thread stops first, so that nothing
    /// holds the writer, and the idle readers close, so that the writer closes last.
    fn drop(&mut self) {
        self.checkpointer.stop();
        self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        let Ok(writer) = self.writer.conn.try_lock() else {
            tracing::warn!("a write still runs at shutdown; the metadata log's room may not outlast this stop");
            return;
        };
        if let Err(e) = reserve::settle_log(&writer) {
            tracing::warn!(
                error = %e,
                "settling the metadata log at shutdown failed: the database file alone may lack the last commits (the log has them), and the log's room may not outlast this stop"
            );
        }
    }
}

/// The one writing connection, behind a first-come-first-served lock (a collection's next
/// transaction queues behind the pushes that arrived while its last one ran), with a count
/// of who is queued for it right now: a long run of small writes ends its transaction as
/// soon as one arrives (see [`Metadata::write_each_unflushed`]).
#[derive(Clone)]
pub(super) struct WriterLock {
    conn: Arc<tokio::sync::Mutex<Connection>>,
    waiting: Arc<AtomicUsize>,
}

impl WriterLock {
    fn new(conn: Connection) -> WriterLock {
        WriterLock { conn: Arc::new(tokio::sync::Mutex::new(conn)), waiting: Arc::new(AtomicUsize::new(0)) }
    }

    async fn lock(&self) -> tokio::sync::OwnedMutexGuard<Connection> {
        let _queued = Queued::new(&self.waiting);
        self.conn.clone().lock_owned().await
    }

    /// For threads outside the runtime (the checkpointer).
    pub(super) fn blocking_lock(&self) -> tokio::sync::MutexGuard<'_, Connection> {
        let _queued = Queued::new(&self.waiting);
        self.conn.blocking_lock()
    }
}

/// Counts a writer as queued while it lives (also when a waiting request is dropped).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(waiting: &'a AtomicUsize) -> Queued<'a> {
        waiting.fetch_add(1, Ordering::Relaxed);
        Queued(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection to a copy of the database; the file goes once the connection is closed
/// (fields drop in order).
struct SimulationCopy {
    conn: Connection,
    _file: CopyFile,
}

/// The file of a [`SimulationCopy`], beside the database, removed when dropped (with any
/// file SQLite made beside it). One left by a crash is removed at the next start
/// ([`remove_stale_copies`]).
struct CopyFile {
    path: std::path::PathBuf,
}

/// How the copies' file names start, after the database's own name.
const COPY_SUFFIX: &str = ".simulation-";

impl CopyFile {
    fn new(database: &Path) -> CopyFile {
        let mut name = database.file_name().expect("the database path names a file").to_owned();
        name.push(format!("{COPY_SUFFIX}{}", uuid::Uuid::new_v4().simple()));
        CopyFile { path: database.with_file_name(name) }
    }
}

impl Drop for CopyFile {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The directory holding the database (`.` for a bare file name).
fn database_dir(database: &Path) -> &Path {
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Removes the simulation copies a crashed process left beside the database. One that
/// cannot be removed is logged, not fatal: it only takes space.
fn remove_stale_copies(database: &Path) {
    let Some(name) = database.file_name() else { return };
    let mut prefix = name.to_owned();
    prefix.push(COPY_SUFFIX);
    let prefix = prefix.to_string_lossy().into_owned();
    let entries = match std::fs::read_dir(database_dir(database)) {
        Ok(entries) => entries,
        Err(e) => return tracing::warn!(error = %e, "could not look for simulation copies left by a crash"),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix)
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a simulation copy left by a crash");
        }
    }
}

/// Free space a copy needs beside the database: the database and its log, once for the
/// copy and once more for what the simulation changes in it (its own log), and room left
/// for the registry's writes meanwhile.
fn copy_space_needed(database: &Path) -> std::io::Result<u64> {
    let size = |suffix: &str| {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        std::fs::metadata(path).map(|m| m.len()).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(0),
            _ => Err(e),
        })
    };
    Ok(2 * (size("")? + size("-wal")?) + COPY_HEADROOM)
}

/// Free space a copy leaves for everything else, at least.
const COPY_HEADROOM: u64 = 1 << 30;

/// How a write transaction ends.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Commit,
    /// Committed without waiting for the disk (see [`Metadata::write_unflushed`]).
    CommitUnflushed,
    Rollback,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL: readers never wait for the writer. synchronous=NORMAL: a commit survives a
    // crash of the process as soon as it returns; surviving power loss is the group
    // commit's job (`group_commit.rs`), which flushes the log outside the writer lock.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints are the background checkpointer's job (`checkpoint.rs`), never a commit's.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", LOG_KEPT_BYTES)?;
    // Savepoints and statements keep the pages they change in a sub-journal, which SQLite
    // spills to a temporary file past 64 KiB: a retention plan (then one savepoint around
    // a simulated run over the whole registry) spent a third of its time writing that file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    apply_read_tuning(conn, WRITER_CACHE_KIB)
}

/// The size the log file keeps when it starts over (`checkpoint.rs`): writes overwrite it
/// instead of growing it, which on ext4 lets a flush skip the file system's journal. A
/// collection of 1,000 blobs writes about 7 MiB of log. Its blocks are allocated when the
/// database opens (`reserve.rs`), so that deleting works on a full disk.
const LOG_KEPT_BYTES: i64 = 64 << 20;

/// The free space a write that adds rows needs ([`Metadata::room_to_add`]): room for the
/// checkpoints to grow the database by what was added since the last one (a manifest push
/// adds a few pages of 4 KiB, and a checkpoint follows a quarter second after the last
/// commit). Small, so that a disk is "full" for metadata only when it is full.
pub const ROOM_TO_ADD: u64 = 1 << 20;

/// Page cache per connection, KiB: the writer walks indexes of the whole registry during
/// collections; readers mostly fetch single rows.
const WRITER_CACHE_KIB: i64 = 32 * 1024;
const READER_CACHE_KIB: i64 = 8 * 1024;
/// Prepared statements kept per connection: more than Bosun has.
const STATEMENT_CACHE: usize = 256;

/// Memory-mapped reads (no read system call per page), the page cache size, and a fixed
/// query plan per statement.
fn apply_read_tuning(conn: &Connection, cache_kib: i64) -> rusqlite::Result<()> {
    // Without the query planner stability guarantee, SQLite (3.52 on) re-prepares a cached
    // statement every time it is run with a `column = ?` bound to 0 or 1, a small integer
    // it plans for separately, so every lookup in the first repository (id 1) was parsed
    // and planned again: manifest GETs ran at half speed. Bosun's queries have one good
    // plan each, and there are no statistics to choose among plans.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // rusqlite keeps 16 prepared statements per connection by default, and Bosun has about
    // 70: a collection and the requests around it evicted each other's statements, and
    // parsing SQL again took 8 % of the server's CPU under back-to-back collections.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(())
}

impl Metadata {
    /// Opens (creating if needed) the database at `path`; `sync` makes every commit
    /// durable against power loss before it returns.
    pub fn open(path: &Path, sync: bool) -> Result<Metadata> {
        Metadata::open_with(path, sync, SchemaChange::Allowed)
    }

    /// [`Metadata::open`], creating or upgrading the schema only if `change` allows.
    pub fn open_with(path: &Path, sync: bool, change: SchemaChange) -> Result<Metadata> {
        let mut writer = Connection::open(path)?;
        // SQLite opens a file it may not write read-only, without a word: every write
        // would then fail (a database left owned by root when the service runs as a user).
        if writer.is_readonly(rusqlite::MAIN_DB)? {
            return Err(MetadataError::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is read-only for this process: the whole data directory must be writable", path.display()),
            )));
        }
        // Read before anything is set up, which writes (the log, its room): a refusal
        // leaves the file as it was.
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 && change == SchemaChange::Refused {
            return Err(MetadataError::NoSchema(path.display().to_string()));
        }
        configure(&writer)?;
        reserve::keep_log_on_close(&writer)?;
        // The log is named after the database's real path (SQLite resolves links).
        let real_path = std::fs::canonicalize(path)?;
        let group = if sync { Some(GroupCommit::new(&real_path)) } else { None };
        match version {
            0 => {
                let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            SCHEMA_VERSION => {}
            older @ 1..SCHEMA_VERSION if change == SchemaChange::Refused => {
                return Err(MetadataError::NotUpgraded { found: older, expected: SCHEMA_VERSION });
            }
            older @ 1..SCHEMA_VERSION => upgrade::upgrade(&mut writer, older)?,
            found => {
                return Err(MetadataError::SchemaVersion { found, expected: SCHEMA_VERSION });
            }
        }
        // Whatever an earlier process committed (a crash leaves commits that were never
        // flushed) is made durable before this one builds on it: reconcile may remove bytes
        // on the strength of a row it does not find here.
        if let Some(group) = &group {
            group.flush_blocking()?;
        }
        remove_stale_copies(path);
        let index_file = reserve::reserve_log_room(&real_path, LOG_KEPT_BYTES);
        let writer = WriterLock::new(writer);
        Ok(Metadata {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                checkpointer: Checkpointer::start(path, writer.clone(), group.as_ref().map(GroupCommit::failure))?,
                writer,
                readers: Mutex::new(Vec::new()),
                group,
                #[cfg(test)]
                fail_copies: std::sync::atomic::AtomicBool::new(false),
                _index_file: index_file,
            }),
        })
    }

    fn reader(&self) -> Result<Connection> {
        if let Some(conn) = self.inner.readers.lock().expect("reader pool poisoned").pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.inner.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        apply_read_tuning(&conn, READER_CACHE_KIB)?;
        Ok(conn)
    }

    /// Runs `f` with a read-only connection (a consistent snapshot for its duration).
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = this.reader()?;
            let result = {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                f(&tx)
            };
            let mut idle = this.inner.readers.lock().expect("reader pool poisoned");
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| MetadataError::Task(e.to_string()))?
    }

    /// Runs `f` inside one write transaction, committed if `f` returns `Ok` and rolled back
    /// otherwise. Writers are serialized.
    pub async fn write<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<MetadataError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        self.write_tx(f, Ending::Commit).await
    }

    /// Like [`Metadata::write`], but the commit does not wait for the disk: a power loss
    /// may undo it until the next flushed commit (every other write is one) makes it
    /// durable together with everything before it, because the log is written in order.
    /// Only for work whose loss is harmless and redone later: a collection's progress.
    pub async fn write_unflushed<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<MetadataError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        self.write_tx(f, Ending::CommitUnflushed).await
    }

    /// Bytes free, and the size, of the file system that holds the database (and, on
    /// filesystem storage, the blobs): for `/metrics`.
    pub fn disk_space(&self) -> std::io::Result<DiskSpace> {
        disk_space(database_dir(&self.inner.path))
    }

    /// Whether the database's disk has room for a write that adds rows (a manifest, a tag,
    /// a mount, a new upload session): `Err((available, floor))` if it has less than
    /// [`ROOM_TO_ADD`]. Below that, a checkpoint may find no room to grow the database
    /// into; the log then grows into the room allocated ahead for it (`reserve.rs`), and
    /// every added row eats that room until deletes and collections, which need it to free
    /// space, fail too. Those are never held to it. A disk whose space cannot be read is
    /// taken to have room (a full one still answers `SQLITE_FULL`).
    pub fn room_to_add(&self) -> std::result::Result<(), (u64, u64)> {
        match self.disk_space() {
            Ok(space) if space.available < ROOM_TO_ADD => Err((space.available, ROOM_TO_ADD)),
            _ => Ok(()),
        }
    }

    /// Whether a flush of the log has failed: from then on no write is acknowledged, and
    /// only a restart (after checking the disk) recovers (`group_commit.rs`).
    pub fn log_failed(&self) -> bool {
        self.inner.group.as_ref().is_some_and(GroupCommit::has_failed)
    }

    /// Whether the thread that copies the log into the database stopped (a bug): the log
    /// then grows without end, until a restart.
    pub fn checkpointer_stopped(&self) -> bool {
        self.inner.checkpointer.died()
    }

    /// Whether the store can serve: its log flushes, and a read answers. The reason if not.
    pub async fn health(&self) -> std::result::Result<(), String> {
        if self.log_failed() {
            return Err("a flush of the metadata log failed; no write is acknowledged until Bosun restarts (check the disk first)".into());
        }
        if self.checkpointer_stopped() {
            return Err("the background copy of the metadata log into the database stopped; restart Bosun".into());
        }
        // A read of the schema's page: `SELECT 1` alone reads nothing from the file.
        let read = self.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?));
        match tokio::time::timeout(HEALTH_READ_LIMIT, read).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the metadata database does not answer: {e}")),
            Err(_) => Err(format!("the metadata database did not answer within {HEALTH_READ_LIMIT:?}")),
        }
    }

    /// Runs `f` on each item and returns the results in order, in as few write transactions
    /// as the other writers allow: a transaction ends after the item during which another
    /// writer queued, so that writer waits for one item and the commit of those before it,
    /// and on a quiet registry all the items commit together (each commit writes every page
    /// it touched to the log again). If `f` fails, the items of that transaction are rolled
    /// back and the earlier transactions stay: their results come back with the error, for
    /// the caller to account for what was done. Unflushed, like
    /// [`Metadata::write_unflushed`], so only for work whose loss is redone later.
    pub async fn write_each_unflushed<I, R, E, F>(&self, items: Vec<I>, f: F) -> (Vec<R>, std::result::Result<(), E>)
    where
        I: Send + 'static,
        R: Send + 'static,
        E: From<MetadataError> + Send + 'static,
        F: Fn(&Transaction<'_>, &I) -> std::result::Result<R, E> + Clone + Send + 'static,
    {
        let mut done = Vec::with_capacity(items.len());
        let mut left = items.into_iter();
        while left.len() > 0 {
            let (waiting, f) = (self.inner.writer.waiting.clone(), f.clone());
            let committed = self
                .write_unflushed(move |tx| {
                    let mut results = Vec::new();
                    for item in left.by_ref() {
                        results.push(f(tx, &item)?);
                        if waiting.load(Ordering::Relaxed) > 0 {
                            break;
                        }
                    }
                    Ok::<_, E>((results, left))
                })
                .await;
            match committed {
                Ok((results, rest)) => {
                    done.extend(results);
                    left = rest;
                }
                Err(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    /// Runs `f` on a private copy of the database as it is now, in a transaction that is
    /// rolled back: what [`Metadata::simulate`] does, but without holding the writer while
    /// `f` runs. For simulations over the whole registry (a retention plan: seconds for
    /// tens of thousands of tags), which would otherwise hold up every push. The copy is
    /// taken in one step from one read snapshot (writers go on meanwhile), into a file
    /// beside the database that is removed afterwards: it costs the database's size, read
    /// and written once. It is made only where twice the database and its log, and 1 GiB
    /// besides, are free; where it cannot be (a full disk, when a plan is most wanted), `f`
    /// runs on the database itself, as [`Metadata::simulate`].
    pub async fn simulate_on_copy<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<MetadataError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        let this = self.clone();
        let copied = tokio::task::spawn_blocking(move || this.copy())
            .await
            .map_err(|e| E::from(MetadataError::Task(e.to_string())))?;
        let mut copy = match copied {
            Ok(copy) => copy,
            Err(e) => {
                tracing::warn!(error = %e, "could not copy the metadata database to simulate on; simulating on the database itself, which holds up writers meanwhile");
                return self.simulate(f).await;
            }
        };
        tokio::task::spawn_blocking(move || {
            let tx =
                copy.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(MetadataError::from)?;
            f(&tx)
        })
        .await
        .map_err(|e| E::from(MetadataError::Task(e.to_string())))?
    }

    /// A copy of the database from one read snapshot, for [`Metadata::simulate_on_copy`].
    fn copy(&self) -> Result<SimulationCopy> {
        #[cfg(test)]
        if self.inner.fail_copies.load(Ordering::Relaxed) {
            return Err(MetadataError::NoCopy("copies fail in this test".into()));
        }
        let needed = copy_space_needed(&self.inner.path)?;
        let free = disk_space(database_dir(&self.inner.path))?.available;
        if free < needed {
            return Err(MetadataError::NoCopy(format!(
                "{free} bytes are free beside the database; a copy needs {needed} (twice the database, and 1 GiB left for the registry)"
            )));
        }
        let file = CopyFile::new(&self.inner.path);
        let mut conn = Connection::open(&file.path)?;
        // The copy is thrown away: never flushed, not even the backup's own commit.
        conn.pragma_update(None, "synchronous", "OFF")?;
        let source = self.reader()?;
        // All pages at once: a copy in steps starts over whenever a writer commits. A source
        // that is busy or locked is no copy at all (SQLite reports that as a step result).
        let step = rusqlite::backup::Backup::new(&source, &mut conn)?.step(-1)?;
        if step != rusqlite::backup::StepResult::Done {
            return Err(MetadataError::NoCopy(format!("the backup stopped: {step:?}")));
        }
        let mut idle = self.inner.readers.lock().expect("reader pool poisoned");
        if idle.len() < IDLE_READERS {
            idle.push(source);
        }
        drop(idle);
        // Set up as the writer is (see `configure`), but never flushed: the file is thrown
        // away.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        apply_read_tuning(&conn, WRITER_CACHE_KIB)?;
        Ok(SimulationCopy { conn, _file: file })
    }

    /// Runs `f` inside a write transaction that is always rolled back: a dry run sees
    /// exactly what a real run would do, cascades included, and changes nothing.
    pub async fn simulate<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<MetadataError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        self.write_tx(f, Ending::Rollback).await
    }

    async fn write_tx<T, E, F>(&self, f: F, ending: Ending) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<MetadataError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        let mut conn = self.inner.writer.lock().await;
        let this = self.clone();
        let (value, seq) = tokio::task::spawn_blocking(move || -> std::result::Result<_, E> {
            let outcome = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(MetadataError::from)?;
                let value = f(&tx)?;
                if ending == Ending::Rollback {
                    tx.rollback().map_err(MetadataError::from)?;
                    return Ok((value, None));
                }
                if let Err(e) = tx.commit() {
                    return Err(E::from(commit_failure(&conn, e)));
                }
                this.inner.checkpointer.committed();
                // Numbered while the writer is still held, so numbers follow commit order.
                Ok((value, this.inner.group.as_ref().map(GroupCommit::committed)))
            })();
            // The writer lock goes before `this`: if `this` is the last handle, dropping it
            // joins the checkpoint thread, which may be waiting for that lock.
            drop(conn);
            outcome
        })
        .await
        .map_err(|e| E::from(MetadataError::Task(e.to_string())))??;
        // The writer is free again: the flush, shared with whoever committed meanwhile,
        // happens outside it.
        if let (Ending::Commit, Some(seq), Some(group)) = (ending, seq, &self.inner.group) {
            group.flush_through(seq).await.map_err(|e| E::from(MetadataError::LogFlush(e)))?;
        }
        Ok(value)
    }

    /// Makes every transaction committed so far durable (with `sync_writes`; otherwise a
    /// no-op), without holding up writers.
    pub async fn flush(&self) -> Result<()> {
        match &self.inner.group {
            Some(group) => group.flush_through(group.last()).await.map_err(MetadataError::LogFlush),
            None => Ok(()),
        }
    }
}

/// How far the clock is moved ahead, in ms: always 0 except in tests that move it (through
/// the test-only `/admin/clock`) to see what days of pushes, pulls and policies do.
static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Moves the clock ahead (tests only; see `CLOCK_OFFSET_MS`).
pub fn advance_clock(ms: i64) {
    CLOCK_OFFSET_MS.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch: the unit of every timestamp column.
pub fn now_ms() -> i64 {
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    real.unwrap_or(0) + CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use rusqlite::{OptionalExtension, StatementStatus, params};

    use super::*;

    /// Names of the files beside the database.
    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// A simulation on a copy lets writers commit while it runs, sees the database as it
    /// was when it started, changes nothing, and leaves no file behind.
    #[tokio::test]
    async fn a_simulation_on_a_copy_holds_up_no_writer_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        let count = "SELECT COUNT(*) FROM repositories";
        meta.write(|c| repositories::ensure(c, &"before".parse().unwrap(), 0)).await.unwrap();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let (written, write_done) = std::sync::mpsc::channel::<()>();
        let copying = meta.clone();
        let simulation = tokio::spawn(async move {
            copying
                .simulate_on_copy(move |c| {
                    c.execute("DELETE FROM repositories WHERE name = 'before'", [])?;
                    started.send(()).unwrap();
                    // The write below commits meanwhile; if the simulation held the writer,
                    // it would wait for this one, which waits for it.
                    write_done.recv_timeout(Duration::from_secs(10)).expect("the simulation held up the writer");
                    Ok::<_, MetadataError>(c.query_row(count, [], |r| r.get::<_, i64>(0))?)
                })
                .await
        });
        running.await.unwrap();
        meta.write(|c| repositories::ensure(c, &"during".parse().unwrap(), 0)).await.unwrap();
        written.send(()).unwrap();
        // The copy saw its own delete, and not the write made after it was taken (either
        // would leave a repository).
        assert_eq!(simulation.await.unwrap().unwrap(), 0);
        assert_eq!(meta.read(move |c| Ok(c.query_row(count, [], |r| r.get::<_, i64>(0))?)).await.unwrap(), 2);
        assert!(files_in(dir.path()).iter().all(|f| !f.contains(COPY_SUFFIX)), "{:?}", files_in(dir.path()));
    }

    /// Where no copy can be made, the simulation runs on the database itself, and still
    /// changes nothing.
    #[tokio::test]
    async fn a_simulation_that_cannot_copy_runs_on_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        meta.write(|c| repositories::ensure(c, &"kept".parse().unwrap(), 0)).await.unwrap();
        meta.inner.fail_copies.store(true, Ordering::Relaxed);
        let count = "SELECT COUNT(*) FROM repositories";
        let seen = meta
            .simulate_on_copy(move |c| {
                c.execute("DELETE FROM repositories", [])?;
                Ok::<_, MetadataError>(c.query_row(count, [], |r| r.get::<_, i64>(0))?)
            })
            .await
            .unwrap();
        assert_eq!(seen, 0);
        assert_eq!(meta.read(move |c| Ok(c.query_row(count, [], |r| r.get::<_, i64>(0))?)).await.unwrap(), 1);
    }

    /// A copy left by a crash is removed when the database is opened again.
    #[test]
    fn copies_left_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.sqlite");
        drop(Metadata::open(&path, false).unwrap());
        let stale = CopyFile::new(&path);
        std::fs::write(&stale.path, b"left by a crash").unwrap();
        std::fs::write(dir.path().join("metadata.sqlite.other"), b"not a copy").unwrap();
        drop(Metadata::open(&path, false).unwrap());
        let files = files_in(dir.path());
        assert!(files.iter().all(|f| !f.contains(COPY_SUFFIX)), "{files:?}");
        assert!(files.contains(&"metadata.sqlite.other".to_owned()), "{files:?}");
    }

    /// A cached statement run again with a repository id of 1 keeps its plan; re-preparing
    /// it on every run halved read throughput in the first repository.
    #[tokio::test]
    async fn lookups_with_small_integers_are_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        // The shape of `manifests::by_tag`, which a manifest GET by tag runs.
        const LOOKUP: &str = "SELECT m.id FROM manifests m JOIN tags t ON t.manifest_id = m.id WHERE t.repository_id = ?1 AND t.name = ?2";
        let reprepares = meta
            .read(|tx| {
                for repository in [1, 1, 0, 1] {
                    let found: Option<i64> =
                        tx.prepare_cached(LOOKUP)?.query_row(params![repository, "latest"], |r| r.get(0)).optional()?;
                    assert_eq!(found, None);
                }
                Ok(tx.prepare_cached(LOOKUP)?.get_status(StatementStatus::RePrepare))
            })
            .await
            .unwrap();
        assert_eq!(reprepares, 0);
    }

    /// The errno of a commit's failed write is the one the file system gave, as an
    /// exceeded quota's EDQUOT will be: a write past the file size limit fails with EFBIG.
    /// The limit is set in a child process running only this test, so that no other test
    /// feels it.
    #[test]
    fn a_failed_commit_write_reports_its_errno() {
        const CHILD: &str = "BOSUN_TEST_FILE_SIZE_LIMITED";
        if std::env::var_os(CHILD).is_none() {
            use std::os::unix::process::CommandExt;
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child.args(["--exact", "metadata::tests::a_failed_commit_write_reports_its_errno"]).env(CHILD, "1");
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                child.pre_exec(|| {
                    // A write past the limit then fails with EFBIG instead of killing.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let limit = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
                    match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
            let out = child.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("limited.sqlite")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        for _ in 0..64 {
            // As the writer commits: the log is written at the commit.
            let tx = conn.transaction().unwrap();
            tx.execute("INSERT INTO t VALUES (zeroblob(65536))", []).unwrap();
            if let Err(e) = tx.commit() {
                assert_eq!(super::failed_write_errno(&conn, &e), Some(libc::EFBIG), "{e}");
                assert!(matches!(super::commit_failure(&conn, e), MetadataError::Sqlite(_)), "EFBIG is no quota");
                return;
            }
        }
        panic!("4 MiB were written under a 1 MiB file size limit");
    }

    /// The schemas released versions created, oldest first; and those that some versions
    /// had on main before their migration was changed (which version 11 sets right).
    const RELEASED: &[(i64, &str)] = &[
        (1, include_str!("migrations/released/1.sql")),
        (2, include_str!("migrations/released/2.sql")),
        (3, include_str!("migrations/released/3.sql")),
        (4, include_str!("migrations/released/4.sql")),
        (5, include_str!("migrations/released/5.sql")),
        (6, include_str!("migrations/released/6-0dfb3ec.sql")),
        (6, include_str!("migrations/released/6.sql")),
        (7, include_str!("migrations/released/7-65e7827.sql")),
        (7, include_str!("migrations/released/7.sql")),
        (8, include_str!("migrations/released/8-ea71fd7.sql")),
        (8, include_str!("migrations/released/8.sql")),
        (9, include_str!("migrations/released/9.sql")),
        (10, include_str!("migrations/released/10.sql")),
    ];

    /// What a schema is made of, as SQLite sees it: each table's columns, foreign keys and
    /// indexes, and each trigger's text. Table text is left out: an upgraded table keeps the
    /// text it was created with, plus what `ALTER TABLE` appended.
    fn shape(conn: &Connection) -> Vec<String> {
        let strings = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.collect::<rusqlite::Result<_>>().unwrap()
        };
        let mut shape = Vec::new();
        for table in strings("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name") {
            shape.extend(strings(&format!(
                "SELECT '{table} column ' || name || ' ' || type || ' ' || \"notnull\" || ' ' || IFNULL(dflt_value, '-') || ' ' || pk
                   FROM pragma_table_xinfo('{table}') ORDER BY cid"
            )));
            shape.extend(strings(&format!(
                "SELECT '{table} references ' || \"table\" || '(' || IFNULL(\"to\", '') || ') from ' || \"from\"
                   FROM pragma_foreign_key_list('{table}') ORDER BY id, seq"
            )));
            shape.extend(strings(&format!(
                "SELECT '{table} index ' || l.name || ' ' || l.\"unique\" || ' ' || l.partial || ' ' || i.seqno || ' ' || IFNULL(i.name, '-')
                   FROM pragma_index_list('{table}') l, pragma_index_xinfo(l.name) i WHERE i.key ORDER BY l.name, i.seqno"
            )));
        }
        shape.extend(strings(
            "SELECT 'trigger ' || name || ' ' || replace(replace(sql, char(10), ' '), '  ', ' ')
               FROM sqlite_schema WHERE type = 'trigger' ORDER BY name",
        ));
        shape.extend(strings(
            "SELECT 'index sql ' || name || ' ' || sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        ));
        shape
    }

    /// Every released schema, with data in it, upgrades to exactly what a new database
    /// gets: same columns, keys, indexes and triggers, counts filled in, every reference
    /// intact. Version 1's blobs marked as being deleted are gone (their bytes are
    /// reconcile's).
    #[test]
    fn every_released_schema_upgrades_to_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.sqlite");
        drop(Metadata::open(&fresh, false).unwrap());
        let want = shape(&Connection::open(&fresh).unwrap());
        for (i, &(version, released)) in RELEASED.iter().enumerate() {
            let path = dir.path().join(format!("{i}-v{version}.sqlite"));
            {
                let conn = Connection::open(&path).unwrap();
                conn.pragma_update(None, "foreign_keys", "ON").unwrap();
                conn.execute_batch(released).unwrap();
                conn.execute_batch(
                    "INSERT INTO repositories (id, name, created_at) VALUES (1, 'a', 0), (2, 'b', 0);
                     INSERT INTO blobs (digest, size, created_at, touched_at) VALUES
                         ('sha256:shared', 1, 0, 0), ('sha256:only-a', 2, 0, 0), ('sha256:unlinked', 3, 0, 0);
                     INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES
                         (1, 'sha256:shared', 0), (2, 'sha256:shared', 0), (1, 'sha256:only-a', 0);
                     INSERT INTO manifests (id, repository_id, digest, media_type, payload, created_at, touched_at)
                         VALUES (1, 1, 'sha256:m', 'application/vnd.oci.image.manifest.v1+json', x'7b7d', 0, 0);
                     INSERT INTO manifests (id, repository_id, digest, media_type, artifact_type, payload, created_at, touched_at)
                         VALUES (2, 1, 'sha256:empty-type', 'application/vnd.oci.image.manifest.v1+json', '',
                                 CAST('{\"config\":{\"mediaType\":\"application/x-config\"}}' AS BLOB), 0, 0),
                                (3, 1, 'sha256:empty-type-index', 'application/vnd.oci.image.index.v1+json', '',
                                 CAST('{\"manifests\":[]}' AS BLOB), 0, 0);
                     INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES (1, 1, 'sha256:shared');
                     INSERT INTO tag_deletions (repository, tag, digest, manifest_id, deleted_at, actor, reason, restorable)
                         VALUES ('a', 'v1', 'sha256:m', 1, 0, 'api', 'tag deleted through the API', 1),
                                ('a', 'v1', 'sha256:m', 1, 1, 'api', 'tag deleted through the API', 1);",
                )
                .unwrap();
                // An image with a non-distributable layer that its client pushed anyway: the
                // repository holds it, but versions before 11 did not reference it.
                let (c, f) = ("c".repeat(64), "f".repeat(64));
                let foreign = format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                        "config":{{"mediaType":"application/x-config","digest":"sha256:{c}","size":1}},
                        "layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                                    "digest":"sha256:{f}","size":2}}]}}"#
                );
                conn.execute_batch(&format!(
                    "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES ('sha256:{c}', 1, 0, 0), ('sha256:{f}', 2, 0, 0);
                     INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (2, 'sha256:{c}', 0), (2, 'sha256:{f}', 0);
                     INSERT INTO manifests (id, repository_id, digest, media_type, payload, created_at, touched_at)
                         VALUES (4, 2, 'sha256:foreign', 'application/vnd.oci.image.manifest.v1+json', CAST('{foreign}' AS BLOB), 0, 0);
                     INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES (4, 2, 'sha256:{c}');"
                ))
                .unwrap();
                if version == 1 {
                    conn.execute("INSERT INTO blobs (digest, size, created_at, touched_at, state) VALUES ('sha256:marked', 4, 0, 0, 1)", [])
                        .unwrap();
                }
                // Rows in the tables version 11 makes again, which must come through.
                conn.execute_batch(
                    "INSERT INTO gc_runs (id, kind, trigger, dry_run, started_at, finished_at, manifests_removed, tags_removed,
                                          links_removed, blobs_removed, uploads_removed, repositories_removed,
                                          bytes_removed, missing_blobs, error)
                     VALUES (7, 'collect', 'api', 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, NULL)",
                )
                .unwrap();
                if version >= 6 {
                    conn.execute_batch(
                        "INSERT INTO quota_groups (id, key, bytes) VALUES (5, 'team/*', 3);
                         INSERT INTO quota_members (repository_id, group_id) VALUES (1, 5);
                         INSERT INTO quota_blobs (group_id, digest, links) VALUES (5, 'sha256:shared', 1);",
                    )
                    .unwrap();
                    // As a server with a quota leaves it: counting every link, which the
                    // upgrade's steps must not do.
                    super::quota::start_counting(&conn).unwrap();
                }
                if version >= 8 {
                    conn.execute(
                        "INSERT INTO gc_pause (id, paused_at, paused_by, reason) VALUES (1, 11, 'cli', 'window')",
                        [],
                    )
                    .unwrap();
                }
                conn.pragma_update(None, "user_version", version).unwrap();
            }
            let upgraded = Metadata::open(&path, false).unwrap();
            // Foreign keys, off during the upgrade, are on again for the connection that
            // made it: a reference to nothing is refused at once.
            let broken = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(
                upgraded.write(|c| {
                    c.execute(
                        "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES (1, 'x', 999, 0)",
                        [],
                    )
                    .map_err(MetadataError::from)
                }),
            );
            assert!(broken.is_err(), "version {version}: a tag of no manifest was written after the upgrade");
            drop(upgraded);
            let conn = Connection::open(&path).unwrap();
            assert_eq!(conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap(), SCHEMA_VERSION);
            assert_eq!(shape(&conn), want, "version {version} upgraded");
            let mut stmt = conn.prepare("SELECT digest, ref_count, link_count FROM blobs ORDER BY digest").unwrap();
            let blobs: Vec<(String, i64, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let (config, layer) = (format!("sha256:{}", "c".repeat(64)), format!("sha256:{}", "f".repeat(64)));
            let expected = [
                (config.as_str(), 1, 1),
                (layer.as_str(), 1, 1),
                ("sha256:only-a", 0, 1),
                ("sha256:shared", 1, 2),
                ("sha256:unlinked", 0, 0),
            ];
            assert_eq!(blobs, expected.map(|(d, r, l)| (d.to_owned(), r, l)), "version {version} upgraded");
            // Only the tag's latest deletion can still be undone (version 9, and 11 for a
            // database made before 9.sql closed the others).
            let open: Vec<i64> = conn
                .prepare("SELECT deleted_at FROM tag_deletions WHERE restorable = 1")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(open, [1], "version {version} upgraded");
            // The rows of the tables made again came through, with their ids.
            let run: (i64, i64, i64, Option<i64>) = conn
                .query_row("SELECT id, bytes_removed, dangling_references, grace_period_ms FROM gc_runs", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .unwrap();
            assert_eq!(run, (7, 9, 0, None), "version {version} upgraded");
            if version >= 6 {
                let quota: (i64, String, i64, i64) = conn
                    .query_row(
                        "SELECT g.id, g.key, g.bytes, b.links FROM quota_groups g
                           JOIN quota_members m ON m.group_id = g.id JOIN quota_blobs b ON b.group_id = g.id",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .unwrap();
                assert_eq!(quota, (5, "team/*".to_owned(), 3, 1), "version {version} upgraded");
            }
            if version >= 8 {
                let pause: (String, Option<i64>) =
                    conn.query_row("SELECT reason, until FROM gc_pause", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
                assert_eq!(pause, ("window".to_owned(), None), "version {version} upgraded");
            }
            // A quota group's bytes are a cache that a recount sets right: no CHECK may stop
            // the write that takes them below zero (version 6 had one at first).
            conn.execute_batch(
                "UPDATE quota_groups SET bytes = -1; INSERT INTO quota_groups (key, bytes) VALUES ('g', -1)",
            )
            .unwrap_or_else(|e| panic!("version {version} upgraded: {e}"));
            // A deletion recorded before version 5 does not know the tag's times.
            let times: (Option<i64>, Option<i64>) = conn
                .query_row("SELECT pushed_at, pulled_at FROM tag_deletions", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!(times, (None, None), "version {version} upgraded");
            // An empty artifactType became a missing one (version 10; from version 10 on
            // none is stored).
            let types: Vec<Option<String>> = conn
                .prepare("SELECT artifact_type FROM manifests WHERE id IN (2, 3) ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            if version < 10 {
                assert_eq!(types, [Some("application/x-config".to_owned()), None], "version {version} upgraded");
            }
            assert_eq!(conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
            assert_eq!(
                conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get::<_, i64>(0)).unwrap(),
                0
            );
            drop(stmt);
            drop(conn);
            // And it opens again as it is.
            drop(Metadata::open(&path, false).unwrap());
        }
    }

    /// The link counts follow inserts, repeated links and deletes; a link needs its blob,
    /// and a linked blob cannot be deleted, as a foreign key would enforce.
    #[test]
    fn links_are_counted_and_checked_like_a_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        drop(Metadata::open(&dir.path().join("m.sqlite"), false).unwrap());
        let conn = Connection::open(dir.path().join("m.sqlite")).unwrap();
        conn.execute_batch(
            "INSERT INTO repositories (id, name, created_at) VALUES (1, 'a', 0), (2, 'b', 0);
             INSERT INTO blobs (digest, size, created_at, touched_at) VALUES ('sha256:x', 1, 0, 0);",
        )
        .unwrap();
        let links = || {
            conn.query_row("SELECT link_count FROM blobs WHERE digest = 'sha256:x'", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let link = |repo: i64| {
            conn.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?1, 'sha256:x', 0)
                 ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
                [repo],
            )
        };
        link(1).unwrap();
        link(1).unwrap();
        link(2).unwrap();
        assert_eq!(links(), 2);
        assert!(conn.execute("DELETE FROM blobs WHERE digest = 'sha256:x'", []).is_err());
        assert!(
            conn.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (1, 'sha256:none', 0)",
                []
            )
            .is_err()
        );
        assert!(conn.execute("UPDATE repository_blobs SET digest = 'sha256:y' WHERE repository_id = 1", []).is_err());
        conn.execute("DELETE FROM repository_blobs WHERE repository_id = 1", []).unwrap();
        assert_eq!(links(), 1);
        conn.execute("DELETE FROM repository_blobs WHERE repository_id = 2", []).unwrap();
        assert_eq!(links(), 0);
        conn.execute("DELETE FROM blobs WHERE digest = 'sha256:x'", []).unwrap();
    }

    /// A manifest's blob reference needs its repository's link, and keeps that link and
    /// the blob from being deleted; the counts follow. Triggers do it, as foreign keys did.
    #[test]
    fn blob_references_are_counted_and_checked_like_a_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        drop(Metadata::open(&dir.path().join("m.sqlite"), false).unwrap());
        let conn = Connection::open(dir.path().join("m.sqlite")).unwrap();
        conn.execute_batch(
            "INSERT INTO repositories (id, name, created_at) VALUES (1, 'a', 0), (2, 'b', 0);
             INSERT INTO blobs (digest, size, created_at, touched_at) VALUES ('sha256:x', 1, 0, 0);
             INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (1, 'sha256:x', 0);
             INSERT INTO manifests (id, repository_id, digest, media_type, payload, created_at, touched_at)
                 VALUES (1, 1, 'sha256:m', 'application/vnd.oci.image.manifest.v1+json', x'7b7d', 0, 0);",
        )
        .unwrap();
        let refer = |repo: i64, digest: &str| {
            conn.execute(
                "INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES (1, ?1, ?2)",
                rusqlite::params![repo, digest],
            )
        };
        let counts = || {
            conn.query_row(
                "SELECT b.ref_count, l.ref_count FROM blobs b, repository_blobs l
                  WHERE b.digest = 'sha256:x' AND l.repository_id = 1 AND l.digest = 'sha256:x'",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap()
        };
        assert!(refer(2, "sha256:x").is_err(), "repository 2 does not link the blob");
        assert!(refer(1, "sha256:none").is_err(), "no such blob");
        refer(1, "sha256:x").unwrap();
        assert_eq!(counts(), (1, 1));
        assert!(conn.execute("DELETE FROM repository_blobs WHERE repository_id = 1", []).is_err());
        assert!(conn.execute("UPDATE manifest_blobs SET repository_id = 2", []).is_err());
        // The reference alone keeps the blob, whatever its links say.
        conn.execute_batch("DROP TRIGGER blobs_linked").unwrap();
        assert!(conn.execute("DELETE FROM blobs WHERE digest = 'sha256:x'", []).is_err());
        conn.execute("DELETE FROM manifest_blobs WHERE manifest_id = 1", []).unwrap();
        assert_eq!(counts(), (0, 0));
        conn.execute("DELETE FROM repository_blobs WHERE repository_id = 1", []).unwrap();
        conn.execute("DELETE FROM blobs WHERE digest = 'sha256:x'", []).unwrap();
    }

    /// An upgrade that would leave a broken reference is refused, and leaves the database
    /// as it was.
    #[test]
    fn an_upgrade_that_finds_a_broken_reference_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(RELEASED[1].1).unwrap();
            // Version 2's foreign keys would have refused this; a damaged file need not.
            conn.execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO repositories (id, name, created_at) VALUES (1, 'a', 0);
                 INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (1, 'sha256:gone', 0);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        match Metadata::open(&path, false) {
            Err(MetadataError::Corrupt(message)) => assert!(
                message.contains("1 broken reference(s) (repository_blobs (repository 1, sha256:gone) -> blobs)"),
                "{message}"
            ),
            other => panic!("expected a refused upgrade, got {:?}", other.map(|_| ())),
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap(), 2);
        let indexed: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'repository_blobs_digest'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(indexed, 1, "the version-2 schema is intact");
    }

    /// A version-3 reference to a blob its repository does not link (its foreign key would
    /// have refused it) is found by the upgrade, which then changes nothing.
    #[test]
    fn an_upgrade_finds_a_reference_without_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(RELEASED[2].1).unwrap();
            conn.execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO repositories (id, name, created_at) VALUES (1, 'a', 0);
                 INSERT INTO manifests (id, repository_id, digest, media_type, payload, created_at, touched_at)
                     VALUES (1, 1, 'sha256:m', 'application/vnd.oci.image.manifest.v1+json', x'7b7d', 0, 0);
                 INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES (1, 1, 'sha256:gone');
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        match Metadata::open(&path, false) {
            Err(MetadataError::Corrupt(message)) => {
                assert!(message.contains("(manifest_blobs (manifest 1, sha256:gone) -> repository_blobs"), "{message}")
            }
            other => panic!("expected a refused upgrade, got {:?}", other.map(|_| ())),
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap(), 3);
    }

    /// An upgrade that would leave a column of the current schema missing (a step changed
    /// after the database was made) refuses, and leaves the database as it was.
    #[test]
    fn an_upgrade_that_leaves_a_column_missing_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(RELEASED.last().unwrap().1).unwrap();
            conn.execute_batch("ALTER TABLE tag_deletions DROP COLUMN pulled_at").unwrap();
            conn.pragma_update(None, "user_version", 10).unwrap();
        }
        match Metadata::open(&path, false) {
            Err(MetadataError::Corrupt(message)) => {
                assert!(message.contains("columns missing (tag_deletions.pulled_at)"), "{message}")
            }
            other => panic!("opened: {:?}", other.map(|_| ())),
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap(), 10);
    }

    /// A database from a newer Bosun is refused, not guessed at.
    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(matches!(Metadata::open(&path, false), Err(MetadataError::SchemaVersion { .. })));
    }

    /// A long run of small writes is one transaction while it is alone, and gives way to a
    /// writer that queues during an item right after that item. A failure rolls back only
    /// its own transaction, and the results of those committed before come back with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_of_writes_is_one_transaction_until_a_writer_queues() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        let insert = |tx: &Transaction<'_>, i: i64| tx.execute("INSERT INTO scratch VALUES (?1)", [i]);
        meta.write(|tx| Ok::<_, MetadataError>(tx.execute("CREATE TABLE scratch (i INTEGER)", [])?)).await.unwrap();
        let rows = || {
            meta.read(|tx| {
                let mut stmt = tx.prepare("SELECT i FROM scratch ORDER BY rowid")?;
                Ok::<_, MetadataError>(stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<i64>>>()?)
            })
        };

        // Alone: a failure at the last item rolls every item back, so all were in one transaction.
        let (done, failed) = meta
            .write_each_unflushed((0..100).collect(), move |tx, &i| {
                insert(tx, i)?;
                if i == 99 {
                    return Err(MetadataError::Task("the last item fails".into()));
                }
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        assert!(done.is_empty(), "no transaction committed");
        assert_eq!(rows().await.unwrap(), Vec::<i64>::new());

        // A writer queues while item 10 runs: it commits right after item 10. Item 50 then
        // fails: 11 to 49, in the transaction after the writer's, are rolled back.
        let (reached, at_ten) = std::sync::mpsc::channel();
        let waiting = meta.inner.writer.waiting.clone();
        let run = tokio::spawn({
            let meta = meta.clone();
            async move {
                meta.write_each_unflushed((0..100).collect(), move |tx, &i| {
                    if i == 10 {
                        reached.send(()).unwrap();
                        let deadline = std::time::Instant::now() + Duration::from_secs(10);
                        while waiting.load(Ordering::Relaxed) == 0 {
                            assert!(std::time::Instant::now() < deadline, "the other writer never queued");
                            std::thread::yield_now();
                        }
                    }
                    insert(tx, i)?;
                    if i == 50 {
                        return Err(MetadataError::Task("item 50 fails".into()));
                    }
                    Ok::<_, MetadataError>(i)
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || at_ten.recv().unwrap()).await.unwrap();
        meta.write(move |tx| Ok::<_, MetadataError>(insert(tx, -1)?)).await.unwrap();
        let (done, ended) = run.await.unwrap();
        assert!(ended.is_err());
        assert_eq!(done, (0..=10).collect::<Vec<i64>>());
        let expected: Vec<i64> = (0..=10).chain([-1]).collect();
        assert_eq!(rows().await.unwrap(), expected);
    }
}
