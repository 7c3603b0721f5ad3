//! Retry, resume, checkpoints and lineage (resume.md) against the simulators: a stopped load
//! continues as a new linked operation that fetches only what is missing, the old one stays as
//! it ended, an operation is resumed once, a retry runs, and the checkpoint endpoints answer in
//! ktrdr's shapes.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestApp, assert_envelope};

async fn start_load(app: &TestApp, body: Value) -> String {
    let (status, answer) = app.post("/api/v1/data/load", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"]["operation_id"].as_str().unwrap().to_owned()
}

/// Waits until the operation has saved at least `segments` segments.
async fn until_segments(app: &TestApp, id: &str, segments: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.record(id).await["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) < segments {
        assert!(tokio::time::Instant::now() < deadline, "{id} never saved {segments} segments");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn ended(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let record = app.record(id).await;
        if matches!(record["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return record;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never ended: {record}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The historical windows the simulator answered.
async fn answered(app: &TestApp) -> Vec<(String, String)> {
    app.ib_windows().await.into_iter().filter(|(_, _, outcome)| outcome == "ok").map(|(s, e, _)| (s, e)).collect()
}

#[tokio::test]
async fn a_cancelled_load_resumes_as_a_new_linked_operation_that_fetches_only_what_is_missing() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    app.ib_knobs(json!({ "latency_ms": 20 })).await;
    let body = json!({ "symbol": "MSFT", "timeframe": "1m", "mode": "backfill",
                       "start_date": "2024-01-01", "end_date": "2024-02-29" });
    let old = start_load(&app, body).await;
    until_segments(&app, &old, 5).await;
    let (status, _) = app.delete(&format!("/api/v1/operations/{old}")).await;
    assert_eq!(status, 200);
    let before = answered(&app).await;

    // What it saved is its checkpoint.
    let (status, checkpoint) = app.get(&format!("/api/v1/checkpoints/{old}")).await;
    assert_eq!(status, 200, "{checkpoint}");
    assert_eq!(checkpoint["data"]["checkpoint_type"], "cancellation");
    let state = &checkpoint["data"]["state"];
    assert!(state["segments_done"].as_u64().unwrap() >= 5, "{state}");
    assert!(state["segments_pending"].as_u64().unwrap() > 0, "{state}");
    assert!(state["bar_index"].as_u64().unwrap() > 0, "{state}");

    app.ib_knobs(json!({ "latency_ms": 0 })).await;
    let (status, answer) = app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    assert_eq!(answer["data"]["status"], "resuming");
    let resumed_from = &answer["data"]["resumed_from"];
    assert_eq!(resumed_from["operation_id"], old.as_str());
    assert_eq!(resumed_from["checkpoint_type"], "cancellation");
    assert_eq!(resumed_from["epoch"], Value::Null, "no epochs in a data load");
    let new = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "a resume is a new operation");

    let continued = ended(&app, &new).await;
    assert_eq!(continued["status"], "completed", "{continued}");
    assert_eq!(continued["parent_operation_id"], old.as_str());
    assert_eq!(continued["result_summary"]["missing"], json!([]), "{continued}");
    let stopped = app.record(&old).await;
    assert_eq!(stopped["status"], "cancelled", "terminal is final: the old operation stays as it ended");
    assert_eq!(stopped["parent_operation_id"], Value::Null);

    // No segment the first run saved was fetched again.
    let all = answered(&app).await;
    let mut seen = HashSet::new();
    for window in &all {
        assert!(seen.insert(window.clone()), "{window:?} was fetched twice");
    }
    assert!(all.len() > before.len(), "the continuation fetched the rest");

    // Once per operation; the lineage is listed; the checkpoint went with the finished work.
    let (status, again) = app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(assert_envelope(&again), "ALREADY_RESUMED");
    assert!(again["error"]["message"].as_str().unwrap().contains(&new), "names its continuation: {again}");
    let (status, children) = app.get(&format!("/api/v1/operations/{old}/children")).await;
    assert_eq!(status, 200, "{children}");
    assert_eq!(children["total_count"], 1);
    assert_eq!(children["active_count"], 0);
    assert_eq!(children["data"][0]["operation_id"], new.as_str());
    assert_eq!(children["data"][0]["symbol"], "MSFT");
    // The list rows tell the two apart and link them: what each works on, how the old one ended.
    let (_, list) = app.get("/api/v1/operations?q=msft").await;
    let row = |id: &str| list["data"].as_array().unwrap().iter().find(|r| r["operation_id"] == id).cloned().unwrap();
    let (new_row, old_row) = (row(&new), row(&old));
    assert_eq!(new_row["parent_operation_id"], old.as_str(), "{new_row}");
    assert_eq!(new_row["subject"], "MSFT 1m · backfill", "{new_row}");
    assert_eq!(
        (old_row["status"].as_str(), old_row["error"].as_str()),
        (Some("cancelled"), Some("Operation cancelled by user"))
    );
    let (status, _) = app.get(&format!("/api/v1/checkpoints/{old}")).await;
    assert_eq!(status, 404, "a completed resume leaves nothing to resume");
    let (status, _) = app.get(&format!("/api/v1/checkpoints/{new}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_failed_load_is_retried_from_scratch_under_a_new_operation_that_runs() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let days: Vec<String> = (1..=5).map(|d| format!("2024-03-0{d}")).collect();
    app.ib_knobs(json!({ "fail_dates": days })).await;
    let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "backfill",
                       "start_date": "2024-03-01", "end_date": "2024-03-05" });
    let old = start_load(&app, body).await;
    let failed = ended(&app, &old).await;
    assert_eq!(failed["status"], "failed", "{failed}");

    app.ib_knobs(json!({ "fail_dates": [] })).await;
    let (status, answer) = app.post(&format!("/api/v1/operations/{old}/retry"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let new = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(answer["data"]["parent_operation_id"], old.as_str());
    assert_eq!(answer["data"]["metadata"], failed["metadata"], "the same request");
    let retried = ended(&app, &new).await;
    assert_eq!(retried["status"], "completed", "{retried}");
    assert!(retried["result_summary"]["rows_after"].as_u64().unwrap() > 0);
    assert_eq!(app.record(&old).await["status"], "failed");

    // Completed work is neither retried nor resumed.
    let (status, body) = app.post(&format!("/api/v1/operations/{new}/retry"), json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("OperationStatus.COMPLETED"), "{body}");
    let (status, body) = app.post(&format!("/api/v1/operations/{new}/resume"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["message"], format!("Operation {new} is already completed"));
}

#[tokio::test]
async fn resumes_that_cannot_be_are_refused_with_ktrdrs_codes() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (status, body) = app.post("/api/v1/operations/op_nothing/resume", json!({})).await;
    assert_eq!((status, assert_envelope(&body)), (404, "OPERATION_NOT_FOUND".to_owned()));
    let (status, _) = app.post("/api/v1/operations/op_nothing/retry", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/v1/operations/op_nothing/children").await;
    assert_eq!(status, 404);

    let running = app.start_dummy(1000, 50).await;
    app.wait_for_status(&running, "running", Duration::from_secs(5)).await;
    let (status, body) = app.post(&format!("/api/v1/operations/{running}/resume"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["message"], format!("Operation {running} is already running"));
    let (status, body) = app.post(&format!("/api/v1/operations/{running}/retry"), json!({})).await;
    assert_eq!(status, 400, "{body}");

    // A dummy operation keeps no checkpoint: not resumable, but it can be retried.
    app.delete(&format!("/api/v1/operations/{running}")).await;
    let (status, body) = app.post(&format!("/api/v1/operations/{running}/resume"), json!({})).await;
    assert_eq!((status, assert_envelope(&body)), (404, "CHECKPOINT_NOT_FOUND".to_owned()));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("No checkpoint available for operation {running}"))
    );
    let (status, body) = app.post(&format!("/api/v1/operations/{running}/retry"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["parent_operation_id"], running.as_str());
    assert_eq!(body["data"]["metadata"]["parameters"]["iterations"], 1000);
}

#[tokio::test]
async fn the_checkpoint_endpoints_list_summarise_clean_up_and_delete_in_ktrdrs_shapes() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (status, stats) = app.get("/api/v1/checkpoints/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats,
        json!({ "success": true, "total_checkpoints": 0, "total_size_bytes": 0, "oldest_checkpoint": null })
    );

    app.ib_knobs(json!({ "latency_ms": 20 })).await;
    let body = json!({ "symbol": "IBM", "timeframe": "1m", "mode": "backfill",
                       "start_date": "2024-01-01", "end_date": "2024-02-29" });
    let id = start_load(&app, body).await;
    until_segments(&app, &id, 2).await;
    app.delete(&format!("/api/v1/operations/{id}")).await;

    let (status, list) = app.get("/api/v1/checkpoints").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total_count"], 1);
    let item = &list["data"][0];
    assert_eq!(item["operation_id"], id.as_str());
    assert_eq!(item["checkpoint_type"], "cancellation");
    assert!(item["state_summary"]["segments_done"].as_u64().unwrap() >= 2, "{item}");
    assert_eq!(item["artifacts_size_bytes"], 0);
    let (_, stats) = app.get("/api/v1/checkpoints/stats").await;
    assert_eq!(stats["total_checkpoints"], 1);
    assert!(stats["oldest_checkpoint"].as_str().unwrap().ends_with('Z'));
    let (_, older) = app.get("/api/v1/checkpoints?older_than_days=1").await;
    assert_eq!(older["total_count"], 0, "saved just now");

    for bad in ["/api/v1/checkpoints/cleanup?max_age_days=0", "/api/v1/checkpoints/cleanup?max_age_days=soon"] {
        let (status, body) = app.post(bad, json!({})).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, cleaned) = app.post("/api/v1/checkpoints/cleanup?max_age_days=1", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(cleaned, json!({ "success": true, "checkpoints_deleted": 0, "orphan_artifacts_cleaned": 0 }));

    let (status, deleted) = app.delete(&format!("/api/v1/checkpoints/{id}")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({ "success": true, "message": "Checkpoint deleted" }));
    let (status, again) = app.delete(&format!("/api/v1/checkpoints/{id}")).await;
    assert_eq!(status, 404, "not idempotent, as ktrdr: {again}");
    assert_eq!(again["error"]["message"], format!("Checkpoint not found: {id}"));
    let (status, _) = app.post(&format!("/api/v1/operations/{id}/resume"), json!({})).await;
    assert_eq!(status, 404, "without its checkpoint it cannot be resumed");
}
