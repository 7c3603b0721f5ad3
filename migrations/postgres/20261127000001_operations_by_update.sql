-- Replicas read each other's recent writes (the cluster-wide change feed) by this column.
CREATE INDEX operations_by_update ON operations (updated_at);
