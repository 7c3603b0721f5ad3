//! Training figures (issue: training, "Numbers"), with the service (`serve --sim`) as its own
//! process and the training simulator speaking the operations generation:
//!
//! 1. progress relay lag: for every host state (epoch, batch), the time from its first sight on
//!    the host to the first `GET /api/v1/operations/{id}` of ours showing it or a later state —
//!    both sampled every ~2 ms while training moves (20 ms per batch);
//! 2. polls per minute against a stalled host session (nothing moves), after the poller settles;
//! 3. DELETE of a running training while the host holds every stop call for 5 s: p50/p99;
//! 4. a resume sent the instant the DELETE answered, while the host is still finishing its batch
//!    (200 ms each): it must answer 200 from the host's cancellation checkpoint, at most 100 ms
//!    after the host saved it (the checkpoint's `created_at`, the host's last word): p50/p99.
//!
//! Run: `cargo bench --bench training` (BENCH_STALL_SECONDS=60, BENCH_CANCELS=200,
//! BENCH_RESUMES=100 by default).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use common::{Service, env_number, ms, percentile, send_json};

struct Bench {
    http: reqwest::Client,
    base: String,
    host: String,
}

impl Bench {
    async fn json(&self, url: String) -> Value {
        send_json(self.http.get(url)).await
    }

    async fn knobs(&self, knobs: Value) {
        self.http.put(format!("{}/sim/knobs", self.host)).json(&knobs).send().await.unwrap();
    }

    async fn train(&self) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/trainings/start", self.base))
            .json(&json!({ "strategy_name": "example_mlp" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["task_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned()
    }

    async fn record(&self, id: &str) -> Value {
        self.json(format!("{}/api/v1/operations/{id}", self.base)).await["data"].clone()
    }

    async fn until_running_on_host(&self, id: &str) {
        loop {
            let r = self.record(id).await;
            if r["progress"]["context"]["host_status"] == "running" {
                return;
            }
            assert!(r["status"] == "running" || r["status"] == "pending", "{r}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("EURUSD_1h.csv"),
        "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n",
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("ops.db").display());
    let data_dir = dir.path().display().to_string();
    let strategies = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
    let mut command = common::binary();
    command
        .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--database-url", &db, "--data-dir", &data_dir])
        .args(["--strategies-dir", strategies, "--sim-training-protocol", "operations"])
        .env("RUST_LOG", "warn,ktrdr_ops::app=info");
    let Service { base, mut child, .. } = Service::start(command, None).await;
    let http = reqwest::Client::new();
    let health: Value = http.get(format!("{base}/api/v1/health")).send().await.unwrap().json().await.unwrap();
    let host = health["hosts"]["training"]["url"].as_str().unwrap().to_owned();
    let bench = Bench { http, base, host };

    // 1. Relay lag while training moves.
    bench.knobs(json!({ "pace_ms": 20, "batches": 50, "epochs": 10 })).await;
    let id = bench.train().await;
    let mut on_host: HashMap<(u64, u64), Instant> = HashMap::new();
    let mut ours: HashMap<(u64, u64), Instant> = HashMap::new();
    loop {
        let host_view = bench.json(format!("{}/api/v1/operations/{id}", bench.host)).await;
        let seen = Instant::now();
        let context = &host_view["data"]["progress"]["context"];
        if let (Some(e), Some(b)) = (context["epoch"].as_u64(), context["batch"].as_u64()) {
            on_host.entry((e, b)).or_insert(seen);
        }
        let record = bench.record(&id).await;
        let seen = Instant::now();
        let context = &record["progress"]["context"];
        if let (Some(e), Some(b)) = (context["epoch"].as_u64(), context["batch"].as_u64()) {
            ours.entry((e, b)).or_insert(seen);
        }
        if record["status"] != "running" {
            break;
        }
    }
    // When did our API first show each state, or one after it?
    let mut our_states: Vec<((u64, u64), Instant)> = ours.into_iter().collect();
    our_states.sort_by_key(|(_, at)| *at);
    let mut lags: Vec<Duration> = on_host
        .iter()
        .filter_map(|(state, host_at)| {
            our_states
                .iter()
                .find(|(ours, at)| ours >= state && at >= host_at)
                .map(|(_, at)| at.duration_since(*host_at))
        })
        .collect();
    lags.sort();
    println!(
        "progress relay lag while training moves (host state change to our GET showing it or later, {} states): p50 {:.0} ms, p90 {:.0} ms",
        lags.len(),
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.9))
    );

    // 2. Polls per minute against a stalled session.
    let stall = env_number("BENCH_STALL_SECONDS", 60);
    bench.knobs(json!({ "pace_ms": 3_600_000, "batches": 50, "epochs": 10 })).await;
    let id = bench.train().await;
    let polls = |stats: &Value| stats["requests"]["/api/v1/operations/{id}"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = polls(&bench.json(format!("{}/sim/stats", bench.host)).await);
    tokio::time::sleep(Duration::from_secs(stall)).await;
    let after = polls(&bench.json(format!("{}/sim/stats", bench.host)).await);
    println!(
        "polls of a stalled session, measured over {stall} s after a 20 s settle: {:.1} per minute",
        (after - before) as f64 * 60.0 / stall as f64
    );
    bench.http.delete(format!("{}/api/v1/operations/{id}", bench.base)).send().await.unwrap();

    // 3. DELETE of a running training while the host holds every stop call for 5 s.
    let cancels = env_number("BENCH_CANCELS", 200) as usize;
    bench
        .knobs(json!({ "pace_ms": 50, "batches": 50, "epochs": 10, "max_sessions": 100_000, "stop_delay_ms": 5_000 }))
        .await;
    let mut latencies = Vec::with_capacity(cancels);
    for _ in 0..cancels {
        let id = bench.train().await;
        bench.until_running_on_host(&id).await;
        let began = Instant::now();
        let answer = send_json(bench.http.delete(format!("{}/api/v1/operations/{id}", bench.base))).await;
        latencies.push(began.elapsed());
        assert_eq!(answer["data"]["status"], "cancelled", "{answer}");
    }
    latencies.sort();
    println!(
        "DELETE of a running training, host holding stops for 5 s ({cancels} trainings): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );

    // 4. Resume the instant after the DELETE.
    let resumes = env_number("BENCH_RESUMES", 100) as usize;
    bench.knobs(json!({ "pace_ms": 200, "batches": 2, "epochs": 1000, "max_sessions": 100_000 })).await;
    let (mut confirmations, mut beyond) = (Vec::with_capacity(resumes), Vec::with_capacity(resumes));
    for _ in 0..resumes {
        let id = bench.train().await;
        while bench.record(&id).await["metrics"]["epochs"].as_array().map_or(0, Vec::len) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = SystemTime::now();
        send_json(bench.http.delete(format!("{}/api/v1/operations/{id}", bench.base))).await;
        let answer = send_json(bench.http.post(format!("{}/api/v1/operations/{id}/resume", bench.base))).await;
        let answered = SystemTime::now();
        let from = &answer["data"]["resumed_from"];
        assert_eq!(from["checkpoint_type"], "cancellation", "{answer}");
        let saved: SystemTime = chrono::DateTime::parse_from_rfc3339(from["created_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
            .into();
        confirmations.push(saved.duration_since(asked).unwrap_or_default());
        beyond.push(answered.duration_since(saved).unwrap_or_default());
        let new = answer["data"]["operation_id"].as_str().unwrap();
        send_json(bench.http.delete(format!("{}/api/v1/operations/{new}", bench.base))).await;
    }
    confirmations.sort();
    beyond.sort();
    println!(
        "resume sent as the DELETE answered ({resumes} trainings): 200 from the cancellation checkpoint every time; \
         the host confirmed its stop p50 {:.0} ms / p99 {:.0} ms after the DELETE; the resume answered p50 {:.1} ms / \
         p99 {:.1} ms after that (max {:.1} ms)",
        ms(percentile(&confirmations, 0.5)),
        ms(percentile(&confirmations, 0.99)),
        ms(percentile(&beyond, 0.5)),
        ms(percentile(&beyond, 0.99)),
        ms(*beyond.last().unwrap())
    );
    child.kill().await.unwrap();
}
