//! The worker registry (workers.md §1–2): `POST /workers/register`, `GET /workers`,
//! `GET /workers/{id}` — bare records and arrays, as ktrdr answers them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::ApiJson;
use crate::api::schemas::ErrorEnvelope;
use crate::workers::{Registration, WORKER_STATUSES, WORKER_TYPES, WorkerRecord};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(register)).routes(routes!(list)).routes(routes!(one))
}

/// A worker registers itself (again after a restart, or when told it is unknown). The answer is
/// its record, plus `stop_operations`: operations it named that are over here — it should stop
/// them; they are never reopened.
#[utoipa::path(post, path = "/api/v1/workers/register", tag = "workers",
    request_body = Registration,
    responses(
        (status = 200, description = "The worker's record, and `stop_operations`", body = WorkerRecord),
        (status = 400, description = "Unreadable JSON", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "A missing or invalid field (named)", body = ErrorEnvelope),
        (status = 503, description = "Shutting down: register again after the restart", body = ErrorEnvelope),
    ))]
async fn register(State(state): State<AppState>, ApiJson(body): ApiJson<Registration>) -> Result<Response, ApiError> {
    if !state.orchestrator.is_accepting() {
        let refused = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            "Backend is shutting down - retry after restart",
        );
        let mut response = refused.into_response();
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(response);
    }
    body.validate()?;
    let store = state.orchestrator.store();
    let capabilities = json!(body.capabilities.clone().unwrap_or_default());
    let stored = store
        .register_worker(
            body.worker_id.trim(),
            &body.worker_type,
            body.endpoint_url.trim().trim_end_matches('/'),
            &capabilities,
            body.current_operation_id.as_deref(),
        )
        .await?;
    let mut stop = Vec::new();
    for id in body.named_operations() {
        if store.get(id).await?.is_some_and(|s| s.is_terminal()) {
            stop.push(id.to_owned());
        }
    }
    let mut answer = serde_json::to_value(WorkerRecord::from(stored)).expect("a worker record serialises");
    answer["stop_operations"] = json!(stop);
    Ok(Json(answer).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `training`, `backtesting`, …
    worker_type: Option<String>,
    /// `available`, `busy` or `temporarily_unavailable` (another word lists none).
    status: Option<String>,
}

/// Registered workers, in registration order: a bare array.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", params(ListQuery), responses(
    (status = 200, body = Vec<WorkerRecord>),
    (status = 422, description = "Unknown worker_type", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<WorkerRecord>>, ApiError> {
    let worker_type = query.worker_type.filter(|t| !t.is_empty());
    if let Some(t) = &worker_type
        && !WORKER_TYPES.contains(&t.as_str())
    {
        return Err(ApiError::invalid(
            "worker_type",
            format!("worker_type `{t}` is not one of {}", WORKER_TYPES.join(", ")),
        ));
    }
    let status = query.status.filter(|s| !s.is_empty());
    if status.as_deref().is_some_and(|s| !WORKER_STATUSES.contains(&s)) {
        return Ok(Json(Vec::new()));
    }
    let workers = state.orchestrator.store().workers(worker_type.as_deref(), status.as_deref()).await?;
    Ok(Json(workers.into_iter().map(WorkerRecord::from).collect()))
}

/// One worker: a bare record.
#[utoipa::path(get, path = "/api/v1/workers/{id}", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 200, body = WorkerRecord),
        (status = 404, description = "Not registered (a worker registers again on this)", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<WorkerRecord>, ApiError> {
    match state.orchestrator.store().worker(&id).await? {
        Some(worker) => Ok(Json(worker.into())),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "WORKER_NOT_FOUND", format!("Worker not found: {id}"))),
    }
}
