-- Schema version 4 -> 5: a tag deletion keeps the tag's push and pull times, so that a
-- restored tag is as old as it was. Restored with the time of the restore, an old tag
-- ranked as the newest under `newest = N` and counted as just pushed under
-- `pushed_within`. Deletions recorded before keep NULL: their times are unknown.
ALTER TABLE tag_deletions ADD COLUMN pushed_at INTEGER;
ALTER TABLE tag_deletions ADD COLUMN pulled_at INTEGER;
