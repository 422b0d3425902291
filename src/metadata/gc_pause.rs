//! The pause of garbage collection, kept in metadata (table `gc_pause`, one row at most)
//! so that it outlives the process: a crash or a restart does not resume removals that an
//! operator stopped, and a stopped instance can be paused before it starts.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::Result;

/// Who paused collection, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// Milliseconds since the Unix epoch.
    pub paused_at: i64,
    /// The admin API's client address, or `cli` for a stopped instance's data directory.
    pub paused_by: String,
    pub reason: String,
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "since {} UTC, by {}", crate::time::utc(self.paused_at), self.paused_by)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

/// The pause in force, if any.
pub fn get(conn: &Connection) -> Result<Option<Pause>> {
    Ok(conn
        .prepare_cached("SELECT paused_at, paused_by, reason FROM gc_pause WHERE id = 1")?
        .query_row([], row)
        .optional()?)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pause> {
    Ok(Pause { paused_at: r.get(0)?, paused_by: r.get(1)?, reason: r.get(2)? })
}

/// Pauses, unless already paused: the first pause stays, with its time, author and
/// reason. Returns the pause in force.
pub fn set(conn: &Connection, pause: &Pause) -> Result<Pause> {
    conn.prepare_cached(
        "INSERT INTO gc_pause (id, paused_at, paused_by, reason) VALUES (1, ?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )?
    .execute(params![pause.paused_at, pause.paused_by, pause.reason])?;
    Ok(get(conn)?.expect("the pause row was just written"))
}

/// Ends the pause; returns the one ended, if there was one.
pub fn clear(conn: &Connection) -> Result<Option<Pause>> {
    Ok(conn
        .prepare_cached("DELETE FROM gc_pause WHERE id = 1 RETURNING paused_at, paused_by, reason")?
        .query_row([], row)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pause_stays_until_cleared() {
        let (_dir, conn) = crate::metadata::fresh_database();
        assert_eq!(get(&conn).unwrap(), None);
        let first = Pause { paused_at: 86_400_000, paused_by: "127.0.0.1".into(), reason: "migration".into() };
        assert_eq!(set(&conn, &first).unwrap(), first);
        let second = Pause { paused_at: 2 * 86_400_000, paused_by: "cli".into(), reason: String::new() };
        assert_eq!(set(&conn, &second).unwrap(), first, "a second pause replaced the first");
        assert_eq!(first.to_string(), "since 1970-01-02 00:00:00 UTC, by 127.0.0.1: migration");
        assert_eq!(clear(&conn).unwrap(), Some(first));
        assert_eq!(get(&conn).unwrap(), None);
        assert_eq!(clear(&conn).unwrap(), None);
        assert_eq!(set(&conn, &second).unwrap().to_string(), "since 1970-01-03 00:00:00 UTC, by cli");
    }
}
