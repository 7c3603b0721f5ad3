//! Trained-model folders (catalog.md §5), shared with the training hosts:
//! `{models_dir}/{strategy}/{timeframe}_v{N}/` (older `{symbol}_{timeframe}_v{N}`) with
//! `metadata.json` and `metrics.json`, and a `{timeframe}_latest` link to the newest. A folder's
//! two files are read once and reused while the folder is unchanged.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// `metrics.json` was there (a host writes it after `metadata.json`).
    pub has_metrics: bool,
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

/// Model folders of one strategy, oldest version first.
pub type Models = Arc<Vec<Arc<ModelEntry>>>;

/// A model folder as read, by the folder's modification time (`None`: not a model folder).
type ReadFolder = (SystemTime, Option<Arc<ModelEntry>>);

/// The models folder, with what was read of it.
pub struct ModelFolders {
    dir: PathBuf,
    /// Per model folder, by its modification time.
    read: Mutex<HashMap<PathBuf, ReadFolder>>,
    /// Per strategy folder, by its modification time — kept only once every model folder in it
    /// was complete (both files there), since a host may create a folder and fill it later.
    listed: Mutex<HashMap<PathBuf, (SystemTime, Models)>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn json_file(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl ModelFolders {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, read: Mutex::new(HashMap::new()), listed: Mutex::new(HashMap::new()) }
    }

    /// Every model folder of one strategy (`_latest` links left out), oldest version first.
    pub fn of_strategy(&self, strategy: &str) -> Models {
        let dir = self.dir.join(strategy);
        let Some(stamp) = modified(&dir) else { return Arc::default() };
        if let Some((at, list)) = self.listed.lock().get(&dir)
            && *at == stamp
        {
            return list.clone();
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { return Arc::default() };
        // Model folders by name: `…_v{N}`, not the `_latest` link.
        let folders: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.contains("_latest") && version_of(&name).is_some()
            })
            .map(|e| e.path())
            .collect();
        let mut out: Vec<Arc<ModelEntry>> = folders.iter().filter_map(|path| self.entry(strategy, path)).collect();
        out.sort_by_key(|m| m.version);
        let complete = out.len() == folders.len() && out.iter().all(|m| m.has_metrics);
        let out = Arc::new(out);
        if complete {
            self.listed.lock().insert(dir, (stamp, out.clone()));
        }
        out
    }

    /// One folder, from what was read while it is unchanged.
    fn entry(&self, strategy: &str, path: &Path) -> Option<Arc<ModelEntry>> {
        let stamp = modified(path)?;
        if let Some((at, entry)) = self.read.lock().get(path)
            && *at == stamp
        {
            return entry.clone();
        }
        let entry = read_entry(strategy, path).map(Arc::new);
        self.read.lock().insert(path.to_owned(), (stamp, entry.clone()));
        entry
    }

    /// Every model, newest first.
    pub fn list(&self) -> Vec<ModelInfo> {
        let Ok(strategies) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut all: Vec<Arc<ModelEntry>> = strategies
            .flatten()
            .filter(|e| e.path().is_dir())
            .flat_map(|e| self.of_strategy(&e.file_name().to_string_lossy()).iter().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.folder.cmp(&a.folder)));
        all.into_iter()
            .map(|m| ModelInfo {
                model_id: format!("{}/{}", m.strategy, m.folder),
                model_name: format!("{}/{}", m.strategy, m.folder),
                symbol: m.symbol.clone(),
                timeframe: m.timeframe.clone(),
                created_at: m.created_at.clone(),
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
    let version = version_of(&folder)?;
    let metadata = json_file(&path.join("metadata.json"))?;
    let metrics = json_file(&path.join("metrics.json"));
    let has_metrics = metrics.is_some();
    let metrics = metrics.unwrap_or(Value::Null);
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
        has_metrics,
        folder,
    })
}

/// N of a `…_v{N}` folder name.
fn version_of(folder: &str) -> Option<u32> {
    folder.rsplit_once("_v")?.1.parse().ok()
}
