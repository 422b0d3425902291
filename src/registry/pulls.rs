//! Pull times, tracked without a write per pull: pulls are noted in memory and written in
//! one transaction every few seconds (and before retention reads them). A crash loses at
//! most those seconds of pull times; retention then judges the images by the pulls
//! recorded before, an imprecision of seconds on rules measured in days.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::metadata::manifests::ManifestId;
use crate::metadata::repositories::RepoId;
use crate::metadata::{self, Metadata};

/// (manifest, its digest, tag pulled by) → last pull time.
#[derive(Default)]
pub struct PullTracker(Mutex<HashMap<PullKey, i64>>);

/// The digest goes with the id because ids are reused: a manifest deleted before the flush
/// may leave its id to one pushed after, which was never pulled.
type PullKey = (ManifestId, String, Option<(RepoId, String)>);

impl PullTracker {
    pub fn note(&self, manifest: ManifestId, digest: String, tag: Option<(RepoId, String)>, at: i64) {
        let mut map = self.0.lock().expect("pull tracker poisoned");
        let entry = map.entry((manifest, digest, tag)).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Writes the noted pulls and forgets them.
    pub async fn flush(&self, meta: &Metadata) -> metadata::Result<()> {
        let pulls: Vec<metadata::retention::Pull> = {
            let mut map = self.0.lock().expect("pull tracker poisoned");
            map.drain().map(|((m, d, t), at)| (m, d, t, at)).collect()
        };
        if pulls.is_empty() {
            return Ok(());
        }
        meta.write(move |c| metadata::retention::record_pulls(c, &pulls)).await
    }
}
