//! Races with garbage collection made deterministic: a test pause point stops a
//! collection between choosing its candidates and removing them (or between removing a
//! blob from metadata and removing its bytes), or an upload between putting its bytes in
//! place and recording them, the test acts in the pause, and every resulting image must
//! pull intact.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

const AFTER_CANDIDATES: &str = "gc.after_candidates";
const BEFORE_BYTES: &str = "gc.before_bytes";
const FLUSHING: &str = "gc.flushing";
const UPLOADS_CLAIMED: &str = "gc.uploads_claimed";
const UPLOADS_SELECTED: &str = "gc.uploads_selected";
const UPLOAD_BEFORE_FLUSH: &str = "upload.before_flush";
const UPLOAD_COMMITTED_BEFORE_ROW: &str = "upload.committed_before_row";

/// Pushes `data` to `repo`, then deletes its link: with no grace period, the blob is garbage.
async fn garbage_blob(s: &Server, repo: &str, data: &[u8]) -> String {
    let digest = s.push_blob(repo, data).await;
    assert_eq!(s.delete(&format!("/v2/{repo}/blobs/{digest}")).await.status(), StatusCode::ACCEPTED);
    digest
}

/// The digests of the blobs a collection's report says it removed.
fn blobs_removed(report: &Value) -> Vec<&str> {
    let removed = report["removed"].as_array().unwrap().iter();
    removed.filter(|r| r["kind"] == "blob").map(|r| r["digest"].as_str().unwrap()).collect()
}

/// Starts a collection that will stop at `failpoint`; returns its handle once it has.
async fn paused_gc(s: &Arc<Server>, failpoint: &str) -> tokio::task::JoinHandle<Value> {
    s.arm(failpoint).await;
    let server = s.clone();
    let gc = tokio::spawn(async move { server.gc(false).await });
    s.wait_paused(failpoint).await;
    // Timestamps have millisecond resolution and the grace period is zero: let the clock
    // move past the collection's cutoff, as any real grace period would.
    tokio::time::sleep(Duration::from_millis(5)).await;
    gc
}

/// A manifest referencing `config` and `layers` (already in the repository).
fn manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<Value> =
        layers.iter().map(|(d, n)| json!({"mediaType": OCI_LAYER, "digest": d, "size": n})).collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1}, "layers": layers}))
    .unwrap()
}

#[tokio::test]
async fn a_manifest_push_in_the_pause_keeps_its_blobs() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(200, 40_000);
    let l = s.push_blob("race/push", &layer).await;
    let c = s.push_blob("race/push", b"{}").await;
    // Both links are unreferenced: the collection picks them as candidates.
    let gc = paused_gc(&s, AFTER_CANDIDATES).await;
    let body = manifest((&c, 2), &[(&l, layer.len())]);
    assert_eq!(s.put_manifest("race/push", "v1", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    s.release(AFTER_CANDIDATES).await;
    let report = gc.await.unwrap();
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    s.verify_image("race/push", "v1").await.unwrap();
}

#[tokio::test]
async fn a_probe_in_the_pause_protects_the_blob_until_the_manifest_arrives() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(201, 40_000);
    let l = s.push_blob("race/head", &layer).await;
    let c = s.push_blob("race/head", b"{}").await;
    let gc = paused_gc(&s, AFTER_CANDIDATES).await;
    // "Layer already exists": the client will not upload these again.
    assert_eq!(s.head(&format!("/v2/race/head/blobs/{l}")).await.status(), StatusCode::OK);
    assert_eq!(s.head(&format!("/v2/race/head/blobs/{c}")).await.status(), StatusCode::OK);
    // The collection goes on before the client's manifest push.
    s.release(AFTER_CANDIDATES).await;
    let report = gc.await.unwrap();
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    let body = manifest((&c, 2), &[(&l, layer.len())]);
    assert_eq!(s.put_manifest("race/head", "v1", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    s.verify_image("race/head", "v1").await.unwrap();
}

#[tokio::test]
async fn a_mount_in_the_pause_keeps_the_blob() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(202, 40_000);
    let l = s.push_blob("race/src", &layer).await;
    let c = s.push_blob("race/src", b"{}").await;
    let gc = paused_gc(&s, AFTER_CANDIDATES).await;
    for d in [&l, &c] {
        let resp =
            s.http.post(s.url(&format!("/v2/race/dst/blobs/uploads/?mount={d}&from=race/src"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    s.release(AFTER_CANDIDATES).await;
    let report = gc.await.unwrap();
    // The source's unused links (and the emptied source) may go; the blobs may not.
    assert!(blobs_removed(&report).is_empty(), "{report}");
    let body = manifest((&c, 2), &[(&l, layer.len())]);
    assert_eq!(s.put_manifest("race/dst", "v1", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    s.verify_image("race/dst", "v1").await.unwrap();
}

#[tokio::test]
async fn an_index_push_in_the_pause_keeps_its_untagged_children() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let child = s.push_image("race/index", "", &[&random_bytes(203, 30_000)]).await;
    let gc = paused_gc(&s, AFTER_CANDIDATES).await;
    push_index(&s, "race/index", "latest", &[child]).await;
    s.release(AFTER_CANDIDATES).await;
    let report = gc.await.unwrap();
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    s.verify_image("race/index", "latest").await.unwrap();
}

/// A client that finds an untagged manifest present (a HEAD by digest, or a push of the
/// same bytes that the registry answers 201) may list it in an index after the collection
/// has ended: the manifest must still be there then.
#[tokio::test]
async fn a_manifest_probed_or_pushed_again_in_the_pause_waits_for_the_index_that_lists_it() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let probed = s.push_image("race/probe", "", &[&random_bytes(204, 30_000)]).await;
    let pushed = s.push_image("race/probe", "", &[&random_bytes(205, 30_000)]).await;
    let gc = paused_gc(&s, AFTER_CANDIDATES).await;
    let head = s.head(&format!("/v2/race/probe/manifests/{}", probed.1)).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(s.put_manifest("race/probe", &pushed.1, OCI_MANIFEST, &pushed.0).await.status(), StatusCode::CREATED);
    s.release(AFTER_CANDIDATES).await;
    let report = gc.await.unwrap();
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    push_index(&s, "race/probe", "latest", &[probed, pushed]).await;
    s.verify_image("race/probe", "latest").await.unwrap();
}

#[tokio::test]
async fn a_reupload_while_the_bytes_are_being_deleted_ends_with_the_bytes_in_place() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(204, 60_000);
    let l = s.push_blob("race/reup", &layer).await;
    let c = s.push_blob("race/reup", b"{}").await;
    // Unlinked: the blobs themselves become garbage.
    for d in [&l, &c] {
        assert_eq!(s.delete(&format!("/v2/race/reup/blobs/{d}")).await.status(), StatusCode::ACCEPTED);
    }
    let gc = paused_gc(&s, BEFORE_BYTES).await;
    // Gone from metadata: invisible, and not mountable, so the client uploads again.
    assert_eq!(s.head(&format!("/v2/race/reup/blobs/{l}")).await.status(), StatusCode::NOT_FOUND);
    let resp = s.http.post(s.url(&format!("/v2/race/reup/blobs/uploads/?mount={l}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "a blob being deleted was mounted");
    s.delete(&header(&resp, "location")).await;
    assert_eq!(s.push_blob("race/reup", &layer).await, l);
    assert_eq!(s.push_blob("race/reup", b"{}").await, c);
    s.release(BEFORE_BYTES).await;
    let report = gc.await.unwrap();
    assert!(blobs_removed(&report).is_empty(), "{report}");
    let body = manifest((&c, 2), &[(&l, layer.len())]);
    assert_eq!(s.put_manifest("race/reup", "v1", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    s.verify_image("race/reup", "v1").await.unwrap();
    // And a later collection keeps it: it is referenced now.
    s.gc(false).await;
    s.verify_image("race/reup", "v1").await.unwrap();
}

#[tokio::test]
async fn push_delete_collect_push_again_without_restart() {
    let s = Server::start_with(GC_NOW);
    let layers = [random_bytes(205, 80_000), random_bytes(206, 20_000)];
    let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
    for round in 0..3 {
        let (_, digest) = s.push_image("again", "v1", &refs).await;
        s.verify_image("again", "v1").await.unwrap();
        assert_eq!(s.delete(&format!("/v2/again/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
        let report = s.gc(false).await;
        assert_eq!(report["blobs_removed"], 3, "round {round}: {report}");
        // No stale "already exists": every blob is gone, for probes and mounts alike.
        for l in &layers {
            assert_eq!(s.head(&format!("/v2/again/blobs/{}", sha256(l))).await.status(), StatusCode::NOT_FOUND);
        }
    }
}

/// A collection whose client goes away in the middle runs to its end: the bytes of the
/// blobs it removed from metadata go, under their digest locks, and the run is recorded.
/// (Cancelled with its request, it would have released the locks with unlinks still
/// running, and left no record.)
#[tokio::test]
async fn a_collection_whose_client_goes_away_runs_to_its_end() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(410, 30_000);
    let (_, digest) = s.push_image("gone/client", "v1", &[&layer]).await;
    assert_eq!(s.delete(&format!("/v2/gone/client/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    let layer_file = blob_file(&s.data_dir, &sha256(&layer));
    let gc = paused_gc(&s, BEFORE_BYTES).await;
    gc.abort();
    assert!(gc.await.unwrap_err().is_cancelled());
    // The server saw the connection close and dropped the request before the pause ends.
    s.wait_cut_off("admin", "POST").await;
    s.release(BEFORE_BYTES).await;
    for _ in 0..100 {
        let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
        if runs.as_array().unwrap().iter().any(|r| r["kind"] == "collect" && r["blobs_removed"] == 2) {
            assert!(!layer_file.exists(), "the run is recorded, so its bytes are gone");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the collection whose client went away was never recorded");
}

/// A server whose upload sessions are stale after 100 ms, with one session that has become
/// stale; returns its location.
async fn stale_session(s: &Server) -> String {
    let resp = s.http.post(s.url("/v2/race/upload/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    tokio::time::sleep(Duration::from_millis(150)).await;
    location
}

const STALE_UPLOADS: &[(&str, &str)] = &[("BOSUN_GC_UPLOAD_MAX_AGE", "100ms")];

/// A stale session that a request is using is not collected (nor reported by a dry run):
/// the request ends normally and the upload can be finished.
#[tokio::test]
async fn a_stale_upload_session_in_use_is_left_to_its_request() {
    let s = Arc::new(Server::start_with(&[GC_NOW, STALE_UPLOADS].concat()));
    let location = stale_session(&s).await;
    // Stale indeed: left alone, a collection would remove it.
    assert_eq!(s.gc(true).await["uploads_removed"], 1, "the session is not stale");
    let data = random_bytes(420, 10_000);
    s.arm(UPLOAD_BEFORE_FLUSH).await;
    let patch = {
        let (s, location, data) = (s.clone(), location.clone(), data.clone());
        tokio::spawn(async move { s.http.patch(s.url(&location)).body(data).send().await.unwrap().status() })
    };
    s.wait_paused(UPLOAD_BEFORE_FLUSH).await;
    let dry = s.gc(true).await;
    assert_eq!(dry["uploads_removed"], 0, "a dry run says what a real run would do: {dry}");
    let report = s.gc(false).await;
    assert_eq!(report["uploads_removed"], 0, "{report}");
    s.release(UPLOAD_BEFORE_FLUSH).await;
    assert_eq!(patch.await.unwrap(), StatusCode::ACCEPTED);
    let digest = sha256(&data);
    let resp = s.http.put(s.url(&format!("{location}?digest={digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

/// A request that arrives while a collection removes its stale session waits, then finds
/// the session gone (404), instead of writing into a file being deleted.
#[tokio::test]
async fn a_request_for_a_stale_upload_session_being_removed_finds_it_gone() {
    let waits = [("BOSUN_LOG", "info,bosun::registry::uploads=debug")];
    let s = Arc::new(Server::start_with(&[GC_NOW, STALE_UPLOADS, &waits].concat()));
    let location = stale_session(&s).await;
    let gc = paused_gc(&s, UPLOADS_CLAIMED).await;
    let patch = {
        let (s, location) = (s.clone(), location.clone());
        tokio::spawn(async move { s.http.patch(s.url(&location)).body("late bytes").send().await.unwrap() })
    };
    // The request waits for the session's lock, which the collection holds.
    let id = location.rsplit('/').next().unwrap();
    assert_eq!(s.logged(&["waiting for the upload session", id]).await.len(), 1, "the request never waited");
    s.release(UPLOADS_CLAIMED).await;
    let report = gc.await.unwrap();
    assert_eq!(report["uploads_removed"], 1, "{report}");
    expect_error(patch.await.unwrap(), StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
}

/// Reconcile removes an upload file that no session owns, but not the file of a session
/// being opened, which exists a moment before its row: with the opening paused between the
/// two and no grace period, the file stays, and the session then takes a whole upload.
#[tokio::test]
async fn reconcile_leaves_the_file_of_a_session_being_opened() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let stray = s.data_dir.join("uploads").join("0123456789abcdef0123456789abcdef");
    std::fs::write(&stray, b"left by a crash").unwrap();
    s.arm("upload.file_before_row").await;
    let post = {
        let s = s.clone();
        tokio::spawn(async move { s.http.post(s.url("/v2/race/open/blobs/uploads/")).send().await.unwrap() })
    };
    s.wait_paused("upload.file_before_row").await;
    let report: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(report["uploads_removed"], 1, "the stray file only: {report}");
    assert_eq!(report["bytes_removed"], "left by a crash".len(), "{report}");
    assert!(!stray.exists());
    s.release("upload.file_before_row").await;
    let resp = post.await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location");
    let data = random_bytes(31, 5000);
    let put = s.http.put(s.url(&format!("{location}?digest={}", sha256(&data)))).body(data.clone());
    assert_eq!(put.send().await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/race/open/blobs/{}", sha256(&data))).await.bytes().await.unwrap(), data);
}

/// An upload whose bytes are in the blob's place but not yet recorded, while a collection
/// removes the same digest's old bytes: the digest lock makes the collection wait for the
/// record, and it then keeps the bytes. Without that order it would find the digest
/// unknown and unlink the new bytes, and the recorded blob would have none.
#[tokio::test]
async fn an_upload_recorded_after_its_bytes_landed_keeps_them_from_a_collection() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(208, 60_000);
    let l = garbage_blob(&s, "race/lock", &layer).await;
    let gc = paused_gc(&s, BEFORE_BYTES).await;
    let upload = upload_paused_before_its_row(&s, "race/lock", &layer).await;
    s.release(BEFORE_BYTES).await;
    // Time for the collection to reach the bytes: with the order broken it unlinks them now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.release(UPLOAD_COMMITTED_BEFORE_ROW).await;
    assert_eq!(upload.await.unwrap(), l);
    let report = gc.await.unwrap();
    assert!(blobs_removed(&report).is_empty(), "{report}");
    assert_eq!(s.get(&format!("/v2/race/lock/blobs/{l}")).await.bytes().await.unwrap(), layer);
}

/// The same for reconcile, which removes bytes metadata does not know: the bytes of an
/// upload not yet recorded are such bytes for a moment, and must stay.
#[tokio::test]
async fn reconcile_leaves_the_bytes_of_an_upload_not_yet_recorded() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(209, 60_000);
    let upload = upload_paused_before_its_row(&s, "race/recon", &layer).await;
    let reconcile = {
        let s = s.clone();
        tokio::spawn(async move { s.reconcile(false).await.json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.release(UPLOAD_COMMITTED_BEFORE_ROW).await;
    let l = upload.await.unwrap();
    let report = reconcile.await.unwrap();
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(s.get(&format!("/v2/race/recon/blobs/{l}")).await.bytes().await.unwrap(), layer);
}

/// Starts pushing `data` to `repo`, and returns once the upload has put its bytes in the
/// blob's place and stopped before recording them.
async fn upload_paused_before_its_row(s: &Arc<Server>, repo: &str, data: &[u8]) -> tokio::task::JoinHandle<String> {
    s.arm(UPLOAD_COMMITTED_BEFORE_ROW).await;
    let upload = {
        let (s, repo, data) = (s.clone(), repo.to_owned(), data.to_vec());
        tokio::spawn(async move { s.push_blob(&repo, &data).await })
    };
    s.wait_paused(UPLOAD_COMMITTED_BEFORE_ROW).await;
    // Past the grace period of zero: the bytes' time is in an earlier millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    upload
}

/// A stale session used by a request that ended between the collection's reading of the
/// stale sessions and its claim on them is no longer stale: it stays, and can be finished.
#[tokio::test]
async fn a_stale_upload_session_used_after_it_was_selected_stays() {
    let s = Arc::new(Server::start_with(&[GC_NOW, STALE_UPLOADS].concat()));
    let location = stale_session(&s).await;
    let gc = paused_gc(&s, UPLOADS_SELECTED).await;
    let data = random_bytes(421, 10_000);
    assert_eq!(s.http.patch(s.url(&location)).body(data.clone()).send().await.unwrap().status(), StatusCode::ACCEPTED);
    s.release(UPLOADS_SELECTED).await;
    let report = gc.await.unwrap();
    assert_eq!(report["uploads_removed"], 0, "{report}");
    let resp = s.http.put(s.url(&format!("{location}?digest={}", sha256(&data)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

/// A blob whose last link goes during the pause (a blob DELETE in another repository) has
/// just lost a reference: its grace period starts again, so the candidate's removal in the
/// first repository does not take the blob with it in this run.
#[tokio::test]
async fn a_blob_unlinked_in_the_pause_starts_its_grace_again() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(210, 20_000);
    let l = s.push_blob("race/one", &layer).await;
    assert_eq!(s.push_blob("race/two", &layer).await, l);
    let gc = paused_gc(&s, AFTER_CANDIDATES).await;
    assert_eq!(s.delete(&format!("/v2/race/two/blobs/{l}")).await.status(), StatusCode::ACCEPTED);
    s.release(AFTER_CANDIDATES).await;
    let report = gc.await.unwrap();
    assert!(blobs_removed(&report).is_empty(), "{report}");
    // The next collection takes it: nothing references or links it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = s.gc(false).await;
    assert!(blobs_removed(&report).contains(&l.as_str()), "{report}");
}

/// The bytes of a collected blob go only once its removal from metadata is on the disk:
/// paused in that flush, the collection has removed the row (the blob answers 404) and
/// left the bytes, which a power loss then could not leave without their row.
#[tokio::test]
async fn bytes_go_only_once_their_removal_is_flushed() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let layer = random_bytes(211, 30_000);
    let l = garbage_blob(&s, "race/flush", &layer).await;
    let gc = paused_gc(&s, FLUSHING).await;
    assert_eq!(s.head(&format!("/v2/race/flush/blobs/{l}")).await.status(), StatusCode::NOT_FOUND);
    // Time for bytes removed without waiting for the flush to be gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(blob_file(&s.data_dir, &l).exists(), "the bytes went before their removal was flushed");
    s.release(FLUSHING).await;
    let report = gc.await.unwrap();
    assert!(blobs_removed(&report).contains(&l.as_str()), "{report}");
    assert!(!blob_file(&s.data_dir, &l).exists());
}
