//! `POST /api/v1/dummy/start`: the reference operation (api.md §5).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::extract::OptionalJson;
use crate::api::schemas::{ErrorEnvelope, Started, StartedData};
use crate::api::{AppState, idempotency_key, replayed};
use crate::dummy::{DummyJob, DummyParams, DummyRequest};
use crate::ops::Submitted;

const PATH: &str = "/api/v1/dummy/start";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start))
}

/// Starts the reference operation: `iterations` steps of `interval_ms`.
#[utoipa::path(post, path = "/api/v1/dummy/start", tag = "operations",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe start: the same key returns the same operation")),
    request_body(content = Option<DummyParams>, content_type = "application/json"),
    responses(
        (status = 200, body = Started),
        (status = 400, description = "Unreadable JSON", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid parameters", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    OptionalJson(params): OptionalJson<DummyParams>,
) -> Result<Response, ApiError> {
    let params = params.unwrap_or_default();
    params.validate()?;
    let idempotency = idempotency_key(&headers, PATH, &params)?;
    let request = DummyRequest { parameters: params.clone() };
    let submitted = state.orchestrator.submit(DummyJob { params }, &request, idempotency).await?;
    let (operation_id, replay) = match submitted {
        Submitted::Started(snapshot) => (snapshot.record.operation_id.clone(), false),
        Submitted::Existing(id) => (id, true),
    };
    let body = Json(Started {
        success: true,
        data: StartedData { operation_id, status: "started".into(), message: "Started dummy_task operation".into() },
        error: None,
    });
    Ok(replayed(body.into_response(), replay))
}
