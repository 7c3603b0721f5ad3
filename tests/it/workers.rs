//! The worker registry (workers.md §1–3) over real sockets: registrations in ktrdr's shapes and
//! their refusals, the fleet kept in the database and shared by replicas, health checks that
//! follow a worker's own `/health` (the training simulator is one), mark the silent ones
//! unavailable and remove them, and registrations that never reopen a finished operation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestApp, TestDb, as_worker, assert_envelope, json_of};
use crate::worker_ends::answers_health_only;

pub(crate) fn quick_checks(c: &mut ktrdr_ops::config::Config) {
    c.workers.health_check_interval = ktrdr_ops::time::HumanDuration(Duration::from_millis(100));
    c.workers.health_check_timeout = ktrdr_ops::time::HumanDuration(Duration::from_millis(500));
    c.workers.health_check_failures = 2;
    c.workers.removal_threshold = ktrdr_ops::time::HumanDuration(Duration::from_millis(600));
}

pub(crate) async fn register(app: &TestApp, body: Value) -> (u16, Value) {
    let request = as_worker(app.http.post(app.url("/api/v1/workers/register")).json(&body));
    json_of(request.send().await.unwrap()).await
}

pub(crate) async fn until_worker(app: &TestApp, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, worker) = app.get(&format!("/api/v1/workers/{id}")).await;
        if check(&json!({ "status": status, "worker": worker })) {
            return worker;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened: {status} {worker}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A local address nothing listens on.
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn workers_register_list_and_read_back_as_bare_records() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (status, list) = app.get("/api/v1/workers").await;
    assert_eq!((status, list), (200, json!([])), "a bare, empty array");

    // A live worker: it answers its health checks.
    let live = answers_health_only().await;
    let body = json!({ "worker_id": "training-worker-1", "worker_type": "training", "endpoint_url": live,
                       "capabilities": { "gpu": true, "gpu_type": "CUDA", "gpu_count": 1 }, "current_operation_id": null,
                       "completed_operations": [] });
    let (status, worker) = register(&app, body.clone()).await;
    assert_eq!(status, 200, "{worker}");
    assert_eq!(worker["worker_id"], "training-worker-1");
    assert_eq!(worker["status"], "available");
    assert_eq!(worker["capabilities"]["gpu_type"], "CUDA");
    assert_eq!(worker["health_check_failures"], 0);
    assert_eq!(worker["last_health_check"], Value::Null);
    assert!(worker["last_healthy_at"].as_str().unwrap().ends_with("+00:00"), "{worker}");
    assert_eq!(worker["metadata"], json!({}));
    assert_eq!(worker["stop_operations"], json!([]));

    // Only the four basic fields, as the older training host sends them.
    let cpu = json!({ "worker_id": "cpu-1", "worker_type": "backtesting", "endpoint_url": "http://127.0.0.1:9" });
    assert_eq!(register(&app, cpu).await.0, 200);
    let (_, all) = app.get("/api/v1/workers").await;
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["training-worker-1", "cpu-1"], "registration order");
    let (_, training) = app.get("/api/v1/workers?worker_type=training").await;
    assert_eq!(training.as_array().unwrap().len(), 1);
    let (_, none) = app.get("/api/v1/workers?status=sleeping").await;
    assert_eq!(none, json!([]), "an unknown status lists none");
    let (status, body) = app.get("/api/v1/workers?worker_type=toaster").await;
    assert_eq!((status, assert_envelope(&body)), (422, "VALIDATION_ERROR".to_owned()));

    // While a worker is live, its id stays bound to its endpoint and its endpoint to its id.
    let mut again = body_with_id(&json!({ "worker_type": "training", "endpoint_url": live }), "training-worker-2");
    again["capabilities"] = json!({ "gpu": false });
    let (status, refused) = register(&app, again).await;
    assert_eq!((status, assert_envelope(&refused)), (409, "WORKER_CONFLICT".to_owned()), "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("training-worker-1"), "{refused}");
    let moved =
        json!({ "worker_id": "training-worker-1", "worker_type": "training", "endpoint_url": "http://127.0.0.1:10" });
    assert_eq!(register(&app, moved).await.0, 409, "a live id cannot be re-pointed");
    let again = json!({ "worker_id": "training-worker-1", "worker_type": "training", "endpoint_url": live });
    let (status, same) = register(&app, again).await;
    assert_eq!(status, 200, "the same worker registering again is welcome: {same}");
    assert_eq!(app.get("/api/v1/workers/training-worker-1").await.1["endpoint_url"], live.as_str());
    let (status, cli) = cli_workers(&app).await;
    assert!(status.success(), "{cli}");
    assert!(cli.contains("training") && cli.contains("http://127.0.0.1:9") && cli.contains("backtesting"), "{cli}");
    assert!(cli.contains("ID") && cli.contains("training-worker-1") && cli.contains("cpu-1"), "ids are shown: {cli}");
}

fn body_with_id(base: &Value, id: &str) -> Value {
    let mut body = base.clone();
    body["worker_id"] = json!(id);
    body
}

async fn cli_workers(app: &TestApp) -> (std::process::ExitStatus, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["workers", "--url", &app.base])
        .envs(crate::common::auth_mode().then_some(("KTRDR_API_TOKEN", crate::common::TEST_CLIENT_TOKEN)))
        .output()
        .await
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn bad_registrations_are_refused_with_the_field_named() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let good = json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": "http://127.0.0.1:9" });
    let cases = [
        (json!({ "worker_type": "training", "endpoint_url": "http://x:1" }), "worker_id"),
        (json!({ "worker_id": "w", "worker_type": "trainer", "endpoint_url": "http://x:1" }), "worker_type"),
        (json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": "10.0.0.7:5003" }), "endpoint_url"),
        (json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": "ftp://x" }), "endpoint_url"),
        (
            json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": "http://x:1",
                    "completed_operations": [{ "operation_id": "op", "status": "completed", "completed_at": "2026-11-28T00:00:00Z" }] }),
            "completed_operations.status",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = register(&app, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
        assert!(!answer["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(register(&app, good).await.0, 200);
}

#[tokio::test]
async fn health_checks_follow_a_workers_own_health_and_remove_the_silent_ones() {
    let app = TestApp::spawn_with_sim(quick_checks).await;
    // The training simulator answers /health as a ktrdr worker does.
    let sim = json!({ "worker_id": "sim", "worker_type": "training", "endpoint_url": app.training_url() });
    assert_eq!(register(&app, sim).await.0, 200);
    let dead = json!({ "worker_id": "dead", "worker_type": "training", "endpoint_url": dead_endpoint().await });
    assert_eq!(register(&app, dead).await.0, 200);

    let checked = until_worker(&app, "sim", "a health check", |w| w["worker"]["last_health_check"].is_string()).await;
    assert_eq!(checked["status"], "available");
    until_worker(&app, "dead", "two failed checks", |w| w["worker"]["status"] == "temporarily_unavailable").await;
    until_worker(&app, "dead", "removal after the threshold", |w| w["status"] == 404).await;

    // Busy while it trains, with the operation it runs; available again afterwards.
    let path = app.data_dir.path().join("EURUSD_1h.csv");
    std::fs::write(path, "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n").unwrap();
    let (status, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "example_mlp" })).await;
    assert_eq!(status, 200, "{started}");
    let id = started["task_id"].as_str().unwrap().to_owned();
    let busy = until_worker(&app, "sim", "busy", |w| w["worker"]["status"] == "busy").await;
    assert_eq!(busy["current_operation_id"], id.as_str());
    app.delete(&format!("/api/v1/operations/{id}")).await;
    until_worker(&app, "sim", "available again", |w| w["worker"]["status"] == "available").await;

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"ktrdr_ops_workers{type="training",status="available"} 1"#), "{metrics}");
}

/// A training placed on worker `w` (a simulator of its own), once placed.
async fn training_on_worker(app: &TestApp) -> (String, Value) {
    let series = app.data_dir.path().join("EURUSD_1h.csv");
    std::fs::write(series, "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n").unwrap();
    let endpoint = worker_sim(app.data_dir.path()).await;
    let body = json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": endpoint });
    assert_eq!(register(app, body.clone()).await.0, 200);
    let id = start_example(app).await;
    assert_eq!(placed_on(app, &id).await, "w");
    (id, body)
}

#[tokio::test]
async fn a_worker_naming_a_finished_operation_is_told_to_stop_it_and_the_operation_stays_as_it_ended() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (id, mut body) = training_on_worker(&app).await;
    app.delete(&format!("/api/v1/operations/{id}")).await;
    app.wait_for_status(&id, "cancelled", Duration::from_secs(10)).await;
    body["current_operation_id"] = json!(id);
    body["completed_operations"] =
        json!([{ "operation_id": id, "status": "COMPLETED", "result": {}, "completed_at": "2026-11-28T00:00:00Z" }]);
    let (status, answer) = register(&app, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stop_operations"], json!([id, id]));
    let record = app.record(&id).await;
    assert_eq!(record["status"], "cancelled", "terminal is final: {record}");

    // What a worker says of operations not dispatched to it is none of its business: ignored.
    let dummy = app.start_dummy(1000, 50).await;
    app.wait_for_status(&dummy, "running", Duration::from_secs(5)).await;
    let stranger = json!({ "worker_id": "stranger", "worker_type": "training", "endpoint_url": "http://127.0.0.1:11",
                           "current_operation_id": dummy,
                           "completed_operations": [{ "operation_id": dummy, "status": "CANCELLED",
                                                      "completed_at": "2026-11-28T00:00:00Z" }] });
    let (status, answer) = register(&app, stranger).await;
    assert_eq!((status, &answer["stop_operations"]), (200, &json!([])), "{answer}");
    assert_eq!(answer["status"], "available", "not busy with another's operation");
    assert_eq!(app.record(&dummy).await["status"], "running", "a stranger's report cancels nothing");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn replicas_on_one_postgresql_database_share_the_fleet() {
    let db = TestDb::postgres().await;
    let second = db.shared();
    let a = TestApp::spawn_with(db, |c| c.node.id = "node-a".into()).await;
    let b = TestApp::spawn_with(second, |c| c.node.id = "node-b".into()).await;
    let body = json!({ "worker_id": "shared", "worker_type": "training", "endpoint_url": "http://127.0.0.1:12" });
    assert_eq!(register(&a, body).await.0, 200);
    let (status, worker) = b.get("/api/v1/workers/shared").await;
    assert_eq!(status, 200, "registered on A, seen on B: {worker}");
    let (_, list) = b.get("/api/v1/workers").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn on_shutdown_every_registered_worker_is_told() {
    let heard = std::sync::Arc::new(tokio::sync::Notify::new());
    let told = heard.clone();
    let worker = axum::Router::new().route(
        "/backend-shutdown",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let told = told.clone();
            async move {
                assert_eq!(body["message"], "Backend shutting down");
                told.notify_one();
                axum::Json(json!({ "acknowledged": true }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, worker).await.unwrap() });

    let app = TestApp::spawn_with_sim(|_| {}).await;
    let body = json!({ "worker_id": "listener", "worker_type": "training", "endpoint_url": endpoint });
    assert_eq!(register(&app, body).await.0, 200);
    let waiting = heard.notified();
    app.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the worker was told of the shutdown");
}

#[tokio::test]
async fn a_workers_status_report_cancels_a_running_operation_and_never_changes_a_finished_one() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let patch = |id: String, body: Value| {
        let request = as_worker(app.http.patch(app.url(&format!("/api/v1/operations/{id}/status"))).json(&body));
        async move { crate::common::json_of(request.send().await.unwrap()).await }
    };
    let (status, _) = patch("op_nothing".into(), json!({ "status": "CANCELLED" })).await;
    assert_eq!(status, 404);

    // Only an operation dispatched to a worker, from that worker: never a dummy or a data load.
    let dummy = app.start_dummy(1000, 50).await;
    app.wait_for_status(&dummy, "running", Duration::from_secs(5)).await;
    let (status, body) = patch(dummy.clone(), json!({ "status": "CANCELLED" })).await;
    assert_eq!((status, assert_envelope(&body)), (403, "NOT_THIS_WORKERS_OPERATION".to_owned()));
    assert_eq!(app.record(&dummy).await["status"], "running");

    let (running, _) = training_on_worker(&app).await;
    let (status, body) = patch(running.clone(), json!({ "status": "sideways" })).await;
    assert_eq!((status, assert_envelope(&body)), (400, "OPERATIONS-StatusUpdateError".to_owned()));
    let (status, body) = patch(running.clone(), json!({ "status": "COMPLETED" })).await;
    assert_eq!(status, 409, "a report cannot complete work we follow: {body}");

    let reason = "Graceful shutdown - checkpoint saved";
    let (status, body) = patch(running.clone(), json!({ "status": "CANCELLED", "error_message": reason })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["previous_status"].as_str(), body["new_status"].as_str()), (Some("running"), Some("cancelled")));
    let record = app.record(&running).await;
    assert_eq!((record["status"].as_str(), record["error_message"].as_str()), (Some("cancelled"), Some(reason)));

    // Terminal is final: a later report changes nothing.
    let (status, body) = patch(running.clone(), json!({ "status": "running" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["previous_status"].as_str(), body["new_status"].as_str()), (Some("cancelled"), Some("cancelled")));
    assert_eq!(app.record(&running).await["status"], "cancelled");
}

pub(crate) async fn start_example(app: &TestApp) -> String {
    let (status, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "example_mlp" })).await;
    assert_eq!(status, 200, "{started}");
    started["task_id"].as_str().unwrap().to_owned()
}

/// The worker a training was started on, once it was.
pub(crate) async fn placed_on(app: &TestApp, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let record = app.record(id).await;
        if record["progress"]["context"]["host_session_id"].is_string() {
            return record["progress"]["context"]["worker_id"].as_str().expect("a worker").to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "never placed: {record}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A training worker simulator of its own on a free port (the operations generation, as ktrdr's
/// workers speak it), reading the series from `data_dir`.
pub(crate) async fn worker_sim(data_dir: &std::path::Path) -> String {
    worker_sim_paced(data_dir, 40).await
}

/// [`worker_sim`] with `pace_ms` per batch (a training is 100 batches).
pub(crate) async fn worker_sim_paced(data_dir: &std::path::Path, pace_ms: u64) -> String {
    use ktrdr_ops::sim::training::{TrainingKnobs, TrainingSim};
    let sim = TrainingSim::new(
        ktrdr_ops::hosts::training::Protocol::Operations,
        data_dir.to_owned(),
        None,
        TrainingKnobs { pace_ms, ..TrainingKnobs::default() },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

#[tokio::test]
async fn trainings_go_to_free_workers_gpu_first_and_one_more_waits_for_a_free_one() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let series = app.data_dir.path().join("EURUSD_1h.csv");
    std::fs::write(series, "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n").unwrap();
    for (id, gpu) in [("cpu-1", false), ("cpu-2", false), ("gpu-1", true)] {
        // 10 s a training: none ends (freeing its worker) before the others are placed, even
        // on a loaded machine (4 s was not always enough in CI).
        let endpoint = worker_sim_paced(app.data_dir.path(), 100).await;
        let body = json!({ "worker_id": id, "worker_type": "training", "endpoint_url": endpoint,
                           "capabilities": { "gpu": gpu } });
        let (status, answer) = register(&app, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let worker_of = |r: &Value| r["progress"]["context"]["worker_id"].as_str().map(str::to_owned);
    // The GPU worker first.
    let mut ids = vec![start_example(&app).await];
    assert_eq!(placed_on(&app, &ids[0]).await, "gpu-1");
    // Then the others, one each — whichever two claim first — and the last one waits.
    for _ in 0..3 {
        ids.push(start_example(&app).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (placed, waiting) = loop {
        let mut records = Vec::new();
        for id in &ids {
            records.push(app.record(id).await);
        }
        let (placed, waiting): (Vec<Value>, Vec<Value>) =
            records.into_iter().partition(|r| r["progress"]["context"]["host_session_id"].is_string());
        // The fourth says it waits once it found no free worker (it reads "Starting" before).
        let says_waiting = |r: &Value| {
            r["progress"]["current_step"].as_str().unwrap_or_default().contains("waiting for a free training worker")
        };
        if placed.len() == 3 && waiting.iter().all(says_waiting) {
            break (placed, waiting);
        }
        assert!(tokio::time::Instant::now() < deadline, "three never placed, one waiting: {placed:?} {waiting:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let on: std::collections::HashSet<_> = placed.iter().filter_map(worker_of).collect();
    assert_eq!(on.len(), 3, "three trainings on three workers: {on:?}");
    let fourth = &waiting[0];
    assert_eq!(worker_of(fourth), None, "{fourth}");

    for id in &ids {
        let done = loop {
            let r = app.record(id).await;
            if !["pending", "running"].contains(&r["status"].as_str().unwrap()) {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(done["status"], "completed", "{done}");
        assert!(worker_of(&done).is_some(), "the record says which worker ran it: {done}");
    }
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"ktrdr_ops_dispatches_total{outcome="worker"} 4"#), "{metrics}");
    let (_, fleet) = app.get("/api/v1/workers").await;
    for w in fleet.as_array().unwrap() {
        assert_eq!(w["status"], "available", "freed when its training ended: {w}");
        assert_eq!(w["current_operation_id"], Value::Null);
    }
}

/// A strategies folder with `long`: the example strategy trained for `epochs` epochs.
pub(crate) fn long_strategy(epochs: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/strategies/example_mlp.yaml")).unwrap();
    let long =
        example.replace("name: example_mlp", "name: long").replace("  epochs: 10", &format!("  epochs: {epochs}"));
    std::fs::write(dir.path().join("long.yaml"), long).unwrap();
    dir
}

pub(crate) fn eurusd(data_dir: &std::path::Path) {
    std::fs::write(
        data_dir.join("EURUSD_1h.csv"),
        "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n",
    )
    .unwrap();
}

/// A worker simulator process registering with `backend`: the process and its URL.
pub(crate) async fn worker_process(
    data_dir: &std::path::Path,
    backend: &str,
    pace_ms: &str,
) -> (tokio::process::Child, String) {
    let args = ["--training-workers", "1", "--backend-url", backend, "--sim-training-pace-ms", pace_ms];
    let (child, _ib, url) = crate::common::sim_process(data_dir.to_str().unwrap(), &args, &[]).await;
    (child, url)
}

/// Waits until the registry lists these endpoints; their worker ids, in the same order.
pub(crate) async fn registered(base: &str, endpoints: &[&str]) -> Vec<String> {
    let http = crate::common::client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let fleet: Value = http.get(format!("{base}/api/v1/workers")).send().await.unwrap().json().await.unwrap();
        let id_of = |url: &str| {
            fleet.as_array().unwrap().iter().find(|w| w["endpoint_url"] == url).map(|w| w["worker_id"].to_string())
        };
        if let Some(ids) = endpoints.iter().map(|e| id_of(e)).collect::<Option<Vec<_>>>() {
            return ids.into_iter().map(|id| id.trim_matches('"').to_owned()).collect();
        }
        assert!(tokio::time::Instant::now() < deadline, "never registered: {endpoints:?} in {fleet}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn until_record(
    base: &str,
    id: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let http = crate::common::client();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let response = http.get(format!("{base}/api/v1/operations/{id}")).send().await;
        if let Ok(response) = response
            && let Ok(body) = response.json::<Value>().await
            && check(&body["data"])
        {
            return body["data"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn epochs_of(record: &Value) -> Vec<u64> {
    record["metrics"]["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect()
}

/// The service with quick health checks, EURUSD 1h data and a strategy `long` of 30 epochs (the
/// folder goes with the app).
pub(crate) async fn app_with_long_strategy() -> (TestApp, tempfile::TempDir) {
    let strategies = long_strategy(30);
    let app = TestApp::spawn_with_sim(|c| {
        quick_checks(c);
        c.training.strategies_dir = strategies.path().to_owned();
    })
    .await;
    eurusd(app.data_dir.path());
    (app, strategies)
}

#[tokio::test]
async fn a_killed_workers_training_moves_to_another_worker_and_resumes_from_its_checkpoint() {
    let (app, _strategies) = app_with_long_strategy().await;
    let (mut first, first_url) = worker_process(app.data_dir.path(), &app.base, "10").await;
    let (_second, second_url) = worker_process(app.data_dir.path(), &app.base, "10").await;
    let ids = registered(&app.base, &[&first_url, &second_url]).await;

    let (status, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "long" })).await;
    assert_eq!(status, 200, "{started}");
    let id = started["task_id"].as_str().unwrap().to_owned();
    // The first worker (registered first, neither selected before) trains it past its first
    // checkpoint (every 10 epochs).
    let before = until_record(&app.base, &id, "epoch 13", Duration::from_secs(20), |r| {
        r["metrics"]["epochs"].as_array().is_some_and(|e| e.len() >= 13)
    })
    .await;
    assert_eq!(before["progress"]["context"]["worker_id"], ids[0].as_str(), "{before}");
    first.kill().await.unwrap();
    let killed = std::time::Instant::now();

    let moved = until_record(&app.base, &id, "the move", Duration::from_secs(10), |r| {
        r["progress"]["context"]["worker_id"] == ids[1].as_str()
    })
    .await;
    eprintln!("moved to the other worker {:?} after the kill", killed.elapsed());
    let warning = moved["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    assert!(warning.contains(&format!("worker {} stopped answering", ids[0])), "{moved}");
    assert!(warning.contains("resuming from its checkpoint after epoch 10"), "{moved}");
    // Percentage and step agree on the new worker: back to epoch 11 of 30, not still at 13.
    let resumed = until_record(&app.base, &id, "progress from the new worker", Duration::from_secs(10), |r| {
        let context = &r["progress"]["context"];
        context["worker_id"] == ids[1].as_str() && context["host_status"] == "running"
    })
    .await;
    let epoch = resumed["progress"]["context"]["epoch"].as_f64().unwrap();
    let percentage = resumed["progress"]["percentage"].as_f64().unwrap();
    assert!(percentage <= 5.0 + 90.0 * epoch / 30.0 + 1.0, "{percentage} % at epoch {epoch} of 30: {resumed}");

    let done = until_record(&app.base, &id, "the end", Duration::from_secs(30), |r| {
        !["pending", "running"].contains(&r["status"].as_str().unwrap_or("running"))
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(epochs_of(&done), (0..30).collect::<Vec<u64>>(), "every epoch once, across the move: {done}");
    // Unavailable, then removed by the (quick) health checks.
    let (status, lost) = app.get(&format!("/api/v1/workers/{}", ids[0])).await;
    assert!(status == 404 || lost["status"] == "temporarily_unavailable", "{lost}");
    let (_, other) = app.get(&format!("/api/v1/workers/{}", ids[1])).await;
    assert_eq!(other["status"], "available", "freed at the end: {other}");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ktrdr_ops_worker_moves_total 1"), "{metrics}");
}

#[tokio::test]
async fn a_training_whose_workers_keep_dying_fails_after_max_moves_saying_why() {
    let app = TestApp::spawn_with_sim(|c| {
        quick_checks(c);
        c.training.max_moves = 1;
    })
    .await;
    eurusd(app.data_dir.path());
    let (mut first, first_url) = worker_process(app.data_dir.path(), &app.base, "20").await;
    let (mut second, second_url) = worker_process(app.data_dir.path(), &app.base, "20").await;
    let ids = registered(&app.base, &[&first_url, &second_url]).await;
    let id = start_example(&app).await;
    let on = |worker: String| {
        move |r: &Value| {
            r["progress"]["context"]["host_status"] == "running"
                && r["progress"]["context"]["worker_id"] == worker.as_str()
        }
    };
    // Asked of the worker itself too: our record names the new worker (beside the old one's last
    // host status) before the worker has the training, and a kill then would hit its start.
    let running_there = |r: &Value| r["status"] == "running";
    until_record(&app.base, &id, "running on the first", Duration::from_secs(10), on(ids[0].clone())).await;
    until_record(&first_url, &id, "running on the first itself", Duration::from_secs(10), running_there).await;
    first.kill().await.unwrap();
    until_record(&app.base, &id, "running on the second", Duration::from_secs(10), on(ids[1].clone())).await;
    until_record(&second_url, &id, "running on the second itself", Duration::from_secs(10), running_there).await;
    // The worker answers the resume as the training there starts running: let the answer arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.kill().await.unwrap();
    let failed =
        until_record(&app.base, &id, "the failure", Duration::from_secs(10), |r| r["status"] == "failed").await;
    let message = failed["error_message"].as_str().unwrap();
    assert!(message.contains(&format!("worker {} stopped answering", ids[1])), "{message}");
    assert!(message.contains("training.max_moves"), "{message}");
}

#[tokio::test]
async fn with_no_training_host_configured_a_training_waits_for_a_worker_to_register() {
    let app = TestApp::spawn_with(TestDb::sqlite(), |c| c.hosts.training.url = String::new()).await;
    eurusd(app.data_dir.path());
    let id = start_example(&app).await;
    let waiting = until_record(&app.base, &id, "waiting", Duration::from_secs(5), |r| {
        r["progress"]["current_step"].as_str().is_some_and(|s| s.contains("waiting for a training worker to register"))
    })
    .await;
    assert_eq!(waiting["status"], "pending", "running once a worker took it: {waiting}");
    let (_, health) = app.get("/api/v1/health").await;
    assert_eq!(health["hosts"]["training"]["error"], "no URL configured", "{health}");
    let endpoint = worker_sim(app.data_dir.path()).await;
    let body = json!({ "worker_id": "late", "worker_type": "training", "endpoint_url": endpoint });
    assert_eq!(register(&app, body).await.0, 200);
    let done = until_record(&app.base, &id, "the end", Duration::from_secs(20), |r| {
        !matches!(r["status"].as_str(), Some("pending" | "running"))
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["context"]["worker_id"], "late");
}

#[tokio::test]
async fn a_restarted_service_drops_its_previous_built_in_workers() {
    let listed = |app: &TestApp| {
        let request = app.http.get(app.url("/api/v1/workers"));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let app = TestApp::spawn_with_sim(|c| c.sim.training_workers = 1).await;
    let before = listed(&app).await;
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    assert_eq!(before[0]["worker_id"], "test-node-builtin-worker-1");
    let db = app.shutdown().await;

    let app = TestApp::spawn_on_with_sim(db, |c| c.sim.training_workers = 1).await;
    let after = listed(&app).await;
    assert_eq!(after.as_array().map(Vec::len), Some(1), "no ghost of the previous run: {after}");
    assert_eq!(after[0]["worker_id"], "test-node-builtin-worker-1");
    assert_eq!(after[0]["status"], "available");
    assert_ne!(after[0]["endpoint_url"], before[0]["endpoint_url"], "this run's worker, at its own port");
}
