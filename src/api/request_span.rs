//! The span of each request, for traces: a server span named after its route template
//! (`GET /api/v1/operations/{id}`) that continues the caller's trace (`traceparent`) and records
//! the answer's status. The simulators' routers take it too, so a trace runs on into them. With
//! traces off the span is disabled before anything is built.

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

use crate::telemetry::{self, SPANS};

/// The tower layer that gives each request its span.
pub type RequestSpans = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<axum::body::Body>) -> Span,
    (),
    fn(&Response<axum::body::Body>, Duration, &Span),
>;

pub fn layer() -> RequestSpans {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request<axum::body::Body>) -> Span)
        .on_request(())
        .on_response(record_status as fn(&Response<axum::body::Body>, Duration, &Span))
}

fn request_span(request: &Request<axum::body::Body>) -> Span {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        target: SPANS,
        "request",
        otel.name = Empty,
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record("otel.name", format!("{} {route}", request.method()));
    telemetry::continue_trace(&span, request.headers());
    span
}

fn record_status(response: &Response<axum::body::Body>, _latency: Duration, span: &Span) {
    if span.is_disabled() {
        return;
    }
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}
