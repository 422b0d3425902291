//! Reconcile: compare what storage holds with what metadata knows.
//!
//! - Bytes metadata does not know (a crash between committing bytes and recording them,
//!   or between a collection's removal of a blob's row and of its bytes) are removed once
//!   older than the grace period, each re-checked under its digest lock, logged and
//!   counted.
//! - Blobs metadata knows but storage lacks (no bytes, or bytes of another size) are
//!   reported loudly (log, metric, run record) and never dropped from metadata: that is
//!   data loss to investigate, not to hide. Clients are told 404 for them, so that a push
//!   puts the bytes back (`Registry::blob_size`).
//! - Staged upload files without a session are removed once older than the grace period,
//!   each once its session's lock is taken: a session being opened has its file a moment
//!   before its row, and holds that lock across both.
//! - Empty blob directories are removed (a crash between a collection's unlinks and its
//!   pruning of their directories leaves them).
//! - Repositories with nothing in them are removed. Collections remove those their own
//!   removals emptied, and a blob delete the one it empties; this sweep, the only one over
//!   every repository, catches what neither saw.
//! - Reference counts (and quota counts) that disagree with a recount of the references
//!   are reported loudly and set to the recount (`metadata/counts.rs`): collection trusts
//!   them, and a count too low would let it remove what a manifest references. References
//!   to rows that are gone (what such a removal leaves) are reported loudly too.
//! - Any listing error stops the reconcile before it removes anything, so a partial
//!   listing can never make live data look orphaned.
//! - Last, records past their retention are pruned (`metadata/history.rs`): run records
//!   and the audit of tag deletions.
//!
//! It reads all of storage, so it runs rarely (`gc.reconcile_interval`), unlike
//! collection, which only visits garbage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{BATCH, Collector, MetaResult, Report, Result, remove_repository_if_empty};
use crate::metadata::gc as q;
use crate::metadata::repositories;
use crate::metadata::{counts, history, now_ms};
use crate::metrics::Metrics;
use crate::oci::UploadId;

/// Findings of one kind logged one by one; past this, only how many more.
const LOGGED: usize = 100;

fn log_more(found: usize, what: &str) {
    if found > LOGGED {
        tracing::error!(more = found - LOGGED, "{what}");
    }
}

impl Collector {
    /// Runs one reconcile, to its end even if the caller stops waiting.
    pub async fn reconcile(self: &Arc<Self>, trigger: &str, dry_run: bool) -> Result<Report> {
        self.run_once("reconcile", trigger, dry_run, |this, mut report| async move {
            let outcome = this.reconcile_locked(&mut report).await;
            (report, outcome)
        })
        .await
    }

    async fn reconcile_locked(&self, report: &mut Report) -> Result<()> {
        let reg = &self.registry;
        report.run.grace_period_ms = Some(self.options.grace_period.as_millis() as i64);
        let drifted = self.check_counts(report).await?;
        let old_enough = SystemTime::now() - self.options.grace_period;
        // Metadata first, then storage: every blob recorded before this snapshot had its
        // bytes committed before it was recorded, so it is in the listing unless missing.
        let known = reg.meta.read(|c| q::all_blobs(c)).await?;
        let stored = reg.store.list_blobs().await?;
        let uploads = reg.store.list_uploads().await?;

        // Bytes of another size than the blob's are no more the blob than none (a blob's
        // bytes are committed whole, before it is recorded, under one name per digest).
        let stored_sizes: HashMap<String, u64> = stored.iter().map(|b| (b.digest.to_string(), b.size)).collect();
        let mut missing = 0;
        for (digest, size) in &known {
            match stored_sizes.get(digest) {
                Some(stored) if stored == size => continue,
                Some(stored) => {
                    tracing::error!(%digest, size, stored, "metadata knows this blob but storage holds bytes of another size")
                }
                None => tracing::error!(%digest, size, "metadata knows this blob but storage has no bytes for it"),
            }
            missing += 1;
        }
        report.run.missing_blobs = missing;

        let known_set: HashSet<&str> = known.iter().map(|(d, _)| d.as_str()).collect();
        // Bytes go here because metadata has no row for them: that absence is made durable
        // first (a collection that failed before its own flush may have left it unflushed).
        reg.meta.flush().await?;
        for blob in stored.iter().filter(|b| !known_set.contains(b.digest.to_string().as_str())) {
            if blob.modified > old_enough {
                continue;
            }
            let digest = blob.digest.to_string();
            let _guard = reg.digest_locks.lock(&blob.digest).await;
            let d = digest.clone();
            if reg.meta.read(move |c| q::blob_known(c, &d)).await? {
                continue;
            }
            if !report.run.dry_run {
                match reg.store.delete_blob(&blob.digest).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                tracing::warn!(%digest, size = blob.size, "removed bytes that metadata did not know");
                Metrics::add(&reg.metrics.reconcile_orphans_removed, 1);
                Metrics::add(&reg.metrics.reconcile_orphan_bytes_removed, blob.size);
            }
            report.blob(digest, blob.size);
        }

        let sessions = reg.sessions();
        for crate::storage::StoredUpload { name: id, size, modified } in uploads {
            if modified > old_enough {
                continue;
            }
            let Ok(upload) = id.parse::<UploadId>() else {
                tracing::warn!(file = %id, "stray file in the uploads area left alone");
                continue;
            };
            // A session being opened has its file before its row, and holds its lock
            // across both (`Registry::start_upload`): a file whose lock is taken, or whose
            // row exists once the lock is ours, is a session's.
            let Some(claim) = sessions.claim(&upload) else { continue };
            let i = id.clone();
            if reg.meta.read(move |c| q::upload_known(c, &i)).await? {
                continue;
            }
            if !report.run.dry_run {
                match reg.store.delete_upload(&upload).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
            drop(claim);
            sessions.forget(&upload);
            report.upload(id, size);
        }
        if !report.run.dry_run {
            let pruned = reg.store.prune_empty_dirs().await?;
            if pruned > 0 {
                tracing::info!(pruned, "removed empty blob directories (left by a crash during a removal)");
            }
        }
        self.sweep_repositories(report).await?;
        // Late: a repair that fails (a full disk) then leaves the removals above done.
        if drifted > 0 && !report.run.dry_run {
            self.repair_counts(report).await?;
        }
        // Last: housekeeping, which must not keep the repair from running.
        if !report.run.dry_run {
            self.prune_history().await?;
        }
        Ok(())
    }

    /// Recounts every reference count from a read snapshot, without holding up writers,
    /// and looks for references to rows that are gone; logs each finding as an error (the
    /// first [`LOGGED`] of each kind, then how many more), and returns how many counts
    /// disagree.
    async fn check_counts(&self, report: &mut Report) -> Result<usize> {
        let reg = &self.registry;
        let (drift, dangling) = reg.meta.read(|c| Ok((counts::drift(c)?, counts::dangling(c)?))).await?;
        report.run.dangling_references = dangling.len() as u64;
        for d in dangling.iter().take(LOGGED) {
            tracing::error!(reference = d.reference, from = %d.from, to = %d.to, "a reference points at a row that is gone: push the image again");
        }
        log_more(dangling.len(), "more references point at rows that are gone");
        for d in drift.iter().take(LOGGED) {
            tracing::error!(count = d.count, row = %d.row, stored = d.stored, recounted = d.actual, "a reference count disagreed with its references");
        }
        log_more(drift.len(), "more reference counts disagreed with their references");
        // A dry run reports what a repair would set right.
        report.run.counts_repaired = drift.len() as u64;
        Ok(drift.len())
    }

    /// Sets the counts that disagree right, under the writer, where they are recounted.
    async fn repair_counts(&self, report: &mut Report) -> Result<()> {
        let repaired = self.registry.meta.write(|c| counts::repair(c, now_ms())).await?;
        tracing::warn!(repaired, "reference counts set to the recount of their references");
        report.run.counts_repaired = repaired as u64;
        Ok(())
    }

    /// Prunes run records and tag deletions past their retention (`metadata/history.rs`).
    async fn prune_history(&self) -> Result<()> {
        let runs = self.prune(self.options.history_retention, history::prune_runs).await?;
        let tag_deletions = self.prune(self.options.audit_retention, history::prune_deletions).await?;
        if runs + tag_deletions > 0 {
            tracing::info!(runs, tag_deletions, "pruned records past their retention");
        }
        Ok(())
    }

    /// Runs `prune` for rows older than `keep`, a page per transaction (so that writers
    /// wait for one page at most), until a page has nothing to prune; returns how many went.
    async fn prune(
        &self,
        keep: Option<Duration>,
        prune: fn(&rusqlite::Connection, i64, usize) -> MetaResult<usize>,
    ) -> Result<usize> {
        let Some(keep) = keep else { return Ok(0) };
        let before = now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let mut pruned = 0;
        // Unflushed: a pruning that a power loss undoes is done again by the next reconcile.
        while let n @ 1.. = self.registry.meta.write_unflushed(move |c| prune(c, before, BATCH)).await? {
            pruned += n;
        }
        Ok(pruned)
    }

    /// Removes every repository with nothing in it, a page at a time, each re-checked in
    /// the removing transaction: those no collection looked at (one that stopped before
    /// its sweep, or a database from a version that swept differently).
    async fn sweep_repositories(&self, report: &mut Report) -> Result<()> {
        let meta = &self.registry.meta;
        let mut after: Option<String> = None;
        loop {
            let cursor = after.take();
            let page = meta.read(move |c| repositories::list(c, cursor.as_deref(), BATCH)).await?;
            let Some(last) = page.last() else { return Ok(()) };
            after = Some(last.clone());
            let (emptied, ended) = if report.run.dry_run {
                let emptied = meta
                    .simulate(move |c| {
                        page.iter().map(|name| remove_repository_if_empty(c, name)).collect::<MetaResult<Vec<_>>>()
                    })
                    .await?;
                (emptied, Ok(()))
            } else {
                meta.write_each_unflushed(page, |c, name| remove_repository_if_empty(c, name)).await
            };
            emptied.into_iter().flatten().for_each(|name| report.repository(name));
            ended?;
        }
    }
}
