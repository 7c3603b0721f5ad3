//! Checkpoints of the training simulator, as ktrdr's training worker keeps them (resume.md §6):
//! saved at the last finished epoch (`periodic` every `checkpoint_interval` epochs,
//! `cancellation`, `failure`), reported with the operation, deleted when the training completes,
//! and `POST /training/resume`, which trains on from the epoch after one under the same id.

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
    pub(super) fn save_checkpoint(&self, id: &str, kind: &'static str) {
        let Some(Some((epoch, figures))) = self.with_session(id, |s| {
            let last = s.epochs.last()?;
            Some((s.epoch_index(last)?, last.clone()))
        }) else {
            return;
        };
        let created_at = time::format(&time::now());
        self.checkpoints.lock().insert(id.to_owned(), SimCheckpoint { kind, epoch, created_at, figures });
    }
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
    let Some(checkpoint) = sim.checkpoints.lock().get(&id).cloned() else {
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
