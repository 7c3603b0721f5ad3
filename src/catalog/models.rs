//! Trained-model folders (catalog.md §5), shared with the training hosts:
//! `{models_dir}/{strategy}/{timeframe}_v{N}/` (older `{symbol}_{timeframe}_v{N}`) with
//! `metadata.json` and `metrics.json`, and a `{timeframe}_latest` link to the newest. A folder's
//! two files are read once and reused while the folder is unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};

/// One model folder, read.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub strategy: String,
    pub folder: String,
    pub version: u32,
    pub symbol: String,
    pub timeframe: String,
    pub created_at: Option<String>,
    pub training_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// `{accuracy, precision, recall, f1_score}` of the test set, when `metrics.json` has them.
    pub test_metrics: Option<Value>,
}

/// A model as `GET /models` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// `{strategy}/{folder}`.
    pub model_id: String,
    pub model_name: String,
    pub symbol: String,
    pub timeframe: String,
    pub created_at: Option<String>,
    pub training_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub description: String,
}

/// The models folder, with what was read of it.
pub struct ModelFolders {
    dir: PathBuf,
    read: Mutex<HashMap<PathBuf, (SystemTime, Option<ModelEntry>)>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn json_file(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl ModelFolders {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, read: Mutex::new(HashMap::new()) }
    }

    /// Every model folder of one strategy (`_latest` links left out), oldest version first.
    fn of_strategy(&self, strategy: &str) -> Vec<ModelEntry> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(strategy)) else { return Vec::new() };
        let mut out: Vec<ModelEntry> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().contains("_latest"))
            .filter_map(|e| self.entry(strategy, &e.path()))
            .collect();
        out.sort_by_key(|m| m.version);
        out
    }

    /// One folder, from what was read while it is unchanged.
    fn entry(&self, strategy: &str, path: &Path) -> Option<ModelEntry> {
        let stamp = modified(path)?;
        if let Some((at, entry)) = self.read.lock().unwrap_or_else(|e| e.into_inner()).get(path)
            && *at == stamp
        {
            return entry.clone();
        }
        let entry = read_entry(strategy, path);
        self.read.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned(), (stamp, entry.clone()));
        entry
    }

    /// Whether any model folder exists for the strategy.
    pub fn has_any(&self, strategy: &str) -> bool {
        !self.of_strategy(strategy).is_empty()
    }

    /// The strategy's models trained on `symbol`/`timeframe` (ktrdr's versions), oldest first.
    pub fn versions(&self, strategy: &str, symbol: &str, timeframe: &str) -> Vec<ModelEntry> {
        self.of_strategy(strategy).into_iter().filter(|m| m.symbol == symbol && m.timeframe == timeframe).collect()
    }

    /// Every model, newest first.
    pub fn list(&self) -> Vec<ModelInfo> {
        let Ok(strategies) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut all: Vec<ModelEntry> = strategies
            .flatten()
            .filter(|e| e.path().is_dir())
            .flat_map(|e| self.of_strategy(&e.file_name().to_string_lossy()))
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.folder.cmp(&a.folder)));
        all.into_iter()
            .map(|m| ModelInfo {
                model_id: format!("{}/{}", m.strategy, m.folder),
                model_name: format!("{}/{}", m.strategy, m.folder),
                symbol: m.symbol,
                timeframe: m.timeframe,
                created_at: m.created_at,
                training_accuracy: m.training_accuracy,
                test_accuracy: m.test_accuracy,
                description: String::new(),
            })
            .collect()
    }
}

/// A folder with a `metadata.json` and a version after its last `_v`; `None` otherwise.
fn read_entry(strategy: &str, path: &Path) -> Option<ModelEntry> {
    let folder = path.file_name()?.to_string_lossy().into_owned();
    let version: u32 = folder.rsplit_once("_v")?.1.parse().ok()?;
    let metadata = json_file(&path.join("metadata.json"))?;
    let metrics = json_file(&path.join("metrics.json")).unwrap_or(Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let number = |key: &str| metrics.get(key).and_then(Value::as_f64);
    let test_metrics = number("test_accuracy").map(|accuracy| {
        json!({
            "accuracy": accuracy,
            "precision": number("precision"),
            "recall": number("recall"),
            "f1_score": number("f1_score"),
        })
    });
    Some(ModelEntry {
        strategy: strategy.to_owned(),
        version,
        symbol: text(&metadata, "symbol"),
        timeframe: text(&metadata, "timeframe"),
        created_at: metadata.get("created_at").and_then(Value::as_str).map(str::to_owned),
        training_accuracy: number("final_train_accuracy")
            .or_else(|| metadata.pointer("/training_summary/final_accuracy").and_then(Value::as_f64)),
        test_accuracy: number("test_accuracy"),
        test_metrics,
        folder,
    })
}
