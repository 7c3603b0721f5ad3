//! `GET /metrics`: Prometheus text format — operations started and finished by type and status,
//! durations, cancel latency, active operations, host requests, errors and latency by host and
//! endpoint, stalled host calls, the IB gateway's state, IB pacing waits, store write latency. Every name starts with `ktrdr_ops_`.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::hosts::HostClient;
use crate::metrics::Exposition;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut e = Exposition::default();
    e.family("ktrdr_ops_build_info", "gauge", "The running version.");
    e.sample("ktrdr_ops_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);

    let figures = state.orchestrator.figures();
    e.family("ktrdr_ops_operations_started_total", "counter", "Operations started, by type.");
    for (kind, n) in &figures.started {
        e.sample("ktrdr_ops_operations_started_total", &[("type", kind)], *n as f64);
    }
    e.family("ktrdr_ops_operations_finished_total", "counter", "Operations finished, by type and final status.");
    for ((kind, status), n) in &figures.finished {
        e.sample("ktrdr_ops_operations_finished_total", &[("type", kind), ("status", status)], *n as f64);
    }
    e.family("ktrdr_ops_operation_duration_seconds", "histogram", "Start to end of finished operations, by type.");
    for (kind, h) in &figures.durations {
        e.histogram("ktrdr_ops_operation_duration_seconds", &[("type", kind)], h);
    }
    e.family("ktrdr_ops_cancel_latency_seconds", "histogram", "A cancel request until the work had stopped, by type.");
    for (kind, h) in &figures.cancel_latency {
        e.histogram("ktrdr_ops_cancel_latency_seconds", &[("type", kind)], h);
    }
    e.family("ktrdr_ops_operations_active", "gauge", "Operations pending or running on this replica, by type.");
    for (kind, n) in state.orchestrator.active_by_type() {
        e.sample("ktrdr_ops_operations_active", &[("type", &kind)], n as f64);
    }
    e.family("ktrdr_ops_operations_deleted_total", "counter", "Finished operations deleted by retention.");
    e.sample("ktrdr_ops_operations_deleted_total", &[], figures.swept as f64);
    e.family(
        "ktrdr_ops_takeovers_total",
        "counter",
        "Operations taken over from replicas that stopped, by what became of them.",
    );
    for (became, n) in &figures.taken_over {
        e.sample("ktrdr_ops_takeovers_total", &[("outcome", became)], *n as f64);
    }
    e.family("ktrdr_ops_handed_over_total", "counter", "Operations handed over to other replicas on stopping.");
    e.sample("ktrdr_ops_handed_over_total", &[], figures.handed_over as f64);
    e.family(
        "ktrdr_ops_remote_cancels_total",
        "counter",
        "Cancels of operations other replicas run, by who recorded the end (owner, or here after waiting in vain).",
    );
    for (recorded_by, n) in &figures.remote_cancels {
        e.sample("ktrdr_ops_remote_cancels_total", &[("recorded_by", recorded_by)], *n as f64);
    }

    let hosts: [&HostClient; 2] = [state.hosts.ib.host(), state.hosts.training.host()];
    e.family(
        "ktrdr_ops_host_stalls_total",
        "counter",
        "Host calls made for an operation that went without an answer for hosts.stall_notice, by host.",
    );
    for host in hosts {
        e.sample("ktrdr_ops_host_stalls_total", &[("host", host.name())], host.stalls() as f64);
    }
    // Left out while the IB host does not say (unreachable, or no /health/detailed).
    if let Some(connected) = state.hosts.ib.gateway(false).await.connected() {
        e.family(
            "ktrdr_ops_ib_gateway_connected",
            "gauge",
            "1 while the IB host reports its gateway (TWS / IB Gateway) connected, 0 while it reports it down.",
        );
        e.sample("ktrdr_ops_ib_gateway_connected", &[], f64::from(u8::from(connected)));
    }
    // One copy of each host's counters, read once for all four families.
    let stats: Vec<_> = hosts.iter().map(|host| (host.name(), host.stats())).collect();
    e.family("ktrdr_ops_host_requests_total", "counter", "Requests to host services, by host, method and endpoint.");
    for (host, endpoints) in &stats {
        for (method, endpoint, s) in endpoints {
            e.sample(
                "ktrdr_ops_host_requests_total",
                &[("host", *host), ("method", method), ("endpoint", endpoint)],
                s.requests as f64,
            );
        }
    }
    e.family("ktrdr_ops_host_request_errors_total", "counter", "Failed host requests, by host, endpoint and class.");
    for (host, endpoints) in &stats {
        for (method, endpoint, s) in endpoints {
            for (class, n) in &s.errors {
                let labels = [("host", *host), ("method", method.as_str()), ("endpoint", endpoint), ("class", class)];
                e.sample("ktrdr_ops_host_request_errors_total", &labels, *n as f64);
            }
        }
    }
    e.family("ktrdr_ops_host_request_retries_total", "counter", "Host requests repeated after a transient failure.");
    for (host, endpoints) in &stats {
        for (method, endpoint, s) in endpoints {
            e.sample(
                "ktrdr_ops_host_request_retries_total",
                &[("host", *host), ("method", method), ("endpoint", endpoint)],
                s.retries as f64,
            );
        }
    }
    e.family("ktrdr_ops_host_request_duration_seconds", "histogram", "Host request latency, by host and endpoint.");
    for (host, endpoints) in &stats {
        for (method, endpoint, s) in endpoints {
            e.histogram(
                "ktrdr_ops_host_request_duration_seconds",
                &[("host", *host), ("method", method), ("endpoint", endpoint)],
                &s.latency,
            );
        }
    }

    let (waits, waited) = state.hosts.ib.pacing().waits();
    e.family(
        "ktrdr_ops_ib_pacing_waits_total",
        "counter",
        "IB historical requests that waited for the pacing limiter.",
    );
    e.sample("ktrdr_ops_ib_pacing_waits_total", &[], waits as f64);
    e.family("ktrdr_ops_ib_pacing_wait_seconds_total", "counter", "Time spent waiting for the IB pacing limiter.");
    e.sample("ktrdr_ops_ib_pacing_wait_seconds_total", &[], waited.as_secs_f64());

    let writes = state.orchestrator.store().write_figures();
    e.family("ktrdr_ops_store_write_duration_seconds", "histogram", "Store write transactions (batches of writes).");
    e.histogram(
        "ktrdr_ops_store_write_duration_seconds",
        &[("backend", state.orchestrator.store().backend().as_str())],
        &writes.transactions,
    );
    e.family("ktrdr_ops_store_rows_written_total", "counter", "Operation rows written to the store.");
    e.sample("ktrdr_ops_store_rows_written_total", &[], writes.rows as f64);
    e.family("ktrdr_ops_store_write_failures_total", "counter", "Store write transactions that failed.");
    e.sample("ktrdr_ops_store_write_failures_total", &[], writes.failures as f64);

    ([(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], e.finish()).into_response()
}
