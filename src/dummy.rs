//! The reference operation: `iterations` steps of `interval_ms` each, reporting progress every
//! step and stopping at once when cancelled. Used by tests, demos and benchmarks.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::invalid::Invalid;
use crate::ops::job::BoxFuture;
use crate::ops::{
    Checkpoint, DefaultRenderer, Job, JobContext, JobError, JobResult, OperationType, Restart, ResumeRefused, Steps,
};

pub const OPERATION_TYPE: &str = "dummy";
const MAX_ITERATIONS: u32 = 1_000_000;
const MAX_INTERVAL_MS: u64 = 3_600_000;

pub fn operation_type() -> OperationType {
    OperationType::of::<DummyJob>(Arc::new(DefaultRenderer)).restarted_by(Restarts)
}

/// A dummy operation can be run again; it keeps no checkpoint, so it is never resumed.
struct Restarts;

impl Restart<DummyJob> for Restarts {
    fn retry(&self, request: DummyRequest) -> BoxFuture<Result<DummyJob, String>> {
        Box::pin(async move { Ok(DummyJob { params: request.parameters }) })
    }

    fn resume(
        &self,
        _: DummyRequest,
        _: Option<()>,
        _: Option<Checkpoint>,
    ) -> BoxFuture<Result<DummyJob, ResumeRefused>> {
        Box::pin(async { Err(ResumeRefused::NoCheckpoint) })
    }
}

/// The body of `POST /api/v1/dummy/start`; every field optional.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DummyParams {
    #[serde(default = "default_iterations")]
    #[schema(minimum = 1, maximum = 1_000_000, default = 100)]
    pub iterations: u32,
    #[serde(default = "default_interval_ms")]
    #[schema(maximum = 3_600_000, default = 2000)]
    pub interval_ms: u64,
}

fn default_iterations() -> u32 {
    100
}

fn default_interval_ms() -> u64 {
    2_000
}

impl Default for DummyParams {
    fn default() -> Self {
        Self { iterations: default_iterations(), interval_ms: default_interval_ms() }
    }
}

impl DummyParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(Invalid::new(
                "iterations",
                format!("iterations must be between 1 and {MAX_ITERATIONS}, not {}", self.iterations),
            ));
        }
        if self.interval_ms > MAX_INTERVAL_MS {
            return Err(Invalid::new(
                "interval_ms",
                format!("interval_ms must be at most {MAX_INTERVAL_MS} (one hour), not {}", self.interval_ms),
            ));
        }
        Ok(())
    }
}

/// The operation's `metadata`: `{"parameters": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DummyRequest {
    pub parameters: DummyParams,
}

/// The one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DummyStep {
    Run,
}

impl Steps for DummyStep {
    const ALL: &'static [Self] = &[DummyStep::Run];

    fn band(self) -> std::ops::Range<f64> {
        0.0..100.0
    }
}

pub struct DummyJob {
    pub params: DummyParams,
}

impl Job for DummyJob {
    const TYPE: &'static str = OPERATION_TYPE;
    type Request = DummyRequest;
    /// Nothing to re-attach to: an interrupted dummy operation stays interrupted.
    type State = ();
    type Step = DummyStep;

    fn summary(_: &DummyRequest) -> Option<String> {
        None
    }

    /// `100 × 2000 ms`.
    fn subject(request: &DummyRequest) -> Option<String> {
        Some(format!("{} × {} ms", request.parameters.iterations, request.parameters.interval_ms))
    }

    async fn run(self, ctx: JobContext<Self>) -> JobResult {
        {
            let DummyParams { iterations, interval_ms } = self.params;
            let progress = ctx.progress();
            ctx.step(DummyStep::Run, "Running dummy task");
            progress.items(0, Some(u64::from(iterations)));
            let interval = Duration::from_millis(interval_ms);
            for i in 1..=iterations {
                tokio::select! {
                    biased;
                    _ = ctx.cancelled() => return Err(JobError::Cancelled),
                    _ = tokio::time::sleep(interval) => {}
                }
                let i = u64::from(i);
                progress.step_progress(i, u64::from(iterations), Some(i), Some(format!("iteration {i}/{iterations}")));
            }
            Ok(json!({ "iterations_completed": iterations }))
        }
    }
}
