//! Blobs and the repository links that make them readable.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use super::repositories::RepoId;
use crate::oci::Digest;

/// Records a verified blob, or refreshes `touched_at` of a known one.
pub fn insert_or_touch(conn: &Connection, digest: &Digest, size: u64, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (digest) DO UPDATE SET touched_at = MAX(touched_at, excluded.touched_at)",
    )?
    .execute(params![digest.to_string(), size as i64, now])?;
    Ok(())
}

/// Refreshes `touched_at`: a client that probes or mounts a blob is about to use it.
pub fn touch(conn: &Connection, digest: &Digest, now: i64) -> Result<()> {
    conn.prepare_cached("UPDATE blobs SET touched_at = MAX(touched_at, ?2) WHERE digest = ?1")?
        .execute(params![digest.to_string(), now])?;
    Ok(())
}

/// The size of a blob known anywhere in the registry.
pub fn size(conn: &Connection, digest: &Digest) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?
        .query_row([digest.to_string()], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|s| s as u64))
}

/// A blob as a repository sees it.
#[derive(Debug, Clone, Copy)]
pub struct LinkedBlob {
    pub size: u64,
    /// The older of the link's and the blob's last use: when a probe must refresh them.
    pub used_at: i64,
}

/// The blob if `repo` may read it (linked).
pub fn linked(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<Option<LinkedBlob>> {
    Ok(conn
        .prepare_cached(
            "SELECT b.size, MIN(l.linked_at, b.touched_at) FROM repository_blobs l JOIN blobs b ON b.digest = l.digest
              WHERE l.repository_id = ?1 AND l.digest = ?2",
        )?
        .query_row(params![repo, digest.to_string()], |r| {
            Ok(LinkedBlob { size: r.get::<_, i64>(0)? as u64, used_at: r.get(1)? })
        })
        .optional()?)
}

/// The size of a blob if `repo` may read it.
pub fn linked_size(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<Option<u64>> {
    Ok(linked(conn, repo, digest)?.map(|b| b.size))
}

/// Marks a linked blob as just used by `repo` (a probe before a manifest push), so that
/// garbage collection's grace period restarts for both the link and the blob. Returns the
/// size, or `None` if the blob is not (or no longer) readable in `repo`.
pub fn probe(conn: &Connection, repo: RepoId, digest: &Digest, now: i64) -> Result<Option<u64>> {
    let Some(blob) = linked(conn, repo, digest)? else { return Ok(None) };
    conn.prepare_cached(
        "UPDATE repository_blobs SET linked_at = MAX(linked_at, ?3) WHERE repository_id = ?1 AND digest = ?2",
    )?
    .execute(params![repo, digest.to_string(), now])?;
    touch(conn, digest, now)?;
    Ok(Some(blob.size))
}

pub fn link(conn: &Connection, repo: RepoId, digest: &Digest, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?1, ?2, ?3)
         ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
    )?
    .execute(params![repo, digest.to_string(), now])?;
    Ok(())
}

/// Removes `repo`'s link to a blob; false if there was none.
pub fn unlink(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2")?
        .execute(params![repo, digest.to_string()])?
        > 0)
}

/// A manifest of `repo` that references the blob, if any.
pub fn referencing_manifest(conn: &Connection, repo: RepoId, digest: &Digest) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT m.digest FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
              WHERE m.repository_id = ?1 AND mb.digest = ?2 LIMIT 1",
        )?
        .query_row(params![repo, digest.to_string()], |r| r.get(0))
        .optional()?)
}
