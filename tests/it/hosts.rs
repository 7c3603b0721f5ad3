//! The host clients against the simulators over real sockets: every IB call and error class,
//! both training protocol generations, cancellation that drops the request at once, retries only
//! where a repeat is safe, and the simulators' calendars and knobs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ktrdr_ops::config::Config;
use ktrdr_ops::data::timeframe::Timeframe;
use ktrdr_ops::hosts::ib::{Gateway, IbError};
use ktrdr_ops::hosts::training::{HostStatus, PollError, Protocol, StartError, StartRequest};
use ktrdr_ops::hosts::{Call, HostClient, HostErrorKind, HostSettings, Hosts, RetryPolicy};
use ktrdr_ops::sim::ib::IbKnobs;
use ktrdr_ops::sim::market::Instrument;
use ktrdr_ops::sim::training::TrainingKnobs;
use ktrdr_ops::sim::{SimSettings, Simulators};
use ktrdr_ops::time::{Timestamp, parse_timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn t(text: &str) -> Timestamp {
    parse_timestamp(text).unwrap()
}

struct Rig {
    sims: Simulators,
    hosts: Hosts,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

async fn rig(protocol: Protocol, ib: IbKnobs, training: TrainingKnobs, pacing: bool) -> Rig {
    let data = tempfile::tempdir().unwrap();
    let settings = SimSettings {
        ib,
        training_protocol: protocol,
        training,
        data_dir: data.path().to_owned(),
        models_dir: None,
        backtest: Default::default(),
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let sims = Simulators::start(settings, loopback, loopback, None).await.unwrap();
    let mut config = Config::defaults();
    config.hosts.ib.url = sims.ib_url();
    config.hosts.training.url = sims.training_url();
    if !pacing {
        config.hosts.ib.pacing = ktrdr_ops::config::PacingMode::Off;
    }
    let hosts = ktrdr_ops::app::build_hosts(&config, &Default::default()).unwrap();
    Rig { sims, hosts, http: reqwest::Client::new(), _data: data }
}

async fn ib_rig(knobs: IbKnobs) -> Rig {
    rig(Protocol::Operations, knobs, TrainingKnobs::default(), false).await
}

impl Rig {
    async fn ib_stats(&self) -> Value {
        self.http.get(format!("{}/sim/stats", self.sims.ib_url())).send().await.unwrap().json().await.unwrap()
    }

    async fn training_stats(&self) -> Value {
        self.http.get(format!("{}/sim/stats", self.sims.training_url())).send().await.unwrap().json().await.unwrap()
    }

    fn write_data(&self, symbol: &str, timeframe: &str) {
        let path = self._data.path().join(format!("{symbol}_{timeframe}.csv"));
        std::fs::write(path, "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,1,1,1,1\n").unwrap();
    }
}

fn no_token() -> CancellationToken {
    CancellationToken::new()
}

#[tokio::test]
async fn historical_bars_come_back_typed_and_equal_to_the_simulated_market() {
    let rig = ib_rig(IbKnobs::default()).await;
    let ib = &rig.hosts.ib;
    let (start, end) = (t("2024-07-01T00:00:00Z"), t("2024-07-07T23:00:00Z"));
    let bars = ib.historical("op_test", "AAPL", "1h", start, end, &no_token(), |_| {}).await.unwrap();
    assert_eq!(bars, Instrument::new("AAPL").bars(Timeframe::H1, start, end));
    assert_eq!(bars.len(), 3 * 7 + 4, "seven a day, four on 3 July (a 13:00 close), none on 4 July");
    assert!(
        bars.iter().all(|b| b.timestamp.date_naive() != t("2024-07-04T00:00:00Z").date_naive()),
        "no bar on 4 July"
    );
    // Overlapping windows agree bar for bar.
    let later = ib
        .historical("op_test", "AAPL", "1h", t("2024-07-03T00:00:00Z"), t("2024-07-10T00:00:00Z"), &no_token(), |_| {})
        .await
        .unwrap();
    let overlap: Vec<_> = bars.iter().filter(|b| b.timestamp >= t("2024-07-03T00:00:00Z")).cloned().collect();
    assert_eq!(&later[..overlap.len()], &overlap[..]);

    let saturday = ib
        .historical("op_test", "AAPL", "1h", t("2024-07-06T00:00:00Z"), t("2024-07-06T23:59:00Z"), &no_token(), |_| {})
        .await;
    assert!(matches!(saturday, Err(IbError::NoData(_))), "{saturday:?}");
    let eur = ib
        .historical(
            "op_test",
            "EURUSD",
            "1h",
            t("2024-01-08T00:00:00Z"),
            t("2024-01-08T06:00:00Z"),
            &no_token(),
            |_| {},
        )
        .await
        .unwrap();
    assert!(eur.iter().any(|b| b.timestamp == t("2024-01-08T03:00:00Z")), "forex trades Monday 03:00 UTC");
    let stats = rig.ib_stats().await;
    let log = stats["historical"].as_array().unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0]["start"], "2024-07-01T00:00:00+00:00", "times are sent as aware UTC");
    assert_eq!(log[0]["rows"], 25);
}

#[tokio::test]
async fn ib_errors_are_classified_from_the_hosts_own_answers() {
    let rig = ib_rig(IbKnobs { fail_symbol: Some("MSFT".into()), ..IbKnobs::default() }).await;
    let ib = &rig.hosts.ib;
    let (start, end) = (t("2024-01-02T00:00:00Z"), t("2024-01-03T00:00:00Z"));
    match ib.historical("op_test", "XYZ", "1h", start, end, &no_token(), |_| {}).await {
        Err(IbError::UnknownSymbol(m)) => {
            assert_eq!(m, "Symbol validation failed: Symbol XYZ not found")
        }
        other => panic!("{other:?}"),
    }
    match ib
        .historical("op_test", "AAPL", "1d", t("2001-01-01T00:00:00Z"), t("2001-06-01T00:00:00Z"), &no_token(), |_| {})
        .await
    {
        Err(IbError::BeforeHead { head, .. }) => assert_eq!(head, t("2005-01-03T14:30:00Z")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ib.historical("op_test", "MSFT", "1h", start, end, &no_token(), |_| {}).await,
        Err(IbError::Transient(_))
    ));

    let valid = ib.validate("EURUSD", &["1h"], &no_token()).await.unwrap();
    assert!(valid.is_valid);
    assert_eq!(valid.contract_info.as_ref().unwrap()["asset_type"], "CASH");
    assert_eq!(valid.head("1h"), Some(t("2005-03-01T00:00:00Z")));
    let unknown = ib.validate("XYZ", &["1h"], &no_token()).await.unwrap();
    assert!(!unknown.is_valid);
    assert_eq!(unknown.error_message.as_deref(), Some("Symbol XYZ not found"));
    assert!(ib.symbol_info("AAPL", &no_token()).await.unwrap().is_valid);
    assert_eq!(ib.head_timestamp("AAPL", "1h", None, &no_token()).await.unwrap(), Some(t("2005-01-03T14:30:00Z")));
    assert_eq!(ib.head_timestamp("XYZ", "1h", Some("STK"), &no_token()).await.unwrap(), None);
    assert_eq!(ib.health_detailed(&no_token()).await.unwrap()["ib_gateway_connected"], true);
    let health = ib.host().health().await;
    assert!(health.reachable && health.latency_ms.is_some());
}

#[tokio::test]
async fn the_simulated_gateway_goes_down_and_comes_back_as_the_real_one_does() {
    let rig = ib_rig(IbKnobs { gateway_connected: false, gateway_hang_ms: 400, ..IbKnobs::default() }).await;
    let ib = &rig.hosts.ib;
    // The host itself is healthy; only the detailed health tells.
    assert!(ib.host().health().await.reachable);
    assert_eq!(ib.health_detailed(&no_token()).await.unwrap()["ib_gateway_connected"], false);
    assert_eq!(ib.gateway(true).await, Gateway::Disconnected);
    // Data calls hang, then answer 200 with success: false and "not found".
    let began = Instant::now();
    let bars = ib
        .historical("op_test", "AAPL", "1h", t("2024-01-02T00:00:00Z"), t("2024-01-05T00:00:00Z"), &no_token(), |_| {})
        .await;
    assert!(began.elapsed() >= Duration::from_millis(400), "{:?}", began.elapsed());
    assert!(matches!(&bars, Err(IbError::UnknownSymbol(m)) if m == "Symbol AAPL not found"), "{bars:?}");
    assert!(matches!(ib.validate("AAPL", &["1h"], &no_token()).await, Err(IbError::UnknownSymbol(_))));
    assert_eq!(ib.head_timestamp("AAPL", "1h", None, &no_token()).await.unwrap(), None);

    let switched = rig
        .http
        .post(format!("{}/sim/gateway", rig.sims.ib_url()))
        .json(&json!({ "connected": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(switched.status(), 200);
    // The last answer is reused for health_ttl unless a fresh one is asked for.
    assert_eq!(ib.gateway(false).await, Gateway::Disconnected);
    assert_eq!(ib.gateway(true).await, Gateway::Connected);
    assert!(ib.validate("AAPL", &["1h"], &no_token()).await.unwrap().is_valid);
    let bad =
        rig.http.post(format!("{}/sim/gateway", rig.sims.ib_url())).json(&json!({ "up": 1 })).send().await.unwrap();
    assert_eq!(bad.status(), 422);
}

#[tokio::test]
async fn a_host_without_detailed_health_leaves_the_gateway_unknown() {
    let (url, _) = always_503().await;
    let ib = ktrdr_ops::hosts::ib::IbClient::new(
        client(&url, 1),
        Arc::new(ktrdr_ops::hosts::pacing::PacingLimiter::new(None)),
    );
    assert_eq!(ib.gateway(true).await, Gateway::Unknown);
    assert_eq!(ib.gateway(true).await.connected(), None);
}

#[tokio::test]
async fn a_pacing_violation_from_the_host_holds_the_client_back() {
    // The sim judges clients by IB's rules; this client does not pace.
    let rig = ib_rig(IbKnobs { pacing: true, ..IbKnobs::default() }).await;
    let ib = &rig.hosts.ib;
    let window = |d: u32| (t(&format!("2024-01-{d:02}T00:00:00Z")), t(&format!("2024-01-{d:02}T23:00:00Z")));
    let (s, e) = window(2);
    ib.historical("op_test", "AAPL", "1h", s, e, &no_token(), |_| {}).await.unwrap();
    let (s, e) = window(3);
    let second = ib.historical("op_test", "AAPL", "1h", s, e, &no_token(), |_| {}).await;
    assert!(matches!(second, Err(IbError::Pacing(_))), "{second:?}");
    assert_eq!(rig.ib_stats().await["pacing_violations"], 1);
}

#[tokio::test]
async fn our_pacing_keeps_the_simulators_ib_rules() {
    // The host judges by arrival: a request held up on its way (a loaded test machine) can arrive
    // closer to the next than it was sent, so the host allows what a network would add.
    let knobs = IbKnobs { pacing: true, pacing_tolerance_ms: 250, ..IbKnobs::default() };
    let rig = rig(Protocol::Operations, knobs, TrainingKnobs::default(), true).await;
    let ib = &rig.hosts.ib;
    let mut waits = Vec::new();
    for day in 2..=4 {
        let (s, e) = (t(&format!("2024-01-{day:02}T00:00:00Z")), t(&format!("2024-01-{day:02}T23:00:00Z")));
        ib.historical("op_test", "AAPL", "1h", s, e, &no_token(), |left| waits.push(left)).await.unwrap();
    }
    assert!(!waits.is_empty(), "the 2 s minimum gap made later requests wait");
    assert_eq!(rig.ib_stats().await["pacing_violations"], 0);
}

#[tokio::test]
async fn a_cancelled_call_returns_at_once_and_the_host_sees_the_connection_drop() {
    let rig = ib_rig(IbKnobs { latency_ms: 30_000, ..IbKnobs::default() }).await;
    let token = CancellationToken::new();
    let canceller = token.clone();
    let fired = Arc::new(std::sync::Mutex::new(None));
    let fired_at = fired.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        *fired_at.lock().unwrap() = Some(Instant::now());
        canceller.cancel();
    });
    let result = rig
        .hosts
        .ib
        .historical("op_test", "AAPL", "1h", t("2024-01-02T00:00:00Z"), t("2024-01-03T00:00:00Z"), &token, |_| {})
        .await;
    let returned = Instant::now();
    assert!(matches!(result, Err(IbError::Cancelled)), "{result:?}");
    let lag = returned - fired.lock().unwrap().unwrap();
    assert!(lag < Duration::from_millis(5), "returned {lag:?} after the cancel");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = rig.ib_stats().await;
        if stats["dropped_requests"] == 1 && stats["in_flight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the sim never saw the drop: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A host that answers every request with 503 and counts them — a failure the simulators do
/// not produce on every endpoint.
async fn always_503() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "detail": "overloaded" })))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn client(url: &str, attempts: u32) -> HostClient {
    HostClient::new(
        HostSettings {
            name: "test",
            base_url: url.to_owned(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy { attempts, base_delay: Duration::from_millis(5), max_delay: Duration::from_millis(20) },
            health_timeout: Duration::from_secs(1),
            health_ttl: Duration::from_secs(5),
            stall_notice: Duration::from_secs(10),
            bearer: None,
            endpoint_policy: None,
        },
        Default::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn reads_are_retried_but_a_non_idempotent_post_is_not_repeated() {
    let (url, hits) = always_503().await;
    let host = client(&url, 3);
    let error = host.send(&Call::get("/x", "/x"), &no_token()).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "a GET is tried three times");
    assert_eq!(error.kind, HostErrorKind::Status(503));
    assert_eq!((error.host, error.method.as_str(), error.path.as_str()), ("test", "GET", "/x"));
    assert_eq!(error.message, "overloaded");
    assert!(error.to_string().contains("test host, GET /x: HTTP 503: overloaded"), "{error}");

    hits.store(0, Ordering::SeqCst);
    host.send(&Call::post("/start", "/start", &json!({})), &no_token()).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a POST reached the host once and is not silently repeated");
    let figures = host.metrics().render();
    let sample = |series: &str| figures.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok());
    let get = r#"{host="test",method="GET",endpoint="/x"}"#;
    assert_eq!(sample(&format!("ktrdr_ops_host_requests_total{get}")), Some(3.0), "{figures}");
    assert_eq!(sample(&format!("ktrdr_ops_host_request_retries_total{get}")), Some(2.0));
    let failed = r#"{host="test",method="GET",endpoint="/x",class="5xx"}"#;
    assert_eq!(sample(&format!("ktrdr_ops_host_request_errors_total{failed}")), Some(3.0));

    // Nothing listens here: connection refused is retried even for a POST (it never arrived).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let host = client(&format!("http://{closed}"), 2);
    let error = host.send(&Call::post("/start", "/start", &json!({})), &no_token()).await.unwrap_err();
    assert_eq!(error.kind, HostErrorKind::Connect);
    let figures = host.metrics().render();
    let post = r#"ktrdr_ops_host_requests_total{host="test",method="POST",endpoint="/start"} "#;
    assert!(figures.lines().any(|l| l.strip_prefix(post) == Some("2")), "{figures}");
    assert!(!host.health().await.reachable);
}

fn training_request(task_id: &str) -> StartRequest {
    StartRequest {
        task_id: task_id.into(),
        strategy_name: "example_mlp".into(),
        strategy_yaml: "name: example\nmodel:\n  type: mlp\ntraining:\n  epochs: 3\n".into(),
        symbols: vec!["EURUSD".into()],
        timeframes: vec!["1h".into()],
        start_date: "2024-01-01".into(),
        end_date: "2024-03-31".into(),
        model_type: "mlp".into(),
        epochs: Some(3),
    }
}

async fn train_to_the_end(protocol: Protocol) {
    let knobs = TrainingKnobs { pace_ms: 5, batches: 4, ..TrainingKnobs::default() };
    let rig = rig(protocol, IbKnobs::default(), knobs, false).await;
    rig.write_data("EURUSD", "1h");
    let training = &rig.hosts.training;
    assert_eq!(training.protocol(&no_token()).await.unwrap(), protocol, "auto-probe picked the generation");
    let session = training.start(&training_request("op_training_a"), &no_token()).await.unwrap();
    if protocol == Protocol::Operations {
        assert_eq!(session.id, "op_training_a", "the operations generation uses our id");
    }
    let mut seen_running = false;
    let last = loop {
        let snapshot = training.poll(&session, &no_token()).await.unwrap();
        seen_running |= snapshot.status == HostStatus::Running;
        if snapshot.status.is_final() {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(seen_running);
    assert_eq!(last.status, HostStatus::Completed, "{last:?}");
    assert_eq!(last.epochs.len(), 3);
    assert_eq!(last.total_epochs, Some(3));
    assert!(last.epochs[2].train_loss < last.epochs[0].train_loss, "losses fall");
    let result = training.result(&session, &no_token()).await.unwrap().unwrap();
    assert!(result["model_path"].as_str().unwrap().ends_with(".pt"));
    assert_eq!(rig.training_stats().await["starts"], 1);
}

#[tokio::test]
async fn a_training_runs_to_the_end_on_the_operations_generation() {
    train_to_the_end(Protocol::Operations).await;
}

#[tokio::test]
async fn a_training_runs_to_the_end_on_the_sessions_generation() {
    train_to_the_end(Protocol::Sessions).await;
}

async fn stop_busy_and_lost(protocol: Protocol) {
    let knobs = TrainingKnobs { pace_ms: 20, batches: 10, epochs: 50, ..TrainingKnobs::default() };
    let rig = rig(protocol, IbKnobs::default(), knobs, false).await;
    rig.write_data("EURUSD", "1h");
    let training = &rig.hosts.training;
    let mut request = training_request("op_training_b");
    request.strategy_yaml = "model:\n  type: mlp\n".into();
    request.epochs = None;
    let session = training.start(&request, &no_token()).await.unwrap();
    // One session at a time: a second start is refused as busy (and was sent once).
    match training.start(&training_request("op_training_c"), &no_token()).await {
        Err(StartError::Busy(m)) => assert!(m.contains("Maximum concurrent sessions (1)"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.training_stats().await["busy_rejections"], 1);
    if protocol == Protocol::Operations {
        assert!(matches!(training.start(&request, &no_token()).await, Err(StartError::Duplicate(_))));
    }
    while training.poll(&session, &no_token()).await.unwrap().status != HostStatus::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ack = training.stop(&session, "test", &no_token()).await.unwrap();
    assert!(ack.status.is_some());
    // Honoured within one batch (20 ms) — give it a few.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = training.poll(&session, &no_token()).await.unwrap();
    let expected = if protocol == Protocol::Sessions { HostStatus::Stopped } else { HostStatus::Cancelled };
    assert_eq!(stopped.status, expected);
    let batches = (stopped.epoch, stopped.batch);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later = training.poll(&session, &no_token()).await.unwrap();
    assert_eq!((later.epoch, later.batch), batches, "no batch ran after the stop");

    // A crash forgets every session: the client reports it lost.
    rig.http.post(format!("{}/sim/crash", rig.sims.training_url())).send().await.unwrap();
    assert!(matches!(training.poll(&session, &no_token()).await, Err(PollError::Lost(_))));
}

#[tokio::test]
async fn the_operations_generation_stops_refuses_when_busy_and_loses_sessions_on_a_crash() {
    stop_busy_and_lost(Protocol::Operations).await;
}

#[tokio::test]
async fn the_sessions_generation_stops_refuses_when_busy_and_loses_sessions_on_a_crash() {
    stop_busy_and_lost(Protocol::Sessions).await;
}

#[tokio::test]
async fn missing_data_fails_the_session_like_the_real_host() {
    let rig =
        rig(Protocol::Operations, IbKnobs::default(), TrainingKnobs { pace_ms: 5, ..TrainingKnobs::default() }, false)
            .await;
    let training = &rig.hosts.training;
    let mut request = training_request("op_training_d");
    request.symbols = vec!["GBPUSD".into()];
    let session = training.start(&request, &no_token()).await.unwrap();
    let snapshot = loop {
        let s = training.poll(&session, &no_token()).await.unwrap();
        if s.status.is_final() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(snapshot.status, HostStatus::Failed);
    let error = snapshot.error.unwrap_or_default();
    assert!(error.starts_with("Training failed: No data found in cache for GBPUSD 1h (looked for "), "{error}");
}

/// A stop reaches a session in the middle of an hour-long batch: the simulated host checks for it
/// between steps, as ktrdr's training loop does, rather than training the batch out (a benchmark's
/// stalled session used to keep its worker busy for the hour).
#[tokio::test]
async fn a_stop_ends_a_session_stalled_in_a_batch_at_once() {
    let knobs = TrainingKnobs { pace_ms: 3_600_000, ..TrainingKnobs::default() };
    let rig = rig(Protocol::Operations, IbKnobs::default(), knobs, false).await;
    rig.write_data("EURUSD", "1h");
    let training = &rig.hosts.training;
    let session = training.start(&training_request("op_training_e"), &no_token()).await.unwrap();
    training.stop(&session, "test", &no_token()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while rig.training_stats().await["sessions"][0]["finished"] != true {
        assert!(tokio::time::Instant::now() < deadline, "{}", rig.training_stats().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(training.poll(&session, &no_token()).await.unwrap().status, HostStatus::Cancelled);
}
