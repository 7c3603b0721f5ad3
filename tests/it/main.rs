//! The integration tests, one binary: the real service over real sockets against the host
//! simulators (in-process, or as child processes where a test kills or signals one). One binary
//! links polars and the service once instead of once per suite.

mod common;

mod backtests;
mod catalog;
mod cli;
mod cluster;
mod compat;
mod data_load;
mod deploy;
mod hosts;
mod lineage;
mod operations_api;
mod process;
mod production;
mod store;
mod telemetry;
mod training;
mod trust;
mod worker_ends;
mod worker_reach;
mod workers;
