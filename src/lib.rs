//! ktrdr-ops: long-running market-data and training operations with live progress and instant
//! cancellation, over HTTP. The modules (`ops` is the core and knows no domain; `data`,
//! `training`, `backtest` and `dummy` are the domains plugged into it; `api` and `app` put them together):

/// The HTTP API.
pub mod api;
/// The composition root.
pub mod app;
/// The one backoff policy of every retry and wait loop.
pub mod backoff;
/// Backtests: the backtest operation on the registered backtest workers.
pub mod backtest;
/// The strategy and model catalog: strategy files listed, validated, resolved to features; trained models.
pub mod catalog;
/// The command-line client of a running service.
pub mod cli;
/// Typed, layered, validated settings.
pub mod config;
/// Market data: timeframes, calendars, the cache and its coverage index, the data-load operation.
pub mod data;
/// The reference operation used by tests, demos and benchmarks.
pub mod dummy;
/// The worker fleet: workers of every type that register themselves, health-checked, claimed
/// one operation at a time, followed, stopped.
pub mod fleet;
/// Host-service clients: pooled, cancellable, retrying; IB and training protocols.
pub mod hosts;
/// The one error domains return for bad input.
pub mod invalid;
/// Allocator tuning for a small memory footprint.
pub mod memory;
/// The service's metrics: the `metrics` facade into a per-service Prometheus recorder.
pub mod metrics;
/// The generic operations core: records, progress, cancellation, orchestrator, store.
pub mod ops;
/// Host simulators (IB and training) speaking the real protocols.
pub mod sim;
/// Logging setup.
pub mod telemetry;
/// Time helpers: RFC 3339 timestamps and human durations.
pub mod time;
/// Training: strategies and the training operation.
pub mod training;
