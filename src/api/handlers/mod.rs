//! Handlers, one module per resource: they parse what is left of the request (headers,
//! query, body), call the registry core and shape the response.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod uploads;

use axum::body::Body;
use axum::http::{Response, StatusCode};

/// A response builder with a status.
fn respond(status: StatusCode) -> axum::http::response::Builder {
    Response::builder().status(status)
}

/// Finishes a builder whose headers all came from validated values.
fn finish(builder: axum::http::response::Builder, body: Body) -> axum::response::Response {
    builder.body(body).expect("response built from validated parts")
}
