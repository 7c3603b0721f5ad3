//! The training simulator's answers in the two generations' shapes (hosts.md §2): a session's
//! status, and an operation record with its checkpoint.

use serde_json::{Value, json};

use super::{SimCheckpoint, SimSession, TrainingSim};

pub(super) fn session_body(s: &SimSession) -> Value {
    let series = |key: &str| -> Vec<Value> { s.epochs.iter().filter_map(|e| e.get(key).cloned()).collect() };
    json!({
        "session_id": s.id, "status": s.status,
        "progress": {
            "epoch": s.epoch, "total_epochs": s.request.total_epochs, "batch": s.batch, "total_batches": s.request.total_batches,
            "progress_percent": TrainingSim::percentage(s),
            "items_processed": s.epoch.saturating_sub(1) * s.request.total_batches + s.batch,
            "items_total": s.request.total_epochs * s.request.total_batches,
            "message": TrainingSim::step_text(s), "current_item": format!("Batch {}/{}", s.batch, s.request.total_batches),
        },
        "metrics": { "train_loss": series("train_loss"), "val_loss": series("val_loss"),
                     "train_accuracy": series("train_accuracy"), "val_accuracy": series("val_accuracy") },
        "gpu_usage": { "gpu_allocated": false },
        "start_time": s.created_at, "last_updated": s.last_updated, "error": s.error,
    })
}

pub(super) fn operation_body(s: &SimSession, checkpoint: Option<&SimCheckpoint>) -> Value {
    json!({
        "checkpoint": checkpoint.map(SimCheckpoint::summary),
        "operation_id": s.id, "operation_type": "training", "status": s.status,
        "created_at": s.created_at, "started_at": s.created_at,
        "completed_at": if s.finished { Some(&s.last_updated) } else { None },
        "progress": {
            "percentage": TrainingSim::percentage(s), "current_step": TrainingSim::step_text(s),
            "steps_completed": s.epochs.len(), "steps_total": s.request.total_epochs,
            "items_processed": s.epoch.saturating_sub(1) * s.request.total_batches + s.batch,
            "items_total": s.request.total_epochs * s.request.total_batches,
            "current_item": format!("Batch {}/{}", s.batch, s.request.total_batches),
            "context": { "epoch": s.epoch, "total_epochs": s.request.total_epochs, "batch": s.batch, "total_batches": s.request.total_batches },
        },
        "metadata": { "symbols": s.request.symbols, "timeframes": s.request.timeframes },
        "error_message": s.error, "result_summary": s.result,
        "metrics": { "epochs": s.epochs },
    })
}
