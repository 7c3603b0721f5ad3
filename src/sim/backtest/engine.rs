//! The simulated backtest worker's engine: ktrdr's bar loop, position, commission and slippage
//! rules (backtesting.md §5) over a decision rule computed from the bars themselves — a trained
//! model cannot be evaluated outside PyTorch, so a documented moving-average crossover stands in
//! for it. The signals are computed for the whole series at once with polars; the bar loop that
//! follows them is a tight sequential pass (accounting is sequential by nature) whose whole state
//! fits in a checkpoint, so a resumed run ends exactly where an uninterrupted one would.

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::frame::Bars;

/// The decision rule: BUY on the bar where the `fast`-bar mean of the close crosses above the
/// `slow`-bar mean, SELL where it crosses below; executed at the next bar's open.
pub const FAST_BARS: usize = 10;
pub const SLOW_BARS: usize = 30;
/// ktrdr's warm-up: the first 50 bars are never traded; fewer than 51 bars is an error.
pub const WARMUP_BARS: usize = 50;
/// ktrdr's `filters.min_signal_separation` (4 hours) between executed fills.
pub const MIN_SIGNAL_SEPARATION_SECS: i64 = 4 * 3600;
/// ktrdr's sizing: a quarter of the cash per entry.
const POSITION_FRACTION: f64 = 0.25;

/// A bar's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    Buy,
    Sell,
}

/// The crossover signals of every bar (`None`: hold), computed column-wise with polars: the
/// rolling means from one cumulative sum, the crossings from the means shifted by one bar.
pub fn signals(close: &[f64]) -> Result<Vec<Option<Signal>>, String> {
    let close = Float64Chunked::from_slice("close".into(), close).into_series();
    let sums = polars::prelude::cum_sum(&close, false).map_err(|e| e.to_string())?;
    let sums = sums.f64().map_err(|e| e.to_string())?;
    // sum(i) − sum(i − n), over n (meaningful once n bars are in: masked below).
    let mean = |n: usize| -> Result<Float64Chunked, String> {
        let ahead = sums.shift(n as i64).fill_null_with_values(0.0).map_err(|e| e.to_string())?;
        Ok(&(sums - &ahead) / (n as f64))
    };
    let diff = &mean(FAST_BARS)? - &mean(SLOW_BARS)?;
    let before = diff.shift(1);
    Ok(diff
        .iter()
        .zip(before.iter())
        .enumerate()
        .map(|(i, pair)| match pair {
            // Both bars need the slow mean: from bar SLOW_BARS on.
            _ if i < SLOW_BARS => None,
            (Some(now), Some(then)) if now > 0.0 && then <= 0.0 => Some(Signal::Buy),
            (Some(now), Some(then)) if now < 0.0 && then >= 0.0 => Some(Signal::Sell),
            _ => None,
        })
        .collect())
}

/// The costs of a run (fractions per fill).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub initial_capital: f64,
    pub commission: f64,
    pub slippage: f64,
}

/// The open position (long only: ktrdr's default refuses shorts from flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub quantity: u64,
    pub entry_price: f64,
    pub entry_ts: i64,
    pub entry_commission: f64,
    pub entry_slippage: f64,
    /// The best and worst unrealised P&L seen at closes.
    pub max_favorable: f64,
    pub max_adverse: f64,
}

/// A closed round trip (ktrdr's trade fields; `net_pnl` counts both fills' commission).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    pub trade_id: u64,
    pub side: String,
    pub entry_price: f64,
    pub entry_ts: i64,
    pub exit_price: f64,
    pub exit_ts: i64,
    pub quantity: u64,
    pub gross_pnl: f64,
    pub commission: f64,
    pub slippage: f64,
    pub net_pnl: f64,
    pub holding_period_hours: f64,
    pub max_favorable_excursion: f64,
    pub max_adverse_excursion: f64,
}

/// Running sums of the equity curve: what the metrics need, without keeping the curve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Equity points (one per simulated bar).
    pub points: u64,
    pub last_equity: Option<f64>,
    /// Per-point relative returns: count, sum, sum of squares, sum of squared losses.
    pub returns: u64,
    pub sum: f64,
    pub sum_squares: f64,
    pub sum_downside_squares: f64,
    pub peak: f64,
    pub max_drawdown: f64,
    pub max_drawdown_pct: f64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
}

impl Curve {
    fn record(&mut self, ts: i64, equity: f64) {
        if let Some(last) = self.last_equity.filter(|l| *l > 0.0) {
            let r = equity / last - 1.0;
            self.returns += 1;
            self.sum += r;
            self.sum_squares += r * r;
            self.sum_downside_squares += r.min(0.0).powi(2);
        }
        self.points += 1;
        self.last_equity = Some(equity);
        self.first_ts.get_or_insert(ts);
        self.last_ts = Some(ts);
        self.peak = self.peak.max(equity);
        if self.peak > 0.0 {
            self.max_drawdown = self.max_drawdown.max(self.peak - equity);
            self.max_drawdown_pct = self.max_drawdown_pct.max((self.peak - equity) / self.peak);
        }
    }
}

/// Everything a run has done so far: enough to continue it exactly (a checkpoint's state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// The index (in the loaded bars) of the next bar to simulate.
    pub next_bar: usize,
    pub cash: f64,
    pub position: Option<Position>,
    pub trades: Vec<Trade>,
    /// A signal decided at the previous bar, executed at the next open.
    pub pending: Option<Signal>,
    pub last_fill_ts: Option<i64>,
    pub curve: Curve,
}

impl EngineState {
    pub fn new(costs: &Costs) -> Self {
        EngineState {
            next_bar: WARMUP_BARS,
            cash: costs.initial_capital,
            position: None,
            trades: Vec::new(),
            pending: None,
            last_fill_ts: None,
            curve: Curve { peak: costs.initial_capital, ..Curve::default() },
        }
    }

    /// Marked to `close`.
    pub fn equity(&self, close: f64) -> f64 {
        self.cash + self.position.as_ref().map_or(0.0, |p| p.quantity as f64 * close)
    }
}

/// What the loop's caller says at each pause.
pub enum Control {
    Continue,
    Stop,
}

/// How a loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every bar simulated, the last position closed.
    Done,
    /// Stopped by its caller at `state.next_bar`.
    Stopped,
}

/// Simulates from `state.next_bar` to the end, calling `pause` every `every` bars (progress,
/// pacing, checkpoints, cancel). The open position is closed at the last bar's close.
pub fn run(
    bars: &Bars,
    signals: &[Option<Signal>],
    costs: &Costs,
    state: &mut EngineState,
    every: usize,
    mut pause: impl FnMut(&EngineState) -> Control,
) -> Ended {
    let n = bars.len();
    let every = every.max(1);
    while state.next_bar < n {
        let i = state.next_bar;
        if let Some(signal) = state.pending.take() {
            execute(signal, bars.open[i], bars.ts[i], costs, state);
        }
        if i + 1 == n {
            if state.position.is_some() {
                // The forced close at the last close, costs included.
                execute(Signal::Sell, bars.close[i], bars.ts[i], costs, state);
            }
        } else {
            state.pending = decide(signals[i], bars.ts[i], state);
        }
        mark(bars.close[i], state);
        state.curve.record(bars.ts[i], state.equity(bars.close[i]));
        state.next_bar += 1;
        if (state.next_bar - WARMUP_BARS).is_multiple_of(every)
            && state.next_bar < n
            && matches!(pause(state), Control::Stop)
        {
            return Ended::Stopped;
        }
    }
    Ended::Done
}

/// ktrdr's filters: none within the minimum separation of the last fill; BUY while long and
/// SELL while flat are held.
fn decide(signal: Option<Signal>, ts: i64, state: &EngineState) -> Option<Signal> {
    let signal = signal?;
    if state.last_fill_ts.is_some_and(|last| ts - last < MIN_SIGNAL_SEPARATION_SECS) {
        return None;
    }
    match (signal, &state.position) {
        (Signal::Buy, None) | (Signal::Sell, Some(_)) => Some(signal),
        _ => None,
    }
}

/// Unrealised P&L extremes of the open position at `close`.
fn mark(close: f64, state: &mut EngineState) {
    if let Some(p) = &mut state.position {
        let unrealised = (close - p.entry_price) * p.quantity as f64;
        p.max_favorable = p.max_favorable.max(unrealised);
        p.max_adverse = p.max_adverse.min(unrealised);
    }
}

/// Fills `signal` at `price` (slippage against us, commission on the notional).
fn execute(signal: Signal, price: f64, ts: i64, costs: &Costs, state: &mut EngineState) {
    match signal {
        Signal::Buy => {
            let fill = price * (1.0 + costs.slippage);
            let mut quantity = (POSITION_FRACTION * state.cash / (1.0 + costs.commission) / price).floor();
            if quantity * fill * (1.0 + costs.commission) > state.cash {
                quantity = (state.cash / (1.0 + costs.commission) / fill).floor();
            }
            if quantity < 1.0 {
                return;
            }
            let notional = quantity * fill;
            let commission = notional * costs.commission;
            state.cash -= notional + commission;
            state.position = Some(Position {
                quantity: quantity as u64,
                entry_price: fill,
                entry_ts: ts,
                entry_commission: commission,
                entry_slippage: quantity * (fill - price),
                max_favorable: 0.0,
                max_adverse: 0.0,
            });
        }
        Signal::Sell => {
            let Some(p) = state.position.take() else { return };
            let fill = price * (1.0 - costs.slippage);
            let quantity = p.quantity as f64;
            let notional = quantity * fill;
            let commission = notional * costs.commission;
            state.cash += notional - commission;
            let gross = notional - quantity * p.entry_price;
            state.trades.push(Trade {
                trade_id: state.trades.last().map_or(1, |t| t.trade_id + 1),
                side: "LONG".into(),
                entry_price: p.entry_price,
                entry_ts: p.entry_ts,
                exit_price: fill,
                exit_ts: ts,
                quantity: p.quantity,
                gross_pnl: gross,
                commission: p.entry_commission + commission,
                slippage: p.entry_slippage + quantity * (price - fill),
                net_pnl: gross - p.entry_commission - commission,
                holding_period_hours: (ts - p.entry_ts) as f64 / 3600.0,
                max_favorable_excursion: p.max_favorable,
                max_adverse_excursion: p.max_adverse,
            });
        }
    }
    state.last_fill_ts = Some(ts);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(n: usize) -> Bars {
        let mut bars = Bars::with_capacity(n);
        for i in 0..n {
            // A slow wave: the means cross every half period.
            let price = 100.0 + 10.0 * ((i as f64) / 40.0).sin();
            bars.push(i as i64 * 3600, price, price + 0.5, price - 0.5, price + 0.1, 1.0);
        }
        bars
    }

    #[test]
    fn crossings_are_found_column_wise() {
        let bars = zigzag(800);
        let s = signals(&bars.close).unwrap();
        assert_eq!(s.len(), 800);
        assert!(s[..SLOW_BARS].iter().all(Option::is_none), "no signal before the slow mean exists");
        let buys = s.iter().filter(|x| **x == Some(Signal::Buy)).count();
        let sells = s.iter().filter(|x| **x == Some(Signal::Sell)).count();
        assert!(buys >= 2 && sells >= 2, "{buys} buys, {sells} sells");
    }

    #[test]
    fn a_run_stopped_and_continued_ends_where_an_uninterrupted_one_does() {
        let bars = zigzag(2_000);
        let s = signals(&bars.close).unwrap();
        let costs = Costs { initial_capital: 100_000.0, commission: 0.001, slippage: 0.0005 };
        let mut whole = EngineState::new(&costs);
        assert_eq!(run(&bars, &s, &costs, &mut whole, 50, |_| Control::Continue), Ended::Done);
        assert!(whole.position.is_none(), "the last position is closed");
        assert!(whole.trades.len() >= 4);
        let mut parts = EngineState::new(&costs);
        assert_eq!(
            run(&bars, &s, &costs, &mut parts, 100, |st| if st.next_bar >= 700 {
                Control::Stop
            } else {
                Control::Continue
            }),
            Ended::Stopped
        );
        // Through JSON, as a checkpoint keeps it: bit for bit.
        let saved: EngineState = serde_json::from_str(&serde_json::to_string(&parts).unwrap()).unwrap();
        let mut resumed = saved;
        assert_eq!(run(&bars, &s, &costs, &mut resumed, 100, |_| Control::Continue), Ended::Done);
        assert_eq!(resumed, whole);
        assert_eq!(whole.curve.points as usize, 2_000 - WARMUP_BARS);
        let net: f64 = whole.trades.iter().map(|t| t.net_pnl).sum();
        assert!((whole.cash - costs.initial_capital - net).abs() < 1e-6, "cash moves by the trades' net P&L only");
    }
}
