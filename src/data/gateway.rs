//! IB calls guarded by the state of the IB gateway behind the host. An IB host whose gateway is
//! down still answers `/health`, but every data call hangs for minutes and then says "Symbol …
//! not found". So a load asks `/health/detailed` before it starts and whenever a call stalls or
//! fails: with the gateway reported down it fails at once naming the cause, or — with
//! `data.wait_for_gateway` — waits in its step, checking with backoff, until the gateway is back.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::hosts::ib::{GATEWAY_DOWN, Gateway, IbClient, IbError};
use crate::ops::OperationHandle;

/// The longest pause between two checks while waiting for the gateway.
const MAX_CHECK_PAUSE: Duration = Duration::from_secs(10);
/// How often a stalled call asks about the gateway again after the first time.
const STALLED_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Guards one load's IB calls.
pub struct GatewayGuard<'a> {
    pub ib: &'a IbClient,
    pub ctx: &'a OperationHandle,
    /// Wait for a disconnected gateway instead of failing.
    pub wait: bool,
}

impl GatewayGuard<'_> {
    /// A call without an answer this long is a stall (the host client reports it too).
    fn stall_notice(&self) -> Duration {
        self.ib.host().settings().stall_notice
    }

    /// Returns once the gateway is not reported down: at once, or — in wait mode — when it is
    /// back. Fails with [`IbError::GatewayDown`] (not waiting) or [`IbError::Cancelled`].
    pub async fn ready(&self, fresh: bool) -> Result<(), IbError> {
        if self.ib.gateway(fresh).await != Gateway::Disconnected {
            return Ok(());
        }
        if !self.wait {
            return Err(IbError::GatewayDown(GATEWAY_DOWN.to_owned()));
        }
        let progress = self.ctx.progress();
        let began = Instant::now();
        let mut checks = Backoff::exponential(Duration::from_secs(1), MAX_CHECK_PAUSE).pauses();
        let mut next_check = began + checks.next_pause();
        loop {
            progress.detail(format!("waiting for the IB gateway to connect, {} s so far", began.elapsed().as_secs()));
            // The text counts seconds; the checks back off.
            let tick = (Instant::now() + Duration::from_secs(1)).min(next_check);
            tokio::select! {
                _ = tokio::time::sleep_until(tick) => {}
                _ = self.ctx.cancelled() => return Err(IbError::Cancelled),
            }
            if Instant::now() < next_check {
                continue;
            }
            if self.ib.gateway(true).await != Gateway::Disconnected {
                let waited = began.elapsed().as_secs();
                self.ctx.warn(format!("waited {waited} s for the IB gateway to connect"));
                progress.detail(format!("the IB gateway is connected again after {waited} s"));
                return Ok(());
            }
            next_check = Instant::now() + checks.next_pause();
        }
    }

    /// Runs `call` (made anew for each try) once the gateway is ready. While the call stalls the
    /// host is asked about its gateway; reported down, the call is abandoned. A failure is checked
    /// against the gateway as well: where the gateway is down it is named as the cause, with the
    /// host's own words kept. In wait mode both wait for the gateway and try again.
    pub async fn call<T, Fut>(&self, mut call: impl FnMut() -> Fut) -> Result<T, IbError>
    where
        Fut: Future<Output = Result<T, IbError>>,
    {
        loop {
            self.ready(false).await?;
            let outcome = tokio::select! {
                outcome = call() => outcome,
                () = self.down_while_stalled() => {
                    Err(IbError::GatewayDown(format!("{GATEWAY_DOWN} (the IB host had not answered for {} s)",
                        self.stall_notice().as_secs())))
                }
            };
            let error = match outcome {
                Ok(value) => return Ok(value),
                // Answers that say something about the data, not the connection.
                Err(
                    e @ (IbError::Cancelled | IbError::NoData(_) | IbError::BeforeHead { .. } | IbError::Pacing(_)),
                ) => {
                    return Err(e);
                }
                Err(e) => e,
            };
            let down = matches!(error, IbError::GatewayDown(_)) || self.ib.gateway(true).await == Gateway::Disconnected;
            if !down {
                return Err(error);
            }
            if !self.wait {
                return Err(match error {
                    IbError::GatewayDown(message) => IbError::GatewayDown(message),
                    other => IbError::GatewayDown(format!("{GATEWAY_DOWN} (the IB host said: {other})")),
                });
            }
            self.ctx.warn(format!("an IB call failed while the gateway was down: {error}"));
        }
    }

    /// Resolves when the host, asked once a call has stalled and every few seconds after,
    /// reports its gateway down. Never resolves while the gateway is up.
    async fn down_while_stalled(&self) {
        // A little after the stall notice, so that the stall shows in the step (and the record's
        // warnings) before the call is abandoned.
        let notice = self.stall_notice();
        tokio::time::sleep(notice.mul_f64(1.1)).await;
        loop {
            if self.ib.gateway(true).await == Gateway::Disconnected {
                return;
            }
            tokio::time::sleep(STALLED_CHECK_EVERY.min(notice.max(Duration::from_millis(100)))).await;
        }
    }
}
