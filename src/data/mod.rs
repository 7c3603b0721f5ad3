//! The market-data domain: timeframes and calendars (shared with the IB simulator), the CSV
//! cache, gap analysis and segmenting, and the data-load operation.

pub mod calendar;
pub mod coverage;
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

use serde_json::Value;

use crate::ops::{BoxedJob, OperationRecord, OperationType, Reattach, Resumption};
use job::{DataLoadJob, LoadSettings};
use repository::Repository;
use request::{Filters, LoadBody, LoadSpec};

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
        OperationType {
            name: OPERATION_TYPE,
            steps_total: 7,
            renderer: Arc::new(renderer::DataRenderer),
            reattach: Some(Arc::new(self.clone())),
        }
    }

    pub fn job(&self, spec: LoadSpec) -> BoxedJob {
        BoxedJob::new(DataLoadJob {
            spec,
            ib: self.ib.clone(),
            repository: self.repository.clone(),
            settings: self.settings.clone(),
        })
    }
}

/// A load another replica was running when it died is started again here from its request: a
/// load is incremental, so what the dead replica saved is kept and only the rest is fetched.
/// After a restart of this same service the load is reported interrupted instead (its caller
/// decides whether to load again).
impl Reattach for DataService {
    fn reattach(&self, record: &OperationRecord, job_state: Option<&Value>, cause: Resumption) -> Option<BoxedJob> {
        if cause != Resumption::Takeover {
            return None;
        }
        let text = |key: &str| record.metadata.get(key).and_then(Value::as_str).map(str::to_owned);
        let filters = record.metadata.get("parameters").and_then(|p| p.get("filters")).cloned();
        let body = LoadBody {
            symbol: text("symbol")?,
            timeframe: text("timeframe")?,
            mode: text("mode"),
            start_date: text("start_date"),
            end_date: text("end_date"),
            filters: filters.and_then(|f| serde_json::from_value::<Filters>(f).ok()),
            periodic_save_minutes: None,
        };
        match LoadSpec::from_body(&body, false) {
            Ok(mut spec) => {
                // The dead replica may have fetched the oldest part first, so the request's own
                // mode could now find nothing to do: fill whatever is missing in the span it planned.
                let planned = job_state.and_then(|state| state.get("planned"));
                let second = |key: &str| planned.and_then(|p| p.get(key)).and_then(Value::as_i64);
                if let (Some(start), Some(end)) = (second("start"), second("end")) {
                    spec.mode = request::Mode::Full;
                    spec.start = Some(frame::to_timestamp(start));
                    spec.end = Some(frame::to_timestamp(end));
                }
                Some(self.job(spec))
            }
            Err(e) => {
                tracing::warn!(operation_id = %record.operation_id, error = %e, "cannot resume a data load from its metadata");
                None
            }
        }
    }
}
