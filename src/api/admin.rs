//! The admin API (`/admin/...`), Prometheus metrics (`/metrics`) and the health check
//! (`/healthz`). JSON in and out.
//!
//! - `GET /healthz`: 200 while the server can serve, 503 with the reason once it cannot
//!   until a restart (a failed flush of the metadata log) or its database does not answer:
//!   for a supervisor's liveness probe, open to every client like `/metrics`.
//! - `POST /admin/gc[?dry_run=true][&grace_period=10m]` (a grace period for this run
//!   only), `POST /admin/reconcile[?dry_run=true]`,
//!   `GET /admin/gc/runs[?limit=N]`, `POST /admin/gc/pause[?reason=TEXT][&for=2h]`,
//!   `POST /admin/gc/resume`, `GET /admin/gc/status` (paused? what runs now?): garbage
//!   collection. While it is paused (through restarts, until a resume), collections,
//!   reconciles and retention deletions are refused with 409; dry runs and plans still
//!   report.
//! - `GET /admin/retention/policies`, `PUT|DELETE /admin/retention/policies/<name>`:
//!   retention policies (those of the config file are listed, not changed, here).
//! - `GET /admin/retention/explain?repository=R`, `POST /admin/retention/plan[?repository=R]
//!   [&policy=P]`, `POST /admin/retention/apply?plan=ID`, `POST /admin/retention/run[?policy=P]`.
//! - `POST /admin/restore?repository=R&tag=T`: restore a deleted tag within the window.
//! - `GET /admin/deletions[?limit=N]`: the audit of tag deletions (who, when, why).
//! - `GET /admin/du[?repository=R]`: storage accounting.
//! - `PUT|GET|DELETE /admin/failpoints/<name>`: test pause points, and
//!   `POST /admin/clock?advance_ms=N` to move the clock ahead (`test_failpoints` only).

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::AppState;
use super::headers;
use crate::policy::RetentionSpec;
use crate::policy::retention::RetentionError;

type AdminResponse = axum::response::Response;

fn json(status: StatusCode, value: &impl Serialize) -> AdminResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_string_pretty(value).expect("reports serialize")))
        .expect("valid response")
}

fn error(status: StatusCode, message: impl Into<String>) -> AdminResponse {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// The monitoring address serves nothing but `/healthz` and `/metrics`.
pub fn not_found(path: &str) -> AdminResponse {
    error(StatusCode::NOT_FOUND, format!("{path} is not served here: this address serves /healthz and /metrics only"))
}

/// A run's report; a run refused because collection is paused is a 409, not a failure.
fn run_report(r: crate::gc::Result<crate::gc::Report>) -> AdminResponse {
    match r {
        Err(e @ crate::gc::GcError::Paused(_)) => error(StatusCode::CONFLICT, e.to_string()),
        other => ok_or_500(other),
    }
}

fn ok_or_500<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> AdminResponse {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn retention_response<T: Serialize>(r: Result<T, RetentionError>) -> AdminResponse {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e @ RetentionError::Changed { .. }) | Err(e @ RetentionError::AlreadyApplied(_)) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ RetentionError::PlanUnknown(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ RetentionError::Paused(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ RetentionError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Who made an admin request, for the records that name their author: the client's
/// address (the admin API has no accounts yet).
fn client(peer: Option<std::net::SocketAddr>) -> String {
    peer.map_or_else(|| "unknown client".to_owned(), |p| p.ip().to_string())
}

/// Whether a client at `peer` may use the admin API: there is no authentication yet, so
/// only loopback clients may, unless the operator opened it (`admin_remote`). A request
/// with no known peer (never the case behind the real listener) is refused.
pub fn allowed(peer: Option<std::net::SocketAddr>, admin_remote: bool) -> bool {
    admin_remote || peer.is_some_and(|p| p.ip().is_loopback())
}

pub fn refuse_remote() -> AdminResponse {
    error(
        StatusCode::FORBIDDEN,
        "the admin API answers loopback clients only (it has no authentication yet); set admin_remote = true to open it",
    )
}

/// Handles `/admin/...`, `/metrics` and `/healthz`, for a client at `peer`.
pub async fn route(state: &AppState, request: &Parts, body: Body, peer: Option<std::net::SocketAddr>) -> AdminResponse {
    let params = headers::query(request);
    let param = |key: &str| headers::param(&params, key).map(str::to_owned);
    let flag = |key: &str| param(key).is_some_and(|v| v == "true" || v == "1");
    let limit = param("limit").and_then(|n| n.parse().ok()).unwrap_or(50);
    let collector = &state.collector;
    let retention = &state.retention;
    let path = request.uri.path();
    match (&request.method, path) {
        (&Method::GET, "/metrics") => {
            let (meta, cutoff) = (&state.registry.meta, collector.cutoff());
            let gauges = meta.read(move |c| crate::metadata::gc::gauges(c, cutoff)).await;
            // statvfs can wait on a network file system: not on a runtime thread.
            let m = meta.clone();
            let disk = tokio::task::spawn_blocking(move || m.disk_space())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            if let Err(e) = &disk {
                tracing::warn!(error = %e, "reading the data directory's free space failed");
            }
            if let Err(e) = &gauges {
                tracing::error!(error = %e, "reading the metrics gauges from metadata failed");
            }
            let mut text = state.registry.metrics.render(
                meta.log_failed(),
                collector.in_progress().map(|run| (run.kind, run.started_at)),
                disk.ok(),
                state.registry.options().min_free_space,
                gauges.as_ref().ok(),
            );
            state.requests.render(&mut text);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Body::from(text))
                .expect("valid response")
        }
        (&Method::GET, "/healthz") => match state.registry.meta.health().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            Err(reason) => {
                tracing::error!(%reason, "health check failed");
                json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "status": "failing", "reason": reason }))
            }
        },
        (&Method::POST, "/admin/gc") => {
            let grace_period = match param("grace_period").map(|g| crate::config::parse_duration(&g)).transpose() {
                Ok(grace) => grace,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("grace_period: {e}")),
            };
            run_report(collector.collect("api", flag("dry_run"), grace_period).await)
        }
        (&Method::POST, "/admin/reconcile") => run_report(collector.reconcile("api", flag("dry_run")).await),
        (&Method::GET, "/admin/gc/status") => ok_or_500(collector.status().await),
        (&Method::POST, "/admin/gc/pause") => {
            let duration = match param("for").map(|d| crate::config::parse_duration(&d)).transpose() {
                Ok(duration) => duration,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("for: {e}")),
            };
            ok_or_500(collector.pause(client(peer), param("reason").unwrap_or_default(), duration).await)
        }
        (&Method::POST, "/admin/gc/resume") => ok_or_500(collector.resume(&client(peer)).await),
        (&Method::GET, "/admin/gc/runs") => ok_or_500(collector.history(limit).await),
        (&Method::GET, "/admin/retention/policies") => {
            let list: Vec<serde_json::Value> = state
                .registry
                .policies()
                .retention
                .iter()
                .map(|p| serde_json::json!({ "source": p.source, "policy": p.spec }))
                .collect();
            json(StatusCode::OK, &list)
        }
        (method @ (&Method::PUT | &Method::DELETE), p) if p.starts_with("/admin/retention/policies/") => {
            let name = &p["/admin/retention/policies/".len()..];
            let spec = if *method == Method::PUT {
                match read_json::<RetentionSpec>(body).await {
                    Ok(spec) if spec.name == name => Some(spec),
                    Ok(spec) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("the body names policy {:?}, the path {name:?}", spec.name),
                        );
                    }
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                }
            } else {
                None
            };
            match set_api_policy(state, name, spec).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "policy": name })),
                Err((status, message)) => error(status, message),
            }
        }
        (&Method::GET, "/admin/retention/explain") => match param("repository") {
            Some(repo) => retention_response(retention.explain(repo).await),
            None => error(StatusCode::BAD_REQUEST, "explain needs ?repository=<name>"),
        },
        (&Method::POST, "/admin/retention/plan") => {
            retention_response(retention.plan(param("repository"), param("policy")).await)
        }
        (&Method::POST, "/admin/retention/apply") => match param("plan").and_then(|p| p.parse().ok()) {
            Some(id) => retention_response(retention.apply(id).await),
            None => error(StatusCode::BAD_REQUEST, "apply needs ?plan=<id>"),
        },
        (&Method::POST, "/admin/retention/run") => retention_response(retention.run(param("policy")).await),
        (&Method::POST, "/admin/restore") => {
            let (Some(repo), Some(tag)) = (param("repository"), param("tag")) else {
                return error(StatusCode::BAD_REQUEST, "restore needs ?repository=<name>&tag=<tag>");
            };
            let (Ok(repo), Ok(tag)) = (repo.parse(), tag.parse()) else {
                return error(StatusCode::BAD_REQUEST, "invalid repository name or tag");
            };
            match state.registry.restore_tag(&repo, &tag).await {
                Ok(digest) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "repository": repo.as_str(), "tag": tag.as_str(), "digest": digest }),
                ),
                Err(e) => super::error::ApiError(e).into_response(),
            }
        }
        (&Method::GET, "/admin/deletions") => {
            let options = state.registry.options();
            let (since, window) =
                (options.restore_since(crate::metadata::now_ms()), options.restore_window.as_millis());
            let window = i64::try_from(window).unwrap_or(i64::MAX);
            ok_or_500(
                state.registry.meta.read(move |c| crate::metadata::retention::deletions(c, limit, since, window)).await,
            )
        }
        (&Method::GET, "/admin/du") => ok_or_500(crate::accounting::usage(&state.registry, param("repository")).await),
        (&Method::POST, "/admin/clock") if state.registry.failpoints.enabled() => {
            let ms = param("advance_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            crate::metadata::advance_clock(ms);
            json(StatusCode::OK, &serde_json::json!({ "now": crate::metadata::now_ms() }))
        }
        (method, p) if p.starts_with("/admin/failpoints/") => {
            let failpoints = &state.registry.failpoints;
            if !failpoints.enabled() {
                return error(StatusCode::NOT_FOUND, "failpoints are off (test_failpoints)");
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
        (_, p) => error(StatusCode::NOT_FOUND, format!("no such admin endpoint: {} {p}", request.method)),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, String> {
    let bytes = axum::body::to_bytes(body, 1 << 20).await.map_err(|e| format!("reading the body: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))
}

/// Adds, replaces (`Some`) or removes (`None`) a retention policy managed through the API,
/// after validating the whole set with the change; then installs the new set.
async fn set_api_policy(state: &AppState, name: &str, spec: Option<RetentionSpec>) -> Result<(), (StatusCode, String)> {
    let internal = |e: crate::metadata::MetadataError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    if state.config.retention.iter().any(|p| p.name == name) {
        return Err((StatusCode::CONFLICT, format!("policy {name:?} is declared in the config file; change it there")));
    }
    let _one_at_a_time = state.policy_changes.lock().await;
    let stored = state.registry.meta.read(|c| crate::metadata::retention::api_policies(c)).await.map_err(internal)?;
    // An unreadable stored policy is an error here as at start-up, never silently dropped.
    let stored: Vec<RetentionSpec> =
        stored.iter().map(|j| serde_json::from_str(j)).collect::<Result<_, _>>().map_err(|e| {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("a stored retention policy is unreadable: {e}"))
        })?;
    let mut specs: Vec<RetentionSpec> = stored.iter().filter(|s| s.name != name).cloned().collect();
    if spec.is_none() && specs.len() == stored.len() {
        return Err((StatusCode::NOT_FOUND, format!("no policy {name:?} managed through the API")));
    }
    specs.extend(spec.clone());
    let policies = state.config.policies(&specs).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    let (name, json) = (name.to_owned(), spec.map(|s| serde_json::to_string(&s).expect("specs serialize")));
    state
        .registry
        .meta
        .write(move |c| match &json {
            Some(j) => crate::metadata::retention::put_policy(c, &name, j, crate::metadata::now_ms()),
            None => crate::metadata::retention::delete_policy(c, &name).map(drop),
        })
        .await
        .map_err(internal)?;
    state.registry.set_policies(policies);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_by_default() {
        let local: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let remote: std::net::SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let local6: std::net::SocketAddr = "[::1]:4000".parse().unwrap();
        assert!(allowed(Some(local), false));
        assert!(allowed(Some(local6), false));
        assert!(!allowed(Some(remote), false));
        assert!(!allowed(None, false));
        assert!(allowed(Some(remote), true));
    }
}
