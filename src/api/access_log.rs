//! The access log: who changed what, and when. Every change (a manifest pushed, a
//! manifest or blob deleted, an admin action) is logged at `info` with the client's
//! address, the answer and the time taken; every other request on the API's address (reads,
//! the steps of a blob upload, which come by the thousand) at `debug`. A request cut off
//! before its answer (the client went away, or the shutdown's drain ended) is logged
//! all the same, without a status: its change may have been made. Together with the
//! audit of tag deletions (who deleted a tag, by hand or by policy) and the collector's
//! line per removed manifest, the log accounts for every manifest that went.
//!
//! Behind a reverse proxy the client's address is the proxy's.

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::{Method, StatusCode, Uri};

use super::Endpoint;

/// A request being served, for its line in the log once answered (or dropped).
pub struct Entry {
    method: Method,
    /// The path, and for an admin action or a manifest push its query (which names what
    /// the action is on, or the tags the push moves);
    /// only kept when the line will be written, and taken when it is.
    target: Option<String>,
    peer: Option<SocketAddr>,
    change: bool,
    started: Instant,
}

impl Entry {
    /// `endpoint`: what the router parsed the path into (None for the admin API's paths,
    /// and for a path that is no endpoint).
    pub fn start(method: &Method, uri: &Uri, endpoint: Option<&Endpoint>, peer: Option<SocketAddr>) -> Entry {
        let path = uri.path();
        let change = is_change(method, path, endpoint);
        let written =
            if change { tracing::enabled!(tracing::Level::INFO) } else { tracing::enabled!(tracing::Level::DEBUG) };
        // Queries of `/v2/` are left out (an upload's digest says nothing about who did
        // what), except a manifest push's: its `?tag=` moves tags.
        let manifest_push = *method == Method::PUT && matches!(endpoint, Some(Endpoint::Manifest { .. }));
        let target = written.then(|| match uri.query() {
            Some(query) if path.starts_with("/admin/") || manifest_push => format!("{path}?{query}"),
            _ => path.to_owned(),
        });
        Entry { method: method.clone(), target, peer, change, started: Instant::now() }
    }

    pub fn finish(mut self, status: StatusCode) {
        self.write(Some(status));
    }

    fn write(&mut self, status: Option<StatusCode>) {
        let Some(path) = self.target.take() else { return };
        let (method, ms) = (self.method.as_str(), self.started.elapsed().as_millis() as u64);
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        match (status, self.change) {
            (Some(status), true) => tracing::info!(method, path, status = status.as_u16(), peer, ms, "request"),
            (Some(status), false) => tracing::debug!(method, path, status = status.as_u16(), peer, ms, "request"),
            (None, true) => tracing::info!(method, path, peer, ms, "request cut off before its answer"),
            (None, false) => tracing::debug!(method, path, peer, ms, "request cut off before its answer"),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.write(None);
    }
}

/// Whether a request changes what the registry holds in a way an operator asks about
/// later: a manifest or tag pushed, a manifest, tag or blob deleted, an admin action.
/// Decided from the endpoint the router sees (it decodes `%XX`), so that no spelling of
/// a path takes a push out of the log. A blob upload's steps (a cancel included) are not
/// changes: the manifest push that uses the blob is what makes it part of an image.
fn is_change(method: &Method, path: &str, endpoint: Option<&Endpoint>) -> bool {
    let admin = path.starts_with("/admin/");
    match *method {
        Method::POST => admin,
        Method::PUT => admin || matches!(endpoint, Some(Endpoint::Manifest { .. })),
        Method::DELETE => admin || matches!(endpoint, Some(Endpoint::Manifest { .. } | Endpoint::Blob { .. })),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_told_from_reads_and_upload_steps() {
        let cases = [
            (Method::PUT, "/v2/a/manifests/v1", true),
            (Method::PUT, "/v2/a/manifest%73/v1", true),
            (Method::PUT, "/v2/blobs/uploads/manifests/v1", true),
            (Method::DELETE, "/v2/a/manifests/v1", true),
            (Method::DELETE, &format!("/v2/a/blobs/sha256:{}", "0".repeat(64)), true),
            (Method::POST, "/admin/gc", true),
            (Method::PUT, "/admin/retention/policies/p", true),
            (Method::GET, "/v2/a/manifests/v1", false),
            (Method::HEAD, "/v2/a/manifests/v1", false),
            (Method::POST, "/v2/a/blobs/uploads/", false),
            (Method::PUT, "/v2/manifests/blobs/uploads/x", false),
            (Method::DELETE, "/v2/a/blobs/uploads/x", false),
            (Method::GET, "/admin/gc/runs", false),
        ];
        for (method, path, change) in cases {
            let endpoint = Endpoint::parse(path).ok();
            assert_eq!(is_change(&method, path, endpoint.as_ref()), change, "{method} {path}");
        }
    }
}
