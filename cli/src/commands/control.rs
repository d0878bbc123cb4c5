//! `wedge control`: run the control plane (deploy API, store, desired state
//! for nodes) until SIGTERM or Ctrl-C, then stop accepting and finish the
//! requests in flight.
//!
//! This file only layers flags and `WEDGE_*` environment over the
//! defaults and prints what an operator needs: the admin and node tokens
//! when they were just generated, then one readiness line (always last).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wedge_control::{ControlConfig, ControlPlane, TokenOrigin};
use wedge_node::units::{parse_bytes, parse_duration};

/// Arguments of `wedge control` (its help text is on `Command::Control`).
#[derive(Args)]
pub struct ControlArgs {
    /// Where the store, the admin token (`token`), the node token
    /// (`node-token`) and the lock live
    /// [default: $XDG_DATA_HOME/wedge/control or ~/.local/share/wedge/control].
    #[arg(long, env = "WEDGE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Address the API listens on.
    #[arg(long, env = "WEDGE_CONTROL_LISTEN", default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: SocketAddr,

    /// The admin token: may call everything (deploy, rollback, rm, logs).
    /// Give it to deployers. Without it, the one in DIR/token is used, or a
    /// new one is generated and saved there.
    #[arg(long, env = "WEDGE_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The node token: may only read desired state and artifacts and send
    /// reports. Give it to `wedge node`. Without it, the one in
    /// DIR/node-token is used, or a new one is generated and saved there.
    /// Must differ from the admin token.
    #[arg(long, env = "WEDGE_NODE_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    node_token: Option<String>,

    /// Largest component a deploy may upload; beyond it, 413.
    #[arg(long, default_value = "50MiB", value_parser = parse_bytes, value_name = "SIZE")]
    max_component_size: u64,

    /// A node not heard from for this long no longer counts as serving a
    /// function (`wedge info`); `GET /v1/nodes` still lists it.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    node_stale_after: std::time::Duration,

    #[command(flatten)]
    autoscale: AutoscaleArgs,
}

/// When the placement scheduler adds and removes replicas (each function
/// stays within its --min-replicas and --max-replicas).
#[derive(Args, Debug)]
#[command(next_help_heading = "Autoscaling")]
struct AutoscaleArgs {
    /// Add replicas when the average requests in flight per replica stays
    /// above this for --scale-up-window.
    #[arg(long, default_value_t = 8.0, value_name = "N")]
    scale_up_at: f64,

    /// Remove a replica when the average stays below this for
    /// --scale-down-window (at most half of --scale-up-at, so that one step
    /// cannot cross the other threshold).
    #[arg(long, default_value_t = 2.0, value_name = "N")]
    scale_down_at: f64,

    /// How long the load must stay high before scaling up.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    scale_up_window: std::time::Duration,

    /// How long the load must stay low before scaling down.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    scale_down_window: std::time::Duration,

    /// The least time between two scaling steps of a function.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    scale_cooldown: std::time::Duration,
}

impl std::fmt::Debug for ControlArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::profile::redacted;
        f.debug_struct("ControlArgs")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("token", &redacted(&self.token))
            .field("node_token", &redacted(&self.node_token))
            .field("max_component_size", &self.max_component_size)
            .field("node_stale_after", &self.node_stale_after)
            .field("autoscale", &self.autoscale)
            .finish()
    }
}

impl ControlArgs {
    /// Runs the control plane until SIGTERM or Ctrl-C.
    pub fn run(self) -> anyhow::Result<()> {
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None => crate::daemon::default_data_dir("control")
                .context("no --data-dir given and neither XDG_DATA_HOME nor HOME is an absolute path")?,
        };
        let mut config = ControlConfig::new(data_dir);
        config.listen = self.listen;
        config.token = self.token;
        config.node_token = self.node_token;
        config.node_stale_after = self.node_stale_after;
        config.component_bytes_max = self.max_component_size;
        config.placement.scale_up_in_flight_per_replica = self.autoscale.scale_up_at;
        config.placement.scale_down_in_flight_per_replica = self.autoscale.scale_down_at;
        config.placement.scale_up_window = self.autoscale.scale_up_window;
        config.placement.scale_down_window = self.autoscale.scale_down_window;
        config.placement.scale_cooldown = self.autoscale.scale_cooldown;
        let runtime = crate::daemon::runtime("wedge-control")?;
        runtime.block_on(async move {
            // Watch for SIGTERM before announcing readiness, so a supervisor
            // that stops us right away still gets a graceful stop.
            let shutdown = crate::daemon::shutdown_signal()?;
            let data_dir = config.data_dir.clone();
            let listen = config.listen;
            let control = tokio::task::spawn_blocking(move || ControlPlane::open(config))
                .await
                .context("opening the control plane")??;
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            let local_addr = listener.local_addr()?;
            let mut stdout = std::io::stdout().lock();
            if let TokenOrigin::Generated(_) = control.token_origin() {
                writeln!(stdout, "admin token (saved in {}/token): {}", data_dir.display(), control.token().expose())?;
            }
            if let TokenOrigin::Generated(_) = control.node_token_origin() {
                let token = control.node_token().expose();
                writeln!(stdout, "node token (saved in {}/node-token): {token}", data_dir.display())?;
            }
            writeln!(stdout, "wedge control listening on http://{local_addr}")?;
            stdout.flush()?;
            drop(stdout);
            tracing::info!(addr = %local_addr, data_dir = %data_dir.display(), revision = control.revision(), "control plane ready");
            control.serve(listener, shutdown).await.context("serving the API")
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    #[test]
    fn debug_never_shows_a_token() {
        let args = ["wedge", "control", "--token", "s3cret-admin-4f2a", "--node-token", "s3cret-node-4f2a"];
        let cli = crate::commands::Cli::try_parse_from(args).unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert_eq!(debug.matches("<redacted>").count(), 2, "{debug}");
    }
}
