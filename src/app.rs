//! The composition root: config → store → host clients → orchestrator (with every domain's
//! operation types) → router; bind; serve until shutdown, then stop the operations and drain
//! the HTTP side. With `--sim`, the host simulators start first, in-process, on free ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::api::server::ConnectionLimits;
use crate::api::{self, AppState, Services};
use crate::backtest::BacktestService;
use crate::backtest::job::BacktestSettings;
use crate::catalog::Catalog;
use crate::config::{Config, HostsConfig, PacingMode, ProtocolSetting};
use crate::data::DataService;
use crate::data::job::LoadSettings;
use crate::data::repository::Repository;
use crate::data::series_lock::SeriesLocks;
use crate::dummy;
use crate::fleet::pool::WorkerPool;
use crate::fleet::{Fleet, FleetSettings};
use crate::hosts::endpoints::EndpointPolicy;
use crate::hosts::ib::IbClient;
use crate::hosts::pacing::{PacingLimiter, PacingRules};
use crate::hosts::training::{Protocol, ProtocolChoice, TrainingClient};
use crate::hosts::{ClientBuildError, HostClient, HostSettings, Hosts, RetryPolicy};
use crate::metrics::Metrics;
use crate::ops::orchestrator::{ClusterSettings, claim_node_id};
use crate::ops::{NodeIdInUse, Orchestrator, Settings, StartupCheck, Store, StoreError};
use crate::sim::worker::{AgentSettings, WorkerFleet};
use crate::sim::{SimSettings, Simulators};
use crate::training::TrainingService;
use crate::training::job::TrainingSettings;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the host simulators: {0}")]
    Simulators(std::io::Error),
    #[error(transparent)]
    Hosts(#[from] ClientBuildError),
    #[error(transparent)]
    NodeIdInUse(#[from] NodeIdInUse),
    #[error("the {what} folder {} cannot be written: {source}", folder.display())]
    Unwritable { what: &'static str, folder: std::path::PathBuf, source: std::io::Error },
}

/// The id prefix of `serve --sim`'s built-in workers: `{node id}-builtin-worker`, so that a
/// restart of the same node knows its previous run's ones.
fn builtin_workers(config: &Config) -> String {
    let node: String = config
        .node_id()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(96)
        .collect();
    format!("{node}-builtin-worker")
}

/// 32 random bytes from the system, as hex.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        // Two v7 UUIDs carry 148 random bits between them.
        Err(_) => format!("{}{}", uuid::Uuid::now_v7().simple(), uuid::Uuid::now_v7().simple()),
    }
}

/// Proves `folder` can be written — a probe file written, synced to disk and deleted — so that
/// a folder the service cannot use fails the start, not the first load. A missing folder is
/// made when the service first writes there, so its nearest existing parent is probed instead:
/// nothing is created here, and so nothing has to be removed again (which would pull the
/// folder from under another replica, or another service in this process, starting with it).
fn check_writable(what: &'static str, folder: &std::path::Path) -> Result<(), StartError> {
    use std::io::Write;
    let unwritable = |source| StartError::Unwritable { what, folder: folder.to_owned(), source };
    let existing = folder.ancestors().find(|path| path.exists()).unwrap_or(std::path::Path::new("."));
    if !existing.is_dir() {
        let not_a_folder = format!("{} is not a folder", existing.display());
        return Err(unwritable(std::io::Error::new(std::io::ErrorKind::NotADirectory, not_a_folder)));
    }
    // A name of its own, whoever else probes the folder now.
    let probe = existing.join(format!(".ktrdr-ops-probe-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()));
    let written = std::fs::File::create(&probe).and_then(|mut file| {
        file.write_all(b"probe")?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&probe);
    written.and(removed).map_err(unwritable)
}

impl From<StartupCheck> for StartError {
    fn from(e: StartupCheck) -> Self {
        match e {
            StartupCheck::InUse(e) => StartError::NodeIdInUse(e),
            StartupCheck::Store(e) => StartError::Store(e),
        }
    }
}

/// How to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Start the IB and training simulators in-process and use them as the hosts.
    pub with_simulators: bool,
}

/// A running service.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    orchestrator: Orchestrator,
    hosts: Hosts,
    simulators: Option<Simulators>,
}

impl Server {
    /// The address it actually listens on (port 0 in the config picks a free one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// The in-process simulators, under `--sim`.
    pub fn simulators(&self) -> Option<&Simulators> {
        self.simulators.as_ref()
    }

    /// Firing this token starts a graceful shutdown.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the service has shut down.
    pub async fn wait(self) {
        let _ = self.task.await;
        if let Some(simulators) = self.simulators {
            simulators.shutdown().await;
        }
    }

    /// Shuts down gracefully and waits for it.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// The orchestrator's settings from the config.
pub fn orchestrator_settings(config: &Config, store: &Store) -> Settings {
    Settings {
        cancel_grace: config.operations.cancel_grace.0,
        persist_interval: persist_interval(config, store),
        idempotency_ttl: config.operations.idempotency_ttl.0,
        node_id: config.node_id(),
        // An embedded SQLite database has exactly one node.
        reconcile_all: !store.backend().shared_by_replicas(),
        resume_interrupted: config.operations.resume_interrupted,
        checkpoint_retention: config.operations.checkpoint_retention.0,
        max_concurrent: config
            .operations
            .max_concurrent
            .iter()
            .filter(|(_, limit)| **limit > 0)
            .map(|(name, limit)| (name.clone(), *limit))
            .collect(),
        max_active: config.operations.max_active,
        stop_confirm_wait: config.hosts.stop_confirm_wait.0,
        remote_cache_ttl: config.operations.remote_cache_ttl.0,
        remote_poll_interval: config.operations.remote_poll_interval.0,
        trace_url: config.telemetry.trace_url.clone(),
        // Only PostgreSQL is shared by several replicas.
        cluster: store.replicas().map(|replicas| ClusterSettings {
            replicas,
            lease_timeout: config.operations.lease_timeout.0,
            heartbeat_interval: config.operations.heartbeat_interval.0,
            takeover_scan_interval: config.operations.takeover_scan_interval.0,
            cancel_poll_interval: config.operations.cancel_poll_interval.0,
            cancel_notify: config.operations.cancel_notify,
            instance: uuid::Uuid::now_v7().simple().to_string(),
        }),
    }
}

/// How often running operations' progress is written. With several replicas the others read it
/// through a cache of `remote_cache_ttl`, so it is written that much more often: what they show
/// is then never older than `progress_persist_interval`.
fn persist_interval(config: &Config, store: &Store) -> Duration {
    let configured = config.operations.progress_persist_interval.0;
    if !store.backend().shared_by_replicas() {
        return configured;
    }
    configured.saturating_sub(config.operations.remote_cache_ttl.0).max(configured / 2)
}

fn host_settings(name: &'static str, url: &str, hosts: &HostsConfig) -> HostSettings {
    HostSettings {
        name,
        base_url: url.trim_end_matches('/').to_owned(),
        connect_timeout: hosts.connect_timeout.0,
        request_timeout: hosts.request_timeout.0,
        retry: RetryPolicy {
            attempts: hosts.retry_attempts,
            base_delay: hosts.retry_base_delay.0,
            max_delay: hosts.retry_max_delay.0,
        },
        health_timeout: hosts.health_timeout.0,
        health_ttl: hosts.health_ttl.0,
        stall_notice: hosts.stall_notice.0,
        bearer: None,
        endpoint_policy: None,
    }
}

/// One pooled client per host, built once.
pub fn build_hosts(config: &Config, metrics: &Metrics) -> Result<Hosts, ClientBuildError> {
    let hosts = &config.hosts;
    let rules = &hosts.ib.pacing_rules;
    let pacing = match hosts.ib.pacing {
        PacingMode::Off => None,
        PacingMode::Ib => Some(PacingRules {
            min_gap: rules.min_gap.0,
            window: rules.window.0,
            window_max: rules.window_max,
            identical_gap: rules.identical_gap.0,
            contract_window: rules.contract_window.0,
            contract_max: rules.contract_max,
            violation_backoff: rules.violation_backoff.0,
        }),
    };
    let ib = IbClient::new(
        HostClient::new(host_settings("ib", &hosts.ib.url, hosts), metrics.clone())?,
        Arc::new(PacingLimiter::new(pacing)),
    );
    let choice = match hosts.training.protocol {
        ProtocolSetting::Auto => ProtocolChoice::Auto,
        ProtocolSetting::Operations => ProtocolChoice::Fixed(Protocol::Operations),
        ProtocolSetting::Sessions => ProtocolChoice::Fixed(Protocol::Sessions),
    };
    let training_host = HostClient::new(host_settings("training", &hosts.training.url, hosts), metrics.clone())?;
    let training = TrainingClient::new(training_host, choice);
    Ok(Hosts { ib, training: Arc::new(training) })
}

/// How long a start under `--sim` waits for its simulated workers to register.
const WORKERS_REGISTER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the store, reconciles what a previous run left unfinished, binds and starts serving.
/// Logs `listening on http://ADDR:PORT` once ready.
pub async fn start(mut config: Config, options: Options) -> Result<Server, StartError> {
    // Bound first: simulated workers register with this address (served a moment later).
    let listen = config.server.listen;
    let listener = TcpListener::bind(listen).await.map_err(|source| StartError::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
    // The built-in workers' names: this run registers them, and drops its previous run's.
    let builtin = options.with_simulators.then(|| builtin_workers(&config));
    let simulators = if options.with_simulators {
        // Auth on and no worker token: the built-in workers get one of their own, made up now.
        if config.auth.worker_token.is_empty() && !config.auth.api_token.is_empty() {
            config.auth.worker_token = random_token();
        }
        let _ = std::fs::create_dir_all(&config.data.dir);
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let settings =
            SimSettings::from_config(&config.sim, config.data.dir.clone(), config.training.models_dir.clone());
        let reach = if addr.ip().is_unspecified() { SocketAddr::new(loopback.ip(), addr.port()) } else { addr };
        let fleet = WorkerFleet {
            count: config.sim.training_workers,
            gpu_workers: config.sim.gpu_workers,
            backend_url: format!("http://{reach}"),
            advertised_host: String::new(),
            agent: AgentSettings { worker_token: Some(config.auth.worker_token.clone()), ..AgentSettings::default() },
            id_prefix: builtin.clone(),
        };
        let mut simulators =
            Simulators::start(settings, loopback, loopback, Some(&fleet)).await.map_err(StartError::Simulators)?;
        let backtesters = WorkerFleet {
            count: config.sim.backtest_workers,
            id_prefix: builtin.as_ref().map(|b| format!("{b}-backtesting")),
            ..fleet
        };
        simulators.serve_backtest_workers(loopback, &backtesters).await.map_err(StartError::Simulators)?;
        config.hosts.ib.url = simulators.ib_url();
        config.hosts.training.url = simulators.training_url();
        Some(simulators)
    } else {
        None
    };
    check_writable("data", &config.data.dir)?;
    check_writable("models", &config.training.models_dir)?;
    for key in config.auth.short_tokens() {
        tracing::warn!("{key} is shorter than {} characters: easy to guess", crate::config::AuthConfig::SHORT_TOKEN);
    }
    let config = Arc::new(config);
    let metrics = Metrics::default();
    let store = Store::open(
        &config.database.url,
        config.database.pool_limits(),
        config.operations.stuck_transaction_timeout(),
        &metrics,
    )
    .await?;
    if let Some(builtin) = &builtin {
        // The built-in workers of this service's previous run died with it: not ghosts in the
        // fleet for minutes, and their names are free for this run's (they register once served).
        let removed = store.remove_workers_named(builtin).await?;
        if removed > 0 {
            tracing::info!(removed, "dropped the built-in workers of the previous run");
        }
    }
    let hosts = build_hosts(&config, &metrics)?;
    let data = DataService {
        repository: Arc::new(Repository::new(config.data.dir.clone(), config.data.frame_cache_rows)),
        // Replicas sharing a database share the data folder: one writer per series among them.
        locks: Arc::new(SeriesLocks::new(store.replicas())),
        ib: hosts.ib.clone(),
        settings: LoadSettings {
            save_interval: config.data.save_interval.0,
            segment_attempts: config.data.segment_attempts.max(1),
            retry_base_delay: config.data.retry_base_delay.0,
            tail_default_lookback: config.data.tail_default_lookback.0,
            wait_for_gateway: config.data.wait_for_gateway,
        },
    };
    // Where registered workers may point, for registration and for every call to them.
    let endpoint_policy = Arc::new(EndpointPolicy::new(config.workers.allowed()));
    // One pool of registered workers for every type that runs on them.
    let pool = Arc::new(WorkerPool::new(
        store.clone(),
        HostSettings { endpoint_policy: Some(endpoint_policy.clone()), ..host_settings("worker", "", &config.hosts) },
        metrics.clone(),
    ));
    let training = TrainingService {
        client: hosts.training.clone(),
        pool: Some(pool.clone()),
        settings: TrainingSettings {
            start_timeout: config.training.start_timeout.0,
            poll_min: config.training.poll_min.0,
            poll_max: config.training.poll_max.0.max(config.training.poll_min.0),
            poll_errors: config.training.poll_errors.max(1),
            cancel_watch: config.training.cancel_watch.0,
            stop_attempts: config.training.stop_attempts.max(1),
            max_moves: config.training.max_moves,
            strategies_dir: config.training.strategies_dir.clone(),
            host_configured: !config.hosts.training.url.is_empty(),
        },
    };
    let backtests = BacktestService {
        pool,
        settings: BacktestSettings {
            poll: training.settings.poll(),
            stop: training.settings.stop(),
            max_moves: training.settings.max_moves,
        },
    };
    let settings = orchestrator_settings(&config, &store);
    if let Some(cluster) = &settings.cluster {
        claim_node_id(&settings.node_id, cluster).await?;
    }
    let orchestrator = Orchestrator::new(
        store.clone(),
        settings,
        vec![dummy::operation_type(), data.operation_type(), training.operation_type(), backtests.operation_type()],
        metrics,
    );
    orchestrator.reconcile().await?;
    let fleet = Fleet::new(
        store.clone(),
        FleetSettings {
            health_check_interval: config.workers.health_check_interval.0,
            health_check_timeout: config.workers.health_check_timeout.0,
            health_check_failures: config.workers.health_check_failures.max(1),
            removal_threshold: config.workers.removal_threshold.0,
            endpoint_policy: endpoint_policy.clone(),
        },
    );
    orchestrator.spawn_loop(
        fleet.clone().check_periodically(orchestrator.settings().node_id.clone(), orchestrator.shutdown_token()),
    );
    orchestrator.sweep_periodically(config.operations.retention.0, config.operations.retention_sweep_interval.0);

    let router = api::router(AppState::new(Services {
        orchestrator: orchestrator.clone(),
        hosts: hosts.clone(),
        data,
        training,
        backtests,
        catalog: Catalog::new(config.training.strategies_dir.clone(), config.training.models_dir.clone()),
        config: config.clone(),
        endpoint_policy,
        fleet: fleet.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(config.server.max_streams)),
        openapi: Default::default(),
    }));

    let shutdown = CancellationToken::new();
    let deadline = config.shutdown_deadline();
    let limits = ConnectionLimits {
        header_read_timeout: config.server.header_read_timeout.0,
        max_connections: config.server.max_connections,
    };
    limits.check_descriptor_limit();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let orchestrator = orchestrator.clone();
        let fleet = fleet.clone();
        async move {
            let http = tokio::spawn(crate::api::server::serve(listener, router, limits, shutdown.clone()));
            shutdown.cancelled().await;
            let end = Instant::now() + deadline;
            tracing::info!(
                "shutting down: stopping running operations (handed over to other replicas where they can go on)"
            );
            // Cancelling the operations also ends long-polls and event streams, so the HTTP
            // side can drain while the outcomes are stored.
            orchestrator.shutdown(deadline).await;
            // Registrations are refused from the start of the shutdown; the workers hear of it now.
            if timeout_at(end, fleet.announce_shutdown()).await.is_err() {
                tracing::warn!("the workers were still being told of the shutdown at the deadline");
            }
            if timeout_at(end, http).await.is_err() {
                tracing::warn!("HTTP connections still open at the shutdown deadline");
            }
            // The last writes are in; the writer and checkpointer end.
            if timeout_at(end, orchestrator.store().close()).await.is_err() {
                tracing::warn!("the store was still writing at the shutdown deadline");
            }
            tracing::info!("shutdown complete");
        }
    });
    if let Some(s) = &simulators {
        // Ready means ready to train: the simulated workers are in the registry.
        if !s.workers_registered(WORKERS_REGISTER_WITHIN).await {
            tracing::warn!("the simulated training workers have not all registered yet");
        }
        tracing::info!(ib = %s.ib_url(), training = %s.training_url(), workers = s.workers.len(),
            "using the built-in host simulators");
    }
    tracing::info!("listening on http://{addr}");
    Ok(Server { addr, shutdown, task, orchestrator, hosts, simulators })
}

/// SIGTERM or ctrl-c.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicas (or services in one process) that share a folder start at the same moment: each
    /// finds it writable, and none of them leaves anything behind.
    #[test]
    fn services_starting_together_all_find_a_missing_folder_writable() {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..50 {
            let folder = dir.path().join(format!("{attempt}/models"));
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|scope| {
                let starts: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            check_writable("models", &folder)
                        })
                    })
                    .collect();
                for start in starts {
                    start.join().unwrap().unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
                }
            });
            assert!(!folder.exists(), "the folder is made when first written to, not by the check");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no probe is left behind");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(check_writable("data", &file.join("data")).is_err(), "a file where a folder must go");
    }
}
