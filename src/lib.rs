//! Bosun, a container image registry (OCI Distribution v1.1).
//!
//! The crate reads bottom-up like the architecture (see `ARCHITECTURE.md`):
//! - [`oci`]: protocol vocabulary (validated names, digests, references, manifests);
//! - [`storage`]: blob bytes behind the [`storage::BlobStore`] trait;
//! - [`metadata`]: the transactional source of truth;
//! - [`registry`]: the operations, over metadata and storage;
//! - [`api`]: HTTP, mapping requests to registry operations and errors to OCI responses;
//! - [`gc`]: online garbage collection and reconcile;
//! - [`config`] and [`server`]: assembling and running it; [`cli`] talks to a running one.

pub mod accounting;
pub mod api;
pub mod cli;
pub mod config;
pub mod failpoints;
pub mod gc;
pub mod metadata;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod registry;
pub mod server;
pub mod storage;
pub mod throttle;
pub mod time;

/// What a caught panic said (its message, when it gave one), for the log.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
