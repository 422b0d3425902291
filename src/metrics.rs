//! Prometheus counters, rendered as text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metadata::gc::Gauges;
use crate::storage::space::{DiskSpace, MinFreeSpace};

#[derive(Default)]
pub struct Metrics {
    pub gc_runs: AtomicU64,
    pub gc_dry_runs: AtomicU64,
    pub gc_failures: AtomicU64,
    pub gc_duration_ms: AtomicU64,
    pub gc_manifests_removed: AtomicU64,
    pub gc_links_removed: AtomicU64,
    pub gc_blobs_removed: AtomicU64,
    pub gc_uploads_removed: AtomicU64,
    pub gc_repositories_removed: AtomicU64,
    pub gc_bytes_removed: AtomicU64,
    pub reconcile_runs: AtomicU64,
    /// Reconciles that stopped on an error (a listing error among them).
    pub reconcile_failures: AtomicU64,
    pub reconcile_orphans_removed: AtomicU64,
    pub reconcile_orphan_bytes_removed: AtomicU64,
    /// Retention plans applied (scheduled, or asked for), and what they deleted.
    pub retention_applied: AtomicU64,
    pub retention_tags_deleted: AtomicU64,
    pub retention_manifests_deleted: AtomicU64,
    /// Scheduled retention runs that failed (each is retried at the next check).
    pub retention_failures: AtomicU64,
    /// Connections open now (a gauge).
    pub http_connections: AtomicU64,
    /// The cap on them (`http.max_connections`, or derived from the open-file limit).
    pub http_connection_limit: AtomicU64,
    /// Times every slot under the cap was taken, so the server stopped accepting.
    pub http_connection_cap_reached: AtomicU64,
    /// Upload sessions refused because free space was under `min_free_space`.
    pub uploads_refused_low_space: AtomicU64,
    /// Blob bytes of upload steps that succeeded (a chunk refused or rolled back, or a final
    /// body whose blob is refused, counts nothing).
    pub upload_bytes_received: AtomicU64,
    /// Bytes of blob GET answers, as announced (a client that hangs up early gets fewer).
    pub blob_bytes_served: AtomicU64,
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters of this process, whether the metadata log has failed (see `/healthz`),
    /// the kind and start (ms) of the collection or reconcile in progress, the data
    /// directory's disk space (left out if it could not be read) with the floor under which
    /// new uploads are refused, and `gauges` read from metadata for this scrape, the pause
    /// among them (left out if that read failed: the counters are still worth a scrape).
    pub fn render(
        &self,
        log_failed: bool,
        checkpointer_stopped: bool,
        gc_in_progress: Option<(&str, i64)>,
        disk: Option<DiskSpace>,
        min_free_space: MinFreeSpace,
        gauges: Option<&Gauges>,
    ) -> String {
        let mut out = String::new();
        if let Some(disk) = disk {
            gauge(
                &mut out,
                "bosun_data_dir_available_bytes",
                "Bytes free on the file system of the data directory (the database; the blobs on filesystem storage).",
                disk.available,
            );
            gauge(&mut out, "bosun_data_dir_size_bytes", "Size of that file system.", disk.size);
            gauge(
                &mut out,
                "bosun_data_dir_min_free_bytes",
                "Below this many free bytes no new upload session is opened (min_free_space; 0 when off).",
                min_free_space.bytes(disk.size),
            );
        }
        counter(
            &mut out,
            "bosun_upload_bytes_received_total",
            "Blob bytes of upload steps that succeeded (a chunk refused or rolled back, or a blob refused, counts nothing).",
            &self.upload_bytes_received,
        );
        counter(
            &mut out,
            "bosun_blob_bytes_served_total",
            "Bytes of blob GET answers, as announced (a client that hangs up early receives fewer).",
            &self.blob_bytes_served,
        );
        counter(
            &mut out,
            "bosun_uploads_refused_low_space_total",
            "Upload sessions refused (507) because free space was under min_free_space.",
            &self.uploads_refused_low_space,
        );
        gauge(
            &mut out,
            "bosun_metadata_log_failed",
            "1 once a flush of the metadata log failed: no write is acknowledged until a restart.",
            u64::from(log_failed),
        );
        gauge(
            &mut out,
            "bosun_metadata_checkpointer_stopped",
            "1 once the thread that copies the metadata log into the database stopped (a bug): the log grows until a restart.",
            u64::from(checkpointer_stopped),
        );
        // 0 for the kind not running, so that an alert on a stuck run needs no `absent()`.
        let _ = writeln!(
            out,
            "# HELP bosun_gc_run_in_progress_seconds How long the collection or reconcile in progress has run (dry runs included; 0: none).\n# TYPE bosun_gc_run_in_progress_seconds gauge"
        );
        for kind in ["collect", "reconcile"] {
            let secs = gc_in_progress
                .filter(|(running, _)| *running == kind)
                .map_or(0.0, |(_, started)| (crate::metadata::now_ms() - started).max(0) as f64 / 1000.0);
            let _ = writeln!(out, "bosun_gc_run_in_progress_seconds{{kind=\"{kind}\"}} {secs}");
        }
        counter(
            &mut out,
            "bosun_gc_runs_total",
            "Garbage collections, not dry runs (those that failed included).",
            &self.gc_runs,
        );
        counter(&mut out, "bosun_gc_dry_runs_total", "Garbage collection dry runs.", &self.gc_dry_runs);
        counter(
            &mut out,
            "bosun_gc_failures_total",
            "Garbage collections that stopped on an error.",
            &self.gc_failures,
        );
        let secs = self.gc_duration_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP bosun_gc_duration_seconds_total Time spent collecting.\n# TYPE bosun_gc_duration_seconds_total counter\nbosun_gc_duration_seconds_total {secs}"
        );
        let _ = writeln!(
            out,
            "# HELP bosun_gc_objects_removed_total Objects removed by garbage collection.\n# TYPE bosun_gc_objects_removed_total counter"
        );
        for (kind, value) in [
            ("manifest", &self.gc_manifests_removed),
            ("link", &self.gc_links_removed),
            ("blob", &self.gc_blobs_removed),
            ("upload", &self.gc_uploads_removed),
            ("repository", &self.gc_repositories_removed),
        ] {
            let _ =
                writeln!(out, "bosun_gc_objects_removed_total{{kind=\"{kind}\"}} {}", value.load(Ordering::Relaxed));
        }
        counter(
            &mut out,
            "bosun_gc_bytes_removed_total",
            "Bytes freed by garbage collection: blobs, and the staged bytes of abandoned uploads.",
            &self.gc_bytes_removed,
        );
        counter(
            &mut out,
            "bosun_reconcile_runs_total",
            "Reconciles, not dry runs, that ended without an error.",
            &self.reconcile_runs,
        );
        counter(
            &mut out,
            "bosun_reconcile_failures_total",
            "Reconciles that stopped on an error (a listing error stops one before it removes anything).",
            &self.reconcile_failures,
        );
        counter(
            &mut out,
            "bosun_retention_plans_applied_total",
            "Retention plans applied, scheduled or asked for.",
            &self.retention_applied,
        );
        counter(
            &mut out,
            "bosun_retention_tags_deleted_total",
            "Tags deleted by retention.",
            &self.retention_tags_deleted,
        );
        counter(
            &mut out,
            "bosun_retention_manifests_deleted_total",
            "Untagged manifests deleted by retention.",
            &self.retention_manifests_deleted,
        );
        counter(
            &mut out,
            "bosun_retention_failures_total",
            "Scheduled retention runs that failed (a pause is no failure); each is retried at the next check.",
            &self.retention_failures,
        );
        counter(
            &mut out,
            "bosun_reconcile_orphans_removed_total",
            "Blobs in storage that metadata did not know, removed.",
            &self.reconcile_orphans_removed,
        );
        counter(
            &mut out,
            "bosun_reconcile_orphan_bytes_removed_total",
            "Bytes of those orphan blobs.",
            &self.reconcile_orphan_bytes_removed,
        );
        gauge(
            &mut out,
            "bosun_http_connections",
            "HTTP connections open.",
            self.http_connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "bosun_http_connection_limit",
            "HTTP connections served at once; more wait to be accepted.",
            self.http_connection_limit.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bosun_http_connection_cap_reached_total",
            "Times every connection slot was taken, so that no connection was accepted until one closed.",
            &self.http_connection_cap_reached,
        );
        let Some(gauges) = gauges else { return out };
        // 0 when there was none yet, so that `time() - x > limit` alerts from the start.
        let _ = writeln!(
            out,
            "# HELP bosun_gc_last_success_timestamp_seconds When the last run that changed storage ended without an error (0: none yet).\n# TYPE bosun_gc_last_success_timestamp_seconds gauge"
        );
        for (kind, at) in [("collect", gauges.last_collect), ("reconcile", gauges.last_reconcile)] {
            let secs = at.unwrap_or(0) as f64 / 1000.0;
            let _ = writeln!(out, "bosun_gc_last_success_timestamp_seconds{{kind=\"{kind}\"}} {secs}");
        }
        for (name, help, value) in [
            (
                "bosun_gc_paused",
                "1 while garbage collection is paused (bosun gc --pause; it lasts through restarts): nothing is removed.",
                u64::from(gauges.paused_at.is_some()),
            ),
            (
                "bosun_gc_paused_since_timestamp_seconds",
                "When that pause began (0: not paused), for an alert that a restart does not reset.",
                gauges.paused_at.map_or(0, |ms| (ms / 1000) as u64),
            ),
            (
                "bosun_blobs_unreferenced",
                "Blobs no manifest references: in their grace period or awaiting collection.",
                gauges.unreferenced_blobs,
            ),
            (
                "bosun_blobs_unreferenced_bytes",
                "Bytes of those blobs: what collections will free once their grace ends.",
                gauges.unreferenced_bytes,
            ),
            (
                "bosun_blobs_overdue",
                "Unreferenced blobs past their grace period: collectable, not yet collected.",
                gauges.overdue_blobs,
            ),
            ("bosun_blobs_overdue_bytes", "Bytes of those blobs.", gauges.overdue_bytes),
            (
                "bosun_reconcile_missing_blobs",
                "Blobs metadata knows but storage lacks (the last successful reconcile).",
                gauges.missing_blobs,
            ),
            (
                "bosun_reconcile_count_drift",
                "Reference counts that disagreed with a recount of their references, and were set right (the same).",
                gauges.count_drift,
            ),
            (
                "bosun_reconcile_dangling_references",
                "References from a manifest or a repository to a blob or link that is gone (the same).",
                gauges.dangling_references,
            ),
        ] {
            gauge(&mut out, name, help, value);
        }
        out
    }
}
