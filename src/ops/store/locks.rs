//! Named locks every replica honours: PostgreSQL session advisory locks, each held on a
//! connection of its own for as long as its holder works (a load merging into a series, say).
//! The server releases a lock when its session ends, so a replica that dies frees its locks; the
//! connection's TCP keep-alives make a replica cut off the network count as dead within seconds,
//! not hours.

use std::time::Duration;

use sqlx::Connection;

use super::{Replicas, StoreError};

/// The first key of every lock of ours (the two-key form keeps them apart from sqlx's migration
/// lock and anyone else's one-key locks): "kt".
const LOCK_CLASS: i32 = 0x6b74;

/// How long a lock's connection may stay silent before the server probes it, how often it
/// probes, and how many unanswered probes end the session (and the lock): about 11 s in all.
const KEEPALIVE: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "2"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "11000"),
];

/// A connection set apart for one named lock, holding it or not yet.
pub struct ClusterLock {
    connection: sqlx::PgConnection,
    name: String,
}

impl Replicas {
    /// A connection of its own for the lock `name`, not yet holding it. The connection leaves
    /// the pool (which opens another in its place when it needs one).
    pub async fn cluster_lock(&self, name: &str) -> Result<ClusterLock, StoreError> {
        let mut connection = self.pool.acquire().await?.detach();
        for (setting, value) in KEEPALIVE {
            // `set_config` rather than SET: its value is a parameter.
            sqlx::query("SELECT set_config($1, $2, false)").bind(setting).bind(value).execute(&mut connection).await?;
        }
        Ok(ClusterLock { connection, name: name.to_owned() })
    }
}

impl ClusterLock {
    /// Takes the lock if nobody holds it; false when another session does.
    pub async fn try_acquire(&mut self) -> Result<bool, StoreError> {
        let taken = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(&self.name)
            .fetch_one(&mut self.connection)
            .await?;
        Ok(taken)
    }

    /// Waits until the lock is free and takes it. Dropping this future part-way drops the lock
    /// with it: the connection must then be dropped too (it closes, and the server lets go).
    pub async fn acquire(&mut self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(&self.name)
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Whether the lock is still ours: its session answers within `within`. A session lock is
    /// only let go by its session's end, so an answering session still holds it.
    pub async fn still_held(&mut self, within: Duration) -> bool {
        matches!(tokio::time::timeout(within, self.connection.ping()).await, Ok(Ok(())))
    }

    /// Lets the lock go and closes its connection.
    pub async fn release(self) {
        // Closing ends the session, which releases the lock either way.
        let _ = self.connection.close().await;
    }
}
