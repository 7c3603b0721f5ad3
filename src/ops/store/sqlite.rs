//! Opening the embedded SQLite database: WAL journal, one writer connection and a pool of
//! readers (WAL lets them read while the writer commits), the file's folder created if missing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::StoreError;

/// Returns `(readers, writer)`.
pub(super) async fn open(
    url: &str,
    max_connections: u32,
) -> Result<(SqlitePool, SqlitePool), StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Open(format!("{url}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode is durable against process crashes (the case that matters for
        // restart honesty); only an OS crash may lose the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    if let Some(parent) = Path::new(options.get_filename()).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", parent.display())))?;
    }
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await
        .map_err(|e| StoreError::Open(format!("{url}: {e}")))?;
    super::SQLITE_MIGRATIONS
        .run(&writer)
        .await
        .map_err(|e| StoreError::Open(format!("migrations: {e}")))?;
    let readers = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Open(format!("{url}: {e}")))?;
    Ok((readers, writer))
}
