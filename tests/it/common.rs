//! Test harness: the real service on port 0 (in-process, or as a child process when a test needs
//! to kill it), each with a fresh database — SQLite in a temp dir, or a new PostgreSQL database
//! when `KTRDR_OPS_TEST_DATABASE_URL` is set — and small HTTP/SSE helpers.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ktrdr_ops::app::{self, Server};
use ktrdr_ops::config::Config;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A fresh, empty database for one test; a PostgreSQL one is dropped when the test is done.
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
    /// The server's admin URL and the database's name, for PostgreSQL.
    postgres: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else { return };
        // Drop runs inside the test's runtime, which must not be blocked (the test's service may
        // be opening connections on it): a thread of its own drops the database, FORCE ending
        // the sessions the service still holds. Best effort — one still running when the test
        // binary exits is swept by .ci/run.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let Ok(pool) = sqlx::PgPool::connect(&admin).await else { return };
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await {
                    eprintln!("could not drop the test database {name}: {e}");
                }
                pool.close().await;
            });
        });
    }
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ops.db").display());
        TestDb { url, _dir: Some(dir), postgres: None }
    }

    /// Another handle on the same database (a second replica's); dropping it drops nothing.
    pub fn shared(&self) -> Self {
        TestDb { url: self.url.clone(), _dir: None, postgres: None }
    }

    /// A new database on the PostgreSQL named by `KTRDR_OPS_TEST_DATABASE_URL`.
    pub async fn postgres() -> Self {
        let admin = std::env::var("KTRDR_OPS_TEST_DATABASE_URL")
            .expect("KTRDR_OPS_TEST_DATABASE_URL names a PostgreSQL server for these tests");
        let name = format!("ktrdr_ops_test_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&admin).await.expect("connect to the test PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin);
        TestDb { url: format!("{base}/{name}"), _dir: None, postgres: Some((admin.clone(), name)) }
    }
}

/// Config for a test service: loopback port 0, the given database, a temp data dir.
pub fn test_config(db: &TestDb, data_dir: &std::path::Path) -> Config {
    let mut config = Config::defaults();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.database.url = db.url.clone();
    config.data.dir = data_dir.to_owned();
    config.training.models_dir = data_dir.join("models");
    config.node.id = "test-node".into();
    // Most tests drive the configured training host; the worker tests ask for simulated workers.
    config.sim.training_workers = 0;
    config.sim.backtest_workers = 0;
    config
}

/// With `KTRDR_OPS_TEST_AUTH=1` the suites that support it run with both tokens set: the service
/// requires them, and the tests' clients, workers and processes present them.
pub fn auth_mode() -> bool {
    std::env::var("KTRDR_OPS_TEST_AUTH").is_ok_and(|v| v == "1")
}

/// The client token of auth mode.
pub const TEST_CLIENT_TOKEN: &str = "test-client-token-0123456789";
/// The worker token of auth mode.
pub const TEST_WORKER_TOKEN: &str = "test-worker-token-0123456789";

/// An HTTP client that presents the client token in auth mode.
pub fn client() -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if auth_mode() {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {TEST_CLIENT_TOKEN}").parse().unwrap();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    builder.build().unwrap()
}

/// `request`, as a worker sends it: with the worker token in auth mode.
pub fn as_worker(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if auth_mode() { request.bearer_auth(TEST_WORKER_TOKEN) } else { request }
}

/// The environment that gives a child process (service or simulated workers) the tokens.
pub fn auth_env() -> Vec<(&'static str, &'static str)> {
    if auth_mode() {
        vec![("KTRDR_OPS_API_TOKEN", TEST_CLIENT_TOKEN), ("KTRDR_OPS_WORKER_TOKEN", TEST_WORKER_TOKEN)]
    } else {
        Vec::new()
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub server: Option<Server>,
    pub db: TestDb,
    pub data_dir: TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestDb::sqlite(), |_| {}).await
    }

    pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start(db, tweak, app::Options::default()).await
    }

    /// With the IB and training simulators in-process (pacing off on our side, as `--sim` does).
    pub async fn spawn_with_sim(tweak: impl FnOnce(&mut Config)) -> Self {
        let options = app::Options { with_simulators: true };
        Self::start(
            TestDb::sqlite(),
            |c| {
                c.hosts.ib.pacing = ktrdr_ops::config::PacingMode::Off;
                tweak(c)
            },
            options,
        )
        .await
    }

    /// With the simulators, on a database that already holds operations.
    pub async fn spawn_on_with_sim(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Self {
        let options = app::Options { with_simulators: true };
        Self::start(
            db,
            |c| {
                c.hosts.ib.pacing = ktrdr_ops::config::PacingMode::Off;
                tweak(c)
            },
            options,
        )
        .await
    }

    async fn start(db: TestDb, tweak: impl FnOnce(&mut Config), options: app::Options) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&db, data_dir.path());
        if auth_mode() {
            config.auth.api_token = TEST_CLIENT_TOKEN.into();
            config.auth.worker_token = TEST_WORKER_TOKEN.into();
        }
        tweak(&mut config);
        let server = app::start(config, options).await.expect("the service starts");
        TestApp { base: format!("http://{}", server.addr()), http: client(), server: Some(server), db, data_dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn sims(&self) -> &ktrdr_ops::sim::Simulators {
        self.server.as_ref().unwrap().simulators().expect("started with the simulators")
    }

    pub fn ib_url(&self) -> String {
        self.sims().ib_url()
    }

    pub fn training_url(&self) -> String {
        self.sims().training_url()
    }

    /// `GET /sim/stats` of the IB simulator.
    pub async fn ib_stats(&self) -> Value {
        self.http.get(format!("{}/sim/stats", self.ib_url())).send().await.unwrap().json().await.unwrap()
    }

    /// `PUT /sim/knobs` of the IB simulator.
    pub async fn ib_knobs(&self, knobs: Value) {
        let response = self.http.put(format!("{}/sim/knobs", self.ib_url())).json(&knobs).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// The historical windows the IB simulator was asked for, in order.
    pub async fn ib_windows(&self) -> Vec<(String, String, String)> {
        let stats = self.ib_stats().await;
        stats["historical"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["start"].as_str().unwrap().to_owned(),
                    h["end"].as_str().unwrap().to_owned(),
                    h["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        json_of(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        json_of(self.http.post(self.url(path)).json(&body).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        json_of(self.http.delete(self.url(path)).send().await.unwrap()).await
    }

    /// Starts a dummy operation and returns its id.
    pub async fn start_dummy(&self, iterations: u32, interval_ms: u64) -> String {
        let (status, body) =
            self.post("/api/v1/dummy/start", json!({ "iterations": iterations, "interval_ms": interval_ms })).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["operation_id"].as_str().unwrap().to_owned()
    }

    pub async fn record(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/operations/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    /// Polls until the operation has `status`, or panics after `within`.
    pub async fn wait_for_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let record = self.record(id).await;
            if record["status"] == status {
                return record;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} never became {status}: {record}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) -> TestDb {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.db
    }
}

pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, body)
}

/// Asserts the error envelope of api.md §1 and returns its code.
pub fn assert_envelope(body: &Value) -> String {
    assert_eq!(body["success"], false, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {body}"));
    assert!(!message.is_empty());
    assert_eq!(body["detail"], body["error"]["message"], "{body}");
    assert!(body["error"]["details"].is_object(), "{body}");
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

/// Reads an SSE stream until it closes, `max` events arrived, or `within` passed.
pub async fn read_sse(
    http: &reqwest::Client,
    url: &str,
    last_event_id: Option<&str>,
    max: usize,
    within: Duration,
) -> (Vec<SseEvent>, bool) {
    read_sse_until(http, url, last_event_id, within, |events| events.len() >= max).await
}

/// Reads an SSE stream until it closes, `enough` says so of the events so far, or `within` passed.
pub async fn read_sse_until(
    http: &reqwest::Client,
    url: &str,
    last_event_id: Option<&str>,
    within: Duration,
    enough: impl Fn(&[SseEvent]) -> bool,
) -> (Vec<SseEvent>, bool) {
    let mut request = http.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => chunk.unwrap(),
            Ok(None) => return (events, true),
            Err(_) => return (events, false),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = SseEvent { id: None, event: None, data: Value::Null };
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    event.id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event.event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            event.data = serde_json::from_str(&data).unwrap();
            events.push(event);
            if enough(&events) {
                return (events, false);
            }
        }
    }
}

/// The simulators as a process of their own, so that they outlive a killed service: the process
/// and the IB and training simulators' URLs.
pub async fn sim_process(
    data_dir: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, String, String) {
    let (child, urls) = sim_process_urls(data_dir, args, env).await;
    (child, urls[0].clone(), urls[1].clone())
}

/// [`sim_process`], with every URL of the line it prints: the IB and training simulators', then
/// its workers' (training, then backtest), then the service they register with.
pub async fn sim_process_urls(
    data_dir: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, Vec<String>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["sim", "--ib-listen", "127.0.0.1:0", "--training-listen", "127.0.0.1:0", "--data-dir", data_dir])
        .args(args)
        .envs(auth_env())
        // Model folders of finished trainings go next to the data, not into the repository.
        .env("KTRDR_OPS__TRAINING__MODELS_DIR", format!("{data_dir}/models"))
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the simulators start")
            .unwrap()
            .expect("the simulators are running");
        if line.contains("IB simulator on") {
            break line;
        }
    };
    // Keep reading, so that the simulators never block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let urls: Vec<String> = line
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches(',').trim_end_matches('"').to_owned())
        .collect();
    (child, urls)
}

/// The service binary as a child process (for tests that kill it).
pub struct ServiceProcess {
    pub child: tokio::process::Child,
    pub base: String,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .envs(auth_env())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the binary starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for reader in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(at) = line.find("listening on http://") {
                        // Plain or JSON logs: the address ends at a space or a quote.
                        let rest = &line[at + "listening on ".len()..];
                        let _ = tx.send(rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap().to_owned());
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let base = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the service did not start: {:?}", output.lock().unwrap()))
            .unwrap_or_else(|| panic!("the service exited: {:?}", output.lock().unwrap()));
        ServiceProcess { child, base, output }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
        assert!(status.success());
    }

    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the service did not exit: {:?}", self.output.lock().unwrap()))
            .unwrap()
    }
}

/// A TCP forwarder to `target` (`host:port`): its address, and the switch that makes it go
/// silent — every connection, open or new, held open with nothing passed on (an address that no
/// longer leads anywhere, or a network cut, without the refusal that would say so at once). When
/// the switch is turned back, the connections that went silent are closed at both ends, as a
/// cut's connections die of their keep-alives; new ones pass again.
pub async fn forwarder(target: &str) -> (String, std::sync::Arc<tokio::sync::watch::Sender<bool>>) {
    use tokio::net::{TcpListener, TcpStream};
    let target = target.to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = listener.local_addr().unwrap().to_string();
    let silent = std::sync::Arc::new(tokio::sync::watch::Sender::new(false));
    let switch = silent.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (target, mut silenced) = (target.clone(), silent.subscribe());
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
                if !*silenced.borrow() {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => return,
                        _ = silenced.wait_for(|s| *s) => {}
                    }
                }
                // Silent: both ends stay open and nothing moves, until the cut ends.
                let _ = silenced.wait_for(|s| !*s).await;
                drop((inbound, upstream));
            });
        }
    });
    (url, switch)
}
