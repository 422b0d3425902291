//! The reference graph, read in one snapshot for storage accounting.

use rusqlite::Connection;

use super::Result;

/// Everything accounting needs: manifests, their references, tags and blob sizes.
#[derive(Debug, Clone, Default)]
pub struct GraphRows {
    /// (id, repository, digest, subject)
    pub manifests: Vec<(i64, String, String, Option<String>)>,
    /// (parent id, child id)
    pub children: Vec<(i64, i64)>,
    /// (manifest id, blob digest)
    pub manifest_blobs: Vec<(i64, String)>,
    /// (repository, tag, manifest id)
    pub tags: Vec<(String, String, i64)>,
    /// (digest, size) of every live blob
    pub blobs: Vec<(String, u64)>,
}

fn all<T>(conn: &Connection, sql: &str, f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], f)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn graph(conn: &Connection) -> Result<GraphRows> {
    Ok(GraphRows {
        manifests: all(
            conn,
            "SELECT m.id, r.name, m.digest, m.subject FROM manifests m JOIN repositories r ON r.id = m.repository_id",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?,
        children: all(conn, "SELECT parent_id, child_id FROM manifest_children", |r| Ok((r.get(0)?, r.get(1)?)))?,
        manifest_blobs: all(conn, "SELECT manifest_id, digest FROM manifest_blobs", |r| Ok((r.get(0)?, r.get(1)?)))?,
        tags: all(
            conn,
            "SELECT r.name, t.name, t.manifest_id FROM tags t JOIN repositories r ON r.id = t.repository_id",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?,
        blobs: all(conn, "SELECT digest, size FROM blobs", |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?,
    })
}
