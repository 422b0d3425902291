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
//! A clean stop keeps the room: SQLite removes the log and its index when the last
//! connection closes, or cuts the log to nothing when it is told to keep it, and a
//! registry stopped, its disk then filled by something else, could not even open its
//! database again (the index needs blocks at once). So the read-write connections keep
//! the log (`SQLITE_FCNTL_PERSIST_WAL`, [`keep_log_on_close`]) with no size limit when
//! they close (the writer's limit is lifted at shutdown, `Inner`'s drop): the next start
//! finds the files with their blocks. It costs the start nothing measurable: the index is
//! kept too, so the log is not scanned again (a start beside a 33 MiB log, with the page
//! cache dropped, was serving after 25 ms).
//!
//! Its limits: on copy-on-write file systems (btrfs, ZFS) allocated blocks do not
//! guarantee that a write finds room; a log removed by hand, or by a crash's recovery
//! elsewhere, is allocated again only if the room is still free (if not, that is logged); and every metadata write uses the room, so a
//! disk that stays full while the database file cannot grow to take in the log can use
//! it up. New upload sessions, the writes clients repeat most on a full disk, stop
//! earlier, under `min_free_space` (`storage/space.rs`).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The shared-memory index SQLite keeps beside the log: 32 KiB per 4,096 log pages, so
/// a log of `LOG_KEPT_BYTES` (16,384 pages of 4 KiB) needs 128 KiB; twice that, because
/// the log outgrows that size while a long read keeps it from starting over.
const INDEX_RESERVE_BYTES: i64 = 256 << 10;

/// Allocates `log_bytes` of the log's blocks, and room for its index, beside the database
/// at `database` (the files SQLite made when it opened it).
pub(super) fn reserve_log_room(database: &Path, log_bytes: i64) {
    for (suffix, bytes) in [("-wal", log_bytes), ("-shm", INDEX_RESERVE_BYTES)] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        if let Err(e) = allocate(Path::new(&name), bytes) {
            tracing::warn!(
                file = %Path::new(&name).display(),
                bytes,
                error = %e,
                "could not reserve disk space for the metadata log; on a full disk, deletions may then fail until space is freed by other means"
            );
        }
    }
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

/// Allocates the first `bytes` of the file's blocks, keeping its size. A missing file is
/// no error (SQLite makes the index only when it needs it).
fn allocate(path: &Path, bytes: i64) -> std::io::Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // SAFETY: fallocate(2) on a descriptor this function owns; no pointers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, bytes) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
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

    /// Closing the database leaves the log and its index with their blocks: the writer
    /// closes last, which SQLite would otherwise let remove the log or cut it to nothing.
    /// And the database file alone holds everything, as an operator's copy of it needs.
    #[tokio::test]
    async fn a_closed_database_keeps_its_log_room_and_is_whole_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.sqlite");
        let meta = crate::metadata::Metadata::open(&db, false).unwrap();
        let write =
            |sql: &'static str| meta.write(move |c| Ok::<_, crate::metadata::MetadataError>(c.execute_batch(sql)?));
        write("CREATE TABLE t (x)").await.unwrap();
        // A read leaves an idle reader open.
        meta.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?)).await.unwrap();
        write("INSERT INTO t VALUES (1)").await.unwrap();
        drop(meta);
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&db, copy.path().join("alone.sqlite")).unwrap();
        let alone = rusqlite::Connection::open(copy.path().join("alone.sqlite")).unwrap();
        assert_eq!(alone.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
        for (suffix, room) in [("-wal", super::super::LOG_KEPT_BYTES as u64), ("-shm", 32 << 10)] {
            let file = std::fs::metadata(dir.path().join(format!("metadata.sqlite{suffix}"))).unwrap();
            assert!(file.blocks() * 512 >= room, "{suffix}: {} blocks of 512 bytes", file.blocks());
        }
        // And the next start reads it back whole.
        let meta = crate::metadata::Metadata::open(&db, false).unwrap();
        let x: i64 = meta.read(|c| Ok(c.query_row("SELECT x FROM t", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(x, 1);
    }
}
