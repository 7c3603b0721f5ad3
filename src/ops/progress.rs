//! Generic progress (api.md §2 `progress`): the serialisable state, the writer-side tracker that
//! turns steps and bands into a monotonic percentage with an ETA, the cheap-clone
//! [`ProgressReporter`] jobs hold, and the [`Renderer`] trait domains implement to word
//! `current_step`. Knows no domain.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ops::live::LiveOperation;
use crate::time::{self, Timestamp};

/// The `progress` object of an operation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub percentage: f64,
    pub current_step: Option<String>,
    pub steps_completed: u32,
    pub steps_total: u32,
    pub items_processed: u64,
    pub items_total: Option<u64>,
    pub current_item: Option<String>,
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    /// Seconds left at the recent rate; `None` while the rate is unknown.
    pub eta_seconds: Option<f64>,
    #[serde(with = "time::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
}

impl Progress {
    pub fn new(steps_total: u32) -> Self {
        Self {
            percentage: 0.0,
            current_step: None,
            steps_completed: 0,
            steps_total,
            items_processed: 0,
            items_total: None,
            current_item: None,
            context: Map::new(),
            eta_seconds: None,
            updated_at: None,
        }
    }

    /// Marks the work done: 100 %, every step completed, nothing left.
    pub fn complete(&mut self) {
        self.percentage = 100.0;
        self.steps_completed = self.steps_total;
        self.eta_seconds = Some(0.0);
    }
}

/// What a renderer sees of the current step.
pub struct StepView<'a> {
    pub name: &'a str,
    /// 1-based step number; 0 before the first step.
    pub number: u32,
    pub steps_total: u32,
    /// The latest detail within the step (`part 2/3 ...`, `waiting for ...`).
    pub detail: Option<&'a str>,
    pub context: &'a Map<String, Value>,
}

/// Words `progress.current_step` for one operation type.
pub trait Renderer: Send + Sync + 'static {
    fn render(&self, step: &StepView<'_>) -> String;
}

/// `"{step}: {detail} [{n}/{total}]"` — used by operation types without a renderer of their own.
pub struct DefaultRenderer;

impl Renderer for DefaultRenderer {
    fn render(&self, step: &StepView<'_>) -> String {
        match step.detail {
            Some(detail) => format!("{}: {} [{}/{}]", step.name, detail, step.number, step.steps_total),
            None => format!("{} [{}/{}]", step.name, step.number, step.steps_total),
        }
    }
}

/// Estimates seconds left from a smoothed rate of percentage per second.
#[derive(Debug, Default)]
pub(crate) struct EtaEstimator {
    last: Option<(Instant, f64)>,
    rate: Option<f64>,
}

impl EtaEstimator {
    /// Samples closer together than this are folded into the next one, so that bursts of tiny
    /// updates do not swing the rate.
    const MIN_SAMPLE_GAP: Duration = Duration::from_millis(200);
    const SMOOTHING: f64 = 0.3;

    pub(crate) fn observe(&mut self, at: Instant, percentage: f64) -> Option<f64> {
        match self.last {
            None => self.last = Some((at, percentage)),
            Some((then, before)) => {
                let dt = at.saturating_duration_since(then).as_secs_f64();
                if dt >= Self::MIN_SAMPLE_GAP.as_secs_f64() {
                    let instant_rate = (percentage - before).max(0.0) / dt;
                    self.rate = Some(match self.rate {
                        Some(r) => r * (1.0 - Self::SMOOTHING) + instant_rate * Self::SMOOTHING,
                        None => instant_rate,
                    });
                    self.last = Some((at, percentage));
                }
            }
        }
        if percentage >= 100.0 {
            return Some(0.0);
        }
        self.rate.filter(|r| *r > 1e-9).map(|r| ((100.0 - percentage) / r * 10.0).round() / 10.0)
    }
}

/// Writer-side state of one operation's progress: the current step, its band, the ETA.
pub(crate) struct Tracker {
    renderer: Arc<dyn Renderer>,
    step_name: String,
    step_number: u32,
    band: Range<f64>,
    detail: Option<String>,
    eta: EtaEstimator,
}

impl Tracker {
    pub(crate) fn new(renderer: Arc<dyn Renderer>) -> Self {
        Self {
            renderer,
            step_name: String::new(),
            step_number: 0,
            band: 0.0..100.0,
            detail: None,
            eta: EtaEstimator::default(),
        }
    }

    /// Never backwards: a lower value is ignored.
    fn advance_to(&mut self, p: &mut Progress, percentage: f64) {
        if percentage.is_finite() && percentage > p.percentage {
            p.percentage = percentage.min(100.0);
        }
        p.eta_seconds = self.eta.observe(Instant::now(), p.percentage);
    }

    fn render(&self, p: &mut Progress) {
        if self.step_number == 0 {
            // Before the first step (e.g. waiting to start) there is only the detail to show.
            if let Some(detail) = &self.detail {
                p.current_step = Some(detail.clone());
            }
            return;
        }
        p.current_step = Some(self.renderer.render(&StepView {
            name: &self.step_name,
            number: self.step_number,
            steps_total: p.steps_total,
            detail: self.detail.as_deref(),
            context: &p.context,
        }));
    }

    pub(crate) fn start_step(&mut self, p: &mut Progress, name: String, number: u32, band: Range<f64>) {
        p.steps_completed = p.steps_completed.max(number.saturating_sub(1));
        p.context.insert("current_step_name".into(), Value::from(name.as_str()));
        p.context.insert("step_start_percentage".into(), Value::from(band.start));
        p.context.insert("step_end_percentage".into(), Value::from(band.end));
        p.context.remove("step_current");
        p.context.remove("step_total");
        p.current_item = None;
        self.step_name = name;
        self.step_number = number;
        self.detail = None;
        self.advance_to(p, band.start);
        self.band = band;
        self.render(p);
    }

    pub(crate) fn step_progress(
        &mut self,
        p: &mut Progress,
        current: u64,
        total: u64,
        items: Option<u64>,
        detail: Option<String>,
    ) {
        let fraction = if total == 0 { 0.0 } else { (current as f64 / total as f64).clamp(0.0, 1.0) };
        p.context.insert("step_current".into(), Value::from(current));
        p.context.insert("step_total".into(), Value::from(total));
        if let Some(items) = items {
            p.items_processed = items;
        }
        if let Some(detail) = detail {
            p.current_item = Some(detail.clone());
            self.detail = Some(detail);
        }
        let target = self.band.start + (self.band.end - self.band.start) * fraction;
        self.advance_to(p, target);
        self.render(p);
    }

    /// The step's work starts again from an earlier point (work that moved elsewhere goes on
    /// from a saved point): the percentage goes back to where the step began — the next
    /// `step_progress` moves it on from there — so that percentage and step text agree; the rate
    /// of the lost run no longer predicts anything.
    pub(crate) fn restart_step(&mut self, p: &mut Progress) {
        p.percentage = p.percentage.min(self.band.start);
        self.eta = EtaEstimator::default();
        p.eta_seconds = None;
    }

    pub(crate) fn detail(&mut self, p: &mut Progress, detail: String) {
        p.current_item = Some(detail.clone());
        self.detail = Some(detail);
        self.render(p);
    }

    pub(crate) fn rerender(&mut self, p: &mut Progress) {
        self.render(p);
    }
}

/// The handle a job reports progress through. Cheap to clone; every call updates the in-memory
/// record at once (readers see it without waiting) and marks it for the throttled store write.
#[derive(Clone)]
pub struct ProgressReporter {
    op: Arc<LiveOperation>,
}

impl ProgressReporter {
    pub(crate) fn new(op: Arc<LiveOperation>) -> Self {
        Self { op }
    }

    /// Enters step `number` (1-based), which owns `band` of the overall percentage.
    pub fn start_step(&self, name: impl Into<String>, number: u32, band: Range<f64>) {
        let name = name.into();
        self.op.edit_progress(|t, p| t.start_step(p, name, number, band));
    }

    /// Progress within the current step: `current` of `total`, optionally the items processed
    /// so far and a detail line (also shown as `current_item`).
    pub fn step_progress(&self, current: u64, total: u64, items: Option<u64>, detail: Option<String>) {
        self.op.edit_progress(|t, p| t.step_progress(p, current, total, items, detail));
    }

    /// The current step starts over from an earlier point: its percentage goes back to the
    /// step's start (the one exception to "never backwards", for work that really went back).
    pub fn restart_step(&self) {
        self.op.edit_progress(|t, p| t.restart_step(p));
    }

    /// A new detail line without moving the percentage (e.g. "waiting for a free host").
    pub fn detail(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.op.edit_progress(|t, p| t.detail(p, detail));
    }

    /// A line kept in the record's `warnings` (e.g. that a host call stalled and how it ended),
    /// for code that reports through this handle rather than the [`JobContext`](crate::ops::JobContext).
    pub fn warn(&self, message: impl Into<String>) {
        let message = message.into();
        self.op.edit(|r, _| r.warnings.push(message));
    }

    /// Items processed and, when known, the total.
    pub fn items(&self, processed: u64, total: Option<u64>) {
        self.op.edit_progress(|_, p| {
            p.items_processed = processed;
            p.items_total = total;
        });
    }

    /// Steps done out of the total, for work whose steps are not banded (e.g. rounds of a loop).
    pub fn steps(&self, completed: u32, total: u32) {
        self.op.edit_progress(|t, p| {
            p.steps_total = total;
            p.steps_completed = completed.min(total);
            t.rerender(p);
        });
    }

    /// Merges entries into `progress.context` (domain facts the renderer and clients read).
    pub fn context(&self, entries: impl IntoIterator<Item = (String, Value)>) {
        self.op.edit_progress(|t, p| {
            p.context.extend(entries);
            t.rerender(p);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (Tracker, Progress) {
        (Tracker::new(Arc::new(DefaultRenderer)), Progress::new(3))
    }

    #[test]
    fn percentage_follows_bands_and_never_goes_back() {
        let (mut t, mut p) = tracker();
        t.start_step(&mut p, "Load".into(), 1, 0.0..20.0);
        t.step_progress(&mut p, 1, 2, Some(5), Some("half".into()));
        assert_eq!(p.percentage, 10.0);
        assert_eq!(p.current_step.as_deref(), Some("Load: half [1/3]"));
        t.start_step(&mut p, "Fetch".into(), 2, 20.0..90.0);
        assert_eq!(p.percentage, 20.0);
        assert_eq!(p.steps_completed, 1);
        // A step that starts lower than where we are does not move the bar back.
        t.start_step(&mut p, "Again".into(), 2, 5.0..10.0);
        t.step_progress(&mut p, 1, 1, None, None);
        assert_eq!(p.percentage, 20.0);
        assert_eq!(p.context["step_end_percentage"], Value::from(10.0));
    }

    #[test]
    fn eta_comes_from_the_recent_rate_and_is_unknown_at_first() {
        let mut eta = EtaEstimator::default();
        let t0 = Instant::now();
        assert_eq!(eta.observe(t0, 0.0), None);
        // 10 % per second → 80 % left takes 8 s.
        assert_eq!(eta.observe(t0 + Duration::from_secs(2), 20.0), Some(8.0));
        assert_eq!(eta.observe(t0 + Duration::from_secs(3), 100.0), Some(0.0));
    }
}
