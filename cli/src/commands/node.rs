//! `wedge node`: a worker node that follows a control plane — it serves what
//! the control plane deployed, keeps it on its own disk, and goes on serving
//! it when the control plane is down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use wedge_node::follow::{FollowerConfig, FollowingNode};

/// Arguments of `wedge node` (its help text is on `Command::Node`).
#[derive(Args)]
pub struct NodeArgs {
    /// The control plane to follow.
    #[arg(long, env = "WEDGE_CONTROL", value_name = "URL", default_value = "http://127.0.0.1:7070")]
    control: String,

    /// The control plane's node token [env: WEDGE_NODE_TOKEN]. `wedge
    /// control` prints it once and keeps it in the file node-token of its
    /// data directory. It lets the node only read desired state and
    /// artifacts and send reports. WEDGE_TOKEN, where deployers keep the
    /// admin token, is never read here: a node started from a deployer's
    /// shell must not run with the power to deploy and delete.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,

    /// Read the node token from this file (e.g. the control plane's
    /// DIR/node-token, copied over), so it does not show in the process
    /// list as --token does.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

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

impl std::fmt::Debug for NodeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeArgs")
            .field("control", &self.control)
            .field("token", &crate::profile::redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("name", &self.name)
            .finish()
    }
}

impl NodeArgs {
    /// Runs the node until SIGTERM or Ctrl-C.
    pub fn run(self) -> anyhow::Result<()> {
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None => crate::daemon::default_data_dir("node")
                .context("no --data-dir given and neither XDG_DATA_HOME nor HOME is an absolute path")?,
        };
        let token = node_token(self.token, self.token_file.as_deref(), std::env::var("WEDGE_NODE_TOKEN").ok())?;
        let name = self.name.unwrap_or_else(default_node_name);
        let config = FollowerConfig::new(name, self.listen, data_dir, self.control, token);
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

/// The node's token: `--token`, else `--token-file` (clap lets only one
/// be given), else `WEDGE_NODE_TOKEN` (`env`; empty counts as unset).
fn node_token(flag: Option<String>, file: Option<&Path>, env: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = flag.filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    if let Some(path) = file {
        return crate::profile::read_token_file(path);
    }
    match env.filter(|t| !t.is_empty()) {
        Some(token) => Ok(token),
        None => bail!(
            "no node token: pass --token-file PATH (a copy of the control plane's DIR/node-token), --token, or set \
             WEDGE_NODE_TOKEN (WEDGE_TOKEN, the deployers' admin token, is not read by wedge node)"
        ),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        use clap::Parser;
        let cli = crate::commands::Cli::try_parse_from(["wedge", "node", "--token", "s3cret-node-4f2a"]).unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("s3cret") && debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn the_node_token_comes_from_the_flag_the_file_or_wedge_node_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node-token");
        std::fs::write(&file, "from-file\n").unwrap();
        let flag = || Some("from-flag".to_string());
        let env = || Some("from-env".to_string());
        assert_eq!(node_token(flag(), None, env()).unwrap(), "from-flag");
        assert_eq!(node_token(None, Some(&file), env()).unwrap(), "from-file");
        assert_eq!(node_token(None, None, env()).unwrap(), "from-env");
        for empty in [None, Some(String::new())] {
            let error = node_token(None, None, empty).unwrap_err().to_string();
            assert!(error.contains("WEDGE_NODE_TOKEN") && error.contains("--token-file"), "{error}");
            assert!(error.contains("WEDGE_TOKEN, the deployers' admin token, is not read"), "{error}");
        }
    }
}
