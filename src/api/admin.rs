//! The admin API (`/admin/...`), Prometheus metrics (`/metrics`) and the health check
//! (`/healthz`). JSON in and out.
//!
//! - `GET /healthz` (HEAD too, as for every GET here): 200 while the server can serve,
//!   503 with the reason once it cannot until a restart (a failed flush of the metadata
//!   log) or its database does not answer: for a supervisor's liveness probe, open to
//!   every client like `/metrics`.
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
//! - `PUT|GET|DELETE /admin/failpoints/<name>[?action=panic]`: test pause points, and
//!   `POST /admin/clock?advance_ms=N` to move the clock ahead (`test_failpoints` only).

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::AppState;
use super::headers;
use crate::oci::RepoName;
use crate::policy::retention::RetentionError;
use crate::policy::{RetentionSpec, StoredPolicy};

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

/// The methods an admin path takes, for the `Allow` of a 405; None: no such path.
fn allowed_methods(path: &str) -> Option<&'static str> {
    Some(match path {
        "/metrics"
        | "/healthz"
        | "/admin/gc/status"
        | "/admin/gc/runs"
        | "/admin/retention/policies"
        | "/admin/retention/explain"
        | "/admin/deletions"
        | "/admin/du" => "GET, HEAD",
        "/admin/gc"
        | "/admin/reconcile"
        | "/admin/gc/pause"
        | "/admin/gc/resume"
        | "/admin/retention/plan"
        | "/admin/retention/apply"
        | "/admin/retention/run"
        | "/admin/restore" => "POST",
        p if p.starts_with("/admin/retention/policies/") => "PUT, DELETE",
        _ => return None,
    })
}

/// 405 with the `Allow` RFC 9110 asks of it.
fn not_allowed(method: &Method, path: &str, allow: &'static str) -> AdminResponse {
    let mut response =
        error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path} (only {allow})"));
    response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// The monitoring address serves nothing but `/healthz` and `/metrics`.
pub fn not_found(path: &str) -> AdminResponse {
    error(StatusCode::NOT_FOUND, format!("{path} is not served here: this address serves /healthz and /metrics only"))
}

/// A run's report; a run refused because collection is paused is a 409, and one a full
/// disk stopped a 507, not failures of the registry.
fn run_report(r: crate::gc::Result<crate::gc::Report>) -> AdminResponse {
    match r {
        Err(e @ crate::gc::GcError::Paused(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) if e.is_storage_full() => error(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
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
        Err(e) => error(retention_status(&e), e.to_string()),
    }
}

fn retention_status(e: &RetentionError) -> StatusCode {
    match e {
        RetentionError::Changed { .. } | RetentionError::AlreadyApplied(_) | RetentionError::Paused(_) => {
            StatusCode::CONFLICT
        }
        RetentionError::PlanUnknown(_) => StatusCode::NOT_FOUND,
        RetentionError::Invalid(_) => StatusCode::BAD_REQUEST,
        RetentionError::Metadata(e) if e.is_full() => StatusCode::INSUFFICIENT_STORAGE,
        // Answered as what stopped it; the message says what it had deleted.
        RetentionError::Stopped { cause, .. } => retention_status(cause),
        RetentionError::Metadata(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Who made an admin request, for the records that name their author: the client's
/// address (the admin API has no accounts yet).
fn client(peer: Option<std::net::SocketAddr>) -> String {
    peer.map_or_else(|| "unknown client".to_owned(), |p| p.ip().to_string())
}

/// Whether a client at `peer`, connected to `local`, may use the admin API: there is no
/// authentication yet, so only clients on this host may (loopback, or the address the
/// server listens on, which `bosun` itself uses when `listen` names one), unless the
/// operator opened it (`admin_remote`). A request with no known peer (never the case
/// behind the real listener) is refused.
pub fn allowed(peer: Option<std::net::SocketAddr>, local: Option<std::net::SocketAddr>, admin_remote: bool) -> bool {
    admin_remote || peer.is_some_and(|p| p.ip().is_loopback() || local.is_some_and(|l| l.ip() == p.ip()))
}

pub fn refuse_remote() -> AdminResponse {
    error(
        StatusCode::FORBIDDEN,
        "the admin API answers clients on the server's own host only (it has no authentication yet); set admin_remote = true to open it",
    )
}

/// An admin request's query parameters, read strictly: an unknown parameter or a value
/// that does not parse is refused (400), never read as its default, because the defaults
/// act: `dry_run=yes`, or a misspelled `dryrun=true`, read as "not a dry run" would delete.
struct Query(Vec<(String, String)>);

/// The most rows a listing answers at once.
const MAX_LIMIT: usize = 10_000;

impl Query {
    /// Refuses a parameter that the endpoint does not take, and one given twice (which of
    /// `dry_run=false&dry_run=true` would be meant?).
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => {}
            Some((k, _)) if known.is_empty() => {
                return Err(format!("unknown parameter {k:?}: this endpoint takes none"));
            }
            Some((k, _)) => return Err(format!("unknown parameter {k:?}: this endpoint takes {}", known.join(", "))),
        }
        match self.0.iter().enumerate().find(|(i, (k, _))| self.0[..*i].iter().any(|(earlier, _)| earlier == k)) {
            Some((_, (k, _))) => Err(format!("parameter {k:?} is given more than once")),
            None => Ok(()),
        }
    }

    /// A repository name, checked as the registry checks one.
    fn repository(&self) -> Result<Option<RepoName>, String> {
        self.text("repository").map(|r| r.parse().map_err(|e| format!("repository={r:?}: {e}"))).transpose()
    }

    fn text(&self, key: &str) -> Option<String> {
        headers::param(&self.0, key).map(str::to_owned)
    }

    /// Absent: false; present without a value (`?dry_run`): true.
    fn flag(&self, key: &str) -> Result<bool, String> {
        match headers::param(&self.0, key) {
            None => Ok(false),
            Some("") => Ok(true),
            Some(v) => crate::config::parse_bool(key, v).map_err(|e| e.to_string()),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        self.text(key).map(|d| crate::config::parse_duration(&d).map_err(|e| format!("{key}: {e}"))).transpose()
    }

    /// `limit`, 50 when absent.
    fn limit(&self) -> Result<usize, String> {
        match self.text("limit") {
            None => Ok(50),
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n <= MAX_LIMIT)
                .ok_or_else(|| format!("limit={n:?} is not a number from 0 to {MAX_LIMIT}")),
        }
    }
}

/// Handles `/admin/...`, `/metrics` and `/healthz`, for a client at `peer`.
pub async fn route(state: &AppState, request: &Parts, body: Body, peer: Option<std::net::SocketAddr>) -> AdminResponse {
    // Only where the client was let in as an admin (`/healthz` and `/metrics` answer anyone,
    // who must not learn the server's paths).
    if let Some(named) = request.headers.get(super::DATA_DIR_HEADER)
        && request.uri.path().starts_with("/admin/")
    {
        let (named, served) = (named.as_bytes().to_vec(), state.config.data_dir.clone());
        let check = tokio::task::spawn_blocking(move || same_data_dir(&named, &served));
        match check.await.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(()) => {}
            // 421: "not the server for this request"; `bosun gc` then works on the named
            // directory directly, if no other process holds it.
            Err(message) => return error(StatusCode::MISDIRECTED_REQUEST, message),
        }
    }
    dispatch(state, request, body, peer).await.unwrap_or_else(|message| error(StatusCode::BAD_REQUEST, message))
}

/// Whether `named` (a path's bytes, percent-encoded) is the directory `served`: the same
/// file system object, whatever path names it.
fn same_data_dir(named: &[u8], served: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::MetadataExt;
    // A bare '+' is a space, as older commands encoded it (this one sends '+' as %2B).
    let named: Vec<u8> = named.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    let named =
        std::path::PathBuf::from(std::ffi::OsString::from_vec(percent_encoding::percent_decode(&named).collect()));
    let id = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let served_id = id(served).map_err(|e| format!("reading the served data directory {}: {e}", served.display()))?;
    match id(&named) {
        Ok(named_id) if named_id == served_id => Ok(()),
        _ => Err(format!(
            "this Bosun serves the data directory {}, not {} (the command's --data-dir, BOSUN_DATA_DIR or data_dir): nothing was done",
            served.display(),
            named.display()
        )),
    }
}

/// The request's answer, or what is wrong with the request (400).
async fn dispatch(
    state: &AppState,
    request: &Parts,
    body: Body,
    peer: Option<std::net::SocketAddr>,
) -> Result<AdminResponse, String> {
    let q = Query(headers::query(request));
    let collector = &state.collector;
    let retention = &state.retention;
    let path = request.uri.path();
    // HEAD as GET (RFC 9110: a probe may HEAD /healthz); hyper sends no body to a HEAD.
    let method = if request.method == Method::HEAD { Method::GET } else { request.method.clone() };
    let answer = match (&method, path) {
        // Scrapers and probes may add parameters of their own: not refused.
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
                meta.checkpointer_stopped(),
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
            q.only(&["dry_run", "grace_period"])?;
            run_report(collector.collect("api", q.flag("dry_run")?, q.duration("grace_period")?).await)
        }
        (&Method::POST, "/admin/reconcile") => {
            q.only(&["dry_run"])?;
            run_report(collector.reconcile("api", q.flag("dry_run")?).await)
        }
        (&Method::GET, "/admin/gc/status") => {
            q.only(&[])?;
            ok_or_500(collector.status().await)
        }
        (&Method::POST, "/admin/gc/pause") => {
            q.only(&["reason", "for"])?;
            let duration = q.duration("for")?;
            if duration.is_some_and(|d| d.is_zero()) {
                return Err("for: a pause must last more than zero (leave it out for a pause until a resume)".into());
            }
            ok_or_500(collector.pause(client(peer), q.text("reason").unwrap_or_default(), duration).await)
        }
        (&Method::POST, "/admin/gc/resume") => {
            q.only(&[])?;
            ok_or_500(collector.resume(&client(peer)).await)
        }
        (&Method::GET, "/admin/gc/runs") => {
            q.only(&["limit"])?;
            ok_or_500(collector.history(q.limit()?).await)
        }
        (&Method::GET, "/admin/retention/policies") => {
            q.only(&[])?;
            let policies = state.registry.policies();
            let in_force = policies
                .retention
                .iter()
                .map(|p| serde_json::json!({ "source": p.source, "policy": p.spec, "in_force": true }));
            let inactive = policies
                .inactive
                .iter()
                .map(|p| serde_json::json!({ "source": "api", "policy": p.spec, "in_force": false, "why": p.why }));
            json(StatusCode::OK, &in_force.chain(inactive).collect::<Vec<_>>())
        }
        (method @ (&Method::PUT | &Method::DELETE), p) if p.starts_with("/admin/retention/policies/") => {
            q.only(&[])?;
            let name = &p["/admin/retention/policies/".len()..];
            let spec = if *method == Method::PUT {
                let spec = read_json::<RetentionSpec>(body).await?;
                if spec.name != name {
                    return Err(format!("the body names policy {:?}, the path {name:?}", spec.name));
                }
                Some(spec)
            } else {
                None
            };
            match set_api_policy(state, name, spec).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "policy": name })),
                Err((status, message)) => error(status, message),
            }
        }
        (&Method::GET, "/admin/retention/explain") => {
            q.only(&["repository"])?;
            let repo = q.repository()?.ok_or("explain needs ?repository=<name>")?;
            retention_response(retention.explain(repo).await)
        }
        (&Method::POST, "/admin/retention/plan") => {
            q.only(&["repository", "policy"])?;
            retention_response(retention.plan(q.repository()?, q.text("policy")).await)
        }
        (&Method::POST, "/admin/retention/apply") => {
            q.only(&["plan"])?;
            let id = match q.text("plan") {
                None => return Err("apply needs ?plan=<id>".into()),
                Some(p) => p.parse().map_err(|_| format!("plan={p:?} is not a plan id"))?,
            };
            retention_response(retention.apply(id).await)
        }
        (&Method::POST, "/admin/retention/run") => {
            q.only(&["policy"])?;
            retention_response(retention.run(q.text("policy")).await)
        }
        (&Method::POST, "/admin/restore") => {
            q.only(&["repository", "tag"])?;
            let (Some(repo), Some(tag)) = (q.text("repository"), q.text("tag")) else {
                return Err("restore needs ?repository=<name>&tag=<tag>".into());
            };
            let (Ok(repo), Ok(tag)) = (repo.parse(), tag.parse()) else {
                return Err("invalid repository name or tag".into());
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
            q.only(&["limit"])?;
            let limit = q.limit()?;
            let options = state.registry.options();
            let (since, window) =
                (options.restore_since(crate::metadata::now_ms()), options.restore_window.as_millis());
            let window = i64::try_from(window).unwrap_or(i64::MAX);
            ok_or_500(
                state.registry.meta.read(move |c| crate::metadata::retention::deletions(c, limit, since, window)).await,
            )
        }
        (&Method::GET, "/admin/du") => {
            q.only(&["repository"])?;
            let repository = q.repository()?;
            let usage = crate::accounting::usage(&state.registry, repository.clone()).await;
            match (usage, repository) {
                // Named and in no report: a typo must not read as "holds nothing". (A
                // repository of blobs and no manifest is in none either, and exists.)
                (Ok(report), Some(name)) if report.repositories.is_empty() => {
                    let n = name.clone();
                    match state.registry.meta.read(move |c| crate::metadata::repositories::find(c, &n)).await {
                        Ok(None) => {
                            error(StatusCode::NOT_FOUND, format!("repository {name} is not known to this registry"))
                        }
                        known => ok_or_500(known.map(|_| report)),
                    }
                }
                (usage, _) => ok_or_500(usage),
            }
        }
        (&Method::POST, "/admin/clock") if state.registry.failpoints.enabled() => {
            q.only(&["advance_ms"])?;
            // A century at most either way (tests move it back too), so that a test cannot
            // make the clock overflow.
            const CENTURY_MS: i64 = 3_155_760_000_000;
            let ms = q
                .text("advance_ms")
                .and_then(|v| v.parse().ok())
                .filter(|ms| (-CENTURY_MS..=CENTURY_MS).contains(ms))
                .ok_or("advance_ms must be a number of milliseconds, a century at most either way")?;
            crate::metadata::advance_clock(ms);
            json(StatusCode::OK, &serde_json::json!({ "now": crate::metadata::now_ms() }))
        }
        (method, p) if p.starts_with("/admin/failpoints/") => {
            let failpoints = &state.registry.failpoints;
            if !failpoints.enabled() {
                return Ok(error(StatusCode::NOT_FOUND, "failpoints are off (test_failpoints)"));
            }
            q.only(&["action"])?;
            let name = &p["/admin/failpoints/".len()..];
            match *method {
                Method::PUT => {
                    let panic = match q.text("action").as_deref() {
                        None | Some("pause") => false,
                        Some("panic") => true,
                        Some(other) => return Err(format!("action={other:?}: pause or panic")),
                    };
                    failpoints.arm(name, panic);
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
                _ => not_allowed(&request.method, p, "PUT, GET, HEAD, DELETE"),
            }
        }
        (_, p) => match allowed_methods(p) {
            Some(allow) => not_allowed(&request.method, p, allow),
            None => error(StatusCode::NOT_FOUND, format!("no such admin endpoint: {} {p}", request.method)),
        },
    };
    Ok(answer)
}

async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, String> {
    let bytes = axum::body::to_bytes(body, 1 << 20).await.map_err(|e| format!("reading the body: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))
}

/// Adds, replaces (`Some`) or removes (`None`) a retention policy managed through the API,
/// after validating the whole set with the change; then installs the new set.
async fn set_api_policy(state: &AppState, name: &str, spec: Option<RetentionSpec>) -> Result<(), (StatusCode, String)> {
    let internal = |e: crate::metadata::MetadataError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    // Removing is allowed: what goes is a stored policy of that name, which the file's
    // keeps out of force (`Policies::inactive`).
    if spec.is_some() && state.config.retention.iter().any(|p| p.name == name) {
        return Err((StatusCode::CONFLICT, format!("policy {name:?} is declared in the config file; change it there")));
    }
    let _one_at_a_time = state.policy_changes.lock().await;
    let stored = state.registry.meta.read(|c| crate::metadata::retention::api_policies(c)).await.map_err(internal)?;
    // The others as stored (unreadable ones included: they stay listed, out of force),
    // with the change.
    let mut rows: Vec<StoredPolicy> = stored.iter().filter(|(n, _)| n != name).cloned().collect();
    if spec.is_none() && rows.len() == stored.len() {
        return Err((StatusCode::NOT_FOUND, format!("no policy {name:?} managed through the API")));
    }
    if let Some(spec) = &spec {
        // Two stored policies on the same repositories: the second would be out of force
        // only at a start where the first comes first; refused instead.
        let same = rows.iter().find(|(_, json)| {
            serde_json::from_str::<RetentionSpec>(json).is_ok_and(|other| other.repositories == spec.repositories)
        });
        if let Some((other, _)) = same {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the stored policy {other:?} selects the same repositories {:?}: merge them",
                    spec.repositories
                ),
            ));
        }
        rows.push((name.to_owned(), serde_json::to_string(spec).expect("specs serialize")));
    }
    let policies = state.config.policies(&rows).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    if let Some(p) = policies.inactive.iter().find(|p| spec.is_some() && p.name == name) {
        return Err((StatusCode::BAD_REQUEST, format!("policy {name:?}: {}", p.why)));
    }
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
    fn only_this_host_by_default() {
        let addr = |a: &str| Some(a.parse::<std::net::SocketAddr>().unwrap());
        let server = addr("192.0.2.1:5000");
        assert!(allowed(addr("127.0.0.1:4000"), server, false));
        assert!(allowed(addr("[::1]:4000"), server, false));
        assert!(!allowed(addr("192.0.2.7:4000"), server, false));
        assert!(!allowed(None, server, false));
        assert!(allowed(addr("192.0.2.7:4000"), server, true));
        // A client on the server's own host, through the address the server listens on
        // (what `bosun` uses when `listen` names one).
        assert!(allowed(addr("192.0.2.1:41000"), server, false));
        assert!(!allowed(addr("192.0.2.1:41000"), None, false));
    }
}
