//! What a domain plugs into the core: the [`Job`] trait (the work of one operation), the
//! [`JobContext`] it runs with (progress, cancellation, warnings, durable resume state, a
//! remote-stop hook) and the [`OperationType`] a domain registers by name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::ops::live::LiveOperation;
use crate::ops::progress::{ProgressReporter, Renderer};
use crate::ops::record::OperationRecord;
use crate::ops::store::Store;
use crate::time;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How a job ends, besides success (whose value becomes `result_summary`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Failed(String),
    /// The job saw its token fire and stopped.
    #[error("cancelled")]
    Cancelled,
}

pub type JobResult = Result<Value, JobError>;

/// The work of one operation. `run` must race [`JobContext::cancelled`] at every await point
/// that can take long, so a cancel stops it in microseconds; what it must keep (work already
/// done) it saves before returning [`JobError::Cancelled`].
pub trait Job: Send + 'static {
    fn run(self, ctx: JobContext) -> impl Future<Output = JobResult> + Send + 'static;
}

/// A job ready to start, type-erased.
pub struct BoxedJob(Box<dyn FnOnce(JobContext) -> BoxFuture<JobResult> + Send>);

impl BoxedJob {
    pub fn new<J: Job>(job: J) -> Self {
        BoxedJob(Box::new(move |ctx| Box::pin(job.run(ctx))))
    }

    pub(crate) fn start(self, ctx: JobContext) -> BoxFuture<JobResult> {
        (self.0)(ctx)
    }
}

/// Picks up an operation this service was running when it last stopped (e.g. remote work that
/// is still going on). Returning `None` fails the operation as interrupted.
pub trait Reattach: Send + Sync + 'static {
    fn reattach(&self, record: &OperationRecord, job_state: Option<&Value>, cause: Resumption) -> Option<BoxedJob>;
}

/// Why an unfinished operation is being picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// This service restarted (after a crash) and finds its own operation.
    Restart,
    /// Another replica stopped renewing its lease; this one takes its operation over.
    Takeover,
}

/// A kind of operation, registered by its domain. The core has no list of domains.
#[derive(Clone)]
pub struct OperationType {
    /// Appears in ids (`op_{name}_...`) and in `operation_type`.
    pub name: &'static str,
    /// `progress.steps_total` at the start.
    pub steps_total: u32,
    pub renderer: Arc<dyn Renderer>,
    pub reattach: Option<Arc<dyn Reattach>>,
}

/// Tells a remote host to stop the work an operation started there. Run in the background after
/// the operation is already `cancelled`; reports each step through [`RemoteStopReport`].
pub struct RemoteStopHook {
    pub(crate) host: String,
    pub(crate) run: Box<dyn FnOnce(RemoteStopReport) -> BoxFuture<()> + Send>,
}

impl RemoteStopHook {
    pub fn new<F, Fut>(host: impl Into<String>, run: F) -> Self
    where
        F: FnOnce(RemoteStopReport) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        RemoteStopHook { host: host.into(), run: Box::new(move |report| Box::pin(run(report))) }
    }
}

/// Records the remote half of a cancel in `cancellation.remote`, durably.
pub struct RemoteStopReport {
    pub(crate) op: Arc<LiveOperation>,
    pub(crate) store: Store,
    pub(crate) owner: String,
    pub(crate) reason: String,
    pub(crate) shutdown: CancellationToken,
}

impl RemoteStopReport {
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Fires when the service shuts down: stop watching the host then (the stop itself should
    /// still go out, bounded by its own timeout).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    async fn record(&self, change: impl FnOnce(&mut crate::ops::record::RemoteStop)) {
        if let Some(snapshot) = self.op.edit_remote_stop(change)
            && let Err(e) = self.store.save(vec![snapshot], &self.owner).await
        {
            tracing::warn!(operation_id = %self.op.id, error = %e, "could not store the remote stop report");
        }
    }

    /// A stop request is about to be sent (one more attempt).
    pub async fn attempt(&self) {
        self.record(|r| {
            r.attempts += 1;
            r.sent_at.get_or_insert_with(time::now);
        })
        .await;
    }

    pub async fn acknowledged(&self) {
        self.record(|r| {
            r.acknowledged_at = Some(time::now());
            r.error = None;
        })
        .await;
    }

    /// The host's own final word on the remote work (e.g. `stopped`, or `completed` when a host
    /// ignored the stop).
    pub async fn final_status(&self, status: impl Into<String>) {
        let status = status.into();
        self.record(|r| r.host_final_status = Some(status)).await;
    }

    pub async fn failed(&self, error: impl Into<String>) {
        let error = error.into();
        self.record(|r| r.error = Some(error)).await;
    }
}

/// Everything a running job may touch.
pub struct JobContext {
    pub(crate) op: Arc<LiveOperation>,
    pub(crate) store: Store,
    pub(crate) owner: String,
}

impl JobContext {
    pub fn operation_id(&self) -> &str {
        &self.op.id
    }

    pub fn metadata(&self) -> Map<String, Value> {
        self.op.snapshot().record.metadata.clone()
    }

    /// The operation's `metrics` as they stand (a re-attached job continues from them).
    pub fn current_metrics(&self) -> Option<Value> {
        self.op.snapshot().record.metrics.clone()
    }

    /// The resume state saved by an earlier run of this operation (re-attach after a restart).
    pub fn job_state(&self) -> Option<Value> {
        self.op.snapshot().job_state.clone()
    }

    pub fn progress(&self) -> ProgressReporter {
        ProgressReporter::new(self.op.clone())
    }

    /// Fires on cancel and on shutdown. Race it at every await point.
    pub fn token(&self) -> &CancellationToken {
        &self.op.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.op.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.op.token.cancelled().await
    }

    pub fn warn(&self, message: impl Into<String>) {
        let message = message.into();
        self.op.edit(|r, _| r.warnings.push(message));
    }

    pub fn error(&self, message: impl Into<String>) {
        let message = message.into();
        self.op.edit(|r, _| r.errors.push(message));
    }

    /// What the work has achieved so far, as `result_summary`, stored before returning: kept if
    /// the operation ends `cancelled` or `failed` (or is interrupted by a crash), replaced by the
    /// result if it completes.
    pub async fn result_so_far(&self, summary: Value) -> Result<(), JobError> {
        let Some(snapshot) = self.op.edit(|r, _| r.result_summary = Some(summary)) else {
            return Err(JobError::Cancelled);
        };
        self.store
            .save(vec![snapshot], &self.owner)
            .await
            .map_err(|e| JobError::Failed(format!("could not store the operation's progress: {e}")))
    }

    /// Changes the operation's domain `metrics` (the domain decides their shape).
    pub fn metrics(&self, change: impl FnOnce(&mut Map<String, Value>)) {
        self.op.edit(|r, _| {
            let metrics = r.metrics.get_or_insert_with(|| Value::Object(Map::new()));
            if !metrics.is_object() {
                *metrics = Value::Object(Map::new());
            }
            change(metrics.as_object_mut().expect("made an object above"));
        });
    }

    /// Stores resume state durably before returning (e.g. the id of remote work, so that a
    /// restarted service can re-attach).
    pub async fn save_state(&self, state: Value) -> Result<(), JobError> {
        let Some(snapshot) = self.op.edit(|_, job_state| *job_state = Some(state)) else {
            return Err(JobError::Cancelled);
        };
        self.store
            .save(vec![snapshot], &self.owner)
            .await
            .map_err(|e| JobError::Failed(format!("could not store the operation's state: {e}")))
    }

    /// Registers what to run on the host when this operation is cancelled after it started
    /// remote work. Replaces an earlier hook.
    pub fn on_cancel(&self, hook: RemoteStopHook) {
        self.op.set_remote_stop(hook);
    }
}
