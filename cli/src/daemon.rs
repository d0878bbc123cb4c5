//! What the long-running verbs (`serve`, `node`, `control`) share: the
//! multi-threaded async runtime they run on and graceful shutdown.

use anyhow::Context;

/// The async runtime of a long-running verb; its worker threads are named
/// `thread_name` (seen in `top -H` and in panics).
pub fn runtime(thread_name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .context("starting the async runtime")
}

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
