//! The span of each request, for traces: a server span that continues the caller's trace
//! (`traceparent`), is named after its route template (`GET /api/v1/operations/{id}`) once
//! routed (`observe.rs`), and records the answer's status. The simulators' routers take it too,
//! so a trace runs on into them. With traces off the span is disabled before anything is built;
//! with traces on, its name and attributes are built only once the sampler has kept it.

use std::time::Duration;

use axum::http::{Method, Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;

use crate::telemetry::{self, SPANS};

/// The tower layer that gives each request its span.
pub type RequestSpans =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, fn(&Request<axum::body::Body>) -> Span, (), RecordStatus>;

pub fn layer() -> RequestSpans {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request<axum::body::Body>) -> Span)
        .on_request(())
        .on_response(RecordStatus)
}

fn request_span(request: &Request<axum::body::Body>) -> Span {
    let span = tracing::info_span!(
        target: SPANS,
        "request",
        otel.kind = "server",
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    telemetry::continue_trace(&span, request.headers());
    span
}

/// Names the current request's span after its route (`GET /api/v1/operations/{id}`), with the
/// method and route as attributes, when its trace is sampled. The sampler decides here, so a
/// request whose trace is not kept (99 % of them at 1 % sampling) costs its span and no more.
pub fn name_current(method: &Method, route: &str) {
    if !telemetry::exporting() {
        return;
    }
    if let Some(sampled) = telemetry::sampled(&Span::current()) {
        let otel = sampled.span();
        otel.update_name(format!("{method} {route}"));
        otel.set_attribute(KeyValue::new("http.request.method", method.as_str().to_owned()));
        otel.set_attribute(KeyValue::new("http.route", route.to_owned()));
    }
}

/// `router` traced as the service's own routes are: a request span, named by route.
pub fn traced(router: axum::Router) -> axum::Router {
    router.layer(super::observe::ObserveLayer::naming_only()).layer(layer())
}

/// Records the answer's status on the span (whatever the body).
#[derive(Clone, Copy)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, _latency: Duration, span: &Span) {
        if span.is_disabled() {
            return;
        }
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
}
