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
pub struct PullTracker {
    noted: Mutex<HashMap<PullKey, i64>>,
    /// Held by a flush from taking the noted pulls until they are written: a flush that
    /// returns has seen every pull noted before it was called written (the last one, at
    /// shutdown, would otherwise find the map emptied by a periodic flush still waiting
    /// for the writer, and return before those pulls are written).
    flushing: tokio::sync::Mutex<()>,
}

/// The repository and digest go with the id because ids are reused: a manifest deleted
/// before the flush may leave its id to one pushed after, maybe the same bytes in another
/// repository, which was never pulled.
type PullKey = (ManifestId, RepoId, String, Option<String>);

impl PullTracker {
    pub fn note(&self, manifest: ManifestId, repo: RepoId, digest: String, tag: Option<String>, at: i64) {
        let mut map = self.noted.lock().expect("pull tracker poisoned");
        let entry = map.entry((manifest, repo, digest, tag)).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Writes the noted pulls and forgets them; if the write fails they stay noted, for
    /// the next flush.
    pub async fn flush(&self, meta: &Metadata) -> metadata::Result<()> {
        let _one_at_a_time = self.flushing.lock().await;
        let pulls: Vec<metadata::retention::Pull> = {
            let mut map = self.noted.lock().expect("pull tracker poisoned");
            map.drain().map(|((m, r, d, t), at)| (m, r, d, t, at)).collect()
        };
        if pulls.is_empty() {
            return Ok(());
        }
        let written = pulls.clone();
        let outcome = meta.write(move |c| metadata::retention::record_pulls(c, &written)).await;
        if outcome.is_err() {
            for (m, r, d, t, at) in pulls {
                self.note(m, r, d, t, at);
            }
        }
        outcome
    }
}
