//! Reading, mounting and deleting blobs of a repository.

use super::{Error, Registry, Result, quota};
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
    /// The size of a blob that `name` may read. A probe is how a client decides to reuse a
    /// blob instead of uploading it, so it also marks the blob as used (restarting the grace
    /// period of garbage collection) before answering: a blob reported present here is never
    /// collected before the client can reference it. The write is skipped when the blob was
    /// marked recently (see `RegistryOptions::probe_refresh_interval`).
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64> {
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
            Err(e) => {
                // Collected between the metadata read and the open: a plain 404. (Only if
                // metadata says so: any other failure of the second look is that failure.)
                if e.kind() == std::io::ErrorKind::NotFound
                    && let Err(second_look) = self.blob_size(name, digest).await
                {
                    return Err(second_look);
                }
                // The metadata says the blob exists: missing bytes are a fault to report
                // loudly, not a 404 that would make a client think it may re-push.
                tracing::error!(%digest, error = %e, "blob known to metadata cannot be read from storage");
                return Err(Error::from(e));
            }
        };
        Ok(BlobRead { size, offset, len, body })
    }

    /// Links an existing blob into `name` without receiving its bytes: from `from` if that
    /// repository has it, else (with auto-mount) from anywhere in the registry. Returns the
    /// size if mounted, `None` if the client must upload.
    pub async fn mount_blob(&self, name: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<Option<u64>> {
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
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        self.check_delete_enabled()?;
        let (n, d) = (name.clone(), digest.clone());
        self.meta
            .write(move |c| {
                let repo = repositories::find(c, &n)?.ok_or_else(|| Error::BlobUnknown(d.clone()))?;
                if let Some(manifest) = blobs::referencing_manifest(c, repo, &d)? {
                    return Err(Error::BlobReferenced { digest: d, manifest });
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
