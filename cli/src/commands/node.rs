//! `wedge node`: a worker node that follows a control plane — it serves what
//! the control plane deployed, keeps it on its own disk, and goes on serving
//! it when the control plane is down.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wedge_node::follow::{FollowerConfig, FollowingNode};

/// Arguments of `wedge node` (its help text is on `Command::Node`).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The control plane to follow.
    #[arg(long, env = "WEDGE_CONTROL", value_name = "URL", default_value = "http://127.0.0.1:7070")]
    control: String,

    /// The control plane's node token (`wedge control` prints it once and
    /// keeps it in the file node-token of its data directory). It lets the
    /// node only read desired state and artifacts and send reports; the
    /// admin token works too, but gives this machine the power to deploy and
    /// delete.
    #[arg(long, env = "WEDGE_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: String,

    /// Address to listen on for HTTP.
    #[arg(long, env = "WEDGE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Where the node keeps what it serves, artifacts and compiled code
    /// [default: $XDG_DATA_HOME/wedge/node or ~/.local/share/wedge/node].
    #[arg(long, env = "WEDGE_NODE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// This node's name, as `wedge info` lists it (default: the host name).
    #[arg(long, env = "WEDGE_NODE_NAME", value_name = "NAME")]
    name: Option<String>,
}

impl NodeArgs {
    /// Runs the node until SIGTERM or Ctrl-C.
    pub fn run(self) -> anyhow::Result<()> {
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None => crate::daemon::default_data_dir("node")
                .context("no --data-dir given and neither XDG_DATA_HOME nor HOME is an absolute path")?,
        };
        let name = self.name.unwrap_or_else(default_node_name);
        let config = FollowerConfig::new(name, self.listen, data_dir, self.control, self.token);
        let runtime = crate::daemon::runtime("wedge-worker")?;
        runtime.block_on(async move {
            let shutdown = crate::daemon::shutdown_signal()?;
            let node = FollowingNode::start(config).await?;
            println!("wedge node serving on http://{}", node.local_addr);
            node.run(shutdown).await;
            anyhow::Ok(())
        })
    }
}

/// The host name made DNS-label-like (`Web_01.example` → `web-01`).
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(63)
        .collect();
    let label = label.trim_matches('-').to_string();
    if label.is_empty() { "node".to_string() } else { label }
}
