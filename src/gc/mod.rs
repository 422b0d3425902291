//! Online garbage collection: removing what nothing references, while pushes, pulls and
//! deletes go on, with no read-only window and nothing to restart afterwards. An operator
//! can pause it ([`Collector::pause`]) to look at the storage as it is.
//!
//! # What is garbage (decided from metadata alone, never from storage listings)
//! - a manifest with no tag and no parent index, untouched for a grace period, when
//!   untagged collection is on; or a referrer whose subject is not in its repository
//!   (when orphaned referrers are collected). A referrer whose subject is present lives as
//!   long as the subject does; it does not keep an untagged subject alive;
//! - a repository's link to a blob that none of that repository's manifests references,
//!   unused for a grace period;
//! - a blob that no manifest references and no repository links, untouched for a grace
//!   period;
//! - an upload session not written to for `upload_max_age`;
//! - a repository with no manifest and no blob link (a run looks only at the repositories
//!   its removals touched; see `touched_repositories`).
//!
//! Children of an index and manifests with a `subject` are references: nothing reachable
//! from a tag, or from a present subject, is ever collected.
//!
//! # The protocol (each step is why a race cannot lose data)
//! 1. **Counts in the same transaction as every write.** Tags, index children and blob
//!    references are counted by triggers (`metadata/schema.sql`), so candidates are found
//!    through "count = 0" indexes: a run costs in proportion to the garbage.
//! 2. **Grace period.** Anything that loses its last reference to a client or a retention
//!    policy (and an index's children when collection removes the index; what else a
//!    removed manifest leaves unreferenced is the same run's, or the next's), and any
//!    blob a client uploads, mounts or probes (HEAD), and any collectable manifest a
//!    client reads or pushes again, restarts its grace from that moment (`touched_at` /
//!    `linked_at`). A
//!    client that saw a blob or manifest as present has at least a grace period to
//!    reference it (for a blob, a shorter one in a collection an operator asked for with
//!    one: see [`Collector::collect`]).
//! 3. **Select, then re-check under the write lock.** Candidates are read without
//!    blocking writers; each removal re-checks every condition in the removing
//!    transaction. A tag, a manifest push, a probe or a mount committed in between wins.
//! 4. **Gone from metadata, then from storage.** A garbage blob's row is deleted by the
//!    transaction that re-checks it (with its last link, when the link goes in this run):
//!    from that commit it answers 404 and cannot be mounted, so a racing client uploads it
//!    again.
//! 5. **Bytes last.** Bytes are removed only after that commit, under the digest's lock,
//!    after checking that metadata still does not know the digest (an upload of the same
//!    digest records it again and keeps its new bytes). A crash or a storage error between
//!    the two leaves bytes that metadata does not know, which reconcile removes. A
//!    collection's commits do not wait for the disk, because losing them only undoes
//!    progress that the next run redoes; but with `sync_writes` one flush makes every
//!    removal durable before any byte goes, so not even a power loss brings back a row
//!    whose bytes are gone. (Every other place that removes bytes because metadata has no
//!    row for them, reconcile and a failed upload, flushes first too.)
//! 6. **Reconcile** compares storage with metadata: bytes unknown to metadata and older
//!    than the grace period are removed (logged, counted); metadata pointing at missing
//!    bytes is reported loudly and never dropped; any listing error stops it.
//!
//! A dry run performs the same metadata steps inside a transaction that is rolled back,
//! so its report is exactly what a real run would remove at that moment.

mod reconcile;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::failpoints::{GC_AFTER_CANDIDATES, GC_BEFORE_BYTES, GC_FLUSHING, GC_UPLOADS_CLAIMED, GC_UPLOADS_SELECTED};
use crate::metadata::gc::{self as q, ManifestRules, RunRecord};
use crate::metadata::gc_pause::{self, Pause};
use crate::metadata::{MetadataError, now_ms, repositories};
use crate::metrics::Metrics;
use crate::oci::{Digest, UploadId};
use crate::policy::Untagged;
use crate::registry::Registry;
use crate::registry::uploads::Claim;

/// Candidates read at once. They are removed in as few transactions as other writers allow
/// ([`crate::metadata::Metadata::write_each_unflushed`]): a push that arrives meanwhile
/// waits for one removal and the commit of those before it.
const BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub grace_period: Duration,
    pub rules: ManifestRules,
    pub upload_max_age: Duration,
    /// Run records older than this are pruned by reconcile; `None` keeps them all.
    pub history_retention: Option<Duration>,
    /// Tag deletions (the audit) older than this are pruned by reconcile; `None` keeps
    /// them all. Never shorter than the registry reads them (`Config::audit_read_for`).
    pub audit_retention: Option<Duration>,
}

/// One removed object.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub bytes: u64,
    /// Why a manifest was garbage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Removed {
    fn of(kind: &'static str, repository: Option<String>, digest: Option<String>, bytes: u64) -> Removed {
        Removed { kind, repository, digest, id: None, bytes, reason: None }
    }
}

/// What a run removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunRecord,
    pub removed: Vec<Removed>,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("collection task failed: {0}")]
    Task(String),
    /// Collection is paused (`POST /admin/gc/pause`): nothing is removed until it resumes.
    #[error(
        "garbage collection is paused ({0}): nothing is removed until it resumes (POST /admin/gc/resume, bosun gc --resume); a dry run still works"
    )]
    Paused(Pause),
}

impl GcError {
    /// A full disk stopped the run: not a bug (the admin API answers 507, as for a push).
    pub fn is_storage_full(&self) -> bool {
        match self {
            GcError::Metadata(e) => e.is_full(),
            GcError::Storage(e) => crate::metadata::is_full(e),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, GcError>;

impl Report {
    fn new(kind: &str, trigger: &str, dry_run: bool) -> Report {
        Report {
            run: RunRecord {
                kind: kind.to_owned(),
                trigger: trigger.to_owned(),
                dry_run,
                started_at: now_ms(),
                ..RunRecord::default()
            },
            removed: Vec::new(),
        }
    }

    fn push(&mut self, item: Removed) {
        let r = &mut self.run;
        match item.kind {
            "manifest" => r.manifests_removed += 1,
            "link" => r.links_removed += 1,
            "blob" => {
                r.blobs_removed += 1;
                r.bytes_removed += item.bytes;
            }
            "upload" => {
                r.uploads_removed += 1;
                r.bytes_removed += item.bytes;
            }
            "repository" => r.repositories_removed += 1,
            _ => {}
        }
        self.removed.push(item);
    }

    fn manifest(&mut self, m: q::RemovedManifest) {
        self.run.tags_removed += m.tags;
        let removed = Removed::of("manifest", Some(m.repository), Some(m.digest), m.bytes);
        self.push(Removed { reason: Some(m.reason), ..removed });
    }

    fn link(&mut self, repository: String, digest: String) {
        self.push(Removed::of("link", Some(repository), Some(digest), 0));
    }

    fn blob(&mut self, digest: String, bytes: u64) {
        self.push(Removed::of("blob", None, Some(digest), bytes));
    }

    fn repository(&mut self, name: String) {
        self.push(Removed::of("repository", Some(name), None, 0));
    }

    /// An upload session, or a staged file no session has, with the bytes it held.
    fn upload(&mut self, id: String, bytes: u64) {
        self.push(Removed { id: Some(id), ..Removed::of("upload", None, None, bytes) });
    }
}

/// The repositories that `removed` took a manifest or a link from, each once: the only ones
/// a collection can have left empty. (A blob delete removes the repository it empties
/// itself, and reconcile looks at every repository.) Looking at these alone keeps a
/// collection's cost proportional to its garbage, not to the number of repositories.
fn touched_repositories(removed: &[Removed]) -> Vec<String> {
    let names: std::collections::BTreeSet<&str> = removed
        .iter()
        .filter(|r| matches!(r.kind, "manifest" | "link"))
        .filter_map(|r| r.repository.as_deref())
        .collect();
    names.into_iter().map(str::to_owned).collect()
}

/// The repository's name if it was empty and is removed.
fn remove_repository_if_empty(c: &rusqlite::Connection, name: &str) -> MetaResult<Option<String>> {
    Ok(repositories::remove_if_empty(c, name)?.then(|| name.to_owned()))
}

/// Whether collection is paused (and by whom) and what runs now; after a resume, the
/// pause it ended. The answer to a pause, a resume or a question (admin API and CLI alike).
#[derive(Debug, Serialize)]
pub struct Status {
    pub paused: bool,
    pub pause: Option<Pause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<Pause>,
    pub running: Option<InProgress>,
}

/// The collection or reconcile in progress: a run that lasts hours is stuck on its storage
/// or its database, and a pause waits for it.
#[derive(Debug, Clone, Serialize)]
pub struct InProgress {
    pub kind: &'static str,
    pub trigger: String,
    pub dry_run: bool,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
}

/// Clears the run in progress when its task ends, however it ends.
struct InProgressGuard(Arc<std::sync::Mutex<Option<InProgress>>>);

impl Drop for InProgressGuard {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Runs collections and reconciles, one at a time.
pub struct Collector {
    registry: Arc<Registry>,
    options: GcOptions,
    /// Held by the run in progress ([`Collector::run_once`]).
    running: Arc<tokio::sync::Mutex<()>>,
    /// What that run is, while it runs.
    in_progress: Arc<std::sync::Mutex<Option<InProgress>>>,
}

impl Collector {
    pub fn new(registry: Arc<Registry>, options: GcOptions) -> Collector {
        Collector {
            registry,
            options,
            running: Arc::new(tokio::sync::Mutex::new(())),
            in_progress: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Stops removals, for an operator who must look at the storage as it is (an
    /// investigation, a migration) without a restart: collections and reconciles are
    /// skipped when scheduled and refused when asked for, and so are retention policies'
    /// deletions (`policy/retention.rs`); dry runs and plans still report. A collection or
    /// reconcile in progress finishes first: this returns once it has. The pause is kept in
    /// metadata (`metadata/gc_pause.rs`): it lasts through restarts and crashes until
    /// [`Collector::resume`], or for `duration` if given. Pausing a paused collector keeps
    /// the first pause.
    pub async fn pause(&self, by: String, reason: String, duration: Option<Duration>) -> Result<Status> {
        let now = now_ms();
        let until = duration.map(|d| now.saturating_add(d.as_millis() as i64));
        let asked = Pause { paused_at: now, paused_by: by, reason, until };
        let pause = self.registry.meta.write(move |c| gc_pause::set(c, &asked)).await?;
        if let (Some(pause), Some(run)) = (pause, self.in_progress()) {
            tracing::warn!(%pause, kind = run.kind, trigger = %run.trigger, started_at = run.started_at,
                "pausing garbage collection; waiting for the run in progress to finish");
        }
        let _in_progress = self.running.lock().await;
        // Read again: a resume may have come while this waited.
        let pause = self.paused().await?;
        if let Some(pause) = &pause {
            tracing::warn!(%pause, "garbage collection paused");
        }
        Ok(Status { paused: pause.is_some(), pause, ended: None, running: None })
    }

    /// Ends the pause, if collection was paused.
    pub async fn resume(&self, by: &str) -> Result<Status> {
        let ended = self.registry.meta.write(|c| gc_pause::clear(c, now_ms())).await?;
        match &ended {
            Some(pause) => tracing::warn!(%pause, resumed_by = by, "garbage collection resumed"),
            None => tracing::info!(resumed_by = by, "garbage collection was not paused"),
        }
        Ok(Status { paused: false, pause: None, ended, running: self.in_progress() })
    }

    /// Whether collection is paused, and by whom, and the run in progress.
    pub async fn status(&self) -> Result<Status> {
        let pause = self.paused().await?;
        Ok(Status { paused: pause.is_some(), pause, ended: None, running: self.in_progress() })
    }

    /// The collection or reconcile in progress, if one runs.
    pub fn in_progress(&self) -> Option<InProgress> {
        self.in_progress.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The pause in force, if collection is paused.
    pub async fn paused(&self) -> Result<Option<Pause>> {
        Ok(self.registry.meta.read(|c| gc_pause::get(c, now_ms())).await?)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The grace period's cutoff now (ms): what was touched since is in its grace.
    pub fn cutoff(&self) -> i64 {
        now_ms() - self.options.grace_period.as_millis() as i64
    }

    /// The rules of a run starting now.
    pub(crate) fn ctx(&self) -> Ctx {
        self.ctx_with(self.options.grace_period)
    }

    /// The rules of a run starting now with a grace period of `grace`.
    /// (Manifests keep at least `gc.grace_period`: see [`Ctx::manifest_cutoff`].)
    fn ctx_with(&self, grace: Duration) -> Ctx {
        let now = now_ms();
        let cutoff = now - grace.as_millis() as i64;
        let manifest_cutoff = cutoff.min(now - self.options.grace_period.as_millis() as i64);
        let policies = self.registry.policies();
        let gc_untagged = self.options.rules.untagged;
        let untagged_cutoff = move |repo: &str, cutoff: i64| match policies.retention_for(repo).map(|p| p.untagged) {
            None | Some(Untagged::Gc) => gc_untagged.then_some(cutoff),
            Some(Untagged::Keep) => None,
            Some(Untagged::RemoveAfter(age)) => Some(cutoff.min(now.saturating_sub(age.as_millis() as i64))),
        };
        Ctx {
            cutoff,
            manifest_cutoff,
            rules: self.options.rules,
            untagged_cutoff: Arc::new(untagged_cutoff),
            restore_since: self.registry.options().restore_since(now),
        }
    }

    /// Runs one collection, to its end even if the caller stops waiting. `trigger` says who
    /// asked (`schedule`, `api`, `cli`). `grace_period`, if given, replaces
    /// `gc.grace_period` for this run's blobs and links (manifests keep theirs): an
    /// operator whose disk is full frees the blobs of images just deleted by digest without
    /// waiting an hour. Nothing referenced goes, and a blob being removed is already
    /// invisible; but a push in flight whose blobs are not yet in a manifest (or were
    /// probed as present within the usual grace) is told they are unknown and must be made
    /// again.
    pub async fn collect(
        self: &Arc<Self>,
        trigger: &str,
        dry_run: bool,
        grace_period: Option<Duration>,
    ) -> Result<Report> {
        let grace = grace_period.unwrap_or(self.options.grace_period);
        let configured = self.options.grace_period;
        self.run_once("collect", trigger, dry_run, move |this, mut report| async move {
            if grace < configured && !dry_run {
                tracing::warn!(
                    trigger = %report.run.trigger,
                    grace_period = ?grace,
                    ?configured,
                    "collecting blobs with a shorter grace period: a push in flight may be told its blobs are unknown"
                );
            }
            report.run.grace_period_ms = Some(grace.as_millis() as i64);
            let ctx = this.ctx_with(grace);
            let outcome =
                if dry_run { this.simulate(&ctx, &mut report).await } else { this.run(&ctx, &mut report).await };
            (report, outcome)
        })
        .await
    }

    /// Runs one collection or reconcile: waits for the one-at-a-time lock (a caller that
    /// gives up while waiting starts nothing), then runs `body` on a task of its own and
    /// records it. Dropped half-way, by an HTTP client that goes away, a run would release
    /// its digest locks while the unlinks it started still run (an upload of the same
    /// digest could then lose its new bytes), and would never be recorded.
    async fn run_once<F, Fut>(
        self: &Arc<Self>,
        kind: &'static str,
        trigger: &str,
        dry_run: bool,
        body: F,
    ) -> Result<Report>
    where
        F: FnOnce(Arc<Self>, Report) -> Fut + Send + 'static,
        Fut: Future<Output = (Report, Result<()>)> + Send + 'static,
    {
        let one_at_a_time = self.running.clone().lock_owned().await;
        let (this, report) = (self.clone(), Report::new(kind, trigger, dry_run));
        // Checked under the lock, so that no removal starts after `pause` has returned.
        match if dry_run { Ok(None) } else { self.paused().await } {
            Ok(None) => {}
            Ok(Some(pause)) => {
                tracing::info!(kind, trigger, %pause, "garbage collection paused: run skipped");
                return Err(GcError::Paused(pause));
            }
            // A failed run like any other: logged, counted and (if metadata lets it) recorded.
            Err(e) => return self.finish(report, Err(e), Instant::now()).await,
        }
        let run = InProgress { kind, trigger: trigger.to_owned(), dry_run, started_at: report.run.started_at };
        *self.in_progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
        let in_progress = InProgressGuard(self.in_progress.clone());
        let started = Instant::now();
        tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            let _in_progress = in_progress;
            let (report, outcome) = body(this.clone(), report).await;
            this.finish(report, outcome, started).await
        })
        .await
        .unwrap_or_else(|e| {
            // A panic: the run's report went with it, so it is neither recorded nor in the
            // log as a stopped run; say so here, and count it as the failed run it is (what
            // it removed before is counted nowhere, but reconcile finds any bytes it left).
            tracing::error!(kind, trigger, error = %e, "garbage collection stopped: its task failed");
            self.count(&Report::new(kind, trigger, dry_run).run, false, started);
            Err(GcError::Task(e.to_string()))
        })
    }

    /// Records the run and updates the metrics, whatever the outcome.
    async fn finish(&self, mut report: Report, outcome: Result<()>, started: Instant) -> Result<Report> {
        report.run.finished_at = now_ms();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, kind = %report.run.kind, "garbage collection stopped");
            report.run.error = Some(e.to_string());
        }
        let record = report.run.clone();
        let outcome = match self.registry.meta.write(move |c| q::record_run(c, &record)).await {
            Ok(id) => {
                report.run.id = id;
                outcome
            }
            Err(e) => {
                // A scheduled run has nobody to tell but the log; and unrecorded, it failed.
                tracing::error!(error = %e, kind = %report.run.kind, "recording the garbage collection run failed");
                outcome.and(Err(e.into()))
            }
        };
        self.count(&report.run, outcome.is_ok(), started);
        tracing::info!(
            kind = %report.run.kind,
            trigger = %report.run.trigger,
            dry_run = report.run.dry_run,
            manifests = report.run.manifests_removed,
            links = report.run.links_removed,
            blobs = report.run.blobs_removed,
            uploads = report.run.uploads_removed,
            repositories = report.run.repositories_removed,
            bytes = report.run.bytes_removed,
            duration_ms = started.elapsed().as_millis() as u64,
            "garbage collection finished"
        );
        outcome.map(|()| report)
    }

    /// Counts a run in the metrics once its outcome is final (its record written or not).
    fn count(&self, run: &RunRecord, succeeded: bool, started: Instant) {
        let m = &self.registry.metrics;
        if run.kind == "collect" {
            Metrics::add(if run.dry_run { &m.gc_dry_runs } else { &m.gc_runs }, 1);
            Metrics::add(&m.gc_duration_ms, started.elapsed().as_millis() as u64);
            if !succeeded {
                Metrics::add(&m.gc_failures, 1);
            }
            if !run.dry_run {
                Metrics::add(&m.gc_manifests_removed, run.manifests_removed);
                Metrics::add(&m.gc_links_removed, run.links_removed);
                Metrics::add(&m.gc_blobs_removed, run.blobs_removed);
                Metrics::add(&m.gc_uploads_removed, run.uploads_removed);
                Metrics::add(&m.gc_repositories_removed, run.repositories_removed);
                Metrics::add(&m.gc_bytes_removed, run.bytes_removed);
            }
        } else if !succeeded {
            Metrics::add(&m.reconcile_failures, 1);
        } else if !run.dry_run {
            Metrics::add(&m.reconcile_runs, 1);
        }
    }

    /// The real run: transactions that give way to pushes, candidates re-checked at
    /// removal, bytes last.
    async fn run(&self, ctx: &Ctx, report: &mut Report) -> Result<()> {
        // Removing a manifest can make its children garbage, for the next round's manifest
        // pass (its links and blobs are the same round's): repeat until a round removes no
        // manifest.
        loop {
            let before = report.run.manifests_removed;
            self.round(ctx, report).await?;
            if report.run.manifests_removed == before {
                break;
            }
        }
        self.uploads(report).await?;
        let (emptied, ended) = self
            .registry
            .meta
            .write_each_unflushed(touched_repositories(&report.removed), |c, name| remove_repository_if_empty(c, name))
            .await;
        emptied.into_iter().flatten().for_each(|name| report.repository(name));
        Ok(ended?)
    }

    /// Runs one kind of pass: candidates read without blocking writers, then removed in
    /// transactions that give way to other writers, each candidate re-checked. Returns what
    /// it removed, also when an error stopped it (the error comes with it).
    async fn pass<C, K, R>(&self, ctx: &Ctx, pass: Pass<C, K, R>) -> (Vec<R>, Result<()>)
    where
        C: Send + 'static,
        K: Clone + Send + 'static,
        R: Send + 'static,
    {
        let meta = &self.registry.meta;
        let mut after = (pass.start)();
        let mut out = Vec::new();
        loop {
            let (cursor, read_ctx) = (after.clone(), ctx.clone());
            let candidates = match meta.read(move |c| (pass.select)(c, &read_ctx, &cursor)).await {
                Ok(candidates) => candidates,
                Err(e) => return (out, Err(e.into())),
            };
            let Some(last) = candidates.last() else { return (out, Ok(())) };
            after = (pass.cursor)(last);
            self.registry.failpoints.hit(GC_AFTER_CANDIDATES).await;
            let write_ctx = ctx.clone();
            // Unflushed: losing a removal to a power failure only undoes progress that the
            // next run redoes; the removals that bytes depend on are flushed before any byte
            // goes (`remove_blob_bytes`).
            let (removed, ended) = meta
                .write_each_unflushed(candidates, move |c, candidate| (pass.remove)(c, &write_ctx, candidate))
                .await;
            out.extend(removed.into_iter().flatten());
            if let Err(e) = ended {
                return (out, Err(e.into()));
            }
        }
    }

    /// One round of a real run: manifests, then links (with the blobs that lose their last
    /// one), then blobs that had no link; the blobs' bytes last. A pass that fails ends the
    /// round, but what was removed before is reported, and the bytes of blobs already gone
    /// from metadata still go (rather than waiting for reconcile).
    async fn round(&self, ctx: &Ctx, report: &mut Report) -> Result<()> {
        let (manifests, ended) = self.pass(ctx, MANIFESTS).await;
        for m in manifests {
            // One line per manifest, the answer to "where did my image go?" (blobs and
            // links follow from manifests, and are counted, not listed).
            tracing::info!(repository = %m.repository, digest = %m.digest, reason = m.reason, "garbage collection removed a manifest");
            report.manifest(m);
        }
        ended?;
        let mut blobs = Vec::new();
        let (links, mut ended) = self.pass(ctx, LINKS).await;
        for link in links {
            blobs.extend(link.blob.map(|size| (link.digest.clone(), size)));
            report.link(link.repository, link.digest);
        }
        if ended.is_ok() {
            let unlinked;
            (unlinked, ended) = self.pass(ctx, BLOBS).await;
            blobs.extend(unlinked);
        }
        self.registry.failpoints.hit(GC_BEFORE_BYTES).await;
        let bytes = self.remove_blob_bytes(blobs, report).await;
        ended.and(bytes)
    }

    /// Removes the bytes of blobs that metadata no longer knows, a batch at a time. The
    /// batch's digests are locked first (in order: an upload holds at most one digest lock,
    /// so there is no cycle), then re-checked: a digest an upload recorded again meanwhile
    /// keeps its (new) bytes.
    async fn remove_blob_bytes(&self, removed: Vec<(String, u64)>, report: &mut Report) -> Result<()> {
        let mut removed: Vec<(Digest, u64)> = removed
            .into_iter()
            .filter_map(|(digest, size)| match digest.parse() {
                Ok(d) => Some((d, size)),
                Err(_) => {
                    tracing::error!(%digest, "metadata held an unparsable blob digest; its bytes, if any, are reconcile's");
                    None
                }
            })
            .collect();
        removed.sort();
        // A digest is removed once per round, unless an upload recorded it again in between
        // with an older timestamp (a clock that stepped back); locking it twice would hang.
        removed.dedup_by(|a, b| a.0 == b.0);
        let (meta, store) = (&self.registry.meta, &self.registry.store);
        if removed.is_empty() {
            return Ok(());
        }
        // The removals were committed without waiting for the disk: one flush makes them all
        // durable before the first byte goes, so no power loss can bring back a row whose
        // bytes are gone. The first batch is locked and re-checked meanwhile.
        let mut flush = Some(async {
            self.registry.failpoints.hit(GC_FLUSHING).await;
            meta.flush().await
        });
        for batch in removed.chunks(BATCH) {
            let lock_and_check = async {
                let mut guards = Vec::with_capacity(batch.len());
                for (digest, _) in batch {
                    guards.push(self.registry.digest_locks.lock(digest).await);
                }
                let names: Vec<String> = batch.iter().map(|(d, _)| d.to_string()).collect();
                Ok::<_, GcError>((guards, meta.read(move |c| q::known_blobs(c, &names)).await?))
            };
            let flushed = async {
                match flush.take() {
                    Some(flush) => flush.await,
                    None => Ok(()),
                }
            };
            let (flushed, checked) = tokio::join!(flushed, lock_and_check);
            flushed?;
            let (_guards, known) = checked?;
            let doomed: Vec<&(Digest, u64)> = batch.iter().zip(known).filter(|(_, k)| !k).map(|(b, _)| b).collect();
            let digests: Vec<Digest> = doomed.iter().map(|(d, _)| d.clone()).collect();
            // What could not be removed is neither counted nor reported as freed; its bytes
            // are unknown to metadata now, for reconcile. The first error ends the run.
            let failed = store.delete_blobs(&digests).await;
            for (digest, size) in doomed.into_iter().filter(|(d, _)| !failed.iter().any(|(f, _)| f == d)) {
                report.blob(digest.to_string(), *size);
            }
            if let Some((digest, e)) = failed.into_iter().next() {
                return Err(std::io::Error::new(e.kind(), format!("removing the bytes of {digest}: {e}")).into());
            }
        }
        Ok(())
    }

    /// Removes upload sessions idle longer than `upload_max_age`, a page at a time; a
    /// session a request is using right now is left for the next run, and one that is being
    /// removed is claimed (locked) until it is gone, so a request arriving meanwhile finds
    /// it unknown. Rows go first (unflushed, then one flush for the page), files after.
    async fn uploads(&self, report: &mut Report) -> Result<()> {
        let (meta, sessions) = (&self.registry.meta, self.registry.sessions());
        let before = now_ms() - self.options.upload_max_age.as_millis() as i64;
        let mut after = q::UPLOADS_START;
        loop {
            let cursor = after;
            let page = meta.read(move |c| q::stale_uploads(c, before, cursor, BATCH)).await?;
            let Some((last, _)) = page.last() else { return Ok(()) };
            after = *last;
            self.registry.failpoints.hit(GC_UPLOADS_SELECTED).await;
            let idle: Vec<IdleSession> = page
                .into_iter()
                .filter_map(|(_, id)| {
                    let upload: UploadId = id.parse().ok()?;
                    let claim = sessions.claim(&upload)?;
                    Some(IdleSession { id, upload, _claim: claim })
                })
                .collect();
            if idle.is_empty() {
                continue;
            }
            self.registry.failpoints.hit(GC_UPLOADS_CLAIMED).await;
            // One transaction for the page; each row is re-checked in it.
            let removed = meta
                .write_unflushed(move |c| {
                    let mut removed = Vec::new();
                    for session in idle {
                        if q::remove_upload_if_stale(c, &session.id, before)? {
                            removed.push(session);
                        }
                    }
                    Ok::<_, MetadataError>(removed)
                })
                .await?;
            if removed.is_empty() {
                continue;
            }
            for session in &removed {
                sessions.forget(&session.upload);
            }
            meta.flush().await?;
            // Each claim is released once its session's file is gone (the session dropped).
            for session in removed {
                let freed = self.staged_bytes(&session.upload).await?;
                match self.registry.store.delete_upload(&session.upload).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => report.upload(session.id, freed),
                }
            }
        }
    }

    /// The bytes a session has staged (its file's, which a chunk cut off may have left
    /// longer than the session's acknowledged size); none if its file is gone, as a crash
    /// between an upload's commit and its record leaves it (`Registry::end_if_staged_lost`).
    async fn staged_bytes(&self, upload: &UploadId) -> Result<u64> {
        match self.registry.store.upload_size(upload).await {
            Ok(size) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The dry run: every metadata step of a real run, cascades included, in one
    /// transaction that is rolled back.
    async fn simulate(&self, ctx: &Ctx, report: &mut Report) -> Result<()> {
        let ctx = ctx.clone();
        let upload_before = now_ms() - self.options.upload_max_age.as_millis() as i64;
        let removed = self
            .registry
            .meta
            .simulate(move |c| {
                let mut out = Report::new("collect", "", true);
                loop {
                    let before = out.run.manifests_removed;
                    simulate_pass(c, &ctx, MANIFESTS)?.into_iter().for_each(|m| out.manifest(m));
                    for link in simulate_pass(c, &ctx, LINKS)? {
                        out.link(link.repository, link.digest.clone());
                        link.blob.into_iter().for_each(|size| out.blob(link.digest.clone(), size));
                    }
                    simulate_pass(c, &ctx, BLOBS)?.into_iter().for_each(|(digest, size)| out.blob(digest, size));
                    if out.run.manifests_removed == before {
                        break;
                    }
                }
                let mut after = q::UPLOADS_START;
                loop {
                    let page = q::stale_uploads(c, upload_before, after, BATCH)?;
                    let Some((last, _)) = page.last() else { break };
                    after = *last;
                    for (_, id) in page {
                        out.upload(id, 0);
                    }
                }
                for name in touched_repositories(&out.removed) {
                    remove_repository_if_empty(c, &name)?.into_iter().for_each(|name| out.repository(name));
                }
                Ok::<_, MetadataError>(out.removed)
            })
            .await?;
        // A real run leaves a session that a request is using (see `uploads`), and frees
        // what each other one has staged.
        let sessions = self.registry.sessions();
        for mut r in removed {
            if r.kind == "upload" {
                let Some(upload) = r.id.as_deref().and_then(|id| id.parse::<UploadId>().ok()) else { continue };
                if sessions.in_use(&upload) {
                    continue;
                }
                r.bytes = self.staged_bytes(&upload).await?;
            }
            report.push(r);
        }
        Ok(())
    }

    /// The most recent runs, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<RunRecord>> {
        Ok(self.registry.meta.read(move |c| q::list_runs(c, limit)).await?)
    }
}

/// An upload session idle past `upload_max_age`, claimed so that no request uses it while
/// a collection removes it.
struct IdleSession {
    id: String,
    upload: UploadId,
    _claim: Claim,
}

/// Per repository, given a run's cutoff: untagged manifests touched at or before the
/// answer are garbage (`None` keeps them).
type UntaggedCutoff = dyn Fn(&str, i64) -> Option<i64> + Send + Sync;

/// What every removal of one run checks against.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// A blob or link used or unreferenced after this instant (ms) is within its grace
    /// period.
    cutoff: i64,
    /// The same for manifests. A shorter grace asked for one run frees blobs and links
    /// only: a referrer pushed before its subject is protected by nothing else (its push
    /// was acknowledged, and nothing would tell the client it went), nor is an image pushed
    /// by digest for an index or a tag to follow.
    manifest_cutoff: i64,
    rules: ManifestRules,
    /// Per repository: untagged manifests touched at or before this are garbage.
    untagged_cutoff: Arc<UntaggedCutoff>,
    /// Tag deletions after this instant can still be restored.
    restore_since: i64,
}

impl Ctx {
    fn judge(&self) -> q::ManifestJudge<'_> {
        q::ManifestJudge {
            cutoff: self.manifest_cutoff,
            rules: self.rules,
            untagged_cutoff: &*self.untagged_cutoff,
            restore_since: self.restore_since,
        }
    }
}

type MetaResult<T> = std::result::Result<T, MetadataError>;

/// One kind of garbage: where its candidate list starts, how to read the next batch after
/// a cursor, and how to remove one candidate after re-checking it.
struct Pass<C, K, R> {
    start: fn() -> K,
    select: fn(&rusqlite::Connection, &Ctx, &K) -> MetaResult<Vec<C>>,
    cursor: fn(&C) -> K,
    remove: fn(&rusqlite::Connection, &Ctx, &C) -> MetaResult<Option<R>>,
}

const MANIFESTS: Pass<q::ManifestCandidate, (i64, i64), q::RemovedManifest> = Pass {
    start: || (i64::MIN, i64::MIN),
    select: |c, ctx, after| q::manifest_candidates(c, ctx.manifest_cutoff, *after, BATCH),
    cursor: |m| (m.touched_at, m.id),
    remove: |c, ctx, m| q::remove_manifest_if_garbage(c, m.id, &ctx.judge()),
};

/// A link goes with its blob when it was the blob's last link (bytes afterwards).
const LINKS: Pass<q::LinkCandidate, (i64, i64, String), q::RemovedLink> = Pass {
    start: || (i64::MIN, i64::MIN, String::new()),
    select: |c, ctx, after| q::link_candidates(c, ctx.cutoff, (after.0, after.1, &after.2), BATCH),
    cursor: |l| (l.linked_at, l.repository_id, l.digest.clone()),
    remove: |c, ctx, l| q::remove_link_if_garbage(c, l, ctx.cutoff),
};

/// Blobs with no link (left by an earlier run's grace period, or never linked); removed
/// from metadata here, their bytes afterwards.
const BLOBS: Pass<q::BlobCandidate, (i64, String), (String, u64)> = Pass {
    start: || (i64::MIN, String::new()),
    select: |c, ctx, after| q::blob_candidates(c, ctx.cutoff, (after.0, &after.1), BATCH),
    cursor: |b| (b.touched_at, b.digest.clone()),
    remove: |c, ctx, b| Ok(q::remove_blob_if_garbage(c, &b.digest, ctx.cutoff)?.map(|size| (b.digest.clone(), size))),
};

/// A pass of the dry run: the same queries and re-checked removals, on one transaction.
fn simulate_pass<C, K, R>(c: &rusqlite::Connection, ctx: &Ctx, pass: Pass<C, K, R>) -> MetaResult<Vec<R>> {
    let mut after = (pass.start)();
    let mut out = Vec::new();
    loop {
        let candidates = (pass.select)(c, ctx, &after)?;
        let Some(last) = candidates.last() else { return Ok(out) };
        after = (pass.cursor)(last);
        for candidate in &candidates {
            out.extend((pass.remove)(c, ctx, candidate)?);
        }
    }
}

/// Every blob a collection would free if it ran now with no grace period, no restore window
/// and no waiting age for untagged manifests (where they are collected at all), simulated
/// on `c` (which the caller rolls back): what the retention plan reports as freed, once
/// the time it gives has passed. (digest, size)
pub(crate) fn blobs_freed_eventually(c: &rusqlite::Connection, ctx: &Ctx) -> MetaResult<Vec<(String, u64)>> {
    let rule = ctx.untagged_cutoff.clone();
    let untagged_cutoff: Arc<UntaggedCutoff> = Arc::new(move |repo, cutoff| rule(repo, cutoff).map(|_| cutoff));
    let ctx =
        Ctx { cutoff: i64::MAX, manifest_cutoff: i64::MAX, restore_since: i64::MAX, untagged_cutoff, ..ctx.clone() };
    let mut freed = Vec::new();
    loop {
        let manifests = simulate_pass(c, &ctx, MANIFESTS)?.len();
        let links = simulate_pass(c, &ctx, LINKS)?;
        freed.extend(links.into_iter().filter_map(|l| Some((l.digest, l.blob?))));
        freed.extend(simulate_pass(c, &ctx, BLOBS)?);
        if manifests == 0 {
            return Ok(freed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Mutex;

    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    use rusqlite::{Connection, StatementStatus};

    use super::*;
    use crate::metadata::{Metadata, blobs, manifests, repositories, tags};
    use crate::oci::ParsedManifest;

    /// A run a full disk stopped is told apart (the admin API answers 507, not 500); a
    /// failed flush of the log is not a full disk (only a restart helps then).
    #[test]
    fn a_full_disk_is_told_apart() {
        let sqlite_full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert!(GcError::Metadata(MetadataError::Sqlite(sqlite_full)).is_storage_full());
        assert!(GcError::Storage(std::io::Error::from_raw_os_error(libc::ENOSPC)).is_storage_full());
        assert!(GcError::Storage(std::io::Error::from_raw_os_error(libc::EDQUOT)).is_storage_full());
        assert!(!GcError::Storage(std::io::Error::from_raw_os_error(libc::EIO)).is_storage_full());
        let flush = MetadataError::LogFlush(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(!GcError::Metadata(flush).is_storage_full());
    }

    /// A store of `images` tagged images, `per_repository` to a repository; each image has
    /// a config, three layers of its own and a base layer its repository shares.
    fn store(path: &Path, images: usize, per_repository: usize) {
        drop(Metadata::open(path, false).unwrap());
        let mut conn = Connection::open(path).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..images {
            let name = format!("r{}", i / per_repository).parse().unwrap();
            let repo = repositories::ensure(&tx, &name, 0).unwrap();
            // A pushed blob, linked, as the manifest's descriptor of `media_type`.
            let blob = |media_type: &str, content: String| {
                let digest = Digest::sha256_of(content.as_bytes());
                blobs::insert_or_touch(&tx, &digest, 10, 0).unwrap();
                blobs::link(&tx, repo, &digest, 0).unwrap();
                format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":10}}"#)
            };
            let layer = |content: String| blob("application/vnd.oci.image.layer.v1.tar", content);
            let config = blob("application/vnd.oci.image.config.v1+json", format!("config {i}"));
            let layers: Vec<String> = std::iter::once(layer(format!("base {}", i / per_repository)))
                .chain((0..3).map(|l| layer(format!("layer {i} {l}"))))
                .collect();
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{config},"layers":[{}]}}"#,
                layers.join(",")
            );
            let parsed = ParsedManifest::parse(body.as_bytes(), None).unwrap();
            let digest = Digest::sha256_of(body.as_bytes());
            let id = manifests::insert(&tx, repo, &digest, &parsed, &[], body.as_bytes(), 0).unwrap();
            tags::set(&tx, repo, &format!("v{i}").parse().unwrap(), id, 0).unwrap();
        }
        tx.commit().unwrap();
    }

    /// The virtual-machine steps SQLite executes for the statements `f` runs on `conn`,
    /// triggers included: the work done, whatever the machine's speed. `conn` must not
    /// have run a statement before (each statement's counter starts at zero).
    fn steps<T>(conn: &mut Connection, f: impl FnOnce(&Connection) -> T) -> (i64, T) {
        let seen = std::sync::Arc::new(Mutex::new((HashMap::<String, i32>::new(), 0i64)));
        let counter = seen.clone();
        conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_PROFILE,
            Some(move |event: TraceEvent<'_>| {
                if let TraceEvent::Profile(stmt, _) = event {
                    // A cached statement's counter runs on from one execution to the next.
                    let now = stmt.get_status(StatementStatus::VmStep);
                    let mut seen = counter.lock().unwrap();
                    let before = seen.0.insert(stmt.sql().into_owned(), now).unwrap_or(0);
                    seen.1 += i64::from(now - before);
                }
            }),
        )
        .unwrap();
        let out = f(conn);
        conn.trace_v2(TraceEventCodes::empty(), None::<fn(TraceEvent<'_>)>).unwrap();
        let total = seen.lock().unwrap().1;
        (total, out)
    }

    /// What deleting the same five images and collecting what they leave costs in a store
    /// of `images`, `per_repository` to a repository: (delete steps, collection steps,
    /// blobs freed).
    fn delete_and_collect(images: usize, per_repository: usize) -> (i64, i64, usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.sqlite");
        store(&path, images, per_repository);
        let mut conn = Connection::open(&path).unwrap();
        let (deleting, ()) = steps(&mut conn, |c| {
            for id in 1..=5 {
                manifests::delete(c, id, Some(1)).unwrap();
            }
        });
        // A connection of its own, whose statements all start counting at zero.
        let mut conn = Connection::open(&path).unwrap();
        let ctx = Ctx {
            cutoff: 10,
            manifest_cutoff: 10,
            rules: ManifestRules { untagged: true, orphan_referrers: true },
            untagged_cutoff: Arc::new(|_, cutoff| Some(cutoff)),
            restore_since: i64::MAX,
        };
        let (collecting, freed) = steps(&mut conn, |c| {
            let freed = blobs_freed_eventually(c, &ctx).unwrap();
            let digests: Vec<String> = freed.iter().map(|(d, _)| d.clone()).collect();
            assert!(q::known_blobs(c, &digests).unwrap().iter().all(|known| !known));
            // The images deleted are the first five, all in r0: the one repository a run
            // would have touched (it stays, with the rest of its images).
            assert!(!repositories::remove_if_empty(c, "r0").unwrap());
            freed.len()
        });
        (deleting, collecting, freed)
    }

    /// Deleting an image and collecting what it leaves cost in proportion to that image,
    /// not to the size of its repository or of the store: the same garbage in a store 25
    /// times larger, with repositories 5 times larger and 5 times as many, costs SQLite the
    /// same work (within the few steps a deeper B-tree adds).
    #[test]
    fn deleting_and_collecting_cost_the_garbage_not_the_store() {
        let (small_delete, small_collect, small_freed) = delete_and_collect(200, 50);
        let (large_delete, large_collect, large_freed) = delete_and_collect(5000, 250);
        // Each image frees its config and its three layers; the shared base stays.
        assert_eq!((small_freed, large_freed), (20, 20));
        // A trace that counted nothing would pass the comparisons below; deleting five
        // images and finding the twenty blobs they leave takes thousands of steps.
        assert!(small_delete > 1000 && small_collect > 1000, "delete: {small_delete}, collect: {small_collect} steps");
        assert!(large_delete <= small_delete + small_delete / 20, "delete: {small_delete} -> {large_delete} steps");
        assert!(
            large_collect <= small_collect + small_collect / 20,
            "collect: {small_collect} -> {large_collect} steps"
        );
    }
}
