//! End-to-end figures of the operations core (issue: operations core, "Numbers"). Runs the
//! release binary as a separate process against a fresh SQLite database and measures, on this
//! machine, with the load generator on the same machine:
//!
//! 1. `GET /api/v1/operations/{id}` of a running op, 64 connections (wrk), next to a bare axum
//!    handler reading a map (a process of its own, same wrk, same run) for scale, with each
//!    server process's CPU time per request;
//! 2. starting 10,000 long-running dummy ops (each stored before the answer), 32 in flight;
//! 3. RSS with those 10,000 running;
//! 4. `DELETE` of each, one at a time, until it answers `cancelled` (p50/p99);
//! 5. the registry empty afterwards, and RSS again.
//!
//! Run: `cargo bench --bench ops_api` (needs `wrk`: `apt-get install wrk`).
//! Options via env: BENCH_OPS (default 10000), BENCH_WRK_SECONDS (default 3) and
//! BENCH_WRK_ROUNDS (default 9): the GET figures are medians of interleaved rounds.

mod common;

use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};

use common::{Service, cpu_seconds, env_number, median, percentile, rss_mb, send_json, start_dummy, wrk};

/// Set in the environment of the bench's own child that serves the scale reference.
const BARE_AXUM_BODY: &str = "BENCH_BARE_AXUM_BODY";

/// The scale reference: a bare axum handler answering a fixed document out of a map, run as a
/// process of its own with a runtime as the service's (this bench started again, with
/// `BARE_AXUM_BODY` set), so that both sides are measured alike: separate processes, CPU per
/// request read from each one's `/proc` entry.
async fn bare_axum(body: &str) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command.env(BARE_AXUM_BODY, body);
    let service = Service::start(command, None).await;
    (service.child, format!("{}/ops/x", service.base))
}

/// The child's side of `bare_axum`.
async fn serve_bare_axum(body: String) {
    let state = Arc::new(std::collections::HashMap::from([("x".to_owned(), body)]));
    let app = Router::new()
        .route(
            "/ops/{id}",
            get(|State(m): State<Arc<std::collections::HashMap<String, String>>>, Path(id): Path<String>| async move {
                m.get(&id).cloned().unwrap_or_default()
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

async fn fetch_health(http: &reqwest::Client, base: &str) -> Value {
    let response = http.get(format!("{base}/api/v1/health")).send().await.unwrap();
    response.json().await.unwrap()
}

/// Starts the release binary on a free port; `env` adds to its environment.
async fn service(db: &str, token: Option<&str>, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut command = common::binary();
    command.args(["serve", "--listen", "127.0.0.1:0", "--database-url", db]).env("RUST_LOG", "info");
    if let Some(token) = token {
        command.env("KTRDR_OPS_API_TOKEN", token);
    }
    command.envs(env.iter().copied());
    let service = Service::start(command, None).await;
    (service.child, service.base)
}

/// An OTLP/HTTP collector that takes every export and counts the spans it received.
async fn collector() -> (String, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).unwrap_or_default();
                let spans = export["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
                    .map(|s| s["spans"].as_array().map_or(0, Vec::len) as u64)
                    .sum::<u64>();
                counted.fetch_add(spans, Ordering::Relaxed);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

/// One server under wrk, and its process (for its CPU time).
struct Target<'a> {
    url: String,
    pid: u32,
    token: Option<&'a str>,
}

/// One wrk round on one target: requests per second, and the server's CPU time per request (µs).
#[derive(Clone, Copy)]
struct Round {
    rps: f64,
    cpu_us: f64,
}

fn measure(target: &Target<'_>, seconds: u64) -> Round {
    let cpu_before = cpu_seconds(target.pid);
    let rps = wrk(&target.url, seconds, target.token);
    let cpu = cpu_seconds(target.pid) - cpu_before;
    Round { rps, cpu_us: cpu / (rps * seconds as f64) * 1e6 }
}

/// A target's median over the rounds of `pick`.
fn median_of(rounds: &[Vec<Round>], target: usize, pick: fn(&Round) -> f64) -> f64 {
    median(rounds.iter().map(|round| pick(&round[target])).collect())
}

/// The median of a target's throughput over a reference's in the same round.
fn ratio(rounds: &[Vec<Round>], target: usize, reference: usize) -> f64 {
    median(rounds.iter().map(|round| round[target].rps / round[reference].rps).collect())
}

#[tokio::main]
async fn main() {
    if let Ok(body) = std::env::var(BARE_AXUM_BODY) {
        return serve_bare_axum(body).await;
    }
    let ops = env_number("BENCH_OPS", 10_000) as usize;
    let wrk_seconds = env_number("BENCH_WRK_SECONDS", 3);
    let wrk_rounds = env_number("BENCH_WRK_ROUNDS", 9).max(1);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());

    let (mut child, base) = service(&db, None, &[]).await;
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mb(pid);
    println!("service pid {pid} at {base}, idle RSS {idle_rss:.1} MB");

    // 1. GET throughput.
    let start = |iterations: u32, interval_ms: u64| start_dummy(&http, &base, None, iterations, interval_ms);
    let watched = start(1_000_000, 100).await;
    // Two references: the small document earlier figures were measured against, and the very
    // bytes the service answers (the payload's own cost is then the same on both sides).
    let small = serde_json::to_string(
        &json!({ "success": true, "data": { "operation_id": "x", "progress": { "percentage": 50.0 }}}),
    )
    .unwrap();
    let (mut bare, bare_url) = bare_axum(&small).await;
    let record = http.get(format!("{base}/api/v1/operations/{watched}")).send().await.unwrap().text().await.unwrap();
    let (mut same_body_bare, same_body_url) = bare_axum(&record).await;
    // The same service with a bearer token required (metrics are always on).
    let guarded_db = format!("sqlite://{}", dir.path().join("guarded.db").display());
    let (mut guarded, guarded_base) = service(&guarded_db, Some("bench-token"), &[]).await;
    let guarded_id = start_dummy(&http, &guarded_base, Some("bench-token"), 1_000_000, 100).await;
    // The same service exporting traces (OTLP/HTTP JSON) with 1 % of new traces sampled.
    let (collector_url, spans_received) = collector().await;
    let traced_db = format!("sqlite://{}", dir.path().join("traced.db").display());
    let traced_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
    ];
    let (mut traced, traced_base) = service(&traced_db, None, &traced_env).await;
    let traced_id = start_dummy(&http, &traced_base, None, 1_000_000, 100).await;
    // Interleaved rounds, each figure the median of its rounds, and each ratio the median of
    // the ratios within a round: on a shared machine the speed of one stretch of seconds
    // differs from the next by ±20 %, which back-to-back runs of one target at a time would
    // read as differences between the targets.
    let op = |base: &str, id: &str| format!("{base}/api/v1/operations/{id}");
    let targets = [
        Target { url: bare_url, pid: bare.id().unwrap(), token: None },
        Target { url: same_body_url, pid: same_body_bare.id().unwrap(), token: None },
        Target { url: op(&base, &watched), pid, token: None },
        Target { url: op(&guarded_base, &guarded_id), pid: guarded.id().unwrap(), token: Some("bench-token") },
        Target { url: op(&traced_base, &traced_id), pid: traced.id().unwrap(), token: None },
    ];
    let rounds: Vec<Vec<Round>> =
        (0..wrk_rounds).map(|_| targets.iter().map(|target| measure(target, wrk_seconds)).collect()).collect();
    let [bare_rps, same_body_rps, get_rps, guarded_rps, traced_rps] =
        [0, 1, 2, 3, 4].map(|t| median_of(&rounds, t, |r| r.rps));
    let [bare_cpu, same_body_cpu, get_cpu, guarded_cpu, traced_cpu] =
        [0, 1, 2, 3, 4].map(|t| median_of(&rounds, t, |r| r.cpu_us));
    let (get_of_bare, get_of_same_body) = (ratio(&rounds, 2, 0), ratio(&rounds, 2, 1));
    let guarded_of_get = ratio(&rounds, 3, 2);
    let (traced_of_bare, traced_of_same_body, traced_of_get) =
        (ratio(&rounds, 4, 0), ratio(&rounds, 4, 1), ratio(&rounds, 4, 2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = spans_received.load(Ordering::Relaxed);
    let pct = |ratio: f64| ratio * 100.0;
    println!(
        "GET /api/v1/operations/{{id}} (running op, 64 connections, medians of {wrk_rounds} interleaved rounds of \
         {wrk_seconds} s; CPU = the server process's CPU time per request)"
    );
    println!("  bare axum handler reading a map:          {bare_rps:>7.0} req/s, CPU {bare_cpu:.2} µs");
    println!(
        "  bare axum answering the same {} bytes:    {same_body_rps:>7.0} req/s, CPU {same_body_cpu:.2} µs",
        record.len()
    );
    println!(
        "  the service, not tracing (metrics on):    {get_rps:>7.0} req/s, CPU {get_cpu:.2} µs: {:.0}% of bare axum, \
         {:.0}% of bare axum with the same bytes",
        pct(get_of_bare),
        pct(get_of_same_body)
    );
    println!(
        "  with a bearer token on every request:     {guarded_rps:>7.0} req/s, CPU {guarded_cpu:.2} µs: {:.0}% of \
         without",
        pct(guarded_of_get)
    );
    println!(
        "  exporting traces, 1 % sampled:            {traced_rps:>7.0} req/s, CPU {traced_cpu:.2} µs: {:.0}% of bare \
         axum, {:.0}% of bare axum with the same bytes, {:.0}% of not tracing; {spans} spans received",
        pct(traced_of_bare),
        pct(traced_of_same_body),
        pct(traced_of_get)
    );
    for process in [&mut guarded, &mut traced, &mut bare, &mut same_body_bare] {
        process.kill().await.unwrap();
    }

    // 2. Starts per second, each stored before the answer.
    let began = Instant::now();
    let ids: Vec<String> =
        futures_util::stream::iter(0..ops).map(|_| start(100_000, 2_000)).buffer_unordered(32).collect().await;
    let elapsed = began.elapsed();
    println!(
        "started {ops} dummy ops in {:.2} s: {:.0} starts/s (SQLite, 32 in flight)",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64()
    );

    // 3. Memory with them all running (let a few progress ticks and store flushes happen).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let health = fetch_health(&http, &base).await;
    println!("{} operations active, RSS {:.1} MB", health["operations"]["active"], rss_mb(pid));

    // 4. DELETE latency until `cancelled` (the answer comes after the work stopped).
    let mut latencies = Vec::with_capacity(ops + 1);
    for id in ids.iter().chain(std::iter::once(&watched)) {
        let began = Instant::now();
        let r: Value = send_json(http.delete(format!("{base}/api/v1/operations/{id}"))).await;
        latencies.push(began.elapsed());
        assert_eq!(r["data"]["status"], "cancelled", "{r}");
    }
    let slowest = latencies.iter().enumerate().max_by_key(|(_, d)| **d).map(|(i, _)| i).unwrap_or(0);
    latencies.sort();
    println!("  (slowest was DELETE #{slowest})");
    println!(
        "DELETE until cancelled ({} ops, one at a time): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );

    // 5. Everything released (after a few seconds idle, as an allocator returns memory lazily).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let health = fetch_health(&http, &base).await;
    println!(
        "after cancelling all: {} active (registry), RSS {:.1} MB (idle was {idle_rss:.1} MB)",
        health["operations"]["active"],
        rss_mb(pid)
    );
    child.kill().await.unwrap();
}
