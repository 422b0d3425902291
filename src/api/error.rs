//! The one place where errors become OCI error responses: a status, a code from the
//! distribution spec, a message that tells the client what to do, and the spec's JSON body
//! `{"errors":[{"code","message","detail"}]}`.
//!
//! Internal failures are logged here, once, with their cause, and answered with a generic
//! 500; a client's mistake is never a 500. A full disk fails every write until someone
//! frees space: it is logged at most once a minute (`throttle.rs`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::endpoint::PathError;
use crate::registry::Error;
use crate::throttle::Throttle;

/// Marks the answer to a request whose client hung up before sending its whole body: the
/// access log and the request metrics count it as cut off, not by its status.
#[derive(Clone, Copy, Debug)]
pub struct CutOff;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        ApiError(match e {
            PathError::NotFound(_) => Error::NotFound(e.to_string()),
            PathError::Name(_) => Error::NameInvalid(e.to_string()),
            PathError::Digest(_) => Error::DigestInvalid(e.to_string()),
            PathError::Tag(_) => Error::TagInvalid(e.to_string()),
            PathError::UploadId(_) => Error::UploadUnknown,
        })
    }
}

static STORAGE_FULL: Throttle = Throttle::new();
static LOW_SPACE: Throttle = Throttle::new();

/// The status and OCI error code of each error.
fn status_and_code(e: &Error) -> (StatusCode, &'static str) {
    use Error::*;
    match e {
        // No endpoint at that path (or one that does not decode): the spec's codes are a
        // closed list, and "nothing known by that name" is the nearest.
        NotFound(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
        BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        UploadUnknown => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        UploadInvalid(_) | BodyRead(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
        // The body ended early (short of its Content-Length, or a chunked one cut), for a
        // blob or a manifest alike. Read
        // only by a client that half-closed its side and waits (rare): the response carries
        // `CutOff`, counted and logged as a client that hung up.
        ClientGone(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
        ChunkOutOfOrder { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
        // The spec's codes are a closed list with none for a read range; the status, the
        // message and `Content-Range: bytes */<size>` say what is wrong. Not BLOB_UNKNOWN:
        // the blob exists, and a client reading codes must not push it again.
        RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID"),
        DigestInvalid(_) | DigestMismatch { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
        ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
        ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        // TAG_INVALID and PAGINATION_NUMBER_INVALID are not in the spec's list; they are the
        // reference registry's (Distribution) codes for these cases, which clients know.
        TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
        DeleteDisabled => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        // 405 (not 409): the OCI conformance suite and clients accept 405 for a refused
        // delete, and the message says what to delete first.
        BlobReferenced { .. } | ManifestReferenced { .. } => (StatusCode::METHOD_NOT_ALLOWED, "DENIED"),
        Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
        // Not the client's right but the registry's state: the same request may succeed
        // once that changes (the tag deleted again).
        Conflict(_) => (StatusCode::CONFLICT, "DENIED"),
        // The spec's codes are a closed list; the write was refused, as by a rule.
        PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "DENIED"),
        PaginationInvalid(_) => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
        MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        Unsupported(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
        // 507 (a 5xx: clients retry later) with a message that says what happened, instead
        // of a bare 500; the code list has nothing nearer than the reference's UNKNOWN.
        StorageFull(_) | LowSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN"),
        Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(&self.0);
        let message = match &self.0 {
            Error::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "internal error; the registry's log has the cause".to_owned()
            }
            Error::StorageFull(cause) => {
                if let Some(skipped) = STORAGE_FULL.due() {
                    tracing::error!(%cause, skipped, "request failed: storage is full");
                }
                self.0.to_string()
            }
            Error::LowSpace { available, floor } => {
                if let Some(skipped) = LOW_SPACE.due() {
                    tracing::warn!(available, floor, skipped, "upload refused: free space is under min_free_space");
                }
                self.0.to_string()
            }
            other => other.to_string(),
        };
        let detail = match &self.0 {
            Error::BlobUnknown(d) | Error::ManifestBlobUnknown(d) => json!({ "digest": d }),
            Error::NameUnknown(n) => json!({ "name": n.as_str() }),
            _ => json!({}),
        };
        let body = json!({ "errors": [{ "code": code, "message": message, "detail": detail }] });
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self.0 {
            // Tell a client that sent a chunk out of order where the upload stands.
            Error::ChunkOutOfOrder { have, .. } if *have > 0 => {
                headers.insert(header::RANGE, super::headers::value(format!("0-{}", have - 1)));
            }
            Error::RangeNotSatisfiable { size } => {
                headers.insert(header::CONTENT_RANGE, super::headers::value(format!("bytes */{size}")));
            }
            _ => {}
        }
        if matches!(self.0, Error::ClientGone(_)) {
            response.extensions_mut().insert(CutOff);
        }
        response
    }
}
