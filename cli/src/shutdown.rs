//! Graceful shutdown for the long-running verbs (`serve`, `node`, `control`).

use anyhow::Context;

/// Installs the SIGTERM and Ctrl-C handlers now; the returned future
/// completes when either arrives. Call it before announcing readiness, so a
/// supervisor that stops the process right away still gets a graceful drain.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
