//! `POST /api/v1/dummy/start`: the reference operation (api.md §5).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::api::error::ApiError;
use crate::api::extract::OptionalJson;
use crate::api::{AppState, idempotency_key, replayed};
use crate::dummy::{self, DummyJob, DummyParams};
use crate::ops::{BoxedJob, OperationSpec, Submitted};

const PATH: &str = "/api/v1/dummy/start";

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/dummy/start", post(start))
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    OptionalJson(params): OptionalJson<DummyParams>,
) -> Result<Response, ApiError> {
    let params = params.unwrap_or_default();
    params.validate()?;
    let spec = OperationSpec {
        operation_type: dummy::OPERATION_TYPE,
        metadata: params.metadata(),
        idempotency: idempotency_key(&headers, PATH, &params)?,
    };
    let submitted = state.orchestrator.submit(spec, BoxedJob::new(DummyJob { params })).await?;
    let (operation_id, replay) = match submitted {
        Submitted::Started(snapshot) => (snapshot.record.operation_id.clone(), false),
        Submitted::Existing(id) => (id, true),
    };
    let body = Json(json!({
        "success": true,
        "data": { "operation_id": operation_id, "status": "started", "message": "Started dummy_task operation" },
        "error": null,
    }));
    Ok(replayed(body.into_response(), replay))
}
