//! One simulated backtest from its order to its end: the model folder checked, the cached bars
//! read and cut to the dates, the engine run off the async threads with progress every
//! `progress_every` bars, paced, checkpointed, and stopped at once by a cancel — which leaves a
//! `cancellation` checkpoint a resume continues from, on this worker or another sharing the
//! folder.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::engine::{self, Control, Costs, EngineState, Signal};
use super::{BacktestOrder, BacktestSim, Run};
use crate::data::frame::{Bars, to_timestamp};
use crate::data::repository::{read_csv, write_atomic};
use crate::time;

/// The order's dates as Unix seconds: a date alone is the start of its day for `start_date` and
/// the end of it for `end_date` (ktrdr keeps only the 00:00 bar of the last day: a defect).
fn dates(order: &BacktestOrder) -> Result<(i64, i64), String> {
    let parse = |text: &str, end: bool| -> Result<i64, String> {
        let ts = time::parse_timestamp(text).ok_or_else(|| format!("Invalid date format: {text}"))?;
        let date_only = text.trim().len() <= 10;
        Ok(ts.timestamp() + if end && date_only { 86_399 } else { 0 })
    };
    Ok((parse(&order.start_date, false)?, parse(&order.end_date, true)?))
}

/// `models/{strategy}/{folder}` (as ktrdr's backend sends it) inside this worker's models folder;
/// anything that climbs out of it is refused.
fn model_folder(models_dir: &Path, model_path: &str) -> Result<PathBuf, String> {
    let relative = Path::new(model_path);
    let relative = relative.strip_prefix("models").unwrap_or(relative);
    if relative.is_absolute() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("Model path must be inside the models folder: {model_path}"));
    }
    let folder = models_dir.join(relative);
    if !folder.is_dir() {
        return Err(format!("Model directory not found: {}", folder.display()));
    }
    Ok(folder)
}

/// What the run needs from disk, read off the async threads.
struct Loaded {
    bars: Bars,
    signals: Vec<Option<Signal>>,
}

fn load(sim: &BacktestSim, order: &BacktestOrder, start: i64, end: i64) -> Result<Loaded, String> {
    let model_path = order.model_path.as_deref().ok_or("model_path is required for backtesting")?;
    model_folder(&sim.models_dir, model_path)?;
    let file = sim.data_dir.join(format!("{}_{}.csv", order.symbol, order.timeframe));
    if !file.is_file() {
        return Err(format!("Data file not found: {}", file.display()));
    }
    let all = read_csv(&file).map_err(|e| format!("Cannot read {}: {e}", file.display()))?;
    let range = all.window(Some(start), Some(end), None);
    if range.is_empty() {
        return Err(format!("No data for {} {}", order.symbol, order.timeframe));
    }
    let mut bars = Bars::with_capacity(range.len());
    for i in range {
        bars.push(all.ts[i], all.open[i], all.high[i], all.low[i], all.close[i], all.volume[i]);
    }
    if bars.len() <= engine::WARMUP_BARS {
        return Err(format!(
            "Insufficient data for backtesting: {} bars (need at least {} for indicator warm-up)",
            bars.len(),
            engine::WARMUP_BARS + 1
        ));
    }
    let signals = engine::signals(&bars.close)?;
    Ok(Loaded { bars, signals })
}

/// `2024-03-04 09:00:00+00:00`, as pandas prints a UTC timestamp.
fn bar_time(ts: i64) -> String {
    to_timestamp(ts).format("%Y-%m-%d %H:%M:%S+00:00").to_string()
}

/// Runs `run` to its end and records how it ended. `from`: a checkpoint to continue from.
pub(super) async fn execute(sim: Arc<BacktestSim>, run: Arc<Run>, from: Option<Value>) {
    {
        let mut view = run.view.lock();
        view.status = "running";
        view.started_at = Some(time::format(&time::now()));
    }
    let worker = sim.clone();
    let job = run.clone();
    let outcome = tokio::task::spawn_blocking(move || simulate(&worker, &job, from)).await;
    let mut view = run.view.lock();
    view.completed_at = Some(time::format(&time::now()));
    match outcome {
        Ok(Ok(Some(result))) => {
            view.status = "completed";
            view.result = Some(result);
            view.checkpoint = None;
        }
        Ok(Ok(None)) => {
            view.status = "cancelled";
            view.error = Some("Operation cancelled".into());
        }
        Ok(Err(error)) => {
            view.status = "failed";
            view.error = Some(error);
        }
        Err(_) => {
            view.status = "failed";
            view.error = Some("the engine crashed".into());
        }
    }
    drop(view);
    run.ended.cancel();
}

/// The engine's run on this thread: `Ok(Some(result))` once done, `Ok(None)` once stopped.
fn simulate(sim: &BacktestSim, run: &Run, from: Option<Value>) -> Result<Option<Value>, String> {
    let order = &run.order;
    let started = Instant::now();
    let (start, end) = dates(order)?;
    let loaded = load(sim, order, start, end)?;
    let costs =
        Costs { initial_capital: order.initial_capital, commission: order.commission, slippage: order.slippage };
    let mut state = match &from {
        Some(saved) => serde_json::from_value::<EngineState>(saved["state"].clone())
            .map_err(|e| format!("the checkpoint cannot be read: {e}"))?,
        None => EngineState::new(&costs),
    };
    let knobs = sim.knobs();
    let (bars, n) = (&loaded.bars, loaded.bars.len());
    let total = n - engine::WARMUP_BARS;
    let (first_bar, paced_from) = (state.next_bar, Instant::now());
    let mut last_checkpoint = state.next_bar;
    let publish = |state: &EngineState| {
        let i = state.next_bar.min(n) - 1;
        let done = state.next_bar - engine::WARMUP_BARS;
        let mut view = run.view.lock();
        view.percentage = 100.0 * done as f64 / total as f64;
        view.current_step = format!("Backtesting {} {} [{}]", order.symbol, order.timeframe, bar_time(bars.ts[i]));
        view.context = json!({
            "bars_processed": done, "bars_total": total, "trades": state.trades.len(),
            "equity": state.equity(bars.close[i]), "current_date": bar_time(bars.ts[i]),
        });
    };
    let ended = engine::run(bars, &loaded.signals, &costs, &mut state, knobs.progress_every, |state| {
        publish(state);
        if !pace(&knobs, state.next_bar - first_bar, paced_from, run) {
            save_checkpoint(sim, run, state, bars, "cancellation");
            return Control::Stop;
        }
        if state.next_bar - last_checkpoint >= knobs.checkpoint_every.max(1) {
            last_checkpoint = state.next_bar;
            save_checkpoint(sim, run, state, bars, "periodic");
        }
        Control::Continue
    });
    if ended == engine::Ended::Stopped {
        return Ok(None);
    }
    publish(&state);
    let _ = std::fs::remove_file(sim.checkpoint_path(&run.id));
    Ok(Some(json!({
        "strategy_name": order.strategy_name, "symbol": order.symbol, "timeframe": order.timeframe,
        "start_time": order.start_date, "end_time": order.end_date,
        "execution_time_seconds": started.elapsed().as_secs_f64(),
        "config": {
            "initial_capital": order.initial_capital, "commission": order.commission, "slippage": order.slippage,
            "start_date": order.start_date, "end_date": order.end_date,
        },
        "metrics": super::metrics::metrics(&state, &costs, start, end),
        "trade_count": state.trades.len(), "equity_curve_length": state.curve.points,
    })))
}

/// Holds the run to `bars_per_second` (in slices, so that a stop is seen within milliseconds);
/// false once it is asked to stop.
fn pace(knobs: &super::BacktestKnobs, simulated: usize, since: Instant, run: &Run) -> bool {
    if knobs.bars_per_second > 0 {
        let due = since + Duration::from_secs_f64(simulated as f64 / knobs.bars_per_second as f64);
        while Instant::now() < due && !run.stop.is_cancelled() {
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(5)));
        }
    }
    !run.stop.is_cancelled()
}

/// Saves the state reached (atomically: a reader sees the old checkpoint or this one) and shows
/// it in the record.
fn save_checkpoint(sim: &BacktestSim, run: &Run, state: &EngineState, bars: &Bars, kind: &str) {
    let i = state.next_bar.min(bars.len()) - 1;
    let summary = json!({
        "checkpoint_type": kind, "bar_index": state.next_bar - engine::WARMUP_BARS,
        "current_date": bar_time(bars.ts[i]), "created_at": time::format(&time::now()),
        "trades": state.trades.len(), "cash": state.cash,
    });
    let saved = json!({
        "checkpoint_type": kind, "operation_type": "backtesting", "bar_index": summary["bar_index"],
        "current_date": summary["current_date"], "state": state, "original_request": run.order,
    });
    let path = sim.checkpoint_path(&run.id);
    let written = write_atomic(&path, |out| serde_json::to_writer(out, &saved).map_err(|e| e.to_string()));
    match written {
        Ok(_) => run.view.lock().checkpoint = Some(summary),
        Err(e) => tracing::warn!(operation_id = %run.id, error = %e, "could not save a backtest checkpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_stay_inside_the_models_folder() {
        let dir = std::env::temp_dir().join(format!("bt-models-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("s/1h_latest")).unwrap();
        assert!(model_folder(&dir, "models/s/1h_latest").is_ok());
        assert!(model_folder(&dir, "s/1h_latest").is_ok());
        for bad in ["models/../etc", "/etc/passwd", "models/s/../../x"] {
            assert!(model_folder(&dir, bad).unwrap_err().contains("inside"), "{bad}");
        }
        assert!(model_folder(&dir, "models/s/4h_latest").unwrap_err().starts_with("Model directory not found"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
