//! How a training on a worker ends here: a cancel frees its worker within two seconds — a
//! continuation cancelled the instant it exists too, stopped on the worker it resumed on; a
//! worker's report that it finished ends it with its result; a hung worker's training moves; a
//! worker that breaks the connection while answering the start is passed over.

use std::time::Duration;

use serde_json::json;

use crate::common::TestApp;
use crate::workers::{
    eurusd, long_strategy, placed_on, quick_checks, register, registered, start_example, until_record, until_worker,
    worker_process, worker_sim,
};

#[tokio::test]
async fn a_cancel_frees_the_worker_within_two_seconds() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.training_workers = 1;
        c.sim.training_pace_ms = 20;
    })
    .await;
    eurusd(app.data_dir.path());
    let (_, fleet) = app.get("/api/v1/workers").await;
    assert_eq!(fleet.as_array().unwrap().len(), 1, "serve --sim registers its worker: {fleet}");
    let worker = fleet[0]["worker_id"].as_str().unwrap().to_owned();
    let id = start_example(&app).await;
    until_record(&app.base, &id, "running", Duration::from_secs(10), |r| {
        r["progress"]["context"]["host_status"] == "running"
    })
    .await;
    let (_, busy) = app.get(&format!("/api/v1/workers/{worker}")).await;
    assert_eq!((busy["status"].as_str(), busy["current_operation_id"].as_str()), (Some("busy"), Some(id.as_str())));
    let cancelled_at = std::time::Instant::now();
    assert_eq!(app.delete(&format!("/api/v1/operations/{id}")).await.0, 200);
    until_worker(&app, &worker, "freed", |w| w["worker"]["status"] == "available").await;
    let freed = cancelled_at.elapsed();
    assert!(freed < Duration::from_secs(2), "freed after {freed:?}");
    assert_eq!(app.record(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn a_worker_reporting_a_training_finished_ends_it_here_with_its_result() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.training_workers = 1;
        c.sim.training_pace_ms = 50;
    })
    .await;
    eurusd(app.data_dir.path());
    let (_, fleet) = app.get("/api/v1/workers").await;
    let worker = fleet[0].clone();
    let id = start_example(&app).await;
    until_record(&app.base, &id, "running", Duration::from_secs(10), |r| {
        r["progress"]["context"]["host_status"] == "running"
    })
    .await;
    let body = json!({ "worker_id": worker["worker_id"], "worker_type": "training", "endpoint_url": worker["endpoint_url"],
        "completed_operations": [{ "operation_id": id, "status": "COMPLETED", "result": { "model_path": "models/x.pt" },
                                   "completed_at": "2026-11-28T10:00:00Z" }] });
    let (status, answer) = register(&app, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stop_operations"], json!([]), "{answer}");
    let done = until_record(&app.base, &id, "completed", Duration::from_secs(5), |r| r["status"] == "completed").await;
    assert_eq!(done["result_summary"]["model_path"], "models/x.pt", "{done}");
}

#[tokio::test]
async fn a_hung_workers_training_moves_once_the_health_checks_give_up_on_it() {
    let app = TestApp::spawn_with_sim(quick_checks).await;
    eurusd(app.data_dir.path());
    let (first, first_url) = worker_process(app.data_dir.path(), &app.base, "20").await;
    let (_second, second_url) = worker_process(app.data_dir.path(), &app.base, "20").await;
    let ids = registered(&app.base, &[&first_url, &second_url]).await;
    let id = start_example(&app).await;
    until_record(&app.base, &id, "running on the first", Duration::from_secs(10), |r| {
        r["progress"]["context"]["host_status"] == "running" && r["progress"]["context"]["worker_id"] == ids[0].as_str()
    })
    .await;
    // Stopped, not killed: it accepts connections and never answers, as a hung machine does.
    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let moved = until_record(&app.base, &id, "the move", Duration::from_secs(10), |r| {
        r["progress"]["context"]["worker_id"] == ids[1].as_str()
    })
    .await;
    let warnings = moved["warnings"].to_string();
    let given_up = warnings.contains("health checks failed") || warnings.contains("removed from the registry");
    assert!(warnings.contains(&format!("worker {} stopped answering", ids[0])) && given_up, "{moved}");
    let done = until_record(&app.base, &id, "the end", Duration::from_secs(30), |r| r["status"] != "running").await;
    assert_eq!(done["status"], "completed", "{done}");
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
}

/// A "worker" that answers its health checks and closes the connection on anything else, as a
/// worker dying in the middle of answering does.
pub(crate) async fn answers_health_only() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                if head[..n].starts_with(b"GET /health") {
                    let body = r#"{"healthy":true,"worker_status":"idle","current_operation":null}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
                // Anything else: the connection closes with no answer.
            });
        }
    });
    url
}

#[tokio::test]
async fn a_worker_that_dies_while_answering_the_start_is_passed_over() {
    let app = TestApp::spawn_with_sim(|c| c.hosts.training.url = String::new()).await;
    eurusd(app.data_dir.path());
    let dying = json!({ "worker_id": "dying", "worker_type": "training", "endpoint_url": answers_health_only().await,
                        "capabilities": { "gpu": true } });
    assert_eq!(register(&app, dying).await.0, 200);
    let good = json!({ "worker_id": "good", "worker_type": "training", "endpoint_url": worker_sim(app.data_dir.path()).await });
    assert_eq!(register(&app, good).await.0, 200);
    let id = start_example(&app).await;
    assert_eq!(placed_on(&app, &id).await, "good", "the GPU worker broke the connection: passed over");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"ktrdr_ops_dispatches_total{outcome="passed_over"} 1"#), "{metrics}");
}

/// A resume answers once the worker trains on from its checkpoint, but the continuation may wait
/// for a run slot before its work runs a line: a DELETE meanwhile used to find no stop to send,
/// and the worker trained on, busy and unstoppable, to the end.
#[tokio::test]
async fn a_continuation_cancelled_before_it_ran_stops_on_its_worker_and_frees_it() {
    let strategies = long_strategy(30);
    let app = TestApp::spawn_with_sim(|c| {
        quick_checks(c);
        c.sim.training_workers = 2;
        c.sim.training_pace_ms = 50;
        c.training.strategies_dir = strategies.path().to_owned();
        c.operations.max_concurrent.insert("training".into(), 1);
    })
    .await;
    eurusd(app.data_dir.path());
    let start = || app.post("/api/v1/trainings/start", json!({ "strategy_name": "long" }));
    let (status, started) = start().await;
    assert_eq!(status, 200, "{started}");
    let old = started["task_id"].as_str().unwrap().to_owned();
    let running = until_record(&app.base, &old, "an epoch", Duration::from_secs(20), |r| {
        r["metrics"]["epochs"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let worker = running["progress"]["context"]["worker_id"].as_str().unwrap().to_owned();
    // Another training takes the only run slot as soon as the first frees it, on the other worker.
    let (_, other) = start().await;
    let other = other["task_id"].as_str().unwrap().to_owned();
    assert_eq!(app.delete(&format!("/api/v1/operations/{old}")).await.0, 200);
    assert_ne!(placed_on(&app, &other).await, worker);
    let (status, answer) = app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let new = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    let (_, waiting) = app.get(&format!("/api/v1/operations/{new}")).await;
    assert_eq!(waiting["data"]["status"], "pending", "waiting for the run slot: {waiting}");
    // The continuation trains there already (the worker's health says so).
    until_worker(&app, &worker, "busy", |w| w["worker"]["status"] == "busy").await;
    assert_eq!(app.delete(&format!("/api/v1/operations/{new}")).await.0, 200);
    // The worker would train ~14 s more if the stop never reached it: seconds tell.
    let stopped = until_record(&app.base, &new, "the worker's stop", Duration::from_secs(5), |r| {
        r["cancellation"]["remote"]["host_final_status"].is_string()
    })
    .await;
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    until_worker(&app, &worker, "freed", |w| w["worker"]["status"] == "available").await;
    assert_eq!(app.delete(&format!("/api/v1/operations/{other}")).await.0, 200);
}

/// The worker a continuation trains on is its own from the start: nothing else is sent there
/// before a health check would notice it busy (10 s by default).
#[tokio::test]
async fn a_continuation_holds_the_worker_it_resumed_on() {
    let strategies = long_strategy(30);
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.training_workers = 1;
        c.sim.training_pace_ms = 50;
        c.training.strategies_dir = strategies.path().to_owned();
    })
    .await;
    eurusd(app.data_dir.path());
    let (_, fleet) = app.get("/api/v1/workers").await;
    let worker = fleet[0]["worker_id"].as_str().unwrap().to_owned();
    let (_, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "long" })).await;
    let old = started["task_id"].as_str().unwrap().to_owned();
    until_record(&app.base, &old, "an epoch", Duration::from_secs(20), |r| {
        r["metrics"]["epochs"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert_eq!(app.delete(&format!("/api/v1/operations/{old}")).await.0, 200);
    let (status, answer) = app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let new = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    until_worker(&app, &worker, "held by the continuation", |w| {
        w["worker"]["status"] == "busy" && w["worker"]["current_operation_id"] == new.as_str()
    })
    .await;
    let (_, next) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "long" })).await;
    let next = next["task_id"].as_str().unwrap().to_owned();
    until_record(&app.base, &next, "waiting", Duration::from_secs(5), |r| {
        r["progress"]["current_step"]
            .as_str()
            .is_some_and(|s| s.contains("waiting for a free training worker (1 busy)"))
    })
    .await;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(r#"outcome="passed_over""#), "never sent to the held worker: {metrics}");
    for id in [&new, &next] {
        assert_eq!(app.delete(&format!("/api/v1/operations/{id}")).await.0, 200);
    }
}

/// A cancel while the worker is still answering the start: the stop waits for that answer, so it
/// never reaches the worker before the session it stops. (It used to overtake it, find nothing
/// there, and the worker trained the whole training for no one.)
#[tokio::test]
async fn a_cancel_during_a_slow_start_stops_the_session_that_start_made() {
    let strategies = long_strategy(30);
    let app = TestApp::spawn_with_sim(|c| {
        quick_checks(c);
        c.hosts.training.url = String::new();
        c.training.strategies_dir = strategies.path().to_owned();
    })
    .await;
    eurusd(app.data_dir.path());
    let endpoint = worker_sim(app.data_dir.path()).await;
    let knobs = json!({ "pace_ms": 50, "start_delay_ms": 1000 });
    app.http.put(format!("{endpoint}/sim/knobs")).json(&knobs).send().await.unwrap().error_for_status().unwrap();
    let body = json!({ "worker_id": "slow", "worker_type": "training", "endpoint_url": endpoint });
    assert_eq!(register(&app, body).await.0, 200);
    let (_, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "long" })).await;
    let id = started["task_id"].as_str().unwrap().to_owned();
    until_record(&app.base, &id, "the start sent", Duration::from_secs(5), |r| {
        r["progress"]["context"]["worker_id"] == "slow"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    assert_eq!(app.delete(&format!("/api/v1/operations/{id}")).await.0, 200);
    assert!(asked.elapsed() < Duration::from_millis(500), "the DELETE does not wait for the start");
    let stopped = until_record(&app.base, &id, "the worker's stop", Duration::from_secs(5), |r| {
        r["cancellation"]["remote"]["host_final_status"].is_string()
    })
    .await;
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    until_record(&endpoint, &id, "the end on the worker", Duration::from_secs(2), |r| r["status"] == "cancelled").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let on_worker: serde_json::Value =
        app.http.get(format!("{endpoint}/api/v1/operations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(on_worker["data"]["status"], "cancelled", "and stays so: {on_worker}");
    until_worker(&app, "slow", "freed", |w| w["worker"]["status"] == "available").await;
}
