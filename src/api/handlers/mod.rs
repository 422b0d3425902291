//! Handlers, one module per resource: they parse what is left of the request (headers,
//! query, body), call the registry core and shape the response.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod uploads;

use axum::body::Body;
use axum::http::{Response, StatusCode, header};

use crate::api::headers::DOCKER_CONTENT_DIGEST;
use crate::oci::Digest;

/// A response builder with a status.
fn respond(status: StatusCode) -> axum::http::response::Builder {
    Response::builder().status(status)
}

/// Finishes a builder whose headers all came from validated values.
fn finish(builder: axum::http::response::Builder, body: Body) -> axum::response::Response {
    builder.body(body).expect("response built from validated parts")
}

/// A 304 (the client has this content, addressed by `digest`): the validator and the
/// digest, none of the content's own fields (RFC 9110 §15.4.5).
fn not_modified(digest: &Digest, etag: &str) -> axum::response::Response {
    finish(
        respond(StatusCode::NOT_MODIFIED).header(header::ETAG, etag).header(DOCKER_CONTENT_DIGEST, digest.to_string()),
        Body::empty(),
    )
}
