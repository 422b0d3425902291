-- Schema version 5 -> 6: quota groups, counted by triggers, so that a quota check reads a
-- few rows instead of summing every blob its repositories link (0.5 s a push over 100,000
-- blobs, one of its two sums holding the writer). The server fills them from its policies
-- when it opens the data directory, and creates the counting triggers only while a quota
-- exists (`metadata/quota.rs`), so that a registry without quotas pays nothing per link.
CREATE TABLE quota_groups (
    id    INTEGER PRIMARY KEY,
    key   TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL DEFAULT 0
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
