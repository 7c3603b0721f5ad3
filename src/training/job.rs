//! The training operation (training.md): start the session on the training host (waiting while
//! it is busy), follow it with one adaptive poller, relay its progress and epochs, fetch the
//! result — and on cancel, tell the host to stop in the background and record what it did.
//! Re-attaches to its host session after a service restart.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::hosts::HostErrorKind;
use crate::hosts::stall::observe_stalls;
use crate::hosts::training::Protocol;
use crate::hosts::training::{HostSnapshot, HostStatus, PollError, Session, StartError, StartRequest, TrainingClient};
use crate::ops::{
    CheckpointKind, Job, JobContext, JobError, JobResult, OperationHandle, ProgressReporter, Reattach, Resumption,
    Steps,
};
use crate::training::TrainingRequest;
use crate::training::stop::remote_stop;
use crate::training::workers::{Claim, WorkerPool};

/// Tunables of trainings (config `[training]`).
#[derive(Debug, Clone)]
pub struct TrainingSettings {
    /// Give up waiting for a busy host after this.
    pub start_timeout: Duration,
    /// Polling starts (and returns, on every change) at `poll_min`, growing ×1.5 to `poll_max`
    /// while nothing changes.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Consecutive poll failures tolerated before the session counts as lost.
    pub poll_errors: u32,
    /// After a stop is acknowledged, watch the host session this long for its final state.
    pub cancel_watch: Duration,
    /// Tries to deliver a stop.
    pub stop_attempts: u32,
}

/// What to start (absent when re-attaching to a session that already runs).
pub struct TrainingJob {
    pub request: Option<StartRequest>,
    pub session: Option<Session>,
    pub total_epochs: Option<u32>,
    /// The configured training host (and the one a re-attached session runs on).
    pub client: Arc<TrainingClient>,
    pub settings: TrainingSettings,
    /// The registered workers a new training is sent to, when there are any.
    pub pool: Option<Arc<WorkerPool>>,
    /// The worker a re-attached or resumed session runs on (freed when it ends).
    pub worker: Option<WorkerRef>,
}

/// A registered worker a training runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRef {
    pub worker_id: String,
    pub endpoint_url: String,
}

/// Frees a worker once the training on it is over.
#[derive(Clone)]
pub(super) struct Release {
    pool: Arc<WorkerPool>,
    worker_id: String,
    operation_id: String,
}

impl Release {
    pub(super) async fn now(&self) {
        self.pool.release(&self.worker_id, &self.operation_id).await;
    }
}

fn failed(message: impl Into<String>) -> JobError {
    JobError::failed(message)
}

/// The steps of a training; epochs are counted in `steps_completed` as the host reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingStep {
    Start,
    Train,
    FetchResult,
}

impl Steps for TrainingStep {
    const ALL: &'static [Self] = &[TrainingStep::Start, TrainingStep::Train, TrainingStep::FetchResult];

    fn band(self) -> std::ops::Range<f64> {
        match self {
            TrainingStep::Start => 0.0..5.0,
            TrainingStep::Train => 5.0..95.0,
            TrainingStep::FetchResult => 95.0..100.0,
        }
    }
}

/// The host session a training follows, stored once the host has accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingState {
    pub session_id: String,
    pub protocol: Protocol,
    /// The registered worker it runs on (none: the configured training host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerRef>,
}

impl Job for TrainingJob {
    const TYPE: &'static str = super::OPERATION_TYPE;
    type Request = TrainingRequest;
    type State = TrainingState;
    type Step = TrainingStep;

    /// The first symbol.
    fn summary(request: &TrainingRequest) -> Option<String> {
        request.symbols.first().cloned()
    }

    async fn run(self, ctx: JobContext<Self>) -> JobResult {
        // Stalled host calls show in the step and stay in the warnings.
        observe_stalls(Arc::new(ctx.progress()), self.train(ctx)).await
    }
}

impl TrainingJob {
    async fn train(self, ctx: JobContext<Self>) -> JobResult {
        let Self { request, session, total_epochs, client, settings, pool, worker } = self;
        let progress = ctx.progress();
        let token = ctx.token().clone();
        let (client, worker, session) = match session {
            Some(session) => {
                progress.detail(format!("following training host session {}", session.id));
                (client, worker, session)
            }
            None => {
                let mut request = request.ok_or_else(|| failed("nothing to train: no request and no session"))?;
                request.task_id = ctx.operation_id().to_owned();
                progress.context([
                    ("model_type".to_owned(), json!(request.model_type)),
                    ("symbols".to_owned(), json!(request.symbols)),
                    ("timeframes".to_owned(), json!(request.timeframes)),
                    ("total_epochs".to_owned(), json!(total_epochs)),
                ]);
                ctx.step(TrainingStep::Start, "Starting training on the host");
                match &pool {
                    Some(pool) => dispatch(pool, &client, &request, &settings, &ctx, &progress, &token).await?,
                    None => (client.clone(), None, start(&client, &request, &settings, &ctx, &progress, &token).await?),
                }
            }
        };
        // Stored for a later re-attach (a resumed or re-attached training too: it is new here),
        // and stoppable on its host from now on.
        let state =
            TrainingState { session_id: session.id.clone(), protocol: session.protocol, worker: worker.clone() };
        ctx.save_state(&state).await?;
        let release = release_of(&pool, &worker, &ctx);
        ctx.on_cancel(remote_stop(client.clone(), session.clone(), settings.clone(), release));
        let outcome = follow_to_the_end(&client, &session, total_epochs, &settings, &ctx, &progress, &token).await;
        // A cancelled training's worker is freed once the host confirmed the stop (remote_stop).
        if !matches!(outcome, Err(JobError::Cancelled))
            && let Some(release) = release_of(&pool, &worker, &ctx)
        {
            release.now().await;
        }
        outcome
    }
}

fn release_of(pool: &Option<Arc<WorkerPool>>, worker: &Option<WorkerRef>, ctx: &OperationHandle) -> Option<Release> {
    Some(Release {
        pool: pool.clone()?,
        worker_id: worker.as_ref()?.worker_id.clone(),
        operation_id: ctx.operation_id().to_owned(),
    })
}

/// Pauses while every registered training worker is busy.
const WAITING_FOR_WORKER: Backoff = Backoff::exponential(Duration::from_millis(250), Duration::from_secs(2));

/// Sends the training to a free registered worker — waiting, cancellably, while none is free;
/// a worker that answers busy or cannot be reached is passed over — or, with none registered, to
/// the configured training host.
async fn dispatch(
    pool: &Arc<WorkerPool>,
    host: &Arc<TrainingClient>,
    request: &StartRequest,
    settings: &TrainingSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<(Arc<TrainingClient>, Option<WorkerRef>, Session), JobError> {
    let mut tried = HashSet::new();
    let mut pauses = WAITING_FOR_WORKER.pauses();
    loop {
        let claim = pool
            .claim(ctx.operation_id(), &tried)
            .await
            .map_err(|e| JobError::failed_by(format!("could not read the registered workers: {e}"), e))?;
        let worker = match claim {
            Claim::NoWorkers => {
                return Ok((host.clone(), None, start(host, request, settings, ctx, progress, token).await?));
            }
            Claim::NoneFree { busy } => {
                pool.count("waited");
                tried.clear();
                progress.detail(format!("waiting for a free training worker ({busy} busy)"));
                if !pauses.sleep(token).await {
                    return Err(JobError::Cancelled);
                }
                continue;
            }
            Claim::Got(worker) => worker,
        };
        let release = Release {
            pool: pool.clone(),
            worker_id: worker.worker_id.clone(),
            operation_id: ctx.operation_id().to_owned(),
        };
        let client = match pool.client_for(&worker.endpoint_url) {
            Ok(client) => client,
            Err(e) => {
                release.now().await;
                return Err(JobError::failed_by(format!("cannot talk to worker {}: {e}", worker.worker_id), e));
            }
        };
        progress.context([("worker_id".to_owned(), json!(worker.worker_id))]);
        progress.detail(format!("starting on worker {}", worker.worker_id));
        // The worker knows the session by our id: a cancel during the start can still stop it.
        let pending = Session { id: request.task_id.clone(), protocol: Protocol::Operations };
        ctx.on_cancel(remote_stop(client.clone(), pending, settings.clone(), Some(release.clone())));
        match client.start(request, token).await {
            Ok(session) => {
                pool.count("worker");
                let placed = WorkerRef { worker_id: worker.worker_id, endpoint_url: worker.endpoint_url };
                return Ok((client, Some(placed), session));
            }
            Err(StartError::Cancelled) => return Err(JobError::Cancelled),
            Err(StartError::Busy(_)) => {}
            Err(StartError::Failed(e)) if matches!(e.kind, HostErrorKind::Connect | HostErrorKind::Timeout) => {}
            Err(e) => {
                release.now().await;
                return Err(failed(format!("worker {} could not start the training: {e}", worker.worker_id)));
            }
        }
        // Busy after all, or gone: the next one.
        pool.count("passed_over");
        release.now().await;
        tried.insert(worker.worker_id);
    }
}

/// Follows the session to its end and fetches the result.
async fn follow_to_the_end(
    client: &Arc<TrainingClient>,
    session: &Session,
    total_epochs: Option<u32>,
    settings: &TrainingSettings,
    ctx: &JobContext<TrainingJob>,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> JobResult {
    progress.context([
        ("host_session_id".to_owned(), json!(session.id)),
        ("host_protocol".to_owned(), json!(session.protocol)),
    ]);
    ctx.step(TrainingStep::Train, "Training");
    let last = follow(client, session, total_epochs, settings, ctx, progress, token).await?;

    ctx.step(TrainingStep::FetchResult, "Fetching the result");
    let result = match client.result(session, token).await {
        Ok(result) => result.or(last.result.clone()).unwrap_or_else(|| json!({})),
        Err(PollError::Cancelled) => return Err(JobError::Cancelled),
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

/// `POST /training/start`, waiting (cancellably, with backoff) while the host is busy.
async fn start(
    client: &Arc<TrainingClient>,
    request: &StartRequest,
    settings: &TrainingSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<Session, JobError> {
    let protocol = client.protocol(token).await.map_err(|e| {
        if e.is_cancelled() { JobError::Cancelled } else { failed(format!("the training host cannot be reached: {e}")) }
    })?;
    if protocol == crate::hosts::training::Protocol::Operations {
        // The host will know the session by our id: if a cancel comes while the start is in
        // flight, the stop can still find it.
        let session = Session { id: request.task_id.clone(), protocol };
        ctx.on_cancel(remote_stop(client.clone(), session, settings.clone(), None));
    }
    let deadline = Instant::now() + settings.start_timeout;
    let mut pauses = BUSY_HOST.pauses();
    loop {
        match client.start(request, token).await {
            Ok(session) => return Ok(session),
            Err(StartError::Busy(message)) => {
                if Instant::now() >= deadline {
                    return Err(failed(format!(
                        "the training host stayed busy for {} s: {message}",
                        settings.start_timeout.as_secs()
                    )));
                }
                progress.detail("waiting for a free training host");
                if !pauses.sleep(token).await {
                    return Err(JobError::Cancelled);
                }
            }
            Err(StartError::Cancelled) => return Err(JobError::Cancelled),
            Err(StartError::Duplicate(m)) => {
                return Err(failed(format!("the training host already has a session with this id: {m}")));
            }
            Err(StartError::Rejected(m)) => return Err(failed(format!("the training host refused the request: {m}"))),
            Err(StartError::Failed(e)) => return Err(failed(format!("could not start the training on the host: {e}"))),
        }
    }
}

/// What changed between polls, for the adaptive interval.
fn fingerprint(s: &HostSnapshot) -> (HostStatus, Option<u32>, Option<u32>, u64, usize) {
    (s.status, s.epoch, s.batch, (s.percentage * 100.0) as u64, s.epochs.len())
}

/// One poller per session: relays progress and finished epochs until the host's session ends.
async fn follow(
    client: &TrainingClient,
    session: &Session,
    total_epochs: Option<u32>,
    settings: &TrainingSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<HostSnapshot, JobError> {
    let lost = |detail: &dyn std::fmt::Display| failed(format!("training host lost session {}: {detail}", session.id));
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
    loop {
        match client.poll(session, token).await {
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
                        return Err(failed(
                            snapshot.error.unwrap_or_else(|| "the training failed on the host".to_owned()),
                        ));
                    }
                    HostStatus::Stopped | HostStatus::Cancelled => return Err(failed("training stopped on the host")),
                    HostStatus::Starting | HostStatus::Running => {}
                }
            }
            Err(PollError::Cancelled) => return Err(JobError::Cancelled),
            Err(PollError::Lost(detail)) => return Err(lost(&detail)),
            Err(PollError::Failed(e)) => {
                errors += 1;
                if errors >= settings.poll_errors {
                    return Err(lost(&e));
                }
                progress.detail(format!("host unreachable, retrying ({errors}/{})", settings.poll_errors));
            }
        }
        if !pauses.sleep(token).await {
            return Err(JobError::Cancelled);
        }
    }
}

/// Keeps the host's checkpoint of the session as the operation's (what a resume continues from).
async fn record_checkpoint(ctx: &OperationHandle, checkpoint: &Value) {
    ctx.checkpoint(checkpoint_kind(checkpoint), checkpoint.clone()).await;
}

pub(super) fn checkpoint_kind(checkpoint: &Value) -> CheckpointKind {
    match checkpoint.get("checkpoint_type").and_then(Value::as_str) {
        Some("cancellation") => CheckpointKind::Cancellation,
        Some("failure") => CheckpointKind::Failure,
        Some("shutdown") => CheckpointKind::Shutdown,
        _ => CheckpointKind::Periodic,
    }
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

/// Pauses between tries to start a training on a busy host.
const BUSY_HOST: Backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(15)).factor(1.5);
/// Re-attaches a training left running by a previous run of the service to its host session.
pub struct TrainingReattach {
    pub client: Arc<TrainingClient>,
    pub settings: TrainingSettings,
    pub pool: Option<Arc<WorkerPool>>,
}

/// The client of the host a session runs on: its registered worker's, or the configured host's.
pub(crate) fn client_of(
    worker: Option<&WorkerRef>,
    pool: Option<&Arc<WorkerPool>>,
    host: &Arc<TrainingClient>,
) -> Result<Arc<TrainingClient>, String> {
    match (worker, pool) {
        (Some(worker), Some(pool)) => pool.client_for(&worker.endpoint_url).map_err(|e| e.to_string()),
        _ => Ok(host.clone()),
    }
}

impl Reattach<TrainingJob> for TrainingReattach {
    fn reattach(&self, request: TrainingRequest, state: Option<TrainingState>, _: Resumption) -> Option<TrainingJob> {
        let TrainingState { session_id, protocol, worker } = state?;
        let client = client_of(worker.as_ref(), self.pool.as_ref(), &self.client).ok()?;
        Some(TrainingJob {
            request: None,
            session: Some(Session { id: session_id, protocol }),
            total_epochs: request.parameters.epochs.filter(|t| *t > 0),
            client,
            settings: self.settings.clone(),
            pool: self.pool.clone(),
            worker,
        })
    }
}
