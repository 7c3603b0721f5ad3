//! `GET /metrics`: Prometheus text format — operations started and finished by type and status,
//! durations, cancel latency, active operations, host requests, errors and latency by host and
//! endpoint, stalled host calls, the IB gateway's state, IB pacing waits, store write latency,
//! HTTP request latency by route — and the names ktrdr's Grafana dashboards query. Recorded
//! through the `metrics` facade (see `crate::metrics`); the states (active operations, gateway,
//! pacing totals, workers) are read when scraped.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.orchestrator.metrics();
    // What is a state rather than an event is read now.
    let active = state.orchestrator.active_by_type();
    for kind in state.orchestrator.operation_types() {
        let n = active.get(kind).copied().unwrap_or(0);
        metrics.gauge(crate::metrics::OPERATIONS_ACTIVE, &[("type", kind)]).set(n as f64);
    }
    // Left out while the IB host does not say (unreachable, or no /health/detailed).
    if let Some(connected) = state.hosts.ib.gateway(false).await.connected() {
        metrics.gauge(crate::metrics::IB_GATEWAY_CONNECTED, &[]).set(f64::from(u8::from(connected)));
    }
    // The limiter keeps its own totals (the simulator's limiter has no service to report to).
    let (waits, waited) = state.hosts.ib.pacing().waits();
    metrics.counter(crate::metrics::IB_PACING_WAITS, &[]).absolute(waits);
    metrics.gauge(crate::metrics::IB_PACING_WAIT_SECONDS, &[]).set(waited.as_secs_f64());
    // The fleet, by type and status (every status of a type present, zero included).
    if let Ok(workers) = state.orchestrator.store().workers(None, None).await {
        let mut counts = std::collections::BTreeMap::<(&str, &str), u64>::new();
        for w in &workers {
            for status in crate::fleet::WORKER_STATUSES {
                counts.entry((w.worker_type.as_str(), status)).or_default();
            }
            *counts.entry((w.worker_type.as_str(), w.status.as_str())).or_default() += 1;
        }
        for ((kind, status), n) in counts {
            metrics.gauge(crate::metrics::WORKERS, &[("type", kind), ("status", status)]).set(n as f64);
            if status == "available" {
                metrics.gauge(crate::metrics::KTRDR_WORKERS_AVAILABLE, &[("worker_type", kind)]).set(n as f64);
            }
        }
        metrics.gauge(crate::metrics::KTRDR_WORKERS_REGISTERED, &[]).set(workers.len() as f64);
    }
    // Rendering reads /proc and formats every series: off the async threads.
    let metrics = metrics.clone();
    let Ok(text) = tokio::task::spawn_blocking(move || metrics.render()).await else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    ([(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], text).into_response()
}
