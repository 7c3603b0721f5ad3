//! What is known of a request only once it is routed: its route template. One small layer on
//! every route (and the fallbacks) records the request's duration by method, route and status
//! — in our histogram (seconds) and in ktrdr's (milliseconds) — and names the request's span after
//! the route when its trace is sampled. It is the only per-route layer on the hot path (axum
//! clones and boxes each per-route layer at every request; the rest wrap the router once).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// The layer; `durations` absent where nothing is measured (the simulators).
#[derive(Clone)]
pub struct ObserveLayer {
    durations: Option<RequestDurations>,
}

impl ObserveLayer {
    /// Measures into `metrics` and names spans.
    pub fn new(metrics: Metrics) -> Self {
        ObserveLayer { durations: Some(RequestDurations::new(metrics)) }
    }

    /// Names spans only.
    pub fn naming_only() -> Self {
        ObserveLayer { durations: None }
    }

    /// `template`, answered outside the router: measured into the same histograms as the routed
    /// requests, with a slot of its own for its usual answer.
    pub fn known_route(&self, template: &'static str) -> KnownRoute {
        KnownRoute { durations: self.route_durations(), template }
    }

    /// A new route's measuring, for as long as the process lives (a reference that needs no
    /// counting, at every request, by every thread; a few dozen small allocations per router).
    fn route_durations(&self) -> Option<&'static RouteDurations> {
        self.durations
            .clone()
            .map(|durations| &*Box::leak(Box::new(RouteDurations { durations, usual: OnceLock::new() })))
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    /// Called once per route and method, when the router is built: each gets its own slot for
    /// its usual answer.
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, durations: self.route_durations() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    durations: Option<&'static RouteDurations>,
}

/// One route's measuring.
struct RouteDurations {
    durations: RequestDurations,
    /// This route's first (method, status) and its histograms: nearly every later request to the
    /// route ends the same way and finds them here, without a lock or a hash.
    usual: OnceLock<(Method, StatusCode, RouteHistograms)>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned().map(Template::Matched);
        let measure = Measure::begin(self.durations, &request, route);
        Observed { inner: self.inner.call(request), measure }
    }
}

/// A route answered outside the router (`hot_path.rs`), measured and named as if routed.
#[derive(Clone)]
pub struct KnownRoute {
    durations: Option<&'static RouteDurations>,
    template: &'static str,
}

impl KnownRoute {
    /// Names `request`'s span after the route and measures `answer` (to `request`).
    pub fn observe(&self, request: &Request, answer: impl FnOnce() -> Response) -> Response {
        let measure = Measure::begin(self.durations, request, Some(Template::Known(self.template)));
        let response = answer();
        if let Some(measure) = measure {
            measure.record(response.status());
        }
        response
    }
}

/// A route's template: as the router matched it, or known beforehand.
enum Template {
    Matched(MatchedPath),
    Known(&'static str),
}

impl Template {
    fn as_str(&self) -> &str {
        match self {
            Template::Matched(matched) => matched.as_str(),
            Template::Known(template) => template,
        }
    }
}

/// What is needed to record a request's duration once it is answered.
struct Measure {
    route_durations: &'static RouteDurations,
    method: Method,
    /// `None` for the fallbacks (no route matched).
    route: Option<Template>,
    began: Instant,
}

impl Measure {
    /// Names `request`'s span after its route and starts measuring it, where it is measured.
    fn begin(durations: Option<&'static RouteDurations>, request: &Request, route: Option<Template>) -> Option<Self> {
        super::request_span::name_span(request, route.as_ref().map_or("unmatched", Template::as_str));
        durations.map(|route_durations| Measure {
            route_durations,
            method: request.method().clone(),
            route,
            began: Instant::now(),
        })
    }

    fn record(self, status: StatusCode) {
        let took = self.began.elapsed().as_secs_f64();
        if let Some((method, usual, (ours, ktrdrs))) = self.route_durations.usual.get()
            && *usual == status
            && *method == self.method
        {
            ours.record(took);
            ktrdrs.record(took * 1000.0);
            return;
        }
        let route = self.route.as_ref().map(Template::as_str);
        let (ours, ktrdrs) = self.route_durations.durations.histograms(&self.method, route, status);
        ours.record(took);
        ktrdrs.record(took * 1000.0);
        // The fallbacks see every path: only a matched route's answer becomes its usual.
        if self.route.is_some() {
            let _ = self.route_durations.usual.set((self.method, status, (ours, ktrdrs)));
        }
    }
}

/// The routed request's answer, measured when it comes. axum's route futures are `Unpin` (their
/// handlers' futures are boxed inside), so no pin projection and no box is needed here.
pub struct Observed<F> {
    inner: F,
    measure: Option<Measure>,
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let (Ok(response), Some(measure)) = (&answer, self.measure.take()) {
            measure.record(response.status());
        }
        Poll::Ready(answer)
    }
}

/// A route's histograms: ours, and the one ktrdr's dashboards query.
type RouteHistograms = (metrics::Histogram, metrics::Histogram);

/// The request-duration histograms by method, route and status, for answers other than a
/// route's usual one. Registering a series allocates its labels and hashes them; this cache
/// finds it by the route's identity (axum shares one `MatchedPath` per route; the path is
/// compared too, in case it does not).
#[derive(Clone)]
struct RequestDurations(Arc<DurationCache>);

struct DurationCache {
    metrics: Metrics,
    routes: parking_lot::RwLock<HashMap<RouteKey, (String, RouteHistograms)>>,
}

/// The route's path address, the method and the status.
type RouteKey = (usize, Method, u16);

impl RequestDurations {
    /// Routes × methods × statuses seen: far below this; past it, nothing more is cached.
    const MAX_CACHED: usize = 4096;

    fn new(metrics: Metrics) -> Self {
        RequestDurations(Arc::new(DurationCache { metrics, routes: Default::default() }))
    }

    fn histograms(&self, method: &Method, route: Option<&str>, status: StatusCode) -> RouteHistograms {
        let path = route.unwrap_or("unmatched");
        let key = (path.as_ptr() as usize, method.clone(), status.as_u16());
        if let Some((cached, histograms)) = self.0.routes.read().get(&key)
            && cached.as_str() == path
        {
            return histograms.clone();
        }
        let (method, status) = (method.as_str(), status.as_str());
        let ours = [("method", method), ("route", path), ("status", status)];
        let ktrdrs = [("http_target", path), ("http_method", method), ("http_status_code", status)];
        let histograms = (
            self.0.metrics.histogram(crate::metrics::HTTP_REQUEST_DURATION, &ours),
            self.0.metrics.histogram(crate::metrics::HTTP_SERVER_DURATION, &ktrdrs),
        );
        if let Some(route) = route {
            let mut cache = self.0.routes.write();
            if cache.len() < Self::MAX_CACHED {
                cache.insert(key, (route.to_owned(), histograms.clone()));
            }
        }
        histograms
    }
}
