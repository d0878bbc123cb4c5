//! The membership core: who is in the cluster, who is alive, and how loaded each member is,
//! as a sans-IO state machine around [`foca`] (SWIM with suspicion and infection-style
//! dissemination).
//!
//! It owns foca, the core's timer queue, the table of members' load summaries and the view
//! of members it has reported. It takes time and input and returns effects: no sockets, no
//! clock, no tokio, no randomness it did not get a seed for. It does not know how bytes
//! travel (that is [`transport`](crate::transport)), nor about functions or routes.
//!
//! # Driving it
//!
//! One task owns a [`Membership`]. Everything that happens reaches it as an [`Input`]
//! through one channel; after every input, and after every timer, the task drains
//! [`Membership::poll_output`] and sleeps until [`Membership::poll_timeout`]:
//!
//! ```ignore
//! loop {
//!     let deadline = core.poll_timeout();
//!     tokio::select! {
//!         input = inputs.recv() => core.handle(Instant::now(), input?)?,
//!         _ = sleep_until_opt(deadline) => core.handle_timeout(Instant::now())?,
//!     }
//!     while let Some(output) = core.poll_output() {
//!         match output {
//!             Output::Send { to, bytes } => transport.send_datagram(to, bytes),
//!             Output::Event(event) => publish(event),
//!         }
//!     }
//! }
//! ```
//!
//! Errors from [`Membership::handle`] and [`Membership::handle_timeout`] are about one packet
//! or one timer (a peer's malformed datagram, say); the core stays usable, so log them and go
//! on. The [`sim`](crate::sim) module drives many cores the same way on a virtual clock.
//!
//! # Wire format
//!
//! Every datagram the core emits starts with a kind byte, then at most
//! [`Config::max_packet_size`] bytes of postcard:
//!
//! - `0`: a foca packet;
//! - `1`: a join request: the joiner's [`Identity`] and whether it still wants a roster. The
//!   seed answers by announcing itself to the joiner, so a seed is reached by address alone,
//!   whatever address it advertises; and, if the joiner is new to it or asks, with its roster;
//! - `2`: a roster part: a header (where to push a roster back, if anywhere; which roster;
//!   part `i` of `n`), then a list of foca members (identity, SWIM incarnation, state),
//!   applied as if gossiped (SWIM's rules decide what is newer). Without rosters a joiner
//!   learns about one foca feed (a packet's worth of members) per announce interval, which for
//!   hundreds of nodes takes many minutes. A roster is at most [`MAX_ROSTER_DATAGRAMS`]
//!   parts; a joiner asks again until it has every part of one.
//!
//! Load summaries are foca custom broadcasts riding on the gossip (see [`LoadSummary`]); a
//! node broadcasts nothing until its load is first set.
//!
//! # Joining is a push-pull
//!
//! A joiner that already knows other members when its seed's roster arrives was in an island
//! (it was joined by others before reaching its own seed: its request was lost, or the seed
//! was not up yet). It then spreads the differences into its island and sends its own roster
//! back, which the seed applies and spreads: the two merge in a few gossip rounds instead of
//! waiting for periodic announces. A node retries its seeds every [`Config::rejoin_interval`]
//! (doubling up to [`Config::seed_refresh_interval`]) until one of them is a live member, and
//! every [`Config::seed_refresh_interval`] after that.
//!
//! # Leaving versus failing
//!
//! [`Membership::leave`] declares down a copy of this node's identity marked
//! [`leaving`](Identity::is_leaving), which outranks the unmarked one: the one "down" update
//! that spreads the departure carries the mark, and whoever applies it records
//! [`MemberState::Left`]. A member that missed the update and found the node gone by probing
//! it reports [`Event::MemberDown`] first, then [`Event::MemberLeft`] once the marked
//! identity reaches it (by gossip, or by the periodic roster sync). If every copy of the
//! update is lost, the others see a failure.
//!
//! # Anti-entropy
//!
//! Gossip sends each update a bounded number of times, so a member can miss one. Every
//! [`Config::sync_interval`] each node pushes one datagram of its roster to one random member
//! (down and suspect members first, then a random sample of the rest), which applies it and
//! spreads what was news to it; nothing a live member knows stays unknown to the rest for
//! long, at the cost of one datagram per node per interval.

mod config;
mod identity;
mod load;
mod timers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::OwnedNotification;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

pub use self::config::{Config, ConfigError};
pub use self::identity::{Identity, IdentityError, MAX_NAME_LEN, NodeId};
pub use self::load::LoadSummary;
use self::load::{SharedTable, Status, StatusHandler};
use self::timers::{Timer, TimerQueue};

/// Datagram kind: a foca packet follows.
const KIND_FOCA: u8 = 0;
/// Datagram kind: a join request (the joiner's identity, whether it wants a roster) follows.
const KIND_JOIN: u8 = 1;
/// Datagram kind: a roster (a list of foca members) follows.
const KIND_ROSTER: u8 = 2;
/// The most datagrams one roster is sent in (about 20 members each at 1100 bytes).
pub const MAX_ROSTER_DATAGRAMS: usize = 128;
/// Room kept for a roster part's header: an IPv6 socket address (21 bytes), a roster id and
/// part numbers (11 bytes), the member count (3 bytes), with margin.
const ROSTER_HEADER_ROOM: usize = 40;
/// How many join seeds are remembered (and retried); more are contacted once.
const MAX_SEEDS: usize = 16;
/// How many gossip rounds (each to `num_indirect_probes` random members) announce a leave.
const LEAVE_GOSSIP_ROUNDS: usize = 2;
/// How many down members are announced to per rejoin attempt.
const REJOIN_ANNOUNCES_DOWN: usize = 2;
/// How many other members are announced to per rejoin attempt (more: across a partition most
/// of them may be unreachable).
const REJOIN_ANNOUNCES_UP: usize = 6;

/// What precedes the members in a roster datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RosterHeader {
    /// In a seed's answer to a join request: the seed's address, where a joiner that was in an
    /// island pushes its own roster back. `None` in rosters pushed back and in anti-entropy.
    reply_to: Option<SocketAddr>,
    /// Which roster of the sender this is part of.
    id: u32,
    /// This part's index.
    part: u16,
    /// How many parts the roster has.
    parts: u16,
    /// Whether the sender's own view is settled (connected for a while, or founding the
    /// cluster): only a settled roster stops a joiner from asking. A node that joined a moment
    /// ago knows little yet.
    settled: bool,
}

/// The parts received so far of a seed's roster (until one is complete).
#[derive(Debug)]
struct RosterProgress {
    from: SocketAddr,
    id: u32,
    received: Vec<bool>,
}

type Rng = Xoshiro256PlusPlus;
type Swim = foca::Foca<Identity, foca::PostcardCodec, Rng, StatusHandler>;

/// Everything that can happen to the core, for drivers that funnel all events through one
/// channel (timers aside: see [`Membership::handle_timeout`]).
#[derive(Debug, Clone)]
pub enum Input {
    /// A datagram from a peer, see [`Membership::handle_data`].
    Data(Bytes),
    /// Join the cluster through a seed, see [`Membership::join`].
    Join(SocketAddr),
    /// This node's load changed, see [`Membership::set_load`].
    SetLoad(LoadSummary),
    /// Leave the cluster, see [`Membership::leave`].
    Leave,
}

/// An effect for the driver to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `bytes` as one datagram to the member reachable at `to` (best effort: loss is
    /// expected and handled).
    Send {
        /// The peer's gossip address.
        to: SocketAddr,
        /// The datagram, at most [`Config::max_packet_size`] + 1 bytes.
        bytes: Bytes,
    },
    /// Something changed in the membership.
    Event(Event),
}

/// A change in the membership, as seen from this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This node is in a cluster: at least one live member knows it.
    Joined,
    /// This node knows no live member any more (all are down or left); it keeps retrying its
    /// join seeds and the members it knew.
    Isolated,
    /// The cluster declared this node down (a false suspicion, or the far side of a healed
    /// partition); it rejoined under this identity, one incarnation higher.
    Rejoined(Identity),
    /// This node was declared down and cannot rejoin (its incarnation reached `u64::MAX`).
    Defunct,
    /// A member became alive (it joined, or a newer incarnation of a down member appeared).
    MemberUp(Identity),
    /// A member failed a probe; it is still counted as a member until declared down.
    MemberSuspect(Identity),
    /// A suspected member refuted the suspicion.
    MemberAlive(Identity),
    /// A member was declared down (it failed, or is unreachable from here).
    MemberDown(Identity),
    /// A member left gracefully (possibly after a [`Event::MemberDown`] for it, when this node
    /// found it gone before the news of its leaving arrived). The identity is the member's,
    /// marked [`leaving`](Identity::is_leaving).
    MemberLeft(Identity),
    /// A newer incarnation of a member (same gossip address) replaced an older one: a restart
    /// or a rejoin. A [`Event::MemberUp`] follows if the old one was down; if it was alive and
    /// the new one is too, this is the only event.
    MemberReplaced {
        /// The identity that is gone.
        old: Identity,
        /// The identity that replaced it.
        new: Identity,
    },
    /// A member's load summary changed (or was re-sent).
    LoadUpdated {
        /// The member's gossip address.
        addr: SocketAddr,
        /// Its load.
        load: LoadSummary,
    },
}

/// What this node believes about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe, not yet declared down; still a member.
    Suspect,
    /// Declared down without a leave notice: failed, or unreachable from here.
    Down,
    /// Left the cluster gracefully.
    Left,
}

impl MemberState {
    /// Whether the member counts as part of the cluster (alive or suspect).
    pub fn is_active(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// A lower-case name for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// The member's current identity.
    pub identity: Identity,
    /// What this node believes about it.
    pub state: MemberState,
    /// When this node last saw its state change (or, for itself, when the core started).
    pub since: Instant,
    /// Its latest load summary, if one arrived.
    pub load: Option<LoadSummary>,
    /// When that summary arrived (for itself: when it was last broadcast, if ever).
    pub load_updated_at: Option<Instant>,
    /// Whether this is the local node.
    pub local: bool,
}

/// What went wrong with one input or timer. The core stays usable after any of these.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is invalid (only from [`Membership::new`]).
    #[error("invalid membership config: {0}")]
    Config(#[from] ConfigError),
    /// A datagram with no bytes.
    #[error("empty gossip datagram")]
    Empty,
    /// A datagram larger than any peer may send.
    #[error("gossip datagram of {len} bytes is larger than the limit of {max}")]
    TooBig {
        /// Its size.
        len: usize,
        /// The limit: `max_packet_size + 1`.
        max: usize,
    },
    /// A datagram of a kind this version does not know.
    #[error("unknown gossip datagram kind {0}")]
    UnknownKind(u8),
    /// A join request that does not decode.
    #[error("malformed join request: {0}")]
    BadJoin(#[source] postcard::Error),
    /// A roster that does not decode.
    #[error("malformed roster: {0}")]
    BadRoster(#[source] postcard::Error),
    /// foca refused a packet or failed a timer (a malformed or misdirected packet, mostly).
    #[error("membership protocol: {0}")]
    Protocol(#[source] foca::Error),
    /// This node's own status did not encode (a bug).
    #[error("could not encode this node's status: {0}")]
    Encode(#[source] postcard::Error),
    /// A peer sent a packet in another member's name (see [`Membership::handle_peer_data`]).
    #[error("peer {certified:?} sent gossip in the name of {claimed:?}; refused")]
    Impersonation {
        /// The name in the packet.
        claimed: String,
        /// The name in the sender's certificate.
        certified: String,
    },
    /// [`Membership::join`] after [`Membership::leave`]: a node that left is done.
    #[error("this node has left the cluster")]
    Left,
}

/// A member as last reported through events.
#[derive(Debug)]
struct Tracked {
    identity: Identity,
    state: MemberState,
    since: Instant,
    load_updated_at: Option<Instant>,
}

/// Where foca's effects go during one call into it.
#[derive(Debug, Default)]
struct Io {
    /// Effects for the driver. Bounded by what one input or one timer produces (a few
    /// datagrams and a packet's worth of events), since the driver drains it after each.
    outputs: VecDeque<Output>,
    timers: TimerQueue,
    /// foca's notifications, turned into events right after each call (so always short).
    notes: Vec<OwnedNotification<Identity>>,
}

/// foca's [`Runtime`](foca::Runtime): records sends, timers and notifications in [`Io`].
struct Effects<'a> {
    now: Instant,
    io: &'a mut Io,
    rng: &'a mut Rng,
}

impl foca::Runtime<Identity> for Effects<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, Identity>) {
        self.io.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: Identity, data: &[u8]) {
        self.io.outputs.push_back(Output::Send { to: to.gossip_addr(), bytes: frame(KIND_FOCA, data) });
    }

    fn submit_after(&mut self, event: foca::Timer<Identity>, after: Duration) {
        // Nodes started together would announce in step forever: after a partition heals,
        // everyone would wait for the same moment to reach across. ±25% breaks the step.
        let after = match event {
            foca::Timer::PeriodicAnnounce(_) | foca::Timer::PeriodicAnnounceDown(_) => jittered(self.rng, after),
            _ => after,
        };
        self.io.timers.push(self.now + after, Timer::Foca(event));
    }
}

/// The [`Effects`] of a call into foca: borrows the core's `io` and `rng` next to its `swim`.
macro_rules! effects {
    ($core:ident, $now:expr) => {
        Effects { now: $now, io: &mut $core.io, rng: &mut $core.rng }
    };
}

/// The membership state machine of one node. See the module docs.
pub struct Membership {
    swim: Swim,
    config: Config,
    io: Io,
    /// Latest load summary per member; shared with foca's broadcast handler.
    table: SharedTable,
    /// The members as last reported, by gossip address; what [`Membership::members`] shows.
    /// Bounded by foca's member list (pruned against it on a tick when their sizes differ).
    tracked: BTreeMap<SocketAddr, Tracked>,
    /// The addresses of the members reported suspect (a subset of `tracked`).
    suspects: BTreeSet<SocketAddr>,
    /// For the core's own choices (which down members to announce to, timer jitter).
    rng: Rng,
    /// Seeds given to `join` (at most [`MAX_SEEDS`]), retried until one is a member, then every
    /// `seed_refresh_interval`.
    seeds: Vec<SocketAddr>,
    load: LoadSummary,
    load_version: u64,
    /// The load changed since it was last broadcast.
    load_dirty: bool,
    last_load_broadcast: Instant,
    /// When a changed load may be broadcast next: `load_min_interval` after the last broadcast,
    /// stretched by up to half (nodes started together would otherwise broadcast together).
    next_load_allowed: Instant,
    /// When an unchanged load is broadcast again (jittered likewise).
    next_load_refresh: Instant,
    connected: bool,
    /// When the seeds are contacted next (see the module docs).
    next_rejoin: Instant,
    /// The current wait between seed retries while no seed is a member (doubles).
    rejoin_backoff: Duration,
    /// When the roster is next pushed to a random member (anti-entropy).
    next_sync: Instant,
    /// Whether every part of one seed's roster arrived (until then, join requests ask for one).
    roster_complete: bool,
    /// The parts of the seed roster being received.
    roster_progress: Option<RosterProgress>,
    /// Numbers the rosters this node sends.
    roster_seq: u32,
    /// Since when foca has reported this node active (`None` while it is not).
    connected_since: Option<Instant>,
    left: bool,
    started: Instant,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("identity", self.swim.identity())
            .field("members", &self.tracked.len())
            .field("connected", &self.connected)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node that is not in any cluster yet: call [`Membership::join`] (or wait to be joined).
    ///
    /// `rng_seed` seeds every random choice of this core (foca's and its own): pass a random
    /// value in production and a derived one in simulations.
    pub fn new(now: Instant, identity: Identity, config: Config, rng_seed: u64) -> Result<Self, MembershipError> {
        config.validate()?;
        let table = SharedTable::default();
        let swim = foca::Foca::with_custom_broadcast(
            identity,
            config.to_foca(),
            Rng::seed_from_u64(rng_seed),
            foca::PostcardCodec,
            StatusHandler { table: table.clone() },
        );
        let mut io = Io::default();
        io.timers.push(now + config.view_refresh_interval, Timer::Tick);
        let mut core = Self {
            swim,
            io,
            table,
            tracked: BTreeMap::new(),
            suspects: BTreeSet::new(),
            rng: Rng::seed_from_u64(rng_seed ^ 0x9e37_79b9_7f4a_7c15),
            seeds: Vec::new(),
            load: LoadSummary::default(),
            load_version: 0,
            load_dirty: false,
            last_load_broadcast: now,
            next_load_allowed: now,
            next_load_refresh: now + config.load_refresh_interval,
            connected: false,
            next_rejoin: now + config.rejoin_interval,
            rejoin_backoff: config.rejoin_interval,
            next_sync: now + config.sync_interval,
            roster_complete: false,
            roster_progress: None,
            roster_seq: 0,
            connected_since: None,
            left: false,
            started: now,
            config,
        };
        // Nothing is broadcast until a load is set: an unknown load and a zero one read the same,
        // and a thousand nodes starting together would otherwise fill every packet for a minute.
        core.settle(now);
        Ok(core)
    }

    /// Handles one [`Input`]; the same as calling the matching method.
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), MembershipError> {
        match input {
            Input::Data(bytes) => self.handle_data(now, &bytes),
            Input::Join(addr) => self.join(now, addr),
            Input::SetLoad(load) => self.set_load(now, load),
            Input::Leave => self.leave(now),
        }
    }

    /// Handles a datagram from a peer, trusting the sender names in it (the simulator's
    /// entry; a node behind the transport calls [`Membership::handle_peer_data`]). Ignored
    /// once this node has left.
    pub fn handle_data(&mut self, now: Instant, datagram: &[u8]) -> Result<(), MembershipError> {
        if self.left {
            return Ok(());
        }
        let max = self.config.max_packet_size + 1;
        let result = match datagram.split_first() {
            _ if datagram.len() > max => Err(MembershipError::TooBig { len: datagram.len(), max }),
            None => Err(MembershipError::Empty),
            Some((&KIND_FOCA, packet)) => {
                self.swim.handle_data(packet, effects!(self, now)).map_err(MembershipError::Protocol)
            }
            Some((&KIND_JOIN, request)) => self.handle_join_request(now, request),
            Some((&KIND_ROSTER, roster)) => self.handle_roster(now, roster),
            Some((&kind, _)) => Err(MembershipError::UnknownKind(kind)),
        };
        self.settle(now);
        result
    }

    /// Handles a datagram from a peer whose certificate names it `certified_name` (the
    /// transport's [`Peer::name`](crate::transport::Peer::name)): a foca packet or a join
    /// request that claims to come from a member of another name is refused with
    /// [`MembershipError::Impersonation`] and changes nothing. Every certificate holder is
    /// trusted to relay news about others (gossip and rosters carry it), but none may speak
    /// as another node: its own headers name it.
    pub fn handle_peer_data(
        &mut self,
        now: Instant,
        certified_name: &str,
        datagram: &[u8],
    ) -> Result<(), MembershipError> {
        if !self.left {
            let claimed = match datagram.split_first() {
                Some((&KIND_FOCA, packet)) => foca::Codec::<Identity>::decode_header(&mut foca::PostcardCodec, packet)
                    .ok()
                    .map(|header| header.src),
                Some((&KIND_JOIN, request)) => {
                    postcard::take_from_bytes::<(Identity, bool)>(request).ok().map(|((joiner, _), _)| joiner)
                }
                _ => None,
            };
            if let Some(claimed) = claimed.filter(|claimed| claimed.name() != certified_name) {
                return Err(MembershipError::Impersonation {
                    claimed: claimed.name().to_string(),
                    certified: certified_name.to_string(),
                });
            }
        }
        self.handle_data(now, datagram)
    }

    /// Asks the node at `seed` (a gossip address) to bring this node into its cluster. The
    /// seeds are retried until one of them is a live member (see the module docs on joining),
    /// then every [`Config::seed_refresh_interval`]; a seed equal to this node's own address
    /// is skipped (every node may be given the same seed list).
    pub fn join(&mut self, now: Instant, seed: SocketAddr) -> Result<(), MembershipError> {
        if self.left {
            return Err(MembershipError::Left);
        }
        if seed == self.identity().gossip_addr() {
            return Ok(());
        }
        if !self.seeds.contains(&seed) && self.seeds.len() < MAX_SEEDS {
            self.seeds.push(seed);
        }
        self.rejoin_backoff = self.config.rejoin_interval;
        self.next_rejoin = now + self.rejoin_backoff;
        self.send_join_request(seed);
        Ok(())
    }

    /// Records this node's load; it is broadcast at once unless the previous broadcast is
    /// younger than [`Config::load_min_interval`] (stretched by a random 0 to 50% per
    /// broadcast, so that nodes do not fall in step), in which case the latest value goes out
    /// when that interval is over.
    pub fn set_load(&mut self, now: Instant, load: LoadSummary) -> Result<(), MembershipError> {
        // The first load goes out even when it is all zeros: until then peers know none.
        if self.left || (load == self.load && self.load_version > 0) {
            return Ok(());
        }
        self.load = load;
        self.load_dirty = true;
        let result = if now >= self.next_load_allowed { self.broadcast_status(now) } else { Ok(()) };
        self.settle(now);
        result
    }

    /// Leaves the cluster gracefully: this node's identity, marked leaving, is declared down
    /// to a few members, who spread it (see the module docs). Afterwards the core ignores all
    /// input and has no timers: send out the outputs, then drop it.
    pub fn leave(&mut self, now: Instant) -> Result<(), MembershipError> {
        if self.left {
            return Ok(());
        }
        let leaving = foca::Member::down(self.identity().as_leaving());
        // foca treats an update about another identity with our address as stale news about
        // an old life of ours: it records it as down and gossips that, which is the point.
        let mut result = self
            .swim
            .apply_many(std::iter::once(leaving), true, effects!(self, now))
            .map_err(MembershipError::Protocol);
        for _ in 0..LEAVE_GOSSIP_ROUNDS {
            if let Err(err) = self.swim.gossip(effects!(self, now)) {
                result = result.and(Err(MembershipError::Protocol(err)));
            }
        }
        self.left = true;
        self.connected = false;
        self.io.timers.clear();
        self.io.notes.clear();
        result
    }

    /// Runs every timer due at `now`. Call it when [`Membership::poll_timeout`] is reached
    /// (calling it early or late is harmless; late delays the protocol). Returns the first
    /// error of any timer; the others still ran.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MembershipError> {
        let mut first_error = None;
        while let Some((_, timer)) = self.io.timers.pop_due(now) {
            let result = match timer {
                Timer::Foca(timer) if self.is_refuted_suspicion(&timer) => Ok(()),
                Timer::Foca(timer) => {
                    self.swim.handle_timer(timer, effects!(self, now)).map_err(MembershipError::Protocol)
                }
                Timer::Tick => self.tick(now),
            };
            self.settle(now);
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether `timer` would declare down a member that is no longer suspect under the
    /// suspected identity and incarnation (it refuted the suspicion, or a newer life replaced
    /// it). foca 2.0.0 then changes nothing but still sends the member `TurnUndead` (its
    /// condition check answers `Some` either way), which makes a member that refuted a
    /// suspicion believe it was declared down and rejoin as a new incarnation: a node paused
    /// for less than the suspicion timeout was seen to "restart". Such timers are dropped
    /// here instead.
    fn is_refuted_suspicion(&self, timer: &foca::Timer<Identity>) -> bool {
        let foca::Timer::ChangeSuspectToDown { member_id, incarnation, .. } = timer else { return false };
        !self.swim.iter_membership_state().any(|member| {
            member.id() == member_id && member.incarnation() == *incarnation && member.state() == foca::State::Suspect
        })
    }

    /// The next effect to carry out, if any. Drain this after every call into the core.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.io.outputs.pop_front()
    }

    /// When [`Membership::handle_timeout`] must be called next (`None` after leaving).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left { None } else { self.io.timers.next_deadline() }
    }

    /// This node's current identity (it changes when the node rejoins after being declared
    /// down: [`Event::Rejoined`]).
    pub fn identity(&self) -> &Identity {
        self.swim.identity()
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether at least one live member knows this node.
    pub fn is_connected(&self) -> bool {
        self.connected && !self.left
    }

    /// Whether [`Membership::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The identities of the members this node counts as in the cluster (alive or suspect),
    /// straight from foca (without the view's reporting delay for suspicion), excluding itself.
    pub fn active_members(&self) -> impl Iterator<Item = &Identity> + '_ {
        self.swim.iter_members().map(|member| member.id())
    }

    /// How many members [`Membership::active_members`] yields.
    pub fn active_count(&self) -> usize {
        self.swim.num_members()
    }

    /// Every member this node knows, itself first, then by gossip address; down and left
    /// members are kept for [`Config::remove_down_after`].
    pub fn members(&self) -> Vec<MemberView> {
        let table = self.table.lock();
        let mut views = Vec::with_capacity(self.tracked.len() + 1);
        views.push(MemberView {
            identity: self.identity().clone(),
            state: if self.left { MemberState::Left } else { MemberState::Alive },
            since: self.started,
            load: Some(self.load),
            load_updated_at: (self.load_version > 0).then_some(self.last_load_broadcast),
            local: true,
        });
        views.extend(self.tracked.iter().map(|(addr, t)| MemberView {
            identity: t.identity.clone(),
            state: t.state,
            since: t.since,
            load: table.latest.get(addr).map(|s| s.load),
            load_updated_at: t.load_updated_at,
            local: false,
        }));
        views
    }

    /// One member's view by gossip address (this node's own address included).
    pub fn member(&self, addr: SocketAddr) -> Option<MemberView> {
        self.members().into_iter().find(|view| view.identity.gossip_addr() == addr)
    }

    /// foca's queues: membership updates and custom broadcasts still to be re-sent (for
    /// metrics; both are bounded by the member count).
    pub fn backlog(&self) -> (usize, usize) {
        (self.swim.updates_backlog(), self.swim.custom_broadcast_backlog())
    }

    fn handle_join_request(&mut self, now: Instant, request: &[u8]) -> Result<(), MembershipError> {
        let ((joiner, wants_roster), rest): ((Identity, bool), _) =
            postcard::take_from_bytes(request).map_err(MembershipError::BadJoin)?;
        if !rest.is_empty() {
            return Err(MembershipError::BadJoin(postcard::Error::DeserializeUnexpectedEnd));
        }
        if joiner.gossip_addr() == self.identity().gossip_addr() {
            return Ok(());
        }
        // A member we already count as live re-sends its request (seed refresh): it knows
        // the cluster, an announce is enough, unless it never got a whole roster.
        let known = self.swim.iter_members().any(|m| *m.id() == joiner);
        if !known || wants_roster {
            let own = self.identity().gossip_addr();
            self.send_roster(now, joiner.gossip_addr(), Some(own));
        }
        // Announcing ourselves to the joiner makes it answer with a feed; its answer's header
        // makes it a member here, and our announce made us one there.
        self.swim.announce(joiner, effects!(self, now)).map_err(MembershipError::Protocol)
    }

    /// Sends every member we know (but the recipient) to `to`, packed into datagrams; the
    /// first names `reply_to`, where the recipient may push its own roster back.
    fn send_roster(&mut self, now: Instant, to: SocketAddr, reply_to: Option<SocketAddr>) {
        self.roster_seq = self.roster_seq.wrapping_add(1);
        let settled = self.settled(now);
        let members = self.swim.iter_membership_state().filter(|m| m.id().gossip_addr() != to);
        let header = RosterHeader { reply_to, id: self.roster_seq, part: 0, parts: 0, settled };
        let datagrams = pack_roster(members, header, self.config.max_packet_size, MAX_ROSTER_DATAGRAMS);
        self.io.outputs.extend(datagrams.into_iter().map(|bytes| Output::Send { to, bytes }));
    }

    /// Anti-entropy: one datagram of members to a random live member, the bad news (down and
    /// suspect members) first, then a random sample of the others; over many rounds the whole
    /// roster goes around at a bounded cost.
    fn send_sync(&mut self) {
        let active: Vec<SocketAddr> = self.active_members().map(Identity::gossip_addr).collect();
        if active.is_empty() {
            return;
        }
        let to = active[self.rng.random_range(0..active.len())];
        let mut members: Vec<&foca::Member<Identity>> =
            self.swim.iter_membership_state().filter(|m| m.id().gossip_addr() != to).collect();
        members.shuffle(&mut self.rng);
        members.sort_by_key(|m| m.state() == foca::State::Alive);
        self.roster_seq = self.roster_seq.wrapping_add(1);
        let header = RosterHeader { reply_to: None, id: self.roster_seq, part: 0, parts: 0, settled: false };
        let datagrams = pack_roster(members.into_iter(), header, self.config.max_packet_size, 1);
        self.io.outputs.extend(datagrams.into_iter().map(|bytes| Output::Send { to, bytes }));
    }

    fn handle_roster(&mut self, now: Instant, roster: &[u8]) -> Result<(), MembershipError> {
        type Roster = (RosterHeader, Vec<foca::Member<Identity>>);
        let (header, members): Roster = postcard::from_bytes(roster).map_err(MembershipError::BadRoster)?;
        let reply_to = header.reply_to;
        // A fresh joiner knows at most its seed: what the seed knows, the cluster knows, so
        // there is nothing to spread. A node that knew others was in an island: the news goes
        // both ways (its island learns the roster from its gossip, the seed from the roster it
        // sends back). A roster pushed back to a seed is news to the seed's side.
        let island = self.active_count() > 1;
        let spread = island || reply_to.is_none();
        let result =
            self.swim.apply_many(members.into_iter(), spread, effects!(self, now)).map_err(MembershipError::Protocol);
        if let Some(seed) = reply_to {
            if island && header.part == 0 {
                self.send_roster(now, seed, None);
            }
            if header.settled {
                self.roster_part_received(seed, header);
            }
        }
        result
    }

    /// Whether this node's view is settled enough for its rosters to end a joiner's asking:
    /// connected for two rejoin intervals (time to get its own roster), or founding a cluster.
    fn settled(&self, now: Instant) -> bool {
        match self.connected_since {
            Some(since) => now >= since + self.config.rejoin_interval * 2,
            None => self.seeds.is_empty(),
        }
    }

    /// Counts a part of a seed's settled roster; the first one with every part ends the asking.
    fn roster_part_received(&mut self, from: SocketAddr, header: RosterHeader) {
        let parts = usize::from(header.parts).min(MAX_ROSTER_DATAGRAMS);
        let part = usize::from(header.part);
        if self.roster_complete || part >= parts {
            return;
        }
        let progress = match &mut self.roster_progress {
            Some(p) if p.from == from && p.id == header.id => p,
            other => other.insert(RosterProgress { from, id: header.id, received: vec![false; parts] }),
        };
        progress.received[part] = true;
        if progress.received.iter().all(|&got| got) {
            self.roster_complete = true;
            self.roster_progress = None;
        }
    }

    fn send_join_request(&mut self, seed: SocketAddr) {
        match postcard::to_allocvec(&(self.identity(), !self.roster_complete)) {
            Ok(body) => self.io.outputs.push_back(Output::Send { to: seed, bytes: frame(KIND_JOIN, &body) }),
            // An identity always encodes (plain fields, no maps); nothing sensible to do if not.
            Err(err) => tracing::error!(%err, "could not encode a join request"),
        }
    }

    /// Queues this node's status (its load) as a foca custom broadcast.
    fn broadcast_status(&mut self, now: Instant) -> Result<(), MembershipError> {
        self.load_version += 1;
        let identity = self.identity();
        let status = Status {
            addr: identity.gossip_addr(),
            incarnation: identity.incarnation(),
            version: self.load_version,
            load: self.load,
        };
        let bytes = load::encode(&status).map_err(MembershipError::Encode)?;
        self.last_load_broadcast = now;
        self.next_load_refresh = now + jittered(&mut self.rng, self.config.load_refresh_interval);
        self.next_load_allowed = now + self.config.load_min_interval.mul_f64(self.rng.random_range(1.0..1.5));
        self.load_dirty = false;
        self.swim.add_broadcast(&bytes).map(drop).map_err(MembershipError::Protocol)
    }

    /// Housekeeping, every [`Config::view_refresh_interval`].
    fn tick(&mut self, now: Instant) -> Result<(), MembershipError> {
        self.io.timers.push(now + self.config.view_refresh_interval, Timer::Tick);
        self.sweep(now);
        let refresh = self.load_version > 0 && now >= self.next_load_refresh;
        let result = if (self.load_dirty && now >= self.next_load_allowed) || refresh {
            self.broadcast_status(now)
        } else {
            Ok(())
        };
        if self.connected && now >= self.next_sync {
            self.next_sync = now + jittered(&mut self.rng, self.config.sync_interval);
            self.send_sync();
        }
        if now >= self.next_rejoin {
            if !self.connected {
                // Isolated: keep trying at the base rate.
                self.rejoin_backoff = self.config.rejoin_interval;
                self.rejoin(now);
            } else if !self.seed_reached() {
                // Connected, but maybe only to an island: retry, backing off.
                self.rejoin_backoff = (self.rejoin_backoff * 2).min(self.config.seed_refresh_interval);
                self.contact_seeds();
            } else {
                self.rejoin_backoff = self.config.seed_refresh_interval;
                self.contact_seeds();
            }
            self.next_rejoin = now + self.rejoin_backoff;
        }
        result
    }

    /// While isolated: ask the seeds again, and announce to a few members that are down (they
    /// may be the other side of a partition that healed).
    fn rejoin(&mut self, now: Instant) {
        self.contact_seeds();
        self.announce_around(now);
    }

    /// Announces this node to a few random members that are down here and a few that are
    /// not: whoever answers (with a feed, or with "you are down") reconnects it.
    fn announce_around(&mut self, now: Instant) {
        let (mut down, mut up) = (Vec::new(), Vec::new());
        for member in self.swim.iter_membership_state() {
            let list = if member.state() == foca::State::Down { &mut down } else { &mut up };
            list.push(member.id().clone());
        }
        for (list, count) in [(down, REJOIN_ANNOUNCES_DOWN), (up, REJOIN_ANNOUNCES_UP)] {
            for _ in 0..count.min(list.len()) {
                let pick = list[self.rng.random_range(0..list.len())].clone();
                if let Err(err) = self.swim.announce(pick, effects!(self, now)) {
                    tracing::debug!(%err, "announce failed");
                }
            }
        }
    }

    fn contact_seeds(&mut self) {
        for seed in self.seeds.clone() {
            self.send_join_request(seed);
        }
    }

    /// Whether one of the seeds is a live member (then this node is in the seeds' cluster) and
    /// a whole roster arrived.
    fn seed_reached(&self) -> bool {
        self.seeds.is_empty()
            || (self.roster_complete && self.active_members().any(|m| self.seeds.contains(&m.gossip_addr())))
    }

    /// Brings the reported view in line with foca's for suspicion (which foca does not notify)
    /// and drops members foca forgot. Cheap in the common case: one pass over foca's members
    /// reading their state, then work only for suspects.
    fn sweep(&mut self, now: Instant) {
        let mut known = 0;
        let mut suspects: Vec<&Identity> = Vec::new();
        for member in self.swim.iter_membership_state() {
            known += 1;
            if member.state() == foca::State::Suspect {
                suspects.push(member.id());
            }
        }
        for &id in &suspects {
            if let Some(tracked) = self.tracked.get_mut(&id.gossip_addr())
                && tracked.state == MemberState::Alive
                && tracked.identity == *id
            {
                tracked.state = MemberState::Suspect;
                tracked.since = now;
                self.suspects.insert(id.gossip_addr());
                self.io.outputs.push_back(Output::Event(Event::MemberSuspect(id.clone())));
            }
        }
        // Reported suspect, no longer suspect in foca, and no notification said down or
        // replaced: the suspicion was refuted.
        if self.suspects.len() > suspects.len() || suspects.iter().any(|id| !self.suspects.contains(&id.gossip_addr()))
        {
            let still: BTreeSet<SocketAddr> = suspects.iter().map(|id| id.gossip_addr()).collect();
            let refuted: Vec<SocketAddr> = self.suspects.difference(&still).copied().collect();
            for addr in refuted {
                self.suspects.remove(&addr);
                if let Some(tracked) = self.tracked.get_mut(&addr).filter(|t| t.state == MemberState::Suspect) {
                    tracked.state = MemberState::Alive;
                    tracked.since = now;
                    self.io.outputs.push_back(Output::Event(Event::MemberAlive(tracked.identity.clone())));
                }
            }
        }
        if known != self.tracked.len() {
            self.reconcile(now);
        }
        let own = self.identity().gossip_addr();
        let mut table = self.table.lock();
        if table.latest.len() > 2 * (known + 1) + 16 {
            let addrs: BTreeSet<SocketAddr> = self.swim.iter_membership_state().map(|m| m.id().gossip_addr()).collect();
            table.latest.retain(|addr, _| *addr == own || addrs.contains(addr));
        }
    }

    /// Shows the members foca learnt about only as down (never up here, so never notified),
    /// and forgets those foca removed.
    fn reconcile(&mut self, now: Instant) {
        let mut addrs = BTreeSet::new();
        for member in self.swim.iter_membership_state() {
            let id = member.id();
            addrs.insert(id.gossip_addr());
            if member.state() == foca::State::Down && !self.tracked.contains_key(&id.gossip_addr()) {
                let state = if id.is_leaving() { MemberState::Left } else { MemberState::Down };
                self.tracked.insert(
                    id.gossip_addr(),
                    Tracked { identity: id.clone(), state, since: now, load_updated_at: None },
                );
            }
        }
        self.tracked.retain(|addr, _| addrs.contains(addr));
        self.suspects.retain(|addr| addrs.contains(addr));
    }

    /// Turns what foca and the broadcast handler recorded during the last call into events.
    fn settle(&mut self, now: Instant) {
        let mut rebroadcast = false;
        for note in mem::take(&mut self.io.notes) {
            match note {
                OwnedNotification::MemberUp(id) => {
                    tracing::debug!(member = %id, "member up");
                    self.track(now, &id, MemberState::Alive);
                    self.emit(Event::MemberUp(id));
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::debug!(member = %id, "member down");
                    if id.is_leaving() {
                        self.track(now, &id, MemberState::Left);
                        self.emit(Event::MemberLeft(id));
                    } else {
                        self.track(now, &id, MemberState::Down);
                        self.emit(Event::MemberDown(id));
                    }
                }
                OwnedNotification::Rename(old, new) if new.is_leaving() => {
                    // The same life, now known to have left. If it was active here, foca's
                    // MemberDown for the marked identity follows and reports it.
                    let was_active = self.tracked.get(&old.gossip_addr()).is_some_and(|t| t.state.is_active());
                    if was_active {
                        self.track(now, &new, MemberState::Alive);
                    } else {
                        tracing::debug!(member = %new, "member that was down had left");
                        self.track(now, &new, MemberState::Left);
                        self.emit(Event::MemberLeft(new));
                    }
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::debug!(%old, %new, "member replaced");
                    let was_active = self.tracked.get(&old.gossip_addr()).is_some_and(|t| t.state.is_active());
                    self.track(now, &new, if was_active { MemberState::Alive } else { MemberState::Down });
                    self.emit(Event::MemberReplaced { old, new });
                }
                OwnedNotification::Active => {
                    self.connected = true;
                    self.connected_since.get_or_insert(now);
                    self.emit(Event::Joined);
                }
                OwnedNotification::Idle => {
                    self.connected = false;
                    self.connected_since = None;
                    self.next_rejoin = now;
                    self.rejoin_backoff = self.config.rejoin_interval;
                    self.emit(Event::Isolated);
                }
                OwnedNotification::Defunct => {
                    self.connected = false;
                    self.connected_since = None;
                    if !self.left {
                        self.emit(Event::Defunct);
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(identity = %id, "declared down by the cluster; rejoined");
                    // foca starts the new identity disconnected, without saying so, and waits
                    // to be contacted; if its one gossip round was lost nobody knows the new
                    // identity. Count as isolated until foca reports `Active` again.
                    self.connected = false;
                    self.connected_since = None;
                    self.next_rejoin = now + self.config.rejoin_interval;
                    self.rejoin_backoff = self.config.rejoin_interval;
                    rebroadcast = true;
                    self.emit(Event::Rejoined(id));
                }
            }
        }
        if rebroadcast {
            if self.load_version > 0
                && let Err(err) = self.broadcast_status(now)
            {
                tracing::error!(%err, "could not broadcast status after rejoining");
            }
            // Introduce the new identity to a few members now. Whoever declared us down is
            // likely down to us too (a healed partition): reaching across now rather than at
            // the next periodic announce makes each rejoin trigger more, and the two sides
            // merge in a few round trips.
            self.announce_around(now);
        }
        self.settle_statuses(now);
    }

    /// Reports load summaries that arrived.
    fn settle_statuses(&mut self, now: Instant) {
        let own = self.identity().gossip_addr();
        let mut table = self.table.lock();
        if table.changed.is_empty() {
            return;
        }
        for addr in mem::take(&mut table.changed) {
            let Some(status) = table.latest.get(&addr).filter(|_| addr != own) else { continue };
            if let Some(tracked) = self.tracked.get_mut(&addr) {
                tracked.load_updated_at = Some(now);
            }
            self.io.outputs.push_back(Output::Event(Event::LoadUpdated { addr, load: status.load }));
        }
    }

    fn track(&mut self, now: Instant, id: &Identity, state: MemberState) {
        if state == MemberState::Suspect {
            self.suspects.insert(id.gossip_addr());
        } else {
            self.suspects.remove(&id.gossip_addr());
        }
        let entry = self.tracked.entry(id.gossip_addr()).or_insert_with(|| Tracked {
            identity: id.clone(),
            state,
            since: now,
            load_updated_at: None,
        });
        entry.identity = id.clone();
        entry.state = state;
        entry.since = now;
    }

    fn emit(&mut self, event: Event) {
        self.io.outputs.push_back(Output::Event(event));
    }
}

/// `interval` ± 25%, so that nodes started together do not act together forever.
fn jittered(rng: &mut Rng, interval: Duration) -> Duration {
    interval.mul_f64(rng.random_range(0.75..1.25))
}

/// Packs `members` into at most `max_datagrams` roster parts of at most `max_packet` bytes
/// (plus the kind byte), each a postcard `(RosterHeader, Vec<Member>)` with `header`'s
/// `reply_to` and `id` and its own part numbers. Members past the last part are left out; no
/// members make one empty part (a roster of nobody is still an answer).
fn pack_roster<'a>(
    members: impl Iterator<Item = &'a foca::Member<Identity>>,
    header: RosterHeader,
    max_packet: usize,
    max_datagrams: usize,
) -> Vec<Bytes> {
    let room = max_packet.saturating_sub(ROSTER_HEADER_ROOM);
    let mut chunks: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
    for member in members {
        let bytes = match postcard::to_allocvec(member) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::error!(%err, "could not encode a roster entry");
                continue;
            }
        };
        let fits = chunks.last().is_some_and(|(_, items)| items.len() + bytes.len() <= room);
        if !fits {
            if chunks.len() == max_datagrams {
                break;
            }
            chunks.push((0, Vec::new()));
        }
        if let Some((count, items)) = chunks.last_mut() {
            *count += 1;
            items.extend_from_slice(&bytes);
        }
    }
    let parts = chunks.len() as u16;
    let mut datagrams = Vec::with_capacity(chunks.len());
    for (part, (count, items)) in chunks.into_iter().enumerate() {
        let header = RosterHeader { part: part as u16, parts, ..header };
        let mut body = match postcard::to_allocvec(&header) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(%err, "could not encode a roster header");
                break;
            }
        };
        push_varint(&mut body, count);
        body.extend_from_slice(&items);
        datagrams.push(frame(KIND_ROSTER, &body));
    }
    datagrams
}

/// Appends `value` as a postcard (LEB128) varint.
fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A datagram: the kind byte, then the body.
fn frame(kind: u8, body: &[u8]) -> Bytes {
    let mut datagram = Vec::with_capacity(body.len() + 1);
    datagram.push(kind);
    datagram.extend_from_slice(body);
    Bytes::from(datagram)
}

#[cfg(test)]
mod tests;
