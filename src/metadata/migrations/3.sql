-- Schema version 2 -> 3: a blob counts the repositories that link it (blobs.link_count,
-- kept by triggers), and the index on repository_blobs (digest) is gone. That index was
-- only there for the "is the blob linked anywhere?" question and for the foreign key
-- link -> blob, and writing it cost each link a collection removed one more randomly
-- placed page. SQLite cannot drop a foreign key in place, so repository_blobs is rebuilt;
-- the runner switches foreign keys off around the upgrade and checks them all before it
-- commits (`metadata::upgrade`).
ALTER TABLE blobs ADD COLUMN link_count INTEGER NOT NULL DEFAULT 0 CHECK (link_count >= 0);
UPDATE blobs SET link_count = (SELECT COUNT(*) FROM repository_blobs l WHERE l.digest = blobs.digest);

-- These name repository_blobs, which does not exist between the drop and the rename.
DROP TRIGGER manifest_blobs_count_up;
DROP TRIGGER manifest_blobs_count_down;

CREATE TABLE repository_blobs_v3 (
    repository_id INTEGER NOT NULL REFERENCES repositories (id),
    digest        TEXT NOT NULL,
    linked_at     INTEGER NOT NULL,
    ref_count     INTEGER NOT NULL DEFAULT 0 CHECK (ref_count >= 0),
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;
INSERT INTO repository_blobs_v3 (repository_id, digest, linked_at, ref_count)
    SELECT repository_id, digest, linked_at, ref_count FROM repository_blobs;
DROP TABLE repository_blobs;
ALTER TABLE repository_blobs_v3 RENAME TO repository_blobs;
CREATE INDEX repository_blobs_unreferenced ON repository_blobs (linked_at) WHERE ref_count = 0;

CREATE TRIGGER repository_blobs_link AFTER INSERT ON repository_blobs BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: link to an unknown blob')
     WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE digest = NEW.digest);
    UPDATE blobs SET link_count = link_count + 1 WHERE digest = NEW.digest;
END;
CREATE TRIGGER repository_blobs_unlink AFTER DELETE ON repository_blobs BEGIN
    UPDATE blobs SET link_count = link_count - 1 WHERE digest = OLD.digest;
END;
CREATE TRIGGER repository_blobs_rekey BEFORE UPDATE OF repository_id, digest ON repository_blobs BEGIN
    SELECT RAISE(ABORT, 'a repository link is never re-keyed');
END;
CREATE TRIGGER blobs_linked BEFORE DELETE ON blobs WHEN OLD.link_count > 0 BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: the blob is still linked');
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
