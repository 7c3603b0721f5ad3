//! The HTTP listener: HTTP/1.1 connections served by hyper, bounded so that one client cannot
//! take the service down — a connection must send each request's headers within
//! `server.header_read_timeout`, and at most `server.max_connections` are open at once (past it,
//! new ones wait in the kernel's accept queue while the open ones are answered). Every request
//! carries its peer address (axum's `ConnectInfo`), for the trusted-network rules. A graceful
//! shutdown stops accepting and lets the requests in flight finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tower::ServiceExt;
use tower::util::Oneshot;

/// How the listener bounds its clients (config `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors the process keeps for itself beyond its connections (database, hosts, files).
const RESERVED_DESCRIPTORS: u64 = 256;

impl ConnectionLimits {
    /// Warns when the open-files limit could be reached before `max_connections`.
    pub fn check_descriptor_limit(&self) {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return;
        }
        let wanted = self.max_connections as u64 + RESERVED_DESCRIPTORS;
        let open_files_limit: u64 = limit.rlim_cur;
        if open_files_limit < wanted {
            tracing::warn!(
                open_files_limit,
                max_connections = self.max_connections,
                "the open-files limit (ulimit -n) is below server.max_connections + {RESERVED_DESCRIPTORS}: \
                 raise it or lower server.max_connections"
            );
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then waits for the open requests.
pub async fn serve<S>(listener: TcpListener, router: S, limits: ConnectionLimits, shutdown: CancellationToken)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        // A free slot first: past the limit, connections wait in the accept queue.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: the open connections go on; try again shortly.
                    tracing::warn!(error = %e, "accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = PeerService { router: router.clone(), peer };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away or times out is no error of ours.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The router, with each request told where it came from.
#[derive(Clone)]
struct PeerService<S> {
    router: S,
    peer: SocketAddr,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for PeerService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Oneshot<S, Request>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.router.clone().oneshot(request.map(axum::body::Body::new))
    }
}
