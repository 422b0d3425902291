//! Group commit: making committed transactions durable with one flush of SQLite's
//! write-ahead log shared by every transaction that committed meanwhile, done after the
//! writer lock is released.
//!
//! SQLite runs with `synchronous=NORMAL`, so a commit writes its frames to the log (into
//! the page cache) and returns without flushing. Bosun then flushes the log itself before
//! it acknowledges anything. Why nothing acknowledged can be lost: FULL would flush the
//! same file after the same frames; a checkpoint in NORMAL mode flushes the log before
//! copying it into the database and the database after, so frames that a later restart
//! of the log overwrites are already durable in the database. One difference from FULL:
//! a commit is visible to readers before its flush, so a client may read something (a
//! tag another client is pushing) that a power loss then takes back, but no client is
//! told its write succeeded before that write is on disk.
//! What it gains: a commit's flush never happens under the writer lock (checkpoints flush
//! too, mostly beside the writers: `checkpoint.rs`), and while one flush runs, every
//! commit that lands queues behind it and is covered by the next one.
//! A failed flush stops all acknowledgements until a restart (see `LogFailure`).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set once a flush of the log failed, by the group commit or by a checkpoint (which
/// flushes the log too). Linux reports a failed write-back once, to whoever flushes first,
/// so a later flush could succeed although log frames before it were lost, and SQLite's
/// recovery would then drop every commit after the loss: from then on, nothing is
/// acknowledged.
#[derive(Clone, Default)]
pub(super) struct LogFailure(Arc<AtomicBool>);

impl LogFailure {
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts commits and flushes the log on demand.
pub(super) struct GroupCommit {
    wal: PathBuf,
    /// Commits that have returned so far (each took the next number).
    committed: AtomicU64,
    /// The highest commit number known durable. Held while a flush runs, so callers that
    /// arrive meanwhile wait and then usually find their commit covered.
    durable: tokio::sync::Mutex<u64>,
    /// Shared with the checkpointer.
    failed: LogFailure,
}

impl GroupCommit {
    /// For the database at `database` (its log is `<database>-wal`).
    pub(super) fn new(database: &std::path::Path) -> GroupCommit {
        let mut wal = database.to_owned().into_os_string();
        wal.push("-wal");
        GroupCommit {
            wal: wal.into(),
            committed: AtomicU64::new(0),
            durable: tokio::sync::Mutex::new(0),
            failed: LogFailure::default(),
        }
    }

    /// Numbers a commit; call after the commit returned, while still holding the writer.
    pub(super) fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The number of the last commit so far.
    pub(super) fn last(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Returns once commit `seq` (and every one before it) is on disk.
    pub(super) async fn flush_through(&self, seq: u64) -> io::Result<()> {
        let mut durable = self.durable.lock().await;
        if self.failed.get() {
            return Err(io::Error::other(
                "an earlier flush of the metadata log failed; restart Bosun after checking the disk",
            ));
        }
        if *durable >= seq {
            return Ok(());
        }
        // Every commit numbered up to `target` has written its frames before it was
        // numbered, so the flush below covers them all.
        let target = self.last();
        let (wal, failed) = (self.wal.clone(), self.failed.clone());
        // The failure is recorded by the flush itself, not by this future, which is dropped
        // with its request when a client hangs up: the flush still runs, and its error,
        // which Linux reports only once, must not be lost with the request.
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = std::panic::catch_unwind(|| flush_file(&wal))
                .unwrap_or_else(|_| Err(io::Error::other("the flush of the metadata log panicked")));
            if let Err(e) = &flushed {
                failed.set();
                tracing::error!(error = %e, "flushing the metadata log failed; no further write will be acknowledged");
            }
            flushed
        })
        .await
        .map_err(io::Error::other)?;
        flushed?;
        *durable = target;
        Ok(())
    }

    /// Whether a flush of the log has failed (nothing is acknowledged any more).
    pub(super) fn has_failed(&self) -> bool {
        self.failed.get()
    }

    /// The failure flag, for the checkpointer to set when its own flush of the log fails.
    pub(super) fn failure(&self) -> LogFailure {
        self.failed.clone()
    }

    /// Flushes the log now, from a blocking context (start-up).
    pub(super) fn flush_blocking(&self) -> io::Result<()> {
        flush_file(&self.wal)
    }
}

fn flush_file(wal: &std::path::Path) -> io::Result<()> {
    match File::open(wal) {
        Ok(file) => file.sync_data(),
        // No log: every commit is in the database file, which SQLite flushed before it
        // removed the log.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_flush_covers_every_commit_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        std::fs::write(dir.path().join("db.sqlite-wal"), b"frames").unwrap();
        let group = GroupCommit::new(&db);
        let (a, b) = (group.committed(), group.committed());
        group.flush_through(a).await.unwrap();
        // `b` committed before that flush started: covered without another one.
        assert_eq!(*group.durable.lock().await, b);
        let c = group.committed();
        group.flush_through(c).await.unwrap();
        assert_eq!(*group.durable.lock().await, c);
        // A missing log means nothing is waiting in one.
        std::fs::remove_file(dir.path().join("db.sqlite-wal")).unwrap();
        let d = group.committed();
        group.flush_through(d).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_flush_refuses_every_later_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        // The log's directory is a plain file: opening the log fails (not as "missing").
        std::fs::write(dir.path().join("plain"), b"").unwrap();
        let group = GroupCommit::new(&dir.path().join("plain").join("db.sqlite"));
        let a = group.committed();
        assert!(group.flush_through(a).await.is_err());
        // Even a commit the next flush would cover, and even with nothing new to flush.
        assert!(group.flush_through(a).await.is_err());
        assert!(group.flush_through(0).await.is_err());
    }

    /// A request's future, and the flush it waits for, is dropped when its client hangs
    /// up; the flush goes on, and its failure must still stop acknowledgements.
    #[tokio::test]
    async fn a_flush_that_fails_after_its_caller_left_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        // The log is a FIFO: opening it waits for a writer, so the flush is surely in
        // progress when its caller goes; flushing a FIFO then fails (EINVAL).
        let wal =
            std::ffi::CString::new(dir.path().join("db.sqlite-wal").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(wal.as_ptr(), 0o600) }, 0);
        let group = GroupCommit::new(&db);
        let a = group.committed();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), group.flush_through(a)).await;
        assert!(waiting.is_err(), "the flush ended before its caller left");
        // Let the flush open the log, then fail.
        let _writer = std::fs::OpenOptions::new().write(true).open(dir.path().join("db.sqlite-wal")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !group.has_failed() {
            assert!(std::time::Instant::now() < deadline, "the dropped flush's failure was lost");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(group.flush_through(a).await.is_err());
    }
}
