//! Per-digest locks between the two things that write or remove a blob's bytes: an upload
//! committing a digest, and garbage collection (or reconcile) removing it.
//!
//! Holding the lock across "re-check metadata, act on storage, update metadata" closes
//! the window in which a collector that decided to delete a digest removes bytes that an
//! upload of the same digest has just put in place: whichever takes the lock second sees
//! the other's outcome. (Within one process; several Bosun instances sharing storage need
//! the metadata database to provide this lock.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::oci::Digest;

#[derive(Default)]
pub struct DigestLocks(Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

pub struct DigestGuard<'a> {
    locks: &'a DigestLocks,
    digest: Digest,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl DigestLocks {
    pub async fn lock(&self, digest: &Digest) -> DigestGuard<'_> {
        let slot = self.0.lock().expect("digest locks poisoned").entry(digest.clone()).or_default().clone();
        DigestGuard { locks: self, digest: digest.clone(), _guard: slot.lock_owned().await }
    }
}

impl Drop for DigestGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().expect("digest locks poisoned");
        // Forget the slot when nobody else holds or waits for it (the map's own reference
        // and the one held by this guard's mutex are the only ones left).
        if let Some(slot) = map.get(&self.digest)
            && Arc::strong_count(slot) <= 2
        {
            map.remove(&self.digest);
        }
    }
}
