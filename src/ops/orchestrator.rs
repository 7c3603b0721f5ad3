//! The orchestrator: starts operations as tokio tasks with a child cancellation token, keeps the
//! running ones in a registry (dropped once terminal and stored), answers "where is X?" and
//! "stop X", persists progress on a throttle, reconciles what a previous run left unfinished, and
//! shuts down cleanly. What several replicas on one database add is in `cluster`.

use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::metrics::{self, Metrics};
use crate::ops::feed::ChangeFeed;
use crate::ops::fence::{Fence, LeaseClock};
use crate::ops::job::{BoxedJob, Job, OperationType, Resumption, request_metadata};
use crate::ops::live::{CancelRequest, LiveOperation};
use crate::ops::progress::DefaultRenderer;
use crate::ops::record::{Outcome, Status};
use crate::ops::snapshot::Snapshot;
use crate::ops::store::{IdempotencyKey, Inserted, Store, StoreError};
use crate::time;

mod cluster;
mod doubt;
mod lineage;
mod lookup;
mod retention;
mod set_aside;
mod supervisor;
#[cfg(test)]
mod tests;

pub use lineage::{ContinueError, Resumed};
use lookup::RemoteCache;
pub use lookup::{LiveView, Lookup, RemoteView};
use supervisor::{flush_progress, flush_progress_periodically, spawn};

pub use cluster::{ClusterSettings, NodeIdInUse, StartupCheck, claim_node_id};

/// `error_message` of an operation found unfinished at start-up that nobody could re-attach.
pub const INTERRUPTED: &str = "interrupted: service restarted before the operation finished";
/// `error_message` of an operation stopped by a service shutdown.
pub const SHUTDOWN_REASON: &str = "Operation cancelled: service shutting down";
/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// `error_message` of an operation cancelled without a reason.
pub const DEFAULT_CANCEL_REASON: &str = "Operation cancelled by user";

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a cancel waits for the work to stop before aborting it.
    pub cancel_grace: Duration,
    /// Progress is written to the store at most this often per operation.
    pub persist_interval: Duration,
    /// How long an Idempotency-Key keeps pointing at its operation.
    pub idempotency_ttl: Duration,
    /// This replica's name, stored as the owner of what it runs.
    pub node_id: String,
    /// At start-up, reconcile every unfinished operation (one node, e.g. SQLite) rather than
    /// only those this node owned.
    pub reconcile_all: bool,
    /// A loaded operation interrupted by a restart is continued at once by a linked operation
    /// (when its type resumes and it saved a checkpoint).
    pub resume_interrupted: bool,
    /// Checkpoints older than this are deleted by the retention sweep.
    pub checkpoint_retention: Duration,
    /// Most operations of a type running at once (types not named are unlimited). The rest
    /// wait `pending`, first come first served.
    pub max_concurrent: HashMap<String, usize>,
    /// Operations running or pending here at once, all types: a start beyond it is refused.
    pub max_active: usize,
    /// How long a resume waits for a stopped host's last word (its final state and stop
    /// checkpoint) before it decides from what it has.
    pub stop_confirm_wait: Duration,
    /// Other replicas' operations are read from the store at most this often (a short cache).
    pub remote_cache_ttl: Duration,
    /// Long-polls and streams of other replicas' operations re-read the store this often.
    pub remote_poll_interval: Duration,
    /// Several replicas share the store (PostgreSQL): leases, takeover, cross-replica cancel.
    pub cluster: Option<ClusterSettings>,
    /// A traced operation's page in a trace viewer, `{trace_id}` replaced; empty: no link.
    pub trace_url: String,
}

/// How a new operation relates to an earlier one.
#[derive(Debug, Clone, Default)]
struct Lineage {
    /// The operation it continues or repeats (`parent_operation_id`).
    parent: Option<String>,
    /// It continues `parent` from its checkpoint: at most one operation may.
    resumes: bool,
}

/// A new operation once its job's types are erased: its type's name, its request as `metadata`,
/// its job, and how it relates to an earlier operation.
struct Submission {
    operation_type: String,
    metadata: Map<String, Value>,
    job: BoxedJob,
    idempotency: Option<IdempotencyKey>,
    lineage: Lineage,
}

pub enum Submitted {
    Started(Arc<Snapshot>),
    /// The Idempotency-Key had already started this operation.
    Existing(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the service is shutting down and accepts no new operations")]
    ShuttingDown,
    #[error("operation type `{0}` is not registered")]
    UnknownType(String),
    #[error("Idempotency-Key `{0}` was already used with a different request")]
    IdempotencyKeyReused(String),
    #[error("Operation {resumed} was already resumed by {continuation}")]
    AlreadyResumed { resumed: String, continuation: String },
    /// `max_active` operations run or wait already; nothing was stored.
    #[error("{0} operations are already running or pending here")]
    TooManyActive(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("Operation not found: {0}")]
    NotFound(String),
    #[error("operation {id} is already {status} and cannot be cancelled")]
    NotCancellable { id: String, status: Status },
    #[error("operation {0} is not running on this replica")]
    NotLocal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer of a successful cancel.
pub struct Cancelled {
    pub snapshot: Arc<Snapshot>,
    /// A remote stop was started for work on a host.
    pub remote_cancelled: bool,
    /// The work was seen to stop. False when another replica, having waited for the owner in
    /// vain, recorded the cancel: the owner stops the work when it next hears of it.
    pub work_stopped: bool,
}

#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: Settings,
    types: HashMap<&'static str, OperationType>,
    /// Run slots per type with a concurrency limit (tokio's semaphore is fair: FIFO).
    slots: HashMap<&'static str, Arc<Semaphore>>,
    registry: RwLock<HashMap<String, Arc<LiveOperation>>>,
    /// Parent of every operation's token: cancelling it stops everything (shutdown).
    root: CancellationToken,
    /// Every operation's supervisor, remote stop and background cancel: shutdown waits for them.
    tasks: TaskTracker,
    /// The service's loops (progress flusher, retention sweeper, the cluster's loops): they end
    /// on shutdown, which waits for them.
    loops: TaskTracker,
    accepting: AtomicBool,
    stop_flusher: CancellationToken,
    metrics: Metrics,
    feed: Arc<ChangeFeed>,
    remote_cache: RemoteCache,
    /// Operations other replicas stored finished, as PostgreSQL announces them.
    finished_elsewhere: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Remote stops in flight here (a cancelled operation's host told to stop, its last word —
    /// final state, stop checkpoint — not yet heard): each turns `true` when the stop is over.
    stops_in_flight: parking_lot::Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    /// Whether another replica may have ended what this one still runs (see [`doubt`]).
    doubt: Arc<doubt::Doubt>,
    /// What the jobs' remote calls pass: they wait while this replica's leases may have lapsed.
    fence: Fence,
}

impl Inner {
    /// The operation, if it runs (or waits to run) in this process.
    fn live(&self, operation_id: &str) -> Option<Arc<LiveOperation>> {
        self.registry.read().get(operation_id).cloned()
    }

    /// Every operation running (or waiting to run) in this process, now.
    fn running(&self) -> Vec<Arc<LiveOperation>> {
        self.registry.read().values().cloned().collect()
    }

    /// The job that picks a stored unfinished operation up again, if its type can.
    fn reattach(&self, stored: &Snapshot, cause: Resumption) -> Option<BoxedJob> {
        let ty = self.types.get(stored.record.operation_type.as_str())?;
        ty.reattach(&stored.record, stored.job_state.as_ref(), cause)
    }

    /// A stored unfinished operation brought back to life in this process (not yet registered),
    /// rendered by its type.
    fn revive(&self, stored: &Snapshot, token: CancellationToken) -> Arc<LiveOperation> {
        let renderer = self
            .types
            .get(stored.record.operation_type.as_str())
            .map(|t| t.renderer.clone())
            .unwrap_or_else(|| Arc::new(DefaultRenderer));
        LiveOperation::new(stored.record.clone(), stored.job_state.clone(), renderer, token, self.feed.clone())
    }
}

impl Orchestrator {
    /// Builds the orchestrator for these operation types and starts its progress flusher;
    /// it records its figures into `metrics`.
    pub fn new(store: Store, settings: Settings, types: Vec<OperationType>, metrics: Metrics) -> Self {
        for ty in &types {
            // Every type's series exists from the start, at zero.
            metrics.counter(metrics::OPERATIONS_STARTED, &[("type", ty.name)]).increment(0);
        }
        let slots = types
            .iter()
            .filter_map(|t| settings.max_concurrent.get(t.name).map(|n| (t.name, Arc::new(Semaphore::new(*n)))))
            .collect();
        let remote_cache = RemoteCache { ttl: settings.remote_cache_ttl, entries: Default::default() };
        let settings_cluster = settings.cluster.is_some();
        // A renewal is trusted until one more interval would take it to the lease's end: the
        // calls let through until then reach their hosts before another replica may take over.
        let trust_renewals_for =
            settings.cluster.as_ref().map(|c| c.lease_timeout.saturating_sub(c.heartbeat_interval));
        let inner = Arc::new(Inner {
            store,
            types: types.into_iter().map(|t| (t.name, t)).collect(),
            slots,
            settings,
            registry: RwLock::new(HashMap::new()),
            root: CancellationToken::new(),
            tasks: TaskTracker::new(),
            loops: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            stop_flusher: CancellationToken::new(),
            metrics,
            feed: Arc::new(ChangeFeed::default()),
            remote_cache,
            finished_elsewhere: tokio::sync::broadcast::channel(1024).0,
            stops_in_flight: Default::default(),
            doubt: Arc::new(doubt::Doubt::new(settings_cluster)),
            fence: Fence(Arc::new(LeaseClock::new(trust_renewals_for))),
        });
        inner.loops.spawn(flush_progress_periodically(Arc::downgrade(&inner)));
        inner.loops.spawn(inner.metrics.clone().upkeep(METRICS_UPKEEP, inner.root.clone()));
        if let Some(cluster) = inner.settings.cluster.clone() {
            cluster::spawn_background(&inner, cluster);
        }
        Orchestrator { inner }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Fires when the service begins shutting down (streams and long-polls end on it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.root.clone()
    }

    /// Every change of every operation, in order.
    pub fn feed(&self) -> &ChangeFeed {
        &self.inner.feed
    }

    /// Runs `work` among the service's background loops: shutdown fires `shutdown_token` and
    /// waits for it.
    pub fn spawn_loop(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.loops.spawn(work);
    }

    /// False once shutdown began.
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    /// Where this orchestrator records its figures.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The names of the operation types this service runs.
    pub fn operation_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.inner.types.keys().copied()
    }

    /// The names of the replicas sharing this one's database that are alive (this one included);
    /// just this one with SQLite.
    pub async fn replicas(&self) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        let Some(cluster) = &inner.settings.cluster else { return Ok(vec![inner.settings.node_id.clone()]) };
        cluster.replicas.replicas_alive(time::now() - cluster.lease_timeout).await
    }

    /// Operations running or waiting here, by type.
    pub fn active_by_type(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for op in self.inner.registry.read().values() {
            *out.entry(op.snapshot().record.operation_type.clone()).or_default() += 1;
        }
        out
    }

    /// Operations running (or waiting to run) in this process.
    pub fn active_count(&self) -> usize {
        self.inner.registry.read().len()
    }

    fn live(&self, operation_id: &str) -> Option<Arc<LiveOperation>> {
        self.inner.live(operation_id)
    }

    /// Cancels in the background (for cancels that nobody waits on: one passed on by another
    /// replica, or carried over from a dead one).
    fn cancel_in_background(&self, operation_id: String, reason: Option<String>) {
        let orchestrator = self.clone();
        self.inner.tasks.spawn(async move {
            if let Err(e) = orchestrator.cancel(&operation_id, reason).await {
                tracing::debug!(operation_id, error = %e, "a cancel found nothing to do");
            }
        });
    }

    /// What the list row says an operation works on (by its type; nothing for a type this
    /// service does not run).
    pub fn labels(&self, record: &crate::ops::record::OperationRecord) -> crate::ops::RowLabels {
        self.inner.types.get(record.operation_type.as_str()).map(|t| t.labels(record)).unwrap_or_default()
    }

    /// Stores a new `pending` operation started with `request`, then runs `job` in the background.
    pub async fn submit<J: Job>(
        &self,
        job: J,
        request: &J::Request,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Submitted, SubmitError> {
        let metadata = request_metadata::<J>(request);
        let job = BoxedJob::new(job);
        let operation_type = J::TYPE.to_owned();
        self.submit_erased(Submission { operation_type, metadata, job, idempotency, lineage: Lineage::default() }).await
    }

    /// [`submit`](Self::submit) once the job's types are erased. Storing and starting run as a
    /// task of their own: once the record is stored the operation must run even if the caller is
    /// gone (a client giving up on a slow database would otherwise leave it `pending` for ever).
    async fn submit_erased(&self, submission: Submission) -> Result<Submitted, SubmitError> {
        let this = self.clone();
        // In the caller's span and trace context: the operation's trace continues the request's
        // (or, where the request's trace is not kept, is not kept either).
        let submitting = self
            .inner
            .tasks
            .spawn(crate::telemetry::in_current_trace(async move { this.store_and_start(submission).await }));
        match submitting.await {
            Ok(submitted) => submitted,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(SubmitError::ShuttingDown),
        }
    }

    async fn store_and_start(&self, submission: Submission) -> Result<Submitted, SubmitError> {
        let Submission { operation_type, metadata, job, idempotency, lineage } = submission;
        let inner = &self.inner;
        if !inner.accepting.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let ty = inner.types.get(operation_type.as_str()).ok_or(SubmitError::UnknownType(operation_type))?;
        let not_before = time::now() - inner.settings.idempotency_ttl;
        if let Some(key) = &idempotency
            && let Some((operation_id, fingerprint)) =
                inner.store.find_idempotency(&key.scope, &key.key, not_before).await?
        {
            return existing(key, operation_id, fingerprint);
        }
        // A replayed key above still finds its operation; a new one must fit.
        if inner.registry.read().len() >= inner.settings.max_active {
            return Err(SubmitError::TooManyActive(inner.settings.max_active));
        }

        let id = format!("op_{}_{}", ty.name, Uuid::now_v7().simple());
        let mut record =
            crate::ops::record::OperationRecord::new(id.clone(), ty.name.to_owned(), metadata, ty.steps_total);
        record.parent_operation_id = lineage.parent.clone();
        let span = supervisor::operation_span(&id, ty.name);
        record.trace_id = crate::telemetry::trace_id(&span);
        if let Some(trace_id) = &record.trace_id
            && !inner.settings.trace_url.is_empty()
        {
            record.trace_url = Some(inner.settings.trace_url.replace("{trace_id}", trace_id));
        }
        let op = LiveOperation::new(record, None, ty.renderer.clone(), inner.root.child_token(), inner.feed.clone());
        let keyed = idempotency.clone().map(|key| (key, not_before));
        let resumes = lineage.resumes.then(|| lineage.parent.clone()).flatten();
        match inner.store.insert_resuming(op.snapshot(), &inner.settings.node_id, keyed, resumes).await? {
            Inserted::New => {}
            Inserted::Existing { operation_id, fingerprint } => {
                let key = idempotency.as_ref().expect("only keyed inserts find an existing operation");
                return existing(key, operation_id, fingerprint);
            }
            Inserted::AlreadyResumed { continuation } => {
                let resumed = lineage.parent.unwrap_or_default();
                return Err(SubmitError::AlreadyResumed { resumed, continuation });
            }
        }
        inner.registry.write().insert(id, op.clone());
        inner.metrics.counter(metrics::OPERATIONS_STARTED, &[("type", ty.name)]).increment(1);
        supervisor::spawn_in(inner.clone(), op.clone(), job, false, span);
        Ok(Submitted::Started(op.snapshot()))
    }

    /// Cancels an operation and answers once its work has stopped and `cancelled` is stored
    /// (api.md §4). Work that ignores its token past the grace period is aborted.
    pub async fn cancel(&self, operation_id: &str, reason: Option<String>) -> Result<Cancelled, CancelError> {
        let inner = &self.inner;
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_owned());
        let Some(op) = self.live(operation_id) else {
            return match inner.store.get(operation_id).await? {
                None => Err(CancelError::NotFound(operation_id.to_owned())),
                Some(s) if s.is_terminal() => {
                    Err(CancelError::NotCancellable { id: operation_id.to_owned(), status: s.record.status })
                }
                Some(_) => match self.live(operation_id) {
                    // Stored a moment before it entered the registry: try again with it.
                    Some(_) => Box::pin(self.cancel(operation_id, Some(reason))).await,
                    None if inner.settings.cluster.is_some() => self.cancel_remote(operation_id, reason).await,
                    None => Err(CancelError::NotLocal(operation_id.to_owned())),
                },
            };
        };
        match op.request_cancel(&reason) {
            CancelRequest::Terminal(status) => {
                return Err(CancelError::NotCancellable { id: op.id.clone(), status });
            }
            CancelRequest::First(intent) => {
                // The intent is queued before the work is told to stop. The writer commits in
                // order, so it is durable no later than the final `cancelled` this call waits
                // for — without a second round trip to the database on the way.
                if let Err(e) = inner.store.save_later(vec![intent], &inner.settings.node_id).await {
                    tracing::warn!(operation_id, error = %e, "could not store the cancel intent; cancelling anyway");
                }
                op.token.cancel();
            }
            CancelRequest::AlreadyRequested => op.token.cancel(),
        }
        let asked = Instant::now();
        if timeout(inner.settings.cancel_grace, op.settled()).await.is_err() {
            tracing::warn!(operation_id, "work ignored cancellation for the grace period; aborting it");
            if let Some(handle) = op.abort.get() {
                handle.abort();
            }
            op.settled().await;
        }
        let snapshot = op.snapshot();
        let kind = snapshot.record.operation_type.as_str();
        inner.metrics.histogram(metrics::CANCEL_LATENCY, &[("type", kind)]).record(asked.elapsed().as_secs_f64());
        match snapshot.record.status {
            Status::Cancelled => Ok(Cancelled {
                remote_cancelled: snapshot.record.cancellation.as_ref().is_some_and(|c| c.remote.is_some()),
                work_stopped: true,
                snapshot,
            }),
            status => Err(CancelError::NotCancellable { id: op.id.clone(), status }),
        }
    }

    /// At start-up: every operation a previous run left `pending`/`running` is re-attached by
    /// its type, or failed as interrupted. Returns how many of each.
    pub async fn reconcile(&self) -> Result<(usize, usize), StoreError> {
        let inner = &self.inner;
        let owner = (!inner.settings.reconcile_all).then_some(inner.settings.node_id.as_str());
        let (mut reattached, mut failed) = (0, 0);
        for stored in inner.store.unfinished(owner).await? {
            // Whatever name this node had before, what it finds is its own now.
            inner.store.adopt(&stored.record.operation_id, &inner.settings.node_id).await?;
            match inner.reattach(&stored, Resumption::Restart) {
                Some(job) => {
                    let op = inner.revive(&stored, inner.root.child_token());
                    inner.registry.write().insert(op.id.clone(), op.clone());
                    tracing::info!(operation_id = %op.id, "re-attached an operation left running by the previous run");
                    spawn(inner.clone(), op, job, stored.record.status == Status::Running);
                    reattached += 1;
                }
                None => {
                    let op = inner.revive(&stored, CancellationToken::new());
                    if let Some(snapshot) = op.finish(Outcome::Failed(INTERRUPTED.to_owned()), false, None) {
                        inner.store.save(vec![snapshot], &inner.settings.node_id).await?;
                    }
                    failed += 1;
                    if inner.settings.resume_interrupted {
                        self.resume_interrupted(&stored.record.operation_id).await;
                    }
                }
            }
        }
        if reattached + failed > 0 {
            tracing::info!(reattached, failed, "reconciled operations left unfinished by the previous run");
        }
        Ok((reattached, failed))
    }

    /// Stops accepting, cancels everything running, waits for the work to stop and its outcome
    /// to be stored (aborting what ignores the cancel), and flushes the store — within `deadline`.
    /// With other replicas alive, what they can resume is handed over to them first; work that
    /// runs on a machine of its own and can be re-attached is left running there; work that the
    /// restart continues from what it saved is left for it (as after a crash, never cancelled).
    pub async fn shutdown(&self, deadline: Duration) {
        let inner = &self.inner;
        let end = Instant::now() + deadline;
        inner.accepting.store(false, Ordering::Release);
        self.hand_over(deadline / 2).await;
        self.keep_for(Resumption::Detach, deadline / 4).await;
        self.keep_for(Resumption::Shutdown, deadline / 4).await;
        inner.root.cancel();
        inner.tasks.close();
        let grace = inner.settings.cancel_grace.min(deadline / 2);
        if timeout(grace, inner.tasks.wait()).await.is_err() {
            let stuck = inner.running();
            tracing::warn!(operations = stuck.len(), "aborting work that ignored the shutdown");
            for op in stuck {
                if let Some(handle) = op.abort.get() {
                    handle.abort();
                }
            }
            if tokio::time::timeout_at(end, inner.tasks.wait()).await.is_err() {
                tracing::error!("shutdown deadline passed with operations still finishing");
            }
        }
        inner.stop_flusher.cancel();
        inner.loops.close();
        if tokio::time::timeout_at(end, inner.loops.wait()).await.is_err() {
            tracing::error!("shutdown deadline passed with background loops still running");
        }
        flush_progress(inner).await;
        if let Err(e) = inner.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        if let Some(cluster) = &inner.settings.cluster
            && let Err(e) = cluster.replicas.replica_gone(&inner.settings.node_id, &cluster.instance).await
        {
            tracing::warn!(error = %e, "could not record that this replica stopped");
        }
    }
}

fn existing(key: &IdempotencyKey, operation_id: String, fingerprint: String) -> Result<Submitted, SubmitError> {
    if fingerprint == key.fingerprint {
        Ok(Submitted::Existing(operation_id))
    } else {
        Err(SubmitError::IdempotencyKeyReused(key.key.clone()))
    }
}
