//! `/api/v1/trainings`: start a training (api.md §5) and read a completed one's performance
//! (api.md §6).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path};
use crate::api::{AppState, idempotency_key, replayed};
use crate::ops::{OperationSpec, Status, Submitted};
use crate::training::{self, TrainingBody, TrainingSpec};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/trainings/start", post(start))
        .route("/api/v1/trainings/{id}/performance", get(performance))
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TrainingBody>,
) -> Result<Response, ApiError> {
    let dir = state.training.strategies_dir.clone();
    let checked = body.clone();
    // Reading the strategy file is blocking I/O.
    let spec = tokio::task::spawn_blocking(move || TrainingSpec::from_body(&checked, &dir))
        .await
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error", &e))??;
    let operation = OperationSpec {
        operation_type: training::OPERATION_TYPE,
        metadata: spec.metadata(),
        idempotency: idempotency_key(&headers, "POST /api/v1/trainings/start", &body)?,
    };
    let (task_id, replay) = match state.orchestrator.submit(operation, state.training.job(&spec)).await? {
        Submitted::Started(snapshot) => (snapshot.record.operation_id.clone(), false),
        Submitted::Existing(id) => (id, true),
    };
    let answer = Json(json!({
        "success": true,
        "task_id": task_id,
        "status": "training_started",
        "message": format!("Training of {} started on {} [{}]", spec.strategy.name, spec.symbols.join(", "), spec.timeframes.join(", ")),
        "symbols": spec.symbols,
        "timeframes": spec.timeframes,
        "strategy_name": spec.strategy.name,
        "estimated_duration_minutes": null,
    }));
    Ok(replayed(answer.into_response(), replay))
}

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
    Ok(Json(json!({
        "success": true,
        "task_id": id,
        "status": r.status,
        "training_metrics": field("training_metrics"),
        "test_metrics": field("test_metrics"),
        "model_info": model_info,
    }))
    .into_response())
}
