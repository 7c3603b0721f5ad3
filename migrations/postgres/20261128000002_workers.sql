-- The training workers that registered themselves (workers.md): kept in the database, so the
-- fleet survives restarts and every replica sees the same one.
CREATE TABLE workers (
    worker_id             TEXT PRIMARY KEY NOT NULL,
    worker_type           TEXT NOT NULL,
    endpoint_url          TEXT NOT NULL,
    status                TEXT NOT NULL,       -- available | busy | temporarily_unavailable
    current_operation_id  TEXT,
    dispatched_operation_id TEXT,              -- the training we sent it: busy until we free it
    capabilities          TEXT NOT NULL,       -- JSON object
    metadata              TEXT NOT NULL,       -- JSON object
    registered_at         BIGINT NOT NULL,     -- unix microseconds; the listing order
    last_health_check     BIGINT,
    last_healthy_at       BIGINT NOT NULL,
    health_check_failures BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_registration ON workers (registered_at);

-- Work only one replica should do at a time (e.g. the workers' health checks): held until
-- `expires_at`, renewed by its holder.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
