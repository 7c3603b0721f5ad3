//! Data loads end to end: the real service with the IB simulator in-process, over real sockets.
//! The simulator's request log proves exactly which windows each mode asked for.

use crate::common;

use std::time::Duration;

use common::{TestApp, assert_envelope};
use ktrdr_ops::data::frame::Bars;
use ktrdr_ops::data::repository::{read_csv, write_csv_atomic};
use ktrdr_ops::data::timeframe::Timeframe;
use ktrdr_ops::sim::market::Instrument;
use ktrdr_ops::time::{Timestamp, parse_timestamp};
use serde_json::{Value, json};

fn t(text: &str) -> Timestamp {
    parse_timestamp(text).unwrap()
}

fn expected(symbol: &str, tf: Timeframe, start: &str, end: &str) -> Bars {
    Bars::from_bars(&Instrument::new(symbol).bars(tf, t(start), t(end)))
}

async fn load(app: &TestApp, body: Value) -> String {
    let (status, answer) = app.post("/api/v1/data/load", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"]["operation_id"].as_str().unwrap().to_owned()
}

async fn finished(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let record = app.record(id).await;
        if ["completed", "failed", "cancelled"].contains(&record["status"].as_str().unwrap()) {
            return record;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} did not finish: {record}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cache_file(app: &TestApp, name: &str) -> std::path::PathBuf {
    app.data_dir.path().join(name)
}

fn windows_of(log: &[(String, String, String)]) -> Vec<(String, String)> {
    log.iter().map(|(s, e, _)| (s.clone(), e.clone())).collect()
}

fn w(s: &str, e: &str) -> (String, String) {
    (s.to_owned(), e.to_owned())
}

#[tokio::test]
async fn each_mode_from_an_empty_cache_fetches_the_range_in_its_order() {
    for (mode, newest_first) in [("tail", true), ("backfill", false), ("full", false)] {
        let app = TestApp::spawn_with_sim(|_| {}).await;
        let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": mode,
                           "start_date": "2024-01-01", "end_date": "2024-03-31T23:00:00Z" });
        let id = load(&app, body).await;
        let record = finished(&app, &id).await;
        assert_eq!(record["status"], "completed", "{mode}: {record}");
        let windows = windows_of(&app.ib_windows().await);
        // Each request names the load it was made for (X-Operation-Id), for the host's log.
        let named: Vec<Value> =
            app.ib_stats().await["historical"].as_array().unwrap().iter().map(|h| h["operation_id"].clone()).collect();
        assert_eq!(named, vec![json!(id); windows.len()], "{mode}");
        let mut ascending = vec![
            w("2024-01-01T00:00:00+00:00", "2024-01-30T23:59:59+00:00"),
            w("2024-01-31T00:00:00+00:00", "2024-02-29T23:59:59+00:00"),
            w("2024-03-01T00:00:00+00:00", "2024-03-30T23:59:59+00:00"),
            w("2024-03-31T00:00:00+00:00", "2024-03-31T23:00:00+00:00"),
        ];
        // 31 March 2024 is a Sunday: no segment is asked for it.
        ascending.pop();
        if newest_first {
            ascending.reverse();
        }
        assert_eq!(windows, ascending, "{mode}");
        let file = read_csv(&cache_file(&app, "AAPL_1h.csv")).unwrap();
        assert_eq!(file, expected("AAPL", Timeframe::H1, "2024-01-01T00:00:00Z", "2024-03-31T23:00:00Z"), "{mode}");
        let result = &record["result_summary"];
        assert_eq!((result["rows_before"].as_u64(), result["rows_after"].as_u64()), (Some(0), Some(file.len() as u64)));
        assert_eq!(result["segments_fetched"], 3);
        assert_eq!(result["ib_requests_made"], 3);
        assert_eq!(result["cache_hit"], false);
        assert_eq!(result["partial"], false);
        assert_eq!(result["file"], "AAPL_1h.csv");
    }
}

#[tokio::test]
async fn local_mode_reads_the_cache_without_calling_any_host() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let cached = expected("MSFT", Timeframe::D1, "2024-01-01T00:00:00Z", "2024-06-30T00:00:00Z");
    write_csv_atomic(&cache_file(&app, "MSFT_1d.csv"), &cached).unwrap();
    let record = finished(&app, &load(&app, json!({ "symbol": "msft", "timeframe": "1d" })).await).await;
    assert_eq!(record["status"], "completed");
    assert_eq!(record["result_summary"]["rows_after"], cached.len());
    assert_eq!(record["result_summary"]["cache_hit"], true);
    let stats = app.ib_stats().await;
    assert_eq!(stats["requests"], json!({}), "no host call at all: {stats}");
    let files: Vec<_> = std::fs::read_dir(app.data_dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(files, vec![std::ffi::OsString::from("MSFT_1d.csv")], "and nothing written");
}

/// A cache of February 2024 with Monday the 12th missing.
fn holed_cache(app: &TestApp) -> Bars {
    let mut bars = Instrument::new("AAPL").bars(Timeframe::H1, t("2024-02-01T00:00:00Z"), t("2024-02-29T23:00:00Z"));
    bars.retain(|b| b.timestamp.date_naive() != t("2024-02-12T00:00:00Z").date_naive());
    let bars = Bars::from_bars(&bars);
    write_csv_atomic(&cache_file(app, "AAPL_1h.csv"), &bars).unwrap();
    bars
}

#[tokio::test]
async fn each_mode_over_a_cache_with_holes_asks_for_exactly_what_is_missing() {
    let before = w("2024-01-15T00:00:00+00:00", "2024-02-01T14:29:59+00:00");
    let hole = w("2024-02-09T21:30:00+00:00", "2024-02-13T14:29:59+00:00");
    let after = w("2024-02-29T21:30:00+00:00", "2024-03-10T00:00:00+00:00");
    for (mode, asked) in [
        ("tail", vec![after.clone(), hole.clone(), before.clone()]),
        ("full", vec![before.clone(), hole.clone(), after.clone()]),
        ("backfill", vec![before.clone()]),
    ] {
        let app = TestApp::spawn_with_sim(|_| {}).await;
        let cached = holed_cache(&app);
        let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": mode,
                           "start_date": "2024-01-15T00:00:00Z", "end_date": "2024-03-10T00:00:00Z" });
        let record = finished(&app, &load(&app, body).await).await;
        assert_eq!(record["status"], "completed", "{mode}: {record}");
        assert_eq!(windows_of(&app.ib_windows().await), asked, "{mode}");
        let file = read_csv(&cache_file(&app, "AAPL_1h.csv")).unwrap();
        let whole = expected("AAPL", Timeframe::H1, "2024-01-15T00:00:00Z", "2024-03-10T00:00:00Z");
        if mode == "backfill" {
            let early = expected("AAPL", Timeframe::H1, "2024-01-15T00:00:00Z", "2024-01-31T23:00:00Z");
            assert_eq!(file, early.merge(&cached), "backfill does not scan for holes");
        } else {
            assert_eq!(file, whole, "{mode} filled everything");
        }
        assert_eq!(record["result_summary"]["rows_before"], cached.len());
    }
}

#[tokio::test]
async fn progress_is_monotonic_and_stays_within_each_steps_band() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    app.ib_knobs(json!({ "latency_ms": 25 })).await;
    let body = json!({ "symbol": "EURUSD", "timeframe": "1h", "mode": "backfill", "start_date": "2023-01-01", "end_date": "2024-06-30" });
    let id = load(&app, body).await;
    let mut last = -1.0;
    let mut steps_seen = std::collections::BTreeSet::new();
    let mut download_message = None;
    loop {
        let record = app.record(&id).await;
        let progress = &record["progress"];
        let percentage = progress["percentage"].as_f64().unwrap();
        assert!(percentage >= last, "went back from {last} to {percentage}");
        last = percentage;
        let context = &progress["context"];
        if let (Some(low), Some(high)) =
            (context["step_start_percentage"].as_f64(), context["step_end_percentage"].as_f64())
            && record["status"] == "running"
        {
            assert!(low <= percentage && percentage <= high, "{percentage} outside [{low}, {high}]: {progress}");
            steps_seen.insert(context["current_step_name"].as_str().unwrap().to_owned());
        }
        let step = progress["current_step"].as_str().unwrap_or_default();
        if step.starts_with("Downloading") && step.contains("segment ") {
            download_message = Some(step.to_owned());
        }
        if record["status"] != "running" && record["status"] != "pending" {
            assert_eq!(record["status"], "completed", "{record}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(last, 100.0);
    assert!(steps_seen.iter().any(|s| s.starts_with("Downloading")), "{steps_seen:?}");
    let message = download_message.expect("saw a download step");
    assert!(message.ends_with("(EURUSD 1h, backfill mode) [6/7]"), "{message}");
    assert!(message.contains("segments from IB: "), "{message}");
}

#[tokio::test]
async fn cancelling_in_the_middle_of_downloading_keeps_every_fetched_segment() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    app.ib_knobs(json!({ "latency_ms": 40 })).await;
    let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "backfill", "start_date": "2022-01-01", "end_date": "2024-06-30" });
    let id = load(&app, body).await;
    loop {
        let record = app.record(&id).await;
        if record["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, answer) = app.delete(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["status"], "cancelled");
    // Answered after the work stopped and saved: the file is complete and valid now.
    let file = read_csv(&cache_file(&app, "AAPL_1h.csv")).expect("a valid CSV");
    let answered: Vec<_> = app.ib_windows().await.into_iter().filter(|(_, _, outcome)| outcome == "ok").collect();
    assert!(answered.len() >= 3);
    let mut fetched = Bars::default();
    for (start, end, _) in &answered {
        fetched = fetched.merge(&Bars::from_bars(&Instrument::new("AAPL").bars(Timeframe::H1, t(start), t(end))));
    }
    assert_eq!(file, fetched, "every segment answered before the cancel is on disk, and nothing else");
    // The cancelled load says what it saved and what is still missing.
    let summary = app.record(&id).await["result_summary"].clone();
    assert_eq!(summary["rows_after"], file.len(), "{summary}");
    assert_eq!(summary["segments_fetched"].as_u64().unwrap(), answered.len() as u64, "{summary}");
    let missing = summary["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{summary}");
    assert_eq!(missing[0]["end"], "2024-06-30T23:59:59.000000Z", "a bare end date includes its day: {summary}");
}

/// The historical windows the simulator answered, as `(start, end)`.
async fn answered_windows(app: &TestApp) -> Vec<(String, String)> {
    app.ib_windows()
        .await
        .into_iter()
        .filter(|(_, _, outcome)| outcome != "gateway down")
        .map(|(s, e, _)| (s, e))
        .collect()
}

#[tokio::test]
async fn a_re_run_of_an_interrupted_backfill_covers_the_whole_range_and_fetches_nothing_twice() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    app.ib_knobs(json!({ "latency_ms": 20 })).await;
    let body = json!({ "symbol": "MSFT", "timeframe": "1m", "mode": "backfill",
                       "start_date": "2024-01-01", "end_date": "2024-03-31" });
    let first = load(&app, body.clone()).await;
    until(&app, &first, Duration::from_secs(20), "a few segments", |r| {
        r["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    let (status, _) = app.delete(&format!("/api/v1/operations/{first}")).await;
    assert_eq!(status, 200);
    let before = answered_windows(&app).await;
    app.ib_knobs(json!({ "latency_ms": 0 })).await;

    let second = finished(&app, &load(&app, body.clone()).await).await;
    assert_eq!(second["status"], "completed", "{second}");
    let summary = &second["result_summary"];
    assert!(summary["segments_fetched"].as_u64().unwrap() > 50, "the rest of the quarter was fetched: {summary}");
    assert_eq!(summary["missing"], json!([]), "{summary}");
    let all = answered_windows(&app).await;
    let mut seen = std::collections::HashSet::new();
    for window in &all {
        assert!(seen.insert(window.clone()), "{window:?} was fetched twice");
    }
    assert!(before.len() >= 5 && all.len() > before.len());
    let file = read_csv(&cache_file(&app, "MSFT_1m.csv")).unwrap();
    let whole = expected("MSFT", Timeframe::M1, "2024-01-01T00:00:00Z", "2024-03-31T00:00:00Z");
    assert_eq!(file, whole, "the cache holds the whole quarter");

    // A third run finds everything complete, holidays included: nothing is asked of the host.
    let third = finished(&app, &load(&app, body).await).await;
    assert_eq!(third["status"], "completed");
    assert_eq!(third["result_summary"]["cache_hit"], true, "{third}");
    assert_eq!(answered_windows(&app).await.len(), all.len());
}

#[tokio::test]
async fn a_backfill_over_a_cache_without_coverage_index_that_ends_early_says_what_it_left_missing() {
    // A cache written by an older version whose backfill was interrupted: three weeks of a quarter.
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let early = expected("MSFT", Timeframe::H1, "2024-01-01T00:00:00Z", "2024-01-21T23:00:00Z");
    write_csv_atomic(&cache_file(&app, "MSFT_1h.csv"), &early).unwrap();
    let body = json!({ "symbol": "MSFT", "timeframe": "1h", "mode": "backfill",
                       "start_date": "2024-01-01", "end_date": "2024-06-30" });
    let record = finished(&app, &load(&app, body).await).await;
    assert_eq!(record["status"], "completed", "{record}");
    let warnings = record["warnings"].to_string();
    assert!(warnings.contains("backfill fills up to the start of the cache; the cache ends 2024-01-19"), "{warnings}");
    assert!(warnings.contains("run a `tail` or `full` load for the rest"), "{warnings}");
    // A full load of the same range then fills it.
    let body = json!({ "symbol": "MSFT", "timeframe": "1h", "mode": "full",
                       "start_date": "2024-01-01", "end_date": "2024-06-30" });
    let record = finished(&app, &load(&app, body).await).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        read_csv(&cache_file(&app, "MSFT_1h.csv")).unwrap(),
        expected("MSFT", Timeframe::H1, "2024-01-01T00:00:00Z", "2024-06-30T00:00:00Z")
    );
}

#[tokio::test]
async fn a_day_the_host_has_no_bars_for_is_fetched_once_not_at_every_load() {
    // 5 December 2018 (a national day of mourning) is not in our holiday calendar: the first
    // load asks for it, the host has nothing, and from then on it is known complete.
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let mut bars = Instrument::new("IBM").bars(Timeframe::H1, t("2018-12-03T00:00:00Z"), t("2018-12-07T23:00:00Z"));
    bars.retain(|b| b.timestamp.date_naive() != t("2018-12-05T00:00:00Z").date_naive());
    write_csv_atomic(&cache_file(&app, "IBM_1h.csv"), &Bars::from_bars(&bars)).unwrap();
    app.ib_knobs(json!({ "empty_dates": ["2018-12-05"] })).await;
    let body = json!({ "symbol": "IBM", "timeframe": "1h", "mode": "full",
                       "start_date": "2018-12-03T00:00:00Z", "end_date": "2018-12-07T23:00:00Z" });
    let first = finished(&app, &load(&app, body.clone()).await).await;
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["result_summary"]["gaps_found"], 1, "{first}");
    assert_eq!(first["result_summary"]["gaps_without_data"], 1, "reported as a range without data: {first}");
    assert_eq!(first["result_summary"]["gaps_filled"], 0, "{first}");
    let asked = answered_windows(&app).await.len();
    assert_eq!(asked, 1, "the hole was asked for once");
    let second = finished(&app, &load(&app, body).await).await;
    assert_eq!(second["result_summary"]["gaps_found"], 0, "{second}");
    assert_eq!(answered_windows(&app).await.len(), asked, "and not again");
}

#[tokio::test]
async fn one_failing_segment_makes_a_partial_success() {
    let app = TestApp::spawn_with_sim(|c| {
        c.data.retry_base_delay = ktrdr_ops::time::HumanDuration(Duration::from_millis(10))
    })
    .await;
    app.ib_knobs(json!({ "fail_dates": ["2024-02-15"] })).await;
    let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "backfill", "start_date": "2024-01-01", "end_date": "2024-03-31T23:00:00Z" });
    let record = finished(&app, &load(&app, body).await).await;
    assert_eq!(record["status"], "completed", "{record}");
    let result = &record["result_summary"];
    assert_eq!(result["partial"], true);
    assert_eq!((result["segments_fetched"].as_u64(), result["segments_failed"].as_u64()), (Some(2), Some(1)));
    assert_eq!(result["ib_requests_made"], 5, "the failing segment was tried three times");
    let errors = record["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].as_str().unwrap().starts_with("segment 2/3 2024-01-31 00:00 to 2024-02-29 23:59: Error 1100"),
        "{errors:?}"
    );
    let file = read_csv(&cache_file(&app, "AAPL_1h.csv")).unwrap();
    let kept = expected("AAPL", Timeframe::H1, "2024-01-01T00:00:00Z", "2024-01-30T23:59:59Z").merge(&expected(
        "AAPL",
        Timeframe::H1,
        "2024-03-01T00:00:00Z",
        "2024-03-31T23:00:00Z",
    ));
    assert_eq!(file, kept);
}

#[tokio::test]
async fn an_unknown_symbol_fails_at_the_first_step_with_the_hosts_words() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let record = finished(&app, &load(&app, json!({ "symbol": "XYZ", "timeframe": "1h", "mode": "tail" })).await).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error_message"], "Symbol XYZ not found");
    assert_eq!(record["progress"]["context"]["current_step_name"], "Validating symbol XYZ");
    assert_eq!(record["progress"]["steps_completed"], 0);
    assert!(!cache_file(&app, "XYZ_1h.csv").exists());
}

#[tokio::test]
async fn two_loads_of_one_series_run_one_after_the_other() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    app.ib_knobs(json!({ "latency_ms": 30 })).await;
    let body = json!({ "symbol": "SPY", "timeframe": "1h", "mode": "backfill", "start_date": "2023-06-01", "end_date": "2024-06-01" });
    let first = load(&app, body.clone()).await;
    let second = load(&app, body).await;
    let mut saw_waiting = false;
    loop {
        let record = app.record(&second).await;
        saw_waiting |= record["progress"]["current_step"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for another load of SPY 1h");
        if record["status"] == "completed" {
            let first = app.record(&first).await;
            assert_eq!(first["status"], "completed");
            assert!(
                first["completed_at"].as_str() <= record["started_at"].as_str().max(record["completed_at"].as_str())
            );
            assert_eq!(record["result_summary"]["cache_hit"], true, "the first load had filled it: {record}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_waiting, "the second load said it was waiting");
    let asked = app.ib_windows().await;
    let unique: std::collections::HashSet<_> = asked.iter().collect();
    assert_eq!(unique.len(), asked.len(), "no window was fetched twice");
}

#[tokio::test]
async fn bad_requests_are_refused_and_touch_nothing() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let cases = [
        (json!({ "symbol": "../../etc/passwd", "timeframe": "1h" }), "symbol"),
        (json!({ "symbol": "AAPL/../x", "timeframe": "1h" }), "symbol"),
        (json!({ "symbol": "A".repeat(500), "timeframe": "1h" }), "symbol"),
        (json!({ "symbol": "AAPL", "timeframe": "7m" }), "timeframe"),
        (
            json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "tail", "start_date": "2024-03-01", "end_date": "2024-01-01" }),
            "start_date",
        ),
        (json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "sideways" }), "mode"),
        (json!({ "symbol": "AAPL", "timeframe": "1h", "start_date": "someday" }), "start_date"),
    ];
    for (body, field) in cases {
        for path in ["/api/v1/data/load", "/api/v1/data/acquire/download"] {
            let mut body = body.clone();
            if path.ends_with("download") && body.get("mode").is_none() {
                body["mode"] = json!("tail");
            }
            let (status, answer) = app.post(path, body.clone()).await;
            assert_eq!(status, 422, "{path} {body}: {answer}");
            assert_envelope(&answer);
            assert_eq!(answer["error"]["details"]["field"], field, "{path} {body}: {answer}");
        }
    }
    let (status, answer) =
        app.post("/api/v1/data/acquire/download", json!({ "symbol": "AAPL", "timeframe": "1h" })).await;
    assert_eq!((status, answer["error"]["details"]["field"].as_str()), (422, Some("mode")));
    let (status, answer) = app.get("/api/v1/data/AAPL%2F..%2Fx/1h").await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = app.get("/api/v1/data/AAPL/2h5").await;
    assert_eq!(status, 422);
    assert_eq!(std::fs::read_dir(app.data_dir.path()).unwrap().count(), 0, "nothing was written");
    assert_eq!(app.get("/api/v1/operations").await.1["total_count"], 0, "no operation was created");
    assert_eq!(app.ib_stats().await["requests"], json!({}), "no host was called");
}

#[tokio::test]
async fn cached_bars_are_served_with_filters_and_listed() {
    let app = TestApp::spawn_with_sim(|_| {}).await;
    let (_, empty) = app.get("/api/v1/data/AAPL/1h").await;
    assert_eq!(empty["data"]["dates"], json!([]));
    assert_eq!(empty["data"]["metadata"]["points"], 0);
    let body = json!({ "symbol": "AAPL", "timeframe": "1d", "mode": "backfill", "start_date": "2024-01-01", "end_date": "2024-03-31" });
    finished(&app, &load(&app, body).await).await;
    let (status, all) = app.get("/api/v1/data/AAPL/1d").await;
    assert_eq!(status, 200);
    let dates = all["data"]["dates"].as_array().unwrap();
    let bars = expected("AAPL", Timeframe::D1, "2024-01-01T00:00:00Z", "2024-03-31T00:00:00Z");
    assert_eq!(dates.len(), bars.len());
    assert_eq!(dates[0], "2024-01-02T00:00:00Z");
    let first: Vec<f64> = all["data"]["ohlcv"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(first, vec![bars.open[0], bars.high[0], bars.low[0], bars.close[0], bars.volume[0]]);
    let (_, some) = app.get("/api/v1/data/aapl/1d?start_date=2024-02-01&end_date=2024-02-29&limit=5").await;
    assert_eq!(some["data"]["dates"].as_array().unwrap().len(), 5);
    assert_eq!(some["data"]["metadata"]["end"], "2024-02-29T00:00:00Z");
    let (_, info) = app.get("/api/v1/data/info").await;
    assert_eq!(info["data"][0]["symbol"], "AAPL");
    assert_eq!(info["data"][0]["point_count"], bars.len());
    assert_eq!(info["data"][0]["start_date"], "2024-01-02T00:00:00.000000Z");
    let (status, _) = app.get("/api/v1/data/AAPL/1d?limit=0").await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn under_ibs_pacing_rules_the_simulator_sees_no_violation() {
    // Our limiter paces by IB's rules and the simulator judges every request by the same rules,
    // with every duration divided by 100 on the simulator's side (a paused clock cannot be used
    // here: the SQLite pool's own timeouts would fire) — 2 s gaps become 20 ms, the 10-minute
    // window 6 s. At millisecond scale the scheduling jitter between our clock and the
    // simulator's is no longer negligible, so our side runs the rules 1.5 times stricter and the
    // simulator forgives 5 ms.
    const SIM_SCALE: f64 = 0.01;
    const OUR_SCALE: f64 = 0.015;
    let app = TestApp::spawn_with_sim(|c| {
        c.hosts.ib.pacing = ktrdr_ops::config::PacingMode::Ib;
        let rules = &mut c.hosts.ib.pacing_rules;
        for d in [
            &mut rules.min_gap,
            &mut rules.window,
            &mut rules.identical_gap,
            &mut rules.contract_window,
            &mut rules.violation_backoff,
        ] {
            d.0 = d.0.mul_f64(OUR_SCALE);
        }
    })
    .await;
    app.ib_knobs(json!({ "pacing": true, "pacing_scale": SIM_SCALE, "pacing_tolerance_ms": 5 })).await;
    let began = std::time::Instant::now();
    let mut ids = Vec::new();
    for (symbol, timeframe, start) in
        [("AAPL", "1h", "2021-01-01"), ("MSFT", "1h", "2021-01-01"), ("AAPL", "1d", "2020-01-01")]
    {
        let body = json!({ "symbol": symbol, "timeframe": timeframe, "mode": "backfill", "start_date": start, "end_date": "2024-01-01" });
        ids.push(load(&app, body).await);
    }
    let mut requests = 0;
    for id in &ids {
        let record = finished(&app, id).await;
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["result_summary"]["partial"], false);
        requests += record["result_summary"]["ib_requests_made"].as_u64().unwrap();
    }
    let stats = app.ib_stats().await;
    assert_eq!(stats["pacing_violations"], 0, "{stats}");
    assert!(requests > 60, "{requests} requests: enough to meet the 60-per-window rule");
    let waited = began.elapsed();
    assert!(waited >= Duration::from_secs(9), "the window rule held requests back: {waited:?}");
}

/// The simulator's IB gateway goes down or comes back (`POST /sim/gateway`).
async fn switch_gateway(app: &TestApp, connected: bool) {
    let response =
        app.http.post(format!("{}/sim/gateway", app.ib_url())).json(&json!({ "connected": connected })).send().await;
    assert_eq!(response.unwrap().status(), 200);
}

/// Polls the record until `check` holds (at most `within`).
async fn until(app: &TestApp, id: &str, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let record = app.record(id).await;
        if check(&record) {
            return record;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened: {record}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn step(record: &Value) -> &str {
    record["progress"]["current_step"].as_str().unwrap_or("")
}

const GATEWAY_DOWN: &str = "the IB host reports its gateway is not connected — start or log in to TWS/IB Gateway";

#[tokio::test]
async fn with_the_gateway_down_a_load_fails_within_two_seconds_naming_the_cause() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.gateway_connected = false;
        c.sim.gateway_hang_ms = 300_000;
    })
    .await;
    let (_, health) = app.get("/api/v1/health").await;
    assert_eq!(health["hosts"]["ib"]["reachable"], true, "the host itself answers: {health}");
    assert_eq!(health["hosts"]["ib"]["gateway_connected"], false, "{health}");

    let began = std::time::Instant::now();
    let id =
        load(&app, json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "tail", "start_date": "2024-01-01" })).await;
    let record = finished(&app, &id).await;
    let took = began.elapsed();
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error_message"], GATEWAY_DOWN, "{record}");
    assert!(took < Duration::from_secs(2), "failed after {took:?}");
    assert_eq!(app.ib_stats().await["requests"]["/data/validate"], Value::Null, "no data call was made");

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\nktrdr_ops_ib_gateway_connected 0\n"), "{metrics}");
    switch_gateway(&app, true).await;
    // Health reuses the host's answer for health_ttl; a load asks afresh when it must.
    let id =
        load(&app, json!({ "symbol": "AAPL", "timeframe": "1d", "mode": "tail", "start_date": "2024-01-01" })).await;
    let record = finished(&app, &id).await;
    assert!(["completed", "failed"].contains(&record["status"].as_str().unwrap()), "{record}");
}

#[tokio::test]
async fn waiting_for_the_gateway_a_load_waits_in_its_step_is_cancellable_and_completes_when_it_is_back() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.gateway_connected = false;
        c.sim.gateway_hang_ms = 300_000;
        c.data.wait_for_gateway = true;
    })
    .await;
    let body = json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "tail",
                       "start_date": "2024-01-01", "end_date": "2024-02-29" });
    let waiting = load(&app, body.clone()).await;
    let cancelled =
        load(&app, json!({ "symbol": "MSFT", "timeframe": "1h", "mode": "tail", "start_date": "2024-01-01" })).await;
    for id in [&waiting, &cancelled] {
        let record = until(&app, id, Duration::from_secs(10), "waiting for the gateway", |r| {
            step(r).contains("waiting for the IB gateway to connect")
        })
        .await;
        assert_eq!(record["status"], "running", "{record}");
    }
    let began = std::time::Instant::now();
    let (status, answer) = app.delete(&format!("/api/v1/operations/{cancelled}")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(began.elapsed() < Duration::from_millis(500), "DELETE took {:?}", began.elapsed());
    assert_eq!(app.record(&cancelled).await["status"], "cancelled");

    // Seconds count up while it waits.
    until(&app, &waiting, Duration::from_secs(10), "a second waited", |r| step(r).contains(", 2 s so far")).await;
    switch_gateway(&app, true).await;
    let record = finished(&app, &waiting).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(record["result_summary"]["rows_downloaded"].as_u64().unwrap() > 0, "{record}");
    let warnings = record["warnings"].to_string();
    assert!(warnings.contains("s for the IB gateway to connect"), "{warnings}");
}

#[tokio::test]
async fn when_the_host_finally_answers_not_found_the_gateway_is_named_with_the_hosts_words() {
    let app = TestApp::spawn_with_sim(|c| c.sim.gateway_hang_ms = 300).await;
    // A first load leaves the gateway's state cached as connected…
    let id =
        load(&app, json!({ "symbol": "AAPL", "timeframe": "1d", "mode": "tail", "start_date": "2024-01-01" })).await;
    assert_eq!(finished(&app, &id).await["status"], "completed");
    // …so the next one goes straight to the host, which hangs and says the symbol is unknown.
    switch_gateway(&app, false).await;
    let id =
        load(&app, json!({ "symbol": "MSFT", "timeframe": "1d", "mode": "tail", "start_date": "2024-01-01" })).await;
    let record = finished(&app, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    let message = record["error_message"].as_str().unwrap();
    assert!(message.starts_with(GATEWAY_DOWN), "{message}");
    assert!(message.contains("Symbol MSFT not found"), "the host's own words are kept: {message}");
}

#[tokio::test]
async fn a_gateway_lost_mid_load_is_found_when_the_call_stalls_and_the_load_fails_keeping_its_bars() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.latency_ms = 30;
        c.sim.gateway_hang_ms = 300_000;
        c.hosts.stall_notice = ktrdr_ops::time::HumanDuration(Duration::from_millis(500));
    })
    .await;
    let body = json!({ "symbol": "AAPL", "timeframe": "1m", "mode": "backfill",
                       "start_date": "2024-01-02", "end_date": "2024-03-29" });
    let id = load(&app, body).await;
    until(&app, &id, Duration::from_secs(20), "a few segments", |r| {
        r["progress"]["context"]["segments_done"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    switch_gateway(&app, false).await;
    let switched = std::time::Instant::now();
    let record = until(&app, &id, Duration::from_secs(10), "the stall noticed", |r| {
        step(r).contains("no answer from the IB host for") || r["status"] != "running"
    })
    .await;
    assert!(step(&record).contains("attempt 1 of 1, giving up at 60 s"), "{record}");
    let record = finished(&app, &id).await;
    let took = switched.elapsed();
    assert_eq!(record["status"], "failed", "{record}");
    assert!(record["error_message"].as_str().unwrap().starts_with(GATEWAY_DOWN), "{record}");
    assert!(took < Duration::from_secs(4), "failed {took:?} after the gateway went down");
    let warnings = record["warnings"].to_string();
    assert!(warnings.contains("no answer from the IB host") && warnings.contains("abandoned"), "{warnings}");
    let saved = read_csv(&cache_file(&app, "AAPL_1m.csv")).unwrap();
    assert!(!saved.is_empty(), "the segments fetched before are kept");
}

#[tokio::test]
async fn a_stalled_host_call_shows_in_the_step_and_the_stream_and_a_cancel_abandons_it_at_once() {
    let app = TestApp::spawn_with_sim(|c| {
        c.sim.latency_ms = 30_000;
        c.hosts.stall_notice = ktrdr_ops::time::HumanDuration(Duration::from_secs(1));
    })
    .await;
    let id =
        load(&app, json!({ "symbol": "AAPL", "timeframe": "1h", "mode": "tail", "start_date": "2024-01-01" })).await;
    let began = std::time::Instant::now();
    let (events, _) = common::read_sse_until(
        &app.http,
        &app.url(&format!("/api/v1/operations/{id}/events")),
        None,
        Duration::from_secs(5),
        |events| {
            events.iter().any(|e| e.data["progress"]["current_step"].as_str().unwrap_or("").contains("no answer from"))
        },
    )
    .await;
    let noticed = began.elapsed();
    let last = events.last().expect("events arrived");
    let step_text = last.data["progress"]["current_step"].as_str().unwrap();
    assert!(
        step_text.contains("no answer from the IB host for 1 s — attempt 1 of 3, giving up at 60 s"),
        "{step_text}"
    );
    assert!(noticed < Duration::from_millis(2500), "noticed after {noticed:?}");

    let began = std::time::Instant::now();
    let (status, answer) = app.delete(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(began.elapsed() < Duration::from_millis(500), "DELETE took {:?}", began.elapsed());
    let record = app.record(&id).await;
    assert_eq!(record["status"], "cancelled");
    let warnings = record["warnings"].to_string();
    assert!(
        warnings.contains("no answer from the IB host") && warnings.contains("the call was abandoned"),
        "{warnings}"
    );
    // The simulator saw the client hang up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.ib_stats().await["dropped_requests"].as_u64().unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the host call was not abandoned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ktrdr_ops_host_stalls_total{host=\"ib\"} 1"), "{metrics}");
}
