//! Opening the embedded SQLite database: WAL journal, one writer connection and a pool of
//! readers (WAL lets them read while the writer commits), the file's folder created if missing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{PoolLimits, StoreError};

/// Returns `(readers, writer)`.
pub(super) async fn open(url: &str, limits: PoolLimits) -> Result<(SqlitePool, SqlitePool), StoreError> {
    let opening = |source: sqlx::Error| StoreError::Open { database: url.to_owned(), source: source.into() };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(opening)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode is durable against process crashes (the case that matters for
        // restart honesty); only an OS crash may lose the last commits.
        .synchronous(SqliteSynchronous::Normal)
        // A write waits for another program's write lock as long as for a connection.
        .busy_timeout(limits.acquire_timeout)
        .foreign_keys(true);
    if let Some(parent) = Path::new(options.get_filename()).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|source| StoreError::Folder { folder: parent.to_owned(), source: source.into() })?;
    }
    // The writer never checkpoints (a checkpoint fsyncs the database and would stall every
    // queued write behind it); `checkpoint_periodically` does it from a reader instead.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
        .await
        .map_err(opening)?;
    super::SQLITE_MIGRATIONS.run(&writer).await?;
    let readers = SqlitePoolOptions::new()
        .max_connections(limits.max_connections)
        .acquire_timeout(limits.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(opening)?;
    Ok((readers, writer))
}

/// Copies the WAL back into the database every second, beside the writer (a PASSIVE checkpoint
/// never blocks it), until `closed` fires.
pub(super) async fn checkpoint_periodically(readers: SqlitePool, closed: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closed.cancelled() => return,
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&readers).await {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

/// Another program's hold on an SQLite database's write lock, for tests of what the service does
/// while it cannot write.
#[cfg(test)]
pub(crate) struct ForeignWriteLock(sqlx::SqliteConnection);

#[cfg(test)]
impl ForeignWriteLock {
    /// Takes the lock on the database at `url` through a connection of its own.
    pub(crate) async fn take(url: &str) -> ForeignWriteLock {
        use sqlx::ConnectOptions;
        let mut connection = SqliteConnectOptions::from_str(url).unwrap().connect().await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE").execute(&mut connection).await.unwrap();
        ForeignWriteLock(connection)
    }

    pub(crate) async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}
