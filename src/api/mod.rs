//! The HTTP API: the OCI Distribution endpoints under `/v2/`.
//!
//! A request's path is parsed into an [`Endpoint`] (a closed enum), then dispatched on
//! (endpoint, method) to a handler. Handlers translate between HTTP and the registry core;
//! errors become OCI responses in `error` only.

mod access_log;
mod admin;
pub mod connections;
mod endpoint;
mod error;
mod handlers;
mod headers;
pub mod request_metrics;

use std::sync::Arc;

use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

pub use endpoint::{Endpoint, PathError};
use error::ApiError;

use crate::config::Config;
use crate::gc::Collector;
use crate::policy::Retention;
use crate::registry::{Error, Registry};

pub type ApiResult = Result<Response, ApiError>;

/// What every request can reach.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub collector: Arc<Collector>,
    pub retention: Arc<Retention>,
    /// The configuration the server started with (its policies are reloaded with the
    /// admin API's).
    pub config: Config,
    /// Held by a policy change through the admin API from reading the stored policies to
    /// installing the new set: two changes at once would each validate without the other,
    /// store a conflicting pair, and install a set missing one of them.
    pub policy_changes: tokio::sync::Mutex<()>,
    /// Counts and latencies of the API's requests, for `/metrics`.
    pub requests: request_metrics::RequestMetrics,
}

/// The application: every request goes through `dispatch`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// The monitoring address's application (`http.monitor_listen`): `/healthz` and
/// `/metrics`, nothing else.
pub fn monitor_router(state: Arc<AppState>) -> Router {
    Router::new().fallback(monitor_dispatch).with_state(state)
}

async fn monitor_dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match parts.uri.path() {
        "/healthz" | "/metrics" => admin::route(&state, &parts, body, None).await,
        other => admin::not_found(other),
    }
}

/// The data directory a command was told to act on (`bosun gc --data-dir`, percent-encoded):
/// the admin API refuses the request unless it serves that directory (`cli::AdminAddr`).
pub const DATA_DIR_HEADER: &str = "bosun-data-dir";

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let local = parts.extensions.get::<connections::LocalAddr>().map(|l| l.0);
    let admin = path.starts_with("/admin/") || path == "/metrics" || path == "/healthz";
    // Parsed once: the router, the access log and the metrics see the same endpoint.
    let endpoint = (!admin).then(|| Endpoint::parse(path));
    let parsed = endpoint.as_ref().and_then(|e| e.as_ref().ok());
    let entry = access_log::Entry::start(&parts.method, &parts.uri, parsed, peer);
    let timer = state.requests.start(request_metrics::Route::of(path, parsed), &parts.method);
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let refused = path.starts_with("/admin/") && !admin::allowed(peer, local, state.config.admin_remote);
    let answer = async {
        match endpoint {
            None if refused => admin::refuse_remote(),
            None => admin::route(&state, &parts, body, peer).await,
            Some(endpoint) => {
                let methods = endpoint.as_ref().map(Endpoint::methods).unwrap_or_default();
                let mut response = match route(&state.registry, endpoint, Request::from_parts(parts, body)).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                };
                if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                    // RFC 9110 asks a 405 to say what is allowed: a wrong method, or one this
                    // resource refuses now (a delete while deletes are off, or of a blob in use).
                    let allow: Vec<&str> = methods.iter().filter(|m| **m != method).map(Method::as_str).collect();
                    response.headers_mut().insert(header::ALLOW, headers::value(allow.join(", ")));
                }
                response.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
                response
            }
        }
    };
    // A panic is a bug: answered 500 and logged as the failure it is, where unwinding the
    // connection's task would reset it and count it as a client that hung up. What the
    // handler held (the writer, digest locks, an upload session) is released on unwind.
    let response = match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = crate::panic_message(&*panic);
            ApiError(Error::Internal(format!("the handler of {method} {uri} panicked: {what}"))).into_response()
        }
    };
    // A client that hung up mid-body is not answered: dropped unfinished, both count the
    // request as cut off.
    if response.extensions().get::<error::CutOff>().is_none() {
        entry.finish(response.status());
        timer.finish(response.status());
    }
    response
}

async fn route(registry: &Arc<Registry>, endpoint: Result<Endpoint, PathError>, request: Request) -> ApiResult {
    use Endpoint::*;
    let endpoint = match endpoint {
        // A tag that cannot exist names no manifest: reading or deleting it is a 404 (as
        // the conformance suite expects); only a push of it is a client error.
        Err(PathError::Tag(e)) if request.method() != Method::PUT => {
            return Err(Error::ManifestUnknown(format!("{} ({e})", e.0)).into());
        }
        other => other?,
    };
    // Handlers get the head by reference and the body by value: a `&Request` is not
    // `Send` (its body is not `Sync`), so it cannot live across an await.
    let (request, body) = request.into_parts();
    let method = request.method.clone();
    match (&endpoint, &method) {
        (Base, &Method::GET | &Method::HEAD) => Ok(handlers::listing::base()),
        // HEAD as GET; hyper sends no body after the head of an answer to a HEAD.
        (Catalog, &Method::GET | &Method::HEAD) => handlers::listing::catalog(registry, &request).await,
        (Tags { name }, &Method::GET | &Method::HEAD) => handlers::listing::tags(registry, name, &request).await,
        (Referrers { name, digest }, &Method::GET | &Method::HEAD) => {
            handlers::listing::referrers(registry, name, digest, &request).await
        }
        (Manifest { name, reference }, &Method::GET | &Method::HEAD) => {
            handlers::manifests::get(registry, name, reference, &request).await
        }
        (Manifest { name, reference }, &Method::PUT) => {
            handlers::manifests::put(registry, name, reference, &request, body).await
        }
        (Manifest { name, reference }, &Method::DELETE) => {
            handlers::manifests::delete(registry, name, reference, &request).await
        }
        (Blob { name, digest }, &Method::GET | &Method::HEAD) => {
            handlers::blobs::get(registry, name, digest, &request).await
        }
        (Blob { name, digest }, &Method::DELETE) => handlers::blobs::delete(registry, name, digest, &request).await,
        (UploadStart { name }, &Method::POST) => handlers::uploads::start(registry, name, &request, body).await,
        (Upload { name, id }, &Method::GET | &Method::HEAD) => handlers::uploads::status(registry, name, id).await,
        (Upload { name, id }, &Method::PATCH) => handlers::uploads::patch(registry, name, id, &request, body).await,
        (Upload { name, id }, &Method::PUT) => handlers::uploads::put(registry, name, id, &request, body).await,
        (Upload { name, id }, &Method::DELETE) => handlers::uploads::cancel(registry, name, id).await,
        _ => Err(Error::MethodNotAllowed(format!("{method} is not allowed on {}", request.uri.path())).into()),
    }
}
