//! Upload sessions: which repository an upload belongs to and how many bytes it holds.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use crate::oci::{RepoName, UploadId};

#[derive(Debug, Clone)]
pub struct UploadRow {
    pub repository: String,
    pub size: u64,
}

pub fn create(conn: &Connection, id: &UploadId, repo: &RepoName, now: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO uploads (id, repository, started_at, updated_at) VALUES (?1, ?2, ?3, ?3)")?
        .execute(params![id.as_str(), repo.as_str(), now])?;
    Ok(())
}

pub fn get(conn: &Connection, id: &UploadId) -> Result<Option<UploadRow>> {
    Ok(conn
        .prepare_cached("SELECT repository, size FROM uploads WHERE id = ?1")?
        .query_row([id.as_str()], |r| Ok(UploadRow { repository: r.get(0)?, size: r.get::<_, i64>(1)? as u64 }))
        .optional()?)
}

pub fn set_size(conn: &Connection, id: &UploadId, size: u64, now: i64) -> Result<()> {
    conn.prepare_cached("UPDATE uploads SET size = ?2, updated_at = ?3 WHERE id = ?1")?.execute(params![
        id.as_str(),
        size as i64,
        now
    ])?;
    Ok(())
}

/// Ends a session; false if it did not exist.
pub fn delete(conn: &Connection, id: &UploadId) -> Result<bool> {
    Ok(conn.prepare_cached("DELETE FROM uploads WHERE id = ?1")?.execute([id.as_str()])? > 0)
}
