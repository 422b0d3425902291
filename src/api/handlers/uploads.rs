//! `/v2/<name>/blobs/uploads/[<id>]`: start (POST, with mount or a monolithic body),
//! status (GET), chunk (PATCH), finish (PUT), cancel (DELETE).

use std::sync::Arc;

use axum::body::Body;
use axum::body::Body as RequestBody;
use axum::http::request::Parts as Request;
use axum::http::{StatusCode, header};
use axum::response::Response;

use super::{finish, respond};
use crate::api::ApiResult;
use crate::api::headers::{self, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use crate::oci::{Digest, RepoName, UploadId};
use crate::registry::{ChunkRange, Error, Registry, UploadStatus};

/// `202 Accepted` (or the status's `204 No Content`) for a session in progress, with where
/// it stands. Its `Content-Length: 0` comes from axum (and goes from a 204, see
/// `api::connections`).
fn in_progress(name: &RepoName, status: &UploadStatus, code: StatusCode) -> Response {
    // The spec's inclusive range of bytes received; distribution answers `0-0` for none.
    let range = format!("0-{}", status.size.saturating_sub(1));
    finish(
        respond(code)
            .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{}", status.id))
            .header(header::RANGE, range)
            .header(DOCKER_UPLOAD_UUID, status.id.to_string()),
        Body::empty(),
    )
}

/// `201 Created` for a blob now in the repository.
fn created(name: &RepoName, digest: &Digest) -> Response {
    finish(
        respond(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
            .header(DOCKER_CONTENT_DIGEST, digest.to_string())
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

fn parse_digest(raw: &str) -> Result<Digest, Error> {
    raw.parse().map_err(|e| Error::DigestInvalid(format!("{e}")))
}

fn chunk_range(request: &Request) -> Result<Option<ChunkRange>, Error> {
    headers::get(request, header::CONTENT_RANGE)
        .map_err(Error::UploadInvalid)?
        .map(|raw| headers::parse_content_range(raw).map(|(start, end)| ChunkRange { start, end }))
        .transpose()
}

/// Runs a step that writes an upload's bytes on a task of its own, so that it ends (stored,
/// or rolled back to where the session was) even when the client goes away and the request
/// is dropped. Dropped half-way, a step would release the session while a blocking thread
/// still writes its last chunk, which could then land on the bytes of the client's retry.
async fn to_the_end<T: Send + 'static>(
    step: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(step).await.map_err(|e| Error::Internal(format!("upload task failed: {e}")))?
}

pub async fn start(registry: &Arc<Registry>, name: &RepoName, request: &Request, body: RequestBody) -> ApiResult {
    let params = headers::query(request);
    if let Some(mount) = headers::param(&params, "mount") {
        let digest = parse_digest(mount)?;
        // A `from` that is not a valid name cannot hold the blob: fall back to an upload.
        let from = headers::param(&params, "from").and_then(|f| f.parse::<RepoName>().ok());
        if registry.mount_blob(name, &digest, from.as_ref()).await?.is_some() {
            return Ok(created(name, &digest));
        }
        let status = registry.start_upload(name).await?;
        return Ok(in_progress(name, &status, StatusCode::ACCEPTED));
    }
    let digest = headers::param(&params, "digest").map(parse_digest).transpose()?;
    // A client may say which algorithm it will name the blob by (spec 1.1): one that would
    // be refused at the end is refused now, before any byte is sent.
    if let Some(algorithm) = headers::param(&params, "digest-algorithm") {
        algorithm
            .parse::<crate::oci::DigestAlgorithm>()
            .map_err(|e| Error::DigestInvalid(format!("digest-algorithm: {e}")))?;
    }
    // Checked before a session exists, so a refusal leaves none behind.
    let range = if digest.is_some() { chunk_range(request)? } else { None };
    // A client that waits for `100 Continue` before its body hears a quota's refusal
    // before sending it. (One that sends at once is refused at the end: a refusal with
    // its body unread would reach it as a reset connection.)
    let expects = headers::get(request, axum::http::header::EXPECT)
        .ok()
        .flatten()
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    if let (true, Some(digest), Some(size)) = (expects, &digest, headers::content_length(request)) {
        registry.check_quota(name, digest, size).await?;
    }
    let status = registry.start_upload(name).await?;
    match digest {
        // Monolithic upload in one POST: the body is the whole blob.
        Some(digest) => {
            let (r, n, d) = (registry.clone(), name.clone(), digest.clone());
            to_the_end(async move {
                let stored = r.finish_upload(&n, &status.id, &d, range, body.into_data_stream()).await;
                if stored.is_err() {
                    // The client never learned this session's id, so nobody can resume it.
                    // (A failure here, such as a session already cancelled by the refusal,
                    // leaves at most what collection removes after `upload_max_age`.)
                    let _ = r.cancel_upload(&n, &status.id).await;
                }
                stored
            })
            .await?;
            Ok(created(name, &digest))
        }
        None => Ok(in_progress(name, &status, StatusCode::ACCEPTED)),
    }
}

pub async fn status(registry: &Registry, name: &RepoName, id: &UploadId) -> ApiResult {
    let status = registry.upload_status(name, id).await?;
    Ok(in_progress(name, &status, StatusCode::NO_CONTENT))
}

pub async fn patch(
    registry: &Arc<Registry>,
    name: &RepoName,
    id: &UploadId,
    request: &Request,
    body: RequestBody,
) -> ApiResult {
    let range = chunk_range(request)?;
    let (r, n, i) = (registry.clone(), name.clone(), id.clone());
    let status = to_the_end(async move { r.append_upload(&n, &i, range, body.into_data_stream()).await }).await?;
    Ok(in_progress(name, &status, StatusCode::ACCEPTED))
}

pub async fn put(
    registry: &Arc<Registry>,
    name: &RepoName,
    id: &UploadId,
    request: &Request,
    body: RequestBody,
) -> ApiResult {
    let params = headers::query(request);
    let digest = headers::param(&params, "digest")
        .ok_or_else(|| Error::DigestInvalid("finishing an upload needs ?digest=<digest>".into()))
        .and_then(parse_digest)?;
    let range = chunk_range(request)?;
    let (r, n, i, d) = (registry.clone(), name.clone(), id.clone(), digest.clone());
    to_the_end(async move { r.finish_upload(&n, &i, &d, range, body.into_data_stream()).await }).await?;
    Ok(created(name, &digest))
}

pub async fn cancel(registry: &Registry, name: &RepoName, id: &UploadId) -> ApiResult {
    registry.cancel_upload(name, id).await?;
    Ok(finish(respond(StatusCode::NO_CONTENT), Body::empty()))
}
