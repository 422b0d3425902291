//! Tags: names for manifests within a repository.

use rusqlite::{Connection, params};

use super::Result;
use super::manifests::ManifestId;
use super::repositories::RepoId;
use crate::oci::Tag;

/// Points `tag` at a manifest, creating or moving it. A manifest the tag moves away from
/// restarts its grace period.
pub fn set(conn: &Connection, repo: RepoId, tag: &Tag, manifest: ManifestId, now: i64) -> Result<()> {
    touch_target(conn, repo, tag, now)?;
    conn.prepare_cached(
        "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = excluded.manifest_id,
                                                         updated_at = excluded.updated_at",
    )?
    .execute(params![repo, tag.as_str(), manifest, now])?;
    Ok(())
}

/// Puts a deleted tag back (it does not exist), with the push and pull times it had.
pub fn restore(
    conn: &Connection,
    repo: RepoId,
    tag: &Tag,
    manifest: ManifestId,
    pushed_at: i64,
    pulled_at: Option<i64>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO tags (repository_id, name, manifest_id, updated_at, pulled_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![repo, tag.as_str(), manifest, pushed_at, pulled_at])?;
    Ok(())
}

fn touch_target(conn: &Connection, repo: RepoId, tag: &Tag, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE manifests SET touched_at = MAX(touched_at, ?3)
          WHERE id = (SELECT manifest_id FROM tags WHERE repository_id = ?1 AND name = ?2)",
    )?
    .execute(params![repo, tag.as_str(), now])?;
    Ok(())
}

/// Removes a tag (its manifest restarts its grace period); false if it did not exist.
pub fn delete(conn: &Connection, repo: RepoId, tag: &Tag, now: i64) -> Result<bool> {
    touch_target(conn, repo, tag, now)?;
    Ok(conn
        .prepare_cached("DELETE FROM tags WHERE repository_id = ?1 AND name = ?2")?
        .execute(params![repo, tag.as_str()])?
        > 0)
}

/// Up to `n` tag names of `repo` after `last`, in lexical (byte) order.
pub fn list(conn: &Connection, repo: RepoId, last: Option<&str>, n: usize) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT name FROM tags WHERE repository_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3")?;
    let rows = stmt.query_map(params![repo, last.unwrap_or(""), n as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The tags pointing at a manifest.
pub fn names_of(conn: &Connection, manifest: ManifestId) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM tags WHERE manifest_id = ?1 ORDER BY name")?;
    let rows = stmt.query_map([manifest], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
