//! The strategy and model catalog (catalog.md): strategy files listed, inspected, validated and
//! resolved to model inputs, and the model folders trainings produced. Files are parsed once and
//! reused while unchanged (modification time and size), so listing hundreds of strategies and
//! thousands of models stays cheap; all disk work runs off the async threads.

pub mod features;
pub mod models;
pub mod validate;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::catalog::models::{ModelFolders, ModelInfo};
use crate::training::strategy::{Resolved, resolve_file};

/// What a strategy file says of itself: the part of a list entry that depends on the file only.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StrategyBase {
    pub name: String,
    pub description: String,
    pub symbol: String,
    pub timeframe: String,
    /// Legacy files: as written; v3: `[{"id": "<key>", …definition}]`.
    #[schema(value_type = Vec<Object>)]
    pub indicators: Vec<Value>,
    #[schema(value_type = Object)]
    pub fuzzy_config: Value,
    /// Why the file could not be read as a strategy; absent when it could.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the models folder says of a strategy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StrategyModels {
    /// `trained` when a model folder exists for it, else `untrained`.
    pub training_status: &'static str,
    pub available_versions: Vec<u32>,
    pub latest_version: Option<u32>,
    pub latest_training_date: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub latest_metrics: Option<Value>,
}

/// A strategy as the list shows it (catalog.md §1).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StrategyInfo {
    #[serde(flatten)]
    pub base: StrategyBase,
    #[serde(flatten)]
    pub models: StrategyModels,
}

/// A list entry borrowing the file's part from the cache (the list is serialised without copying it).
#[derive(Serialize)]
struct StrategyRow<'a> {
    #[serde(flatten)]
    base: &'a StrategyBase,
    #[serde(flatten)]
    models: StrategyModels,
}

/// A strategy file, parsed.
#[derive(Debug, Clone)]
pub struct StrategyFile {
    pub parsed: Result<Value, String>,
    /// Its list entry's own part, worked out once.
    pub base: StrategyBase,
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
        match resolve_file(&self.strategies_dir, name) {
            Resolved::Inside(path) => Ok(path),
            Resolved::Outside => Err(NameError::Invalid(name.to_owned())),
            Resolved::Missing => Err(NameError::NotFound(name.to_owned())),
        }
    }

    /// One strategy file, parsed (from the cache while the file is unchanged).
    fn read(&self, path: &Path) -> Option<Arc<StrategyFile>> {
        let (modified, len) = stamp(path)?;
        self.read_stamped(path, modified, len)
    }

    fn read_stamped(&self, path: &Path, modified: SystemTime, len: u64) -> Option<Arc<StrategyFile>> {
        if let Some((m, l, file)) = self.cache.lock().strategies.get(path)
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
        let base = base(&stem, &parsed);
        let file = Arc::new(StrategyFile { parsed, base });
        self.cache.lock().strategies.insert(path.to_owned(), (modified, len, file.clone()));
        Some(file)
    }

    /// Every `*.yaml` of the strategies folder (not recursive), parsed, by file name.
    fn files(&self) -> Vec<Arc<StrategyFile>> {
        let Ok(entries) = std::fs::read_dir(&self.strategies_dir) else { return Vec::new() };
        // One stat per file (through links, as reading it does); what resolves outside the
        // folder is not listed.
        let mut found: Vec<(PathBuf, SystemTime, u64)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .filter(|p| {
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                matches!(resolve_file(&self.strategies_dir, &name), Resolved::Inside(_))
            })
            .filter_map(|p| {
                let meta = std::fs::metadata(&p).ok().filter(std::fs::Metadata::is_file)?;
                Some((p, meta.modified().ok()?, meta.len()))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let present: std::collections::HashSet<&PathBuf> = found.iter().map(|f| &f.0).collect();
        self.cache.lock().strategies.retain(|p, _| present.contains(p));
        found.iter().filter_map(|(p, modified, len)| self.read_stamped(p, *modified, *len)).collect()
    }

    /// The strategies list (blocking: call from `spawn_blocking`).
    pub fn list(&self) -> Vec<StrategyInfo> {
        self.files().iter().map(|f| StrategyInfo { base: f.base.clone(), models: self.models_of(&f.base) }).collect()
    }

    /// The strategies list as the JSON answer, serialised from the cache (blocking).
    pub fn list_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Answer<'a> {
            success: bool,
            strategies: Vec<StrategyRow<'a>>,
        }
        let files = self.files();
        let strategies = files.iter().map(|f| StrategyRow { base: &f.base, models: self.models_of(&f.base) }).collect();
        serde_json::to_vec(&Answer { success: true, strategies }).expect("the list serialises")
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

    /// What the models folder holds for a strategy: ktrdr's versions are the models trained on
    /// the strategy's own symbol and timeframe.
    fn models_of(&self, base: &StrategyBase) -> StrategyModels {
        let all = self.models.of_strategy(&base.name);
        let versions: Vec<_> =
            all.iter().filter(|m| m.symbol == base.symbol && m.timeframe == base.timeframe).collect();
        let latest = versions.last();
        StrategyModels {
            training_status: if all.is_empty() { "untrained" } else { "trained" },
            available_versions: versions.iter().map(|m| m.version).collect(),
            latest_version: latest.map(|m| m.version),
            latest_training_date: latest.and_then(|m| m.created_at.clone()),
            latest_metrics: latest.and_then(|m| m.test_metrics.clone()),
        }
    }
}

/// A file's part of its list entry: `name` (the YAML's, else the file stem), description,
/// symbol and timeframe (legacy `data` lists, else v3 `training_data`), indicators, fuzzy sets.
fn base(stem: &str, parsed: &Result<Value, String>) -> StrategyBase {
    let null = Value::Null;
    let (value, error) = match parsed {
        Ok(v) => (v, None),
        Err(e) => (&null, Some(e.clone())),
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
    StrategyBase {
        name: value.get("name").and_then(Value::as_str).map_or_else(|| stem.to_owned(), str::to_owned),
        description: value.get("description").and_then(Value::as_str).unwrap_or_default().to_owned(),
        symbol: pick(legacy("symbols"), v3("symbols", "symbol")),
        timeframe: pick(legacy("timeframes"), v3("timeframes", "timeframe")),
        indicators,
        fuzzy_config: value.get("fuzzy_sets").cloned().filter(Value::is_object).unwrap_or_else(|| json!({})),
        error,
    }
}
