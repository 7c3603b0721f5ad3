//! The model inputs a v3 strategy resolves to (catalog.md §4): `nn_inputs` in order × their
//! timeframes (`"all"`: the training timeframes) × the fuzzy set's memberships in YAML order,
//! with ktrdr's feature ids.

use serde::Serialize;
use serde_json::Value;

use crate::catalog::validate::training_timeframes;

/// One model input.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Feature {
    /// `{tf}_{fuzzy_set}_{membership}`, or `{tf}_{indicator}_raw`.
    pub feature_id: String,
    pub timeframe: String,
    /// The fuzzy set, or `__raw__` for a raw indicator input.
    pub fuzzy_set: String,
    /// The membership, or `raw`.
    pub membership: String,
    pub indicator_id: String,
    /// `adx` of `adx_14.adx`; null for single-output indicators.
    pub indicator_output: Option<String>,
}

/// The features of a strategy that validated (references are assumed to resolve).
pub fn features(strategy: &Value) -> Vec<Feature> {
    let Some(root) = strategy.as_object() else { return Vec::new() };
    let training = training_timeframes(root);
    let split = |reference: &str| match reference.split_once('.') {
        Some((id, output)) => (id.to_owned(), Some(output.to_owned())),
        None => (reference.to_owned(), None),
    };
    let mut out = Vec::new();
    for input in root.get("nn_inputs").and_then(Value::as_array).into_iter().flatten() {
        let timeframes: Vec<String> = match input.get("timeframes") {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => training.clone(),
        };
        if let Some(set_id) = input.get("fuzzy_set").and_then(Value::as_str) {
            let set = root.get("fuzzy_sets").and_then(|s| s.get(set_id)).and_then(Value::as_object);
            let (indicator_id, indicator_output) =
                split(set.and_then(|s| s.get("indicator")).and_then(Value::as_str).unwrap_or_default());
            let memberships: Vec<&String> = set
                .into_iter()
                .flat_map(|s| s.keys())
                .filter(|k| !matches!(k.as_str(), "indicator" | "data_source" | "description"))
                .collect();
            for tf in &timeframes {
                for membership in &memberships {
                    out.push(Feature {
                        feature_id: format!("{tf}_{set_id}_{membership}"),
                        timeframe: tf.clone(),
                        fuzzy_set: set_id.to_owned(),
                        membership: (*membership).clone(),
                        indicator_id: indicator_id.clone(),
                        indicator_output: indicator_output.clone(),
                    });
                }
            }
        } else if let Some(raw) = input.get("raw_indicator").and_then(Value::as_str) {
            let (indicator_id, indicator_output) = split(raw);
            for tf in &timeframes {
                out.push(Feature {
                    feature_id: format!("{tf}_{raw}_raw"),
                    timeframe: tf.clone(),
                    fuzzy_set: "__raw__".to_owned(),
                    membership: "raw".to_owned(),
                    indicator_id: indicator_id.clone(),
                    indicator_output: indicator_output.clone(),
                });
            }
        }
    }
    out
}
