-- Schema version 8 -> 9: when each scheduled retention policy last ran, or was first seen,
-- is kept in metadata (`policy/retention.rs`): in memory, a restart skipped a run whose
-- time came while Bosun was down, and a policy added through the API ran at once. And
-- only the latest deletion of a tag stays restorable.
CREATE TABLE retention_schedule (
    policy      TEXT PRIMARY KEY,
    last_run_at INTEGER NOT NULL
) WITHOUT ROWID;
-- Only a tag's latest deletion can be undone (recording one now closes the earlier ones):
-- close those that an upgraded database still holds open.
UPDATE tag_deletions SET restorable = 0
 WHERE restorable = 1
   AND id NOT IN (SELECT MAX(id) FROM tag_deletions GROUP BY repository, tag);
