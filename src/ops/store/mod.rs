//! Durable operations: sqlx over SQLite (embedded default) or PostgreSQL (several replicas).
//! Every query is written once; the [`on_db!`] macro compiles it for whichever backend is open.
//! All writes go through one batching writer task (group commit: many small writes share one
//! transaction; `writer.rs`), reads go straight to a pool. What several replicas ask of the store
//! is in `cluster.rs`, its PostgreSQL-only part on [`Replicas`]. The backend is a [`Backend`].

mod error;
mod postgres;
mod sqlite;
pub use error::StoreError;
#[cfg(test)]
pub(crate) use sqlite::ForeignWriteLock;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::migrate::Migrator;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::ops::record::{OperationRecord, Status};
use crate::ops::snapshot::Snapshot;
use crate::time::{self, Timestamp};

pub(crate) static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
pub(crate) static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Cancel intents as PostgreSQL announces them.
/// An operation's owner and state as stored, for the replica running it.
pub struct Standing {
    pub owner: Option<String>,
    pub finished: bool,
    pub cancel_reason: Option<String>,
}

/// An operation taken over from a replica whose lease expired.
pub struct Claimed {
    pub stored: Snapshot,
    /// The replica that held it.
    pub previous_owner: String,
    /// Why its cancel was requested, if it was (possibly while its owner was already gone).
    pub cancel_reason: Option<String>,
}

/// Operation ids PostgreSQL announces on one channel (`LISTEN`).
pub struct Announcements {
    listener: sqlx::postgres::PgListener,
}

impl Announcements {
    /// The next announced operation id; an error when the connection failed (the next call
    /// reconnects and listens again).
    pub async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}

/// What replicas announce to each other through PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub enum Channel {
    /// A cancel intent was recorded (for the operation's owner).
    CancelRequested,
    /// An operation was stored finished (for replicas waiting on another's cancel).
    Finished,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::CancelRequested => "ktrdr_ops_cancel",
            Channel::Finished => "ktrdr_ops_finished",
        }
    }
}

/// The most commands one transaction carries.
const MAX_BATCH: usize = 512;
/// The most rows one transaction writes (bounds how long a queued state change can wait).
const MAX_BATCH_ROWS: usize = 512;

#[derive(Clone)]
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to the open backend's pool. The body is compiled once per
/// backend, so a query is written once and works on both (SQL here sticks to what both speak:
/// `$n` parameters, BIGINT microseconds, JSON as TEXT, `ON CONFLICT`).
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// The operation that resumed the one given (at most one: `resumes` is unique).
const CONTINUATION_OF: &str = "SELECT operation_id FROM operations WHERE resumes = $1";

mod checkpoints;
mod cluster;
mod lineage;
mod listing;
mod locks;
mod workers;
pub use checkpoints::{Checkpoint, CheckpointKind, CheckpointStats};
pub use cluster::Replicas;
pub use locks::ClusterLock;
pub use workers::{HealthOutcome, Registered, StoredWorker};
mod writer;

use writer::{WriteCmd, writer_loop};

/// Filters of `GET /operations`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub operation_type: Option<String>,
    /// Every type but this one.
    pub exclude_type: Option<String>,
    /// Words the id or the request contains, case-insensitively.
    pub search: Option<String>,
    pub active_only: bool,
    pub oldest_first: bool,
    pub limit: u32,
    pub offset: u64,
}

/// How many operations of a type ended (or stand) in a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub operation_type: String,
    pub status: String,
    pub count: u64,
}

pub struct ListPage {
    pub operations: Vec<Snapshot>,
    pub total_count: u64,
    pub active_count: u64,
}

/// An Idempotency-Key as stored: the endpoint it belongs to, the key, and a fingerprint of the
/// request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
}

/// What inserting a new operation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New,
    /// The Idempotency-Key was already used (within its time to live).
    Existing {
        operation_id: String,
        fingerprint: String,
    },
    /// The operation to resume was already resumed, by `continuation`.
    AlreadyResumed {
        continuation: String,
    },
}

/// The database behind the store. SQLite serves one replica; PostgreSQL several (leases,
/// takeover, cross-replica cancel need it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// As `/health` and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Whether several replicas can share this database.
    pub fn shared_by_replicas(self) -> bool {
        self == Backend::Postgres
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    readers: Db,
    /// State changes: written before anything in `progress`.
    writes: mpsc::Sender<WriteCmd>,
    /// Throttled progress: written when no state change waits.
    progress: mpsc::Sender<WriteCmd>,
    backend: Backend,
    /// Stops the store's background tasks (on [`Store::close`], or when the last handle goes).
    closed: tokio_util::sync::CancellationToken,
    /// The writer and the SQLite checkpointer, so that closing can wait for them.
    tasks: tokio_util::task::TaskTracker,
}

/// What the writer records: transaction latencies, rows written, failures.
pub(super) struct WriteFigures {
    pub transactions: metrics::Histogram,
    pub rows: metrics::Counter,
    pub failures: metrics::Counter,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// How many connections a store pools and how long a query waits for one.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Connections for reads (writes go through one batching writer of their own).
    pub max_connections: u32,
    /// How long a query waits for a connection — including connecting, so an unreachable
    /// database is an error after this long rather than after the resolver's or TCP's own
    /// timeouts (half a minute and more) — and, with SQLite, for another program's write lock.
    pub acquire_timeout: Duration,
}

impl PoolLimits {
    /// `max_connections` readers, waiting at most 5 s (the configuration's default).
    pub fn new(max_connections: u32) -> PoolLimits {
        PoolLimits { max_connections, acquire_timeout: Duration::from_secs(5) }
    }
}

impl Store {
    /// Opens the database named by `url` and applies pending migrations. With PostgreSQL, the
    /// server ends a session of ours that sits inside a transaction for `stuck_transaction_timeout`
    /// (a replica frozen mid-write must not keep its row locks, and so its operations, from the
    /// survivors: their takeover skips locked rows).
    pub async fn open(
        url: &str,
        pool: PoolLimits,
        stuck_transaction_timeout: Duration,
        metrics: &Metrics,
    ) -> Result<Store, StoreError> {
        let (readers, writer, backend) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = postgres::open(url, pool, stuck_transaction_timeout).await?;
            (Db::Postgres(pool.clone()), Db::Postgres(pool), Backend::Postgres)
        } else {
            let (readers, writer) = sqlite::open(url, pool).await?;
            (Db::Sqlite(readers), Db::Sqlite(writer), Backend::Sqlite)
        };
        let (writes, urgent) = mpsc::channel(16 * MAX_BATCH);
        let (progress, background) = mpsc::channel(64);
        let figures = WriteFigures {
            transactions: metrics.histogram(crate::metrics::STORE_WRITE_DURATION, &[("backend", backend.as_str())]),
            rows: metrics.counter(crate::metrics::STORE_ROWS_WRITTEN, &[]),
            failures: metrics.counter(crate::metrics::STORE_WRITE_FAILURES, &[]),
        };
        let closed = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(writer_loop(writer, urgent, background, figures, closed.clone()));
        if let Db::Sqlite(pool) = &readers {
            tasks.spawn(sqlite::checkpoint_periodically(pool.clone(), closed.clone()));
        }
        tasks.close();
        Ok(Store { inner: Arc::new(StoreInner { readers, writes, progress, backend, closed, tasks }) })
    }

    /// Writes what is queued, stops the writer and the checkpointer, and waits for them. Every
    /// handle's later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.cancel();
        self.inner.tasks.wait().await;
    }

    /// Deletes terminal operations last written before `finished_before` and Idempotency-Keys
    /// created before `keys_before`; returns how many of each.
    pub async fn sweep(&self, finished_before: Timestamp, keys_before: Timestamp) -> Result<(u64, u64), StoreError> {
        let (reply, answer) = oneshot::channel();
        let cmd = WriteCmd::Sweep {
            finished_before: time::to_micros(&finished_before),
            keys_before: time::to_micros(&keys_before),
            reply,
        };
        self.send(cmd).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    async fn send(&self, cmd: WriteCmd) -> Result<(), StoreError> {
        self.inner.writes.send(cmd).await.map_err(|_| StoreError::Closed)
    }

    /// Stores a new operation (and its Idempotency-Key, in the same transaction). When the key
    /// was already used, nothing is written and the earlier operation is named instead.
    pub async fn insert(
        &self,
        row: Arc<Snapshot>,
        owner: &str,
        idempotency: Option<(IdempotencyKey, Timestamp)>,
    ) -> Result<Inserted, StoreError> {
        self.insert_resuming(row, owner, idempotency, None).await
    }

    /// [`insert`](Self::insert) of an operation that `resumes` another: nothing is written when
    /// that one was already resumed, and its continuation is named instead.
    pub async fn insert_resuming(
        &self,
        row: Arc<Snapshot>,
        owner: &str,
        idempotency: Option<(IdempotencyKey, Timestamp)>,
        resumes: Option<String>,
    ) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let idempotency = idempotency.map(|(key, expired_before)| (key, time::to_micros(&expired_before)));
        self.send(WriteCmd::Insert { row, owner: owner.to_owned(), idempotency, resumes, reply }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes these versions and waits until they are committed. A row only replaces an older
    /// version, and never changes a terminal status.
    pub async fn save(&self, rows: Vec<Arc<Snapshot>>, owner: &str) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(WriteCmd::Save { rows, owner: owner.to_owned(), reply: Some(reply) }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues these versions for the next batch without waiting for the commit.
    pub async fn save_later(&self, rows: Vec<Arc<Snapshot>>, owner: &str) -> Result<(), StoreError> {
        self.send(WriteCmd::Save { rows, owner: owner.to_owned(), reply: None }).await
    }

    /// Queues progress versions; state changes queued later are still written first (the
    /// version guard keeps the newest).
    pub async fn save_progress(&self, rows: Vec<Arc<Snapshot>>, owner: &str) -> Result<(), StoreError> {
        let cmd = WriteCmd::Save { rows, owner: owner.to_owned(), reply: None };
        self.inner.progress.send(cmd).await.map_err(|_| StoreError::Closed)
    }

    /// Waits until every write queued before this call (state or progress) is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let barrier = WriteCmd::Save { rows: Vec::new(), owner: String::new(), reply: Some(reply) };
        self.inner.progress.send(barrier).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)??;
        self.save(Vec::new(), "").await
    }

    pub async fn get(&self, operation_id: &str) -> Result<Option<Snapshot>, StoreError> {
        let row = on_db!(&self.inner.readers, pool => {
            sqlx::query("SELECT operation_id, record, job_state FROM operations WHERE operation_id = $1")
                .bind(operation_id)
                .fetch_optional(pool)
                .await?
                .map(|row| decode(&row))
        });
        row.transpose()
    }

    /// Up to `limit` operations other replicas wrote after `since` (Unix µs of `updated_at`),
    /// oldest write first, each with that instant. PostgreSQL only: with SQLite a replica is alone.
    pub async fn changed_elsewhere(
        &self,
        node: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Snapshot)>, StoreError> {
        let Db::Postgres(pool) = &self.inner.readers else { return Ok(Vec::new()) };
        let rows = sqlx::query(
            "SELECT operation_id, record, job_state, updated_at FROM operations \
             WHERE updated_at > $2 AND owner_node <> $1 ORDER BY updated_at LIMIT $3",
        )
        .bind(node)
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get::<i64, _>("updated_at")?, decode(row)?))).collect()
    }

    /// Who an operation is stored as belonging to, whether it is stored finished, and the
    /// reason of a cancel requested of it.
    pub async fn standing(&self, operation_id: &str) -> Result<Option<Standing>, StoreError> {
        let row = on_db!(&self.inner.readers, pool => {
            sqlx::query("SELECT owner_node, status, cancel_reason FROM operations WHERE operation_id = $1")
                .bind(operation_id)
                .fetch_optional(pool)
                .await?
                .map(|row| -> Result<Standing, StoreError> {
                    let status: String = row.try_get("status")?;
                    Ok(Standing {
                        owner: row.try_get("owner_node")?,
                        finished: ["completed", "failed", "cancelled"].contains(&status.as_str()),
                        cancel_reason: row.try_get("cancel_reason")?,
                    })
                })
                .transpose()?
        });
        Ok(row)
    }

    /// Operations still `pending`/`running` in the store: what a restart must reconcile. With
    /// `owner`, only those that replica owned.
    pub async fn unfinished(&self, owner: Option<&str>) -> Result<Vec<Snapshot>, StoreError> {
        on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "SELECT operation_id, record, job_state FROM operations \
                 WHERE status IN ('pending', 'running') AND ($1 IS NULL OR owner_node = $1) \
                 ORDER BY created_at",
            )
            .bind(owner)
            .fetch_all(pool)
            .await?
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// The operation an Idempotency-Key started, if the key was used after `not_before`.
    pub async fn find_idempotency(
        &self,
        scope: &str,
        key: &str,
        not_before: Timestamp,
    ) -> Result<Option<(String, String)>, StoreError> {
        let found = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "SELECT operation_id, fingerprint FROM idempotency_keys \
                 WHERE scope = $1 AND idempotency_key = $2 AND created_at >= $3",
            )
            .bind(scope)
            .bind(key)
            .bind(time::to_micros(&not_before))
            .fetch_optional(pool)
            .await?
            .map(|row| Ok::<_, sqlx::Error>((row.try_get("operation_id")?, row.try_get("fingerprint")?)))
            .transpose()?
        });
        Ok(found)
    }

    /// A trivial query, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(&self.inner.readers, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }
}

fn decode<R: Row>(row: &R) -> Result<Snapshot, StoreError>
where
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let id: String = row.try_get("operation_id")?;
    let record: String = row.try_get("record")?;
    let job_state: Option<String> = row.try_get("job_state")?;
    let record: OperationRecord = serde_json::from_str(&record)
        .map_err(|source| StoreError::Corrupt { id: id.clone(), source: Arc::new(source) })?;
    let job_state = job_state
        .map(|s| serde_json::from_str::<Value>(&s))
        .transpose()
        .map_err(|source| StoreError::Corrupt { id, source: Arc::new(source) })?;
    Ok(Snapshot::new(record, job_state))
}

/// The columns of one stored version.
struct Columns {
    id: String,
    operation_type: String,
    status: &'static str,
    created_at: i64,
    updated_at: i64,
    version: i64,
    record: String,
    job_state: Option<String>,
    cancel_requested_at: Option<i64>,
    cancel_reason: Option<String>,
    parent_operation_id: Option<String>,
}

impl Columns {
    fn of(snapshot: &Snapshot) -> Columns {
        let r = &snapshot.record;
        Columns {
            id: r.operation_id.clone(),
            operation_type: r.operation_type.clone(),
            status: r.status.as_str(),
            created_at: time::to_micros(&r.created_at),
            updated_at: time::to_micros(&time::now()),
            version: r.version as i64,
            // Serialised here rather than through the snapshot's cache: a cached copy would stay
            // in memory for every operation whose progress is written, read or not.
            record: serde_json::to_string(r).expect("an operation record always serialises"),
            job_state: snapshot.job_state.as_ref().map(Value::to_string),
            cancel_requested_at: r.cancellation.as_ref().map(|c| time::to_micros(&c.requested_at)),
            cancel_reason: r.cancellation.as_ref().map(|c| c.reason.clone()),
            parent_operation_id: r.parent_operation_id.clone(),
        }
    }
}
