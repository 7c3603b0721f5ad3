//! The data-load operation (data-load.md): seven steps from validating the symbol to saving the
//! merged series, fetching only what the series' coverage index does not hold as complete,
//! through the pacing limiter, with retries, partial success, periodic crash-safe saves (the CSV,
//! then its index), and a cancel that keeps every fetched bar and says what is still missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backoff::Backoff;
use crate::data::calendar;
use crate::data::coverage::Coverage;
use crate::data::fetch::{Downloads, Fetch, SegmentStop};
use crate::data::frame::{Bars, to_timestamp};
use crate::data::gaps::{self, Gap};
use crate::data::gateway::GatewayGuard;
use crate::data::plan::{self, Cached, Window};
use crate::data::repository::{CacheError, Repository};
use crate::data::request::{LoadSpec, Mode};
use crate::data::series_lock::{Held, SeriesGuard, SeriesLocks};
use crate::hosts::ib::{IbClient, IbError};
use crate::hosts::stall::observe_stalls;
use crate::ops::{CheckpointKind, Job, JobContext, JobError, JobResult, OperationHandle, Steps};
use crate::time::{self, Timestamp};

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
}

impl LoadSettings {
    /// The longest pause between two tries of a segment.
    const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

    /// Pauses between tries of a segment: doubling from `retry_base_delay`.
    pub(super) fn retry_backoff(&self) -> Backoff {
        Backoff::exponential(self.retry_base_delay, Self::MAX_RETRY_DELAY)
    }
}

pub struct DataLoadJob {
    pub spec: LoadSpec,
    pub ib: IbClient,
    pub repository: Arc<Repository>,
    pub locks: Arc<SeriesLocks>,
    pub settings: LoadSettings,
}

fn minute(seconds: i64) -> String {
    to_timestamp(seconds).format("%Y-%m-%d %H:%M").to_string()
}

/// The seven steps of a load (data-load.md), each with its band of the percentage. The quick
/// steps before the plan share the first 5 %; once the plan is made, the download gets a band
/// as wide as its share of the host calls (each segment is one, like the validation and the head
/// lookup before it), and the save the last half percent — so that the percentage moves with the
/// time a load takes, and the ETA drawn from it is right, whether it fetches one segment or
/// three thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadStep {
    ValidateSymbol,
    ReadCache,
    ValidateRange,
    AnalyzeGaps,
    CreateSegments,
    Download,
    Save,
}

impl LoadStep {
    const SAVE_FROM: f64 = 99.5;
    /// Host calls made before the download (validation, head timestamp).
    const CALLS_BEFORE: f64 = 2.0;

    /// The download's band once the number of segments is known.
    fn download_band(segments: usize) -> std::ops::Range<f64> {
        let share_before = Self::CALLS_BEFORE / (Self::CALLS_BEFORE + segments as f64);
        let plan_end = LoadStep::CreateSegments.band().end;
        (100.0 * share_before).clamp(plan_end, Self::SAVE_FROM)..Self::SAVE_FROM
    }
}

impl Steps for LoadStep {
    const ALL: &'static [Self] = &[
        LoadStep::ValidateSymbol,
        LoadStep::ReadCache,
        LoadStep::ValidateRange,
        LoadStep::AnalyzeGaps,
        LoadStep::CreateSegments,
        LoadStep::Download,
        LoadStep::Save,
    ];

    fn band(self) -> std::ops::Range<f64> {
        match self {
            LoadStep::Download => Self::download_band(0),
            LoadStep::Save => Self::SAVE_FROM..100.0,
            // The first five: one percent each.
            quick => {
                let from = f64::from(quick.number() - 1);
                from..from + 1.0
            }
        }
    }
}

/// What a replica that takes a load over needs: the span this load planned to fill (stored once
/// the plan is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadState {
    pub planned: Window,
}

/// A load's checkpoint (resume.md §5): the span it planned and how far it got, as saved. A
/// resume fills what is missing in `planned` — the coverage index knows what of it is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadCheckpoint {
    /// Unix seconds.
    pub planned: Window,
    pub segments_total: u64,
    pub segments_done: u64,
    pub segments_pending: u64,
    /// Bars in the saved series (ktrdr's CLI shows `bar_index`).
    pub bar_index: u64,
    pub last_saved_bar: Option<String>,
}

impl LoadCheckpoint {
    /// As saved now; `None` when the load planned nothing.
    fn of(plan: &Plan, series: &Series, downloads: &Downloads) -> Option<Value> {
        let (first, last) = (plan.ranges.first()?, plan.ranges.last()?);
        let total = plan.segments.len() as u64;
        let checkpoint = LoadCheckpoint {
            planned: Window { start: first.start, end: last.end },
            segments_total: total,
            segments_done: downloads.segments_fetched,
            segments_pending: total.saturating_sub(downloads.segments_fetched),
            bar_index: series.bars.len() as u64,
            last_saved_bar: series.bars.last().as_ref().map(time::format),
        };
        serde_json::to_value(checkpoint).ok()
    }
}

/// The series as saved: its bars and its coverage index, always written in that order, under
/// the series' lock.
struct Series<'a> {
    repository: &'a Repository,
    spec: &'a LoadSpec,
    bars: Arc<Bars>,
    coverage: Coverage,
    lock: SeriesGuard,
}

impl Series<'_> {
    /// Merges what was fetched into the file, then records what is now complete in the index.
    /// Runs whatever the token says: a cancel keeps what was fetched.
    async fn save(&mut self, downloads: &mut Downloads, ctx: &OperationHandle) -> Result<(), JobError> {
        self.hold(ctx).await?;
        let failed = |e: CacheError| JobError::failed_by(e.to_string(), e);
        if !downloads.pending.is_empty() {
            let fetched = Bars::from_bars(&downloads.pending);
            let merged = Arc::new(self.bars.merge(&fetched));
            self.repository.write(&self.spec.symbol, self.spec.timeframe, merged.clone()).await.map_err(failed)?;
            downloads.pending.clear();
            self.bars = merged;
        }
        for w in downloads.done.drain(..) {
            self.coverage.done(w);
        }
        self.write_coverage_held().await
    }

    async fn write_coverage(&mut self, ctx: &OperationHandle) -> Result<(), JobError> {
        self.hold(ctx).await?;
        self.write_coverage_held().await
    }

    async fn write_coverage_held(&self) -> Result<(), JobError> {
        self.repository
            .write_coverage(&self.spec.symbol, self.spec.timeframe, &self.coverage, &self.bars)
            .await
            .map_err(|e| JobError::failed_by(e.to_string(), e))
    }

    /// Before a write: the series' lock is still this load's. When it had to be taken again,
    /// another load may have written meanwhile: what it saved is kept, and ours goes on top.
    async fn hold(&mut self, ctx: &OperationHandle) -> Result<(), JobError> {
        if self.lock.confirm(ctx).await? == Held::Throughout {
            return Ok(());
        }
        let (symbol, timeframe) = (&self.spec.symbol, self.spec.timeframe);
        let on_disk =
            self.repository.read(symbol, timeframe).await.map_err(|e| JobError::failed_by(e.to_string(), e))?;
        if let Some(theirs) = self.repository.read_coverage(symbol, timeframe, on_disk.clone()).await {
            self.coverage.absorb(&theirs);
        }
        self.bars = Arc::new(on_disk.merge(&self.bars));
        Ok(())
    }
}

/// What the load knows once it has read the cache and the host's first bar.
struct Plan {
    ranges: Vec<Window>,
    segments: Vec<Window>,
    /// Per segment, the range it belongs to.
    range_of: Vec<usize>,
    expected_gaps: usize,
}

impl Job for DataLoadJob {
    const TYPE: &'static str = super::OPERATION_TYPE;
    type Request = LoadSpec;
    type State = LoadState;
    type Step = LoadStep;

    fn summary(spec: &LoadSpec) -> Option<String> {
        Some(spec.symbol.as_str().to_owned())
    }

    /// `AAPL 1h · tail`.
    fn subject(spec: &LoadSpec) -> Option<String> {
        Some(format!("{} {} · {}", spec.symbol.as_str(), spec.timeframe, spec.mode.as_str()))
    }

    async fn run(self, ctx: JobContext<Self>) -> JobResult {
        // Stalled host calls show in the step and stay in the warnings.
        observe_stalls(Arc::new(ctx.progress()), self.load(ctx)).await
    }
}

impl DataLoadJob {
    /// The seven steps, each a phase below; what a phase finds is what the next one gets.
    async fn load(self, ctx: JobContext<Self>) -> JobResult {
        let began = Instant::now();
        let (sym, tf, mode) = (self.spec.symbol.as_str(), self.spec.timeframe.as_str(), self.spec.mode);
        ctx.progress().context([
            ("symbol".to_owned(), json!(sym)),
            ("timeframe".to_owned(), json!(tf)),
            ("mode".to_owned(), json!(mode.as_str())),
        ]);
        let gateway = GatewayGuard { ib: &self.ib, ctx: &ctx, wait: self.settings.wait_for_gateway };

        ctx.step(LoadStep::ValidateSymbol, format!("Validating symbol {sym}"));
        let head = self.validate(&gateway).await?;
        let lock = self.locks.lock(&self.spec.file_name(), &ctx).await?;

        ctx.step(LoadStep::ReadCache, format!("Loading cached data for {sym} {tf}"));
        let (bars, coverage) = self.read_cache().await?;
        let rows_before = bars.len() as u64;
        let cached = match (bars.ts.first(), bars.ts.last()) {
            (Some(first), Some(last)) => Some(Cached { first: *first, last: *last }),
            _ => None,
        };

        ctx.step(LoadStep::ValidateRange, format!("Validating date range for {sym}"));
        let head = match head {
            None if mode != Mode::Local => self.head_timestamp(&gateway).await?,
            known => known,
        };
        let (start, end) = self.span(head, cached);

        ctx.step(LoadStep::AnalyzeGaps, format!("Analyzing data gaps for {sym} ({} mode)", mode.as_str()));
        let (plan, coverage) = self.plan(&bars, coverage, cached, start, end).await?;
        self.warn_if_backfill_stops_short(&ctx, &plan, &coverage, end);
        let mut series = Series { repository: &self.repository, spec: &self.spec, bars, coverage, lock };
        self.record_plan(&ctx, &plan, &mut series).await?;

        let n = plan.segments.len();
        ctx.step(LoadStep::CreateSegments, format!("Creating {n} download segments"));
        ctx.progress().context([
            ("segments_total".to_owned(), json!(n)),
            ("segments_done".to_owned(), json!(0)),
            ("bars_fetched".to_owned(), json!(0)),
        ]);

        ctx.step_within(LoadStep::Download, format!("Downloading {n} segments from IB"), LoadStep::download_band(n));
        let summary = |series: &Series, downloads: &Downloads| {
            self.summary(&plan, series, downloads, rows_before, began.elapsed())
        };
        let mut downloads = self.download(&ctx, &gateway, &plan, &mut series, &summary).await?;

        ctx.step(LoadStep::Save, format!("Merging and saving {sym} {tf} data"));
        // A local load only reads: it leaves the folder as it found it.
        if mode != Mode::Local {
            series.save(&mut downloads, &ctx).await?;
        }
        Ok(summary(&series, &downloads))
    }

    /// Step 2: the cached series and its coverage index.
    async fn read_cache(&self) -> Result<(Arc<Bars>, Option<Coverage>), JobError> {
        let (symbol, timeframe) = (&self.spec.symbol, self.spec.timeframe);
        let bars = self.repository.read(symbol, timeframe).await.map_err(|e| JobError::failed_by(e.to_string(), e))?;
        let coverage = self.repository.read_coverage(symbol, timeframe, bars.clone()).await;
        Ok((bars, coverage))
    }

    /// Step 4, once planned: the span is stored (a replica that takes this load over fetches
    /// what is still missing in it), and the planned ranges stay "incomplete" in the index until
    /// fetched, so that a load interrupted halfway leaves its unfinished part for the next one.
    async fn record_plan(&self, ctx: &JobContext<Self>, plan: &Plan, series: &mut Series<'_>) -> Result<(), JobError> {
        if let (Some(first), Some(last)) = (plan.ranges.first(), plan.ranges.last()) {
            ctx.save_state(&LoadState { planned: Window { start: first.start, end: last.end } }).await?;
            series.write_coverage(ctx).await?;
            if let Some(state) = LoadCheckpoint::of(plan, series, &Downloads::default()) {
                ctx.checkpoint(CheckpointKind::Periodic, state).await;
            }
        }
        ctx.progress().step_progress(
            1,
            1,
            None,
            Some(format!("{} missing ranges, {} expected closures", plan.ranges.len(), plan.expected_gaps)),
        );
        Ok(())
    }

    /// Step 6: every segment in turn, saving as it goes. A failed segment is recorded and the
    /// load goes on; a cancel or a fatal error saves what was fetched and stops.
    async fn download(
        &self,
        ctx: &OperationHandle,
        gateway: &GatewayGuard<'_>,
        plan: &Plan,
        series: &mut Series<'_>,
        summary: &(dyn Fn(&Series, &Downloads) -> Value + Sync),
    ) -> Result<Downloads, JobError> {
        let progress = ctx.progress();
        let n = plan.segments.len();
        let mut downloads = Downloads {
            range_bars: vec![0; plan.ranges.len()],
            range_failed: vec![false; plan.ranges.len()],
            ..Downloads::default()
        };
        let mut last_save = Instant::now();
        for (i, segment) in plan.segments.iter().enumerate() {
            let label = format!("segment {}/{n} {} to {}", i + 1, minute(segment.start), minute(segment.end));
            progress.step_progress(i as u64, n as u64, Some(downloads.rows_downloaded), Some(label.clone()));
            let range = plan.range_of[i];
            let before = downloads.rows_downloaded;
            let fetch =
                Fetch { gateway, spec: &self.spec, settings: &self.settings, progress: &progress, label: &label };
            let stop = match fetch.segment(*segment, &mut downloads).await {
                Ok(()) => {
                    downloads.done.push(*segment);
                    downloads.range_bars[range] += downloads.rows_downloaded - before;
                    None
                }
                Err(SegmentStop::Cancelled) => Some(JobError::Cancelled),
                Err(SegmentStop::Fatal(message)) => Some(JobError::failed(message)),
                Err(SegmentStop::Failed(message)) => {
                    downloads.segments_failed += 1;
                    downloads.range_failed[range] = true;
                    ctx.error(format!("{label}: {message}"));
                    downloads.last_error = Some(message);
                    None
                }
            };
            if let Some(stop) = stop {
                series.save(&mut downloads, ctx).await?;
                // The stop is what the record must say; a summary that could not be stored is a warning.
                if let Err(e) = ctx.result_so_far(summary(series, &downloads)).await {
                    ctx.warn(e.to_string());
                }
                let kind = if matches!(stop, JobError::Cancelled) {
                    CheckpointKind::Cancellation
                } else {
                    CheckpointKind::Failure
                };
                if let Some(state) = LoadCheckpoint::of(plan, series, &downloads) {
                    ctx.checkpoint(kind, state).await;
                }
                return Err(stop);
            }
            progress.context([
                ("segments_done".to_owned(), json!(i + 1)),
                ("bars_fetched".to_owned(), json!(downloads.rows_downloaded)),
            ]);
            progress.step_progress(i as u64 + 1, n as u64, Some(downloads.rows_downloaded), None);
            if last_save.elapsed() >= self.settings.save_interval {
                series.save(&mut downloads, ctx).await?;
                ctx.result_so_far(summary(series, &downloads)).await?;
                if let Some(state) = LoadCheckpoint::of(plan, series, &downloads) {
                    ctx.checkpoint(CheckpointKind::Periodic, state).await;
                }
                last_save = Instant::now();
            }
        }
        if n > 0 && downloads.segments_failed == n as u64 {
            series.save(&mut downloads, ctx).await?;
            ctx.result_so_far(summary(series, &downloads)).await?;
            if let Some(state) = LoadCheckpoint::of(plan, series, &downloads) {
                ctx.checkpoint(CheckpointKind::Failure, state).await;
            }
            let last = downloads.last_error.unwrap_or_default();
            return Err(JobError::failed(format!("none of the {n} segments could be fetched; the last error: {last}")));
        }
        Ok(downloads)
    }

    /// Step 1: the symbol as IB knows it, and its first bar when IB says.
    async fn validate(&self, gateway: &GatewayGuard<'_>) -> Result<Option<Timestamp>, JobError> {
        if self.spec.mode == Mode::Local {
            return Ok(None);
        }
        let (sym, tf) = (self.spec.symbol.as_str(), self.spec.timeframe.as_str());
        let timeframes = [tf];
        match gateway.call(|| self.ib.validate(sym, &timeframes, gateway.ctx.token())).await {
            Ok(v) if v.is_valid => Ok(v.head(tf)),
            Ok(v) => Err(JobError::failed(
                v.error_message.map_or_else(|| format!("Symbol {sym} not found"), |m| crate::hosts::cap_words(&m)),
            )),
            Err(IbError::Cancelled) => Err(JobError::Cancelled),
            Err(IbError::UnknownSymbol(m) | IbError::GatewayDown(m)) => Err(JobError::failed(m)),
            Err(e) => Err(JobError::failed_by(format!("could not validate {sym} with the IB host: {e}"), e)),
        }
    }

    /// Step 3, when validation did not say: IB's first bar (unknown is not an error).
    async fn head_timestamp(&self, gateway: &GatewayGuard<'_>) -> Result<Option<Timestamp>, JobError> {
        let (sym, tf) = (self.spec.symbol.as_str(), self.spec.timeframe.as_str());
        match gateway.call(|| self.ib.head_timestamp(sym, tf, None, gateway.ctx.token())).await {
            Ok(head) => Ok(head),
            Err(IbError::Cancelled) => Err(JobError::Cancelled),
            Err(IbError::GatewayDown(m)) => Err(JobError::failed(m)),
            Err(e) => {
                gateway.ctx.warn(format!("head timestamp unknown: {e}"));
                Ok(None)
            }
        }
    }

    /// Step 3: the span asked for, as Unix seconds — never before IB's first bar, never after
    /// now. The start is `None` only for a tail over a cache without a start date.
    fn span(&self, head: Option<Timestamp>, cached: Option<Cached>) -> (Option<i64>, i64) {
        let (mode, timeframe) = (self.spec.mode, self.spec.timeframe);
        let now = time::now();
        let end = self.spec.end.map_or(now, |e| e.min(now)).timestamp();
        let head = head.map(|h| h.timestamp());
        let default_start = match mode {
            Mode::Tail if cached.is_none() => {
                Some(now.timestamp() - self.settings.tail_default_lookback.as_secs() as i64)
            }
            Mode::Tail | Mode::Local => None,
            Mode::Backfill | Mode::Full => Some(head.unwrap_or(now.timestamp() - timeframe.max_span().num_seconds())),
        };
        let start = self.spec.start.map(|s| s.timestamp()).or(default_start);
        match (start, head) {
            (Some(s), Some(h)) if s < h => (Some(h), end),
            _ => (start, end),
        }
    }

    /// Step 4: the ranges to fetch and their segments, from the coverage index — or, for a cache
    /// without one, from the bars and the gaps between them — and the index with the plan in it.
    async fn plan(
        &self,
        bars: &Arc<Bars>,
        coverage: Option<Coverage>,
        cached: Option<Cached>,
        start: Option<i64>,
        end: i64,
    ) -> Result<(Plan, Coverage), JobError> {
        let (mode, timeframe) = (self.spec.mode, self.spec.timeframe);
        let kind = calendar::instrument_kind(self.spec.symbol.as_str());
        let scan = !bars.is_empty() && (coverage.is_none() || matches!(mode, Mode::Tail | Mode::Full));
        let holes: Vec<Gap> = if scan {
            let frame = bars.clone();
            tokio::task::spawn_blocking(move || gaps::find_gaps(&frame.ts, timeframe, kind))
                .await
                .map_err(|e| JobError::failed_by(format!("gap analysis crashed: {e}"), e))?
        } else {
            Vec::new()
        };
        let mut coverage = coverage.unwrap_or_else(|| Coverage::from_bars(bars, &holes, timeframe));
        let mut ranges = plan::ranges(mode, cached, &coverage, start, end);
        let segments = plan::segments(&ranges, timeframe, kind, mode);
        // Where the market never trades there is nothing to fetch: complete as it is, and no
        // gap to report (a range that is closed throughout is dropped).
        for closed in plan::closed_parts(&ranges, &segments) {
            coverage.done(closed);
        }
        ranges.retain(|r| segments.iter().any(|s| r.start <= s.start && s.end <= r.end));
        for range in &ranges {
            coverage.planned(*range);
        }
        let range_of = segments
            .iter()
            .map(|s| ranges.iter().position(|r| r.start <= s.start && s.end <= r.end).unwrap_or(0))
            .collect();
        let expected_gaps = holes.iter().filter(|g| !g.class.is_fetched()).count();
        Ok((Plan { ranges, segments, range_of, expected_gaps }, coverage))
    }

    /// A backfill fills up to the start of the cache. When the cache ends well before the end of
    /// the range asked for — a cache left by an interrupted load of an older version, say — that
    /// part stays missing: the record says so rather than reporting success in silence.
    fn warn_if_backfill_stops_short(&self, ctx: &OperationHandle, plan: &Plan, coverage: &Coverage, end: i64) {
        if self.spec.mode != Mode::Backfill {
            return;
        }
        let complete_until = coverage.complete.windows().last().map(|w| w.end);
        let planned_until = plan.ranges.last().map(|w| w.end);
        let Some(reach) = complete_until.max(planned_until) else { return };
        if end - reach > self.spec.timeframe.max_span().num_seconds() {
            ctx.warn(format!(
                "backfill fills up to the start of the cache; the cache ends {} but the range asked for ends {}: \
                 run a `tail` or `full` load for the rest",
                minute(reach),
                minute(end)
            ));
        }
    }

    /// `result_summary`: at the end, and as it stands at each save, so that a cancelled, failed or
    /// interrupted load still says what it saved and what is still missing.
    fn summary(
        &self,
        plan: &Plan,
        series: &Series,
        downloads: &Downloads,
        rows_before: u64,
        elapsed: Duration,
    ) -> Value {
        let window = |w: &Window| json!({ "start": time::format(&to_timestamp(w.start)), "end": time::format(&to_timestamp(w.end)) });
        let mut missing = Vec::new();
        for range in &plan.ranges {
            missing.extend(series.coverage.incomplete.within(*range).iter().map(window));
        }
        let finished =
            |i: usize| !downloads.range_failed[i] && series.coverage.incomplete.within(plan.ranges[i]).is_empty();
        let filled = (0..plan.ranges.len()).filter(|&i| finished(i) && downloads.range_bars[i] > 0).count();
        let without_data = (0..plan.ranges.len()).filter(|&i| finished(i) && downloads.range_bars[i] == 0).count();
        let bars = &series.bars;
        json!({
            "symbol": self.spec.symbol.as_str(),
            "timeframe": self.spec.timeframe.as_str(),
            "mode": self.spec.mode.as_str(),
            "rows_before": rows_before,
            "rows_after": bars.len(),
            "rows_downloaded": downloads.rows_downloaded,
            "cache_hit": plan.segments.is_empty(),
            "gaps_found": plan.ranges.len(),
            "gaps_filled": filled,
            "gaps_without_data": without_data,
            "gaps_expected": plan.expected_gaps,
            "segments_fetched": downloads.segments_fetched,
            "segments_failed": downloads.segments_failed,
            "ib_requests_made": downloads.requests,
            "partial": downloads.segments_failed > 0,
            "missing": missing,
            "first_bar": bars.first().as_ref().map(time::format),
            "last_bar": bars.last().as_ref().map(time::format),
            "file": self.spec.file_name(),
            "execution_time_seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        })
    }
}
