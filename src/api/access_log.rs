//! The access log: who changed what, and when. Every change (a manifest pushed, anything
//! deleted, an admin action) is logged at `info` with the client's address, the answer
//! and the time taken; reads and the steps of a blob upload, which come by the thousand,
//! at `debug`. Together with the audit of tag deletions (who deleted a tag, by hand or by
//! policy) and the collector's line per removed manifest, the log accounts for every
//! manifest that went.

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::{Method, StatusCode};

/// A request being served, for its line in the log once answered.
pub struct Entry {
    method: Method,
    /// Only kept when the line will be written.
    path: Option<String>,
    peer: Option<SocketAddr>,
    change: bool,
    started: Instant,
}

impl Entry {
    pub fn start(method: &Method, path: &str, peer: Option<SocketAddr>) -> Entry {
        let change = is_change(method, path);
        let written =
            if change { tracing::enabled!(tracing::Level::INFO) } else { tracing::enabled!(tracing::Level::DEBUG) };
        Entry { method: method.clone(), path: written.then(|| path.to_owned()), peer, change, started: Instant::now() }
    }

    pub fn finish(self, status: StatusCode) {
        let Some(path) = self.path else { return };
        let (method, status, ms) = (self.method.as_str(), status.as_u16(), self.started.elapsed().as_millis() as u64);
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        if self.change {
            tracing::info!(method, path, status, peer, ms, "request");
        } else {
            tracing::debug!(method, path, status, peer, ms, "request");
        }
    }
}

/// Whether a request changes what the registry holds in a way an operator asks about
/// later: a manifest or tag pushed, anything deleted, an admin action. A blob upload's
/// steps are not: the manifest push that uses the blob is what makes it part of an image.
fn is_change(method: &Method, path: &str) -> bool {
    match *method {
        Method::DELETE => true,
        // `/v2/<name>/manifests/<reference>`, not `/v2/<name>/blobs/uploads/<id>` (a name
        // may contain either word, the endpoint's own segment is the one before the last).
        Method::PUT => path.starts_with("/admin/") || path.rsplit('/').nth(1) == Some("manifests"),
        Method::POST => path.starts_with("/admin/"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_told_from_reads_and_upload_steps() {
        for (method, path) in [
            (Method::PUT, "/v2/a/manifests/v1"),
            (Method::PUT, "/v2/blobs/uploads/manifests/v1"),
            (Method::DELETE, "/v2/a/manifests/v1"),
            (Method::DELETE, "/v2/a/blobs/sha256:00"),
            (Method::DELETE, "/v2/a/blobs/uploads/x"),
            (Method::POST, "/admin/gc"),
            (Method::PUT, "/admin/retention/policies/p"),
        ] {
            assert!(is_change(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/v2/a/manifests/v1"),
            (Method::HEAD, "/v2/a/blobs/sha256:00"),
            (Method::POST, "/v2/a/blobs/uploads/"),
            (Method::PATCH, "/v2/a/blobs/uploads/x"),
            (Method::PUT, "/v2/a/blobs/uploads/x"),
            (Method::PUT, "/v2/manifests/blobs/uploads/x"),
            (Method::GET, "/admin/gc/runs"),
        ] {
            assert!(!is_change(&method, path), "{method} {path}");
        }
    }
}
