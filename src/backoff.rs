//! The one backoff policy of every loop that waits and tries again — host retries, segment
//! retries, waiting for a free training host or a connected IB gateway, delivering a stop, and
//! the adaptive training poll: a first pause growing by a factor up to a cap, optionally with
//! full jitter (so that many clients retrying at once spread out).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    /// Each pause is this many times the one before (≥ 1).
    pub factor: f64,
    pub max: Duration,
    /// Each pause is random in `[0, computed]` ("full jitter").
    pub jitter: bool,
}

impl Backoff {
    /// Doubling from `first` up to `max`, without jitter.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Backoff { first, factor: 2.0, max, jitter: false }
    }

    pub const fn factor(self, factor: f64) -> Self {
        Backoff { factor, ..self }
    }

    pub const fn full_jitter(self) -> Self {
        Backoff { jitter: true, ..self }
    }

    /// The pause after `failures` consecutive failures (the first pause for 0 or 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let growth = self.factor.max(1.0).powi(failures.saturating_sub(1).min(i32::MAX as u32) as i32);
        let ceiling = Duration::try_from_secs_f64(self.first.as_secs_f64() * growth).unwrap_or(self.max).min(self.max);
        if self.jitter { ceiling.mul_f64(fastrand::f64()) } else { ceiling }
    }

    /// The pauses one after the other, from the first.
    pub fn pauses(self) -> Pauses {
        Pauses { policy: self, failures: 0 }
    }
}

/// A loop's way through its [`Backoff`]: each [`next_pause`](Pauses::next_pause) is longer, up to the cap,
/// until [`reset`](Pauses::reset).
#[derive(Debug, Clone)]
pub struct Pauses {
    policy: Backoff,
    failures: u32,
}

impl Pauses {
    pub fn next_pause(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// Back to the first pause (after a success, or a change in what is watched).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps the next pause; `false` if `token` fired first.
    pub async fn sleep(&mut self, token: &CancellationToken) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = token.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_grow_by_the_factor_up_to_the_cap_and_start_again_after_a_reset() {
        let mut pauses = Backoff::exponential(100 * MS, 500 * MS).pauses();
        let seen: Vec<_> = (0..5).map(|_| pauses.next_pause()).collect();
        assert_eq!(seen, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        pauses.reset();
        assert_eq!(pauses.next_pause(), 100 * MS);
        let mut slower = Backoff::exponential(1000 * MS, 15_000 * MS).factor(1.5).pauses();
        assert_eq!([slower.next_pause(), slower.next_pause(), slower.next_pause()], [1000 * MS, 1500 * MS, 2250 * MS]);
    }

    #[test]
    fn full_jitter_stays_within_the_computed_pause_and_huge_counts_do_not_overflow() {
        let policy = Backoff::exponential(100 * MS, 300 * MS).full_jitter();
        for _ in 0..1000 {
            assert!(policy.delay(1) <= 100 * MS);
            assert!(policy.delay(2) <= 200 * MS);
            assert!(policy.delay(5) <= 300 * MS);
        }
        assert_eq!(Backoff::exponential(MS, Duration::from_secs(60)).delay(u32::MAX), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_at_once_when_its_token_fires() {
        let token = CancellationToken::new();
        let mut pauses = Backoff::exponential(Duration::from_secs(3600), Duration::from_secs(3600)).pauses();
        token.cancel();
        assert!(!pauses.sleep(&token).await);
    }
}
