//! The HTTP API (api.md): thin axum handlers that decode, call the core or a domain, and encode.
//! One file per resource, each owning its `router()`; `error.rs` is the one error envelope.

mod data;
mod dummy;
pub mod error;
mod extract;
mod health;
mod operations;
mod trainings;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::data::DataService;
use crate::hosts::Hosts;
use crate::ops::{IdempotencyKey, Orchestrator};
use crate::training::TrainingService;
use error::ApiError;

/// What every handler can reach: cheap-clone handles only.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Orchestrator,
    pub hosts: Hosts,
    pub data: DataService,
    pub training: TrainingService,
    pub config: Arc<Config>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    // Full paths rather than `nest`: one routing step less on every request.
    Router::new()
        .merge(operations::router())
        .merge(data::router())
        .merge(trainings::router())
        .merge(dummy::router())
        .merge(health::router())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error").into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &Request<_>| tracing::info_span!("request", method = %req.method(), path = %req.uri().path()),
        ))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("No such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Reads `Idempotency-Key`: 1–255 visible ASCII characters. The fingerprint is the request as
/// parsed, so that a retry with the same body matches and a different body is refused.
pub(crate) fn idempotency_key(
    headers: &HeaderMap,
    scope: &str,
    request: &impl Serialize,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })?;
    Ok(Some(IdempotencyKey {
        scope: scope.to_owned(),
        key: key.to_owned(),
        fingerprint: serde_json::to_string(request).expect("requests serialise"),
    }))
}

/// Marks the answer to a retried start that returned the earlier operation.
pub(crate) fn replayed(mut response: Response, replay: bool) -> Response {
    if replay {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}
