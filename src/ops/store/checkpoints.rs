//! Checkpoints: what an operation saved that a resume continues from (resume.md §5). One per
//! operation; a save replaces it. Written straight to the database (saves are seconds apart, and
//! a checkpoint must not wait behind progress), read by the checkpoint endpoints and by resume.

use serde::{Deserialize, Serialize};

use super::*;

/// Why a checkpoint was saved (ktrdr's `checkpoint_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// While the work went on.
    Periodic,
    /// When it was cancelled.
    Cancellation,
    /// When it failed.
    Failure,
    /// When the service stopped under it.
    Shutdown,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Periodic => "periodic",
            CheckpointKind::Cancellation => "cancellation",
            CheckpointKind::Failure => "failure",
            CheckpointKind::Shutdown => "shutdown",
        }
    }

    fn parse(text: &str) -> CheckpointKind {
        match text {
            "cancellation" => CheckpointKind::Cancellation,
            "failure" => CheckpointKind::Failure,
            "shutdown" => CheckpointKind::Shutdown,
            _ => CheckpointKind::Periodic,
        }
    }
}

/// One operation's checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub operation_id: String,
    pub operation_type: String,
    pub kind: CheckpointKind,
    pub created_at: Timestamp,
    /// Shaped by the operation type: whatever its job needs to continue.
    pub state: Value,
    pub artifacts_path: Option<String>,
    pub artifacts_size_bytes: u64,
}

/// `GET /checkpoints/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointStats {
    pub total: u64,
    pub total_size_bytes: u64,
    pub oldest: Option<Timestamp>,
}

const COLUMNS: &str =
    "operation_id, operation_type, checkpoint_type, created_at, state, artifacts_path, artifacts_size_bytes";

fn decode_checkpoint<R: Row>(row: &R) -> Result<Checkpoint, StoreError>
where
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let operation_id: String = row.try_get("operation_id")?;
    let state: String = row.try_get("state")?;
    let kind: String = row.try_get("checkpoint_type")?;
    let state = serde_json::from_str(&state)
        .map_err(|source| StoreError::Corrupt { id: operation_id.clone(), source: Arc::new(source) })?;
    Ok(Checkpoint {
        operation_type: row.try_get("operation_type")?,
        kind: CheckpointKind::parse(&kind),
        created_at: time::from_micros(row.try_get("created_at")?),
        state,
        artifacts_path: row.try_get("artifacts_path")?,
        artifacts_size_bytes: row.try_get::<i64, _>("artifacts_size_bytes")?.max(0) as u64,
        operation_id,
    })
}

impl Store {
    /// Saves `checkpoint`, replacing the operation's earlier one.
    pub async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let state = checkpoint.state.to_string();
        on_db!(&self.inner.readers, pool => {
            sqlx::query(
                "INSERT INTO checkpoints (operation_id, operation_type, checkpoint_type, created_at, state, \
                   artifacts_path, artifacts_size_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (operation_id) DO UPDATE SET checkpoint_type = excluded.checkpoint_type, \
                   created_at = excluded.created_at, state = excluded.state, \
                   artifacts_path = excluded.artifacts_path, artifacts_size_bytes = excluded.artifacts_size_bytes",
            )
            .bind(&checkpoint.operation_id)
            .bind(&checkpoint.operation_type)
            .bind(checkpoint.kind.as_str())
            .bind(time::to_micros(&checkpoint.created_at))
            .bind(&state)
            .bind(&checkpoint.artifacts_path)
            .bind(checkpoint.artifacts_size_bytes as i64)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn checkpoint(&self, operation_id: &str) -> Result<Option<Checkpoint>, StoreError> {
        let query = format!("SELECT {COLUMNS} FROM checkpoints WHERE operation_id = $1");
        let found = on_db!(&self.inner.readers, pool => {
            sqlx::query(sqlx::AssertSqlSafe(query))
                .bind(operation_id)
                .fetch_optional(pool)
                .await?
                .map(|row| decode_checkpoint(&row))
        });
        found.transpose()
    }

    /// Every checkpoint saved before `before` (all without it), newest first.
    pub async fn checkpoints(&self, before: Option<Timestamp>) -> Result<Vec<Checkpoint>, StoreError> {
        let before = before.map_or(i64::MAX, |t| time::to_micros(&t));
        let query = format!("SELECT {COLUMNS} FROM checkpoints WHERE created_at < $1 ORDER BY created_at DESC");
        let rows = on_db!(&self.inner.readers, pool => {
            sqlx::query(sqlx::AssertSqlSafe(query))
                .bind(before)
                .fetch_all(pool)
                .await?
                .iter()
                .map(decode_checkpoint)
                .collect::<Vec<_>>()
        });
        rows.into_iter().collect()
    }

    /// Deletes the operation's checkpoint; false when it had none.
    pub async fn delete_checkpoint(&self, operation_id: &str) -> Result<bool, StoreError> {
        let deleted = on_db!(&self.inner.readers, pool => {
            sqlx::query("DELETE FROM checkpoints WHERE operation_id = $1")
                .bind(operation_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Deletes the checkpoints saved before `before`; returns how many.
    pub async fn delete_checkpoints_before(&self, before: Timestamp) -> Result<u64, StoreError> {
        let deleted = on_db!(&self.inner.readers, pool => {
            sqlx::query("DELETE FROM checkpoints WHERE created_at < $1")
                .bind(time::to_micros(&before))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted)
    }

    pub async fn checkpoint_stats(&self) -> Result<CheckpointStats, StoreError> {
        let (total, size, oldest): (i64, Option<i64>, Option<i64>) = on_db!(&self.inner.readers, pool => {
            sqlx::query_as(
                "SELECT COUNT(*), CAST(SUM(artifacts_size_bytes) AS BIGINT), MIN(created_at) FROM checkpoints",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(CheckpointStats {
            total: total.max(0) as u64,
            total_size_bytes: size.unwrap_or(0).max(0) as u64,
            oldest: oldest.map(time::from_micros),
        })
    }
}
