//! Repositories: created by their first link or manifest, removed once nothing is in them.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use crate::oci::RepoName;

pub type RepoId = i64;

/// The id of `name`, creating the repository if it does not exist.
pub fn ensure(conn: &Connection, name: &RepoName, now: i64) -> Result<RepoId> {
    conn.prepare_cached("INSERT INTO repositories (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")?
        .execute(params![name.as_str(), now])?;
    Ok(conn.prepare_cached("SELECT id FROM repositories WHERE name = ?1")?.query_row([name.as_str()], |r| r.get(0))?)
}

pub fn find(conn: &Connection, name: &RepoName) -> Result<Option<RepoId>> {
    Ok(conn
        .prepare_cached("SELECT id FROM repositories WHERE name = ?1")?
        .query_row([name.as_str()], |r| r.get(0))
        .optional()?)
}

/// Up to `n` repository names after `last`, in lexical (byte) order.
pub fn list(conn: &Connection, last: Option<&str>, n: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM repositories WHERE name > ?1 ORDER BY name LIMIT ?2")?;
    let rows = stmt.query_map(params![last.unwrap_or(""), n as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes the repository `name` if nothing is in it (no manifest, no blob link, no tag);
/// true if it did. Called where something may have left it empty: a blob delete, a
/// collection (for the repositories its removals touched), a reconcile (for every one).
pub fn remove_if_empty(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM repositories
              WHERE name = ?1
                AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = repositories.id)
                AND NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.repository_id = repositories.id)
                AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = repositories.id)",
        )?
        .execute([name])?
        > 0)
}
