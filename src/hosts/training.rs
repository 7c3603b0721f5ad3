//! The training host service (hosts.md §2), both protocol generations behind one interface:
//! start, poll (into one [`HostSnapshot`] shape), stop, result. `auto` probes the host once
//! (`GET /api/v1/operations` answering 200 means the operations generation) and remembers.
//! ktrdr's other workers (backtest workers) serve the same operations API: their work is started
//! and resumed by path ([`TrainingClient::start_operation`], [`TrainingClient::resume_operation`])
//! and followed and stopped through this client too.

use parking_lot::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::hosts::{Call, HostClient, HostError, HostErrorKind, Retry};

/// The protocol generation a host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The original: `/training/status/{session_id}`, `/training/stop`.
    Sessions,
    /// The current: `/api/v1/operations/{id}`, `DELETE …/cancel`.
    Operations,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sessions => "sessions",
            Protocol::Operations => "operations",
        }
    }

    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "sessions" => Some(Protocol::Sessions),
            "operations" => Some(Protocol::Operations),
            _ => None,
        }
    }
}

/// Which protocol to speak: fixed, or probed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolChoice {
    Auto,
    Fixed(Protocol),
}

/// What to train.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// Our operation id; the operations generation uses it as its own.
    pub task_id: String,
    pub strategy_name: String,
    /// The strategy file's text, sent unchanged to the operations generation.
    pub strategy_yaml: String,
    pub symbols: Vec<String>,
    pub timeframes: Vec<String>,
    pub start_date: String,
    pub end_date: String,
    pub model_type: String,
    pub epochs: Option<u32>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// 503: the host runs one session at a time; try again later.
    #[error("{0}")]
    Busy(String),
    /// 409: the id is already in use on the host.
    #[error("{0}")]
    Duplicate(String),
    /// 4xx: the host refused the request.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Failed(HostError),
    #[error("cancelled")]
    Cancelled,
}

impl StartError {
    /// A refused or failed start call, by what the host answered.
    fn from_host(e: HostError) -> StartError {
        match e.kind {
            HostErrorKind::Cancelled => StartError::Cancelled,
            HostErrorKind::Status(503) => StartError::Busy(e.message),
            HostErrorKind::Status(409) => StartError::Duplicate(e.message),
            HostErrorKind::Status(400..=499) => StartError::Rejected(e.message),
            _ => StartError::Failed(e),
        }
    }
}

/// The id a start answer names, when it looks like one (it is used in URLs and records).
fn usable_id(id: Option<String>, answer: &Value, host: &str) -> Result<String, StartError> {
    id.filter(|id| crate::hosts::workers::plain_id(id)).ok_or_else(|| {
        let what = crate::hosts::describe_answer(answer.to_string().as_bytes());
        StartError::Rejected(format!("the {host} answered without a usable session id ({what})"))
    })
}

/// A started session: the id to poll and stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub protocol: Protocol,
}

/// The host's state of a session, the same shape for both generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    #[default]
    Starting,
    Running,
    Completed,
    Failed,
    /// Stopped on request (sessions generation's `stopped`).
    Stopped,
    Cancelled,
}

impl HostStatus {
    fn from_text(text: &str) -> HostStatus {
        match text {
            "running" => HostStatus::Running,
            "completed" => HostStatus::Completed,
            "failed" => HostStatus::Failed,
            "stopped" => HostStatus::Stopped,
            "cancelled" => HostStatus::Cancelled,
            _ => HostStatus::Starting,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, HostStatus::Completed | HostStatus::Failed | HostStatus::Stopped | HostStatus::Cancelled)
    }
}

/// One finished epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EpochMetrics {
    pub epoch: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// One poll's view of a session.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HostSnapshot {
    pub status: HostStatus,
    /// The host's own word for it (`initializing`, `stopped`, …).
    pub host_status: String,
    /// 0–100.
    pub percentage: f64,
    pub epoch: Option<u32>,
    pub total_epochs: Option<u32>,
    pub batch: Option<u32>,
    pub total_batches: Option<u32>,
    pub items_processed: Option<u64>,
    pub items_total: Option<u64>,
    pub message: Option<String>,
    /// Finished epochs, in order.
    pub epochs: Vec<EpochMetrics>,
    pub error: Option<String>,
    /// The operations generation's `result_summary` once completed.
    pub result: Option<Value>,
    /// The host's last checkpoint of the session, when it says (`checkpoint_type`, `epoch`,
    /// `created_at`, losses, learning rate).
    pub checkpoint: Option<Value>,
    /// The operations generation's `progress.context`, as reported (bounded by the answer's cap).
    pub context: Option<Value>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// The host does not know the session (404, or 500 "… not found").
    #[error("{0}")]
    Lost(String),
    #[error("{0}")]
    Failed(HostError),
    #[error("cancelled")]
    Cancelled,
}

/// The host's answer to a stop.
#[derive(Debug, Clone)]
pub struct StopAck {
    pub status: Option<String>,
    pub message: Option<String>,
}

/// The real host may hold a stop call for up to 30 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(35);

pub struct TrainingClient {
    host: HostClient,
    choice: ProtocolChoice,
    detected: Mutex<Option<Protocol>>,
}

fn u32_of(v: &Value, key: &str) -> Option<u32> {
    v.get(key).and_then(Value::as_u64).map(|n| n as u32)
}

fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn f64_of(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A host's text field, capped (it may end up in a record or a log line).
fn text_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(crate::hosts::cap_words)
}

/// `"Epoch 8/100 · Batch 34/35"` → (8, 100, 34, 35), for hosts that only say it in words.
fn parse_epoch_text(text: &str) -> (Option<u32>, Option<u32>, Option<u32>, Option<u32>) {
    let pair = |label: &str| -> (Option<u32>, Option<u32>) {
        let Some(at) = text.find(label) else {
            return (None, None);
        };
        let rest = &text[at + label.len()..];
        let word: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '/').collect();
        let mut parts = word.split('/');
        (parts.next().and_then(|p| p.parse().ok()), parts.next().and_then(|p| p.parse().ok()))
    };
    let (epoch, total_epochs) = pair("Epoch");
    let (batch, total_batches) = pair("Batch");
    (epoch, total_epochs, batch, total_batches)
}

/// Sessions generation: `GET /training/status/{id}`.
pub fn parse_session_status(body: &Value) -> HostSnapshot {
    let host_status = text_of(body, "status").unwrap_or_default();
    let progress = body.get("progress").cloned().unwrap_or(Value::Null);
    let metrics = body.get("metrics").cloned().unwrap_or(Value::Null);
    let series = |key: &str| -> Vec<f64> {
        metrics
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (train_loss, val_loss, train_acc, val_acc) =
        (series("train_loss"), series("val_loss"), series("train_accuracy"), series("val_accuracy"));
    let epochs = (0..train_loss.len().max(val_loss.len()))
        .map(|i| EpochMetrics {
            epoch: i as u32,
            train_loss: train_loss.get(i).copied(),
            val_loss: val_loss.get(i).copied(),
            train_accuracy: train_acc.get(i).copied(),
            val_accuracy: val_acc.get(i).copied(),
            ..EpochMetrics::default()
        })
        .collect();
    let message = text_of(&progress, "message");
    let (e, te, b, tb) = message.as_deref().map(parse_epoch_text).unwrap_or_default();
    HostSnapshot {
        status: HostStatus::from_text(&host_status),
        host_status,
        percentage: f64_of(&progress, "progress_percent").unwrap_or(0.0).clamp(0.0, 100.0),
        epoch: u32_of(&progress, "epoch").or(e),
        total_epochs: u32_of(&progress, "total_epochs").or(te),
        batch: u32_of(&progress, "batch").or(b),
        total_batches: u32_of(&progress, "total_batches").or(tb),
        items_processed: u64_of(&progress, "items_processed"),
        items_total: u64_of(&progress, "items_total"),
        message,
        epochs,
        error: text_of(body, "error"),
        result: None,
        checkpoint: None,
        context: None,
    }
}

/// Operations generation: `GET /api/v1/operations/{id}` → `data`.
pub fn parse_operation(data: &Value) -> HostSnapshot {
    let host_status = text_of(data, "status").unwrap_or_default();
    let status = match host_status.as_str() {
        "pending" => HostStatus::Starting,
        other => HostStatus::from_text(other),
    };
    let progress = data.get("progress").cloned().unwrap_or(Value::Null);
    let context = progress.get("context").cloned().unwrap_or(Value::Null);
    let message = text_of(&progress, "current_step");
    let (e, te, b, tb) = message.as_deref().map(parse_epoch_text).unwrap_or_default();
    let epochs = data
        .get("metrics")
        .and_then(|m| m.get("epochs"))
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|e| serde_json::from_value::<EpochMetrics>(e.clone()).ok()).collect())
        .unwrap_or_default();
    HostSnapshot {
        status,
        host_status,
        percentage: f64_of(&progress, "percentage").unwrap_or(0.0).clamp(0.0, 100.0),
        epoch: u32_of(&context, "epoch").or(e),
        total_epochs: u32_of(&context, "total_epochs").or(te),
        batch: u32_of(&context, "batch").or(b),
        total_batches: u32_of(&context, "total_batches").or(tb),
        items_processed: u64_of(&progress, "items_processed"),
        items_total: u64_of(&progress, "items_total"),
        message,
        epochs,
        error: text_of(data, "error_message"),
        result: data.get("result_summary").filter(|v| !v.is_null()).cloned(),
        checkpoint: data.get("checkpoint").filter(|v| v.is_object()).cloned(),
        context: context.is_object().then_some(context.clone()),
    }
}

impl TrainingClient {
    pub fn new(host: HostClient, choice: ProtocolChoice) -> Self {
        let detected = match choice {
            ProtocolChoice::Fixed(p) => Some(p),
            ProtocolChoice::Auto => None,
        };
        Self { host, choice, detected: Mutex::new(detected) }
    }

    pub fn host(&self) -> &HostClient {
        &self.host
    }

    /// The protocol already known (configured, or probed earlier).
    pub fn known_protocol(&self) -> Option<Protocol> {
        *self.detected.lock()
    }

    /// The protocol to speak, probing once under `auto`. A host that cannot be reached is not
    /// remembered as either.
    pub async fn protocol(&self, token: &CancellationToken) -> Result<Protocol, HostError> {
        if let Some(known) = self.known_protocol() {
            return Ok(known);
        }
        let probe = Call::get("/api/v1/operations", "/api/v1/operations").retry(Retry::Safe);
        let protocol = match self.host.send(&probe, token).await {
            Ok(_) => Protocol::Operations,
            Err(e) if e.status().is_some() => Protocol::Sessions,
            Err(e) => return Err(e),
        };
        tracing::info!(protocol = protocol.as_str(), choice = ?self.choice, "training host protocol detected");
        *self.detected.lock() = Some(protocol);
        Ok(protocol)
    }

    /// `POST /training/start` in the host's generation.
    pub async fn start(&self, request: &StartRequest, token: &CancellationToken) -> Result<Session, StartError> {
        let protocol = self
            .protocol(token)
            .await
            .map_err(|e| if e.is_cancelled() { StartError::Cancelled } else { StartError::Failed(e) })?;
        let body = match protocol {
            Protocol::Sessions => json!({
                "model_configuration": {
                    "strategy_config": format!("strategies/{}.yaml", request.strategy_name),
                    "symbols": request.symbols, "timeframes": request.timeframes,
                    "model_type": request.model_type, "multi_symbol": request.symbols.len() > 1,
                },
                "training_configuration": {
                    "validation_split": 0.2, "start_date": request.start_date, "end_date": request.end_date,
                    "data_mode": "local", "epochs": request.epochs,
                },
                "data_configuration": { "symbols": request.symbols, "timeframes": request.timeframes, "data_source": "local" },
                "gpu_configuration": { "enable_gpu": true, "memory_fraction": 0.8, "mixed_precision": true },
            }),
            Protocol::Operations => json!({
                "task_id": request.task_id, "strategy_yaml": request.strategy_yaml,
                "symbols": request.symbols, "timeframes": request.timeframes,
                "start_date": request.start_date, "end_date": request.end_date,
            }),
        };
        let call = Call::post("/training/start", "/training/start", &body);
        let answer: Value = self.host.json(&call, token).await.map_err(StartError::from_host)?;
        let id = match protocol {
            Protocol::Operations => text_of(&answer, "operation_id").or_else(|| text_of(&answer, "session_id")),
            Protocol::Sessions => text_of(&answer, "session_id"),
        };
        Ok(Session { id: usable_id(id, &answer, "training host")?, protocol })
    }

    /// `POST {path}` to a worker of ktrdr's operations generation (a backtest worker's
    /// `/backtests/start`): it answers with the operation id it runs the work under.
    pub async fn start_operation(
        &self,
        path: &'static str,
        body: &Value,
        token: &CancellationToken,
    ) -> Result<Session, StartError> {
        let call = Call::post(path, path, body);
        let answer: Value = self.host.json(&call, token).await.map_err(StartError::from_host)?;
        let id = text_of(&answer, "operation_id");
        Ok(Session { id: usable_id(id, &answer, "worker")?, protocol: Protocol::Operations })
    }

    /// `POST /training/resume`: the host trains on from its checkpoint of `session_id`, under the
    /// same id. Only the operations generation can; a host that says 404 has no checkpoint (or
    /// no such endpoint). `Err` is said to the user.
    pub async fn resume(&self, session_id: &str, token: &CancellationToken) -> Result<Session, String> {
        let protocol = self.protocol(token).await.map_err(|e| format!("the training host cannot be reached: {e}"))?;
        if protocol == Protocol::Sessions {
            return Err("the training host (sessions generation) cannot resume a training: retry it instead".into());
        }
        self.resume_operation("/training/resume", "training", session_id, token).await
    }

    /// `POST {path}` `{"operation_id": id}` to a worker of the operations generation: it goes on
    /// from its checkpoint of `id`, under the same id. A 404 means it has no checkpoint (or no such
    /// endpoint). `Err` is said to the user; `what` names the work ("training", "backtest").
    pub async fn resume_operation(
        &self,
        path: &'static str,
        what: &str,
        id: &str,
        token: &CancellationToken,
    ) -> Result<Session, String> {
        let call = Call::post(path, path, &json!({ "operation_id": id }));
        match self.host.json::<Value>(&call, token).await {
            Ok(_) => Ok(Session { id: id.to_owned(), protocol: Protocol::Operations }),
            Err(e) if matches!(e.kind, HostErrorKind::Status(404 | 405 | 422)) => {
                Err(format!("the host cannot resume this {what} ({}): retry it instead", e.message))
            }
            Err(e) => Err(format!("the host did not resume the {what}: {e}")),
        }
    }

    /// The session's current state.
    pub async fn poll(&self, session: &Session, token: &CancellationToken) -> Result<HostSnapshot, PollError> {
        let call = match session.protocol {
            Protocol::Sessions => Call::get("/training/status/{id}", format!("/training/status/{}", session.id)),
            Protocol::Operations => Call::get("/api/v1/operations/{id}", format!("/api/v1/operations/{}", session.id)),
        };
        let body: Value = self.host.json(&call, token).await.map_err(lost_or_failed)?;
        Ok(match session.protocol {
            Protocol::Sessions => parse_session_status(&body),
            Protocol::Operations => parse_operation(body.get("data").unwrap_or(&Value::Null)),
        })
    }

    /// Tells the host to stop the session.
    pub async fn stop(&self, session: &Session, reason: &str, token: &CancellationToken) -> Result<StopAck, PollError> {
        let call = match session.protocol {
            Protocol::Sessions => Call::post(
                "/training/stop",
                "/training/stop",
                &json!({ "session_id": session.id, "save_checkpoint": true }),
            )
            .retry(Retry::Safe),
            Protocol::Operations => {
                Call::delete("/api/v1/operations/{id}/cancel", format!("/api/v1/operations/{}/cancel", session.id))
                    .query("reason", reason)
            }
        }
        .timeout(STOP_TIMEOUT);
        let body: Value = self.host.json(&call, token).await.map_err(lost_or_failed)?;
        let data = body.get("data").unwrap_or(&body);
        Ok(StopAck { status: text_of(data, "status"), message: text_of(data, "message") })
    }

    /// The final result: `/training/result/{id}` (sessions; `None` when the host has no such
    /// endpoint) or the operation's `result_summary`.
    pub async fn result(&self, session: &Session, token: &CancellationToken) -> Result<Option<Value>, PollError> {
        match session.protocol {
            Protocol::Sessions => {
                let call = Call::get("/training/result/{id}", format!("/training/result/{}", session.id));
                match self.host.json::<Value>(&call, token).await {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if e.status() == Some(404) => Ok(None),
                    Err(e) => Err(lost_or_failed(e)),
                }
            }
            Protocol::Operations => Ok(self.poll(session, token).await?.result),
        }
    }
}

fn lost_or_failed(e: HostError) -> PollError {
    let not_found =
        e.status() == Some(404) || (e.status() == Some(500) && e.message.to_ascii_lowercase().contains("not found"));
    if e.is_cancelled() {
        PollError::Cancelled
    } else if not_found {
        PollError::Lost(e.message)
    } else {
        PollError::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_status_body_maps_to_a_snapshot() {
        let body: Value = serde_json::from_str(
            r#"{"session_id":"3f0c","status":"running",
 "progress":{"epoch":5,"total_epochs":100,"batch":40,"total_batches":78,"progress_percent":5.6,"items_processed":352,"items_total":7800,"message":"Epoch 5/100 · Batch 40/78","current_item":"Batch 40/78"},
 "metrics":{"train_loss":[0.71,0.69],"val_loss":[0.73,0.70]},
 "gpu_usage":{"gpu_allocated":true,"gpu_memory":{"allocated_mb":512.0,"total_mb":24576.0,"utilization_percent":2.1}},
 "start_time":"2025-10-03T17:02:11.120000","last_updated":"2025-10-03T17:03:40.010000","error":null}"#,
        )
        .unwrap();
        let s = parse_session_status(&body);
        assert_eq!(s.status, HostStatus::Running);
        assert_eq!(s.percentage, 5.6);
        assert_eq!((s.epoch, s.total_epochs, s.batch, s.total_batches), (Some(5), Some(100), Some(40), Some(78)));
        assert_eq!((s.items_processed, s.items_total), (Some(352), Some(7800)));
        assert_eq!(s.epochs.len(), 2);
        assert_eq!(
            s.epochs[1],
            EpochMetrics { epoch: 1, train_loss: Some(0.69), val_loss: Some(0.70), ..EpochMetrics::default() }
        );
        for (text, status) in
            [("initializing", HostStatus::Starting), ("stopped", HostStatus::Stopped), ("failed", HostStatus::Failed)]
        {
            assert_eq!(parse_session_status(&json!({ "status": text })).status, status);
        }
    }

    #[test]
    fn an_operations_body_maps_to_the_same_snapshot() {
        let body: Value = serde_json::from_str(
            r#"{"success":true,"data":{"operation_id":"op_training_1","status":"running",
 "progress":{"percentage":7.9,"current_step":"Epoch 8/100 · Batch 34/35","steps_completed":7,"steps_total":100,"items_processed":279,"items_total":3500,"current_item":"Batch 34/35","context":{}},
 "metrics":{"epochs":[{"epoch":0,"train_loss":1.11,"train_accuracy":0.59,"val_loss":1.07,"val_accuracy":0.6,"learning_rate":0.001,"duration":0.3,"timestamp":"2025-10-03T17:02:11Z"}]},
 "result_summary":null,"error_message":null}}"#,
        )
        .unwrap();
        let s = parse_operation(&body["data"]);
        assert_eq!(s.status, HostStatus::Running);
        assert_eq!(
            (s.epoch, s.total_epochs, s.batch, s.total_batches),
            (Some(8), Some(100), Some(34), Some(35)),
            "read from the words"
        );
        assert_eq!(s.epochs.len(), 1);
        assert_eq!(s.epochs[0].train_accuracy, Some(0.59));
        let done = parse_operation(&json!({ "status": "completed", "result_summary": { "model_path": "m.pt" } }));
        assert_eq!(done.status, HostStatus::Completed);
        assert_eq!(done.result, Some(json!({ "model_path": "m.pt" })));
        assert_eq!(parse_operation(&json!({ "status": "pending" })).status, HostStatus::Starting);
    }
}
