//! ktrdr-ops: long-running market-data and training operations with live progress and instant
//! cancellation, over HTTP. A guided tour, in dependency order:

/// The HTTP API.
pub mod api;
/// The composition root.
pub mod app;
/// Typed, layered, validated settings.
pub mod config;
/// The reference operation used by tests, demos and benchmarks.
pub mod dummy;
/// The one error domains return for bad input.
pub mod invalid;
/// Allocator tuning for a small memory footprint.
pub mod memory;
/// The generic operations core: records, progress, cancellation, orchestrator, store.
pub mod ops;
/// Logging setup.
pub mod telemetry;
/// Time helpers: RFC 3339 timestamps and human durations.
pub mod time;
