//! `wedge serve`: serve components from files on this machine, with limits,
//! configuration and an outbound allow-list, until SIGTERM or Ctrl-C (then
//! drain in-flight requests and exit).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use wedge_node::config::LimitsConfig;
use wedge_node::{FunctionConfig, FunctionsFile, NodeConfig};

use super::values;

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

    /// Deadline per request, wall clock, host calls included (default 30s).
    #[arg(long, value_parser = values::duration, value_name = "DURATION")]
    timeout: Option<String>,

    /// Linear-memory cap per instance (default 128MiB).
    #[arg(long, value_parser = values::bytes, value_name = "SIZE")]
    memory: Option<String>,

    /// Largest request body; beyond it, 413 (default 10MiB).
    #[arg(long, value_parser = values::bytes, value_name = "SIZE")]
    max_body: Option<String>,

    /// Most concurrent instances per function; beyond it, 503 (default 100).
    #[arg(long, value_name = "N")]
    max_concurrency: Option<u32>,

    /// A configuration value the function reads with `config::get`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = values::pair)]
    config_values: Vec<(String, String)>,

    /// An environment variable for the function (it sees no others).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = values::pair)]
    env: Vec<(String, String)>,

    /// A host the function may call over HTTP: `api.example.com`,
    /// `*.example.com`, `127.0.0.1:9000`, `https://*`. None by default.
    #[arg(long = "allow-outbound", value_name = "HOST")]
    allowed_outbound_hosts: Vec<String>,

    /// Directory for compiled components (default: ~/.cache/wedge/compiled).
    #[arg(long, env = "WEDGE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile in memory only; write nothing to disk.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
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
        let per_component_flags = !self.routes.is_empty()
            || self.timeout.is_some()
            || self.memory.is_some()
            || self.max_body.is_some()
            || self.max_concurrency.is_some()
            || !self.config_values.is_empty()
            || !self.env.is_empty()
            || !self.allowed_outbound_hosts.is_empty();
        if self.components.is_empty() && per_component_flags {
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
        let limits = LimitsConfig {
            memory: self.memory.clone(),
            timeout: self.timeout.clone(),
            max_body: self.max_body.clone(),
            max_concurrency: self.max_concurrency,
        };
        for (index, component) in self.components.iter().enumerate() {
            let routes = match (self.components.len(), self.routes.is_empty()) {
                (_, true) => Vec::new(),
                (1, false) => self.routes.clone(),
                (_, false) => vec![self.routes[index].clone()],
            };
            functions.push(FunctionConfig {
                name: None,
                component: component.clone(),
                routes,
                limits: limits.clone(),
                config: self.config_values.iter().cloned().collect::<BTreeMap<_, _>>(),
                env: self.env.iter().cloned().collect(),
                allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            });
        }
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(|| crate::daemon::default_cache_dir("compiled"))
        };
        Ok(NodeConfig { listen: self.listen, cache_dir, functions })
    }
}
