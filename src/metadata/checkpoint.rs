//! Folding the write-ahead log back into the database in the background, so that writes
//! do not pay for copying it while holding the writer lock.
//!
//! SQLite's own automatic checkpoint runs inside the commit that pushes the log past a
//! thousand pages: that commit copies every page of the log into the database and flushes
//! both while every other writer waits behind it. A collection, which writes many pages in
//! a short time, set it off about a dozen times per run (a quarter of its time in `perf`),
//! and each one stalled the pushes queued behind it. So the automatic checkpoint is off
//! (`wal_autocheckpoint = 0` on the writer) and this thread, with its own connection, does
//! the work:
//! - after a commit it waits [`PACE`], then runs a PASSIVE checkpoint, which copies what it
//!   can without waiting for (or blocking) any reader or writer; a page written many times
//!   meanwhile is copied once;
//! - the log only starts over from its beginning when a writer finds it entirely copied.
//!   Under steady writes a copy running beside them never catches up, and the log grows
//!   without end (7 GB while the GC benchmark filled its store). So when the log holds
//!   [`RESTART_FRAMES`], the thread takes the writer lock after the passive copy and
//!   finishes it (a RESTART checkpoint): the next commit starts the log over. Writers
//!   wait for the pages committed since the passive copy and for the flushes of the log
//!   and the database, once per few MiB of log, instead of for the whole copy at every
//!   thousand pages;
//! - once everything is copied and no commit has come for [`IDLE`], it makes the log
//!   start over too, so that the next commits overwrite its beginning. The file keeps its
//!   size, up to the writer's `journal_size_limit` ([`super::LOG_KEPT_BYTES`]), which the
//!   first commit after a restart cuts it to. Emptying the file instead (a TRUNCATE
//!   checkpoint, as this thread first did) made the first burst of writes after every
//!   quiet second grow it again, and a flush of a file that grows waits for the file
//!   system's journal: a collection started after two quiet seconds took 54 ms instead of
//!   41 ms (medians of 12, ext4 with a journal, `bench/gc` store, 1,000 blobs each).
//!
//! The thread takes SQLite's own write lock only while it holds Bosun's writer lock, so a
//! writer never meets a busy database; its connection never waits for readers (a busy
//! answer means "later").
//!
//! Correctness rests on two things:
//! - SQLite 3.51.3 or later (the bundled one is): older versions have a race in which a
//!   checkpoint on a fully copied log, while another connection's commit starts the log
//!   over, later skips frames (sqlite.org/wal.html#walresetbug). With one read-write
//!   connection it could not happen; this thread is a second one;
//! - a checkpoint flushes the log before it copies and the database before the log may
//!   start over (its connection runs with `synchronous=NORMAL`, like the writer), so no
//!   frame is overwritten before its page is durable in the database. A checkpoint whose
//!   I/O fails may have been told of a lost write-back of the log that the group commit
//!   would then never hear of, so it stops every later acknowledgement as a failed group
//!   flush does ([`LogFailure`]), unless the failure was a refused write (an exceeded
//!   quota; see `failed`). Other failures are logged (once a minute) and retried after
//!   the next commit; the log only grows meanwhile.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

use super::WriterLock;
use super::group_commit::LogFailure;
use crate::throttle::Throttle;

/// How long commits gather before a checkpoint copies them.
pub(super) const PACE: Duration = Duration::from_millis(250);
/// How long the registry must be quiet before the log is emptied.
pub(super) const IDLE: Duration = Duration::from_secs(1);
/// A log this long (in pages; 4 MiB) is made to start over (SQLite's own threshold).
const RESTART_FRAMES: i64 = 1000;

#[derive(Default)]
struct State {
    /// Commits since the last checkpoint started.
    commits: u64,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The checkpoint thread; stopped (and joined) when dropped.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread with its own connection to the database at `path`.
    /// `failure` is the group commit's (none when commits are not flushed).
    pub(super) fn start(path: &Path, writer: WriterLock, failure: Option<LogFailure>) -> super::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::ZERO)?;
        // If it closes last, it leaves the log's blocks for the next start (`reserve.rs`).
        super::reserve::keep_log_on_close(&conn)?;
        conn.pragma_update(None, "journal_size_limit", -1)?;
        // Checkpoints flush in NORMAL mode (never in OFF): see the module's header.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new().name("bosun-checkpoint".into()).spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&conn, &writer, &worker, failure.as_ref())
            }));
            if let Err(panic) = ran {
                tracing::error!(
                    panic = crate::panic_message(&*panic),
                    "the metadata log's background copy stopped on a bug; /healthz fails until a restart"
                );
            }
        })?;
        Ok(Checkpointer { shared, thread: Some(thread) })
    }

    /// Tells the thread that a transaction committed.
    pub(super) fn committed(&self) {
        // Poisoned only if the thread died holding it, which `died` reports; commits go on.
        let mut state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.commits += 1;
        if state.commits == 1 {
            self.shared.wake.notify_one();
        }
    }

    /// Whether the thread ended without being stopped (a bug): the log would then grow
    /// without end, so the server reports itself unhealthy, for a supervisor to restart it.
    pub(super) fn died(&self) -> bool {
        self.thread.as_ref().is_some_and(std::thread::JoinHandle::is_finished)
    }

    /// Stops the thread and closes its connection (again: nothing).
    pub(super) fn stop(&mut self) {
        self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, writer: &WriterLock, shared: &Shared, failure: Option<&LogFailure>) {
    let lock = || shared.state.lock().expect("checkpoint state poisoned");
    loop {
        let state = shared.wake.wait_while(lock(), |s| s.commits == 0 && !s.stop).expect("checkpoint state poisoned");
        if state.stop {
            return;
        }
        drop(state);
        loop {
            // Let commits gather for a pace (a stop cuts it short).
            let (mut state, _) =
                shared.wake.wait_timeout_while(lock(), PACE, |s| !s.stop).expect("checkpoint state poisoned");
            if state.stop {
                return;
            }
            state.commits = 0;
            drop(state);
            let copied_all = match copy(conn, writer) {
                Ok(all) => all,
                Err(e) => {
                    failed(&e, failure);
                    break;
                }
            };
            let (state, quiet) = shared
                .wake
                .wait_timeout_while(lock(), IDLE, |s| s.commits == 0 && !s.stop)
                .expect("checkpoint state poisoned");
            if state.stop {
                return;
            }
            drop(state);
            if quiet.timed_out() && copied_all {
                match checkpoint(conn, Some(writer), "RESTART") {
                    Ok(done) if done.complete() => break,
                    Ok(_) => {}
                    Err(e) => {
                        failed(&e, failure);
                        break;
                    }
                }
            }
            // More commits came, or a reader kept some pages in the log or held it open:
            // try again.
        }
    }
}

/// Copies the log into the database, beside the writers; once the log is long, finishes
/// under the writer lock so that it starts over. True if all of it is in the database.
fn copy(conn: &Connection, writer: &WriterLock) -> rusqlite::Result<bool> {
    let done = checkpoint(conn, None, "PASSIVE")?;
    // Even a copy that reports everything copied only copied the log as it was when the
    // copy started: under steady writes, commits have added to it since, and the next
    // writer finds it incomplete and appends instead of starting over.
    if done.log < RESTART_FRAMES {
        return Ok(done.complete());
    }
    Ok(checkpoint(conn, Some(writer), "RESTART")?.complete())
}

/// Reports a failed checkpoint. One that failed on I/O stops acknowledgements: a failed
/// flush may have consumed the report of a lost write-back of the log, which the group
/// commit would then never hear of. Except a write that the file system refused (an
/// exceeded disk quota is reported so, where a full disk is `SQLITE_FULL`): a checkpoint
/// flushes the log before it copies a page, and records pages as copied only once the
/// database is flushed, so a copy cut short by a refused write, part-written pages
/// included, is copied again whole from the flushed log by the next one.
fn failed(e: &rusqlite::Error, failure: Option<&LogFailure>) {
    static RETRIED: Throttle = Throttle::new();
    match (e.sqlite_error_code(), failure) {
        (Some(ErrorCode::SystemIoFailure), Some(failure)) if !super::is_failed_write(e) => {
            failure.set();
            tracing::error!(error = %e, "a checkpoint of the metadata log failed on I/O; no further write will be acknowledged");
        }
        // Retried after each commit while the disk stays full: once a minute is enough.
        _ => {
            if let Some(held_back) = RETRIED.due() {
                tracing::warn!(error = %e, held_back, "a checkpoint of the metadata log failed; the log grows until one succeeds");
            }
        }
    }
}

/// What a checkpoint reported.
struct Done {
    busy: bool,
    /// Pages in the log.
    log: i64,
    /// Pages of it now in the database.
    copied: i64,
}

impl Done {
    fn complete(&self) -> bool {
        !self.busy && self.copied >= self.log
    }
}

/// Runs one checkpoint of `mode`, holding the writer lock if given.
fn checkpoint(conn: &Connection, writer: Option<&WriterLock>, mode: &str) -> rusqlite::Result<Done> {
    let _writers_wait = writer.map(|w| w.blocking_lock());
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Done { busy: r.get::<_, i64>(0)? != 0, log: r.get(1)?, copied: r.get(2)? })
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Instant;

    use crate::metadata::{Metadata, MetadataError, uploads};
    use crate::oci::{RepoName, UploadId};

    /// A write that failed (an exceeded quota) is retried; a failed flush, or any other
    /// I/O failure, stops acknowledgements.
    #[test]
    fn only_a_failed_write_leaves_acknowledgements_on() {
        use rusqlite::ffi;
        let failure_after = |extended_code| {
            let failure = super::LogFailure::default();
            let e = rusqlite::Error::SqliteFailure(ffi::Error::new(extended_code), None);
            super::failed(&e, Some(&failure));
            failure.get()
        };
        assert!(!failure_after(ffi::SQLITE_IOERR_WRITE));
        assert!(!failure_after(ffi::SQLITE_FULL));
        assert!(!failure_after(ffi::SQLITE_BUSY));
        assert!(failure_after(ffi::SQLITE_IOERR_FSYNC));
        assert!(failure_after(ffi::SQLITE_IOERR_READ));
        assert!(failure_after(ffi::SQLITE_IOERR));
    }

    /// A checkpointer that died would let the log grow without end: the server says it is
    /// unhealthy, so that a supervisor restarts it; commits and the stop still work.
    #[tokio::test]
    async fn a_dead_checkpointer_makes_the_database_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), true).unwrap();
        meta.health().await.unwrap();
        assert!(!meta.checkpointer_stopped());
        // Kill it the way a bug would: a panic while it holds its state.
        let shared = meta.inner.checkpointer.shared.clone();
        let poisoner = shared.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.state.lock().unwrap();
            panic!("a bug");
        })
        .join();
        add_uploads(&meta, 1, 0).await;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !meta.inner.checkpointer.died() {
            assert!(Instant::now() < deadline, "the checkpointer did not stop");
            shared.wake.notify_all();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(meta.health().await.unwrap_err().contains("background copy"));
        assert!(meta.checkpointer_stopped() && !meta.log_failed(), "the metric tells it apart");
        add_uploads(&meta, 1, 1).await;
    }

    #[test]
    fn the_linked_sqlite_has_the_wal_reset_fix() {
        // 3.51.3: a second read-write connection (this thread's) is safe from then on.
        assert!(rusqlite::version_number() >= 3_051_003, "SQLite {} is too old", rusqlite::version());
    }

    async fn add_uploads(meta: &Metadata, n: i64, at: i64) {
        meta.write(move |c| {
            let name: RepoName = "r".parse().unwrap();
            for i in 0..n {
                uploads::create(c, &UploadId::random(), &name, at + i)?;
            }
            Ok::<_, MetadataError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        // With flushed commits, as a registry runs by default.
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), true).unwrap();
        // Writers that always have a commit queued, as under a busy registry.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (meta, stop) = (meta.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut at = w * 1_000_000_000;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        add_uploads(&meta, 20, at).await;
                        at += 20;
                    }
                })
            })
            .collect();
        // The log header's checkpoint sequence number changes each time the log starts
        // over from its beginning.
        let wal = dir.path().join("metadata.sqlite-wal");
        let sequence = || {
            let mut header = [0u8; 16];
            std::fs::File::open(&wal).and_then(|mut f| f.read_exact(&mut header)).ok().map(|()| header[12..16].to_vec())
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let (mut restarts, mut last) = (0, None);
        while restarts < 3 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let now = sequence();
            if last.is_some() && now != last {
                restarts += 1;
            }
            last = now;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(restarts, 3, "the log never started over while writes went on");
    }

    #[tokio::test]
    async fn a_quiet_database_has_its_log_copied_back_and_started_over_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.sqlite");
        let wal = dir.path().join("metadata.sqlite-wal");
        let meta = Metadata::open(&db, false).unwrap();
        for batch in 0..5 {
            add_uploads(&meta, 200, batch * 1000).await;
        }
        let log_len = std::fs::metadata(&wal).unwrap().len();
        assert!(log_len > 0, "commits go to the log first");
        // The wal-index (the -shm file, sqlite.org/walformat.html) holds the number of valid
        // frames in the log at offset 16 and the number copied into the database at 96.
        let shm = dir.path().join("metadata.sqlite-shm");
        let frames = || {
            let mut index = [0u8; 100];
            std::fs::File::open(&shm).unwrap().read_exact(&mut index).unwrap();
            let at = |o: usize| u32::from_ne_bytes(index[o..o + 4].try_into().unwrap());
            (at(16), at(96))
        };
        let deadline = Instant::now() + super::PACE + super::IDLE + std::time::Duration::from_secs(10);
        while let (log, copied) = frames()
            && (log == 0 || copied < log)
        {
            assert!(Instant::now() < deadline, "the log was never copied back");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The log header's checkpoint sequence number changes when the log starts over.
        let sequence = || {
            let mut header = [0u8; 16];
            std::fs::File::open(&wal).unwrap().read_exact(&mut header).unwrap();
            header[12..16].to_vec()
        };
        let before = sequence();
        // Every commit is in the database file itself: a copy of it alone has them all.
        let alone = dir.path().join("alone.sqlite");
        std::fs::copy(&db, &alone).unwrap();
        let rows: i64 = rusqlite::Connection::open(&alone)
            .unwrap()
            .query_row("SELECT count(*) FROM uploads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1000);
        // Quiet for a while: the log must still be there, at its size.
        tokio::time::sleep(super::PACE + super::IDLE * 2).await;
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), log_len, "the quiet log was cut");
        // The next commit overwrites the log's beginning: the file neither grew nor was
        // emptied (either makes flushes wait for the file system's journal).
        add_uploads(&meta, 200, 9000).await;
        assert_ne!(sequence(), before, "the log did not start over");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), log_len);
    }

    /// A log that one large write grew past `LOG_KEPT_BYTES` gives the space back when it
    /// starts over, instead of keeping the largest size it ever had.
    #[tokio::test]
    async fn a_log_grown_past_the_kept_size_is_cut_back_when_it_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("metadata.sqlite-wal");
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        let kept = super::super::LOG_KEPT_BYTES as u64;
        let chunk = "x".repeat(1 << 20);
        let chunks = (kept >> 20) as i64 + 8;
        meta.write(move |c| {
            for i in 0..chunks {
                c.execute(
                    "INSERT INTO retention_plans (created_at, plan) VALUES (?1, ?2)",
                    rusqlite::params![i, chunk],
                )?;
            }
            Ok::<_, MetadataError>(())
        })
        .await
        .unwrap();
        assert!(std::fs::metadata(&wal).unwrap().len() > kept);
        // Copied back and quiet, then one more commit: the log starts over, and the file is
        // cut to the kept size.
        tokio::time::sleep(super::PACE + super::IDLE * 2).await;
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            add_uploads(&meta, 1, 0).await;
            if std::fs::metadata(&wal).unwrap().len() <= kept {
                return;
            }
            assert!(Instant::now() < deadline, "the log kept {} bytes", std::fs::metadata(&wal).unwrap().len());
            tokio::time::sleep(super::PACE + super::IDLE).await;
        }
    }
}
