-- Schema version 7 -> 8: a pause of garbage collection is kept in metadata, so that it
-- survives a restart or a crash and can be set on a stopped instance (`metadata/gc_pause.rs`).
CREATE TABLE gc_pause (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    paused_at INTEGER NOT NULL,
    paused_by TEXT NOT NULL,
    reason    TEXT NOT NULL
);
