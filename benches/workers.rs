//! Worker fleet benchmarks (issue: the worker fleet). The release binary as its own process:
//!
//! 1. dispatch overhead: 10 registered workers (small HTTP servers in this process that answer
//!    `/training/start` as a ktrdr worker does and note when it arrived); `BENCH_DISPATCHES`
//!    (default 100) trainings started one after another: from sending `POST /trainings/start` to
//!    the worker receiving its `/training/start`;
//! 2. `GET /api/v1/workers` with 1,000 registered workers (median and p99 of 50), each a small
//!    HTTP server of its own in this process answering `/health`;
//! 3. a health round over those 1,000 (default settings: every 10 s): the spread of their
//!    `last_health_check` in one round, which must stay under the interval;
//! 4. moving a training off a lost worker, with the default health settings (10 s, 5 s timeout,
//!    3 failures): two `ktrdr-ops sim --training-workers 1` processes, a long training on the
//!    first; killed with SIGKILL (connections refused), then, on a second training, stopped with
//!    SIGSTOP (hung: connections accepted, never answered): from the signal to the training
//!    running on the other worker. The bound is interval × (failures + 1) + 1 s = 41 s.
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

/// A worker that takes every training and fails it at once (its operation reads `failed`,
/// which frees the worker for the next).
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
            "/api/v1/operations/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<String>| async move {
                Json(json!({ "success": true, "data": { "operation_id": id, "operation_type": "training",
                    "status": "failed", "error_message": "the benchmark's worker only takes trainings" } }))
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
        .args(["serve", "--sim", "--sim-training-workers", "0", "--listen", "127.0.0.1:0", "--database-url", &db])
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
        // Let it end (the worker failed it) so that its worker is free for the next ones.
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

    // 2. The registry with 1,000 workers, each answering its health checks.
    let idle: Arrivals = Default::default();
    for i in 0..990 {
        let endpoint = worker(idle.clone()).await;
        let body = json!({ "worker_id": format!("idle-{i}"), "worker_type": "training", "endpoint_url": endpoint });
        send_json(http.post(format!("{base}/api/v1/workers/register")).json(&body)).await;
    }
    let registered_at = chrono::Utc::now();
    let mut reads = Vec::new();
    let mut count = 0;
    for _ in 0..50 {
        let began = Instant::now();
        // Until the whole answer is in (parsing it here is the client's cost, not the service's).
        let body = http.get(format!("{base}/api/v1/workers")).send().await.unwrap().bytes().await.unwrap();
        reads.push(began.elapsed());
        count = serde_json::from_slice::<Value>(&body).unwrap().as_array().map_or(0, Vec::len);
    }
    reads.sort();
    println!(
        "GET /api/v1/workers with {count} registered workers: p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&reads, 0.5)),
        ms(percentile(&reads, 0.99))
    );

    // 3. One health round over all of them.
    let round = loop {
        let list: Value = http.get(format!("{base}/api/v1/workers")).send().await.unwrap().json().await.unwrap();
        let checked: Vec<chrono::DateTime<chrono::Utc>> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["last_health_check"].as_str())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .filter(|t| *t > registered_at)
            .collect();
        if checked.len() == count {
            let (first, last) = (checked.iter().min().unwrap(), checked.iter().max().unwrap());
            break (*last - *first).to_std().unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("health round over {count} workers (interval 10 s): all checked within {:.0} ms", ms(round));
    drop(service);

    // 4. Moves off a lost worker (BENCH_MOVES=0 skips them: the hung case takes ~35 s).
    if env_number("BENCH_MOVES", 1) > 0 {
        moves(&http, &dir).await;
    }
}

/// A training running on one of two worker processes; the worker is then lost by `signal`: the
/// time until the training runs on the other one.
async fn moves(http: &reqwest::Client, dir: &tempfile::TempDir) {
    let strategies = dir.path().join("strategies");
    std::fs::create_dir_all(&strategies).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/strategies/example_mlp.yaml")).unwrap();
    let long = example.replace("name: example_mlp", "name: long").replace("  epochs: 10", "  epochs: 1000");
    std::fs::write(strategies.join("long.yaml"), long).unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}", dir.path().join("moves.db").display());
    let mut command = common::binary();
    command
        .args(["serve", "--sim", "--sim-training-workers", "0", "--listen", "127.0.0.1:0", "--database-url", &db])
        .args(["--data-dir", &data.display().to_string(), "--strategies-dir", &strategies.display().to_string()])
        .env("RUST_LOG", "info");
    let service = Service::start(command, None).await;
    let base = service.base.clone();
    for signal in ["KILL", "STOP"] {
        let mut workers = Vec::new();
        for _ in 0..2 {
            let mut child = common::binary()
                .args(["sim", "--training-workers", "1", "--backend-url", &base, "--sim-training-pace-ms", "20"])
                .args(["--ib-listen", "127.0.0.1:0", "--training-listen", "127.0.0.1:0"])
                .args(["--data-dir", &data.display().to_string()])
                .env("KTRDR_OPS__TRAINING__MODELS_DIR", dir.path().join("models"))
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
            let line = loop {
                let line = lines.next_line().await.unwrap().expect("the worker process runs");
                if line.contains("IB simulator on") {
                    break line;
                }
            };
            let url = line.split_whitespace().filter(|w| w.starts_with("http://")).nth(1).unwrap().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            workers.push((child, url));
        }
        let worker_of = |url: String| {
            let http = http.clone();
            let base = base.clone();
            async move {
                loop {
                    let list: Value = send_json(http.get(format!("{base}/api/v1/workers"))).await;
                    if let Some(w) = list.as_array().unwrap().iter().find(|w| w["endpoint_url"] == url.as_str()) {
                        return w["worker_id"].as_str().unwrap().to_owned();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let ids = [worker_of(workers[0].1.clone()).await, worker_of(workers[1].1.clone()).await];
        let started =
            send_json(http.post(format!("{base}/api/v1/trainings/start")).json(&json!({ "strategy_name": "long" })))
                .await;
        let id = started["task_id"].as_str().unwrap_or_else(|| panic!("{started}")).to_owned();
        let on = |worker: &str, r: &Value| {
            r["data"]["progress"]["context"]["worker_id"] == worker
                && r["data"]["progress"]["context"]["host_status"] == "running"
        };
        let (first, second) = loop {
            let r = send_json(http.get(format!("{base}/api/v1/operations/{id}"))).await;
            if on(&ids[0], &r) {
                break (0, 1);
            }
            if on(&ids[1], &r) {
                break (1, 0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pid = workers[first].0.id().unwrap().to_string();
        let lost = Instant::now();
        std::process::Command::new("kill").args([format!("-{signal}"), pid.clone()]).status().unwrap();
        loop {
            let r = send_json(http.get(format!("{base}/api/v1/operations/{id}"))).await;
            if on(&ids[second], &r) {
                break;
            }
            assert!(lost.elapsed() < Duration::from_secs(120), "never moved: {r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = lost.elapsed();
        let how = if signal == "KILL" { "killed (SIGKILL)" } else { "hung (SIGSTOP)" };
        println!("worker {how}: its training runs on the other worker after {:.2} s (bound 41 s)", took.as_secs_f64());
        send_json(http.delete(format!("{base}/api/v1/operations/{id}"))).await;
        let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
        // The next round starts on a fresh pair.
        drop(workers);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
