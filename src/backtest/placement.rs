//! Where a backtest runs: a free registered `backtesting` worker, claimed in the database —
//! waiting, cancellably and `pending`, while none is free or none is registered; passing over one
//! that answers busy or cannot be reached. A start that a cancel cuts off still runs to its
//! answer, and the stop waits for it ([`StartGate`]).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::backtest::BACKTEST_WORKER;
use crate::backtest::job::BacktestSettings;
use crate::fleet::pool::{WorkerPool, WorkerRef};
use crate::fleet::stop::{Release, StartGate, remote_stop};
use crate::hosts::HostErrorKind;
use crate::hosts::training::{Protocol, Session, StartError, TrainingClient};
use crate::ops::{JobError, OperationHandle, ProgressReporter};

/// Where a backtest's run is.
pub(super) struct Placement {
    pub client: Arc<TrainingClient>,
    pub worker: WorkerRef,
    pub session: Session,
}

/// How a backtest is launched on the worker it gets.
pub(super) enum Launch<'a> {
    /// `POST /backtests/start` with ktrdr's body (its `task_id` is the id the run goes by).
    Start(&'a Value),
    /// `POST /backtests/resume`: the run `id` goes on from its checkpoint (in the folder the
    /// workers share).
    Resume { id: &'a str },
}

impl Launch<'_> {
    fn remote_id(&self) -> String {
        match self {
            Launch::Start(body) => body["task_id"].as_str().unwrap_or_default().to_owned(),
            Launch::Resume { id } => (*id).to_owned(),
        }
    }
}

/// Places the backtest on a free worker other than those in `avoid`, waiting while none is.
#[allow(clippy::too_many_arguments)]
pub(super) async fn place(
    pool: &Arc<WorkerPool>,
    launch: Launch<'_>,
    avoid: &HashSet<String>,
    settings: &BacktestSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<Placement, JobError> {
    let mut tried = avoid.clone();
    loop {
        let claimed =
            pool.claim_waiting(BACKTEST_WORKER, "backtest", Some("none is"), &mut tried, ctx, progress).await?;
        // Backtests have nowhere else to go: they wait while none is registered.
        let worker = claimed.ok_or_else(|| JobError::failed("no backtest worker is registered"))?;
        let release = Release::new(pool.clone(), &worker.worker_id, ctx.operation_id());
        let client = match pool.client_for(&worker.endpoint_url) {
            Ok(client) => client,
            Err(e) => {
                release.now().await;
                return Err(JobError::failed_by(format!("cannot talk to worker {}: {e}", worker.worker_id), e));
            }
        };
        progress.context([("worker_id".to_owned(), json!(worker.worker_id))]);
        progress.detail(format!("starting on worker {}", worker.worker_id));
        // The worker knows the run by this id: a cancel during the start can still stop it.
        let pending = Session { id: launch.remote_id(), protocol: Protocol::Operations };
        let starts = StartGate::default();
        let stop = settings.stop.clone();
        ctx.on_cancel(remote_stop(
            "backtest worker",
            client.clone(),
            pending,
            stop,
            Some(release.clone()),
            starts.clone(),
        ));
        let started = match &launch {
            Launch::Start(body) => {
                let (host, body) = (client.clone(), (*body).clone());
                let call =
                    async move { host.start_operation("/backtests/start", &body, &CancellationToken::new()).await };
                starts.run(call, token).await.unwrap_or(Err(StartError::Cancelled))
            }
            Launch::Resume { id } => {
                let (host, id) = (client.clone(), (*id).to_owned());
                let call = async move {
                    host.resume_operation("/backtests/resume", "backtest", &id, &CancellationToken::new()).await
                };
                match starts.run(call, token).await {
                    None => Err(StartError::Cancelled),
                    Some(Ok(session)) => Ok(session),
                    Some(Err(why)) => {
                        release.now().await;
                        return Err(JobError::failed(format!(
                            "worker {} did not resume the backtest: {why}",
                            worker.worker_id
                        )));
                    }
                }
            }
        };
        match started {
            Ok(session) => {
                pool.count("worker");
                let worker = WorkerRef { worker_id: worker.worker_id, endpoint_url: worker.endpoint_url };
                return Ok(Placement { client, worker, session });
            }
            Err(StartError::Cancelled) => return Err(JobError::Cancelled),
            Err(StartError::Busy(_)) => {}
            // Gone — refusing connections, silent, or dying while it answered: the next one.
            Err(StartError::Failed(e))
                if matches!(e.kind, HostErrorKind::Connect | HostErrorKind::Timeout | HostErrorKind::Broken) => {}
            Err(e) => {
                release.now().await;
                return Err(JobError::failed(format!("worker {} could not start the backtest: {e}", worker.worker_id)));
            }
        }
        pool.count("passed_over");
        release.now().await;
        tried.insert(worker.worker_id);
    }
}
