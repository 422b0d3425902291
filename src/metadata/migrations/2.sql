-- Schema version 1 -> 2: blobs lose their "being deleted" state. A collection now deletes a
-- garbage blob's row before it removes the bytes, so there is nothing between live and
-- gone. Rows a version-1 collection left marked (state = 1) are deleted: metadata already
-- treated them as gone, and their bytes, if any remain, are what reconcile removes.
DELETE FROM blobs WHERE state = 1;
DROP INDEX blobs_deleting;
ALTER TABLE blobs DROP COLUMN state;
