//! Host simulators (sim.md): the IB and training host services, speaking exactly the protocols of
//! hosts.md, so the service's real HTTP clients are exercised end to end. `ktrdr-ops sim` serves
//! them on their usual ports; `serve --sim` starts them in-process on free ports. Training
//! simulators can be workers that register themselves with the service (`worker`).

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
        Ok(Self { ib_addr, training_addr, ib, training, workers, shutdown, tasks })
    }

    /// Waits until every simulated worker has registered once (or `within` passed).
    pub async fn workers_registered(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        for worker in &self.workers {
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
