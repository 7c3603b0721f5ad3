//! The production surface: the OpenAPI document against the routes served, Prometheus metrics,
//! bearer auth, per-type concurrency limits, request timeouts, CORS and retention.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestApp, TestDb, assert_envelope};
use serde_json::{Value, json};

/// The routes of api.md (and the service's own), as `METHOD path`.
const SERVED: &[&str] = &[
    "GET /api/v1/operations",
    "GET /api/v1/operations/{id}",
    "DELETE /api/v1/operations/{id}",
    "GET /api/v1/operations/{id}/events",
    "GET /api/v1/operations/events",
    "GET /api/v1/operations/stats",
    "GET /api/v1/operations/{id}/results",
    "GET /api/v1/operations/{id}/metrics",
    "POST /api/v1/operations/{id}/resume",
    "POST /api/v1/operations/{id}/retry",
    "GET /api/v1/operations/{id}/children",
    "GET /api/v1/checkpoints",
    "GET /api/v1/checkpoints/stats",
    "POST /api/v1/checkpoints/cleanup",
    "GET /api/v1/checkpoints/{operation_id}",
    "DELETE /api/v1/checkpoints/{operation_id}",
    "POST /api/v1/workers/register",
    "GET /api/v1/workers",
    "GET /api/v1/workers/{id}",
    "PATCH /api/v1/operations/{id}/status",
    "POST /api/v1/data/load",
    "POST /api/v1/data/acquire/download",
    "GET /api/v1/data/{symbol}/{timeframe}",
    "GET /api/v1/data/info",
    "POST /api/v1/trainings/start",
    "POST /api/v1/backtests/start",
    "GET /api/v1/trainings/{id}/performance",
    "GET /api/v1/strategies",
    "GET /api/v1/strategies/",
    "GET /api/v1/strategies/{name}",
    "POST /api/v1/strategies/validate/{name}",
    "GET /api/v1/strategies/{name}/features",
    "GET /api/v1/models",
    "GET /api/v1/models/",
    "POST /api/v1/dummy/start",
    "GET /api/v1/health",
    "GET /api/v1/openapi.json",
    "GET /metrics",
    "GET /docs",
    "GET /",
    "GET /ui",
];

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_is_whole_and_lists_every_route_served() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            assert!(
                operation["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no answer"
            );
        }
    }
    let served: BTreeSet<String> = SERVED.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, served, "documented routes differ from the routes served");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for reference in &all {
        assert!(resolve(&doc, reference).is_some(), "{reference} does not resolve");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Every documented route is really served: none answers "no such endpoint" or 405.
    for route in SERVED {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", "op_dummy_x").replace("{symbol}", "AAPL").replace("{timeframe}", "1h");
        let request = app.http.request(method.parse().unwrap(), app.url(&path));
        let request = if method == "POST" { request.json(&json!({})) } else { request };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        // A stream that never ends is served; do not wait for its end.
        if response.headers().get("content-type").is_some_and(|t| t == "text/event-stream") {
            continue;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status != 405 && body["error"]["code"] != "NOT_FOUND", "{route}: {status} {body}");
    }
    let docs = app.http.get(app.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(
        docs.contains("/api/v1/openapi.json") && !docs.contains("http://") && !docs.contains("https://"),
        "self-contained"
    );
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_appear_and_move_after_operations_and_a_cancel() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.training_workers = 1;
        c.sim.backtest_workers = 1;
    })
    .await;
    let scrape = || async { app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let before = scrape().await;
    assert!(before.contains("# TYPE ktrdr_ops_operations_started_total counter"));
    // Ours, and the names ktrdr's Grafana dashboards query.
    let known =
        ["ktrdr_ops_", "ktrdr_operations_total", "ktrdr_workers_", "http_server_duration_milliseconds", "process_"];
    assert!(
        before
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .all(|l| known.iter().any(|prefix| l.starts_with(prefix))),
        "{before}"
    );

    let done = app.start_dummy(2, 5).await;
    app.wait_for_status(&done, "completed", Duration::from_secs(5)).await;
    let running = app.start_dummy(1000, 50).await;
    app.wait_for_status(&running, "running", Duration::from_secs(5)).await;
    let during = scrape().await;
    assert_eq!(metric(&during, "ktrdr_ops_operations_active{type=\"dummy\"}"), 1.0, "{during}");
    app.delete(&format!("/api/v1/operations/{running}")).await;
    let (_, load) = app.post("/api/v1/data/load", json!({ "symbol": "AAPL", "timeframe": "1d", "mode": "tail" })).await;
    let load = load["data"]["operation_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&load, "completed", Duration::from_secs(10)).await;

    let after = scrape().await;
    assert_eq!(metric(&after, "ktrdr_ops_operations_started_total{type=\"dummy\"}"), 2.0, "{after}");
    assert_eq!(metric(&after, "ktrdr_ops_operations_finished_total{type=\"dummy\",status=\"completed\"}"), 1.0);
    assert_eq!(metric(&after, "ktrdr_ops_operations_finished_total{type=\"dummy\",status=\"cancelled\"}"), 1.0);
    assert_eq!(metric(&after, "ktrdr_ops_cancel_latency_seconds_count{type=\"dummy\"}"), 1.0);
    assert_eq!(metric(&after, "ktrdr_ops_operation_duration_seconds_count{type=\"dummy\"}"), 2.0);
    assert!(
        metric(&after, "ktrdr_ops_host_requests_total{host=\"ib\",method=\"POST\",endpoint=\"/data/historical\"}")
            >= 1.0,
        "{after}"
    );
    assert!(after.contains("ktrdr_ops_host_request_duration_seconds_bucket{host=\"ib\""));
    assert!(metric(&after, "ktrdr_ops_store_rows_written_total") > 0.0);
    assert!(after.contains("ktrdr_ops_store_write_duration_seconds_count{backend=\"sqlite\"}"));
    assert!(after.contains("ktrdr_ops_ib_pacing_waits_total 0"));
    // Requests by matched route: the id is not in the label; a path no route matches is "unmatched".
    let get_op =
        r#"ktrdr_ops_http_request_duration_seconds_count{method="GET",route="/api/v1/operations/{id}",status="200"}"#;
    assert!(metric(&after, get_op) >= 3.0, "{after}");
    assert_eq!(metric(&after, "ktrdr_ops_operations_active{type=\"dummy\"}"), 0.0);
    app.get("/api/v1/no-such-thing").await;
    let unmatched = r#"ktrdr_ops_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"}"#;
    let last = scrape().await;
    assert_eq!(metric(&last, unmatched), 1.0);

    // ktrdr's names, with ktrdr's labels.
    assert_eq!(metric(&last, r#"ktrdr_operations_total{operation_type="dummy",status="completed"}"#), 1.0, "{last}");
    assert_eq!(metric(&last, r#"ktrdr_operations_total{operation_type="dummy",status="cancelled"}"#), 1.0);
    assert_eq!(metric(&last, r#"ktrdr_operations_total{operation_type="data_load",status="completed"}"#), 1.0);
    let http = r#"http_server_duration_milliseconds_count{http_target="/api/v1/operations/{id}",http_method="GET",http_status_code="200"}"#;
    assert_eq!(metric(&last, http), metric(&last, get_op), "one sample in each histogram per request");
    assert!(last.contains(r#"http_server_duration_milliseconds_bucket{http_target="/api/v1/operations/{id}",http_method="GET",http_status_code="200",le="0.5"}"#));
    // The simulated training and backtest workers register themselves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut fleet = last;
    while metric(&fleet, "ktrdr_workers_registered_total") < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "the workers never registered: {fleet}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        fleet = scrape().await;
    }
    assert_eq!(metric(&fleet, r#"ktrdr_workers_available{worker_type="training"}"#), 1.0, "{fleet}");
    assert_eq!(metric(&fleet, r#"ktrdr_workers_available{worker_type="backtesting"}"#), 1.0);
    // The process's own, as every Prometheus client names them.
    // (whole seconds: the crate counts CPU time as a counter, which counts in whole numbers)
    assert!(fleet.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "), "{fleet}");
    assert!(metric(&fleet, "process_resident_memory_bytes") > 1e6);
    assert!(metric(&fleet, "process_start_time_seconds") > 1.7e9);
}

#[tokio::test]
async fn a_configured_token_guards_every_api_route_but_health() {
    let app = TestApp::spawn_with(TestDb::sqlite(), |c| c.auth.api_token = "s3cret-token".into()).await;
    let (status, body) = app.get("/api/v1/operations").await;
    assert_eq!(status, 401);
    assert_eq!(assert_envelope(&body), "UNAUTHORIZED");
    for header in
        ["Bearer wrong", "Bearer s3cret-toke", "Bearer s3cret-token-and-more", "s3cret-token", "Basic s3cret-token"]
    {
        let response =
            app.http.get(app.url("/api/v1/operations")).header("authorization", header).send().await.unwrap();
        assert_eq!(response.status(), 401, "{header}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let response = app.http.get(app.url("/api/v1/operations")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = app.http.post(app.url("/api/v1/dummy/start")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, health) = app.get("/api/v1/health").await;
    assert_eq!((status, health), (200, json!({ "status": "ok" })), "health needs no token, and says only that");
    let full = app.http.get(app.url("/api/v1/health")).bearer_auth("s3cret-token").send().await.unwrap();
    let full: Value = full.json().await.unwrap();
    assert!(full["hosts"].is_object() && full["node_id"].is_string(), "with the token, the details: {full}");
    assert_eq!(app.http.get(app.url("/metrics")).send().await.unwrap().status(), 401, "metrics need it too");
    let metrics = app.http.get(app.url("/metrics")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(app.get("/api/v1/openapi.json").await.0, 401);

    let open = TestApp::spawn().await;
    assert_eq!(open.get("/api/v1/operations").await.0, 200, "no token configured: no auth");
}

#[tokio::test]
async fn a_concurrency_limit_queues_excess_operations_and_releases_them_in_order() {
    let app = TestApp::spawn_with(TestDb::sqlite(), |c| {
        c.operations.max_concurrent.insert("dummy".into(), 2);
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(app.start_dummy(3, 40).await);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (_, list) = app.get("/api/v1/operations?status=pending").await;
    assert_eq!(list["total_count"], 4, "two run, the rest wait: {list}");
    let mut started = Vec::new();
    for id in &ids {
        let record = app.wait_for_status(id, "completed", Duration::from_secs(20)).await;
        started.push(record["started_at"].as_str().unwrap().to_owned());
    }
    let mut in_order = started.clone();
    in_order.sort();
    assert_eq!(started, in_order, "first come, first served");
}

#[tokio::test]
async fn slow_handlers_time_out_but_long_polls_do_not() {
    let app = TestApp::spawn_with_sim(|c| {
        c.server.request_timeout = ktrdr_ops::time::HumanDuration(Duration::from_millis(100))
    })
    .await;
    app.ib_knobs(json!({ "latency_ms": 600 })).await;
    let (status, body) = app.get("/api/v1/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(assert_envelope(&body), "REQUEST_TIMEOUT");
    let id = app.start_dummy(1000, 60_000).await;
    let version = app.record(&id).await["version"].as_u64().unwrap() + 100;
    let began = std::time::Instant::now();
    let (status, _) = app.get(&format!("/api/v1/operations/{id}?wait=400ms&since={version}")).await;
    assert_eq!(status, 200);
    assert!(began.elapsed() >= Duration::from_millis(390), "the long-poll ran its course");
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_for_configured_origins() {
    let app =
        TestApp::spawn_with(TestDb::sqlite(), |c| c.server.cors_origins = vec!["https://dash.example.com".into()])
            .await;
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/operations"))
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://dash.example.com");
    let other =
        app.http.get(app.url("/api/v1/operations")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let plain = TestApp::spawn().await;
    let response = plain
        .http
        .get(plain.url("/api/v1/operations"))
        .header("origin", "https://dash.example.com")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn retention_deletes_only_old_finished_operations_and_keys() {
    let app = TestApp::spawn().await;
    let old_done = app.start_dummy(1, 0).await;
    app.wait_for_status(&old_done, "completed", Duration::from_secs(5)).await;
    let old_running = app.start_dummy(1000, 60_000).await;
    let keyed = app
        .http
        .post(app.url("/api/v1/dummy/start"))
        .header("idempotency-key", "old-key")
        .json(&json!({ "iterations": 1, "interval_ms": 0 }))
        .send()
        .await
        .unwrap();
    let keyed: Value = keyed.json().await.unwrap();
    let keyed = keyed["data"]["operation_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&keyed, "completed", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = ktrdr_ops::time::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recent = app.start_dummy(1, 0).await;
    app.wait_for_status(&recent, "completed", Duration::from_secs(5)).await;

    let orchestrator = app.server.as_ref().unwrap().orchestrator().clone();
    let now = ktrdr_ops::time::now();
    let retention = (now - cutoff).to_std().unwrap();
    let (operations, _) = orchestrator.sweep(now, retention).await.unwrap();
    assert_eq!(operations, 2, "the two old finished ones");
    assert_eq!(app.get(&format!("/api/v1/operations/{old_done}")).await.0, 404);
    assert_eq!(app.get(&format!("/api/v1/operations/{keyed}")).await.0, 404);
    assert_eq!(app.record(&old_running).await["status"], "running", "unfinished operations are kept");
    assert_eq!(app.record(&recent).await["status"], "completed", "recent ones are kept");
    let store = orchestrator.store();
    let (_, keys) = store.sweep(now - chrono::Duration::days(365), now + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(keys, 1, "the idempotency key went after its time");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ktrdr_ops_operations_deleted_total 2"), "{metrics}");
}

#[tokio::test]
async fn pages_json_and_event_streams_are_gzipped_for_clients_that_ask() {
    let app = TestApp::spawn().await;
    app.start_dummy(100, 10_000).await;
    let gunzip = |bytes: &[u8]| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes), &mut text).unwrap();
        text
    };
    for path in ["/", "/api/v1/operations", "/api/v1/openapi.json"] {
        let plain = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(plain.headers().get("content-encoding"), None, "{path}: only for clients that ask");
        let plain = plain.text().await.unwrap();
        let zipped = app.http.get(app.url(path)).header("accept-encoding", "gzip").send().await.unwrap();
        assert_eq!(zipped.headers()["content-encoding"], "gzip", "{path}");
        let zipped = zipped.bytes().await.unwrap();
        assert!(zipped.len() < plain.len(), "{path}: {} of {} bytes", zipped.len(), plain.len());
        let text = gunzip(&zipped);
        if path == "/" {
            assert_eq!(text, plain, "the page");
            assert!(zipped.len() <= 40 << 10, "the dashboard weighs {} bytes compressed", zipped.len());
        } else {
            assert!(serde_json::from_str::<Value>(&text).unwrap().is_object(), "{path}: {text}");
        }
    }
    // An event stream is gzipped event by event: each can be read as soon as it is sent, long
    // before the stream ends.
    let mut stream = app
        .http
        .get(app.url("/api/v1/operations/events?view=row"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-encoding"], "gzip");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let id = app.start_dummy(1, 0).await;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(decoder.get_ref()).contains(&format!("\"operation_id\":\"{id}\"")) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await.expect("an event, readable at once");
        std::io::Write::write_all(&mut decoder, &chunk.unwrap().expect("the stream stays open")).unwrap();
        std::io::Write::flush(&mut decoder).unwrap();
    }
    // A stream that ends ends its gzip whole (a decoder checks the trailer).
    app.wait_for_status(&id, "completed", Duration::from_secs(5)).await;
    let url = app.url(&format!("/api/v1/operations/{id}/events"));
    let plain = app.http.get(&url).send().await.unwrap().text().await.unwrap();
    let zipped = app.http.get(&url).header("accept-encoding", "gzip").send().await.unwrap().bytes().await.unwrap();
    assert_eq!(gunzip(&zipped), plain);
}
