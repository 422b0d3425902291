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
mod error;
mod listing;
mod manifests;
mod uploads;

use std::sync::Arc;

pub use blobs::BlobRead;
pub use error::{Error, Result};
pub use listing::Referrer;
pub use manifests::{PushedManifest, StoredManifest};
pub use uploads::{ChunkRange, UploadStatus};

use crate::metadata::Metadata;
use crate::storage::BlobStore;

/// Behaviour an operator can change.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub delete_enabled: bool,
    /// Mount a blob the registry already holds into a repository that asks to upload it,
    /// without receiving the bytes again.
    pub auto_mount: bool,
    pub max_manifest_bytes: u64,
}

pub struct Registry {
    meta: Metadata,
    store: Arc<dyn BlobStore>,
    options: RegistryOptions,
    sessions: uploads::Sessions,
}

impl Registry {
    pub fn new(meta: Metadata, store: Arc<dyn BlobStore>, options: RegistryOptions) -> Registry {
        Registry { meta, store, options, sessions: Default::default() }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    fn check_delete_enabled(&self) -> Result<()> {
        if self.options.delete_enabled { Ok(()) } else { Err(Error::DeleteDisabled) }
    }
}
