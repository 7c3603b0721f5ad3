//! Catalog figures (issue: catalog, "Numbers"), with the service as its own process: the time of
//! `GET /api/v1/strategies` and `GET /api/v1/models` over a strategies folder of 500 v3 files and
//! a models folder of 2,000 model folders (four versions of each strategy), warm (after a first
//! request has parsed everything), and the first, cold request.
//!
//! Run: `cargo bench --bench catalog` (BENCH_STRATEGIES=500, BENCH_MODELS_PER=4, BENCH_REQUESTS=200).

mod common;

use std::time::{Duration, Instant};

use common::{Service, env_number, ms, percentile};

const STRATEGY: &str = include_str!("../strategies/example_mlp.yaml");

fn write_folders(strategies: &std::path::Path, models: &std::path::Path, count: u64, per: u64) {
    for i in 0..count {
        let name = format!("strategy_{i:04}");
        let text = STRATEGY.replace("name: example_mlp", &format!("name: {name}"));
        std::fs::write(strategies.join(format!("{name}.yaml")), text).unwrap();
        for v in 1..=per {
            let folder = models.join(&name).join(format!("1h_v{v}"));
            std::fs::create_dir_all(&folder).unwrap();
            let metadata = serde_json::json!({ "strategy_name": name, "symbol": "EURUSD", "timeframe": "1h",
                "created_at": format!("2026-11-{:02}T10:00:00.000000", 1 + v), "model_type": "mlp" });
            let metrics = serde_json::json!({ "final_train_accuracy": 0.7, "test_accuracy": 0.6,
                "precision": 0.6, "recall": 0.58, "f1_score": 0.59 });
            std::fs::write(folder.join("metadata.json"), metadata.to_string()).unwrap();
            std::fs::write(folder.join("metrics.json"), metrics.to_string()).unwrap();
        }
    }
}

async fn timed(http: &reqwest::Client, url: &str) -> (Duration, usize) {
    let started = Instant::now();
    let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
    (started.elapsed(), body.len())
}

#[tokio::main]
async fn main() {
    let (count, per, requests) =
        (env_number("BENCH_STRATEGIES", 500), env_number("BENCH_MODELS_PER", 4), env_number("BENCH_REQUESTS", 200));
    let dir = tempfile::tempdir().unwrap();
    let (strategies, models) = (dir.path().join("strategies"), dir.path().join("models"));
    std::fs::create_dir_all(&strategies).unwrap();
    write_folders(&strategies, &models, count, per);
    let db = format!("sqlite://{}", dir.path().join("ops.db").display());
    let mut command = common::binary();
    command
        .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--database-url", &db])
        .args(["--strategies-dir", &strategies.display().to_string()])
        .env("KTRDR_OPS__TRAINING__MODELS_DIR", &models)
        .env("RUST_LOG", "warn,ktrdr_ops::app=info");
    let service = Service::start(command, None).await;
    let base = service.base.clone();
    let http = reqwest::Client::new();
    println!("catalog: {count} strategy files, {} model folders", count * per);
    for (what, path) in [("strategies", "/api/v1/strategies"), ("models", "/api/v1/models")] {
        let url = format!("{base}{path}");
        let (cold, bytes) = timed(&http, &url).await;
        let mut times = Vec::new();
        for _ in 0..requests {
            times.push(timed(&http, &url).await.0);
        }
        times.sort();
        println!(
            "GET {path}: cold {:.1} ms, warm p50 {:.1} ms, p99 {:.1} ms over {requests} requests ({:.0} KB each) — {what}",
            ms(cold),
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
            bytes as f64 / 1024.0
        );
    }
}
