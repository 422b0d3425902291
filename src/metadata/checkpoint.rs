//! Folding the write-ahead log back into the database in the background, so that no write
//! pays for it while holding the writer lock.
//!
//! SQLite's own automatic checkpoint runs inside the commit that pushes the log past a
//! thousand pages: that commit copies every page of the log into the database and flushes
//! the database while every other writer waits behind it. A collection, which writes many
//! pages in a short time, set it off about a dozen times per run (a quarter of its time in
//! `perf`), and each one stalled the pushes queued behind it. So the automatic checkpoint
//! is off (`wal_autocheckpoint = 0` on the writer) and this thread, with its own
//! connection, does the same work beside the writers:
//! - after a commit it waits [`PACE`], then runs a PASSIVE checkpoint, which copies what it
//!   can without waiting for (or blocking) any reader or writer; the log grows by at most
//!   what a pace's worth of writes adds, and a page written many times meanwhile is copied
//!   once;
//! - once a checkpoint has copied everything and no commit has come for [`IDLE`], it
//!   truncates the log to zero (a TRUNCATE checkpoint that gives up at once if anyone is
//!   busy), so a quiet registry's log takes no space.
//!
//! Durability does not depend on it: every commit is in the log, flushed by the group
//! commit; a checkpoint in NORMAL mode flushes the log before it copies and the database
//! after. A failed checkpoint is logged and retried after the next commit; the log only
//! grows meanwhile.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How long commits gather before a checkpoint copies them.
pub(super) const PACE: Duration = Duration::from_millis(250);
/// How long the registry must be quiet before the log is truncated.
pub(super) const IDLE: Duration = Duration::from_secs(1);

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
    pub(super) fn start(path: &Path) -> super::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        // Never wait for a lock: a busy database means "later", not "block".
        conn.busy_timeout(Duration::ZERO)?;
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new().name("bosun-checkpoint".into()).spawn(move || run(&conn, &worker))?;
        Ok(Checkpointer { shared, thread: Some(thread) })
    }

    /// Tells the thread that a transaction committed.
    pub(super) fn committed(&self) {
        let mut state = self.shared.state.lock().expect("checkpoint state poisoned");
        state.commits += 1;
        if state.commits == 1 {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().expect("checkpoint state poisoned").stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
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
            let copied_all = match passive(conn) {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint of the metadata log failed; the log grows until one succeeds");
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
                match truncate(conn) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "truncating the metadata log failed");
                        break;
                    }
                }
            }
            // More commits came, or a reader kept some pages in the log or held it open:
            // try again.
        }
    }
}

/// Copies what it can; true if the whole log is now in the database.
fn passive(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, copied): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(busy == 0 && copied >= log)
}

/// Empties the log file if nobody is using it right now; false if someone was.
fn truncate(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)).map(|busy| busy == 0)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::metadata::{Metadata, MetadataError, uploads};
    use crate::oci::{RepoName, UploadId};

    #[tokio::test]
    async fn a_quiet_database_has_its_log_copied_back_and_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.sqlite");
        let wal = dir.path().join("metadata.sqlite-wal");
        let meta = Metadata::open(&db, false).unwrap();
        for batch in 0..5 {
            meta.write(move |c| {
                let name: RepoName = "r".parse().unwrap();
                for i in 0..200 {
                    uploads::create(c, &UploadId::random(), &name, batch * 1000 + i)?;
                }
                Ok::<_, MetadataError>(())
            })
            .await
            .unwrap();
        }
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "commits go to the log first");
        let deadline = Instant::now() + super::PACE + super::IDLE + std::time::Duration::from_secs(10);
        while std::fs::metadata(&wal).unwrap().len() > 0 {
            assert!(Instant::now() < deadline, "the log was never emptied");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Every commit is in the database file itself now.
        let rows: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM uploads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1000);
    }
}
