//! The supervisor's promise, checked on the orchestrator itself: whatever a job does — ignores
//! its cancel past the grace period, panics, fails with a cause — an outcome is stored, the
//! cancel answers, and nothing stays `running`.

use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Map, Value, json};

use super::*;
use crate::dummy::DummyStep;
use crate::ops::ListFilter;
use crate::ops::job::{Job, JobContext, JobError, JobResult};
use crate::ops::progress::DefaultRenderer;

/// A job that misbehaves in one of the ways the supervisor must survive.
#[derive(Clone, Copy)]
enum Misbehaving {
    /// Never races its token: only the abort after the grace period stops it.
    IgnoresCancel,
    Panics,
    /// Fails with an error behind its message.
    FailsWithCause,
}

impl Job for Misbehaving {
    const TYPE: &'static str = "misbehaving";
    type Request = Map<String, Value>;
    type State = ();
    type Step = DummyStep;

    fn summary(_: &Self::Request) -> Option<String> {
        None
    }

    async fn run(self, _ctx: JobContext<Self>) -> JobResult {
        match self {
            Misbehaving::IgnoresCancel => std::future::pending().await,
            Misbehaving::Panics => panic!("a bug in the job"),
            Misbehaving::FailsWithCause => {
                let cause = std::io::Error::other("disk on fire");
                Err(JobError::failed_by(format!("could not write the file: {cause}"), cause))
            }
        }
    }
}

const GRACE: Duration = Duration::from_millis(100);

async fn orchestrator(dir: &tempfile::TempDir) -> Orchestrator {
    orchestrator_waiting(dir, Duration::from_secs(5)).await
}

/// An orchestrator whose store waits `acquire_timeout` for the database.
async fn orchestrator_waiting(dir: &tempfile::TempDir, acquire_timeout: Duration) -> Orchestrator {
    let metrics = Metrics::default();
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    let limits = crate::ops::PoolLimits { max_connections: 2, acquire_timeout };
    let store = Store::open(&url, limits, Duration::from_secs(5), &metrics).await.unwrap();
    let settings = Settings {
        cancel_grace: GRACE,
        persist_interval: Duration::from_millis(50),
        idempotency_ttl: Duration::from_secs(60),
        node_id: "unit".into(),
        reconcile_all: true,
        resume_interrupted: true,
        checkpoint_retention: Duration::from_secs(86_400),
        max_concurrent: HashMap::new(),
        max_active: 100_000,
        stop_confirm_wait: Duration::from_secs(10),
        remote_cache_ttl: Duration::ZERO,
        remote_poll_interval: Duration::from_millis(50),
        cluster: None,
        trace_url: String::new(),
    };
    Orchestrator::new(store, settings, vec![OperationType::of::<Misbehaving>(Arc::new(DefaultRenderer))], metrics)
}

async fn start(orchestrator: &Orchestrator, job: Misbehaving) -> String {
    match orchestrator.submit(job, &Map::new(), None).await.unwrap() {
        Submitted::Started(snapshot) => snapshot.record.operation_id.clone(),
        Submitted::Existing(id) => panic!("no idempotency key was given, yet {id} was found"),
    }
}

/// Returns once the job runs (a cancel before that never reaches the job).
async fn running(orchestrator: &Orchestrator, id: &str) {
    for _ in 0..200 {
        if orchestrator.inner.live(id).is_some_and(|op| op.snapshot().record.status == Status::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never ran");
}

/// The stored record once it is terminal.
async fn settled(orchestrator: &Orchestrator, id: &str) -> Snapshot {
    for _ in 0..200 {
        if let Some(stored) = orchestrator.store().get(id).await.unwrap()
            && stored.is_terminal()
        {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never ended");
}

#[tokio::test]
async fn work_that_ignores_its_cancel_is_aborted_after_the_grace_period_and_recorded_as_forced() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = orchestrator(&dir).await;
    let id = start(&orchestrator, Misbehaving::IgnoresCancel).await;
    running(&orchestrator, &id).await;
    let asked = Instant::now();
    let cancelled = orchestrator.cancel(&id, Some("enough".into())).await.unwrap();
    let took = asked.elapsed();
    assert!(took >= GRACE, "the work had its grace period: {took:?}");
    assert!(took < GRACE * 10, "and not much more: {took:?}");
    assert!(cancelled.work_stopped);
    let record = &cancelled.snapshot.record;
    assert_eq!(record.status, Status::Cancelled);
    let cancellation = record.cancellation.as_ref().expect("the cancel is described");
    assert!(cancellation.forced, "{cancellation:?}");
    assert_eq!(record.error_message.as_deref(), Some("enough"));
    let stored = settled(&orchestrator, &id).await;
    assert_eq!(serde_json::to_value(&stored.record.cancellation).unwrap()["forced"], json!(true));
    assert_eq!(orchestrator.active_count(), 0, "nothing left running");
}

#[tokio::test]
async fn a_job_that_panics_fails_its_operation_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = orchestrator(&dir).await;
    let id = start(&orchestrator, Misbehaving::Panics).await;
    let stored = settled(&orchestrator, &id).await;
    assert_eq!(stored.record.status, Status::Failed);
    assert_eq!(stored.record.error_message.as_deref(), Some("internal error: the operation's work crashed"));
    // The orchestrator still runs jobs.
    let next = start(&orchestrator, Misbehaving::Panics).await;
    assert_eq!(settled(&orchestrator, &next).await.record.status, Status::Failed);
    assert_eq!(orchestrator.active_count(), 0);
}

#[tokio::test]
async fn a_failure_keeps_its_message_for_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = orchestrator(&dir).await;
    let id = start(&orchestrator, Misbehaving::FailsWithCause).await;
    let stored = settled(&orchestrator, &id).await;
    assert_eq!(stored.record.status, Status::Failed);
    assert_eq!(stored.record.error_message.as_deref(), Some("could not write the file: disk on fire"));
    // Counted just after the outcome is stored.
    let counted = r#"ktrdr_ops_operations_finished_total{type="misbehaving",status="failed"} 1"#;
    for _ in 0..100 {
        if orchestrator.metrics().render().contains(counted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never counted: {}", orchestrator.metrics().render());
}

#[tokio::test]
async fn shutdown_waits_for_the_loops_and_stores_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = orchestrator(&dir).await;
    let stubborn = start(&orchestrator, Misbehaving::IgnoresCancel).await;
    running(&orchestrator, &stubborn).await;
    orchestrator.shutdown(Duration::from_secs(2)).await;
    let stored = orchestrator.store().get(&stubborn).await.unwrap().unwrap();
    assert_eq!(stored.record.status, Status::Cancelled, "aborted by the shutdown, and recorded");
    assert!(stored.record.cancellation.as_ref().is_some_and(|c| c.forced), "{:?}", stored.record.cancellation);
    assert!(orchestrator.inner.loops.is_closed() && orchestrator.inner.loops.is_empty(), "every loop ended");
    assert!(orchestrator.inner.tasks.is_empty(), "every supervisor ended");
}

#[tokio::test]
async fn a_submission_whose_caller_goes_away_still_runs_its_operation() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = orchestrator(&dir).await;
    // Polled once, then dropped: a client that gave up while the record was being stored.
    let request = Map::new();
    let gave_up = orchestrator.submit(Misbehaving::FailsWithCause, &request, None).now_or_never();
    assert!(gave_up.is_none(), "the caller went away before the answer");
    let mut stored = Vec::new();
    for _ in 0..200 {
        stored = orchestrator.list(&ListFilter { limit: 10, ..ListFilter::default() }).await.unwrap().0;
        if stored.first().is_some_and(|s| s.is_terminal()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored.len(), 1, "stored once");
    assert_eq!(stored[0].record.status, Status::Failed, "and run to its end, not left pending: {:?}", stored[0].record);
}

#[tokio::test]
async fn a_final_state_the_database_cannot_take_yet_is_stored_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = orchestrator_waiting(&dir, Duration::from_millis(300)).await;
    let id = start(&orchestrator, Misbehaving::IgnoresCancel).await;
    running(&orchestrator, &id).await;
    orchestrator.store().flush().await.unwrap();
    // Another program holds the database's write lock for several times as long as a write waits
    // for it (0.3 s; a failed batch is tried again write by write, so at least twice that).
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    let lock = crate::ops::store::ForeignWriteLock::take(&url).await;
    let cancelling = tokio::spawn({
        let (orchestrator, id) = (orchestrator.clone(), id.clone());
        async move { orchestrator.cancel(&id, None).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = r#"ktrdr_ops_store_write_failures_total"#;
    assert!(
        orchestrator.metrics().render().lines().any(|l| l.starts_with(failures) && !l.ends_with(" 0")),
        "the final write failed at least once: {}",
        orchestrator.metrics().render()
    );
    let stored = orchestrator.store().get(&id).await.unwrap().unwrap();
    assert_eq!(stored.record.status, Status::Running, "not stored while the lock is held");
    assert!(!cancelling.is_finished(), "the cancel waits for the outcome to be stored");
    lock.release().await;

    let cancelled = tokio::time::timeout(Duration::from_secs(10), cancelling).await.unwrap().unwrap().unwrap();
    assert_eq!(cancelled.snapshot.record.status, Status::Cancelled);
    assert_eq!(settled(&orchestrator, &id).await.record.status, Status::Cancelled, "stored once the database could");
    assert_eq!(orchestrator.active_count(), 0);
}
