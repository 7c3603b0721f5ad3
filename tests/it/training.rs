//! Trainings end to end against the training simulator, in both protocol generations: live
//! progress, a busy host, failures, a host that forgets its sessions, cancel with the remote
//! chain recorded (also against a host that ignores stops), validation, and data on disk.

use crate::common;

use std::time::Duration;

use common::{TestApp, assert_envelope};
use ktrdr_ops::config::SimTrainingProtocol;
use serde_json::{Value, json};

struct Rig {
    app: TestApp,
    _strategies: tempfile::TempDir,
}

const STRATEGIES: &[(&str, &str)] = &[
    (
        "short",
        "name: short\ntraining_data:\n  symbols: {mode: single, symbol: EURUSD}\n  timeframes: {mode: single, timeframe: '1h'}\nmodel: {type: mlp}\ntraining: {epochs: 3}\n",
    ),
    (
        "long",
        "name: long\ntraining_data:\n  symbols: {mode: single, symbol: EURUSD}\n  timeframes: {mode: single, timeframe: '1h'}\nmodel: {type: mlp}\ntraining: {epochs: 40}\n",
    ),
    ("no_series", "name: no_series\nmodel: {type: mlp}\ntraining: {epochs: 3}\n"),
];

async fn rig(protocol: SimTrainingProtocol, pace_ms: u64, tweak: impl FnOnce(&mut ktrdr_ops::config::Config)) -> Rig {
    let strategies = tempfile::tempdir().unwrap();
    for (name, text) in STRATEGIES {
        std::fs::write(strategies.path().join(format!("{name}.yaml")), text).unwrap();
    }
    let dir = strategies.path().to_owned();
    let app = TestApp::spawn_with_sim(move |c| {
        c.training.strategies_dir = dir;
        c.training.poll_min = ktrdr_ops::time::HumanDuration(Duration::from_millis(20));
        c.sim.training_protocol = protocol;
        c.sim.training_pace_ms = pace_ms;
        c.sim.training_batches = 4;
        tweak(c);
    })
    .await;
    Rig { app, _strategies: strategies }
}

impl Rig {
    fn write_data(&self, symbol: &str, tf: &str) {
        let path = self.app.data_dir.path().join(format!("{symbol}_{tf}.csv"));
        std::fs::write(path, "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n").unwrap();
    }

    async fn train(&self, body: Value) -> String {
        let (status, answer) = self.app.post("/api/v1/trainings/start", body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "training_started");
        answer["task_id"].as_str().unwrap().to_owned()
    }

    async fn until(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let record = self.app.record(id).await;
            if check(&record) {
                return record;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what} never happened: {record}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is_final(r: &Value) -> bool {
    !["pending", "running"].contains(&r["status"].as_str().unwrap())
}

macro_rules! both_generations {
    ($($name:ident),* $(,)?) => {
        mod operations_generation {
            $( #[tokio::test] async fn $name() { super::$name(ktrdr_ops::config::SimTrainingProtocol::Operations).await } )*
        }
        mod sessions_generation {
            $( #[tokio::test] async fn $name() { super::$name(ktrdr_ops::config::SimTrainingProtocol::Sessions).await } )*
        }
    };
}

async fn a_training_relays_live_progress_and_epochs_to_completion(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 10, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    let id = rig.train(json!({ "strategy_name": "short", "start_date": "2024-01-01", "end_date": "2024-03-31" })).await;
    let mut last = -1.0;
    let mut messages = Vec::new();
    let record = loop {
        let record = rig.app.record(&id).await;
        let percentage = record["progress"]["percentage"].as_f64().unwrap();
        assert!(percentage >= last, "{last} → {percentage}");
        last = percentage;
        if let Some(step) = record["progress"]["current_step"].as_str() {
            messages.push(step.to_owned());
        }
        if is_final(&record) {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(record["status"], "completed", "{record}");
    let epochs: Vec<u64> =
        record["metrics"]["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![0, 1, 2], "one entry per epoch, in order, no duplicates");
    assert_eq!(
        (record["progress"]["steps_completed"].as_u64(), record["progress"]["steps_total"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(messages.iter().any(|m| regex_like(m)), "no relayed epoch message of the expected shape: {messages:?}");
    let last_step = record["progress"]["current_step"].as_str().unwrap();
    assert!(last_step.starts_with("Completed"), "a completed training says so: {last_step}");
    let result = &record["result_summary"];
    assert!(result["model_path"].as_str().unwrap().ends_with(".pt"));
    assert_eq!(result["epochs_completed"], 3);
    assert!(result["host_session_id"].is_string());
    let (status, performance) = rig.app.get(&format!("/api/v1/trainings/{id}/performance")).await;
    assert_eq!(status, 200);
    assert_eq!(performance["test_metrics"]["test_accuracy"], 0.81);
    assert!(performance["model_info"]["model_path"].is_string());
}

/// "Epoch E/3 · Batch B/4 (mlp on EURUSD [1h]) [E/3]"
fn regex_like(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("Epoch ") else { return false };
    let (epoch, rest) = rest.split_once("/3 · Batch ").unwrap_or_default();
    let (_, rest) = rest.split_once("/4 (mlp on EURUSD [1h]) [").unwrap_or_default();
    !epoch.is_empty() && rest == format!("{epoch}/3]")
}

async fn a_busy_host_is_waited_for_then_the_training_runs(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 10, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    let first = rig.train(json!({ "strategy_name": "long" })).await;
    rig.until(&first, "the first running", |r| r["progress"]["context"]["host_status"] == "running").await;
    let second = rig.train(json!({ "strategy_name": "short" })).await;
    rig.until(&second, "waiting for the host", |r| {
        r["progress"]["current_step"].as_str().unwrap_or_default().starts_with("waiting for a free training host")
    })
    .await;
    rig.app.delete(&format!("/api/v1/operations/{first}")).await;
    let done = rig.until(&second, "the second finished", is_final).await;
    assert_eq!(done["status"], "completed", "{done}");
}

async fn a_failure_on_the_host_fails_the_training_with_its_words(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 5, |c| c.sim.training_fail_at_epoch = 2).await;
    rig.write_data("EURUSD", "1h");
    let id = rig.train(json!({ "strategy_name": "short" })).await;
    let record = rig.until(&id, "the end", is_final).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error_message"], "Training failed: simulated failure at epoch 2 (CUDA out of memory)");
}

async fn a_host_that_forgets_its_sessions_fails_the_training(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 20, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    let id = rig.train(json!({ "strategy_name": "long" })).await;
    let running = rig.until(&id, "running on the host", |r| r["progress"]["context"]["host_status"] == "running").await;
    let session = running["progress"]["context"]["host_session_id"].as_str().unwrap().to_owned();
    rig.app.http.post(format!("{}/sim/crash", rig.app.training_url())).send().await.unwrap();
    let record = rig.until(&id, "the end", is_final).await;
    assert_eq!(record["status"], "failed");
    let message = record["error_message"].as_str().unwrap();
    assert!(message.starts_with(&format!("training host lost session {session}: ")), "{message}");
}

async fn cancel_stops_at_once_and_records_the_hosts_acknowledgement(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 20, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    let id = rig.train(json!({ "strategy_name": "long" })).await;
    rig.until(&id, "running on the host", |r| r["progress"]["context"]["host_status"] == "running").await;
    let began = std::time::Instant::now();
    let (status, answer) = rig.app.delete(&format!("/api/v1/operations/{id}")).await;
    assert!(began.elapsed() < Duration::from_millis(500), "{:?}", began.elapsed());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["status"], "cancelled");
    assert_eq!(answer["data"]["remote_cancelled"], true);
    let expected_final = if protocol == SimTrainingProtocol::Sessions { "stopped" } else { "cancelled" };
    let record = rig
        .until(&id, "the host's final status", |r| r["cancellation"]["remote"]["host_final_status"] == expected_final)
        .await;
    let remote = &record["cancellation"]["remote"];
    assert_eq!(remote["host"], "training");
    assert!(remote["acknowledged_at"].is_string() && remote["sent_at"].is_string(), "{remote}");
    assert!(remote["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(record["status"], "cancelled");
}

async fn a_host_that_ignores_the_stop_is_recorded_honestly(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 5, |c| c.sim.training_ignore_cancel = true).await;
    rig.write_data("EURUSD", "1h");
    let id = rig.train(json!({ "strategy_name": "short" })).await;
    rig.until(&id, "running on the host", |r| r["progress"]["context"]["host_status"] == "running").await;
    let (status, answer) = rig.app.delete(&format!("/api/v1/operations/{id}")).await;
    assert_eq!((status, answer["data"]["status"].as_str()), (200, Some("cancelled")));
    let record = rig
        .until(&id, "the host's completion", |r| r["cancellation"]["remote"]["host_final_status"] == "completed")
        .await;
    assert_eq!(record["status"], "cancelled", "terminal is final here, whatever the host did");
    assert!(record["cancellation"]["remote"]["acknowledged_at"].is_string());
}

/// Changes some of the training simulator's knobs, keeping the others.
async fn training_knobs(app: &TestApp, change: Value) {
    let url = format!("{}/sim/knobs", app.training_url());
    let mut knobs: Value = app.http.get(&url).send().await.unwrap().json().await.unwrap();
    for (key, value) in change.as_object().unwrap() {
        knobs[key] = value.clone();
    }
    assert_eq!(app.http.put(&url).json(&knobs).send().await.unwrap().status(), 200);
}

async fn a_stalled_training_host_shows_in_the_step_and_is_kept_in_the_warnings(protocol: SimTrainingProtocol) {
    let rig =
        rig(protocol, 20, |c| c.hosts.stall_notice = ktrdr_ops::time::HumanDuration(Duration::from_secs(1))).await;
    rig.write_data("EURUSD", "1h");
    let id = rig.train(json!({ "strategy_name": "short" })).await;
    rig.until(&id, "running on the host", |r| r["progress"]["context"]["host_status"] == "running").await;
    training_knobs(&rig.app, json!({ "status_delay_ms": 2500 })).await;
    let stalled = rig
        .until(&id, "the stall shown", |r| {
            r["progress"]["current_step"].as_str().unwrap_or("").contains("no answer from the training host for 1 s")
        })
        .await;
    let step = stalled["progress"]["current_step"].as_str().unwrap();
    assert!(step.contains("— attempt 1 of 3, giving up at 60 s"), "{step}");
    assert_eq!(stalled["status"], "running");
    training_knobs(&rig.app, json!({ "status_delay_ms": 0 })).await;
    let record = rig.until(&id, "the end", is_final).await;
    assert_eq!(record["status"], "completed", "{record}");
    let warnings = record["warnings"].to_string();
    assert!(
        warnings.contains("no answer from the training host") && warnings.contains("it answered after"),
        "{warnings}"
    );
}

async fn a_training_on_data_loaded_by_the_service_succeeds_and_one_without_data_fails(protocol: SimTrainingProtocol) {
    let rig = rig(protocol, 5, |_| {}).await;
    let (_, answer) =
        rig.app.post("/api/v1/data/load", json!({ "symbol": "EURUSD", "timeframe": "1h", "mode": "tail" })).await;
    let load = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    assert_eq!(rig.until(&load, "the load", is_final).await["status"], "completed");
    let id = rig.train(json!({ "strategy_name": "short" })).await;
    assert_eq!(rig.until(&id, "the training", is_final).await["status"], "completed");
    let id = rig.train(json!({ "strategy_name": "short", "symbols": ["GBPUSD"] })).await;
    let record = rig.until(&id, "the training", is_final).await;
    assert_eq!(record["status"], "failed");
    let error = record["error_message"].as_str().unwrap();
    assert!(error.starts_with("Training failed: No data found in cache for GBPUSD 1h (looked for "), "{error}");
    assert!(error.ends_with("GBPUSD_1h.csv)"), "the folder searched is named: {error}");
}

both_generations!(
    a_training_relays_live_progress_and_epochs_to_completion,
    a_busy_host_is_waited_for_then_the_training_runs,
    a_failure_on_the_host_fails_the_training_with_its_words,
    a_host_that_forgets_its_sessions_fails_the_training,
    cancel_stops_at_once_and_records_the_hosts_acknowledgement,
    a_host_that_ignores_the_stop_is_recorded_honestly,
    a_training_on_data_loaded_by_the_service_succeeds_and_one_without_data_fails,
    a_stalled_training_host_shows_in_the_step_and_is_kept_in_the_warnings,
);

#[tokio::test]
async fn bad_training_requests_are_refused_with_the_field_named() {
    let rig = rig(SimTrainingProtocol::Operations, 5, |_| {}).await;
    let cases = [
        (json!({ "strategy_name": "nope" }), "strategy_name", "STRATEGY_NOT_FOUND"),
        (json!({ "strategy_name": "../short" }), "strategy_name", "VALIDATION_ERROR"),
        (json!({ "strategy_name": "a/b" }), "strategy_name", "VALIDATION_ERROR"),
        (json!({ "strategy_name": "no_series" }), "symbols", "VALIDATION_ERROR"),
        (json!({ "strategy_name": "no_series", "symbols": ["EURUSD"] }), "timeframes", "VALIDATION_ERROR"),
        (json!({ "strategy_name": "short", "symbols": ["../x"] }), "symbols", "VALIDATION_ERROR"),
        (json!({ "strategy_name": "short", "timeframes": ["2d"] }), "timeframes", "VALIDATION_ERROR"),
        (
            json!({ "strategy_name": "short", "start_date": "2024-05-01", "end_date": "2024-01-01" }),
            "start_date",
            "VALIDATION_ERROR",
        ),
    ];
    for (body, field, code) in cases {
        let (status, answer) = rig.app.post("/api/v1/trainings/start", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(assert_envelope(&answer), code, "{body}");
        assert_eq!(answer["error"]["details"]["field"], field, "{body}");
    }
    let (status, answer) = rig.app.post("/api/v1/trainings/start", json!({ "symbols": ["EURUSD"] })).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(rig.app.get("/api/v1/operations").await.1["total_count"], 0);
    let (status, _) = rig.app.get("/api/v1/trainings/op_training_nope/performance").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_training_cancelled_midway_resumes_from_the_hosts_checkpoint_and_reports_only_the_rest() {
    let rig = rig(SimTrainingProtocol::Operations, 10, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    training_knobs(&rig.app, json!({ "checkpoint_interval": 2 })).await;
    let old = rig.train(json!({ "strategy_name": "long" })).await;
    rig.until(&old, "five epochs", |r| r["metrics"]["epochs"].as_array().map_or(0, Vec::len) >= 5).await;
    // Periodic checkpoints are kept as the host reports them.
    let (status, periodic) = rig.app.get(&format!("/api/v1/checkpoints/{old}")).await;
    assert_eq!(status, 200, "{periodic}");
    assert_eq!(periodic["data"]["checkpoint_type"], "periodic");

    let (status, _) = rig.app.delete(&format!("/api/v1/operations/{old}")).await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let checkpoint = loop {
        let (_, c) = rig.app.get(&format!("/api/v1/checkpoints/{old}")).await;
        if c["data"]["checkpoint_type"] == "cancellation" {
            break c["data"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no cancellation checkpoint: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let saved_epoch = checkpoint["state"]["epoch"].as_u64().unwrap();
    assert!(checkpoint["state"]["train_loss"].is_number(), "{checkpoint}");

    let (status, answer) = rig.app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["resumed_from"]["epoch"], saved_epoch);
    assert_eq!(answer["data"]["resumed_from"]["checkpoint_type"], "cancellation");
    let new = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    let done = rig.until(&new, "the resumed training's end", is_final).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["parent_operation_id"], old.as_str());
    let epochs: Vec<u64> =
        done["metrics"]["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    let rest: Vec<u64> = (saved_epoch + 1..40).collect();
    assert_eq!(epochs, rest, "only the epochs after the checkpoint, each once");
    assert!(done["result_summary"]["model_path"].is_string(), "{done}");
    assert_eq!(rig.app.record(&old).await["status"], "cancelled", "the old one stays as it ended");
    let (status, _) = rig.app.get(&format!("/api/v1/checkpoints/{old}")).await;
    assert_eq!(status, 404, "nothing left to resume");
    let (status, again) = rig.app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!((status, assert_envelope(&again)), (409, "ALREADY_RESUMED".to_owned()));
}

/// A resume sent the moment the DELETE answers waits for the host's last word and continues from
/// its stop checkpoint — it used to answer 404 "retry it", and a user who obeyed lost the epochs.
#[tokio::test]
async fn a_resume_right_after_the_cancel_waits_for_the_hosts_stop_checkpoint() {
    let rig = rig(SimTrainingProtocol::Operations, 10, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    let old = rig.train(json!({ "strategy_name": "long" })).await;
    rig.until(&old, "three epochs", |r| r["metrics"]["epochs"].as_array().map_or(0, Vec::len) >= 3).await;
    let (status, _) = rig.app.delete(&format!("/api/v1/operations/{old}")).await;
    assert_eq!(status, 200);
    let asked = std::time::Instant::now();
    let (status, answer) = rig.app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["resumed_from"]["checkpoint_type"], "cancellation", "{answer}");
    assert!(asked.elapsed() < Duration::from_secs(10), "within hosts.stop_confirm_wait");
    let new = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    let done = rig.until(&new, "the resumed training's end", is_final).await;
    assert_eq!(done["status"], "completed", "{done}");
    let step = done["progress"]["current_step"].as_str().unwrap_or_default();
    assert!(step.contains("on EURUSD [1h]"), "the continuation's step keeps its request's context: {step}");
}

#[tokio::test]
async fn a_training_on_a_host_that_cannot_resume_is_refused_with_the_advice_to_retry() {
    let rig = rig(SimTrainingProtocol::Sessions, 10, |_| {}).await;
    rig.write_data("EURUSD", "1h");
    let old = rig.train(json!({ "strategy_name": "long" })).await;
    rig.until(&old, "running on the host", |r| r["progress"]["context"]["host_status"] == "running").await;
    rig.app.delete(&format!("/api/v1/operations/{old}")).await;
    let (status, refused) = rig.app.post(&format!("/api/v1/operations/{old}/resume"), json!({})).await;
    assert_eq!((status, assert_envelope(&refused)), (409, "CANNOT_RESUME".to_owned()), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("retry"), "{refused}");
    let (status, retried) = rig.app.post(&format!("/api/v1/operations/{old}/retry"), json!({})).await;
    assert_eq!(status, 200, "{retried}");
    let new = retried["data"]["operation_id"].as_str().unwrap().to_owned();
    let done = rig.until(&new, "the retried training's end", is_final).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["metrics"]["epochs"].as_array().unwrap().len(), 40, "from scratch");
}
