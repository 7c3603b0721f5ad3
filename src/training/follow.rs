//! Following a training's host session to its end (the fleet's follower) and relaying its
//! progress and finished epochs; then fetching the result.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fleet::follow::{Ended, follow};
use crate::fleet::pool::{WorkerPool, WorkerRef};
use crate::hosts::training::{HostSnapshot, PollError, Session, TrainingClient};
use crate::ops::{JobContext, JobError, OperationHandle, ProgressReporter};
use crate::training::job::{TrainingJob, TrainingSettings, TrainingStep};

/// Follows the session to its end and fetches the result.
#[allow(clippy::too_many_arguments)]
pub(super) async fn follow_to_the_end(
    client: &Arc<TrainingClient>,
    session: &Session,
    on_worker: Option<(&WorkerPool, &WorkerRef)>,
    total_epochs: Option<u32>,
    settings: &TrainingSettings,
    ctx: &JobContext<TrainingJob>,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<Value, Ended> {
    progress.context([
        ("host_session_id".to_owned(), json!(session.id)),
        ("host_protocol".to_owned(), json!(session.protocol)),
    ]);
    ctx.step(TrainingStep::Train, "Training");
    // Epochs already recorded (a re-attached operation keeps its history).
    let mut recorded: BTreeSet<u32> = ctx
        .current_metrics()
        .and_then(|m| m.get("epochs").cloned())
        .and_then(|e| e.as_array().cloned())
        .map(|list| list.iter().filter_map(|e| e.get("epoch").and_then(Value::as_u64)).map(|e| e as u32).collect())
        .unwrap_or_default();
    let relayed = |s: &HostSnapshot| relay(s, total_epochs, &mut recorded, ctx, progress);
    let last = follow(client, session, on_worker, &settings.poll(), "training", ctx, progress, token, relayed).await?;

    ctx.step(TrainingStep::FetchResult, "Fetching the result");
    let result = match client.result(session, token).await {
        Ok(result) => result.or(last.result.clone()).unwrap_or_else(|| json!({})),
        Err(PollError::Cancelled) => return Err(JobError::Cancelled.into()),
        Err(e) => {
            ctx.warn(format!("the training finished but its result could not be fetched: {e}"));
            last.result.clone().unwrap_or_else(|| json!({}))
        }
    };
    // The record's last words should be the outcome, not the last thing it waited for.
    ctx.step_within(TrainingStep::FetchResult, "Completed", 100.0..100.0);
    let field = |key: &str| result.get(key).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "model_path": field("model_path"),
        "training_metrics": field("training_metrics"),
        "test_metrics": field("test_metrics"),
        "model_info": field("model_info"),
        "data_summary": field("data_summary"),
        "host_session_id": session.id,
        "epochs_completed": last.epochs.len(),
    }))
}

/// Host progress → ours: the host's percentage scaled into 5–95, epochs as steps, batches as items.
fn relay(
    s: &HostSnapshot,
    total_epochs: Option<u32>,
    recorded: &mut BTreeSet<u32>,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
) {
    let total = s.total_epochs.or(total_epochs).unwrap_or(0);
    let last = |key: fn(&crate::hosts::training::EpochMetrics) -> Option<f64>| s.epochs.last().and_then(key);
    progress.context([
        ("epoch".to_owned(), json!(s.epoch)),
        ("total_epochs".to_owned(), json!(total)),
        ("batch".to_owned(), json!(s.batch)),
        ("total_batches".to_owned(), json!(s.total_batches)),
        ("host_status".to_owned(), json!(s.host_status)),
        ("train_loss".to_owned(), json!(last(|e| e.train_loss))),
        ("val_loss".to_owned(), json!(last(|e| e.val_loss))),
        ("train_accuracy".to_owned(), json!(last(|e| e.train_accuracy))),
        ("val_accuracy".to_owned(), json!(last(|e| e.val_accuracy))),
    ]);
    let fresh: Vec<Value> = s
        .epochs
        .iter()
        .filter(|e| !recorded.contains(&e.epoch))
        .map(|e| serde_json::to_value(e).expect("epoch metrics serialise"))
        .collect();
    if !fresh.is_empty() {
        recorded.extend(s.epochs.iter().map(|e| e.epoch));
        ctx.metrics(|m| {
            let epochs = m.entry("epochs").or_insert_with(|| json!([]));
            if let Some(list) = epochs.as_array_mut() {
                list.extend(fresh);
            }
        });
    }
    progress.steps(recorded.len() as u32, total.max(recorded.len() as u32));
    if let (Some(done), total) = (s.items_processed, s.items_total) {
        progress.items(done, total);
    }
    let message = s.message.clone().unwrap_or_else(|| match (s.epoch, s.batch, s.total_batches) {
        (Some(e), Some(b), Some(tb)) => format!("Epoch {e}/{total} · Batch {b}/{tb}"),
        _ => format!("training host: {}", s.host_status),
    });
    progress.step_progress((s.percentage * 10.0).round() as u64, 1000, s.items_processed, Some(message));
}
