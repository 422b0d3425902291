//! The queries of garbage collection and reconcile: finding candidates through the
//! "count = 0" partial indexes, and removing each one only after re-checking, in the
//! removing transaction itself, that it is still garbage.
//!
//! Selection and removal are separate on purpose: a candidate list is a hint, read without
//! blocking writers; every removal re-checks the same conditions under the write lock, so
//! a reference created between the two (a tag, a manifest push, a probe, a mount, an
//! upload) always wins.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use super::repositories::RepoId;

/// Rules that decide which unreferenced manifests are garbage.
#[derive(Debug, Clone, Copy)]
pub struct ManifestRules {
    /// Collect manifests with no tag and no parent index.
    pub untagged: bool,
    /// Collect referrers whose subject is not in their repository.
    pub orphan_referrers: bool,
}

/// A manifest with no tag and no parent index, untouched since before the cutoff.
#[derive(Debug, Clone)]
pub struct ManifestCandidate {
    pub id: i64,
    pub touched_at: i64,
}

/// Candidates after `after` in (touched_at, id) order, at most `limit`.
pub fn manifest_candidates(
    conn: &Connection,
    cutoff: i64,
    after: (i64, i64),
    limit: usize,
) -> Result<Vec<ManifestCandidate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, touched_at FROM manifests
          WHERE tag_count = 0 AND parent_count = 0 AND touched_at <= ?1 AND (touched_at, id) > (?2, ?3)
          ORDER BY touched_at, id LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![cutoff, after.0, after.1, limit as i64], |r| {
        Ok(ManifestCandidate { id: r.get(0)?, touched_at: r.get(1)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A manifest removed by collection.
#[derive(Debug, Clone)]
pub struct RemovedManifest {
    pub repository: String,
    pub digest: String,
    pub bytes: u64,
    pub tags: u64,
    /// Why it was garbage, for the report and the log.
    pub reason: &'static str,
}

/// The reasons a manifest is garbage.
pub const UNTAGGED: &str = "untagged, and no index of its repository lists it";
pub const ORPHAN_REFERRER: &str = "a referrer whose subject is not in its repository";

/// How one collection decides about manifests.
pub struct ManifestJudge<'a> {
    /// Anything touched after this (ms) is within its grace period.
    pub cutoff: i64,
    pub rules: ManifestRules,
    /// For a repository: untagged manifests touched at or before this are garbage; `None`
    /// keeps them (retention policies decide per repository).
    /// (given the run's cutoff).
    pub untagged_cutoff: &'a (dyn Fn(&str, i64) -> Option<i64> + Send + Sync),
    /// Tags deleted after this (ms) can still be restored: their manifests stay.
    pub restore_since: i64,
}

/// Deletes the manifest if it is still garbage: no tag, no parent, untouched since the
/// cutoff, no tag deletion inside its restore window, and either it has no subject and its
/// repository collects untagged manifests, or its subject is not in the repository and
/// orphaned referrers are collected. A referrer whose subject is present lives as long as
/// the subject does. The children of a removed index restart their grace.
pub fn remove_manifest_if_garbage(
    conn: &Connection,
    id: i64,
    judge: &ManifestJudge<'_>,
) -> Result<Option<RemovedManifest>> {
    let row: Option<(RepoId, String, String, Option<String>, i64)> = conn
        .prepare_cached(
            "SELECT m.repository_id, r.name, m.digest, m.subject, m.touched_at FROM manifests m
               JOIN repositories r ON r.id = m.repository_id
              WHERE m.id = ?1 AND m.tag_count = 0 AND m.parent_count = 0 AND m.touched_at <= ?2",
        )?
        .query_row(params![id, judge.cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let Some((repo, repository, digest, subject, touched_at)) = row else { return Ok(None) };
    if super::retention::in_restore_window(conn, id, judge.restore_since)? {
        return Ok(None);
    }
    let rules = judge.rules;
    let garbage = match subject {
        None => (judge.untagged_cutoff)(&repository, judge.cutoff).is_some_and(|c| touched_at <= c).then_some(UNTAGGED),
        Some(subject) => {
            let subject_present = conn
                .prepare_cached("SELECT 1 FROM manifests WHERE repository_id = ?1 AND digest = ?2")?
                .query_row(params![repo, subject], |_| Ok(()))
                .optional()?
                .is_some();
            (!subject_present && rules.orphan_referrers).then_some(ORPHAN_REFERRER)
        }
    };
    let Some(reason) = garbage else { return Ok(None) };
    // Its children lose their last parent here, and restart their grace: a client that read
    // one (a read refreshes only what has no parent) or the index that listed it may be
    // about to list it in an index of its own. Past this run's cutoff even within its first
    // millisecond, so that not this run but the next takes them (with no grace at all).
    // Its blobs and links need nothing: every probe refreshes them, whoever references them.
    conn.prepare_cached(
        "UPDATE manifests SET touched_at = MAX(touched_at, ?2)
          WHERE id IN (SELECT child_id FROM manifest_children WHERE parent_id = ?1)",
    )?
    .execute(params![id, super::now_ms().max(judge.cutoff.saturating_add(1))])?;
    let deleted = super::manifests::delete(conn, id, None)?;
    Ok(Some(RemovedManifest { repository, digest, bytes: deleted.bytes, tags: deleted.tags, reason }))
}

/// A repository's link to a blob that none of its manifests references.
#[derive(Debug, Clone)]
pub struct LinkCandidate {
    pub repository_id: RepoId,
    /// Read with the candidate, for the report. Should the repository go meanwhile (a
    /// blob DELETE of its last link) and a new one take its id and link the same digest,
    /// that link is younger than the cutoff, so the removal's re-check leaves it.
    pub repository: String,
    pub digest: String,
    pub linked_at: i64,
}

pub fn link_candidates(
    conn: &Connection,
    cutoff: i64,
    after: (i64, RepoId, &str),
    limit: usize,
) -> Result<Vec<LinkCandidate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT l.repository_id, r.name, l.digest, l.linked_at FROM repository_blobs l
           JOIN repositories r ON r.id = l.repository_id
          WHERE l.ref_count = 0 AND l.linked_at <= ?1 AND (l.linked_at, l.repository_id, l.digest) > (?2, ?3, ?4)
          ORDER BY l.linked_at, l.repository_id, l.digest LIMIT ?5",
    )?;
    let rows = stmt.query_map(params![cutoff, after.0, after.1, after.2, limit as i64], |r| {
        Ok(LinkCandidate { repository_id: r.get(0)?, repository: r.get(1)?, digest: r.get(2)?, linked_at: r.get(3)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A link removed by collection, and its blob if that was the blob's last link and the
/// blob is garbage too (removed from metadata in the same transaction).
#[derive(Debug, Clone)]
pub struct RemovedLink {
    pub repository: String,
    pub digest: String,
    /// The size of the blob, if it went with its last link.
    pub blob: Option<u64>,
}

/// Removes the link if still unreferenced and unused since the cutoff, then the blob if
/// nothing else keeps it ([`remove_blob_if_garbage`]): most garbage blobs lose their last
/// link in a collection, and removing both at once spares a second walk over them.
pub fn remove_link_if_garbage(conn: &Connection, link: &LinkCandidate, cutoff: i64) -> Result<Option<RemovedLink>> {
    let removed = conn
        .prepare_cached(
            "DELETE FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2 AND ref_count = 0 AND linked_at <= ?3",
        )?
        .execute(params![link.repository_id, link.digest, cutoff])?;
    if removed == 0 {
        return Ok(None);
    }
    let blob = remove_blob_if_garbage(conn, &link.digest, cutoff)?;
    Ok(Some(RemovedLink { repository: link.repository.clone(), digest: link.digest.clone(), blob }))
}

/// A blob no manifest references and no repository links.
#[derive(Debug, Clone)]
pub struct BlobCandidate {
    pub digest: String,
    pub touched_at: i64,
}

pub fn blob_candidates(conn: &Connection, cutoff: i64, after: (i64, &str), limit: usize) -> Result<Vec<BlobCandidate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT digest, touched_at FROM blobs
          WHERE ref_count = 0 AND touched_at <= ?1 AND (touched_at, digest) > (?2, ?3) AND link_count = 0
          ORDER BY touched_at, digest LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![cutoff, after.0, after.1, limit as i64], |r| {
        Ok(BlobCandidate { digest: r.get(0)?, touched_at: r.get(1)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes the blob from metadata if it is still garbage (no reference, no link, untouched
/// since the cutoff); returns its size if it did. From this commit on the blob does not
/// exist for any reader: probes answer 404 and mounts refuse it, so a client uploads it
/// again instead of linking bytes about to disappear. Its bytes go afterwards
/// (`gc::Collector::remove_blob_bytes`).
pub fn remove_blob_if_garbage(conn: &Connection, digest: &str, cutoff: i64) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM blobs
              WHERE digest = ?1 AND ref_count = 0 AND link_count = 0 AND touched_at <= ?2
          RETURNING size",
        )?
        .query_row(params![digest, cutoff], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|s| s as u64))
}

/// Which of `digests` metadata knows (an upload may have recorded one again since a
/// collection removed it).
pub fn known_blobs(conn: &Connection, digests: &[String]) -> Result<Vec<bool>> {
    digests.iter().map(|d| blob_known(conn, d)).collect()
}

/// Where a walk over stale uploads stands: `(updated_at, rowid)` of the last one seen.
pub type UploadCursor = (i64, i64);

/// Up to `limit` upload sessions not written to since `before`, after `after`, each with
/// its cursor, in the `uploads_updated` index's own order (`updated_at`, then rowid).
/// The sessions that share the cursor's timestamp are read first, by an equality seek, so
/// a page costs its size even inside a long run of equal timestamps.
pub fn stale_uploads(
    conn: &Connection,
    before: i64,
    after: UploadCursor,
    limit: usize,
) -> Result<Vec<(UploadCursor, String)>> {
    let row = |r: &rusqlite::Row<'_>| Ok(((r.get(0)?, r.get(1)?), r.get(2)?));
    let mut page: Vec<(UploadCursor, String)> = conn
        .prepare_cached(
            "SELECT updated_at, rowid, id FROM uploads
              WHERE updated_at = ?1 AND updated_at <= ?2 AND rowid > ?3
              ORDER BY rowid LIMIT ?4",
        )?
        .query_map(params![after.0, before, after.1, limit as i64], row)?
        .collect::<rusqlite::Result<_>>()?;
    if page.len() < limit {
        let rest = conn
            .prepare_cached(
                "SELECT updated_at, rowid, id FROM uploads
                  WHERE updated_at > ?1 AND updated_at <= ?2
                  ORDER BY updated_at, rowid LIMIT ?3",
            )?
            .query_map(params![after.0, before, (limit - page.len()) as i64], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        page.extend(rest);
    }
    Ok(page)
}

/// The cursor before every upload.
pub const UPLOADS_START: UploadCursor = (i64::MIN, i64::MIN);

/// Removes the session if it is still stale; true if it did.
pub fn remove_upload_if_stale(conn: &Connection, id: &str, before: i64) -> Result<bool> {
    Ok(conn.prepare_cached("DELETE FROM uploads WHERE id = ?1 AND updated_at <= ?2")?.execute(params![id, before])? > 0)
}

/// Whether metadata knows the blob.
pub fn blob_known(conn: &Connection, digest: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?.exists([digest])?)
}

/// Every blob metadata knows, for the reconcile's comparison with storage.
pub fn all_blobs(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT digest, size FROM blobs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether an upload session exists.
pub fn upload_known(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")?.query_row([id], |_| Ok(())).optional()?.is_some())
}

/// One collection or reconcile run, as recorded.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub kind: String,
    pub trigger: String,
    pub dry_run: bool,
    pub started_at: i64,
    pub finished_at: i64,
    pub manifests_removed: u64,
    pub tags_removed: u64,
    pub links_removed: u64,
    pub blobs_removed: u64,
    pub uploads_removed: u64,
    pub repositories_removed: u64,
    pub bytes_removed: u64,
    pub missing_blobs: u64,
    /// Reconcile: reference counts that disagreed with a recount (`metadata/counts.rs`),
    /// set right (a dry run: found).
    pub counts_repaired: u64,
    /// Reconcile: references to a blob or link that is gone.
    pub dangling_references: u64,
    pub error: Option<String>,
    /// The grace period the run used (ms); None in runs recorded before it was.
    pub grace_period_ms: Option<i64>,
}

/// Records a run; returns its id.
pub fn record_run(conn: &Connection, r: &RunRecord) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO gc_runs (kind, trigger, dry_run, started_at, finished_at, manifests_removed, tags_removed,
                              links_removed, blobs_removed, uploads_removed, repositories_removed, bytes_removed,
                              missing_blobs, error, counts_repaired, dangling_references, grace_period_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        r.kind,
        r.trigger,
        r.dry_run,
        r.started_at,
        r.finished_at,
        r.manifests_removed as i64,
        r.tags_removed as i64,
        r.links_removed as i64,
        r.blobs_removed as i64,
        r.uploads_removed as i64,
        r.repositories_removed as i64,
        r.bytes_removed as i64,
        r.missing_blobs as i64,
        r.error,
        r.counts_repaired as i64,
        r.dangling_references as i64,
        r.grace_period_ms,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// What `/metrics` reads from metadata at each scrape, in one snapshot. The unreferenced
/// totals cost what the garbage costs; the last successes walk the run records back to the
/// newest success of each kind (all of them, until there has been one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// When the last collection that changed storage ended without an error (ms).
    pub last_collect: Option<i64>,
    /// The same for reconcile.
    pub last_reconcile: Option<i64>,
    /// Blobs no manifest references: in their grace period, or awaiting collection.
    pub unreferenced_blobs: u64,
    pub unreferenced_bytes: u64,
    /// Those untouched since the grace period's cutoff: what collections have not freed
    /// although they may. Above zero for longer than a few collection intervals, collection
    /// is off, failing or not keeping up. (A blob whose link a client renewed within the
    /// grace period is counted here and still kept.)
    pub overdue_blobs: u64,
    pub overdue_bytes: u64,
    /// What the last successful reconcile (not a dry run, the one `last_reconcile` dates)
    /// found: blobs without bytes, counts that disagreed and were set right, references to
    /// rows that are gone. Read from its run record, so that a restart does not clear them.
    pub missing_blobs: u64,
    pub count_drift: u64,
    pub dangling_references: u64,
    /// Since when collection is paused (ms), if it is (`gc_pause.rs`).
    pub paused_at: Option<i64>,
}

/// Read from `blobs_unreferenced`, the partial index collections find candidates with, in
/// one walk; `?1` is the grace period's cutoff.
pub const UNREFERENCED_TOTALS: &str = "SELECT COUNT(*), COALESCE(SUM(size), 0),
        COUNT(*) FILTER (WHERE touched_at <= ?1), COALESCE(SUM(size) FILTER (WHERE touched_at <= ?1), 0)
   FROM blobs WHERE ref_count = 0";

/// The gauges, with `cutoff` the grace period's (ms: anything touched since is in it).
pub fn gauges(conn: &Connection, cutoff: i64) -> Result<Gauges> {
    // Newest first: the walk stops at the first success, normally the last run. (Pruning
    // keeps that row, whatever its age: `history.rs`.)
    let mut last = conn.prepare_cached(
        "SELECT finished_at, missing_blobs, counts_repaired, dangling_references FROM gc_runs
          WHERE kind = ?1 AND dry_run = 0 AND error IS NULL ORDER BY id DESC LIMIT 1",
    )?;
    let last_collect = last.query_row(["collect"], |r| r.get(0)).optional()?;
    let reconcile: Option<(i64, [i64; 3])> =
        last.query_row(["reconcile"], |r| Ok((r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?]))).optional()?;
    let [missing_blobs, count_drift, dangling_references] = reconcile.map_or([0; 3], |(_, f)| f.map(|n| n as u64));
    let totals: [i64; 4] = conn
        .prepare_cached(UNREFERENCED_TOTALS)?
        .query_row([cutoff], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?;
    let [blobs, bytes, overdue_blobs, overdue_bytes] = totals.map(|n| n as u64);
    Ok(Gauges {
        last_collect,
        last_reconcile: reconcile.map(|(at, _)| at),
        unreferenced_blobs: blobs,
        unreferenced_bytes: bytes,
        overdue_blobs,
        overdue_bytes,
        missing_blobs,
        count_drift,
        dangling_references,
        paused_at: super::gc_pause::get(conn, super::now_ms())?.map(|p| p.paused_at),
    })
}

/// The most recent runs, newest first.
pub fn list_runs(conn: &Connection, limit: usize) -> Result<Vec<RunRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, trigger, dry_run, started_at, finished_at, manifests_removed, tags_removed, links_removed,
                blobs_removed, uploads_removed, repositories_removed, bytes_removed, missing_blobs, error,
                counts_repaired, dangling_references, grace_period_ms
           FROM gc_runs ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(RunRecord {
            id: r.get(0)?,
            kind: r.get(1)?,
            trigger: r.get(2)?,
            dry_run: r.get(3)?,
            started_at: r.get(4)?,
            finished_at: r.get(5)?,
            manifests_removed: r.get::<_, i64>(6)? as u64,
            tags_removed: r.get::<_, i64>(7)? as u64,
            links_removed: r.get::<_, i64>(8)? as u64,
            blobs_removed: r.get::<_, i64>(9)? as u64,
            uploads_removed: r.get::<_, i64>(10)? as u64,
            repositories_removed: r.get::<_, i64>(11)? as u64,
            bytes_removed: r.get::<_, i64>(12)? as u64,
            missing_blobs: r.get::<_, i64>(13)? as u64,
            error: r.get(14)?,
            counts_repaired: r.get::<_, i64>(15)? as u64,
            dangling_references: r.get::<_, i64>(16)? as u64,
            grace_period_ms: r.get(17)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Metadata, MetadataError, uploads};
    use crate::oci::{RepoName, UploadId};

    #[tokio::test]
    async fn stale_upload_pages_visit_each_stale_session_once() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        let mut stale = meta
            .write(|c| {
                let name: RepoName = "r".parse().unwrap();
                let mut stale = Vec::new();
                for i in 0..2500i64 {
                    let id = UploadId::random();
                    // Hundreds of sessions share each timestamp: a page boundary falls
                    // inside a run of ties, which the cursor must neither skip nor repeat.
                    let at = i % 7 * 100;
                    uploads::create(c, &id, &name, at)?;
                    if at <= 300 {
                        stale.push(id.as_str().to_owned());
                    }
                }
                Ok::<_, MetadataError>(stale)
            })
            .await
            .unwrap();
        let mut seen = meta
            .read(|c| {
                let mut seen = Vec::new();
                let mut after = UPLOADS_START;
                loop {
                    let page = stale_uploads(c, 300, after, 1000)?;
                    let Some((last, _)) = page.last() else { return Ok(seen) };
                    after = *last;
                    seen.extend(page.into_iter().map(|(_, id)| id));
                }
            })
            .await
            .unwrap();
        stale.sort();
        seen.sort();
        assert!(stale.len() > 1000, "the walk needs more than one page");
        assert_eq!(seen, stale);
    }

    /// A scrape of `/metrics` counts the unreferenced blobs through the partial index, so
    /// that it costs what the garbage costs, not a walk of every blob.
    #[test]
    fn unreferenced_totals_read_the_partial_index() {
        let (_dir, conn) = crate::metadata::fresh_database();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {UNREFERENCED_TOTALS}"))
            .unwrap()
            .query_map([0], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("INDEX blobs_unreferenced")), "{plan:?}");
    }
}
