//! [`Config`]: how fast membership probes, suspects, gossips and heals; presets for a LAN and
//! a WAN, and [`Config::validate`].
//!
//! # The LAN arithmetic
//!
//! [`Config::lan`] is tuned so that a crashed node of a small loss-free LAN cluster is marked
//! down by every other node within 5 s. With `T` the probe period, `S` the suspicion timeout
//! and `G` the gossip interval, the time from a crash to the last node marking it down is:
//!
//! 1. **until someone probes the dead node**: every node probes one member per period, going
//!    round-robin through a shuffled list, so some prober reaches it after about
//!    `T · e/(e−1) ≈ 1.6 T` on average; no later than `(n−1) T` for `n` nodes, short of a
//!    reshuffle; the chance that nobody probed it after `k` periods falls like `e^−k`;
//! 2. **the probe fails**: no ack within `probe_rtt`, nor through the indirect probes, and
//!    foca raises the suspicion when the next period starts: `T`;
//! 3. **suspicion times out**: `S`, time for a live-but-slow node to hear it is suspected
//!    and refute it (`S = 4 · max(1, log10 n) · T`, memberlist's rule);
//! 4. **the verdict spreads**: the prober gossips "down" to `gossip_fanout` random members
//!    every `G`, and so does everyone who hears it: `⌈log(n)⌉`-ish rounds of `G`.
//!
//! With `T = 400 ms`, `S = 1.6 s` (n ≤ 10) and `G = 200 ms`: a typical detection is
//! `0.6 + 0.4 + 1.6 + 0.4 ≈ 3 s`; [`Config::detection_bound`] adds up the worst cases
//! (`min(n−1, 12)` periods for step 1, `2 + ⌈log2 n⌉` gossip rounds for step 4), which is
//! 4.6 s for 5 nodes and grows like `log n` beyond (the simulator's table). The probe RTT
//! (`130 ms`) leaves the indirect probes `T − probe_rtt = 270 ms` to come back.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// How membership behaves; every node of a cluster should use the same values (a node
/// refuses gossip packets larger than its own `max_packet_size`).
///
/// Start from a preset ([`Config::lan`], [`Config::wan`]) and change fields; check with
/// [`Config::validate`] (the core does on construction).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How often this node probes one member (SWIM's protocol period).
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    /// Strictly less than `probe_period`.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub num_indirect_probes: usize,
    /// How long a suspected member has to refute the suspicion before it is declared down.
    pub suspect_to_down_after: Duration,
    /// How many times each membership update and load broadcast is re-sent by each node.
    pub max_transmissions: u8,
    /// The largest gossip payload this node sends and accepts, in bytes; the datagrams the
    /// core emits are one byte larger (a kind tag). 1100 fits a QUIC datagram at QUIC's
    /// minimum 1200-byte path MTU with room to spare for the transport's own framing.
    pub max_packet_size: usize,
    /// How long a member declared down is remembered (so its address is announced to, which is
    /// how partitions heal, and so its old identity cannot come back).
    pub remove_down_after: Duration,
    /// How often pending updates are gossiped to `gossip_fanout` random members (besides
    /// riding on probes).
    pub gossip_interval: Duration,
    /// How many members each periodic gossip goes to.
    pub gossip_fanout: usize,
    /// How often one random member is asked for its member list (finds members that the
    /// join's first answer missed).
    pub announce_interval: Duration,
    /// How often two random members that are down are announced to: the way a healed
    /// partition notices the other side again.
    pub announce_down_interval: Duration,
    /// How often the core compares foca's view with the one it reported, to report suspicion
    /// and its refutation ([`Event::MemberSuspect`](super::Event::MemberSuspect),
    /// [`Event::MemberAlive`](super::Event::MemberAlive)), and does its housekeeping. Up, down,
    /// left and replaced are reported at once.
    pub view_refresh_interval: Duration,
    /// The least time between two load broadcasts of this node; changes in between are
    /// coalesced into one broadcast. Every node re-sends every status `max_transmissions`
    /// times, so the presets scale this with the cluster size (`max(1 s, n · 100 ms)`: about
    /// ten statuses a second cluster-wide) or load gossip would fill every packet.
    pub load_min_interval: Duration,
    /// How often the load is broadcast even when unchanged (± 25%), so nodes that joined
    /// since learn it. Presets: `max(60 s, n · 1 s)`, since every refresh costs every node
    /// `max_transmissions` re-sends.
    pub load_refresh_interval: Duration,
    /// While this node knows no live member, how often it retries its join seeds and announces
    /// to members that are down.
    pub rejoin_interval: Duration,
    /// While connected, how often the join seeds are contacted again: merges two halves of a
    /// cluster that forgot each other (a partition longer than `remove_down_after`).
    pub seed_refresh_interval: Duration,
    /// How often (± 25%) this node pushes one datagram of its member list (down and suspect members
    /// first) to one random member (anti-entropy: repairs what gossip, which sends each update
    /// a bounded number of times, missed).
    pub sync_interval: Duration,
}

/// What is wrong with a [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// `probe_rtt` is not less than `probe_period`.
    #[error("probe_rtt ({rtt:?}) must be less than probe_period ({period:?})")]
    RttNotBelowPeriod {
        /// The configured probe RTT.
        rtt: Duration,
        /// The configured probe period.
        period: Duration,
    },
    /// `suspect_to_down_after` is shorter than one probe period.
    #[error("suspect_to_down_after ({0:?}) must be at least one probe_period")]
    SuspicionTooShort(Duration),
    /// `max_packet_size` is outside the supported range.
    #[error("max_packet_size must be between {min} and {max} bytes, got {got}", min = Config::MIN_PACKET_SIZE, max = Config::MAX_PACKET_SIZE)]
    PacketSize {
        /// The configured size.
        got: usize,
    },
    /// `load_refresh_interval` is shorter than `load_min_interval`.
    #[error("load_refresh_interval must be at least load_min_interval")]
    LoadRefreshTooShort,
}

impl Config {
    /// The smallest `max_packet_size` accepted: a header carrying three identities with the
    /// longest names fits with room for updates.
    pub const MIN_PACKET_SIZE: usize = 1024;
    /// The largest `max_packet_size` accepted (a UDP payload's limit).
    pub const MAX_PACKET_SIZE: usize = 65_507;
    /// The size of a membership update with names of about a dozen characters (an identity of
    /// about 50 bytes and the SWIM incarnation and state), for [`Config::spread_time`].
    pub const TYPICAL_UPDATE_BYTES: usize = 60;

    /// Settings for nodes on one LAN (or one site), for a cluster of about `cluster_size`
    /// nodes. See the module docs for the arithmetic behind the timings.
    pub fn lan(cluster_size: usize) -> Self {
        let probe_period = Duration::from_millis(400);
        Self {
            probe_period,
            probe_rtt: Duration::from_millis(130),
            num_indirect_probes: 3,
            suspect_to_down_after: suspicion(cluster_size, probe_period, 4.0),
            max_transmissions: max_transmissions(cluster_size),
            max_packet_size: 1100,
            remove_down_after: Duration::from_secs(3600),
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_interval: Duration::from_secs(30),
            announce_down_interval: Duration::from_secs(5),
            view_refresh_interval: Duration::from_millis(200),
            load_min_interval: per_node(cluster_size, Duration::from_secs(1), Duration::from_millis(100)),
            load_refresh_interval: per_node(cluster_size, Duration::from_secs(60), Duration::from_secs(1)),
            rejoin_interval: Duration::from_secs(1),
            seed_refresh_interval: Duration::from_secs(60),
            sync_interval: Duration::from_secs(5),
        }
    }

    /// Settings for nodes spread over sites joined by a WAN, for a cluster of about
    /// `cluster_size` nodes: slower probes, a longer suspicion, wider gossip.
    pub fn wan(cluster_size: usize) -> Self {
        let probe_period = Duration::from_secs(2);
        Self {
            probe_period,
            probe_rtt: Duration::from_millis(800),
            suspect_to_down_after: suspicion(cluster_size, probe_period, 6.0),
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 4,
            announce_interval: Duration::from_secs(60),
            announce_down_interval: Duration::from_secs(15),
            view_refresh_interval: Duration::from_millis(500),
            rejoin_interval: Duration::from_secs(5),
            ..Self::lan(cluster_size)
        }
    }

    /// Checks every field; the core calls this on construction.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("probe_period", self.probe_period),
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_down_after", self.suspect_to_down_after),
            ("remove_down_after", self.remove_down_after),
            ("gossip_interval", self.gossip_interval),
            ("announce_interval", self.announce_interval),
            ("announce_down_interval", self.announce_down_interval),
            ("view_refresh_interval", self.view_refresh_interval),
            ("load_min_interval", self.load_min_interval),
            ("load_refresh_interval", self.load_refresh_interval),
            ("rejoin_interval", self.rejoin_interval),
            ("seed_refresh_interval", self.seed_refresh_interval),
            ("sync_interval", self.sync_interval),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::Zero(name));
        }
        let counts = [
            ("num_indirect_probes", self.num_indirect_probes),
            ("max_transmissions", usize::from(self.max_transmissions)),
            ("gossip_fanout", self.gossip_fanout),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(ConfigError::Zero(name));
        }
        if self.probe_rtt >= self.probe_period {
            return Err(ConfigError::RttNotBelowPeriod { rtt: self.probe_rtt, period: self.probe_period });
        }
        if self.suspect_to_down_after < self.probe_period {
            return Err(ConfigError::SuspicionTooShort(self.suspect_to_down_after));
        }
        if !(Self::MIN_PACKET_SIZE..=Self::MAX_PACKET_SIZE).contains(&self.max_packet_size) {
            return Err(ConfigError::PacketSize { got: self.max_packet_size });
        }
        if self.load_refresh_interval < self.load_min_interval {
            return Err(ConfigError::LoadRefreshTooShort);
        }
        Ok(())
    }

    /// An upper bound on the time from a node's crash until every live node of a loss-free
    /// cluster of `cluster_size` nodes has marked it down: the worst case of each step in the
    /// module docs' arithmetic. The simulator checks it.
    pub fn detection_bound(&self, cluster_size: usize) -> Duration {
        let n = cluster_size.max(2);
        let first_probe = self.probe_period * (n as u32 - 1).min(12);
        let spread = self.gossip_interval * (2 + log2_ceil(n));
        first_probe + self.probe_period + self.suspect_to_down_after + spread
    }

    /// An upper bound on the time for every node to mark down every node it can no longer
    /// reach when gossip can do little: across a partition, most of each side's gossip goes to
    /// members it cannot reach, so some nodes miss the verdicts and find the far side gone by
    /// probing it themselves. Each node probes each member at least once per two round-robin
    /// cycles (`2n − 1` periods: the list is reshuffled every cycle), then suspects it for
    /// `suspect_to_down_after`; plus one more suspicion timeout for a node that was itself
    /// declared down meanwhile (by a stale verdict, or under loss) and rejoined, which starts
    /// its suspicions over. Loose for large clusters; the simulator's table shows the measured
    /// times.
    pub fn isolation_bound(&self, cluster_size: usize) -> Duration {
        let n = cluster_size.max(2) as u32;
        let probing = self.probe_period * (2 * n) + self.suspect_to_down_after * 2;
        self.detection_bound(cluster_size).max(probing)
    }

    /// An upper bound on the time from the end of a partition (or a node's restart) until every
    /// live node of a loss-free cluster agrees on the membership again.
    ///
    /// After a partition both sides hold each other down, and down is final in SWIM: a member
    /// only comes back under a higher incarnation. The first announce to a down member that
    /// crosses (within `announce_down_interval`) is answered with "you are down"; the answered
    /// node rejoins one incarnation higher and at once announces itself across, and each
    /// announce that crosses makes one more node rejoin: a cascade of a few round trips, probe
    /// periods and gossip rounds (the bound allows a suspicion timeout's worth). Then every
    /// node's new identity must reach everyone: `n` updates, each sent `max_transmissions`
    /// times by each node, in packets of bounded size ([`Config::spread_time`]), which
    /// dominates for hundreds of nodes.
    pub fn convergence_bound(&self, cluster_size: usize) -> Duration {
        let n = cluster_size.max(2);
        self.announce_down_interval
            + self.probe_period * (4 + log2_ceil(n))
            + self.suspect_to_down_after
            + self.gossip_interval * (2 + log2_ceil(n))
            + self.spread_time(n)
    }

    /// How long each node takes to send `updates` membership updates `max_transmissions`
    /// times each when they fill every packet it sends: the floor on spreading many changes at
    /// once. Assumes updates of [`Config::TYPICAL_UPDATE_BYTES`] and a node sending
    /// `gossip_fanout` packets per gossip interval plus a ping and an ack per probe period.
    pub fn spread_time(&self, updates: usize) -> Duration {
        let per_packet = (self.max_packet_size / Self::TYPICAL_UPDATE_BYTES).max(1) as f64;
        let packets_per_sec =
            self.gossip_fanout as f64 / self.gossip_interval.as_secs_f64() + 2.0 / self.probe_period.as_secs_f64();
        let packets = updates as f64 * f64::from(self.max_transmissions) / per_packet;
        Duration::from_secs_f64(packets / packets_per_sec)
    }

    /// foca's configuration for these settings (call [`Config::validate`] first).
    pub(crate) fn to_foca(&self) -> foca::Config {
        let one = NonZeroUsize::MIN;
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(self.num_indirect_probes).unwrap_or(one),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.remove_down_after),
            max_packet_size: NonZeroUsize::new(self.max_packet_size).unwrap_or(one),
            // Needed for partitions to heal: a member that is told it is down rejoins.
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams { frequency: self.announce_interval, num_members: one }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_down_interval,
                num_members: NonZeroUsize::new(2).unwrap_or(one),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(one),
            }),
        }
    }
}

impl Default for Config {
    /// [`Config::lan`] for a cluster of up to 10 nodes.
    fn default() -> Self {
        Self::lan(10)
    }
}

/// `multiplier · max(1, log10 n) · probe_period` (memberlist's suspicion timeout).
fn suspicion(cluster_size: usize, probe_period: Duration, multiplier: f64) -> Duration {
    let scale = f64::max(1.0, (cluster_size.max(1) as f64).log10());
    probe_period.mul_f64(multiplier * scale)
}

/// `6 · ⌈log10(n + 1)⌉` retransmissions, within a u8.
///
/// memberlist multiplies by 4; 6 makes it unlikely that a node misses an update: with `k`
/// transmissions per node that heard it, the share of nodes never reached falls like `e^−k`
/// (an epidemic with `R0 = k`), about 1 in 160 000 at 12 (10 to 99 nodes).
fn max_transmissions(cluster_size: usize) -> u8 {
    let digits = ((cluster_size as f64) + 1.0).log10().ceil().max(1.0);
    (6.0 * digits).min(f64::from(u8::MAX)) as u8
}

/// `max(floor, n · per)`: intervals for traffic every node makes, so that the cluster-wide rate
/// stays bounded as it grows.
fn per_node(cluster_size: usize, floor: Duration, per: Duration) -> Duration {
    floor.max(per * cluster_size.min(u32::MAX as usize) as u32)
}

/// `⌈log2 n⌉` for n ≥ 1.
fn log2_ceil(n: usize) -> u32 {
    usize::BITS - (n.max(1) - 1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for n in [1, 5, 10, 100, 1000, 100_000] {
            Config::lan(n).validate().unwrap();
            Config::wan(n).validate().unwrap();
        }
    }

    #[test]
    fn lan_detects_a_small_cluster_crash_within_five_seconds() {
        let config = Config::lan(5);
        assert_eq!(config.suspect_to_down_after, Duration::from_millis(1600));
        assert!(config.detection_bound(5) <= Duration::from_secs(5), "{:?}", config.detection_bound(5));
    }

    #[test]
    fn suspicion_and_retransmissions_grow_with_log_n() {
        assert_eq!(Config::lan(10).suspect_to_down_after, Duration::from_millis(1600));
        assert_eq!(Config::lan(100).suspect_to_down_after, Duration::from_millis(3200));
        assert_eq!(Config::lan(1000).suspect_to_down_after, Duration::from_millis(4800));
        assert_eq!(Config::lan(9).max_transmissions, 6);
        assert_eq!(Config::lan(10).max_transmissions, 12);
        assert_eq!(Config::lan(1000).max_transmissions, 24);
        assert_eq!(Config::lan(10).load_min_interval, Duration::from_secs(1));
        assert_eq!(Config::lan(100).load_min_interval, Duration::from_secs(10));
        assert_eq!(log2_ceil(1), 0);
        assert_eq!(log2_ceil(5), 3);
        assert_eq!(log2_ceil(1024), 10);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut c = Config::lan(10);
        c.gossip_interval = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::Zero("gossip_interval")));
        let mut c = Config::lan(10);
        c.probe_rtt = c.probe_period;
        assert!(matches!(c.validate(), Err(ConfigError::RttNotBelowPeriod { .. })));
        let mut c = Config::lan(10);
        c.max_packet_size = 100;
        assert_eq!(c.validate(), Err(ConfigError::PacketSize { got: 100 }));
        let mut c = Config::lan(10);
        c.gossip_fanout = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("gossip_fanout")));
    }
}
