//! The strategy and model catalog (catalog.md): strategy files listed, inspected, validated and
//! resolved to model inputs, and the model folders trainings produced. Files are parsed once and
//! reused while unchanged (modification time and size), so listing hundreds of strategies and
//! thousands of models stays cheap; all disk work runs off the async threads.

pub mod features;
pub mod models;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::catalog::models::{ModelFolders, ModelInfo};

/// A strategy as the list shows it (catalog.md §1).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StrategyInfo {
    pub name: String,
    pub description: String,
    pub symbol: String,
    pub timeframe: String,
    /// Legacy files: as written; v3: `[{"id": "<key>", …definition}]`.
    #[schema(value_type = Vec<Object>)]
    pub indicators: Vec<Value>,
    #[schema(value_type = Object)]
    pub fuzzy_config: Value,
    /// `trained` when a model folder exists for it, else `untrained`.
    pub training_status: String,
    pub available_versions: Vec<u32>,
    pub latest_version: Option<u32>,
    pub latest_training_date: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub latest_metrics: Option<Value>,
    /// Why the file could not be read as a strategy; absent when it could.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A strategy file, parsed.
#[derive(Debug, Clone)]
pub struct StrategyFile {
    /// The file stem.
    pub stem: String,
    pub parsed: Result<Value, String>,
}

impl StrategyFile {
    /// `name` in the YAML, else the file stem.
    pub fn name(&self) -> String {
        self.parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("name"))
            .and_then(Value::as_str)
            .map_or_else(|| self.stem.clone(), str::to_owned)
    }
}

/// Why a strategy name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("Invalid strategy name: '{0}'")]
    Invalid(String),
    #[error("Strategy file not found: {0}.yaml")]
    NotFound(String),
}

#[derive(Default)]
struct Cache {
    strategies: HashMap<PathBuf, (SystemTime, u64, Arc<StrategyFile>)>,
}

/// The strategies folder and the models folder.
#[derive(Clone)]
pub struct Catalog {
    strategies_dir: PathBuf,
    models: Arc<ModelFolders>,
    cache: Arc<Mutex<Cache>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Catalog {
    pub fn new(strategies_dir: PathBuf, models_dir: PathBuf) -> Self {
        Self { strategies_dir, models: Arc::new(ModelFolders::new(models_dir)), cache: Arc::default() }
    }

    /// `{strategies_dir}/{name}.yaml`, refusing anything that could leave the folder: separators,
    /// `..`, absolute paths, and links pointing out of it.
    pub fn strategy_path(&self, name: &str) -> Result<PathBuf, NameError> {
        let plain = !name.is_empty()
            && name.len() <= 128
            && name != "."
            && name != ".."
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !name.starts_with('.');
        if !plain {
            return Err(NameError::Invalid(name.to_owned()));
        }
        let path = self.strategies_dir.join(format!("{name}.yaml"));
        let (Ok(real), Ok(dir)) = (path.canonicalize(), self.strategies_dir.canonicalize()) else {
            return Err(NameError::NotFound(name.to_owned()));
        };
        if !real.starts_with(&dir) {
            return Err(NameError::Invalid(name.to_owned()));
        }
        Ok(path)
    }

    /// One strategy file, parsed (from the cache while the file is unchanged).
    fn read(&self, path: &Path) -> Option<Arc<StrategyFile>> {
        let (modified, len) = stamp(path)?;
        if let Some((m, l, file)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).strategies.get(path)
            && *m == modified
            && *l == len
        {
            return Some(file.clone());
        }
        let stem = path.file_stem()?.to_string_lossy().into_owned();
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the file: {e}"))
            .and_then(|text| serde_yaml_ng::from_str::<Value>(&text).map_err(|e| format!("not valid YAML: {e}")))
            .and_then(|v| if v.is_object() { Ok(v) } else { Err("not a YAML mapping".to_owned()) });
        let file = Arc::new(StrategyFile { stem, parsed });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .strategies
            .insert(path.to_owned(), (modified, len, file.clone()));
        Some(file)
    }

    /// Every `*.yaml` of the strategies folder (not recursive), parsed, by file name.
    fn files(&self) -> Vec<Arc<StrategyFile>> {
        let Ok(entries) = std::fs::read_dir(&self.strategies_dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml") && p.is_file())
            .collect();
        paths.sort();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.strategies.retain(|p, _| paths.contains(p));
        drop(cache);
        paths.iter().filter_map(|p| self.read(p)).collect()
    }

    /// The strategies list (blocking: call from `spawn_blocking`).
    pub fn list(&self) -> Vec<StrategyInfo> {
        let files = self.files();
        files.iter().map(|f| self.info(f)).collect()
    }

    /// The parsed file of `name` (blocking).
    pub fn file(&self, name: &str) -> Result<Arc<StrategyFile>, NameError> {
        let path = self.strategy_path(name)?;
        self.read(&path).ok_or_else(|| NameError::NotFound(name.to_owned()))
    }

    /// The models list, newest first (blocking).
    pub fn models(&self) -> Vec<ModelInfo> {
        self.models.list()
    }

    fn info(&self, file: &StrategyFile) -> StrategyInfo {
        let name = file.name();
        let (value, error) = match &file.parsed {
            Ok(v) => (v.clone(), None),
            Err(e) => (Value::Null, Some(e.clone())),
        };
        let first = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        let v3 = |key: &str, single: &str| {
            let s = value.get("training_data").and_then(|d| d.get(key));
            let one = first(s.and_then(|s| s.get(single)));
            if one.is_empty() { first(s.and_then(|s| s.get(key).or_else(|| s.get("list")))) } else { one }
        };
        let legacy = |key: &str| first(value.get("data").and_then(|d| d.get(key)));
        let pick = |a: String, b: String| if a.is_empty() { b } else { a };
        let symbol = pick(legacy("symbols"), v3("symbols", "symbol"));
        let timeframe = pick(legacy("timeframes"), v3("timeframes", "timeframe"));
        let indicators = match value.get("indicators") {
            Some(Value::Array(list)) => list.clone(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(id, definition)| {
                    let mut entry = Map::new();
                    entry.insert("id".into(), json!(id));
                    if let Some(fields) = definition.as_object() {
                        entry.extend(fields.clone());
                    }
                    Value::Object(entry)
                })
                .collect(),
            _ => Vec::new(),
        };
        let versions = self.models.versions(&name, &symbol, &timeframe);
        let latest = versions.last();
        StrategyInfo {
            description: value.get("description").and_then(Value::as_str).unwrap_or_default().to_owned(),
            symbol,
            timeframe,
            indicators,
            fuzzy_config: value.get("fuzzy_sets").cloned().filter(Value::is_object).unwrap_or_else(|| json!({})),
            training_status: if self.models.has_any(&name) { "trained" } else { "untrained" }.to_owned(),
            available_versions: versions.iter().map(|m| m.version).collect(),
            latest_version: latest.map(|m| m.version),
            latest_training_date: latest.and_then(|m| m.created_at.clone()),
            latest_metrics: latest.and_then(|m| m.test_metrics.clone()),
            error,
            name,
        }
    }
}
