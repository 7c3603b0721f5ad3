//! One operation while this process runs it: the current [`Snapshot`] (readers load it without
//! locking), a short writer mutex that is never held across an await (writers copy the current
//! record, change it and publish the copy, so one record per operation stays resident), a version
//! channel that wakes long-polls and SSE streams, and the operation's cancellation token.

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use futures_util::future::AbortHandle;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ops::feed::ChangeFeed;
use crate::ops::job::RemoteStopHook;
use crate::ops::orchestrator::SHUTDOWN_REASON;
use crate::ops::progress::{Progress, Renderer, Tracker};
use crate::ops::record::{Cancellation, OperationRecord, Outcome, RemoteStop, Status, TransitionError};
use crate::ops::snapshot::Snapshot;
use crate::time;

pub(crate) struct LiveOperation {
    pub(crate) id: String,
    /// The id again, shared with the change feed.
    shared_id: Arc<str>,
    feed: Arc<ChangeFeed>,
    current: ArcSwap<Snapshot>,
    /// Serialises writers; guards the progress tracker (the writer-side state).
    writer: Mutex<Tracker>,
    version: watch::Sender<u64>,
    settled: watch::Sender<bool>,
    pub(crate) token: CancellationToken,
    /// Progress changed since the last store write.
    dirty: AtomicBool,
    /// Another replica took the operation over: this copy stops and writes nothing more.
    abandoned: AtomicBool,
    /// Another replica stored its end (a cancel it recorded having waited for this one in vain):
    /// the store's record is the one to show while this copy stops.
    overruled: AtomicBool,
    /// Aborts the work when it ignores a cancel past the grace period.
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

/// The part of a snapshot a writer may change.
struct Draft<'a> {
    record: OperationRecord,
    job_state: Option<Value>,
    tracker: &'a mut Tracker,
}

impl LiveOperation {
    pub(crate) fn new(
        record: OperationRecord,
        job_state: Option<Value>,
        renderer: Arc<dyn Renderer>,
        token: CancellationToken,
        feed: Arc<ChangeFeed>,
    ) -> Arc<Self> {
        let (version, _) = watch::channel(record.version);
        let (settled, _) = watch::channel(false);
        Arc::new(Self {
            id: record.operation_id.clone(),
            shared_id: Arc::from(record.operation_id.as_str()),
            feed,
            current: ArcSwap::new(Arc::new(Snapshot::new(record, job_state))),
            writer: Mutex::new(Tracker::new(renderer)),
            version,
            settled,
            token,
            dirty: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            overruled: AtomicBool::new(false),
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

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // A panic inside an edit leaves plain data behind; keep serving it.
        mutex.lock()
    }

    /// Copies the current record, lets `change` edit the copy (returning `None` to drop it), then
    /// publishes it as the next version and wakes waiters — all under the writer mutex, so
    /// versions are published in order.
    fn modify<R>(&self, change: impl FnOnce(&mut Draft<'_>) -> Option<R>) -> Option<(R, Arc<Snapshot>)> {
        let mut tracker = Self::lock(&self.writer);
        let current = self.current.load();
        let mut draft =
            Draft { record: current.record.clone(), job_state: current.job_state.clone(), tracker: &mut tracker };
        let result = change(&mut draft)?;
        draft.record.version += 1;
        let version = draft.record.version;
        let snapshot = Arc::new(Snapshot::new(draft.record, draft.job_state));
        self.current.store(snapshot.clone());
        self.version.send_replace(version);
        self.feed.push(&self.shared_id);
        Some((result, snapshot))
    }

    /// A progress change from the job. Ignored once the operation is terminal (late reports from
    /// work that was cancelled must not touch the final record).
    pub(crate) fn edit_progress(&self, change: impl FnOnce(&mut Tracker, &mut Progress)) {
        let changed = self.modify(|d| {
            if d.record.status.is_terminal() {
                return None;
            }
            change(d.tracker, &mut d.record.progress);
            d.record.progress.updated_at = Some(time::now());
            Some(())
        });
        if changed.is_some() {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// A change to the record's other fields (warnings, metrics, resume state) while it runs;
    /// written with the next throttled progress write, like progress (callers that need it
    /// durable at once save the snapshot returned). Returns `None` (and changes nothing) once
    /// terminal.
    pub(crate) fn edit(&self, change: impl FnOnce(&mut OperationRecord, &mut Option<Value>)) -> Option<Arc<Snapshot>> {
        let snapshot = self
            .modify(|d| {
                if d.record.status.is_terminal() {
                    return None;
                }
                change(&mut d.record, &mut d.job_state);
                Some(())
            })
            .map(|(_, snapshot)| snapshot);
        if snapshot.is_some() {
            self.dirty.store(true, Ordering::Release);
        }
        snapshot
    }

    /// Takes the progress-changed flag: true when a store write is due.
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn start(&self) -> Result<Arc<Snapshot>, TransitionError> {
        let mut error = None;
        self.modify(|d| match d.record.start(time::now()) {
            Ok(()) => Some(()),
            Err(e) => {
                error = Some(e);
                None
            }
        })
        .map(|(_, snapshot)| snapshot)
        .ok_or_else(|| error.expect("start either succeeds or reports why"))
    }

    /// Records the intent to cancel, once.
    pub(crate) fn request_cancel(&self, reason: &str) -> CancelRequest {
        let mut found = CancelRequest::AlreadyRequested;
        let recorded = self.modify(|d| {
            if d.record.status.is_terminal() {
                found = CancelRequest::Terminal(d.record.status);
                return None;
            }
            if d.record.cancellation.is_some() {
                return None;
            }
            d.record.cancellation =
                Some(Cancellation { requested_at: time::now(), reason: reason.to_owned(), ..Cancellation::default() });
            Some(())
        });
        match recorded {
            Some((_, snapshot)) => CancelRequest::First(snapshot),
            None => found,
        }
    }

    /// Ends the operation. Once a cancel was requested (or the token fired, e.g. at shutdown),
    /// the outcome is `cancelled` whatever the work returned: the DELETE's answer stands.
    /// `remote_host` names the host told to stop the remote part of cancelled work.
    /// Returns `None` when the operation had already ended (terminal is final).
    pub(crate) fn finish(&self, outcome: Outcome, forced: bool, remote_host: Option<String>) -> Option<Arc<Snapshot>> {
        let token_fired = self.token.is_cancelled();
        self.modify(|d| {
            let record = &mut d.record;
            if record.status.is_terminal() {
                return None;
            }
            let now = time::now();
            let cancelled =
                record.cancellation.is_some() || token_fired || matches!(outcome, Outcome::Cancelled { .. });
            let outcome = if cancelled {
                let reason = match outcome {
                    // Fired without an intent on record: the whole service is stopping.
                    _ if token_fired && record.cancellation.is_none() => SHUTDOWN_REASON.to_owned(),
                    Outcome::Cancelled { reason } => reason,
                    _ => SHUTDOWN_REASON.to_owned(),
                };
                let cancellation = record.cancellation.get_or_insert_with(|| Cancellation {
                    requested_at: now,
                    reason,
                    ..Cancellation::default()
                });
                cancellation.stopped_at = Some(now);
                cancellation.forced = forced;
                cancellation.remote = remote_host.map(|host| RemoteStop { host, ..RemoteStop::default() });
                Outcome::Cancelled { reason: cancellation.reason.clone() }
            } else {
                outcome
            };
            record.finish(outcome, now).ok()
        })
        .map(|(_, snapshot)| snapshot)
    }

    /// Updates the remote half of the cancellation (allowed after the end: it reports what a
    /// host did later, and touches neither status, result nor error).
    pub(crate) fn edit_remote_stop(&self, change: impl FnOnce(&mut RemoteStop)) -> Option<Arc<Snapshot>> {
        self.modify(|d| {
            let cancellation = d.record.cancellation.as_mut()?;
            change(cancellation.remote.get_or_insert_with(RemoteStop::default));
            Some(())
        })
        .map(|(_, snapshot)| snapshot)
    }

    pub(crate) fn set_remote_stop(&self, hook: RemoteStopHook) {
        *Self::lock(&self.remote_stop) = Some(hook);
    }

    pub(crate) fn take_remote_stop(&self) -> Option<RemoteStopHook> {
        Self::lock(&self.remote_stop).take()
    }

    /// Stops this copy of an operation another replica owns (or is about to), without recording
    /// an outcome.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Another replica stored this operation's end: readers get the stored record from now on.
    pub(crate) fn overrule(&self) {
        self.overruled.store(true, Ordering::Release);
    }

    pub(crate) fn is_overruled(&self) -> bool {
        self.overruled.load(Ordering::Acquire)
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
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
