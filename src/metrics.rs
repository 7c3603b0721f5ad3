//! The service's metrics, recorded through the `metrics` facade into a Prometheus recorder
//! (`metrics-exporter-prometheus`) that belongs to one service: not the process-wide recorder,
//! so that several services in one process (the tests) keep their own figures. Components record
//! as things happen; `GET /metrics` renders. Our names start with `ktrdr_ops_`; beside them, the
//! names ktrdr's own Grafana dashboards query (its OpenTelemetry metrics as Prometheus names them),
//! so that those dashboards work over this service unchanged.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio_util::sync::CancellationToken;

/// Latency buckets (seconds) for fast things: HTTP requests, store writes, cancel latency, host calls.
pub const FAST_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Millisecond buckets of ktrdr's HTTP histogram (finer than OpenTelemetry's defaults at the low
/// end, where this service answers).
pub const MILLISECOND_BUCKETS: &[f64] =
    &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];
/// Duration buckets (seconds) for whole operations.
pub const SLOW_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];

pub const BUILD_INFO: &str = "ktrdr_ops_build_info";
pub const OPERATIONS_STARTED: &str = "ktrdr_ops_operations_started_total";
pub const OPERATIONS_FINISHED: &str = "ktrdr_ops_operations_finished_total";
pub const OPERATION_DURATION: &str = "ktrdr_ops_operation_duration_seconds";
pub const CANCEL_LATENCY: &str = "ktrdr_ops_cancel_latency_seconds";
pub const OPERATIONS_ACTIVE: &str = "ktrdr_ops_operations_active";
pub const OPERATIONS_DELETED: &str = "ktrdr_ops_operations_deleted_total";
pub const TAKEOVERS: &str = "ktrdr_ops_takeovers_total";
pub const HANDED_OVER: &str = "ktrdr_ops_handed_over_total";
pub const REMOTE_CANCELS: &str = "ktrdr_ops_remote_cancels_total";
pub const HOST_STALLS: &str = "ktrdr_ops_host_stalls_total";
pub const IB_GATEWAY_CONNECTED: &str = "ktrdr_ops_ib_gateway_connected";
pub const HOST_REQUESTS: &str = "ktrdr_ops_host_requests_total";
pub const HOST_REQUEST_ERRORS: &str = "ktrdr_ops_host_request_errors_total";
pub const HOST_REQUEST_RETRIES: &str = "ktrdr_ops_host_request_retries_total";
pub const HOST_REQUEST_DURATION: &str = "ktrdr_ops_host_request_duration_seconds";
pub const IB_PACING_WAITS: &str = "ktrdr_ops_ib_pacing_waits_total";
pub const IB_PACING_WAIT_SECONDS: &str = "ktrdr_ops_ib_pacing_wait_seconds_total";
pub const STORE_WRITE_DURATION: &str = "ktrdr_ops_store_write_duration_seconds";
pub const STORE_ROWS_WRITTEN: &str = "ktrdr_ops_store_rows_written_total";
pub const STORE_WRITE_FAILURES: &str = "ktrdr_ops_store_write_failures_total";
pub const HTTP_REQUEST_DURATION: &str = "ktrdr_ops_http_request_duration_seconds";
pub const RESUMES: &str = "ktrdr_ops_resumes_total";
pub const RETRIES: &str = "ktrdr_ops_retries_total";
pub const WORKERS: &str = "ktrdr_ops_workers";
pub const DISPATCHES: &str = "ktrdr_ops_dispatches_total";
pub const WORKER_MOVES: &str = "ktrdr_ops_worker_moves_total";

// ktrdr's names.
pub const KTRDR_OPERATIONS: &str = "ktrdr_operations_total";
pub const KTRDR_WORKERS_REGISTERED: &str = "ktrdr_workers_registered_total";
pub const KTRDR_WORKERS_AVAILABLE: &str = "ktrdr_workers_available";
pub const HTTP_SERVER_DURATION: &str = "http_server_duration_milliseconds";

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every family with its help text: described up front, so that `# HELP` and `# TYPE` appear
/// from the first sample on.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (BUILD_INFO, Kind::Gauge, "The running version."),
    (OPERATIONS_STARTED, Kind::Counter, "Operations started, by type."),
    (OPERATIONS_FINISHED, Kind::Counter, "Operations finished, by type and final status."),
    (OPERATION_DURATION, Kind::Histogram, "Start to end of finished operations, by type."),
    (CANCEL_LATENCY, Kind::Histogram, "A cancel request until the work had stopped, by type."),
    (OPERATIONS_ACTIVE, Kind::Gauge, "Operations pending or running on this replica, by type."),
    (OPERATIONS_DELETED, Kind::Counter, "Finished operations deleted by retention."),
    (TAKEOVERS, Kind::Counter, "Operations taken over from replicas that stopped, by what became of them."),
    (HANDED_OVER, Kind::Counter, "Operations handed over to other replicas on stopping."),
    (
        REMOTE_CANCELS,
        Kind::Counter,
        "Cancels of operations other replicas run, by who recorded the end (owner, or here after waiting in vain).",
    ),
    (
        HOST_STALLS,
        Kind::Counter,
        "Host calls made for an operation that went without an answer for hosts.stall_notice, by host.",
    ),
    (
        IB_GATEWAY_CONNECTED,
        Kind::Gauge,
        "1 while the IB host reports its gateway (TWS / IB Gateway) connected, 0 while it reports it down.",
    ),
    (HOST_REQUESTS, Kind::Counter, "Requests to host services, by host, method and endpoint."),
    (HOST_REQUEST_ERRORS, Kind::Counter, "Failed host requests, by host, endpoint and class."),
    (HOST_REQUEST_RETRIES, Kind::Counter, "Host requests repeated after a transient failure."),
    (HOST_REQUEST_DURATION, Kind::Histogram, "Host request latency, by host and endpoint."),
    (IB_PACING_WAITS, Kind::Counter, "IB historical requests that waited for the pacing limiter."),
    // A gauge only because the facade's counters count whole numbers; it only grows.
    (IB_PACING_WAIT_SECONDS, Kind::Gauge, "Time spent waiting for the IB pacing limiter, in seconds (only grows)."),
    (STORE_WRITE_DURATION, Kind::Histogram, "Store write transactions (batches of writes)."),
    (STORE_ROWS_WRITTEN, Kind::Counter, "Operation rows written to the store."),
    (STORE_WRITE_FAILURES, Kind::Counter, "Store write transactions that failed."),
    (HTTP_REQUEST_DURATION, Kind::Histogram, "HTTP requests served, by method, matched route and status."),
    (
        RESUMES,
        Kind::Counter,
        "Resumes of ended operations, by type and outcome (started, automatic after a restart, refused).",
    ),
    (RETRIES, Kind::Counter, "Ended operations started again from scratch, by type."),
    (WORKERS, Kind::Gauge, "Registered workers, by type and status."),
    (
        DISPATCHES,
        Kind::Counter,
        "Trainings sent out, by outcome: worker, host (none registered), passed_over (busy or gone), waited (none free).",
    ),
    (WORKER_MOVES, Kind::Counter, "Trainings moved to another worker because theirs stopped answering."),
    (KTRDR_OPERATIONS, Kind::Counter, "Operations ended, by operation_type and final status (ktrdr's name)."),
    // ktrdr exports it as a count of registered workers, whatever its suffix says.
    (KTRDR_WORKERS_REGISTERED, Kind::Gauge, "Workers registered now (ktrdr's name)."),
    (KTRDR_WORKERS_AVAILABLE, Kind::Gauge, "Workers free to take work, by worker_type (ktrdr's name)."),
    (
        HTTP_SERVER_DURATION,
        Kind::Histogram,
        "HTTP requests served, in milliseconds, by http_target (the route), http_method and http_status_code \
         (OpenTelemetry's name, as ktrdr's dashboards query it).",
    ),
];

/// Every family the service declares, with samples yet or not (some appear only after a fault or
/// with several replicas): what dashboards may query.
pub fn family_names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|(name, ..)| *name)
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// One service's metrics. Cheap to clone; a component built without one (a test, the CLI)
/// records into a [`Metrics::default`] nobody renders.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// The standard process set (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
    /// open and max fds, threads, start time…), read from the OS when scraped.
    process: Arc<metrics_process::Collector>,
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(FAST_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(OPERATION_DURATION.to_owned()), SLOW_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_SERVER_DURATION.to_owned()), MILLISECOND_BUCKETS))
            .expect("the bucket lists are not empty")
            .build_recorder();
        for (name, kind, help) in FAMILIES {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let handle = recorder.handle();
        let metrics = Metrics { recorder: Arc::new(recorder), handle, process: Arc::new(process) };
        metrics.gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        metrics
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// The Prometheus text exposition of everything recorded so far, with the process's figures
    /// read now (a few reads of `/proc/self`).
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&*self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// Folds the histogram samples recorded since the last time into their buckets, every
    /// `every` until `stop` fires (without it, samples pile up between scrapes).
    pub async fn upkeep(self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.handle.run_upkeep(),
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn figures_render_with_their_names_labels_help_and_buckets() {
        let metrics = Metrics::default();
        metrics.counter(OPERATIONS_STARTED, &[("type", "dummy")]).increment(2);
        metrics.histogram(OPERATION_DURATION, &[("type", "dummy")]).record(42.0);
        metrics.histogram(CANCEL_LATENCY, &[("type", "dummy")]).record(0.0003);
        let text = metrics.render();
        assert!(text.contains("# HELP ktrdr_ops_operations_started_total Operations started, by type."), "{text}");
        assert!(text.contains("# TYPE ktrdr_ops_operations_started_total counter"), "{text}");
        assert_eq!(sample(&text, r#"ktrdr_ops_operations_started_total{type="dummy"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"ktrdr_ops_build_info{version="0.1.0"}"#), Some(1.0));
        // Whole operations by the slow buckets, the rest by the fast ones.
        assert_eq!(sample(&text, r#"ktrdr_ops_operation_duration_seconds_bucket{type="dummy",le="60"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"ktrdr_ops_operation_duration_seconds_bucket{type="dummy",le="15"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"ktrdr_ops_cancel_latency_seconds_bucket{type="dummy",le="0.0005"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"ktrdr_ops_cancel_latency_seconds_count{type="dummy"}"#), Some(1.0));
        // The process's own figures, as Prometheus' clients name them.
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|rss| rss > 1e6), "{text}");
        assert!(sample(&text, "process_open_fds").is_some_and(|fds| fds >= 3.0), "{text}");
    }

    #[test]
    fn two_services_in_one_process_keep_their_own_figures() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.counter(OPERATIONS_DELETED, &[]).increment(3);
        assert_eq!(sample(&a.render(), OPERATIONS_DELETED), Some(3.0));
        assert_eq!(sample(&b.render(), OPERATIONS_DELETED), None);
    }
}
