//! A replica cut off from the database: the end it could not store is never shown, for another
//! replica takes the operation on and ends it otherwise (the soak found a training read `failed`,
//! then `running`, then `completed`: seed 20261205); and it stops calling hosts for its operations
//! before another replica may take them over (the soak found a replica cut off for half a minute
//! asking the IB host for a load 19 s after the replica that took it over had completed it).

use super::*;
use crate::common::forwarder;

/// Replica A's database connections go through a forwarder that `cut` silences.
async fn replica_behind_a_cut(cluster: &Cluster, name: &str, env: &[(&str, &str)]) -> (ServiceProcess, Cut) {
    let server = cluster.db.url.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let (through, cut) = forwarder(&server).await;
    let args: Vec<String> = cluster
        .replica_args()
        .into_iter()
        .map(|a| if a == cluster.db.url { a.replace(&server, &through) } else { a })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = env.to_vec();
    env.push(("KTRDR_OPS__DATABASE__ACQUIRE_TIMEOUT", "1s"));
    (ServiceProcess::start(&args, &replica_env(name, &env)).await, cut)
}

type Cut = std::sync::Arc<tokio::sync::watch::Sender<bool>>;

/// The instants the IB simulator received this operation's historical requests.
async fn ib_requests_of(cluster: &Cluster, id: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let stats: Value =
        cluster.http.get(format!("{}/sim/stats", cluster.ib_url)).send().await.unwrap().json().await.unwrap();
    stats["historical"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["operation_id"] == id)
        .map(|h| h["received_at"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_replica_cut_off_from_the_database_stops_calling_hosts_before_its_lease_may_lapse() {
    let cluster = Cluster::new().await;
    // Nothing saved while cut off (a save would wait for the database and stop the load anyway):
    // only the fence can stop its calls.
    let (a, cut) = replica_behind_a_cut(&cluster, "node-a", &[("KTRDR_OPS__DATA__SAVE_INTERVAL", "1h")]).await;
    let body = json!({ "symbol": "IBM", "timeframe": "1h", "mode": "backfill", "start_date": "2008-01-01", "end_date": "2024-01-01" });
    let id = cluster.post(&a, "/api/v1/data/load", body).await["data"]["operation_id"].as_str().unwrap().to_owned();
    cluster
        .until(&a, &id, Duration::from_secs(30), |r| {
            r["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    let cut_at = chrono::Utc::now();
    cut.send_replace(true);
    // Leases of 2 s renewed every 500 ms: a renewal is trusted for 1.5 s, so from 1.5 s after the
    // cut (plus a call in flight) nothing goes out until the database answers again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet_from = cut_at + chrono::Duration::milliseconds(1_500 + 500);
    let late: Vec<_> = ib_requests_of(&cluster, &id).await.into_iter().filter(|at| *at > quiet_from).collect();
    assert!(late.is_empty(), "A called the IB host {} times while it could not renew its lease: {late:?}", late.len());
    // Back in touch and still the owner (no other replica took it): the load goes on and completes.
    cut.send_replace(false);
    let ended = cluster.until(&a, &id, Duration::from_secs(60), finished).await;
    assert_eq!(status(&ended), "completed", "{ended}");
    assert!(ib_requests_of(&cluster, &id).await.iter().any(|at| *at > quiet_from), "the load went on after the cut");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn an_end_a_replica_could_not_store_is_never_shown_once_another_takes_the_operation_on() {
    let cluster = Cluster::new().await;
    // Replica A reaches PostgreSQL through a forwarder that can go silent: a network cut.
    let (a, cut) = replica_behind_a_cut(&cluster, "node-a", &[]).await;
    let b = cluster.replica("node-b", &[]).await;

    // A dummy of about a second on A; cut off while it runs, A ends it but cannot store it.
    let id = cluster.start_dummy(&a, 10, 100).await;
    cluster.until(&a, &id, Duration::from_secs(10), |r| status(r) == "running").await;
    cut.send_replace(true);
    // B takes it over once A's lease expires; a dummy cannot go on elsewhere: failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen_on_a = Vec::new();
    // A may take a while to answer while cut off (its database calls wait): what it does answer counts.
    let impatient = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let ended = loop {
        if let Ok(response) = impatient.get(a.url(&format!("/api/v1/operations/{id}"))).send().await
            && response.status() == 200
            && let Ok(body) = response.json::<Value>().await
        {
            seen_on_a.push(body["data"]["status"].as_str().unwrap().to_owned());
        }
        let on_b = cluster.record(&b, &id).await;
        if finished(&on_b) {
            break on_b;
        }
        assert!(tokio::time::Instant::now() < deadline, "B never ended it: {on_b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status(&ended), "failed", "{ended}");
    assert!(!seen_on_a.iter().any(|s| s == "completed"), "A showed an end it never stored: {seen_on_a:?}");
    // Back in touch, A shows what was stored, and so does its list.
    cut.send_replace(false);
    let on_a = cluster.until(&a, &id, Duration::from_secs(20), finished).await;
    assert_eq!(status(&on_a), "failed", "{on_a}");
}
