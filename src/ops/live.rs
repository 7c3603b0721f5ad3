//! One operation while this process runs it: the current [`Snapshot`] (readers load it without
//! locking), the writer-side state behind a short mutex that is never held across an await, a
//! version channel that wakes long-polls and SSE streams, and the operation's cancellation token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::job::RemoteStopHook;
use crate::ops::orchestrator::SHUTDOWN_REASON;
use crate::ops::progress::{Progress, Renderer, Tracker};
use crate::ops::record::{
    Cancellation, OperationRecord, Outcome, RemoteStop, Status, TransitionError,
};
use crate::ops::snapshot::Snapshot;
use crate::time;

struct WriterState {
    record: OperationRecord,
    job_state: Option<Value>,
    tracker: Tracker,
}

pub(crate) struct LiveOperation {
    pub(crate) id: String,
    current: ArcSwap<Snapshot>,
    state: Mutex<WriterState>,
    version: watch::Sender<u64>,
    settled: watch::Sender<bool>,
    pub(crate) token: CancellationToken,
    /// Progress changed since the last store write.
    dirty: AtomicBool,
    pub(crate) abort: OnceLock<AbortHandle>,
    /// What to tell a host when this operation is cancelled (set by the job once it has remote work).
    remote_stop: Mutex<Option<RemoteStopHook>>,
}

/// What a cancel request found.
pub(crate) enum CancelRequest {
    /// This request recorded the intent; the caller stores it and fires the token.
    First(Arc<Snapshot>),
    /// Another request got there first; wait for the same outcome.
    AlreadyRequested,
    /// Too late: the operation already ended with this status.
    Terminal(Status),
}

impl LiveOperation {
    pub(crate) fn new(
        record: OperationRecord,
        job_state: Option<Value>,
        renderer: Arc<dyn Renderer>,
        token: CancellationToken,
    ) -> Arc<Self> {
        let snapshot = Arc::new(Snapshot::new(record.clone(), job_state.clone()));
        let (version, _) = watch::channel(record.version);
        let (settled, _) = watch::channel(false);
        Arc::new(Self {
            id: record.operation_id.clone(),
            current: ArcSwap::new(snapshot),
            state: Mutex::new(WriterState {
                record,
                job_state,
                tracker: Tracker::new(renderer),
            }),
            version,
            settled,
            token,
            dirty: AtomicBool::new(false),
            abort: OnceLock::new(),
            remote_stop: Mutex::new(None),
        })
    }

    /// The latest version; never waits for a writer.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // A panic inside an edit leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change`, bumps the version, publishes the new snapshot and wakes waiters — all
    /// under the writer mutex, so versions are published in order.
    fn publish(&self, mut state: MutexGuard<'_, WriterState>) -> Arc<Snapshot> {
        state.record.version += 1;
        let snapshot = Arc::new(Snapshot::new(state.record.clone(), state.job_state.clone()));
        self.current.store(snapshot.clone());
        self.version.send_replace(state.record.version);
        snapshot
    }

    /// A progress change from the job. Ignored once the operation is terminal (late reports from
    /// work that was cancelled must not touch the final record).
    pub(crate) fn edit_progress(&self, change: impl FnOnce(&mut Tracker, &mut Progress)) {
        let mut state = self.lock();
        if state.record.status.is_terminal() {
            return;
        }
        let WriterState {
            record, tracker, ..
        } = &mut *state;
        change(tracker, &mut record.progress);
        record.progress.updated_at = Some(time::now());
        self.publish(state);
        self.dirty.store(true, Ordering::Release);
    }

    /// A change to the record's other fields (warnings, metrics, resume state) while it runs.
    /// Returns `None` (and changes nothing) once terminal.
    pub(crate) fn edit(
        &self,
        change: impl FnOnce(&mut OperationRecord, &mut Option<Value>),
    ) -> Option<Arc<Snapshot>> {
        let mut state = self.lock();
        if state.record.status.is_terminal() {
            return None;
        }
        let WriterState {
            record, job_state, ..
        } = &mut *state;
        change(record, job_state);
        Some(self.publish(state))
    }

    /// Takes the progress-changed flag: true when a store write is due.
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn start(&self) -> Result<Arc<Snapshot>, TransitionError> {
        let mut state = self.lock();
        state.record.start(time::now())?;
        Ok(self.publish(state))
    }

    /// Records the intent to cancel, once.
    pub(crate) fn request_cancel(&self, reason: &str) -> CancelRequest {
        let mut state = self.lock();
        if state.record.status.is_terminal() {
            return CancelRequest::Terminal(state.record.status);
        }
        if state.record.cancellation.is_some() {
            return CancelRequest::AlreadyRequested;
        }
        state.record.cancellation = Some(Cancellation {
            requested_at: time::now(),
            reason: reason.to_owned(),
            ..Cancellation::default()
        });
        CancelRequest::First(self.publish(state))
    }

    /// Ends the operation. Once a cancel was requested (or the token fired, e.g. at shutdown),
    /// the outcome is `cancelled` whatever the work returned: the DELETE's answer stands.
    /// `remote_host` names the host told to stop the remote part of cancelled work.
    /// Returns `None` when the operation had already ended (terminal is final).
    pub(crate) fn finish(
        &self,
        outcome: Outcome,
        forced: bool,
        remote_host: Option<String>,
    ) -> Option<Arc<Snapshot>> {
        let mut state = self.lock();
        if state.record.status.is_terminal() {
            return None;
        }
        let now = time::now();
        let cancelled = state.record.cancellation.is_some()
            || self.token.is_cancelled()
            || matches!(outcome, Outcome::Cancelled { .. });
        let outcome = if cancelled {
            let reason = match outcome {
                _ if self.token.is_cancelled() && state.record.cancellation.is_none() => {
                    SHUTDOWN_REASON.to_owned()
                }
                Outcome::Cancelled { reason } => reason,
                _ => SHUTDOWN_REASON.to_owned(),
            };
            let cancellation = state
                .record
                .cancellation
                .get_or_insert_with(|| Cancellation {
                    requested_at: now,
                    reason,
                    ..Cancellation::default()
                });
            cancellation.stopped_at = Some(now);
            cancellation.forced = forced;
            cancellation.remote = remote_host.map(|host| RemoteStop {
                host,
                ..RemoteStop::default()
            });
            Outcome::Cancelled {
                reason: cancellation.reason.clone(),
            }
        } else {
            outcome
        };
        state.record.finish(outcome, now).ok()?;
        Some(self.publish(state))
    }

    /// Updates the remote half of the cancellation (allowed after the end: it reports what a
    /// host did later, and touches neither status, result nor error).
    pub(crate) fn edit_remote_stop(
        &self,
        change: impl FnOnce(&mut RemoteStop),
    ) -> Option<Arc<Snapshot>> {
        let mut state = self.lock();
        let cancellation = state.record.cancellation.as_mut()?;
        change(cancellation.remote.get_or_insert_with(RemoteStop::default));
        Some(self.publish(state))
    }

    pub(crate) fn set_remote_stop(&self, hook: RemoteStopHook) {
        *self.remote_stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    pub(crate) fn take_remote_stop(&self) -> Option<RemoteStopHook> {
        self.remote_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The final state is stored: wake everyone waiting for the end.
    pub(crate) fn mark_settled(&self) {
        self.settled.send_replace(true);
    }

    pub(crate) async fn settled(&self) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|settled| *settled).await;
    }
}
