//! The registry core: push, pull, mount, delete and listing, over the metadata store (the
//! truth about what exists) and the blob store (the bytes).
//!
//! Every operation takes validated protocol types and returns domain results or an
//! [`Error`]; nothing here knows about HTTP.
//!
//! Ordering rules the operations keep:
//! - bytes are verified, then committed to storage, then recorded in metadata: a crash in
//!   between leaves bytes the metadata does not know (collected by reconcile), never
//!   metadata that points at missing bytes;
//! - every metadata change of one request is one transaction, including the reference
//!   counts that garbage collection reads.

mod blobs;
mod condition;
mod digest_locks;
mod error;
mod hashing;
mod listing;
mod manifests;
pub(crate) mod pulls;
pub(crate) mod quota;
mod restore;
pub(crate) mod uploads;

use std::sync::Arc;
use std::time::Duration;

pub use blobs::BlobRead;
pub use condition::{Condition, EntityTags, ReadOutcome};
pub use error::{Error, Result};
pub use listing::Referrer;
pub use manifests::{PushedManifest, StoredManifest};
pub use uploads::{ChunkRange, UploadStatus};

pub(crate) use digest_locks::DigestLocks;

use crate::failpoints::Failpoints;
use crate::metadata::Metadata;
use crate::metadata::repositories::{self, RepoId};
use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::policy::Policies;
use crate::storage::BlobStore;
use crate::storage::space::MinFreeSpace;

/// Behaviour an operator can change.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub delete_enabled: bool,
    /// Mount a blob the registry already holds into a repository that asks to upload it,
    /// without receiving the bytes again.
    pub auto_mount: bool,
    pub max_manifest_bytes: u64,
    /// How long unreferenced content stays before garbage collection may remove it; also
    /// how long a probe (HEAD) protects a blob.
    pub grace_period: Duration,
    /// How long a deleted tag can be restored (its manifest is kept that long).
    pub restore_window: Duration,
    /// Below this much free space no new upload session is opened (`storage/space.rs`).
    pub min_free_space: MinFreeSpace,
}

impl RegistryOptions {
    /// How stale a blob's last use may get before a probe writes a fresh one. A probe
    /// within this interval of the last refresh still leaves at least three quarters of the
    /// grace period before the blob could be collected, so most probes need no write.
    pub fn probe_refresh_interval(&self) -> Duration {
        (self.grace_period / 4).min(Duration::from_secs(60))
    }

    /// Tags deleted after this moment (ms) can still be restored at `now`, so their
    /// manifests stay.
    pub fn restore_since(&self, now: i64) -> i64 {
        now - self.restore_window.as_millis() as i64
    }
}

pub struct Registry {
    pub(crate) meta: Metadata,
    pub(crate) store: Arc<dyn BlobStore>,
    options: RegistryOptions,
    sessions: uploads::Sessions,
    pub(crate) digest_locks: DigestLocks,
    pub(crate) failpoints: Arc<Failpoints>,
    pub(crate) metrics: Arc<Metrics>,
    policies: std::sync::RwLock<Arc<Policies>>,
    pub(crate) pulls: pulls::PullTracker,
}

impl Registry {
    pub fn new(
        meta: Metadata,
        store: Arc<dyn BlobStore>,
        options: RegistryOptions,
        failpoints: Arc<Failpoints>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            meta,
            store,
            options,
            sessions: Default::default(),
            digest_locks: DigestLocks::default(),
            failpoints,
            metrics,
            policies: Default::default(),
            pulls: Default::default(),
        }
    }

    /// The policies in force (a snapshot: replacing them does not disturb a reader).
    pub fn policies(&self) -> Arc<Policies> {
        self.policies.read().expect("policies poisoned").clone()
    }

    pub fn set_policies(&self, policies: Policies) {
        *self.policies.write().expect("policies poisoned") = Arc::new(policies);
    }

    /// The upload sessions, so that garbage collection can tell a busy one from a stale one.
    pub(crate) fn sessions(&self) -> &uploads::Sessions {
        &self.sessions
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Refuses a write that adds to metadata while its disk is full (507), so that the
    /// room kept for the metadata log stays for deletes and collections, which free space
    /// (`Metadata::room_to_add`).
    fn check_room_to_add(&self) -> Result<()> {
        self.meta.room_to_add().map_err(|(available, floor)| {
            Error::StorageFull(format!(
                "{available} bytes free on the metadata database's disk, under the {floor} that writes adding to \
                 it need; deletes and collections go on (and free space)"
            ))
        })
    }

    fn check_delete_enabled(&self) -> Result<()> {
        if self.options.delete_enabled { Ok(()) } else { Err(Error::DeleteDisabled) }
    }

    /// Runs `f` in a write transaction on the repository called `name`, looked up inside
    /// that transaction; `None` if there is none. For a write after a read: the id the read
    /// saw may belong to another repository by now (ids of deleted rows are reused).
    async fn write_in_repository<T, F>(&self, name: &RepoName, f: F) -> Result<Option<T>>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection, RepoId) -> crate::metadata::Result<T> + Send + 'static,
    {
        let n = name.clone();
        Ok(self
            .meta
            .write(move |c| match repositories::find(c, &n)? {
                Some(repo) => f(c, repo).map(Some),
                None => Ok(None),
            })
            .await?)
    }
}
