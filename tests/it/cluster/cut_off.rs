//! A replica cut off from the database while its operation ends: the end it could not store is
//! never shown, for another replica takes the operation on and ends it otherwise (the soak found
//! a training read `failed`, then `running`, then `completed`: seed 20261205).

use super::*;
use crate::common::forwarder;

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn an_end_a_replica_could_not_store_is_never_shown_once_another_takes_the_operation_on() {
    let cluster = Cluster::new().await;
    // Replica A reaches PostgreSQL through a forwarder that can go silent: a network cut.
    let server = cluster.db.url.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let (through, cut) = forwarder(&server).await;
    let args: Vec<String> = cluster
        .replica_args()
        .into_iter()
        .map(|a| if a == cluster.db.url { a.replace(&server, &through) } else { a })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let quick = [("KTRDR_OPS__DATABASE__ACQUIRE_TIMEOUT", "1s")];
    let a = ServiceProcess::start(&args, &replica_env("node-a", &quick)).await;
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
