//! The worker registry (workers.md §1–2, §6): `POST /workers/register`, `GET /workers`,
//! `GET /workers/{id}` — bare records and arrays, as ktrdr answers them — and a worker's
//! `PATCH /operations/{id}/status` report, which never changes a terminal operation.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::ApiJson;
use crate::api::schemas::ErrorEnvelope;
use crate::fleet::{CompletedReport, Registration, WORKER_STATUSES, WorkerRecord, cap_worker_words, check_worker_type};
use crate::hosts::endpoints::{addresses_of, canonical};
use crate::hosts::workers::plain_id;
use crate::invalid::Invalid;
use crate::ops::store::Registered;
use crate::ops::{Snapshot, Status};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(report_status))
}

/// A worker's report on an operation's status (workers.md §6: sent on SIGTERM during a training).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
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

/// The worker an operation was dispatched to, as its record says (only operations that run on
/// registered workers name one: never a data load or a dummy).
fn dispatched_to(snapshot: &Snapshot) -> Option<&str> {
    snapshot.record.progress.context.get("worker_id").and_then(Value::as_str)
}

/// A worker reports an operation's status. Only on an operation dispatched to a registered
/// worker, and only from that worker's own address (403 otherwise). A terminal operation keeps
/// its status (200, unchanged: terminal is final); a running one reported `cancelled` is
/// cancelled here, with the worker's words as the reason. Other changes of a running operation
/// come from following it.
#[utoipa::path(patch, path = "/api/v1/operations/{id}/status", tag = "workers",
    params(("id" = String, Path, description = "Operation id")),
    request_body = StatusReport,
    responses(
        (status = 200, body = StatusReportAnswer),
        (status = 400, description = "Not a status name (`OPERATIONS-StatusUpdateError`), or unreadable JSON", body = ErrorEnvelope),
        (status = 401, description = "Neither the worker token nor a trusted network", body = ErrorEnvelope),
        (status = 403, description = "Not an operation of the worker at this address", body = ErrorEnvelope),
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
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(report): ApiJson<StatusReport>,
) -> Result<Json<StatusReportAnswer>, ApiError> {
    let Some(reported) = Status::parse(&report.status.to_ascii_lowercase()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "OPERATIONS-StatusUpdateError",
            format!("`{}` is not an operation status (pending, running, completed, failed, cancelled)", report.status),
        ));
    };
    if !plain_id(&id) {
        return Err(ApiError::operation_not_found(&id));
    }
    let snapshot = match state.orchestrator.get(&id).await? {
        Some(found) => found.snapshot(),
        None => return Err(ApiError::operation_not_found(&id)),
    };
    let forbidden = |why: String| ApiError::new(StatusCode::FORBIDDEN, "NOT_THIS_WORKERS_OPERATION", why);
    let Some(worker_id) = dispatched_to(&snapshot) else {
        return Err(forbidden(format!(
            "operation {id} does not run on a registered worker: no worker may report on it"
        )));
    };
    let worker = state.orchestrator.store().worker(worker_id).await?;
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let from_worker = match (&worker, peer) {
        (Some(worker), Some(peer)) => is_address_of(&worker.endpoint_url, peer).await,
        _ => false,
    };
    if !from_worker {
        return Err(forbidden(format!(
            "operation {id} was dispatched to worker {worker_id}: only that worker, from its own address, may report on it"
        )));
    }
    let current = snapshot.record.status;
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
    let reason = report.error_message.map_or_else(|| "Cancelled by its worker".to_owned(), |m| cap_worker_words(&m));
    let cancelled = state.orchestrator.cancel(&id, Some(reason)).await?;
    let new_status = cancelled.snapshot.record.status;
    Ok(Json(StatusReportAnswer { success: true, operation_id: id, previous_status: current, new_status }))
}

/// Whether `peer` is an address of the worker endpoint `endpoint` (a loopback peer is any
/// loopback address: a worker on this machine may connect from 127.0.0.1 and advertise a name
/// that resolves to 127.0.1.1).
async fn is_address_of(endpoint: &str, peer: IpAddr) -> bool {
    let peer = canonical(peer);
    let addresses = addresses_of(endpoint).await.unwrap_or_default();
    addresses.into_iter().map(canonical).any(|ip| ip == peer || (ip.is_loopback() && peer.is_loopback()))
}

/// A worker registers itself (again after a restart, or when told it is unknown). The answer is
/// its record, plus `stop_operations`: operations dispatched to it that are over here — it should
/// stop them; they are never reopened. What it says of operations that were not dispatched to it
/// is ignored.
#[utoipa::path(post, path = "/api/v1/workers/register", tag = "workers",
    request_body = Registration,
    responses(
        (status = 200, description = "The worker's record, and `stop_operations`", body = WorkerRecord),
        (status = 400, description = "Unreadable JSON", body = ErrorEnvelope),
        (status = 401, description = "Neither the worker token nor a trusted network", body = ErrorEnvelope),
        (status = 409, description = "A live worker holds this id at another endpoint, or this endpoint under another id", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "A missing, unknown or invalid field (named)", body = ErrorEnvelope),
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
    let endpoint = body.validate(&state.endpoint_policy)?;
    state
        .endpoint_policy
        .check_resolved(&endpoint)
        .await
        .map_err(|why| Invalid::new("endpoint_url", format!("endpoint_url must point where a worker may be: {why}")))?;
    let worker_id = body.worker_id.as_str();
    // What the worker names, against what we know — only operations dispatched to it: a terminal
    // one is never changed (the worker is told to stop it); a running one it still runs keeps it busy.
    let mut stop = Vec::new();
    let mut runs = None;
    if let Some(id) = body.current_operation_id.as_deref()
        && let Some(snapshot) = own_operation(&state, worker_id, id).await?
    {
        if snapshot.record.status.is_terminal() {
            stop.push(id.to_owned());
        } else {
            runs = Some(id);
        }
    }
    let capabilities = json!(body.capabilities.clone().unwrap_or_default());
    let store = state.orchestrator.store();
    let mut registered = store.register_worker(worker_id, &body.worker_type, &endpoint, &capabilities, runs).await?;
    // The claimant may be the worker itself, back at a new address (or a new id at its old
    // one) after a restart: when the holder does not answer now, it is gone and may be replaced.
    if let Registered::Conflict { worker_id: holder, endpoint_url } = &registered
        && state.fleet.gone(holder, endpoint_url).await?
    {
        registered = store.register_worker(worker_id, &body.worker_type, &endpoint, &capabilities, runs).await?;
    }
    let stored = match registered {
        Registered::Stored(stored) => *stored,
        Registered::Conflict { worker_id: holder, endpoint_url } => {
            let message = if holder == worker_id {
                format!(
                    "worker {holder} is registered at another endpoint ({endpoint_url}), which still answers: a live \
                     worker's id stays bound to its endpoint (use another id, or wait until it is temporarily_unavailable)"
                )
            } else {
                format!(
                    "{endpoint_url} is the endpoint of live worker {holder}, which still answers there: a live worker's \
                     endpoint stays bound to its id (register under that id, or wait until it is temporarily_unavailable)"
                )
            };
            return Err(ApiError::new(StatusCode::CONFLICT, "WORKER_CONFLICT", message));
        }
    };
    tracing::info!(worker_id, endpoint = %endpoint, current_operation_id = runs, "worker registered");
    for report in &body.completed_operations {
        if let Some(snapshot) = own_operation(&state, worker_id, &report.operation_id).await? {
            if snapshot.record.status.is_terminal() {
                stop.push(report.operation_id.clone());
            } else {
                finish_reported(&state, worker_id, report).await;
            }
        }
    }
    let mut answer = serde_json::to_value(WorkerRecord::from(stored)).expect("a worker record serialises");
    answer["stop_operations"] = json!(stop);
    Ok(Json(answer).into_response())
}

/// The operation `id` if it was dispatched to `worker_id`; anything else a worker names is not
/// its to report on (logged, ignored).
async fn own_operation(state: &AppState, worker_id: &str, id: &str) -> Result<Option<Arc<Snapshot>>, ApiError> {
    let Some(found) = state.orchestrator.get(id).await? else { return Ok(None) };
    let snapshot = found.snapshot();
    if dispatched_to(&snapshot) == Some(worker_id) {
        return Ok(Some(snapshot));
    }
    tracing::info!(worker_id, operation_id = id, "a worker named an operation not dispatched to it; ignored");
    Ok(None)
}

/// A worker says it finished an operation that is still running here: a cancel is applied here;
/// a completion or failure goes to the training following it, which ends with it.
async fn finish_reported(state: &AppState, worker_id: &str, report: &CompletedReport) {
    let id = report.operation_id.as_str();
    match report.status.as_str() {
        "CANCELLED" => {
            let reason = report
                .error_message
                .as_deref()
                .map_or_else(|| format!("Cancelled on worker {worker_id}"), cap_worker_words);
            if let Err(e) = state.orchestrator.cancel(id, Some(reason)).await {
                tracing::warn!(operation_id = id, error = %e, "could not apply a worker's cancel report");
            }
        }
        "COMPLETED" | "FAILED" => {
            let mut report = report.clone();
            report.error_message = report.error_message.as_deref().map(cap_worker_words);
            // Followed here, or by another replica, which takes it from the database.
            if let Some(pool) = &state.training.pool {
                pool.hand_over(id, report).await;
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
