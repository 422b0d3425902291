//! Upgrading an older metadata database to the current schema: the SQL steps of
//! `migrations/`, the few that need code, and the checks before the upgrade commits.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{MIGRATIONS, MetadataError, Result, SCHEMA, SCHEMA_VERSION, quota};
use crate::oci::ParsedManifest;

/// Takes a database from version `from` to [`SCHEMA_VERSION`], all steps in one
/// transaction: a failed upgrade leaves the old version intact.
pub(super) fn upgrade(writer: &mut Connection, from: i64) -> Result<()> {
    // A step may rebuild a table that others reference, which SQLite allows only with
    // foreign keys off, and they cannot be switched inside a transaction. Every foreign
    // key is checked before the commit instead.
    writer.pragma_update(None, "foreign_keys", "OFF")?;
    // Rebuilding a table sorts every row of its indexes: on disk, not in memory, as
    // temporary files would be anywhere else (set back to memory below).
    writer.pragma_update(None, "temp_store", "DEFAULT")?;
    // A step may rewrite a table and the check reads every reference: on a database of
    // millions of rows the server is minutes from listening, and the log says why.
    let started = std::time::Instant::now();
    tracing::info!(from, to = SCHEMA_VERSION, "upgrading the metadata schema; the server starts when it is done");
    let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A step must not count quota groups that the next start rebuilds anyway.
    quota::stop_counting(&tx)?;
    for (step, version) in MIGRATIONS[from as usize - 1..].iter().zip(from + 1..) {
        tx.execute_batch(step)?;
        tracing::info!(version, elapsed_ms = started.elapsed().as_millis() as u64, "metadata schema step done");
    }
    let defined = defined()?;
    // What version 11 repairs in a database made before it (`migrations/11.sql`). After
    // every SQL step, not inside step 11: the tables are made as the current schema
    // defines them, which a later step may have changed.
    if from < 11 {
        for table in ["gc_runs", "gc_pause", "quota_groups"] {
            remake_as_defined(&tx, &defined, table)?;
        }
        let added = reference_held_foreign_layers(&tx)?;
        tracing::info!(added, "non-distributable layers their repositories hold are referenced");
    }
    let missing = missing_columns(&tx, &defined)?;
    if !missing.is_empty() {
        return Err(MetadataError::Corrupt(format!(
            "upgrading the schema from version {from} left columns missing ({}): an upgrade step was changed after \
             this database was made; nothing was changed",
            missing.join(", ")
        )));
    }
    // The link -> blob and reference -> link references are kept by triggers, not
    // foreign keys, so they are checked here too. The operator is shown the count and the
    // first few, to find the damage.
    const BROKEN: &str = "SELECT \"table\" || ' row ' || IFNULL(rowid, '(no rowid)') || ' -> ' || parent
                            FROM pragma_foreign_key_check
                          UNION ALL
                          SELECT 'repository_blobs (repository ' || l.repository_id || ', ' || l.digest || ') -> blobs'
                            FROM repository_blobs l WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = l.digest)
                          UNION ALL
                          SELECT 'manifest_blobs (manifest ' || r.manifest_id || ', ' || r.digest || ') -> repository_blobs'
                            FROM manifest_blobs r WHERE NOT EXISTS
                                 (SELECT 1 FROM repository_blobs l WHERE l.repository_id = r.repository_id AND l.digest = r.digest)";
    let count: i64 = tx.query_row(&format!("SELECT COUNT(*) FROM ({BROKEN})"), [], |r| r.get(0))?;
    if count > 0 {
        let first: Vec<String> =
            tx.prepare(&format!("{BROKEN} LIMIT 5"))?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        return Err(MetadataError::Corrupt(format!(
            "upgrading the schema from version {from} found {count} broken reference(s) ({}{}); nothing was changed",
            first.join("; "),
            if count > 5 { "; ..." } else { "" }
        )));
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    writer.pragma_update(None, "foreign_keys", "ON")?;
    writer.pragma_update(None, "temp_store", "MEMORY")?;
    tracing::info!(
        from,
        to = SCHEMA_VERSION,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "metadata schema upgraded; every reference checked"
    );
    Ok(())
}

/// The current schema, made in memory: what a table must look like.
fn defined() -> Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Makes `table` again exactly as the current schema (`defined`) defines it (its CHECKs,
/// its columns in their order), with its rows: the columns both have are copied, a column
/// it lacked gets its default. Its indexes and triggers are made again too. For small
/// tables only: every row is copied. Foreign keys must be off (the upgrade turns them off),
/// and no trigger of another table may name it (the rename would fail on that trigger: the
/// quota counting triggers are dropped before the steps).
fn remake_as_defined(tx: &Connection, defined: &Connection, table: &str) -> Result<()> {
    let definitions = |kind: &str| -> Result<Vec<String>> {
        let mut stmt = defined.prepare(
            "SELECT sql FROM sqlite_schema WHERE tbl_name = ?1 AND type = ?2 AND sql IS NOT NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([table, kind], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let create = definitions("table")?.pop().ok_or_else(|| MetadataError::Corrupt(format!("no table {table}")))?;
    let columns = |conn: &Connection| -> Result<Vec<String>> {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
        let rows = stmt.query_map([table], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let had = columns(tx)?;
    let kept: Vec<String> =
        columns(defined)?.into_iter().filter(|c| had.contains(c)).map(|c| format!("\"{c}\"")).collect();
    let kept = kept.join(", ");
    let new = format!("{table}_remade");
    let create_new = create.replacen(&format!("CREATE TABLE {table} "), &format!("CREATE TABLE {new} "), 1);
    if create_new == create {
        return Err(MetadataError::Corrupt(format!("the schema does not write \"CREATE TABLE {table} (\"")));
    }
    tx.execute_batch(&format!(
        "{create_new};
         INSERT INTO {new} ({kept}) SELECT {kept} FROM {table};
         DROP TABLE {table};
         ALTER TABLE {new} RENAME TO {table};"
    ))?;
    for sql in definitions("index")?.into_iter().chain(definitions("trigger")?) {
        tx.execute_batch(&sql)?;
    }
    Ok(())
}

/// Adds the reference from a manifest to each non-distributable layer its repository holds,
/// which `registry/manifests.rs` makes at a push since 09b9db4: a manifest stored before
/// lacked it, so a collection removed such a layer and broke the image's pulls.
/// Returns how many it added.
fn reference_held_foreign_layers(tx: &Connection) -> Result<usize> {
    let mut candidates = tx.prepare(
        "SELECT id, repository_id, media_type, payload FROM manifests
          WHERE CAST(payload AS TEXT) LIKE '%nondistributable%' OR CAST(payload AS TEXT) LIKE '%foreign%'",
    )?;
    let rows: Vec<(i64, i64, String, Vec<u8>)> = candidates
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut added = 0;
    for (id, repo, media_type, payload) in rows {
        // A manifest stored under rules since tightened is left as it is.
        let Ok(parsed) = ParsedManifest::parse(&payload, Some(&media_type)) else { continue };
        for layer in &parsed.foreign {
            added += tx.execute(
                "INSERT INTO manifest_blobs (manifest_id, repository_id, digest)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = ?2 AND digest = ?3)
                 ON CONFLICT DO NOTHING",
                rusqlite::params![id, repo, layer.digest.to_string()],
            )?;
        }
    }
    Ok(added)
}

/// The columns the current schema (`defined`) has that the database lacks, as
/// `table.column`.
fn missing_columns(tx: &Connection, defined: &Connection) -> Result<Vec<String>> {
    let mut stmt = defined.prepare(
        "SELECT t.name, c.name FROM sqlite_schema t, pragma_table_info(t.name) c WHERE t.type = 'table' ORDER BY 1, 2",
    )?;
    let wanted: Vec<(String, String)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    let mut missing = Vec::new();
    for (table, column) in wanted {
        let there = tx
            .query_row("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", [&table, &column], |_| Ok(()))
            .optional()?
            .is_some();
        if !there {
            missing.push(format!("{table}.{column}"));
        }
    }
    Ok(missing)
}
