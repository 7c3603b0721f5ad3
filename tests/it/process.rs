//! The binary as users run it: a child process killed with -9, stopped with SIGTERM, given bad
//! config, asked for its version, migrating a database.

use crate::common;

use std::time::Duration;

use common::{ServiceProcess, TestDb, json_of, sim_process};
use serde_json::json;

fn serve_args(db: &TestDb) -> Vec<String> {
    vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into(), "--database-url".into(), db.url.clone()]
}

async fn start_dummies(http: &reqwest::Client, service: &ServiceProcess, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let response = http
            .post(service.url("/api/v1/dummy/start"))
            .json(&json!({ "iterations": 1000, "interval_ms": 50 }))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["data"]["operation_id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn record(http: &reqwest::Client, service: &ServiceProcess, id: &str) -> serde_json::Value {
    let (status, body) =
        json_of(http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn operations_killed_with_the_process_read_failed_interrupted_after_a_restart() {
    let db = TestDb::sqlite();
    let args = serve_args(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&args, &[]).await;
    let ids = start_dummies(&http, &service, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(record(&http, &service, &ids[0]).await["status"], "running");
    service.kill9().await;

    let service = ServiceProcess::start(&args, &[]).await;
    for id in &ids {
        let r = record(&http, &service, id).await;
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error_message"], "interrupted: service restarted before the operation finished");
        assert!(r["completed_at"].is_string());
    }
    let (_, list) = json_of(http.get(service.url("/api/v1/operations?active_only=true")).send().await.unwrap()).await;
    assert_eq!(list["total_count"], 0, "nothing is left running: {list}");
}

#[tokio::test]
async fn sigterm_cancels_running_operations_stores_them_and_exits_zero() {
    let db = TestDb::sqlite();
    let args = serve_args(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&args, &[]).await;
    let ids = start_dummies(&http, &service, 5).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    service.signal("TERM");
    let status = service.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{:?}", service.output.lock().unwrap());

    let service = ServiceProcess::start(&args, &[]).await;
    for id in &ids {
        let r = record(&http, &service, id).await;
        assert_eq!(r["status"], "cancelled", "{r}");
        assert_eq!(r["error_message"], "Operation cancelled: service shutting down");
    }
    let lines = service.output.lock().unwrap().join("\n");
    assert!(!lines.contains("reconciled"), "nothing was left to reconcile:\n{lines}");
}

#[tokio::test]
async fn invalid_configuration_exits_2_with_one_line_naming_the_key() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["serve", "--listen", "nowhere"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.listen"), "{stderr}");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .env("KTRDR_OPS__OPERATIONS__CANCEL_GRACE", "whenever")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("operations.cancel_grace"));
}

#[tokio::test]
async fn version_and_migrate_work_from_the_command_line() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops")).arg("--version").output().await.unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("ktrdr-ops {}", env!("CARGO_PKG_VERSION")));

    let db = TestDb::sqlite();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["migrate", "--database-url", &db.url])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("up to date"));
}

/// A PostgreSQL that accepts connections and never answers, as one behind a cut network looks:
/// the service says so within `database.acquire_timeout`, not after half a minute or never.
#[tokio::test]
async fn an_unanswering_database_fails_the_start_within_the_acquire_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let url = format!("postgres://ops:secret@127.0.0.1:{port}/ops");
    let serve = ["serve", "--database-url", &url, "--listen", "127.0.0.1:0"];
    let migrate = ["migrate", "--database-url", &url];
    for args in [&serve[..], &migrate[..]] {
        let command = args[0];
        let started = std::time::Instant::now();
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
            .args(args)
            .env("KTRDR_OPS__DATABASE__ACQUIRE_TIMEOUT", "1s")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("`{command}` still waits for the silent database after 20 s"))
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "`{command}`: {stderr}");
        assert!(took < Duration::from_secs(8), "`{command}` gave up after {took:?}");
        assert!(stderr.contains(&format!("postgres://ops:***@127.0.0.1:{port}/ops")), "{stderr}");
        assert!(!stderr.contains("secret") && stderr.contains("timed out"), "{stderr}");
    }
    holder.abort();
}

#[tokio::test]
async fn serve_with_sim_uses_the_built_in_hosts() {
    let db = TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let mut args = serve_args(&db);
    args.extend(["--sim".to_owned(), "--data-dir".to_owned(), data_dir]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let service = ServiceProcess::start(&args, &[]).await;
    let http = reqwest::Client::new();
    let (status, health) = json_of(http.get(service.url("/api/v1/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(health["hosts"]["ib"]["reachable"], true, "{health}");
    assert_eq!(health["hosts"]["training"]["reachable"], true, "{health}");
    assert_eq!(health["hosts"]["training"]["protocol"], "operations");
}

/// The first line of `child`'s output that contains `text` (within 20 s); the rest is read on
/// in the background, so that the child never blocks on a full pipe.
async fn first_line_with(child: &mut tokio::process::Child, text: &str) -> String {
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
        if line.contains(text) {
            break line;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line
}

/// Workers alone need no IB simulator: two such processes on one machine do not clash on :5001.
#[tokio::test]
async fn the_sim_command_with_workers_alone_starts_no_ib_simulator() {
    let data = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for _ in 0..2 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
            .args([
                "sim",
                "--training-workers",
                "1",
                "--backend-url",
                "http://127.0.0.1:9",
                "--training-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let line = first_line_with(&mut child, "training workers on").await;
        assert!(line.starts_with("no IB simulator"), "{line}");
        children.push(child);
    }
    for child in &mut children {
        assert!(child.try_wait().unwrap().is_none(), "both keep running");
    }
}

#[tokio::test]
async fn the_sim_command_serves_both_simulators() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args([
            "sim",
            "--ib-listen",
            "127.0.0.1:0",
            "--training-listen",
            "127.0.0.1:0",
            "--sim-training-protocol",
            "sessions",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let line = first_line_with(&mut child, "IB simulator on").await;
    let urls: Vec<&str> =
        line.split_whitespace().filter(|w| w.starts_with("http://")).map(|w| w.trim_end_matches(',')).collect();
    let http = reqwest::Client::new();
    let ib: serde_json::Value = http.get(format!("{}/health", urls[0])).send().await.unwrap().json().await.unwrap();
    assert_eq!(ib["service"], "ib-connector");
    let training: serde_json::Value =
        http.get(format!("{}/health", urls[1])).send().await.unwrap().json().await.unwrap();
    assert_eq!(training["service"], "training-worker");
    // The sessions generation has no operations API: that is how clients tell them apart.
    let probe = http.get(format!("{}/api/v1/operations", urls[1])).send().await.unwrap();
    assert_eq!(probe.status(), 404);
}

/// How the service is stopped mid-load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill9,
    Sigterm,
}

#[tokio::test]
async fn a_load_killed_mid_way_is_continued_after_the_restart_by_a_linked_operation_that_fetches_nothing_twice() {
    a_load_stopped_mid_way_is_continued_after_the_restart(Stop::Kill9).await;
}

/// Graceful is never worse than a crash: SIGTERM (every deploy sends it) leaves the load for the
/// restart to continue, having saved everything it fetched — it used to be cancelled.
#[tokio::test]
async fn a_load_stopped_by_sigterm_is_continued_after_the_restart_and_fetches_at_most_one_window_twice() {
    a_load_stopped_mid_way_is_continued_after_the_restart(Stop::Sigterm).await;
}

async fn a_load_stopped_mid_way_is_continued_after_the_restart(stop: Stop) {
    use ktrdr_ops::data::frame::Bars;
    use ktrdr_ops::data::repository::read_csv;
    use ktrdr_ops::data::timeframe::Timeframe;
    use ktrdr_ops::sim::market::Instrument;
    use ktrdr_ops::time::parse_timestamp;

    let db = TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    // The simulators in a process of their own: their request log outlives the service.
    let (_sim, ib_url, training_url) = sim_process(&data_dir, &["--sim-latency-ms", "40"], &[]).await;
    let mut args = serve_args(&db);
    args.extend(["--ib-url", &ib_url, "--training-url", &training_url, "--data-dir", &data_dir].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("KTRDR_OPS__DATA__SAVE_INTERVAL", "100ms"), ("KTRDR_OPS__HOSTS__IB__PACING", "off")];
    let http = reqwest::Client::new();
    let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "backfill", "start_date": "2021-01-01", "end_date": "2024-01-01" });

    let mut service = ServiceProcess::start(&args, &env).await;
    let (_, answer) = json_of(http.post(service.url("/api/v1/data/load")).json(&body).send().await.unwrap()).await;
    let id = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    let file = data.path().join("AAPL_1h.csv");
    loop {
        let r = record(&http, &service, &id).await;
        assert!(r["status"] == "pending" || r["status"] == "running", "{r}");
        if r["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= 8 && file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match stop {
        Stop::Kill9 => service.kill9().await,
        Stop::Sigterm => {
            service.signal("TERM");
            assert!(service.wait(Duration::from_secs(20)).await.success(), "a graceful stop exits 0");
        }
    }
    let saved = read_csv(&file).expect("the file on disk is a complete, valid CSV");
    assert!(!saved.is_empty());

    let service = ServiceProcess::start(&args, &env).await;
    let r = record(&http, &service, &id).await;
    assert_eq!(r["status"], "failed", "terminal is final: the interrupted load stays interrupted");
    assert_eq!(r["error_message"], "interrupted: service restarted before the operation finished");
    let so_far = &r["result_summary"];
    let rows = so_far["rows_after"].as_u64().unwrap_or_else(|| panic!("no result_summary: {r}"));
    assert!(rows > 0 && rows <= saved.len() as u64, "{so_far}");

    // Its continuation started by itself, linked to it.
    let (status, children) =
        json_of(http.get(service.url(&format!("/api/v1/operations/{id}/children"))).send().await.unwrap()).await;
    assert_eq!(status, 200, "{children}");
    assert_eq!(children["total_count"], 1, "{children}");
    let continuation = children["data"][0]["operation_id"].as_str().unwrap().to_owned();
    let done = loop {
        let r = record(&http, &service, &continuation).await;
        if r["status"] != "running" && r["status"] != "pending" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["parent_operation_id"], id.as_str());
    assert_eq!(done["result_summary"]["rows_before"], saved.len(), "picked up from what was saved");
    let t = |s: &str| parse_timestamp(s).unwrap();
    let whole = Bars::from_bars(&Instrument::new("AAPL").bars(Timeframe::H1, t("2021-01-01"), t("2024-01-01")));
    assert_eq!(read_csv(&file).unwrap(), whole, "the continuation finished the job");

    // Over both operations, nothing that was saved was asked of the host again: only what the
    // killed process had fetched after its last save (every 100 ms here) is fetched twice.
    let last_saved = t(so_far["last_bar"].as_str().unwrap());
    let stats: serde_json::Value = http.get(format!("{ib_url}/sim/stats")).send().await.unwrap().json().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut twice = 0;
    for h in stats["historical"].as_array().unwrap().iter().filter(|h| h["outcome"] == "ok") {
        if !seen.insert((h["start"].to_string(), h["end"].to_string())) {
            assert!(t(h["end"].as_str().unwrap()) > last_saved, "a saved window was fetched again: {h}");
            twice += 1;
        }
    }
    match stop {
        Stop::Kill9 => assert!(twice <= 4, "{twice} windows fetched twice: more than the last 100 ms of fetching"),
        // Everything fetched was saved as the load stopped: at most the window in flight again.
        Stop::Sigterm => assert!(twice <= 1, "{twice} windows fetched twice after a graceful stop"),
    }
}

#[tokio::test]
async fn a_training_survives_a_killed_service_by_re_attaching_to_its_host_session() {
    let rig = TrainingRig::start("40").await;
    let args = rig.args();
    let http = reqwest::Client::new();

    let mut service = ServiceProcess::start(&args, &[]).await;
    let id = start_training_until(&http, &service, |r| r["metrics"]["epochs"].as_array().is_some_and(|e| e.len() >= 2))
        .await;
    service.kill9().await;

    let service = ServiceProcess::start(&args, &[]).await;
    assert_the_training_went_on(&http, &service, &id).await;
}

/// The training re-attached after the restart and completed, with every epoch once.
async fn assert_the_training_went_on(http: &reqwest::Client, service: &ServiceProcess, id: &str) {
    let done = loop {
        let r = record(http, service, id).await;
        if r["status"] != "running" && r["status"] != "pending" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["status"], "completed", "the training went on across the restart: {done}");
    let epochs: Vec<u64> =
        done["metrics"]["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (0..10).collect::<Vec<u64>>(), "every epoch once, across the restart");
    let lines = service.output.lock().unwrap().join("\n");
    assert!(lines.contains("re-attached"), "{lines}");
}

#[tokio::test]
async fn a_training_stopped_by_sigterm_records_the_hosts_stop() {
    let rig = TrainingRig::start("200").await;
    let args = rig.args();
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&args, &[]).await;
    let id = start_training_until(&http, &service, |r| r["progress"]["context"]["host_status"] == "running").await;
    service.signal("TERM");
    assert!(service.wait(Duration::from_secs(20)).await.success());

    let service = ServiceProcess::start(&args, &[]).await;
    let r = record(&http, &service, &id).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    let remote = &r["cancellation"]["remote"];
    assert_eq!(remote["host"], "training", "{r}");
    assert!(remote["acknowledged_at"].is_string(), "the host acknowledged the stop: {r}");
    assert_eq!(remote["host_final_status"], "cancelled", "and the record says what it did: {r}");
}

/// The simulators in a process of their own (they outlive a killed service), EURUSD 1h data on
/// disk, and the arguments of a service using them.
struct TrainingRig {
    _db: TestDb,
    _data: tempfile::TempDir,
    _sim: tokio::process::Child,
    args: Vec<String>,
}

impl TrainingRig {
    async fn start(training_pace_ms: &str) -> Self {
        let db = TestDb::sqlite();
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().display().to_string();
        std::fs::write(
            data.path().join("EURUSD_1h.csv"),
            "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n",
        )
        .unwrap();
        let (sim, ib_url, training_url) =
            sim_process(&data_dir, &["--sim-training-pace-ms", training_pace_ms], &[]).await;
        let strategies = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
        let mut args = serve_args(&db);
        args.extend(
            [
                "--ib-url",
                &ib_url,
                "--training-url",
                &training_url,
                "--data-dir",
                &data_dir,
                "--strategies-dir",
                strategies,
            ]
            .map(str::to_owned),
        );
        TrainingRig { _db: db, _data: data, _sim: sim, args }
    }

    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

/// Starts the example training and waits until its record satisfies `ready`; its id.
async fn start_training_until(
    http: &reqwest::Client,
    service: &ServiceProcess,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> String {
    let (status, answer) = json_of(
        http.post(service.url("/api/v1/trainings/start"))
            .json(&json!({ "strategy_name": "example_mlp" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["task_id"].as_str().unwrap().to_owned();
    while !ready(&record(http, service, &id).await) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

/// A service that keeps its address across restarts (workers register with the same one), on a
/// database and a data folder (holding EURUSD 1h) of its own, with the repository's strategies.
struct RestartRig {
    db: TestDb,
    data: tempfile::TempDir,
    listen: String,
}

impl RestartRig {
    fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(
            data.path().join("EURUSD_1h.csv"),
            "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        RestartRig { db: TestDb::sqlite(), data, listen: format!("127.0.0.1:{port}") }
    }

    fn data_dir(&self) -> String {
        self.data.path().display().to_string()
    }

    fn backend(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `serve`'s arguments, to be borrowed as `&str`s.
    fn args(&self) -> Vec<String> {
        let strategies = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
        ["serve", "--listen", &self.listen, "--database-url", &self.db.url, "--data-dir", &self.data_dir()]
            .into_iter()
            .map(str::to_owned)
            .chain(["--strategies-dir".to_owned(), strategies.to_owned()])
            .collect()
    }
}

#[tokio::test]
async fn a_restarted_service_hears_from_its_workers_again_and_follows_their_trainings_to_the_end() {
    let rig = RestartRig::new();
    let (owned, data_dir, backend) = (rig.args(), rig.data_dir(), rig.backend());
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let mut service = ServiceProcess::start(&args, &[]).await;
    let worker_args = ["--training-workers", "1", "--backend-url", &backend, "--sim-training-pace-ms", "40"];
    let (_worker, _ib, worker_url) = sim_process(&data_dir, &worker_args, &[]).await;
    let http = reqwest::Client::new();
    let worker_id = loop {
        let fleet: serde_json::Value =
            http.get(service.url("/api/v1/workers")).send().await.unwrap().json().await.unwrap();
        if let Some(w) = fleet.as_array().unwrap().iter().find(|w| w["endpoint_url"] == worker_url.as_str()) {
            break w["worker_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let id = start_training_until(&http, &service, |r| r["metrics"]["epochs"].as_array().is_some_and(|e| e.len() >= 2))
        .await;
    service.signal("TERM");
    assert!(service.wait(Duration::from_secs(20)).await.success());
    let service = ServiceProcess::start(&args, &[]).await;
    // The worker was told of the shutdown and registers again, still busy with the training.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !service.output.lock().unwrap().iter().any(|l| l.contains("worker registered") && l.contains(&worker_id)) {
        assert!(tokio::time::Instant::now() < deadline, "the worker never registered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered_again: serde_json::Value =
        http.get(service.url(&format!("/api/v1/workers/{worker_id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(registered_again["status"], "busy", "{registered_again}");
    assert_eq!(registered_again["current_operation_id"], id.as_str(), "{registered_again}");
    assert_the_training_went_on(&http, &service, &id).await;
}

/// The operation's record once it has ended; panics if it has not within `within`.
async fn ended_within(
    http: &reqwest::Client,
    service: &ServiceProcess,
    id: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = record(http, service, id).await;
        if !["pending", "running"].contains(&r["status"].as_str().unwrap()) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never ended: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Work that waits is never failed by a crash: a training waiting for a worker (none is
/// registered yet) queues again after kill -9 and a restart, and runs once a worker joins.
#[tokio::test]
async fn a_training_waiting_for_a_worker_survives_a_crash_and_runs_when_one_joins() {
    let rig = RestartRig::new();
    let (owned, data_dir, backend) = (rig.args(), rig.data_dir(), rig.backend());
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    // No training host: trainings wait for a worker to register.
    let env = [("KTRDR_OPS__HOSTS__TRAINING__URL", "")];
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&args, &env).await;
    let id = start_training_until(&http, &service, |r| {
        r["progress"]["current_step"].as_str().unwrap_or_default().contains("waiting for a training worker")
    })
    .await;
    service.kill9().await;

    let service = ServiceProcess::start(&args, &env).await;
    let after = record(&http, &service, &id).await;
    assert!(["pending", "running"].contains(&after["status"].as_str().unwrap()), "queued again, not failed: {after}");
    let worker_args = ["--training-workers", "1", "--backend-url", &backend, "--sim-training-pace-ms", "5"];
    let (_worker, _ib, _url) = sim_process(&data_dir, &worker_args, &[]).await;
    let done = ended_within(&http, &service, &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["progress"]["context"]["worker_id"].is_string(), "{done}");
}

/// A load waiting for a concurrency slot is never failed by a crash: after kill -9 and a
/// restart it is queued again and runs, while the one that was running is interrupted and
/// continued from its checkpoint.
#[tokio::test]
async fn a_load_waiting_for_a_slot_survives_a_crash_and_runs_after_the_restart() {
    let db = TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let (_sim, ib_url, training_url) = sim_process(&data_dir, &["--sim-latency-ms", "40"], &[]).await;
    let mut args = serve_args(&db);
    args.extend(["--ib-url", &ib_url, "--training-url", &training_url, "--data-dir", &data_dir].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("KTRDR_OPS__OPERATIONS__MAX_CONCURRENT__DATA_LOAD", "1"), ("KTRDR_OPS__HOSTS__IB__PACING", "off")];
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&args, &env).await;
    let start = |symbol: &str| {
        let body = json!({ "symbol": symbol, "timeframe": "1h", "mode": "backfill", "start_date": "2021-01-01", "end_date": "2024-01-01" });
        http.post(service.url("/api/v1/data/load")).json(&body).send()
    };
    let (_, first) = json_of(start("AAPL").await.unwrap()).await;
    let (_, second) = json_of(start("MSFT").await.unwrap()).await;
    let (first, second) = (
        first["data"]["operation_id"].as_str().unwrap().to_owned(),
        second["data"]["operation_id"].as_str().unwrap().to_owned(),
    );
    loop {
        let r = record(&http, &service, &first).await;
        if r["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(record(&http, &service, &second).await["status"], "pending", "waiting for the slot");
    service.kill9().await;

    let service = ServiceProcess::start(&args, &env).await;
    assert_eq!(record(&http, &service, &first).await["status"], "failed", "the running one: interrupted");
    let done = ended_within(&http, &service, &second, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "queued again, not failed: {done}");
}
