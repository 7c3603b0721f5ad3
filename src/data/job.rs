//! The data-load operation (data-load.md): seven steps from validating the symbol to saving the
//! merged series, fetching only what is missing, through the pacing limiter, with retries,
//! partial success, periodic crash-safe saves, and a cancel that keeps every fetched bar.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::data::calendar::{self, InstrumentKind};
use crate::data::frame::{Bars, to_timestamp};
use crate::data::gaps::{self, Gap};
use crate::data::gateway::GatewayGuard;
use crate::data::plan::{self, Cached, Window};
use crate::data::repository::Repository;
use crate::data::request::{LoadSpec, Mode};
use crate::hosts::ib::{IbClient, IbError};
use crate::hosts::stall::{StallReporter, observe_stalls};
use crate::ops::{Job, JobContext, JobError, JobResult, ProgressReporter};
use crate::time;

/// Tunables of data loads (config `[data]`).
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Save what has been fetched after this much fetching (and at the end).
    pub save_interval: Duration,
    /// Tries per segment for transient errors, the first included.
    pub segment_attempts: u32,
    pub retry_base_delay: Duration,
    /// A tail load without a start date and without a cache begins this long before now.
    pub tail_default_lookback: Duration,
    /// With the IB gateway reported down: wait for it (true) or fail at once (false).
    pub wait_for_gateway: bool,
    /// A host call without an answer this long is shown in the step, and makes the load ask
    /// the IB host about its gateway.
    pub stall_notice: Duration,
}

pub struct DataLoadJob {
    pub spec: LoadSpec,
    pub ib: IbClient,
    pub repository: Arc<Repository>,
    pub settings: LoadSettings,
}

fn minute(seconds: i64) -> String {
    to_timestamp(seconds).format("%Y-%m-%d %H:%M").to_string()
}

/// What step 6 did.
#[derive(Default)]
struct Downloads {
    /// Fetched since the last save.
    pending: Vec<crate::hosts::ib::Bar>,
    rows_downloaded: u64,
    segments_fetched: u64,
    segments_failed: u64,
    requests: u64,
    last_error: Option<String>,
    /// Ranges (by index) that lost a segment.
    ranges_with_failures: std::collections::HashSet<usize>,
}

impl Job for DataLoadJob {
    async fn run(self, ctx: JobContext) -> JobResult {
        let progress = ctx.progress();
        let warnings = ctx.progress();
        let stalls =
            StallReporter::observer(move |notice| progress.detail(notice), move |summary| warnings.warn(summary));
        observe_stalls(stalls, self.load(ctx)).await
    }
}

impl DataLoadJob {
    async fn load(self, ctx: JobContext) -> JobResult {
        let began = Instant::now();
        let Self { spec, ib, repository, settings } = self;
        let (symbol, timeframe, mode) = (spec.symbol.clone(), spec.timeframe, spec.mode);
        let (sym, tf) = (symbol.as_str(), timeframe.as_str());
        let kind = calendar::instrument_kind(sym);
        let progress = ctx.progress();
        progress.context([
            ("symbol".to_owned(), json!(sym)),
            ("timeframe".to_owned(), json!(tf)),
            ("mode".to_owned(), json!(mode.as_str())),
        ]);
        let token = ctx.token().clone();
        let gateway =
            GatewayGuard { ib: &ib, ctx: &ctx, wait: settings.wait_for_gateway, stall_notice: settings.stall_notice };

        // 1. The symbol, as IB knows it (and its head timestamp, when IB says).
        progress.start_step(format!("Validating symbol {sym}"), 1, 0.0..5.0);
        let mut head = None;
        if mode != Mode::Local {
            let timeframes = [tf];
            match gateway.call(|| ib.validate(sym, &timeframes, &token)).await {
                Ok(v) if v.is_valid => head = v.head(tf),
                Ok(v) => {
                    return Err(JobError::Failed(v.error_message.unwrap_or_else(|| format!("Symbol {sym} not found"))));
                }
                Err(IbError::Cancelled) => return Err(JobError::Cancelled),
                Err(IbError::UnknownSymbol(m) | IbError::GatewayDown(m)) => return Err(JobError::Failed(m)),
                Err(e) => return Err(JobError::Failed(format!("could not validate {sym} with the IB host: {e}"))),
            }
        }

        // One load per series at a time; the second waits, and says so.
        let lock = repository.series_lock(&symbol, timeframe);
        let _series = match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                progress.detail(format!("waiting for another load of {sym} {tf} to finish"));
                tokio::select! {
                    guard = lock.lock_owned() => guard,
                    _ = ctx.cancelled() => return Err(JobError::Cancelled),
                }
            }
        };

        // 2. The cache.
        progress.start_step(format!("Loading cached data for {sym} {tf}"), 2, 5.0..15.0);
        let mut current = repository.read(&symbol, timeframe).await.map_err(|e| JobError::Failed(e.to_string()))?;
        let rows_before = current.len() as u64;
        let cached = match (current.ts.first(), current.ts.last()) {
            (Some(first), Some(last)) => Some(Cached { first: *first, last: *last }),
            _ => None,
        };

        // 3. The range: never before IB's first bar, never after now.
        progress.start_step(format!("Validating date range for {sym}"), 3, 15.0..20.0);
        if mode != Mode::Local && head.is_none() {
            head = match gateway.call(|| ib.head_timestamp(sym, tf, None, &token)).await {
                Ok(head) => head,
                Err(IbError::Cancelled) => return Err(JobError::Cancelled),
                Err(IbError::GatewayDown(m)) => return Err(JobError::Failed(m)),
                Err(e) => {
                    ctx.warn(format!("head timestamp unknown: {e}"));
                    None
                }
            };
        }
        let now = time::now();
        let end = spec.end.map_or(now, |e| e.min(now)).timestamp();
        let head_seconds = head.map(|h| h.timestamp());
        let default_start = match mode {
            Mode::Tail if cached.is_none() => Some(now.timestamp() - settings.tail_default_lookback.as_secs() as i64),
            Mode::Tail | Mode::Local => None,
            Mode::Backfill | Mode::Full => {
                Some(head_seconds.unwrap_or(now.timestamp() - timeframe.max_span().num_seconds()))
            }
        };
        let mut start = spec.start.map(|s| s.timestamp()).or(default_start);
        if let (Some(s), Some(h)) = (start, head_seconds)
            && s < h
        {
            progress.detail(format!("start moved to IB's first bar, {}", minute(h)));
            start = Some(h);
        }

        // 4. What is missing.
        progress.start_step(format!("Analyzing data gaps for {sym} ({} mode)", mode.as_str()), 4, 20.0..25.0);
        let holes: Vec<Gap> = if matches!(mode, Mode::Tail | Mode::Full) && !current.is_empty() {
            let frame = current.clone();
            tokio::task::spawn_blocking(move || gaps::find_gaps(&frame.ts, timeframe, kind))
                .await
                .map_err(|e| JobError::Failed(format!("gap analysis crashed: {e}")))?
        } else {
            Vec::new()
        };
        let expected_gaps = holes.iter().filter(|g| !g.class.is_fetched()).count();
        let ranges = plan::ranges(mode, cached, &holes, start, end, timeframe);
        if let (Some(first), Some(last)) = (ranges.iter().map(|r| r.start).min(), ranges.iter().map(|r| r.end).max()) {
            // A replica that takes this load over fetches what is still missing in this span.
            ctx.save_state(json!({ "planned": { "start": first, "end": last } })).await?;
        }
        progress.step_progress(
            1,
            1,
            None,
            Some(format!("{} missing ranges, {expected_gaps} expected closures", ranges.len())),
        );

        // 5. Segments of at most IB's span.
        let segments = plan::segments(&ranges, timeframe, kind, mode);
        let n = segments.len();
        progress.start_step(format!("Creating {n} download segments"), 5, 25.0..30.0);
        progress.context([
            ("segments_total".to_owned(), json!(n)),
            ("segments_done".to_owned(), json!(0)),
            ("bars_fetched".to_owned(), json!(0)),
        ]);

        // 6. Download, saving as we go.
        progress.start_step(format!("Downloading {n} segments from IB"), 6, 30.0..90.0);
        let mut downloads = Downloads::default();
        let mut last_save = Instant::now();
        for (i, segment) in segments.iter().enumerate() {
            let label = format!("segment {}/{n} {} to {}", i + 1, minute(segment.start), minute(segment.end));
            progress.step_progress(i as u64, n as u64, Some(downloads.rows_downloaded), Some(label.clone()));
            let outcome = fetch_segment(&gateway, &spec, *segment, &settings, &progress, &label, &mut downloads).await;
            match outcome {
                Ok(()) => {}
                Err(SegmentStop::Cancelled) => {
                    save(&repository, &spec, &mut current, &mut downloads.pending).await?;
                    return Err(JobError::Cancelled);
                }
                Err(SegmentStop::Fatal(message)) => {
                    save(&repository, &spec, &mut current, &mut downloads.pending).await?;
                    return Err(JobError::Failed(message));
                }
                Err(SegmentStop::Failed(message)) => {
                    downloads.segments_failed += 1;
                    if let Some(range) = ranges.iter().position(|r| r.start <= segment.start && segment.end <= r.end) {
                        downloads.ranges_with_failures.insert(range);
                    }
                    ctx.error(format!("{label}: {message}"));
                    downloads.last_error = Some(message);
                }
            }
            progress.context([
                ("segments_done".to_owned(), json!(i + 1)),
                ("bars_fetched".to_owned(), json!(downloads.rows_downloaded)),
            ]);
            progress.step_progress(i as u64 + 1, n as u64, Some(downloads.rows_downloaded), None);
            if last_save.elapsed() >= settings.save_interval && !downloads.pending.is_empty() {
                save(&repository, &spec, &mut current, &mut downloads.pending).await?;
                last_save = Instant::now();
            }
        }
        if n > 0 && downloads.segments_failed == n as u64 {
            save(&repository, &spec, &mut current, &mut downloads.pending).await?;
            let last = downloads.last_error.unwrap_or_default();
            return Err(JobError::Failed(format!("none of the {n} segments could be fetched; the last error: {last}")));
        }

        // 7. Merge and save.
        progress.start_step(format!("Merging and saving {sym} {tf} data"), 7, 90.0..100.0);
        save(&repository, &spec, &mut current, &mut downloads.pending).await?;
        let gaps_filled = ranges.len() - downloads.ranges_with_failures.len();
        Ok(json!({
            "symbol": sym,
            "timeframe": tf,
            "mode": mode.as_str(),
            "rows_before": rows_before,
            "rows_after": current.len(),
            "rows_downloaded": downloads.rows_downloaded,
            "cache_hit": segments.is_empty(),
            "gaps_found": ranges.len(),
            "gaps_filled": gaps_filled,
            "gaps_expected": expected_gaps,
            "segments_fetched": downloads.segments_fetched,
            "segments_failed": downloads.segments_failed,
            "ib_requests_made": downloads.requests,
            "partial": downloads.segments_failed > 0,
            "first_bar": current.first().as_ref().map(time::format),
            "last_bar": current.last().as_ref().map(time::format),
            "file": spec.file_name(),
            "execution_time_seconds": (began.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        }))
    }
}

enum SegmentStop {
    Cancelled,
    /// This segment could not be fetched; the load goes on.
    Failed(String),
    /// The whole load cannot go on (e.g. the symbol vanished).
    Fatal(String),
}

/// Fetches one segment: retries transient errors with backoff (each try through the pacing
/// limiter), retries after a pacing violation once the limiter allows, clamps to IB's head. A
/// gateway reported down stops the load (or waits for it, as the guard is set).
async fn fetch_segment(
    gateway: &GatewayGuard<'_>,
    spec: &LoadSpec,
    segment: Window,
    settings: &LoadSettings,
    progress: &ProgressReporter,
    label: &str,
    downloads: &mut Downloads,
) -> Result<(), SegmentStop> {
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
        let result = gateway.call(|| gateway.ib.historical(sym, tf, from, to, token, on_wait)).await;
        if !matches!(result, Err(IbError::Cancelled)) {
            downloads.requests += 1;
        }
        let error = match result {
            Ok(mut bars) => {
                if spec.filters.trading_hours_only
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
                progress
                    .detail(format!("loaded {k} bars from {}", label.split(' ').take(2).collect::<Vec<_>>().join(" ")));
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
                let pause = settings.retry_base_delay.saturating_mul(2u32.saturating_pow(attempts - 1));
                progress
                    .detail(format!("{label}: retrying in {} s after: {message}", pause.as_secs_f64().ceil() as u64));
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

/// Merges what was fetched into the series and writes it atomically (nothing to do when nothing
/// was fetched). Runs whatever the token says: a cancel keeps what was fetched.
async fn save(
    repository: &Repository,
    spec: &LoadSpec,
    current: &mut Arc<Bars>,
    pending: &mut Vec<crate::hosts::ib::Bar>,
) -> Result<(), JobError> {
    if pending.is_empty() {
        return Ok(());
    }
    let fetched = Bars::from_bars(pending);
    let merged = Arc::new(current.merge(&fetched));
    repository
        .write(&spec.symbol, spec.timeframe, merged.clone())
        .await
        .map_err(|e| JobError::Failed(e.to_string()))?;
    pending.clear();
    *current = merged;
    Ok(())
}
