//! Pruning of the records that would otherwise grow forever: the record of every
//! collection and reconcile run (`gc.history_retention`), and the audit of tag deletions
//! (`audit_retention`, never shorter than restores and retention plans read it).
//!
//! Rows are looked at oldest first by id, a page at a time, and those among each page older
//! than the cutoff go: ids follow insertion, so old rows are a prefix, and a page with
//! none in it ends the pruning after one short read instead of a scan of the table
//! (neither has an index on its time). A row stamped out of order by a clock that stepped
//! back stays until it is old itself; only a whole page of such rows holds back the rows
//! after it.

use rusqlite::{Connection, params};

use super::Result;

/// Removes run records finished before `before` among the `page` oldest, keeping the last
/// successful run of each kind whatever its age (`bosun_gc_last_success_timestamp_seconds`
/// reads it), and the newest row (ids are not AUTOINCREMENT: without it, the next run
/// would be given the id of a pruned one, which `/admin/gc/runs` has shown). Returns how
/// many went.
pub fn prune_runs(conn: &Connection, before: i64, page: usize) -> Result<usize> {
    let last_success = |kind: &str| {
        format!(
            "COALESCE((SELECT id FROM gc_runs WHERE kind = '{kind}' AND dry_run = 0 AND error IS NULL
                        ORDER BY id DESC LIMIT 1), -1)"
        )
    };
    let sql = format!(
        "DELETE FROM gc_runs WHERE id IN (SELECT id FROM gc_runs ORDER BY id LIMIT ?2) AND finished_at < ?1
            AND id NOT IN ({}, {}) AND id < (SELECT MAX(id) FROM gc_runs)",
        last_success("collect"),
        last_success("reconcile")
    );
    Ok(conn.prepare_cached(&sql)?.execute(params![before, page as i64])?)
}

/// Removes tag deletions made before `before` among the `page` oldest, but never the
/// newest (so no id is given out twice). Returns how many went.
pub fn prune_deletions(conn: &Connection, before: i64, page: usize) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM tag_deletions WHERE id IN (SELECT id FROM tag_deletions ORDER BY id LIMIT ?2)
                AND deleted_at < ?1 AND id < (SELECT MAX(id) FROM tag_deletions)",
        )?
        .execute(params![before, page as i64])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::fresh_database;

    fn run(conn: &Connection, kind: &str, finished_at: i64, dry_run: bool, error: Option<&str>) {
        conn.execute(
            "INSERT INTO gc_runs (kind, trigger, dry_run, started_at, finished_at, manifests_removed, tags_removed,
                                  links_removed, blobs_removed, uploads_removed, repositories_removed, bytes_removed,
                                  missing_blobs, error)
             VALUES (?1, 'schedule', ?2, ?3, ?3, 0, 0, 0, 0, 0, 0, 0, 0, ?4)",
            params![kind, dry_run, finished_at, error],
        )
        .unwrap();
    }

    fn ids(conn: &Connection, table: &str) -> Vec<i64> {
        let mut stmt = conn.prepare(&format!("SELECT id FROM {table} ORDER BY id")).unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn old_runs_go_but_the_last_success_of_each_kind_stays() {
        let (_dir, conn) = fresh_database();
        run(&conn, "reconcile", 10, false, None); // 1: the last successful reconcile
        run(&conn, "collect", 20, false, None); // 2
        run(&conn, "collect", 30, false, None); // 3: the last successful collection
        run(&conn, "collect", 40, false, Some("disk full")); // 4
        run(&conn, "reconcile", 50, true, None); // 5: a dry run
        run(&conn, "collect", 1_000, false, Some("disk full")); // 6: recent
        assert_eq!(prune_runs(&conn, 100, 100).unwrap(), 3);
        assert_eq!(ids(&conn, "gc_runs"), [1, 3, 6]);
        assert_eq!(prune_runs(&conn, 100, 100).unwrap(), 0);
    }

    #[test]
    fn runs_are_pruned_a_page_at_a_time_from_the_oldest() {
        let (_dir, conn) = fresh_database();
        for t in 0..5 {
            run(&conn, "collect", t, true, None);
        }
        run(&conn, "collect", 1_000, true, None);
        run(&conn, "collect", 6, true, None); // stamped after a clock stepped back
        assert_eq!(prune_runs(&conn, 100, 2).unwrap(), 2);
        assert_eq!(ids(&conn, "gc_runs"), [3, 4, 5, 6, 7]);
        assert_eq!(prune_runs(&conn, 100, 2).unwrap(), 2);
        assert_eq!(prune_runs(&conn, 100, 2).unwrap(), 1);
        // [6, 7]: 6 is recent, and 7, though old, is the newest row, whose id would be
        // given to the next run if it went.
        assert_eq!(prune_runs(&conn, 100, 2).unwrap(), 0);
        run(&conn, "collect", 2_000, true, None);
        run(&conn, "collect", 8, true, None);
        assert_eq!(prune_runs(&conn, 100, 2).unwrap(), 1);
        // [6, 8]: a page of recent rows ends the pruning; the old row behind it waits.
        assert_eq!(prune_runs(&conn, 100, 2).unwrap(), 0);
        assert_eq!(ids(&conn, "gc_runs"), [6, 8, 9]);
    }

    #[test]
    fn tag_deletions_older_than_the_cutoff_go() {
        let (_dir, conn) = fresh_database();
        for at in [10, 20, 500, 30] {
            conn.execute(
                "INSERT INTO tag_deletions (repository, tag, digest, manifest_id, deleted_at, actor, reason, restorable)
                 VALUES ('r', 't', 'sha256:00', 1, ?1, 'api', 'test', 1)",
                [at],
            )
            .unwrap();
        }
        // The last one is old too, but the newest row stays.
        assert_eq!(prune_deletions(&conn, 100, 1000).unwrap(), 2);
        assert_eq!(ids(&conn, "tag_deletions"), [3, 4]);
    }
}
