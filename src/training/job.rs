//! The training operation (training.md): start the session on the training host (waiting while
//! it is busy), follow it with one adaptive poller, relay its progress and epochs, fetch the
//! result — and on cancel, tell the host to stop in the background and record what it did.
//! Re-attaches to its host session after a service restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::fleet::follow::{Ended, PollSettings};
use crate::fleet::pool::WorkerPool;
use crate::fleet::pool::WorkerRef;
use crate::fleet::stop::{Release, StartGate, StopSettings, remote_stop};
use crate::hosts::stall::observe_stalls;
use crate::hosts::training::Protocol;
use crate::hosts::training::{Session, StartError, StartRequest, TrainingClient};
use crate::ops::{
    Job, JobContext, JobError, JobResult, OperationHandle, ProgressReporter, Reattach, RemoteStopHook, Resumption,
    Steps,
};
use crate::training::TrainingRequest;
use crate::training::follow::follow_to_the_end;
use crate::training::placement::{Launch, Placement, place};

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
    /// Moves to another worker after a lost one, at most.
    pub max_moves: u32,
    /// Where strategy files are (a training that starts again re-reads its strategy).
    pub strategies_dir: std::path::PathBuf,
    /// Whether a training host is configured (`hosts.training.url`): trainings go there while no
    /// training worker is registered.
    pub host_configured: bool,
}

impl TrainingSettings {
    /// How a training's session is polled.
    pub fn poll(&self) -> PollSettings {
        PollSettings { min: self.poll_min, max: self.poll_max, errors: self.poll_errors }
    }

    /// How a training's stop is delivered and watched.
    pub fn stop(&self) -> StopSettings {
        StopSettings { attempts: self.stop_attempts, watch: self.cancel_watch, poll: self.poll_min }
    }
}

/// A training: what was asked, and where it runs once placed.
pub struct TrainingJob {
    /// What the operation was started with (a move that must start again rebuilds its host
    /// request from it when `start` is absent).
    pub asked: TrainingRequest,
    /// The host request of a new training (absent when re-attaching to a session that runs).
    pub start: Option<StartRequest>,
    pub session: Option<Session>,
    pub total_epochs: Option<u32>,
    /// The configured training host (a session on a registered worker is followed through that
    /// worker's client).
    pub client: Arc<TrainingClient>,
    pub settings: TrainingSettings,
    /// The registered workers a new training is sent to, when there are any.
    pub pool: Option<Arc<WorkerPool>>,
    /// The worker a re-attached or resumed session runs on (freed when it ends).
    pub worker: Option<WorkerRef>,
}

pub(super) fn failed(message: impl Into<String>) -> JobError {
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
    /// `pending` while it waits for a free worker or host: `running` once one took it.
    const STARTS_ITSELF: bool = true;

    /// The first symbol.
    fn summary(request: &TrainingRequest) -> Option<String> {
        request.symbols.first().cloned()
    }

    /// `strategy · AAPL, MSFT 1h`.
    fn subject(request: &TrainingRequest) -> Option<String> {
        Some(format!("{} · {} {}", request.strategy_name, request.symbols.join(", "), request.timeframes.join(", ")))
    }

    async fn run(self, ctx: JobContext<Self>) -> JobResult {
        // Stalled host calls show in the step and stay in the warnings.
        observe_stalls(Arc::new(ctx.progress()), self.train(ctx)).await
    }

    /// A resumed or re-attached session already trains on its host: a cancel that comes before
    /// the job has run a line must stop it there too (and free its worker once stopped).
    fn remote_stop(&self, operation_id: &str) -> Option<RemoteStopHook> {
        let session = self.session.clone()?;
        let client = client_of(self.worker.as_ref(), self.pool.as_ref(), &self.client).ok()?;
        let release = release_of(&self.pool, &self.worker, operation_id);
        Some(remote_stop("training", client, session, self.settings.stop(), release, StartGate::default()))
    }
}

impl TrainingJob {
    async fn train(self, ctx: JobContext<Self>) -> JobResult {
        let Self { asked, mut start, session, total_epochs, client, settings, pool, worker } = self;
        let progress = ctx.progress();
        let token = ctx.token().clone();
        // What the step names ("mlp on EURUSD [1h]"), from the request — a resumed, re-attached or
        // moved training's too, which start from a session rather than a request.
        progress.context([
            ("model_type".to_owned(), json!(asked.model_type)),
            ("symbols".to_owned(), json!(asked.symbols)),
            ("timeframes".to_owned(), json!(asked.timeframes)),
            ("total_epochs".to_owned(), json!(total_epochs)),
        ]);
        let mut placement = match session {
            Some(session) => {
                progress.detail(format!("following training host session {}", session.id));
                if let (Some(pool), Some(worker)) = (&pool, &worker) {
                    pool.hold(&worker.worker_id, ctx.operation_id()).await;
                }
                let client = client_of(worker.as_ref(), pool.as_ref(), &client).map_err(failed)?;
                Placement { client, worker, session }
            }
            None => {
                // A training picked up before it reached a host starts from its request again.
                let request = match start.as_mut() {
                    Some(request) => request,
                    None => start.insert(rebuilt_request(&asked, &settings, ctx.operation_id()).await?),
                };
                request.task_id = ctx.operation_id().to_owned();
                ctx.step(TrainingStep::Start, "Starting training on the host");
                match &pool {
                    Some(pool) => {
                        let launch = Launch::Start(request);
                        place(pool, &client, launch, &HashSet::new(), &settings, &ctx, &progress, &token).await?
                    }
                    None => {
                        let session = start_on_host(&client, request, &settings, &ctx, &progress, &token).await?;
                        Placement { client: client.clone(), worker: None, session }
                    }
                }
            }
        };
        ctx.running().await;
        let (mut moves, mut follows) = (0, 0);
        loop {
            let Placement { client: host, worker, session } = &placement;
            // Stored for a later re-attach (a resumed, re-attached or moved training too), and
            // stoppable on its host from now on.
            let state =
                TrainingState { session_id: session.id.clone(), protocol: session.protocol, worker: worker.clone() };
            ctx.save_state(&state).await?;
            let release = release_of(&pool, worker, ctx.operation_id());
            ctx.on_cancel(remote_stop(
                "training",
                host.clone(),
                session.clone(),
                settings.stop(),
                release.clone(),
                StartGate::default(),
            ));
            let on_worker = pool.as_deref().zip(worker.as_ref());
            let outcome =
                follow_to_the_end(host, session, on_worker, total_epochs, &settings, &ctx, &progress, &token).await;
            let (why, checkpoint) = match outcome {
                Err(Ended::Lost { why, checkpoint }) => (why, checkpoint),
                outcome => {
                    // A cancelled training's worker is freed once the host confirmed the stop.
                    let outcome = outcome.map_err(|ended| match ended {
                        Ended::Job(e) => e,
                        Ended::Lost { .. } => unreachable!("handled above"),
                    });
                    if !matches!(outcome, Err(JobError::Cancelled))
                        && let Some(release) = release
                    {
                        release.now().await;
                    }
                    return outcome;
                }
            };
            let (Some(pool), Some(lost)) = (&pool, worker.clone()) else {
                return Err(failed(format!("training host lost session {}: {why}", session.id)));
            };
            // The worker itself, back at a new address (it registered again there): its session
            // may live on, so it is followed there before anything moves.
            if follows < MAX_FOLLOWS
                && let Some(endpoint_url) = pool.moved_to(&lost).await
            {
                follows += 1;
                ctx.warn(format!(
                    "worker {} registered again at {endpoint_url}: the training follows it there",
                    lost.worker_id
                ));
                let client = pool.client_for(&endpoint_url).map_err(|e| failed(e.to_string()))?;
                let worker = Some(WorkerRef { worker_id: lost.worker_id, endpoint_url });
                placement = Placement { client, worker, session: session.clone() };
                continue;
            }
            pool.lose(&lost.worker_id, ctx.operation_id()).await;
            if moves >= settings.max_moves {
                return Err(failed(format!(
                    "worker {} stopped answering ({why}); the training already moved {moves} time(s), the most \
                     training.max_moves allows: it stops here (resume or retry it)",
                    lost.worker_id
                )));
            }
            moves += 1;
            let request = match &mut start {
                Some(request) => request,
                None => start.insert(rebuilt_request(&asked, &settings, ctx.operation_id()).await?),
            };
            let epoch = checkpoint.as_ref().and_then(|c| c.get("epoch")).and_then(Value::as_u64).map(|e| e as u32);
            let from = match epoch {
                Some(e) => format!("resuming from its checkpoint after epoch {}", e + 1),
                None => "starting again from the beginning (no checkpoint)".to_owned(),
            };
            ctx.warn(format!(
                "worker {} stopped answering ({why}): the training moves to another worker (move {moves} of at most \
                 {}), {from}",
                lost.worker_id, settings.max_moves
            ));
            let launch = match epoch {
                Some(epoch) if session.protocol == Protocol::Operations => Launch::Resume { request, epoch },
                _ => Launch::Start(request),
            };
            // The new worker trains from the checkpoint: what ran after it is done again.
            progress.restart_step();
            let avoid = HashSet::from([lost.worker_id.clone()]);
            placement = place(pool, &client, launch, &avoid, &settings, &ctx, &progress, &token).await?;
        }
    }
}

/// The host request of a training that must start again after a re-attach: from the strategy
/// file as it is now (re-read and validated, as a retry does).
async fn rebuilt_request(
    asked: &TrainingRequest,
    settings: &TrainingSettings,
    id: &str,
) -> Result<StartRequest, JobError> {
    let mut request = super::start_request(asked.clone(), settings.strategies_dir.clone()).await.map_err(failed)?;
    request.task_id = id.to_owned();
    Ok(request)
}

fn release_of(pool: &Option<Arc<WorkerPool>>, worker: &Option<WorkerRef>, operation_id: &str) -> Option<Release> {
    Some(Release::new(pool.clone()?, &worker.as_ref()?.worker_id, operation_id))
}

/// `POST /training/start` on the configured host, waiting (cancellably, with backoff) while it is
/// busy.
pub(super) async fn start_on_host(
    client: &Arc<TrainingClient>,
    request: &StartRequest,
    settings: &TrainingSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<Session, JobError> {
    let starts = StartGate::default();
    let protocol = client.protocol(token).await.map_err(|e| {
        if e.is_cancelled() { JobError::Cancelled } else { failed(format!("the training host cannot be reached: {e}")) }
    })?;
    if protocol == crate::hosts::training::Protocol::Operations {
        // The host will know the session by our id: if a cancel comes while the start is in
        // flight, the stop can still find it.
        let session = Session { id: request.task_id.clone(), protocol };
        ctx.on_cancel(remote_stop("training", client.clone(), session, settings.stop(), None, starts.clone()));
    }
    let deadline = Instant::now() + settings.start_timeout;
    let mut pauses = BUSY_HOST.pauses();
    loop {
        let (host, asked) = (client.clone(), request.clone());
        let started = starts.run(async move { host.start(&asked, &CancellationToken::new()).await }, token).await;
        match started.unwrap_or(Err(StartError::Cancelled)) {
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

/// How many times one training follows its worker to a new endpoint (a worker that keeps
/// re-registering elsewhere is not followed forever: the training moves instead).
const MAX_FOLLOWS: u32 = 10;

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
    /// A training on a registered worker goes on there while the service restarts (it is
    /// detached before anything else is set aside); one on the configured host is stopped with
    /// the service, as before.
    fn reattach(
        &self,
        request: TrainingRequest,
        state: Option<TrainingState>,
        cause: Resumption,
    ) -> Option<TrainingJob> {
        let Some(TrainingState { session_id, protocol, worker }) = state else {
            // Never reached a host (it waited for a free worker or host): nothing runs anywhere,
            // so nothing is lost — it queues again, from its request, wherever it is picked up.
            if cause == Resumption::Detach {
                return None;
            }
            return Some(TrainingJob {
                total_epochs: request.parameters.epochs.filter(|t| *t > 0),
                asked: request,
                start: None,
                session: None,
                client: self.client.clone(),
                settings: self.settings.clone(),
                pool: self.pool.clone(),
                worker: None,
            });
        };
        if matches!(cause, Resumption::Detach | Resumption::Shutdown) && worker.is_none() {
            return None;
        }
        Some(TrainingJob {
            total_epochs: request.parameters.epochs.filter(|t| *t > 0),
            asked: request,
            start: None,
            session: Some(Session { id: session_id, protocol }),
            client: self.client.clone(),
            settings: self.settings.clone(),
            pool: self.pool.clone(),
            worker,
        })
    }
}
