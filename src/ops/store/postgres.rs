//! Opening PostgreSQL (several replicas share one database): one pool, migrations applied under
//! sqlx's advisory lock so replicas starting together do not race.

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::StoreError;

pub(super) async fn open(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        // The writer holds one connection for its batches; readers share the rest.
        .max_connections(max_connections + 1)
        .connect(url)
        .await
        .map_err(|e| StoreError::Open(format!("{}: {e}", redact(url))))?;
    super::POSTGRES_MIGRATIONS.run(&pool).await.map_err(|e| StoreError::Open(format!("migrations: {e}")))?;
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
