//! The pause of garbage collection, kept in metadata (table `gc_pause`, one row at most)
//! so that it outlives the process: a crash or a restart does not resume removals that an
//! operator stopped, and a stopped instance can be paused before it starts.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::Result;

/// Who paused collection, when, why, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// Milliseconds since the Unix epoch.
    pub paused_at: i64,
    /// The admin API's client address, or `cli` for a stopped instance's data directory.
    pub paused_by: String,
    pub reason: String,
    /// When the pause ends by itself (ms), for a maintenance window that must not outlive
    /// its operator's memory; None: at a resume only.
    pub until: Option<i64>,
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "since {} UTC, by {}", crate::time::utc(self.paused_at), self.paused_by)?;
        if let Some(until) = self.until {
            write!(f, ", until {} UTC", crate::time::utc(until))?;
        }
        if !self.reason.is_empty() {
            // A client wrote the reason: its control characters, line separators and
            // direction overrides are shown escaped, so that it cannot start a forged line
            // in a log, drive the operator's terminal or reorder what it shows.
            f.write_str(": ")?;
            for c in self.reason.chars() {
                let hidden = matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
                if c.is_control() || hidden { write!(f, "{}", c.escape_default())? } else { write!(f, "{c}")? }
            }
        }
        Ok(())
    }
}

/// The pause in force at `now` (ms), if any.
pub fn get(conn: &Connection, now: i64) -> Result<Option<Pause>> {
    Ok(conn
        .prepare_cached("SELECT paused_at, paused_by, reason, until FROM gc_pause WHERE id = 1")?
        .query_row([], row)
        .optional()?
        .filter(|p| in_force(p, now)))
}

fn in_force(pause: &Pause, now: i64) -> bool {
    pause.until.is_none_or(|until| until > now)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pause> {
    Ok(Pause { paused_at: r.get(0)?, paused_by: r.get(1)?, reason: r.get(2)?, until: r.get(3)? })
}

/// Pauses, unless already paused: the first pause stays, with its time, author, reason
/// and end (one that has ended is replaced). Returns the pause in force: none if the one
/// asked for ends at once (the boundaries refuse a pause of zero length).
pub fn set(conn: &Connection, pause: &Pause) -> Result<Option<Pause>> {
    conn.prepare_cached(
        "INSERT INTO gc_pause (id, paused_at, paused_by, reason, until) VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET paused_at = excluded.paused_at, paused_by = excluded.paused_by,
                                            reason = excluded.reason, until = excluded.until
              WHERE gc_pause.until IS NOT NULL AND gc_pause.until <= ?1",
    )?
    .execute(params![pause.paused_at, pause.paused_by, pause.reason, pause.until])?;
    get(conn, pause.paused_at)
}

/// Ends the pause; returns the one ended, if one was in force at `now`.
pub fn clear(conn: &Connection, now: i64) -> Result<Option<Pause>> {
    Ok(conn
        .prepare_cached("DELETE FROM gc_pause WHERE id = 1 RETURNING paused_at, paused_by, reason, until")?
        .query_row([], row)
        .optional()?
        .filter(|p| in_force(p, now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pause_stays_until_cleared_or_over() {
        let (_dir, conn) = crate::metadata::fresh_database();
        let day = 86_400_000;
        assert_eq!(get(&conn, day).unwrap(), None);
        let first = Pause { paused_at: day, paused_by: "127.0.0.1".into(), reason: "migration".into(), until: None };
        assert_eq!(set(&conn, &first).unwrap(), Some(first.clone()));
        let second = Pause { paused_at: 2 * day, paused_by: "cli".into(), reason: String::new(), until: None };
        assert_eq!(set(&conn, &second).unwrap(), Some(first.clone()), "a second pause replaced the first");
        assert_eq!(first.to_string(), "since 1970-01-02 00:00:00 UTC, by 127.0.0.1: migration");
        // A reason cannot forge a line of the log it is written to, nor color it.
        let forged = Pause {
            reason: "x\n2026-12-06T13:40:00Z ERROR forged \u{1b}[31mred\u{2028}\u{202e}é".into(),
            ..first.clone()
        };
        assert_eq!(
            forged.to_string(),
            "since 1970-01-02 00:00:00 UTC, by 127.0.0.1: x\\n2026-12-06T13:40:00Z ERROR forged \\u{1b}[31mred\\u{2028}\\u{202e}é"
        );
        assert_eq!(clear(&conn, 2 * day).unwrap(), Some(first.clone()));
        assert_eq!(get(&conn, 2 * day).unwrap(), None);
        assert_eq!(clear(&conn, 2 * day).unwrap(), None);
        // One with an end: in force before it, over at it, and then replaced by a new one.
        let window = Pause { until: Some(3 * day), ..second.clone() };
        assert_eq!(
            set(&conn, &window).unwrap().unwrap().to_string(),
            "since 1970-01-03 00:00:00 UTC, by cli, until 1970-01-04 00:00:00 UTC"
        );
        assert_eq!(get(&conn, 3 * day - 1).unwrap(), Some(window.clone()));
        assert_eq!(get(&conn, 3 * day).unwrap(), None);
        let later = Pause { paused_at: 4 * day, until: None, ..first.clone() };
        assert_eq!(set(&conn, &later).unwrap(), Some(later.clone()), "an ended pause stayed in the way");
        assert_eq!(clear(&conn, 4 * day).unwrap(), Some(later));
        set(&conn, &window).unwrap();
        assert_eq!(clear(&conn, 5 * day).unwrap(), None, "an ended pause was reported as ended by the resume");
        // A pause that ends as it begins (the boundaries refuse one) pauses nothing.
        let instant = Pause { paused_at: 6 * day, until: Some(6 * day), ..first.clone() };
        assert_eq!(set(&conn, &instant).unwrap(), None);
        assert_eq!(get(&conn, 6 * day).unwrap(), None);
    }
}
