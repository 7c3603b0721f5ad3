//! Where a training runs: sent to a free registered worker — waiting while none is free, passing
//! over one that answers busy or cannot be reached — or, with none registered, to the configured
//! training host; and, when its worker is lost, moved to another one: resumed there from its last
//! checkpoint when the worker can, otherwise started again from the beginning.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fleet::pool::WorkerPool;
use crate::fleet::pool::WorkerRef;
use crate::fleet::stop::Release;
use crate::fleet::stop::{StartGate, remote_stop};
use crate::hosts::HostErrorKind;
use crate::hosts::training::{Protocol, Session, StartError, StartRequest, TrainingClient};
use crate::ops::{JobError, OperationHandle, ProgressReporter};
use crate::training::job::{TrainingSettings, start_on_host};

/// Where a training's host session runs.
pub(super) struct Placement {
    /// The client of its host.
    pub client: Arc<TrainingClient>,
    /// Its registered worker (none: the configured training host).
    pub worker: Option<WorkerRef>,
    pub session: Session,
}

/// How a training is launched on the worker it gets.
pub(super) enum Launch<'a> {
    /// From the beginning.
    Start(&'a StartRequest),
    /// From the checkpoint its lost worker saved at `epoch` (0-based), if the new worker can
    /// read it (ktrdr's workers share their checkpoint folder); from the beginning otherwise.
    Resume { request: &'a StartRequest, epoch: u32 },
}

impl Launch<'_> {
    fn request(&self) -> &StartRequest {
        match self {
            Launch::Start(request) | Launch::Resume { request, .. } => request,
        }
    }
}

/// The worker type trainings go to.
pub const TRAINING_WORKER: &str = "training";

/// Places the training on a free registered worker other than those in `avoid` — waiting,
/// cancellably, while none is free — or, with none registered, on the configured host.
#[allow(clippy::too_many_arguments)]
pub(super) async fn place(
    pool: &Arc<WorkerPool>,
    host: &Arc<TrainingClient>,
    launch: Launch<'_>,
    avoid: &HashSet<String>,
    settings: &TrainingSettings,
    ctx: &OperationHandle,
    progress: &ProgressReporter,
    token: &CancellationToken,
) -> Result<Placement, JobError> {
    let mut tried = avoid.clone();
    // With a training host configured, trainings go there while no worker is registered.
    let none_registered = (!settings.host_configured).then_some("none is, and hosts.training.url is empty");
    loop {
        let claimed =
            pool.claim_waiting(TRAINING_WORKER, "training", none_registered, &mut tried, ctx, progress).await?;
        let Some(worker) = claimed else {
            let session = start_on_host(host, launch.request(), settings, ctx, progress, token).await?;
            forget_epochs_after(ctx, None);
            return Ok(Placement { client: host.clone(), worker: None, session });
        };
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
        // The worker knows the session by our id: a cancel during the start can still stop it.
        let pending = Session { id: launch.request().task_id.clone(), protocol: Protocol::Operations };
        let starts = StartGate::default();
        ctx.on_cancel(remote_stop(
            "training",
            client.clone(),
            pending,
            settings.stop(),
            Some(release.clone()),
            starts.clone(),
        ));
        match launch_on(&client, &launch, &worker.worker_id, ctx, token, &starts).await {
            Ok(session) => {
                pool.count("worker");
                let worker = WorkerRef { worker_id: worker.worker_id, endpoint_url: worker.endpoint_url };
                return Ok(Placement { client, worker: Some(worker), session });
            }
            Err(StartError::Cancelled) => return Err(JobError::Cancelled),
            Err(StartError::Busy(_)) => {}
            // Gone — refusing connections, silent, or dying while it answered: the next one.
            Err(StartError::Failed(e))
                if matches!(e.kind, HostErrorKind::Connect | HostErrorKind::Timeout | HostErrorKind::Broken) => {}
            Err(e) => {
                release.now().await;
                return Err(JobError::failed(format!("worker {} could not start the training: {e}", worker.worker_id)));
            }
        }
        // Busy after all, or gone: the next one.
        pool.count("passed_over");
        release.now().await;
        tried.insert(worker.worker_id);
    }
}

/// Starts or resumes the training on one worker (each call runs to its answer, see
/// [`StartGate`]); the record's epochs are cut back to what the new run continues from.
async fn launch_on(
    client: &Arc<TrainingClient>,
    launch: &Launch<'_>,
    worker_id: &str,
    ctx: &OperationHandle,
    token: &CancellationToken,
    starts: &StartGate,
) -> Result<Session, StartError> {
    if let Launch::Resume { request, epoch } = launch {
        let (host, id) = (client.clone(), request.task_id.clone());
        match starts.run(async move { host.resume(&id, &CancellationToken::new()).await }, token).await {
            Some(Ok(session)) => {
                forget_epochs_after(ctx, Some(*epoch));
                return Ok(session);
            }
            Some(Err(why)) if !token.is_cancelled() => {
                ctx.warn(format!(
                    "worker {worker_id} could not resume the training from its checkpoint ({why}): it starts again \
                     from the beginning"
                ));
            }
            _ => return Err(StartError::Cancelled),
        }
    }
    let (host, request) = (client.clone(), launch.request().clone());
    let started = starts.run(async move { host.start(&request, &CancellationToken::new()).await }, token).await;
    let session = started.ok_or(StartError::Cancelled)??;
    forget_epochs_after(ctx, None);
    Ok(session)
}

/// Drops the recorded epochs a new run trains again: those after the checkpoint's `epoch`
/// (0-based), or all of them when it starts from the beginning.
fn forget_epochs_after(ctx: &OperationHandle, epoch: Option<u32>) {
    if ctx.current_metrics().and_then(|m| m.get("epochs").cloned()).is_none() {
        return;
    }
    ctx.metrics(|m| {
        if let Some(Value::Array(epochs)) = m.get_mut("epochs") {
            epochs.retain(|e| {
                let index = e.get("epoch").and_then(Value::as_u64);
                matches!((index, epoch), (Some(i), Some(last)) if i <= u64::from(last))
            });
        }
    });
}
