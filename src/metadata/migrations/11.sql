-- Schema version 10 -> 11: what databases made by earlier commits of a version missed.
-- Some migrations were changed after databases had been made with them, which never ran
-- the new text: 6.sql lost quota_groups' CHECK (bytes >= 0), 7.sql gained
-- gc_runs.dangling_references, 8.sql gained gc_runs.grace_period_ms and gc_pause.until,
-- and 9.sql gained the closing of superseded tag deletions below. The three tables are made
-- again as schema.sql defines them, with their rows, and a manifest stored before a
-- non-distributable layer that its repository holds counted as a reference gets that
-- reference: both in code (`metadata/upgrade.rs`), after every step of an upgrade from
-- a version before 11.
--
-- Only a tag's latest deletion can be undone: close the earlier ones still open.
UPDATE tag_deletions SET restorable = 0
 WHERE restorable = 1
   AND id NOT IN (SELECT MAX(id) FROM tag_deletions GROUP BY repository, tag);
