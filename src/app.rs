//! The composition root: config → store → orchestrator (with every domain's operation types) →
//! router; bind; serve until shutdown, then stop the operations and drain the HTTP side.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::dummy;
use crate::ops::{Orchestrator, Settings, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running service.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    orchestrator: Orchestrator,
}

impl Server {
    /// The address it actually listens on (port 0 in the config picks a free one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// Firing this token starts a graceful shutdown.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the service has shut down.
    pub async fn wait(self) {
        let _ = self.task.await;
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
        persist_interval: config.operations.progress_persist_interval.0,
        idempotency_ttl: config.operations.idempotency_ttl.0,
        node_id: config.node_id(),
        max_concurrent: config
            .operations
            .max_concurrent
            .iter()
            .filter(|(_, limit)| **limit > 0)
            .map(|(name, limit)| (name.clone(), *limit))
            .collect(),
        // An embedded SQLite database has exactly one node.
        reconcile_all: store.kind() == "sqlite",
    }
}

/// Opens the store, reconciles what a previous run left unfinished, binds and starts serving.
/// Logs `listening on http://ADDR:PORT` once ready.
pub async fn start(config: Config) -> Result<Server, StartError> {
    let config = Arc::new(config);
    let store = Store::open(&config.database.url, config.database.max_connections).await?;
    let orchestrator = Orchestrator::new(
        store.clone(),
        orchestrator_settings(&config, &store),
        vec![dummy::operation_type()],
    );
    orchestrator.reconcile().await?;

    let listen = config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let router = api::router(AppState {
        orchestrator: orchestrator.clone(),
        config: config.clone(),
    });

    let shutdown = CancellationToken::new();
    let deadline = config.shutdown_deadline();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let orchestrator = orchestrator.clone();
        async move {
            let http = tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .into_future(),
            );
            shutdown.cancelled().await;
            let end = Instant::now() + deadline;
            tracing::info!("shutting down: cancelling running operations");
            // Cancelling the operations also ends long-polls and event streams, so the HTTP
            // side can drain while the outcomes are stored.
            orchestrator.shutdown(deadline).await;
            if timeout_at(end, http).await.is_err() {
                tracing::warn!("HTTP connections still open at the shutdown deadline");
            }
            tracing::info!("shutdown complete");
        }
    });
    tracing::info!("listening on http://{addr}");
    Ok(Server {
        addr,
        shutdown,
        task,
        orchestrator,
    })
}
