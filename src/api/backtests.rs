//! `/api/v1/backtests/start` (backtesting.md §1.1): ktrdr's request checked at the edge, the
//! backtest started through the orchestrator and answered at once in ktrdr's shape (no `data`
//! envelope) — the worker is found and followed in the background. Everything after the start
//! goes through the generic operations routes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::extract::ApiJson;
use crate::api::schemas::{BacktestStarted, ErrorEnvelope};
use crate::api::trainings::refuse_invalid_v3;
use crate::api::{AppState, idempotency_key, replayed};
use crate::backtest::{BacktestBody, BacktestSpec, Refusal};
use crate::ops::Submitted;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start))
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Invalid(e) => e.into(),
            Refusal::OutsideFolder(e) => {
                let field = e.field.clone();
                ApiError::new(StatusCode::BAD_REQUEST, e.code, e.message).details(json!({ "field": field }))
            }
            Refusal::StrategyNotFound(message) => ApiError::new(StatusCode::NOT_FOUND, "STRATEGY_NOT_FOUND", message)
                .details(json!({ "field": "strategy_name" })),
            Refusal::ModelNotFound(message) => ApiError::new(StatusCode::NOT_FOUND, "MODEL_NOT_FOUND", message)
                .details(json!({ "field": "model_path" })),
        }
    }
}

/// Starts a backtest of a trained model on a registered backtest worker.
#[utoipa::path(post, path = "/api/v1/backtests/start", tag = "backtests",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe start")),
    request_body = BacktestBody,
    responses(
        (status = 200, description = "Started: it waits `pending` for a free backtest worker, then runs", body = BacktestStarted),
        (status = 400, description = "Unreadable JSON, or a model or strategy path outside its folder", body = ErrorEnvelope),
        (status = 404, description = "No such strategy (STRATEGY_NOT_FOUND) or trained model (MODEL_NOT_FOUND)", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid request, or a v3 strategy that does not validate (STRATEGY_INVALID)", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]
async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BacktestBody>,
) -> Result<Response, ApiError> {
    let strategies = state.training.settings.strategies_dir.clone();
    let models = state.config.training.models_dir.clone();
    let checked = body.clone();
    // Reading the strategy file and the models folder is blocking I/O.
    let spec = tokio::task::spawn_blocking(move || BacktestSpec::from_body(&checked, &strategies, &models))
        .await
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error", &e))??;
    refuse_invalid_v3(&spec.strategy)?;
    let idempotency = idempotency_key(&headers, "POST /api/v1/backtests/start", &body)?;
    let request = spec.request;
    let (operation_id, replay) =
        match state.orchestrator.submit(state.backtests.job(request.clone()), &request, idempotency).await? {
            Submitted::Started(snapshot) => (snapshot.record.operation_id.clone(), false),
            Submitted::Existing(id) => (id, true),
        };
    let answer = Json(BacktestStarted {
        success: true,
        operation_id,
        status: "started".into(),
        message: format!("Backtest started for {} {}", request.symbol, request.timeframe),
        symbol: request.symbol,
        timeframe: request.timeframe,
        mode: "distributed".into(),
    });
    Ok(replayed(answer.into_response(), replay))
}
