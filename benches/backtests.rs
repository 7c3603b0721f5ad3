//! Backtest figures (issue: backtests, "Numbers"):
//!
//! 1. the simulated engine over 1,000,000 one-minute bars: the cached CSV read, the crossover
//!    signals (polars), the bar loop with ktrdr's accounting, and the 22 metrics;
//! 2. dispatch overhead, with the service (`serve --sim`, one backtest worker) as its own
//!    process: from the client sending `POST /api/v1/backtests/start` to the worker's
//!    `/backtests/start` arriving (the worker's run `created_at`), p50/p99 over sequential starts;
//! 3. `DELETE /api/v1/operations/{id}` of a running backtest to the worker's run stopped (its
//!    `completed_at`), p50/p99.
//!
//! Run on one core: `POLARS_MAX_THREADS=1 taskset -c 0 cargo bench --bench backtests`
//! (BENCH_ENGINE_BARS=1000000, BENCH_DISPATCHES=200, BENCH_CANCELS=100 by default).

mod common;

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use common::{Service, env_number, ms, percentile, send_json};
use ktrdr_ops::data::repository::read_csv;
use ktrdr_ops::sim::backtest::engine::{self, Control, Costs, EngineState};
use ktrdr_ops::sim::backtest::metrics::metrics;

/// `n` bars a `minutes` apart from 2024-01-01, a random walk with waves (deterministic).
fn write_bars(path: &std::path::Path, n: usize, minutes: i64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "timestamp,open,high,low,close,volume").unwrap();
    let start = 1_704_067_200i64;
    let mut price = 1.10f64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let step = (seed % 2001) as f64 / 1000.0 - 1.0;
        let open = price;
        price = (price * (1.0 + 0.0004 * step + 0.0002 * (i as f64 / 500.0).sin())).max(0.01);
        let t = chrono::DateTime::from_timestamp(start + i as i64 * minutes * 60, 0).unwrap();
        let (high, low) = (open.max(price) * 1.0002, open.min(price) * 0.9998);
        writeln!(out, "{}Z,{open:.6},{high:.6},{low:.6},{price:.6},10", t.format("%Y-%m-%dT%H:%M:%S")).unwrap();
    }
}

fn engine_figures(dir: &std::path::Path) {
    let n = env_number("BENCH_ENGINE_BARS", 1_000_000) as usize;
    let path = dir.join("EURUSD_1m.csv");
    write_bars(&path, n, 1);
    let t = Instant::now();
    let bars = read_csv(&path).unwrap();
    let read = t.elapsed();
    let t = Instant::now();
    let signals = engine::signals(&bars.close).unwrap();
    let vectorised = t.elapsed();
    let costs = Costs { initial_capital: 100_000.0, commission: 0.001, slippage: 0.0005 };
    let mut state = EngineState::new(&costs);
    let t = Instant::now();
    let mut pauses = 0u64;
    engine::run(&bars, &signals, &costs, &mut state, 50, |_| {
        pauses += 1;
        Control::Continue
    });
    let simulated = t.elapsed();
    let t = Instant::now();
    let figures = metrics(&state, &costs, bars.ts[0], *bars.ts.last().unwrap());
    let measured = t.elapsed();
    let engine = vectorised + simulated + measured;
    println!(
        "engine over {n} 1-minute bars: CSV read {:.0} ms; signals (polars) {:.0} ms, bar loop {:.0} ms ({} trades, {pauses} progress points), metrics {:.2} ms — engine {:.0} ms, with the read {:.0} ms",
        ms(read),
        ms(vectorised),
        ms(simulated),
        state.trades.len(),
        ms(measured),
        ms(engine),
        ms(engine + read),
    );
    assert_eq!(figures["total_trades"].as_u64(), Some(state.trades.len() as u64));
}

/// Microseconds since the epoch of an RFC 3339 time.
fn micros(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).timestamp_micros()
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as i64
}

struct Bench {
    http: reqwest::Client,
    base: String,
    worker: String,
}

impl Bench {
    async fn start(&self) -> (String, i64) {
        let sent = now_micros();
        let body = json!({ "strategy_name": "example_mlp", "start_date": "2024-01-01", "end_date": "2024-05-07" });
        let answer = send_json(self.http.post(format!("{}/api/v1/backtests/start", self.base)).json(&body)).await;
        (answer["operation_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned(), sent)
    }

    async fn ours(&self, id: &str) -> Value {
        send_json(self.http.get(format!("{}/api/v1/operations/{id}", self.base))).await["data"].clone()
    }

    async fn on_worker(&self, id: &str) -> Value {
        send_json(self.http.get(format!("{}/api/v1/operations/{id}", self.worker))).await["data"].clone()
    }

    /// Until our record says the worker is free again (the backtest ended and released it).
    async fn until_worker_free(&self) {
        loop {
            let fleet = send_json(self.http.get(format!("{}/api/v1/workers?worker_type=backtesting", self.base))).await;
            if fleet[0]["status"] == "available" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    engine_figures(dir.path());

    // The service, one backtest worker, 3,050 hourly bars and a trained model.
    write_bars(&dir.path().join("EURUSD_1h.csv"), 3_050, 60);
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("example_mlp/1h_latest")).unwrap();
    let db = format!("sqlite://{}", dir.path().join("ops.db").display());
    let data_dir = dir.path().display().to_string();
    let strategies = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
    let mut command = common::binary();
    command
        .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--database-url", &db, "--data-dir", &data_dir])
        .args(["--strategies-dir", strategies, "--sim-training-workers", "0", "--sim-backtest-workers", "1"])
        .env("KTRDR_OPS__TRAINING__MODELS_DIR", &models)
        .env("RUST_LOG", "warn,ktrdr_ops::app=info");
    let Service { base, mut child, .. } = Service::start(command, None).await;
    let http = reqwest::Client::new();
    let worker = loop {
        let fleet = send_json(http.get(format!("{base}/api/v1/workers?worker_type=backtesting"))).await;
        if let Some(url) = fleet[0]["endpoint_url"].as_str() {
            break url.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bench = Bench { http, base, worker };

    // 2. Dispatch overhead, one start at a time on a free worker (each runs flat out, ~10 ms).
    let mut dispatch = Vec::new();
    for _ in 0..env_number("BENCH_DISPATCHES", 200) {
        bench.until_worker_free().await;
        let (id, sent) = bench.start().await;
        let run = loop {
            let run = bench.on_worker(&id).await;
            if run["created_at"].is_string() {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        dispatch.push(Duration::from_micros((micros(run["created_at"].as_str().unwrap()) - sent).max(0) as u64));
        loop {
            let ours = bench.ours(&id).await;
            match ours["status"].as_str() {
                Some("completed") => break,
                Some("pending" | "running") => tokio::time::sleep(Duration::from_millis(2)).await,
                _ => panic!("{ours}"),
            }
        }
    }
    dispatch.sort();
    println!(
        "dispatch overhead (client POST /backtests/start sent → the worker's /backtests/start arrived, {} starts): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        dispatch.len(),
        ms(percentile(&dispatch, 0.5)),
        ms(percentile(&dispatch, 0.99)),
        ms(*dispatch.last().unwrap())
    );

    // 3. DELETE of a running backtest → the worker's run stopped.
    bench
        .http
        .put(format!("{}/sim/knobs", bench.worker))
        .json(&json!({ "bars_per_second": 2000 }))
        .send()
        .await
        .unwrap();
    let mut stops = Vec::new();
    for _ in 0..env_number("BENCH_CANCELS", 100) {
        bench.until_worker_free().await;
        let (id, _) = bench.start().await;
        loop {
            let ours = bench.ours(&id).await;
            assert!(matches!(ours["status"].as_str(), Some("pending" | "running")), "{ours}");
            if ours["progress"]["context"]["bars_processed"].as_u64().unwrap_or(0) >= 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sent = now_micros();
        let answer = bench.http.delete(format!("{}/api/v1/operations/{id}", bench.base)).send().await.unwrap();
        assert!(answer.status().is_success());
        let run = loop {
            let run = bench.on_worker(&id).await;
            if run["status"] != "running" {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert_eq!(run["status"], "cancelled", "{run}");
        stops.push(Duration::from_micros((micros(run["completed_at"].as_str().unwrap()) - sent).max(0) as u64));
    }
    stops.sort();
    println!(
        "DELETE → the worker's run stopped ({} cancels of runs at 2,000 bars/s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        stops.len(),
        ms(percentile(&stops, 0.5)),
        ms(percentile(&stops, 0.99)),
        ms(*stops.last().unwrap())
    );
    let _ = child.kill().await;
}
