//! The strategy and model catalog end to end: the shipped strategies validate, every kind of
//! broken strategy yields exactly its issue at its path, features come in ktrdr's order, names
//! cannot leave the folder, and a training run by the simulator shows up as a trained strategy
//! and a model.

use crate::common;

use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};

struct Rig {
    app: TestApp,
    strategies: tempfile::TempDir,
    models: tempfile::TempDir,
}

async fn rig() -> Rig {
    let strategies = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
    for entry in std::fs::read_dir(shipped).unwrap().flatten() {
        std::fs::copy(entry.path(), strategies.path().join(entry.file_name())).unwrap();
    }
    let (s, m) = (strategies.path().to_owned(), models.path().to_owned());
    let app = TestApp::spawn_with_sim(move |c| {
        c.training.strategies_dir = s;
        c.training.models_dir = m;
        c.training.poll_min = ktrdr_ops::time::HumanDuration(Duration::from_millis(20));
        c.sim.training_pace_ms = 2;
    })
    .await;
    Rig { app, strategies, models }
}

impl Rig {
    fn write(&self, name: &str, yaml: &str) {
        std::fs::write(self.strategies.path().join(format!("{name}.yaml")), yaml).unwrap();
    }

    async fn validate(&self, name: &str) -> (u16, Value) {
        self.app.post(&format!("/api/v1/strategies/validate/{name}"), json!({})).await
    }
}

/// A valid v3 strategy to break one way at a time.
const GOOD: &str = r#"
name: good
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: multi_timeframe, timeframes: ["1h", "4h"]}
  history_required: 100
indicators:
  rsi_14: {type: rsi, period: 14}
  macd_1: {type: macd, fast_period: 12, slow_period: 26, signal_period: 9}
fuzzy_sets:
  rsi_momentum:
    indicator: rsi_14
    oversold: [0, 25, 40]
    overbought: [60, 75, 100]
  macd_signal:
    indicator: macd_1.histogram
    negative: [-1, -0.5, 0]
    positive: [0, 0.5, 1]
nn_inputs:
  - fuzzy_set: rsi_momentum
    timeframes: all
  - fuzzy_set: macd_signal
    timeframes: ["4h"]
model: {type: mlp}
decisions: {output_format: classification}
training: {epochs: 3}
"#;

#[tokio::test]
async fn every_shipped_strategy_validates_and_a_sound_one_has_no_issue() {
    let rig = rig().await;
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
    let mut count = 0;
    for entry in std::fs::read_dir(shipped).unwrap().flatten() {
        let name = entry.path().file_stem().unwrap().to_string_lossy().into_owned();
        let (status, answer) = rig.validate(&name).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["valid"], true, "{name}: {answer}");
        assert_eq!(answer["issues"], json!([]), "{name}: {answer}");
        assert_eq!(answer["message"], format!("Strategy '{name}' is valid"));
        count += 1;
    }
    assert!(count >= 1);
    rig.write("good", GOOD);
    let (_, answer) = rig.validate("good").await;
    assert_eq!((answer["valid"].clone(), answer["issues"].clone()), (json!(true), json!([])), "{answer}");
    let known = answer["available_indicators"].as_array().unwrap();
    assert!(known.iter().any(|k| k == "rsi") && known.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
}

#[tokio::test]
async fn each_broken_strategy_yields_exactly_its_issue_at_its_path() {
    let rig = rig().await;
    // (what is broken, the change, [(severity, path, start of the message)])
    type Expected<'a> = Vec<(&'a str, &'a str, &'a str)>;
    let cases: Vec<(&str, String, Expected)> = vec![
        (
            "a required part is missing",
            GOOD.replace("decisions: {output_format: classification}\n", ""),
            vec![("error", "decisions", "Missing required field: decisions")],
        ),
        (
            "indicators written as a list (v1/v2)",
            GOOD.replace(
                "  rsi_14: {type: rsi, period: 14}\n  macd_1: {type: macd, fast_period: 12, slow_period: 26, signal_period: 9}\n",
                "  - {name: rsi, period: 14}\n",
            ),
            vec![("error", "indicators", "Validation error in 'indicators': must be a mapping")],
        ),
        (
            "too little history",
            GOOD.replace("history_required: 100", "history_required: 10"),
            vec![("error", "training_data.history_required", "Validation error in 'training_data.history_required'")],
        ),
        (
            "an input with both a fuzzy set and a raw indicator",
            GOOD.replace("  - fuzzy_set: macd_signal\n", "  - fuzzy_set: macd_signal\n    raw_indicator: rsi_14\n"),
            vec![("error", "nn_inputs[1]", "Validation error in 'nn_inputs[1]': needs exactly one")],
        ),
        (
            "a fuzzy set on an indicator that does not exist",
            GOOD.replace("indicator: rsi_14", "indicator: rsi_99"),
            vec![(
                "error",
                "fuzzy_sets.rsi_momentum.indicator",
                "fuzzy_sets.rsi_momentum.indicator: 'rsi_99' not found in indicators. Available indicators: rsi_14, macd_1",
            )],
        ),
        (
            "an output the indicator does not have",
            GOOD.replace("macd_1.histogram", "macd_1.nonsense"),
            vec![("error", "fuzzy_sets.macd_signal.indicator", "fuzzy_sets.macd_signal.indicator: 'macd_1.nonsense'")],
        ),
        (
            "an input on a fuzzy set that does not exist",
            GOOD.replace("  - fuzzy_set: rsi_momentum", "  - fuzzy_set: rsi_speed"),
            vec![("error", "nn_inputs[0].fuzzy_set", "nn_inputs[0].fuzzy_set: 'rsi_speed' not found in fuzzy_sets")],
        ),
        (
            "an input on a timeframe the strategy does not train on",
            GOOD.replace("timeframes: [\"4h\"]\nmodel", "timeframes: [\"1d\"]\nmodel"),
            vec![(
                "error",
                "nn_inputs[1].timeframes",
                "nn_inputs[1].timeframes: Invalid timeframe '1d'. Available timeframes: 1h, 4h",
            )],
        ),
        (
            "a fuzzy set without memberships",
            GOOD.replace("    negative: [-1, -0.5, 0]\n    positive: [0, 0.5, 1]\n", ""),
            vec![("error", "fuzzy_sets.macd_signal", "fuzzy_sets.macd_signal: a fuzzy set needs at least one membership")],
        ),
        (
            "an indicator type nobody knows",
            GOOD.replace("{type: rsi, period: 14}", "{type: rsx, period: 14}"),
            vec![("error", "indicators.rsi_14.type", "indicators.rsi_14.type: unknown indicator type 'rsx'. Known types: adline")],
        ),
        (
            "regression without a cost model",
            GOOD.replace("{output_format: classification}", "{output_format: regression}"),
            vec![
                ("error", "decisions.cost_model.round_trip_cost", "decisions.cost_model.round_trip_cost: regression needs"),
                ("error", "decisions.cost_model.min_edge_multiplier", "decisions.cost_model.min_edge_multiplier"),
            ],
        ),
        (
            "an unknown output format",
            GOOD.replace("{output_format: classification}", "{output_format: ranking}"),
            vec![("error", "decisions.output_format", "decisions.output_format: 'ranking' must be")],
        ),
        (
            "two broken references: two issues, not one",
            GOOD.replace("indicator: rsi_14", "indicator: rsi_99").replace("  - fuzzy_set: rsi_momentum", "  - fuzzy_set: nope"),
            vec![
                ("error", "fuzzy_sets.rsi_momentum.indicator", "fuzzy_sets.rsi_momentum.indicator: 'rsi_99'"),
                ("error", "nn_inputs[0].fuzzy_set", "nn_inputs[0].fuzzy_set: 'nope'"),
            ],
        ),
        (
            "an indicator nothing uses (a warning)",
            GOOD.replace("  macd_1:", "  ema_9: {type: ema, period: 9}\n  macd_1:"),
            vec![(
                "warning",
                "indicators.ema_9",
                "Indicator 'ema_9' is defined but not referenced by any fuzzy_set at indicators.ema_9",
            )],
        ),
    ];
    for (i, (what, yaml, expected)) in cases.iter().enumerate() {
        let name = format!("broken_{i}");
        rig.write(&name, yaml);
        let (status, answer) = rig.validate(&name).await;
        assert_eq!(status, 200, "{what}: {answer}");
        let issues = answer["issues"].as_array().unwrap();
        assert_eq!(issues.len(), expected.len(), "{what}: {answer}");
        for (issue, (severity, path, message)) in issues.iter().zip(expected) {
            assert_eq!(issue["severity"], *severity, "{what}: {issue}");
            assert_eq!(issue["details"]["path"], *path, "{what}: {issue}");
            let text = issue["message"].as_str().unwrap();
            assert!(text.starts_with(message), "{what}: `{text}` does not start with `{message}`");
        }
        let errors = expected.iter().filter(|e| e.0 == "error").count();
        assert_eq!(answer["valid"], errors == 0, "{what}: {answer}");
        let summary = answer["message"].as_str().unwrap();
        if errors == 0 {
            assert_eq!(summary, format!("Strategy '{name}' is valid with 1 warning(s)"));
        } else {
            assert_eq!(summary, format!("Strategy '{name}' has {errors} error(s)"));
        }
    }
}

#[tokio::test]
async fn the_list_shows_v3_strategies_and_unreadable_files_and_names_cannot_leave_the_folder() {
    let rig = rig().await;
    rig.write("good", GOOD);
    rig.write("garbled", "name: [unclosed");
    for path in ["/api/v1/strategies", "/api/v1/strategies/"] {
        let (status, answer) = rig.app.get(path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let list = answer["strategies"].as_array().unwrap();
        let good = list.iter().find(|s| s["name"] == "good").expect("v3 strategies are listed");
        assert_eq!((good["symbol"].as_str(), good["timeframe"].as_str()), (Some("EURUSD"), Some("1h")));
        assert_eq!(good["indicators"][0], json!({ "id": "rsi_14", "type": "rsi", "period": 14 }));
        assert_eq!(good["training_status"], "untrained");
        assert!(good.get("training_data").is_none());
        let garbled = list.iter().find(|s| s["name"] == "garbled").expect("unreadable files are listed");
        assert!(garbled["error"].as_str().unwrap().contains("not valid YAML"), "{garbled}");
    }
    let (status, one) = rig.app.get("/api/v1/strategies/good").await;
    assert_eq!((status, one["name"].as_str()), (200, Some("good")));
    let (status, missing) = rig.app.get("/api/v1/strategies/good?version=3").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["message"], "Version 3 not found for strategy 'good'");

    std::fs::write(rig.strategies.path().parent().unwrap().join("outside.yaml"), GOOD).ok();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        rig.strategies.path().parent().unwrap().join("outside.yaml"),
        rig.strategies.path().join("linked.yaml"),
    )
    .unwrap();
    for (name, status) in [("..%2Foutside", 400), ("linked", 400), (".hidden", 400), ("nothing_here", 404)] {
        let (got, answer) = rig.validate(name).await;
        assert_eq!(got, status, "{name}: {answer}");
        let (got, _) = rig.app.get(&format!("/api/v1/strategies/{name}/features")).await;
        assert_eq!(got, status, "features of {name}");
    }
    let (_, answer) = rig.validate("nothing_here").await;
    assert_eq!(answer["error"]["message"], "Strategy file not found: nothing_here.yaml");
}

#[tokio::test]
async fn features_come_in_ktrdr_order_with_its_ids() {
    let rig = rig().await;
    rig.write("good", GOOD);
    let (status, answer) = rig.app.get("/api/v1/strategies/good/features").await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<&str> =
        answer["features"].as_array().unwrap().iter().map(|f| f["feature_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "1h_rsi_momentum_oversold",
            "1h_rsi_momentum_overbought",
            "4h_rsi_momentum_oversold",
            "4h_rsi_momentum_overbought",
            "4h_macd_signal_negative",
            "4h_macd_signal_positive"
        ]
    );
    assert_eq!(answer["count"], 6);
    assert_eq!(answer["features"][4]["indicator_id"], "macd_1");
    assert_eq!(answer["features"][4]["indicator_output"], "histogram");
    assert_eq!(answer["features"][0]["indicator_output"], Value::Null);
    rig.write("bad_ref", &GOOD.replace("indicator: rsi_14", "indicator: rsi_99"));
    let (status, answer) = rig.app.get("/api/v1/strategies/bad_ref/features").await;
    assert_eq!(status, 422, "{answer}");
    rig.write("old", "name: old\nindicators:\n  - {name: rsi}\n");
    let (status, answer) = rig.app.get("/api/v1/strategies/old/features").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().starts_with("Strategy 'old' is not v3 format or invalid"));
}

#[tokio::test]
async fn a_simulated_training_shows_up_as_a_trained_strategy_and_a_model_and_a_broken_one_is_refused() {
    let rig = rig().await;
    let csv = "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n";
    std::fs::write(rig.app.data_dir.path().join("EURUSD_1h.csv"), csv).unwrap();
    for _ in 0..2 {
        let (status, answer) = rig.app.post("/api/v1/trainings/start", json!({ "strategy_name": "example_mlp" })).await;
        assert_eq!(status, 200, "{answer}");
        let id = answer["task_id"].as_str().unwrap().to_owned();
        let record = rig.app.wait_for_status(&id, "completed", Duration::from_secs(30)).await;
        let path = record["result_summary"]["model_path"].as_str().unwrap().to_owned();
        assert!(path.starts_with(&rig.models.path().display().to_string()), "{path}");
    }
    assert!(rig.models.path().join("example_mlp/1h_latest").exists(), "the _latest link points at a folder");
    let (_, one) = rig.app.get("/api/v1/strategies/example_mlp").await;
    assert_eq!(one["training_status"], "trained", "{one}");
    assert_eq!(one["available_versions"], json!([1, 2]));
    assert_eq!(one["latest_version"], 2);
    assert_eq!(one["latest_metrics"]["accuracy"], 0.81);
    assert!(one["latest_training_date"].is_string());
    let (status, versioned) = rig.app.get("/api/v1/strategies/example_mlp?version=1").await;
    assert_eq!((status, versioned["name"].as_str()), (200, Some("example_mlp")));

    for path in ["/api/v1/models", "/api/v1/models/"] {
        let (status, answer) = rig.app.get(path).await;
        assert_eq!(status, 200);
        let models = answer["models"].as_array().unwrap();
        assert_eq!(models.len(), 2, "{answer}");
        assert_eq!(models[0]["model_name"], "example_mlp/1h_v2", "newest first: {answer}");
        assert_eq!((models[0]["symbol"].as_str(), models[0]["timeframe"].as_str()), (Some("EURUSD"), Some("1h")));
        assert_eq!(models[0]["test_accuracy"], 0.81);
        assert!(models[0]["training_accuracy"].as_f64().unwrap() > 0.5, "{answer}");
    }

    rig.write("broken", &GOOD.replace("name: good", "name: broken").replace("indicator: rsi_14", "indicator: rsi_99"));

    // The command-line client shows the same (a child process: the service runs on this runtime).
    let cli = |args: &'static [&'static str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops")).args(["--url", &rig.app.base]).args(args).output()
    };
    let list = cli(&["strategies"]).await.unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.lines().any(|l| l.starts_with("example_mlp") && l.contains("trained") && l.contains("1,2")), "{text}");
    let models = cli(&["models"]).await.unwrap();
    let text = String::from_utf8_lossy(&models.stdout);
    assert!(text.contains("example_mlp/1h_v2") && text.contains("81.0%"), "{text}");
    assert_eq!(cli(&["strategies", "validate", "example_mlp"]).await.unwrap().status.code(), Some(0));
    let invalid = cli(&["strategies", "validate", "broken"]).await.unwrap();
    assert_eq!(invalid.status.code(), Some(1), "a strategy that does not validate exits 1");
    let text = String::from_utf8_lossy(&invalid.stdout);
    assert!(text.contains("error [fuzzy_sets.rsi_momentum.indicator]: "), "{text}");

    let (status, answer) = rig.app.post("/api/v1/trainings/start", json!({ "strategy_name": "broken" })).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "STRATEGY_INVALID");
    let issues = answer["error"]["details"]["issues"].as_array().unwrap();
    assert_eq!(issues[0]["details"]["path"], "fuzzy_sets.rsi_momentum.indicator", "{answer}");
}
