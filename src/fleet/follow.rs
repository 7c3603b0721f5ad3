//! Following remote work on a host or registered worker to its end, whatever the operation type:
//! polls at an adaptive pace (every change brings the pace back to its quickest), hands each
//! answer to the type's relay, keeps the reported checkpoints, and notices a lost worker — it
//! refuses connections, the health checks gave up on it, it registered elsewhere — or its report
//! that the work ended.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::fleet::pool::{REGISTRY_CHECK, WorkerPool, WorkerRef};
use crate::fleet::stop::checkpoint_kind;
use crate::hosts::HostErrorKind;
use crate::hosts::training::{HostSnapshot, HostStatus, PollError, Session, TrainingClient};
use crate::ops::{JobError, OperationHandle, ProgressReporter};

/// How remote work is polled.
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// Polls start (and return, on every change) at `min`, growing ×1.5 to `max` while nothing
    /// changes.
    pub min: Duration,
    pub max: Duration,
    /// Consecutive poll failures tolerated before the work counts as lost.
    pub errors: u32,
}

/// How following remote work ended, short of its result.
pub enum Ended {
    /// Cancelled, failed remotely, or our own trouble.
    Job(JobError),
    /// The host or worker stopped answering, or no longer knows the work; with the last
    /// checkpoint it reported.
    Lost { why: String, checkpoint: Option<Value> },
}

impl From<JobError> for Ended {
    fn from(e: JobError) -> Self {
        Ended::Job(e)
    }
}

/// What changed between polls, for the adaptive interval.
fn fingerprint(s: &HostSnapshot) -> (HostStatus, Option<u32>, Option<u32>, u64, usize) {
    (s.status, s.epoch, s.batch, (s.percentage * 100.0) as u64, s.epochs.len())
}

/// One poller per session: hands every answer to `relay` until the remote work ends (`what` names
/// it in errors: "training", "backtest").
/// A registered worker is lost as soon as it refuses connections or the health checks give up on
/// it; any host after `poll_errors` failed polls in a row, or when it no longer knows the session.
#[allow(clippy::too_many_arguments)]
pub async fn follow(
    client: &TrainingClient,
    session: &Session,
    on_worker: Option<(&WorkerPool, &WorkerRef)>,
    settings: &PollSettings,
    what: &str,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
    mut relay: impl FnMut(&HostSnapshot),
) -> Result<HostSnapshot, Ended> {
    // Polls come at `poll_min` while the session changes, slowing down while it does not.
    let mut pauses = Backoff::exponential(settings.min, settings.max).factor(1.5).pauses();
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
                relay(&snapshot);
                if snapshot.checkpoint != last_checkpoint {
                    if let Some(checkpoint) = &snapshot.checkpoint {
                        record_checkpoint(ctx, checkpoint).await;
                    }
                    last_checkpoint = snapshot.checkpoint.clone();
                }
                match snapshot.status {
                    HostStatus::Completed => return Ok(snapshot),
                    HostStatus::Failed => {
                        let error = snapshot.error.unwrap_or_else(|| format!("the {what} failed on its host"));
                        return Err(JobError::failed(error).into());
                    }
                    HostStatus::Stopped | HostStatus::Cancelled => {
                        return Err(JobError::failed(format!("{what} stopped on its host")).into());
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
                    _ if errors >= settings.errors => Some(format!("{errors} polls failed in a row: {e}")),
                    _ => None,
                };
                if let Some(why) = why {
                    return Err(Ended::Lost { why, checkpoint: last_checkpoint });
                }
                progress.detail(format!("host unreachable, retrying ({errors}/{})", settings.errors));
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
