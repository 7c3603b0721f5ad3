//! How a training words its progress (training.md §2):
//! `"Epoch 5/100 · Batch 40/78 (mlp on EURUSD [1h]) [5/100]"` — model type from the strategy,
//! the first two symbols and timeframes, then `(+N more)`.

use serde_json::{Map, Value};

use crate::ops::{Renderer, StepView};

pub struct TrainingRenderer;

/// `A, B (+3 more)`
fn first_two(list: Option<&Value>) -> String {
    let items: Vec<&str> =
        list.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let mut text = items.iter().take(2).copied().collect::<Vec<_>>().join(", ");
    if items.len() > 2 {
        text.push_str(&format!(" (+{} more)", items.len() - 2));
    }
    text
}

fn number(context: &Map<String, Value>, key: &str) -> Option<u64> {
    context.get(key).and_then(Value::as_u64)
}

impl Renderer for TrainingRenderer {
    fn render(&self, step: &StepView<'_>) -> String {
        let c = step.context;
        let model = c.get("model_type").and_then(Value::as_str).unwrap_or("model");
        let what = format!("({model} on {} [{}])", first_two(c.get("symbols")), first_two(c.get("timeframes")));
        let detail = step.detail.unwrap_or(step.name);
        match (number(c, "epoch"), number(c, "total_epochs")) {
            (Some(epoch), Some(total)) if epoch > 0 => format!("{detail} {what} [{epoch}/{total}]"),
            _ => format!("{detail} {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_message_reads_like_the_spec() {
        let context: Map<String, Value> = serde_json::from_value(json!({
            "model_type": "mlp", "symbols": ["EURUSD"], "timeframes": ["1h"], "epoch": 5, "total_epochs": 100,
        }))
        .unwrap();
        let view = StepView {
            name: "Training",
            number: 2,
            steps_total: 100,
            detail: Some("Epoch 5/100 · Batch 40/78"),
            context: &context,
        };
        assert_eq!(TrainingRenderer.render(&view), "Epoch 5/100 · Batch 40/78 (mlp on EURUSD [1h]) [5/100]");
        let many: Map<String, Value> = serde_json::from_value(json!({
            "model_type": "lstm", "symbols": ["A", "B", "C", "D"], "timeframes": ["1h", "4h", "1d"],
        }))
        .unwrap();
        let view = StepView {
            name: "Starting",
            number: 1,
            steps_total: 10,
            detail: Some("waiting for a free training host"),
            context: &many,
        };
        assert_eq!(
            TrainingRenderer.render(&view),
            "waiting for a free training host (lstm on A, B (+2 more) [1h, 4h (+1 more)])"
        );
    }
}
