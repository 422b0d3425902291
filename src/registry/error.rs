//! What can go wrong in a registry operation, in domain terms. The HTTP layer maps each
//! variant to its OCI error code and status in exactly one place (`api::error`).

use crate::metadata::{MetadataError, is_full};
use crate::oci::{Digest, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    #[error("{0}")]
    NameInvalid(String),
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    #[error("upload session is not known (it may have completed, been cancelled, or belong to another repository)")]
    UploadUnknown,
    #[error("{0}")]
    UploadInvalid(String),
    /// A chunk that does not start where the upload ends (HTTP 416).
    #[error("chunk starts at byte {got}, but the upload holds {have} bytes; send the chunk that starts at {have}")]
    ChunkOutOfOrder { got: u64, have: u64 },
    /// A byte range the blob cannot satisfy (HTTP 416).
    #[error("requested range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("uploaded content has digest {actual}, not the {expected} the client declared")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("manifest {0} is not known in this repository")]
    ManifestUnknown(String),
    #[error("{0}")]
    ManifestInvalid(String),
    /// `size`: `None` for a body without Content-Length, refused once past the limit,
    /// unread beyond it.
    #[error(
        "manifest is {}over this registry's limit of {limit} bytes (setting max_manifest_bytes)",
        size.map(|s| format!("{s} bytes, ")).unwrap_or_default()
    )]
    ManifestTooLarge { size: Option<u64>, limit: u64 },
    #[error("manifest references {0}, which is not in this repository: push it first")]
    ManifestBlobUnknown(Digest),
    #[error("{0}")]
    TagInvalid(String),
    #[error("deletion is disabled on this registry by its operator (setting delete_enabled = false)")]
    DeleteDisabled,
    #[error("blob {digest} is still used by manifest {manifest} in this repository; delete the manifest first")]
    BlobReferenced { digest: Digest, manifest: String },
    #[error("manifest {digest} is a child of index {parent} in this repository; delete the index first")]
    ManifestReferenced { digest: Digest, parent: String },
    /// Refused by a policy (immutability, quota); the message names the rule and figures.
    #[error("{0}")]
    Denied(String),
    /// Refused because of what is there now (a restore of a tag that exists again).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// A condition of the request (`If-Match`, `If-None-Match`) does not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The client hung up before sending its whole body: no one reads the answer, and the
    /// request counts as cut off, not as the client's mistake.
    #[error("the client hung up before sending the whole body: {0}")]
    ClientGone(String),
    /// The disk (or the database) is full: not the client's mistake, and not a bug either.
    #[error("the registry's storage is full; retry once its operator has freed space")]
    StorageFull(String),
    /// Free space is under `min_free_space`: no new upload session is opened.
    #[error(
        "the registry's storage is nearly full ({available} bytes free, under the {floor} bytes its min_free_space keeps): \
         no new upload is taken until space is freed; uploads already started, pulls and deletes go on"
    )]
    LowSpace { available: u64, floor: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<MetadataError> for Error {
    fn from(e: MetadataError) -> Self {
        if e.is_full() { Error::StorageFull(e.to_string()) } else { Error::Internal(e.to_string()) }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if is_full(&e) { Error::StorageFull(format!("storage: {e}")) } else { Error::Internal(format!("storage: {e}")) }
    }
}

impl Error {
    /// A request body that could not be read: the client hung up (which the HTTP layer
    /// reports as `ConnectionAborted`, see `api::connections`), or it stalled or sent
    /// something unreadable.
    pub fn body(e: &(dyn std::error::Error + 'static)) -> Error {
        let mut cause = Some(e);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionAborted) {
                return Error::ClientGone(e.to_string());
            }
            cause = e.source();
        }
        Error::BodyRead(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk, seen by the storage or by the database, is "storage full", not an
    /// internal error; other failures stay internal.
    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(Error::from(full), Error::StorageFull(_)));
        let sqlite_full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert!(matches!(Error::from(MetadataError::Sqlite(sqlite_full)), Error::StorageFull(_)));
        assert!(matches!(Error::from(std::io::Error::from_raw_os_error(libc::EDQUOT)), Error::StorageFull(_)));
        // How the metadata tells a commit that ran into a quota (`commit_failure`).
        let quota = MetadataError::Io(std::io::Error::new(std::io::ErrorKind::QuotaExceeded, "disk I/O error"));
        assert!(matches!(Error::from(quota), Error::StorageFull(_)));
        // A failed flush of the log is no "storage full": only a restart helps then.
        let flush = MetadataError::LogFlush(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(Error::from(flush), Error::Internal(_)));
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(Error::from(denied), Error::Internal(_)));
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert!(matches!(Error::from(MetadataError::Sqlite(busy)), Error::Internal(_)));
    }
}
