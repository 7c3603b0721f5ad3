-- Replicas read each other's recent writes (the cluster-wide change feed) by this column.
CREATE INDEX operations_by_update ON operations (updated_at);

-- The replicas alive, each renewing its row with its leases: a replica that stops hands its
-- operations over only when another is there to take them, and a second process started under a
-- name a live one uses (its `instance` differs) is refused.
CREATE TABLE replicas (
    node_id       TEXT PRIMARY KEY,
    instance      TEXT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
