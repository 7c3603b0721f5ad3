//! The API's answer shapes, as types: handlers serialise them (so the OpenAPI document cannot
//! drift from what is sent) and `openapi.rs` publishes their schemas.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::data::repository::SeriesInfo;
use crate::hosts::HealthReport;
use crate::ops::{OperationRecord, Status};

/// Every 4xx/5xx answer (api.md §1).
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `false`.
    pub success: bool,
    /// The message again, where ktrdr's older clients look for it.
    pub detail: String,
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, SCREAMING_SNAKE (e.g. `OPERATION_NOT_FOUND`, `VALIDATION_ERROR`).
    pub code: String,
    pub message: String,
    /// E.g. `{"field": "timeframe", "allowed": [...]}` for validation failures.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// `GET /operations/{id}`.
#[derive(Serialize, ToSchema)]
pub struct OperationEnvelope {
    pub success: bool,
    pub data: OperationRecord,
}

/// One Server-Sent Event of `/operations/{id}/events`.
#[derive(Serialize, ToSchema)]
pub struct OperationEvent {
    /// Always `operation`.
    pub event: String,
    /// The record's version (send it back as `Last-Event-ID` to resume).
    pub id: String,
    /// The [`OperationRecord`] as JSON.
    pub data: String,
}

/// A row of `GET /operations`.
#[derive(Serialize, ToSchema)]
pub struct OperationSummary {
    pub operation_id: String,
    pub operation_type: String,
    pub status: Status,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub progress_percentage: f64,
    pub current_step: Option<String>,
    /// Seconds left by the recent pace, while the operation runs (as in its record's progress).
    pub eta_seconds: Option<f64>,
    /// The operation's symbol (or first symbol), when it has one.
    pub symbol: Option<String>,
    pub duration_seconds: Option<f64>,
    /// (ext) What it works on, in one line: `AAPL 1h · tail`, `strategy · AAPL 1h`.
    pub subject: Option<String>,
    /// (ext) Items done (a load's bars, a training's batches…), for throughput.
    pub items_processed: u64,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
    /// (ext) Why it failed or was cancelled: the first line of `error_message`, at most 200
    /// characters.
    pub error: Option<String>,
    /// (ext) The operation this one resumes or retries.
    pub parent_operation_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OperationList {
    pub success: bool,
    pub data: Vec<OperationSummary>,
    /// Stored operations matching the filters.
    pub total_count: u64,
    /// Pending or running operations, whatever the filters.
    pub active_count: u64,
}

/// The optional body of `DELETE /operations/{id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// At most 1,000 characters; becomes `error_message` and `cancellation.reason`.
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CancelAnswer {
    pub success: bool,
    pub data: Cancelled,
}

#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub success: bool,
    pub operation_id: String,
    pub status: Status,
    #[schema(format = DateTime)]
    pub cancelled_at: Option<String>,
    pub cancellation_reason: Option<String>,
    /// The work was stopped before this answer. False only when the replica running it did
    /// not answer in time: the cancel is recorded and that replica stops the work when it next
    /// hears of it.
    pub task_cancelled: bool,
    /// A host was told to stop remote work (in the background; see `cancellation.remote`).
    pub remote_cancelled: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Results {
    pub success: bool,
    pub operation_id: String,
    pub operation_type: String,
    pub status: Status,
    #[schema(value_type = Object)]
    pub results: Value,
}

#[derive(Serialize, ToSchema)]
pub struct MetricsAnswer {
    pub success: bool,
    pub data: OperationMetrics,
}

#[derive(Serialize, ToSchema)]
pub struct OperationMetrics {
    pub operation_id: String,
    pub operation_type: String,
    #[schema(value_type = Object)]
    pub metrics: Value,
}

/// The answer of `POST /dummy/start`.
#[derive(Serialize, ToSchema)]
pub struct Started {
    pub success: bool,
    pub data: StartedData,
    /// Always `null`.
    #[schema(value_type = Option<String>)]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StartedData {
    pub operation_id: String,
    pub status: String,
    pub message: String,
}

/// The answer of `POST /data/load` (ktrdr's shape; the figures are filled in on the operation).
#[derive(Serialize, ToSchema)]
pub struct DataLoadStarted {
    pub success: bool,
    pub data: DataLoadStartedData,
    /// Always `null`.
    #[schema(value_type = Option<String>)]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DataLoadStartedData {
    pub status: String,
    pub operation_id: String,
    pub fetched_bars: u64,
    /// A cache file for the series existed when the load started.
    pub cached_before: bool,
    pub merged_file: String,
    pub gaps_analyzed: u64,
    pub segments_fetched: u64,
    pub ib_requests_made: u64,
    pub execution_time_seconds: f64,
    pub error_message: Option<String>,
}

/// The answer of `POST /data/acquire/download`.
#[derive(Serialize, ToSchema)]
pub struct DownloadStarted {
    pub success: bool,
    pub operation_id: String,
    pub status: String,
    pub message: String,
}

/// `GET /data/{symbol}/{timeframe}`.
#[derive(Serialize, ToSchema)]
pub struct BarsAnswer {
    pub success: bool,
    pub data: BarsData,
}

#[derive(Serialize, ToSchema)]
pub struct BarsData {
    /// Bar times, UTC, `2024-01-02T14:30:00Z`.
    pub dates: Vec<String>,
    /// `[open, high, low, close, volume]` per bar.
    pub ohlcv: Vec<Vec<f64>>,
    pub metadata: BarsMetadata,
}

#[derive(Serialize, ToSchema)]
pub struct BarsMetadata {
    pub symbol: String,
    pub timeframe: String,
    pub start: Option<String>,
    pub end: Option<String>,
    pub points: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DataInfo {
    pub success: bool,
    pub data: Vec<SeriesInfo>,
}

/// The answer of `POST /trainings/start`.
#[derive(Serialize, ToSchema)]
pub struct TrainingStarted {
    pub success: bool,
    pub task_id: String,
    pub status: String,
    pub message: String,
    pub symbols: Vec<String>,
    pub timeframes: Vec<String>,
    pub strategy_name: String,
    pub estimated_duration_minutes: Option<f64>,
}

/// ktrdr's answer to a backtest start: no `data` envelope.
#[derive(Serialize, ToSchema)]
pub struct BacktestStarted {
    pub success: bool,
    /// `op_backtesting_…`
    pub operation_id: String,
    /// Always `started`.
    pub status: String,
    pub message: String,
    pub symbol: String,
    pub timeframe: String,
    /// Always `distributed`: it runs on a registered backtest worker.
    pub mode: String,
}

#[derive(Serialize, ToSchema)]
pub struct Performance {
    pub success: bool,
    pub task_id: String,
    pub status: Status,
    #[schema(value_type = Object)]
    pub training_metrics: Value,
    #[schema(value_type = Object)]
    pub test_metrics: Value,
    #[schema(value_type = Object)]
    pub model_info: Value,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` while the service works, even when a host is down.
    pub status: String,
    pub version: String,
    /// `ok` or `unavailable`.
    pub database: String,
    /// `sqlite` or `postgres`.
    pub database_kind: String,
    pub node_id: String,
    /// The replicas sharing the database that are alive, this one included (just this one with
    /// SQLite); empty when the database cannot say.
    pub replicas: Vec<String>,
    pub hosts: HostsHealth,
    pub operations: ActiveOperations,
}

#[derive(Serialize, ToSchema)]
pub struct HostsHealth {
    pub ib: IbHealth,
    pub training: TrainingHealth,
}

#[derive(Serialize, ToSchema)]
pub struct IbHealth {
    #[serde(flatten)]
    pub report: HealthReport,
    /// Whether the gateway (TWS / IB Gateway) behind the IB host is connected, as the host's
    /// `/health/detailed` says; `null` when the host did not say. A host can be reachable while
    /// its gateway is down, and then no data can be loaded.
    pub gateway_connected: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct TrainingHealth {
    #[serde(flatten)]
    pub report: HealthReport,
    /// `operations` or `sessions`; `null` until the host has been reached.
    pub protocol: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ActiveOperations {
    pub active: u64,
}
