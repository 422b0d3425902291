-- Bosun metadata, schema version 1. The single source of truth for repositories, tags,
-- manifests, blobs and every reference between them. Storage holds bytes only.

CREATE TABLE repositories (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- Every blob whose bytes were verified and committed to storage.
-- ref_count: how many manifests (in all repositories) reference the blob; kept by the
-- triggers below, in the same transaction as the manifest write, never by hand.
-- touched_at: the last upload, mount, link or probe; garbage collection's grace period
-- starts here.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    touched_at INTEGER NOT NULL,
    ref_count  INTEGER NOT NULL DEFAULT 0 CHECK (ref_count >= 0)
);
CREATE INDEX blobs_unreferenced ON blobs (touched_at) WHERE ref_count = 0;

-- Which repository may read which blob.
CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories (id),
    digest        TEXT NOT NULL REFERENCES blobs (digest),
    linked_at     INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

-- Manifests, with their bytes exactly as pushed.
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
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;

-- Manifest -> blob references (config and layers), one row per distinct blob.
CREATE TABLE manifest_blobs (
    manifest_id INTEGER NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    digest      TEXT NOT NULL REFERENCES blobs (digest),
    PRIMARY KEY (manifest_id, digest)
);
CREATE INDEX manifest_blobs_digest ON manifest_blobs (digest);

CREATE TRIGGER manifest_blobs_count_up AFTER INSERT ON manifest_blobs BEGIN
    UPDATE blobs SET ref_count = ref_count + 1 WHERE digest = NEW.digest;
END;
CREATE TRIGGER manifest_blobs_count_down AFTER DELETE ON manifest_blobs BEGIN
    UPDATE blobs SET ref_count = ref_count - 1 WHERE digest = OLD.digest;
END;

-- Index -> child manifest references, within one repository. A child cannot be deleted
-- while an index still lists it (no cascade on child_id).
CREATE TABLE manifest_children (
    parent_id INTEGER NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    child_id  INTEGER NOT NULL REFERENCES manifests (id),
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX manifest_children_child ON manifest_children (child_id);

CREATE TABLE tags (
    repository_id INTEGER NOT NULL REFERENCES repositories (id),
    name          TEXT NOT NULL,
    manifest_id   INTEGER NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_manifest ON tags (manifest_id);

-- Upload sessions in progress. The staged bytes live in storage under the same id.
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
