-- Schema version 3 -> 4: a manifest's blob references are checked by triggers, from the
-- reference counts, instead of by foreign keys to repository_blobs and blobs. A foreign
-- key made every link and blob a collection deleted probe this table's digest index (a
-- randomly placed page) for references; the count in the row being deleted answers the
-- same question. SQLite cannot drop a foreign key in place, so manifest_blobs is rebuilt;
-- the runner switches foreign keys off around the upgrade and checks every reference
-- before it commits (`metadata::upgrade`).

-- These name manifest_blobs, which does not exist between the drop and the rename.
DROP TRIGGER manifest_blobs_count_up;
DROP TRIGGER manifest_blobs_count_down;

CREATE TABLE manifest_blobs_v4 (
    manifest_id   INTEGER NOT NULL REFERENCES manifests (id),
    repository_id INTEGER NOT NULL,
    digest        TEXT NOT NULL,
    PRIMARY KEY (manifest_id, digest)
) WITHOUT ROWID;
INSERT INTO manifest_blobs_v4 (manifest_id, repository_id, digest)
    SELECT manifest_id, repository_id, digest FROM manifest_blobs;
DROP TABLE manifest_blobs;
ALTER TABLE manifest_blobs_v4 RENAME TO manifest_blobs;
CREATE INDEX manifest_blobs_digest ON manifest_blobs (digest);

CREATE TRIGGER manifest_blobs_linked BEFORE INSERT ON manifest_blobs BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: a reference to a blob its repository does not link')
     WHERE NOT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = NEW.repository_id AND digest = NEW.digest);
END;
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
