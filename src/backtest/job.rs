//! The backtest operation (backtesting.md §2): placed on a free `backtesting` worker (`pending`
//! until one takes it), followed through the worker's operations API by the fleet's follower —
//! progress, bars, trades and equity relayed, checkpoints kept — and on cancel stopped there;
//! a lost worker's run moves to another one, from its checkpoint when it left one. Re-attached
//! to its run after a service restart.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backtest::placement::{Launch, Placement, place};
use crate::backtest::{BacktestRequest, BacktestService};
use crate::fleet::follow::{Ended, PollSettings, follow};
use crate::fleet::pool::{WorkerPool, WorkerRef};
use crate::fleet::stop::{Release, StartGate, StopSettings, remote_stop};
use crate::hosts::training::{HostSnapshot, Protocol, Session};
use crate::ops::job::BoxFuture;
use crate::ops::{
    Checkpoint, Job, JobContext, JobError, JobResult, ProgressReporter, Reattach, RemoteStopHook, Restart,
    ResumeRefused, Resumption, Steps,
};

/// Tunables of backtests.
#[derive(Debug, Clone)]
pub struct BacktestSettings {
    pub poll: PollSettings,
    pub stop: StopSettings,
    /// Moves to another worker after a lost one, at most.
    pub max_moves: u32,
}

/// A backtest: what was asked, and the run it follows once there is one.
pub struct BacktestJob {
    pub request: BacktestRequest,
    pub pool: Arc<WorkerPool>,
    pub settings: BacktestSettings,
    /// A run already going on a worker (re-attached), or — with no worker — one a free worker
    /// is to resume from its checkpoint (a continuation).
    pub running: Option<BacktestState>,
}

/// The run a backtest follows: the id the worker runs it under (a continuation's is its
/// parent's) and the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacktestState {
    pub remote_id: String,
    /// `None`: not placed yet (a continuation waiting for a worker to resume it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacktestStep {
    Dispatch,
    Backtest,
}

impl Steps for BacktestStep {
    const ALL: &'static [Self] = &[BacktestStep::Dispatch, BacktestStep::Backtest];

    /// The worker's percentage is the operation's.
    fn band(self) -> std::ops::Range<f64> {
        match self {
            BacktestStep::Dispatch => 0.0..0.0,
            BacktestStep::Backtest => 0.0..100.0,
        }
    }
}

impl Job for BacktestJob {
    const TYPE: &'static str = super::OPERATION_TYPE;
    type Request = BacktestRequest;
    type State = BacktestState;
    type Step = BacktestStep;
    /// `pending` while it waits for a free worker: `running` once one took it.
    const STARTS_ITSELF: bool = true;

    fn summary(request: &BacktestRequest) -> Option<String> {
        Some(request.symbol.clone())
    }

    /// `strategy · EURUSD 1h`.
    fn subject(request: &BacktestRequest) -> Option<String> {
        Some(format!("{} · {} {}", request.parameters.strategy_name, request.symbol, request.timeframe))
    }

    async fn run(self, ctx: JobContext<Self>) -> JobResult {
        self.backtest(ctx).await
    }

    /// A re-attached run already goes on its worker: a cancel before the job runs a line stops it.
    fn remote_stop(&self, operation_id: &str) -> Option<RemoteStopHook> {
        let state = self.running.as_ref()?;
        let worker = state.worker.as_ref()?;
        let client = self.pool.client_for(&worker.endpoint_url).ok()?;
        let session = Session { id: state.remote_id.clone(), protocol: Protocol::Operations };
        let release = Release::new(self.pool.clone(), &worker.worker_id, operation_id);
        Some(remote_stop(
            "backtest worker",
            client,
            session,
            self.settings.stop.clone(),
            Some(release),
            StartGate::default(),
        ))
    }
}

/// ktrdr's start body (backtesting.md §2.2) for the run `task_id`.
fn start_body(request: &BacktestRequest, task_id: &str) -> Value {
    let p = &request.parameters;
    json!({
        "task_id": task_id, "strategy_name": p.strategy_name, "symbol": request.symbol,
        "timeframe": request.timeframe, "start_date": request.start_date, "end_date": request.end_date,
        "initial_capital": p.initial_capital, "commission": p.commission, "slippage": p.slippage,
        "model_path": p.model_path, "timeframes": p.timeframes,
    })
}

/// How many times one backtest follows its worker to a new endpoint before it moves instead.
const MAX_FOLLOWS: u32 = 10;

impl BacktestJob {
    async fn backtest(self, ctx: JobContext<Self>) -> JobResult {
        let Self { request, pool, settings, running } = self;
        let (progress, token) = (ctx.progress(), ctx.token().clone());
        progress.context([
            ("symbol".to_owned(), json!(request.symbol)),
            ("timeframe".to_owned(), json!(request.timeframe)),
            ("strategy_name".to_owned(), json!(request.parameters.strategy_name)),
        ]);
        ctx.step(BacktestStep::Dispatch, "Waiting for a backtest worker");
        let body = start_body(&request, ctx.operation_id());
        let mut placement = match running {
            Some(BacktestState { remote_id, worker: Some(worker) }) => {
                pool.hold(&worker.worker_id, ctx.operation_id()).await;
                let client = pool.client_for(&worker.endpoint_url).map_err(|e| JobError::failed(e.to_string()))?;
                Placement { client, worker, session: Session { id: remote_id, protocol: Protocol::Operations } }
            }
            Some(BacktestState { remote_id, worker: None }) => {
                // Stored at once: a restart before a worker took it still resumes, not starts over.
                ctx.save_state(&BacktestState { remote_id: remote_id.clone(), worker: None }).await?;
                let launch = Launch::Resume { id: &remote_id };
                place(&pool, launch, &HashSet::new(), &settings, &ctx, &progress, &token).await?
            }
            None => place(&pool, Launch::Start(&body), &HashSet::new(), &settings, &ctx, &progress, &token).await?,
        };
        ctx.running().await;
        let (mut moves, mut follows) = (0, 0);
        loop {
            let Placement { client, worker, session } = &placement;
            let state = BacktestState { remote_id: session.id.clone(), worker: Some(worker.clone()) };
            ctx.save_state(&state).await?;
            let release = Release::new(pool.clone(), &worker.worker_id, ctx.operation_id());
            let stop = settings.stop.clone();
            ctx.on_cancel(remote_stop(
                "backtest worker",
                client.clone(),
                session.clone(),
                stop,
                Some(release.clone()),
                StartGate::default(),
            ));
            progress.context([("worker_id".to_owned(), json!(worker.worker_id))]);
            ctx.step(BacktestStep::Backtest, "Backtesting");
            let relay = |s: &HostSnapshot| relay(s, &progress);
            let outcome = follow(
                client,
                session,
                Some((&pool, worker)),
                &settings.poll,
                "backtest",
                &ctx,
                &progress,
                &token,
                relay,
            )
            .await;
            let (why, checkpoint) = match outcome {
                Ok(last) => {
                    release.now().await;
                    return Ok(last.result.unwrap_or_else(|| json!({})));
                }
                // A cancelled backtest's worker is freed once it confirmed the stop.
                Err(Ended::Job(JobError::Cancelled)) => return Err(JobError::Cancelled),
                Err(Ended::Job(e)) => {
                    release.now().await;
                    return Err(e);
                }
                Err(Ended::Lost { why, checkpoint }) => (why, checkpoint),
            };
            if follows < MAX_FOLLOWS
                && let Some(endpoint_url) = pool.moved_to(worker).await
            {
                follows += 1;
                ctx.warn(format!(
                    "worker {} registered again at {endpoint_url}: the backtest follows it there",
                    worker.worker_id
                ));
                let client = pool.client_for(&endpoint_url).map_err(|e| JobError::failed(e.to_string()))?;
                let worker = WorkerRef { worker_id: worker.worker_id.clone(), endpoint_url };
                placement = Placement { client, worker, session: session.clone() };
                continue;
            }
            let lost = worker.worker_id.clone();
            pool.lose(&lost, ctx.operation_id()).await;
            if moves >= settings.max_moves {
                return Err(JobError::failed(format!(
                    "worker {lost} stopped answering ({why}); the backtest already moved {moves} time(s), the most \
                     training.max_moves allows: it stops here (resume or retry it)"
                )));
            }
            moves += 1;
            let remote_id = session.id.clone();
            let launch = match &checkpoint {
                Some(_) => Launch::Resume { id: &remote_id },
                None => Launch::Start(&body),
            };
            let from = match checkpoint.as_ref().and_then(|c| c.get("current_date")).and_then(Value::as_str) {
                Some(date) => format!("resuming from its checkpoint at {date}"),
                None => "starting again from the beginning (no checkpoint)".to_owned(),
            };
            ctx.warn(format!(
                "worker {lost} stopped answering ({why}): the backtest moves to another worker (move {moves} of at \
                 most {}), {from}",
                settings.max_moves
            ));
            let avoid = HashSet::from([lost]);
            placement = place(&pool, launch, &avoid, &settings, &ctx, &progress, &token).await?;
        }
    }
}

/// The worker's progress → ours: its percentage and words, and bars, trades and equity.
fn relay(s: &HostSnapshot, progress: &ProgressReporter) {
    let context = s.context.as_ref();
    let field = |key: &str| context.and_then(|c| c.get(key)).cloned().unwrap_or(Value::Null);
    let (bars, total) = (field("bars_processed").as_u64(), field("bars_total").as_u64());
    progress.context([
        ("bars_processed".to_owned(), json!(bars)),
        ("bars_total".to_owned(), json!(total)),
        ("trades".to_owned(), field("trades")),
        ("equity".to_owned(), field("equity")),
        ("current_date".to_owned(), field("current_date")),
        ("worker_status".to_owned(), json!(s.host_status)),
    ]);
    if let Some(done) = bars {
        progress.items(done, total);
    }
    let message =
        s.message.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| format!("backtest worker: {}", s.host_status));
    progress.step_progress((s.percentage * 10.0).round() as u64, 1000, bars, Some(message));
}

/// Re-attaches a backtest left running by a previous run of the service to its run.
pub struct BacktestReattach {
    pub service: BacktestService,
}

impl Reattach<BacktestJob> for BacktestReattach {
    /// A run on a worker goes on while the service restarts; one never placed queues again.
    fn reattach(
        &self,
        request: BacktestRequest,
        state: Option<BacktestState>,
        cause: Resumption,
    ) -> Option<BacktestJob> {
        if state.is_none() && cause == Resumption::Detach {
            return None;
        }
        let mut job = self.service.job(request);
        job.running = state;
        Some(job)
    }
}

/// A retry runs the backtest again from its request; a resume has a worker go on from the
/// run's checkpoint (any free one: the workers share their checkpoints).
impl Restart<BacktestJob> for BacktestService {
    fn retry(&self, request: BacktestRequest) -> BoxFuture<Result<BacktestJob, String>> {
        let job = self.job(request);
        Box::pin(async move { Ok(job) })
    }

    fn resume(
        &self,
        request: BacktestRequest,
        state: Option<BacktestState>,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<Result<BacktestJob, ResumeRefused>> {
        let mut job = self.job(request);
        Box::pin(async move {
            let Some(state) = state else {
                let never = "the backtest never reached a worker, so there is nothing to resume: retry it instead";
                return Err(ResumeRefused::Cannot(never.into()));
            };
            if checkpoint.is_none() {
                return Err(ResumeRefused::NoCheckpoint);
            }
            job.running = Some(BacktestState { remote_id: state.remote_id, worker: None });
            Ok(job)
        })
    }
}
