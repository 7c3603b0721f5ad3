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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{RunRequest, Sim, SimSession, TrainingSim, detail};
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
            let state = SharedState::of(&checkpoint, &session);
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
#[derive(Serialize, Deserialize)]
struct SharedState {
    checkpoint_type: String,
    epoch: u32,
    created_at: String,
    figures: Value,
    original_request: RunRequest,
}

impl SharedState {
    fn of(checkpoint: &SimCheckpoint, session: &SimSession) -> SharedState {
        SharedState {
            checkpoint_type: checkpoint.kind.to_owned(),
            epoch: checkpoint.epoch,
            created_at: checkpoint.created_at.clone(),
            figures: checkpoint.figures.clone(),
            original_request: session.request.clone(),
        }
    }

    fn checkpoint(&self) -> SimCheckpoint {
        let kind = match self.checkpoint_type.as_str() {
            "cancellation" => "cancellation",
            "failure" => "failure",
            "shutdown" => "shutdown",
            _ => "periodic",
        };
        SimCheckpoint { kind, epoch: self.epoch, created_at: self.created_at.clone(), figures: self.figures.clone() }
    }
}

/// Writes `{dir}/{id}.tmp/` and renames it into place, so a reader never sees half of one.
fn write_shared(dir: &std::path::Path, id: &str, state: &SharedState) -> std::io::Result<()> {
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
fn read_shared(dir: &std::path::Path, id: &str) -> Option<Result<SharedState, String>> {
    let folder = dir.join(id);
    let text = std::fs::read(folder.join("state.json")).ok()?;
    for artifact in ["model.pt", "optimizer.pt"] {
        if std::fs::metadata(folder.join(artifact)).map(|m| m.len()).unwrap_or(0) == 0 {
            return Some(Err(format!("Checkpoint corrupted: {artifact} is missing or empty")));
        }
    }
    Some(serde_json::from_slice(&text).map_err(|e| format!("Checkpoint corrupted: state.json: {e}")))
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
    // The original request of a training another worker started, read with its checkpoint.
    let mut shared_request = None;
    if here.is_none()
        && let Some(dir) = sim.knobs().checkpoint_dir
    {
        let read_id = id.clone();
        match tokio::task::spawn_blocking(move || read_shared(&dir, &read_id)).await.ok().flatten() {
            None => {}
            Some(Err(corrupted)) => return detail(StatusCode::UNPROCESSABLE_ENTITY, corrupted),
            Some(Ok(state)) => {
                // Another worker started it: this one knows its checkpoint from now on.
                let checkpoint = state.checkpoint();
                sim.checkpoints.lock().insert(id.clone(), checkpoint.clone());
                here = Some(checkpoint);
                shared_request = Some(state.original_request);
            }
        }
    }
    let Some(checkpoint) = here else {
        return detail(StatusCode::NOT_FOUND, format!("No checkpoint found for operation {id}"));
    };
    {
        let mut sessions = sim.sessions.lock();
        let Some(request) = sessions.get(&id).map(|old| old.request.clone()).or(shared_request) else {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Checkpoint corrupted: no original request for {id}"),
            );
        };
        if sessions.values().filter(|s| !s.finished).count() >= sim.knobs().max_sessions {
            return detail(StatusCode::SERVICE_UNAVAILABLE, "Service temporarily unavailable: the worker is busy");
        }
        let session = SimSession::starting(id.clone(), request, sim.word("starting"), checkpoint.epoch + 2);
        sessions.insert(id.clone(), session);
    }
    sim.launch(&id);
    Json(json!({ "success": true, "operation_id": id, "status": "started", "resumed_from_epoch": checkpoint.epoch }))
        .into_response()
}
