//! `/v2/`, `/v2/_catalog`, `/v2/<name>/tags/list` and `/v2/<name>/referrers/<digest>`.

use axum::body::Body;
use axum::http::request::Parts as Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{finish, respond};
use crate::api::ApiResult;
use crate::api::headers::{self, OCI_FILTERS_APPLIED};
use crate::oci::media_type::OCI_INDEX;
use crate::oci::{Digest, RepoName};
use crate::registry::{Error, Registry};

/// The largest page served; a client asking for more gets this many and a `Link` header.
const MAX_PAGE: usize = 10_000;
/// The most referrers in one answer, and about the most bytes of it (annotations can make
/// each descriptor as large as a manifest): an index of at most 1 MiB (or one referrer),
/// well within the 4 MiB clients accept for one. More come with a `Link` to the next
/// page, as the spec asks of a list that does not fit in one.
const REFERRERS_PAGE: usize = 1_000;
const REFERRERS_PAGE_BYTES: usize = 1 << 20;

pub fn base() -> Response {
    finish(respond(StatusCode::OK).header(header::CONTENT_TYPE, "application/json"), Body::from("{}"))
}

/// `n` and `last` from the query: the page size (capped at `max`) and where the page
/// starts.
fn page(params: &[(String, String)], max: usize) -> Result<(usize, Option<String>), Error> {
    let n = match headers::param(params, "n") {
        None => max,
        Some(raw) => headers::decimal(raw)
            .ok_or_else(|| Error::PaginationInvalid(format!("n={raw:?} is not a non-negative integer")))?
            .min(max as u64) as usize,
    };
    Ok((n, headers::param(params, "last").map(str::to_owned)))
}

/// The `Link` to the page after `last`, `n` items long (`extra`: more of the query).
fn next_link(path: &str, n: usize, last: &str, extra: &str) -> String {
    let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
    format!("<{path}?n={n}&last={last}{extra}>; rel=\"next\"")
}

/// A JSON list response, with a `Link` to the next page when `items` had more than `n`.
fn paged(path: &str, mut items: Vec<String>, n: usize, key: &str, name: Option<&RepoName>) -> Response {
    let mut builder = respond(StatusCode::OK).header(header::CONTENT_TYPE, "application/json");
    if items.len() > n {
        items.truncate(n);
        if let Some(last) = items.last() {
            builder = builder.header(header::LINK, next_link(path, n, last, ""));
        }
    }
    let mut body = json!({ key: items });
    if let Some(name) = name {
        body["name"] = Value::from(name.as_str());
    }
    finish(builder, Body::from(body.to_string()))
}

pub async fn catalog(registry: &Registry, request: &Request) -> ApiResult {
    let (n, last) = page(&headers::query(request), MAX_PAGE)?;
    let repos = registry.catalog(last, n + 1).await?;
    Ok(paged("/v2/_catalog", repos, n, "repositories", None))
}

pub async fn tags(registry: &Registry, name: &RepoName, request: &Request) -> ApiResult {
    let (n, last) = page(&headers::query(request), MAX_PAGE)?;
    let tags = registry.tags(name, last, n + 1).await?;
    Ok(paged(&format!("/v2/{name}/tags/list"), tags, n, "tags", Some(name)))
}

pub async fn referrers(registry: &Registry, name: &RepoName, digest: &Digest, request: &Request) -> ApiResult {
    let params = headers::query(request);
    // An empty filter names no type: no filter (no manifest has an empty artifactType).
    let filter = headers::param(&params, "artifactType").filter(|t| !t.is_empty()).map(str::to_owned);
    let filtered = filter.is_some();
    let (n, last) = page(&params, REFERRERS_PAGE)?;
    let (referrers, more) = registry.referrers(name, digest, filter.clone(), (last, n, REFERRERS_PAGE_BYTES)).await?;
    let next = more.then(|| {
        let extra = filter
            .map(|t| format!("&artifactType={}", form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()));
        referrers
            .last()
            .map(|r| next_link(&format!("/v2/{name}/referrers/{digest}"), n, &r.digest, &extra.unwrap_or_default()))
    });
    let manifests: Vec<Value> = referrers
        .into_iter()
        .map(|r| {
            let mut d = json!({ "mediaType": r.media_type, "digest": r.digest, "size": r.size });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = Value::from(t);
            }
            if let Some(a) = r.annotations {
                d["annotations"] = json!(a);
            }
            d
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut builder = respond(StatusCode::OK).header(header::CONTENT_TYPE, OCI_INDEX);
    if filtered {
        builder = builder.header(OCI_FILTERS_APPLIED, "artifactType");
    }
    if let Some(Some(link)) = next {
        builder = builder.header(header::LINK, link);
    }
    Ok(finish(builder, Body::from(body.to_string())))
}
