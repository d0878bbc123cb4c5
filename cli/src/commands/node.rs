//! `wedge node`: a worker node that follows a control plane — it serves what
//! the control plane deployed, keeps it on its own disk, and goes on serving
//! it when the control plane is down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use wedge_node::cluster::ClusterSettings;
use wedge_node::follow::{DrainConfig, FollowerConfig, FollowingNode};

use super::values::FunctionCacheFlags;

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

    /// Where the node keeps what it serves, artifacts, compiled code and the
    /// functions' cache (DIR/cache, which survives a restart)
    /// [default: $XDG_DATA_HOME/wedge/node or ~/.local/share/wedge/node].
    #[arg(long, env = "WEDGE_NODE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// This node's name, as `wedge info` and `wedge members` list it, and
    /// the name of its cluster certificate (default: the host name).
    #[arg(long, env = "WEDGE_NODE_NAME", value_name = "NAME")]
    name: Option<String>,

    /// Where the admin listener binds: GET /healthz (alive), GET /readyz
    /// (joined and desired state applied; 503 saying what is missing), and
    /// GET /v1/members for `wedge members`. Unauthenticated and read-only: keep it on
    /// loopback or a management network.
    #[arg(long, env = "WEDGE_ADMIN", value_name = "ADDR", default_value = "127.0.0.1:7080")]
    admin: SocketAddr,

    /// Join a cluster: the cluster directory made by `wedge cluster init`
    /// (ca.pem, and nodes/NAME.pem with its key; when those are missing and
    /// ca-key.pem is there, the node issues its own certificate).
    #[arg(long, env = "WEDGE_CLUSTER_DIR", value_name = "DIR")]
    cluster_dir: Option<PathBuf>,

    /// The site this node runs in (placement spreads replicas over sites)
    /// [default: default].
    #[arg(long, env = "WEDGE_SITE", value_name = "SITE")]
    site: Option<String>,

    /// Where the cluster transport (QUIC over UDP: gossip, peer traffic)
    /// binds.
    #[arg(long, env = "WEDGE_GOSSIP", value_name = "ADDR", default_value = "127.0.0.1:7946")]
    gossip: SocketAddr,

    /// The IP other nodes reach this one at, needed when --gossip or
    /// --listen is an unspecified address such as 0.0.0.0.
    #[arg(long, env = "WEDGE_ADVERTISE", value_name = "IP")]
    advertise: Option<IpAddr>,

    /// A node to join the cluster through, as HOST:PORT of its --gossip
    /// (DNS names are resolved, and again every 30 s). Repeat it, or give a
    /// comma-separated list in WEDGE_JOIN; every node may get the same list.
    #[arg(long = "join", env = "WEDGE_JOIN", value_name = "HOST:PORT", value_delimiter = ',', value_parser = seed)]
    join: Vec<String>,

    /// About how many nodes the cluster will have: suspicion timeouts and
    /// gossip repeat counts grow with its logarithm.
    #[arg(long, env = "WEDGE_CLUSTER_SIZE", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    cluster_size: u32,

    /// Memory for the HTTP response cache: answers to GET marked
    /// `Cache-Control: s-maxage=N` or `max-age=N` (not private, no-store or
    /// no-cache) are served again for N s, with `x-wedge-cache: HIT`. One
    /// answer may take an eighth of it, at most 8MiB. 0 turns the cache off.
    #[arg(long, env = "WEDGE_RESPONSE_CACHE_BYTES_MAX", value_name = "SIZE", default_value = "64MiB",
          value_parser = response_cache_bytes)]
    response_cache_bytes_max: usize,

    #[command(flatten)]
    function_cache: FunctionCacheFlags,

    /// On SIGTERM, how long the node keeps serving with /readyz answering
    /// 503 (draining) before it leaves the cluster and stops accepting
    /// connections: long enough for load balancers polling /readyz to stop
    /// sending to it (a few of their check intervals).
    #[arg(long, env = "WEDGE_DRAIN_DELAY", value_name = "DURATION", default_value = "2s",
          value_parser = wedge_node::units::parse_duration)]
    drain_delay: Duration,

    /// After the drain delay, how long requests in flight get to finish
    /// before they are cut. Keep delay plus timeout under the time your
    /// supervisor waits before SIGKILL (30 s in deploy/).
    #[arg(long, env = "WEDGE_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "20s",
          value_parser = drain_timeout)]
    drain_timeout: Duration,
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
            .field("admin", &self.admin)
            .field("cluster_dir", &self.cluster_dir)
            .field("site", &self.site)
            .field("gossip", &self.gossip)
            .field("advertise", &self.advertise)
            .field("join", &self.join)
            .field("cluster_size", &self.cluster_size)
            .field("response_cache_bytes_max", &self.response_cache_bytes_max)
            .field("function_cache", &self.function_cache)
            .field("drain_delay", &self.drain_delay)
            .field("drain_timeout", &self.drain_timeout)
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
        let cluster = match self.cluster_dir {
            Some(cluster_dir) => Some(ClusterSettings {
                cluster_dir,
                site: self.site.unwrap_or_else(|| "default".to_string()),
                gossip: self.gossip,
                advertise: self.advertise,
                seeds: self.join,
                expected_size: self.cluster_size as usize,
            }),
            None if !self.join.is_empty() || self.site.is_some() => {
                bail!(
                    "--join and --site need --cluster-dir DIR (the cluster's CA and certificates; see `wedge cluster init`)"
                )
            }
            None => None,
        };
        let mut config = FollowerConfig::new(name, self.listen, data_dir, self.control, token);
        config.cluster = cluster;
        config.admin = Some(self.admin);
        config.response_cache_bytes_max = self.response_cache_bytes_max;
        config.function_cache = self.function_cache.config();
        config.drain = DrainConfig { delay: self.drain_delay, timeout: self.drain_timeout };
        let runtime = crate::daemon::runtime("wedge-worker")?;
        runtime.block_on(async move {
            let shutdown = crate::daemon::shutdown_signal()?;
            let node = FollowingNode::start(config).await?;
            if let Some(admin) = node.admin_addr {
                println!("wedge node admin on http://{admin}");
            }
            if let Some(agent) = &node.agent {
                let identity = &agent.snapshot().members[0].identity;
                println!(
                    "wedge node gossip on {} (site {}, incarnation {})",
                    identity.gossip_addr(),
                    identity.site(),
                    identity.incarnation()
                );
            }
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

/// A response-cache size like `64MiB` (or `0`, off).
fn response_cache_bytes(text: &str) -> Result<usize, String> {
    let bytes = wedge_node::units::parse_bytes(text)?;
    usize::try_from(bytes).map_err(|_| format!("{text:?} is more memory than this machine can address"))
}

/// A drain timeout: more than zero.
fn drain_timeout(text: &str) -> Result<Duration, String> {
    match wedge_node::units::parse_duration(text)? {
        Duration::ZERO => Err("the drain timeout must be more than 0s: requests in flight need some time".into()),
        timeout => Ok(timeout),
    }
}

/// A join seed: `HOST:PORT` (an IPv6 host in brackets).
fn seed(text: &str) -> Result<String, String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains(':') && !text.starts_with('[') {
        return Err(format!("{text:?} is not HOST:PORT (write an IPv6 address as [ADDR]:PORT)"));
    }
    port.parse::<u16>().map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
    Ok(text.to_string())
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
    fn the_function_cache_size_is_at_least_the_largest_value() {
        use clap::Parser;
        let parse = |size: &str| crate::commands::Cli::try_parse_from(["wedge", "node", "--cache-bytes-max", size]);
        let error = parse("512KiB").unwrap_err().to_string();
        assert!(error.contains("less than 1MiB, the largest value a function may store"), "{error}");
        assert!(parse("lots").is_err());
        assert!(format!("{:?}", parse("1GiB").unwrap()).contains("cache_bytes_max: 1073741824"));
    }

    #[test]
    fn join_seeds_are_host_and_port() {
        for good in ["127.0.0.1:7946", "seed.wedge.svc:7946", "[::1]:7946", "localhost:1"] {
            assert_eq!(seed(good).unwrap(), good);
        }
        for bad in ["127.0.0.1", ":7946", "host:http", "host:70000", "::1:7946", "a b:1"] {
            assert!(seed(bad).is_err(), "{bad}");
        }
        use clap::Parser;
        let cli = crate::commands::Cli::try_parse_from(["wedge", "node", "--join", "a:1", "--join", "b:2"]).unwrap();
        assert!(format!("{cli:?}").contains(r#"join: ["a:1", "b:2"]"#), "{cli:?}");
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
