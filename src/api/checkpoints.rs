//! The checkpoint endpoints (resume.md §5): what each ended operation saved that a resume
//! continues from — listed, summarised, shown, deleted, and cleaned up by age. ktrdr's shapes.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::schemas::ErrorEnvelope;
use crate::ops::Checkpoint;
use crate::time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stats))
        .routes(routes!(cleanup))
        .routes(routes!(show, delete))
}

/// One checkpoint in a list.
#[derive(Serialize, ToSchema)]
pub struct CheckpointItem {
    pub operation_id: String,
    /// `periodic`, `cancellation`, `failure` or `shutdown`.
    pub checkpoint_type: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The whole saved state.
    #[schema(value_type = Object)]
    pub state_summary: Value,
    pub artifacts_size_bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointList {
    pub success: bool,
    pub data: Vec<CheckpointItem>,
    pub total_count: u64,
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointDetail {
    pub operation_id: String,
    pub checkpoint_type: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(value_type = Object)]
    pub state: Value,
    pub artifacts_path: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointAnswer {
    pub success: bool,
    pub data: CheckpointDetail,
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointStatsAnswer {
    pub success: bool,
    pub total_checkpoints: u64,
    pub total_size_bytes: u64,
    #[schema(format = DateTime)]
    pub oldest_checkpoint: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CleanupAnswer {
    pub success: bool,
    pub checkpoints_deleted: u64,
    /// Artifact folders without a checkpoint: this service keeps none, so always 0.
    pub orphan_artifacts_cleaned: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedAnswer {
    pub success: bool,
    pub message: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only checkpoints saved more than this many days ago.
    older_than_days: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CleanupQuery {
    /// Delete checkpoints saved more than this many days ago (≥ 1; default 30).
    max_age_days: Option<String>,
}

/// A whole number of days, at least `min`.
fn days(field: &str, text: Option<&str>, default: u32, min: u32) -> Result<u32, ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(default) };
    match text.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(ApiError::invalid(field, format!("{field} must be a whole number of days ≥ {min}, not `{text}`"))),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "CHECKPOINT_NOT_FOUND", format!("Checkpoint not found: {id}"))
}

fn item(c: Checkpoint) -> CheckpointItem {
    CheckpointItem {
        operation_id: c.operation_id,
        checkpoint_type: c.kind.as_str().into(),
        created_at: time::format(&c.created_at),
        state_summary: c.state,
        artifacts_size_bytes: c.artifacts_size_bytes,
    }
}

/// Every checkpoint, newest first.
#[utoipa::path(get, path = "/api/v1/checkpoints", tag = "checkpoints", params(ListQuery), responses(
    (status = 200, body = CheckpointList),
    (status = 422, description = "older_than_days is not a whole number", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<Json<CheckpointList>, ApiError> {
    let older = days("older_than_days", query.older_than_days.as_deref(), 0, 0)?;
    let before = (older > 0).then(|| time::now() - chrono::Duration::days(i64::from(older)));
    let data: Vec<_> = state.orchestrator.store().checkpoints(before).await?.into_iter().map(item).collect();
    Ok(Json(CheckpointList { success: true, total_count: data.len() as u64, data }))
}

/// How many checkpoints, their artifacts' size and the oldest.
#[utoipa::path(get, path = "/api/v1/checkpoints/stats", tag = "checkpoints", responses(
    (status = 200, body = CheckpointStatsAnswer),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn stats(State(state): State<AppState>) -> Result<Json<CheckpointStatsAnswer>, ApiError> {
    let stats = state.orchestrator.store().checkpoint_stats().await?;
    Ok(Json(CheckpointStatsAnswer {
        success: true,
        total_checkpoints: stats.total,
        total_size_bytes: stats.total_size_bytes,
        oldest_checkpoint: stats.oldest.as_ref().map(time::format),
    }))
}

/// Deletes checkpoints older than `max_age_days`.
#[utoipa::path(post, path = "/api/v1/checkpoints/cleanup", tag = "checkpoints", params(CleanupQuery), responses(
    (status = 200, body = CleanupAnswer),
    (status = 422, description = "max_age_days is not a whole number ≥ 1", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn cleanup(
    State(state): State<AppState>,
    Query(query): Query<CleanupQuery>,
) -> Result<Json<CleanupAnswer>, ApiError> {
    let max_age = days("max_age_days", query.max_age_days.as_deref(), 30, 1)?;
    let before = time::now() - chrono::Duration::days(i64::from(max_age));
    let deleted = state.orchestrator.store().delete_checkpoints_before(before).await?;
    Ok(Json(CleanupAnswer { success: true, checkpoints_deleted: deleted, orphan_artifacts_cleaned: 0 }))
}

/// One operation's checkpoint.
#[utoipa::path(get, path = "/api/v1/checkpoints/{operation_id}", tag = "checkpoints",
    params(("operation_id" = String, Path, description = "The operation that saved it")),
    responses(
        (status = 200, body = CheckpointAnswer),
        (status = 404, description = "No checkpoint", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<CheckpointAnswer>, ApiError> {
    let c = state.orchestrator.store().checkpoint(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(CheckpointAnswer {
        success: true,
        data: CheckpointDetail {
            operation_id: c.operation_id,
            checkpoint_type: c.kind.as_str().into(),
            created_at: time::format(&c.created_at),
            state: c.state,
            artifacts_path: c.artifacts_path,
        },
    }))
}

/// Deletes one operation's checkpoint (it can no longer be resumed).
#[utoipa::path(delete, path = "/api/v1/checkpoints/{operation_id}", tag = "checkpoints",
    params(("operation_id" = String, Path, description = "The operation that saved it")),
    responses(
        (status = 200, body = DeletedAnswer),
        (status = 404, description = "No checkpoint", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<DeletedAnswer>, ApiError> {
    if !state.orchestrator.store().delete_checkpoint(&id).await? {
        return Err(not_found(&id));
    }
    Ok(Json(DeletedAnswer { success: true, message: "Checkpoint deleted".into() }))
}
