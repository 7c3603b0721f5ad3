//! Following a training's host session to its end: polls at an adaptive pace, relays progress
//! and finished epochs, keeps the host's checkpoints, and notices a lost worker or its report.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::fleet::pool::WorkerRef;
use crate::fleet::pool::{REGISTRY_CHECK, WorkerPool};
use crate::fleet::stop::checkpoint_kind;
use crate::hosts::HostErrorKind;
use crate::hosts::training::{HostSnapshot, HostStatus, PollError, Session, TrainingClient};
use crate::ops::{JobContext, JobError, OperationHandle, ProgressReporter};
use crate::training::job::{Ended, TrainingJob, TrainingSettings, TrainingStep, failed};

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
    let last = follow(client, session, on_worker, total_epochs, settings, ctx, progress, token).await?;

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

/// What changed between polls, for the adaptive interval.
fn fingerprint(s: &HostSnapshot) -> (HostStatus, Option<u32>, Option<u32>, u64, usize) {
    (s.status, s.epoch, s.batch, (s.percentage * 100.0) as u64, s.epochs.len())
}

/// One poller per session: relays progress and finished epochs until the host's session ends.
/// A registered worker is lost as soon as it refuses connections or the health checks give up on
/// it; any host after `poll_errors` failed polls in a row, or when it no longer knows the session.
#[allow(clippy::too_many_arguments)]
async fn follow(
    client: &TrainingClient,
    session: &Session,
    on_worker: Option<(&WorkerPool, &WorkerRef)>,
    total_epochs: Option<u32>,
    settings: &TrainingSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<HostSnapshot, Ended> {
    // Epochs already recorded (a re-attached operation keeps its history).
    let mut recorded: BTreeSet<u32> = ctx
        .current_metrics()
        .and_then(|m| m.get("epochs").cloned())
        .and_then(|e| e.as_array().cloned())
        .map(|list| list.iter().filter_map(|e| e.get("epoch").and_then(Value::as_u64)).map(|e| e as u32).collect())
        .unwrap_or_default();
    // Polls come at `poll_min` while the session changes, slowing down while it does not.
    let mut pauses = Backoff::exponential(settings.poll_min, settings.poll_max).factor(1.5).pauses();
    let mut errors = 0;
    let mut previous = None;
    let mut last_checkpoint = None;
    // A worker may report the training finished when it registers again.
    let mailbox = on_worker.map(|(pool, _)| pool.open_mailbox(ctx.operation_id()));
    // A report left at another replica is looked for once a second (polls come more often).
    let mut looked = Instant::now();
    loop {
        let mut reported = mailbox.as_ref().and_then(|m| m.take());
        if let (None, Some((pool, _))) = (&reported, on_worker)
            && looked.elapsed() >= REGISTRY_CHECK
        {
            looked = Instant::now();
            reported = pool.report_left_for(ctx.operation_id()).await;
        }
        let polled = match (reported, on_worker) {
            (Some(reported), _) => Ok(reported),
            // A worker that hangs is given up on by the health checks long before a poll times out.
            (None, Some((pool, worker))) => tokio::select! {
                polled = client.poll(session, token) => polled,
                news = pool.watch(worker, ctx.operation_id()) => news.map_err(PollError::Lost),
            },
            (None, None) => client.poll(session, token).await,
        };
        // A worker that forgot the session (it restarted) may have reported its end elsewhere.
        let polled = match (polled, on_worker) {
            (Err(PollError::Lost(_) | PollError::Failed(_)), Some((pool, _)))
                if let Some(reported) = pool.report_left_for(ctx.operation_id()).await =>
            {
                Ok(reported)
            }
            (polled, _) => polled,
        };
        match polled {
            Ok(snapshot) => {
                errors = 0;
                let now = fingerprint(&snapshot);
                if previous != Some(now) {
                    pauses.reset();
                }
                previous = Some(now);
                relay(&snapshot, total_epochs, &mut recorded, ctx, progress);
                if snapshot.checkpoint != last_checkpoint {
                    if let Some(checkpoint) = &snapshot.checkpoint {
                        record_checkpoint(ctx, checkpoint).await;
                    }
                    last_checkpoint = snapshot.checkpoint.clone();
                }
                match snapshot.status {
                    HostStatus::Completed => return Ok(snapshot),
                    HostStatus::Failed => {
                        let error = snapshot.error.unwrap_or_else(|| "the training failed on the host".to_owned());
                        return Err(failed(error).into());
                    }
                    HostStatus::Stopped | HostStatus::Cancelled => {
                        return Err(failed("training stopped on the host").into());
                    }
                    HostStatus::Starting | HostStatus::Running => {}
                }
            }
            Err(PollError::Cancelled) => return Err(JobError::Cancelled.into()),
            Err(PollError::Lost(why)) => return Err(Ended::Lost { why, checkpoint: last_checkpoint }),
            Err(PollError::Failed(e)) => {
                errors += 1;
                let why = match on_worker {
                    Some(_) if e.kind == HostErrorKind::Connect => Some(format!("it refuses connections: {e}")),
                    Some(_) if e.kind == HostErrorKind::Broken => Some(format!("it went away mid-answer: {e}")),
                    _ if errors >= settings.poll_errors => Some(format!("{errors} polls failed in a row: {e}")),
                    _ => None,
                };
                if let Some(why) = why {
                    return Err(Ended::Lost { why, checkpoint: last_checkpoint });
                }
                progress.detail(format!("host unreachable, retrying ({errors}/{})", settings.poll_errors));
            }
        }
        let slept = match &mailbox {
            Some(mailbox) => tokio::select! {
                slept = pauses.sleep(token) => slept,
                _ = mailbox.arrived() => true,
            },
            None => pauses.sleep(token).await,
        };
        if !slept {
            return Err(JobError::Cancelled.into());
        }
    }
}

/// Keeps the host's checkpoint of the session as the operation's (what a resume continues from).
async fn record_checkpoint(ctx: &OperationHandle, checkpoint: &Value) {
    ctx.checkpoint(checkpoint_kind(checkpoint), checkpoint.clone()).await;
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
