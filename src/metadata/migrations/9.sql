-- Schema version 8 -> 9: when each scheduled retention policy last ran, or was first seen,
-- is kept in metadata (`policy/retention.rs`): in memory, a restart skipped a run whose
-- time came while Bosun was down, and a policy added through the API ran at once.
CREATE TABLE retention_schedule (
    policy      TEXT PRIMARY KEY,
    last_run_at INTEGER NOT NULL
) WITHOUT ROWID;
