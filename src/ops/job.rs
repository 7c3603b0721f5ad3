//! What a domain plugs into the core: the typed [`Job`] contract (the request an operation was
//! started with, the state it needs to re-attach, its named [`Steps`]), the [`JobContext`] it
//! runs with (progress, cancellation, warnings, durable state, a remote-stop hook), and the
//! [`OperationType`] that erases a job's types so that the core stores and lists plain JSON.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, Range};
use std::pin::Pin;
use std::sync::Arc;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::ops::live::LiveOperation;
use crate::ops::progress::{ProgressReporter, Renderer};
use crate::ops::record::OperationRecord;
use crate::ops::store::{Checkpoint, CheckpointKind, Store};
use crate::time;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What caused a failure, kept for the logs (the record keeps the message).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// How a job ends, besides success (whose value becomes `result_summary`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// `message` becomes the operation's `error_message`, so it says what happened in words a
    /// user understands; `cause` is the error behind it, if any.
    #[error("{message}")]
    Failed {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// The job saw its token fire and stopped.
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    pub fn failed(message: impl Into<String>) -> Self {
        JobError::Failed { message: message.into(), cause: None }
    }

    /// Fails with `message`, keeping `cause` as the error's source.
    pub fn failed_by(message: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        JobError::Failed { message: message.into(), cause: Some(Arc::new(cause)) }
    }
}

pub type JobResult = Result<Value, JobError>;

/// A job's named steps, in order: `progress.steps_total` is their count, and each step owns a
/// band of the percentage.
pub trait Steps: Copy + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every step, in the order the job goes through them.
    const ALL: &'static [Self];

    /// The part of the percentage this step covers (a job may narrow it when it knows more,
    /// see [`JobContext::step_within`]).
    fn band(self) -> Range<f64>;

    /// 1-based, as `progress.current_step_number`.
    fn number(self) -> u32 {
        Self::ALL.iter().position(|s| *s == self).map_or(0, |i| i as u32 + 1)
    }
}

/// The work of one operation, with the types the core stores for it.
///
/// `run` must race [`JobContext::cancelled`] at every await point that can take long, so a
/// cancel stops it in microseconds; what it must keep (work already done) it saves before
/// returning [`JobError::Cancelled`].
pub trait Job: Send + Sized + 'static {
    /// Appears in ids (`op_{TYPE}_...`) and in `operation_type`.
    const TYPE: &'static str;
    /// What the operation was started with: stored as its `metadata` (api.md), so its serde
    /// shape is the wire shape.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What a later run needs to re-attach to the work (e.g. the id of a host session), stored
    /// durably with the operation and given back to [`Reattach::reattach`].
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Step: Steps;

    /// Whether the job itself says when its operation starts running
    /// ([`OperationHandle::running`]): work that first waits its turn elsewhere (a free remote
    /// machine) reads `pending` until then, like work waiting for a slot. By default an operation
    /// is `running` as soon as its job runs.
    const STARTS_ITSELF: bool = false;

    /// The list row's short label (the row field ktrdr's clients read it from): the one thing
    /// the operation works on.
    fn summary(request: &Self::Request) -> Option<String>;

    /// The list row's `subject`: everything that tells this operation from its neighbours in a
    /// list, in one short line. By default the `summary`.
    fn subject(request: &Self::Request) -> Option<String> {
        Self::summary(request)
    }

    fn run(self, ctx: JobContext<Self>) -> impl Future<Output = JobResult> + Send + 'static;

    /// How to stop remote work that runs before the job does (a session resumed or re-attached
    /// on its host): set when the operation is taken on, before it waits for anything, so that a
    /// cancel the instant the operation exists still reaches the host. The job may replace it
    /// with [`OperationHandle::on_cancel`] as it goes.
    fn remote_stop(&self, _operation_id: &str) -> Option<RemoteStopHook> {
        None
    }
}

/// A job ready to start, type-erased.
pub struct BoxedJob {
    start: Box<dyn FnOnce(OperationHandle) -> BoxFuture<JobResult> + Send>,
    /// [`Job::STARTS_ITSELF`].
    pub(crate) starts_itself: bool,
}

impl BoxedJob {
    pub fn new<J: Job>(job: J) -> Self {
        let start = Box::new(move |handle: OperationHandle| -> BoxFuture<JobResult> {
            if let Some(hook) = job.remote_stop(handle.operation_id()) {
                handle.on_cancel(hook);
            }
            Box::pin(job.run(JobContext { handle, job: PhantomData }))
        });
        BoxedJob { start, starts_itself: J::STARTS_ITSELF }
    }

    /// Sets the job's remote stop at once and returns its work, which runs when polled.
    pub(crate) fn start(self, handle: OperationHandle) -> BoxFuture<JobResult> {
        (self.start)(handle)
    }
}

/// Picks up an operation this service was running when it last stopped (e.g. remote work that
/// is still going on), from its request and the state it stored. `None` fails the operation as
/// interrupted.
pub trait Reattach<J: Job>: Send + Sync + 'static {
    fn reattach(&self, request: J::Request, state: Option<J::State>, cause: Resumption) -> Option<J>;
}

/// Starts an ended operation's work again under a new operation: from scratch (retry) or from
/// its checkpoint (resume). A `String` error is a refusal said to the user (409).
pub trait Restart<J: Job>: Send + Sync + 'static {
    /// The same work again, from the request it was started with.
    fn retry(&self, request: J::Request) -> BoxFuture<Result<J, String>>;

    /// The work continued where `checkpoint` (the last one stored, if any) says it stopped.
    fn resume(
        &self,
        request: J::Request,
        state: Option<J::State>,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<Result<J, ResumeRefused>>;
}

/// Why a resume did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeRefused {
    /// Nothing was saved to continue from (404).
    NoCheckpoint,
    /// The type or its host cannot resume it; the message says what to do instead (409).
    Cannot(String),
}

/// Why an unfinished operation is being picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// This service restarted (after a crash) and finds its own operation.
    Restart,
    /// Another replica stopped renewing its lease; this one takes its operation over.
    Takeover,
    /// This service is stopping: would the work go on without it, to be re-attached (`Restart`)
    /// when it is back? Only work running on a machine of its own should say yes.
    Detach,
    /// This service is stopping and no replica can take its work: would the work be continued,
    /// from what it saved, when the service is back — as after a crash? Work that says yes is
    /// stopped without an outcome, its progress and checkpoint saved, and picked up by the
    /// restart; work that says no is cancelled.
    Shutdown,
}

type ErasedReattach = dyn Fn(&OperationRecord, Option<&Value>, Resumption) -> Option<BoxedJob> + Send + Sync;
type ErasedRetry = dyn Fn(&OperationRecord) -> BoxFuture<Result<BoxedJob, String>> + Send + Sync;
type ErasedResume = dyn Fn(&OperationRecord, Option<&Value>, Option<Checkpoint>) -> BoxFuture<Result<BoxedJob, ResumeRefused>>
    + Send
    + Sync;

/// What a list row says an operation works on, from its request ([`Job::summary`],
/// [`Job::subject`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowLabels {
    pub summary: Option<String>,
    pub subject: Option<String>,
}

/// A kind of operation, registered by its domain. The core has no list of domains: it knows a
/// type by its name and reaches the job's types only through the functions kept here.
#[derive(Clone)]
pub struct OperationType {
    pub name: &'static str,
    /// `progress.steps_total` at the start.
    pub steps_total: u32,
    pub renderer: Arc<dyn Renderer>,
    labels: fn(&Map<String, Value>) -> RowLabels,
    reattach: Option<Arc<ErasedReattach>>,
    retry: Option<Arc<ErasedRetry>>,
    resume: Option<Arc<ErasedResume>>,
}

/// A stored `metadata` or job state read back as the job's type.
fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, serde_json::Error> {
    T::deserialize(value)
}

fn decode_request<J: Job>(metadata: &Map<String, Value>) -> Result<J::Request, serde_json::Error> {
    J::Request::deserialize(metadata.clone().into_deserializer())
}

impl OperationType {
    /// The type of job `J`, drawn by `renderer`; without re-attach (an unfinished operation of
    /// this type is failed as interrupted after a restart).
    pub fn of<J: Job>(renderer: Arc<dyn Renderer>) -> Self {
        OperationType {
            name: J::TYPE,
            steps_total: J::Step::ALL.len() as u32,
            renderer,
            labels: |metadata| match decode_request::<J>(metadata) {
                Ok(request) => RowLabels { summary: J::summary(&request), subject: J::subject(&request) },
                Err(_) => RowLabels::default(),
            },
            reattach: None,
            retry: None,
            resume: None,
        }
    }

    /// Ended operations of this type can be retried and resumed by `restart`.
    pub fn restarted_by<J: Job>(mut self, restart: impl Restart<J>) -> Self {
        assert_eq!(self.name, J::TYPE, "a restart registered for another job type");
        let restart = Arc::new(restart);
        let unreadable = |e: serde_json::Error| format!("the operation's stored request cannot be read: {e}");
        let retrying = restart.clone();
        self.retry = Some(Arc::new(move |record: &OperationRecord| {
            let request = decode_request::<J>(&record.metadata);
            let restart = retrying.clone();
            Box::pin(async move { restart.retry(request.map_err(unreadable)?).await.map(BoxedJob::new) })
        }));
        self.resume = Some(Arc::new(move |record: &OperationRecord, state: Option<&Value>, checkpoint| {
            let request = decode_request::<J>(&record.metadata);
            let state = state.filter(|s| !s.is_null()).map(decode::<J::State>).transpose();
            let restart = restart.clone();
            Box::pin(async move {
                let cannot = ResumeRefused::Cannot;
                let state = state.map_err(|e| cannot(format!("the operation's stored state cannot be read: {e}")))?;
                let request = request.map_err(|e| cannot(unreadable(e)))?;
                restart.resume(request, state, checkpoint).await.map(BoxedJob::new)
            })
        }));
        self
    }

    pub fn can_restart(&self) -> bool {
        self.retry.is_some()
    }

    /// The job that does an ended operation's work again; `None` if the type cannot.
    pub(crate) fn retry(&self, record: &OperationRecord) -> Option<BoxFuture<Result<BoxedJob, String>>> {
        Some(self.retry.as_ref()?(record))
    }

    /// The job that continues an ended operation from `checkpoint`; `None` if the type cannot.
    pub(crate) fn resume(
        &self,
        record: &OperationRecord,
        state: Option<&Value>,
        checkpoint: Option<Checkpoint>,
    ) -> Option<BoxFuture<Result<BoxedJob, ResumeRefused>>> {
        Some(self.resume.as_ref()?(record, state, checkpoint))
    }

    /// Unfinished operations of this type are picked up by `reattach`.
    pub fn reattached_by<J: Job>(mut self, reattach: impl Reattach<J>) -> Self {
        assert_eq!(self.name, J::TYPE, "a re-attach registered for another job type");
        self.reattach = Some(Arc::new(move |record: &OperationRecord, state: Option<&Value>, cause| {
            let request = decode_request::<J>(&record.metadata)
                .map_err(|e| tracing::warn!(operation_id = %record.operation_id, error = %e, "cannot read the request of an unfinished operation"))
                .ok()?;
            let state = match state.filter(|s| !s.is_null()).map(decode::<J::State>).transpose() {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(operation_id = %record.operation_id, error = %e, "cannot read the state of an unfinished operation");
                    return None;
                }
            };
            reattach.reattach(request, state, cause).map(BoxedJob::new)
        }));
        self
    }

    /// What the list row says an operation of this type works on.
    pub fn labels(&self, record: &OperationRecord) -> RowLabels {
        (self.labels)(&record.metadata)
    }

    /// The job that picks this stored unfinished operation up again, if the type can.
    pub(crate) fn reattach(
        &self,
        record: &OperationRecord,
        state: Option<&Value>,
        cause: Resumption,
    ) -> Option<BoxedJob> {
        self.reattach.as_ref()?(record, state, cause)
    }
}

/// The `metadata` of a new operation: its request as JSON.
pub(crate) fn request_metadata<J: Job>(request: &J::Request) -> Map<String, Value> {
    match serde_json::to_value(request) {
        Ok(Value::Object(map)) => map,
        Ok(other) => panic!("the request of a `{}` job must serialise as an object, not {other}", J::TYPE),
        Err(e) => panic!("the request of a `{}` job cannot be serialised: {e}", J::TYPE),
    }
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

/// The operation's checkpoint as saved now.
fn checkpoint_now(op: &LiveOperation, kind: CheckpointKind, state: Value) -> Checkpoint {
    Checkpoint {
        operation_id: op.id.clone(),
        operation_type: op.snapshot().record.operation_type.clone(),
        kind,
        created_at: time::now(),
        state,
        artifacts_path: None,
        artifacts_size_bytes: 0,
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

    /// The host's checkpoint of the stopped work (what a resume continues from).
    pub async fn checkpoint(&self, kind: CheckpointKind, state: Value) {
        if let Err(e) = self.store.put_checkpoint(&checkpoint_now(&self.op, kind, state)).await {
            tracing::warn!(operation_id = %self.op.id, error = %e, "could not store the host's checkpoint");
        }
    }

    pub async fn failed(&self, error: impl Into<String>) {
        let error = error.into();
        self.record(|r| r.error = Some(error)).await;
    }
}

/// Everything a running job may touch, whatever its type (helpers such as the stall observer
/// and the gateway guard take this); [`JobContext`] adds the typed parts.
pub struct OperationHandle {
    pub(crate) op: Arc<LiveOperation>,
    pub(crate) store: Store,
    pub(crate) owner: String,
}

impl OperationHandle {
    pub fn operation_id(&self) -> &str {
        &self.op.id
    }

    /// Moves a `pending` operation to `running` (and stores it soon): for jobs that
    /// [start themselves](Job::STARTS_ITSELF). Nothing happens to one already running or over.
    pub async fn running(&self) {
        if self.op.snapshot().record.status != crate::ops::Status::Pending {
            return;
        }
        if let Ok(snapshot) = self.op.start() {
            let _ = self.store.save_later(vec![snapshot], &self.owner).await;
        }
    }

    /// The operation's `metrics` as they stand (a re-attached job continues from them).
    pub fn current_metrics(&self) -> Option<Value> {
        self.op.snapshot().record.metrics.clone()
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
            .map_err(|e| JobError::failed_by(format!("could not store the operation's progress: {e}"), e))
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

    /// Saves the operation's checkpoint (what a resume continues from), replacing the last one.
    /// A checkpoint that cannot be saved is a warning: the work goes on.
    pub async fn checkpoint(&self, kind: CheckpointKind, state: Value) {
        if let Err(e) = self.store.put_checkpoint(&checkpoint_now(&self.op, kind, state)).await {
            self.warn(format!("could not save a checkpoint: {e}"));
        }
    }

    /// Registers what to run on the host when this operation is cancelled after it started
    /// remote work. Replaces an earlier hook.
    pub fn on_cancel(&self, hook: RemoteStopHook) {
        self.op.set_remote_stop(hook);
    }
}

/// The context of a running job of type `J`: the operation's handle, plus its typed steps and
/// state.
pub struct JobContext<J> {
    handle: OperationHandle,
    job: PhantomData<fn() -> J>,
}

impl<J> Deref for JobContext<J> {
    type Target = OperationHandle;

    fn deref(&self) -> &OperationHandle {
        &self.handle
    }
}

impl<J: Job> JobContext<J> {
    /// Starts `step` with its own band of the percentage.
    pub fn step(&self, step: J::Step, message: impl Into<String>) {
        self.progress().start_step(message, step.number(), step.band());
    }

    /// Starts `step` in a band the job worked out (e.g. from how much there is to do).
    pub fn step_within(&self, step: J::Step, message: impl Into<String>, band: Range<f64>) {
        self.progress().start_step(message, step.number(), band);
    }

    /// Stores the job's state durably before returning (e.g. the id of remote work, so that a
    /// restarted service can re-attach).
    pub async fn save_state(&self, state: &J::State) -> Result<(), JobError> {
        let state = serde_json::to_value(state)
            .map_err(|e| JobError::failed_by(format!("could not encode the operation's state: {e}"), e))?;
        let Some(snapshot) = self.op.edit(|_, job_state| *job_state = Some(state)) else {
            return Err(JobError::Cancelled);
        };
        self.store
            .save(vec![snapshot], &self.owner)
            .await
            .map_err(|e| JobError::failed_by(format!("could not store the operation's state: {e}"), e))
    }
}
