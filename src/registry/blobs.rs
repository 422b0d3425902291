//! Reading, mounting and deleting blobs of a repository.

use super::{Condition, Error, Registry, Result, quota};
use crate::metadata::{blobs, now_ms, repositories};
use crate::oci::{Digest, RepoName};
use crate::storage::ByteStream;

/// A blob opened for reading: the bytes from `offset`, `len` of them, of `size` in all.
pub struct BlobRead {
    pub size: u64,
    pub offset: u64,
    pub len: u64,
    pub body: ByteStream,
}

impl Registry {
    /// The size of a blob that `name` may read, whose bytes storage holds. A probe is how a
    /// client decides to reuse a blob instead of uploading it, so a blob whose bytes were
    /// lost (a disk fault, a hand edit: metadata knows it, storage has no bytes or bytes of
    /// another size) is answered 404, which makes the client push it again and so repairs
    /// the image; it is logged as the fault it is, and reconcile reports it until then.
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64> {
        let size = self.linked_blob_size(name, digest).await?;
        match self.stored_whole(digest, size).await {
            Ok(()) => Ok(size),
            Err(e) => self.bytes_unavailable(name, digest, e).await,
        }
    }

    /// Whether storage holds `size` bytes for `digest`: an error of kind NotFound if it
    /// holds none, InvalidData if it holds another number.
    async fn stored_whole(&self, digest: &Digest, size: u64) -> std::io::Result<()> {
        match self.store.blob_size(digest).await? {
            stored if stored == size => Ok(()),
            stored => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("storage holds {stored} bytes, metadata says {size}"),
            )),
        }
    }

    /// The size metadata gives a blob that `name` may read. It also marks the blob as used
    /// (restarting the grace period of garbage collection) before answering: a blob
    /// reported present is never collected before the client can reference it. The write
    /// is skipped when the blob was marked recently (`RegistryOptions::probe_refresh_interval`).
    async fn linked_blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64> {
        let (n, d) = (name.clone(), digest.clone());
        let fresh_after = now_ms() - self.options.probe_refresh_interval().as_millis() as i64;
        let seen = self
            .meta
            .read(move |c| match repositories::find(c, &n)? {
                Some(repo) => blobs::linked(c, repo, &d),
                None => Ok(None),
            })
            .await?;
        let unknown = || Error::BlobUnknown(digest.clone());
        let blob = seen.ok_or_else(unknown)?;
        if blob.used_at >= fresh_after && !self.options.grace_period.is_zero() {
            return Ok(blob.size);
        }
        let d = digest.clone();
        self.write_in_repository(name, move |c, repo| blobs::probe(c, repo, &d, now_ms()))
            .await?
            .flatten()
            .ok_or_else(unknown)
    }

    /// Opens a blob that `name` may read; `range` is an inclusive byte range already
    /// resolved against the size by `resolve`.
    pub async fn read_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        resolve: impl FnOnce(u64) -> Result<(u64, u64)>,
    ) -> Result<BlobRead> {
        let size = self.blob_size(name, digest).await?;
        let (offset, len) = resolve(size)?;
        let body = match self.store.read_blob(digest, offset, len).await {
            Ok(body) => body,
            // Collected (or replaced) between the look and the open.
            Err(e) => {
                self.bytes_unavailable(name, digest, e).await?;
                self.store.read_blob(digest, offset, len).await?
            }
        };
        Ok(BlobRead { size, offset, len, body })
    }

    /// Answers for a blob whose bytes could not be had whole (`e`) although metadata said
    /// `name` may read it. A second look at both: collected meanwhile (metadata now says
    /// so), a plain 404; uploaded again meanwhile (whole now), its size. Lost (missing or of
    /// the wrong size): logged as the fault it is, and 404, so that a client pushes it
    /// again, which puts the bytes back. Any other failure is that failure.
    async fn bytes_unavailable(&self, name: &RepoName, digest: &Digest, e: std::io::Error) -> Result<u64> {
        let lost = matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData);
        if !lost {
            tracing::error!(%digest, error = %e, "blob known to metadata cannot be read from storage");
            return Err(Error::from(e));
        }
        let size = self.linked_blob_size(name, digest).await?;
        if self.stored_whole(digest, size).await.is_ok() {
            return Ok(size);
        }
        tracing::error!(%digest, error = %e, "storage lost the bytes of a blob known to metadata: answered 404, so that clients push it again");
        Err(Error::BlobUnknown(digest.clone()))
    }

    /// Links an existing blob into `name` without receiving its bytes: from `from` if that
    /// repository has it, else (with auto-mount) from anywhere in the registry. Returns the
    /// size if mounted, `None` if the client must upload.
    pub async fn mount_blob(&self, name: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<Option<u64>> {
        self.check_room_to_add()?;
        // Bytes that storage lost (none, or of another size than the blob's) are uploaded
        // again rather than linked (see `blob_size`).
        let stored = match self.store.blob_size(digest).await {
            Ok(stored) => stored,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (n, d, f) = (name.clone(), digest.clone(), from.cloned());
        let auto = self.options.auto_mount;
        let policies = self.policies();
        self.meta
            .write(move |c| {
                let source_size = match &f {
                    Some(from) => match repositories::find(c, from)? {
                        Some(src) => blobs::linked_size(c, src, &d)?,
                        None => None,
                    },
                    None => None,
                };
                let size = match source_size {
                    Some(s) => Some(s),
                    None if auto => blobs::size(c, &d)?,
                    None => None,
                };
                if size.is_some_and(|size| size != stored) {
                    tracing::error!(digest = %d, stored, size, "storage holds bytes of another size than a blob known to metadata: not mounted, so that the client uploads it again");
                    return Ok(None);
                }
                if let Some(size) = size {
                    quota::check(c, &policies, &n, &d, size)?;
                    let now = now_ms();
                    let repo = repositories::ensure(c, &n, now)?;
                    quota::link(c, &policies, &n, repo, &d, now)?;
                    blobs::touch(c, &d, now)?;
                }
                Ok::<_, Error>(size)
            })
            .await
    }

    /// Removes `name`'s link to a blob, and `name` itself if that was all it held. Refused
    /// while a manifest of `name` references the blob: a delete never breaks an image.
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest, condition: &Condition) -> Result<()> {
        self.check_delete_enabled()?;
        let (n, d, condition) = (name.clone(), digest.clone(), condition.clone());
        self.meta
            .write(move |c| {
                let repo = repositories::find(c, &n)?.ok_or_else(|| Error::BlobUnknown(d.clone()))?;
                if let Some(manifest) = blobs::referencing_manifest(c, repo, &d)? {
                    return Err(Error::BlobReferenced { digest: d, manifest });
                }
                if !condition.is_empty() {
                    // Preconditions of a blob the repository does not have give way to its 404.
                    blobs::linked_size(c, repo, &d)?.ok_or_else(|| Error::BlobUnknown(d.clone()))?;
                    condition.write(&format!("blob {d}"), Some(&d.to_string()))?;
                }
                if !blobs::unlink(c, repo, &d)? {
                    return Err(Error::BlobUnknown(d));
                }
                blobs::touch(c, &d, now_ms())?;
                // Its last link may have gone: an empty repository leaves `_catalog` now.
                repositories::remove_if_empty(c, n.as_str())?;
                Ok(())
            })
            .await
    }
}
