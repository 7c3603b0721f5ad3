//! Work started again under a new, linked operation (resume.md): a retry does an ended
//! operation's work again from scratch, a resume continues it from its checkpoint. The old
//! operation stays exactly as it ended (terminal is final); the new one names it in
//! `parent_operation_id`, and an operation is resumed at most once.

use super::*;
use crate::ops::job::ResumeRefused;
use crate::ops::record::OperationRecord;
use crate::ops::store::Checkpoint;

/// Why an operation cannot be retried or resumed.
#[derive(Debug, thiserror::Error)]
pub enum ContinueError {
    #[error("Operation not found: {0}")]
    NotFound(String),
    /// Still pending or running.
    #[error("Operation {id} is already {status}")]
    NotEnded { id: String, status: Status },
    /// Completed: there is nothing to continue.
    #[error("Operation {0} is already completed")]
    Completed(String),
    #[error("No checkpoint available for operation {0}")]
    NoCheckpoint(String),
    #[error("Operation {resumed} was already resumed by {continuation}")]
    AlreadyResumed { resumed: String, continuation: String },
    /// The operation's type (or its host) cannot do this; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A resume that started.
pub struct Resumed {
    /// The new operation.
    pub snapshot: Arc<Snapshot>,
    /// What it continues from, as stored here.
    pub checkpoint: Option<Checkpoint>,
}

impl Orchestrator {
    /// The stored operation, if it ended in a way that can be continued.
    async fn ended(&self, operation_id: &str) -> Result<Snapshot, ContinueError> {
        // Still running here: memory is ahead of the store.
        let live = self.live(operation_id).map(|op| op.snapshot());
        if let Some(live) = &live
            && !live.record.status.is_terminal()
        {
            return Err(ContinueError::NotEnded { id: operation_id.to_owned(), status: live.record.status });
        }
        let stored = match (self.inner.store.get(operation_id).await?, live) {
            // Ended here a moment ago, its final state not yet stored: memory says how it ended.
            (Some(stored), Some(live)) if !stored.is_terminal() => Snapshot::new(live.record.clone(), stored.job_state),
            (Some(stored), _) => stored,
            (None, _) => return Err(ContinueError::NotFound(operation_id.to_owned())),
        };
        match stored.record.status {
            Status::Failed | Status::Cancelled => Ok(stored),
            Status::Completed => Err(ContinueError::Completed(operation_id.to_owned())),
            status => Err(ContinueError::NotEnded { id: operation_id.to_owned(), status }),
        }
    }

    fn started(submitted: Submitted) -> Arc<Snapshot> {
        match submitted {
            Submitted::Started(snapshot) => snapshot,
            Submitted::Existing(_) => unreachable!("continuations are started without an Idempotency-Key"),
        }
    }

    /// Starts a `failed` or `cancelled` operation's work again from scratch under a new
    /// operation whose parent it is. With an Idempotency-Key, a retry already made with it is
    /// answered with the operation it started ([`Submitted::Existing`]).
    pub async fn retry(
        &self,
        operation_id: &str,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Submitted, ContinueError> {
        let stored = self.ended(operation_id).await?;
        let record = &stored.record;
        let job = match self.inner.types.get(record.operation_type.as_str()).and_then(|ty| ty.retry(record)) {
            Some(job) => job.await.map_err(ContinueError::Refused)?,
            None => return Err(ContinueError::Refused(cannot(record, "retried"))),
        };
        let lineage = Lineage { parent: Some(record.operation_id.clone()), resumes: false };
        let submission = Submission { idempotency, ..Submission::after(record, job, lineage) };
        let submitted = self.submit_erased(submission).await?;
        if matches!(submitted, Submitted::Started(_)) {
            self.inner.metrics.counter(metrics::RETRIES, &[("type", record.operation_type.as_str())]).increment(1);
        }
        Ok(submitted)
    }

    /// Continues a `failed` or `cancelled` operation from its checkpoint under a new operation
    /// whose parent it is. Once per operation.
    pub async fn resume(&self, operation_id: &str) -> Result<Resumed, ContinueError> {
        let resumed = self.resume_once(operation_id).await;
        if let Ok(r) = &resumed {
            self.count_resume(&r.snapshot.record.operation_type, "started");
        }
        if let Err(e) = &resumed
            && !matches!(e, ContinueError::NotFound(_) | ContinueError::Store(_) | ContinueError::Submit(_))
        {
            let kind = self.inner.store.get(operation_id).await.ok().flatten().map(|s| s.record.operation_type);
            self.count_resume(kind.as_deref().unwrap_or("unknown"), "refused");
        }
        resumed
    }

    async fn resume_once(&self, operation_id: &str) -> Result<Resumed, ContinueError> {
        let stored = self.ended(operation_id).await?;
        let record = &stored.record;
        if let Some(continuation) = self.inner.store.continuation(operation_id).await? {
            return Err(ContinueError::AlreadyResumed { resumed: operation_id.to_owned(), continuation });
        }
        self.until_stop_heard(&stored).await;
        let checkpoint = self.inner.store.checkpoint(operation_id).await?;
        let ty = self.inner.types.get(record.operation_type.as_str());
        let job = match ty.and_then(|ty| ty.resume(record, stored.job_state.as_ref(), checkpoint.clone())) {
            Some(job) => job.await.map_err(|refused| match refused {
                ResumeRefused::NoCheckpoint => ContinueError::NoCheckpoint(operation_id.to_owned()),
                ResumeRefused::Cannot(message) => ContinueError::Refused(message),
            })?,
            None => return Err(ContinueError::Refused(cannot(record, "resumed"))),
        };
        let lineage = Lineage { parent: Some(record.operation_id.clone()), resumes: true };
        let submitted = self.submit_erased(Submission::after(record, job, lineage)).await.map_err(|e| match e {
            SubmitError::AlreadyResumed { resumed, continuation } => {
                ContinueError::AlreadyResumed { resumed, continuation }
            }
            other => other.into(),
        })?;
        Ok(Resumed { snapshot: Self::started(submitted), checkpoint })
    }

    /// While the host of a cancelled operation has been told to stop and has not said its last
    /// word (final state, stop checkpoint), a resume waits for it — at most `stop_confirm_wait`
    /// — so that it continues from the stop checkpoint instead of an older one, or answering
    /// "no checkpoint" a moment before the host saves it. The stop runs here: its end is awaited;
    /// it runs on another replica: the stored record says when the host's final state is known.
    async fn until_stop_heard(&self, stored: &Snapshot) {
        let id = stored.record.operation_id.as_str();
        let wait = self.inner.settings.stop_confirm_wait;
        let in_flight = self.inner.stops_in_flight.lock().get(id).cloned();
        if let Some(mut over) = in_flight {
            if tokio::time::timeout(wait, over.wait_for(|over| *over)).await.is_err() {
                tracing::info!(
                    operation_id = id,
                    "the host did not confirm its stop in time; resuming from what is saved"
                );
            }
            return;
        }
        let pending = |s: &Snapshot| {
            let remote = s.record.cancellation.as_ref().and_then(|c| c.remote.as_ref());
            remote.is_some_and(|r| r.error.is_none() && r.host_final_status.is_none())
        };
        if !pending(stored) {
            return;
        }
        // Its stop runs on another replica (or ran on one that died): read until it is heard.
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(STOP_HEARD_POLL).await;
            match self.inner.store.get(id).await {
                Ok(Some(now)) if pending(&now) => {}
                _ => {
                    // Its final state is known; the stop checkpoint follows it in the same look.
                    tokio::time::sleep(STOP_HEARD_POLL).await;
                    return;
                }
            }
        }
    }

    /// After a restart: continues an operation that was just failed as interrupted, if its type
    /// resumes and it saved a checkpoint.
    pub(super) async fn resume_interrupted(&self, operation_id: &str) {
        match self.resume_once(operation_id).await {
            Ok(resumed) => {
                let continuation = &resumed.snapshot.record;
                self.count_resume(&continuation.operation_type, "automatic");
                tracing::info!(operation_id, continuation = %continuation.operation_id, "continuing an interrupted operation");
            }
            Err(ContinueError::NoCheckpoint(_) | ContinueError::Refused(_)) => {}
            Err(e) => tracing::warn!(operation_id, error = %e, "could not continue an interrupted operation"),
        }
    }

    /// The operations that continue or repeat `operation_id`, oldest first (`None`: no such
    /// operation).
    pub async fn children(&self, operation_id: &str) -> Result<Option<Vec<Arc<Snapshot>>>, StoreError> {
        if self.live(operation_id).is_none() && self.inner.store.get(operation_id).await?.is_none() {
            return Ok(None);
        }
        let children = self.inner.store.children(operation_id).await?;
        let current = children
            .into_iter()
            .map(|stored| match self.live(&stored.record.operation_id) {
                Some(op) => op.snapshot(),
                None => Arc::new(stored),
            })
            .collect();
        Ok(Some(current))
    }

    /// `started`, `automatic` (after a restart interrupted it), or `refused`.
    pub(super) fn count_resume(&self, operation_type: &str, outcome: &'static str) {
        let labels = [("type", operation_type), ("outcome", outcome)];
        self.inner.metrics.counter(metrics::RESUMES, &labels).increment(1);
    }
}

fn cannot(record: &OperationRecord, what: &str) -> String {
    format!("{} operations cannot be {what}", record.operation_type)
}

/// How often a resume re-reads an operation whose stop another replica follows.
const STOP_HEARD_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Submission {
    /// The operation that continues or repeats `record`: same type, same request.
    fn after(record: &OperationRecord, job: BoxedJob, lineage: Lineage) -> Submission {
        let (operation_type, metadata) = (record.operation_type.clone(), record.metadata.clone());
        Submission { operation_type, metadata, job, idempotency: None, lineage }
    }
}
