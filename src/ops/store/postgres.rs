//! Opening PostgreSQL (several replicas share one database): one pool, migrations applied under
//! sqlx's advisory lock so replicas starting together do not race.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{PoolLimits, StoreError};

pub(super) async fn open(
    url: &str,
    limits: PoolLimits,
    stuck_transaction_timeout: Duration,
) -> Result<PgPool, StoreError> {
    let opening = |source: sqlx::Error| StoreError::Open { database: redact(url), source: source.into() };
    let options = url.parse::<PgConnectOptions>().map_err(opening)?.options([(
        "idle_in_transaction_session_timeout",
        format!("{}ms", stuck_transaction_timeout.as_millis().max(1)),
    )]);
    let pool = PgPoolOptions::new()
        // The writer holds one connection for its batches; readers share the rest.
        .max_connections(limits.max_connections + 1)
        .acquire_timeout(limits.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(opening)?;
    super::POSTGRES_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for error messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
