//! The figures of the trust issue ("a fleet that trusts no one"), on this machine, the release
//! binary as a child process and the load on the same machine:
//!
//! 1. `GET /api/v1/operations/{id}` with both tokens, trusted networks and every limit on, next to
//!    the same service with no token and limits far out of reach (wrk, 64 connections, the two
//!    measured in turns, same run);
//! 2. 300 connections that send half a request's headers: `/api/v1/health` latency meanwhile
//!    (p50/p99 of sequential requests), and how long until every one of them was closed;
//! 3. 16 concurrent whole-series reads (`GET /api/v1/data/{symbol}/1m`, no limit) of a 2,000,000-bar
//!    series: the service's peak RSS growth over its idle RSS.
//!
//! Run: `cargo bench --bench trust` (needs `wrk`). Options via env: BENCH_WRK_SECONDS (default
//! 10), BENCH_ROUNDS (default 3), BENCH_BARS (default 2000000), BENCH_READERS (default 16).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Service, env_number, median, ms, percentile, rss_mb, start_dummy, wrk};

const CLIENT: &str = "bench-client-token-0123456789";
const WORKER: &str = "bench-worker-token-0123456789";

/// The release binary on a free port with its own database and data folder.
async fn service(dir: &std::path::Path, guarded: bool, extra: &[(&str, &str)]) -> Service {
    let mut command = common::binary();
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}/ops.db", dir.display()))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn,ktrdr_ops::app=info");
    if guarded {
        command
            .env("KTRDR_OPS_API_TOKEN", CLIENT)
            .env("KTRDR_OPS_WORKER_TOKEN", WORKER)
            .env("KTRDR_OPS__WORKERS__TRUSTED_NETWORKS", "10.0.0.0/8,192.168.0.0/16")
            .env("KTRDR_OPS__WORKERS__ALLOWED_NETWORKS", "10.0.0.0/8");
    } else {
        command
            .env("KTRDR_OPS__SERVER__MAX_CONNECTIONS", "1000000")
            .env("KTRDR_OPS__SERVER__MAX_STREAMS", "1000000")
            .env("KTRDR_OPS__OPERATIONS__MAX_ACTIVE", "100000000")
            .env("KTRDR_OPS__SERVER__HEADER_READ_TIMEOUT", "1h");
    }
    for (name, value) in extra {
        command.env(name, value);
    }
    Service::start(command, None).await
}

async fn throughput(seconds: u64, rounds: u64) {
    let (off_dir, on_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let off = service(off_dir.path(), false, &[]).await;
    let on = service(on_dir.path(), true, &[]).await;
    let http = reqwest::Client::new();
    let off_id = start_dummy(&http, &off.base, None, 1_000_000, 100).await;
    let on_id = start_dummy(&http, &on.base, Some(CLIENT), 1_000_000, 100).await;
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        offs.push(wrk(&format!("{}/api/v1/operations/{off_id}", off.base), seconds, None));
        ons.push(wrk(&format!("{}/api/v1/operations/{on_id}", on.base), seconds, Some(CLIENT)));
    }
    let (off_rps, on_rps) = (median(offs.clone()), median(ons.clone()));
    println!("1. GET /api/v1/operations/{{id}} (running op, 64 connections, {rounds} rounds of {seconds} s, median):");
    println!("   tokens and limits off: {off_rps:.0} req/s   (rounds: {offs:.0?})");
    println!("   both tokens, trusted/allowed networks, every limit on: {on_rps:.0} req/s   (rounds: {ons:.0?})");
    println!("   ratio on/off: {:.2}", on_rps / off_rps);
}

async fn half_sent_headers() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path(), true, &[]).await;
    let addr = service.base.trim_start_matches("http://").to_owned();
    let opened = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: bench\r\nX-Never-Ends: ").await.unwrap();
        waiting.push(tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
            opened.elapsed()
        }));
    }
    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    while opened.elapsed() < Duration::from_secs(8) {
        let began = Instant::now();
        let status = http.get(format!("{}/api/v1/health", service.base)).send().await.unwrap().status();
        latencies.push(began.elapsed());
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies.sort();
    let mut closed = Vec::new();
    for task in waiting {
        closed.push(task.await.unwrap());
    }
    closed.sort();
    println!("2. 300 connections with half-sent headers (server.header_read_timeout 10 s):");
    println!(
        "   /api/v1/health meanwhile ({} requests): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "   all closed: first after {:.2} s, last after {:.2} s from when they were opened",
        closed[0].as_secs_f64(),
        closed.last().unwrap().as_secs_f64()
    );
}

/// A 1-minute series of `bars` bars, written as the cache writes it.
fn write_series(path: &std::path::Path, bars: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "timestamp,open,high,low,close,volume").unwrap();
    let start = 1_500_000_000i64;
    for i in 0..bars as i64 {
        let t = chrono::DateTime::from_timestamp(start + i * 60, 0).unwrap();
        let price = 100.0 + (i % 1000) as f64 / 100.0;
        writeln!(out, "{},{price},{},{},{price},{}", t.format("%Y-%m-%dT%H:%M:%SZ"), price + 0.5, price - 0.5, i % 977)
            .unwrap();
    }
}

async fn whole_series_reads(bars: u64, readers: u64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    write_series(&dir.path().join("data").join("BENCH_1m.csv"), bars);
    let service = service(dir.path(), false, &[]).await;
    let pid = service.child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mb(pid);
    let peak = std::sync::Arc::new(parking_lot::Mutex::new(idle));
    let sampling = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                let now = rss_mb(pid);
                {
                    let mut p = peak.lock();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/data/BENCH/1m", service.base);
    let began = Instant::now();
    let sizes: Vec<usize> = futures_util::stream::iter(0..readers)
        .map(|_| {
            let request = http.get(&url);
            async move {
                let mut body = request.send().await.unwrap().bytes_stream();
                let mut size = 0;
                while let Some(chunk) = body.next().await {
                    size += chunk.unwrap().len();
                }
                size
            }
        })
        .buffer_unordered(readers as usize)
        .collect()
        .await;
    let elapsed = began.elapsed();
    sampling.abort();
    let peak = *peak.lock();
    println!("3. {readers} concurrent whole-series reads of {bars} bars (no limit):");
    println!(
        "   {:.0} MB each, all in {:.1} s; RSS idle {idle:.0} MB, peak {peak:.0} MB: growth {:.0} MB",
        sizes[0] as f64 / 1e6,
        elapsed.as_secs_f64(),
        peak - idle
    );
}

#[tokio::main]
async fn main() {
    let seconds = env_number("BENCH_WRK_SECONDS", 10);
    let rounds = env_number("BENCH_ROUNDS", 3);
    throughput(seconds, rounds).await;
    half_sent_headers().await;
    whole_series_reads(env_number("BENCH_BARS", 2_000_000), env_number("BENCH_READERS", 16)).await;
}
