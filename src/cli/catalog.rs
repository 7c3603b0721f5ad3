//! The catalog commands of the client: `strategies` (the list), `strategies validate NAME`
//! (exit 1 when the strategy does not validate) and `models`.

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Client, Outcome};
use crate::hosts::Call;

impl Client {
    /// `strategies`
    pub async fn strategies(&self) -> Outcome {
        let answer = match self.get("/api/v1/strategies".to_owned()).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if self.json {
            self.print(&answer["strategies"]);
            return Outcome::Completed;
        }
        let list = answer["strategies"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("No strategies found");
            return Outcome::Completed;
        }
        out!("{:<32} {:<10} {:<8} {:<5} {:<10}  DESCRIPTION", "STRATEGY", "STATUS", "SYMBOL", "TF", "VERSIONS");
        for s in &list {
            let versions: Vec<String> =
                s["available_versions"].as_array().into_iter().flatten().map(Value::to_string).collect();
            let about = s["error"].as_str().map_or_else(
                || s["description"].as_str().unwrap_or_default().to_owned(),
                |e| format!("unreadable: {e}"),
            );
            out!(
                "{:<32} {:<10} {:<8} {:<5} {:<10}  {about}",
                s["name"].as_str().unwrap_or_default(),
                s["training_status"].as_str().unwrap_or_default(),
                s["symbol"].as_str().unwrap_or_default(),
                s["timeframe"].as_str().unwrap_or_default(),
                if versions.is_empty() { "-".to_owned() } else { versions.join(",") },
            );
        }
        Outcome::Completed
    }

    /// `strategies validate NAME`: the issues, and exit 1 when there is an error among them.
    pub async fn validate_strategy(&self, name: &str) -> Outcome {
        let call = Call::post("cli", format!("/api/v1/strategies/validate/{name}"), &json!({}));
        let answer: Value = match self.host.json(&call, &CancellationToken::new()).await {
            Ok(answer) => answer,
            Err(e) => return self.unusable(e),
        };
        if self.json {
            self.print(&answer);
        } else {
            for issue in answer["issues"].as_array().into_iter().flatten() {
                let at = issue["details"]["path"].as_str().map(|p| format!(" [{p}]")).unwrap_or_default();
                out!(
                    "{}{at}: {}",
                    issue["severity"].as_str().unwrap_or_default(),
                    issue["message"].as_str().unwrap_or_default()
                );
            }
            out!("{}", answer["message"].as_str().unwrap_or_default());
        }
        if answer["valid"] == true { Outcome::Completed } else { Outcome::Failed }
    }

    /// `models`
    pub async fn models(&self) -> Outcome {
        let answer = match self.get("/api/v1/models".to_owned()).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if self.json {
            self.print(&answer["models"]);
            return Outcome::Completed;
        }
        let list = answer["models"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("No models found");
            return Outcome::Completed;
        }
        out!("{:<40} {:<8} {:<5} {:<10} {:>6} {:>6}", "MODEL", "SYMBOL", "TF", "CREATED", "TRAIN", "TEST");
        let percent = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |a| format!("{:.1}%", a * 100.0));
        for m in &list {
            let dash = |v: &Value| v.as_str().filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
            out!(
                "{:<40} {:<8} {:<5} {:<10} {:>6} {:>6}",
                m["model_name"].as_str().unwrap_or_default(),
                dash(&m["symbol"]),
                dash(&m["timeframe"]),
                m["created_at"].as_str().map_or("-", |c| &c[..c.len().min(10)]),
                percent(&m["training_accuracy"]),
                percent(&m["test_accuracy"]),
            );
        }
        Outcome::Completed
    }

    /// `workers`: the registered fleet, as ktrdr's `workers` command shows it.
    pub async fn workers(&self) -> Outcome {
        let answer = match self.get("/api/v1/workers".to_owned()).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if self.json {
            self.print(&answer);
            return Outcome::Completed;
        }
        let list = answer.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("No workers registered");
            return Outcome::Completed;
        }
        let id_width = list.iter().filter_map(|w| w["worker_id"].as_str()).map(str::len).max().unwrap_or(2).max(2);
        out!("{:<id_width$} {:<14} {:<24} {:<6} {:<30} {}", "ID", "TYPE", "STATUS", "GPU", "ENDPOINT", "OPERATION");
        for w in &list {
            let endpoint = w["endpoint_url"].as_str().unwrap_or_default();
            let endpoint = if endpoint.chars().count() > 30 {
                format!("{}...", endpoint.chars().take(27).collect::<String>())
            } else {
                endpoint.to_owned()
            };
            out!(
                "{:<id_width$} {:<14} {:<24} {:<6} {:<30} {}",
                w["worker_id"].as_str().unwrap_or_default(),
                w["worker_type"].as_str().unwrap_or_default(),
                w["status"].as_str().unwrap_or_default(),
                w["capabilities"]["gpu_type"].as_str().unwrap_or("-"),
                endpoint,
                w["current_operation_id"].as_str().unwrap_or("-"),
            );
        }
        Outcome::Completed
    }
}
