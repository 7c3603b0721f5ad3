//! Validation of v3 strategy files (catalog.md §3): their shape, the references between their
//! parts — each problem its own issue with the YAML path where it is — unknown indicator types,
//! and indicators nothing uses. Finds the mistakes before a GPU hour is spent on them.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::training::strategy::{selection, strings};

/// Indicator types a training host knows, lower case, sorted.
pub const KNOWN_INDICATORS: &[&str] = &[
    "adline",
    "adx",
    "aroon",
    "atr",
    "bollingerbands",
    "bollingerbandwidth",
    "cci",
    "cmf",
    "distancefromma",
    "donchianchannels",
    "ema",
    "fishertransform",
    "ichimoku",
    "keltnerchannels",
    "macd",
    "mfi",
    "momentum",
    "obv",
    "parabolicsar",
    "roc",
    "rsi",
    "rvi",
    "sma",
    "squeezeintensity",
    "stochastic",
    "supertrend",
    "volumeratio",
    "vwap",
    "williamsr",
    "zigzag",
];

/// The outputs of indicators that have several (`macd_12.signal`); the others have one.
const OUTPUTS: &[(&str, &[&str])] = &[
    ("adx", &["adx", "plus_di", "minus_di"]),
    ("aroon", &["up", "down", "oscillator"]),
    ("bollingerbands", &["upper", "middle", "lower"]),
    ("donchianchannels", &["upper", "middle", "lower"]),
    ("fishertransform", &["fisher", "signal"]),
    ("ichimoku", &["tenkan", "kijun", "senkou_a", "senkou_b", "chikou"]),
    ("keltnerchannels", &["upper", "middle", "lower"]),
    ("macd", &["line", "signal", "histogram"]),
    ("rvi", &["rvi", "signal"]),
    ("stochastic", &["k", "d"]),
    ("supertrend", &["trend", "direction"]),
];

const TIMEFRAMES: &[&str] = &["1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1w", "1M"];

/// One problem found.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Issue {
    /// `error` or `warning`.
    pub severity: &'static str,
    /// `structure`, `indicators`, `fuzzy_sets`, `nn_inputs`, `validation` (warnings), `system`.
    pub category: &'static str,
    pub message: String,
    /// `{"path": "fuzzy_sets.rsi.indicator"}`: where in the file.
    pub details: Option<Value>,
}

impl Issue {
    fn error(path: &str, message: String) -> Issue {
        // ktrdr's rule: the category is the first of these words the message contains.
        let category = if message.contains("indicator") {
            "indicators"
        } else if message.contains("fuzzy") {
            "fuzzy_sets"
        } else if message.contains("nn_input") {
            "nn_inputs"
        } else {
            "structure"
        };
        Issue { severity: "error", category, message, details: path_details(path) }
    }

    fn warning(path: &str, message: String) -> Issue {
        Issue { severity: "warning", category: "validation", message, details: path_details(path) }
    }

    pub fn is_error(&self) -> bool {
        self.severity == "error"
    }
}

fn path_details(path: &str) -> Option<Value> {
    (!path.is_empty()).then(|| serde_json::json!({ "path": path }))
}

/// ktrdr's summary line for a validation.
pub fn summary(name: &str, issues: &[Issue]) -> String {
    let errors = issues.iter().filter(|i| i.is_error()).count();
    let warnings = issues.len() - errors;
    match (errors, warnings) {
        (0, 0) => format!("Strategy '{name}' is valid"),
        (0, w) => format!("Strategy '{name}' is valid with {w} warning(s)"),
        (e, 0) => format!("Strategy '{name}' has {e} error(s)"),
        (e, w) => format!("Strategy '{name}' has {e} error(s) and {w} warning(s)"),
    }
}

/// Whether a strategy is written in v3 form (indicators and fuzzy sets as mappings, or explicit
/// `nn_inputs`) rather than an older one.
pub fn looks_like_v3(strategy: &Value) -> bool {
    strategy.get("nn_inputs").is_some()
        || (strategy.get("indicators").is_some_and(Value::is_object)
            && strategy.get("fuzzy_sets").is_some_and(Value::is_object))
}

/// Everything wrong with a parsed strategy, errors first, in the order of the file.
pub fn validate(strategy: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let Some(root) = strategy.as_object() else {
        return vec![Issue::error("", "Validation error in '': the strategy must be a YAML mapping".into())];
    };
    shape(root, &mut issues);
    if issues.is_empty() {
        references(root, &mut issues);
        if issues.is_empty() {
            unused_indicators(root, &mut issues);
        }
    }
    issues
}

fn shape_error(issues: &mut Vec<Issue>, path: &str, message: &str) {
    issues.push(Issue::error(path, format!("Validation error in '{path}': {message}")));
}

/// Step 1: required fields and their shapes (v1/v2 files stop here).
fn shape(root: &Map<String, Value>, issues: &mut Vec<Issue>) {
    for field in ["name", "training_data", "indicators", "fuzzy_sets", "nn_inputs", "model", "decisions", "training"] {
        if !root.contains_key(field) {
            issues.push(Issue::error(field, format!("Missing required field: {field}")));
        }
    }
    for field in ["training_data", "model", "decisions", "training"] {
        if let Some(v) = root.get(field)
            && !v.is_object()
        {
            shape_error(issues, field, "must be a mapping");
        }
    }
    if let Some(data) = root.get("training_data").and_then(Value::as_object) {
        selection_shape(data, "symbols", "symbol", issues);
        selection_shape(data, "timeframes", "timeframe", issues);
        if let Some(history) = data.get("history_required")
            && history.as_u64().is_none_or(|h| h < 50)
        {
            shape_error(issues, "training_data.history_required", "must be a whole number of at least 50");
        }
    }
    match root.get("indicators") {
        Some(Value::Object(indicators)) => {
            for (id, definition) in indicators {
                let path = format!("indicators.{id}");
                match definition.get("type") {
                    Some(Value::String(_)) if definition.is_object() => {}
                    _ => shape_error(issues, &path, "must be a mapping with a `type`"),
                }
            }
        }
        Some(_) => shape_error(issues, "indicators", "must be a mapping of indicator id to {type, parameters…}"),
        None => {}
    }
    match root.get("fuzzy_sets") {
        Some(Value::Object(sets)) => {
            for (id, set) in sets {
                fuzzy_set_shape(&format!("fuzzy_sets.{id}"), set, issues);
            }
        }
        Some(_) => shape_error(issues, "fuzzy_sets", "must be a mapping of fuzzy set id to {indicator, memberships…}"),
        None => {}
    }
    match root.get("nn_inputs") {
        Some(Value::Array(inputs)) => {
            for (i, input) in inputs.iter().enumerate() {
                nn_input_shape(&format!("nn_inputs[{i}]"), input, issues);
            }
        }
        Some(_) => shape_error(issues, "nn_inputs", "must be a list of {fuzzy_set | raw_indicator, timeframes}"),
        None => {}
    }
}

/// `symbols: {mode, symbol | symbols}` (and the timeframe twin).
fn selection_shape(data: &Map<String, Value>, key: &str, single: &str, issues: &mut Vec<Issue>) {
    let path = format!("training_data.{key}");
    match data.get(key) {
        None => issues.push(Issue::error(&path, format!("Missing required field: {path}"))),
        Some(Value::Object(s)) => {
            if !s.get("mode").is_some_and(Value::is_string) {
                shape_error(issues, &format!("{path}.mode"), "field required");
            }
            let one = s.get(single).is_some_and(Value::is_string);
            let many =
                s.get(key).or_else(|| s.get("list")).is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()));
            if !one && !many {
                shape_error(issues, &path, &format!("needs `{single}` or a non-empty `{key}` list"));
            }
        }
        Some(_) => shape_error(issues, &path, &format!("must be a mapping {{mode, {single} | {key}}}")),
    }
}

fn fuzzy_set_shape(path: &str, set: &Value, issues: &mut Vec<Issue>) {
    let Some(set) = set.as_object() else {
        return shape_error(issues, path, "must be a mapping {indicator, membership: [a, b, c]…}");
    };
    if !set.get("indicator").is_some_and(Value::is_string) {
        shape_error(issues, &format!("{path}.indicator"), "field required");
    }
    for (name, membership) in memberships(set) {
        let ok = match membership {
            Value::Array(points) => points.len() >= 3 && points.iter().all(Value::is_number),
            Value::Object(m) => {
                m.get("type").is_some_and(Value::is_string) && m.get("parameters").is_some_and(Value::is_array)
            }
            _ => false,
        };
        if !ok {
            shape_error(issues, &format!("{path}.{name}"), "a membership is [a, b, c] or {type, parameters}");
        }
    }
}

/// The memberships of a fuzzy set: every key but the set's own settings.
fn memberships(set: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    set.iter().filter(|(k, _)| !matches!(k.as_str(), "indicator" | "data_source" | "description"))
}

fn nn_input_shape(path: &str, input: &Value, issues: &mut Vec<Issue>) {
    let Some(input) = input.as_object() else {
        return shape_error(issues, path, "must be a mapping {fuzzy_set | raw_indicator, timeframes}");
    };
    if input.contains_key("fuzzy_set") == input.contains_key("raw_indicator") {
        shape_error(issues, path, "needs exactly one of `fuzzy_set` and `raw_indicator`");
    }
    match input.get("timeframes") {
        None | Some(Value::Array(_)) => {}
        Some(Value::String(all)) if all == "all" => {}
        Some(_) => shape_error(issues, &format!("{path}.timeframes"), "must be a list of timeframes or \"all\""),
    }
}

/// The timeframes the strategy trains on (read as a training reads them).
pub fn training_timeframes(root: &Map<String, Value>) -> Vec<String> {
    selection(root.get("training_data").and_then(|d| d.get("timeframes")), "timeframe", "timeframes")
}

/// Whether `reference` (`id` or `id.output`) names an indicator (and one of its outputs).
fn indicator_exists(indicators: &Map<String, Value>, reference: &str) -> bool {
    let (id, output) = reference.split_once('.').map_or((reference, None), |(i, o)| (i, Some(o)));
    let Some(definition) = indicators.get(id) else { return false };
    let Some(output) = output else { return true };
    let kind = definition.get("type").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    OUTPUTS.iter().any(|(k, outputs)| *k == kind && outputs.contains(&output))
}

fn listed(keys: impl Iterator<Item = String>) -> String {
    let keys: Vec<String> = keys.collect();
    if keys.is_empty() { "none".to_owned() } else { keys.join(", ") }
}

/// Step 2: what refers to what, each problem its own issue at its path.
fn references(root: &Map<String, Value>, issues: &mut Vec<Issue>) {
    let empty = Map::new();
    let indicators = root.get("indicators").and_then(Value::as_object).unwrap_or(&empty);
    let sets = root.get("fuzzy_sets").and_then(Value::as_object).unwrap_or(&empty);
    let available_indicators = || listed(indicators.keys().cloned());
    for (id, definition) in indicators {
        let kind = definition.get("type").and_then(Value::as_str).unwrap_or_default();
        if !KNOWN_INDICATORS.contains(&kind.to_ascii_lowercase().as_str()) {
            let path = format!("indicators.{id}.type");
            issues.push(Issue::error(
                &path,
                format!("{path}: unknown indicator type '{kind}'. Known types: {}", KNOWN_INDICATORS.join(", ")),
            ));
        }
    }
    let context: Vec<String> = root
        .get("training_data")
        .and_then(|d| d.get("context_data"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| c.as_str().or_else(|| c.get("name").and_then(Value::as_str)))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for (id, set) in sets {
        let path = format!("fuzzy_sets.{id}");
        let reference = set.get("indicator").and_then(Value::as_str).unwrap_or_default();
        if !indicator_exists(indicators, reference) {
            issues.push(Issue::error(
                &format!("{path}.indicator"),
                format!(
                    "{path}.indicator: '{reference}' not found in indicators. Available indicators: {}",
                    available_indicators()
                ),
            ));
        }
        if set.as_object().is_some_and(|s| memberships(s).next().is_none()) {
            issues.push(Issue::error(&path, format!("{path}: a fuzzy set needs at least one membership function")));
        }
        if let Some(source) = set.get("data_source").and_then(Value::as_str)
            && !context.iter().any(|c| c == source)
        {
            issues.push(Issue::error(
                &format!("{path}.data_source"),
                format!(
                    "{path}.data_source: '{source}' not found in training_data.context_data. Available: {}",
                    listed(context.iter().cloned())
                ),
            ));
        }
    }
    let timeframes = training_timeframes(root);
    for (i, input) in root.get("nn_inputs").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("nn_inputs[{i}]");
        if let Some(set) = input.get("fuzzy_set").and_then(Value::as_str)
            && !sets.contains_key(set)
        {
            issues.push(Issue::error(
                &format!("{path}.fuzzy_set"),
                format!(
                    "{path}.fuzzy_set: '{set}' not found in fuzzy_sets. Available fuzzy sets: {}",
                    listed(sets.keys().cloned())
                ),
            ));
        }
        if let Some(raw) = input.get("raw_indicator").and_then(Value::as_str)
            && !indicator_exists(indicators, raw)
        {
            issues.push(Issue::error(
                &format!("{path}.raw_indicator"),
                format!(
                    "{path}.raw_indicator: '{raw}' not found in indicators. Available indicators: {}",
                    available_indicators()
                ),
            ));
        }
        for tf in strings(input.get("timeframes").filter(|t| t.is_array())) {
            if !timeframes.contains(&tf) || !TIMEFRAMES.contains(&tf.as_str()) {
                issues.push(Issue::error(
                    &format!("{path}.timeframes"),
                    format!(
                        "{path}.timeframes: Invalid timeframe '{tf}'. Available timeframes: {}",
                        timeframes.join(", ")
                    ),
                ));
            }
        }
    }
    decisions(root, issues);
}

/// `decisions.output_format` and what regression needs.
fn decisions(root: &Map<String, Value>, issues: &mut Vec<Issue>) {
    let format = root.pointer_str("/decisions/output_format").unwrap_or("classification");
    match format {
        "classification" => {}
        "regression" => {
            for key in ["round_trip_cost", "min_edge_multiplier"] {
                let path = format!("decisions.cost_model.{key}");
                let value = root.get("decisions").and_then(|d| d.get("cost_model")).and_then(|c| c.get(key));
                if !value.and_then(Value::as_f64).is_some_and(|v| v > 0.0) {
                    issues.push(Issue::error(&path, format!("{path}: regression needs a positive {key}")));
                }
            }
            if let Some(loss) = root.pointer_str("/training/loss")
                && !matches!(loss, "huber" | "mse")
            {
                issues.push(Issue::error(
                    "training.loss",
                    format!("training.loss: '{loss}' is not a regression loss (huber or mse)"),
                ));
            }
        }
        other => issues.push(Issue::error(
            "decisions.output_format",
            format!("decisions.output_format: '{other}' must be classification or regression"),
        )),
    }
}

trait PointerStr {
    fn pointer_str(&self, pointer: &str) -> Option<&str>;
}

impl PointerStr for Map<String, Value> {
    fn pointer_str(&self, pointer: &str) -> Option<&str> {
        let mut parts = pointer.trim_start_matches('/').split('/');
        let first = self.get(parts.next()?)?;
        parts.try_fold(first, |v, p| v.get(p)).and_then(Value::as_str)
    }
}

/// Step 3: indicators no fuzzy set or raw input uses.
fn unused_indicators(root: &Map<String, Value>, issues: &mut Vec<Issue>) {
    let used: Vec<&str> = root
        .get("fuzzy_sets")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|sets| sets.values())
        .filter_map(|s| s.get("indicator").and_then(Value::as_str))
        .chain(
            root.get("nn_inputs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("raw_indicator").and_then(Value::as_str)),
        )
        .map(|r| r.split('.').next().unwrap_or(r))
        .collect();
    for id in root.get("indicators").and_then(Value::as_object).into_iter().flat_map(|i| i.keys()) {
        if !used.contains(&id.as_str()) {
            let path = format!("indicators.{id}");
            issues.push(Issue::warning(
                &path,
                format!("Indicator '{id}' is defined but not referenced by any fuzzy_set at {path}"),
            ));
        }
    }
}
