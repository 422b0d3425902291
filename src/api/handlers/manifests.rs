//! `/v2/<name>/manifests/<reference>`: GET, HEAD, PUT, DELETE.

use axum::body::Body;
use axum::body::Body as RequestBody;
use axum::http::request::Parts as Request;
use axum::http::{Method, StatusCode, header};
use http_body_util::BodyExt;

use super::{finish, not_modified, respond};
use crate::api::ApiResult;
use crate::api::headers::{self, DOCKER_CONTENT_DIGEST, OCI_SUBJECT, OCI_TAG};
use crate::oci::media_type::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::oci::{Reference, RepoName, Tag};
use crate::registry::{Error, ReadOutcome, Registry};

/// Whether a client that sent `accept` can take a manifest of `media_type`. Only an index
/// is withheld from a client that did not ask for one (as distribution does), because a
/// client that expects a single image cannot use it; an image manifest is always served.
fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    if media_type != OCI_INDEX && media_type != DOCKER_MANIFEST_LIST {
        return true;
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    // Media types compare without case (RFC 9110), and a type given `q=0` is refused.
    accept
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.split(';');
            let t = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse() == Ok(0.0_f32)));
            (!refused).then_some(t)
        })
        .any(|t| t == media_type || t == "*/*" || t == "application/*" || t == "application/json")
}

pub async fn get(registry: &Registry, name: &RepoName, reference: &Reference, request: &Request) -> ApiResult {
    let manifest = registry.get_manifest(name, reference).await?;
    // Several Accept headers are allowed; join them.
    let accept: Vec<&str> = request.headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let accept = (!accept.is_empty()).then(|| accept.join(","));
    if matches!(reference, Reference::Tag(_)) && !accepts(accept.as_deref(), &manifest.media_type) {
        return Err(Error::ManifestUnknown(format!(
            "{reference} (it is an index of type {}, which the Accept header does not list)",
            manifest.media_type
        ))
        .into());
    }
    let etag = format!("\"{}\"", manifest.digest);
    let precondition =
        headers::condition(request).read(&format!("{name}:{reference}"), &manifest.digest.to_string())?;
    if request.method == Method::GET {
        // A 304 too: the client polled the tag and uses what it points at.
        registry.note_pull(&manifest);
    }
    if precondition == ReadOutcome::NotModified {
        return Ok(not_modified(&manifest.digest, &etag));
    }
    let builder = respond(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(header::ETAG, etag)
        .header(header::CONTENT_LENGTH, manifest.payload.len());
    let body = if request.method == Method::HEAD { Body::empty() } else { Body::from(manifest.payload) };
    Ok(finish(builder, body))
}

pub async fn put(
    registry: &Registry,
    name: &RepoName,
    reference: &Reference,
    request: &Request,
    body: RequestBody,
) -> ApiResult {
    let limit = registry.options().max_manifest_bytes;
    if let Some(size) = headers::content_length(request)
        && size > limit
    {
        return Err(Error::ManifestTooLarge { size: Some(size), limit }.into());
    }
    let content_type = headers::get(request, header::CONTENT_TYPE).map_err(Error::ManifestInvalid)?.map(str::to_owned);
    // Read at most one byte past the limit, so an oversized body without Content-Length
    // is refused without being buffered whole.
    let body = http_body_util::Limited::new(body, limit as usize + 1)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Error::ManifestTooLarge { size: None, limit },
            Err(e) => match Error::body(&*e) {
                gone @ Error::ClientGone(_) => gone,
                _ => Error::ManifestInvalid(format!("the manifest could not be read whole: {e}")),
            },
        })?
        .to_bytes();
    // A push by digest may name tags to point at it too (`?tag=`, spec 1.2); each accepted
    // tag is listed back in `OCI-Tag`, which is how a client learns the registry took them.
    let mut also_tag: Vec<Tag> = match reference {
        Reference::Digest(_) => headers::query(request)
            .into_iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.parse::<Tag>().map_err(|e| Error::TagInvalid(format!("tag parameter {v:?}: {e}"))))
            .collect::<Result<_, _>>()?,
        Reference::Tag(_) => Vec::new(),
    };
    // Each tag once, in the client's order (`OCI-Tag` lists what was tagged).
    let mut seen = std::collections::HashSet::new();
    also_tag.retain(|t| seen.insert(t.as_str().to_owned()));
    let condition = headers::condition(request);
    let pushed = registry.put_manifest(name, reference, &also_tag, content_type.as_deref(), body, &condition).await?;
    let mut builder = respond(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/manifests/{}", pushed.digest))
        .header(DOCKER_CONTENT_DIGEST, pushed.digest.to_string());
    if !also_tag.is_empty() {
        let list: Vec<&str> = also_tag.iter().map(Tag::as_str).collect();
        builder = builder.header(OCI_TAG, headers::value(list.join(", ")));
    }
    if let Some(subject) = &pushed.subject {
        builder = builder.header(OCI_SUBJECT, subject.to_string());
    }
    Ok(finish(builder, Body::empty()))
}

pub async fn delete(registry: &Registry, name: &RepoName, reference: &Reference, request: &Request) -> ApiResult {
    registry.delete_manifest(name, reference, &headers::condition(request)).await?;
    Ok(finish(respond(StatusCode::ACCEPTED), Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_type::OCI_MANIFEST;

    #[test]
    fn content_negotiation() {
        assert!(accepts(None, OCI_INDEX));
        assert!(accepts(Some(OCI_MANIFEST), OCI_MANIFEST));
        assert!(accepts(Some("application/vnd.docker.distribution.manifest.v2+json"), OCI_MANIFEST));
        assert!(!accepts(Some(OCI_MANIFEST), OCI_INDEX));
        assert!(accepts(Some(&format!("{OCI_MANIFEST}, {OCI_INDEX};q=0.5")), OCI_INDEX));
        assert!(accepts(Some("*/*"), DOCKER_MANIFEST_LIST));
        // Without case, and not what the client gave no weight to.
        assert!(accepts(Some("Application/VND.OCI.Image.Index.v1+JSON"), OCI_INDEX));
        assert!(!accepts(Some(&format!("{OCI_MANIFEST}, {OCI_INDEX};q=0")), OCI_INDEX));
        assert!(!accepts(Some(&format!("{OCI_MANIFEST}, {OCI_INDEX}; q=0.0")), OCI_INDEX));
    }
}
