//! Wherever a training's worker turns up, the replica following the training hears of it: a
//! worker back at a new address (a restart on another IP, a new port) is followed there — its
//! session lives on, so nothing moves and no epoch is trained twice — and a worker's report that
//! it finished reaches the follower even when it registered at another replica.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestApp, TestDb, forwarder};
use crate::workers::{app_with_long_strategy, epochs_of, eurusd, register, until_record, worker_sim_paced};

#[tokio::test]
async fn a_worker_registered_again_at_a_new_endpoint_is_followed_there_and_nothing_moves() {
    let (app, _strategies) = app_with_long_strategy().await;
    let worker = worker_sim_paced(app.data_dir.path(), 10).await;
    let (old_address, silence) = forwarder(worker.trim_start_matches("http://")).await;
    let old_address = format!("http://{old_address}");
    let (status, answer) =
        register(&app, json!({ "worker_id": "wanderer", "worker_type": "training", "endpoint_url": old_address }))
            .await;
    assert_eq!(status, 200, "{answer}");
    let (status, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "long" })).await;
    assert_eq!(status, 200, "{started}");
    let id = started["task_id"].as_str().unwrap().to_owned();
    until_record(&app.base, &id, "a few epochs", Duration::from_secs(20), |r| {
        r["metrics"]["epochs"].as_array().is_some_and(|e| e.len() >= 3)
    })
    .await;

    // The old address goes silent; the worker registers again at its new one.
    silence.send_replace(true);
    let body = json!({ "worker_id": "wanderer", "worker_type": "training", "endpoint_url": worker,
                       "current_operation_id": id });
    let (status, answer) = register(&app, body).await;
    assert_eq!(status, 200, "the old address no longer answers: the worker may move on: {answer}");

    let done = until_record(&app.base, &id, "the end", Duration::from_secs(30), |r| {
        !["pending", "running"].contains(&r["status"].as_str().unwrap_or("running"))
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(epochs_of(&done), (0..30).collect::<Vec<u64>>(), "one session, every epoch once: {done}");
    let warnings: Vec<&str> = done["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(
        warnings.iter().any(|w| w.contains(&format!("worker wanderer registered again at {worker}"))),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("moves to another worker")), "{warnings:?}");
    assert_eq!(done["progress"]["context"]["worker_id"], "wanderer");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("ktrdr_ops_worker_moves_total 1"), "{metrics}");
    let (_, fleet) = app.get("/api/v1/workers/wanderer").await;
    assert_eq!((fleet["status"].as_str(), fleet["endpoint_url"].as_str()), (Some("available"), Some(worker.as_str())));
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_workers_report_at_another_replica_reaches_the_replica_following_the_training() {
    let db = TestDb::postgres().await;
    let second = db.shared();
    let a = TestApp::spawn_with(db, |c| c.node.id = "node-a".into()).await;
    let b = TestApp::spawn_with(second, |c| c.node.id = "node-b".into()).await;
    eurusd(a.data_dir.path());
    // A batch a second: the session itself ends long after this test.
    let worker = worker_sim_paced(a.data_dir.path(), 1000).await;
    let registration = json!({ "worker_id": "reporter", "worker_type": "training", "endpoint_url": worker });
    assert_eq!(register(&a, registration.clone()).await.0, 200);
    let (status, started) = a.post("/api/v1/trainings/start", json!({ "strategy_name": "example_mlp" })).await;
    assert_eq!(status, 200, "{started}");
    let id = started["task_id"].as_str().unwrap().to_owned();
    until_record(&a.base, &id, "running on the worker", Duration::from_secs(10), |r| {
        r["progress"]["context"]["host_status"] == "running"
    })
    .await;

    until_record(&b.base, &id, "B reading that it runs on the worker", Duration::from_secs(5), |r| {
        r["progress"]["context"]["worker_id"] == "reporter"
    })
    .await;
    // The worker says it finished — to replica B, which does not follow the training.
    let mut report = registration;
    report["completed_operations"] = json!([{ "operation_id": id, "status": "COMPLETED",
        "result": { "model_path": "models/reported.pt" }, "completed_at": "2026-12-05T10:00:00Z" }]);
    let (status, answer) = register(&b, report).await;
    assert_eq!(status, 200, "{answer}");
    let done =
        until_record(&a.base, &id, "completed by the report", Duration::from_secs(5), |r| r["status"] == "completed")
            .await;
    assert_eq!(done["result_summary"]["model_path"], "models/reported.pt", "{done}");
    let (_, fleet) = b.get("/api/v1/workers/reporter").await;
    assert_eq!(fleet["status"], "available", "freed when its training ended: {fleet}");
}
