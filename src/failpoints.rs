//! Test-only pause points, so that integration tests can make races deterministic: a test
//! arms a point through the admin API, the server stops there when it reaches it, the test
//! acts in the pause, then releases it. A point can be armed to panic instead, once, to see
//! that a bug is answered and leaves nothing held.
//!
//! Off unless the server runs with `BOSUN_TEST_FAILPOINTS=1`; then `hit` costs a map
//! lookup, and otherwise nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// The points the code can stop at.
pub const GC_AFTER_CANDIDATES: &str = "gc.after_candidates";
pub const GC_BEFORE_BYTES: &str = "gc.before_bytes";
/// In a collection, in the flush that makes its removals durable before their bytes go.
pub const GC_FLUSHING: &str = "gc.flushing";
/// In a collection, once it has read a page of stale upload sessions, before it claims them.
pub const GC_UPLOADS_SELECTED: &str = "gc.uploads_selected";
/// In a collection, once it holds the locks of a page of stale upload sessions, before it
/// removes them.
pub const GC_UPLOADS_CLAIMED: &str = "gc.uploads_claimed";
/// In a retention run (scheduled or on demand), between its plan and its apply.
pub const RETENTION_BEFORE_APPLY: &str = "retention.before_apply";
/// In an apply, once the whole plan is checked, before it is claimed.
pub const RETENTION_CHECKED: &str = "retention.checked";
/// In an apply, once its plan is claimed (used up), before the deletions.
pub const RETENTION_CLAIMED: &str = "retention.claimed";
/// In an upload step, after its body has been received and before it is flushed.
pub const UPLOAD_BEFORE_FLUSH: &str = "upload.before_flush";
/// In the end of an upload, once its bytes are in the blob's place and before metadata
/// records them (its digest lock held).
pub const UPLOAD_COMMITTED_BEFORE_ROW: &str = "upload.committed_before_row";
/// In the opening of an upload session, once its file exists and before its row does.
pub const UPLOAD_FILE_BEFORE_ROW: &str = "upload.file_before_row";

#[derive(Default)]
pub struct Failpoints {
    enabled: bool,
    points: Mutex<HashMap<String, Point>>,
}

struct Point {
    /// Panic when reached, instead of waiting.
    panic: bool,
    /// true once the code has stopped here.
    reached: watch::Sender<bool>,
    /// true once the test has released it.
    released: watch::Sender<bool>,
}

impl Failpoints {
    pub fn new(enabled: bool) -> Failpoints {
        Failpoints { enabled, points: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Arms a point: the next time the code reaches it, it waits for `release`, or, with
    /// `panic`, panics (once).
    pub fn arm(&self, name: &str, panic: bool) {
        let point = Point { panic, reached: watch::channel(false).0, released: watch::channel(false).0 };
        self.points.lock().expect("failpoints poisoned").insert(name.to_owned(), point);
    }

    /// Waits until the code has stopped at an armed point; false on timeout or if unarmed.
    pub async fn wait_reached(&self, name: &str, timeout: Duration) -> bool {
        let rx = match self.points.lock().expect("failpoints poisoned").get(name) {
            Some(p) => p.reached.subscribe(),
            None => return false,
        };
        let mut rx = rx;
        tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok())
    }

    /// Disarms a point and lets any code stopped there go on.
    pub fn release(&self, name: &str) {
        if let Some(p) = self.points.lock().expect("failpoints poisoned").remove(name) {
            p.released.send_replace(true);
        }
    }

    /// Called by the code at a pause point.
    pub async fn hit(&self, name: &str) {
        if !self.enabled {
            return;
        }
        let rx = match self.points.lock().expect("failpoints poisoned").get(name) {
            Some(p) => {
                p.reached.send_replace(true);
                (!p.panic).then(|| p.released.subscribe())
            }
            None => return,
        };
        let Some(mut rx) = rx else {
            self.release(name);
            panic!("test failpoint {name} armed to panic");
        };
        tracing::warn!(failpoint = name, "paused at test failpoint");
        let _ = rx.wait_for(|r| *r).await;
    }
}
