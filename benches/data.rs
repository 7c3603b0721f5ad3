//! Data-load figures (issue: data-load, "Numbers"):
//!
//! 1. reading a 1,000,000-bar CSV (1-minute AAPL bars, ~10 years) into the service's frame;
//! 2. gap analysis over it (find + classify);
//! 3. `GET /api/v1/data/AAPL/1m?limit=100000` from the running service (cold, then warm);
//! 4. a backfill of one year of 1-minute bars from the simulator, pacing off, zero latency:
//!    segments per second end to end.
//!
//! The service runs as its own process (`serve --sim`) on the same data folder.
//! Run: `cargo bench --bench data`.

mod common;

use std::time::{Duration, Instant};

use ktrdr_ops::data::calendar::InstrumentKind;
use ktrdr_ops::data::frame::Bars;
use ktrdr_ops::data::gaps::find_gaps;
use ktrdr_ops::data::repository::{read_csv, write_csv_atomic};
use ktrdr_ops::data::timeframe::Timeframe;
use ktrdr_ops::sim::market::Instrument;
use ktrdr_ops::time::parse_timestamp;
use serde_json::json;

use common::{Service, ms, send_json};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("AAPL_1m.csv");

    // A million one-minute bars: 390 a trading day, about ten years back from mid-2024.
    let bars = {
        let all = Instrument::new("AAPL").bars(
            Timeframe::M1,
            parse_timestamp("2014-01-01").unwrap(),
            parse_timestamp("2024-06-30").unwrap(),
        );
        Bars::from_bars(&all[all.len() - 1_000_000..])
    };
    write_csv_atomic(&path, &bars).unwrap();
    let size_mb = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;

    let reads: Vec<Duration> = (0..5)
        .map(|_| {
            let began = Instant::now();
            let frame = read_csv(&path).unwrap();
            assert_eq!(frame.len(), 1_000_000);
            began.elapsed()
        })
        .collect();
    println!("read 1,000,000-bar CSV ({size_mb:.0} MB) into the frame: median {:.1} ms (of 5)", ms(median(reads)));

    let gaps: Vec<Duration> = (0..5)
        .map(|_| {
            let began = Instant::now();
            let found = find_gaps(&bars.ts, Timeframe::M1, InstrumentKind::Stock);
            assert!(found.iter().all(|g| !g.class.is_fetched()));
            began.elapsed()
        })
        .collect();
    let count = find_gaps(&bars.ts, Timeframe::M1, InstrumentKind::Stock).len();
    println!("gap analysis over it ({count} gaps found and classified): median {:.1} ms (of 5)", ms(median(gaps)));

    let db = format!("sqlite://{}", dir.path().join("ops.db").display());
    let data_dir = dir.path().display().to_string();
    let mut command = common::binary();
    command
        .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--database-url", &db, "--data-dir", &data_dir])
        .env("RUST_LOG", "warn,ktrdr_ops::app=info");
    let Service { base, mut child, .. } = Service::start(command, None).await;
    let http = reqwest::Client::new();

    let url = format!("{base}/api/v1/data/AAPL/1m?limit=100000");
    let get = || async {
        let began = Instant::now();
        let body = http.get(&url).send().await.unwrap().bytes().await.unwrap();
        (began.elapsed(), body.len())
    };
    let (cold, size) = get().await;
    let mut warm = Vec::new();
    for _ in 0..10 {
        warm.push(get().await.0);
    }
    println!(
        "GET /api/v1/data/AAPL/1m?limit=100000 ({:.1} MB): first {:.1} ms (parses the file), then median {:.1} ms (of 10)",
        size as f64 / 1e6,
        ms(cold),
        ms(median(warm))
    );

    let body = json!({ "symbol": "MSFT", "timeframe": "1m", "mode": "backfill", "start_date": "2023-01-01", "end_date": "2023-12-31T23:59:00Z" });
    let began = Instant::now();
    let started = send_json(http.post(format!("{base}/api/v1/data/load")).json(&body)).await;
    let id = started["data"]["operation_id"].as_str().unwrap().to_owned();
    let mut since = 0;
    let record = loop {
        let r = send_json(http.get(format!("{base}/api/v1/operations/{id}?wait=30s&since={since}"))).await;
        let record = r["data"].clone();
        since = record["version"].as_u64().unwrap();
        if record["status"] != "running" && record["status"] != "pending" {
            break record;
        }
    };
    let elapsed = began.elapsed();
    assert_eq!(record["status"], "completed", "{record}");
    let result = &record["result_summary"];
    let segments = result["segments_fetched"].as_f64().unwrap();
    println!(
        "backfill of 2023 in 1-minute bars: {segments} segments, {} bars in {:.2} s end to end: {:.0} segments/s",
        result["rows_downloaded"],
        elapsed.as_secs_f64(),
        segments / elapsed.as_secs_f64()
    );
    child.kill().await.unwrap();
}
