//! Host simulators (sim.md): the IB and training host services, speaking exactly the protocols of
//! hosts.md, so the service's real HTTP clients are exercised end to end. `ktrdr-ops sim` serves
//! them on their usual ports; `serve --sim` starts them in-process on free ports. Training
//! simulators can be workers that register themselves with the service (`worker`).

pub mod backtest;
pub mod fastapi;
pub mod ib;
pub mod market;
pub mod training;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{PacingMode, SimConfig, SimTrainingProtocol};
use crate::hosts::training::Protocol;
use backtest::{BacktestKnobs, BacktestSim};
use ib::{IbKnobs, IbSim};
use training::{TrainingKnobs, TrainingSim};
use worker::{ServedWorker, WorkerFleet, serve_worker};

/// Everything the simulators need to start.
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub ib: IbKnobs,
    pub training_protocol: Protocol,
    pub training: TrainingKnobs,
    /// Where the training simulator looks for `{SYMBOL}_{TF}.csv` (the service's data dir).
    pub data_dir: PathBuf,
    /// Where the training simulator writes the model folders of completed trainings.
    pub models_dir: Option<PathBuf>,
    pub backtest: BacktestKnobs,
}

impl SimSettings {
    pub fn from_config(config: &SimConfig, data_dir: PathBuf, models_dir: PathBuf) -> Self {
        Self {
            ib: IbKnobs {
                latency_ms: config.latency_ms,
                latency_jitter_ms: config.latency_jitter_ms,
                fail_rate: config.fail_rate,
                fail_symbol: Some(config.fail_symbol.clone()).filter(|s| !s.is_empty()),
                pacing: config.pacing == PacingMode::Ib,
                pacing_scale: 1.0,
                pacing_tolerance_ms: 0,
                fail_dates: Vec::new(),
                empty_dates: Vec::new(),
                gateway_connected: config.gateway_connected,
                gateway_hang_ms: config.gateway_hang_ms,
            },
            training_protocol: match config.training_protocol {
                SimTrainingProtocol::Operations => Protocol::Operations,
                SimTrainingProtocol::Sessions => Protocol::Sessions,
            },
            training: TrainingKnobs {
                pace_ms: config.training_pace_ms,
                epochs: config.training_epochs,
                batches: config.training_batches,
                fail_at_epoch: Some(config.training_fail_at_epoch).filter(|e| *e > 0),
                ignore_cancel: config.training_ignore_cancel,
                status_delay_ms: config.training_status_delay_ms,
                ..TrainingKnobs::default()
            },
            data_dir,
            models_dir: Some(models_dir),
            backtest: BacktestKnobs { bars_per_second: config.backtest_bars_per_second, ..BacktestKnobs::default() },
        }
    }
}

/// The two simulators, running.
pub struct Simulators {
    /// `None` when only training workers were asked for.
    pub ib_addr: Option<SocketAddr>,
    pub training_addr: SocketAddr,
    pub ib: Arc<IbSim>,
    /// The (first) training simulator.
    pub training: Arc<TrainingSim>,
    /// The training simulators serving as registered workers (the first is `training`).
    pub workers: Vec<ServedWorker>,
    /// The backtest simulators serving as registered workers.
    pub backtest_workers: Vec<ServedWorker<BacktestSim>>,
    /// Where the backtest simulators read data and models, and how they behave.
    backtest: (PathBuf, PathBuf, BacktestKnobs),
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulators {
    /// Binds both (port 0 picks free ports; no `ib_listen`: no IB simulator) and serves them in
    /// the background. With `workers`
    /// (operations generation only), `count` training simulators serve on `training_listen`'s
    /// port and the next ones (port 0: free ports), each registering with the service as a worker.
    pub async fn start(
        mut settings: SimSettings,
        ib_listen: impl Into<Option<SocketAddr>>,
        training_listen: SocketAddr,
        workers: Option<&WorkerFleet>,
    ) -> std::io::Result<Self> {
        let ib = IbSim::new(settings.ib.clone());
        let fleet = workers.filter(|w| w.count > 0 && settings.training_protocol == Protocol::Operations);
        if fleet.is_some() && settings.training.checkpoint_dir.is_none() {
            // Workers share their checkpoints, as ktrdr's share KTRDR_CHECKPOINT_DIR.
            settings.training.checkpoint_dir = Some(settings.data_dir.join("checkpoints"));
        }
        let new_training = || {
            TrainingSim::new(
                settings.training_protocol,
                settings.data_dir.clone(),
                settings.models_dir.clone(),
                settings.training.clone(),
            )
        };
        let shutdown = CancellationToken::new();
        let serve = |listener: TcpListener, router: axum::Router, stop: CancellationToken| {
            tokio::spawn(async move {
                // Traced like the service's own routes: a trace sent here runs on under the simulators' name.
                let router = crate::api::request_span::traced(router);
                let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            })
        };
        let mut tasks = Vec::new();
        let ib_addr = match ib_listen.into() {
            Some(listen) => {
                let ib_listener = TcpListener::bind(listen).await?;
                let addr = ib_listener.local_addr()?;
                tasks.push(serve(ib_listener, ib.router(), shutdown.clone()));
                Some(addr)
            }
            None => None,
        };
        let mut workers = Vec::new();
        let (training_addr, training) = match fleet {
            Some(fleet) => {
                for n in 0..fleet.count {
                    let port = if training_listen.port() == 0 { 0 } else { training_listen.port() + n as u16 };
                    let listen = SocketAddr::new(training_listen.ip(), port);
                    let (worker, handles) = serve_worker(new_training(), listen, fleet, n, &shutdown).await?;
                    tasks.extend(handles);
                    workers.push(worker);
                }
                (workers[0].addr, workers[0].sim.clone())
            }
            None => {
                let training = new_training();
                let listener = TcpListener::bind(training_listen).await?;
                let addr = listener.local_addr()?;
                tasks.push(serve(listener, training.router(), shutdown.clone()));
                (addr, training)
            }
        };
        tracing::info!(ib_addr = ?ib_addr, %training_addr, workers = workers.len(), "host simulators running");
        let models_dir = settings.models_dir.clone().unwrap_or_else(|| settings.data_dir.join("models"));
        let backtest = (settings.data_dir.clone(), models_dir, settings.backtest.clone());
        Ok(Self {
            ib_addr,
            training_addr,
            ib,
            training,
            workers,
            backtest_workers: Vec::new(),
            backtest,
            shutdown,
            tasks,
        })
    }

    /// Serves `fleet.count` backtest simulators as registered `backtesting` workers, on
    /// `listen`'s port and the next ones (port 0: free ports).
    pub async fn serve_backtest_workers(&mut self, listen: SocketAddr, fleet: &WorkerFleet) -> std::io::Result<()> {
        let (data_dir, models_dir, knobs) = self.backtest.clone();
        for n in 0..fleet.count {
            let port = if listen.port() == 0 { 0 } else { listen.port() + n as u16 };
            let sim = BacktestSim::new(data_dir.clone(), models_dir.clone(), knobs.clone());
            let at = SocketAddr::new(listen.ip(), port);
            let (worker, handles) = serve_worker(sim, at, fleet, n, &self.shutdown).await?;
            self.tasks.extend(handles);
            self.backtest_workers.push(worker);
        }
        tracing::info!(workers = fleet.count, "backtest simulators running");
        Ok(())
    }

    /// What runs where, in one line: `IB simulator on URL, N training workers on URLs, M backtest
    /// workers on URLs registering with BACKEND` (the parts that run).
    pub fn banner(&self, backend: Option<&str>) -> String {
        let ib = match self.ib_addr {
            Some(_) => format!("IB simulator on {}", self.ib_url()),
            None => "no IB simulator (--ib-listen starts one)".to_owned(),
        };
        let training = match self.workers.len() {
            0 => format!("training simulator on {}", self.training_url()),
            n => format!("{n} training workers on {}", self.worker_urls().join(" ")),
        };
        let backtest = match self.backtest_workers.len() {
            0 => String::new(),
            n => format!(", {n} backtest workers on {}", self.backtest_worker_urls().join(" ")),
        };
        let registering = backend.map(|url| format!(" registering with {url}")).unwrap_or_default();
        format!("{ib}, {training}{backtest}{registering}")
    }

    /// The simulated backtest workers' URLs.
    pub fn backtest_worker_urls(&self) -> Vec<String> {
        self.backtest_workers.iter().map(|w| format!("http://{}", w.addr)).collect()
    }

    /// Waits until every simulated worker has registered once (or `within` passed).
    pub async fn workers_registered(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        for worker in &self.workers {
            if !worker.agent.registered_by(deadline).await {
                return false;
            }
        }
        for worker in &self.backtest_workers {
            if !worker.agent.registered_by(deadline).await {
                return false;
            }
        }
        true
    }

    /// The simulated workers' URLs.
    pub fn worker_urls(&self) -> Vec<String> {
        self.workers.iter().map(|w| format!("http://{}", w.addr)).collect()
    }

    /// The IB simulator's URL (empty when none was started).
    pub fn ib_url(&self) -> String {
        self.ib_addr.map(|addr| format!("http://{addr}")).unwrap_or_default()
    }

    pub fn training_url(&self) -> String {
        format!("http://{}", self.training_addr)
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
