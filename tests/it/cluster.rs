//! Several replicas on one PostgreSQL, as separate processes sharing the simulators and the data
//! folder: reading and streaming another replica's operation, cancelling it from elsewhere (with
//! and without notifications), takeover after kill -9, and fencing of a replica that was paused
//! past its lease.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{ServiceProcess, TestDb, json_of, read_sse, read_sse_until, sim_process};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Short leases so that takeovers happen within a test's patience.
const LEASE: &str = "2s";

/// The simulators in their own process, a database, a data folder and strategies shared by
/// every replica.
mod cut_off;

struct Cluster {
    db: TestDb,
    _sim: tokio::process::Child,
    ib_url: String,
    training_url: String,
    data: TempDir,
    strategies: TempDir,
    http: reqwest::Client,
}

impl Cluster {
    async fn new() -> Self {
        let db = TestDb::postgres().await;
        let data = tempfile::tempdir().unwrap();
        let strategies = tempfile::tempdir().unwrap();
        std::fs::write(
            strategies.path().join("long.yaml"),
            "name: long\ntraining_data:\n  symbols: {mode: single, symbol: EURUSD}\n  timeframes: {mode: single, timeframe: '1h'}\nmodel: {type: mlp}\ntraining: {epochs: 30}\n",
        )
        .unwrap();
        std::fs::write(
            data.path().join("EURUSD_1h.csv"),
            "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n",
        )
        .unwrap();
        let data_dir = data.path().display().to_string();
        let (sim, ib_url, training_url) = sim_process(
            &data_dir,
            &["--sim-latency-ms", "30", "--sim-training-pace-ms", "40"],
            &[("KTRDR_OPS__SIM__TRAINING_BATCHES", "4")],
        )
        .await;
        Cluster { db, _sim: sim, ib_url, training_url, data, strategies, http: reqwest::Client::new() }
    }

    /// How every replica is started (the node id apart).
    fn replica_args(&self) -> Vec<String> {
        let (data_dir, strategies_dir) = (self.data.path().display(), self.strategies.path().display());
        let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", &self.db.url, "--ib-pacing", "off"];
        let mut args: Vec<String> = args.map(str::to_owned).to_vec();
        args.extend([
            "--data-dir".to_owned(),
            data_dir.to_string(),
            "--strategies-dir".to_owned(),
            strategies_dir.to_string(),
        ]);
        args.extend(["--ib-url", &self.ib_url, "--training-url", &self.training_url].map(str::to_owned));
        args
    }

    async fn replica(&self, name: &str, extra_env: &[(&str, &str)]) -> ServiceProcess {
        let args = self.replica_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServiceProcess::start(&args, &replica_env(name, extra_env)).await
    }

    async fn record(&self, on: &ServiceProcess, id: &str) -> Value {
        let (status, body) = self.get(on, &format!("/api/v1/operations/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    async fn get(&self, on: &ServiceProcess, path: &str) -> (u16, Value) {
        json_of(self.http.get(on.url(path)).send().await.unwrap()).await
    }

    async fn post(&self, on: &ServiceProcess, path: &str, body: Value) -> Value {
        let (status, answer) = json_of(self.http.post(on.url(path)).json(&body).send().await.unwrap()).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn start_dummy(&self, on: &ServiceProcess, iterations: u32, interval_ms: u64) -> String {
        let body = json!({ "iterations": iterations, "interval_ms": interval_ms });
        self.post(on, "/api/v1/dummy/start", body).await["data"]["operation_id"].as_str().unwrap().to_owned()
    }

    /// Reads the operation on `on` until `check` holds, or panics after `within`.
    async fn until(&self, on: &ServiceProcess, id: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let record = self.record(on, id).await;
            if check(&record) {
                return record;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} never got there: {record}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A sample of B's Prometheus metrics, e.g. `ktrdr_ops_handed_over_total` or
    /// `ktrdr_ops_takeovers_total{outcome="resumed"}`; 0 when absent.
    async fn metric(&self, on: &ServiceProcess, sample: &str) -> f64 {
        let text = self.http.get(on.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// `DELETE` of the operation on `on`, with a reason or without.
    async fn cancel(&self, on: &ServiceProcess, id: &str, reason: Option<&str>) -> (u16, Value) {
        let mut request = self.http.delete(on.url(&format!("/api/v1/operations/{id}")));
        if let Some(reason) = reason {
            request = request.json(&json!({ "reason": reason }));
        }
        json_of(request.send().await.unwrap()).await
    }

    /// A three-year backfill of hourly bars of `symbol`, started on `on`.
    async fn start_load(&self, on: &ServiceProcess, symbol: &str) -> String {
        let body = json!({ "symbol": symbol, "timeframe": "1h", "mode": "backfill", "start_date": "2021-01-01", "end_date": "2024-01-01" });
        self.post(on, "/api/v1/data/load", body).await["data"]["operation_id"].as_str().unwrap().to_owned()
    }

    /// A 30-epoch training of the `long` strategy, started on `on`.
    async fn start_training(&self, on: &ServiceProcess) -> String {
        let body = json!({ "symbols": ["EURUSD"], "timeframes": ["1h"], "strategy_name": "long" });
        self.post(on, "/api/v1/trainings/start", body).await["task_id"].as_str().unwrap().to_owned()
    }

    /// Until the load has fetched `segments` segments and saved some of them.
    async fn until_loading(&self, on: &ServiceProcess, load: &str, file: &Path, segments: u64) {
        self.until(on, load, Duration::from_secs(30), |r| {
            r["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= segments && file.exists()
        })
        .await;
    }

    /// Until `on` has recorded that it took the operation over.
    async fn until_taken_over(&self, on: &ServiceProcess, id: &str, within: Duration) -> Value {
        self.until(on, id, within, |r| {
            r["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("took this operation over"))
        })
        .await
    }

    /// The load and the training complete on `on`, the file holding the whole range and the
    /// training every epoch once, in order (its host session went on).
    async fn both_finish_on(&self, on: &ServiceProcess, load: &str, file: &Path, training: &str) {
        let loaded = self.until(on, load, Duration::from_secs(60), finished).await;
        assert_eq!(status(&loaded), "completed", "{loaded}");
        assert!(covers(file, "2021-01-05T00:00:00Z", "2023-12-28T00:00:00Z"), "the file holds the whole range");
        let trained = self.until(on, training, Duration::from_secs(60), finished).await;
        assert_eq!(status(&trained), "completed", "{trained}");
        let epochs: Vec<u64> =
            trained["metrics"]["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
        assert_eq!(epochs, (0..30).collect::<Vec<_>>(), "the host session went on: every epoch once, in order");
    }

    /// The node that owns an operation, as stored.
    async fn owner(&self, id: &str) -> Option<String> {
        let pool = sqlx::PgPool::connect(&self.db.url).await.unwrap();
        let owner = sqlx::query_scalar("SELECT owner_node FROM operations WHERE operation_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        owner
    }
}

/// A replica's settings: short leases and intervals, so that takeovers happen within a test's
/// patience.
fn replica_env<'a>(name: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("KTRDR_OPS__NODE__ID", name),
        ("KTRDR_OPS__OPERATIONS__LEASE_TIMEOUT", LEASE),
        ("KTRDR_OPS__OPERATIONS__HEARTBEAT_INTERVAL", "500ms"),
        ("KTRDR_OPS__OPERATIONS__TAKEOVER_SCAN_INTERVAL", "200ms"),
        ("KTRDR_OPS__OPERATIONS__PROGRESS_PERSIST_INTERVAL", "200ms"),
        ("KTRDR_OPS__DATA__SAVE_INTERVAL", "100ms"),
        ("KTRDR_OPS__TRAINING__POLL_MIN", "20ms"),
        ("KTRDR_OPS__TRAINING__POLL_MAX", "200ms"),
    ];
    env.extend_from_slice(extra);
    env
}

fn status(r: &Value) -> &str {
    r["status"].as_str().unwrap()
}

fn finished(r: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&status(r))
}

fn logged(service: &ServiceProcess, text: &str) -> bool {
    service.output.lock().unwrap().iter().any(|line| line.contains(text))
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn any_replica_reads_lists_long_polls_and_streams_an_operation_another_runs() {
    let cluster = Cluster::new().await;
    let a = cluster.replica("node-a", &[]).await;
    let b = cluster.replica("node-b", &[]).await;
    // B's stream of every operation's changes (the dashboard's) follows it too.
    let everything = tokio::spawn({
        let (http, url) = (cluster.http.clone(), b.url("/api/v1/operations/events"));
        async move {
            read_sse_until(&http, &url, None, Duration::from_secs(30), |events| {
                events.last().is_some_and(|e| e.data["status"] == "completed")
            })
            .await
            .0
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = cluster.start_dummy(&a, 40, 50).await;
    assert_eq!(cluster.owner(&id).await.as_deref(), Some("node-a"));
    let (_, health) = cluster.get(&b, "/api/v1/health").await;
    assert_eq!(health["replicas"], json!(["node-a", "node-b"]), "{health}");

    let seen =
        cluster.until(&b, &id, Duration::from_secs(10), |r| r["progress"]["percentage"].as_f64() > Some(0.0)).await;
    assert_eq!(status(&seen), "running", "{seen}");

    let (code, list) = cluster.get(&b, "/api/v1/operations?active_only=true").await;
    assert_eq!(code, 200);
    assert!(list["data"].as_array().unwrap().iter().any(|o| o["operation_id"] == id.as_str()), "{list}");

    // A long-poll on B is answered by a newer version than the one it names.
    let version = seen["version"].as_u64().unwrap();
    let (code, newer) = cluster.get(&b, &format!("/api/v1/operations/{id}?wait=10s&since={version}")).await;
    assert_eq!(code, 200);
    assert!(newer["data"]["version"].as_u64().unwrap() > version, "{newer}");

    // B's stream follows A's work to its end, in order.
    let (events, closed) = read_sse(
        &cluster.http,
        &b.url(&format!("/api/v1/operations/{id}/events")),
        None,
        1000,
        Duration::from_secs(20),
    )
    .await;
    assert!(closed, "the stream ends with the operation");
    let versions: Vec<u64> = events.iter().map(|e| e.data["version"].as_u64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(events.len() >= 3, "progress arrives while it runs: {versions:?}");
    let last = &events.last().unwrap().data;
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(cluster.record(&a, &id).await["version"], last["version"], "both replicas agree on the end");

    let everything = everything.await.unwrap();
    let ours: Vec<&Value> = everything.iter().map(|e| &e.data).filter(|d| d["operation_id"] == id.as_str()).collect();
    assert!(ours.len() >= 3, "B's global stream carried A's progress: {ours:?}");
    assert!(ours.windows(2).all(|w| w[0]["version"].as_u64() < w[1]["version"].as_u64()), "{ours:?}");
    assert_eq!(ours.last().unwrap()["status"], "completed");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_cancel_on_one_replica_stops_the_work_on_the_replica_running_it() {
    let cluster = Cluster::new().await;
    let a = cluster.replica("node-a", &[("KTRDR_OPS__OPERATIONS__CANCEL_POLL_INTERVAL", "30s")]).await;
    let b = cluster.replica("node-b", &[]).await;
    let id = cluster.start_dummy(&a, 1000, 50).await;
    cluster.until(&a, &id, Duration::from_secs(10), |r| status(r) == "running").await;

    let (code, answer) = cluster.cancel(&b, &id, Some("stopped from node-b")).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["data"]["status"], "cancelled", "{answer}");
    assert_eq!(answer["data"]["cancellation_reason"], "stopped from node-b", "{answer}");
    // A stopped it itself (woken by the notification: its polling is 30 s away).
    assert!(!logged(&b, "recording the cancel here"), "B had to record the cancel itself");
    assert_eq!(cluster.metric(&b, r#"ktrdr_ops_remote_cancels_total{recorded_by="owner"}"#).await, 1.0);
    let on_a = cluster.record(&a, &id).await;
    assert_eq!(status(&on_a), "cancelled");
    let stopped_at = on_a["progress"]["percentage"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.record(&a, &id).await["progress"]["percentage"], stopped_at, "the work stopped");

    // Cancelling it again, anywhere, says it is finished.
    let (code, again) = cluster.cancel(&b, &id, None).await;
    assert_eq!(code, 400, "{again}");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_cancel_arrives_by_polling_when_notifications_are_lost() {
    let cluster = Cluster::new().await;
    // A does not listen at all: only its polling can find the intent.
    let a = cluster
        .replica(
            "node-a",
            &[
                ("KTRDR_OPS__OPERATIONS__CANCEL_NOTIFY", "false"),
                ("KTRDR_OPS__OPERATIONS__CANCEL_POLL_INTERVAL", "300ms"),
            ],
        )
        .await;
    // C listens, but its listening connection is cut before the cancel.
    let c = cluster.replica("node-c", &[("KTRDR_OPS__OPERATIONS__CANCEL_POLL_INTERVAL", "300ms")]).await;
    let b = cluster.replica("node-b", &[]).await;
    let on_a = cluster.start_dummy(&a, 1000, 50).await;
    let on_c = cluster.start_dummy(&c, 1000, 50).await;
    cluster.until(&c, &on_c, Duration::from_secs(10), |r| status(r) == "running").await;

    let pool = sqlx::PgPool::connect(&cluster.db.url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert!(!cut.is_empty(), "the listening connections of A and C were found and cut");

    for (owner, id) in [(&a, &on_a), (&c, &on_c)] {
        let (code, answer) = cluster.cancel(&b, id, None).await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["data"]["status"], "cancelled", "{answer}");
        assert_eq!(status(&cluster.record(owner, id).await), "cancelled");
    }
    assert!(!logged(&b, "recording the cancel here"), "the owners stopped the work themselves");
}

/// The first bar on or after, and the last bar on or before, these instants are in the file.
fn covers(path: &Path, first_by: &str, last_from: &str) -> bool {
    let bars = ktrdr_ops::data::repository::read_csv(path).expect("a complete, valid CSV");
    let (first, last) = (bars.first(), bars.last());
    let by = ktrdr_ops::time::parse_timestamp(first_by).unwrap();
    let from = ktrdr_ops::time::parse_timestamp(last_from).unwrap();
    first.is_some_and(|f| f <= by) && last.is_some_and(|l| l >= from)
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_survivor_takes_over_the_data_load_and_training_of_a_killed_replica() {
    let cluster = Cluster::new().await;
    let mut a = cluster.replica("node-a", &[]).await;
    let b = cluster.replica("node-b", &[]).await;
    let load = cluster.start_load(&a, "AAPL").await;
    let training = cluster.start_training(&a).await;
    let file = cluster.data.path().join("AAPL_1h.csv");
    cluster.until_loading(&a, &load, &file, 5).await;
    cluster
        .until(&a, &training, Duration::from_secs(30), |r| r["progress"]["context"]["epoch"].as_u64() >= Some(2))
        .await;
    a.kill9().await;

    for id in [&load, &training] {
        let taken = cluster.until_taken_over(&b, id, Duration::from_secs(20)).await;
        assert!(!["failed", "cancelled"].contains(&status(&taken)), "{taken}");
        assert_eq!(cluster.owner(id).await.as_deref(), Some("node-b"));
    }
    assert_eq!(cluster.metric(&b, r#"ktrdr_ops_takeovers_total{outcome="resumed"}"#).await, 2.0);
    cluster.both_finish_on(&b, &load, &file, &training).await;
}

/// Rows of a CSV in the data folder, header aside.
fn rows(path: &Path) -> usize {
    ktrdr_ops::data::repository::read_csv(path).expect("a complete, valid CSV").len()
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn two_replicas_loading_one_series_at_once_keep_both_loads_bars() {
    let cluster = Cluster::new().await;
    let a = cluster.replica("node-a", &[]).await;
    let b = cluster.replica("node-b", &[]).await;
    let cluster = &cluster;
    let load = |on, start: &'static str, end: &'static str| {
        let body = json!({ "symbol": "MSFT", "timeframe": "1h", "mode": "full", "start_date": start, "end_date": end });
        async move { cluster.post(on, "/api/v1/data/load", body).await["data"]["operation_id"].as_str().unwrap().to_owned() }
    };
    // Two disjoint ranges of one series, one on each replica, started together.
    let (first, second) = tokio::join!(load(&a, "2021-01-01", "2021-09-01"), load(&b, "2022-01-01", "2022-09-01"));

    let mut waited = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut done_first, mut done_second) = (None, None);
    while done_first.is_none() || done_second.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the loads did not end");
        for (on, id, done) in [(&a, &first, &mut done_first), (&b, &second, &mut done_second)] {
            let record = cluster.record(on, id).await;
            waited |= record.to_string().contains("waiting for another load of MSFT 1h to finish (on another replica)");
            if finished(&record) {
                *done = Some(record);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (done_first, done_second) = (done_first.unwrap(), done_second.unwrap());
    for record in [&done_first, &done_second] {
        assert_eq!(status(record), "completed", "{record}");
    }
    let downloaded = |r: &Value| r["result_summary"]["rows_downloaded"].as_u64().unwrap() as usize;
    let file = cluster.data.path().join("MSFT_1h.csv");
    assert!(downloaded(&done_first) > 1000 && downloaded(&done_second) > 1000);
    assert_eq!(rows(&file), downloaded(&done_first) + downloaded(&done_second), "every bar of both loads is saved");
    assert!(covers(&file, "2021-01-05T00:00:00Z", "2022-08-30T00:00:00Z"));
    assert!(waited, "the second load said it waited for the first, on the other replica");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_replica_paused_past_its_lease_cannot_overwrite_its_successors_result() {
    let cluster = Cluster::new().await;
    let a = cluster.replica("node-a", &[]).await;
    let b = cluster.replica("node-b", &[]).await;
    // 3 s of work: it would complete on A soon after A resumes.
    let id = cluster.start_dummy(&a, 60, 50).await;
    cluster.until(&a, &id, Duration::from_secs(10), |r| status(r) == "running").await;
    a.signal("STOP");

    // A dummy cannot be resumed elsewhere: B records it failed, naming the stopped replica.
    let failed = cluster.until(&b, &id, Duration::from_secs(20), finished).await;
    assert_eq!(status(&failed), "failed", "{failed}");
    assert!(failed["error_message"].as_str().unwrap().contains("node-a"), "{failed}");
    assert_eq!(cluster.metric(&b, r#"ktrdr_ops_takeovers_total{outcome="failed"}"#).await, 1.0);

    a.signal("CONT");
    // Long enough for A's work to have finished and its heartbeat to notice it lost the lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = cluster.record(&b, &id).await;
    assert_eq!(after, failed, "nothing A wrote after its lease expired reached the store");
    let on_a = cluster.record(&a, &id).await;
    assert_eq!(status(&on_a), "failed", "A, too, now serves the stored result: {on_a}");
    assert_eq!(cluster.owner(&id).await.as_deref(), Some("node-b"));
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_cancel_the_owner_cannot_hear_is_recorded_and_carried_out_when_it_returns() {
    let cluster = Cluster::new().await;
    // Leases long enough that nobody takes the operation over meanwhile.
    let lease = [("KTRDR_OPS__OPERATIONS__LEASE_TIMEOUT", "60s")];
    let a = cluster.replica("node-a", &lease).await;
    let b = cluster.replica("node-b", &lease).await;
    let id = cluster.start_dummy(&a, 1000, 50).await;
    cluster.until(&a, &id, Duration::from_secs(10), |r| status(r) == "running").await;
    a.signal("STOP");

    let asked = tokio::time::Instant::now();
    let (code, answer) = cluster.cancel(&b, &id, Some("A is not answering")).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["data"]["status"], "cancelled", "{answer}");
    assert_eq!(answer["data"]["task_cancelled"], false, "the work is not known to have stopped: {answer}");
    assert!(asked.elapsed() >= Duration::from_secs(3), "B waited the cancel grace plus 1 s for A");
    assert!(logged(&b, "recording the cancel here"));
    assert_eq!(cluster.metric(&b, r#"ktrdr_ops_remote_cancels_total{recorded_by="here"}"#).await, 1.0);
    assert_eq!(status(&cluster.record(&b, &id).await), "cancelled");

    a.signal("CONT");
    // Back, A never shows it running again — not even before it has heard (terminal is final;
    // the soak found A's list and record saying `running` for seconds, seed 20261205).
    // (A fresh client: A closes the connections that idled past their timeout while it was stopped.)
    let fresh = reqwest::Client::new();
    let (_, on_a) = json_of(fresh.get(a.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    let on_a = on_a["data"].clone();
    assert_eq!(status(&on_a), "cancelled", "{on_a}");
    let (_, listed) = json_of(fresh.get(a.url("/api/v1/operations?limit=10")).send().await.unwrap()).await;
    let row = listed["data"].as_array().unwrap().iter().find(|r| r["operation_id"] == id.as_str()).cloned();
    assert_eq!(row.map(|r| r["status"].clone()), Some(json!("cancelled")), "{listed}");
    assert_eq!(on_a["cancellation"]["reason"], "A is not answering", "{on_a}");
    // A stops the work once it hears of the forced end (announced, or at its next renewal), and
    // stores where it stopped (still `cancelled`).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !logged(&a, "cancelled elsewhere while this replica was unresponsive") {
        assert!(tokio::time::Instant::now() < deadline, "A never heard of the cancel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, on_a) = json_of(fresh.get(a.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    let on_a = on_a["data"].clone();
    assert_eq!(status(&on_a), "cancelled", "{on_a}");
    let stopped_at = on_a["progress"]["percentage"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, again) = json_of(fresh.get(a.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    assert_eq!(again["data"]["progress"]["percentage"], stopped_at, "A stopped the work");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_cancel_asked_of_a_dead_replica_is_carried_out_by_the_survivor() {
    let cluster = Cluster::new().await;
    let mut a = cluster.replica("node-a", &[]).await;
    // B waits long enough for the takeover (lease 2 s) to happen while it waits.
    let b = cluster.replica("node-b", &[("KTRDR_OPS__OPERATIONS__CANCEL_GRACE", "10s")]).await;
    let load = cluster.start_load(&a, "MSFT").await;
    let dummy = cluster.start_dummy(&a, 1000, 50).await;
    let file = cluster.data.path().join("MSFT_1h.csv");
    cluster.until_loading(&a, &load, &file, 3).await;
    a.kill9().await;

    let reason = Some("not needed any more");
    let (for_load, for_dummy) = tokio::join!(cluster.cancel(&b, &load, reason), cluster.cancel(&b, &dummy, reason));
    for (code, answer) in [for_load, for_dummy] {
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["data"]["status"], "cancelled", "{answer}");
        assert_eq!(answer["data"]["task_cancelled"], true, "B stopped it itself after taking it over: {answer}");
        assert_eq!(answer["data"]["cancellation_reason"], "not needed any more", "{answer}");
    }
    assert!(!logged(&b, "recording the cancel here"), "the survivor carried the cancel out");
    for id in [&load, &dummy] {
        assert_eq!(cluster.owner(id).await.as_deref(), Some("node-b"));
    }
    ktrdr_ops::data::repository::read_csv(&file).expect("the cancelled load left a complete, valid CSV");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_replica_stopped_with_sigterm_hands_its_load_and_training_over() {
    let cluster = Cluster::new().await;
    // Leases far longer than the test: only a handover can move the operations this soon.
    let lease = [("KTRDR_OPS__OPERATIONS__LEASE_TIMEOUT", "60s")];
    let mut a = cluster.replica("node-a", &lease).await;
    let b = cluster.replica("node-b", &lease).await;
    let load = cluster.start_load(&a, "IBM").await;
    let training = cluster.start_training(&a).await;
    let dummy = cluster.start_dummy(&a, 1000, 50).await;
    let file = cluster.data.path().join("IBM_1h.csv");
    cluster.until_loading(&a, &load, &file, 3).await;
    cluster
        .until(&a, &training, Duration::from_secs(30), |r| r["progress"]["context"]["epoch"].as_u64() >= Some(2))
        .await;

    a.signal("TERM");
    assert!(a.wait(Duration::from_secs(20)).await.success(), "A stops cleanly");
    for id in [&load, &training] {
        // A handover is quick: the next takeover scan (200 ms) claims what A gave up.
        let taken = cluster.until_taken_over(&b, id, Duration::from_secs(10)).await;
        assert!(!finished(&taken) || status(&taken) == "completed", "{taken}");
        assert_eq!(cluster.owner(id).await.as_deref(), Some("node-b"));
    }
    let (_, health) = cluster.get(&b, "/api/v1/health").await;
    assert_eq!(health["replicas"], json!(["node-b"]), "A said it was gone: {health}");
    // What cannot be resumed elsewhere was cancelled by A as it stopped.
    let stopped = cluster.record(&b, &dummy).await;
    assert_eq!(status(&stopped), "cancelled", "{stopped}");

    cluster.both_finish_on(&b, &load, &file, &training).await;
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the cluster suite did NOT run")]
async fn a_second_process_under_a_live_replicas_name_is_refused_but_a_restart_after_a_crash_is_not() {
    let cluster = Cluster::new().await;
    let mut a = cluster.replica("node-a", &[]).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(cluster.replica_args())
        .envs(replica_env("node-a", &[]))
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`node-a`") && stderr.contains("KTRDR_OPS__NODE__ID"), "{stderr}");
    let (_, health) = cluster.get(&a, "/api/v1/health").await;
    assert_eq!(health["replicas"], json!(["node-a"]), "{health}");

    // Killed, its name is free again once it is seen not to renew it.
    a.kill9().await;
    let again = cluster.replica("node-a", &[]).await;
    let (_, health) = cluster.get(&again, "/api/v1/health").await;
    assert_eq!(health["replicas"], json!(["node-a"]), "{health}");
}
