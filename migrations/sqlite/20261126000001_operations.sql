-- Operations: one row per operation. `record` is the full API record (JSON text); the columns
-- beside it are what queries filter and sort on, and what several replicas coordinate through.
CREATE TABLE operations (
    operation_id        TEXT PRIMARY KEY NOT NULL,
    operation_type      TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_at          BIGINT NOT NULL,   -- unix microseconds
    updated_at          BIGINT NOT NULL,
    version             BIGINT NOT NULL,
    record              TEXT NOT NULL,
    job_state           TEXT,              -- the job's resume state (JSON), for re-attach and takeover
    owner_node          TEXT,              -- the replica running it
    heartbeat_at        BIGINT,            -- the owner's last sign of life
    lease_expires_at    BIGINT,            -- after this, another replica may take it over
    cancel_requested_at BIGINT,            -- a durable cancel intent, seen by the owner
    cancel_reason       TEXT
);

CREATE INDEX operations_by_created ON operations (created_at DESC, operation_id DESC);
CREATE INDEX operations_by_status ON operations (status, created_at DESC);
CREATE INDEX operations_by_type ON operations (operation_type, created_at DESC);

-- Idempotency-Key → the operation the first request with that key started.
CREATE TABLE idempotency_keys (
    scope           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    operation_id    TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (scope, idempotency_key)
);
