//! Checking the reference counts that the triggers of `schema.sql` keep, and the quota
//! groups' counts, against a recount from the references themselves; and repairing them.
//!
//! Collection trusts those counts: a blob whose `ref_count` says 0 is garbage, and the
//! triggers that refuse to delete a referenced row read the same count. They are kept in
//! the same transaction as every write, so they can only go wrong through a bug or a hand
//! edit of the database; but if one did, a count too low would let a collection remove
//! what a manifest references, and one too high would keep garbage for ever. Reconcile
//! therefore recounts them all (a walk of every reference, as reconcile's walk of storage
//! is), reports each disagreement loudly, and sets the count to the recount. A count set
//! to zero so starts its grace period then, as any count that drops to zero does: what it
//! made collectable stays a grace period, for the operator to read the log first.
//!
//! A count that was too low may already have let a collection remove a referenced row:
//! references left pointing at nothing ([`dangling`]) are reported too. No count can set
//! those right; the image they belong to needs pushing again.

use rusqlite::Connection;

use super::Result;

/// One count that disagreed with its recount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Which count, `table.column`.
    pub count: &'static str,
    /// Which row, for the log: a digest, `repository digest` or `repository@digest`.
    pub row: String,
    pub stored: i64,
    pub actual: i64,
}

/// A count kept by triggers: `name` (`table.column`), for the rows keyed by `key`, is the
/// `n` that `recount` gives for the same key (0 where it gives no row).
struct Count {
    name: &'static str,
    key: &'static [&'static str],
    recount: &'static str,
    /// The row, as the log shows it (`t` is the counted table).
    label: &'static str,
    /// The row's timestamp that starts its grace period when a count drops to zero.
    grace: &'static str,
}

const COUNTS: &[Count] = &[
    Count {
        name: "blobs.ref_count",
        key: &["digest"],
        recount: "SELECT digest, COUNT(*) AS n FROM manifest_blobs GROUP BY digest",
        label: "t.digest",
        grace: "touched_at",
    },
    Count {
        name: "blobs.link_count",
        key: &["digest"],
        recount: "SELECT digest, COUNT(*) AS n FROM repository_blobs GROUP BY digest",
        label: "t.digest",
        grace: "touched_at",
    },
    Count {
        name: "repository_blobs.ref_count",
        key: &["repository_id", "digest"],
        recount: "SELECT repository_id, digest, COUNT(*) AS n FROM manifest_blobs GROUP BY repository_id, digest",
        label: "(SELECT name FROM repositories WHERE id = t.repository_id) || ' ' || t.digest",
        grace: "linked_at",
    },
    Count {
        name: "manifests.tag_count",
        key: &["id"],
        recount: "SELECT manifest_id AS id, COUNT(*) AS n FROM tags GROUP BY manifest_id",
        label: "(SELECT name FROM repositories WHERE id = t.repository_id) || '@' || t.digest",
        grace: "touched_at",
    },
    Count {
        name: "manifests.parent_count",
        key: &["id"],
        recount: "SELECT child_id AS id, COUNT(*) AS n FROM manifest_children GROUP BY child_id",
        label: "(SELECT name FROM repositories WHERE id = t.repository_id) || '@' || t.digest",
        grace: "touched_at",
    },
];

impl Count {
    fn table_and_column(&self) -> (&'static str, &'static str) {
        self.name.split_once('.').expect("a count is named table.column")
    }

    /// The rows whose count disagrees: their key columns (as `k0`, `k1`), label, count and
    /// recount.
    fn disagreeing(&self) -> String {
        let (table, column) = self.table_and_column();
        let keys: Vec<String> = self.key.iter().enumerate().map(|(i, k)| format!("t.{k} AS k{i}")).collect();
        let join: Vec<String> = self.key.iter().map(|k| format!("x.{k} = t.{k}")).collect();
        format!(
            "SELECT {keys}, {label} AS label, t.{column} AS stored, COALESCE(x.n, 0) AS actual
               FROM {table} t LEFT JOIN ({recount}) x ON {join}
              WHERE t.{column} <> COALESCE(x.n, 0)",
            keys = keys.join(", "),
            label = self.label,
            recount = self.recount,
            join = join.join(" AND "),
        )
    }
}

/// Every count that disagrees with its recount, the quota groups' included.
pub fn drift(conn: &Connection) -> Result<Vec<Drift>> {
    let mut found = Vec::new();
    for count in COUNTS {
        found.extend(disagreeing(
            conn,
            count.name,
            &format!("SELECT label, stored, actual FROM ({})", count.disagreeing()),
        )?);
    }
    found.extend(quota_drift(conn)?);
    Ok(found)
}

/// The rows `sql` gives as (row label, stored count, recount), as drifts of `count`.
fn disagreeing(conn: &Connection, count: &'static str, sql: &str) -> Result<Vec<Drift>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok(Drift {
            count,
            row: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            stored: r.get(1)?,
            actual: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Sets every count that disagrees to its recount, in the caller's transaction; returns
/// how many it set. Recounted here, under the writer, not taken from an earlier
/// [`drift`]: a write committed in between has changed both. A count set to zero starts
/// its row's grace period at `now`.
pub fn repair(conn: &Connection, now: i64) -> Result<usize> {
    let mut repaired = 0;
    for count in COUNTS {
        let (table, column) = count.table_and_column();
        let matches: Vec<String> = count.key.iter().enumerate().map(|(i, k)| format!("{table}.{k} = d.k{i}")).collect();
        repaired += conn.execute(
            &format!(
                "UPDATE {table} SET {column} = d.actual,
                        {grace} = CASE WHEN d.actual = 0 THEN MAX({grace}, ?1) ELSE {grace} END
                   FROM ({disagreeing}) d WHERE {matches}",
                grace = count.grace,
                disagreeing = count.disagreeing(),
                matches = matches.join(" AND "),
            ),
            [now],
        )?;
    }
    let quota = quota_drift(conn)?.len();
    if quota > 0 {
        super::quota::recount(conn)?;
        repaired += quota;
    }
    Ok(repaired)
}

/// A reference to a row that is gone: damage that no count can set right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dangling {
    /// What points at what.
    pub reference: &'static str,
    /// Who points (a manifest `repository@digest`, or a repository), and at what.
    pub from: String,
    pub to: String,
}

/// Each kind of reference whose target can go missing, as `SELECT from, to`. Tags and index
/// children are held by foreign keys; these three are held by the counts alone.
const DANGLING: &[(&str, &str)] = &[
    (
        "manifest -> blob",
        "SELECT r.name || '@' || m.digest, mb.digest FROM manifest_blobs mb
           JOIN manifests m ON m.id = mb.manifest_id JOIN repositories r ON r.id = m.repository_id
          WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = mb.digest)",
    ),
    (
        "manifest -> repository link",
        "SELECT r.name || '@' || m.digest, mb.digest FROM manifest_blobs mb
           JOIN manifests m ON m.id = mb.manifest_id JOIN repositories r ON r.id = m.repository_id
          WHERE NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.repository_id = mb.repository_id AND l.digest = mb.digest)",
    ),
    (
        "repository link -> blob",
        "SELECT r.name, l.digest FROM repository_blobs l JOIN repositories r ON r.id = l.repository_id
          WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = l.digest)",
    ),
];

/// Every reference whose target row is gone.
pub fn dangling(conn: &Connection) -> Result<Vec<Dangling>> {
    let mut found = Vec::new();
    for (reference, sql) in DANGLING {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok(Dangling { reference, from: r.get(0)?, to: r.get(1)? }))?;
        found.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
    }
    Ok(found)
}

/// The quota groups whose bytes, and the (group, blob) link counts that, disagree with a
/// recount from the member repositories' links.
fn quota_drift(conn: &Connection) -> Result<Vec<Drift>> {
    let mut found = disagreeing(
        conn,
        "quota_blobs.links",
        &format!(
            "WITH actual AS ({recount}),
                  stored AS (SELECT group_id, digest, links FROM quota_blobs)
             SELECT g.key || ' ' || s.digest, s.links, COALESCE(a.links, 0) FROM stored s
               JOIN quota_groups g ON g.id = s.group_id
               LEFT JOIN actual a ON a.group_id = s.group_id AND a.digest = s.digest
              WHERE a.links IS NOT s.links
             UNION ALL
             SELECT g.key || ' ' || a.digest, 0, a.links FROM actual a
               JOIN quota_groups g ON g.id = a.group_id
              WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.group_id = a.group_id AND s.digest = a.digest)",
            recount = super::quota::RECOUNT_LINKS,
        ),
    )?;
    found.extend(disagreeing(
        conn,
        "quota_groups.bytes",
        &format!(
            "SELECT key, bytes, actual FROM (SELECT g.key, g.bytes, ({recount}) AS actual FROM quota_groups g)
              WHERE bytes <> actual",
            recount = super::quota::RECOUNT_BYTES,
        ),
    )?);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::fresh_database;

    /// A database with two repositories, an index and its child, tags and links; its counts
    /// as the triggers keep them.
    /// The rows of `sql`: a key and a count each.
    fn pairs<K: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<(K, i64)> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    fn populated() -> (tempfile::TempDir, Connection) {
        let (dir, conn) = fresh_database();
        conn.execute_batch(
            "INSERT INTO repositories (id, name, created_at) VALUES (1, 'a', 0), (2, 'b', 0);
             INSERT INTO blobs (digest, size, created_at, touched_at) VALUES
                 ('sha256:shared', 10, 0, 0), ('sha256:only-a', 20, 0, 0), ('sha256:unlinked', 30, 0, 0);
             INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES
                 (1, 'sha256:shared', 0), (2, 'sha256:shared', 0), (1, 'sha256:only-a', 0);
             INSERT INTO manifests (id, repository_id, digest, media_type, payload, created_at, touched_at) VALUES
                 (1, 1, 'sha256:child', 'application/vnd.oci.image.manifest.v1+json', x'7b7d', 0, 0),
                 (2, 1, 'sha256:index', 'application/vnd.oci.image.index.v1+json', x'7b7d', 0, 0);
             INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES
                 (1, 1, 'sha256:shared'), (1, 1, 'sha256:only-a');
             INSERT INTO manifest_children (parent_id, child_id) VALUES (2, 1);
             INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES (1, 'v1', 2, 0), (1, 'v2', 2, 0);",
        )
        .unwrap();
        (dir, conn)
    }

    #[test]
    fn counts_kept_by_the_triggers_agree_with_the_recount() {
        let (_dir, conn) = populated();
        assert_eq!(drift(&conn).unwrap(), Vec::new());
        assert_eq!(repair(&conn, 1000).unwrap(), 0);
        // Every kind of change the triggers count, each followed by the recount: a tag
        // moved to another manifest, then a tag, a child, a reference and a link removed.
        conn.execute("UPDATE tags SET manifest_id = 1 WHERE name = 'v1'", []).unwrap();
        assert_eq!(pairs::<i64>(&conn, "SELECT id, tag_count FROM manifests ORDER BY id"), [(1, 1), (2, 1)]);
        assert_eq!(drift(&conn).unwrap(), Vec::new());
        conn.execute_batch(
            "DELETE FROM tags WHERE name = 'v2';
             DELETE FROM manifest_children;
             DELETE FROM manifest_blobs WHERE digest = 'sha256:only-a';
             DELETE FROM repository_blobs WHERE repository_id = 2;",
        )
        .unwrap();
        assert_eq!(drift(&conn).unwrap(), Vec::new());
    }

    /// Every count, made wrong by hand in both directions, is found with the row it is on,
    /// and set back; the rows that were right are left alone.
    #[test]
    fn a_wrong_count_is_found_and_set_to_the_recount() {
        let (_dir, conn) = populated();
        conn.execute_batch(
            "UPDATE blobs SET ref_count = 0 WHERE digest = 'sha256:shared';
             UPDATE blobs SET link_count = 5 WHERE digest = 'sha256:unlinked';
             UPDATE repository_blobs SET ref_count = 3 WHERE repository_id = 2;
             UPDATE manifests SET tag_count = 1 WHERE id = 2;
             UPDATE manifests SET parent_count = 0 WHERE id = 1;",
        )
        .unwrap();
        let found = drift(&conn).unwrap();
        let want = [
            ("blobs.ref_count", "sha256:shared", 0, 1),
            ("blobs.link_count", "sha256:unlinked", 5, 0),
            ("repository_blobs.ref_count", "b sha256:shared", 3, 0),
            ("manifests.tag_count", "a@sha256:index", 1, 2),
            ("manifests.parent_count", "a@sha256:child", 0, 1),
        ]
        .map(|(count, row, stored, actual)| Drift { count, row: row.into(), stored, actual });
        assert_eq!(found, want);
        assert_eq!(repair(&conn, 1000).unwrap(), 5);
        assert_eq!(drift(&conn).unwrap(), Vec::new());
        // A count set to zero starts its grace period at the repair; others keep theirs.
        let grace = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(grace("SELECT touched_at FROM blobs WHERE digest = 'sha256:unlinked'"), 1000);
        assert_eq!(grace("SELECT linked_at FROM repository_blobs WHERE repository_id = 2"), 1000);
        assert_eq!(grace("SELECT touched_at FROM blobs WHERE digest = 'sha256:shared'"), 0);
        assert_eq!(grace("SELECT touched_at FROM manifests WHERE id = 2"), 0);
        let counts: (i64, i64, i64) = conn
            .query_row("SELECT ref_count, link_count, (SELECT tag_count FROM manifests WHERE id = 2) FROM blobs WHERE digest = 'sha256:shared'", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(counts, (1, 2, 2));
    }

    /// A link's count is set right on that link alone, not on its repository's other links.
    #[test]
    fn a_links_count_is_repaired_on_that_link_alone() {
        let (_dir, conn) = populated();
        conn.execute(
            "UPDATE repository_blobs SET ref_count = 3 WHERE repository_id = 1 AND digest = 'sha256:only-a'",
            [],
        )
        .unwrap();
        assert_eq!(repair(&conn, 1000).unwrap(), 1);
        let links = pairs::<String>(
            &conn,
            "SELECT digest, ref_count FROM repository_blobs WHERE repository_id = 1 ORDER BY digest",
        );
        assert_eq!(links, [("sha256:only-a".to_owned(), 1), ("sha256:shared".to_owned(), 1)]);
    }

    /// A manifest's repository lost its link to a blob that another repository still
    /// links: the reference is reported, though the blob is there.
    #[test]
    fn a_reference_whose_own_repository_lost_the_link_is_reported() {
        let (_dir, conn) = populated();
        conn.execute_batch(
            "UPDATE repository_blobs SET ref_count = 0 WHERE repository_id = 1 AND digest = 'sha256:shared';
             DELETE FROM repository_blobs WHERE repository_id = 1 AND digest = 'sha256:shared';",
        )
        .unwrap();
        let want = Dangling {
            reference: "manifest -> repository link",
            from: "a@sha256:child".into(),
            to: "sha256:shared".into(),
        };
        assert_eq!(dangling(&conn).unwrap(), [want]);
    }

    /// A blob and its link removed behind the counts (as a collection trusting a count too
    /// low would have): the manifest's references to both are reported.
    #[test]
    fn references_to_rows_that_are_gone_are_reported() {
        let (_dir, conn) = populated();
        assert_eq!(dangling(&conn).unwrap(), Vec::new());
        conn.execute_batch(
            "UPDATE repository_blobs SET ref_count = 0 WHERE digest = 'sha256:only-a';
             DELETE FROM repository_blobs WHERE digest = 'sha256:only-a';
             UPDATE blobs SET ref_count = 0 WHERE digest = 'sha256:only-a';
             DELETE FROM blobs WHERE digest = 'sha256:only-a';",
        )
        .unwrap();
        let found = dangling(&conn).unwrap();
        let want = [("manifest -> blob", "a@sha256:child"), ("manifest -> repository link", "a@sha256:child")]
            .map(|(reference, from)| Dangling { reference, from: from.into(), to: "sha256:only-a".into() });
        assert_eq!(found, want);
        // A link left without its blob is the third kind.
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             UPDATE blobs SET link_count = 0, ref_count = 0 WHERE digest = 'sha256:shared';
             DELETE FROM blobs WHERE digest = 'sha256:shared';",
        )
        .unwrap();
        let links: Vec<_> =
            dangling(&conn).unwrap().into_iter().filter(|d| d.reference == "repository link -> blob").collect();
        assert_eq!(links.len(), 2, "{links:?}");
    }

    /// A quota group's bytes and its per-blob link counts, wrong, missing or extra, are
    /// found and recounted.
    #[test]
    fn wrong_quota_counts_are_found_and_recounted() {
        let (_dir, conn) = populated();
        super::super::quota::rebuild(&conn, true, &[("total".into(), vec![1, 2])]).unwrap();
        assert_eq!(drift(&conn).unwrap(), Vec::new());
        conn.execute_batch(
            "UPDATE quota_groups SET bytes = 5;
             UPDATE quota_blobs SET links = 7 WHERE digest = 'sha256:shared';
             DELETE FROM quota_blobs WHERE digest = 'sha256:only-a';
             INSERT INTO quota_blobs (group_id, digest, links) SELECT id, 'sha256:unlinked', 1 FROM quota_groups;",
        )
        .unwrap();
        let mut found: Vec<(&str, String, i64, i64)> =
            drift(&conn).unwrap().into_iter().map(|d| (d.count, d.row, d.stored, d.actual)).collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("quota_blobs.links", "total sha256:only-a".into(), 0, 1),
                ("quota_blobs.links", "total sha256:shared".into(), 7, 2),
                ("quota_blobs.links", "total sha256:unlinked".into(), 1, 0),
                ("quota_groups.bytes", "total".into(), 5, 30),
            ]
        );
        assert_eq!(repair(&conn, 1000).unwrap(), 4);
        assert_eq!(drift(&conn).unwrap(), Vec::new());
    }
}
