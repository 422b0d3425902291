//! A full disk: an upload that does not fit is answered 507 with a message that says so
//! (not a bare 500), nothing half-stored stays, reads go on, and deleting an image and
//! collecting frees the space at once, without a restart, so the same push then succeeds.
//!
//! The data directory is a small tmpfs mounted for the test, which needs the right to
//! mount (CI runs as root); without it the test says so and does nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;

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
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("small"), "8m") else { return };
    let s = Server::start_in(&dir.path().join("small").join("data"), GC_NOW);
    let (_, first) = s.push_image("full", "first", &[&random_bytes(1, 4 << 20)]).await;

    let big = random_bytes(2, 5 << 20);
    let resp = s.http.post(s.url(&format!("/v2/full/blobs/uploads/?digest={}", sha256(&big)))).body(big.clone());
    let message = expect_error(resp.send().await.unwrap(), StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;
    assert!(message.contains("storage is full"), "{message}");
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0, "staged bytes left behind");
    s.verify_image("full", "first").await.unwrap();

    assert_eq!(s.delete(&format!("/v2/full/manifests/{first}")).await.status(), StatusCode::ACCEPTED);
    let report = s.gc(false).await;
    assert!(report["bytes_removed"].as_u64().unwrap() > 4 << 20, "{report}");
    s.push_image("full", "second", &[&big]).await;
    s.verify_image("full", "second").await.unwrap();
}
