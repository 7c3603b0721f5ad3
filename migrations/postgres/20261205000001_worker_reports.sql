-- A worker's report that it finished an operation (workers.md completed_operations), received by
-- a replica that does not follow that operation: kept until the replica that does takes it.
-- One per operation (a worker's operations are ours to check before anything is kept).
CREATE TABLE worker_reports (
    operation_id TEXT PRIMARY KEY NOT NULL,
    report       TEXT NOT NULL,   -- JSON, as the worker sent it (bounded by the request limits)
    received_at  BIGINT NOT NULL  -- unix microseconds
);
