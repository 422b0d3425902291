//! Disk space held for the metadata log, so that deleting still works on a full disk.
//!
//! Every metadata write, a DELETE and a collection's removals included, first appends to
//! the write-ahead log. On a disk that pushes have filled to the last block, a log that
//! must grow for that append fails with `SQLITE_FULL`: the very requests that would free
//! space (deleting an image, then collecting it) were refused, and only removing files by
//! hand got the registry going again. So when the database opens, the blocks of the log
//! (up to the size it is kept at anyway, `LOG_KEPT_BYTES`) and of its index file are
//! allocated ahead, without changing the files' sizes (`FALLOC_FL_KEEP_SIZE`): SQLite
//! sees nothing different, and its appends land in blocks that are already the log's.
//! The log starts over in place after each checkpoint (`checkpoint.rs`), so the same
//! blocks serve again.
//!
//! A clean stop keeps the room. SQLite removes the log and its index when the last
//! connection closes (or, told to keep the log, cuts it to nothing while it has a size
//! limit), and a registry stopped, its disk then filled by something else, could not even
//! open its database again. So the read-write connections keep the log
//! (`SQLITE_FCNTL_PERSIST_WAL`, [`keep_log_on_close`]), and at shutdown the writer settles
//! it ([`settle_log`]): everything in it is copied into the database, so that the
//! database file alone is whole (an operator's copy before an upgrade); the log starts
//! over with one frame, so that the next start, which rebuilds the index from the log,
//! reads one frame instead of up to 64 MiB, and a log that grew past its kept size is cut
//! back to it; then the writer's size limit goes, so that closing leaves the log as it
//! is. The index file is cut to a few bytes by the next start and grows again at once
//! (32 KiB per 4,096 frames), into the blocks it just gave back.
//!
//! Its limits: on copy-on-write file systems (btrfs, ZFS) allocated blocks do not
//! guarantee that a write finds room; a log removed by hand, or by another SQLite client
//! (one without `PERSIST_WAL`, such as the `sqlite3` shell) closing the database last,
//! is allocated again only if the room is still free (if not, that is logged); a stop
//! that is not clean (SIGKILL, a crash) leaves the log as it was, to be read whole at the
//! next start; and every metadata write uses the room, so a disk that stays full while
//! the database file cannot grow to take in the log can use it up. New upload sessions,
//! the writes clients repeat most on a full disk, stop earlier, under `min_free_space`
//! (`storage/space.rs`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The shared-memory index SQLite keeps beside the log: 32 KiB per 4,096 log pages, so
/// a log of `LOG_KEPT_BYTES` (16,384 pages of 4 KiB) needs 128 KiB; twice that, because
/// the log outgrows that size while a long read keeps it from starting over.
const INDEX_RESERVE_BYTES: i64 = 256 << 10;

/// Allocates `log_bytes` of the log's blocks, and room for its index, beside the database
/// at `database` (the files SQLite made when it opened it). Returns the index file, which
/// the caller must keep open until SQLite's connections have closed: on Linux, closing any
/// descriptor of a file drops every POSIX lock the process holds on it, SQLite's
/// included, and without SQLite's lock on the index another process opening the database
/// (a backup, a query) takes the index for unused and rebuilds it under the running
/// connections, which then read a truncated mapping (SIGBUS) or a wrong index.
pub(super) fn reserve_log_room(database: &Path, log_bytes: i64) -> Option<File> {
    let mut index = None;
    for (suffix, bytes) in [("-wal", log_bytes), ("-shm", INDEX_RESERVE_BYTES)] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        match allocate(Path::new(&name), bytes) {
            // SQLite locks the index file, not the log.
            Ok(file) if suffix == "-shm" => index = file,
            Ok(_) => {}
            Err(e) => tracing::warn!(
                file = %Path::new(&name).display(),
                bytes,
                error = %e,
                "could not reserve disk space for the metadata log; on a full disk, deletions may then fail until space is freed by other means"
            ),
        }
    }
    index
}

/// Makes `conn` leave the log and its index in place, with their blocks, when it closes.
/// The connection must also have no `journal_size_limit` by then, or SQLite empties the
/// log instead of removing it.
pub(super) fn keep_log_on_close(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let mut keep: std::ffi::c_int = 1;
    // SAFETY: the handle is this open connection's; SQLITE_FCNTL_PERSIST_WAL reads and
    // writes one int through the pointer, which outlives the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut keep).cast(),
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), Some("keeping the log on close".into())))
    }
}

/// At shutdown, with the writer (nothing else may write): copies the log into the
/// database, lets it start over with one frame (cut to the writer's size limit if it grew
/// past it), copies that frame too, then lifts the size limit so that closing keeps the
/// log. Fails if a reader outside this process keeps the copy from finishing.
pub(super) fn settle_log(writer: &rusqlite::Connection) -> rusqlite::Result<()> {
    // Shutdown must not wait long: the supervisor's SIGKILL follows.
    writer.busy_timeout(std::time::Duration::from_secs(1))?;
    // RESTART: everything copied and no reader left on the log, so the next commit starts
    // it over from its beginning.
    checkpoint(writer, "RESTART")?;
    let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
    writer.pragma_update(None, "user_version", version)?;
    checkpoint(writer, "FULL")?;
    writer.pragma_update(None, "journal_size_limit", -1)
}

/// Runs a checkpoint of `mode`; an error unless it copied every frame of the log.
fn checkpoint(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<()> {
    let (busy, log, copied): (i64, i64, i64) =
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if busy == 0 && log == copied {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("a {mode} checkpoint copied {copied} of {log} frames")),
        ))
    }
}

/// Allocates the first `bytes` of the file's blocks, keeping its size; returns the file,
/// open (closing it may drop SQLite's locks: see [`reserve_log_room`]). A missing file is
/// no error (SQLite makes the index only when it needs it).
fn allocate(path: &Path, bytes: i64) -> std::io::Result<Option<File>> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: fallocate(2) on a descriptor this function owns; no pointers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, bytes) };
    if rc == 0 { Ok(Some(file)) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// The blocks are allocated, the size (what SQLite reads) is not changed.
    #[test]
    fn the_log_gets_its_blocks_and_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.sqlite");
        std::fs::write(dir.path().join("metadata.sqlite-wal"), b"frames").unwrap();
        reserve_log_room(&db, 4 << 20);
        let log = std::fs::metadata(dir.path().join("metadata.sqlite-wal")).unwrap();
        assert_eq!(log.len(), 6);
        assert!(log.blocks() * 512 >= 4 << 20, "{} blocks of 512 bytes", log.blocks());
        // No index file yet: nothing to do, and nothing made.
        assert!(!dir.path().join("metadata.sqlite-shm").exists());
    }

    async fn write(meta: &crate::metadata::Metadata, sql: &'static str) {
        meta.write(move |c| Ok::<_, crate::metadata::MetadataError>(c.execute_batch(sql)?)).await.unwrap();
    }

    /// Closing the database leaves the log and its index with their blocks, and a log
    /// that starts over: the next start rebuilds its index from one frame, not from the
    /// megabytes written before the stop.
    #[tokio::test]
    async fn a_closed_database_keeps_its_log_room_and_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.sqlite");
        let meta = crate::metadata::Metadata::open(&db, false).unwrap();
        write(&meta, "CREATE TABLE t (x); INSERT INTO t VALUES (randomblob(4000000));").await;
        // A read leaves an idle reader open.
        meta.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?)).await.unwrap();
        drop(meta);
        for (suffix, room) in [("-wal", super::super::LOG_KEPT_BYTES), ("-shm", INDEX_RESERVE_BYTES)] {
            let file = std::fs::metadata(dir.path().join(format!("metadata.sqlite{suffix}"))).unwrap();
            assert!(file.blocks() * 512 >= room as u64, "{suffix}: {} blocks of 512 bytes", file.blocks());
        }
        let next = rusqlite::Connection::open(&db).unwrap();
        let frames: i64 = next.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1)).unwrap();
        assert!(frames <= 1, "the next start read {frames} frames of the log");
        assert_eq!(next.query_row("SELECT length(x) FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 4_000_000);
    }

    /// With another process's connection open, the writer does not close last, and SQLite
    /// would copy nothing at its close: the database file alone is whole all the same, as
    /// an operator's copy of it made with the server stopped needs.
    #[tokio::test]
    async fn the_database_file_alone_is_whole_after_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.sqlite");
        let meta = crate::metadata::Metadata::open(&db, false).unwrap();
        // Open, and having read (a connection takes its lock on the database at its first
        // read).
        let other = rusqlite::Connection::open(&db).unwrap();
        other.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)).unwrap();
        write(&meta, "CREATE TABLE t (x); INSERT INTO t VALUES (1);").await;
        drop(meta);
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&db, copy.path().join("alone.sqlite")).unwrap();
        let alone = rusqlite::Connection::open(copy.path().join("alone.sqlite")).unwrap();
        assert_eq!(alone.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
        drop(other);
    }
}
