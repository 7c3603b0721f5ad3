//! The worker registry in the store (workers.md §1–3): registrations, health outcomes, removal of
//! workers unhealthy for too long — and named leases, so that one replica at a time does work
//! such as the health checks.

use super::*;

/// A registered worker, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWorker {
    pub worker_id: String,
    pub worker_type: String,
    pub endpoint_url: String,
    pub status: String,
    pub current_operation_id: Option<String>,
    pub capabilities: Value,
    pub metadata: Value,
    pub registered_at: Timestamp,
    pub last_health_check: Option<Timestamp>,
    pub last_healthy_at: Timestamp,
    pub health_check_failures: u32,
}

/// What a registration found.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    Stored(Box<StoredWorker>),
    /// A live worker (not `temporarily_unavailable`) holds the id at another endpoint, or the
    /// endpoint under another id: nothing was changed.
    Conflict {
        worker_id: String,
        endpoint_url: String,
    },
}

/// What a health check found.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthOutcome {
    /// 200: busy with this operation, or idle.
    Answered { busy_with: Option<String>, busy: bool },
    /// No answer, or not 200: one more failure; at `unavailable_after` failures the worker is
    /// `temporarily_unavailable`.
    Failed { unavailable_after: u32 },
}

const COLUMNS: &str = "worker_id, worker_type, endpoint_url, status, current_operation_id, capabilities, metadata, \
     registered_at, last_health_check, last_healthy_at, health_check_failures";

fn decode_worker<R: Row>(row: &R) -> Result<StoredWorker, StoreError>
where
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let worker_id: String = row.try_get("worker_id")?;
    let json = |column: &str| -> Result<Value, StoreError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text)
            .map_err(|source| StoreError::Corrupt { id: worker_id.clone(), source: Arc::new(source) })
    };
    Ok(StoredWorker {
        worker_type: row.try_get("worker_type")?,
        endpoint_url: row.try_get("endpoint_url")?,
        status: row.try_get("status")?,
        current_operation_id: row.try_get("current_operation_id")?,
        capabilities: json("capabilities")?,
        metadata: json("metadata")?,
        registered_at: time::from_micros(row.try_get("registered_at")?),
        last_health_check: row.try_get::<Option<i64>, _>("last_health_check")?.map(time::from_micros),
        last_healthy_at: time::from_micros(row.try_get("last_healthy_at")?),
        health_check_failures: row.try_get::<i64, _>("health_check_failures")?.clamp(0, i64::from(u32::MAX)) as u32,
        worker_id,
    })
}

impl Store {
    /// Registers a worker (workers.md §2, §9): a new id is stored `available`, and other ids with
    /// the same endpoint are dropped (the worker restarted under a new id); a known id gets its
    /// endpoint and capabilities replaced and is `available` again, keeping its type and failure
    /// count. A worker that `runs` an operation still running here, or that we sent one, is
    /// `busy` with it instead (and cannot be claimed for another). While a worker is live its id
    /// stays bound to its endpoint and its endpoint to its id: a second claimant changes nothing
    /// ([`Registered::Conflict`]); an unavailable worker may be replaced.
    pub async fn register_worker(
        &self,
        worker_id: &str,
        worker_type: &str,
        endpoint_url: &str,
        capabilities: &Value,
        runs: Option<&str>,
    ) -> Result<Registered, StoreError> {
        let now = time::to_micros(&time::now());
        let capabilities = capabilities.to_string();
        on_db!(&self.inner.readers, pool => {
            let mut tx = pool.begin().await?;
            // A write first, so that SQLite takes its write lock now (waiting for it) rather than
            // failing to upgrade a read later: unavailable workers at this endpoint make way.
            sqlx::query(
                "DELETE FROM workers WHERE endpoint_url = $1 AND worker_id <> $2 AND status = 'temporarily_unavailable'",
            )
            .bind(endpoint_url)
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
            let conflict: Option<(String, String)> = sqlx::query_as(
                "SELECT worker_id, endpoint_url FROM workers \
                 WHERE status <> 'temporarily_unavailable' \
                   AND ((worker_id = $1 AND endpoint_url <> $2) OR (endpoint_url = $2 AND worker_id <> $1)) \
                 LIMIT 1",
            )
            .bind(worker_id)
            .bind(endpoint_url)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((holder, held_endpoint)) = conflict {
                tx.rollback().await?;
                return Ok(Registered::Conflict { worker_id: holder, endpoint_url: held_endpoint });
            }
            sqlx::query(
                "INSERT INTO workers (worker_id, worker_type, endpoint_url, status, current_operation_id, \
                   dispatched_operation_id, capabilities, metadata, registered_at, last_health_check, last_healthy_at, \
                   health_check_failures) \
                 VALUES ($1, $2, $3, CASE WHEN $4 IS NULL THEN 'available' ELSE 'busy' END, $4, $4, $5, '{}', $6, NULL, $6, 0) \
                 ON CONFLICT (worker_id) DO UPDATE SET endpoint_url = excluded.endpoint_url, \
                   capabilities = excluded.capabilities, last_healthy_at = excluded.last_healthy_at, \
                   dispatched_operation_id = COALESCE(excluded.dispatched_operation_id, workers.dispatched_operation_id), \
                   current_operation_id = COALESCE(excluded.dispatched_operation_id, workers.dispatched_operation_id), \
                   status = CASE WHEN COALESCE(excluded.dispatched_operation_id, workers.dispatched_operation_id) IS NULL \
                     THEN 'available' ELSE 'busy' END",
            )
            .bind(worker_id)
            .bind(worker_type)
            .bind(endpoint_url)
            .bind(runs)
            .bind(&capabilities)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(Registered::Stored(Box::new(self.worker(worker_id).await?.ok_or(StoreError::Closed)?)))
    }

    /// Registered workers, in registration order, optionally of one type and one status. The
    /// database hands them over as one JSON array (one row instead of a thousand: the list is
    /// read whole, and row by row it cost several milliseconds per thousand workers).
    pub async fn workers(
        &self,
        worker_type: Option<&str>,
        status: Option<&str>,
    ) -> Result<Vec<StoredWorker>, StoreError> {
        const FILTER: &str = "($1 IS NULL OR worker_type = $1) AND ($2 IS NULL OR status = $2)";
        const FIELDS: &str = "worker_id, worker_type, endpoint_url, status, current_operation_id, {caps}, {meta}, \
             registered_at, last_health_check, last_healthy_at, health_check_failures";
        let query = match self.backend() {
            Backend::Sqlite => format!(
                "SELECT json_group_array(json_array({})) FROM \
                 (SELECT * FROM workers WHERE {FILTER} ORDER BY registered_at, worker_id)",
                FIELDS.replace("{caps}", "json(capabilities)").replace("{meta}", "json(metadata)")
            ),
            Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({}) ORDER BY registered_at, worker_id), '[]'::json)::text \
                 FROM workers WHERE {FILTER}",
                FIELDS.replace("{caps}", "capabilities::json").replace("{meta}", "metadata::json")
            ),
        };
        let text: String = on_db!(&self.inner.readers, pool => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(query)).bind(worker_type).bind(status).fetch_one(pool).await?
        });
        type Row = (String, String, String, String, Option<String>, Value, Value, i64, Option<i64>, i64, i64);
        let rows: Vec<Row> = serde_json::from_str(&text)
            .map_err(|source| StoreError::Corrupt { id: "workers".into(), source: Arc::new(source) })?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    worker_id,
                    worker_type,
                    endpoint_url,
                    status,
                    current,
                    capabilities,
                    metadata,
                    registered,
                    checked,
                    healthy,
                    failures,
                )| {
                    StoredWorker {
                        worker_id,
                        worker_type,
                        endpoint_url,
                        status,
                        current_operation_id: current,
                        capabilities,
                        metadata,
                        registered_at: time::from_micros(registered),
                        last_health_check: checked.map(time::from_micros),
                        last_healthy_at: time::from_micros(healthy),
                        health_check_failures: failures.clamp(0, i64::from(u32::MAX)) as u32,
                    }
                },
            )
            .collect())
    }

    pub async fn worker(&self, worker_id: &str) -> Result<Option<StoredWorker>, StoreError> {
        let query = format!("SELECT {COLUMNS} FROM workers WHERE worker_id = $1");
        let found = on_db!(&self.inner.readers, pool => {
            sqlx::query(sqlx::AssertSqlSafe(query))
                .bind(worker_id)
                .fetch_optional(pool)
                .await?
                .map(|row| decode_worker(&row))
        });
        found.transpose()
    }

    /// Records one health check of `worker_id` (workers.md §3).
    pub async fn record_worker_health(&self, worker_id: &str, outcome: &HealthOutcome) -> Result<(), StoreError> {
        let now = time::to_micros(&time::now());
        on_db!(&self.inner.readers, pool => {
            match outcome {
                HealthOutcome::Answered { busy_with, busy } => {
                    // A worker we sent an operation stays busy with it until we free it: it may
                    // answer idle before the operation has started there.
                    sqlx::query(
                        "UPDATE workers SET \
                           status = CASE WHEN $2 = 'busy' OR dispatched_operation_id IS NOT NULL THEN 'busy' ELSE 'available' END, \
                           current_operation_id = CASE WHEN $2 = 'busy' THEN $3 ELSE dispatched_operation_id END, \
                           health_check_failures = 0, last_health_check = $4, last_healthy_at = $4 WHERE worker_id = $1",
                    )
                    .bind(worker_id)
                    .bind(if *busy { "busy" } else { "available" })
                    .bind(busy_with.as_deref().filter(|_| *busy))
                    .bind(now)
                    .execute(pool)
                    .await?;
                }
                HealthOutcome::Failed { unavailable_after } => {
                    sqlx::query(
                        "UPDATE workers SET health_check_failures = health_check_failures + 1, last_health_check = $2, \
                           status = CASE WHEN health_check_failures + 1 >= $3 THEN 'temporarily_unavailable' ELSE status END \
                         WHERE worker_id = $1",
                    )
                    .bind(worker_id)
                    .bind(now)
                    .bind(i64::from(*unavailable_after))
                    .execute(pool)
                    .await?;
                }
            }
        });
        Ok(())
    }

    /// Marks `worker_id` busy with `operation_id` if it is still `available` (another replica may
    /// have taken it meanwhile); stamps `metadata.last_selected`. True when this call got it.
    pub async fn claim_worker(&self, worker_id: &str, operation_id: &str) -> Result<bool, StoreError> {
        let Some(worker) = self.worker(worker_id).await? else { return Ok(false) };
        let mut metadata = worker.metadata.clone();
        if !metadata.is_object() {
            metadata = Value::Object(Default::default());
        }
        metadata["last_selected"] = serde_json::json!(time::now().timestamp_micros() as f64 / 1e6);
        let claimed = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE workers SET status = 'busy', current_operation_id = $2, dispatched_operation_id = $2, metadata = $3 \
                 WHERE worker_id = $1 AND status = 'available' AND dispatched_operation_id IS NULL",
            )
            .bind(worker_id)
            .bind(operation_id)
            .bind(metadata.to_string())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(claimed > 0)
    }

    /// Marks `worker_id` as running `operation_id`, which already runs there (its session was
    /// resumed on it, or is taken over), unless another operation was sent to it since: whether
    /// it is held now.
    pub async fn hold_worker(&self, worker_id: &str, operation_id: &str) -> Result<bool, StoreError> {
        let held = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE workers SET status = 'busy', current_operation_id = $2, dispatched_operation_id = $2 \
                 WHERE worker_id = $1 AND (dispatched_operation_id IS NULL OR dispatched_operation_id = $2)",
            )
            .bind(worker_id)
            .bind(operation_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(held > 0)
    }

    /// Keeps a worker's report about `operation_id` for the replica that follows it (the first
    /// report stays: a worker finishes an operation once).
    pub async fn leave_worker_report(&self, operation_id: &str, report: &Value) -> Result<(), StoreError> {
        let now = time::to_micros(&time::now());
        on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "INSERT INTO worker_reports (operation_id, report, received_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (operation_id) DO NOTHING",
            )
            .bind(operation_id)
            .bind(report.to_string())
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Takes (reads and deletes) the report a worker left for `operation_id` at another replica.
    pub async fn take_worker_report(&self, operation_id: &str) -> Result<Option<Value>, StoreError> {
        let report: Option<String> = on_db!(&self.inner.readers, pool => {
            sqlx::query_scalar("DELETE FROM worker_reports WHERE operation_id = $1 RETURNING report")
                .bind(operation_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(report.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Frees the workers whose dispatched operation ended before `ended_before` and still holds
    /// them (its own release was lost: the replica freeing it died, or could not reach the
    /// database): how many.
    pub async fn free_workers_of_finished_operations(&self, ended_before: Timestamp) -> Result<u64, StoreError> {
        let freed = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE workers SET current_operation_id = NULL, dispatched_operation_id = NULL, \
                   status = CASE WHEN status = 'busy' THEN 'available' ELSE status END \
                 WHERE dispatched_operation_id IN (SELECT operation_id FROM operations \
                   WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < $1)",
            )
            .bind(time::to_micros(&ended_before))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(freed)
    }

    /// `worker_id` is free again, if it still runs `operation_id`.
    pub async fn release_worker(&self, worker_id: &str, operation_id: &str) -> Result<(), StoreError> {
        self.end_dispatch(worker_id, operation_id, "available").await
    }

    /// `worker_id` stopped answering while it ran `operation_id`, which moves elsewhere: it is
    /// `temporarily_unavailable` until a health check hears from it again, and no longer ours.
    pub async fn lose_worker(&self, worker_id: &str, operation_id: &str) -> Result<(), StoreError> {
        self.end_dispatch(worker_id, operation_id, "temporarily_unavailable").await
    }

    /// Ends our claim on `worker_id` (if it still runs `operation_id`), leaving it `status`.
    async fn end_dispatch(&self, worker_id: &str, operation_id: &str, status: &str) -> Result<(), StoreError> {
        on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE workers SET status = $3, current_operation_id = NULL, dispatched_operation_id = NULL \
                 WHERE worker_id = $1 AND dispatched_operation_id = $2",
            )
            .bind(worker_id)
            .bind(operation_id)
            .bind(status)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Drops workers `temporarily_unavailable` whose last healthy answer is older than `before`;
    /// returns how many.
    pub async fn remove_dead_workers(&self, before: Timestamp) -> Result<u64, StoreError> {
        let removed = on_db!(&self.inner.readers, pool => {
            sqlx::query("DELETE FROM workers WHERE status = 'temporarily_unavailable' AND last_healthy_at < $1")
                .bind(time::to_micros(&before))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(removed)
    }

    /// Drops the workers whose id starts with `prefix` (a restarted service's own built-in
    /// workers of its previous run, which died with it); returns how many.
    pub async fn remove_workers_named(&self, prefix: &str) -> Result<u64, StoreError> {
        let removed = on_db!(&self.inner.readers, pool => {
            sqlx::query("DELETE FROM workers WHERE substr(worker_id, 1, length($1)) = $1")
                .bind(prefix)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(removed)
    }

    /// Takes or renews the lease `name` for `holder` until `until`; false while another holder's
    /// lease has not expired.
    pub async fn hold_lease(&self, name: &str, holder: &str, until: Timestamp) -> Result<bool, StoreError> {
        let now = time::to_micros(&time::now());
        let held = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(time::to_micros(&until))
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(held > 0)
    }
}
