//! What several replicas sharing one PostgreSQL database ask of the store: adopting and claiming
//! operations, heartbeats and the replicas alive, handing work over, cancels asked across
//! replicas, and the announcements that carry them. What needs PostgreSQL is on [`Replicas`],
//! which only a PostgreSQL store hands out: on SQLite there is nothing to call, rather than
//! calls that silently do nothing.

use super::*;

impl Store {
    /// Makes `owner` the owner of an unfinished operation (a restarted node adopting what it
    /// finds, whatever name it had before).
    pub async fn adopt(&self, operation_id: &str, owner: &str) -> Result<bool, StoreError> {
        let now = time::to_micros(&time::now());
        let changed = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE operations SET owner_node = $2, heartbeat_at = $3 \
                 WHERE operation_id = $1 AND status IN ('pending', 'running')",
            )
            .bind(operation_id)
            .bind(owner)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(changed > 0)
    }

    /// Renews `owner`'s lease on every unfinished operation it holds; returns their ids (an id
    /// missing from the answer was taken over by another replica, or handed over by this one:
    /// a lease given up with [`Replicas::release`] is not renewed by the heartbeats still beating
    /// while the replica stops).
    pub async fn heartbeat(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        let (now, until) = (time::to_micros(&now), time::to_micros(&lease_until));
        let ids = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE operations SET heartbeat_at = $2, lease_expires_at = $3 \
                 WHERE owner_node = $1 AND status IN ('pending', 'running') AND heartbeat_at <> 0 \
                 RETURNING operation_id",
            )
            .bind(owner)
            .bind(now)
            .bind(until)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(ids)
    }

    /// Records the intent to cancel an operation some replica runs and wakes that replica
    /// (PostgreSQL `NOTIFY`; the owner also polls for intents). False when already finished.
    pub async fn request_cancel(&self, operation_id: &str, reason: &str) -> Result<bool, StoreError> {
        let now = time::to_micros(&time::now());
        let recorded = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE operations SET cancel_requested_at = COALESCE(cancel_requested_at, $2), \
                   cancel_reason = COALESCE(cancel_reason, $3) \
                 WHERE operation_id = $1 AND status IN ('pending', 'running')",
            )
            .bind(operation_id)
            .bind(now)
            .bind(reason)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if let Db::Postgres(pool) = &self.inner.readers
            && recorded > 0
        {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(Channel::CancelRequested.name())
                .bind(operation_id)
                .execute(pool)
                .await?;
        }
        Ok(recorded > 0)
    }

    /// Cancel intents recorded for unfinished operations `owner` runs: `(id, reason)`.
    pub async fn requested_cancels(&self, owner: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "SELECT operation_id, cancel_reason FROM operations \
                 WHERE owner_node = $1 AND status IN ('pending', 'running') AND cancel_requested_at IS NOT NULL",
            )
            .bind(owner)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get::<Option<String>, _>(1)?.unwrap_or_default())))
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Writes a terminal version of an unfinished operation whoever owns it (a cancel whose
    /// owner did not answer in time). False when it had finished meanwhile.
    pub async fn force_finish(&self, snapshot: &Snapshot) -> Result<bool, StoreError> {
        let c = Columns::of(snapshot);
        let changed = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "UPDATE operations SET status = $2, updated_at = $3, version = $4, record = $5, \
                   cancel_requested_at = $6, cancel_reason = $7 \
                 WHERE operation_id = $1 AND status IN ('pending', 'running')",
            )
            .bind(&c.id)
            .bind(c.status)
            .bind(c.updated_at)
            .bind(c.version)
            .bind(&c.record)
            .bind(c.cancel_requested_at)
            .bind(&c.cancel_reason)
            .execute(pool)
            .await?
            .rows_affected()
        });
        // The owner, if it hears, stops at once (else at its next lease renewal).
        if let Db::Postgres(pool) = &self.inner.readers
            && changed > 0
        {
            sqlx::query("SELECT pg_notify($1, $2)").bind(Channel::Finished.name()).bind(&c.id).execute(pool).await?;
        }
        Ok(changed > 0)
    }
}

/// The store's side of several replicas sharing the database: the replicas alive, handing work
/// over, claiming a dead replica's work, announcements. PostgreSQL only — [`Store::replicas`].
#[derive(Clone, Debug)]
pub struct Replicas {
    pub(super) pool: sqlx::PgPool,
}

impl Store {
    /// The replicas' side of the store; `None` on SQLite, which one process uses alone.
    pub fn replicas(&self) -> Option<Replicas> {
        match &self.inner.readers {
            Db::Postgres(pool) => Some(Replicas { pool: pool.clone() }),
            Db::Sqlite(_) => None,
        }
    }
}

impl Replicas {
    /// Renews this process's row among the replicas alive, unless another process (`instance`)
    /// holds the name and renewed it after `stale_before`: then false.
    pub async fn replica_alive(
        &self,
        node: &str,
        instance: &str,
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let renewed = sqlx::query(
            "INSERT INTO replicas (node_id, instance, heartbeat_at) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id) DO UPDATE SET instance = excluded.instance, heartbeat_at = excluded.heartbeat_at \
             WHERE replicas.instance = excluded.instance OR replicas.heartbeat_at < $4",
        )
        .bind(node)
        .bind(instance)
        .bind(time::to_micros(&now))
        .bind(time::to_micros(&stale_before))
        .execute(pool)
        .await?
        .rows_affected();
        Ok(renewed > 0)
    }

    /// When the process holding the name `node` last renewed it, and which process it is.
    pub async fn replica(&self, node: &str) -> Result<Option<(String, i64)>, StoreError> {
        let pool = &self.pool;
        let row = sqlx::query_as("SELECT instance, heartbeat_at FROM replicas WHERE node_id = $1")
            .bind(node)
            .fetch_optional(pool)
            .await?;
        Ok(row)
    }

    /// This process is stopping: it is no longer counted among the replicas alive.
    pub async fn replica_gone(&self, node: &str, instance: &str) -> Result<(), StoreError> {
        let pool = &self.pool;
        sqlx::query("DELETE FROM replicas WHERE node_id = $1 AND instance = $2")
            .bind(node)
            .bind(instance)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The replicas that renewed their row after `since`, by name.
    pub async fn replicas_alive(&self, since: Timestamp) -> Result<Vec<String>, StoreError> {
        let pool = &self.pool;
        let names = sqlx::query_scalar("SELECT node_id FROM replicas WHERE heartbeat_at > $1 ORDER BY node_id")
            .bind(time::to_micros(&since))
            .fetch_all(pool)
            .await?;
        Ok(names)
    }

    /// Whether a replica other than `node` renewed its row after `since`.
    pub async fn others_alive(&self, node: &str, since: Timestamp) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let alive =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM replicas WHERE node_id <> $1 AND heartbeat_at > $2)")
                .bind(node)
                .bind(time::to_micros(&since))
                .fetch_one(pool)
                .await?;
        Ok(alive)
    }

    /// Gives up `owner`'s leases on these unfinished operations at once: the other replicas'
    /// next takeover scan claims them.
    pub async fn release(&self, owner: &str, ids: &[String]) -> Result<u64, StoreError> {
        let pool = &self.pool;
        let released = sqlx::query(
            "UPDATE operations SET heartbeat_at = 0, lease_expires_at = NULL \
             WHERE owner_node = $1 AND operation_id = ANY($2) AND status IN ('pending', 'running')",
        )
        .bind(owner)
        .bind(ids)
        .execute(pool)
        .await?
        .rows_affected();
        Ok(released)
    }

    /// Takes over, for `owner`, unfinished operations whose owner has not renewed its lease since
    /// `stale_before`. (`FOR UPDATE SKIP LOCKED`: replicas scanning together claim
    /// different rows).
    pub async fn claim_stale(
        &self,
        owner: &str,
        stale_before: Timestamp,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let pool = &self.pool;
        let now = time::to_micros(&time::now());
        let rows = sqlx::query(
            "WITH stale AS ( \
               SELECT operation_id, owner_node FROM operations \
               WHERE status IN ('pending', 'running') AND owner_node <> $1 AND heartbeat_at < $2 \
               ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE operations o SET owner_node = $1, heartbeat_at = $4, lease_expires_at = NULL \
             FROM stale WHERE o.operation_id = stale.operation_id \
             RETURNING o.operation_id, o.record, o.job_state, o.cancel_reason, stale.owner_node AS previous_owner",
        )
        .bind(owner)
        .bind(time::to_micros(&stale_before))
        .bind(limit)
        .bind(now)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Claimed {
                    stored: decode(row)?,
                    previous_owner: row.try_get::<Option<String>, _>("previous_owner")?.unwrap_or_default(),
                    cancel_reason: row.try_get("cancel_reason")?,
                })
            })
            .collect()
    }

    /// Ids of operations whose cancel was requested, as PostgreSQL announces them (`LISTEN`).
    /// The listener reconnects by itself; what is announced while it is away is found by polling.
    pub async fn announcements(&self, channel: Channel) -> Result<Announcements, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(channel.name()).await?;
        Ok(Announcements { listener })
    }
}
