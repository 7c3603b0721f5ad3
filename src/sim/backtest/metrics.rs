//! A finished backtest's `result_summary` (backtesting.md §4): ktrdr's 22 metrics, computed from
//! the closed trades and the equity curve's running sums — without ktrdr's marked defects:
//! returns annualised by the bars the series really has per year (not √252 whatever the
//! timeframe), drawdown in money from the peak it fell from, the forced close's costs and both
//! fills' commission counted, Sortino over the downside deviation of all returns, and a metric
//! that is undefined (no trades, no losses, no drawdown) is `null`, not 0 or 999999.

use serde_json::{Value, json};

use super::engine::{Costs, EngineState, Trade};

const SECONDS_PER_YEAR: f64 = 365.25 * 86_400.0;

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// A number, or `null` when it is not a finite one.
fn number(x: Option<f64>) -> Value {
    x.filter(|x| x.is_finite()).map_or(Value::Null, |x| json!(x))
}

/// The 22 metrics of a finished run over `[start, end]` (Unix seconds, the configured dates).
pub fn metrics(state: &EngineState, costs: &Costs, start: i64, end: i64) -> Value {
    let capital = costs.initial_capital;
    let final_equity = state.cash;
    let total_return = final_equity - capital;
    let years = (end - start) as f64 / SECONDS_PER_YEAR;
    let curve = &state.curve;
    // Bars per year as the series has them (a 24/5 FX hour and a 6.5-hour stock day differ).
    let span = match (curve.first_ts, curve.last_ts) {
        (Some(first), Some(last)) if last > first => Some((last - first) as f64 / SECONDS_PER_YEAR),
        _ => None,
    };
    let per_year = span.map(|s| curve.points.saturating_sub(1) as f64 / s);
    let n = curve.returns as f64;
    let mean_return = (curve.returns > 0).then(|| curve.sum / n);
    let std = (curve.returns > 1).then(|| (curve.sum_squares / n - (curve.sum / n).powi(2)).max(0.0).sqrt());
    let downside = (curve.returns > 1).then(|| (curve.sum_downside_squares / n).sqrt());
    let annualise = per_year.map(f64::sqrt);
    let ratio = |num: Option<f64>, den: Option<f64>| match (num, den, annualise) {
        (Some(num), Some(den), Some(k)) if den > 1e-12 => Some(num / den * k),
        _ => None,
    };
    let annualized_return = (years > 0.0).then(|| (final_equity / capital).powf(1.0 / years) - 1.0);
    let dd_pct = Some(curve.max_drawdown_pct).filter(|d| *d > 0.0);
    let dd = Some(curve.max_drawdown).filter(|d| *d > 0.0);

    let trades = &state.trades;
    let winners: Vec<&Trade> = trades.iter().filter(|t| t.net_pnl > 0.0).collect();
    let losers: Vec<&Trade> = trades.iter().filter(|t| t.net_pnl < 0.0).collect();
    let pnl = |list: &[&Trade]| list.iter().map(|t| t.net_pnl).collect::<Vec<_>>();
    let hours = |list: &[&Trade]| list.iter().map(|t| t.holding_period_hours).collect::<Vec<_>>();
    let all: Vec<&Trade> = trades.iter().collect();
    let won: f64 = pnl(&winners).iter().sum();
    let lost: f64 = pnl(&losers).iter().sum();
    json!({
        "total_return": total_return,
        "total_return_pct": total_return / capital,
        "annualized_return": number(annualized_return),
        "volatility": number(std.zip(annualise).map(|(s, k)| s * k)),
        "sharpe_ratio": number(ratio(mean_return, std)),
        "max_drawdown": curve.max_drawdown,
        "max_drawdown_pct": curve.max_drawdown_pct,
        "total_trades": trades.len(),
        "winning_trades": winners.len(),
        "losing_trades": losers.len(),
        "win_rate": number((!trades.is_empty()).then(|| winners.len() as f64 / trades.len() as f64)),
        "profit_factor": number((lost < 0.0).then(|| won / -lost)),
        "avg_holding_period": number(mean(&hours(&all))),
        "avg_win_holding_period": number(mean(&hours(&winners))),
        "avg_loss_holding_period": number(mean(&hours(&losers))),
        "avg_win": number(mean(&pnl(&winners))),
        "avg_loss": number(mean(&pnl(&losers))),
        "largest_win": number(pnl(&winners).into_iter().reduce(f64::max)),
        "largest_loss": number(pnl(&losers).into_iter().reduce(f64::min)),
        "calmar_ratio": number(annualized_return.zip(dd_pct).map(|(a, d)| a / d)),
        "sortino_ratio": number(ratio(mean_return, downside)),
        "recovery_factor": number(dd.map(|d| total_return / d)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::backtest::engine::Curve;

    fn trade(net: f64, hours: f64) -> Trade {
        Trade {
            trade_id: 1,
            side: "LONG".into(),
            entry_price: 1.0,
            entry_ts: 0,
            exit_price: 1.0,
            exit_ts: 0,
            quantity: 1,
            gross_pnl: net,
            commission: 0.0,
            slippage: 0.0,
            net_pnl: net,
            holding_period_hours: hours,
            max_favorable_excursion: 0.0,
            max_adverse_excursion: 0.0,
        }
    }

    #[test]
    fn trade_metrics_follow_the_trades_and_undefined_ones_are_null() {
        let costs = Costs { initial_capital: 1000.0, commission: 0.0, slippage: 0.0 };
        let mut state = EngineState::new(&costs);
        state.trades = vec![trade(30.0, 2.0), trade(-10.0, 4.0), trade(20.0, 6.0)];
        state.cash = 1040.0;
        let m = metrics(&state, &costs, 0, 86_400 * 365);
        assert_eq!((m["total_trades"].as_u64(), m["winning_trades"].as_u64()), (Some(3), Some(2)));
        assert!((m["win_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m["profit_factor"], json!(5.0));
        assert_eq!((m["largest_win"].clone(), m["largest_loss"].clone()), (json!(30.0), json!(-10.0)));
        assert_eq!(m["avg_holding_period"], json!(4.0));
        assert!((m["total_return_pct"].as_f64().unwrap() - 0.04).abs() < 1e-12);
        assert_eq!(m["calmar_ratio"], Value::Null, "no drawdown: undefined");
        state.trades.clear();
        let none = metrics(&state, &costs, 0, 0);
        for key in ["win_rate", "profit_factor", "avg_win", "largest_loss", "annualized_return", "sharpe_ratio"] {
            assert_eq!(none[key], Value::Null, "{key}");
        }
        state.curve = Curve { max_drawdown: 50.0, max_drawdown_pct: 0.05, ..Curve::default() };
        assert_eq!(metrics(&state, &costs, 0, 0)["recovery_factor"], json!(0.8));
    }
}
