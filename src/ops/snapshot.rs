//! An immutable view of one operation at one version, shared by every reader. Its JSON (the
//! record, and the API's `{"success":true,"data":...}` envelope) is serialised at most once per
//! version, however many clients ask.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

use crate::ops::record::OperationRecord;

pub struct Snapshot {
    pub record: OperationRecord,
    /// The job's private resume state (never shown by the API; used to re-attach after a restart).
    pub job_state: Option<Value>,
    record_json: OnceLock<Bytes>,
    envelope_json: OnceLock<Bytes>,
}

impl Snapshot {
    pub fn new(record: OperationRecord, job_state: Option<Value>) -> Self {
        Self {
            record,
            job_state,
            record_json: OnceLock::new(),
            envelope_json: OnceLock::new(),
        }
    }

    pub fn version(&self) -> u64 {
        self.record.version
    }

    pub fn is_terminal(&self) -> bool {
        self.record.status.is_terminal()
    }

    /// The record as JSON.
    pub fn record_json(&self) -> Bytes {
        self.record_json
            .get_or_init(|| {
                Bytes::from(
                    serde_json::to_vec(&self.record)
                        .expect("an operation record always serialises"),
                )
            })
            .clone()
    }

    /// `{"success":true,"data":<record>}`, the body of `GET /operations/{id}`.
    pub fn envelope_json(&self) -> Bytes {
        self.envelope_json
            .get_or_init(|| {
                let record = self.record_json();
                let mut body = Vec::with_capacity(record.len() + 32);
                body.extend_from_slice(br#"{"success":true,"data":"#);
                body.extend_from_slice(&record);
                body.push(b'}');
                Bytes::from(body)
            })
            .clone()
    }
}
