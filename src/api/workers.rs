//! The worker registry (workers.md §1–2, §6): `POST /workers/register`, `GET /workers`,
//! `GET /workers/{id}` — bare records and arrays, as ktrdr answers them — and a worker's
//! `PATCH /operations/{id}/status` report, which never changes a terminal operation.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::ApiJson;
use crate::api::schemas::ErrorEnvelope;
use crate::ops::Status;
use crate::workers::{CompletedReport, Registration, WORKER_STATUSES, WorkerRecord, check_worker_type};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(report_status))
}

/// A worker's report on an operation's status (workers.md §6: sent on SIGTERM during a training).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// `CANCELLED`, `FAILED`, … (any case).
    pub status: String,
    #[serde(default)]
    pub error_message: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusReportAnswer {
    pub success: bool,
    pub operation_id: String,
    pub previous_status: Status,
    pub new_status: Status,
}

/// A worker reports an operation's status. A terminal operation keeps its status (200, unchanged:
/// terminal is final); a running one reported `cancelled` is cancelled here, with the worker's
/// words as the reason. Other changes of a running operation come from following it.
#[utoipa::path(patch, path = "/api/v1/operations/{id}/status", tag = "workers",
    params(("id" = String, Path, description = "Operation id")),
    request_body = StatusReport,
    responses(
        (status = 200, body = StatusReportAnswer),
        (status = 400, description = "Not a status name (`OPERATIONS-StatusUpdateError`), or unreadable JSON", body = ErrorEnvelope),
        (status = 404, description = "No such operation", body = ErrorEnvelope),
        (status = 409, description = "A change a report cannot make to a running operation", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "A missing field", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn report_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<StatusReport>,
) -> Result<Json<StatusReportAnswer>, ApiError> {
    let Some(reported) = Status::parse(&report.status.to_ascii_lowercase()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "OPERATIONS-StatusUpdateError",
            format!("`{}` is not an operation status (pending, running, completed, failed, cancelled)", report.status),
        ));
    };
    let current = match state.orchestrator.get(&id).await? {
        Some(found) => found.snapshot().record.status,
        None => return Err(ApiError::operation_not_found(&id)),
    };
    let unchanged = |status| StatusReportAnswer {
        success: true,
        operation_id: id.clone(),
        previous_status: status,
        new_status: status,
    };
    if current.is_terminal() || reported == current {
        return Ok(Json(unchanged(current)));
    }
    if reported != Status::Cancelled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "OPERATION_STATUS_NOT_REPORTABLE",
            format!("operation {id} is {current}: a worker's report can only cancel it, not make it {reported}"),
        ));
    }
    let reason = report.error_message.unwrap_or_else(|| "Cancelled by its worker".to_owned());
    let cancelled = state.orchestrator.cancel(&id, Some(reason)).await?;
    let new_status = cancelled.snapshot.record.status;
    Ok(Json(StatusReportAnswer { success: true, operation_id: id, previous_status: current, new_status }))
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
    // What the worker names, against what we know: a terminal operation is never changed (the
    // worker is told to stop it); a running one it still runs keeps it busy.
    let mut stop = Vec::new();
    let mut runs = None;
    if let Some(id) = body.current_operation_id.as_deref() {
        match store.get(id).await? {
            Some(found) if found.is_terminal() => stop.push(id.to_owned()),
            Some(_) => runs = Some(id),
            None => {}
        }
    }
    let capabilities = json!(body.capabilities.clone().unwrap_or_default());
    let worker_id = body.worker_id.trim();
    let endpoint = body.endpoint_url.trim().trim_end_matches('/');
    let stored = store.register_worker(worker_id, &body.worker_type, endpoint, &capabilities, runs).await?;
    tracing::info!(worker_id, endpoint, current_operation_id = runs, "worker registered");
    for report in &body.completed_operations {
        match store.get(&report.operation_id).await? {
            Some(found) if found.is_terminal() => stop.push(report.operation_id.clone()),
            Some(_) => finish_reported(&state, worker_id, report).await,
            None => {}
        }
    }
    let mut answer = serde_json::to_value(WorkerRecord::from(stored)).expect("a worker record serialises");
    answer["stop_operations"] = json!(stop);
    Ok(Json(answer).into_response())
}

/// A worker says it finished an operation that is still running here: a cancel is applied here;
/// a completion or failure goes to the training following it, which ends with it.
async fn finish_reported(state: &AppState, worker_id: &str, report: &CompletedReport) {
    let id = report.operation_id.as_str();
    match report.status.as_str() {
        "CANCELLED" => {
            let reason = report.error_message.clone().unwrap_or_else(|| format!("Cancelled on worker {worker_id}"));
            if let Err(e) = state.orchestrator.cancel(id, Some(reason)).await {
                tracing::warn!(operation_id = id, error = %e, "could not apply a worker's cancel report");
            }
        }
        "COMPLETED" | "FAILED" => {
            let delivered = state.training.pool.as_ref().is_some_and(|pool| pool.deliver(id, report.clone()));
            if !delivered {
                // Followed by another replica, which hears the outcome from the worker itself.
                tracing::info!(operation_id = id, worker_id, "a worker's report about an operation followed elsewhere");
            }
        }
        // Still pending or running on the worker: following it says as much.
        _ => {}
    }
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
    if let Some(t) = &worker_type {
        check_worker_type(t)?;
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
