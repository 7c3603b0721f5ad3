//! The training simulator's start: `POST /training/start` in either generation's shape, refused
//! when busy or a duplicate, optionally slow (`start_delay_ms`) and then finishing even if the
//! caller hung up, as a real host's request handler does.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{RunRequest, Sim, SimSession, TrainingSim, detail, hold};
use crate::hosts::training::Protocol;
use crate::sim::fastapi::FastJson;

/// Epochs named in the strategy text (`training.epochs` or `model.training.epochs`).
fn epochs_in_yaml(text: &str) -> Option<u32> {
    let value: Value = serde_yaml_ng::from_str(text).ok()?;
    let epochs = value.pointer("/training/epochs").or_else(|| value.pointer("/model/training/epochs"))?;
    epochs.as_u64().map(|e| e as u32)
}

pub(super) async fn start(State(sim): Sim, FastJson(body): FastJson<Value>) -> Response {
    sim.count("/training/start");
    let delay = sim.knobs().start_delay_ms;
    if delay == 0 {
        return start_session(&sim, &body);
    }
    // Run apart from the request, so that a caller hanging up does not stop it.
    let started = tokio::spawn(async move {
        hold(delay).await;
        start_session(&sim, &body)
    });
    started.await.unwrap_or_else(|_| detail(StatusCode::INTERNAL_SERVER_ERROR, "the start crashed"))
}

/// Creates and launches the session `body` asks for.
fn start_session(sim: &Arc<TrainingSim>, body: &Value) -> Response {
    let knobs = sim.knobs();
    let (task_id, symbols, timeframes, epochs, model_type, strategy) = match sim.protocol {
        Protocol::Operations => {
            let Some(yaml) = body.get("strategy_yaml").and_then(Value::as_str) else {
                return crate::sim::fastapi::unprocessable(&["body", "strategy_yaml"], "field required");
            };
            let parsed = serde_yaml_ng::from_str::<Value>(yaml).ok();
            let text = |pointer: &str| parsed.as_ref().and_then(|v| v.pointer(pointer)).and_then(Value::as_str);
            (
                body.get("task_id").and_then(Value::as_str).map(str::to_owned),
                body.get("symbols"),
                body.get("timeframes"),
                epochs_in_yaml(yaml),
                text("/model/type").unwrap_or("mlp").to_owned(),
                text("/name").unwrap_or("unnamed").to_owned(),
            )
        }
        Protocol::Sessions => {
            let Some(model) = body.get("model_configuration") else {
                return crate::sim::fastapi::unprocessable(&["body", "model_configuration"], "field required");
            };
            let epochs = body.pointer("/training_configuration/epochs").and_then(Value::as_u64).map(|e| e as u32);
            let model_type = model.get("model_type").and_then(Value::as_str).unwrap_or("mlp").to_owned();
            // `strategies/neuro_mean_reversion.yaml` → `neuro_mean_reversion`
            let strategy = model
                .get("strategy_config")
                .and_then(Value::as_str)
                .and_then(|p| std::path::Path::new(p).file_stem())
                .map_or_else(|| "unnamed".to_owned(), |s| s.to_string_lossy().into_owned());
            (None, model.get("symbols"), model.get("timeframes"), epochs, model_type, strategy)
        }
    };
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (symbols, timeframes) = (list(symbols), list(timeframes));
    if symbols.is_empty() || timeframes.is_empty() {
        return crate::sim::fastapi::unprocessable(
            &["body", "symbols"],
            "at least one symbol and one timeframe are required",
        );
    }
    let id = task_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    {
        let mut sessions = sim.sessions.lock();
        if sessions.contains_key(&id) {
            return detail(StatusCode::CONFLICT, format!("Operation {id} already exists"));
        }
        let active = sessions.values().filter(|s| !s.finished).count();
        if active >= knobs.max_sessions {
            drop(sessions);
            sim.stats.lock().busy_rejections += 1;
            return detail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "Service temporarily unavailable: Maximum concurrent sessions ({}) reached. Please wait for a session to finish.",
                    knobs.max_sessions
                ),
            );
        }
        let request = RunRequest {
            symbols,
            timeframes,
            model_type,
            strategy,
            total_epochs: epochs.unwrap_or(knobs.epochs).max(1),
            total_batches: knobs.batches.max(1),
        };
        sessions.insert(id.clone(), SimSession::starting(id.clone(), request, sim.word("starting"), 1));
    }
    sim.launch(&id);
    let mut answer = json!({
        "session_id": id, "status": "started", "message": format!("Training session {id} started successfully"),
        "gpu_allocated": false, "estimated_duration_minutes": null,
    });
    if sim.protocol == Protocol::Operations {
        answer["operation_id"] = json!(id);
    }
    Json(answer).into_response()
}
