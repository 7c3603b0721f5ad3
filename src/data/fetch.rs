//! Fetching one segment of a data load from the IB host: through the gateway guard and the
//! pacing limiter, retrying what is transient with backoff, clamping to IB's first bar, and
//! keeping count of what came back.

use std::time::Duration;

use crate::data::calendar::{self, InstrumentKind};
use crate::data::frame::to_timestamp;
use crate::data::gateway::GatewayGuard;
use crate::data::job::LoadSettings;
use crate::data::plan::Window;
use crate::data::request::LoadSpec;
use crate::hosts::ib::IbError;
use crate::ops::ProgressReporter;

/// What the download did.
#[derive(Default)]
pub(super) struct Downloads {
    /// Fetched since the last save.
    pub(super) pending: Vec<crate::hosts::ib::Bar>,
    /// Segments fetched to the end since the last save (complete once saved).
    pub(super) done: Vec<Window>,
    pub(super) rows_downloaded: u64,
    pub(super) segments_fetched: u64,
    pub(super) segments_failed: u64,
    pub(super) requests: u64,
    pub(super) last_error: Option<String>,
    /// Per planned range: bars fetched, and whether a segment of it failed.
    pub(super) range_bars: Vec<u64>,
    pub(super) range_failed: Vec<bool>,
}

pub(super) enum SegmentStop {
    Cancelled,
    /// This segment could not be fetched; the load goes on.
    Failed(String),
    /// The whole load cannot go on (e.g. the symbol vanished).
    Fatal(String),
}

/// What fetching a segment needs besides the segment.
pub(super) struct Fetch<'a> {
    pub(super) gateway: &'a GatewayGuard<'a>,
    pub(super) spec: &'a LoadSpec,
    pub(super) settings: &'a LoadSettings,
    pub(super) progress: &'a ProgressReporter,
    /// `segment i/n from to`, for the step's detail.
    pub(super) label: &'a str,
}

impl Fetch<'_> {
    /// Fetches one segment: retries transient errors with backoff (each try through the pacing
    /// limiter), retries after a pacing violation once the limiter allows, clamps to IB's head. A
    /// gateway reported down stops the load (or waits for it, as the guard is set).
    pub(super) async fn segment(&self, segment: Window, downloads: &mut Downloads) -> Result<(), SegmentStop> {
        let Fetch { gateway, spec, settings, progress, label } = *self;
        let token = gateway.ctx.token();
        const PACING_RETRIES: u32 = 3;
        let (sym, tf) = (spec.symbol.as_str(), spec.timeframe.as_str());
        let mut start = segment.start;
        let (mut attempts, mut pacing_retries) = (0u32, 0u32);
        loop {
            attempts += 1;
            let on_wait = |left: Duration| {
                progress.detail(format!("{label}: waiting for IB pacing ({} s)", left.as_secs_f64().ceil() as u64))
            };
            let (from, to) = (to_timestamp(start), to_timestamp(segment.end));
            let result = gateway
                .call(|| gateway.ib.historical(gateway.ctx.operation_id(), sym, tf, from, to, token, on_wait))
                .await;
            if !matches!(result, Err(IbError::Cancelled)) {
                downloads.requests += 1;
            }
            let error = match result {
                Ok(mut bars) => {
                    if spec.parameters.filters.trading_hours_only
                        && spec.timeframe.is_intraday()
                        && calendar::instrument_kind(sym) == InstrumentKind::Stock
                    {
                        bars.retain(|b| {
                            calendar::nyse_session(calendar::utc_to_new_york(b.timestamp).date())
                                .is_some_and(|(open, close)| b.timestamp >= open && b.timestamp < close)
                        });
                    }
                    let k = bars.len() as u64;
                    downloads.rows_downloaded += k;
                    downloads.segments_fetched += 1;
                    downloads.pending.extend(bars);
                    progress.detail(format!(
                        "loaded {k} bars from {}",
                        label.split(' ').take(2).collect::<Vec<_>>().join(" ")
                    ));
                    return Ok(());
                }
                Err(IbError::NoData(_)) => {
                    downloads.segments_fetched += 1;
                    return Ok(());
                }
                Err(IbError::Cancelled) => return Err(SegmentStop::Cancelled),
                Err(IbError::UnknownSymbol(m) | IbError::GatewayDown(m)) => return Err(SegmentStop::Fatal(m)),
                Err(IbError::BeforeHead { head, message }) => {
                    let head = head.timestamp();
                    if head > start && head <= segment.end {
                        start = head;
                        continue;
                    }
                    if head > segment.end {
                        // Entirely before IB's first bar: nothing to fetch here.
                        downloads.segments_fetched += 1;
                        return Ok(());
                    }
                    message
                }
                Err(IbError::Pacing(message)) => {
                    pacing_retries += 1;
                    if pacing_retries <= PACING_RETRIES {
                        attempts -= 1;
                        continue;
                    }
                    message
                }
                Err(IbError::Transient(message)) if attempts < settings.segment_attempts => {
                    let pause = settings.retry_backoff().delay(attempts);
                    progress.detail(format!(
                        "{label}: retrying in {} s after: {message}",
                        pause.as_secs_f64().ceil() as u64
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = token.cancelled() => return Err(SegmentStop::Cancelled),
                    }
                }
                Err(IbError::Transient(message) | IbError::Rejected(message)) => message,
            };
            return Err(SegmentStop::Failed(error));
        }
    }
}
