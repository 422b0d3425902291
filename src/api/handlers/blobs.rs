//! `/v2/<name>/blobs/<digest>`: GET (with `Range` and conditions), HEAD, DELETE.

use axum::body::Body;
use axum::http::request::Parts as Request;
use axum::http::{Method, StatusCode, header};

use super::{finish, not_modified, respond};
use crate::api::ApiResult;
use crate::api::headers::{self, DOCKER_CONTENT_DIGEST};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::registry::{ReadOutcome, Registry};

pub async fn get(registry: &Registry, name: &RepoName, digest: &Digest, request: &Request) -> ApiResult {
    let etag = format!("\"{digest}\"");
    let common = |status| {
        respond(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(DOCKER_CONTENT_DIGEST, digest.to_string())
            .header(header::ETAG, &etag)
            .header(header::ACCEPT_RANGES, "bytes")
    };
    let conditional =
        request.headers.contains_key(header::IF_MATCH) || request.headers.contains_key(header::IF_NONE_MATCH);
    if request.method == Method::HEAD || conditional {
        // Preconditions are judged on a blob that exists: an unknown one is still a 404.
        let size = registry.blob_size(name, digest).await?;
        match headers::condition(request).read(&format!("blob {digest}"), &digest.to_string())? {
            ReadOutcome::NotModified => return Ok(not_modified(digest, &etag)),
            ReadOutcome::Proceed if request.method == Method::HEAD => {
                return Ok(finish(common(StatusCode::OK).header(header::CONTENT_LENGTH, size), Body::empty()));
            }
            ReadOutcome::Proceed => {}
        }
    }
    // An unreadable Range is ignored, which RFC 9110 allows for any Range: the whole blob.
    let range = headers::get(request, header::RANGE)
        .ok()
        .flatten()
        .filter(|_| headers::range_applies(request, &etag))
        .map(str::to_owned);
    let mut partial = false;
    let read = registry
        .read_blob(name, digest, |size| {
            Ok(match headers::resolve_range(range.as_deref(), size)? {
                Some(r) => {
                    partial = true;
                    r
                }
                None => (0, size),
            })
        })
        .await?;
    let builder = if partial {
        common(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", read.offset, read.offset + read.len - 1, read.size),
        )
    } else {
        common(StatusCode::OK)
    };
    Metrics::add(&registry.metrics.blob_bytes_served, read.len);
    Ok(finish(builder.header(header::CONTENT_LENGTH, read.len), Body::from_stream(read.body)))
}

pub async fn delete(registry: &Registry, name: &RepoName, digest: &Digest, request: &Request) -> ApiResult {
    registry.delete_blob(name, digest, &headers::condition(request)).await?;
    Ok(finish(respond(StatusCode::ACCEPTED), Body::empty()))
}
