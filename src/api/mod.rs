//! The HTTP API (api.md): thin axum handlers that decode, call the core or a domain, and encode.
//! One file per resource, each owning its `router()` of annotated handlers, so the OpenAPI
//! document is assembled from the same routes the service serves. `error.rs` is the one error
//! envelope; `schemas.rs` the answer types. Auth, request timeouts, CORS, body limits and panic
//! catching are layers here; `server.rs` is the listener that serves it all.

pub mod auth;
mod backtests;
mod catalog;
mod checkpoints;
mod dashboard;
mod data;
mod dummy;
pub mod error;
mod extract;
mod health;
mod lineage;
pub mod openapi;
mod operations;
mod overview;
mod prometheus;
pub mod request_span;
pub mod schemas;
pub mod server;
mod sse;
mod trainings;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, OriginalUri, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::data::DataService;
use crate::hosts::Hosts;
use crate::metrics::Metrics;
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

impl AppState {
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

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let (routes, document) = routes(state.config.server.request_timeout.0);
    let json = serde_json::to_vec(&document).expect("the OpenAPI document serialises");
    let _ = state.openapi.set(bytes::Bytes::from(json));
    let config = state.config.clone();
    let durations = RequestDurations::new(state.orchestrator.metrics().clone());
    let mut router = routes
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // On every route (where the matched route is known) and the fallbacks.
        .layer(middleware::from_fn_with_state(durations, record_duration))
        .layer(DefaultBodyLimit::max(config.server.body_limit_bytes))
        .layer(axum::Extension(extract::BodyLimit(config.server.body_limit_bytes)));
    if let Some(credentials) = auth::Credentials::from_config(&config) {
        router = router.layer(auth::Authenticate::new(credentials));
    }
    if let Some(cors) = cors(&config.server.cors_origins) {
        router = router.layer(cors);
    }
    router
        // gzip for clients that ask (browsers, Prometheus): the dashboard page, lists, records,
        // /metrics. Event streams it leaves alone (its encoder would hold events back until its
        // buffer fills): they gzip themselves, event by event (sse.rs).
        .layer(CompressionLayer::new())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error").into_response()
        }))
        .layer(request_span::layer())
        .with_state(state)
}

/// Records how long each request took to answer (until its head: a stream's body goes on), by
/// method, matched route and status: in our histogram (seconds) and in ktrdr's (milliseconds).
async fn record_duration(State(durations): State<RequestDurations>, request: Request, next: Next) -> Response {
    let began = std::time::Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let took = began.elapsed().as_secs_f64();
    let (ours, ktrdrs) = durations.histograms(method, route, response.status());
    ours.record(took);
    ktrdrs.record(took * 1000.0);
    response
}

/// The request-duration histograms, by method, route and status. Registering a series with the
/// recorder allocates its labels and hashes them; this cache finds one by the route's identity
/// (axum shares one `MatchedPath` per route; the path is compared too, in case it does not) in a
/// few nanoseconds, so the hot GET path pays almost nothing for being measured.
#[derive(Clone)]
struct RequestDurations {
    metrics: Metrics,
    cache: Arc<parking_lot::RwLock<HashMap<RouteKey, (MatchedPath, RouteHistograms)>>>,
}

/// A route's histograms: ours, and the one ktrdr's dashboards query.
type RouteHistograms = (metrics::Histogram, metrics::Histogram);

/// The route's path address, the method and the status.
type RouteKey = (usize, Method, u16);

impl RequestDurations {
    /// Routes × methods × statuses seen: far below this; past it, nothing more is cached.
    const MAX_CACHED: usize = 4096;

    fn new(metrics: Metrics) -> Self {
        RequestDurations { metrics, cache: Default::default() }
    }

    fn histograms(&self, method: Method, route: Option<MatchedPath>, status: StatusCode) -> RouteHistograms {
        let path = route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let key = (path.as_ptr() as usize, method, status.as_u16());
        if let Some((cached, histograms)) = self.cache.read().get(&key)
            && cached.as_str() == path
        {
            return histograms.clone();
        }
        let (method, status) = (key.1.as_str(), status.as_str());
        let ours = [("method", method), ("route", path), ("status", status)];
        let ktrdrs = [("http_target", path), ("http_method", method), ("http_status_code", status)];
        let histograms = (
            self.metrics.histogram(crate::metrics::HTTP_REQUEST_DURATION, &ours),
            self.metrics.histogram(crate::metrics::HTTP_SERVER_DURATION, &ktrdrs),
        );
        if let Some(route) = route {
            let mut cache = self.cache.write();
            if cache.len() < Self::MAX_CACHED {
                cache.insert(key, (route, histograms.clone()));
            }
        }
        histograms
    }
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
