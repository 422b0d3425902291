//! A full disk: an upload that does not fit is answered 507 with a message that says so
//! (not a bare 500), nothing half-stored stays, reads go on, and, with the disk then
//! filled to the last block, deleting an image and collecting it still work (the metadata
//! log's room is reserved) and free the space at once, without a restart, so the same
//! push then succeeds. The room outlasts a clean stop: a registry started again on a disk
//! filled while it was stopped opens its database, deletes and collects.
//!
//! The data directory is a small tmpfs mounted for the test, which needs the right to
//! mount (CI runs as root); without it the test says so and does nothing, except in CI
//! (`CI` set), where it fails.
//!
//! Before the disk is full, under `min_free_space`, new uploads are refused with a 507
//! that says why, while everything else goes on. Once it is full, nothing that adds to
//! metadata is taken (manifests, tags, mounts, sessions), so that deleting keeps working.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

/// A tmpfs of `size` mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None if this process may not mount.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (target, options) = (c(at.as_os_str().as_bytes()), c(format!("size={size}").as_bytes()));
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(c(b"tmpfs").as_ptr(), target.as_ptr(), c(b"tmpfs").as_ptr(), 0, options.as_ptr().cast())
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "mounting a tmpfs at {}: {e}", at.display());
            // CI must run it (`.ci/run` sets CI); a developer without the right may not.
            assert!(std::env::var_os("CI").is_none(), "CI cannot mount a tmpfs for the full-disk tests: {e}");
            eprintln!("skipped: this process may not mount a tmpfs ({e})");
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[tokio::test]
async fn a_full_disk_is_answered_507_and_a_collection_makes_room_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB of it go to the metadata log's reserve.
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("small"), "80m") else { return };
    let s = Server::start_in(&dir.path().join("small").join("data"), GC_NOW);
    // A long read (a listing, a retention plan's copy) keeps the log from starting over,
    // so every write below appends to it: the delete must find room to grow the log into.
    let reader = rusqlite::Connection::open(s.data_dir.join("metadata.sqlite")).unwrap();
    reader.execute_batch("BEGIN; SELECT COUNT(*) FROM blobs;").unwrap();
    let free = free_bytes(&s.data_dir);
    let (_, first) = s.push_image("full", "first", &[&random_bytes(1, free / 2)]).await;

    let big = random_bytes(2, free * 6 / 10);
    let resp = s.http.post(s.url(&format!("/v2/full/blobs/uploads/?digest={}", sha256(&big)))).body(big.clone());
    let message = expect_error(resp.send().await.unwrap(), StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;
    assert!(message.contains("storage is full"), "{message}");
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0, "staged bytes left behind");
    s.verify_image("full", "first").await.unwrap();
    // Full to the last byte (another writer, or the registry's own last upload).
    fill(&dir.path().join("small").join("filler"));
    let available = |metrics: &str| sample(metrics, "bosun_data_dir_available_bytes");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(available(&metrics) < 64.0 * 1024.0, "{metrics}");
    assert_eq!(sample(&metrics, "bosun_data_dir_size_bytes"), (80 << 20) as f64);
    // Nothing that adds to metadata is taken now: a manifest pushed again under new tags
    // (thousands were, each eating the log's room, until deleting failed too), a mount, a
    // new session. All answer 507.
    let body = s.get(&format!("/v2/full/manifests/{first}")).await.bytes().await.unwrap();
    for i in 0..50 {
        let resp = s.put_manifest("full", &format!("again{i}"), OCI_MANIFEST, &body).await;
        expect_error(resp, StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;
    }
    let config = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["config"]["digest"].clone();
    let mount = format!("/v2/other/blobs/uploads/?mount={}&from=full", config.as_str().unwrap());
    expect_error(s.http.post(s.url(&mount)).send().await.unwrap(), StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;
    let resp = s.http.post(s.url("/v2/full/blobs/uploads/")).send().await.unwrap();
    expect_error(resp, StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;

    assert_eq!(s.delete(&format!("/v2/full/manifests/{first}")).await.status(), StatusCode::ACCEPTED);
    let report = s.gc(false).await;
    assert!(report["bytes_removed"].as_u64().unwrap() as usize > free / 2, "{report}");
    drop(reader);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(available(&metrics) > (free / 2) as f64, "{metrics}");
    // The room the collection made, taken by a push without a restart (leaving the
    // megabyte that writes adding to metadata need).
    s.push_image("full", "second", &[&random_bytes(3, free / 4)]).await;
    s.verify_image("full", "second").await.unwrap();
}

/// A clean stop keeps the metadata log's room: a registry stopped, its disk then filled
/// to the last block by something else, and started again, still deletes and collects.
#[tokio::test]
async fn after_a_clean_restart_on_a_full_disk_deleting_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("small"), "80m") else { return };
    let data = dir.path().join("small").join("data");
    let mut s = Server::start_in(&data, GC_NOW);
    let free = free_bytes(&data);
    let (_, first) = s.push_image("full", "first", &[&random_bytes(4, free / 2)]).await;
    s.terminate();
    let stopped = s.exited_within(Duration::from_secs(30)).await;
    assert!(stopped.is_some_and(|status| status.success()), "{stopped:?}");
    fill(&dir.path().join("small").join("filler"));

    let s = Server::start_in(&data, GC_NOW);
    assert_eq!(s.delete(&format!("/v2/full/manifests/{first}")).await.status(), StatusCode::ACCEPTED);
    let report = s.gc(false).await;
    assert!(report["bytes_removed"].as_u64().unwrap() as usize > free / 2, "{report}");
    s.push_image("full", "second", &[&random_bytes(5, free / 4)]).await;
    s.verify_image("full", "second").await.unwrap();
}

/// Under `min_free_space` no new upload session is opened: the client is told why (507)
/// and nothing is staged, a mount that finds no blob falls back to nothing; everything
/// else goes on: a session opened before resumes and finishes, blobs the registry holds
/// are mounted, a manifest is pushed, images are pulled and deleted. A floor of 100% is
/// never met by a disk that holds anything, so no mount is needed.
#[tokio::test]
async fn under_min_free_space_new_uploads_are_refused_and_everything_else_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (first, rest) = (random_bytes(12, 3000), random_bytes(13, 2000));
    let (base, location) = {
        let s = Server::start_in(&data, &[("BOSUN_MIN_FREE_SPACE", "0")]);
        let (base, _) = s.push_image("base", "v1", &[&random_bytes(11, 4096)]).await;
        let resp = s.http.post(s.url("/v2/app/blobs/uploads/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let resp = s
            .http
            .patch(s.url(&header(&resp, "location")))
            .header("content-range", format!("0-{}", first.len() - 1))
            .body(first.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        (serde_json::from_slice::<serde_json::Value>(&base).unwrap(), header(&resp, "location"))
    };
    let s = Server::start_in(&data, &[("BOSUN_MIN_FREE_SPACE", "100%")]);

    let refused = |resp: reqwest::Response| async move {
        let message = expect_error(resp, StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;
        assert!(message.contains("nearly full") && message.contains("min_free_space"), "{message}");
    };
    refused(s.http.post(s.url("/v2/app/blobs/uploads/")).send().await.unwrap()).await;
    let blob = random_bytes(14, 100);
    let post = s.http.post(s.url(&format!("/v2/app/blobs/uploads/?digest={}", sha256(&blob))));
    refused(post.body(blob.clone()).send().await.unwrap()).await;
    let mount = format!("/v2/app/blobs/uploads/?mount={}&from=base", sha256(&blob));
    refused(s.http.post(s.url(&mount)).send().await.unwrap()).await;
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 1, "only the session opened before");

    s.resume_upload("app", &location, &first, &rest).await;
    let config = base["config"].clone();
    let base_layer = base["layers"][0].clone();
    for digest in [&config["digest"], &base_layer["digest"]] {
        let mount = format!("/v2/app/blobs/uploads/?mount={}&from=base", digest.as_str().unwrap());
        assert_eq!(s.http.post(s.url(&mount)).send().await.unwrap().status(), StatusCode::CREATED);
    }
    let whole = [first, rest].concat();
    let layer = json!({"mediaType": OCI_LAYER, "digest": sha256(&whole), "size": whole.len()});
    let manifest =
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [base_layer, layer]});
    let resp = s.put_manifest("app", "v1", OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    s.verify_image("app", "v1").await.unwrap();
    assert_eq!(s.delete("/v2/base/manifests/v1").await.status(), StatusCode::ACCEPTED);
    s.verify_image("app", "v1").await.unwrap();

    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_uploads_refused_low_space_total"), 3.0, "{metrics}");
    assert_eq!(sample(&metrics, "bosun_data_dir_min_free_bytes"), sample(&metrics, "bosun_data_dir_size_bytes"));
}

/// Writes a file until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![7u8; 4096];
    loop {
        match f.write(&block) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// Bytes free on the file system holding `path`.
fn free_bytes(path: &Path) -> usize {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes only into the struct passed; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
    (st.f_bavail * st.f_frsize) as usize
}
