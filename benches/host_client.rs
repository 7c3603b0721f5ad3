//! Host-client figures (issue: host clients, "Numbers"), against the IB simulator on loopback:
//!
//! 1. pooling: 10,000 sequential small calls (`GET /health`) through `HostClient` vs a client that
//!    opens a new connection for every call — same simulator, same run;
//! 2. overhead: the same calls through `HostClient` vs a bare pooled `reqwest::Client`.
//!
//! Each variant runs three times, interleaved; the median is reported.
//! Run: `cargo bench --bench host_client` (BENCH_CALLS=10000 by default).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ktrdr_ops::hosts::training::Protocol;
use ktrdr_ops::hosts::{Call, HostClient, HostSettings, RetryPolicy};
use ktrdr_ops::sim::ib::IbKnobs;
use ktrdr_ops::sim::training::TrainingKnobs;
use ktrdr_ops::sim::{SimSettings, Simulators};
use tokio_util::sync::CancellationToken;

use common::median;

async fn time_calls<F, Fut>(calls: usize, mut call: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let began = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    calls as f64 / began.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let calls: usize = std::env::var("BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let data = tempfile::tempdir().unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let settings = SimSettings {
        ib: IbKnobs::default(),
        training_protocol: Protocol::Operations,
        training: TrainingKnobs::default(),
        data_dir: data.path().to_owned(),
        models_dir: None,
        backtest: Default::default(),
    };
    let sims = Simulators::start(settings, loopback, loopback, None).await.unwrap();
    let url = format!("{}/health", sims.ib_url());

    let host = HostClient::new(
        HostSettings {
            name: "ib",
            base_url: sims.ib_url(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy {
                attempts: 3,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(5),
            },
            health_timeout: Duration::from_secs(1),
            health_ttl: Duration::from_secs(5),
            stall_notice: Duration::from_secs(10),
            bearer: None,
            endpoint_policy: None,
        },
        Default::default(),
    )
    .unwrap();
    let bare = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build().unwrap();
    let fresh = reqwest::Client::builder().no_proxy().tcp_nodelay(true).pool_max_idle_per_host(0).build().unwrap();
    let call = Call::get("/health", "/health");
    let token = CancellationToken::new();

    let (mut pooled, mut unpooled, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        pooled.push(
            time_calls(calls, || async {
                host.send(&call, &token).await.unwrap();
            })
            .await,
        );
        unpooled.push(
            time_calls(calls, || async {
                fresh.get(&url).send().await.unwrap().bytes().await.unwrap();
            })
            .await,
        );
        raw.push(
            time_calls(calls, || async {
                bare.get(&url).send().await.unwrap().bytes().await.unwrap();
            })
            .await,
        );
    }
    let (pooled, unpooled, raw) = (median(pooled), median(unpooled), median(raw));
    println!("{calls} sequential GET /health calls to the IB simulator (median of 3 runs):");
    println!("  HostClient (pooled):              {pooled:>8.0} calls/s");
    println!("  new connection per call:          {unpooled:>8.0} calls/s  → pooled is {:.1}x", pooled / unpooled);
    println!(
        "  bare reqwest::Client (pooled):    {raw:>8.0} calls/s  → HostClient overhead {:+.1}%",
        (raw / pooled - 1.0) * 100.0
    );
    sims.shutdown().await;
}
