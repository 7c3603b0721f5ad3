//! The HTTP API (api.md): thin axum handlers that decode, call the core or a domain, and encode.
//! One file per resource, each owning its `router()` of annotated handlers, so the OpenAPI
//! document is assembled from the same routes the service serves. `error.rs` is the one error
//! envelope; `schemas.rs` the answer types. Auth, request timeouts, CORS, body limits and panic
//! catching are layers here; `server.rs` is the listener that serves it all.

pub mod auth;
mod backtests;
mod catalog;
mod checkpoints;
mod compression;
mod dashboard;
mod data;
mod dummy;
pub mod error;
mod extract;
mod health;
mod hot_path;
mod lineage;
mod observe;
pub mod openapi;
mod operations;
mod overview;
mod panics;
mod prometheus;
pub mod request_span;
pub mod schemas;
pub mod server;
mod sse;
mod trainings;
mod workers;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::data::DataService;
use crate::hosts::Hosts;
use crate::ops::{IdempotencyKey, Orchestrator};
use crate::training::TrainingService;
use error::ApiError;

/// What every handler can reach. axum clones the state for every request (more than once:
/// the router, each layer with state, each `State` extractor), so it is one `Arc`: a clone is
/// one reference count, not one per handle inside (which cost ~15 % of a `GET /operations/{id}`).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The service's parts, shared by every request.
pub struct Services {
    pub orchestrator: Orchestrator,
    pub hosts: Hosts,
    pub data: DataService,
    pub training: TrainingService,
    pub backtests: crate::backtest::BacktestService,
    pub catalog: Catalog,
    pub config: Arc<Config>,
    /// The worker registry and its health checks.
    pub fleet: crate::fleet::Fleet,
    /// Event streams and long-polls open at once (`server.max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Where registered workers may point.
    pub endpoint_policy: Arc<crate::hosts::endpoints::EndpointPolicy>,
    /// The OpenAPI document, serialised once.
    pub openapi: openapi::Document,
}

impl Services {
    /// A place for one more event stream or long-poll, held while it lasts; 503 with
    /// `Retry-After` when `server.max_streams` are open.
    pub fn stream_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOO_MANY_STREAMS",
                format!(
                    "{} event streams and long-polls are open (server.max_streams); try again shortly",
                    self.config.server.max_streams
                ),
            )
            .retry_after(2)
        })
    }
}

/// Every documented route: the service's API and the OpenAPI document describing it. Handlers
/// that call hosts, the store or the disk get `request_timeout`; the operations routes are memory
/// reads, long-polls, streams or a cancel bounded by its own grace period.
pub fn routes(request_timeout: Duration) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let timed = |router: OpenApiRouter<AppState>| {
        router.route_layer(middleware::from_fn_with_state(request_timeout, time_limit))
    };
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(operations::router())
        .merge(lineage::router())
        .merge(overview::router())
        .merge(timed(checkpoints::router()))
        .merge(timed(workers::router()))
        .merge(timed(data::router()))
        .merge(timed(trainings::router()))
        .merge(timed(backtests::router()))
        .merge(timed(catalog::router()))
        .merge(timed(dummy::router()))
        .merge(timed(health::router()))
        .merge(prometheus::router())
        .merge(openapi::router())
        .merge(dashboard::router())
        .split_for_parts()
}

/// The whole HTTP surface, as the one service the listener calls. Only `observe` wraps each
/// route (it needs the matched route); the other layers wrap the router once, as one stack of
/// plain types: a per-route layer is cloned and boxed again at every request, which made the
/// layers cost a third of a `GET /operations/{id}`.
pub fn router(
    state: AppState,
) -> impl tower::Service<Request, Response = Response, Error = Infallible, Future = impl Send + 'static>
+ Clone
+ Send
+ 'static {
    let (routes, document) = routes(state.config.server.request_timeout.0);
    let json = serde_json::to_vec(&document).expect("the OpenAPI document serialises");
    let _ = state.openapi.set(bytes::Bytes::from(json));
    let config = state.config.clone();
    let observe = observe::ObserveLayer::new(state.orchestrator.metrics().clone());
    let hot_path = hot_path::HotPath::new(&state, &observe);
    let routed = routes
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // On every route and the fallbacks.
        .layer(observe)
        .with_state(state);
    tower::ServiceBuilder::new()
        .layer(request_span::RequestSpans)
        .layer(panics::CatchPanics)
        // gzip for clients that ask (browsers, Prometheus): the dashboard page, lists, records,
        // /metrics. Event streams it leaves alone (its encoder would hold events back until its
        // buffer fills): they gzip themselves, event by event (sse.rs).
        .layer(compression::CompressWhenAsked)
        .option_layer(cors(&config.server.cors_origins))
        .option_layer(auth::Credentials::from_config(&config).map(auth::Authenticate::new))
        .layer(hot_path)
        .layer(axum::Extension(extract::BodyLimit(config.server.body_limit_bytes)))
        .layer(DefaultBodyLimit::max(config.server.body_limit_bytes))
        .service(routed)
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("idempotency-key"),
                axum::http::HeaderName::from_static("last-event-id"),
                axum::http::header::IF_NONE_MATCH,
            ])
            .expose_headers([axum::http::header::ETAG, axum::http::HeaderName::from_static("idempotent-replayed")]),
    )
}

/// `server.request_timeout` for the handlers it is layered on.
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REQUEST_TIMEOUT",
            format!("The request took longer than {} s; try again", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

async fn not_found(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("No such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
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
