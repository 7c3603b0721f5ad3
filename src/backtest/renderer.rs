//! How a backtest words its progress: the worker's own words while it runs ("Backtesting EURUSD
//! 1h [2024-03-04 09:00:00+00:00]", as ktrdr's workers say it), and what it waits for before
//! ("waiting for a free backtest worker (1 busy) (EURUSD 1h)").

use serde_json::Value;

use crate::ops::{Renderer, StepView};

pub struct BacktestRenderer;

impl Renderer for BacktestRenderer {
    fn render(&self, step: &StepView<'_>) -> String {
        let text = |key: &str| step.context.get(key).and_then(Value::as_str).unwrap_or("");
        let what = format!("{} {}", text("symbol"), text("timeframe"));
        match step.detail {
            // The worker names the series and the bar itself.
            Some(detail) if detail.starts_with("Backtesting ") => detail.to_owned(),
            Some(detail) => format!("{detail} ({what})"),
            None => format!("{} ({what})", step.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    #[test]
    fn the_workers_words_or_what_it_waits_for() {
        let context: Map<String, Value> =
            serde_json::from_value(json!({ "symbol": "EURUSD", "timeframe": "1h" })).unwrap();
        let view = |detail| StepView { name: "Backtesting", number: 2, steps_total: 3, detail, context: &context };
        let running = "Backtesting EURUSD 1h [2024-03-04 09:00:00+00:00]";
        assert_eq!(BacktestRenderer.render(&view(Some(running))), running);
        assert_eq!(
            BacktestRenderer.render(&view(Some("waiting for a free backtest worker (1 busy)"))),
            "waiting for a free backtest worker (1 busy) (EURUSD 1h)"
        );
        assert_eq!(BacktestRenderer.render(&view(None)), "Backtesting (EURUSD 1h)");
    }
}
