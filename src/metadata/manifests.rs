//! Manifests, their bytes, and their references to blobs, children and subjects.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use super::repositories::RepoId;
use crate::oci::{Digest, ParsedManifest, Tag};

pub type ManifestId = i64;

/// A stored manifest, as served.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    pub id: ManifestId,
    pub digest: String,
    pub media_type: String,
    pub subject: Option<String>,
    pub payload: Vec<u8>,
    /// When a client last pushed or probed it, or it lost its last tag or parent.
    pub touched_at: i64,
    /// No tag and no parent index: collection may take it once untouched for a grace period.
    pub collectable: bool,
}

/// A manifest as the referrers API lists it.
#[derive(Debug, Clone)]
pub struct ReferrerRow {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

const SELECT_ROW: &str = "SELECT m.id, m.digest, m.media_type, m.subject, m.payload, m.touched_at,
                                 m.tag_count = 0 AND m.parent_count = 0 FROM manifests m";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManifestRow> {
    Ok(ManifestRow {
        id: r.get(0)?,
        digest: r.get(1)?,
        media_type: r.get(2)?,
        subject: r.get(3)?,
        payload: r.get(4)?,
        touched_at: r.get(5)?,
        collectable: r.get(6)?,
    })
}

/// Marks a manifest a client just read as used, restarting its grace period: the client
/// may be about to list it in an index. False if it is gone.
pub fn probe(conn: &Connection, repo: RepoId, digest: &Digest, now: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE manifests SET touched_at = MAX(touched_at, ?3) WHERE repository_id = ?1 AND digest = ?2",
        )?
        .execute(params![repo, digest.to_string(), now])?
        > 0)
}

pub fn by_digest(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<Option<ManifestRow>> {
    Ok(conn
        .prepare_cached(&format!("{SELECT_ROW} WHERE m.repository_id = ?1 AND m.digest = ?2"))?
        .query_row(params![repo, digest.to_string()], row)
        .optional()?)
}

pub fn by_tag(conn: &Connection, repo: RepoId, tag: &Tag) -> Result<Option<ManifestRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "{SELECT_ROW} JOIN tags t ON t.manifest_id = m.id WHERE t.repository_id = ?1 AND t.name = ?2"
        ))?
        .query_row(params![repo, tag.as_str()], row)
        .optional()?)
}

/// The id and byte length of a manifest of `repo`, if it exists: what an index listing it
/// must agree with.
pub fn id_and_size(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<Option<(ManifestId, u64)>> {
    Ok(conn
        .prepare_cached("SELECT id, length(payload) FROM manifests WHERE repository_id = ?1 AND digest = ?2")?
        .query_row(params![repo, digest.to_string()], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .optional()?)
}

/// The id of a manifest of `repo`, if it exists.
pub fn id_of(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<Option<ManifestId>> {
    Ok(conn
        .prepare_cached("SELECT id FROM manifests WHERE repository_id = ?1 AND digest = ?2")?
        .query_row(params![repo, digest.to_string()], |r| r.get(0))
        .optional()?)
}

/// Stores a manifest with all its references, unless the repository already has it (then
/// a push of the same bytes marks it as used, as a probe does). `children` are the ids of
/// the index's child manifests, already checked to exist.
pub fn insert(
    conn: &Connection,
    repo: RepoId,
    digest: &Digest,
    parsed: &ParsedManifest,
    children: &[ManifestId],
    payload: &[u8],
    now: i64,
) -> Result<ManifestId> {
    if let Some(id) = id_of(conn, repo, digest)? {
        touch(conn, id, now)?;
        return Ok(id);
    }
    let annotations =
        parsed.annotations.as_ref().map(|a| serde_json::to_string(a).expect("a string map always serializes"));
    conn.prepare_cached(
        "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, payload, created_at, touched_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
    )?
    .execute(params![
        repo,
        digest.to_string(),
        parsed.media_type,
        parsed.artifact_type,
        parsed.subject.as_ref().map(|s| s.digest.to_string()),
        annotations,
        payload,
        now
    ])?;
    let id = conn.last_insert_rowid();
    let blobs: BTreeSet<String> = parsed.blobs.iter().map(|d| d.digest.to_string()).collect();
    let mut add_blob =
        conn.prepare_cached("INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES (?1, ?2, ?3)")?;
    for blob in &blobs {
        add_blob.execute(params![id, repo, blob])?;
    }
    let mut add_child = conn
        .prepare_cached("INSERT INTO manifest_children (parent_id, child_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
    for child in children {
        add_child.execute(params![id, child])?;
    }
    Ok(id)
}

/// An index of the same repository that lists manifest `id` as a child, if any.
pub fn parent_of(conn: &Connection, id: ManifestId) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT p.digest FROM manifest_children c JOIN manifests p ON p.id = c.parent_id
              WHERE c.child_id = ?1 LIMIT 1",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// Restarts the grace period of a manifest that just lost a reference (a tag, a parent
/// index, its subject), or was pushed again.
pub fn touch(conn: &Connection, id: ManifestId, now: i64) -> Result<()> {
    conn.prepare_cached("UPDATE manifests SET touched_at = MAX(touched_at, ?2) WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}

/// What a manifest delete removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deleted {
    pub tags: u64,
    pub bytes: u64,
}

/// Deletes a manifest with the tags that point at it and its references; reference counts
/// drop by trigger in the same transaction. With `touch_at`, everything that loses a
/// reference here (its blobs and their links, its children, its referrers) restarts its
/// grace period: a user's delete gives clients that still use that content time to say
/// so. Garbage collection passes `None`: what it deletes had been unreferenced for a
/// whole grace period already, and what that frees may go in the same collection, except
/// the children of an index, whose grace it restarts itself (`gc::remove_manifest_if_garbage`).
pub fn delete(conn: &Connection, id: ManifestId, touch_at: Option<i64>) -> Result<Deleted> {
    if let Some(now) = touch_at {
        conn.prepare_cached(
            "UPDATE blobs SET touched_at = MAX(touched_at, ?2)
              WHERE digest IN (SELECT digest FROM manifest_blobs WHERE manifest_id = ?1)",
        )?
        .execute(params![id, now])?;
        // Not `(repository_id, digest) IN (...)`: some SQLite versions (Debian's 3.40) seek
        // that on the repository alone and walk all of its links.
        conn.prepare_cached(
            "UPDATE repository_blobs SET linked_at = MAX(linked_at, ?2)
              WHERE repository_id = (SELECT repository_id FROM manifests WHERE id = ?1)
                AND digest IN (SELECT digest FROM manifest_blobs WHERE manifest_id = ?1)",
        )?
        .execute(params![id, now])?;
        conn.prepare_cached(
            "UPDATE manifests SET touched_at = MAX(touched_at, ?2)
              WHERE id IN (SELECT child_id FROM manifest_children WHERE parent_id = ?1)
                 OR (subject, repository_id) = (SELECT digest, repository_id FROM manifests WHERE id = ?1)",
        )?
        .execute(params![id, now])?;
    }
    let bytes: i64 =
        conn.prepare_cached("SELECT length(payload) FROM manifests WHERE id = ?1")?.query_row([id], |r| r.get(0))?;
    let tags = conn.prepare_cached("DELETE FROM tags WHERE manifest_id = ?1")?.execute([id])?;
    conn.prepare_cached("DELETE FROM manifest_blobs WHERE manifest_id = ?1")?.execute([id])?;
    conn.prepare_cached("DELETE FROM manifest_children WHERE parent_id = ?1")?.execute([id])?;
    conn.prepare_cached("DELETE FROM manifests WHERE id = ?1")?.execute([id])?;
    Ok(Deleted { tags: tags as u64, bytes: bytes as u64 })
}

/// A page of referrers, and whether more follow it.
pub struct ReferrerPage {
    pub rows: Vec<ReferrerRow>,
    pub more: bool,
}

/// What a referrer's descriptor adds to an answer besides its annotations, artifact and
/// media types: the digest, size and JSON punctuation.
const DESCRIPTOR_BYTES: usize = 160;

/// The manifests of `repo` whose subject is `subject`, optionally only those of one
/// artifact type, ordered by digest, after the digest `after` if given: at most `limit`,
/// and no more than about `max_bytes` of descriptors (always at least one), for
/// annotations can make each one as large as a manifest.
pub fn referrers(
    conn: &Connection,
    repo: RepoId,
    subject: &Digest,
    artifact_type: Option<&str>,
    (after, limit, max_bytes): (Option<&str>, usize, usize),
) -> Result<ReferrerPage> {
    let mut stmt = conn.prepare_cached(
        "SELECT digest, media_type, length(payload), artifact_type, annotations FROM manifests
          WHERE repository_id = ?1 AND subject = ?2 AND (?3 IS NULL OR artifact_type = ?3)
            AND (?4 IS NULL OR digest > ?4)
          ORDER BY digest LIMIT ?5",
    )?;
    let mut found = stmt.query(params![repo, subject.to_string(), artifact_type, after, limit as i64 + 1])?;
    let (mut rows, mut bytes) = (Vec::new(), 0);
    while let Some(r) = found.next()? {
        let row = ReferrerRow {
            digest: r.get(0)?,
            media_type: r.get(1)?,
            size: r.get::<_, i64>(2)? as u64,
            artifact_type: r.get(3)?,
            annotations: r.get(4)?,
        };
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        bytes += DESCRIPTOR_BYTES + row.media_type.len() + len(&row.artifact_type) + len(&row.annotations);
        if rows.len() == limit || (!rows.is_empty() && bytes > max_bytes) {
            return Ok(ReferrerPage { rows, more: true });
        }
        rows.push(row);
    }
    Ok(ReferrerPage { rows, more: false })
}
