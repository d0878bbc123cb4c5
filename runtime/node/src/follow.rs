//! A node that follows a control plane: it serves what the control plane's
//! desired state says, and keeps serving it when the control plane is gone.
//!
//! Three tasks, each owning its part:
//! - the **follower** long-polls `GET /v1/state`, and for each new revision
//!   fetches missing artifacts by hash, verifies them, compiles them (the
//!   host caches compiled code on disk), saves what it is about to serve to
//!   the data directory, then swaps the ingress's route table in one step;
//! - the **reporter** tells the control plane what this node serves, what
//!   failed to load, each function's traffic counters (for rates and p99 in
//!   `/v1/overview`), and ships guest output lines (for `wedge logs`);
//! - the **ingress** serves HTTP throughout; a swap never touches a request
//!   in flight.
//!
//! Job queues ([`crate::jobs`], in `<data-dir>/jobs`) take their roles from the
//! desired state as the follower applies it, report what they hold through the
//! reporter, and talk to peers over the same transport as forwarded requests
//! (internal requests, told apart by their header). Operators' queue commands
//! arrive in the control plane's answer to a report; the reporter has the
//! queues run them and sends their results in a report as soon as they are
//! ready.
//!
//! With a cluster ([`ClusterSettings`]) the node also runs membership and
//! publishes its load ([`crate::cluster`]); with an admin address it serves
//! [`crate::admin`], whose `/readyz` the follower feeds ([`Readiness`]).
//!
//! Shutdown drains ([`DrainConfig`]), so that replacing nodes one at a time
//! under load fails no request: at once `/readyz` turns `503` (`draining`);
//! the node serves on for the drain delay, so that load balancers polling
//! `/readyz` stop sending to it, and its job queues lease no more jobs; once
//! the jobs it leased have ended (within the drain timeout, their outcomes
//! recorded and replicated), it leaves the cluster (peers stop
//! forwarding to it, and what they still forward is refused with an answer
//! that sends them to another replica), stops accepting connections, lets
//! every request in flight finish — its clients' and those peers forwarded
//! before it left — within the drain timeout, closes idle keep-alive
//! connections, and only then closes its cluster transport.
//!
//! On start, before talking to anyone, the node loads what it served last
//! time from its own disk ([`LocalState`]), so a restart while the control
//! plane is down serves everything it served before (static stability).
//! The functions' cache lives there too ([`NodeCache`], in `<data-dir>/cache`):
//! expired entries are reclaimed while the node runs, and it is flushed after
//! the ingress has drained.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use wedge_cluster::membership::MemberState;
use wedge_control::api::{
    DesiredState, FunctionTraffic, LogLine, NodeCluster, NodeFunctionError, NodeReport, QueueCommandResult,
    VersionRecord, sha256_hex,
};
use wedge_host::{DURATION_BOUNDS_SECONDS, Function, GuestLogLine, GuestLogSink, Host, HostConfig, StatusClass};
use wedge_router::{
    ForwardConfig, Forwarder, Forwarding, Ingress, IngressConfig, Replica, ReplicaSource, ResponseCacheConfig, Route,
    RouteTable, ServeConfig, Target, serve_forwarded,
};

use wedge_cluster::agent::Agent;

use crate::admin::{self, Readiness};
use crate::cluster::ClusterSettings;
use crate::control_client::{ControlClient, ErrorStatus};
use crate::function_cache::NodeCache;
use crate::jobs::{NodeQueueSender, Queues};
use crate::local_state::LocalState;
use crate::metrics::{Compilations, NodeMetrics};

/// Guest lines buffered between reports; beyond it, lines are dropped.
const LOG_LINES_BUFFERED_MAX: usize = 10_000;
/// Most guest lines sent in one report.
const LOG_LINES_PER_REPORT_MAX: usize = 2_000;
/// Most bytes of guest lines (as JSON) in one report, well under the
/// control plane's report limit, so a chatty guest cannot make reports fail.
const LOG_BYTES_PER_REPORT_MAX: usize = 1024 * 1024;
/// How long the reporter waits after a guest line for more to batch with it.
const LOG_BATCH_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between retries when the control plane cannot be reached.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often a function that failed to load is tried again.
const LOAD_RETRY: Duration = Duration::from_secs(5);
/// Queue command results waiting for a report; beyond it (reports failing
/// for long) the oldest are dropped, and their operators see a timeout.
const QUEUE_RESULTS_MAX: usize = 64;
/// Most bytes of queue command results (as JSON) in one report: one peek's
/// answer fits ([`wedge_control::api::QUEUE_PEEK_BYTES_MAX`] and a job), and with
/// guest lines ([`LOG_BYTES_PER_REPORT_MAX`]) and the rest of a report it stays
/// under the control plane's limit ([`wedge_control::config::REPORT_BYTES_MAX`]).
/// Results past it go in the next report.
const QUEUE_RESULT_BYTES_PER_REPORT_MAX: usize = 1536 * 1024;
/// While reports fail, how often that is logged.
const REPORT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// How a node stops (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// From the stop signal to leaving the cluster and closing the listener:
    /// the node serves on, not ready, so that load balancers notice. Default 2 s.
    pub delay: Duration,
    /// How long requests in flight get to finish after that; the rest are
    /// cut. Default 20 s (with the delay, within the 30 s that systemd,
    /// Kubernetes and compose wait before SIGKILL).
    pub timeout: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { delay: Duration::from_secs(2), timeout: Duration::from_secs(20) }
    }
}

/// Settings of a following node.
#[derive(Clone)]
pub struct FollowerConfig {
    /// This node's name, as the control plane lists it (DNS-label-like).
    pub node_name: String,
    /// Address of the HTTP ingress.
    pub listen: SocketAddr,
    /// Where state, artifacts and compiled code are kept.
    pub data_dir: PathBuf,
    /// The control plane (`http://host:port`).
    pub control_url: String,
    /// Bearer token for the control plane.
    pub token: String,
    /// How long one long-poll of desired state waits for a change.
    pub long_poll: Duration,
    /// Longest time between two reports.
    pub report_interval: Duration,
    /// The cluster to join, if any.
    pub cluster: Option<ClusterSettings>,
    /// Where the admin listener binds, if anywhere.
    pub admin: Option<SocketAddr>,
    /// Bounds of the ingress's HTTP response cache, in bytes (0 turns it off).
    pub response_cache_bytes_max: usize,
    /// Limits of the functions' cache in `<data_dir>/cache`.
    pub function_cache: wedge_cache::CacheConfig,
    /// How the node drains when it stops.
    pub drain: DrainConfig,
}

impl std::fmt::Debug for FollowerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerConfig")
            .field("node_name", &self.node_name)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("control_url", &self.control_url)
            .field("token", &"<redacted>")
            .field("long_poll", &self.long_poll)
            .field("report_interval", &self.report_interval)
            .field("cluster", &self.cluster)
            .field("admin", &self.admin)
            .field("response_cache_bytes_max", &self.response_cache_bytes_max)
            .field("function_cache", &self.function_cache)
            .field("drain", &self.drain)
            .finish()
    }
}

impl FollowerConfig {
    /// Defaults for everything but identity and addresses.
    pub fn new(node_name: String, listen: SocketAddr, data_dir: PathBuf, control_url: String, token: String) -> Self {
        Self {
            node_name,
            listen,
            data_dir,
            control_url,
            token,
            long_poll: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            cluster: None,
            admin: None,
            response_cache_bytes_max: ResponseCacheConfig::BYTES_MAX_DEFAULT,
            function_cache: wedge_cache::CacheConfig::default(),
            drain: DrainConfig::default(),
        }
    }
}

/// What the node serves now; shared by the follower (writer) and the
/// reporter (reader).
#[derive(Debug, Default, Clone)]
struct Serving {
    revision: u64,
    functions: Vec<(String, u64)>,
    errors: Vec<NodeFunctionError>,
}

/// A node that has loaded its saved state and bound its listener, ready to
/// [`run`](FollowingNode::run).
pub struct FollowingNode {
    /// Where the ingress listens.
    pub local_addr: SocketAddr,
    /// The ingress.
    pub ingress: Arc<Ingress>,
    /// Where the admin listener listens, if it does.
    pub admin_addr: Option<SocketAddr>,
    /// Cluster membership, when the node is in a cluster.
    pub agent: Option<Arc<Agent>>,
    /// What the admin listener's `/readyz` answers.
    pub readiness: Arc<Readiness>,
    /// What the admin listener's `/metrics` reads.
    pub metrics: Arc<NodeMetrics>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    config: FollowerConfig,
    client: ControlClient,
    applier: Applier,
    serving: Arc<Mutex<Serving>>,
    log_lines: mpsc::Receiver<GuestLogLine>,
    cache: NodeCache,
    /// The node's job queues.
    queues: Arc<Queues>,
    /// Stops the queues' engine once the node has drained.
    queues_stop: watch::Sender<bool>,
}

impl FollowingNode {
    /// Creates the engine, serves what was saved in the data directory (no
    /// network needed), and binds the listener.
    pub async fn start(config: FollowerConfig) -> anyhow::Result<Self> {
        wedge_host::validate_name(&config.node_name)
            .map_err(|_| anyhow::anyhow!("node name {:?}: use 1-63 of a-z, 0-9 and '-'", config.node_name))?;
        let client = ControlClient::new(&config.control_url, &config.token)?;
        let local = LocalState::open(&config.data_dir)?;
        let cache = NodeCache::open(&local.function_cache_dir(), config.function_cache.clone())?;
        let (sink, log_lines) = GuestLogSink::bounded(LOG_LINES_BUFFERED_MAX);
        let (queues_stop, queues_stopped) = watch::channel(false);
        let queues = Queues::start(&config.node_name, &config.data_dir.join("jobs"), queues_stopped)?;
        let queue_sender = Arc::new(NodeQueueSender(Arc::clone(&queues)));
        let host = Host::new(HostConfig {
            cache_dir: Some(local.compiled_dir()),
            log_sink: Some(sink),
            function_cache: Some(cache.cache().clone()),
            queue_sender: Some(queue_sender),
            ..HostConfig::default()
        })
        .context("creating the wasm engine")?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let node_labels = config.cluster.as_ref().map(|cluster| (config.node_name.clone(), cluster.site.clone()));
        let ingress_config = IngressConfig {
            node: node_labels,
            response_cache: ResponseCacheConfig::with_bytes_max(config.response_cache_bytes_max),
            drain_timeout: config.drain.timeout,
            ..IngressConfig::default()
        };
        let ingress = Ingress::new(ingress_config, RouteTable::new());
        let serving = Arc::new(Mutex::new(Serving::default()));
        let placements = Arc::new(PlacementBook::default());
        let compilations = Arc::new(Compilations::default());
        let mut applier = Applier {
            host,
            local,
            ingress: Arc::clone(&ingress),
            loaded: BTreeMap::new(),
            served_from: (String::new(), 0, 0),
            me: config.cluster.as_ref().map(|_| config.node_name.clone()),
            placements: Arc::clone(&placements),
            saved: None,
            serving: Arc::clone(&serving),
            compilations: Arc::clone(&compilations),
            queues: Arc::clone(&queues),
            queues_served: BTreeMap::new(),
        };
        match applier.local.load_state()? {
            Some(saved) => {
                let revision = saved.revision;
                applier.saved = Some(saved.clone());
                applier.apply(saved, None).await;
                tracing::info!(revision, functions = applier.loaded.len(), "serving the state saved on disk");
            }
            None => tracing::info!("no saved state; waiting for the control plane"),
        }
        let admin_listener = match config.admin {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen for admin on {addr}"))?)
            }
            None => None,
        };
        let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let agent = match &config.cluster {
            Some(settings) => {
                let agent = crate::cluster::join(settings, &config.node_name, local_addr, &applier.local)?;
                let forwarder = Forwarder::new(Arc::clone(agent.transport()), &settings.site, ForwardConfig::default())
                    .context("request forwarding")?;
                let replicas = ClusterReplicas {
                    agent: Arc::clone(&agent),
                    me: config.node_name.clone(),
                    placements: Arc::clone(&placements),
                };
                ingress.enable_forwarding(Forwarding { forwarder, replicas: Arc::new(replicas) });
                queues.connect(Arc::clone(&agent), &settings.site, Arc::clone(&placements)).context("job queues")?;
                Some(agent)
            }
            None => None,
        };
        let must_join = config.cluster.as_ref().is_some_and(|cluster| !cluster.seeds.is_empty());
        let readiness = Arc::new(Readiness::new(agent.clone().filter(|_| must_join), &config.control_url));
        let site = config.cluster.as_ref().map(|cluster| cluster.site.clone()).unwrap_or_default();
        let metrics = Arc::new(NodeMetrics::new(
            config.node_name.clone(),
            site,
            Arc::clone(&ingress),
            agent.clone(),
            cache.cache().clone(),
            compilations,
            Arc::clone(&queues),
        ));
        Ok(Self {
            local_addr,
            ingress,
            admin_addr,
            agent,
            readiness,
            metrics,
            listener,
            admin_listener,
            config,
            client,
            applier,
            serving,
            log_lines,
            cache,
            queues,
            queues_stop,
        })
    }

    /// Serves until `shutdown` resolves, following the control plane and
    /// reporting to it; then drains (see the module docs: not ready, the
    /// drain delay, leaving the cluster so that the others record "left",
    /// not "failed", requests in flight) and flushes the functions' cache.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        self.cache.start_reclaiming();
        let (stop_sender, stop) = watch::channel(false);
        let admin = self.admin_listener.map(|listener| {
            let (agent, readiness, metrics) =
                (self.agent.clone(), Arc::clone(&self.readiness), Arc::clone(&self.metrics));
            tokio::spawn(admin::serve(listener, agent, readiness, metrics, Arc::clone(&self.queues), stop.clone()))
        });
        let load = self.agent.clone().map(|agent| {
            let serving = Arc::clone(&self.serving);
            let revision = move || serving.lock().map_or(0, |serving| serving.revision);
            tokio::spawn(crate::cluster::publish_load(agent, Arc::clone(&self.ingress), revision, stop.clone()))
        });
        let (stop_forwarded, forwarded_stopped) = oneshot::channel::<()>();
        let forwarded = self.agent.as_ref().and_then(|agent| agent.transport().accept_streams()).map(|streams| {
            let ingress = Arc::clone(&self.ingress);
            let queues = Arc::clone(&self.queues);
            let handler = move |request: http::Request<hyper::body::Incoming>| {
                let ingress = Arc::clone(&ingress);
                let queues = Arc::clone(&queues);
                async move {
                    if request.headers().contains_key(wedge_router::INTERNAL_HEADER) {
                        queues.handle_peer(request).await
                    } else {
                        ingress.handle_forwarded(request).await
                    }
                }
            };
            let stop = async move {
                let _ = forwarded_stopped.await;
            };
            tokio::spawn(serve_forwarded(streams, handler, ServeConfig::default(), stop))
        });
        let agent = self.agent.clone();
        let report_now = Arc::new(Notify::new());
        let follower = tokio::spawn(follow(
            self.config.clone(),
            self.client.clone(),
            self.applier,
            Arc::clone(&report_now),
            Arc::clone(&self.readiness),
            stop.clone(),
        ));
        let sources = ReportSources {
            ingress_addr: self.local_addr,
            ingress: Arc::clone(&self.ingress),
            serving: self.serving,
            log_lines: self.log_lines,
            agent: agent.clone(),
            report_now,
            queues: Arc::clone(&self.queues),
        };
        let reporter = tokio::spawn(report(self.config.clone(), self.client, sources, stop));
        let ingress = Arc::clone(&self.ingress);
        let (drain, readiness) = (self.config.drain.clone(), Arc::clone(&self.readiness));
        let draining_ingress = Arc::clone(&self.ingress);
        let leaving = agent.clone();
        let draining_queues = Arc::clone(&self.queues);
        let drain_deadline = Arc::new(std::sync::OnceLock::new());
        let deadline = Arc::clone(&drain_deadline);
        ingress
            .serve(self.listener, async move {
                shutdown.await;
                readiness.draining();
                draining_queues.stop_leasing();
                tracing::info!(
                    delay_ms = drain.delay.as_millis() as u64,
                    "draining: not ready, leasing no more jobs, serving on for the drain delay"
                );
                tokio::time::sleep(drain.delay).await;
                // One deadline for what is left: the jobs this node leased end (and their
                // outcomes reach the backup) before it leaves, since its queues then move to
                // other nodes; the requests in flight finish after.
                let end = tokio::time::Instant::now() + drain.timeout;
                let _ = deadline.set(end);
                draining_ingress.drain_by(end);
                if !draining_queues.runs_ended(end).await {
                    tracing::warn!("drain timed out with leased jobs still running; their leases will expire");
                }
                if let Some(agent) = leaving {
                    draining_ingress.start_draining();
                    agent.leave().await;
                    tracing::info!("left the cluster");
                }
                let _ = stop_sender.send(true);
            })
            .await;
        // The ingress drained: the requests peers forwarded before this node left finish
        // too (within what is left of the drain timeout), then the transport closes.
        let _ = stop_forwarded.send(());
        if let Some(mut task) = forwarded {
            let deadline = drain_deadline.get().copied().unwrap_or_else(tokio::time::Instant::now);
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("drain timed out with forwarded requests in flight; cutting them");
                task.abort();
            }
        }
        if let Some(agent) = &agent {
            agent.transport().close().await;
        }
        let _ = follower.await;
        let _ = reporter.await;
        for task in admin.into_iter().chain(load) {
            let _ = task.await;
        }
        let _ = self.queues_stop.send(true);
        self.cache.close().await;
    }
}

/// The replicas of a function as this node sees them: the nodes it is placed
/// on (but this one) that membership holds alive — suspect ones only when no
/// other is left — with their gossiped load.
struct ClusterReplicas {
    agent: Arc<Agent>,
    me: String,
    placements: Arc<PlacementBook>,
}

impl ReplicaSource for ClusterReplicas {
    fn replicas(&self, function: &str) -> Vec<Replica> {
        let placed = self.placements.nodes_of(function);
        let snapshot = self.agent.snapshot();
        let candidates = |wanted: MemberState| -> Vec<Replica> {
            snapshot
                .members
                .iter()
                .filter(|m| !m.local && m.state == wanted && m.identity.name() != self.me)
                .filter(|m| placed.iter().any(|node| node == m.identity.name()))
                .map(|m| Replica {
                    node: m.identity.name().to_string(),
                    site: m.identity.site().to_string(),
                    addr: m.identity.gossip_addr(),
                    gossiped_in_flight: m.load.map_or(0, |load| load.in_flight),
                })
                .collect()
        };
        let alive = candidates(MemberState::Alive);
        if alive.is_empty() { candidates(MemberState::Suspect) } else { alive }
    }
}

/// Owns the loaded functions and turns desired states into route tables.
struct Applier {
    host: Host,
    local: LocalState,
    ingress: Arc<Ingress>,
    /// Every function routed now, with the version record it came from, and
    /// whether it runs here or is forwarded.
    loaded: BTreeMap<String, (VersionRecord, Placed)>,
    /// This node's name when it is in a cluster: then it runs only what is
    /// placed on it. Outside a cluster it runs everything.
    me: Option<String>,
    /// The placements applied (what `replicas` reads).
    placements: Arc<PlacementBook>,
    /// The store and revision the served state came from, as saved on disk.
    /// (store id, revision, placement generation.)
    served_from: (String, u64, u64),
    /// What was last written to `state.json` (to skip rewriting it unchanged).
    saved: Option<DesiredState>,
    serving: Arc<Mutex<Serving>>,
    /// Counts each function's compilations, for `/metrics`.
    compilations: Arc<Compilations>,
    /// Takes the queues' roles and the job functions loaded here.
    queues: Arc<Queues>,
    /// The queue assignments applied (saved with the served state, so a restart
    /// without the control plane takes its last roles again).
    queues_served: BTreeMap<String, wedge_control::api::QueueAssignment>,
}

/// Where a routed function runs.
#[derive(Clone)]
enum Placed {
    /// On this node.
    Here(Function),
    /// On other nodes only: requests are forwarded.
    Elsewhere,
}

/// The placements this node applied, readable by the ingress (through
/// [`ClusterReplicas`]) while the follower writes them.
#[derive(Default)]
pub struct PlacementBook {
    placements: std::sync::RwLock<BTreeMap<String, Vec<String>>>,
}

impl PlacementBook {
    /// The nodes `function` is placed on.
    pub fn nodes_of(&self, function: &str) -> Vec<String> {
        self.placements.read().unwrap_or_else(|p| p.into_inner()).get(function).cloned().unwrap_or_default()
    }

    fn set(&self, placements: BTreeMap<String, Vec<String>>) {
        *self.placements.write().unwrap_or_else(|p| p.into_inner()) = placements;
    }
}

impl Applier {
    /// What this node serves and routes, as a desired state (what
    /// `state.json` holds).
    fn served(&self) -> DesiredState {
        let functions: Vec<VersionRecord> = self.loaded.values().map(|(record, _)| record.clone()).collect();
        let placements = self.placements.placements.read().unwrap_or_else(|p| p.into_inner()).clone();
        DesiredState {
            store_id: self.served_from.0.clone(),
            revision: self.served_from.1,
            functions,
            placements,
            placement_generation: self.served_from.2,
            queues: self.queues_served.clone(),
        }
    }

    /// Whether `name` runs here under `desired`: everything outside a
    /// cluster; in one, what is placed here, and a function the control
    /// plane placed nowhere yet keeps running where it ran.
    fn runs_here(&self, desired: &DesiredState, name: &str) -> bool {
        let Some(me) = &self.me else { return true };
        match desired.placements.get(name) {
            Some(nodes) => nodes.iter().any(|node| node == me),
            None => matches!(self.loaded.get(name), Some((_, Placed::Here(_)))),
        }
    }

    /// Serves `desired`: reuses functions whose record did not change,
    /// loads the others (fetching artifacts through `client`, or only from
    /// disk when it is `None`), swaps the route table, and saves what is now
    /// served. A function that fails to load keeps its previous version (if
    /// any) and is reported.
    async fn apply(&mut self, desired: DesiredState, client: Option<&ControlClient>) {
        let started = Instant::now();
        let mut next = BTreeMap::new();
        let mut errors = Vec::new();
        // Artifacts of what is wanted stay on disk even when loading them
        // failed, so a retry does not fetch them again.
        let wanted: BTreeSet<String> = desired
            .functions
            .iter()
            .filter(|r| self.runs_here(&desired, &r.function))
            .map(|r| r.artifact.clone())
            .collect();
        let mut failed_elsewhere = Vec::new();
        for record in desired.functions.clone() {
            let name = record.function.clone();
            if !self.runs_here(&desired, &name) {
                next.insert(name, (record, Placed::Elsewhere));
                continue;
            }
            if let Some((current, Placed::Here(function))) = self.loaded.get(&name)
                && *current == record
            {
                next.insert(name, (current.clone(), Placed::Here(function.clone())));
                continue;
            }
            match self.load(&record, client).await {
                Ok(function) => {
                    tracing::info!(function = %name, version = record.version, sha256 = %record.artifact.get(..12).unwrap_or_default(), "loaded");
                    next.insert(name, (record, Placed::Here(function)));
                }
                Err(error) => {
                    tracing::warn!(function = %name, version = record.version, "cannot load: {error:#}");
                    errors.push(NodeFunctionError {
                        node: String::new(),
                        function: name.clone(),
                        version: record.version,
                        error: format!("{error:#}"),
                    });
                    match self.loaded.remove(&name) {
                        Some(previous @ (_, Placed::Here(_))) => {
                            next.insert(name, previous);
                        }
                        // Not runnable here: its other replicas may answer.
                        _ => failed_elsewhere.push(record),
                    }
                }
            }
        }
        let mut table = RouteTable::new();
        let routed = next.iter().map(|(name, (record, placed))| (name, record, placed.clone()));
        let failed = failed_elsewhere.iter().map(|record| (&record.function, record, Placed::Elsewhere));
        for (name, record, placed) in routed.chain(failed) {
            let target = match placed {
                Placed::Here(function) => Target::Local(function),
                Placed::Elsewhere => {
                    Target::Remote { name: name.as_str().into(), artifact: record.artifact.as_str().into() }
                }
            };
            for text in &record.routes {
                let inserted = Route::parse(text).and_then(|route| table.insert(route, name, target.clone()));
                if let Err(error) = inserted {
                    errors.push(NodeFunctionError {
                        node: String::new(),
                        function: name.clone(),
                        version: record.version,
                        error: error.to_string(),
                    });
                }
            }
        }
        let served = DesiredState {
            store_id: desired.store_id.clone(),
            revision: desired.revision,
            functions: next.values().map(|(record, _)| record.clone()).collect(),
            placements: desired.placements.clone(),
            placement_generation: desired.placement_generation,
            queues: desired.queues.clone(),
        };
        // Saved before it is served: whatever a client has seen this node
        // serve, a restart without the control plane serves too.
        if self.saved.as_ref() != Some(&served) {
            let (local, to_save) = (self.local.clone(), served.clone());
            match tokio::task::spawn_blocking(move || local.save_state(&to_save)).await {
                Ok(Ok(())) => self.saved = Some(served.clone()),
                Ok(Err(error)) => tracing::warn!(
                    "cannot save the served state (a restart without the control plane would serve an older one): {error:#}"
                ),
                Err(error) => tracing::warn!("saving the served state failed: {error}"),
            }
        }
        self.placements.set(desired.placements.clone());
        self.ingress.set_routes(table);
        let here: BTreeMap<String, Function> = next
            .iter()
            .filter_map(|(name, (_, placed))| match placed {
                Placed::Here(function) => Some((name.clone(), function.clone())),
                Placed::Elsewhere => None,
            })
            .collect();
        self.queues.set_functions(here);
        self.queues.assign(desired.queues.clone()).await;
        self.queues_served = desired.queues.clone();
        // After the swap: the response cache refuses what the replaced
        // versions still answer (it planned those requests before the purge).
        // A function moved between here and elsewhere keeps its record and
        // its entries.
        for (name, (record, _)) in &self.loaded {
            if next.get(name).is_none_or(|(next_record, _)| next_record != record) {
                let purged = self.ingress.purge_response_cache(name);
                tracing::debug!(function = %name, purged, "purged the response cache");
            }
        }
        self.loaded = next;
        let deployed: Vec<&str> = desired.functions.iter().map(|record| record.function.as_str()).collect();
        self.compilations.retain(&deployed);
        self.served_from = (desired.store_id, desired.revision, desired.placement_generation);
        // Only now may the artifacts of what is neither served nor wanted here go.
        let mut keep = wanted;
        keep.extend(self.here().map(|(record, _)| record.artifact.clone()));
        let local = self.local.clone();
        let removed = tokio::task::spawn_blocking(move || local.remove_artifacts_except(&keep)).await;
        if let Ok(Err(error)) = removed {
            tracing::warn!("cannot remove artifacts no longer served: {error:#}");
        }
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Serving {
            revision: desired.revision,
            functions: self.here().map(|(r, _)| (r.function.clone(), r.version)).collect(),
            errors,
        };
        tracing::info!(
            revision = desired.revision,
            functions = served.functions.len(),
            here = self.here().count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "applied desired state"
        );
    }

    /// The functions that run here.
    fn here(&self) -> impl Iterator<Item = (&VersionRecord, &Function)> {
        self.loaded.values().filter_map(|(record, placed)| match placed {
            Placed::Here(function) => Some((record, function)),
            Placed::Elsewhere => None,
        })
    }

    async fn load(&self, record: &VersionRecord, client: Option<&ControlClient>) -> anyhow::Result<Function> {
        let local = self.local.clone();
        let sha256 = record.artifact.clone();
        let stored = tokio::task::spawn_blocking(move || local.read_artifact(&sha256)).await??;
        let bytes = match (stored, client) {
            (Some(bytes), _) => bytes,
            (None, None) => anyhow::bail!("artifact {} is not on this node's disk", record.artifact),
            (None, Some(client)) => {
                let bytes = client.artifact(&record.artifact, record.artifact_bytes).await?;
                let actual = sha256_hex(&bytes);
                anyhow::ensure!(
                    actual == record.artifact,
                    "artifact fetched for {} has sha256 {actual}, expected {}",
                    record.function,
                    record.artifact
                );
                let (local, sha256, bytes) = (self.local.clone(), record.artifact.clone(), bytes.to_vec());
                tokio::task::spawn_blocking(move || local.write_artifact(&sha256, &bytes).map(|()| bytes)).await??
            }
        };
        let (host, spec) = (self.host.clone(), record.function_spec());
        let loaded = tokio::task::spawn_blocking(move || host.load(spec, &bytes)).await?;
        self.compilations.record(&record.function, loaded.is_ok());
        Ok(loaded?)
    }
}

/// What the follower does with a desired state it polled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// It serves exactly that already.
    UpToDate,
    /// Load what differs and swap.
    Apply,
    /// The state comes from another store (a new or wrong data directory on
    /// the control plane) and would remove everything this node serves:
    /// keep serving, and say so loudly. An operator who means it removes the
    /// node's `state.json` and restarts it.
    RefuseEmptyFromOtherStore {
        /// The store this node followed.
        followed: String,
        /// The store the control plane has now.
        offered: String,
    },
}

/// The records of a state by function name (order-insensitive comparison).
fn by_name(state: &DesiredState) -> BTreeMap<&str, &VersionRecord> {
    state.functions.iter().map(|r| (r.function.as_str(), r)).collect()
}

/// Decides by content, not by revision number alone: a function that failed
/// to load (so is served at an older version, or not at all) is tried again
/// even when the revision has not moved, and after a restart too.
fn decide(served: &DesiredState, desired: &DesiredState) -> Decision {
    let other_store =
        !served.store_id.is_empty() && !desired.store_id.is_empty() && served.store_id != desired.store_id;
    if other_store && desired.functions.is_empty() && !served.functions.is_empty() {
        return Decision::RefuseEmptyFromOtherStore {
            followed: served.store_id.clone(),
            offered: desired.store_id.clone(),
        };
    }
    if served.store_id == desired.store_id
        && served.revision == desired.revision
        && by_name(served) == by_name(desired)
        && served.placements == desired.placements
        && served.queues == desired.queues
    {
        Decision::UpToDate
    } else {
        Decision::Apply
    }
}

/// The follower task: long-polls desired state and applies each change,
/// telling `readiness` when one is applied (or why none is yet).
async fn follow(
    config: FollowerConfig,
    client: ControlClient,
    mut applier: Applier,
    report_now: Arc<Notify>,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
) {
    // The first poll asks for the current state whatever its revision, so a
    // restart catches up at once.
    let mut after = 0;
    let mut placement = 0;
    let mut retry_delay = Duration::from_millis(200);
    let mut unreachable_since: Option<Instant> = None;
    // Whether the last desired state could not be served exactly (a load
    // failed, or it was refused): then poll again after a short wait.
    let mut behind = false;
    loop {
        let wait = if behind { LOAD_RETRY } else { config.long_poll };
        let polled = tokio::select! {
            polled = client.desired_state(after, placement, wait) => polled,
            _ = stop.changed() => return,
        };
        match polled {
            Ok(desired) => {
                if unreachable_since.take().is_some() {
                    tracing::info!(control = %client.url(), "control plane reachable again");
                }
                retry_delay = Duration::from_millis(200);
                let served = applier.served();
                if desired.store_id == served.store_id && desired.revision < served.revision {
                    tracing::warn!(
                        served = served.revision,
                        offered = desired.revision,
                        "the control plane's revision went backwards; following it"
                    );
                }
                after = desired.revision;
                placement = desired.placement_generation;
                match decide(&served, &desired) {
                    Decision::UpToDate => {
                        behind = false;
                        readiness.applied(desired.revision);
                    }
                    Decision::Apply => {
                        applier.apply(desired.clone(), Some(&client)).await;
                        behind = decide(&applier.served(), &desired) != Decision::UpToDate;
                        // Applied even when a function failed to load: it is reported, and
                        // the node serves everything else.
                        readiness.applied(desired.revision);
                        report_now.notify_one();
                    }
                    Decision::RefuseEmptyFromOtherStore { followed, offered } => {
                        readiness.waiting(format!(
                            "refused the control plane's empty desired state from store {offered} (this node \
                             followed store {followed})"
                        ));
                        tracing::error!(
                            control = %client.url(),
                            followed, offered,
                            "the control plane has another store than the one this node followed, and it deploys \
                             nothing; keeping what this node serves. If that store is the right one now, remove \
                             state.json from this node's data directory and restart it"
                        );
                        behind = true;
                    }
                }
            }
            Err(error) => {
                readiness.waiting(format!("cannot reach the control plane at {}: {error:#}", client.url()));
                if unreachable_since.is_none() {
                    unreachable_since = Some(Instant::now());
                    tracing::warn!("cannot follow the control plane (serving what this node has): {error:#}");
                }
                tokio::select! {
                    () = tokio::time::sleep(retry_delay) => {}
                    _ = stop.changed() => return,
                }
                retry_delay = (retry_delay * 2).min(RETRY_DELAY_MAX);
            }
        }
    }
}

/// What the control plane's scheduler needs from a node in a cluster: its
/// site, life and load, per-function in-flight, and whom it sees gone.
fn cluster_report(agent: &Agent, ingress: &Ingress) -> NodeCluster {
    let snapshot = agent.snapshot();
    let me = &snapshot.members[0];
    let load = me.load.unwrap_or_default();
    let mut function_in_flight = BTreeMap::new();
    for (name, target) in ingress.routes().targets() {
        if let Target::Local(function) = target {
            let running = u32::try_from(function.running_instances()).unwrap_or(u32::MAX);
            function_in_flight.insert(name.to_string(), running);
        }
    }
    let down = snapshot
        .members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Down | MemberState::Left))
        .map(|m| (m.identity.name().to_string(), m.identity.incarnation()))
        .collect();
    NodeCluster {
        site: me.identity.site().to_string(),
        incarnation: me.identity.incarnation(),
        in_flight: function_in_flight.values().sum(),
        cpu_permille: load.cpu_permille,
        function_in_flight,
        down,
    }
}

/// Each function's traffic counters since it was loaded here, for the
/// control plane's rates and quantiles.
fn traffic(ingress: &Ingress) -> Vec<FunctionTraffic> {
    let mut traffic: BTreeMap<&str, FunctionTraffic> = BTreeMap::new();
    let routes = ingress.routes();
    for (name, target) in routes.targets() {
        let Target::Local(function) = target else { continue };
        traffic.entry(name).or_insert_with(|| {
            let stats = function.stats();
            FunctionTraffic {
                function: name.to_string(),
                requests: stats.requests_total(),
                errors: stats.requests(StatusClass::ServerError),
                duration_bounds_seconds: DURATION_BOUNDS_SECONDS.to_vec(),
                duration_counts: stats.duration.cumulative_counts(),
            }
        });
    }
    traffic.into_values().collect()
}

/// What the reporter reads.
struct ReportSources {
    ingress_addr: SocketAddr,
    /// Where the functions' traffic counters are read.
    ingress: Arc<Ingress>,
    serving: Arc<Mutex<Serving>>,
    log_lines: mpsc::Receiver<GuestLogLine>,
    /// Membership, in a cluster: for [`cluster_report`].
    agent: Option<Arc<Agent>>,
    /// Notified after every applied change: report at once.
    report_now: Arc<Notify>,
    /// What the node holds of its job queues.
    queues: Arc<Queues>,
}

/// The reporter task: what this node serves plus guest output, at least
/// every `report_interval`, at once after a change, shortly after guest
/// output, and at once when a queue command's result is ready. The queue
/// commands in the control plane's answer run on the queues in a task of
/// their own, one after another; their results come back through a channel.
async fn report(
    config: FollowerConfig,
    client: ControlClient,
    sources: ReportSources,
    mut stop: watch::Receiver<bool>,
) {
    let ReportSources { ingress_addr, ingress, serving, mut log_lines, agent, report_now, queues } = sources;
    let mut interval = tokio::time::interval(config.report_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    let mut pending: Vec<LogLine> = Vec::new();
    let (results_done, mut results) = mpsc::channel::<QueueCommandResult>(QUEUE_RESULTS_MAX);
    let mut outbox = ResultsOutbox::default();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = report_now.notified() => {}
            Some(result) = results.recv() => outbox.push(result),
            Some(line) = log_lines.recv() => {
                pending.push(to_log_line(line));
                tokio::time::sleep(LOG_BATCH_DELAY).await;
            }
            _ = stop.changed() => return,
        }
        let mut pending_bytes: usize = pending.iter().map(json_bytes).sum();
        while pending.len() < LOG_LINES_PER_REPORT_MAX && pending_bytes < LOG_BYTES_PER_REPORT_MAX {
            match log_lines.try_recv() {
                Ok(line) => {
                    let line = to_log_line(line);
                    pending_bytes += json_bytes(&line);
                    pending.push(line);
                }
                Err(_) => break,
            }
        }
        while let Ok(result) = results.try_recv() {
            outbox.push(result);
        }
        let status = serving.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let report = NodeReport {
            ingress: ingress_addr.to_string(),
            applied_revision: status.revision,
            serving: status.functions,
            errors: status.errors,
            logs: std::mem::take(&mut pending),
            cluster: agent.as_deref().map(|agent| cluster_report(agent, &ingress)),
            traffic: traffic(&ingress),
            queues: queues.reports(),
            queue_results: outbox.batch(&config.node_name),
        };
        match client.report(&config.node_name, &report).await {
            Ok(answer) => {
                if failing_since.take().is_some() {
                    tracing::info!("reporting to the control plane again");
                }
                outbox.sent(&report.queue_results);
                for unreadable in answer.unreadable {
                    outbox.push(unreadable);
                }
                if !outbox.is_empty() {
                    // Results past this report's budget, or answers to commands it
                    // could not read: the next report goes at once.
                    report_now.notify_one();
                }
                if !answer.commands.is_empty() {
                    let (queues, done) = (Arc::clone(&queues), results_done.clone());
                    tokio::spawn(async move {
                        for command in answer.commands {
                            let _ = done.send(queues.run_command(command).await).await;
                        }
                    });
                }
            }
            Err(error) => {
                // Results are kept for the next report: their operators may
                // still be waiting. A report the control plane refused (4xx)
                // would be refused again with them, so they go back as errors.
                let refused = error.downcast_ref::<ErrorStatus>().is_some_and(|answer| answer.status.is_client_error());
                outbox.failed(report.queue_results, refused, &config.node_name);
                // Lines that could not be sent are dropped: the buffer stays
                // bounded while the control plane is away.
                if failing_since.is_none_or(|since| since.elapsed() > REPORT_FAILURE_LOG_EVERY) {
                    tracing::warn!(dropped_lines = report.logs.len(), "cannot report to the control plane: {error:#}");
                    failing_since = Some(Instant::now());
                }
            }
        }
    }
}

/// Queue command results waiting to go out in a report, oldest first: at most
/// [`QUEUE_RESULTS_MAX`] (the oldest are dropped), and at most
/// [`QUEUE_RESULT_BYTES_PER_REPORT_MAX`] of them per report.
#[derive(Debug, Default)]
struct ResultsOutbox {
    waiting: VecDeque<QueueCommandResult>,
    /// Results that went back as errors after the control plane refused the report
    /// that carried them, by id: a second refusal drops them. Only ids waiting or
    /// in the report being sent.
    refused_once: BTreeSet<u64>,
}

impl ResultsOutbox {
    fn push(&mut self, result: QueueCommandResult) {
        self.waiting.push_back(result);
        while self.waiting.len() > QUEUE_RESULTS_MAX {
            if let Some(dropped) = self.waiting.pop_front() {
                self.refused_once.remove(&dropped.id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The results for the next report, oldest first, within the byte budget; the
    /// rest wait. A result larger than the whole budget goes as an error saying so.
    fn batch(&mut self, node: &str) -> Vec<QueueCommandResult> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(result) = self.waiting.front() {
            let mut size = json_len(result);
            if size > QUEUE_RESULT_BYTES_PER_REPORT_MAX {
                let why = format!("node {node}: the command's result ({size} bytes) is too large to report");
                let error = QueueCommandResult { id: result.id, outcome: Err(why) };
                size = json_len(&error);
                self.waiting[0] = error;
            }
            if bytes + size > QUEUE_RESULT_BYTES_PER_REPORT_MAX {
                break;
            }
            bytes += size;
            batch.extend(self.waiting.pop_front());
        }
        batch
    }

    /// The report carrying `batch` reached the control plane.
    fn sent(&mut self, batch: &[QueueCommandResult]) {
        for result in batch {
            self.refused_once.remove(&result.id);
        }
    }

    /// The report carrying `batch` failed: its results wait again, ahead of newer
    /// ones. When the control plane `refused` it (it would refuse it again), each
    /// goes back as an error saying so, once; one refused twice is dropped, and its
    /// operator's wait times out.
    fn failed(&mut self, batch: Vec<QueueCommandResult>, refused: bool, node: &str) {
        for result in batch.into_iter().rev() {
            if !refused {
                self.waiting.push_front(result);
            } else if !self.refused_once.remove(&result.id) {
                self.refused_once.insert(result.id);
                let why = format!("node {node}: the control plane refused the report that carried the result");
                self.waiting.push_front(QueueCommandResult { id: result.id, outcome: Err(why) });
            }
        }
    }
}

/// Bytes a queue command result takes in a report's JSON.
fn json_len(result: &QueueCommandResult) -> usize {
    serde_json::to_vec(result).map_or(usize::MAX, |json| json.len() + 1)
}

/// Bytes a line takes in a report's JSON.
fn json_bytes(line: &LogLine) -> usize {
    serde_json::to_vec(line).map_or(LOG_BYTES_PER_REPORT_MAX, |json| json.len() + 1)
}

fn to_log_line(line: GuestLogLine) -> LogLine {
    LogLine {
        seq: 0,
        unix_ms: line.unix_ms,
        node: String::new(),
        function: line.function.to_string(),
        request_id: line.request_id.to_string(),
        stream: line.stream.as_str().to_string(),
        line: line.line,
    }
}

#[cfg(test)]
mod tests {
    use wedge_control::api::QueueCommandOutput;

    use super::*;

    fn record(name: &str, version: u64) -> VersionRecord {
        VersionRecord {
            function: name.into(),
            version,
            artifact: format!("{version:064}"),
            artifact_bytes: 1,
            routes: vec![format!("/{name}")],
            limits: Default::default(),
            config: Default::default(),
            env: Default::default(),
            allowed_outbound_hosts: vec![],
            created_unix_ms: 1,
            replicas: Default::default(),
            queue: None,
            cache: None,
        }
    }

    fn state(store: &str, revision: u64, functions: Vec<VersionRecord>) -> DesiredState {
        DesiredState { store_id: store.into(), revision, functions, ..DesiredState::default() }
    }

    #[test]
    fn the_same_state_is_up_to_date() {
        let served = state("s", 3, vec![record("a", 1), record("b", 2)]);
        let desired = state("s", 3, vec![record("b", 2), record("a", 1)]);
        assert_eq!(decide(&served, &desired), Decision::UpToDate);
    }

    #[test]
    fn a_function_that_failed_to_load_is_retried_at_the_same_revision() {
        // Desired says a@2; the node still serves a@1 (loading 2 failed),
        // possibly saved that way before a restart.
        let served = state("s", 3, vec![record("a", 1)]);
        let desired = state("s", 3, vec![record("a", 2)]);
        assert_eq!(decide(&served, &desired), Decision::Apply);
        let missing = state("s", 3, vec![]);
        assert_eq!(decide(&missing, &state("s", 3, vec![record("a", 1)])), Decision::Apply);
    }

    #[test]
    fn a_new_revision_or_store_is_applied() {
        let served = state("s", 3, vec![record("a", 1)]);
        assert_eq!(decide(&served, &state("s", 4, vec![record("a", 1)])), Decision::Apply);
        assert_eq!(decide(&served, &state("t", 3, vec![record("a", 1)])), Decision::Apply);
        // A node that never followed a store takes whatever comes.
        assert_eq!(decide(&state("", 0, vec![]), &state("t", 0, vec![])), Decision::Apply);
    }

    #[test]
    fn an_empty_state_from_another_store_is_refused() {
        let served = state("s", 9, vec![record("a", 1)]);
        assert_eq!(
            decide(&served, &state("t", 0, vec![])),
            Decision::RefuseEmptyFromOtherStore { followed: "s".into(), offered: "t".into() }
        );
        // From the same store, removing everything is an ordinary change.
        assert_eq!(decide(&served, &state("s", 10, vec![])), Decision::Apply);
    }

    #[test]
    fn report_batches_are_bounded_in_bytes() {
        let line = LogLine {
            seq: 0,
            unix_ms: 0,
            node: String::new(),
            function: "f".into(),
            request_id: "r".into(),
            stream: "stdout".into(),
            line: "\u{1b}".repeat(4096),
        };
        // Control characters take six bytes each in JSON.
        assert!(json_bytes(&line) > 6 * 4096);
        assert!(LOG_BYTES_PER_REPORT_MAX / json_bytes(&line) < LOG_LINES_PER_REPORT_MAX);
    }

    fn peeked(id: u64, jobs: usize) -> QueueCommandResult {
        let job = wedge_control::api::JobSummary {
            id: "1-1".into(),
            state: "dead".into(),
            attempt: 3,
            idempotency_key: None,
            enqueued_at_unix_ms: 0,
            run_at_unix_ms: None,
            last_error: Some("e".repeat(500)),
            payload_bytes: 256,
            payload_preview: "p".repeat(256),
        };
        QueueCommandResult { id, outcome: Ok(QueueCommandOutput::Jobs(vec![job; jobs])) }
    }

    fn ids(results: &[QueueCommandResult]) -> Vec<u64> {
        results.iter().map(|result| result.id).collect()
    }

    #[test]
    fn results_go_out_within_a_byte_budget_per_report_and_the_rest_wait() {
        let mut outbox = ResultsOutbox::default();
        // Three peeks of about 900 KiB each: one report holds one of them.
        for id in 1..=3 {
            outbox.push(peeked(id, 1_000));
        }
        let first = outbox.batch("n1");
        assert_eq!(ids(&first), [1]);
        assert!(first.iter().map(json_len).sum::<usize>() <= QUEUE_RESULT_BYTES_PER_REPORT_MAX);
        outbox.sent(&first);
        assert_eq!(ids(&outbox.batch("n1")), [2]);
        assert_eq!(ids(&outbox.batch("n1")), [3]);
        assert!(outbox.is_empty());
        // A result larger than a whole report's budget goes as an error.
        outbox.push(peeked(4, 3_000));
        let too_large = outbox.batch("n1");
        assert_eq!(ids(&too_large), [4]);
        assert!(matches!(&too_large[0].outcome, Err(why) if why.contains("too large to report")), "{too_large:?}");
        // Small ones go together; at most QUEUE_RESULTS_MAX wait (the oldest go).
        for id in 0..(QUEUE_RESULTS_MAX as u64 + 6) {
            outbox.push(peeked(id, 1));
        }
        assert_eq!(ids(&outbox.batch("n1")), (6..QUEUE_RESULTS_MAX as u64 + 6).collect::<Vec<_>>());
    }

    #[test]
    fn results_of_a_refused_report_go_back_as_errors_once() {
        let mut outbox = ResultsOutbox::default();
        outbox.push(peeked(1, 10));
        outbox.push(peeked(2, 10));
        // The control plane cannot be reached: the results wait, unchanged and in order.
        let batch = outbox.batch("n1");
        outbox.failed(batch.clone(), false, "n1");
        assert_eq!(outbox.batch("n1"), batch);
        // It refuses the report (4xx): each goes back as an error saying so.
        outbox.failed(batch, true, "n1");
        let errors = outbox.batch("n1");
        assert_eq!(ids(&errors), [1, 2]);
        assert!(errors.iter().all(|r| matches!(&r.outcome, Err(why) if why.contains("refused the report"))));
        // Refused again: dropped, not resent for ever.
        outbox.failed(errors, true, "n1");
        assert!(outbox.is_empty());
        assert!(outbox.refused_once.is_empty());
        // An error that did get through is forgotten.
        outbox.push(peeked(3, 1));
        let batch = outbox.batch("n1");
        outbox.failed(batch, true, "n1");
        let errors = outbox.batch("n1");
        outbox.sent(&errors);
        assert!(outbox.refused_once.is_empty());
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let config = FollowerConfig::new(
            "n".into(),
            "127.0.0.1:0".parse().unwrap(),
            "/tmp/x".into(),
            "http://127.0.0.1:1".into(),
            "secret-token-value".into(),
        );
        assert!(!format!("{config:?}").contains("secret-token-value"));
    }
}
