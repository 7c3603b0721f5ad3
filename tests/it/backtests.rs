//! Backtests (backtesting.md) end to end over real sockets: started through ktrdr's route,
//! placed on a simulated backtest worker that runs the real engine over the cached CSV, followed
//! to the end, cancelled on the worker, resumed from its checkpoint, queued `pending` while no
//! worker is free or registered, and refused at the edge when the request cannot run.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestApp, json_of};
use crate::workers::{quick_checks, until_record};

/// `n` hourly EURUSD bars from 2024-01-01 00:00 UTC: a wave the crossover rule trades.
pub(crate) fn eurusd_wave(data_dir: &std::path::Path, n: usize) {
    let mut csv = String::from("timestamp,open,high,low,close,volume\n");
    let start = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().timestamp();
    for i in 0..n {
        let t = chrono::DateTime::from_timestamp(start + i as i64 * 3600, 0).unwrap();
        let wave = (i as f64 / 35.0).sin() * 0.02 + (i as f64 / 9.0).sin() * 0.004;
        let (open, close) = (1.08 + wave, 1.08 + wave + 0.0003 * ((i % 7) as f64 - 3.0) / 3.0);
        let (high, low) = (open.max(close) + 0.0005, open.min(close) - 0.0005);
        csv.push_str(&format!("{}Z,{open:.6},{high:.6},{low:.6},{close:.6},100\n", t.format("%Y-%m-%dT%H:%M:%S")));
    }
    std::fs::write(data_dir.join("EURUSD_1h.csv"), csv).unwrap();
}

/// A trained model of the example strategy, as the catalog keeps it.
pub(crate) fn trained_model(models_dir: &std::path::Path) {
    std::fs::create_dir_all(models_dir.join("example_mlp/1h_v1")).unwrap();
    std::fs::create_dir_all(models_dir.join("example_mlp/1h_latest")).unwrap();
}

/// A service with `workers` simulated backtest workers simulating `bars_per_second` (0: flat out).
async fn app(workers: usize, bars_per_second: u64) -> TestApp {
    let app = TestApp::spawn_with_sim(|c| {
        quick_checks(c);
        c.sim.backtest_workers = workers;
        c.sim.backtest_bars_per_second = bars_per_second;
    })
    .await;
    eurusd_wave(app.data_dir.path(), 3_050);
    trained_model(&app.data_dir.path().join("models"));
    app
}

/// The whole of 2024's first 3,050 hours (a date alone ends with its day).
fn backtest(extra: Value) -> Value {
    let mut body = json!({ "strategy_name": "example_mlp", "start_date": "2024-01-01", "end_date": "2024-05-07" });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

async fn start(app: &TestApp, body: Value) -> String {
    let (status, answer) = app.post("/api/v1/backtests/start", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["operation_id"].as_str().unwrap().to_owned()
}

fn ended(r: &Value) -> bool {
    matches!(r["status"].as_str(), Some("completed" | "failed" | "cancelled"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn a_backtest_runs_on_a_worker_and_its_metrics_agree_with_its_trades() {
    let app = app(1, 4_000).await;
    let (status, answer) = app.post("/api/v1/backtests/start", backtest(json!({}))).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["operation_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("op_backtesting_"), "{id}");
    assert_eq!(answer["status"], "started");
    assert_eq!(
        (answer["symbol"].as_str(), answer["timeframe"].as_str(), answer["mode"].as_str()),
        (Some("EURUSD"), Some("1h"), Some("distributed"))
    );
    assert_eq!(answer["message"], "Backtest started for EURUSD 1h");
    assert!(answer.get("data").is_none(), "ktrdr's answer has no envelope");

    // Progress moves, with bars, trades and equity, in ktrdr's words.
    let midway = until_record(&app.base, &id, "progress midway", Duration::from_secs(20), |r| {
        let p = r["progress"]["percentage"].as_f64().unwrap_or(0.0);
        (p > 5.0 && p < 95.0) || ended(r)
    })
    .await;
    assert_eq!(midway["status"], "running", "{midway}");
    let step = midway["progress"]["current_step"].as_str().unwrap();
    assert!(step.starts_with("Backtesting EURUSD 1h [2024-"), "{step}");
    let context = &midway["progress"]["context"];
    assert_eq!(context["bars_total"], 3_000, "{context}");
    assert!(context["bars_processed"].as_u64().unwrap() > 0 && context["equity"].as_f64().unwrap() > 0.0, "{context}");
    assert!(context["worker_id"].as_str().unwrap().contains("backtesting"), "{context}");
    assert_eq!(midway["metadata"]["parameters"]["model_path"], "models/example_mlp/1h_latest");
    assert_eq!(midway["metadata"]["end_date"], "2024-05-07T23:59:59");

    let done = until_record(&app.base, &id, "the end", Duration::from_secs(30), ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["percentage"], 100.0);
    let result = &done["result_summary"];
    let m = &result["metrics"];
    assert_eq!(m.as_object().unwrap().len(), 22, "{m}");
    let trades = m["total_trades"].as_u64().unwrap();
    let (wins, losses) = (m["winning_trades"].as_u64().unwrap(), m["losing_trades"].as_u64().unwrap());
    assert!(trades >= 3, "the wave is traded: {m}");
    assert!(wins + losses <= trades);
    assert!(close(m["win_rate"].as_f64().unwrap(), wins as f64 / trades as f64), "{m}");
    let capital = result["config"]["initial_capital"].as_f64().unwrap();
    assert_eq!(capital, 100_000.0);
    assert!(close(m["total_return_pct"].as_f64().unwrap(), m["total_return"].as_f64().unwrap() / capital), "{m}");
    assert_eq!(result["trade_count"].as_u64(), Some(trades));
    assert_eq!(result["equity_curve_length"], 3_000);
    assert!(m["max_drawdown_pct"].as_f64().unwrap() >= 0.0 && m["max_drawdown_pct"].as_f64().unwrap() < 1.0);
    assert_eq!(result["config"]["end_date"], "2024-05-07T23:59:59");

    // ktrdr's results route, and the worker freed.
    let (status, results) = app.get(&format!("/api/v1/operations/{id}/results")).await;
    assert_eq!(status, 200, "{results}");
    assert_eq!((results["operation_type"].as_str(), &results["results"]), (Some("backtesting"), result));
    let workers = app.get("/api/v1/workers?worker_type=backtesting").await.1;
    assert_eq!(workers[0]["status"], "available", "{workers}");
}

#[tokio::test]
async fn delete_stops_the_run_on_its_worker_and_resume_ends_where_an_uninterrupted_run_ends() {
    let app = app(1, 1_500).await;
    let id = start(&app, backtest(json!({}))).await;
    until_record(&app.base, &id, "some bars done", Duration::from_secs(20), |r| {
        r["progress"]["context"]["bars_processed"].as_u64().unwrap_or(0) >= 600 || ended(r)
    })
    .await;
    let (status, body) = app.delete(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let cancelled = until_record(&app.base, &id, "the worker's stop", Duration::from_secs(10), |r| {
        r["cancellation"]["remote"]["host_final_status"] == "cancelled" || r["status"] != "cancelled"
    })
    .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // The worker stopped its run (it says when) and is free for the next one.
    let worker = app.get("/api/v1/workers?worker_type=backtesting").await.1[0].clone();
    let endpoint = worker["endpoint_url"].as_str().unwrap().to_owned();
    let stats: Value = app.http.get(format!("{endpoint}/sim/stats")).send().await.unwrap().json().await.unwrap();
    let stop_ms = stats["stop_ms"][0].as_f64().expect("the run stopped");
    assert!(stop_ms < 1_000.0, "{stats}");
    let health: Value = app.http.get(format!("{endpoint}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["worker_status"], "idle");

    let (status, checkpoint) = app.get(&format!("/api/v1/checkpoints/{id}")).await;
    assert_eq!(status, 200, "{checkpoint}");
    let request = app.http.post(app.url(&format!("/api/v1/operations/{id}/resume")));
    let (status, resumed) = json_of(request.send().await.unwrap()).await;
    assert_eq!(status, 200, "{resumed}");
    let next = resumed["data"]["operation_id"].as_str().unwrap().to_owned();
    assert_ne!(next, id);
    let done = until_record(&app.base, &next, "the continuation's end", Duration::from_secs(30), ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["parent_operation_id"], id.as_str());

    // The same backtest, never interrupted: the same trades and figures.
    let straight = start(&app, backtest(json!({}))).await;
    let whole = until_record(&app.base, &straight, "the straight run", Duration::from_secs(30), ended).await;
    assert_eq!(whole["result_summary"]["metrics"], done["result_summary"]["metrics"]);
    assert_eq!(whole["result_summary"]["equity_curve_length"], 3_000);
}

#[tokio::test]
async fn three_backtests_on_one_worker_wait_pending_and_all_complete() {
    let app = app(1, 6_000).await;
    let mut ids = Vec::new();
    for capital in [100_000, 50_000, 25_000] {
        ids.push(start(&app, backtest(json!({ "initial_capital": capital }))).await);
    }
    let waiting = until_record(&app.base, &ids[2], "a wait", Duration::from_secs(10), |r| {
        r["progress"]["current_step"].as_str().is_some_and(|s| s.contains("waiting for a free backtest worker"))
            || ended(r)
    })
    .await;
    assert_eq!(waiting["status"], "pending", "a backtest is running once a worker took it: {waiting}");
    for id in &ids {
        let done = until_record(&app.base, id, "the end", Duration::from_secs(60), ended).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    // Each ran with its own capital.
    for (id, capital) in ids.iter().zip([100_000.0, 50_000.0, 25_000.0]) {
        let (_, results) = app.get(&format!("/api/v1/operations/{id}/results")).await;
        assert_eq!(results["results"]["config"]["initial_capital"].as_f64(), Some(capital), "{results}");
    }
}

#[tokio::test]
async fn with_no_backtest_worker_a_backtest_waits_then_runs_when_one_registers() {
    let app = app(0, 0).await;
    let id = start(&app, backtest(json!({}))).await;
    let waiting = until_record(&app.base, &id, "the wait", Duration::from_secs(10), |r| {
        r["progress"]["current_step"].as_str().is_some_and(|s| s.contains("waiting for a backtest worker to register"))
    })
    .await;
    assert_eq!(waiting["status"], "pending");
    // A worker comes up and registers, as ktrdr's do.
    let sim = ktrdr_ops::sim::backtest::BacktestSim::new(
        app.data_dir.path().to_owned(),
        app.data_dir.path().join("models"),
        Default::default(),
    );
    let fleet = ktrdr_ops::sim::worker::WorkerFleet {
        count: 1,
        gpu_workers: 0,
        backend_url: app.base.clone(),
        advertised_host: String::new(),
        agent: ktrdr_ops::sim::worker::AgentSettings {
            worker_token: Some(crate::common::TEST_WORKER_TOKEN.to_owned()).filter(|_| crate::common::auth_mode()),
            ..Default::default()
        },
        id_prefix: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (worker, _tasks) = ktrdr_ops::sim::worker::serve_worker(sim, listen, &fleet, 0, &stop).await.unwrap();
    assert!(worker.agent.worker_id().starts_with("backtesting-worker-"));
    let done = until_record(&app.base, &id, "the end", Duration::from_secs(30), ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    stop.cancel();
}

#[tokio::test]
async fn requests_that_cannot_run_are_refused_at_the_edge_and_retries_start_one() {
    let app = app(0, 0).await;
    let refused = |body: Value| {
        let app = &app;
        async move { app.post("/api/v1/backtests/start", body).await }
    };
    let (status, body) = refused(backtest(json!({ "strategy_name": "no_such_strategy" }))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("STRATEGY_NOT_FOUND")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("no_such_strategy"), "ktrdr's CLI prints `detail`: {body}");
    let (status, body) = refused(backtest(json!({ "timeframe": "4h" }))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("MODEL_NOT_FOUND")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("example_mlp/4h_latest"), "{body}");
    for outside in ["../secrets", "/etc", "models/../../etc"] {
        let (status, body) = refused(backtest(json!({ "model_path": outside }))).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("MODEL_PATH_OUTSIDE")), "{outside}: {body}");
    }
    for (field, value) in [
        ("start_date", json!("2024-13-01")),
        ("end_date", json!("2023-01-01")),
        ("initial_capital", json!(0)),
        ("commission", json!(-0.001)),
        ("slippage", json!(0.9)),
    ] {
        let (status, body) = refused(backtest(json!({ field: value }))).await;
        assert_eq!(status, 422, "{field}: {body}");
        let expected = if field == "end_date" { "start_date" } else { field };
        assert_eq!(body["error"]["details"]["field"], expected, "{body}");
    }
    // A named model inside the models folder is taken as named.
    let named = backtest(json!({ "model_path": "models/example_mlp/1h_v1" }));
    let id = start(&app, named).await;
    let (_, record) = app.get(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(record["data"]["metadata"]["parameters"]["model_path"], "models/example_mlp/1h_v1");

    // A client that retries its start with the same key starts one backtest.
    let keyed = || {
        app.http.post(app.url("/api/v1/backtests/start")).header("Idempotency-Key", "bt-1").json(&backtest(json!({})))
    };
    let (first, again) = (json_of(keyed().send().await.unwrap()).await, json_of(keyed().send().await.unwrap()).await);
    assert_eq!((first.0, again.0), (200, 200));
    assert_eq!(first.1["operation_id"], again.1["operation_id"]);
}

/// A backtest worker as a process of its own (so that it can be killed), registering with `base`:
/// the process and the worker's URL.
async fn backtest_worker_process(app: &TestApp) -> (tokio::process::Child, String) {
    let data_dir = app.data_dir.path().to_str().unwrap();
    let args = ["--backtest-workers", "1", "--backtest-listen", "127.0.0.1:0", "--backend-url", &app.base];
    let (child, urls) = crate::common::sim_process_urls(data_dir, &args, &[]).await;
    (child, urls[2].clone())
}

#[tokio::test]
async fn a_killed_workers_backtest_moves_to_another_and_resumes_from_its_checkpoint() {
    let app = app(0, 0).await;
    let mut workers = vec![backtest_worker_process(&app).await, backtest_worker_process(&app).await];
    for (_, url) in &workers {
        // Slow enough to be killed mid-run, with a checkpoint every 300 bars.
        let knobs = json!({ "bars_per_second": 1_000, "checkpoint_every": 300 });
        app.http.put(format!("{url}/sim/knobs")).json(&knobs).send().await.unwrap().error_for_status().unwrap();
    }
    let urls: Vec<&str> = workers.iter().map(|(_, url)| url.as_str()).collect();
    let ids = crate::workers::registered(&app.base, &urls).await;
    let id = start(&app, backtest(json!({}))).await;
    let checkpointed = until_record(&app.base, &id, "a checkpoint", Duration::from_secs(20), |r| {
        r["progress"]["context"]["bars_processed"].as_u64().unwrap_or(0) >= 700 || ended(r)
    })
    .await;
    let first = checkpointed["progress"]["context"]["worker_id"].as_str().unwrap().to_owned();
    let victim = ids.iter().position(|w| *w == first).expect("it runs on one of the two");
    workers[victim].0.kill().await.unwrap();
    let done = until_record(&app.base, &id, "the end", Duration::from_secs(30), ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_ne!(done["progress"]["context"]["worker_id"].as_str(), Some(first.as_str()), "it moved");
    let warnings = done["warnings"].to_string();
    assert!(warnings.contains(&format!("worker {first} stopped answering")), "{warnings}");
    assert!(warnings.contains("resuming from its checkpoint at 2024-"), "{warnings}");

    // The same backtest, never interrupted, on the worker left: the same figures.
    let left = &workers[1 - victim].1;
    app.http.put(format!("{left}/sim/knobs")).json(&json!({ "bars_per_second": 0 })).send().await.unwrap();
    let straight = start(&app, backtest(json!({}))).await;
    let whole = until_record(&app.base, &straight, "the straight run", Duration::from_secs(30), ended).await;
    assert_eq!(whole["result_summary"]["metrics"], done["result_summary"]["metrics"]);
}
