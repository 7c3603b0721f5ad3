//! The market-data domain: timeframes and calendars (shared with the IB simulator), the CSV
//! cache, gap analysis and segmenting, and the data-load operation.

pub mod calendar;
pub mod coverage;
mod fetch;
pub mod frame;
pub mod gaps;
pub mod gateway;
pub mod job;
pub mod plan;
pub mod renderer;
pub mod repository;
pub mod request;
pub mod series_lock;
pub mod timeframe;

use std::sync::Arc;

use crate::ops::job::BoxFuture;
use crate::ops::{Checkpoint, OperationType, Reattach, Restart, ResumeRefused, Resumption};
use job::{DataLoadJob, LoadCheckpoint, LoadSettings, LoadState};
use repository::Repository;
use request::LoadSpec;
use series_lock::SeriesLocks;

pub const OPERATION_TYPE: &str = "data_load";

/// What the API needs to start loads and read the cache.
#[derive(Clone)]
pub struct DataService {
    pub repository: Arc<Repository>,
    pub locks: Arc<SeriesLocks>,
    pub ib: crate::hosts::ib::IbClient,
    pub settings: LoadSettings,
}

impl DataService {
    pub fn operation_type(&self) -> OperationType {
        OperationType::of::<DataLoadJob>(Arc::new(renderer::DataRenderer))
            .reattached_by(self.clone())
            .restarted_by(self.clone())
    }

    pub fn job(&self, spec: LoadSpec) -> DataLoadJob {
        DataLoadJob {
            spec,
            ib: self.ib.clone(),
            repository: self.repository.clone(),
            locks: self.locks.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// A load another replica was running when it died is started again here from its request: a
/// load is incremental, so what the dead replica saved is kept and only the rest is fetched.
/// After a restart of this same service the load is reported interrupted and continued by a
/// linked operation from its checkpoint (`operations.resume_interrupted`) — whether the service
/// crashed or was stopped: at a graceful stop the load saves what it fetched and is left for the
/// restart (`Shutdown`), never cancelled. A load that had not yet planned (it was waiting) is
/// queued again instead.
impl Reattach<DataLoadJob> for DataService {
    fn reattach(&self, mut spec: LoadSpec, state: Option<LoadState>, cause: Resumption) -> Option<DataLoadJob> {
        match cause {
            Resumption::Takeover | Resumption::Shutdown => {}
            // It never got as far as a plan (it waited for a slot or for its series): nothing was
            // fetched or saved, so it is queued again as it was asked rather than failed.
            Resumption::Restart if state.is_none() => return Some(self.job(spec)),
            _ => return None,
        }
        // The dead replica may have fetched the oldest part first, so the request's own mode
        // could now find nothing to do: fill whatever is missing in the span it planned.
        if let Some(LoadState { planned }) = state {
            fill_planned(&mut spec, planned);
        }
        Some(self.job(spec))
    }
}

/// Loads what is still missing in the span a load planned, whatever its mode was: the coverage
/// index says what of it is complete, so nothing already saved is fetched again.
fn fill_planned(spec: &mut LoadSpec, planned: plan::Window) {
    spec.mode = request::Mode::Full;
    spec.start = Some(frame::to_timestamp(planned.start));
    spec.end = Some(frame::to_timestamp(planned.end));
}

/// A retry loads as asked again; a resume fills what is missing in the span the checkpoint
/// planned (a load that planned nothing has no checkpoint).
impl Restart<DataLoadJob> for DataService {
    fn retry(&self, spec: LoadSpec) -> BoxFuture<Result<DataLoadJob, String>> {
        let job = self.job(spec);
        Box::pin(async move { Ok(job) })
    }

    fn resume(
        &self,
        mut spec: LoadSpec,
        state: Option<LoadState>,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<Result<DataLoadJob, ResumeRefused>> {
        let Some(checkpoint) = checkpoint else { return Box::pin(async { Err(ResumeRefused::NoCheckpoint) }) };
        let saved = serde_json::from_value::<LoadCheckpoint>(checkpoint.state).ok().map(|c| c.planned);
        if let Some(planned) = saved.or(state.map(|s| s.planned)) {
            fill_planned(&mut spec, planned);
        }
        let job = self.job(spec);
        Box::pin(async move { Ok(job) })
    }
}
