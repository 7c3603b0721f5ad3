//! Strategies: `{strategies_dir}/{name}.yaml`, resolved from a validated name (never a path),
//! parsed as a YAML mapping, and read for what a training needs — symbols and timeframes (ktrdr's
//! `training_data` modes, or older top-level lists), the epoch count and the model type.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::invalid::Invalid;

/// A strategy file, read.
#[derive(Debug, Clone)]
pub struct Strategy {
    pub name: String,
    /// The file's text, sent unchanged to the operations-generation host.
    pub yaml: String,
    /// The same, parsed (validated before a training starts).
    pub parsed: Value,
    pub symbols: Vec<String>,
    pub timeframes: Vec<String>,
    pub epochs: Option<u32>,
    pub model_type: String,
}

/// `[A-Za-z0-9_-]{1,64}`.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "strategy_name",
            format!("strategy_name `{name}` must be 1 to 64 letters, digits, '_' or '-' (a name, not a path)"),
        ))
    }
}

pub(crate) fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// `{mode: single, symbol: X}` / `{mode: multi_symbol, symbols: [..]}` (or `list: [..]`), and
/// the timeframe twins, or a plain list.
pub(crate) fn selection(value: Option<&Value>, single_key: &str, plural_key: &str) -> Vec<String> {
    match value {
        Some(Value::Object(map)) => [single_key, plural_key, "list"]
            .iter()
            .map(|key| strings(map.get(*key)))
            .find(|found| !found.is_empty())
            .unwrap_or_default(),
        other => strings(other),
    }
}

impl Strategy {
    /// Parses a strategy's text.
    pub fn parse(name: &str, yaml: String) -> Result<Strategy, Invalid> {
        let value: Value = serde_yaml_ng::from_str(&yaml)
            .map_err(|e| Invalid::new("strategy_name", format!("strategy `{name}` is not valid YAML: {e}")))?;
        if !value.is_object() {
            return Err(Invalid::new("strategy_name", format!("strategy `{name}` must be a YAML mapping")));
        }
        let data = value.get("training_data");
        let mut symbols = selection(data.and_then(|d| d.get("symbols")), "symbol", "symbols");
        if symbols.is_empty() {
            symbols = strings(value.get("symbols"));
        }
        let mut timeframes = selection(data.and_then(|d| d.get("timeframes")), "timeframe", "timeframes");
        if timeframes.is_empty() {
            timeframes = strings(value.get("timeframes"));
        }
        let epochs = value
            .pointer("/training/epochs")
            .or_else(|| value.pointer("/model/training/epochs"))
            .and_then(Value::as_u64)
            .map(|e| e as u32);
        let model_type = value.pointer("/model/type").and_then(Value::as_str).unwrap_or("mlp").to_owned();
        Ok(Strategy { name: name.to_owned(), yaml, parsed: value, symbols, timeframes, epochs, model_type })
    }

    /// Reads `{dir}/{name}.yaml`; a missing file is `STRATEGY_NOT_FOUND`, one that resolves
    /// outside the folder (a link) `INVALID_STRATEGY_NAME` (400).
    pub fn load(dir: &Path, name: &str) -> Result<Strategy, Invalid> {
        validate_name(name)?;
        let not_found = || {
            Invalid::new("strategy_name", format!("strategy `{name}` was not found in the strategies folder"))
                .code("STRATEGY_NOT_FOUND")
        };
        let path = match resolve_file(dir, name) {
            Resolved::Inside(path) => path,
            Resolved::Missing => return Err(not_found()),
            Resolved::Outside => {
                return Err(Invalid::new(
                    "strategy_name",
                    format!("strategy `{name}` links outside the strategies folder: refused"),
                )
                .code(OUTSIDE_FOLDER));
            }
        };
        let yaml = std::fs::read_to_string(&path).map_err(|_| not_found())?;
        Self::parse(name, yaml)
    }
}

/// The code (and 400) of a strategy that resolves outside the strategies folder.
pub const OUTSIDE_FOLDER: &str = "INVALID_STRATEGY_NAME";

/// Where `{dir}/{name}.yaml` really is: inside the folder, outside it (through a link), or nowhere.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    Inside(PathBuf),
    Outside,
    Missing,
}

/// The one check of every user of strategy files (list, get, validate, features, training
/// start): the file, links followed, must be a file inside the strategies folder. `name` must
/// already be a plain name (no separators).
pub fn resolve_file(dir: &Path, name: &str) -> Resolved {
    let path = dir.join(format!("{name}.yaml"));
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(real), Ok(dir)) if real.starts_with(&dir) && real.is_file() => Resolved::Inside(path),
        (Ok(real), Ok(dir)) if !real.starts_with(&dir) => Resolved::Outside,
        _ => Resolved::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_strategy_shapes_name_symbols_timeframes_epochs_and_model() {
        let modern = Strategy::parse(
            "a",
            "training_data:\n  symbols: {mode: multi_symbol, list: [EURUSD, GBPUSD]}\n  timeframes: {mode: single, timeframe: '1h'}\nmodel: {type: lstm, training: {epochs: 7}}\n".into(),
        )
        .unwrap();
        assert_eq!((modern.symbols, modern.timeframes), (vec!["EURUSD".into(), "GBPUSD".into()], vec!["1h".into()]));
        assert_eq!((modern.epochs, modern.model_type.as_str()), (Some(7), "lstm"));
        let old =
            Strategy::parse("b", "symbols: [AAPL]\ntimeframes: [1d, 1h]\ntraining: {epochs: 3}\n".into()).unwrap();
        assert_eq!(
            (old.symbols.len(), old.timeframes.len(), old.epochs, old.model_type.as_str()),
            (1, 2, Some(3), "mlp")
        );
        assert!(Strategy::parse("c", "- just\n- a list\n".into()).is_err());
        assert!(Strategy::parse("d", "model: [unclosed".into()).is_err());
    }

    #[test]
    fn names_are_names_not_paths_and_the_example_ships() {
        for bad in ["../secret", "a/b", "", "x.yaml", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("strategies");
        let example = Strategy::load(&dir, "example_mlp").unwrap();
        assert_eq!(
            (example.symbols, example.timeframes, example.epochs),
            (vec!["EURUSD".into()], vec!["1h".into()], Some(10))
        );
        assert_eq!(Strategy::load(&dir, "nope").unwrap_err().code, "STRATEGY_NOT_FOUND");
    }
}
