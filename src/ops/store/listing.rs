//! Listing the stored operations: filtered, searched and paged, and counted by type and status.

use super::*;

/// What differs between the two backends' SQL.
trait Dialect {
    /// A stored record's `metadata` (the request it was started with) as text.
    fn metadata_text(&self) -> &'static str;
}

impl Dialect for sqlx::SqlitePool {
    fn metadata_text(&self) -> &'static str {
        "json_extract(record, '$.metadata')"
    }
}

impl Dialect for sqlx::PgPool {
    fn metadata_text(&self) -> &'static str {
        "(record::json ->> 'metadata')"
    }
}

/// A LIKE pattern that finds `words` anywhere, lower-cased, its wildcards taken literally.
fn like_pattern(words: &str) -> String {
    let mut pattern = String::from("%");
    for c in words.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Store {
    pub async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let status = filter.status.map(|s| s.as_str());
        let active_only = i64::from(filter.active_only);
        let pattern = filter.search.as_deref().map(like_pattern);
        let order = if filter.oldest_first { "ASC" } else { "DESC" };
        let (operations, total_count, active_count) = on_db!(&self.inner.readers, pool => {
            let matching = format!(
                "WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR operation_type = $2) \
                   AND ($3 = 0 OR status IN ('pending', 'running')) AND ($4 IS NULL OR operation_type <> $4) \
                   AND ($5 IS NULL OR LOWER(operation_id) LIKE $5 ESCAPE '\\' OR LOWER({}) LIKE $5 ESCAPE '\\')",
                pool.metadata_text(),
            );
            // Only constants are spliced in (the dialect's metadata expression, ASC/DESC); every
            // value the caller gave is bound.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT operation_id, record, job_state FROM operations {matching} \
                 ORDER BY created_at {order}, operation_id {order} LIMIT $6 OFFSET $7",
            )))
            .bind(status)
            .bind(filter.operation_type.as_deref())
            .bind(active_only)
            .bind(filter.exclude_type.as_deref())
            .bind(pattern.as_deref())
            .bind(i64::from(filter.limit))
            .bind(filter.offset as i64)
            .fetch_all(pool)
            .await?;
            let total: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM operations {matching}")))
                .bind(status)
                .bind(filter.operation_type.as_deref())
                .bind(active_only)
                .bind(filter.exclude_type.as_deref())
                .bind(pattern.as_deref())
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            let active: i64 = sqlx::query("SELECT COUNT(*) FROM operations WHERE status IN ('pending', 'running')")
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            (rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?, total, active)
        });
        Ok(ListPage { operations, total_count: total_count as u64, active_count: active_count as u64 })
    }

    /// Operations created since `since`, counted by type and status.
    pub async fn count_by_status(&self, since: Timestamp) -> Result<Vec<StatusCount>, StoreError> {
        on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "SELECT operation_type, status, COUNT(*) FROM operations WHERE created_at >= $1 \
                 GROUP BY operation_type, status ORDER BY operation_type, status",
            )
            .bind(time::to_micros(&since))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(StatusCount {
                    operation_type: row.try_get(0)?,
                    status: row.try_get(1)?,
                    count: row.try_get::<i64, _>(2)? as u64,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })
    }
}
