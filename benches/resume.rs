//! Resume benchmarks (issue: retry, resume, checkpoints). The release binary as its own process,
//! the simulators in another (so that their request log outlives a killed service):
//!
//! 1. an uninterrupted backfill of one year of 1-minute bars, for the segment count;
//! 2. the same backfill on a fresh folder, the service killed with -9 at about half of it and
//!    restarted: the interrupted load's continuation starts by itself — total segments fetched
//!    over both operations, against the uninterrupted run, for three `data.save_interval`s —
//!    and the same with SIGTERM (a deploy) instead of -9, which must do no worse: ≤ one run + 1;
//! 3. a backfill cancelled at about half and resumed with `POST /operations/{id}/resume`: from
//!    the answer to the continuation's first progress (the first version after the one it was
//!    created with), over `BENCH_RESUMES` series (default and at most 9, the simulator's stocks).
//!
//! `cargo bench --bench resume`.

#[path = "common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Service, env_number, ms, send_json};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const LATENCY_MS: &str = "10";
/// A year of 1-minute bars of `symbol`.
fn backfill(symbol: &str) -> Value {
    serde_json::json!({ "symbol": symbol, "timeframe": "1m", "mode": "backfill",
                        "start_date": "2023-01-01", "end_date": "2023-12-31T23:59:00Z" })
}

/// `ktrdr-ops sim` on free ports; returns it and the IB simulator's URL.
async fn simulators(data_dir: &str) -> (tokio::process::Child, String, String) {
    let mut child = common::binary()
        .args(["sim", "--ib-listen", "127.0.0.1:0", "--training-listen", "127.0.0.1:0", "--data-dir", data_dir])
        .args(["--sim-latency-ms", LATENCY_MS])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = loop {
        let line = lines.next_line().await.unwrap().expect("the simulators started");
        if line.contains("IB simulator on") {
            break line;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let urls: Vec<String> = line
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches(',').trim_end_matches('"').to_owned())
        .collect();
    (child, urls[0].clone(), urls[1].clone())
}

async fn service(db: &str, data_dir: &str, ib: &str, training: &str, save_interval: &str) -> Service {
    let mut command = common::binary();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db, "--data-dir", data_dir])
        .args(["--ib-url", ib, "--training-url", training])
        .env("RUST_LOG", "info")
        .env("KTRDR_OPS__HOSTS__IB__PACING", "off")
        .env("KTRDR_OPS__DATA__SAVE_INTERVAL", save_interval);
    Service::start(command, None).await
}

/// A backfill stopped with `signal` (KILL or TERM) at about half and the service restarted: the
/// segments fetched over both operations, once the continuation completed.
async fn stopped_and_continued(http: &reqwest::Client, signal: &str, save_interval: &str) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (data, db) = (dir.path().join("data"), format!("sqlite://{}", dir.path().join("ops.db").display()));
    let data = data.display().to_string();
    let (_sims, ib, training) = simulators(&data).await;
    let mut s = service(&db, &data, &ib, &training, save_interval).await;
    let id = start_load(http, &s.base, "MSFT").await;
    halfway(http, &s.base, &id).await;
    if signal == "KILL" {
        s.child.kill().await.unwrap();
    } else {
        let pid = s.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert!(s.child.wait().await.unwrap().success(), "a graceful stop exits 0");
    }
    let before = historical_requests(http, &ib).await;
    let s = service(&db, &data, &ib, &training, save_interval).await;
    let children = send_json(http.get(format!("{}/api/v1/operations/{id}/children", s.base))).await;
    let continuation = children["data"][0]["operation_id"].as_str().expect("a continuation started").to_owned();
    let done = finished(http, &s.base, &continuation).await;
    assert_eq!(done["status"], "completed", "{done}");
    (before, historical_requests(http, &ib).await)
}

async fn record(http: &reqwest::Client, base: &str, id: &str) -> Value {
    send_json(http.get(format!("{base}/api/v1/operations/{id}"))).await["data"].clone()
}

async fn finished(http: &reqwest::Client, base: &str, id: &str) -> Value {
    loop {
        let r = record(http, base, id).await;
        if r["status"] != "pending" && r["status"] != "running" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the load has saved about half of its segments.
async fn halfway(http: &reqwest::Client, base: &str, id: &str) {
    loop {
        let r = record(http, base, id).await;
        assert!(r["status"] == "pending" || r["status"] == "running", "the load ended early: {r}");
        let context = r["progress"]["context"].clone();
        let (done, total) =
            (context["segments_done"].as_u64().unwrap_or(0), context["segments_total"].as_u64().unwrap_or(0));
        if total > 0 && done * 2 >= total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn historical_requests(http: &reqwest::Client, ib: &str) -> u64 {
    let stats = send_json(http.get(format!("{ib}/sim/stats"))).await;
    stats["historical"].as_array().unwrap().iter().filter(|h| h["outcome"] == "ok").count() as u64
}

async fn start_load(http: &reqwest::Client, base: &str, symbol: &str) -> String {
    let answer = send_json(http.post(format!("{base}/api/v1/data/load")).json(&backfill(symbol))).await;
    answer["data"]["operation_id"].as_str().unwrap().to_owned()
}

#[tokio::main]
async fn main() {
    let http = reqwest::Client::new();

    // 1. Uninterrupted.
    let dir = tempfile::tempdir().unwrap();
    let (data, db) = (dir.path().join("data"), format!("sqlite://{}", dir.path().join("ops.db").display()));
    let data = data.display().to_string();
    let (_sims, ib, training) = simulators(&data).await;
    let s = service(&db, &data, &ib, &training, "10s").await;
    let id = start_load(&http, &s.base, "MSFT").await;
    let whole = finished(&http, &s.base, &id).await;
    assert_eq!(whole["status"], "completed", "{whole}");
    let one_run = historical_requests(&http, &ib).await;
    println!("uninterrupted backfill of 2023 in 1-minute bars: {one_run} segments fetched");
    drop(s);

    // 2. Killed at about half, restarted: continued by itself. What the killed process fetched
    // after its last save is lost with it, so the save interval bounds the refetch.
    for (signal, save_interval) in [("KILL", "0s"), ("KILL", "1s"), ("KILL", "10s"), ("TERM", "10s")] {
        let (before, total) = stopped_and_continued(&http, signal, save_interval).await;
        println!(
            "data.save_interval {save_interval}: SIG{signal} at {before} of {one_run} segments, restarted, the \
             continuation completed; {total} segments fetched over both operations ({} more than uninterrupted)",
            total as i64 - one_run as i64
        );
    }

    // 3. Cancelled at about half, resumed: answer → first progress of the continuation.
    // The simulator's stocks, each a series of its own, so that every resume has half a year left.
    let stocks = ["AAPL", "MSFT", "SPY", "QQQ", "TSLA", "NVDA", "GOOGL", "AMZN", "IBM"];
    let resumes = env_number("BENCH_RESUMES", stocks.len() as u64).min(stocks.len() as u64) as usize;
    let dir = tempfile::tempdir().unwrap();
    let (data, db) = (dir.path().join("data"), format!("sqlite://{}", dir.path().join("ops.db").display()));
    let data = data.display().to_string();
    let (_sims, ib, training) = simulators(&data).await;
    let s = service(&db, &data, &ib, &training, "10s").await;
    let mut waits = Vec::new();
    for symbol in &stocks[..resumes] {
        let id = start_load(&http, &s.base, symbol).await;
        halfway(&http, &s.base, &id).await;
        send_json(http.delete(format!("{}/api/v1/operations/{id}", s.base))).await;
        let began = Instant::now();
        let answer = send_json(http.post(format!("{}/api/v1/operations/{id}/resume", s.base))).await;
        let new = answer["data"]["operation_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
        let first = send_json(http.get(format!("{}/api/v1/operations/{new}?wait=10s&since=1", s.base))).await;
        assert!(first["data"]["version"].as_u64().unwrap() > 1, "{first}");
        waits.push(began.elapsed());
        let _ = send_json(http.delete(format!("{}/api/v1/operations/{new}", s.base))).await;
    }
    waits.sort();
    println!(
        "resume → the continuation's first progress ({resumes} resumes): p50 {:.1} ms, max {:.1} ms",
        ms(waits[waits.len() / 2]),
        ms(*waits.last().unwrap())
    );
}
