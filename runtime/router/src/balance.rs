//! Which replica serves a forwarded request: power of two choices over live
//! load, same site first. A plain state machine: the caller passes the
//! candidates, the time and the randomness in, and reports what happened to
//! each forward; nothing here sleeps, reads a clock or touches a socket, so
//! every choice can be replayed from a seed.
//!
//! # The choice
//!
//! From the candidates (the function's replicas on other nodes, as membership
//! sees them), [`Balancer::pick`]
//!
//! 1. drops the excluded nodes (a retry never goes back to a node that just
//!    failed this request);
//! 2. keeps the healthy ones: a node whose last forward failed is skipped for
//!    [`BalancerConfig::failure_penalty`], unless every remaining candidate is
//!    in that state (then trying one beats failing at once);
//! 3. keeps those in this node's site, if there is any;
//! 4. draws two distinct candidates at random and takes the one with the
//!    lower score (ties: the first drawn, itself random).
//!
//! Two random choices instead of the best one: every node balances on a view
//! that is a little stale (gossip lags, other nodes choose at the same time),
//! and herding everyone onto the single least loaded replica is what makes
//! that staleness hurt. Two choices already remove the long tail of a random
//! pick (Mitzenmacher's power of two choices) without herding.
//!
//! # The score
//!
//! `score = (local_in_flight + gossiped_in_flight + 1) × latency`
//!
//! - `gossiped_in_flight`: the requests the node says it is serving (its load
//!   summary, about a second old);
//! - `local_in_flight`: the forwards this node has sent there and not yet seen
//!   finish (fresh, and it covers the gossip's lag; the node's own count will
//!   also include them once gossiped, which weighs every node the same way);
//! - `+ 1`: the request being placed;
//! - `latency`: an exponentially weighted moving average of the time to the
//!   response head of this node's forwards there,
//!   `ewma ← ewma + α·(sample − ewma)` with α =
//!   [`BalancerConfig::latency_ewma_weight`] (0.25: the last four or so
//!   samples dominate). A node without a sample in
//!   [`BalancerConfig::latency_stale_after`] is given the mean latency of the
//!   other candidates in the draw, so that it competes on load alone until
//!   it has answered (a stale low number would flood it, a stale high one
//!   would starve it forever).
//!
//! The product estimates how long this request would take there if the node
//! served its queue one at a time: (requests ahead + this one) × time per
//! request. It is an estimate to compare two nodes with, not a prediction.
//!
//! # Bounds
//!
//! The balancer remembers one small record per node it forwarded to, at most
//! [`BalancerConfig::nodes_max`] of them: past it, the least recently used
//! record with nothing in flight is forgotten. Records with forwards in
//! flight are never forgotten (their count would be lost), so the map can
//! only exceed the bound by nodes that have forwards in flight right now.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One node that runs the function, as membership sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The node's name (the name in its certificate).
    pub node: String,
    /// The node's site.
    pub site: String,
    /// The node's cluster (gossip) address: where forwards go.
    pub addr: SocketAddr,
    /// The requests the node last reported serving (its gossiped load).
    pub gossiped_in_flight: u32,
}

/// A configuration that does not make sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {reason}")]
pub struct InvalidConfig {
    /// What is wrong.
    pub reason: String,
}

/// How the balancer weighs and punishes nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct BalancerConfig {
    /// A node whose last forward failed is skipped this long, unless it is
    /// the only one left. Default 3 s: about the time SWIM takes to suspect
    /// a dead node, after which membership drops it from the candidates
    /// anyway; short enough that a node that only blipped soon gets its
    /// share back.
    pub failure_penalty: Duration,
    /// α of the latency average, in (0, 1]: the weight of the newest sample.
    /// Default 0.25.
    pub latency_ewma_weight: f64,
    /// A latency average with no sample for this long is not trusted (see
    /// the module docs). Default 2 s: at light load (one request at a time)
    /// two choices always compare the same two replicas, and the one not
    /// picked gets no new sample, so one slow early sample would keep it
    /// idle for as long as its average is believed (seen in
    /// `cargo xtask bench cluster` with a 30 s setting).
    pub latency_stale_after: Duration,
    /// Nodes remembered at most (see the module docs). Default 1024.
    pub nodes_max: usize,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            failure_penalty: Duration::from_secs(3),
            latency_ewma_weight: 0.25,
            latency_stale_after: Duration::from_secs(2),
            nodes_max: 1024,
        }
    }
}

impl BalancerConfig {
    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |reason: &str| Err(InvalidConfig { reason: reason.to_string() });
        if !(self.latency_ewma_weight > 0.0 && self.latency_ewma_weight <= 1.0) {
            return invalid("latency_ewma_weight must be more than 0 and at most 1");
        }
        if self.latency_stale_after.is_zero() {
            return invalid("latency_stale_after must be more than zero");
        }
        if self.nodes_max == 0 {
            return invalid("nodes_max must be more than zero");
        }
        Ok(())
    }
}

/// What this node has seen of one peer.
#[derive(Debug, Default)]
struct NodeRecord {
    /// Forwards sent there and not finished yet.
    in_flight: u32,
    /// Average time to the response head, in microseconds, and when the last
    /// sample came in.
    latency: Option<(f64, Instant)>,
    /// Skipped until then: the last forward there failed.
    penalized_until: Option<Instant>,
    /// When the record was last used, in [`Balancer::tick`]s (for forgetting).
    last_used: u64,
}

/// The replica chooser: see the module docs.
#[derive(Debug)]
pub struct Balancer {
    config: BalancerConfig,
    nodes: HashMap<String, NodeRecord>,
    /// Counts uses of records, so that the least recently used is known
    /// without a clock.
    tick: u64,
}

impl Balancer {
    /// A balancer that knows nothing yet. The configuration should have been
    /// validated.
    pub fn new(config: BalancerConfig) -> Self {
        Self { config, nodes: HashMap::new(), tick: 0 }
    }

    /// Chooses among `candidates` for a request arriving at a node of
    /// `local_site`, never one named in `exclude`; returns its index, or
    /// `None` when no candidate is left. `random` is called at most twice.
    /// Call [`Balancer::started`] with the chosen node when the forward
    /// starts.
    pub fn pick(
        &mut self,
        candidates: &[Replica],
        local_site: &str,
        exclude: &[&str],
        now: Instant,
        random: &mut impl FnMut() -> u64,
    ) -> Option<usize> {
        let eligible: Vec<usize> =
            (0..candidates.len()).filter(|&i| !exclude.contains(&candidates[i].node.as_str())).collect();
        let healthy: Vec<usize> =
            eligible.iter().copied().filter(|&i| !self.penalized(&candidates[i].node, now)).collect();
        let mut pool = if healthy.is_empty() { eligible } else { healthy };
        if pool.iter().any(|&i| candidates[i].site == local_site) {
            pool.retain(|&i| candidates[i].site == local_site);
        }
        let chosen = match pool[..] {
            [] => return None,
            [only] => only,
            _ => {
                let n = pool.len() as u64;
                let first = (random() % n) as usize;
                let mut second = (random() % (n - 1)) as usize;
                if second >= first {
                    second += 1;
                }
                let (a, b) = (pool[first], pool[second]);
                let fallback_us = self.mean_latency_us(pool.iter().map(|&i| &candidates[i]), now);
                let score_a = self.score(&candidates[a], now, fallback_us);
                let score_b = self.score(&candidates[b], now, fallback_us);
                if score_b < score_a { b } else { a }
            }
        };
        self.tick += 1;
        if let Some(record) = self.nodes.get_mut(&candidates[chosen].node) {
            record.last_used = self.tick;
        }
        Some(chosen)
    }

    /// A forward to `node` has started.
    pub fn started(&mut self, node: &str) {
        let record = self.record(node);
        record.in_flight = record.in_flight.saturating_add(1);
    }

    /// `node` sent the response head of a forward, `head_latency` after the
    /// request went out: it is alive, and this is how fast it is.
    pub fn answered(&mut self, node: &str, now: Instant, head_latency: Duration) {
        let weight = self.config.latency_ewma_weight;
        let stale_after = self.config.latency_stale_after;
        let record = self.record(node);
        let sample_us = head_latency.as_secs_f64() * 1e6;
        let average_us = match record.latency {
            Some((average_us, at)) if now.saturating_duration_since(at) < stale_after => {
                average_us + weight * (sample_us - average_us)
            }
            _ => sample_us,
        };
        record.latency = Some((average_us, now));
        record.penalized_until = None;
    }

    /// A forward to `node` failed before its answer: skip the node for a
    /// while.
    pub fn failed(&mut self, node: &str, now: Instant) {
        let until = now + self.config.failure_penalty;
        self.record(node).penalized_until = Some(until);
    }

    /// A forward to `node` has finished, whatever its outcome (for a
    /// streamed response: when its body ended or was dropped).
    pub fn finished(&mut self, node: &str) {
        if let Some(record) = self.nodes.get_mut(node) {
            record.in_flight = record.in_flight.saturating_sub(1);
        }
    }

    /// Forwards to `node` started and not finished.
    pub fn in_flight(&self, node: &str) -> u32 {
        self.nodes.get(node).map_or(0, |record| record.in_flight)
    }

    /// The record of `node`, made if needed (forgetting the least recently
    /// used idle one when full).
    fn record(&mut self, node: &str) -> &mut NodeRecord {
        self.tick += 1;
        if !self.nodes.contains_key(node) && self.nodes.len() >= self.config.nodes_max {
            let idle = self
                .nodes
                .iter()
                .filter(|(_, record)| record.in_flight == 0)
                .min_by_key(|(_, record)| record.last_used)
                .map(|(name, _)| name.clone());
            if let Some(idle) = idle {
                self.nodes.remove(&idle);
            }
        }
        let record = self.nodes.entry(node.to_string()).or_default();
        record.last_used = self.tick;
        record
    }

    fn penalized(&self, node: &str, now: Instant) -> bool {
        self.nodes.get(node).and_then(|record| record.penalized_until).is_some_and(|until| now < until)
    }

    /// The latency average of `node` if it is fresh.
    fn fresh_latency_us(&self, node: &str, now: Instant) -> Option<f64> {
        let (average_us, at) = self.nodes.get(node)?.latency?;
        (now.saturating_duration_since(at) < self.config.latency_stale_after).then_some(average_us)
    }

    /// The mean of the fresh latencies among `replicas`; when none is
    /// known, every candidate gets the same stand-in, so its value does not
    /// matter.
    fn mean_latency_us<'a>(&self, replicas: impl Iterator<Item = &'a Replica>, now: Instant) -> f64 {
        let (sum, count) = replicas
            .filter_map(|replica| self.fresh_latency_us(&replica.node, now))
            .fold((0.0, 0u32), |(sum, count), latency| (sum + latency, count + 1));
        if count == 0 { 1.0 } else { sum / f64::from(count) }
    }

    fn score(&self, replica: &Replica, now: Instant, fallback_latency_us: f64) -> f64 {
        let queue = f64::from(self.in_flight(&replica.node)) + f64::from(replica.gossiped_in_flight) + 1.0;
        queue * self.fresh_latency_us(&replica.node, now).unwrap_or(fallback_latency_us)
    }
}

/// A small, fast, seedable random source (xorshift64*): plenty for choosing
/// replicas, and it keeps this crate free of a random-number dependency.
/// Not for anything secret.
#[derive(Clone, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator whose sequence is fixed by `seed` (any value, zero too).
    pub fn new(seed: u64) -> Self {
        // One splitmix64 step spreads similar seeds apart and never yields
        // the all-zero state, from which xorshift would never move.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self { state: if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z } }
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node: &str, site: &str, gossiped_in_flight: u32) -> Replica {
        let port = 4000 + u16::try_from(node.len()).unwrap();
        Replica {
            node: node.to_string(),
            site: site.to_string(),
            addr: ([127, 0, 0, 1], port).into(),
            gossiped_in_flight,
        }
    }

    /// Picks `count` times with nothing in flight, returning how often each
    /// candidate was chosen.
    fn histogram(balancer: &mut Balancer, candidates: &[Replica], site: &str, seed: u64, count: usize) -> Vec<usize> {
        let mut rng = XorShift64::new(seed);
        let now = Instant::now();
        let mut seen = vec![0; candidates.len()];
        for _ in 0..count {
            let i = balancer.pick(candidates, site, &[], now, &mut || rng.next_u64()).unwrap();
            seen[i] += 1;
        }
        seen
    }

    #[test]
    fn prefers_the_same_site_even_when_busier() {
        let mut balancer = Balancer::new(BalancerConfig::default());
        let candidates = [
            replica("far-1", "west", 0),
            replica("near-1", "east", 50),
            replica("far-2", "west", 0),
            replica("near-2", "east", 60),
        ];
        let seen = histogram(&mut balancer, &candidates, "east", 1, 1000);
        assert_eq!(seen[0] + seen[2], 0, "{seen:?}");
        assert!(seen[1] > seen[3], "the less loaded of the same site wins: {seen:?}");
    }

    #[test]
    fn falls_back_to_other_sites() {
        let now = Instant::now();
        let mut rng = XorShift64::new(2);
        let mut balancer = Balancer::new(BalancerConfig::default());
        let candidates = [replica("far", "west", 0), replica("near", "east", 0)];
        // No candidate in this site at all.
        let seen = histogram(&mut balancer, &candidates[..1], "north", 2, 10);
        assert_eq!(seen, [10]);
        // The one in this site is excluded, then penalized.
        assert_eq!(balancer.pick(&candidates, "east", &["near"], now, &mut || rng.next_u64()), Some(0));
        balancer.failed("near", now);
        assert_eq!(balancer.pick(&candidates, "east", &[], now, &mut || rng.next_u64()), Some(0));
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let mut balancer = Balancer::new(BalancerConfig::default());
        // Two candidates: both are always drawn, the lighter always wins.
        let seen = histogram(&mut balancer, &[replica("busy", "s", 9), replica("idle", "s", 2)], "s", 3, 500);
        assert_eq!(seen, [0, 500]);
        // Three: the busiest never wins a draw, the idlest wins every draw it is in (2/3).
        let candidates = [replica("a", "s", 0), replica("b", "s", 5), replica("c", "s", 10)];
        let seen = histogram(&mut balancer, &candidates, "s", 3, 3000);
        assert_eq!(seen[2], 0, "{seen:?}");
        assert!((1800..2200).contains(&seen[0]), "{seen:?}");
        // Local in-flight counts like gossiped load.
        let mut balancer = Balancer::new(BalancerConfig::default());
        for _ in 0..3 {
            balancer.started("x");
        }
        let seen = histogram(&mut balancer, &[replica("x", "s", 0), replica("y", "s", 2)], "s", 3, 100);
        assert_eq!(seen, [0, 100]);
        balancer.finished("x");
        balancer.finished("x");
        assert_eq!(balancer.in_flight("x"), 1);
        let seen = histogram(&mut balancer, &[replica("x", "s", 0), replica("y", "s", 2)], "s", 3, 100);
        assert_eq!(seen, [100, 0]);
    }

    #[test]
    fn latency_weighs_the_load() {
        let now = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default());
        balancer.answered("fast", now, Duration::from_millis(10));
        balancer.answered("slow", now, Duration::from_millis(100));
        let candidates = [replica("fast", "s", 3), replica("slow", "s", 0)];
        // (3 + 1) × 10 ms < (0 + 1) × 100 ms
        assert_eq!(histogram(&mut balancer, &candidates, "s", 4, 50), [50, 0]);
        // (12 + 1) × 10 ms > 100 ms
        let candidates = [replica("fast", "s", 12), replica("slow", "s", 0)];
        assert_eq!(histogram(&mut balancer, &candidates, "s", 4, 50), [0, 50]);
        // The average moves a quarter of the way to each sample.
        balancer.answered("slow", now, Duration::from_millis(20));
        assert!((balancer.fresh_latency_us("slow", now).unwrap() - 80_000.0).abs() < 1.0);
        // A node never heard from competes with the others' mean on load alone.
        let candidates = [replica("fast", "s", 1), replica("new", "s", 0)];
        assert_eq!(histogram(&mut balancer, &candidates, "s", 4, 50), [0, 50]);
        // A stale average is not trusted either.
        let later = now + Duration::from_secs(3);
        assert_eq!(balancer.fresh_latency_us("slow", later), None);
    }

    #[test]
    fn one_slow_early_answer_does_not_starve_a_replica_at_light_load() {
        let candidates = [replica("a", "s", 0), replica("b", "s", 0)];
        let mut balancer = Balancer::new(BalancerConfig::default());
        let mut rng = XorShift64::new(11);
        let mut now = Instant::now();
        balancer.answered("a", now, Duration::from_millis(1));
        balancer.answered("b", now, Duration::from_millis(50));
        // One request at a time for 10 s, every answer taking 1 ms wherever it runs.
        let mut seen = [0usize; 2];
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            let i = balancer.pick(&candidates, "s", &[], now, &mut || rng.next_u64()).unwrap();
            balancer.started(&candidates[i].node);
            balancer.answered(&candidates[i].node, now, Duration::from_millis(1));
            balancer.finished(&candidates[i].node);
            seen[i] += 1;
        }
        // b is avoided while its slow sample is believed, then shares the load.
        assert!(seen[1] > 3_000, "{seen:?}");
    }

    #[test]
    fn uniform_load_spreads_evenly() {
        let candidates: Vec<Replica> = (0..4).map(|i| replica(&format!("node-{i}"), "s", 7)).collect();
        // Nothing ever in flight: ties, decided by the random draw.
        let mut balancer = Balancer::new(BalancerConfig::default());
        let seen = histogram(&mut balancer, &candidates, "s", 5, 20_000);
        let (max, min) = (seen.iter().max().unwrap(), seen.iter().min().unwrap());
        assert!(*max as f64 / *min as f64 <= 1.2, "{seen:?}");
        // Under steady load: 16 forwards in flight, the oldest finishing as a new one starts.
        let mut balancer = Balancer::new(BalancerConfig::default());
        let mut rng = XorShift64::new(5);
        let now = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut seen = [0usize; 4];
        for _ in 0..20_000 {
            let i = balancer.pick(&candidates, "s", &[], now, &mut || rng.next_u64()).unwrap();
            balancer.started(&candidates[i].node);
            seen[i] += 1;
            in_flight.push_back(i);
            if in_flight.len() > 16 {
                let done = in_flight.pop_front().unwrap();
                balancer.answered(&candidates[done].node, now, Duration::from_millis(5));
                balancer.finished(&candidates[done].node);
            }
        }
        let (max, min) = (seen.iter().max().unwrap(), seen.iter().min().unwrap());
        assert!(*max as f64 / *min as f64 <= 1.05, "{seen:?}");
    }

    #[test]
    fn a_failed_node_is_skipped_for_the_penalty_unless_alone() {
        let now = Instant::now();
        let mut rng = XorShift64::new(6);
        let mut balancer = Balancer::new(BalancerConfig::default());
        let candidates = [replica("bad", "s", 0), replica("good", "s", 100)];
        balancer.failed("bad", now);
        for _ in 0..50 {
            assert_eq!(balancer.pick(&candidates, "s", &[], now, &mut || rng.next_u64()), Some(1));
        }
        // Alone (or everyone else excluded): tried anyway.
        assert_eq!(balancer.pick(&candidates[..1], "s", &[], now, &mut || rng.next_u64()), Some(0));
        assert_eq!(balancer.pick(&candidates, "s", &["good"], now, &mut || rng.next_u64()), Some(0));
        // Still penalized just before the end, forgiven at the end.
        let almost = now + Duration::from_millis(2999);
        assert_eq!(balancer.pick(&candidates, "s", &[], almost, &mut || rng.next_u64()), Some(1));
        let after = now + Duration::from_secs(3);
        assert_eq!(balancer.pick(&candidates, "s", &[], after, &mut || rng.next_u64()), Some(0));
        // An answer forgives at once.
        balancer.failed("bad", now);
        balancer.answered("bad", now, Duration::from_millis(1));
        balancer.answered("good", now, Duration::from_millis(1));
        assert_eq!(balancer.pick(&candidates, "s", &[], now, &mut || rng.next_u64()), Some(0));
    }

    #[test]
    fn excluded_nodes_are_never_picked() {
        let now = Instant::now();
        let mut rng = XorShift64::new(7);
        let mut balancer = Balancer::new(BalancerConfig::default());
        let candidates = [replica("a", "s", 0), replica("b", "s", 0), replica("c", "s", 0)];
        for _ in 0..200 {
            let i = balancer.pick(&candidates, "s", &["a", "c"], now, &mut || rng.next_u64());
            assert_eq!(i, Some(1));
        }
        assert_eq!(balancer.pick(&candidates, "s", &["a", "b", "c"], now, &mut || rng.next_u64()), None);
        assert_eq!(balancer.pick(&[], "s", &[], now, &mut || rng.next_u64()), None);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let candidates: Vec<Replica> = (0..5).map(|i| replica(&format!("n{i}"), "s", i)).collect();
        let run = |seed| {
            let mut balancer = Balancer::new(BalancerConfig::default());
            let mut rng = XorShift64::new(seed);
            let now = Instant::now();
            (0..200)
                .map(|_| {
                    let i = balancer.pick(&candidates, "s", &[], now, &mut || rng.next_u64()).unwrap();
                    balancer.started(&candidates[i].node);
                    i
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        assert_ne!(XorShift64::new(0).next_u64(), 0);
    }

    #[test]
    fn remembers_a_bounded_number_of_nodes() {
        let now = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig { nodes_max: 3, ..BalancerConfig::default() });
        balancer.started("busy");
        for i in 0..10 {
            balancer.answered(&format!("idle-{i}"), now, Duration::from_millis(1));
        }
        assert_eq!(balancer.nodes.len(), 3);
        assert_eq!(balancer.in_flight("busy"), 1, "a node with forwards in flight is never forgotten");
        assert!(balancer.nodes.contains_key("idle-9"));
    }

    #[test]
    fn config_is_validated() {
        assert!(BalancerConfig::default().validate().is_ok());
        for bad in [
            BalancerConfig { latency_ewma_weight: 0.0, ..BalancerConfig::default() },
            BalancerConfig { latency_ewma_weight: f64::NAN, ..BalancerConfig::default() },
            BalancerConfig { latency_stale_after: Duration::ZERO, ..BalancerConfig::default() },
            BalancerConfig { nodes_max: 0, ..BalancerConfig::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
