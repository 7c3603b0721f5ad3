//! How a data load words its progress (data-load.md §4):
//! `"{step}: {detail} ({SYM} {tf}, {mode} mode) [{n}/7]"`.

use crate::ops::{Renderer, StepView};

pub struct DataRenderer;

impl Renderer for DataRenderer {
    fn render(&self, step: &StepView<'_>) -> String {
        let get = |key: &str| step.context.get(key).and_then(|v| v.as_str()).unwrap_or("?");
        let series = format!("({} {}, {} mode)", get("symbol"), get("timeframe"), get("mode"));
        match step.detail {
            Some(detail) => format!("{}: {detail} {series} [{}/{}]", step.name, step.number, step.steps_total),
            None => format!("{} {series} [{}/{}]", step.name, step.number, step.steps_total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    #[test]
    fn steps_read_like_the_spec() {
        let mut context = Map::new();
        for (k, v) in [("symbol", "AAPL"), ("timeframe", "1h"), ("mode", "tail")] {
            context.insert(k.into(), json!(v));
        }
        let view = StepView {
            name: "Downloading 3 segments from IB",
            number: 6,
            steps_total: 7,
            detail: Some("segment 2/3 2024-01-01 00:00 to 2024-01-31 00:00"),
            context: &context,
        };
        assert_eq!(
            DataRenderer.render(&view),
            "Downloading 3 segments from IB: segment 2/3 2024-01-01 00:00 to 2024-01-31 00:00 (AAPL 1h, tail mode) [6/7]"
        );
    }
}
