//! ktrdr's model folder layout, as the training hosts write it: what a completed simulated
//! training leaves behind.

use std::path::Path;

use serde_json::{Value, json};

use super::SimSession;
use crate::time;

/// `{models_dir}/{strategy}/{timeframe}_v{N}` (N = the highest there + 1), written whole
/// under a temporary name and renamed into place; `{timeframe}_latest` then points at it.
pub(super) fn write(models_dir: &Path, s: &SimSession) -> std::io::Result<String> {
    let strategy_dir = models_dir.join(safe(&s.request.strategy));
    std::fs::create_dir_all(&strategy_dir)?;
    let timeframe = s.request.timeframes.first().cloned().unwrap_or_default();
    let prefix = format!("{timeframe}_v");
    let temp = strategy_dir.join(format!(".{}.{}.tmp", safe(&s.id), fastrand::u64(..)));
    std::fs::create_dir_all(&temp)?;
    let result = (|| {
        let metric = |key: &str| s.epochs.last().and_then(|e| e.get(key)).cloned().unwrap_or(Value::Null);
        let best =
            |key: &str| s.epochs.iter().filter_map(|e| e.get(key).and_then(Value::as_f64)).fold(f64::NAN, f64::max);
        let created_at = time::now().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
        let metadata = json!({
            "strategy_name": s.request.strategy, "symbol": s.request.symbols.first(), "timeframe": timeframe,
            "created_at": created_at, "is_trained": true, "model_type": s.request.model_type,
            "model_version": "pure_fuzzy_v1", "architecture_type": s.request.model_type, "input_size": 6,
            "pytorch_version": "simulated",
            "training_summary": { "epochs": s.epochs.len(), "final_accuracy": metric("train_accuracy"), "best_val_accuracy": best("val_accuracy") },
        });
        let metrics = json!({
            "epochs_trained": s.epochs.len(), "final_train_loss": metric("train_loss"),
            "final_train_accuracy": metric("train_accuracy"), "best_train_accuracy": best("train_accuracy"),
            "final_val_loss": metric("val_loss"), "final_val_accuracy": metric("val_accuracy"),
            "best_val_accuracy": best("val_accuracy"), "training_time": 0.0, "history": s.epochs,
            "test_accuracy": 0.81, "test_loss": 0.42, "precision": 0.8, "recall": 0.79, "f1_score": 0.795,
            "symbols": s.request.symbols,
        });
        std::fs::write(temp.join("metadata.json"), serde_json::to_vec_pretty(&metadata)?)?;
        std::fs::write(temp.join("metrics.json"), serde_json::to_vec_pretty(&metrics)?)?;
        std::fs::write(temp.join("model.pt"), b"simulated weights")?;
        // Two trainings of one strategy may finish at once: the loser takes the next number.
        for _ in 0..100 {
            let next = next_version(&strategy_dir, &prefix);
            let folder = format!("{prefix}{next}");
            if std::fs::rename(&temp, strategy_dir.join(&folder)).is_ok() {
                let latest = strategy_dir.join(format!("{timeframe}_latest"));
                let _ = std::fs::remove_file(&latest);
                #[cfg(unix)]
                std::os::unix::fs::symlink(&folder, &latest)?;
                return Ok(strategy_dir.join(folder).join("model.pt").display().to_string());
            }
        }
        Err(std::io::Error::other("no free model version"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

fn next_version(dir: &Path, prefix: &str) -> u32 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse::<u32>().ok())
        .max()
        .map_or(1, |n| n + 1)
}

/// A name usable as one path component.
fn safe(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') { c } else { '_' }).collect();
    if cleaned.is_empty() { "unnamed".to_owned() } else { cleaned }
}
