//! The health check a supervisor probes: healthy while the server can serve; failing, with
//! the reason, once a flush of the metadata log has failed (from then on no write is
//! acknowledged, and only a restart recovers); healthy again after the restart.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn the_health_check_fails_once_the_metadata_log_cannot_be_flushed_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    let resp = s.get("/healthz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "ok");
    s.push_image("kept", "v1", &[b"a layer pushed while healthy"]).await;

    // The log can no longer be opened to be flushed (a symbolic link to itself), while
    // SQLite keeps writing through the file it holds open: as a disk that fails writes back.
    let wal = dir.path().join("metadata.sqlite-wal");
    let moved = dir.path().join("metadata.sqlite-wal.moved");
    std::fs::rename(&wal, &moved).unwrap();
    std::os::unix::fs::symlink(&wal, &wal).unwrap();
    let refused = s.http.post(s.url(&format!("/v2/kept/blobs/uploads/?digest={}", sha256(b"late")))).body("late");
    assert_eq!(refused.send().await.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR, "acknowledged unflushed");

    let resp = s.get("/healthz").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("flush of the metadata log failed"), "{body}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_metadata_log_failed"), 1.0);
    // Told apart from a stopped checkpointer, which has its own alert.
    assert_eq!(sample(&metrics, "bosun_metadata_checkpointer_stopped"), 0.0);
    // Reads still work meanwhile.
    s.verify_image("kept", "v1").await.unwrap();

    // The disk is fixed; the supervisor restarts the server.
    s.kill();
    std::fs::remove_file(&wal).unwrap();
    std::fs::rename(&moved, &wal).unwrap();
    let s = Server::start_in(dir.path(), &[]);
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_metadata_log_failed"), 0.0);
    s.verify_image("kept", "v1").await.unwrap();
    s.push_image("kept", "v2", &[b"a layer pushed after the restart"]).await;
}

/// Another process reading the database while the server runs (the README's backup with
/// `sqlite3 .backup`, a monitoring query) leaves the server unharmed, also after a restart
/// on an existing database. SQLite's locks on the log's index file tell other processes
/// that its content is in use; closing any other descriptor of that file drops them all
/// (POSIX locks are per process), after which the other process's open rebuilt the index
/// under the server, whose next read of it died of SIGBUS.
#[tokio::test]
async fn another_process_reading_the_database_leaves_the_server_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start_in(dir.path(), &[]);
    first.push_image("shared/db", "v1", &[b"a layer"]).await;
    first.terminate();
    first.exited_within(std::time::Duration::from_secs(30)).await.expect("a clean stop");
    assert!(dir.path().join("metadata.sqlite-shm").exists(), "the index file is kept across a clean stop");
    let mut s = Server::start_in(dir.path(), &[]);
    s.push_image("shared/db", "t0", &[b"layer 0"]).await;
    // The server holds its lock on the index file (what tells others it is in use).
    use std::os::unix::fs::MetadataExt;
    let index = std::fs::metadata(dir.path().join("metadata.sqlite-shm")).unwrap().ino();
    let pid = s.child.id().to_string();
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    let held = locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&pid.as_str()) && f.get(5).is_some_and(|id| id.ends_with(&format!(":{index}")))
    });
    assert!(held, "the server holds no lock on its index file:\n{locks}");
    for i in 1..40 {
        let other = rusqlite::Connection::open_with_flags(
            dir.path().join("metadata.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let tags: i64 = other.query_row("SELECT COUNT(*) FROM tags", [], |r| r.get(0)).unwrap();
        assert_eq!(tags, 1 + i);
        drop(other);
        s.push_image("shared/db", &format!("t{i}"), &[format!("layer {i}").as_bytes()]).await;
        s.verify_image("shared/db", "v1").await.unwrap();
    }
    assert!(s.exited_within(std::time::Duration::ZERO).await.is_none(), "the server died");
}
