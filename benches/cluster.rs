//! Scale-out figures (issue: scale-out, "Numbers"): two release replicas as separate processes on
//! one PostgreSQL database, with the defaults of `config/default.toml` (lease 15 s, heartbeat
//! 5 s, progress persisted every 1 s, remote reads cached 100 ms):
//!
//! 1. `GET /api/v1/operations/{id}` on B of an operation running on A (64 connections, wrk), next
//!    to the same GET on A; and how old the progress B shows is (A and B read together every few
//!    ms for 10 s, of a dummy moving every 10 ms: A's `progress.updated_at` minus B's);
//! 2. cross-replica cancel: `DELETE` on B of a dummy running on A, until the answer (which comes
//!    once A reports the work stopped): p50/p99/max, and how often B had to record it itself;
//! 3. takeover: kill -9 of A with 100 running operations, until B owns every one of them.
//!
//! Run (PostgreSQL reachable, `wrk` installed):
//! `KTRDR_OPS_TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres cargo bench --bench cluster`.
//! Options via env: BENCH_CANCELS (default 200), BENCH_TAKEOVERS (default 3), BENCH_WRK_SECONDS (default 10).

mod common;

use std::time::{Duration, Instant};

use common::{Service, env_number, ms, percentile, send_json, wrk};
use serde_json::Value;

/// A release replica with its own node id, counting its log lines that contain `watch`.
struct Replica {
    service: Service,
    base: String,
}

impl Replica {
    async fn start(db: &str, node: &str, watch: &'static str) -> Replica {
        let mut command = common::binary();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
            .env("RUST_LOG", "info")
            .env("KTRDR_OPS__NODE__ID", node);
        let service = Service::start(command, Some(watch)).await;
        Replica { base: service.base.clone(), service }
    }

    async fn start_dummy(&self, http: &reqwest::Client, iterations: u32, interval_ms: u64) -> String {
        common::start_dummy(http, &self.base, None, iterations, interval_ms).await
    }

    async fn record(&self, http: &reqwest::Client, id: &str) -> Value {
        send_json(http.get(format!("{}/api/v1/operations/{id}", self.base))).await["data"].clone()
    }

    async fn status(&self, http: &reqwest::Client, id: &str) -> String {
        self.record(http, id).await["status"].as_str().unwrap_or_default().to_owned()
    }
}

/// A fresh database on the server `admin` names; returns its URL.
async fn fresh_database(admin: &str) -> String {
    let name = format!("ktrdr_ops_bench_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(admin).await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
    pool.close().await;
    let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(admin);
    format!("{base}/{name}")
}

#[tokio::main]
async fn main() {
    let admin = std::env::var("KTRDR_OPS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned());
    let cancels = env_number("BENCH_CANCELS", 200) as usize;
    let takeovers = env_number("BENCH_TAKEOVERS", 3);
    let wrk_seconds = env_number("BENCH_WRK_SECONDS", 10);
    let db = fresh_database(&admin).await;
    let http = reqwest::Client::new();
    const FALLBACK: &str = "recording the cancel here";

    let a = Replica::start(&db, "bench-a", FALLBACK).await;
    let b = Replica::start(&db, "bench-b", FALLBACK).await;
    println!("replica A at {}, replica B at {}, one PostgreSQL database", a.base, b.base);

    // 1. Reads of another replica's operation.
    let watched = a.start_dummy(&http, 1_000_000, 100).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_b = wrk(&format!("{}/api/v1/operations/{watched}", b.base), wrk_seconds, None);
    let on_a = wrk(&format!("{}/api/v1/operations/{watched}", a.base), wrk_seconds, None);
    println!("GET /api/v1/operations/{{id}} on B of an operation A runs (64 connections): {on_b:.0} req/s");
    println!("  the same GET on A, its owner:                                       {on_a:.0} req/s");
    let moving = a.start_dummy(&http, 1_000_000, 10).await;
    let progressed_at = |record: &Value| {
        ktrdr_ops::time::parse_timestamp(record["progress"]["updated_at"].as_str().unwrap_or_default())
    };
    let mut ages = Vec::new();
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(10) {
        let (truth, remote) = tokio::join!(a.record(&http, &moving), b.record(&http, &moving));
        if let (Some(truth), Some(remote)) = (progressed_at(&truth), progressed_at(&remote)) {
            ages.push((truth - remote).to_std().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    ages.sort();
    println!(
        "  age of the progress B shows ({} samples, progress persisted every 1 s): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ages.len(),
        ms(percentile(&ages, 0.5)),
        ms(percentile(&ages, 0.99)),
        ms(*ages.last().unwrap()),
    );

    // 2. Cross-replica cancel.
    let mut latencies = Vec::with_capacity(cancels);
    for _ in 0..cancels {
        let id = a.start_dummy(&http, 100_000, 50).await;
        while a.status(&http, &id).await != "running" {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let began = Instant::now();
        let answer = send_json(http.delete(format!("{}/api/v1/operations/{id}", b.base))).await;
        latencies.push(began.elapsed());
        assert_eq!(answer["data"]["status"], "cancelled", "{answer}");
    }
    latencies.sort();
    println!(
        "DELETE on B of an operation running on A, until A reported it stopped ({cancels} cancels): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; recorded by B itself (owner too slow): {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        b.service.watched(),
    );
    drop(a);

    // 3. Takeover after kill -9, with the default lease.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    for round in 1..=takeovers {
        let node = format!("bench-dead-{round}");
        let mut doomed = Replica::start(&db, &node, FALLBACK).await;
        for _ in 0..100 {
            doomed.start_dummy(&http, 100_000, 100).await;
        }
        // Somewhere within a heartbeat period, as a crash would be.
        tokio::time::sleep(Duration::from_millis(1000 + 1700 * round)).await;
        doomed.service.child.kill().await.unwrap();
        let killed = Instant::now();
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM operations WHERE owner_node = $1 AND status IN ('pending', 'running')",
            )
            .bind(&node)
            .fetch_one(&pool)
            .await
            .unwrap();
            if left == 0 {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "B never took over {node}'s operations");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "takeover round {round}: B owned all 100 operations of the killed replica {:.2} s after kill -9 (lease 15 s)",
            killed.elapsed().as_secs_f64()
        );
    }
    pool.close().await;
    drop(b);
}
