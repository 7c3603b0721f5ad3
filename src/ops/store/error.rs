//! What can go wrong with the store, and which of it may pass if the write is tried again.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// `database` names it without its password.
    #[error("cannot open the database {database}: {source}")]
    Open {
        database: String,
        #[source]
        source: Arc<sqlx::Error>,
    },
    #[error("cannot create the database's folder {}: {source}", folder.display())]
    Folder {
        folder: std::path::PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    #[error("database error: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("stored operation {id} is unreadable: {source}")]
    Corrupt {
        id: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    /// Whether the same write may well succeed a little later: the database could not be
    /// reached, was restarting, or was busy — not a write it refuses.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(cause) = self else {
            return false;
        };
        match cause.as_ref() {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(e) if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
                // An extended result code; its low byte is the primary one: BUSY (5), LOCKED (6).
                let primary = e.code().and_then(|code| code.parse::<i32>().ok()).map(|code| code & 0xff);
                matches!(primary, Some(5 | 6))
            }
            // PostgreSQL: connection exceptions (08…), shutting down or starting up (57P01–57P03),
            // serialization failure and deadlock (40001, 40P01).
            sqlx::Error::Database(e) => e.code().is_some_and(|code| {
                code.starts_with("08") || ["57P01", "57P02", "57P03", "40001", "40P01"].contains(&code.as_ref())
            }),
            _ => false,
        }
    }
}

// The causes are shared (`Arc`) because one failed batch answers every write in it.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(Arc::new(e))
    }
}
