-- FROZEN: the complete schema of version 6 as Bosun created it at commit 0dfb3ec, before
-- its migration was changed (version 11 repairs such databases), for the upgrade tests in
-- metadata/mod.rs. Never edit.
-- Bosun metadata, schema version 6 (`migrations/` upgrades older databases). The single
-- source of truth for repositories, tags, manifests, blobs and every reference between
-- them. Storage holds bytes only.
--
-- Reference counts (blobs.ref_count, blobs.link_count, repository_blobs.ref_count,
-- manifests.tag_count, manifests.parent_count) are kept by the triggers below, in the
-- same transaction as the write that changes a reference; no code maintains them by hand. Garbage collection
-- finds its candidates through partial indexes on "count = 0", so a collection costs in
-- proportion to the garbage, not to the size of the registry.
--
-- Foreign keys never cascade: a delete must remove the references first, explicitly, so
-- that forgetting one is an error instead of a silent leak.
--
-- The tables keyed by digest or by a pair are WITHOUT ROWID (clustered on their key): a
-- row update then writes one B-tree instead of two, which is most of a collection's I/O.
--
-- Timestamps are milliseconds since the Unix epoch, set by the application (its clock).
-- `touched_at` / `linked_at` record when an object was last used or last lost a
-- reference: the grace period before collection starts there.

CREATE TABLE repositories (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- Every blob whose bytes were verified and committed to storage. Garbage collection
-- deletes the row before it removes the bytes (with `sync_writes`, durably first), so a
-- row without bytes is damage, which reconcile reports.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    touched_at INTEGER NOT NULL,
    ref_count  INTEGER NOT NULL DEFAULT 0 CHECK (ref_count >= 0),
    -- Repositories that link the blob (rows of repository_blobs).
    link_count INTEGER NOT NULL DEFAULT 0 CHECK (link_count >= 0)
) WITHOUT ROWID;
CREATE INDEX blobs_unreferenced ON blobs (touched_at) WHERE ref_count = 0;

-- Which repository may read which blob. ref_count: manifests of this repository that
-- reference the blob.
CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories (id),
    digest        TEXT NOT NULL,
    linked_at     INTEGER NOT NULL,
    ref_count     INTEGER NOT NULL DEFAULT 0 CHECK (ref_count >= 0),
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;
CREATE INDEX repository_blobs_unreferenced ON repository_blobs (linked_at) WHERE ref_count = 0;

-- The link -> blob reference is checked here rather than by a foreign key. A foreign key
-- needs an index on repository_blobs (digest) to check a blob's delete, and keeping that
-- index cost every link removed by a collection one more randomly placed page to write
-- (digests scatter its rows). blobs.link_count answers "does any repository link it?"
-- from the blob's own row, which a collection is deleting anyway.
CREATE TRIGGER repository_blobs_link AFTER INSERT ON repository_blobs BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: link to an unknown blob')
     WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE digest = NEW.digest);
    UPDATE blobs SET link_count = link_count + 1 WHERE digest = NEW.digest;
END;
CREATE TRIGGER repository_blobs_unlink AFTER DELETE ON repository_blobs BEGIN
    UPDATE blobs SET link_count = link_count - 1 WHERE digest = OLD.digest;
END;
-- Links are inserted and deleted, never re-keyed or replaced (INSERT OR REPLACE deletes
-- without firing the delete trigger): either would escape the count.
CREATE TRIGGER repository_blobs_rekey BEFORE UPDATE OF repository_id, digest ON repository_blobs BEGIN
    SELECT RAISE(ABORT, 'a repository link is never re-keyed');
END;
CREATE TRIGGER blobs_linked BEFORE DELETE ON blobs WHEN OLD.link_count > 0 BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: the blob is still linked');
END;

-- Manifests, with their bytes exactly as pushed. tag_count and parent_count (indexes of
-- this repository listing it) are kept by triggers.
CREATE TABLE manifests (
    id            INTEGER PRIMARY KEY,
    repository_id INTEGER NOT NULL REFERENCES repositories (id),
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    payload       BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    touched_at    INTEGER NOT NULL,
    tag_count     INTEGER NOT NULL DEFAULT 0 CHECK (tag_count >= 0),
    parent_count  INTEGER NOT NULL DEFAULT 0 CHECK (parent_count >= 0),
    pulled_at     INTEGER,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;
CREATE INDEX manifests_unreferenced ON manifests (touched_at) WHERE tag_count = 0 AND parent_count = 0;

-- Manifest -> blob references (config and layers), one row per distinct blob.
--
-- A reference needs its repository's link to the blob (and a link needs its blob), and a
-- referenced link or blob cannot be deleted. Triggers check both, from the counts the same
-- triggers keep, instead of foreign keys: a foreign key was checked on every link and
-- blob a collection deleted by a probe into this table's digest index, a randomly placed
-- page, where the count is in the row being deleted (schema version 4: about 1.5 ms less
-- per 1,000 blobs collected).
CREATE TABLE manifest_blobs (
    manifest_id   INTEGER NOT NULL REFERENCES manifests (id),
    repository_id INTEGER NOT NULL,
    digest        TEXT NOT NULL,
    PRIMARY KEY (manifest_id, digest)
) WITHOUT ROWID;
CREATE INDEX manifest_blobs_digest ON manifest_blobs (digest);

CREATE TRIGGER manifest_blobs_linked BEFORE INSERT ON manifest_blobs BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: a reference to a blob its repository does not link')
     WHERE NOT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = NEW.repository_id AND digest = NEW.digest);
END;
-- References are inserted and deleted, never changed: a change would escape the counts.
CREATE TRIGGER manifest_blobs_rekey BEFORE UPDATE ON manifest_blobs BEGIN
    SELECT RAISE(ABORT, 'a manifest''s blob reference is never changed');
END;
CREATE TRIGGER repository_blobs_referenced BEFORE DELETE ON repository_blobs WHEN OLD.ref_count > 0 BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: a manifest references the link');
END;
CREATE TRIGGER blobs_referenced BEFORE DELETE ON blobs WHEN OLD.ref_count > 0 BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: a manifest references the blob');
END;
CREATE TRIGGER manifest_blobs_count_up AFTER INSERT ON manifest_blobs BEGIN
    UPDATE blobs SET ref_count = ref_count + 1 WHERE digest = NEW.digest;
    UPDATE repository_blobs SET ref_count = ref_count + 1
     WHERE repository_id = NEW.repository_id AND digest = NEW.digest;
END;
CREATE TRIGGER manifest_blobs_count_down AFTER DELETE ON manifest_blobs BEGIN
    UPDATE blobs SET ref_count = ref_count - 1 WHERE digest = OLD.digest;
    UPDATE repository_blobs SET ref_count = ref_count - 1
     WHERE repository_id = OLD.repository_id AND digest = OLD.digest;
END;

-- Index -> child manifest references, within one repository.
CREATE TABLE manifest_children (
    parent_id INTEGER NOT NULL REFERENCES manifests (id),
    child_id  INTEGER NOT NULL REFERENCES manifests (id),
    PRIMARY KEY (parent_id, child_id)
) WITHOUT ROWID;
CREATE INDEX manifest_children_child ON manifest_children (child_id);

CREATE TRIGGER manifest_children_count_up AFTER INSERT ON manifest_children BEGIN
    UPDATE manifests SET parent_count = parent_count + 1 WHERE id = NEW.child_id;
END;
CREATE TRIGGER manifest_children_count_down AFTER DELETE ON manifest_children BEGIN
    UPDATE manifests SET parent_count = parent_count - 1 WHERE id = OLD.child_id;
END;

CREATE TABLE tags (
    repository_id INTEGER NOT NULL REFERENCES repositories (id),
    name          TEXT NOT NULL,
    manifest_id   INTEGER NOT NULL REFERENCES manifests (id),
    updated_at    INTEGER NOT NULL,
    pulled_at     INTEGER,
    PRIMARY KEY (repository_id, name)
) WITHOUT ROWID;
CREATE INDEX tags_manifest ON tags (manifest_id);

CREATE TRIGGER tags_count_up AFTER INSERT ON tags BEGIN
    UPDATE manifests SET tag_count = tag_count + 1 WHERE id = NEW.manifest_id;
END;
CREATE TRIGGER tags_count_down AFTER DELETE ON tags BEGIN
    UPDATE manifests SET tag_count = tag_count - 1 WHERE id = OLD.manifest_id;
END;
CREATE TRIGGER tags_count_move AFTER UPDATE OF manifest_id ON tags
WHEN OLD.manifest_id <> NEW.manifest_id BEGIN
    UPDATE manifests SET tag_count = tag_count - 1 WHERE id = OLD.manifest_id;
    UPDATE manifests SET tag_count = tag_count + 1 WHERE id = NEW.manifest_id;
END;

-- Upload sessions in progress. The staged bytes live in storage under the same id.
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX uploads_updated ON uploads (updated_at);

-- One row per garbage collection or reconcile run.
CREATE TABLE gc_runs (
    id                INTEGER PRIMARY KEY,
    kind              TEXT NOT NULL,      -- 'collect' or 'reconcile'
    trigger           TEXT NOT NULL,      -- 'schedule', 'api', 'cli'
    dry_run           INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    finished_at       INTEGER NOT NULL,
    manifests_removed INTEGER NOT NULL,
    tags_removed      INTEGER NOT NULL,
    links_removed     INTEGER NOT NULL,
    blobs_removed     INTEGER NOT NULL,
    uploads_removed   INTEGER NOT NULL,
    repositories_removed INTEGER NOT NULL,
    bytes_removed     INTEGER NOT NULL,
    missing_blobs     INTEGER NOT NULL,   -- reconcile: known to metadata, absent from storage
    error             TEXT
);

-- Every tag deletion, by hand or by a policy: the audit of who deleted what and why, and
-- the restore window (a manifest whose tag was deleted less than `restore_window` ago,
-- and not restored, is kept by garbage collection as if still tagged).
CREATE TABLE tag_deletions (
    id            INTEGER PRIMARY KEY,
    repository    TEXT NOT NULL,
    tag           TEXT NOT NULL,
    digest        TEXT NOT NULL,
    manifest_id   INTEGER NOT NULL,
    deleted_at    INTEGER NOT NULL,
    actor         TEXT NOT NULL,      -- 'api', 'retention'
    reason        TEXT NOT NULL,      -- for a policy: the policy and the rule that decided
    restorable    INTEGER NOT NULL,   -- 0 when the manifest itself was deleted
    restored_at   INTEGER,
    -- The tag's own push and pull times when it was deleted, which a restore puts back
    -- (NULL in deletions recorded before schema version 5: a restore then uses its time).
    pushed_at     INTEGER,
    pulled_at     INTEGER
);
CREATE INDEX tag_deletions_manifest ON tag_deletions (manifest_id) WHERE restored_at IS NULL AND restorable = 1;
CREATE INDEX tag_deletions_tag ON tag_deletions (repository, tag, deleted_at);

-- Retention policies managed through the admin API (those of the config file are not
-- stored here).
CREATE TABLE retention_policies (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,         -- JSON, the same shape as in the config file
    updated_at INTEGER NOT NULL
);

-- Retention plans, so that applying one deletes exactly what it showed.
CREATE TABLE retention_plans (
    id         INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    plan       TEXT NOT NULL,         -- JSON
    applied_at INTEGER
);

-- Quota groups: the repositories a `total` quota counts together, or the one repository
-- of a per-repository quota, kept by the server from its policies when it opens the
-- database (`metadata/quota.rs`); the distinct blobs each group links, with how many of
-- its repositories link each; and their bytes. Triggers count every link and unlink, so a
-- quota check reads one row instead of summing the group; they exist only while a quota
-- is configured (`metadata/quota.rs` creates and drops them when the database is opened),
-- so that a registry without quotas pays nothing per link.
CREATE TABLE quota_groups (
    id    INTEGER PRIMARY KEY,
    key   TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);
CREATE TABLE quota_members (
    repository_id INTEGER NOT NULL,
    group_id      INTEGER NOT NULL REFERENCES quota_groups (id),
    PRIMARY KEY (repository_id, group_id)
) WITHOUT ROWID;
CREATE TABLE quota_blobs (
    group_id INTEGER NOT NULL REFERENCES quota_groups (id),
    digest   TEXT NOT NULL,
    links    INTEGER NOT NULL CHECK (links > 0),
    PRIMARY KEY (group_id, digest)
) WITHOUT ROWID;
-- A repository goes only once it links nothing; its id may be given to a new one later.
CREATE TRIGGER quota_repository_gone AFTER DELETE ON repositories BEGIN
    DELETE FROM quota_members WHERE repository_id = OLD.id;
END;
