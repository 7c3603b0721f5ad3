//! Stalled host calls made visible: a call that has had no answer for `stall_notice` tells the
//! operation it runs for — "no answer from the IB host for 25 s — attempt 1 of 3, giving up at
//! 60 s" — again every few seconds while it waits, and once more when it ends (answered, failed or
//! abandoned), so the record keeps a trace after the call returns.
//!
//! The observer travels as a task-local set around a job's work ([`observe_stalls`]): every host
//! call a job makes, however deep in its call chain, reports to that job without each client
//! method taking one more parameter. Calls made outside such a scope (health probes, background
//! stops) report nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::ProgressReporter;

/// How often a stalled call repeats its notice after the first.
const REPEAT: Duration = Duration::from_secs(5);

/// One host call that is taking long.
#[derive(Debug, Clone)]
pub struct Stall {
    /// `ib`, `training`.
    pub host: &'static str,
    /// `POST /data/historical`.
    pub request: String,
    /// Since this attempt was sent.
    pub waited: Duration,
    pub attempt: u32,
    pub attempts: u32,
    /// When this attempt times out, counted from when it was sent.
    pub gives_up_after: Duration,
}

impl Stall {
    /// The host's name as people say it.
    pub fn host_name(&self) -> String {
        match self.host {
            "ib" => "IB host".to_owned(),
            other => format!("{other} host"),
        }
    }

    /// "no answer from the IB host for 25 s — attempt 1 of 3, giving up at 60 s"
    pub fn notice(&self) -> String {
        format!(
            "no answer from the {} for {} s — attempt {} of {}, giving up at {} s",
            self.host_name(),
            self.waited.as_secs(),
            self.attempt,
            self.attempts,
            self.gives_up_after.as_secs()
        )
    }
}

/// How a stalled call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallEnd {
    /// The host answered (whatever it said).
    Answered,
    /// No answer: the attempt timed out or the connection failed.
    Failed,
    /// The caller stopped waiting (a cancel, or a gateway found down).
    Abandoned,
}

impl Stall {
    /// The line kept in the operation's warnings once the stall is over.
    pub fn summary(&self, end: StallEnd) -> String {
        let how = match end {
            StallEnd::Answered => "it answered",
            StallEnd::Failed => "it gave up",
            StallEnd::Abandoned => "the call was abandoned",
        };
        format!(
            "no answer from the {} for {} s on {} (attempt {} of {}); {how} after {:.1} s",
            self.host_name(),
            self.waited.as_secs().max(1),
            self.request,
            self.attempt,
            self.attempts,
            self.waited.as_secs_f64()
        )
    }
}

/// Told about the stalls of the host calls made on its behalf.
pub trait StallObserver: Send + Sync {
    /// After `stall_notice` without an answer, then every few seconds.
    fn stalled(&self, stall: &Stall);
    /// Once, when a call that stalled ends; `stall.waited` is then its whole duration.
    fn ended(&self, stall: &Stall, end: StallEnd);
}

/// An operation's progress is the usual observer: the notice is its step's detail, the summary
/// one of its warnings.
impl StallObserver for ProgressReporter {
    fn stalled(&self, stall: &Stall) {
        self.detail(stall.notice());
    }

    fn ended(&self, stall: &Stall, end: StallEnd) {
        self.warn(stall.summary(end));
    }
}

tokio::task_local! {
    static OBSERVER: Arc<dyn StallObserver>;
}

/// Runs `work` with `observer` told about every stalled host call inside it.
pub async fn observe_stalls<F: Future>(observer: Arc<dyn StallObserver>, work: F) -> F::Output {
    OBSERVER.scope(observer, work).await
}

/// The observer of the work this call runs in, if any.
pub(crate) fn current_observer() -> Option<Arc<dyn StallObserver>> {
    OBSERVER.try_with(Arc::clone).ok()
}

/// Reports the end of a stall exactly once: on the answer, or when the waiting future is dropped.
struct Reported {
    observer: Arc<dyn StallObserver>,
    stall: Stall,
    started: Instant,
    end: StallEnd,
}

impl Drop for Reported {
    fn drop(&mut self) {
        self.stall.waited = self.started.elapsed();
        self.observer.ended(&self.stall, self.end);
    }
}

/// Awaits `request`, telling `observer` when it stalls. `on_stall` runs once, at the first notice
/// (e.g. to count stalls). `answered` says whether the outcome counts as an answer from the host.
pub(crate) async fn watch<T>(
    request: impl Future<Output = T>,
    observer: Arc<dyn StallObserver>,
    notice_after: Duration,
    mut stall: Stall,
    on_stall: impl FnOnce(),
    answered: impl FnOnce(&T) -> bool,
) -> T {
    let started = Instant::now();
    tokio::pin!(request);
    let mut next = started + notice_after;
    let mut reported: Option<Reported> = None;
    let mut on_stall = Some(on_stall);
    loop {
        tokio::select! {
            outcome = &mut request => {
                if let Some(mut reported) = reported {
                    reported.end = if answered(&outcome) { StallEnd::Answered } else { StallEnd::Failed };
                }
                return outcome;
            }
            _ = tokio::time::sleep_until(next) => {
                stall.waited = started.elapsed();
                observer.stalled(&stall);
                if let Some(first) = on_stall.take() {
                    first();
                    reported = Some(Reported {
                        observer: observer.clone(),
                        stall: stall.clone(),
                        started,
                        end: StallEnd::Abandoned,
                    });
                }
                next += REPEAT;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl StallObserver for Seen {
        fn stalled(&self, stall: &Stall) {
            self.0.lock().push(stall.notice());
        }
        fn ended(&self, stall: &Stall, end: StallEnd) {
            self.0.lock().push(stall.summary(end));
        }
    }

    fn stall() -> Stall {
        Stall {
            host: "ib",
            request: "POST /data/historical".into(),
            waited: Duration::ZERO,
            attempt: 1,
            attempts: 3,
            gives_up_after: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_is_noticed_repeatedly_and_its_end_kept() {
        let seen = Arc::new(Seen::default());
        let slow = async {
            tokio::time::sleep(Duration::from_secs(17)).await;
            "answer"
        };
        let answer = watch(slow, seen.clone(), Duration::from_secs(10), stall(), || {}, |_| true).await;
        assert_eq!(answer, "answer");
        let seen = seen.0.lock().clone();
        assert_eq!(
            seen,
            vec![
                "no answer from the IB host for 10 s — attempt 1 of 3, giving up at 60 s",
                "no answer from the IB host for 15 s — attempt 1 of 3, giving up at 60 s",
                "no answer from the IB host for 17 s on POST /data/historical (attempt 1 of 3); it answered after 17.0 s",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_call_reports_nothing() {
        let seen = Arc::new(Seen::default());
        let quick = async {
            tokio::time::sleep(Duration::from_secs(9)).await;
        };
        watch(quick, seen.clone(), Duration::from_secs(10), stall(), || panic!("not a stall"), |_| true).await;
        assert!(seen.0.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_dropped_by_its_caller_is_recorded_as_abandoned() {
        let seen = Arc::new(Seen::default());
        let never = std::future::pending::<()>();
        let waiting = watch(never, seen.clone(), Duration::from_secs(10), stall(), || {}, |_| true);
        assert!(tokio::time::timeout(Duration::from_secs(12), waiting).await.is_err());
        let seen = seen.0.lock().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen[1].ends_with("the call was abandoned after 12.0 s"), "{}", seen[1]);
    }
}
