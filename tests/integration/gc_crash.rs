//! Crash safety: the server is killed with SIGKILL in the middle of a collection and in
//! the middle of pushes; after a restart every image tagged before the kill is intact, and
//! the next collection and reconcile leave storage and metadata consistent.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

/// Collect and reconcile, then check that nothing is missing and nothing is left over.
async fn assert_consistent(s: &Server) {
    s.gc(false).await;
    let reconcile: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(reconcile["missing_blobs"], 0, "{reconcile}");
    let again: Value = s.reconcile(true).await.json().await.unwrap();
    assert!(again["removed"].as_array().unwrap().is_empty(), "{again}");
    assert!(s.gc(true).await["removed"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn killed_between_removing_rows_and_removing_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kept_layers = [random_bytes(300, 50_000)];
    let doomed_layer = random_bytes(301, 50_000);
    let doomed_digest;
    {
        let mut s = Server::start_in(dir.path(), GC_NOW);
        s.push_image("crash/kept", "v1", &[&kept_layers[0]]).await;
        let (_, doomed) = s.push_image("crash/doomed", "v1", &[&doomed_layer]).await;
        doomed_digest = sha256(&doomed_layer);
        s.delete(&format!("/v2/crash/doomed/manifests/{doomed}")).await;
        s.arm("gc.before_bytes").await;
        let gc = tokio::spawn(s.http.post(s.url("/admin/gc")).send());
        s.wait_paused("gc.before_bytes").await;
        // Metadata no longer knows the blobs; their bytes are still there. Kill now.
        s.kill();
        assert!(gc.await.unwrap().is_err(), "the collection should have died with the server");
    }
    assert!(blob_file(dir.path(), &doomed_digest).exists(), "the kill came before the bytes went");
    let s = Server::start_in(dir.path(), GC_NOW);
    s.verify_image("crash/kept", "v1").await.unwrap();
    assert_eq!(s.get(&format!("/v2/crash/doomed/blobs/{doomed_digest}")).await.status(), StatusCode::NOT_FOUND);
    // Nothing is left for a collection: the bytes metadata does not know are reconcile's,
    // and so is the repository the killed run emptied but never swept (a collection only
    // looks at the repositories its own removals touch).
    let report = s.gc(false).await;
    assert_eq!(report["blobs_removed"], 0, "{report}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["crash/doomed", "crash/kept"]));
    let kinds = |report: &Value| -> Vec<String> {
        report["removed"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
    };
    // A dry run reports the same and changes nothing.
    let dry: Value = s.reconcile(true).await.json().await.unwrap();
    assert_eq!(kinds(&dry), ["blob", "blob", "repository"], "{dry}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["crash/doomed", "crash/kept"]));
    let reconcile: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(kinds(&reconcile), ["blob", "blob", "repository"], "the layer, the config, crash/doomed: {reconcile}");
    assert_eq!(reconcile["repositories_removed"], 1, "{reconcile}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["crash/kept"]));
    assert!(!blob_file(dir.path(), &doomed_digest).exists());
    assert_consistent(&s).await;
    s.verify_image("crash/kept", "v1").await.unwrap();
}

#[tokio::test]
async fn killed_in_the_middle_of_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tagged = Vec::new();
    let last_session;
    {
        let mut s = Server::start_in(dir.path(), GC_NOW);
        for i in 0..3u64 {
            s.push_image("crash/before", &format!("v{i}"), &[&random_bytes(310 + i, 200_000)]).await;
            tagged.push(format!("v{i}"));
        }
        let http = s.http.clone();
        let base = s.url("");
        // Pushes in flight: many chunks, so the kill lands in the middle of one. Returns
        // how many chunks were acknowledged, and the last session with the bytes it had
        // acknowledged.
        let (first, first_acknowledged) = tokio::sync::oneshot::channel();
        let pushes = tokio::spawn(async move {
            let (mut acknowledged, mut last, mut first) = (0u64, None, Some(first));
            for i in 0..50u64 {
                let Ok(resp) = http.post(format!("{base}/v2/crash/during/blobs/uploads/")).send().await else { break };
                let location = header(&resp, "location");
                let mut stored = 0u64;
                for chunk in 0..20u64 {
                    let data = random_bytes(1000 * i + chunk, 64 * 1024);
                    match http.patch(format!("{base}{location}")).body(data).send().await {
                        Ok(resp) => assert_eq!(resp.status(), StatusCode::ACCEPTED),
                        Err(_) => return (acknowledged, last),
                    }
                    acknowledged += 1;
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    stored += 64 * 1024;
                    last = Some((location.clone(), stored));
                }
            }
            (acknowledged, last)
        });
        // Killed once chunks flow, whatever the machine's pace, in the middle of one.
        first_acknowledged.await.expect("no chunk was acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.kill();
        let (acknowledged, last) = pushes.await.unwrap();
        assert!(acknowledged > 0);
        last_session = last;
    }
    let s = Server::start_in(dir.path(), GC_NOW);
    for tag in &tagged {
        s.verify_image("crash/before", tag).await.unwrap();
    }
    assert_consistent(&s).await;
    for tag in &tagged {
        s.verify_image("crash/before", tag).await.unwrap();
    }
    // The half-pushed upload is still a session, which can be resumed from what it had
    // acknowledged (or from one chunk more, if the kill came between storing a chunk and
    // answering it).
    let (location, stored) = last_session.expect("a session took chunks");
    let resp = s.get(&location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "the session did not survive the kill");
    let end: u64 = header(&resp, "range").strip_prefix("0-").unwrap().parse().unwrap();
    assert!(end + 1 == stored || end + 1 == stored + 64 * 1024, "resumes at {} after {stored} acknowledged", end + 1);
}
