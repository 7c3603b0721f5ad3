//! IB's historical-data pacing, enforced on our side (hosts.md §1.4): the real host does not
//! pace, and the gateway punishes violations with minutes-long bans. Every historical request
//! acquires a slot here first; waiting is cancellable and reported (for progress) as it counts
//! down. Uses tokio's clock, so tests drive it with paused time.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The rules; IB's by default.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingRules {
    /// Minimum time between any two historical requests.
    pub min_gap: Duration,
    /// At most `window_max` requests in any `window`.
    pub window: Duration,
    pub window_max: usize,
    /// The same request (symbol, timeframe, start, end) no sooner than this after the last one.
    pub identical_gap: Duration,
    /// At most `contract_max` requests for one contract in any `contract_window`.
    pub contract_window: Duration,
    pub contract_max: usize,
    /// How long to hold everything back after the host reported a pacing violation.
    pub violation_backoff: Duration,
}

impl PacingRules {
    pub fn ib() -> Self {
        Self {
            min_gap: Duration::from_secs(2),
            window: Duration::from_secs(600),
            window_max: 60,
            identical_gap: Duration::from_secs(15),
            contract_window: Duration::from_secs(2),
            contract_max: 6,
            violation_backoff: Duration::from_secs(60),
        }
    }
}

impl PacingRules {
    /// The same rules with every duration multiplied by `factor` (counts unchanged): tests run
    /// IB's rules a hundred times faster.
    pub fn scaled(&self, factor: f64) -> Self {
        let scale = |d: Duration| d.mul_f64(factor);
        Self {
            min_gap: scale(self.min_gap),
            window: scale(self.window),
            identical_gap: scale(self.identical_gap),
            contract_window: scale(self.contract_window),
            violation_backoff: scale(self.violation_backoff),
            ..self.clone()
        }
    }
}

/// What one request is, for the rules: its contract and its exact parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PacingKey {
    pub contract: String,
    pub request: String,
}

#[derive(Debug, Default)]
struct History {
    last: Option<Instant>,
    recent: VecDeque<Instant>,
    identical: HashMap<String, Instant>,
    per_contract: HashMap<String, VecDeque<Instant>>,
    hold_until: Option<Instant>,
}

/// The limiter was told to stop waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitCancelled;

/// Hands out request slots under [`PacingRules`]; `None` rules let everything through.
#[derive(Debug)]
pub struct PacingLimiter {
    rules: Option<PacingRules>,
    history: Mutex<History>,
    waits: AtomicU64,
    waited_micros: AtomicU64,
}

impl PacingLimiter {
    pub fn new(rules: Option<PacingRules>) -> Self {
        Self {
            rules,
            history: Mutex::new(History::default()),
            waits: AtomicU64::new(0),
            waited_micros: AtomicU64::new(0),
        }
    }

    pub fn rules(&self) -> Option<&PacingRules> {
        self.rules.as_ref()
    }

    /// Waits until `key` may be sent (calling `on_wait` with the time left, about once a second)
    /// and records it as sent. Returns how long it waited.
    pub async fn acquire(
        &self,
        key: &PacingKey,
        token: &CancellationToken,
        mut on_wait: impl FnMut(Duration),
    ) -> Result<Duration, WaitCancelled> {
        let Some(rules) = &self.rules else {
            return Ok(Duration::ZERO);
        };
        let began = Instant::now();
        let mut counted = false;
        loop {
            let now = Instant::now();
            let wait = {
                let mut history = self.history.lock();
                let earliest = earliest(rules, &mut history, key, now);
                if earliest <= now {
                    record(&mut history, key, now);
                    let waited = now - began;
                    if counted {
                        self.waited_micros.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                    }
                    return Ok(waited);
                }
                earliest - now
            };
            if !counted {
                counted = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            on_wait(wait);
            // Count down in steps of a second at most, so progress shows the time left.
            tokio::select! {
                biased;
                _ = token.cancelled() => return Err(WaitCancelled),
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
            }
        }
    }

    /// Records `key` as sent if the rules allow it right now — or at most `tolerance` from now
    /// (a host judging a remote client forgives that much clock and scheduling jitter);
    /// otherwise says how long it would have to wait (and records nothing). The IB simulator
    /// judges clients with this.
    pub fn try_acquire(&self, key: &PacingKey, tolerance: Duration) -> Result<(), Duration> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let now = Instant::now();
        let mut history = self.history.lock();
        let earliest = earliest(rules, &mut history, key, now);
        if earliest > now + tolerance {
            return Err(earliest - now);
        }
        record(&mut history, key, now);
        Ok(())
    }

    /// The host reported a pacing violation: nobody goes for `violation_backoff`.
    pub fn penalize(&self) {
        let Some(rules) = &self.rules else { return };
        let until = Instant::now() + rules.violation_backoff;
        let mut history = self.history.lock();
        history.hold_until = Some(history.hold_until.map_or(until, |h| h.max(until)));
    }

    /// How many requests had to wait, and for how long in total.
    pub fn waits(&self) -> (u64, Duration) {
        (self.waits.load(Ordering::Relaxed), Duration::from_micros(self.waited_micros.load(Ordering::Relaxed)))
    }
}

/// The earliest moment `key` may go; also forgets history no rule can use any more.
fn earliest(rules: &PacingRules, h: &mut History, key: &PacingKey, now: Instant) -> Instant {
    while h.recent.front().is_some_and(|t| now.duration_since(*t) >= rules.window) {
        h.recent.pop_front();
    }
    h.identical.retain(|_, t| now.duration_since(*t) < rules.identical_gap);
    h.per_contract.retain(|_, times| {
        while times.front().is_some_and(|t| now.duration_since(*t) >= rules.contract_window) {
            times.pop_front();
        }
        !times.is_empty()
    });

    let mut earliest = now;
    if let Some(hold) = h.hold_until {
        earliest = earliest.max(hold);
    }
    if let Some(last) = h.last {
        earliest = earliest.max(last + rules.min_gap);
    }
    if rules.window_max > 0 && h.recent.len() >= rules.window_max {
        earliest = earliest.max(h.recent[h.recent.len() - rules.window_max] + rules.window);
    }
    if let Some(t) = h.identical.get(&key.request) {
        earliest = earliest.max(*t + rules.identical_gap);
    }
    if let Some(times) = h.per_contract.get(&key.contract)
        && rules.contract_max > 0
        && times.len() >= rules.contract_max
    {
        earliest = earliest.max(times[times.len() - rules.contract_max] + rules.contract_window);
    }
    earliest
}

fn record(h: &mut History, key: &PacingKey, now: Instant) {
    h.last = Some(now);
    h.recent.push_back(now);
    h.identical.insert(key.request.clone(), now);
    h.per_contract.entry(key.contract.clone()).or_default().push_back(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(contract: &str, request: &str) -> PacingKey {
        PacingKey { contract: contract.into(), request: request.into() }
    }

    async fn go(limiter: &PacingLimiter, k: &PacingKey) -> Duration {
        limiter.acquire(k, &CancellationToken::new(), |_| {}).await.unwrap()
    }

    fn no_gap() -> PacingRules {
        PacingRules { min_gap: Duration::ZERO, ..PacingRules::ib() }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_at_least_the_minimum_gap_apart() {
        let limiter = PacingLimiter::new(Some(PacingRules::ib()));
        assert_eq!(go(&limiter, &key("A", "1")).await, Duration::ZERO);
        assert_eq!(go(&limiter, &key("B", "2")).await, Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(go(&limiter, &key("C", "3")).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_sixty_requests_in_ten_minutes() {
        let rules = PacingRules { contract_max: 1000, identical_gap: Duration::ZERO, ..no_gap() };
        let limiter = PacingLimiter::new(Some(rules));
        let start = Instant::now();
        for i in 0..60 {
            assert_eq!(go(&limiter, &key("A", &i.to_string())).await, Duration::ZERO);
        }
        go(&limiter, &key("A", "61")).await;
        assert_eq!(
            Instant::now() - start,
            Duration::from_secs(600),
            "the 61st waits for the first to leave the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_identical_request_waits_fifteen_seconds() {
        let limiter = PacingLimiter::new(Some(no_gap()));
        go(&limiter, &key("A", "same")).await;
        assert_eq!(go(&limiter, &key("B", "other")).await, Duration::ZERO);
        assert_eq!(go(&limiter, &key("A", "same")).await, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn one_contract_gets_six_requests_per_two_seconds() {
        let limiter = PacingLimiter::new(Some(no_gap()));
        for i in 0..6 {
            assert_eq!(go(&limiter, &key("AAPL", &i.to_string())).await, Duration::ZERO);
        }
        assert_eq!(go(&limiter, &key("MSFT", "x")).await, Duration::ZERO, "other contracts are not held up");
        assert_eq!(go(&limiter, &key("AAPL", "6")).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_violation_holds_everything_back_and_waits_are_reported_and_cancellable() {
        let limiter = PacingLimiter::new(Some(no_gap()));
        limiter.penalize();
        let mut reported = Vec::new();
        let waited =
            limiter.acquire(&key("A", "1"), &CancellationToken::new(), |left| reported.push(left.as_secs())).await;
        assert_eq!(waited, Ok(Duration::from_secs(60)));
        assert_eq!(reported.first(), Some(&60));
        assert_eq!(reported.last(), Some(&1), "counted down once a second: {reported:?}");
        assert_eq!(limiter.waits(), (1, Duration::from_secs(60)));

        limiter.penalize();
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            cancel.cancel();
        });
        let start = Instant::now();
        assert_eq!(limiter.acquire(&key("A", "2"), &token, |_| {}).await, Err(WaitCancelled));
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn without_rules_nothing_waits() {
        let limiter = PacingLimiter::new(None);
        for _ in 0..100 {
            assert_eq!(go(&limiter, &key("A", "same")).await, Duration::ZERO);
        }
    }
}
