//! Lineage in the store: the operations that continue or repeat one (its children), and the one
//! that resumed it.

use super::*;

impl Store {
    /// The operations whose `parent_operation_id` is `parent`, oldest first.
    pub async fn children(&self, parent: &str) -> Result<Vec<Snapshot>, StoreError> {
        let rows = on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "SELECT operation_id, record, job_state FROM operations \
                 WHERE parent_operation_id = $1 ORDER BY created_at, operation_id",
            )
            .bind(parent)
            .fetch_all(pool)
            .await?
            .iter()
            .map(decode)
            .collect::<Vec<_>>()
        });
        rows.into_iter().collect()
    }

    /// The operation that resumed `operation_id`, if one did.
    pub async fn continuation(&self, operation_id: &str) -> Result<Option<String>, StoreError> {
        let id = on_db!(&self.inner.readers, pool => {
            sqlx::query_scalar(CONTINUATION_OF)
                .bind(operation_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(id)
    }
}
