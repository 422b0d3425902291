//! Where blob bytes live: the narrow [`BlobStore`] trait and its implementations.
//!
//! # Semantics every implementation keeps
//! - **Content addressing.** A blob is stored once under its digest, whatever repositories
//!   link it; which repository may read which blob is metadata, not storage.
//! - **Staged uploads.** Bytes arrive into an upload area keyed by [`UploadId`]; they are
//!   never visible as a blob until [`BlobStore::commit_upload`] moves them into place in one
//!   atomic step. A reader sees a whole blob or none, never a partial one.
//! - **The caller verifies.** The store does not hash: the registry core hashes every byte
//!   on its way in and commits only when the digest matches. The store trusts that a
//!   commit under digest D has content D, so committing over an existing blob is harmless.
//! - **Not-found is an answer, not an error.** Missing blobs and uploads are reported as
//!   `io::ErrorKind::NotFound`; every other error is a real failure and must stop any
//!   caller that would otherwise conclude "absent" (a listing error never means "empty").
//! - **Durable when asked.** A store opened to sync makes a committed blob survive power
//!   loss before `commit_upload` returns; the registry records a blob in metadata only
//!   after that.
//! - **Nothing left behind.** Deleting a blob or an upload removes every file and directory
//!   it created.

mod filesystem;
pub mod space;

use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;

pub use filesystem::FilesystemStore;

use crate::oci::{Digest, UploadId};

/// Bytes read from a store, in chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A blob as storage sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// A staged upload's file as storage sees it (its name is the session's id, if it is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Appends bytes to a staged upload. Dropping it without [`UploadWriter::finish`] may lose
/// bytes written last; the caller then truncates the upload back to its known offset.
#[async_trait::async_trait]
pub trait UploadWriter: Send {
    async fn write(&mut self, data: Bytes) -> io::Result<()>;
    /// Flushes everything written and returns the upload's total size.
    async fn finish(self: Box<Self>) -> io::Result<u64>;
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Creates an empty staged upload.
    async fn create_upload(&self, id: &UploadId) -> io::Result<()>;
    /// Opens the staged upload for appending at `offset`; bytes after `offset` are discarded.
    async fn upload_writer(&self, id: &UploadId, offset: u64) -> io::Result<Box<dyn UploadWriter>>;
    /// Reads the first `len` staged bytes (to rebuild a hash state lost in a restart).
    async fn read_upload(&self, id: &UploadId, len: u64) -> io::Result<ByteStream>;
    /// Atomically makes the staged upload the blob `digest` and removes the upload. The
    /// blob's modification time becomes now, so a reconcile sees it as new.
    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> io::Result<()>;
    /// Removes a staged upload.
    async fn delete_upload(&self, id: &UploadId) -> io::Result<()>;
    /// The bytes staged for an upload; `NotFound` if it has none (a crash can leave a
    /// session whose staged file is gone).
    async fn upload_size(&self, id: &UploadId) -> io::Result<u64>;
    /// The size of a stored blob.
    async fn blob_size(&self, digest: &Digest) -> io::Result<u64>;
    /// Reads `len` bytes of a blob from `offset`.
    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<ByteStream>;
    /// Removes a blob's bytes.
    async fn delete_blob(&self, digest: &Digest) -> io::Result<()>;
    /// Removes the bytes of several blobs, as many as it can; a missing one counts as
    /// removed. Returns those it could not remove, each with its error (for the caller to
    /// count only what went).
    async fn delete_blobs(&self, digests: &[Digest]) -> Vec<(Digest, io::Error)> {
        let mut failed = Vec::new();
        for digest in digests {
            match self.delete_blob(digest).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => failed.push((digest.clone(), e)),
                _ => {}
            }
        }
        failed
    }
    /// Every stored blob. Fails as a whole on any listing error.
    async fn list_blobs(&self) -> io::Result<Vec<StoredBlob>>;
    /// Removes the directories that hold no blob, which a crash between a blob's removal
    /// and its directory's leaves behind; returns how many went. A store without
    /// directories has none.
    async fn prune_empty_dirs(&self) -> io::Result<usize> {
        Ok(0)
    }
    /// Every staged upload. Fails as a whole on any error.
    async fn list_uploads(&self) -> io::Result<Vec<StoredUpload>>;
    /// The room left where new bytes go, if the store has such a limit (a local disk does;
    /// an object store does not, and answers `None`).
    async fn free_space(&self) -> io::Result<Option<space::DiskSpace>>;
}
