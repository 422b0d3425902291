//! The admin API (`/admin/...`) and Prometheus metrics (`/metrics`).
//!
//! - `POST /admin/gc[?dry_run=true]`: run a garbage collection now; answers its report.
//! - `POST /admin/reconcile[?dry_run=true]`: compare storage with metadata now.
//! - `GET /admin/gc/runs[?limit=N]`: recorded runs, newest first.
//! - `PUT|GET|DELETE /admin/failpoints/<name>`: arm, wait for, release a test pause point
//!   (only with `test_failpoints` on).

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Method, Response, StatusCode, header};
use serde::Serialize;

use super::AppState;
use super::headers;

fn json(status: StatusCode, value: &impl Serialize) -> axum::response::Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_string_pretty(value).expect("reports serialize")))
        .expect("valid response")
}

fn error(status: StatusCode, message: impl Into<String>) -> axum::response::Response {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn flag(request: &Parts, key: &str) -> bool {
    headers::param(&headers::query(request), key).is_some_and(|v| v == "true" || v == "1")
}

/// Handles `/admin/...` and `/metrics`; `None` if the path is not one of them.
pub async fn route(state: &AppState, request: &Parts) -> Option<axum::response::Response> {
    let path = request.uri.path();
    let collector = &state.collector;
    let outcome = |r: crate::gc::Result<crate::gc::Report>| match r {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    Some(match (&request.method, path) {
        (&Method::GET, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Body::from(state.registry.metrics.render()))
            .expect("valid response"),
        (&Method::POST, "/admin/gc") => outcome(collector.collect("api", flag(request, "dry_run")).await),
        (&Method::POST, "/admin/reconcile") => outcome(collector.reconcile("api", flag(request, "dry_run")).await),
        (&Method::GET, "/admin/gc/runs") => {
            let limit = headers::param(&headers::query(request), "limit").and_then(|n| n.parse().ok()).unwrap_or(50);
            match collector.history(limit).await {
                Ok(runs) => json(StatusCode::OK, &runs),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (method, p) if p.starts_with("/admin/failpoints/") => {
            let failpoints = &state.registry.failpoints;
            if !failpoints.enabled() {
                return Some(error(StatusCode::NOT_FOUND, "failpoints are off (test_failpoints)"));
            }
            let name = &p["/admin/failpoints/".len()..];
            match *method {
                Method::PUT => {
                    failpoints.arm(name);
                    json(StatusCode::OK, &serde_json::json!({ "armed": name }))
                }
                Method::GET => {
                    let reached = failpoints.wait_reached(name, Duration::from_secs(60)).await;
                    json(StatusCode::OK, &serde_json::json!({ "reached": reached }))
                }
                Method::DELETE => {
                    failpoints.release(name);
                    json(StatusCode::OK, &serde_json::json!({ "released": name }))
                }
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "PUT, GET or DELETE"),
            }
        }
        (_, p) if p.starts_with("/admin/") || p == "/metrics" => {
            error(StatusCode::NOT_FOUND, format!("no such admin endpoint: {p}"))
        }
        _ => return None,
    })
}
