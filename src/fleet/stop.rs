//! Stopping work on its host or worker after the operation is cancelled (trainings and
//! backtests alike): the stop delivered (retried
//! until acknowledged, bounded, even while the service shuts down), then the host session
//! watched until its final state — a host may acknowledge and train on — and its stop checkpoint
//! kept; the worker it ran on is freed once the stop is confirmed. A stop never overtakes the
//! start it stops: starts run to their answer, and the stop waits for them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::fleet::pool::WorkerPool;
use crate::hosts::training::{HostStatus, PollError, Session, TrainingClient};
use crate::ops::{CheckpointKind, RemoteStopHook, RemoteStopReport};

/// How a stop is delivered and watched.
#[derive(Debug, Clone)]
pub struct StopSettings {
    /// Tries to deliver a stop.
    pub attempts: u32,
    /// After a stop is acknowledged, watch the remote work this long for its final state.
    pub watch: Duration,
    /// The pause between looks while watching (at least 500 ms).
    pub poll: Duration,
}

/// Frees a worker once the work on it is over.
#[derive(Clone)]
pub struct Release {
    pool: Arc<WorkerPool>,
    worker_id: String,
    operation_id: String,
}

impl Release {
    pub fn new(pool: Arc<WorkerPool>, worker_id: &str, operation_id: &str) -> Self {
        Release { pool, worker_id: worker_id.to_owned(), operation_id: operation_id.to_owned() }
    }

    pub async fn now(&self) {
        self.pool.release(&self.worker_id, &self.operation_id).await;
    }
}

/// The kind of a checkpoint a host or worker reported (its `checkpoint_type`).
pub fn checkpoint_kind(checkpoint: &Value) -> CheckpointKind {
    match checkpoint.get("checkpoint_type").and_then(Value::as_str) {
        Some("cancellation") => CheckpointKind::Cancellation,
        Some("failure") => CheckpointKind::Failure,
        Some("shutdown") => CheckpointKind::Shutdown,
        _ => CheckpointKind::Periodic,
    }
}

/// Pauses between tries to deliver a stop.
const STOP_RETRY: Backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(30));

/// How long a stop sent while the service shuts down waits to read the host's answer.
const SHUTDOWN_LOOK: Duration = Duration::from_secs(2);

/// How long a stop waits for the starts in flight to be answered (longer than a start call's
/// own timeout, `hosts.*.request_timeout`).
const START_ANSWER_WAIT: Duration = Duration::from_secs(90);

/// The starts (or resumes) of one training in flight on its host. A start call cut off by a
/// cancel may still reach the host, and a stop that overtook it would find no session there and
/// leave it training, unstopped, to its end: so each start runs to its answer in a task of its
/// own, and the stop waits for those answers first.
#[derive(Clone, Default)]
pub struct StartGate(Arc<tokio::sync::RwLock<()>>);

impl StartGate {
    /// Runs the host call `start` to its answer, even past a cancel; `None` as soon as `token`
    /// fires (the answer then only serves the stop, which waits for it).
    pub async fn run<T: Send + 'static>(
        &self,
        start: impl Future<Output = T> + Send + 'static,
        token: &CancellationToken,
    ) -> Option<T> {
        let in_flight = tokio::select! {
            guard = self.0.clone().read_owned() => guard,
            _ = token.cancelled() => return None,
        };
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            start.await
        });
        tokio::select! {
            answer = task => match answer {
                Ok(answer) => Some(answer),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => None,
            },
            _ = token.cancelled() => None,
        }
    }

    /// Once no start is in flight (bounded by [`START_ANSWER_WAIT`]).
    async fn answered(&self) {
        let _ = tokio::time::timeout(START_ANSWER_WAIT, self.0.write()).await;
    }
}

/// Tells the host to stop the session (retried until acknowledged, bounded) once the `starts`
/// in flight were answered, then watches it for a while and records its final status — a host
/// may acknowledge and train on regardless.
pub fn remote_stop(
    host: &'static str,
    client: Arc<TrainingClient>,
    session: Session,
    settings: StopSettings,
    release: Option<Release>,
    starts: StartGate,
) -> RemoteStopHook {
    RemoteStopHook::new(host, move |report: RemoteStopReport| async move {
        starts.answered().await;
        watch_stop(&client, &session, &settings, &report, release.as_ref()).await;
        // The worker is free once its stop is confirmed, or the watch gave up.
        if let Some(release) = release {
            release.now().await;
        }
    })
}

/// Delivers the stop and watches the host session until its final state is known.
async fn watch_stop(
    client: &TrainingClient,
    session: &Session,
    settings: &StopSettings,
    report: &RemoteStopReport,
    release: Option<&Release>,
) {
    {
        // The stop must go out even while the service shuts down; each try is bounded by its timeout.
        let unstoppable = CancellationToken::new();
        let mut pauses = STOP_RETRY.pauses();
        for attempt in 1..=settings.attempts.max(1) {
            report.attempt().await;
            match client.stop(session, report.reason(), &unstoppable).await {
                Ok(_) => {
                    report.acknowledged().await;
                    break;
                }
                Err(PollError::Lost(detail)) => {
                    report.failed(format!("the host does not know session {}: {detail}", session.id)).await;
                    return;
                }
                Err(e) if attempt == settings.attempts.max(1) => {
                    report.failed(e.to_string()).await;
                    return;
                }
                Err(_) => {
                    // Shutting down cuts the pause short, not the next try.
                    pauses.sleep(report.shutdown()).await;
                }
            }
        }
        if report.shutdown().is_cancelled() {
            // The service is stopping: no long watch, but one quick look so that the record says
            // what the host did with the stop.
            let look = CancellationToken::new();
            if let Ok(Ok(snapshot)) = tokio::time::timeout(SHUTDOWN_LOOK, client.poll(session, &look)).await {
                report.final_status(snapshot.host_status.clone()).await;
            }
            return;
        }
        let until = Instant::now() + settings.watch;
        let mut reported: Option<String> = None;
        let mut kept: Option<Value> = None;
        while Instant::now() < until {
            match client.poll(session, report.shutdown()).await {
                Ok(snapshot) if snapshot.status.is_final() => {
                    if reported.as_deref() != Some(snapshot.host_status.as_str()) {
                        report.final_status(snapshot.host_status.clone()).await;
                        // The host says the work is over: its worker is free (a defective host
                        // that trains on answers busy and is passed over).
                        if let Some(release) = release {
                            release.now().await;
                        }
                        reported = Some(snapshot.host_status.clone());
                    }
                    // A stopped host session leaves its `cancellation` checkpoint: resumable.
                    if snapshot.checkpoint.is_some() && snapshot.checkpoint != kept {
                        let checkpoint = snapshot.checkpoint.clone().unwrap_or_default();
                        let kind = checkpoint_kind(&checkpoint);
                        report.checkpoint(kind, checkpoint).await;
                        kept = snapshot.checkpoint.clone();
                        if kind != CheckpointKind::Periodic {
                            // The host saved what it had when it stopped: it really stopped.
                            return;
                        }
                    }
                    // A stopped session may still flip to completed on a defective host; a
                    // completed or failed one is over.
                    if matches!(snapshot.status, HostStatus::Completed | HostStatus::Failed) {
                        return;
                    }
                }
                // Running again after it stopped: resumed, under a new operation that follows it.
                Ok(_) if reported.is_some() => return,
                Err(PollError::Lost(_) | PollError::Cancelled) => return,
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(settings.poll.max(Duration::from_millis(500))) => {}
                _ = report.shutdown().cancelled() => return,
            }
        }
    }
}
