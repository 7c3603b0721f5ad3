//! The operations API end to end: the real server on port 0 with SQLite in a temp dir, driven
//! over real sockets.

use crate::common;

use std::time::Duration;

use common::{TestApp, assert_envelope, json_of, read_sse};
use serde_json::{Value, json};

#[tokio::test]
async fn a_dummy_operation_runs_to_completion_with_monotonic_progress() {
    let app = TestApp::spawn().await;
    let id = app.start_dummy(10, 30).await;
    assert!(id.starts_with("op_dummy_") && id.len() == "op_dummy_".len() + 32, "{id}");

    let mut last_percentage = -1.0;
    let mut last_version = 0;
    let mut seen_running = false;
    let record = loop {
        let record = app.record(&id).await;
        let percentage = record["progress"]["percentage"].as_f64().unwrap();
        let version = record["version"].as_u64().unwrap();
        assert!(percentage >= last_percentage, "percentage went back: {record}");
        assert!(version >= last_version);
        last_percentage = percentage;
        last_version = version;
        if record["status"] == "running" {
            seen_running = true;
            assert!(record["started_at"].is_string());
        }
        if record["status"] == "completed" {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    };
    assert!(seen_running);
    assert_eq!(record["progress"]["percentage"], 100.0);
    assert_eq!(record["progress"]["steps_completed"], 1);
    assert_eq!(record["progress"]["items_processed"], 10);
    assert_eq!(record["progress"]["current_step"], "Running dummy task: iteration 10/10 [1/1]");
    assert_eq!(record["result_summary"], json!({ "iterations_completed": 10 }));
    assert!(record["completed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(record["metadata"]["parameters"], json!({ "iterations": 10, "interval_ms": 30 }));

    let (status, results) = app.get(&format!("/api/v1/operations/{id}/results")).await;
    assert_eq!(status, 200);
    assert_eq!(results["results"], json!({ "iterations_completed": 10 }));
    let (status, metrics) = app.get(&format!("/api/v1/operations/{id}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(metrics["data"]["metrics"], json!({}));
}

#[tokio::test]
async fn the_list_filters_pages_and_counts_every_stored_operation() {
    let app = TestApp::spawn().await;
    let mut finished = Vec::new();
    for _ in 0..3 {
        finished.push(app.start_dummy(1, 0).await);
    }
    for id in &finished {
        app.wait_for_status(id, "completed", Duration::from_secs(5)).await;
    }
    let running = app.start_dummy(1000, 1000).await;
    let cancelled = app.start_dummy(1000, 1000).await;
    app.delete(&format!("/api/v1/operations/{cancelled}")).await;

    let (status, all) = app.get("/api/v1/operations").await;
    assert_eq!(status, 200);
    assert_eq!(all["total_count"], 5);
    assert_eq!(all["active_count"], 1);
    let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|r| r["operation_id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], cancelled, "newest first");
    assert_eq!(ids[1], running);
    let row = &all["data"][1];
    for key in [
        "operation_type",
        "status",
        "created_at",
        "progress_percentage",
        "current_step",
        "eta_seconds",
        "symbol",
        "duration_seconds",
    ] {
        assert!(row.get(key).is_some(), "summary lacks {key}: {row}");
    }

    let (_, page) = app.get("/api/v1/operations?limit=2&offset=1").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["operation_id"], running);
    assert_eq!(page["total_count"], 5);

    let (_, completed) = app.get("/api/v1/operations?status=completed").await;
    assert_eq!(completed["total_count"], 3);
    let (_, active) = app.get("/api/v1/operations?active_only=true").await;
    assert_eq!(active["total_count"], 1);
    assert_eq!(active["data"][0]["operation_id"], running);
    let (_, by_type) = app.get("/api/v1/operations?operation_type=training").await;
    assert_eq!(by_type["total_count"], 0);

    for bad in ["status=done", "limit=0", "limit=1001", "offset=-1", "active_only=maybe"] {
        let (status, body) = app.get(&format!("/api/v1/operations?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(assert_envelope(&body), "VALIDATION_ERROR");
        assert!(body["error"]["details"]["field"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn the_list_searches_hides_a_type_sorts_and_says_what_each_row_is() {
    let app = TestApp::spawn().await;
    let first = app.start_dummy(2, 1).await;
    app.wait_for_status(&first, "completed", Duration::from_secs(5)).await;
    let second = app.start_dummy(1000, 1000).await;
    let url = app.url(&format!("/api/v1/operations/{second}"));
    let (status, _) =
        json_of(app.http.delete(url).json(&json!({ "reason": "line one\nline two" })).send().await.unwrap()).await;
    assert_eq!(status, 200);

    let (_, list) = app.get("/api/v1/operations").await;
    let (cancelled, done) = (&list["data"][0], &list["data"][1]);
    assert_eq!(done["subject"], "2 × 1 ms", "{done}");
    assert!(done["started_at"].is_string() && done["completed_at"].is_string(), "{done}");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["items_processed"], 2, "{done}");
    assert_eq!(cancelled["error"], "line one", "the first line of the reason: {cancelled}");
    assert_eq!(cancelled["parent_operation_id"], Value::Null);

    let ids = |body: &Value| -> Vec<String> {
        body["data"].as_array().unwrap().iter().map(|r| r["operation_id"].as_str().unwrap().to_owned()).collect()
    };
    let (_, oldest) = app.get("/api/v1/operations?sort=oldest").await;
    assert_eq!(ids(&oldest), [first.clone(), second.clone()]);
    let tail = &second[second.len() - 10..];
    let (_, found) = app.get(&format!("/api/v1/operations?q={}", tail.to_uppercase())).await;
    assert_eq!((ids(&found), found["total_count"].as_u64()), (vec![second.clone()], Some(1)), "by the id's end");
    // The request is searched too; LIKE's wildcards are taken as they are.
    let (_, by_request) = app.get("/api/v1/operations?q=interval_ms").await;
    assert_eq!(by_request["total_count"], 2, "{by_request}");
    for nothing in ["%25", "d_mmy", "zzz"] {
        let (_, none) = app.get(&format!("/api/v1/operations?q={nothing}")).await;
        assert_eq!(none["total_count"], 0, "q={nothing}: {none}");
    }
    let (_, hidden) = app.get("/api/v1/operations?exclude_type=dummy").await;
    assert_eq!((hidden["total_count"].as_u64(), hidden["active_count"].as_u64()), (Some(0), Some(0)));

    for bad in ["sort=sideways".to_owned(), format!("q={}", "x".repeat(101))] {
        let (status, body) = app.get(&format!("/api/v1/operations?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(assert_envelope(&body), "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn the_stats_count_a_windows_operations_by_status_and_type() {
    let app = TestApp::spawn().await;
    let done = app.start_dummy(1, 0).await;
    app.wait_for_status(&done, "completed", Duration::from_secs(5)).await;
    let running = app.start_dummy(1000, 1000).await;
    let cancelled = app.start_dummy(1000, 1000).await;
    app.delete(&format!("/api/v1/operations/{cancelled}")).await;
    app.wait_for_status(&running, "running", Duration::from_secs(5)).await;

    let (status, body) = app.get("/api/v1/operations/stats").await;
    assert_eq!(status, 200, "{body}");
    let stats = &body["data"];
    assert_eq!(stats["window_seconds"], 86_400);
    assert_eq!(stats["total"], 3);
    assert_eq!(
        stats["by_status"],
        json!({ "pending": 0, "running": 1, "completed": 1, "failed": 0, "cancelled": 1 }),
        "{stats}"
    );
    assert_eq!(stats["by_type"], json!({ "dummy": { "running": 1, "completed": 1, "cancelled": 1 } }));
    for bad in ["window=1s", "window=100d", "window=soon"] {
        let (status, body) = app.get(&format!("/api/v1/operations/stats?{bad}")).await;
        assert_eq!((status, body["error"]["details"]["field"].as_str()), (422, Some("window")), "{bad}: {body}");
    }
}

#[tokio::test]
async fn cancelling_a_running_operation_answers_after_the_work_stopped() {
    let app = TestApp::spawn().await;
    let id = app.start_dummy(1000, 50).await;
    app.wait_for_status(&id, "running", Duration::from_secs(5)).await;

    let response = app
        .http
        .delete(app.url(&format!("/api/v1/operations/{id}")))
        .json(&json!({ "reason": "User requested cancellation via CLI" }))
        .send()
        .await
        .unwrap();
    let (status, body) = common::json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["status"], "cancelled");
    assert_eq!(data["operation_id"], id.as_str());
    assert_eq!(data["cancellation_reason"], "User requested cancellation via CLI");
    assert_eq!(data["task_cancelled"], true);
    assert_eq!(data["remote_cancelled"], false);

    // The answer came after the work stopped: the record is final, and stays so.
    let record = app.record(&id).await;
    assert_eq!(record["status"], "cancelled");
    assert_eq!(record["error_message"], "User requested cancellation via CLI");
    let cancellation = &record["cancellation"];
    assert!(cancellation["requested_at"].is_string() && cancellation["stopped_at"].is_string());
    assert_eq!(cancellation["forced"], false);
    let items = record["progress"]["items_processed"].clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = app.record(&id).await;
    assert_eq!(later["progress"]["items_processed"], items, "work went on after the cancel");
    assert_eq!(later["version"], record["version"]);

    let (status, body) = app.delete(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(status, 400);
    assert_eq!(assert_envelope(&body), "OPERATION_NOT_CANCELLABLE");
    assert!(body["detail"].as_str().unwrap().contains("already cancelled"), "{body}");
    let (status, body) = app.get(&format!("/api/v1/operations/{id}/results")).await;
    assert_eq!(status, 400);
    assert_eq!(assert_envelope(&body), "OPERATION_NOT_FINISHED");
}

#[tokio::test]
async fn cancelling_unknown_and_finished_operations_is_refused_clearly() {
    let app = TestApp::spawn().await;
    let (status, body) = app.delete("/api/v1/operations/op_dummy_nope").await;
    assert_eq!(status, 404);
    assert_eq!(assert_envelope(&body), "OPERATION_NOT_FOUND");
    assert_eq!(body["detail"], "Operation not found: op_dummy_nope");

    let id = app.start_dummy(1, 0).await;
    app.wait_for_status(&id, "completed", Duration::from_secs(5)).await;
    let (status, body) = app.delete(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(status, 400);
    assert_eq!(assert_envelope(&body), "OPERATION_NOT_CANCELLABLE");
    assert!(body["detail"].as_str().unwrap().contains("already completed"), "{body}");
    assert_eq!(app.record(&id).await["status"], "completed");
}

#[tokio::test]
async fn a_pending_operation_waiting_for_a_slot_can_be_cancelled() {
    let app = TestApp::spawn_with(common::TestDb::sqlite(), |c| {
        c.operations.max_concurrent.insert("dummy".into(), 1);
    })
    .await;
    let first = app.start_dummy(1000, 50).await;
    let second = app.start_dummy(1000, 50).await;
    let third = app.start_dummy(2, 10).await;
    app.wait_for_status(&first, "running", Duration::from_secs(5)).await;
    let pending = app.record(&second).await;
    assert_eq!(pending["status"], "pending");
    assert!(pending["progress"]["current_step"].as_str().unwrap().contains("waiting for a free slot"), "{pending}");

    let (status, body) = app.delete(&format!("/api/v1/operations/{second}")).await;
    assert_eq!(status, 200, "{body}");
    let record = app.record(&second).await;
    assert_eq!(record["status"], "cancelled");
    assert!(record["started_at"].is_null(), "it never ran");

    // Releasing the slot lets the next in line run, first come first served.
    app.delete(&format!("/api/v1/operations/{first}")).await;
    app.wait_for_status(&third, "completed", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn two_concurrent_deletes_both_see_the_operation_cancelled() {
    let app = TestApp::spawn().await;
    let id = app.start_dummy(1000, 20).await;
    app.wait_for_status(&id, "running", Duration::from_secs(5)).await;
    let path = format!("/api/v1/operations/{id}");
    let (a, b) = tokio::join!(app.delete(&path), app.delete(&path));
    for (status, body) in [&a, &b] {
        match status {
            200 => assert_eq!(body["data"]["status"], "cancelled"),
            400 => assert!(body["detail"].as_str().unwrap().contains("already cancelled"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(a.0 == 200 || b.0 == 200, "one of them cancels");
    assert_eq!(app.record(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn events_stream_every_change_ends_with_the_terminal_one_and_resumes() {
    let app = TestApp::spawn().await;
    let id = app.start_dummy(5, 40).await;
    let url = app.url(&format!("/api/v1/operations/{id}/events"));
    let (events, closed) = read_sse(&app.http, &url, None, 1000, Duration::from_secs(10)).await;
    assert!(closed, "the stream closes after the terminal event");
    assert!(events.len() >= 3, "{events:?}");
    let mut last = 0;
    for e in &events {
        assert_eq!(e.event.as_deref(), Some("operation"));
        let version: u64 = e.id.as_deref().unwrap().parse().unwrap();
        assert!(version > last);
        assert_eq!(e.data["version"].as_u64(), Some(version));
        last = version;
    }
    assert_eq!(events.last().unwrap().data["status"], "completed");

    // Resuming at the last id: nothing new, the stream just closes.
    let (again, closed) = read_sse(&app.http, &url, Some(&last.to_string()), 10, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(again.is_empty(), "{again:?}");
    // Resuming from an earlier id sends the current record.
    let (again, _) = read_sse(&app.http, &url, Some("1"), 10, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].data["status"], "completed");
}

#[tokio::test]
async fn events_of_a_running_operation_resume_after_the_last_event_id() {
    let app = TestApp::spawn().await;
    let id = app.start_dummy(1000, 30).await;
    let url = app.url(&format!("/api/v1/operations/{id}/events"));
    let (first, _) = read_sse(&app.http, &url, None, 2, Duration::from_secs(5)).await;
    let seen: u64 = first[1].id.as_deref().unwrap().parse().unwrap();
    let (next, _) = read_sse(&app.http, &url, Some(&seen.to_string()), 1, Duration::from_secs(5)).await;
    assert!(next[0].id.as_deref().unwrap().parse::<u64>().unwrap() > seen);
    app.delete(&format!("/api/v1/operations/{id}")).await;
    let (tail, closed) = read_sse(&app.http, &url, Some(&seen.to_string()), 1000, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(tail.last().unwrap().data["status"], "cancelled");
}

#[tokio::test]
async fn long_poll_returns_on_change_and_on_timeout_with_an_etag() {
    let app = TestApp::spawn().await;
    let id = app.start_dummy(1000, 300).await;
    let record = app.wait_for_status(&id, "running", Duration::from_secs(5)).await;
    let version = record["version"].as_u64().unwrap();

    // A change (the next iteration) ends the wait well before it runs out.
    let started = std::time::Instant::now();
    let response =
        app.http.get(app.url(&format!("/api/v1/operations/{id}?wait=10s&since={version}"))).send().await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let (_, body) = common::json_of(response).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let newer = body["data"]["version"].as_u64().unwrap();
    assert!(newer > version);
    assert_eq!(etag, format!("\"{newer}\""));

    // No change within the wait: the same version comes back when the wait ends.
    app.delete(&format!("/api/v1/operations/{id}")).await;
    let id = app.start_dummy(1000, 60_000).await;
    let record = app.wait_for_status(&id, "running", Duration::from_secs(5)).await;
    let version = record["version"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let version = version.max(app.record(&id).await["version"].as_u64().unwrap());
    let started = std::time::Instant::now();
    let (status, body) = app.get(&format!("/api/v1/operations/{id}?wait=300ms&since={version}")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(290), "{:?}", started.elapsed());
    assert_eq!(body["data"]["version"].as_u64(), Some(version));

    // If-None-Match with the current ETag: 304.
    let response = app
        .http
        .get(app.url(&format!("/api/v1/operations/{id}")))
        .header("if-none-match", format!("\"{version}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);

    let (status, body) = app.get(&format!("/api/v1/operations/{id}?wait=soon")).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["details"]["field"], "wait");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_operation() {
    let app = TestApp::spawn().await;
    let start = |key: &'static str, iterations: u32| {
        app.http
            .post(app.url("/api/v1/dummy/start"))
            .header("idempotency-key", key)
            .json(&json!({ "iterations": iterations, "interval_ms": 1000 }))
            .send()
    };
    let (_, first) = common::json_of(start("key-1", 5).await.unwrap()).await;
    let response = start("key-1", 5).await.unwrap();
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (_, second) = common::json_of(response).await;
    assert_eq!(first["data"]["operation_id"], second["data"]["operation_id"]);
    let (_, list) = app.get("/api/v1/operations").await;
    assert_eq!(list["total_count"], 1);

    let (status, body) = common::json_of(start("key-1", 6).await.unwrap()).await;
    assert_eq!(status, 422);
    assert_eq!(assert_envelope(&body), "IDEMPOTENCY_KEY_REUSED");

    let (_, other) = common::json_of(start("key-2", 5).await.unwrap()).await;
    assert_ne!(other["data"]["operation_id"], first["data"]["operation_id"]);

    // Concurrent retries with one key still start one operation.
    let results = futures_util::future::join_all((0..8).map(|_| start("key-3", 5))).await;
    let mut ids = std::collections::HashSet::new();
    for r in results {
        let (status, body) = common::json_of(r.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        ids.insert(body["data"]["operation_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn every_malformed_request_gets_the_error_envelope() {
    let app = TestApp::spawn_with(common::TestDb::sqlite(), |c| c.server.body_limit_bytes = 4096).await;
    let http = &app.http;
    let start = app.url("/api/v1/dummy/start");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "bad json",
            http.post(&start).header("content-type", "application/json").body("{\"iterations\":"),
            400,
            "INVALID_JSON",
        ),
        ("wrong type", http.post(&start).json(&json!({ "iterations": "many" })), 422, "VALIDATION_ERROR"),
        ("unknown field", http.post(&start).json(&json!({ "iterationz": 3 })), 422, "VALIDATION_ERROR"),
        ("out of range", http.post(&start).json(&json!({ "iterations": 0 })), 422, "VALIDATION_ERROR"),
        ("negative", http.post(&start).json(&json!({ "interval_ms": -5 })), 422, "VALIDATION_ERROR"),
        (
            "wrong content type",
            http.post(&start).header("content-type", "text/plain").body("{}"),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("json array", http.post(&start).json(&json!([1, 2])), 422, "VALIDATION_ERROR"),
        (
            "too large",
            http.post(&start)
                .header("content-type", "application/json")
                .body(format!("{{\"x\":\"{}\"}}", "a".repeat(10_000))),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        ("unknown route", http.get(app.url("/api/v1/nothing/here")), 404, "NOT_FOUND"),
        ("root path", http.get(app.url("/definitely-not")), 404, "NOT_FOUND"),
        ("wrong method", http.put(app.url("/api/v1/operations")), 405, "METHOD_NOT_ALLOWED"),
        ("wrong method on start", http.get(&start), 405, "METHOD_NOT_ALLOWED"),
        (
            "bad idempotency key",
            http.post(&start).header("idempotency-key", "").json(&json!({})),
            422,
            "VALIDATION_ERROR",
        ),
        ("unknown operation", http.get(app.url("/api/v1/operations/op_x")), 404, "OPERATION_NOT_FOUND"),
        ("huge id", http.get(app.url(&format!("/api/v1/operations/{}", "x".repeat(5000)))), 404, "OPERATION_NOT_FOUND"),
        ("odd id", http.get(app.url("/api/v1/operations/%00%ff")), 400, "INVALID_PATH"),
        (
            "bad cancel body",
            http.delete(app.url("/api/v1/operations/op_x")).json(&json!({ "reason": 5 })),
            422,
            "VALIDATION_ERROR",
        ),
        (
            "long reason",
            http.delete(app.url("/api/v1/operations/op_x")).json(&json!({ "reason": "r".repeat(1001) })),
            422,
            "VALIDATION_ERROR",
        ),
    ];
    for (name, request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/json", "{name}");
        let (actual, body) = common::json_of(response).await;
        assert_eq!(actual, status, "{name}: {body}");
        assert_eq!(assert_envelope(&body), code, "{name}");
    }
    // Fields are named: a missing one, an unknown one; the size limit is said.
    let load = app.url("/api/v1/data/load");
    let (_, body) = common::json_of(http.post(&load).json(&json!({ "timeframe": "1h" })).send().await.unwrap()).await;
    assert_eq!(body["error"]["details"]["field"], "symbol", "{body}");
    let unknown = json!({ "symbol": "AAPL", "timeframe": "1h", "bogus": 1 });
    let (status, body) = common::json_of(http.post(&load).json(&unknown).send().await.unwrap()).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (422, Some("bogus")), "{body}");
    let nested = json!({ "symbol": "AAPL", "timeframe": "1h", "filters": { "trading_hours": true } });
    let (status, body) = common::json_of(http.post(&load).json(&nested).send().await.unwrap()).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (422, Some("filters.trading_hours")), "{body}");
    let training = json!({ "strategy_name": "x", "epochs": 5 });
    let (status, body) =
        common::json_of(http.post(app.url("/api/v1/trainings/start")).json(&training).send().await.unwrap()).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (422, Some("epochs")), "{body}");
    let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(10_000));
    let response = http.post(&start).header("content-type", "application/json").body(huge).send().await.unwrap();
    let (_, body) = common::json_of(response).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 4096 bytes"), "{body}");
    // What ktrdr's data clients send beyond our fields is still accepted.
    let ktrdr = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "local", "periodic_save_minutes": 2.0 });
    let (status, body) = common::json_of(http.post(&load).json(&ktrdr).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // An empty body is fine for the optional-body endpoints.
    let response = http.post(&start).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (_, health) = app.get("/api/v1/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], "ok");
}

#[tokio::test]
async fn the_registry_is_empty_after_ten_thousand_operations() {
    let app = TestApp::spawn().await;
    let http = app.http.clone();
    let url = app.url("/api/v1/dummy/start");
    let started = futures_util::stream::iter(0..10_000)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let response =
                    http.post(&url).json(&json!({ "iterations": 1, "interval_ms": 0 })).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        })
        .buffer_unordered(32);
    use futures_util::StreamExt;
    started.collect::<Vec<()>>().await;
    let orchestrator = app.server.as_ref().unwrap().orchestrator().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while orchestrator.active_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "{} still registered", orchestrator.active_count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, list) = app.get("/api/v1/operations?status=completed&limit=1").await;
    assert_eq!(list["total_count"], 10_000);
    assert_eq!(list["active_count"], 0);
    let (_, health) = app.get("/api/v1/health").await;
    assert_eq!(health["operations"]["active"], 0);
    let _: Value = health;
}

#[tokio::test]
async fn one_stream_follows_every_operation_and_resumes_after_the_last_event_id() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/v1/operations/events");
    let reader = {
        let http = app.http.clone();
        let url = url.clone();
        tokio::spawn(async move { read_sse(&http, &url, None, 10_000, Duration::from_secs(3)).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = app.start_dummy(3, 20).await;
    let b = app.start_dummy(3, 20).await;
    app.wait_for_status(&a, "completed", Duration::from_secs(5)).await;
    app.wait_for_status(&b, "completed", Duration::from_secs(5)).await;
    let events = reader.await.unwrap();
    let mut last_seq = 0;
    for event in &events {
        let seq: u64 = event.id.as_deref().unwrap().parse().unwrap();
        assert!(seq > last_seq, "sequence numbers increase");
        last_seq = seq;
    }
    for id in [&a, &b] {
        let mine: Vec<&Value> = events.iter().map(|e| &e.data).filter(|d| d["operation_id"] == id.as_str()).collect();
        assert!(mine.len() >= 2, "{id}: {mine:?}");
        assert_eq!(mine.last().unwrap()["status"], "completed");
    }
    // Resuming after an event in the middle sends each operation's latest state once.
    let middle = events[events.len() / 2].id.clone().unwrap();
    let (again, _) = read_sse(&app.http, &url, Some(&middle), 10_000, Duration::from_millis(500)).await;
    assert!(!again.is_empty());
    assert!(again.len() <= 2, "coalesced to one event per operation: {again:?}");
    assert!(again.iter().all(|e| e.data["status"] == "completed"));
}

#[tokio::test]
async fn the_list_wide_stream_sends_list_rows_when_asked() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/v1/operations/events?view=row");
    let reader = {
        let (http, url) = (app.http.clone(), url.clone());
        tokio::spawn(async move { read_sse(&http, &url, None, 10_000, Duration::from_secs(2)).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = app.start_dummy(4, 250).await;
    app.wait_for_status(&id, "completed", Duration::from_secs(5)).await;
    let events = reader.await.unwrap();
    let mine: Vec<&Value> = events.iter().map(|e| &e.data).filter(|d| d["operation_id"] == id.as_str()).collect();
    assert!(mine.len() >= 2, "{mine:?}");
    let (_, list) = app.get("/api/v1/operations").await;
    let row = list["data"].as_array().unwrap().iter().find(|r| r["operation_id"] == id.as_str()).unwrap().clone();
    let last = mine.last().unwrap();
    assert_eq!(last["status"], "completed");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(last), keys(&row), "the list row's fields: {last}");
    assert!(last.get("metadata").is_none() && last.get("progress").is_none(), "{last}");

    // However fast an operation changes, its rows come at most once a pace (250 ms).
    let reader = {
        let http = app.http.clone();
        tokio::spawn(async move { read_sse(&http, &url, None, 10_000, Duration::from_millis(1600)).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = app.start_dummy(100, 10).await;
    app.wait_for_status(&fast, "completed", Duration::from_secs(5)).await;
    let rows = reader.await.unwrap().into_iter().filter(|e| e.data["operation_id"] == fast.as_str()).count();
    assert!((2..=7).contains(&rows), "101 changes in about a second came as {rows} rows");

    let (status, body) = app.get("/api/v1/operations/events?view=everything").await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (422, Some("view")), "{body}");
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /api/v1/dummy/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    // Nothing more is sent: the answer must not wait for the 50 MB.
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer)).await;
    let n = read.expect("answered without waiting for the body").unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
}
