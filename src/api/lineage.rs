//! Retry, resume and lineage (resume.md §2–4): `POST /operations/{id}/retry` and `/resume` start
//! a new operation linked to the ended one, `GET /operations/{id}/children` lists what continues
//! or repeats an operation. ktrdr's answer shapes and messages.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::operations::summary;
use crate::api::schemas::{ErrorEnvelope, OperationEnvelope, OperationList};
use crate::api::{AppState, idempotency_key, replayed};
use crate::ops::{ContinueError, Status, Submitted};
use crate::time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(resume)).routes(routes!(retry)).routes(routes!(children))
}

/// What a resume continues from.
#[derive(Serialize, ToSchema)]
pub struct ResumedFrom {
    /// The operation resumed (it stays as it ended).
    pub operation_id: String,
    /// `periodic`, `cancellation`, `failure` or `shutdown`.
    pub checkpoint_type: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The last finished epoch, for trainings; null otherwise.
    pub epoch: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ResumeData {
    /// The new operation that continues the old one: follow this id.
    pub operation_id: String,
    /// `resuming`: accepted (the new operation's own status is in its record).
    pub status: String,
    pub resumed_from: ResumedFrom,
}

#[derive(Serialize, ToSchema)]
pub struct ResumeAnswer {
    pub success: bool,
    pub data: ResumeData,
}

/// The Python enum text ktrdr's messages carry (`OperationStatus.COMPLETED`).
fn python_status(status: Status) -> String {
    format!("OperationStatus.{}", status.as_str().to_ascii_uppercase())
}

fn continuation_error(e: ContinueError, retrying: bool) -> ApiError {
    let conflict = |code, message: String| ApiError::new(StatusCode::CONFLICT, code, message);
    match e {
        ContinueError::NotFound(id) => ApiError::operation_not_found(&id),
        ContinueError::NotEnded { id, status } if retrying => ApiError::new(
            StatusCode::BAD_REQUEST,
            "OPERATION_NOT_RETRYABLE",
            format!("Operation {id} cannot be retried (status: {})", python_status(status)),
        ),
        ContinueError::Completed(id) if retrying => ApiError::new(
            StatusCode::BAD_REQUEST,
            "OPERATION_NOT_RETRYABLE",
            format!("Operation {id} cannot be retried (status: {})", python_status(Status::Completed)),
        ),
        ContinueError::NotEnded { id, status: Status::Pending } => {
            conflict("OPERATION_NOT_RESUMABLE", format!("Cannot resume operation {id} from status pending"))
        }
        e @ (ContinueError::NotEnded { .. } | ContinueError::Completed(_)) => {
            conflict("OPERATION_NOT_RESUMABLE", e.to_string())
        }
        ContinueError::NoCheckpoint(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "CHECKPOINT_NOT_FOUND",
            format!("No checkpoint available for operation {id}: retry it to start it again from the beginning"),
        )
        .details(json!({ "operation_id": id })),
        ContinueError::AlreadyResumed { resumed, continuation } => ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_RESUMED",
            format!("Operation {resumed} was already resumed by {continuation}"),
        )
        .details(json!({ "operation_id": resumed, "continued_by": continuation })),
        ContinueError::Refused(message) => conflict(if retrying { "CANNOT_RETRY" } else { "CANNOT_RESUME" }, message),
        ContinueError::Submit(e) => e.into(),
        ContinueError::Store(e) => e.into(),
    }
}

/// Continues a `cancelled` or `failed` operation from its checkpoint under a **new** operation
/// (`data.operation_id`), which names the old one in `parent_operation_id`. The old one stays as
/// it ended. Once per operation.
#[utoipa::path(post, path = "/api/v1/operations/{id}/resume", tag = "operations",
    params(("id" = String, Path, description = "The operation to continue")),
    responses(
        (status = 200, body = ResumeAnswer),
        (status = 404, description = "No such operation, or it saved no checkpoint", body = ErrorEnvelope),
        (status = 409, description = "Pending, running, completed, already resumed, or its type or host cannot resume", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]
async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ResumeAnswer>, ApiError> {
    let resumed = state.orchestrator.resume(&id).await.map_err(|e| continuation_error(e, false))?;
    let checkpoint = resumed.checkpoint.as_ref();
    Ok(Json(ResumeAnswer {
        success: true,
        data: ResumeData {
            operation_id: resumed.snapshot.record.operation_id.clone(),
            status: "resuming".into(),
            resumed_from: ResumedFrom {
                operation_id: id,
                checkpoint_type: checkpoint.map_or("periodic", |c| c.kind.as_str()).into(),
                created_at: time::format(&checkpoint.map_or_else(time::now, |c| c.created_at)),
                epoch: checkpoint.and_then(|c| c.state.get("epoch")).and_then(|e| e.as_u64()),
            },
        },
    }))
}

/// Starts a `failed` or `cancelled` operation's work again from scratch under a new operation
/// (the answer's record), which names the old one in `parent_operation_id`.
#[utoipa::path(post, path = "/api/v1/operations/{id}/retry", tag = "operations",
    params(
        ("id" = String, Path, description = "The operation to start again"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe: the same key returns the operation it started"),
    ),
    responses(
        (status = 200, description = "The new operation (`Idempotent-Replayed: true` when the key had started it)", body = OperationEnvelope),
        (status = 400, description = "Not failed or cancelled", body = ErrorEnvelope),
        (status = 404, description = "No such operation", body = ErrorEnvelope),
        (status = 409, description = "Its type cannot start again (e.g. the strategy no longer validates)", body = ErrorEnvelope),
        (status = 422, description = "An invalid Idempotency-Key, or one already used to retry another operation", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]
async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers, "POST /operations/retry", &id)?;
    let submitted = state.orchestrator.retry(&id, key).await.map_err(|e| continuation_error(e, true))?;
    let (snapshot, replay) = match submitted {
        Submitted::Started(snapshot) => (snapshot, false),
        Submitted::Existing(started) => match state.orchestrator.get(&started).await? {
            Some(found) => (found.snapshot(), true),
            None => return Err(ApiError::operation_not_found(&started)),
        },
    };
    let answer = Json(OperationEnvelope { success: true, data: snapshot.record.clone() }).into_response();
    Ok(replayed(answer, replay))
}

/// The operations that continue (resume) or repeat (retry) this one, oldest first.
#[utoipa::path(get, path = "/api/v1/operations/{id}/children", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 200, body = OperationList),
        (status = 404, description = "No such operation", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn children(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<OperationList>, ApiError> {
    let children = state.orchestrator.children(&id).await?.ok_or_else(|| ApiError::operation_not_found(&id))?;
    let active_count = children.iter().filter(|c| !c.is_terminal()).count() as u64;
    let data: Vec<_> = children.iter().map(|c| summary(c, state.orchestrator.labels(&c.record))).collect();
    Ok(Json(OperationList { success: true, total_count: data.len() as u64, data, active_count }))
}
