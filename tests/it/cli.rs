//! The command-line client against a running service (`serve --sim`, as a process): a load
//! followed to the end, Ctrl-C cancelling on the server (a watch only stops watching), JSON
//! output, an unreachable server, a backtest and its table.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::{ServiceProcess, TestDb, json_of};
use serde_json::Value;

async fn service(latency_ms: &str) -> (ServiceProcess, TestDb, tempfile::TempDir) {
    let db = TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--sim",
        "--sim-latency-ms",
        latency_ms,
        "--data-dir",
        &data_dir,
    ];
    (ServiceProcess::start(&args, &[]).await, db, data)
}

fn cli(base: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"));
    command.args(args).env("KTRDR_API_URL", base).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_load_started_from_the_command_line_is_followed_to_completion() {
    let (service, _db, data) = service("0").await;
    let output = cli(
        &service.base,
        &["data", "load", "AAPL", "1d", "--mode", "backfill", "--start", "2024-01-01", "--end", "2024-06-30"],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["file"], "AAPL_1d.csv");
    assert!(data.path().join("AAPL_1d.csv").exists());
    assert!(String::from_utf8_lossy(&output.stderr).contains("completed"));

    let output = cli(&service.base, &["ops", "list", "--json"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    let list: Value = serde_json::from_slice(&output.stdout).unwrap();
    let id = list[0]["operation_id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["status"], "completed");
    let output = cli(&service.base, &["ops", "show", &id, "--json"]).output().await.unwrap();
    let record: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(record["operation_id"], id.as_str());
    assert_eq!(record["result_summary"]["file"], "AAPL_1d.csv");
}

#[tokio::test]
async fn ctrl_c_cancels_the_operation_on_the_server_and_exits_130() {
    let (service, _db, _data) = service("40").await;
    let mut child = cli(
        &service.base,
        &["data", "load", "AAPL", "1m", "--mode", "backfill", "--start", "2024-01-01", "--end", "2024-06-30", "--json"],
    )
    .spawn()
    .unwrap();
    let http = reqwest::Client::new();
    let id = loop {
        let (_, list) =
            json_of(http.get(service.url("/api/v1/operations?active_only=true")).send().await.unwrap()).await;
        if let Some(row) = list["data"].as_array().and_then(|rows| rows.first())
            && row["current_step"].as_str().unwrap_or_default().starts_with("Downloading")
            && row["progress_percentage"].as_f64().unwrap_or(0.0) > 5.0
        {
            break row["operation_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(130));
    let (_, record) = json_of(http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    assert_eq!(record["data"]["status"], "cancelled");
    assert_eq!(record["data"]["error_message"], "Cancelled from the command line (Ctrl-C)");
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).await.unwrap();
    let last: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(last["status"], "cancelled", "--json prints the final record");
}

#[tokio::test]
async fn ctrl_c_on_a_watch_stops_watching_and_the_operation_goes_on() {
    let (service, _db, _data) = service("0").await;
    let http = reqwest::Client::new();
    let started = http
        .post(service.url("/api/v1/dummy/start"))
        .json(&serde_json::json!({ "iterations": 200, "interval_ms": 50 }));
    let (_, answer) = json_of(started.send().await.unwrap()).await;
    let id = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    let mut child = cli(&service.base, &["ops", "watch", &id]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(130));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
    assert!(stderr.contains(&format!("ktrdr-ops ops cancel {id}")), "says how to cancel: {stderr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, record) = json_of(http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    assert_eq!(record["data"]["status"], "running", "a watch does not cancel: {record}");

    // `ops show` of a cancelled operation worked: exit 0.
    http.delete(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap();
    let output = cli(&service.base, &["ops", "show", &id]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_one_clear_line_and_exit_2() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let output = cli(&format!("http://{closed}"), &["ops", "list"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot reach the service at http://{closed}")), "{stderr}");

    let output = cli(&format!("http://{closed}"), &["health"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "health of an unreachable service: {output:?}");

    let (service, _db, _data) = service("0").await;
    let output = cli(&service.base, &["health"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("ok · database ok · ib reachable, gateway connected · training reachable"), "{text}");
    let output = cli(&service.base, &["data", "load", "../etc", "1h"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "refused requests are exit 2 too");
    assert!(String::from_utf8_lossy(&output.stderr).contains("symbol"), "{output:?}");
}

#[tokio::test]
async fn a_cancel_that_cancelled_exits_0_and_client_options_go_before_the_subcommand_too() {
    let (service, _db, _data) = service("40").await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "symbol": "AAPL", "timeframe": "1m", "mode": "backfill",
                                   "start_date": "2024-01-01", "end_date": "2024-06-30" });
    let (_, answer) = json_of(http.post(service.url("/api/v1/data/load")).json(&body).send().await.unwrap()).await;
    let id = answer["data"]["operation_id"].as_str().unwrap().to_owned();
    // Client options before the subcommand, with no KTRDR_API_URL to fall back on.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ktrdr-ops"))
        .args(["--url", &service.base, "--json", "ops", "cancel", &id, "--reason", "scripted"])
        .env_remove("KTRDR_API_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "a cancel that happened is a success: {output:?}");
    let record: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(record["status"], "cancelled");
    // Cancelling it again is refused by the service: exit 2, one line.
    let output = cli(&service.base, &["ops", "cancel", &id]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    // The service's own options do not belong to a client command.
    let output = cli(&service.base, &["--listen", "127.0.0.1:1", "ops", "list"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen is an option of `serve`"), "{output:?}");
}

#[tokio::test]
async fn a_backtest_from_the_command_line_ends_with_a_table_of_its_results() {
    let db = TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    crate::backtests::eurusd_wave(data.path(), 1_000);
    crate::backtests::trained_model(&data.path().join("models"));
    let data_dir = data.path().display().to_string();
    let models_dir = data.path().join("models").display().to_string();
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url, "--sim", "--data-dir", &data_dir];
    let service = ServiceProcess::start(&args, &[("KTRDR_OPS__TRAINING__MODELS_DIR", &models_dir)]).await;
    let output = cli(&service.base, &["backtest", "example_mlp", "--start", "2024-01-01", "--end", "2024-02-10"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("completed"), "{stderr}");
    assert!(stdout.starts_with("EURUSD 1h · 2024-01-01T00:00:00 → 2024-02-10T23:59:59"), "{stdout}");
    for row in ["Total return", "Sharpe ratio", "Max drawdown", "Trades", "Win rate"] {
        assert!(stdout.contains(row), "{row}: {stdout}");
    }
}
