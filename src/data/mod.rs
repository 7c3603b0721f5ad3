//! The market-data domain: timeframes and calendars (shared with the IB simulator), the CSV
//! cache, gap analysis and segmenting, and the data-load operation.

pub mod calendar;
pub mod frame;
pub mod gaps;
pub mod job;
pub mod plan;
pub mod renderer;
pub mod repository;
pub mod request;
pub mod timeframe;

use std::sync::Arc;

use crate::ops::{BoxedJob, OperationType};
use job::{DataLoadJob, LoadSettings};
use repository::Repository;
use request::LoadSpec;

pub const OPERATION_TYPE: &str = "data_load";

pub fn operation_type() -> OperationType {
    OperationType { name: OPERATION_TYPE, steps_total: 7, renderer: Arc::new(renderer::DataRenderer), reattach: None }
}

/// What the API needs to start loads and read the cache.
#[derive(Clone)]
pub struct DataService {
    pub repository: Arc<Repository>,
    pub ib: crate::hosts::ib::IbClient,
    pub settings: LoadSettings,
}

impl DataService {
    pub fn job(&self, spec: LoadSpec) -> BoxedJob {
        BoxedJob::new(DataLoadJob {
            spec,
            ib: self.ib.clone(),
            repository: self.repository.clone(),
            settings: self.settings.clone(),
        })
    }
}
