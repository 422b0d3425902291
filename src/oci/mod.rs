//! The OCI protocol vocabulary: validated names, tags, digests, references, upload ids,
//! media types and manifest parsing. Nothing here does I/O.
//!
//! Every value that reaches the registry core from a request passes through one of these
//! types first, so the core never sees a raw string from a client (and a path traversal
//! such as `../` cannot be expressed by any of them).

mod digest;
mod manifest;
pub mod media_type;
mod name;
mod reference;
mod upload_id;

pub use digest::{Digest, DigestAlgorithm, DigestError, Hasher};
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest};
pub use name::{RepoName, RepoNameError};
pub use reference::{Reference, Tag, TagError};
pub use upload_id::UploadId;
