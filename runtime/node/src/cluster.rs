//! How a node joins its cluster: its certificate, its identity and the membership agent.
//!
//! - **Certificate**: the node's certificate and key come from the cluster directory
//!   (`nodes/<name>.pem`, see [`wedge_cluster::pki`]). When the node has none there and the
//!   directory holds the CA key, the node issues its own (what `wedge cluster issue-cert`
//!   would do); without the CA key it refuses to start and says how to get one.
//! - **Identity**: a stable node id and an incarnation, kept in `<data-dir>/cluster.json`.
//!   Every start takes an incarnation above every earlier one: the larger of the stored one
//!   plus one and the wall clock in milliseconds, so the cluster sees a restart as a new life
//!   (not the dead old one) even if the data directory was wiped or the clock stepped back.
//! - **Agent**: the transport is bound on the gossip address and the
//!   [`Agent`](wedge_cluster::agent::Agent) runs membership over it; [`publish_load`]
//!   feeds it the node's load.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::watch;
use wedge_cluster::agent::{Agent, AgentConfig};
use wedge_cluster::membership::{Config, Identity, LoadSummary, NodeId};
use wedge_cluster::pki::{ClusterCa, NodeCert, PkiError};
use wedge_cluster::transport::{Transport, TransportConfig};

use wedge_router::{Ingress, Target};

use crate::admin::stopped;
use crate::local_state::LocalState;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The cluster directory: `ca.pem`, and this node's certificate (or the CA key to make
    /// one).
    pub cluster_dir: PathBuf,
    /// The site this node runs in.
    pub site: String,
    /// Where the cluster transport binds (UDP).
    pub gossip: SocketAddr,
    /// The IP address peers reach this node at, when `gossip` or the HTTP listener is bound
    /// to an unspecified address (`0.0.0.0`).
    pub advertise: Option<IpAddr>,
    /// Join seeds, `host:port`.
    pub seeds: Vec<String>,
    /// About how many nodes the cluster has (sizes suspicion and gossip; see
    /// [`Config::lan`]).
    pub expected_size: usize,
}

impl ClusterSettings {
    /// The address peers use for `bound`: `bound` itself, or the advertised IP on its port
    /// when it is unspecified.
    fn advertised(&self, bound: SocketAddr, what: &str) -> anyhow::Result<SocketAddr> {
        if !bound.ip().is_unspecified() {
            return Ok(bound);
        }
        match self.advertise {
            Some(ip) if !ip.is_unspecified() => Ok(SocketAddr::new(ip, bound.port())),
            _ => bail!(
                "the {what} address {bound} is unspecified: pass --advertise IP, the address other nodes reach \
                 this one at"
            ),
        }
    }
}

/// Makes sure node `name` has a certificate in `dir`, issuing it from the CA there when it
/// has none; returns whether one was issued.
pub fn ensure_node_certificate(dir: &std::path::Path, name: &str) -> anyhow::Result<bool> {
    match NodeCert::load(dir, name) {
        Ok(_) => Ok(false),
        Err(PkiError::NodeCertMissing { .. }) => {
            let ca = ClusterCa::load(dir).with_context(|| {
                format!(
                    "node {name:?} has no certificate in {}/nodes and the CA key to issue one is not there: run \
                     `wedge cluster issue-cert --dir CA_DIR --name {name}` where the CA key is and copy \
                     nodes/{name}.pem and nodes/{name}-key.pem here",
                    dir.display()
                )
            })?;
            let cert = ca.issue_node_cert(name, &[])?;
            cert.write(dir).with_context(|| format!("writing the certificate of node {name:?}"))?;
            tracing::info!(node = name, dir = %dir.display(), "issued this node's certificate from the cluster CA");
            Ok(true)
        }
        Err(error) => Err(error).with_context(|| format!("the certificate of node {name:?}")),
    }
}

/// Joins the cluster: certificate, identity, transport, agent. `http_addr` is where the
/// node's ingress listens.
pub fn join(
    settings: &ClusterSettings,
    name: &str,
    http_addr: SocketAddr,
    local: &LocalState,
) -> anyhow::Result<Arc<Agent>> {
    ensure_node_certificate(&settings.cluster_dir, name)?;
    let transport_config = TransportConfig::from_cluster_dir(&settings.cluster_dir, name)
        .with_context(|| format!("loading node {name:?}'s certificate from {}", settings.cluster_dir.display()))?;
    let transport = Arc::new(
        Transport::bind(settings.gossip, transport_config)
            .with_context(|| format!("cannot bind the cluster transport on {}", settings.gossip))?,
    );
    let bound = transport.local_addr().context("the cluster transport's address")?;
    let gossip_addr = settings.advertised(bound, "gossip")?;
    let http_addr = settings.advertised(http_addr, "HTTP")?;
    let (node_id, incarnation) = local.begin_incarnation(unix_ms())?;
    let identity = Identity::new(NodeId(node_id), name, &settings.site, gossip_addr, http_addr, incarnation)
        .context("this node's cluster identity")?;
    let config = AgentConfig {
        identity,
        membership: Config::lan(settings.expected_size.max(1)),
        seeds: settings.seeds.clone(),
        rng_seed: random_u64(),
    };
    let agent = Agent::start(transport, config).context("starting membership")?;
    tracing::info!(
        node = name,
        site = %settings.site,
        %gossip_addr,
        node_id = %NodeId(node_id),
        incarnation,
        seeds = ?settings.seeds,
        "cluster transport up"
    );
    Ok(Arc::new(agent))
}

/// How often the node's load is measured and handed to membership (which broadcasts it at
/// its own pace).
pub const LOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Measures this node's load every [`LOAD_INTERVAL`] and hands it to `agent` until `stop`
/// turns true. In-flight requests and instances are the same count here (every request runs
/// in its own instance); `applied_revision` is asked of the caller.
pub async fn publish_load(
    agent: Arc<Agent>,
    ingress: Arc<Ingress>,
    applied_revision: impl Fn() -> u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut cpu = CpuMeter::new();
    loop {
        let table = ingress.routes();
        let mut running = BTreeMap::new();
        for (owner, target) in table.targets() {
            if let Target::Local(function) = target {
                running.insert(owner, function.running_instances());
            }
        }
        let instances = u32::try_from(running.values().sum::<usize>()).unwrap_or(u32::MAX);
        agent.set_load(LoadSummary {
            in_flight: instances,
            instances,
            cpu_permille: cpu.sample(),
            functions_ready: u32::try_from(running.len()).unwrap_or(u32::MAX),
            applied_revision: applied_revision(),
        });
        tokio::select! {
            () = tokio::time::sleep(LOAD_INTERVAL) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// This process's CPU use between two samples, in thousandths of the machine (from
/// `/proc/self/stat`; 0 where that is unreadable).
struct CpuMeter {
    last: Option<(Instant, u64)>,
    cores: u64,
}

impl CpuMeter {
    /// Linux reports process CPU time in clock ticks of 1/100 s (`USER_HZ` is 100 on every
    /// architecture Rust targets).
    const TICKS_PER_SECOND: u64 = 100;

    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Self { last: None, cores }
    }

    fn sample(&mut self) -> u16 {
        let now = Instant::now();
        let Some(ticks) = process_cpu_ticks() else { return 0 };
        let permille = match self.last {
            Some((then, before)) => {
                let elapsed_ms = now.duration_since(then).as_millis().max(1) as u64;
                let used_ms = ticks.saturating_sub(before) * 1000 / Self::TICKS_PER_SECOND;
                (used_ms * 1000 / (elapsed_ms * self.cores)).min(1000) as u16
            }
            None => 0,
        };
        self.last = Some((now, ticks));
        permille
    }
}

/// User plus system CPU time of this process, in clock ticks.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The wall clock in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A random `u64` from the OS's randomness (std seeds every `RandomState` from it).
pub fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_node_issues_its_own_certificate_only_with_the_ca_key_at_hand() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::create(dir.path()).unwrap();
        assert!(ensure_node_certificate(dir.path(), "edge-1").unwrap(), "issued");
        assert!(!ensure_node_certificate(dir.path(), "edge-1").unwrap(), "kept");
        NodeCert::load(dir.path(), "edge-1").unwrap();

        // A node's directory with the CA certificate but not its key.
        let node_dir = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("ca.pem"), node_dir.path().join("ca.pem")).unwrap();
        let error = format!("{:#}", ensure_node_certificate(node_dir.path(), "edge-2").unwrap_err());
        assert!(error.contains("wedge cluster issue-cert") && error.contains("edge-2"), "{error}");
        assert!(!node_dir.path().join("nodes/edge-2.pem").exists(), "nothing written");
    }

    #[test]
    fn this_process_has_cpu_time_and_the_meter_reads_it() {
        assert!(process_cpu_ticks().is_some());
        let mut meter = CpuMeter::new();
        assert_eq!(meter.sample(), 0, "no interval yet");
        // Burn 100 ms of CPU (by the process's own count, whatever else the machine does).
        let start = process_cpu_ticks().unwrap();
        let give_up = Instant::now() + Duration::from_secs(20);
        while process_cpu_ticks().unwrap() < start + 10 && Instant::now() < give_up {}
        let permille = meter.sample();
        assert!(permille > 0 && permille <= 1000, "{permille}");
    }

    #[test]
    fn an_unspecified_address_needs_an_advertised_one() {
        let mut settings = ClusterSettings {
            cluster_dir: PathBuf::new(),
            site: "a".into(),
            gossip: "0.0.0.0:7946".parse().unwrap(),
            advertise: None,
            seeds: Vec::new(),
            expected_size: 3,
        };
        let bound: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        let error = settings.advertised(bound, "gossip").unwrap_err().to_string();
        assert!(error.contains("--advertise"), "{error}");
        settings.advertise = Some("10.1.2.3".parse().unwrap());
        assert_eq!(settings.advertised(bound, "gossip").unwrap(), "10.1.2.3:7946".parse().unwrap());
        let specific: SocketAddr = "127.0.0.2:80".parse().unwrap();
        assert_eq!(settings.advertised(specific, "HTTP").unwrap(), specific);
    }
}
