//! Traces over OTLP/HTTP (JSON here), received by a small collector in the test: a request that
//! carries `traceparent` is one trace from its server span through the operation and its host
//! calls into the simulator's own spans; the record and the JSON log lines carry its trace id;
//! a dead collector slows nothing down.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use common::{ServiceProcess, sim_process};
use serde_json::{Value, json};

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// OTLP's numbers: 1 internal, 2 server, 3 client.
    kind: u64,
    name: String,
}

/// An OTLP/HTTP collector that keeps every span sent to `/v1/traces` as JSON.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = spans.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let export: Value = serde_json::from_slice(&body).expect("OTLP/JSON");
                    kept.lock().unwrap().extend(spans_of(&export));
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector { url, spans }
    }

    /// What a process needs to export here.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", self.url.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]
    }

    fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }
}

fn spans_of(export: &Value) -> Vec<Received> {
    let mut spans = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                spans.push(Received {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                    kind: span["kind"].as_u64().unwrap_or_default(),
                    name: text("name"),
                });
            }
        }
    }
    spans
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The simulators and the service, both exporting to `collector` when given its env.
async fn stack(data: &str, env: &[(&str, &str)]) -> (tokio::process::Child, ServiceProcess, String) {
    let (sim, ib_url, training_url) = sim_process(data, &[], env).await;
    let db = format!("sqlite://{data}/ops.db");
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", &db, "--data-dir", data, "--ib-pacing", "off"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--ib-url", &ib_url, "--training-url", &training_url, "--log-format", "json"]);
    let service = ServiceProcess::start(&args, env).await;
    (sim, service, ib_url)
}

async fn load(http: &reqwest::Client, service: &ServiceProcess, traceparent: Option<&str>) -> (String, Duration) {
    let mut request = http.post(service.url("/api/v1/data/load"));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "backfill", "start_date": "2024-01-01", "end_date": "2024-03-01" });
    let began = Instant::now();
    let answer: Value = request.json(&body).send().await.unwrap().json().await.unwrap();
    let id = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    loop {
        let record: Value =
            http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap().json().await.unwrap();
        if record["data"]["status"] == "completed" {
            return (id, began.elapsed());
        }
        assert!(began.elapsed() < Duration::from_secs(30), "the load did not complete: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The service's JSON log line that says operation `id` finished.
fn finished_line(service: &ServiceProcess, id: &str) -> Value {
    let lines = service.output.lock().unwrap().clone();
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "operation finished" && l["span"]["operation_id"] == id)
        .expect("the operation's end is logged")
}

#[tokio::test]
async fn a_load_with_a_traceparent_is_one_trace_from_the_request_to_the_simulators_spans() {
    let collector = Collector::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut env = collector.env();
    env.push(("KTRDR_OPS__TELEMETRY__TRACE_URL", "http://jaeger.example:16686/trace/{trace_id}"));
    let (_sim, service, _) = stack(&data.path().display().to_string(), &env).await;
    let http = reqwest::Client::new();
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (id, _) = load(&http, &service, Some(&traceparent)).await;
    let ended = Instant::now();

    let record: Value =
        http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(record["data"]["trace_id"], TRACE, "{record}");
    let link = format!("http://jaeger.example:16686/trace/{TRACE}");
    assert_eq!(record["data"]["trace_url"], link.as_str(), "{record}");
    // The command line says where the trace is.
    let watched = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["--url", &service.base, "ops", "watch", &id])
        .envs(common::auth_env())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&watched.stderr).to_string() + &String::from_utf8_lossy(&watched.stdout);
    assert!(said.contains(&format!("trace: {link}")), "{said}");
    // The whole trace, sent in batches within a second or so of each span's end.
    let (mut trace, mut complete) = (Vec::new(), false);
    while !complete && ended.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trace = collector.trace(TRACE);
        let ours = |kind: u64, name: &str| {
            trace.iter().filter(|s| s.service == "ktrdr-ops" && s.kind == kind && s.name.contains(name)).count()
        };
        let sims = trace.iter().filter(|s| s.service == "ktrdr-ops-sim" && s.name == "POST /data/historical").count();
        complete = ours(2, "POST /api/v1/data/load") == 1 && ours(1, "operation data_load") == 1 && sims > 0;
    }
    println!("the whole trace was at the collector {:.2} s after the load completed", ended.elapsed().as_secs_f64());
    assert!(complete, "the trace is not whole: {trace:#?}");
    let find = |service: &str, kind: u64, name: &str| {
        trace.iter().find(|s| s.service == service && s.kind == kind && s.name.contains(name)).unwrap().clone()
    };
    let server = find("ktrdr-ops", 2, "POST /api/v1/data/load");
    assert_eq!(server.parent, CALLER_SPAN, "the request's span continues the caller's");
    let operation = find("ktrdr-ops", 1, "operation data_load");
    assert_eq!(operation.parent, server.span_id, "the operation is a child of the request that started it");
    let calls: Vec<&Received> = trace
        .iter()
        .filter(|s| s.service == "ktrdr-ops" && s.kind == 3 && s.name.contains("/data/historical"))
        .collect();
    assert!(!calls.is_empty() && calls.iter().all(|c| c.parent == operation.span_id), "{calls:#?}");
    // Each of the simulator's spans continues one of our client spans.
    for handled in trace.iter().filter(|s| s.service == "ktrdr-ops-sim") {
        assert!(
            trace.iter().any(|c| c.kind == 3 && c.span_id == handled.parent),
            "the simulator's span {handled:?} does not continue one of our calls"
        );
    }
    // The JSON log lines of the operation carry the trace and span ids.
    let finished = finished_line(&service, &id);
    assert_eq!(finished["trace_id"], TRACE, "{finished}");
    assert_eq!(finished["span_id"], operation.span_id.as_str(), "{finished}");
}

#[tokio::test]
async fn a_request_without_a_traceparent_starts_a_trace_of_its_own() {
    let collector = Collector::start().await;
    let data = tempfile::tempdir().unwrap();
    let (_sim, service, _) = stack(&data.path().display().to_string(), &collector.env()).await;
    let http = reqwest::Client::new();
    let (id, _) = load(&http, &service, None).await;
    let record: Value =
        http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap().json().await.unwrap();
    let trace_id = record["data"]["trace_id"].as_str().expect("a trace id while traces are exported").to_owned();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, TRACE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !collector.trace(&trace_id).iter().any(|s| s.kind == 2 && s.parent.is_empty()) {
        assert!(Instant::now() < deadline, "no root server span in {trace_id}: {:#?}", collector.trace(&trace_id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_collector_costs_a_log_line_not_latency_and_no_collector_no_trace_id() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = format!("http://{dead}");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", dead.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")];
    let (_sim, service, _) = stack(&data.path().display().to_string(), &env).await;
    let http = reqwest::Client::new();
    let (_, took) = load(&http, &service, Some(&format!("00-{TRACE}-{CALLER_SPAN}-01"))).await;
    assert!(took < Duration::from_secs(10), "the load took {took:?}");
    let began = Instant::now();
    for _ in 0..50 {
        assert_eq!(http.get(service.url("/api/v1/health")).send().await.unwrap().status(), 200);
    }
    assert!(began.elapsed() < Duration::from_secs(5), "50 health checks took {:?}", began.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !service.output.lock().unwrap().iter().any(|l| l.contains("ExportError")) {
        assert!(Instant::now() < deadline, "the failed export was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a collector: no trace id in records.
    let plain = tempfile::tempdir().unwrap();
    let (_sim, service, _) = stack(&plain.path().display().to_string(), &[]).await;
    let (id, _) = load(&http, &service, Some(&format!("00-{TRACE}-{CALLER_SPAN}-01"))).await;
    let record: Value =
        http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap().json().await.unwrap();
    assert!(record["data"].get("trace_id").is_none(), "{record}");
}

#[tokio::test]
async fn a_trace_dropped_at_the_head_is_exported_nowhere_yet_joins_its_logs_and_a_sampled_caller_is_followed() {
    let collector = Collector::start().await;
    let data = tempfile::tempdir().unwrap();
    let data = data.path().display().to_string();
    // The simulator keeps every trace it starts itself: a call reaching it without our
    // (unsampled) trace context would show there as a trace of its own.
    let mut sim_env = collector.env();
    sim_env.push(("OTEL_TRACES_SAMPLER", "parentbased_always_on"));
    let (_sim, ib_url, training_url) = sim_process(&data, &[], &sim_env).await;
    let mut env = collector.env();
    env.extend([("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")]);
    let db = format!("sqlite://{data}/ops.db");
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", &db, "--data-dir", &data, "--ib-pacing", "off"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--ib-url", &ib_url, "--training-url", &training_url, "--log-format", "json"]);
    let service = ServiceProcess::start(&args, &env).await;
    let http = reqwest::Client::new();

    // No new trace is kept: the request has no span, and neither its operation, nor the host
    // calls, nor the simulator (told by `traceparent` that the trace is not sampled) export one.
    let (dropped, _) = load(&http, &service, None).await;
    for _ in 0..20 {
        let answer = http.get(service.url(&format!("/api/v1/operations/{dropped}"))).send().await.unwrap();
        assert_eq!(answer.status(), 200);
    }
    let record: Value =
        http.get(service.url(&format!("/api/v1/operations/{dropped}"))).send().await.unwrap().json().await.unwrap();
    let trace_id = record["data"]["trace_id"].as_str().expect("the record names its trace, kept or not").to_owned();
    assert_eq!(trace_id.len(), 32);
    // The operation's log lines still carry that trace id (logs of one request join up).
    let finished = finished_line(&service, &dropped);
    assert_eq!(finished["trace_id"], trace_id.as_str(), "{finished}");

    // A caller's sampled trace is followed all the same, into the simulator.
    let (_, _) = load(&http, &service, Some(&format!("00-{TRACE}-{CALLER_SPAN}-01"))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let trace = collector.trace(TRACE);
        let server = trace.iter().any(|s| s.kind == 2 && s.parent == CALLER_SPAN && s.service == "ktrdr-ops");
        let operation = trace.iter().any(|s| s.name == "operation data_load");
        let simulator = trace.iter().any(|s| s.service == "ktrdr-ops-sim");
        if server && operation && simulator {
            break;
        }
        assert!(Instant::now() < deadline, "the sampled caller's trace is not whole: {trace:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // By now every process has sent what it ended before that trace: nothing but it arrived.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let others: Vec<Received> =
        collector.spans.lock().unwrap().iter().filter(|s| s.trace_id != TRACE).cloned().collect();
    assert!(others.is_empty(), "spans of traces dropped at the head were exported: {others:#?}");
}

#[tokio::test]
async fn what_a_request_starts_shares_the_requests_sampling_decision() {
    let collector = Collector::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut env = collector.env();
    env.extend([("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")]);
    let (_sim, service, _) = stack(&data.path().display().to_string(), &env).await;
    let http = reqwest::Client::new();
    const STARTS: usize = 40;
    for _ in 0..STARTS {
        let answer = http
            .post(service.url("/api/v1/dummy/start"))
            .json(&json!({ "iterations": 1, "interval_ms": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // Half the requests are kept, at random; each kept one with its operation, each dropped one
    // without (an operation deciding for itself would be kept as a root half the time).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (servers, operations) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans = collector.spans.lock().unwrap().clone();
        let servers: Vec<Received> =
            spans.iter().filter(|s| s.kind == 2 && s.name == "POST /api/v1/dummy/start").cloned().collect();
        let operations: Vec<Received> = spans.iter().filter(|s| s.name == "operation dummy").cloned().collect();
        if (!servers.is_empty() && operations.len() >= servers.len()) || Instant::now() > deadline {
            break (servers, operations);
        }
    };
    assert!(!servers.is_empty() && servers.len() < STARTS, "{} of {STARTS} kept at 50 %", servers.len());
    for operation in &operations {
        assert!(
            servers.iter().any(|s| s.span_id == operation.parent && s.trace_id == operation.trace_id),
            "an operation exported without the request that started it: {operation:?}"
        );
    }
    assert_eq!(operations.len(), servers.len(), "each kept request's operation is kept");
}
