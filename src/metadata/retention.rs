//! Queries of retention, restore and the audit of tag deletions; pull times.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use super::manifests::ManifestId;
use super::repositories::RepoId;

/// A tag as retention sees it.
#[derive(Debug, Clone)]
pub struct TagRow {
    pub name: String,
    pub manifest_id: ManifestId,
    pub digest: String,
    pub pushed_at: i64,
    /// The later of the tag's own last pull and its manifest's.
    pub pulled_at: Option<i64>,
}

pub fn repositories(conn: &Connection) -> Result<Vec<(RepoId, String)>> {
    let mut stmt = conn.prepare_cached("SELECT id, name FROM repositories ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A tag's row, with its manifest's digest and the later of the two pulls.
const TAG_ROWS: &str = "SELECT t.name, t.manifest_id, m.digest, t.updated_at,
        CASE WHEN t.pulled_at IS NULL THEN m.pulled_at
             WHEN m.pulled_at IS NULL THEN t.pulled_at
             ELSE MAX(t.pulled_at, m.pulled_at) END
   FROM tags t JOIN manifests m ON m.id = t.manifest_id";

fn tag_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TagRow> {
    Ok(TagRow {
        name: r.get(0)?,
        manifest_id: r.get(1)?,
        digest: r.get(2)?,
        pushed_at: r.get(3)?,
        pulled_at: r.get(4)?,
    })
}

pub fn tags(conn: &Connection, repo: RepoId) -> Result<Vec<TagRow>> {
    let mut stmt = conn.prepare_cached(&format!("{TAG_ROWS} WHERE t.repository_id = ?1 ORDER BY t.name"))?;
    let rows = stmt.query_map([repo], tag_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One tag of `repo`, if it exists.
pub fn tag(conn: &Connection, repo: RepoId, name: &str) -> Result<Option<TagRow>> {
    Ok(conn
        .prepare_cached(&format!("{TAG_ROWS} WHERE t.repository_id = ?1 AND t.name = ?2"))?
        .query_row(params![repo, name], tag_row)
        .optional()?)
}

/// The tags of `repo` that point at the manifest `digest`.
pub fn tags_at(conn: &Connection, repo: RepoId, digest: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.name FROM manifests m JOIN tags t ON t.manifest_id = m.id
          WHERE m.repository_id = ?1 AND m.digest = ?2",
    )?;
    let rows = stmt.query_map(params![repo, digest], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What "untagged" means for retention: a manifest that is nobody's child, whose subject
/// (if any) is not present, and that no tag deletion after `?2` may still bring back.
const UNTAGGED: &str = "m.tag_count = 0 AND m.parent_count = 0
    AND (m.subject IS NULL OR NOT EXISTS
         (SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id AND s.digest = m.subject))
    AND NOT EXISTS (SELECT 1 FROM tag_deletions d WHERE d.manifest_id = m.id AND d.restorable = 1
                       AND d.restored_at IS NULL AND d.deleted_at > ?2)";

/// The untagged manifests of `repo` (see [`UNTAGGED`]). (digest, id, touched_at)
pub fn untagged(conn: &Connection, repo: RepoId, restore_since: i64) -> Result<Vec<(String, ManifestId, i64)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT m.digest, m.id, m.touched_at FROM manifests m WHERE m.repository_id = ?1 AND {UNTAGGED} ORDER BY m.digest"
    ))?;
    let rows = stmt.query_map(params![repo, restore_since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The manifest `digest` of `repo`, if it is there and untagged (see [`UNTAGGED`]).
/// (id, touched_at)
pub fn untagged_one(
    conn: &Connection,
    repo: RepoId,
    restore_since: i64,
    digest: &str,
) -> Result<Option<(ManifestId, i64)>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT m.id, m.touched_at FROM manifests m WHERE m.repository_id = ?1 AND {UNTAGGED} AND m.digest = ?3"
        ))?
        .query_row(params![repo, restore_since, digest], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The manifest a tag points at now, if any.
pub fn tag_target(conn: &Connection, repo: RepoId, tag: &str) -> Result<Option<(ManifestId, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT m.id, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id
              WHERE t.repository_id = ?1 AND t.name = ?2",
        )?
        .query_row(params![repo, tag], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// One tag deletion, for the audit and the restore window.
pub struct TagDeletion<'a> {
    pub repository: &'a str,
    pub tag: &'a str,
    pub digest: &'a str,
    pub manifest_id: ManifestId,
    pub at: i64,
    pub actor: &'a str,
    pub reason: &'a str,
    /// False when the manifest itself is deleted (nothing to restore the tag to).
    pub restorable: bool,
}

/// Records a tag deletion. Called while the tag still exists: its push and pull times are
/// kept, for a restore to put back. It closes the tag's earlier deletions: only the latest
/// may be undone, or a restore could bring back a version the tag had moved away from.
pub fn record_deletion(conn: &Connection, d: &TagDeletion<'_>) -> Result<()> {
    conn.prepare_cached(
        "UPDATE tag_deletions SET restorable = 0 WHERE repository = ?1 AND tag = ?2 AND restorable = 1",
    )?
    .execute(params![d.repository, d.tag])?;
    conn.prepare_cached(
        "INSERT INTO tag_deletions (repository, tag, digest, manifest_id, deleted_at, actor, reason, restorable,
                                    pushed_at, pulled_at)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, t.updated_at, t.pulled_at
           FROM (SELECT 1) LEFT JOIN repositories r ON r.name = ?1
                LEFT JOIN tags t ON t.repository_id = r.id AND t.name = ?2",
    )?
    .execute(params![d.repository, d.tag, d.digest, d.manifest_id, d.at, d.actor, d.reason, d.restorable])?;
    Ok(())
}

/// Ends the restore window of every deletion of tags that pointed at a manifest being
/// deleted itself.
pub fn close_restores(conn: &Connection, manifest: ManifestId) -> Result<()> {
    conn.prepare_cached("UPDATE tag_deletions SET restorable = 0 WHERE manifest_id = ?1")?.execute([manifest])?;
    Ok(())
}

/// A deletion that can still be undone.
pub struct Restorable {
    pub row: i64,
    pub manifest: ManifestId,
    pub digest: String,
    /// The tag's push and pull times when it was deleted (unknown for deletions recorded
    /// before schema version 5).
    pub pushed_at: Option<i64>,
    pub pulled_at: Option<i64>,
}

/// The deletion of `repo:tag` since `since` that can be undone, if any: the latest, as
/// recording a deletion closes the tag's earlier ones ([`record_deletion`]).
pub fn restorable(conn: &Connection, repo: &str, tag: &str, since: i64) -> Result<Option<Restorable>> {
    Ok(conn
        .prepare_cached(
            "SELECT d.id, d.manifest_id, d.digest, d.pushed_at, d.pulled_at
               FROM tag_deletions d JOIN manifests m ON m.id = d.manifest_id
              WHERE d.repository = ?1 AND d.tag = ?2 AND d.restorable = 1 AND d.restored_at IS NULL
                AND d.deleted_at > ?3 AND m.digest = d.digest
              ORDER BY d.deleted_at DESC LIMIT 1",
        )?
        .query_row(params![repo, tag, since], |r| {
            Ok(Restorable {
                row: r.get(0)?,
                manifest: r.get(1)?,
                digest: r.get(2)?,
                pushed_at: r.get(3)?,
                pulled_at: r.get(4)?,
            })
        })
        .optional()?)
}

pub fn mark_restored(conn: &Connection, id: i64, at: i64) -> Result<()> {
    conn.prepare_cached("UPDATE tag_deletions SET restored_at = ?2 WHERE id = ?1")?.execute(params![id, at])?;
    Ok(())
}

/// Whether `repo:tag` was restored at or after `since`.
pub fn restored_since(conn: &Connection, repo: &str, tag: &str, since: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM tag_deletions WHERE repository = ?1 AND tag = ?2 AND restored_at >= ?3")?
        .exists(params![repo, tag, since])?)
}

/// Whether retention deleted a tag of the manifest after `since` (inside the restore
/// window), not restored since: an untagged image whose signature is still there because
/// the apply that deleted its tags stopped before the signature.
pub fn untagged_by_retention(conn: &Connection, manifest: ManifestId, since: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached(&format!("{DELETED_IN_WINDOW} AND actor = 'retention'"))?
        .exists(params![manifest, since])?)
}

/// A manifest of `repo`, if it is there, and when it was pushed. (id, created_at)
pub fn pushed(conn: &Connection, repo: RepoId, digest: &str) -> Result<Option<(ManifestId, i64)>> {
    Ok(conn
        .prepare_cached("SELECT id, created_at FROM manifests WHERE repository_id = ?1 AND digest = ?2")?
        .query_row(params![repo, digest], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The tag deletions of manifest `?1` that a restore may still undo: after `?2` (inside
/// the restore window), not restored.
const DELETED_IN_WINDOW: &str =
    "SELECT 1 FROM tag_deletions WHERE manifest_id = ?1 AND restorable = 1 AND restored_at IS NULL AND deleted_at > ?2";

/// Whether a manifest is protected by a tag deletion still inside its restore window.
pub fn in_restore_window(conn: &Connection, manifest: ManifestId, since: i64) -> Result<bool> {
    Ok(conn.prepare_cached(DELETED_IN_WINDOW)?.exists(params![manifest, since])?)
}

/// Recent tag deletions, newest first (the audit). `restorable` says what a restore would
/// do now (deleted after `restore_since`, not restored, its manifest still there, as
/// [`restorable`] asks), and `restorable_until` until when, given the window's length.
pub fn deletions(conn: &Connection, limit: usize, restore_since: i64, window: i64) -> Result<Vec<serde_json::Value>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.repository, d.tag, d.digest, d.deleted_at, d.actor, d.reason,
                d.restorable = 1 AND d.restored_at IS NULL AND d.deleted_at > ?2
                  AND EXISTS (SELECT 1 FROM manifests m WHERE m.id = d.manifest_id AND m.digest = d.digest),
                d.restored_at, d.pushed_at, d.pulled_at
           FROM tag_deletions d ORDER BY d.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64, restore_since], |r| {
        let (deleted_at, restorable) = (r.get::<_, i64>(3)?, r.get::<_, bool>(6)?);
        Ok(serde_json::json!({
            "repository": r.get::<_, String>(0)?, "tag": r.get::<_, String>(1)?, "digest": r.get::<_, String>(2)?,
            "deleted_at": deleted_at, "actor": r.get::<_, String>(4)?, "reason": r.get::<_, String>(5)?,
            "restorable": restorable, "restorable_until": restorable.then(|| deleted_at.saturating_add(window)),
            "restored_at": r.get::<_, Option<i64>>(7)?,
            "pushed_at": r.get::<_, Option<i64>>(8)?, "pulled_at": r.get::<_, Option<i64>>(9)?,
        }))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A pull: the manifest with its repository and digest, the tag it was pulled by (if any),
/// and when.
pub type Pull = (ManifestId, RepoId, String, Option<String>, i64);

/// Records pulls. A pull whose manifest has gone since (its id may now be another
/// manifest's) is dropped, and a tag's pull is recorded only while the tag still points at
/// the manifest that was pulled.
pub fn record_pulls(conn: &Connection, pulls: &[Pull]) -> Result<()> {
    let mut m = conn.prepare_cached(
        "UPDATE manifests SET pulled_at = MAX(COALESCE(pulled_at, 0), ?4)
          WHERE id = ?1 AND repository_id = ?2 AND digest = ?3",
    )?;
    let mut t = conn.prepare_cached(
        "UPDATE tags SET pulled_at = MAX(COALESCE(pulled_at, 0), ?4)
          WHERE repository_id = ?1 AND name = ?2 AND manifest_id = ?3",
    )?;
    for (manifest, repo, digest, tag, at) in pulls {
        let present = m.execute(params![manifest, repo, digest, at])? == 1;
        if let (true, Some(name)) = (present, tag) {
            t.execute(params![repo, name, manifest, at])?;
        }
    }
    Ok(())
}

pub fn api_policies(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT name, spec FROM retention_policies ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn put_policy(conn: &Connection, name: &str, spec: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO retention_policies (name, spec, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
    )?
    .execute(params![name, spec, now])?;
    Ok(())
}

pub fn delete_policy(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.prepare_cached("DELETE FROM retention_policies WHERE name = ?1")?.execute([name])? > 0)
}

/// How long a saved plan is kept (ms): long enough to review and apply it, short enough
/// that daily plans of a large registry (3 MB each for 10,000 tags) do not pile up in the
/// database. What a plan deleted stays in the audit of tag deletions.
pub const PLAN_KEPT_MS: i64 = 7 * 86_400_000;

/// Saves a plan and forgets those older than [`PLAN_KEPT_MS`]; returns its id. (The newest
/// plan is never the one forgotten, so ids are never reused.)
pub fn save_plan(conn: &Connection, plan: &str, now: i64) -> Result<i64> {
    conn.prepare_cached("INSERT INTO retention_plans (created_at, plan) VALUES (?1, ?2)")?
        .execute(params![now, plan])?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached("DELETE FROM retention_plans WHERE created_at < ?1")?.execute([now - PLAN_KEPT_MS])?;
    Ok(id)
}

/// When each policy whose schedule is recorded last ran, or was first seen.
pub fn schedules(conn: &Connection) -> Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare_cached("SELECT policy, last_run_at FROM retention_schedule")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forgets the schedule of a policy that is gone: added again, it starts afresh.
pub fn forget_schedule(conn: &Connection, policy: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM retention_schedule WHERE policy = ?1")?.execute([policy])?;
    Ok(())
}

pub fn set_schedule_last_run(conn: &Connection, policy: &str, at: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO retention_schedule (policy, last_run_at) VALUES (?1, ?2)
             ON CONFLICT (policy) DO UPDATE SET last_run_at = excluded.last_run_at",
    )?
    .execute(params![policy, at])?;
    Ok(())
}

/// A saved plan no older than [`PLAN_KEPT_MS`] at `now`, and whether it was applied
/// already. An older one is as gone as those `save_plan` forgot: what it showed is a
/// week stale.
pub fn load_plan(conn: &Connection, id: i64, now: i64) -> Result<Option<(String, Option<i64>)>> {
    Ok(conn
        .prepare_cached("SELECT plan, applied_at FROM retention_plans WHERE id = ?1 AND created_at >= ?2")?
        .query_row(params![id, now - PLAN_KEPT_MS], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

pub fn mark_applied(conn: &Connection, id: i64, at: i64) -> Result<()> {
    conn.prepare_cached("UPDATE retention_plans SET applied_at = ?2 WHERE id = ?1")?.execute(params![id, at])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Metadata, MetadataError, manifests, repositories, tags};
    use crate::oci::{Digest, ParsedManifest};

    /// Pulls are written seconds after they happen. A manifest deleted in between may
    /// leave its id to the next one pushed, even with the same bytes in another
    /// repository; that one, never pulled, must stay unpulled.
    #[tokio::test]
    async fn a_pull_of_a_manifest_deleted_before_the_flush_marks_no_other_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("metadata.sqlite"), false).unwrap();
        let pulled_at = meta
            .write(|c| {
                let (r, s) = (repositories::ensure(c, &"r".parse().unwrap(), 0)?, repositories::ensure(c, &"s".parse().unwrap(), 0)?);
                let tag = "latest".parse().unwrap();
                let push = |repo: RepoId, annotation: &str| -> Result<(ManifestId, String)> {
                    let body = format!(
                        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{{"a":"{annotation}"}}}}"#
                    );
                    let parsed = ParsedManifest::parse(body.as_bytes(), None).unwrap();
                    let digest = Digest::sha256_of(body.as_bytes());
                    let id = manifests::insert(c, repo, &digest, &parsed, &[], body.as_bytes(), 0)?;
                    tags::set(c, repo, &tag, id, 0)?;
                    Ok((id, digest.to_string()))
                };
                let pulled = |repo: RepoId| -> Result<Option<i64>> { Ok(tags(c, repo)?[0].pulled_at) };
                // Other bytes, same repository.
                let (old, old_digest) = push(r, "old")?;
                manifests::delete(c, old, Some(1))?;
                let (new, new_digest) = push(r, "new")?;
                assert_eq!(new, old, "the test needs SQLite to reuse the id");
                record_pulls(c, &[(old, r, old_digest, Some("latest".into()), 5)])?;
                let other_bytes = pulled(r)?;
                record_pulls(c, &[(new, r, new_digest.clone(), Some("latest".into()), 7)])?;
                let own_pull = pulled(r)?;
                // The same bytes, another repository.
                manifests::delete(c, new, Some(1))?;
                let (moved, moved_digest) = push(s, "new")?;
                assert_eq!((moved, &moved_digest), (new, &new_digest));
                record_pulls(c, &[(new, r, new_digest, None, 9)])?;
                Ok::<_, MetadataError>((other_bytes, own_pull, pulled(s)?))
            })
            .await
            .unwrap();
        assert_eq!(pulled_at, (None, Some(7), None));
    }
}
