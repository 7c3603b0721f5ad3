//! `/api/v1/trainings`: start a training (api.md §5) and read a completed one's performance
//! (api.md §6).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path};
use crate::api::schemas::{ErrorEnvelope, Performance, TrainingStarted};
use crate::api::{AppState, idempotency_key, replayed};
use crate::catalog::validate;
use crate::ops::{Status, Submitted};
use crate::training::strategy::Strategy;
use crate::training::{self, TrainingBody, TrainingSpec};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start)).routes(routes!(performance))
}

/// Starts a training of a strategy on the training host.
#[utoipa::path(post, path = "/api/v1/trainings/start", tag = "trainings",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe start")),
    request_body = TrainingBody,
    responses(
        (status = 200, body = TrainingStarted),
        (status = 400, description = "Unreadable JSON", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid request, or an unknown strategy (STRATEGY_NOT_FOUND)", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]
async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TrainingBody>,
) -> Result<Response, ApiError> {
    let dir = state.training.settings.strategies_dir.clone();
    let checked = body.clone();
    // Reading the strategy file is blocking I/O.
    let spec = tokio::task::spawn_blocking(move || TrainingSpec::from_body(&checked, &dir))
        .await
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error", &e))??;
    refuse_invalid_v3(&spec.strategy)?;
    let idempotency = idempotency_key(&headers, "POST /api/v1/trainings/start", &body)?;
    let (task_id, replay) =
        match state.orchestrator.submit(state.training.job(&spec), &spec.request, idempotency).await? {
            Submitted::Started(snapshot) => (snapshot.record.operation_id.clone(), false),
            Submitted::Existing(id) => (id, true),
        };
    let answer = Json(TrainingStarted {
        success: true,
        task_id,
        status: "training_started".into(),
        message: format!(
            "Training of {} started on {} [{}]",
            spec.strategy.name,
            spec.request.symbols.join(", "),
            spec.request.timeframes.join(", ")
        ),
        symbols: spec.request.symbols.clone(),
        timeframes: spec.request.timeframes.clone(),
        strategy_name: spec.strategy.name.clone(),
        estimated_duration_minutes: None,
    });
    Ok(replayed(answer.into_response(), replay))
}

/// A v3 strategy with validation errors would fail on the host after the data is read (and the
/// GPU allocated): refused here with the same issues as `POST /strategies/validate/{name}`.
/// Older strategy shapes pass — the sessions-generation hosts train them.
pub(crate) fn refuse_invalid_v3(strategy: &Strategy) -> Result<(), ApiError> {
    let value = &strategy.parsed;
    if !validate::looks_like_v3(value) {
        return Ok(());
    }
    let issues: Vec<_> = validate::validate(value).into_iter().filter(|i| i.is_error()).collect();
    if issues.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = issues.iter().map(|i| format!("  - {}", i.message)).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "STRATEGY_INVALID",
        format!("Strategy '{}' does not validate:\n{}", strategy.name, lines.join("\n")),
    )
    .details(json!({ "field": "strategy_name", "issues": issues })))
}

/// A completed training's metrics.
#[utoipa::path(get, path = "/api/v1/trainings/{id}/performance", tag = "trainings",
    params(("id" = String, Path, description = "The training's operation (task) id")),
    responses(
        (status = 200, body = Performance),
        (status = 400, description = "Not completed", body = ErrorEnvelope),
        (status = 404, description = "No such training", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn performance(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let lookup = state.orchestrator.get(&id).await?;
    let snapshot =
        lookup.map(|l| l.snapshot()).filter(|s| s.record.operation_type == training::OPERATION_TYPE).ok_or_else(
            || ApiError::operation_not_found(&id).details(json!({ "operation_id": id, "operation_type": "training" })),
        )?;
    let r = &snapshot.record;
    if r.status != Status::Completed {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "OPERATION_NOT_FINISHED",
            format!("Training {id} is {}; performance is available once it has completed", r.status),
        )
        .details(json!({ "operation_id": id, "status": r.status })));
    }
    let result = r.result_summary.clone().unwrap_or_else(|| json!({}));
    let field = |key: &str| result.get(key).cloned().filter(|v| !v.is_null()).unwrap_or_else(|| json!({}));
    let mut model_info = field("model_info");
    if let (Some(info), Some(path)) = (model_info.as_object_mut(), result.get("model_path")) {
        info.entry("model_path").or_insert(path.clone());
    }
    Ok(Json(Performance {
        success: true,
        task_id: id,
        status: r.status,
        training_metrics: field("training_metrics"),
        test_metrics: field("test_metrics"),
        model_info,
    })
    .into_response())
}
