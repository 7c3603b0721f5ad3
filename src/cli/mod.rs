//! The command-line client of a running service: list, show, watch and cancel operations; start
//! data loads, trainings and backtests and follow them with a progress bar fed by the operation's event
//! stream. Ctrl-C on a command that started the work cancels the operation on the server and
//! waits for it to say `cancelled`; Ctrl-C on `ops watch` only stops watching.
//! Exit codes: 0 completed (and `ops cancel` that cancelled, and `ops show` of any operation it
//! found), 1 failed, 130 a followed operation ended cancelled or a watch was interrupted (Ctrl-C),
//! 2 could not ask (unreachable, refused).

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::hosts::{Call, HostClient, HostError, HostErrorKind, HostSettings, RetryPolicy};

/// `println!` that does not panic when the reader went away (`ktrdr-ops ops list | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod catalog;

/// Where the service is and how to talk to it.
pub struct Client {
    host: HostClient,
    url: String,
    /// Print JSON records instead of people's text.
    pub json: bool,
}

/// What Ctrl-C does while an operation is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCtrlC {
    /// Cancel the operation on the server and wait for it to say `cancelled` (`data load`,
    /// `train`: the command started the work).
    Cancel,
    /// Stop following it; it goes on (`ops watch`).
    StopWatching,
}

/// How a command ended.
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
    /// The request could not be made or was refused.
    Unusable(String),
}

impl Outcome {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::Completed => ExitCode::SUCCESS,
            Outcome::Failed => ExitCode::from(1),
            Outcome::Cancelled => ExitCode::from(130),
            Outcome::Unusable(message) => {
                eprintln!("ktrdr-ops: {message}");
                ExitCode::from(2)
            }
        }
    }
}

impl From<HostError> for Outcome {
    fn from(e: HostError) -> Self {
        Outcome::Unusable(describe(&e))
    }
}

/// One clear line for a failed request.
fn describe(e: &HostError) -> String {
    match e.kind {
        HostErrorKind::Connect | HostErrorKind::Timeout | HostErrorKind::Broken => {
            format!("cannot reach the service: {}", first_cause(&e.message))
        }
        HostErrorKind::Status(401) => "the service needs an API token (--token or KTRDR_API_TOKEN)".to_owned(),
        HostErrorKind::Status(status) => format!("the service answered {status}: {}", e.message),
        _ => e.message.clone(),
    }
}

fn first_cause(message: &str) -> &str {
    message.rsplit(": ").next().unwrap_or(message)
}

fn status_of(record: &Value) -> &str {
    record["status"].as_str().unwrap_or("unknown")
}

fn is_terminal(record: &Value) -> bool {
    matches!(status_of(record), "completed" | "failed" | "cancelled")
}

impl Client {
    pub fn new(url: &str, token: Option<String>, json: bool) -> Result<Self, String> {
        let url = url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("`{url}` is not an http:// URL"));
        }
        let host = HostClient::new(
            HostSettings {
                name: "ktrdr-ops",
                base_url: url.clone(),
                connect_timeout: Duration::from_secs(3),
                request_timeout: Duration::from_secs(60),
                retry: RetryPolicy {
                    attempts: 1,
                    base_delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(1),
                },
                health_timeout: Duration::from_secs(2),
                health_ttl: Duration::ZERO,
                stall_notice: Duration::from_secs(10),
                bearer: token.filter(|t| !t.is_empty()),
                endpoint_policy: None,
            },
            crate::metrics::Metrics::default(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { host, url, json })
    }

    async fn get(&self, path: String) -> Result<Value, Outcome> {
        self.host.json(&Call::get("cli", path), &CancellationToken::new()).await.map_err(|e| self.unusable(e))
    }

    fn unusable(&self, e: HostError) -> Outcome {
        let mut message = describe(&e);
        if matches!(e.kind, HostErrorKind::Connect | HostErrorKind::Timeout | HostErrorKind::Broken) {
            message = format!("cannot reach the service at {}: {}", self.url, first_cause(&e.message));
        }
        Outcome::Unusable(message)
    }

    fn print(&self, value: &Value) {
        out!("{}", serde_json::to_string(value).expect("JSON values serialise"));
    }

    /// `ops list`
    pub async fn list(&self, status: Option<String>, kind: Option<String>, limit: u32) -> Outcome {
        let mut path = format!("/api/v1/operations?limit={limit}");
        if let Some(status) = status {
            path.push_str(&format!("&status={status}"));
        }
        if let Some(kind) = kind {
            path.push_str(&format!("&operation_type={kind}"));
        }
        let answer = match self.get(path).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if self.json {
            self.print(&answer["data"]);
            return Outcome::Completed;
        }
        out!("{:<48} {:<10} {:<10} {:>6}  STEP", "OPERATION", "TYPE", "STATUS", "%");
        for row in answer["data"].as_array().into_iter().flatten() {
            out!(
                "{:<48} {:<10} {:<10} {:>5.1}%  {}",
                row["operation_id"].as_str().unwrap_or(""),
                row["operation_type"].as_str().unwrap_or(""),
                row["status"].as_str().unwrap_or(""),
                row["progress_percentage"].as_f64().unwrap_or(0.0),
                row["current_step"].as_str().unwrap_or("")
            );
        }
        out!(
            "{} of {} shown, {} active",
            answer["data"].as_array().map_or(0, Vec::len),
            answer["total_count"],
            answer["active_count"]
        );
        Outcome::Completed
    }

    /// `health`: exit 0 while the service answers that it and its database are well (for
    /// container health checks: no curl needed), 1 when it answers otherwise, 2 when it cannot be
    /// asked.
    pub async fn health(&self) -> Outcome {
        let answer = match self.get("/api/v1/health".to_owned()).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if self.json {
            self.print(&answer);
        } else {
            let host = |name: &str| {
                let h = &answer["hosts"][name];
                let state = if h["reachable"] == true { "reachable" } else { "unreachable" };
                match h["gateway_connected"].as_bool() {
                    Some(connected) => {
                        format!("{name} {state}, gateway {}", if connected { "connected" } else { "NOT connected" })
                    }
                    None => format!("{name} {state}"),
                }
            };
            out!(
                "{} · database {} · {} · {} · {} active",
                answer["status"].as_str().unwrap_or("unknown"),
                answer["database"].as_str().unwrap_or("unknown"),
                host("ib"),
                host("training"),
                answer["operations"]["active"]
            );
        }
        if answer["status"] == "ok" && answer["database"] == "ok" { Outcome::Completed } else { Outcome::Failed }
    }

    /// `ops show ID`
    pub async fn show(&self, id: &str) -> Outcome {
        match self.get(format!("/api/v1/operations/{id}")).await {
            Ok(answer) => {
                let record = &answer["data"];
                if self.json {
                    self.print(record);
                } else {
                    out!("{}", serde_json::to_string_pretty(record).expect("JSON values serialise"));
                }
                // Found and shown: whatever its status, showing it worked.
                Outcome::Completed
            }
            Err(outcome) => outcome,
        }
    }

    /// `ops cancel ID`
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Outcome {
        let call =
            Call { body: Some(json!({ "reason": reason })), ..Call::delete("cli", format!("/api/v1/operations/{id}")) };
        match self.host.json::<Value>(&call, &CancellationToken::new()).await {
            Ok(answer) => {
                if self.json {
                    self.print(&answer["data"]);
                } else {
                    out!("{id}: cancelled ({})", answer["data"]["cancellation_reason"].as_str().unwrap_or(""));
                }
                // The cancel asked for happened: success (130 is for a follow interrupted by Ctrl-C).
                Outcome::Completed
            }
            Err(e) => self.unusable(e),
        }
    }

    /// Starts an operation (`POST path`) and follows it.
    pub async fn start_and_follow(&self, path: &str, body: Value) -> Outcome {
        let call = Call::post("cli", path.to_owned(), &body);
        let answer: Value = match self.host.json(&call, &CancellationToken::new()).await {
            Ok(answer) => answer,
            Err(e) => return self.unusable(e),
        };
        let id =
            answer["data"]["operation_id"].as_str().or(answer["task_id"].as_str()).or(answer["operation_id"].as_str());
        let Some(id) = id else {
            return Outcome::Unusable(format!("the service answered without an operation id: {answer}"));
        };
        if !self.json {
            eprintln!("started {id}");
        }
        // What this command started, its Ctrl-C stops.
        self.follow(id, OnCtrlC::Cancel).await
    }

    /// `ops watch ID`: a progress bar until the operation ends. Ctrl-C stops the command that
    /// started the work ([`OnCtrlC::Cancel`]); a watch only stops watching ([`OnCtrlC::StopWatching`]).
    pub async fn follow(&self, id: &str, on_ctrl_c: OnCtrlC) -> Outcome {
        let bar = if self.json { ProgressBar::hidden() } else { ProgressBar::new(1000) };
        bar.set_style(
            // Percentage, ETA and counts always show; the step text is what the width shortens.
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% {prefix} {wide_msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let mut events = Box::pin(self.host.events(&format!("/api/v1/operations/{id}/events"), None));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut last: Value;
        let mut interrupted = false;
        let mut trace_told = self.json;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) if event.event == "operation" => {
                        let Ok(record) = serde_json::from_str::<Value>(&event.data) else { continue };
                        // Where to see its trace, once (when the service exports traces).
                        if !trace_told && let Some(trace) = record["trace_url"].as_str().or(record["trace_id"].as_str()) {
                            bar.suspend(|| eprintln!("trace: {trace}"));
                            trace_told = true;
                        }
                        let progress = &record["progress"];
                        bar.set_position((progress["percentage"].as_f64().unwrap_or(0.0) * 10.0) as u64);
                        bar.set_prefix(figures(progress));
                        bar.set_message(progress["current_step"].as_str().unwrap_or(status_of(&record)).to_owned());
                        last = record;
                        if is_terminal(&last) {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        bar.abandon();
                        return self.unusable(e);
                    }
                    // The stream ended without a final record (the service shut down): ask once.
                    None => {
                        match self.get(format!("/api/v1/operations/{id}")).await {
                            Ok(answer) => last = answer["data"].clone(),
                            Err(outcome) => return outcome,
                        }
                        break;
                    }
                },
                _ = &mut ctrl_c, if !interrupted => {
                    if on_ctrl_c == OnCtrlC::StopWatching {
                        bar.abandon();
                        eprintln!("stopped watching {id}; it goes on — cancel it with: ktrdr-ops ops cancel {id}");
                        return Outcome::Cancelled;
                    }
                    interrupted = true;
                    bar.set_message("cancelling…");
                    let call = Call { body: Some(json!({ "reason": "Cancelled from the command line (Ctrl-C)" })), ..Call::delete("cli", format!("/api/v1/operations/{id}")) };
                    // The answer comes once the work has stopped; the stream then ends with `cancelled`.
                    if let Err(e) = self.host.send(&call, &CancellationToken::new()).await
                        && e.status() != Some(400)
                    {
                        bar.abandon();
                        return self.unusable(e);
                    }
                }
            }
        }
        bar.finish_and_clear();
        if self.json {
            self.print(&last);
        } else {
            let detail = last["error_message"].as_str().map(|m| format!(": {m}")).unwrap_or_default();
            eprintln!("{id} {}{detail}", status_of(&last));
            match last.get("result_summary").filter(|r| !r.is_null()) {
                Some(result) if last["operation_type"] == "backtesting" => backtest_table(result),
                Some(result) => out!("{}", serde_json::to_string_pretty(result).expect("JSON values serialise")),
                None => {}
            }
        }
        match status_of(&last) {
            "completed" => Outcome::Completed,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Failed,
        }
    }
}

/// What the progress line must never lose: the ETA and how far the counted work is
/// ("ETA 3m12s · 58/2996 segments").
fn figures(progress: &Value) -> String {
    let context = &progress["context"];
    let count = |done: &Value, total: &Value, what: &str| match (done.as_u64(), total.as_u64()) {
        (Some(done), Some(total)) if total > 0 => Some(format!("{done}/{total} {what}")),
        _ => None,
    };
    let counts = count(&context["segments_done"], &context["segments_total"], "segments")
        .or_else(|| count(&context["bars_processed"], &context["bars_total"], "bars"))
        .or_else(|| count(&progress["steps_completed"], &context["total_epochs"], "epochs"))
        .or_else(|| count(&progress["steps_completed"], &progress["steps_total"], "steps"));
    let eta = progress["eta_seconds"].as_f64().map(|s| format!("ETA {}", eta_text(s)));
    [eta, counts].into_iter().flatten().collect::<Vec<_>>().join(" · ")
}

/// A finished backtest's figures, one per line (fractions shown as percentages).
fn backtest_table(result: &Value) {
    let m = &result["metrics"];
    let percent = |key: &str| m[key].as_f64().map_or("—".to_owned(), |x| format!("{:.2} %", x * 100.0));
    let number = |key: &str| m[key].as_f64().map_or("—".to_owned(), |x| format!("{x:.2}"));
    let rows = [
        ("Total return", format!("{} ({})", number("total_return"), percent("total_return_pct"))),
        ("Annualized return", percent("annualized_return")),
        ("Sharpe ratio", number("sharpe_ratio")),
        ("Sortino ratio", number("sortino_ratio")),
        ("Max drawdown", format!("{} ({})", number("max_drawdown"), percent("max_drawdown_pct"))),
        ("Trades", format!("{} ({} won, {} lost)", m["total_trades"], m["winning_trades"], m["losing_trades"])),
        ("Win rate", percent("win_rate")),
        ("Profit factor", number("profit_factor")),
        ("Avg win / loss", format!("{} / {}", number("avg_win"), number("avg_loss"))),
    ];
    out!(
        "{} {} · {} → {}",
        result["symbol"].as_str().unwrap_or(""),
        result["timeframe"].as_str().unwrap_or(""),
        result["start_time"].as_str().unwrap_or(""),
        result["end_time"].as_str().unwrap_or("")
    );
    for (name, value) in rows {
        out!("  {name:<18} {value}");
    }
}

fn eta_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
