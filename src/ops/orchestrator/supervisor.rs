//! The supervisor of each operation: one tracked task that waits for a slot, runs the job and
//! stores its outcome whatever the job did — returned, failed, cancelled, aborted or panicked —
//! then has the remote work stopped; and the throttled writer of progress.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable, Aborted};
use tracing::Instrument;

use super::{DEFAULT_CANCEL_REASON, Inner, SHUTDOWN_REASON};
use crate::backoff::Backoff;
use crate::metrics;
use crate::ops::job::{BoxedJob, JobError, OperationHandle, RemoteStopReport};
use crate::ops::live::LiveOperation;
use crate::ops::record::{Outcome, Status};
use crate::ops::snapshot::Snapshot;

/// Runs one operation in one tracked task: waits for a slot if its type has a limit, moves it
/// to `running`, runs the job, and stores the outcome whatever happened to the job — returned,
/// failed, cancelled, aborted or panicked.
pub(super) fn spawn(inner: Arc<Inner>, op: Arc<LiveOperation>, job: BoxedJob, already_running: bool) {
    let span = operation_span(&op.id, &op.snapshot().record.operation_type);
    spawn_in(inner, op, job, already_running, span)
}

/// The span of an operation's whole life: a root for the logs (an operation outlives the
/// request that started it), and for traces a child of the current span — the request's —
/// so that its remote calls show in the caller's trace.
pub(super) fn operation_span(id: &str, kind: &str) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "operation",
        operation_id = %id,
        otel.name = tracing::field::Empty,
        "operation.type" = %kind,
        operation.status = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("operation {kind}"));
        crate::telemetry::continue_current_trace(&span);
    }
    span
}

/// [`spawn`] within a span made beforehand (its trace id is already in the record).
pub(super) fn spawn_in(
    inner: Arc<Inner>,
    op: Arc<LiveOperation>,
    job: BoxedJob,
    already_running: bool,
    span: tracing::Span,
) {
    let tasks = inner.tasks.clone();
    let supervisor = async move {
        // Taken on now: remote work that already runs (a resumed session) is stoppable from
        // here on, even if a cancel comes before the job gets a slot.
        let handle =
            OperationHandle { op: op.clone(), store: inner.store.clone(), owner: inner.settings.node_id.clone() };
        let starts_itself = job.starts_itself;
        let work = job.start(handle);
        if op.token.is_cancelled() {
            finish(&inner, &op, Outcome::Cancelled { reason: SHUTDOWN_REASON.to_owned() }, false).await;
            return;
        }
        // Holding the slot for as long as the work runs.
        let _slot = match inner.slots.get(op.snapshot().record.operation_type.as_str()) {
            Some(slots) if !already_running => {
                let slots = slots.clone();
                if slots.available_permits() == 0 {
                    op.edit_progress(|tracker, progress| {
                        tracker.detail(
                            progress,
                            "waiting for a free slot (the concurrency limit of this type is reached)".to_owned(),
                        )
                    });
                }
                tokio::select! {
                    permit = slots.acquire_owned() => permit.ok(),
                    _ = op.token.cancelled() => {
                        finish(&inner, &op, Outcome::Cancelled { reason: SHUTDOWN_REASON.to_owned() }, false).await;
                        return;
                    }
                }
            }
            _ => None,
        };
        if !already_running && !starts_itself {
            match op.start() {
                Ok(snapshot) => {
                    let _ = inner.store.save_later(vec![snapshot], &inner.settings.node_id).await;
                }
                Err(_) => return,
            }
        }
        // The work runs inside this task (one task per operation), abortable from a cancel
        // that outlives its grace period, and with panics caught so an outcome is always stored.
        let (abort, registration) = AbortHandle::new_pair();
        let _ = op.abort.set(abort);
        // Its remote calls wait whenever this replica may have lost its leases (see `fence`).
        let work = crate::ops::fence::within(inner.fence.clone(), AssertUnwindSafe(work).catch_unwind());
        let work = Abortable::new(work, registration);
        let (outcome, forced) = match work.await {
            Ok(Ok(Ok(result))) => (Outcome::Completed(result), false),
            Ok(Ok(Err(JobError::Failed { message, cause }))) => {
                if let Some(cause) = cause {
                    tracing::warn!(error = &*cause as &dyn std::error::Error, "the operation failed: {message}");
                }
                (Outcome::Failed(message), false)
            }
            Ok(Ok(Err(JobError::Cancelled))) => {
                (Outcome::Cancelled { reason: DEFAULT_CANCEL_REASON.to_owned() }, false)
            }
            Err(Aborted) => (Outcome::Cancelled { reason: DEFAULT_CANCEL_REASON.to_owned() }, true),
            Ok(Err(_panic)) => {
                tracing::error!("the operation's work panicked");
                (Outcome::Failed("internal error: the operation's work crashed".to_owned()), false)
            }
        };
        finish(&inner, &op, outcome, forced).await;
    };
    tasks.spawn(supervisor.instrument(span));
}

/// The one way an operation ends: terminal state in memory (first outcome wins), stored, dropped
/// from the registry, waiters woken; then the remote stop, if cancelled work was on a host.
async fn finish(inner: &Arc<Inner>, op: &Arc<LiveOperation>, outcome: Outcome, forced: bool) {
    if op.is_abandoned() {
        // The replica that took it over records the outcome; its remote work is not stopped.
        inner.registry.write().remove(&op.id);
        op.mark_settled();
        return;
    }
    // Completed work has nothing left to resume — nor has the operation it continued or repeated.
    // Deleted before anyone can see `completed`, so that a completed record never sits beside a
    // checkpoint offering to resume it.
    if matches!(outcome, Outcome::Completed(_)) {
        let parent = op.snapshot().record.parent_operation_id.clone();
        for id in std::iter::once(&op.id).chain(parent.as_ref()) {
            if let Err(e) = inner.store.delete_checkpoint(id).await {
                tracing::warn!(operation_id = %id, error = %e, "could not delete the checkpoint of completed work");
            }
        }
    }
    let hook = op.take_remote_stop();
    let remote_host = hook.as_ref().map(|h| h.host.clone());
    let Some(snapshot) = op.finish(outcome, forced, remote_host) else {
        return;
    };
    store_final_state(inner, op, &snapshot).await;
    inner.registry.write().remove(&op.id);
    op.mark_settled();
    tracing::Span::current().record("operation.status", snapshot.record.status.as_str());
    tracing::info!(status = %snapshot.record.status, "operation finished");
    let (kind, status) = (snapshot.record.operation_type.as_str(), snapshot.record.status.as_str());
    inner.metrics.counter(metrics::OPERATIONS_FINISHED, &[("type", kind), ("status", status)]).increment(1);
    inner.metrics.counter(metrics::KTRDR_OPERATIONS, &[("operation_type", kind), ("status", status)]).increment(1);
    if let Some(seconds) = snapshot.record.duration_seconds() {
        inner.metrics.histogram(metrics::OPERATION_DURATION, &[("type", kind)]).record(seconds);
    }
    if let (Status::Cancelled, Some(hook)) = (snapshot.record.status, hook) {
        let report = RemoteStopReport {
            op: op.clone(),
            store: inner.store.clone(),
            owner: inner.settings.node_id.clone(),
            reason: snapshot.record.error_message.clone().unwrap_or_default(),
            shutdown: inner.root.clone(),
        };
        // A resume waits for this stop's end: the host's stop checkpoint is what it continues from.
        let (over, in_flight) = tokio::sync::watch::channel(false);
        inner.stops_in_flight.lock().insert(op.id.clone(), in_flight);
        let (stops, id) = (inner.clone(), op.id.clone());
        inner.tasks.spawn(
            async move {
                (hook.run)(report).await;
                stops.stops_in_flight.lock().remove(&id);
                let _ = over.send(true);
            }
            .in_current_span(),
        );
    }
}

/// Stores an operation's final state, trying again while the database cannot take it (unreachable,
/// restarting, busy): a blip must not leave the record `running` for ever. The operation stays
/// in the registry meanwhile, so this replica answers with its final state and a cancel waits
/// for the write. Gives up, saying so, on a write the database refuses, when the service shuts
/// down, or when another replica has taken the operation over.
async fn store_final_state(inner: &Inner, op: &LiveOperation, snapshot: &Arc<Snapshot>) {
    let mut pauses = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)).pauses();
    loop {
        let Err(e) = inner.store.save(vec![snapshot.clone()], &inner.settings.node_id).await else {
            return;
        };
        if !e.is_transient() || op.is_abandoned() {
            tracing::error!(operation_id = %op.id, error = %e, "could not store the final state");
            return;
        }
        // Out of touch with the database: until it is back, this end is not settled (another
        // replica may take the operation on), so reads go by the store.
        inner.doubt.raise();
        tracing::warn!(operation_id = %op.id, error = %e, "could not store the final state yet; trying again");
        if !pauses.sleep(&inner.root).await {
            tracing::error!(operation_id = %op.id, error = %e, "could not store the final state before the shutdown");
            return;
        }
    }
}

/// Writes the progress of every operation that changed since the last write, in chunks so that
/// a state change queued meanwhile waits for one chunk at most.
pub(super) async fn flush_progress(inner: &Inner) {
    const CHUNK: usize = 256;
    let changed: Vec<Arc<Snapshot>> =
        inner.registry.read().values().filter(|op| op.take_dirty()).map(|op| op.snapshot()).collect();
    for chunk in changed.chunks(CHUNK) {
        if let Err(e) = inner.store.save_progress(chunk.to_vec(), &inner.settings.node_id).await {
            tracing::warn!(error = %e, "could not queue progress writes");
            return;
        }
    }
}

pub(super) async fn flush_progress_periodically(inner: Weak<Inner>) {
    /// Once this many operations have left the registry, freed memory is handed back to the OS.
    const TRIM_AFTER_RELEASED: usize = 1_000;
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let mut tick = tokio::time::interval(strong.settings.persist_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = strong.stop_flusher.clone();
    drop(strong);
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        flush_progress(&inner).await;
        let active = inner.registry.read().len();
        peak = peak.max(active);
        if peak - active >= TRIM_AFTER_RELEASED {
            peak = active;
            tokio::task::spawn_blocking(crate::memory::release_free_memory);
        }
    }
}
