//! Worker fleet benchmarks (issue: the worker fleet). The release binary as its own process:
//!
//! 1. dispatch overhead: 10 registered workers (small HTTP servers in this process that answer
//!    `/training/start` as a ktrdr worker does and note when it arrived); `BENCH_DISPATCHES`
//!    (default 100) trainings started one after another: from sending `POST /trainings/start` to
//!    the worker receiving its `/training/start`;
//! 2. `GET /api/v1/workers` with 1,000 registered workers (median and p99 of 50).
//!
//! `cargo bench --bench workers`.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use common::{Service, env_number, ms, percentile, send_json};
use serde_json::{Value, json};

/// When each task id reached a worker.
type Arrivals = Arc<parking_lot::Mutex<HashMap<String, Instant>>>;

/// A worker that takes every training and forgets it (its operation then reads 404: the
/// training fails there, which frees the worker for the next).
async fn worker(arrivals: Arrivals) -> String {
    let router = axum::Router::new()
        .route(
            "/training/start",
            post(|State(arrivals): State<Arrivals>, Json(body): Json<Value>| async move {
                let id = body["task_id"].as_str().unwrap_or_default().to_owned();
                arrivals.lock().insert(id.clone(), Instant::now());
                Json(json!({ "success": true, "operation_id": id, "status": "started" }))
            }),
        )
        .route(
            "/health",
            get(|| async { Json(json!({ "healthy": true, "worker_status": "idle", "current_operation": null })) }),
        )
        .with_state(arrivals);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

#[tokio::main]
async fn main() {
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("EURUSD_1h.csv"),
        "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n",
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("ops.db").display());
    let mut command = common::binary();
    command
        .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--database-url", &db])
        .args(["--data-dir", &data.display().to_string()])
        .args(["--strategies-dir", concat!(env!("CARGO_MANIFEST_DIR"), "/strategies")])
        .env("RUST_LOG", "info")
        .env("KTRDR_OPS__TRAINING__POLL_ERRORS", "1");
    let service = Service::start(command, None).await;
    let base = service.base.clone();

    // 1. Dispatch overhead.
    let arrivals: Arrivals = Default::default();
    for i in 0..10 {
        let endpoint = worker(arrivals.clone()).await;
        let body = json!({ "worker_id": format!("bench-{i}"), "worker_type": "training", "endpoint_url": endpoint });
        send_json(http.post(format!("{base}/api/v1/workers/register")).json(&body)).await;
    }
    let dispatches = env_number("BENCH_DISPATCHES", 100) as usize;
    let mut overheads = Vec::new();
    for _ in 0..dispatches {
        let sent = Instant::now();
        let started = send_json(
            http.post(format!("{base}/api/v1/trainings/start")).json(&json!({ "strategy_name": "example_mlp" })),
        )
        .await;
        let id = started["task_id"].as_str().unwrap_or_else(|| panic!("{started}")).to_owned();
        let waiting = Instant::now();
        let arrived = loop {
            if let Some(at) = arrivals.lock().get(&id) {
                break *at;
            }
            if waiting.elapsed() > Duration::from_secs(10) {
                let r = send_json(http.get(format!("{base}/api/v1/operations/{id}"))).await;
                panic!("{id} never reached a worker: {r}");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        overheads.push(arrived - sent);
        // Let it end (the worker forgot it) so that its worker is free for the next ones.
        loop {
            let r = send_json(http.get(format!("{base}/api/v1/operations/{id}"))).await;
            if r["data"]["status"] != "running" && r["data"]["status"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    overheads.sort();
    println!(
        "dispatch ({dispatches} trainings over 10 workers): POST /trainings/start → the worker's /training/start: \
         p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&overheads, 0.5)),
        ms(percentile(&overheads, 0.99))
    );

    // 2. The registry with 1,000 workers.
    for i in 0..990 {
        let body = json!({ "worker_id": format!("idle-{i}"), "worker_type": "training",
                           "endpoint_url": format!("http://10.255.{}.{}:5003", i / 250, i % 250 + 1) });
        send_json(http.post(format!("{base}/api/v1/workers/register")).json(&body)).await;
    }
    let mut reads = Vec::new();
    let mut count = 0;
    for _ in 0..50 {
        let began = Instant::now();
        let list: Value = http.get(format!("{base}/api/v1/workers")).send().await.unwrap().json().await.unwrap();
        reads.push(began.elapsed());
        count = list.as_array().map_or(0, Vec::len);
    }
    reads.sort();
    println!(
        "GET /api/v1/workers with {count} registered workers: p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&reads, 0.5)),
        ms(percentile(&reads, 0.99))
    );
}
