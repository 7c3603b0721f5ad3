//! What the benchmarks share: options from the environment, percentiles, `wrk`, and the release
//! service as a child process.
// Each benchmark uses a part of this.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `p`-quantile (0–1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The resident memory of process `pid`, in MB (NaN when it cannot be read).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The CPU time (user and system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // SAFETY: sysconf only reads a system setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Requests per second `wrk` reaches on `url` with 2 threads and 64 connections.
pub fn wrk(url: &str, seconds: u64, token: Option<&str>) -> f64 {
    let mut args = vec!["-t2".to_owned(), "-c64".to_owned(), format!("-d{seconds}s")];
    if let Some(token) = token {
        args.extend(["-H".to_owned(), format!("Authorization: Bearer {token}")]);
    }
    args.push(url.to_owned());
    let output =
        std::process::Command::new("wrk").args(&args).output().expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {text}"))
}

/// Sends a request and reads its JSON answer.
pub async fn send_json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Starts a dummy operation on the service at `base`; returns its id.
pub async fn start_dummy(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    iterations: u32,
    interval_ms: u64,
) -> String {
    let mut request = http.post(format!("{base}/api/v1/dummy/start"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = send_json(request.json(&json!({ "iterations": iterations, "interval_ms": interval_ms }))).await;
    answer["data"]["operation_id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned()
}

/// The release binary, to be given its arguments and environment.
pub fn binary() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
}

/// The service as a child process, once it logged `listening on …`; it is killed when dropped.
pub struct Service {
    pub child: tokio::process::Child,
    pub base: String,
    /// How many of its log lines contained the text given to `start`.
    pub watched: Arc<AtomicUsize>,
}

impl Service {
    pub async fn start(mut command: tokio::process::Command, watch: Option<&'static str>) -> Service {
        let mut child = command.stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines.next_line().await.unwrap().expect("the service started");
            if let Some(at) = line.find("listening on http://") {
                break line[at + "listening on ".len()..].trim().to_owned();
            }
        };
        let watched = Arc::new(AtomicUsize::new(0));
        let count = watched.clone();
        // Keep reading, so that the service never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if watch.is_some_and(|text| line.contains(text)) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Service { child, base, watched }
    }

    pub fn watched(&self) -> usize {
        self.watched.load(Ordering::Relaxed)
    }
}
