//! Logs and traces. Logs: `tracing-subscriber` with an env filter (`RUST_LOG` wins over
//! `log.filter`), pretty for people or JSON for collectors (JSON lines carry `trace_id` and
//! `span_id` when traced). Traces: OpenTelemetry over OTLP/HTTP when an endpoint is configured
//! (`telemetry.otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`), exported in batches
//! from the SDK's own thread, so a slow or dead collector never delays a request.
//!
//! Spans meant for traces only — one per request, one per host call — use the target [`SPANS`]:
//! the log output ignores them, and without an exporter nothing enables them, so they cost the
//! hot path nothing when tracing is off. With an exporter, a request's trace is sampled at its
//! head ([`head`]), before any span exists: a request whose trace is not kept gets no span at
//! all, only a context that passes the decision on to what it starts and calls.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SamplingDecision, SamplingResult,
    SdkTracerProvider, ShouldSample,
};
use tracing::{Event, Instrument as _, Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, layer as fmt_layer};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The target of spans that exist for traces only (requests, host calls).
pub const SPANS: &str = "ktrdr_ops::trace";

/// What traces need to know besides the standard variables.
pub struct TraceSettings<'a> {
    /// `telemetry.otlp_endpoint`: the collector's base URL, or empty.
    pub otlp_endpoint: &'a str,
    /// `service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
    pub service_name: &'static str,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] sends what is still buffered.
#[must_use = "dropping it stops nothing, but shutdown() sends the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn traces_on(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter (blocks: call it outside async
    /// code, once the work is over).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not send the last spans to the trace collector");
        }
    }
}

/// Installs the global subscriber once; later calls (tests start many servers) change nothing.
pub fn init(format: LogFormat, filter: &str, traces: Option<TraceSettings<'_>>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, sampler) = traces.and_then(|settings| tracer_provider(&settings)).unzip();
    let installed = match &provider {
        // Without a tracer, one global filter: the spans kept for traces are off at their
        // callsites, never built. (A lone per-layer-filtered layer was tried and dropped events:
        // on PostgreSQL, at the default level, `listening on` never appeared.)
        None => {
            let filter = filter.add_directive(format!("{SPANS}=off").parse().expect("a valid directive"));
            tracing_subscriber::registry().with(filter).with(log_layer(format)).try_init().is_ok()
        }
        // With one, each layer filters for itself: logs never show the spans kept for traces,
        // and traces take spans only, ours only (events would become span events: noise, and
        // cost).
        Some(provider) => {
            let logged = filter.and(filter_fn(|meta| meta.target() != SPANS));
            let traced = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("ktrdr-ops"))
                // What each span costs on the hot path, kept to what a trace shows: no source
                // location, thread or target attributes, no busy/idle clock read at every
                // poll, and no OpenTelemetry context made current at every poll (ours is passed
                // explicitly: `continue_current_trace`, `propagate`).
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(filter_fn(|meta| {
                    meta.is_span() && meta.target().starts_with("ktrdr_ops") && *meta.level() <= Level::INFO
                }));
            tracing_subscriber::registry().with(log_layer(format).with_filter(logged)).with(traced).try_init().is_ok()
        }
    };
    if provider.is_some() && !installed {
        // Another subscriber was there first (tests): its spans go nowhere of ours.
        return Telemetry { provider: None };
    }
    if let Some(sampler) = sampler {
        let _ = HEAD.set(HeadSampler { sampler, ids: RandomIdGenerator::default() });
        tracing::info!("traces are exported over OTLP/HTTP");
    }
    Telemetry { provider }
}

/// The log lines, as text or JSON, on stdout.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Pretty => {
            fmt_layer().with_writer(std::io::stdout).with_ansi(std::io::stdout().is_terminal()).boxed()
        }
        LogFormat::Json => fmt_layer()
            .with_writer(std::io::stdout)
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(tracing_subscriber::fmt::format().json().flatten_event(true)))
            .boxed(),
    }
}

/// The exporter and provider, when an endpoint is configured, with the configured sampler for
/// the requests' head decisions; `None` (with a warning) when it cannot be built — the service
/// runs on without traces.
fn tracer_provider(settings: &TraceSettings<'_>) -> Option<(SdkTracerProvider, Box<dyn ShouldSample>)> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let from_env = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if settings.otlp_endpoint.is_empty() && !from_env {
        return None;
    }
    use opentelemetry_otlp::WithExportConfig;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if !settings.otlp_endpoint.is_empty() && !from_env {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", settings.otlp_endpoint.trim_end_matches('/')));
    }
    let exporter = match exporter.build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("ktrdr-ops: traces are off: the OTLP exporter cannot be built: {e}");
            return None;
        }
    };
    // Sent within a second of a span's end (the standard default is 5 s) unless OTEL_BSP_* say.
    let mut batches = BatchConfigBuilder::default();
    if !set("OTEL_BSP_SCHEDULE_DELAY") {
        batches = batches.with_scheduled_delay(Duration::from_millis(500));
    }
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches.build()).build();
    let named_by_env = set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !named_by_env {
        resource = resource.with_service_name(settings.service_name);
    }
    let resource =
        resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG) (the SDK's default configuration reads
    // them); parent-based always-on without them.
    let configured = opentelemetry_sdk::trace::Config::default().sampler;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .with_sampler(Sampling(configured.clone()))
        .build();
    Some((provider, configured))
}

/// The requests' head sampling, set once this process's spans go to a collector.
static HEAD: OnceLock<HeadSampler> = OnceLock::new();

struct HeadSampler {
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
}

/// What the head of a request's trace decided, before any span exists.
pub enum Head {
    /// No traces are exported.
    Off,
    /// Kept: the request's span takes this parent — the caller's context, or none — marked so
    /// that the sampler keeps the span without deciding again.
    Kept(OtelContext),
    /// Not kept: the request gets no span. This context (the caller's trace, or a new one, not
    /// sampled) is current while it runs, so that what it starts is not kept either and the
    /// hosts it calls are told so.
    Dropped(OtelContext),
}

/// Decides whether the trace of a request with these headers is kept: the configured sampler
/// is asked once, with the caller's `traceparent` if there is one.
pub fn head(headers: &http::HeaderMap) -> Head {
    let Some(head) = HEAD.get() else {
        return Head::Off;
    };
    let parent = remote_parent(headers);
    let caller = parent.as_ref().map(|cx| cx.span().span_context().clone());
    let trace_id = caller.as_ref().map_or_else(|| head.ids.new_trace_id(), SpanContext::trace_id);
    let decision = head.sampler.should_sample(parent.as_ref(), trace_id, "request", &SpanKind::Server, &[], &[]);
    if decision.decision == SamplingDecision::RecordAndSample {
        return Head::Kept(parent.unwrap_or_default().with_value(HeadKept));
    }
    let (span_id, trace_state) = caller
        .map_or_else(|| (head.ids.new_span_id(), TraceState::default()), |c| (c.span_id(), c.trace_state().clone()));
    let unsampled = SpanContext::new(trace_id, span_id, TraceFlags::default(), true, trace_state);
    Head::Dropped(OtelContext::new().with_remote_span_context(unsampled))
}

/// Marks the parent context of a request span whose trace the head decided to keep.
struct HeadKept;

/// The provider's sampler: a request span whose head was kept is kept (asking again would
/// decide again, at random, for a new root); everything else asks the configured sampler.
#[derive(Debug, Clone)]
struct Sampling(Box<dyn ShouldSample>);

impl ShouldSample for Sampling {
    fn should_sample(
        &self,
        parent: Option<&OtelContext>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        match parent {
            Some(cx) if cx.get::<HeadKept>().is_some() => SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: cx.span().span_context().trace_state().clone(),
            },
            _ => self.0.should_sample(parent, trace_id, name, kind, attributes, links),
        }
    }
}

/// The header that carries a caller's trace (W3C trace context), as a name made once: a name
/// given as text is parsed again at every lookup, and every request is looked at.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The W3C trace context (`traceparent`, `tracestate`) of a request, if it carries a valid one.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    headers.get(&TRACEPARENT)?;
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the caller's trace (a no-op when `span` is not traced).
pub fn continue_trace(span: &Span, headers: &http::HeaderMap) {
    if !span.is_disabled()
        && let Some(parent) = remote_parent(headers)
    {
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of the current span's trace, when both are traced (the tracing tree,
/// which the logs show, stays as it was) — or of the current context, in a request whose trace
/// is not kept (it has no span).
pub fn continue_current_trace(span: &Span) {
    if span.is_disabled() {
        return;
    }
    let current = Span::current();
    let parent = if current.is_disabled() { OtelContext::current() } else { current.context() };
    if parent.has_active_span() {
        let _ = span.set_parent(parent);
    }
}

/// `future` in the current span and trace context, for work handed to a task of its own: the
/// caller's trace — kept or not, with or without a span — goes on in it.
pub fn in_current_trace<F: std::future::Future>(future: F) -> WithContext<tracing::instrument::Instrumented<F>> {
    future.in_current_span().with_current_context()
}

/// Adds `span`'s trace context to outgoing headers, so that the callee continues the trace.
pub fn propagate(span: &Span, headers: &mut http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
}

/// `span`'s OpenTelemetry context when the sampler keeps it (asked now: the span starts), so that
/// what only a recorded span needs is built for those alone; `None` when it is not traced or
/// not sampled.
pub fn sampled(span: &Span) -> Option<opentelemetry::Context> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    cx.span().span_context().is_sampled().then_some(cx)
}

/// The trace `span` belongs to, as 32 hex digits; `None` when it is not traced.
pub fn trace_id(span: &Span) -> Option<String> {
    ids(span).map(|(trace_id, _)| trace_id.to_string())
}

/// `span`'s trace and span ids, when it is traced.
fn ids(span: &Span) -> Option<(TraceId, opentelemetry::trace::SpanId)> {
    if span.is_disabled() {
        return None;
    }
    context_ids(&span.context())
}

fn context_ids(cx: &OtelContext) -> Option<(TraceId, opentelemetry::trace::SpanId)> {
    let span = cx.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| (span_context.trace_id(), span_context.span_id()))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The JSON line of an event, with the `trace_id` and `span_id` of the span it happened in
/// when that span is traced, or of the request's context when its trace is not kept (so logs
/// and traces can be joined).
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        // In a request whose trace is not kept, no span: its context is current instead.
        let current = ids(&Span::current()).or_else(|| context_ids(&OtelContext::current()));
        let Some((trace_id, span_id)) = current else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one JSON object (and a newline): the ids go in before its closing brace.
        match line.trim_end().strip_suffix('}') {
            Some(open) => {
                let comma = if open.trim_end().ends_with('{') { "" } else { "," };
                writeln!(writer, "{open}{comma}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}")
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_ignored() {
        let mut headers = http::HeaderMap::new();
        assert!(remote_parent(&headers).is_none());
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let cx = remote_parent(&headers).expect("a valid traceparent");
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        headers.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        assert!(remote_parent(&headers).is_none(), "an all-zero trace id is invalid");
        headers.insert("traceparent", "garbage".parse().unwrap());
        assert!(remote_parent(&headers).is_none());
    }
}
