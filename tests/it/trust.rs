//! The trust model (workers.md §9, README "Security") attacked over real sockets: worker
//! credentials apart from the client's, trusted networks, identities a stranger cannot take, reports
//! only on a worker's own work, endpoints that cannot be aimed at other services (redirects,
//! echoed answers, link-local addresses), and the limits that keep one client from taking the
//! service down — half-sent headers, idle connections, active operations, open streams — plus
//! strategy links out of their folder, unwritable folders, blank tokens and keyed retries. Every
//! endpoint the service could call is on this machine (refused ones may name others: they are
//! never contacted).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestApp, assert_envelope, json_of};
use ktrdr_ops::config::Config;
use ktrdr_ops::time::HumanDuration;

const CLIENT: &str = "client-token-0123456789";
const WORKER: &str = "worker-token-0123456789";

/// Serves `router` on a free local port; its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// An "internal service" that must never be reached through the service: counts every request
/// and answers with a secret.
async fn internal_service() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({ "worker_status": "busy", "current_operation": "op_training_stolen",
                               "secret": "SECRET-INTERNAL-ANSWER" }))
        }
    });
    (serve(router).await, hits)
}

/// A worker that answers its health checks and redirects everything else to `to`.
async fn redirecting_worker(to: &str, health_too: bool) -> String {
    let target = to.to_owned();
    let redirect = move || {
        let target = target.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", format!("{target}/steal"))]).into_response() }
    };
    let mut router = Router::new().fallback(redirect.clone());
    if !health_too {
        router = router.route(
            "/health",
            axum::routing::get(|| async { axum::Json(json!({ "healthy": true, "worker_status": "idle" })) }),
        );
    } else {
        router = router.route("/health", axum::routing::get(redirect));
    }
    serve(router).await
}

fn eurusd(app: &TestApp) {
    let series = app.data_dir.path().join("EURUSD_1h.csv");
    std::fs::write(series, "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n").unwrap();
}

fn quick_checks(c: &mut Config) {
    c.workers.health_check_interval = HumanDuration(Duration::from_millis(100));
    c.workers.health_check_timeout = HumanDuration(Duration::from_millis(500));
    c.workers.health_check_failures = 2;
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.unwrap()).await
}

fn registration(id: &str, endpoint: &str) -> Value {
    json!({ "worker_id": id, "worker_type": "training", "endpoint_url": endpoint })
}

#[tokio::test]
async fn workers_need_the_worker_token_and_the_client_token_is_not_one() {
    let app = TestApp::spawn_with_sim(|c| {
        c.auth.api_token = CLIENT.into();
        c.auth.worker_token = WORKER.into();
        c.sim.training_workers = 1;
    })
    .await;
    let register = |token| {
        call(
            &app,
            reqwest::Method::POST,
            "/api/v1/workers/register",
            token,
            Some(registration("w1", "http://127.0.0.1:9")),
        )
    };
    let (status, body) = register(None).await;
    assert_eq!((status, assert_envelope(&body)), (401, "UNAUTHORIZED".to_owned()));
    assert_eq!(register(Some(CLIENT)).await.0, 401, "the client token is not a worker credential");
    assert_eq!(register(Some(WORKER)).await.0, 200);

    let get = |path: &'static str, token| call(&app, reqwest::Method::GET, path, token, None);
    assert_eq!(get("/api/v1/workers/w1", Some(WORKER)).await.0, 200, "a worker reads its own record");
    assert_eq!(get("/api/v1/workers/w1", Some(CLIENT)).await.0, 200);
    assert_eq!(get("/api/v1/workers/w1", None).await.0, 401);
    assert_eq!(get("/api/v1/workers", Some(WORKER)).await.0, 401, "the worker token is not a client credential");
    let patch = call(
        &app,
        reqwest::Method::PATCH,
        "/api/v1/operations/op_x/status",
        Some(CLIENT),
        Some(json!({ "status": "CANCELLED" })),
    );
    assert_eq!(patch.await.0, 401);

    // The built-in simulated worker presented the worker token: auth on, and it trains.
    let (_, workers) = get("/api/v1/workers", Some(CLIENT)).await;
    assert_eq!(workers.as_array().unwrap().len(), 2, "{workers}");
    eurusd(&app);
    let (status, started) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/trainings/start",
        Some(CLIENT),
        Some(json!({ "strategy_name": "example_mlp" })),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let id = started["task_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, record) =
            call(&app, reqwest::Method::GET, &format!("/api/v1/operations/{id}"), Some(CLIENT), None).await;
        if record["data"]["status"] == "completed" {
            assert!(record["data"]["progress"]["context"]["worker_id"].is_string(), "{record}");
            break;
        }
        assert!(Instant::now() < deadline && record["data"]["status"] != "failed", "{record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_only_a_client_token_the_built_in_workers_still_join() {
    let app = TestApp::spawn_with_sim(|c| {
        c.auth.api_token = CLIENT.into();
        c.sim.training_workers = 1;
    })
    .await;
    let (_, workers) = call(&app, reqwest::Method::GET, "/api/v1/workers", Some(CLIENT), None).await;
    assert_eq!(workers.as_array().map(Vec::len), Some(1), "{workers}");
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/workers/register",
        Some(CLIENT),
        Some(registration("w", "http://127.0.0.1:9")),
    )
    .await;
    assert_eq!(status, 401, "nobody else joins without the (generated) worker token");
}

#[tokio::test]
async fn trusted_networks_admit_workers_without_a_token() {
    let trusting = TestApp::spawn_with_sim(|c| {
        c.auth.worker_token = WORKER.into();
        c.workers.trusted_networks = vec!["127.0.0.0/8".into()];
    })
    .await;
    let body = Some(registration("ktrdr-worker", "http://127.0.0.1:9"));
    assert_eq!(call(&trusting, reqwest::Method::POST, "/api/v1/workers/register", None, body.clone()).await.0, 200);
    let strict = TestApp::spawn_with_sim(|c| {
        c.auth.worker_token = WORKER.into();
        c.workers.trusted_networks = vec!["10.0.0.0/8".into()];
    })
    .await;
    assert_eq!(call(&strict, reqwest::Method::POST, "/api/v1/workers/register", None, body).await.0, 401);
    assert_eq!(strict.get("/api/v1/operations").await.0, 200, "no client token set: clients need none");
}

#[tokio::test]
async fn registrations_are_strict_and_endpoints_cannot_aim_elsewhere() {
    let app =
        TestApp::spawn_with_sim(|c| c.workers.allowed_networks = vec!["10.0.0.0/8".into(), "127.0.0.1".into()]).await;
    let cases = [
        (json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": "http://10.0.0.7:1", "extra": 1 }), None),
        (registration("w/../x", "http://10.0.0.7:1"), Some("worker_id")),
        (registration(&"w".repeat(129), "http://10.0.0.7:1"), Some("worker_id")),
        (
            json!({ "worker_id": "w", "worker_type": "training", "endpoint_url": "http://10.0.0.7:1",
                 "capabilities": { "blob": "x".repeat(17 * 1024) } }),
            Some("capabilities"),
        ),
        (registration("w", "http://169.254.169.254:80"), Some("endpoint_url")),
        (registration("w", "http://[fe80::1]:80"), Some("endpoint_url")),
        (registration("w", "http://user:pw@10.0.0.7:1"), Some("endpoint_url")),
        (registration("w", "http://10.0.0.7:1/?path=/x"), Some("endpoint_url")),
        (registration("w", "http://10.0.0.7:1#x"), Some("endpoint_url")),
        (registration("w", "http://metadata.google.internal"), Some("endpoint_url")),
        (registration("w", "http://192.168.1.5:5003"), Some("endpoint_url")),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/api/v1/workers/register", body.clone()).await;
        assert_eq!(status, 422, "{answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
        }
    }
    assert_eq!(app.get("/api/v1/workers").await.1, json!([]), "nothing was registered");
    assert_eq!(app.post("/api/v1/workers/register", registration("w", "http://127.0.0.1:9")).await.0, 200);
}

/// A worker whose health answer can be switched off (503), as a worker that died would stop
/// answering.
async fn switchable_worker() -> (String, Arc<std::sync::atomic::AtomicBool>) {
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = alive.clone();
    let router = Router::new().route(
        "/health",
        axum::routing::get(move || {
            let alive = flag.load(Ordering::SeqCst);
            async move {
                if alive {
                    axum::Json(json!({ "healthy": true, "worker_status": "idle" })).into_response()
                } else {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        }),
    );
    (serve(router).await, alive)
}

#[tokio::test]
async fn a_live_workers_identity_cannot_be_taken_but_a_gone_one_can_be_replaced() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (endpoint, alive) = switchable_worker().await;
    assert_eq!(app.post("/api/v1/workers/register", registration("first", &endpoint)).await.0, 200);
    let (status, answer) = app.post("/api/v1/workers/register", registration("second", &endpoint)).await;
    assert_eq!((status, assert_envelope(&answer)), (409, "WORKER_CONFLICT".to_owned()), "{answer}");
    let (status, _) = app.post("/api/v1/workers/register", registration("first", "http://127.0.0.1:9")).await;
    assert_eq!(status, 409, "a live worker's id cannot be pointed elsewhere");
    assert_eq!(app.get("/api/v1/workers/first").await.1["endpoint_url"], endpoint.as_str());

    // The first one stops answering (it died): its endpoint is free for another at once.
    alive.store(false, Ordering::SeqCst);
    assert_eq!(app.post("/api/v1/workers/register", registration("second", &endpoint)).await.0, 200);
    assert_eq!(app.get("/api/v1/workers/first").await.0, 404, "replaced");
    // A worker back at a new address, its old one silent: registered there at once.
    let (status, moved) = app.post("/api/v1/workers/register", registration("second", "http://127.0.0.1:13")).await;
    assert_eq!((status, moved["endpoint_url"].as_str()), (200, Some("http://127.0.0.1:13")), "{moved}");
}

/// Until `id` has ended; its record.
async fn ended(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = app.record(id).await;
        if ["completed", "failed", "cancelled"].contains(&record["status"].as_str().unwrap()) {
            return record;
        }
        assert!(Instant::now() < deadline, "{id} never ended: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn host_calls_follow_no_redirects_and_never_carry_an_answer_into_records() {
    let app = TestApp::spawn_with_sim(|c| {
        quick_checks(c);
        // Only registered workers train here: the rogue one is all there is.
        c.hosts.training.url = String::new();
        c.training.start_timeout = HumanDuration(Duration::from_secs(2));
    })
    .await;
    eurusd(&app);
    let (internal, hits) = internal_service().await;

    // A worker that redirects the training start (and its strategy text) to an internal service.
    let rogue = redirecting_worker(&internal, false).await;
    let body = json!({ "worker_id": "rogue", "worker_type": "training", "endpoint_url": rogue, "capabilities": { "gpu": true } });
    assert_eq!(app.post("/api/v1/workers/register", body).await.0, 200);
    let (status, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "example_mlp" })).await;
    assert_eq!(status, 200, "{started}");
    let record = ended(&app, started["task_id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert!(record.to_string().contains("307"), "the redirect is named: {record}");

    // A worker whose health check redirects: no answer, nothing read from the internal service.
    let hiding = redirecting_worker(&internal, true).await;
    assert_eq!(app.post("/api/v1/workers/register", registration("hiding", &hiding)).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, worker) = app.get("/api/v1/workers/hiding").await;
        if worker["status"] == "temporarily_unavailable" {
            assert_eq!(worker["current_operation_id"], Value::Null, "{worker}");
            break;
        }
        assert!(Instant::now() < deadline, "{worker}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the internal service was never reached");
}

#[tokio::test]
async fn a_workers_odd_answer_is_described_never_copied() {
    let app = TestApp::spawn_with_sim(|c| c.hosts.training.url = String::new()).await;
    eurusd(&app);
    // A worker that answers the start with someone else's words.
    let echo = serve(
        Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { axum::Json(json!({ "healthy": true, "worker_status": "idle" })) }),
            )
            .route(
                "/training/start",
                axum::routing::post(|| async { axum::Json(json!({ "secret": "SECRET-INTERNAL-ANSWER" })) }),
            ),
    )
    .await;
    assert_eq!(app.post("/api/v1/workers/register", registration("echo", &echo)).await.0, 200);
    let (_, started) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "example_mlp" })).await;
    let record = ended(&app, started["task_id"].as_str().unwrap()).await;
    let text = record.to_string();
    assert_eq!(record["status"], "failed", "{text}");
    assert!(!text.contains("SECRET"), "a host's raw answer never reaches a record: {text}");
    assert!(text.contains("bytes"), "what was wrong is said instead: {text}");
}

#[tokio::test]
async fn half_sent_headers_are_cut_off_and_the_service_keeps_answering() {
    let app = TestApp::spawn_with_sim(|c| c.server.header_read_timeout = HumanDuration(Duration::from_secs(1))).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        }
        idle.push(stream);
    }
    let opened = Instant::now();
    for _ in 0..20 {
        let began = Instant::now();
        assert_eq!(app.get("/api/v1/health").await.0, 200);
        assert!(began.elapsed() < Duration::from_millis(500), "health answers meanwhile");
    }
    for mut stream in idle {
        let mut buffer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buffer)).await;
        assert!(closed.is_ok(), "a half-sent request's connection is closed");
    }
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "all closed within the header timeout + 1 s: {:?}",
        opened.elapsed()
    );
}

#[tokio::test]
async fn past_max_connections_new_ones_wait_and_open_ones_are_answered() {
    let app = TestApp::spawn_with_sim(|c| {
        c.server.max_connections = 8;
        c.server.header_read_timeout = HumanDuration(Duration::from_secs(2));
    })
    .await;
    // A client with its connection open before the flood.
    let client = reqwest::Client::new();
    assert_eq!(client.get(app.url("/api/v1/health")).send().await.unwrap().status(), 200);
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Seven places left: seven idle connections take them, five more wait in the queue.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = Instant::now();
    assert_eq!(client.get(app.url("/api/v1/health")).send().await.unwrap().status(), 200);
    assert!(began.elapsed() < Duration::from_millis(500), "the open connection is answered at once");
    // A new connection waits for a free place, which the header timeout (2 s) makes.
    let began = Instant::now();
    let fresh = reqwest::Client::new().get(app.url("/api/v1/health")).timeout(Duration::from_secs(15)).send().await;
    assert_eq!(fresh.unwrap().status(), 200, "answered once a place is free");
    let waited = began.elapsed();
    assert!(waited > Duration::from_millis(1500) && waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn a_start_beyond_max_active_is_429_and_stores_nothing() {
    let app = TestApp::spawn_with_sim(|c| c.operations.max_active = 2).await;
    let first = app.start_dummy(1000, 50).await;
    app.start_dummy(1000, 50).await;
    let response =
        app.http.post(app.url("/api/v1/dummy/start")).json(&json!({ "iterations": 5 })).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let (_, body) = json_of(response).await;
    assert_eq!(assert_envelope(&body), "TOO_MANY_ACTIVE_OPERATIONS");
    let (status, _) = app.post("/api/v1/data/load", json!({ "symbol": "AAPL", "timeframe": "1h" })).await;
    assert_eq!(status, 429);
    assert_eq!(app.get("/api/v1/operations").await.1["total_count"], 2, "nothing was stored");
    app.delete(&format!("/api/v1/operations/{first}")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.post("/api/v1/dummy/start", json!({ "iterations": 5 })).await.0 != 200 {
        assert!(Instant::now() < deadline, "a place never freed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streams_beyond_max_streams_are_503_until_one_closes() {
    let app = TestApp::spawn_with_sim(|c| c.server.max_streams = 2).await;
    let id = app.start_dummy(10_000, 20).await;
    let stream = |path: String| app.http.get(app.url(&path)).send();
    let first = stream(format!("/api/v1/operations/{id}/events")).await.unwrap();
    let second = stream("/api/v1/operations/events".into()).await.unwrap();
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let refused = stream(format!("/api/v1/operations/{id}/events")).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let (status, body) = app.get(&format!("/api/v1/operations/{id}?wait=5s")).await;
    assert_eq!((status, assert_envelope(&body)), (503, "TOO_MANY_STREAMS".to_owned()), "long-polls count too");
    assert_eq!(app.get(&format!("/api/v1/operations/{id}")).await.0, 200, "plain reads are not streams");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = stream(format!("/api/v1/operations/{id}/events")).await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed stream's place never freed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
}

#[tokio::test]
async fn strategy_links_out_of_the_folder_are_neither_listed_nor_used() {
    let strategies = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string("strategies/example_mlp.yaml").unwrap();
    std::fs::write(strategies.path().join("inside.yaml"), &yaml).unwrap();
    std::fs::write(outside.path().join("secret.yaml"), yaml.replace("name: example_mlp", "name: secret_strategy"))
        .unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.yaml"), strategies.path().join("evil.yaml")).unwrap();
    let dir = strategies.path().to_owned();
    let app = TestApp::spawn_with_sim(move |c| c.training.strategies_dir = dir).await;
    eurusd(&app);
    let (_, list) = app.get("/api/v1/strategies").await;
    assert_eq!(list["strategies"].as_array().map(Vec::len), Some(1), "only the file inside is listed: {list}");
    assert_eq!(app.get("/api/v1/strategies/secret_strategy").await.0, 404, "not served by its name");
    assert_eq!(app.post("/api/v1/strategies/validate/evil", json!({})).await.0, 400);
    assert_eq!(app.get("/api/v1/strategies/evil/features").await.0, 400);
    let (status, answer) = app.post("/api/v1/trainings/start", json!({ "strategy_name": "evil" })).await;
    assert_eq!((status, assert_envelope(&answer)), (400, "INVALID_STRATEGY_NAME".to_owned()), "{answer}");
    assert_eq!(app.get("/api/v1/operations").await.1["total_count"], 0);
}

#[tokio::test]
async fn an_unwritable_folder_or_a_blank_token_fails_the_start_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(file.join("data"))
        .arg("--database-url")
        .arg(format!("sqlite://{}/ops.db", scratch.path().display()))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("data folder") && stderr.contains("a-file"), "{stderr}");

    for (name, key) in [("KTRDR_OPS_API_TOKEN", "auth.api_token"), ("KTRDR_OPS_WORKER_TOKEN", "auth.worker_token")] {
        let sources = ktrdr_ops::config::Sources {
            env: [(name.to_owned(), "   ".to_owned())].into_iter().collect(),
            ..Default::default()
        };
        let error = Config::load(&sources).unwrap_err();
        assert_eq!(error.key, key, "{error}");
    }
    let sources = ktrdr_ops::config::Sources {
        env: [("KTRDR_OPS__WORKERS__TRUSTED_NETWORKS".to_owned(), "10.0.0.0/8, nonsense".to_owned())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    assert_eq!(Config::load(&sources).unwrap_err().key, "workers.trusted_networks");
}

#[tokio::test]
async fn concurrent_retries_with_one_key_start_one_operation() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let id = app.start_dummy(1000, 50).await;
    app.delete(&format!("/api/v1/operations/{id}")).await;
    let retries = (0..20).map(|_| {
        let request = app
            .http
            .post(app.url(&format!("/api/v1/operations/{id}/retry")))
            .header("idempotency-key", "retry-once-please");
        async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let (status, body) = json_of(response).await;
            (status, body["data"]["operation_id"].as_str().map(str::to_owned), replayed)
        }
    });
    let answers = futures_util::future::join_all(retries).await;
    assert!(answers.iter().all(|(status, _, _)| *status == 200), "{answers:?}");
    let ids: std::collections::HashSet<_> = answers.iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 1, "one operation: {answers:?}");
    assert_eq!(answers.iter().filter(|(_, _, replayed)| !replayed).count(), 1, "{answers:?}");
    let (_, children) = app.get(&format!("/api/v1/operations/{id}/children")).await;
    assert_eq!(children["data"].as_array().map(Vec::len), Some(1), "{children}");
}
