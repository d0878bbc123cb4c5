//! The membership agent: the thin async shell that runs a [`Membership`] core over a
//! [`Transport`] inside a node.
//!
//! One tokio task owns the core. Everything reaches it through one bounded channel of
//! [`Command`]s plus the transport's datagram channel; after every input and every timer it
//! drains the core's outputs (datagrams go to the transport, events to a broadcast channel)
//! and publishes a fresh [`Snapshot`] of the members when something changed (and once a
//! second, so ages and loads stay current). It owns nothing else: readers take snapshots,
//! the node's load arrives through a `watch` (the latest value wins, nothing queues up).
//!
//! Seeds are `host:port` strings, so DNS names work (a Kubernetes headless service, say):
//! a separate task resolves them, every [`SEED_RETRY`] until one resolves and every
//! [`SEED_REFRESH`] after that, and hands each address to the core, which retries them
//! itself until one is a live member.
//!
//! A member declared down has its connections closed ([`Transport::drop_peer`]), so that
//! requests waiting on it fail over at once. A member that *left* keeps them: it is
//! draining, and closes them itself once the requests it serves or sent over them are done.
//!
//! Leaving ([`Agent::leave`]) hands the core `Leave`, sends what it emits and gives the
//! transport [`LEAVE_FLUSH`] to put those datagrams on the wire; the transport stays open
//! for the streams in flight, and its owner closes it ([`Transport::close`]) when they are
//! done.
//!
//! It must not know about functions, routes or the control plane.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::membership::{
    Config, Event, Identity, LoadSummary, MemberState, MemberView, Membership, MembershipError, Output,
};
use crate::transport::{Datagram, Transport};

/// How often unresolved seeds are looked up again.
pub const SEED_RETRY: Duration = Duration::from_secs(2);
/// How often resolved seeds are looked up again (their addresses may change).
pub const SEED_REFRESH: Duration = Duration::from_secs(30);
/// How long a leaving node gives its last datagrams to go out before closing.
pub const LEAVE_FLUSH: Duration = Duration::from_millis(300);
/// How often the members snapshot is refreshed when nothing happens.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(1);
/// How many events a slow [`Agent::events`] subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// What an [`Agent`] runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's identity (its name must be the name in the transport's certificate).
    pub identity: Identity,
    /// The membership protocol's settings.
    pub membership: Config,
    /// Join seeds as `host:port` (DNS names or IP addresses). Empty: wait to be joined.
    pub seeds: Vec<String>,
    /// Seeds every random choice of the core; pass a random value.
    pub rng_seed: u64,
}

/// One member as the admin API reports it (and `wedge members` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node's name (its certificate's name).
    pub name: String,
    /// The site it runs in.
    pub site: String,
    /// Its stable node id, in hex.
    pub node_id: String,
    /// Where it gossips (its cluster address).
    pub gossip_addr: SocketAddr,
    /// Where it serves HTTP.
    pub http_addr: SocketAddr,
    /// Which life of the node this is (higher after every restart).
    pub incarnation: u64,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
    /// Milliseconds since this node saw the member's state change (for itself: since start).
    pub state_age_ms: u64,
    /// Its latest load summary, if one arrived.
    pub load: Option<LoadSummary>,
    /// Milliseconds since that summary arrived.
    pub load_age_ms: Option<u64>,
    /// Whether this record is the reporting node itself.
    pub local: bool,
}

impl MemberRecord {
    /// The record of `view` as seen at `now`.
    pub fn from_view(view: &MemberView, now: Instant) -> MemberRecord {
        let millis = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
        let identity = &view.identity;
        MemberRecord {
            name: identity.name().to_string(),
            site: identity.site().to_string(),
            node_id: identity.id().to_string(),
            gossip_addr: identity.gossip_addr(),
            http_addr: identity.ingress_addr(),
            incarnation: identity.incarnation(),
            state: view.state.as_str().to_string(),
            state_age_ms: millis(view.since),
            load: view.load,
            load_age_ms: view.load_updated_at.map(millis),
            local: view.local,
        }
    }
}

/// What the admin API's members endpoint answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersReport {
    /// The reporting node's name.
    pub node: String,
    /// Whether it is in a cluster (at least one live member knows it).
    pub joined: bool,
    /// When the report was made, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Every member it knows, itself first.
    pub members: Vec<MemberRecord>,
    /// Gossip traffic since the node started.
    pub gossip: GossipStats,
}

/// Gossip traffic counters (membership datagrams only; streams are not counted here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    /// Datagrams handed to the transport.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Datagrams received from peers.
    pub datagrams_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams the core refused (malformed, impersonating, from another version).
    pub datagrams_refused: u64,
}

/// The members as last published by the agent's task.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub taken: Instant,
    /// Whether this node is in a cluster.
    pub joined: bool,
    /// Every member this node knows, itself first.
    pub members: Vec<MemberView>,
}

impl Snapshot {
    /// The snapshot as the admin API reports it.
    pub fn report(&self, gossip: GossipStats) -> MembersReport {
        let now = Instant::now();
        MembersReport {
            node: self.members.first().map(|m| m.identity.name().to_string()).unwrap_or_default(),
            joined: self.joined,
            at_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            members: self.members.iter().map(|view| MemberRecord::from_view(view, now)).collect(),
            gossip,
        }
    }

    /// The members in `state`, other than this node.
    pub fn count(&self, state: MemberState) -> usize {
        self.members.iter().filter(|m| !m.local && m.state == state).count()
    }
}

/// What the agent's task is asked to do (besides handling datagrams and timers).
enum Command {
    /// Join through these seed addresses.
    Join(Vec<SocketAddr>),
    /// Leave, then say so.
    Leave(oneshot::Sender<()>),
}

#[derive(Default)]
struct Counters {
    datagrams_sent: AtomicU64,
    bytes_sent: AtomicU64,
    datagrams_received: AtomicU64,
    bytes_received: AtomicU64,
    datagrams_refused: AtomicU64,
    /// Times a member became suspect (events the core emitted).
    suspicions: AtomicU64,
}

/// A running membership agent; see the module docs.
pub struct Agent {
    commands: mpsc::Sender<Command>,
    load: watch::Sender<Option<LoadSummary>>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: broadcast::Sender<Event>,
    counters: Arc<Counters>,
    transport: Arc<Transport>,
    task: JoinHandle<()>,
    resolver: JoinHandle<()>,
}

impl Agent {
    /// Starts the agent's task on the current tokio runtime. Fails if the transport's
    /// datagrams are already taken, the configuration is invalid, or the identity's name is
    /// not the transport's (certificate's) name.
    pub fn start(transport: Arc<Transport>, config: AgentConfig) -> Result<Agent, AgentError> {
        if config.identity.name() != transport.name() {
            return Err(AgentError::NameMismatch {
                identity: config.identity.name().to_string(),
                certificate: transport.name().to_string(),
            });
        }
        let datagrams = transport.datagrams().ok_or(AgentError::DatagramsTaken)?;
        let now = Instant::now();
        let core = Membership::new(now, config.identity, config.membership, config.rng_seed)?;
        let (commands, command_rx) = mpsc::channel(16);
        let (load, load_rx) = watch::channel(None);
        let (snapshot_tx, snapshot) =
            watch::channel(Arc::new(Snapshot { taken: now, joined: false, members: core.members() }));
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let counters = Arc::new(Counters::default());
        let owner = Owner {
            core,
            transport: transport.clone(),
            events: events.clone(),
            snapshot: snapshot_tx,
            counters: counters.clone(),
            changed: false,
        };
        let task = tokio::spawn(owner.run(command_rx, datagrams, load_rx));
        let resolver = tokio::spawn(resolve_seeds(config.seeds, commands.clone()));
        Ok(Agent { commands, load, snapshot, events, counters, transport, task, resolver })
    }

    /// The latest members snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// Membership events from now on (a subscriber more than a thousand events behind
    /// misses the oldest).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sets this node's load; the core broadcasts the latest value at its own pace.
    pub fn set_load(&self, load: LoadSummary) {
        self.load.send_replace(Some(load));
    }

    /// The transport membership runs over (peer RPC shares it).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Gossip traffic so far.
    pub fn gossip_stats(&self) -> GossipStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GossipStats {
            datagrams_sent: get(&c.datagrams_sent),
            bytes_sent: get(&c.bytes_sent),
            datagrams_received: get(&c.datagrams_received),
            bytes_received: get(&c.bytes_received),
            datagrams_refused: get(&c.datagrams_refused),
        }
    }

    /// Times this node saw a member become suspect since it started.
    pub fn suspicions(&self) -> u64 {
        self.counters.suspicions.load(Ordering::Relaxed)
    }

    /// The members report of the admin API.
    pub fn report(&self) -> MembersReport {
        self.snapshot().report(self.gossip_stats())
    }

    /// Leaves the cluster gracefully (the others record "left", not "failed", and stop
    /// sending it requests) and waits [`LEAVE_FLUSH`] for the news to go out. The agent
    /// does nothing more afterwards (its snapshot keeps the last view). The transport stays
    /// open, so that streams in flight finish: close it ([`Transport::close`]) after them.
    pub async fn leave(&self) {
        self.resolver.abort();
        let (done, left) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = left.await;
            tokio::time::sleep(LEAVE_FLUSH).await;
        }
        self.task.abort();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.resolver.abort();
        self.task.abort();
    }
}

/// Why an [`Agent`] did not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The identity's name differs from the certificate's: peers would refuse its gossip.
    #[error("the node is named {identity:?} but its certificate names {certificate:?}")]
    NameMismatch {
        /// The identity's name.
        identity: String,
        /// The certificate's.
        certificate: String,
    },
    /// Someone else already reads the transport's datagrams.
    #[error("the transport's datagrams are already taken")]
    DatagramsTaken,
    /// The core refused its configuration.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// The task that owns the core.
struct Owner {
    core: Membership,
    transport: Arc<Transport>,
    events: broadcast::Sender<Event>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    counters: Arc<Counters>,
    /// Whether an event arrived since the last snapshot.
    changed: bool,
}

impl Owner {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut datagrams: mpsc::Receiver<Datagram>,
        mut load: watch::Receiver<Option<LoadSummary>>,
    ) {
        let mut next_snapshot = Instant::now() + SNAPSHOT_REFRESH;
        loop {
            let deadline = self.core.poll_timeout().map_or(next_snapshot, |at| at.min(next_snapshot));
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Join(seeds)) => {
                        for seed in seeds {
                            check(self.core.join(Instant::now(), seed));
                        }
                    }
                    Some(Command::Leave(done)) => {
                        check(self.core.leave(Instant::now()));
                        self.drain();
                        self.publish(Instant::now());
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                datagram = datagrams.recv() => {
                    let Some(Datagram { peer, bytes }) = datagram else { return };
                    bump(&self.counters.datagrams_received, 1);
                    bump(&self.counters.bytes_received, bytes.len() as u64);
                    if let Err(error) = self.core.handle_peer_data(Instant::now(), &peer.name, &bytes) {
                        bump(&self.counters.datagrams_refused, 1);
                        tracing::debug!(peer = %peer.name, addr = %peer.addr, %error, "gossip datagram refused");
                    }
                }
                Ok(()) = load.changed() => {
                    let latest = *load.borrow_and_update();
                    if let Some(summary) = latest {
                        check(self.core.set_load(Instant::now(), summary));
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    check(self.core.handle_timeout(now));
                    if now >= next_snapshot {
                        self.changed = true;
                        next_snapshot = now + SNAPSHOT_REFRESH;
                    }
                }
            }
            self.drain();
            if self.changed {
                self.publish(Instant::now());
            }
        }
    }

    /// Carries out every output of the core.
    fn drain(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, bytes } => {
                    let len = bytes.len() as u64;
                    match self.transport.send_datagram(to, bytes) {
                        Ok(()) => {
                            bump(&self.counters.datagrams_sent, 1);
                            bump(&self.counters.bytes_sent, len);
                        }
                        Err(error) => tracing::debug!(%to, %error, "gossip datagram not sent"),
                    }
                }
                Output::Event(event) => {
                    log_event(&event);
                    if let Event::MemberSuspect(_) = &event {
                        bump(&self.counters.suspicions, 1);
                    }
                    if let Event::MemberDown(identity) = &event {
                        self.transport.drop_peer(identity.gossip_addr());
                    }
                    self.changed = true;
                    // No subscribers is fine: the snapshot carries the state.
                    let _ = self.events.send(event);
                }
            }
        }
    }

    fn publish(&mut self, now: Instant) {
        self.changed = false;
        let snapshot = Snapshot { taken: now, joined: self.core.is_connected(), members: self.core.members() };
        self.snapshot.send_replace(Arc::new(snapshot));
    }
}

/// Logs an error of one input or timer; the core stays usable.
fn check(result: Result<(), MembershipError>) {
    if let Err(error) = result {
        tracing::debug!(%error, "membership");
    }
}

fn log_event(event: &Event) {
    let member = |identity: &Identity| format!("{} ({}, {})", identity.name(), identity.site(), identity.gossip_addr());
    match event {
        Event::Joined => tracing::info!("joined the cluster"),
        Event::Isolated => tracing::warn!("isolated: no live member known; retrying seeds"),
        Event::Rejoined(identity) => {
            tracing::warn!(incarnation = identity.incarnation(), "declared down by the cluster; rejoined")
        }
        Event::Defunct => tracing::error!("declared down and out of incarnations; cannot rejoin"),
        Event::MemberUp(identity) => tracing::info!(member = %member(identity), "member up"),
        Event::MemberSuspect(identity) => tracing::info!(member = %member(identity), "member suspect"),
        Event::MemberAlive(identity) => tracing::info!(member = %member(identity), "member alive again"),
        Event::MemberDown(identity) => tracing::warn!(member = %member(identity), "member down"),
        Event::MemberLeft(identity) => tracing::info!(member = %member(identity), "member left"),
        Event::MemberReplaced { new, .. } => {
            tracing::info!(member = %member(new), incarnation = new.incarnation(), "member restarted")
        }
        Event::LoadUpdated { .. } => {}
    }
}

/// Resolves the seeds (see the module docs) and hands their addresses to the owner task.
async fn resolve_seeds(seeds: Vec<String>, commands: mpsc::Sender<Command>) {
    if seeds.is_empty() {
        return;
    }
    loop {
        let mut addresses = Vec::new();
        for seed in &seeds {
            match tokio::net::lookup_host(seed.as_str()).await {
                Ok(found) => addresses.extend(found),
                Err(error) => tracing::warn!(%seed, %error, "cannot resolve join seed"),
            }
        }
        let wait = if addresses.is_empty() { SEED_RETRY } else { SEED_REFRESH };
        addresses.sort();
        addresses.dedup();
        if !addresses.is_empty() && commands.send(Command::Join(addresses)).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}
