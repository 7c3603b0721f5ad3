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
    /// The envelope; the record's own JSON is a slice of it.
    envelope_json: OnceLock<Bytes>,
}

const ENVELOPE_HEAD: &[u8] = br#"{"success":true,"data":"#;

impl Snapshot {
    pub fn new(record: OperationRecord, job_state: Option<Value>) -> Self {
        Self { record, job_state, envelope_json: OnceLock::new() }
    }

    pub fn version(&self) -> u64 {
        self.record.version
    }

    pub fn is_terminal(&self) -> bool {
        self.record.status.is_terminal()
    }

    /// The record as JSON (shares the envelope's bytes).
    pub fn record_json(&self) -> Bytes {
        let envelope = self.envelope_json();
        envelope.slice(ENVELOPE_HEAD.len()..envelope.len() - 1)
    }

    /// `{"success":true,"data":<record>}`, the body of `GET /operations/{id}`.
    pub fn envelope_json(&self) -> Bytes {
        self.envelope_json
            .get_or_init(|| {
                let mut body = Vec::with_capacity(1024);
                body.extend_from_slice(ENVELOPE_HEAD);
                serde_json::to_writer(&mut body, &self.record).expect("an operation record always serialises");
                body.push(b'}');
                Bytes::from(body)
            })
            .clone()
    }
}
