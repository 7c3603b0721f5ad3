//! The market-data domain: timeframes and market calendars (shared with the IB simulator).

pub mod calendar;
pub mod timeframe;
