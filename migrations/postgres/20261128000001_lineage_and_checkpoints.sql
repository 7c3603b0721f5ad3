-- Lineage: the operation a resume continues or a retry repeats (`parent_operation_id`, also in
-- the record), and — for a resume — the one it continues in a column of its own, unique, so that
-- an operation is resumed at most once even when two resumes race.
ALTER TABLE operations ADD COLUMN parent_operation_id TEXT;
ALTER TABLE operations ADD COLUMN resumes TEXT;
CREATE INDEX operations_by_parent ON operations (parent_operation_id, created_at);
CREATE UNIQUE INDEX operations_one_resume ON operations (resumes);

-- What an operation saved that a resume continues from: one per operation, a save replaces it.
CREATE TABLE checkpoints (
    operation_id         TEXT PRIMARY KEY NOT NULL,
    operation_type       TEXT NOT NULL,
    checkpoint_type      TEXT NOT NULL,          -- periodic | cancellation | failure | shutdown
    created_at           BIGINT NOT NULL,        -- unix microseconds of the last save
    state                TEXT NOT NULL,          -- JSON, shaped by the operation type
    artifacts_path       TEXT,
    artifacts_size_bytes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX checkpoints_by_created ON checkpoints (created_at);
