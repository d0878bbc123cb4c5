//! `wedge serve`: serve components from files on this machine, with limits,
//! configuration and an outbound allow-list, until SIGTERM or Ctrl-C (then
//! drain in-flight requests and exit).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use wedge_node::{FunctionsFile, NodeConfig};

use super::values::{FunctionCacheFlags, FunctionFlags};

/// Arguments of `wedge serve` (its help text is on `Command::Serve`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Component files to serve.
    #[arg(value_name = "COMPONENT.wasm")]
    components: Vec<PathBuf>,

    /// Path prefix (optionally with a host: `api.example.com/v1`). Give one
    /// per component, in order; without it a lone component serves `/` and
    /// several serve `/<name>`. A lone component may take several.
    #[arg(long = "route", value_name = "[HOST]/PREFIX")]
    routes: Vec<String>,

    /// Address to listen on for HTTP.
    #[arg(long, env = "WEDGE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// A functions.toml describing several functions (names, routes, limits,
    /// config values, environment, outbound hosts).
    #[arg(long, env = "WEDGE_FUNCTIONS", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(flatten)]
    function: FunctionFlags,

    /// Directory for compiled components (default: ~/.cache/wedge/compiled).
    #[arg(long, env = "WEDGE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile in memory only; write nothing to disk.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,

    // The functions' cache lives in a temporary directory, removed when
    // `wedge serve` stops (`wedge node` keeps it in its data directory).
    #[command(flatten)]
    function_cache: FunctionCacheFlags,
}

impl ServeArgs {
    /// Runs the server until SIGTERM or Ctrl-C.
    pub fn run(self) -> anyhow::Result<()> {
        let config = self.node_config()?;
        let runtime = crate::daemon::runtime("wedge-worker")?;
        runtime.block_on(async move {
            // Watch for SIGTERM before announcing readiness, so a supervisor
            // that stops us right away still gets a graceful drain.
            let shutdown = crate::daemon::shutdown_signal()?;
            let (node, listener) = wedge_node::start(&config).await?;
            println!("wedge serving on http://{}", node.local_addr);
            for (route, function) in node.ingress.routes().routes() {
                println!("  {route} -> {function}");
            }
            node.ingress.serve(listener, shutdown).await;
            node.cache.close().await;
            anyhow::Ok(())
        })
    }

    fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let mut functions = Vec::new();
        if let Some(path) = &self.config {
            functions.extend(FunctionsFile::load(path)?.function);
        }
        if self.components.is_empty() && functions.is_empty() {
            bail!("nothing to serve: name component files or give --config functions.toml (see --help)");
        }
        if self.components.is_empty() && (!self.routes.is_empty() || self.function.any()) {
            bail!(
                "--route, limits, --set, --env and --allow-outbound apply to components named on the command line; \
                 for functions in --config, put them in the file"
            );
        }
        if self.components.len() > 1 && !self.routes.is_empty() && self.routes.len() != self.components.len() {
            bail!(
                "{} components but {} --route flags: give one --route per component, in order, or none",
                self.components.len(),
                self.routes.len()
            );
        }
        for (index, component) in self.components.iter().enumerate() {
            let routes = match (self.components.len(), self.routes.is_empty()) {
                (_, true) => Vec::new(),
                (1, false) => self.routes.clone(),
                (_, false) => vec![self.routes[index].clone()],
            };
            functions.push(self.function.function(None, component.clone(), routes));
        }
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(|| crate::daemon::default_cache_dir("compiled"))
        };
        Ok(NodeConfig { listen: self.listen, cache_dir, functions, function_cache: self.function_cache.config() })
    }
}
