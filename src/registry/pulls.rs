//! Pull times, tracked without a write per pull: pulls are noted in memory and written in
//! one transaction every few seconds (and before retention reads them, and at shutdown).
//! A crash loses at most those seconds of pull times; retention then judges the images by
//! the pulls recorded before, an imprecision of seconds on rules measured in days.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::metadata::manifests::ManifestId;
use crate::metadata::repositories::RepoId;
use crate::metadata::{self, Metadata};

/// (manifest, its repository and digest, tag pulled by) → last pull time.
#[derive(Default)]
pub struct PullTracker(Mutex<HashMap<PullKey, i64>>);

/// The repository and digest go with the id because ids are reused: a manifest deleted
/// before the flush may leave its id to one pushed after, maybe the same bytes in another
/// repository, which was never pulled.
type PullKey = (ManifestId, RepoId, String, Option<String>);

impl PullTracker {
    pub fn note(&self, manifest: ManifestId, repo: RepoId, digest: String, tag: Option<String>, at: i64) {
        let mut map = self.0.lock().expect("pull tracker poisoned");
        let entry = map.entry((manifest, repo, digest, tag)).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Writes the noted pulls and forgets them.
    pub async fn flush(&self, meta: &Metadata) -> metadata::Result<()> {
        let pulls: Vec<metadata::retention::Pull> = {
            let mut map = self.0.lock().expect("pull tracker poisoned");
            map.drain().map(|((m, r, d, t), at)| (m, r, d, t, at)).collect()
        };
        if pulls.is_empty() {
            return Ok(());
        }
        meta.write(move |c| metadata::retention::record_pulls(c, &pulls)).await
    }
}
