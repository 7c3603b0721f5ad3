//! Checkpoints of the training simulator, as ktrdr's training worker keeps them (resume.md §6):
//! saved at the last finished epoch (`periodic` every `checkpoint_interval` epochs,
//! `cancellation`, `failure`), reported with the operation, deleted when the training completes,
//! and `POST /training/resume`, which trains on from the epoch after one under the same id.
//! With a `checkpoint_dir` knob, checkpoints are also kept in that folder as ktrdr's workers keep
//! them in their shared one (`{dir}/{operation_id}/` with `state.json` holding the original
//! request, and small opaque `model.pt` and `optimizer.pt`, written to `{id}.tmp/` then renamed),
//! so another worker sharing the folder can resume a training this one started.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Sim, SimSession, TrainingSim, detail};
use crate::sim::fastapi::FastJson;
use crate::time;

/// What a training saved (resume.md §6): the last finished epoch (0-based) and its figures.
#[derive(Debug, Clone)]
pub(super) struct SimCheckpoint {
    pub(super) kind: &'static str,
    pub(super) epoch: u32,
    pub(super) created_at: String,
    pub(super) figures: Value,
}

impl SimCheckpoint {
    /// As the operation's `checkpoint` (an extension of the operations generation's record).
    pub(super) fn summary(&self) -> Value {
        let mut summary = json!({ "checkpoint_type": self.kind, "epoch": self.epoch, "created_at": self.created_at });
        for key in ["train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate"] {
            summary[key] = self.figures.get(key).cloned().unwrap_or(Value::Null);
        }
        summary
    }
}

impl SimSession {
    /// A finished epoch's 0-based index.
    fn epoch_index(&self, metrics: &Value) -> Option<u32> {
        metrics.get("epoch").and_then(Value::as_u64).map(|e| e as u32)
    }
}

impl TrainingSim {
    /// Saves the session's checkpoint at its last finished epoch (none before the first).
    pub(super) async fn save_checkpoint(&self, id: &str, kind: &'static str) {
        let Some(Some((epoch, figures, session))) = self.with_session(id, |s| {
            let last = s.epochs.last()?;
            Some((s.epoch_index(last)?, last.clone(), s.clone()))
        }) else {
            return;
        };
        let created_at = time::format(&time::now());
        let checkpoint = SimCheckpoint { kind, epoch, created_at, figures };
        self.checkpoints.lock().insert(id.to_owned(), checkpoint.clone());
        if let Some(dir) = self.knobs().checkpoint_dir {
            let state = shared_state(&checkpoint, &session);
            let id = id.to_owned();
            let written = tokio::task::spawn_blocking(move || write_shared(&dir, &id, &state)).await;
            if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                tracing::warn!(error = %e, "the training simulator could not write a checkpoint");
            }
        }
    }

    /// A completed training's checkpoint is gone, here and in the shared folder.
    pub(super) async fn delete_checkpoint(&self, id: &str) {
        self.checkpoints.lock().remove(id);
        if let Some(dir) = self.knobs().checkpoint_dir {
            let folder = dir.join(id);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(folder)).await;
        }
    }
}

/// What the shared folder's `state.json` holds: the checkpoint and the original request.
fn shared_state(checkpoint: &SimCheckpoint, s: &SimSession) -> Value {
    json!({
        "checkpoint_type": checkpoint.kind, "epoch": checkpoint.epoch, "created_at": checkpoint.created_at,
        "figures": checkpoint.figures,
        "original_request": {
            "symbols": s.symbols, "timeframes": s.timeframes, "model_type": s.model_type, "strategy": s.strategy,
            "total_epochs": s.total_epochs, "total_batches": s.total_batches,
        },
    })
}

/// Writes `{dir}/{id}.tmp/` and renames it into place, so a reader never sees half of one.
fn write_shared(dir: &std::path::Path, id: &str, state: &Value) -> std::io::Result<()> {
    let (tmp, done) = (dir.join(format!("{id}.tmp")), dir.join(id));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec(state)?)?;
    std::fs::write(tmp.join("model.pt"), b"sim-model-weights")?;
    std::fs::write(tmp.join("optimizer.pt"), b"sim-optimizer-state")?;
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&tmp, &done)
}

/// Reads a checkpoint another worker left in the shared folder: its state, or why it cannot be
/// used (resume.md §6: the required artifacts must be there and non-empty).
fn read_shared(dir: &std::path::Path, id: &str) -> Option<Result<Value, String>> {
    let folder = dir.join(id);
    let text = std::fs::read(folder.join("state.json")).ok()?;
    for artifact in ["model.pt", "optimizer.pt"] {
        if std::fs::metadata(folder.join(artifact)).map(|m| m.len()).unwrap_or(0) == 0 {
            return Some(Err(format!("Checkpoint corrupted: {artifact} is missing or empty")));
        }
    }
    Some(serde_json::from_slice(&text).map_err(|e| format!("Checkpoint corrupted: state.json: {e}")))
}

/// A session rebuilt from a shared checkpoint's original request (another worker started it).
fn session_from_shared(id: &str, state: &Value) -> Option<(SimCheckpoint, SimSession)> {
    let request = state.get("original_request")?;
    let list = |key: &str| -> Vec<String> {
        request
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let text = |key: &str| request.get(key).and_then(Value::as_str).unwrap_or("unnamed").to_owned();
    let number = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as u32);
    let kind = match state.get("checkpoint_type").and_then(Value::as_str) {
        Some("cancellation") => "cancellation",
        Some("failure") => "failure",
        Some("shutdown") => "shutdown",
        _ => "periodic",
    };
    let checkpoint = SimCheckpoint {
        kind,
        epoch: number(state.get("epoch"))?,
        created_at: state.get("created_at").and_then(Value::as_str).unwrap_or_default().to_owned(),
        figures: state.get("figures").cloned().unwrap_or(Value::Null),
    };
    let now = time::format(&time::now());
    let session = SimSession {
        id: id.to_owned(),
        status: String::new(),
        epoch: 0,
        batch: 0,
        total_epochs: number(request.get("total_epochs"))?,
        total_batches: number(request.get("total_batches"))?,
        epochs: Vec::new(),
        error: None,
        created_at: now.clone(),
        last_updated: now,
        stop_requested: false,
        finished: true,
        result: None,
        symbols: list("symbols"),
        timeframes: list("timeframes"),
        model_type: text("model_type"),
        strategy: text("strategy"),
        first_epoch: 1,
        abort: None,
    };
    Some((checkpoint, session))
}

#[derive(Deserialize)]
pub(super) struct ResumeBody {
    operation_id: String,
}

/// `POST /training/resume`: trains on from the operation's checkpoint, under the same id, from
/// the epoch after it (resume.md §6). The session reports only the epochs of this run.
pub(super) async fn resume(State(sim): Sim, FastJson(body): FastJson<ResumeBody>) -> Response {
    sim.count("/training/resume");
    let id = body.operation_id;
    let mut here = sim.checkpoints.lock().get(&id).cloned();
    if here.is_none()
        && let Some(dir) = sim.knobs().checkpoint_dir
    {
        let read_id = id.clone();
        let shared = tokio::task::spawn_blocking(move || read_shared(&dir, &read_id)).await.ok().flatten();
        match shared.map(|read| read.map(|state| session_from_shared(&id, &state))) {
            None => {}
            Some(Err(corrupted)) => return detail(StatusCode::UNPROCESSABLE_ENTITY, corrupted),
            Some(Ok(None)) => {
                return detail(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("Checkpoint corrupted: no original request for {id}"),
                );
            }
            Some(Ok(Some((checkpoint, session)))) => {
                // Another worker started it: this one knows it from now on.
                sim.sessions.lock().entry(id.clone()).or_insert(session);
                sim.checkpoints.lock().insert(id.clone(), checkpoint.clone());
                here = Some(checkpoint);
            }
        }
    }
    let Some(checkpoint) = here else {
        return detail(StatusCode::NOT_FOUND, format!("No checkpoint found for operation {id}"));
    };
    {
        let mut sessions = sim.sessions.lock();
        let Some(old) = sessions.get(&id).cloned() else {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Checkpoint corrupted: no original request for {id}"),
            );
        };
        if sessions.values().filter(|s| !s.finished).count() >= sim.knobs().max_sessions {
            return detail(StatusCode::SERVICE_UNAVAILABLE, "Service temporarily unavailable: the worker is busy");
        }
        let now = time::format(&time::now());
        let first_epoch = checkpoint.epoch + 2;
        sessions.insert(
            id.clone(),
            SimSession {
                status: sim.word("starting"),
                epoch: first_epoch - 1,
                batch: 0,
                epochs: Vec::new(),
                error: None,
                created_at: now.clone(),
                last_updated: now,
                stop_requested: false,
                finished: false,
                result: None,
                first_epoch,
                abort: None,
                ..old
            },
        );
    }
    sim.launch(&id);
    Json(json!({ "success": true, "operation_id": id, "status": "started", "resumed_from_epoch": checkpoint.epoch }))
        .into_response()
}
