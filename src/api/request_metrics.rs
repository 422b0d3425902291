//! Request counts and latencies for `/metrics`: `bosun_http_requests_total` by route,
//! method and status class, and `bosun_http_request_duration_seconds`, a histogram per
//! route, of the time to the answer's head (a blob's bytes stream after it). Enough for
//! the usual alerts (the rate of 5xx answers, a slow p99 of manifest GETs) at the price
//! of two atomic additions per request: the labels are closed sets, so the counters are
//! fixed arrays, and no request allocates a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode};

/// What a request was for, from its path alone (cheaper than parsing the endpoint, and a
/// label needs no validation).
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
    Other,
}

const ROUTES: [&str; 12] = [
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "upload_start",
    "upload",
    "referrers",
    "admin",
    "metrics",
    "health",
    "other",
];

impl Route {
    pub fn of(path: &str) -> Route {
        match path {
            "/v2" | "/v2/" => return Route::Base,
            "/v2/_catalog" => return Route::Catalog,
            "/metrics" => return Route::Metrics,
            "/healthz" => return Route::Health,
            _ if path.starts_with("/admin/") => return Route::Admin,
            _ if !path.starts_with("/v2/") => return Route::Other,
            _ => {}
        }
        // The endpoint's own words are the segments before the last (a name may contain
        // any of them, but not at the end).
        let mut segments = path.trim_end_matches('/').rsplit('/');
        let (last, before) = (segments.next(), segments.next());
        match (before, last) {
            (Some("tags"), Some("list")) => Route::Tags,
            (Some("manifests"), _) => Route::Manifest,
            (Some("referrers"), _) => Route::Referrers,
            (_, Some("uploads")) if path.ends_with('/') => Route::UploadStart,
            (Some("uploads"), _) => Route::Upload,
            (Some("blobs"), _) => Route::Blob,
            _ => Route::Other,
        }
    }
}

const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "other"];

fn method_index(method: &Method) -> usize {
    METHODS[..6].iter().position(|m| *m == method.as_str()).unwrap_or(6)
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the latency buckets, in seconds (the last bucket, `+Inf`, is implied).
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct RequestMetrics {
    counts: [[[AtomicU64; 5]; 7]; 12],
    /// Per route: requests per bucket (not cumulative; `BUCKETS.len()` is `+Inf`), and the
    /// sum of their times in microseconds.
    buckets: [[AtomicU64; 12]; 12],
    micros: [AtomicU64; 12],
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))),
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            micros: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestMetrics {
    pub fn observe(&self, route: Route, method: &Method, status: StatusCode, took: Duration) {
        let (r, class) = (route as usize, (status.as_u16() / 100).clamp(1, 5) as usize - 1);
        self.counts[r][method_index(method)][class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|le| secs <= *le).unwrap_or(BUCKETS.len());
        self.buckets[r][bucket].fetch_add(1, Ordering::Relaxed);
        self.micros[r].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Appends both metrics in Prometheus's text format; series never seen are left out.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP bosun_http_requests_total Requests answered, by route, method and status class.\n# TYPE bosun_http_requests_total counter"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let n = self.counts[r][m][c].load(Ordering::Relaxed);
                    if n > 0 {
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
            "# HELP bosun_http_request_duration_seconds Time to the answer's head, by route.\n# TYPE bosun_http_request_duration_seconds histogram"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            let counts: Vec<u64> = self.buckets[r].iter().map(|b| b.load(Ordering::Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_owned()]).zip(&counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "bosun_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let secs = self.micros[r].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "bosun_http_request_duration_seconds_sum{{route=\"{route}\"}} {secs}");
            let _ = writeln!(out, "bosun_http_request_duration_seconds_count{{route=\"{route}\"}} {total}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_paths() {
        let digest = format!("sha256:{}", "0".repeat(64));
        for (path, route) in [
            ("/v2/", Route::Base),
            ("/v2", Route::Base),
            ("/v2/_catalog", Route::Catalog),
            ("/v2/a/b/tags/list", Route::Tags),
            ("/v2/a/manifests/v1", Route::Manifest),
            ("/v2/manifests/blobs/uploads/", Route::UploadStart),
            ("/v2/a/blobs/uploads/abc", Route::Upload),
            (&format!("/v2/a/blobs/{digest}"), Route::Blob),
            (&format!("/v2/a/referrers/{digest}"), Route::Referrers),
            ("/admin/gc", Route::Admin),
            ("/metrics", Route::Metrics),
            ("/healthz", Route::Health),
            ("/favicon.ico", Route::Other),
            ("/v2/a/nothing/here", Route::Other),
        ] {
            assert_eq!(Route::of(path), route, "{path}");
        }
    }

    #[test]
    fn counts_and_a_cumulative_histogram() {
        let m = RequestMetrics::default();
        m.observe(Route::Manifest, &Method::GET, StatusCode::OK, Duration::from_millis(3));
        m.observe(Route::Manifest, &Method::GET, StatusCode::NOT_FOUND, Duration::from_millis(30));
        m.observe(Route::Manifest, &Method::GET, StatusCode::OK, Duration::from_secs(20));
        m.observe(
            Route::Blob,
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::INTERNAL_SERVER_ERROR,
            Duration::ZERO,
        );
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "bosun_http_requests_total{route=\"manifest\",method=\"GET\",code=\"2xx\"} 2",
            "bosun_http_requests_total{route=\"manifest\",method=\"GET\",code=\"4xx\"} 1",
            "bosun_http_requests_total{route=\"blob\",method=\"other\",code=\"5xx\"} 1",
            "bosun_http_request_duration_seconds_bucket{route=\"manifest\",le=\"0.005\"} 1",
            "bosun_http_request_duration_seconds_bucket{route=\"manifest\",le=\"0.05\"} 2",
            "bosun_http_request_duration_seconds_bucket{route=\"manifest\",le=\"10\"} 2",
            "bosun_http_request_duration_seconds_bucket{route=\"manifest\",le=\"+Inf\"} 3",
            "bosun_http_request_duration_seconds_sum{route=\"manifest\"} 20.033",
            "bosun_http_request_duration_seconds_count{route=\"manifest\"} 3",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from:\n{out}");
        }
        assert!(!out.contains("route=\"tags\""), "a route never seen has no series");
    }
}
