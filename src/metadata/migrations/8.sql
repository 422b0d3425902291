-- Schema version 7 -> 8: a pause of garbage collection is kept in metadata, so that it
-- survives a restart or a crash and can be set on a stopped instance (`metadata/gc_pause.rs`);
-- each run records the grace period it used, which a caller may shorten for one run.
CREATE TABLE gc_pause (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    paused_at INTEGER NOT NULL,
    paused_by TEXT NOT NULL,
    reason    TEXT NOT NULL,
    until     INTEGER           -- the pause ends by itself then; NULL: at a resume only
);
ALTER TABLE gc_runs ADD COLUMN grace_period_ms INTEGER;
