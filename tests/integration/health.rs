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
