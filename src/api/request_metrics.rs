//! Request counts and latencies for `/metrics`: `bosun_http_requests_total` by route,
//! method and status class, and `bosun_http_request_duration_seconds`, a histogram per
//! route and method of the time to the answer's head (a blob's bytes stream after it; an
//! upload's body is received before it). A request cut off before its answer (the client
//! went away, the shutdown's drain ended) is counted too, as `code="none"`: a server that
//! hangs shows in the metrics. The labels are closed sets, so the counters are fixed
//! arrays of atomics and a request allocates nothing for them: four atomic additions.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};

use super::Endpoint;

/// What a request was for: the endpoint the router parsed, or an admin path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    UploadStart,
    Upload,
    Referrers,
    Admin,
    Metrics,
    Health,
    /// No endpoint: a path the API does not serve.
    Other,
}

const ROUTES: [Route; 12] = [
    Route::Base,
    Route::Catalog,
    Route::Tags,
    Route::Manifest,
    Route::Blob,
    Route::UploadStart,
    Route::Upload,
    Route::Referrers,
    Route::Admin,
    Route::Metrics,
    Route::Health,
    Route::Other,
];

impl Route {
    /// The route of a request for `path`, which the router parsed into `endpoint` (None
    /// for the admin API's paths and for a path that is no endpoint).
    pub fn of(path: &str, endpoint: Option<&Endpoint>) -> Route {
        match (path, endpoint) {
            ("/metrics", _) => Route::Metrics,
            ("/healthz", _) => Route::Health,
            (_, None) if path.starts_with("/admin/") => Route::Admin,
            (_, None) => Route::Other,
            (_, Some(Endpoint::Base)) => Route::Base,
            (_, Some(Endpoint::Catalog)) => Route::Catalog,
            (_, Some(Endpoint::Tags { .. })) => Route::Tags,
            (_, Some(Endpoint::Manifest { .. })) => Route::Manifest,
            (_, Some(Endpoint::Blob { .. })) => Route::Blob,
            (_, Some(Endpoint::UploadStart { .. })) => Route::UploadStart,
            (_, Some(Endpoint::Upload { .. })) => Route::Upload,
            (_, Some(Endpoint::Referrers { .. })) => Route::Referrers,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags => "tags",
            Route::Manifest => "manifest",
            Route::Blob => "blob",
            Route::UploadStart => "upload_start",
            Route::Upload => "upload",
            Route::Referrers => "referrers",
            Route::Admin => "admin",
            Route::Metrics => "metrics",
            Route::Health => "health",
            Route::Other => "other",
        }
    }
}

/// The methods counted by name; any other is `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "other"];

fn method_index(method: &Method) -> usize {
    METHODS.iter().position(|m| *m == method.as_str()).unwrap_or(METHODS.len() - 1)
}

/// Status classes, and `none` for a request cut off before its answer.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Upper bounds of the latency buckets, in seconds (the last bucket, `+Inf`, is implied).
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram's state: requests per bucket (not cumulative; the last is `+Inf`) and the
/// sum of their times in microseconds.
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    micros: AtomicU64,
}

pub struct RequestMetrics {
    counts: [[[AtomicU64; CLASSES.len()]; METHODS.len()]; ROUTES.len()],
    times: [[Histogram; METHODS.len()]; ROUTES.len()],
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| zeros())),
            times: std::array::from_fn(|_| {
                std::array::from_fn(|_| Histogram { buckets: zeros(), micros: AtomicU64::new(0) })
            }),
        }
    }
}

/// A request being served: observed when answered, or, if dropped before, as cut off.
pub struct Timer<'a> {
    metrics: &'a RequestMetrics,
    route: Route,
    method: usize,
    started: Instant,
    done: bool,
}

impl Timer<'_> {
    pub fn finish(mut self, status: StatusCode) {
        self.done = true;
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.metrics.observe(self.route, self.method, class, self.started.elapsed());
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.observe(self.route, self.method, CLASSES.len() - 1, self.started.elapsed());
        }
    }
}

impl RequestMetrics {
    pub fn start(&self, route: Route, method: &Method) -> Timer<'_> {
        Timer { metrics: self, route, method: method_index(method), started: Instant::now(), done: false }
    }

    fn observe(&self, route: Route, method: usize, class: usize, took: Duration) {
        self.counts[route as usize][method][class].fetch_add(1, Ordering::Relaxed);
        let histogram = &self.times[route as usize][method];
        let secs = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|le| secs <= *le).unwrap_or(BUCKETS.len());
        histogram.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        histogram.micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Appends both metrics in Prometheus's text format; series never seen are left out.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP bosun_http_requests_total Requests, by route, method and status class (none: cut off before the answer).\n# TYPE bosun_http_requests_total counter"
        );
        for route in ROUTES {
            for (m, method) in METHODS.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let n = self.counts[route as usize][m][c].load(Ordering::Relaxed);
                    if n > 0 {
                        let route = route.label();
                        let _ = writeln!(
                            out,
                            "bosun_http_requests_total{{route=\"{route}\",method=\"{method}\",code=\"{class}\"}} {n}"
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP bosun_http_request_duration_seconds Time to the answer's head, by route and method.\n# TYPE bosun_http_request_duration_seconds histogram"
        );
        for route in ROUTES {
            for (m, method) in METHODS.iter().enumerate() {
                let histogram = &self.times[route as usize][m];
                let counts: Vec<u64> = histogram.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("route=\"{}\",method=\"{method}\"", route.label());
                let mut cumulative = 0;
                for (le, n) in BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_owned()]).zip(&counts) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "bosun_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let secs = histogram.micros.load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(out, "bosun_http_request_duration_seconds_sum{{{labels}}} {secs}");
                let _ = writeln!(out, "bosun_http_request_duration_seconds_count{{{labels}}} {total}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn routes_from_the_parsed_endpoint() {
        let digest = format!("sha256:{}", "0".repeat(64));
        for (path, route) in [
            ("/v2/", Route::Base),
            ("/v2/_catalog", Route::Catalog),
            ("/v2/a/b/tags/list", Route::Tags),
            ("/v2/x/tags/manifests/list", Route::Manifest),
            ("/v2/a/manifests/v1", Route::Manifest),
            ("/v2/a/manifest%73/v1", Route::Manifest),
            ("/v2/a/manifests/v1/", Route::Other),
            ("/v2/manifests/blobs/uploads/", Route::UploadStart),
            ("/v2/a/blobs/uploads", Route::UploadStart),
            (&format!("/v2/a/blobs/uploads/{}", "a".repeat(32)), Route::Upload),
            (&format!("/v2/a/blobs/{digest}"), Route::Blob),
            (&format!("/v2/x/uploads/blobs/{digest}"), Route::Blob),
            (&format!("/v2/a/referrers/{digest}"), Route::Referrers),
            ("/admin/gc", Route::Admin),
            ("/metrics", Route::Metrics),
            ("/healthz", Route::Health),
            ("/favicon.ico", Route::Other),
            ("/v2/a/nothing/here", Route::Other),
        ] {
            let endpoint = if path.starts_with("/v2") { Endpoint::parse(path).ok() } else { None };
            assert_eq!(Route::of(path, endpoint.as_ref()), route, "{path}");
        }
    }

    #[test]
    fn counts_a_cumulative_histogram_and_requests_cut_off() {
        let m = RequestMetrics::default();
        let get = method_index(&Method::GET);
        m.observe(Route::Manifest, get, 1, Duration::from_millis(3));
        m.observe(Route::Manifest, get, 3, Duration::from_millis(30));
        m.observe(Route::Manifest, get, 1, Duration::from_secs(20));
        m.start(Route::Blob, &Method::from_bytes(b"BREW").unwrap()).finish(StatusCode::INTERNAL_SERVER_ERROR);
        drop(m.start(Route::Upload, &Method::PATCH));
        let mut out = String::new();
        m.render(&mut out);
        let labels = "route=\"manifest\",method=\"GET\"";
        for line in [
            format!("bosun_http_requests_total{{{labels},code=\"2xx\"}} 2"),
            format!("bosun_http_requests_total{{{labels},code=\"4xx\"}} 1"),
            "bosun_http_requests_total{route=\"blob\",method=\"other\",code=\"5xx\"} 1".to_owned(),
            "bosun_http_requests_total{route=\"upload\",method=\"PATCH\",code=\"none\"} 1".to_owned(),
            format!("bosun_http_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("bosun_http_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 2"),
            format!("bosun_http_request_duration_seconds_bucket{{{labels},le=\"10\"}} 2"),
            format!("bosun_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("bosun_http_request_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from:\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("bosun_http_request_duration_seconds_sum{{{labels}}} ")))
            .unwrap()
            .parse()
            .unwrap();
        assert!((20.033..20.1).contains(&sum), "{sum}");
        assert!(!out.contains("route=\"tags\""), "a route never seen has no series");
    }
}
