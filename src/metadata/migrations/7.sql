-- Schema version 6 -> 7: each run records how many reference counts reconcile found
-- disagreeing with a recount of their references and set right, and how many references
-- it found pointing at a row that is gone (`metadata/counts.rs`).
ALTER TABLE gc_runs ADD COLUMN counts_repaired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gc_runs ADD COLUMN dangling_references INTEGER NOT NULL DEFAULT 0;
