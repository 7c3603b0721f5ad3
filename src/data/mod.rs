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
pub mod timeframe;

use std::sync::Arc;

use crate::ops::{OperationType, Reattach, Resumption};
use job::{DataLoadJob, LoadSettings, LoadState};
use repository::Repository;
use request::LoadSpec;

pub const OPERATION_TYPE: &str = "data_load";

/// What the API needs to start loads and read the cache.
#[derive(Clone)]
pub struct DataService {
    pub repository: Arc<Repository>,
    pub ib: crate::hosts::ib::IbClient,
    pub settings: LoadSettings,
}

impl DataService {
    pub fn operation_type(&self) -> OperationType {
        OperationType::of::<DataLoadJob>(Arc::new(renderer::DataRenderer)).reattached_by(self.clone())
    }

    pub fn job(&self, spec: LoadSpec) -> DataLoadJob {
        DataLoadJob { spec, ib: self.ib.clone(), repository: self.repository.clone(), settings: self.settings.clone() }
    }
}

/// A load another replica was running when it died is started again here from its request: a
/// load is incremental, so what the dead replica saved is kept and only the rest is fetched.
/// After a restart of this same service the load is reported interrupted instead (its caller
/// decides whether to load again).
impl Reattach<DataLoadJob> for DataService {
    fn reattach(&self, mut spec: LoadSpec, state: Option<LoadState>, cause: Resumption) -> Option<DataLoadJob> {
        if cause != Resumption::Takeover {
            return None;
        }
        // The dead replica may have fetched the oldest part first, so the request's own mode
        // could now find nothing to do: fill whatever is missing in the span it planned.
        if let Some(LoadState { planned }) = state {
            spec.mode = request::Mode::Full;
            spec.start = Some(frame::to_timestamp(planned.start));
            spec.end = Some(frame::to_timestamp(planned.end));
        }
        Some(self.job(spec))
    }
}
