//! `wedge-node`: a worker node, wired from its parts.
//!
//! It owns the node's configuration (the functions it serves, from a
//! `functions.toml` or from the command line), loading each function into the
//! [`wedge_host::Host`], building the [`wedge_router::RouteTable`], and running
//! the [`wedge_router::Ingress`] until shutdown. A node either serves a fixed
//! set of functions ([`start`], for `wedge serve`) or follows a control plane
//! ([`follow::FollowingNode`], for `wedge node`), keeping what it serves on its
//! own disk ([`local_state`]); a following node may join a cluster
//! ([`cluster`]) and serve an admin listener ([`admin`]) with its Prometheus
//! metrics ([`metrics`]); it runs the job queues assigned to it ([`jobs`]). Either kind gives
//! its functions one node-local cache ([`function_cache`]).
//!
//! It must not parse command lines or read the environment: the `wedge`
//! binary does that and hands over a [`NodeConfig`].

pub mod admin;
pub mod cluster;
pub mod config;
pub mod control_client;
pub mod follow;
pub mod function_cache;
pub mod jobs;
pub mod local_state;
pub mod metrics;
pub mod units;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use wedge_host::{FunctionSpec, Host, HostConfig};
use wedge_router::{Ingress, IngressConfig, Route, RouteTable, Target};

pub use config::{FunctionConfig, FunctionsFile, NodeConfig};
pub use function_cache::NodeCache;

/// A function ready to load: its spec, its routes and where its component is.
#[derive(Debug)]
pub struct LoadedFunction {
    /// What the host needs.
    pub spec: FunctionSpec,
    /// Routes the function serves.
    pub routes: Vec<Route>,
    /// Where the component came from (for messages).
    pub source: String,
}

/// A node that is serving.
pub struct RunningNode {
    /// The address the ingress listens on.
    pub local_addr: SocketAddr,
    /// The ingress (route table, server).
    pub ingress: Arc<Ingress>,
    /// The functions' cache (temporary: `wedge serve` has no data
    /// directory); [`NodeCache::close`] it after serving.
    pub cache: NodeCache,
}

/// Loads every function and binds the listener; fails — serving nothing —
/// if any function or route is bad, naming the file and the reason.
pub async fn start(config: &NodeConfig) -> anyhow::Result<(RunningNode, TcpListener)> {
    let functions = config.functions()?;
    let memory_max = functions
        .iter()
        .map(|f| f.spec.limits.memory_bytes_max)
        .max()
        .unwrap_or(0)
        .max(HostConfig::default().instance_memory_bytes_max);
    let mut cache = NodeCache::open_temporary(config.function_cache.clone())?;
    let host = Host::new(HostConfig {
        instance_memory_bytes_max: memory_max,
        cache_dir: config.cache_dir.clone(),
        function_cache: Some(cache.cache().clone()),
        ..HostConfig::default()
    })
    .context("creating the wasm engine")?;

    let mut table = RouteTable::new();
    let mut loaded_names = Vec::new();
    for function in functions {
        let wasm =
            std::fs::read(&function.source).with_context(|| format!("{}: cannot read the file", function.source))?;
        let name = function.spec.name.clone();
        let loaded =
            host.load(function.spec, &wasm).map_err(|error| anyhow::anyhow!("{}: {error}", function.source))?;
        for route in function.routes {
            table.insert(route, &name, Target::Local(loaded.clone())).with_context(|| function.source.clone())?;
        }
        loaded_names.push((name, loaded.sha256()[..12].to_string()));
    }
    // Logged only once everything loaded: a refused start prints one line.
    for (name, sha256) in loaded_names {
        tracing::info!(function = %name, %sha256, "loaded");
    }
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let routes: Vec<String> = table.routes().map(|(r, f)| format!("{r} -> {f}")).collect();
    let ingress = Ingress::new(IngressConfig::default(), table);
    tracing::info!(addr = %local_addr, routes = ?routes, "serving");
    cache.start_reclaiming();
    Ok((RunningNode { local_addr, ingress, cache }, listener))
}
