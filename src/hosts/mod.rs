//! Clients for the host services. [`HostClient`] is the generic part — one pooled
//! `reqwest::Client` per host, timeouts, cancellation (every call races the caller's token and
//! drops the request the moment it fires), retries with exponential backoff and jitter only where
//! repeating is safe, errors that carry the host's own message, a cached health probe and
//! per-endpoint counters and latency histograms, and stalled calls reported to the operation that
//! made them (`stall`), Server-Sent Events streams (`sse`), and what of a host's answer may be
//! read and repeated (`answer`). `ib` and `training` speak the two protocols.
//! Depends on nothing domain-side.

mod answer;
pub mod backend;
pub mod endpoints;
pub mod ib;
pub mod pacing;
pub mod sse;
pub mod stall;
pub mod training;
pub mod workers;

use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

pub use answer::{MAX_ANSWER_BYTES, MAX_HOST_WORDS, cap, cap_words, describe_answer, host_message, read_capped};

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::time::{self, Timestamp};
use metrics::Counter;

/// The two host services, as the rest of the service sees them.
#[derive(Clone)]
pub struct Hosts {
    pub ib: ib::IbClient,
    pub training: Arc<training::TrainingClient>,
}

/// How a host is reached.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// `ib`, `training`: appears in errors, logs and metrics.
    pub name: &'static str,
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// A health probe's own timeout, and how long its answer is reused.
    pub health_timeout: Duration,
    pub health_ttl: Duration,
    /// Sent as `Authorization: Bearer …` on every request, when set.
    pub bearer: Option<String>,
    /// A call without an answer for this long is reported to the operation that made it.
    pub stall_notice: Duration,
    /// For hosts that registered themselves (workers): the addresses their names may resolve to.
    pub endpoint_policy: Option<Arc<endpoints::EndpointPolicy>>,
}

/// How often a host call is tried, and the pauses between: exponential with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn backoff(&self) -> Backoff {
        Backoff::exponential(self.base_delay, self.max_delay).full_jitter()
    }
}

/// Whether a call may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Repeating is harmless (reads, idempotent stops): retried after connection failures,
    /// timeouts and 502/503/504.
    Safe,
    /// Only retried when the request provably never reached the host (connection refused).
    ConnectOnly,
    /// Never repeated here (the caller has its own policy, e.g. the pacing limiter).
    Never,
}

/// The header naming the operation a host call works for.
pub const OPERATION_HEADER: &str = "x-operation-id";

/// One request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// A low-cardinality label for metrics (`/training/status/{id}`), not the actual path.
    pub endpoint: &'static str,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    pub retry: Retry,
    pub timeout: Option<Duration>,
    /// The operation the call works for, sent as `X-Operation-Id` so that a host's request log
    /// (the simulators', for the soak's checker) can tell whose call it was; hosts ignore it.
    pub operation_id: Option<String>,
}

impl Call {
    pub fn get(endpoint: &'static str, path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            endpoint,
            path: path.into(),
            query: Vec::new(),
            body: None,
            retry: Retry::Safe,
            timeout: None,
            operation_id: None,
        }
    }

    pub fn post(endpoint: &'static str, path: impl Into<String>, body: &impl Serialize) -> Self {
        Self {
            method: Method::POST,
            body: Some(serde_json::to_value(body).expect("request bodies serialise")),
            retry: Retry::ConnectOnly,
            ..Self::get(endpoint, path)
        }
    }

    pub fn delete(endpoint: &'static str, path: impl Into<String>) -> Self {
        Self { method: Method::DELETE, ..Self::get(endpoint, path) }
    }

    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn for_operation(mut self, operation_id: &str) -> Self {
        self.operation_id = Some(operation_id.to_owned());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostErrorKind {
    /// No connection could be made.
    Connect,
    Timeout,
    /// The connection broke (closed or reset) after the request went out and before an answer
    /// came: the host went away mid-call.
    Broken,
    /// The host answered with a non-2xx status.
    Status(u16),
    /// The answer could not be read or decoded.
    Body,
    /// The caller's token fired; the request was dropped.
    Cancelled,
}

/// A failed host call: which host, which request, what status, and the host's own words.
#[derive(Debug, Clone)]
pub struct HostError {
    pub host: &'static str,
    pub method: Method,
    pub path: String,
    pub kind: HostErrorKind,
    /// The host's `detail`/`error` text, or what went wrong on the way.
    pub message: String,
}

impl HostError {
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            HostErrorKind::Status(status) => Some(status),
            _ => None,
        }
    }

    /// Worth trying again later (the host or the network, not the request, was the problem).
    pub fn is_transient(&self) -> bool {
        match self.kind {
            HostErrorKind::Connect | HostErrorKind::Timeout | HostErrorKind::Broken => true,
            HostErrorKind::Status(status) => matches!(status, 502..=504),
            HostErrorKind::Body | HostErrorKind::Cancelled => false,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.kind == HostErrorKind::Cancelled
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            HostErrorKind::Connect => "cannot connect".to_owned(),
            HostErrorKind::Timeout => "timed out".to_owned(),
            HostErrorKind::Broken => "the connection broke before the answer".to_owned(),
            HostErrorKind::Status(status) => format!("HTTP {status}"),
            HostErrorKind::Body => "unreadable answer".to_owned(),
            HostErrorKind::Cancelled => "cancelled".to_owned(),
        };
        write!(f, "{} host, {} {}: {what}", self.host, self.method, self.path)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for HostError {}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct HostResponse {
    pub status: u16,
    pub body: Bytes,
}

/// What a health probe found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub url: String,
    pub reachable: bool,
    pub latency_ms: Option<f64>,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub checked_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    #[schema(ignore)]
    pub body: Option<Value>,
}

/// The class of a failed host request, as its metric names it.
fn error_class(kind: &HostErrorKind) -> &'static str {
    match kind {
        HostErrorKind::Connect => "connect",
        HostErrorKind::Timeout => "timeout",
        HostErrorKind::Broken => "broken",
        HostErrorKind::Status(s) if *s < 500 => "4xx",
        HostErrorKind::Status(_) => "5xx",
        HostErrorKind::Body => "body",
        HostErrorKind::Cancelled => "cancelled",
    }
}

/// Where a transport error struck: before the host's answer began, or while reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeAnswer,
    Answer,
}

/// A pooled, cancellable client for one host service. Cheap to clone.
#[derive(Clone)]
pub struct HostClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HostSettings,
    http: reqwest::Client,
    metrics: Metrics,
    health: Mutex<Option<(Instant, HealthReport)>>,
    /// Calls that went without an answer for `stall_notice` (counted once each).
    stalls: Counter,
}

/// The HTTP client of a host could not be built (e.g. no TLS backend for an `https://` URL).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the {host} host client: {source}")]
pub struct ClientBuildError {
    pub host: &'static str,
    #[source]
    pub source: reqwest::Error,
}

impl HostClient {
    /// A client recording its requests, errors, retries, latencies and stalls into `metrics`.
    pub fn new(settings: HostSettings, metrics: Metrics) -> Result<Self, ClientBuildError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            // A host answers itself: a redirect could aim our calls (and what they carry) anywhere.
            .redirect(reqwest::redirect::Policy::none())
            // Host services run beside the service; a proxy from the environment would only get in the way.
            .no_proxy();
        if let Some(policy) = &settings.endpoint_policy {
            builder = builder.dns_resolver(Arc::new(endpoints::GuardedResolver::new(policy.clone())));
        }
        let http = builder.build().map_err(|source| ClientBuildError { host: settings.name, source })?;
        let stalls = metrics.counter(crate::metrics::HOST_STALLS, &[("host", settings.name)]);
        Ok(Self { inner: Arc::new(Inner { settings, http, stalls, metrics, health: Mutex::new(None) }) })
    }

    pub fn name(&self) -> &'static str {
        self.inner.settings.name
    }

    pub fn base_url(&self) -> &str {
        &self.inner.settings.base_url
    }

    pub fn settings(&self) -> &HostSettings {
        &self.inner.settings
    }

    /// Sends `call`, retrying as its [`Retry`] allows, and returns the 2xx answer. The whole
    /// exchange (retries and their pauses included) races `token`: when it fires, the request is
    /// dropped at once and `HostErrorKind::Cancelled` returned.
    pub async fn send(&self, call: &Call, token: &CancellationToken) -> Result<HostResponse, HostError> {
        tokio::select! {
            biased;
            _ = token.cancelled() => {
                let error = self.error(call, HostErrorKind::Cancelled, String::new());
                self.observe(call, Duration::ZERO, Some(&error.kind), 0);
                Err(error)
            }
            result = self.send_with_retries(call) => result,
        }
    }

    /// [`send`](Self::send), then decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, call: &Call, token: &CancellationToken) -> Result<T, HostError> {
        let response = self.send(call, token).await?;
        serde_json::from_slice(&response.body)
            .map_err(|e| self.error(call, HostErrorKind::Body, format!("unexpected answer: {e}")))
    }

    async fn send_with_retries(&self, call: &Call) -> Result<HostResponse, HostError> {
        let policy = self.inner.settings.retry;
        let observer = stall::current_observer();
        let mut attempt = 1;
        let mut pauses = policy.backoff().pauses();
        loop {
            // Not sent while this replica may have lost the operation to another (see `ops::fence`).
            crate::ops::fence::pass().await;
            let started = Instant::now();
            let result = match &observer {
                None => self.send_once(call).await,
                Some(observer) => self.send_watched(call, observer.clone(), attempt).await,
            };
            let retry = match &result {
                Ok(_) => false,
                Err(e) => {
                    attempt < policy.attempts
                        && match call.retry {
                            Retry::Safe => e.is_transient(),
                            Retry::ConnectOnly => e.kind == HostErrorKind::Connect,
                            Retry::Never => false,
                        }
                }
            };
            self.observe(call, started.elapsed(), result.as_ref().err().map(|e| &e.kind), u64::from(retry));
            if !retry {
                return result;
            }
            let pause = pauses.next_pause();
            tracing::debug!(host = self.name(), path = %call.path, attempt, ?pause, "retrying host call");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// One attempt, reporting to `observer` if it stalls.
    async fn send_watched(
        &self,
        call: &Call,
        observer: Arc<dyn stall::StallObserver>,
        attempt: u32,
    ) -> Result<HostResponse, HostError> {
        let settings = &self.inner.settings;
        // Only calls that are safe to repeat are tried again after a timeout.
        let attempts = if call.retry == Retry::Safe { settings.retry.attempts.max(1) } else { 1 };
        let stall = stall::Stall {
            host: self.name(),
            request: format!("{} {}", call.method, call.path),
            waited: Duration::ZERO,
            attempt,
            attempts,
            gives_up_after: call.timeout.unwrap_or(settings.request_timeout),
        };
        let count = || self.inner.stalls.increment(1);
        // A status error is still an answer; a timeout or a broken connection is not.
        let answered = |r: &Result<HostResponse, HostError>| {
            r.as_ref().map_or_else(|e| matches!(e.kind, HostErrorKind::Status(_) | HostErrorKind::Body), |_| true)
        };
        stall::watch(self.send_once(call), observer, settings.stall_notice, stall, count, answered).await
    }

    /// Where this client records its figures.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// One attempt, in a client span when traced: the host receives the trace context
    /// (`traceparent`) and continues the trace.
    async fn send_once(&self, call: &Call) -> Result<HostResponse, HostError> {
        let span = tracing::info_span!(
            target: crate::telemetry::SPANS,
            "host call",
            otel.name = Empty,
            otel.kind = "client",
            "server.address" = self.name(),
            "http.request.method" = %call.method,
            "url.path" = call.endpoint,
            "http.response.status_code" = Empty,
            otel.status_code = Empty,
            "error.type" = Empty,
        );
        if span.is_disabled() {
            return self.exchange(call, None).await;
        }
        span.record("otel.name", format!("{} {} {}", self.name(), call.method, call.endpoint));
        let mut context = http::HeaderMap::new();
        crate::telemetry::propagate(&span, &mut context);
        let result = self.exchange(call, Some(context)).instrument(span.clone()).await;
        let status = match &result {
            Ok(answer) => Some(answer.status),
            Err(HostError { kind: HostErrorKind::Status(status), .. }) => Some(*status),
            Err(_) => None,
        };
        if let Some(status) = status {
            span.record("http.response.status_code", status);
        }
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", tracing::field::debug(&e.kind));
        }
        result
    }

    async fn exchange(&self, call: &Call, trace_context: Option<http::HeaderMap>) -> Result<HostResponse, HostError> {
        let url = format!("{}{}", self.inner.settings.base_url.trim_end_matches('/'), call.path);
        let mut request = self.inner.http.request(call.method.clone(), url);
        if let Some(headers) = trace_context {
            request = request.headers(headers);
        }
        if let Some(token) = &self.inner.settings.bearer {
            request = request.bearer_auth(token);
        }
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(id) = &call.operation_id {
            request = request.header(OPERATION_HEADER, id);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        // Before a status arrives, a failure that is neither connecting nor a timeout is the
        // connection breaking under the request (the host died mid-call).
        let response = request.send().await.map_err(|e| self.transport_error(call, &e, Stage::BeforeAnswer))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let message = "answered with a redirect, which is not followed".to_owned();
            return Err(self.error(call, HostErrorKind::Status(status), message));
        }
        let body = read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.map_or_else(|| self.too_large(call), |e| self.transport_error(call, &e, Stage::Answer)))?;
        if !(200..300).contains(&status) {
            return Err(self.error(call, HostErrorKind::Status(status), host_message(&body)));
        }
        Ok(HostResponse { status, body })
    }

    fn transport_error(&self, call: &Call, e: &reqwest::Error, stage: Stage) -> HostError {
        let kind = if e.is_timeout() {
            HostErrorKind::Timeout
        } else if e.is_connect() {
            HostErrorKind::Connect
        } else if stage == Stage::BeforeAnswer {
            // Connected, and the connection broke before a status came: the host went away mid-call.
            HostErrorKind::Broken
        } else {
            HostErrorKind::Body
        };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        self.error(call, kind, message)
    }

    fn too_large(&self, call: &Call) -> HostError {
        self.error(call, HostErrorKind::Body, format!("answered more than {} MiB", MAX_ANSWER_BYTES >> 20))
    }

    fn error(&self, call: &Call, kind: HostErrorKind, message: String) -> HostError {
        HostError { host: self.name(), method: call.method.clone(), path: call.path.clone(), kind, message }
    }

    fn observe(&self, call: &Call, elapsed: Duration, error: Option<&HostErrorKind>, retries: u64) {
        let metrics = &self.inner.metrics;
        let labels = [("host", self.name()), ("method", call.method.as_str()), ("endpoint", call.endpoint)];
        metrics.counter(crate::metrics::HOST_REQUESTS, &labels).increment(1);
        metrics.histogram(crate::metrics::HOST_REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
        metrics.counter(crate::metrics::HOST_REQUEST_RETRIES, &labels).increment(retries);
        if let Some(kind) = error {
            let [host, method, endpoint] = labels;
            let labels = [host, method, endpoint, ("class", error_class(kind))];
            metrics.counter(crate::metrics::HOST_REQUEST_ERRORS, &labels).increment(1);
        }
    }

    /// `GET /health` with a short timeout, reused for `health_ttl`.
    pub async fn health(&self) -> HealthReport {
        let settings = &self.inner.settings;
        if let Some((at, report)) = &*self.inner.health.lock()
            && at.elapsed() < settings.health_ttl
        {
            return report.clone();
        }
        if settings.base_url.is_empty() {
            return HealthReport {
                url: String::new(),
                reachable: false,
                latency_ms: None,
                checked_at: time::now(),
                error: Some("no URL configured".into()),
                body: None,
            };
        }
        let call = Call::get("/health", "/health").timeout(settings.health_timeout).retry(Retry::Never);
        let started = Instant::now();
        let result = self.send(&call, &CancellationToken::new()).await;
        let latency_ms = (started.elapsed().as_secs_f64() * 1e5).round() / 100.0;
        let report = match result {
            Ok(response) => HealthReport {
                url: settings.base_url.clone(),
                reachable: true,
                latency_ms: Some(latency_ms),
                checked_at: time::now(),
                error: None,
                body: serde_json::from_slice(&response.body).ok(),
            },
            Err(e) => HealthReport {
                url: settings.base_url.clone(),
                reachable: false,
                latency_ms: None,
                checked_at: time::now(),
                error: Some(e.to_string()),
                body: None,
            },
        };
        *self.inner.health.lock() = Some((Instant::now(), report.clone()));
        report
    }
}
