//! A node that follows a control plane: it serves what the control plane's
//! desired state says, and keeps serving it when the control plane is gone.
//!
//! Three tasks, each owning its part:
//! - the **follower** long-polls `GET /v1/state`, and for each new revision
//!   fetches missing artifacts by hash, verifies them, compiles them (the
//!   host caches compiled code on disk), saves what it is about to serve to
//!   the data directory, then swaps the ingress's route table in one step;
//! - the **reporter** tells the control plane what this node serves, what
//!   failed to load, and ships guest output lines (for `wedge logs`);
//! - the **ingress** serves HTTP throughout; a swap never touches a request
//!   in flight.
//!
//! On start, before talking to anyone, the node loads what it served last
//! time from its own disk ([`LocalState`]), so a restart while the control
//! plane is down serves everything it served before (static stability).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use wedge_control::api::{DesiredState, LogLine, NodeFunctionError, NodeReport, VersionRecord};
use wedge_host::{Function, GuestLogLine, GuestLogSink, Host, HostConfig};
use wedge_router::{Ingress, IngressConfig, Route, RouteTable};

use crate::control_client::ControlClient;
use crate::local_state::{LocalState, sha256_hex};

/// Guest lines buffered between reports; beyond it, lines are dropped.
const LOG_LINES_BUFFERED_MAX: usize = 10_000;
/// Most guest lines sent in one report.
const LOG_LINES_PER_REPORT_MAX: usize = 2_000;
/// How long the reporter waits after a guest line for more to batch with it.
const LOG_BATCH_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between retries when the control plane cannot be reached.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often a function that failed to load is tried again.
const LOAD_RETRY: Duration = Duration::from_secs(5);

/// Settings of a following node.
#[derive(Debug, Clone)]
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
    listener: TcpListener,
    config: FollowerConfig,
    client: ControlClient,
    applier: Applier,
    serving: Arc<Mutex<Serving>>,
    log_lines: mpsc::Receiver<GuestLogLine>,
}

impl FollowingNode {
    /// Creates the engine, serves what was saved in the data directory (no
    /// network needed), and binds the listener.
    pub async fn start(config: FollowerConfig) -> anyhow::Result<Self> {
        wedge_host::validate_name(&config.node_name)
            .map_err(|_| anyhow::anyhow!("node name {:?}: use 1-63 of a-z, 0-9 and '-'", config.node_name))?;
        let client = ControlClient::new(&config.control_url, &config.token)?;
        let local = LocalState::open(&config.data_dir)?;
        let (sink, log_lines) = GuestLogSink::bounded(LOG_LINES_BUFFERED_MAX);
        let host = Host::new(HostConfig {
            cache_dir: Some(local.compiled_dir()),
            log_sink: Some(sink),
            ..HostConfig::default()
        })
        .context("creating the wasm engine")?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let ingress = Ingress::new(IngressConfig::default(), RouteTable::new());
        let serving = Arc::new(Mutex::new(Serving::default()));
        let mut applier = Applier {
            host,
            local,
            ingress: Arc::clone(&ingress),
            loaded: BTreeMap::new(),
            serving: Arc::clone(&serving),
        };
        match applier.local.load_state()? {
            Some(saved) => {
                let revision = saved.revision;
                applier.apply(saved, None).await;
                tracing::info!(revision, functions = applier.loaded.len(), "serving the state saved on disk");
            }
            None => tracing::info!("no saved state; waiting for the control plane"),
        }
        Ok(Self { local_addr, ingress, listener, config, client, applier, serving, log_lines })
    }

    /// Serves until `shutdown` resolves, following the control plane and
    /// reporting to it; then drains in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_sender, stop) = watch::channel(false);
        let report_now = Arc::new(Notify::new());
        let follower = tokio::spawn(follow(
            self.config.clone(),
            self.client.clone(),
            self.applier,
            Arc::clone(&report_now),
            stop.clone(),
        ));
        let reporter = tokio::spawn(report(
            self.config.clone(),
            self.client,
            self.local_addr,
            self.serving,
            self.log_lines,
            report_now,
            stop,
        ));
        let ingress = Arc::clone(&self.ingress);
        ingress
            .serve(self.listener, async move {
                shutdown.await;
                let _ = stop_sender.send(true);
            })
            .await;
        let _ = follower.await;
        let _ = reporter.await;
    }
}

/// Owns the loaded functions and turns desired states into route tables.
struct Applier {
    host: Host,
    local: LocalState,
    ingress: Arc<Ingress>,
    /// Every function served now, with the version record it came from.
    loaded: BTreeMap<String, (VersionRecord, Function)>,
    serving: Arc<Mutex<Serving>>,
}

impl Applier {
    fn revision(&self) -> u64 {
        self.serving.lock().unwrap_or_else(|p| p.into_inner()).revision
    }

    fn has_errors(&self) -> bool {
        !self.serving.lock().unwrap_or_else(|p| p.into_inner()).errors.is_empty()
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
        for record in desired.functions {
            let name = record.function.clone();
            if let Some((current, function)) = self.loaded.get(&name)
                && *current == record
            {
                next.insert(name, (current.clone(), function.clone()));
                continue;
            }
            match self.load(&record, client).await {
                Ok(function) => {
                    tracing::info!(function = %name, version = record.version, sha256 = %record.artifact.get(..12).unwrap_or_default(), "loaded");
                    next.insert(name, (record, function));
                }
                Err(error) => {
                    tracing::warn!(function = %name, version = record.version, "cannot load: {error:#}");
                    errors.push(NodeFunctionError {
                        node: String::new(),
                        function: name.clone(),
                        version: record.version,
                        error: format!("{error:#}"),
                    });
                    if let Some(previous) = self.loaded.remove(&name) {
                        next.insert(name, previous);
                    }
                }
            }
        }
        let mut table = RouteTable::new();
        for (name, (record, function)) in &next {
            for text in &record.routes {
                let inserted = Route::parse(text).and_then(|route| table.insert(route, name, function.clone()));
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
            store_id: String::new(),
            revision: desired.revision,
            functions: next.values().map(|(record, _)| record.clone()).collect(),
        };
        // Saved before it is served: whatever a client has seen this node
        // serve, a restart without the control plane serves too.
        let (local, to_save) = (self.local.clone(), served.clone());
        match tokio::task::spawn_blocking(move || local.save_state(&to_save)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                "cannot save the served state (a restart without the control plane would serve an older one): {error:#}"
            ),
            Err(error) => tracing::warn!("saving the served state failed: {error}"),
        }
        self.ingress.set_routes(table);
        self.loaded = next;
        // Only now may the artifacts of what is no longer served go.
        let (local, keep) = (self.local.clone(), served.functions.iter().map(|r| r.artifact.clone()).collect());
        let removed = tokio::task::spawn_blocking(move || local.remove_artifacts_except(&keep)).await;
        if let Ok(Err(error)) = removed {
            tracing::warn!("cannot remove artifacts no longer served: {error:#}");
        }
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Serving {
            revision: desired.revision,
            functions: served.functions.iter().map(|r| (r.function.clone(), r.version)).collect(),
            errors,
        };
        tracing::info!(
            revision = desired.revision,
            functions = served.functions.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "applied desired state"
        );
    }

    async fn load(&self, record: &VersionRecord, client: Option<&ControlClient>) -> anyhow::Result<Function> {
        let local = self.local.clone();
        let sha256 = record.artifact.clone();
        let stored = tokio::task::spawn_blocking(move || local.read_artifact(&sha256)).await??;
        let bytes = match (stored, client) {
            (Some(bytes), _) => bytes,
            (None, None) => anyhow::bail!("artifact {} is not on this node's disk", record.artifact),
            (None, Some(client)) => {
                let bytes = client.artifact(&record.artifact).await?;
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
        Ok(tokio::task::spawn_blocking(move || host.load(spec, &bytes)).await??)
    }
}

/// The follower task: long-polls desired state and applies each change.
async fn follow(
    config: FollowerConfig,
    client: ControlClient,
    mut applier: Applier,
    report_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // The first poll asks for the current state whatever its revision, so a
    // restart retries what failed before and catches up at once.
    let mut after = 0;
    let mut retry_delay = Duration::from_millis(200);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let wait = if applier.has_errors() { LOAD_RETRY } else { config.long_poll };
        let polled = tokio::select! {
            polled = client.desired_state(after, wait) => polled,
            _ = stop.changed() => return,
        };
        match polled {
            Ok(desired) => {
                if unreachable_since.take().is_some() {
                    tracing::info!(control = %client.url(), "control plane reachable again");
                }
                retry_delay = Duration::from_millis(200);
                after = desired.revision;
                if desired.revision != applier.revision() || applier.has_errors() {
                    applier.apply(desired, Some(&client)).await;
                    report_now.notify_one();
                }
            }
            Err(error) => {
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

/// The reporter task: what this node serves plus guest output, at least
/// every `report_interval`, at once after a change, and shortly after guest
/// output.
async fn report(
    config: FollowerConfig,
    client: ControlClient,
    ingress_addr: SocketAddr,
    serving: Arc<Mutex<Serving>>,
    mut log_lines: mpsc::Receiver<GuestLogLine>,
    report_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(config.report_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut pending: Vec<LogLine> = Vec::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = report_now.notified() => {}
            Some(line) = log_lines.recv() => {
                pending.push(to_log_line(line));
                tokio::time::sleep(LOG_BATCH_DELAY).await;
            }
            _ = stop.changed() => return,
        }
        while pending.len() < LOG_LINES_PER_REPORT_MAX {
            match log_lines.try_recv() {
                Ok(line) => pending.push(to_log_line(line)),
                Err(_) => break,
            }
        }
        let status = serving.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let report = NodeReport {
            ingress: ingress_addr.to_string(),
            applied_revision: status.revision,
            serving: status.functions,
            errors: status.errors,
            logs: std::mem::take(&mut pending),
        };
        match client.report(&config.node_name, &report).await {
            Ok(()) => failing = false,
            Err(error) => {
                // Lines that could not be sent are dropped: the buffer stays
                // bounded while the control plane is away.
                if !failing {
                    tracing::debug!("cannot report to the control plane: {error:#}");
                }
                failing = true;
            }
        }
    }
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
