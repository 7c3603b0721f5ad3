//! The span of each request, for traces: a server span that continues the caller's trace
//! (`traceparent`), is named after its route template (`GET /api/v1/operations/{id}`) once
//! routed (`observe.rs`), and records the answer's status. The simulators' routers take it too,
//! so a trace runs on into them. The trace is sampled at the head, before any span exists:
//! with traces off, or for a request whose trace is not kept (99 % of them at 1 % sampling),
//! no span is made at all.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures_util::future::Either;
use opentelemetry::KeyValue;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::TraceContextExt;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::{self, Head, SPANS};

/// The tower layer that gives each request its span, when its trace is kept.
#[derive(Clone, Copy, Default)]
pub struct RequestSpans;

impl<S> Layer<S> for RequestSpans {
    type Service = Spanned<S>;

    fn layer(&self, inner: S) -> Spanned<S> {
        Spanned { inner }
    }
}

#[derive(Clone)]
pub struct Spanned<S> {
    inner: S,
}

/// Untraced, not kept (run in its unsampled context), or kept (in its span).
type SpannedFuture<F> =
    Either<Either<F, WithContext<F>>, Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>>;

impl<S> Service<Request> for Spanned<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = SpannedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match telemetry::head(request.headers()) {
            Head::Off => Either::Left(Either::Left(self.inner.call(request))),
            Head::Dropped(context) => {
                let answer = {
                    let _current = context.clone().attach();
                    self.inner.call(request)
                };
                Either::Left(Either::Right(answer.with_context(context)))
            }
            Head::Kept(parent) => {
                let span = tracing::info_span!(
                    target: SPANS,
                    "request",
                    otel.kind = "server",
                    http.response.status_code = Empty,
                    otel.status_code = Empty,
                );
                let _ = span.set_parent(parent);
                request.extensions_mut().insert(KeptSpan(span.clone()));
                let answer = span.in_scope(|| self.inner.call(request));
                Either::Right(Box::pin(async move {
                    let answer = answer.instrument(span.clone()).await;
                    if let Ok(response) = &answer {
                        record_status(&span, response);
                    }
                    answer
                }))
            }
        }
    }
}

/// Records the answer's status on the span (whatever the body).
fn record_status(span: &Span, response: &Response) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of a request whose trace is kept, carried by the request, so that the layers
/// below find it without asking the subscriber for the current span (which every request would
/// pay for, kept or not).
#[derive(Clone)]
struct KeptSpan(Span);

/// Names `request`'s span after its route (`GET /api/v1/operations/{id}`), with the method and
/// route as attributes, when its trace is kept.
pub fn name_span(request: &Request, route: &str) {
    let Some(KeptSpan(span)) = request.extensions().get::<KeptSpan>() else {
        return;
    };
    if let Some(sampled) = telemetry::sampled(span) {
        let method = request.method();
        let otel = sampled.span();
        otel.update_name(format!("{method} {route}"));
        otel.set_attribute(KeyValue::new("http.request.method", method.as_str().to_owned()));
        otel.set_attribute(KeyValue::new("http.route", route.to_owned()));
    }
}

/// `router` traced as the service's own routes are: a request span, named by route.
pub fn traced(router: axum::Router) -> axum::Router {
    router.layer(super::observe::ObserveLayer::naming_only()).layer(RequestSpans)
}
