//! The fence every remote call of an operation passes just before it goes out: a replica that has
//! not renewed its leases for a while may have lost its operations to another replica, so its
//! calls wait until a renewal settles who owns what (an operation taken over is abandoned here,
//! and its waiting calls are dropped by its cancel). Without it a replica cut off from the
//! database kept retrying its calls and sent them the moment the network came back — after the
//! replica that took the work over had finished it.
//!
//! The fence travels as a task-local set around each job's work, so clients deep in a job's call
//! chain pass it without each method taking one more parameter. Work outside a job (health
//! probes, stops of cancelled work) is not fenced; nor is a single replica, which owns all it runs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// When this replica's leases were last renewed, and how old a renewal may be before its calls
/// wait for the next one.
pub(crate) struct LeaseClock {
    /// `None` for a single replica: nothing to wait for.
    trust_for: Option<Duration>,
    origin: Instant,
    /// When the last settled renewal began, in milliseconds since `origin`.
    renewed_at: AtomicU64,
    renewed: Notify,
}

impl LeaseClock {
    /// A renewal is trusted for `trust_for` from when it began: the lease itself lasts longer (a
    /// call let through at the end of that time still reaches its host before the lease lapses).
    pub(crate) fn new(trust_for: Option<Duration>) -> Self {
        LeaseClock { trust_for, origin: Instant::now(), renewed_at: AtomicU64::new(0), renewed: Notify::new() }
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// A renewal that began at `began` reached the database and every operation it no longer
    /// holds has been let go: calls may go out again.
    pub(crate) fn renewed(&self, began: Instant) {
        self.renewed_at.fetch_max(self.millis(began), Ordering::AcqRel);
        self.renewed.notify_waiters();
    }

    fn is_fresh(&self) -> bool {
        match self.trust_for {
            None => true,
            Some(trust_for) => {
                let age = self.millis(Instant::now()).saturating_sub(self.renewed_at.load(Ordering::Acquire));
                age <= trust_for.as_millis() as u64
            }
        }
    }

    /// Returns at once while the last renewal is recent; otherwise when the next one settles.
    async fn wait_fresh(&self) {
        loop {
            if self.is_fresh() {
                return;
            }
            let renewed = self.renewed.notified();
            tokio::pin!(renewed);
            // Registered before the second look, so a renewal in between is not missed.
            renewed.as_mut().enable();
            if self.is_fresh() {
                return;
            }
            tracing::debug!("leases not renewed lately; a remote call waits for the next renewal");
            renewed.await;
        }
    }
}

/// What a job's remote calls pass (see the module's text).
#[derive(Clone)]
pub struct Fence(pub(crate) Arc<LeaseClock>);

tokio::task_local! {
    static FENCE: Fence;
}

/// Runs `work` with its remote calls fenced by `fence`.
pub(crate) async fn within<F: Future>(fence: Fence, work: F) -> F::Output {
    FENCE.scope(fence, work).await
}

/// Waits until a remote call made here may go out: at once outside a job, on a single replica,
/// and while this replica's leases are freshly renewed. Race it with the work's cancel.
pub async fn pass() {
    let Ok(clock) = FENCE.try_with(|fence| fence.0.clone()) else {
        return;
    };
    clock.wait_fresh().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_waits_for_a_renewal_once_the_last_one_is_too_old() {
        let clock = Arc::new(LeaseClock::new(Some(Duration::from_millis(50))));
        clock.renewed(Instant::now());
        let fence = Fence(clock.clone());
        // Fresh: through at once.
        tokio::time::timeout(Duration::from_millis(20), within(fence.clone(), pass())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let waiting = tokio::spawn(within(fence, pass()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call went out on a lease not renewed for longer than trusted");
        clock.renewed(Instant::now());
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_single_replica_and_work_outside_a_job_never_wait() {
        let single = Fence(Arc::new(LeaseClock::new(None)));
        tokio::time::timeout(Duration::from_millis(20), within(single, pass())).await.unwrap();
        tokio::time::timeout(Duration::from_millis(20), pass()).await.unwrap();
    }
}
