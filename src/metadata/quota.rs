//! Quota groups: which repositories each quota counts, and the bytes of the distinct blobs
//! they link (tables in `schema.sql`). Triggers, created here while a quota exists, keep
//! the counts through every link and unlink, so a check reads a few rows; this module
//! fills the groups and answers the checks.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;
use super::repositories::RepoId;
use crate::oci::Digest;

/// The triggers that count links into the groups' repositories. A repository in no group
/// costs a link one probe of `quota_members`.
const COUNTING: &str = "CREATE TRIGGER quota_link AFTER INSERT ON repository_blobs
WHEN EXISTS (SELECT 1 FROM quota_members WHERE repository_id = NEW.repository_id) BEGIN
    UPDATE quota_groups SET bytes = bytes + (SELECT size FROM blobs WHERE digest = NEW.digest)
     WHERE id IN (SELECT group_id FROM quota_members WHERE repository_id = NEW.repository_id)
       AND NOT EXISTS (SELECT 1 FROM quota_blobs q WHERE q.group_id = quota_groups.id AND q.digest = NEW.digest);
    INSERT INTO quota_blobs (group_id, digest, links)
    SELECT group_id, NEW.digest, 1 FROM quota_members WHERE repository_id = NEW.repository_id
        ON CONFLICT (group_id, digest) DO UPDATE SET links = links + 1;
END;
CREATE TRIGGER quota_unlink AFTER DELETE ON repository_blobs
WHEN EXISTS (SELECT 1 FROM quota_members WHERE repository_id = OLD.repository_id) BEGIN
    UPDATE quota_groups SET bytes = bytes - (SELECT size FROM blobs WHERE digest = OLD.digest)
     WHERE id IN (SELECT q.group_id FROM quota_blobs q JOIN quota_members m ON m.group_id = q.group_id
                   WHERE m.repository_id = OLD.repository_id AND q.digest = OLD.digest AND q.links = 1);
    DELETE FROM quota_blobs WHERE digest = OLD.digest AND links = 1
       AND group_id IN (SELECT group_id FROM quota_members WHERE repository_id = OLD.repository_id);
    UPDATE quota_blobs SET links = links - 1 WHERE digest = OLD.digest
       AND group_id IN (SELECT group_id FROM quota_members WHERE repository_id = OLD.repository_id);
END;";

/// Without a quota, nothing is counted and links pay nothing.
const NOT_COUNTING: &str = "DROP TRIGGER IF EXISTS quota_link; DROP TRIGGER IF EXISTS quota_unlink;";

/// Makes the groups `groups` (key, member repositories), each counted from the links as
/// they are, and counts links from now on if `counting` (a quota is configured, whether or
/// not it matches a repository yet): done when the server opens the data directory, with
/// the policies of that run. When the groups and the triggers are already so (a restart
/// with the same policies), it writes nothing: a full disk does not stop a start. Returns
/// whether it rebuilt.
pub fn rebuild(conn: &Connection, counting: bool, groups: &[(String, Vec<RepoId>)]) -> Result<bool> {
    let mut wanted: Vec<(String, RepoId)> =
        groups.iter().flat_map(|(key, members)| members.iter().map(move |m| (key.clone(), *m))).collect();
    wanted.sort();
    wanted.dedup();
    let kept: Vec<(String, RepoId)> = conn
        .prepare(
            "SELECT g.key, m.repository_id FROM quota_members m JOIN quota_groups g ON g.id = m.group_id ORDER BY 1, 2",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let triggers: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'trigger' AND name IN ('quota_link', 'quota_unlink')",
        [],
        |r| r.get(0),
    )?;
    if kept == wanted && triggers == if counting { 2 } else { 0 } {
        return Ok(false);
    }
    stop_counting(conn)?;
    conn.execute_batch("DELETE FROM quota_blobs; DELETE FROM quota_members; DELETE FROM quota_groups;")?;
    if !counting {
        return Ok(true);
    }
    start_counting(conn)?;
    let mut group = conn.prepare("INSERT INTO quota_groups (key) VALUES (?1) ON CONFLICT (key) DO NOTHING")?;
    let mut member = conn.prepare(
        "INSERT INTO quota_members (repository_id, group_id) SELECT ?2, id FROM quota_groups WHERE key = ?1",
    )?;
    for (key, repo) in &wanted {
        group.execute([key])?;
        member.execute(params![key, repo])?;
    }
    recount(conn)?;
    Ok(true)
}

/// For each group and blob its members link: how many of them link it (`group_id`,
/// `digest`, `links`), counted from the links themselves.
pub const RECOUNT_LINKS: &str = "SELECT m.group_id, l.digest, COUNT(*) AS links FROM quota_members m
    JOIN repository_blobs l ON l.repository_id = m.repository_id
   GROUP BY m.group_id, l.digest";

/// The bytes of the distinct blobs that the members of group `g` link, counted from the
/// links themselves.
pub const RECOUNT_BYTES: &str = "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN
    (SELECT l.digest FROM quota_members m JOIN repository_blobs l ON l.repository_id = m.repository_id
      WHERE m.group_id = g.id)";

/// Counts every group again from its members' links, as the triggers would have.
pub fn recount(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "DELETE FROM quota_blobs;
         INSERT INTO quota_blobs (group_id, digest, links) {RECOUNT_LINKS};
         UPDATE quota_groups AS g SET bytes = ({RECOUNT_BYTES});"
    ))?;
    Ok(())
}

/// Counts every link and unlink from now on (makes the triggers).
pub fn start_counting(conn: &Connection) -> Result<()> {
    Ok(conn.execute_batch(COUNTING)?)
}

/// Stops counting links (drops the triggers): before a schema upgrade, whose steps must not
/// count with groups that the next start rebuilds anyway.
pub fn stop_counting(conn: &Connection) -> Result<()> {
    Ok(conn.execute_batch(NOT_COUNTING)?)
}

/// Makes `repo` a member of the group `key` (made if missing), its links counted in: before
/// a link into a repository that a quota governs, which a repository created since the
/// server opened the data directory is not yet a member of.
pub fn join(conn: &Connection, key: &str, repo: RepoId) -> Result<()> {
    conn.execute("INSERT INTO quota_groups (key) VALUES (?1) ON CONFLICT (key) DO NOTHING", [key])?;
    let id: i64 = conn.query_row("SELECT id FROM quota_groups WHERE key = ?1", [key], |r| r.get(0))?;
    let joined = conn.execute(
        "INSERT INTO quota_members (repository_id, group_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![repo, id],
    )?;
    if joined == 0 {
        return Ok(());
    }
    // Its links so far (a new repository has none), as the link trigger would have counted them.
    conn.execute(
        "UPDATE quota_groups SET bytes = bytes +
           (SELECT COALESCE(SUM(b.size), 0) FROM repository_blobs l JOIN blobs b ON b.digest = l.digest
             WHERE l.repository_id = ?2
               AND NOT EXISTS (SELECT 1 FROM quota_blobs q WHERE q.group_id = ?1 AND q.digest = l.digest))
          WHERE id = ?1",
        params![id, repo],
    )?;
    conn.execute(
        "INSERT INTO quota_blobs (group_id, digest, links)
         SELECT ?1, digest, 1 FROM repository_blobs WHERE repository_id = ?2
             ON CONFLICT (group_id, digest) DO UPDATE SET links = links + 1",
        params![id, repo],
    )?;
    Ok(())
}

/// The bytes the group `key` holds once `repo` (if it exists) is in it, or `None` if
/// `digest` is among them already (linking it adds nothing).
pub fn usage(conn: &Connection, key: &str, repo: Option<RepoId>, digest: &Digest) -> Result<Option<u64>> {
    let digest = digest.to_string();
    let group: Option<(i64, i64)> = conn
        .prepare_cached("SELECT id, bytes FROM quota_groups WHERE key = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (id, bytes) = group.unwrap_or((-1, 0));
    let counted: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM quota_blobs WHERE group_id = ?1 AND digest = ?2)")?
        .query_row(params![id, digest], |r| r.get(0))?;
    let Some(repo) = repo else { return Ok((!counted).then_some(bytes as u64)) };
    let member: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM quota_members WHERE repository_id = ?1 AND group_id = ?2)")?
        .query_row(params![repo, id], |r| r.get(0))?;
    if member {
        return Ok((!counted).then_some(bytes as u64));
    }
    // Not a member yet (created since the server started): its own links count too.
    let linked: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2)")?
        .query_row(params![repo, digest], |r| r.get(0))?;
    if counted || linked {
        return Ok(None);
    }
    let own: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(b.size), 0) FROM repository_blobs l JOIN blobs b ON b.digest = l.digest
              WHERE l.repository_id = ?1
                AND NOT EXISTS (SELECT 1 FROM quota_blobs q WHERE q.group_id = ?2 AND q.digest = l.digest)",
        )?
        .query_row(params![repo, id], |r| r.get(0))?;
    Ok(Some((bytes + own) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{blobs, fresh_database, repositories};

    /// The bytes of the distinct blobs the group's repositories link, summed from scratch.
    fn recount(c: &Connection, key: &str) -> i64 {
        c.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE digest IN
               (SELECT l.digest FROM repository_blobs l JOIN quota_members m ON m.repository_id = l.repository_id
                  JOIN quota_groups g ON g.id = m.group_id WHERE g.key = ?1)",
            [key],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn counted(c: &Connection, key: &str) -> i64 {
        c.query_row("SELECT bytes FROM quota_groups WHERE key = ?1", [key], |r| r.get(0)).unwrap()
    }

    /// Links, links again and unlinks at random across repositories in two groups, a
    /// repository joining half-way and another going: after every step each group's counted bytes
    /// are what summing its repositories' distinct blobs gives.
    #[test]
    fn group_counts_follow_every_link_and_unlink() {
        let (_dir, mut conn) = fresh_database();
        let c = conn.transaction().unwrap();
        let repo = |name: &str| repositories::ensure(&c, &name.parse().unwrap(), 0).unwrap();
        let (a, b, solo, late) = (repo("a"), repo("b"), repo("solo"), repo("late"));
        let digests: Vec<Digest> = (0..12).map(|i| Digest::sha256_of(format!("blob {i}").as_bytes())).collect();
        for (i, d) in digests.iter().enumerate() {
            blobs::insert_or_touch(&c, d, 100 + i as u64 * 7, 0).unwrap();
        }
        // `late` links before it is in any group; it joins the shared group later.
        blobs::link(&c, late, &digests[0], 0).unwrap();
        blobs::link(&c, late, &digests[11], 0).unwrap();
        rebuild(
            &c,
            true,
            &[("shared".into(), vec![a, b]), ("alone".into(), vec![solo]), ("overlap".into(), vec![a, solo])],
        )
        .unwrap();
        let mut state = 42u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        for step in 0..600 {
            if step == 300 {
                join(&c, "shared", late).unwrap();
            }
            let r = [a, b, solo, late][next(4) as usize];
            let d = &digests[next(digests.len() as u64) as usize];
            let linked: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2)",
                    params![r, d.to_string()],
                    |row| row.get(0),
                )
                .unwrap();
            if linked && next(3) > 0 {
                c.execute(
                    "DELETE FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2",
                    params![r, d.to_string()],
                )
                .unwrap();
            } else {
                // Linking again (a mount or a push of a blob the repository has) counts nothing.
                blobs::link(&c, r, d, 0).unwrap();
            }
            for key in ["shared", "alone", "overlap"] {
                assert_eq!(counted(&c, key), recount(&c, key), "group {key} after step {step}");
            }
        }
        // A repository that goes (once it links nothing) leaves its groups.
        c.execute("DELETE FROM repository_blobs WHERE repository_id = ?1", [b]).unwrap();
        assert!(repositories::remove_if_empty(&c, "b").unwrap());
        let members: i64 =
            c.query_row("SELECT COUNT(*) FROM quota_members WHERE repository_id = ?1", [b], |r| r.get(0)).unwrap();
        assert_eq!(members, 0);
        assert_eq!(counted(&c, "shared"), recount(&c, "shared"));
        // Rebuilding from the links gives the counts kept all along; the same groups again
        // are left as they are.
        let kept = (counted(&c, "shared"), counted(&c, "alone"), counted(&c, "overlap"));
        let groups =
            [("shared".into(), vec![a, late]), ("alone".into(), vec![solo]), ("overlap".into(), vec![a, solo])];
        assert!(!rebuild(&c, true, &groups).unwrap(), "nothing changed, nothing is written");
        // Without its triggers (as an upgrade leaves it), it counts again from the links.
        c.execute("UPDATE quota_groups SET bytes = -1 WHERE key = 'shared'", []).unwrap();
        stop_counting(&c).unwrap();
        assert!(rebuild(&c, true, &groups).unwrap());
        assert_eq!((counted(&c, "shared"), counted(&c, "alone"), counted(&c, "overlap")), kept);
        // Without quotas, nothing is kept and nothing counts.
        assert!(rebuild(&c, false, &[]).unwrap());
        blobs::link(&c, solo, &digests[5], 0).ok();
        let rows: i64 = c.query_row("SELECT COUNT(*) FROM quota_groups", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
    }

    /// What a check sees: the group's bytes, nothing for a blob already counted, and a
    /// repository that is no member yet counted in with its own links.
    #[test]
    fn usage_counts_a_blob_once_and_a_new_repository_in() {
        let (_dir, mut conn) = fresh_database();
        let c = conn.transaction().unwrap();
        let (a, fresh) = (
            repositories::ensure(&c, &"a".parse().unwrap(), 0).unwrap(),
            repositories::ensure(&c, &"fresh".parse().unwrap(), 0).unwrap(),
        );
        let (x, y, z) = (Digest::sha256_of(b"x"), Digest::sha256_of(b"y"), Digest::sha256_of(b"z"));
        for (d, size) in [(&x, 10), (&y, 20), (&z, 40)] {
            blobs::insert_or_touch(&c, d, size, 0).unwrap();
        }
        blobs::link(&c, a, &x, 0).unwrap();
        blobs::link(&c, fresh, &y, 0).unwrap();
        rebuild(&c, true, &[("g".into(), vec![a])]).unwrap();
        assert_eq!(usage(&c, "g", Some(a), &x).unwrap(), None);
        assert_eq!(usage(&c, "g", Some(a), &z).unwrap(), Some(10));
        // `fresh` is no member yet: its own blob counts, and linking it again adds nothing.
        assert_eq!(usage(&c, "g", Some(fresh), &z).unwrap(), Some(30));
        assert_eq!(usage(&c, "g", Some(fresh), &y).unwrap(), None);
        assert_eq!(usage(&c, "g", None, &z).unwrap(), Some(10));
        assert_eq!(usage(&c, "missing", None, &z).unwrap(), Some(0));
        join(&c, "g", fresh).unwrap();
        assert_eq!(usage(&c, "g", Some(fresh), &z).unwrap(), Some(30));
    }
}
