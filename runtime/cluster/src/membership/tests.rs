//! Unit tests of the core through its public API, on a tiny loss-free zero-delay network
//! (the simulator covers loss, delay, partitions and scale).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8), 7946))
}

fn identity(i: usize, incarnation: u64) -> Identity {
    Identity::new(
        NodeId(i as u64),
        &format!("n{i}"),
        "a",
        addr(i),
        SocketAddr::from(([10, 0, 1, i as u8], 80)),
        incarnation,
    )
    .unwrap()
}

/// Cores on a perfect network: every datagram arrives at once, in order.
struct Net {
    now: Instant,
    cores: Vec<Option<Membership>>,
    /// Paused cores (think SIGSTOP): their timers wait and datagrams to them are held.
    paused: Vec<bool>,
    held: Vec<(Arc<str>, SocketAddr, Bytes)>,
    /// Datagrams on their way: the sender's (certified) name, the recipient, the bytes.
    in_flight: VecDeque<(Arc<str>, SocketAddr, Bytes)>,
    events: Vec<Vec<Event>>,
}

impl Net {
    fn new(nodes: usize) -> Self {
        let now = Instant::now();
        let cores = (0..nodes)
            .map(|i| Some(Membership::new(now, identity(i, 1), Config::lan(nodes), i as u64).unwrap()))
            .collect();
        Self {
            now,
            cores,
            paused: vec![false; nodes],
            held: Vec::new(),
            in_flight: VecDeque::new(),
            events: vec![Vec::new(); nodes],
        }
    }

    fn core(&mut self, i: usize) -> &mut Membership {
        self.cores[i].as_mut().unwrap()
    }

    /// Collects outputs and delivers datagrams until the network is quiet.
    fn pump(&mut self) {
        loop {
            for (i, core) in self.cores.iter_mut().enumerate() {
                let Some(core) = core else { continue };
                let name: Arc<str> = core.identity().name().into();
                while let Some(output) = core.poll_output() {
                    match output {
                        Output::Send { to, bytes } => self.in_flight.push_back((name.clone(), to, bytes)),
                        Output::Event(event) => self.events[i].push(event),
                    }
                }
            }
            let Some((from, to, bytes)) = self.in_flight.pop_front() else { return };
            if self
                .paused
                .iter()
                .zip(&self.cores)
                .any(|(&p, c)| p && c.as_ref().is_some_and(|c| c.identity().gossip_addr() == to))
            {
                self.held.push((from, to, bytes));
                continue;
            }
            let now = self.now;
            if let Some(Some(core)) =
                self.cores.iter_mut().find(|c| c.as_ref().is_some_and(|c| c.identity().gossip_addr() == to))
            {
                core.handle_peer_data(now, &from, &bytes).unwrap();
            }
        }
    }

    /// Advances virtual time by `by`, firing every timer on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            self.pump();
            let running = || self.cores.iter().zip(&self.paused).filter(|(_, p)| !**p).filter_map(|(c, _)| c.as_ref());
            let next = running().filter_map(Membership::poll_timeout).min();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    for (core, _) in self.cores.iter_mut().zip(&self.paused).filter(|(_, p)| !**p) {
                        if let Some(core) = core {
                            core.handle_timeout(now).unwrap();
                        }
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// Resumes a paused core: it gets the datagrams held for it, and its late timers fire.
    fn resume(&mut self, i: usize) {
        self.paused[i] = false;
        let now = self.now;
        self.in_flight.extend(self.held.drain(..));
        self.core(i).handle_timeout(now).unwrap();
    }

    fn join_all(&mut self) {
        for i in 1..self.cores.len() {
            let now = self.now;
            self.core(i).join(now, addr(0)).unwrap();
        }
        self.advance(Duration::from_secs(3));
    }

    fn state_of(&mut self, observer: usize, member: usize) -> Option<MemberState> {
        self.core(observer).member(addr(member)).map(|v| v.state)
    }
}

#[test]
fn nodes_join_through_a_seed_and_learn_each_other() {
    let mut net = Net::new(4);
    net.join_all();
    for i in 0..4 {
        assert!(net.core(i).is_connected(), "n{i} connected");
        assert_eq!(net.core(i).active_count(), 3, "n{i} knows everyone");
        assert!(net.events[i].contains(&Event::Joined));
        for j in (0..4).filter(|&j| j != i) {
            assert_eq!(net.state_of(i, j), Some(MemberState::Alive));
        }
    }
    let members = net.core(2).members();
    assert!(members[0].local && members[0].identity == identity(2, 1));
}

#[test]
fn load_summaries_spread_and_are_coalesced() {
    let mut net = Net::new(3);
    net.join_all();
    let load = LoadSummary { in_flight: 7, instances: 2, cpu_permille: 300, functions_ready: 4, applied_revision: 9 };
    let now = net.now;
    net.core(1).set_load(now, load).unwrap();
    // Past load_min_interval and its random stretch (up to 1.5 s here).
    net.advance(Duration::from_secs(2));
    assert_eq!(net.core(0).member(addr(1)).unwrap().load, Some(load));
    assert!(net.events[2].contains(&Event::LoadUpdated { addr: addr(1), load }));

    // Two changes within load_min_interval: the second goes out only when it is over.
    let first = LoadSummary { in_flight: 8, ..load };
    let second = LoadSummary { in_flight: 9, ..load };
    let now = net.now;
    net.core(1).set_load(now, first).unwrap();
    net.advance(Duration::from_millis(10));
    let now = net.now;
    net.core(1).set_load(now, second).unwrap();
    net.advance(Duration::from_millis(600));
    assert_eq!(net.core(0).member(addr(1)).unwrap().load, Some(first));
    net.advance(Duration::from_millis(1500));
    assert_eq!(net.core(0).member(addr(1)).unwrap().load, Some(second));
}

#[test]
fn a_crashed_node_is_suspected_then_declared_down_within_the_bound() {
    let mut net = Net::new(4);
    net.join_all();
    let crashed = identity(3, 1);
    net.cores[3] = None;
    let bound = net.core(0).config().detection_bound(4);
    net.advance(bound);
    for i in 0..3 {
        assert_eq!(net.state_of(i, 3), Some(MemberState::Down), "n{i}");
        assert!(net.events[i].contains(&Event::MemberDown(crashed.clone())), "n{i}: {:?}", net.events[i]);
        assert_eq!(net.core(i).active_count(), 2);
    }
    assert!(net.events.iter().flatten().any(|e| *e == Event::MemberSuspect(crashed.clone())));
}

#[test]
fn a_restarted_node_replaces_its_old_identity() {
    let mut net = Net::new(3);
    net.join_all();
    let now = net.now;
    net.cores[2] = Some(Membership::new(now, identity(2, 2), Config::lan(3), 99).unwrap());
    net.core(2).join(now, addr(0)).unwrap();
    net.advance(Duration::from_secs(2));
    for i in 0..2 {
        assert!(
            net.events[i].contains(&Event::MemberReplaced { old: identity(2, 1), new: identity(2, 2) }),
            "n{i}: {:?}",
            net.events[i]
        );
        assert_eq!(net.core(i).member(addr(2)).unwrap().identity.incarnation(), 2);
        assert_eq!(net.core(i).active_count(), 2);
    }
    assert_eq!(net.core(2).active_count(), 2, "the restarted node learnt the roster");
}

#[test]
fn leaving_is_recorded_as_left_and_ends_the_core() {
    let mut net = Net::new(4);
    net.join_all();
    let now = net.now;
    net.core(3).leave(now).unwrap();
    assert!(net.core(3).has_left());
    assert_eq!(net.core(3).poll_timeout(), None);
    net.advance(Duration::from_secs(2));
    for i in 0..3 {
        assert_eq!(net.state_of(i, 3), Some(MemberState::Left), "n{i}");
        let left = net.events[i].iter().any(|e| matches!(e, Event::MemberLeft(id) if id.gossip_addr() == addr(3)));
        let down = net.events[i].iter().any(|e| matches!(e, Event::MemberDown(id) if id.gossip_addr() == addr(3)));
        assert!(left && !down, "n{i}: {:?}", net.events[i]);
    }
    // A node that left ignores everything and cannot join again.
    let now = net.now;
    let core = net.core(3);
    assert!(core.handle_data(now, &[0, 1, 2]).is_ok());
    assert!(matches!(core.join(now, addr(0)), Err(MembershipError::Left)));
    assert_eq!(core.members()[0].state, MemberState::Left);
}

#[test]
fn bad_datagrams_are_refused_without_harm() {
    let mut net = Net::new(2);
    net.join_all();
    let now = net.now;
    let core = net.core(0);
    assert!(matches!(core.handle_data(now, &[]), Err(MembershipError::Empty)));
    assert!(matches!(core.handle_data(now, &[9, 1]), Err(MembershipError::UnknownKind(9))));
    assert!(matches!(core.handle_data(now, &[KIND_JOIN, 0xff]), Err(MembershipError::BadJoin(_))));
    assert!(matches!(core.handle_data(now, &[KIND_ROSTER, 1, 0xff]), Err(MembershipError::BadRoster(_))));
    assert!(matches!(core.handle_data(now, &[KIND_FOCA, 1, 2, 3]), Err(MembershipError::Protocol(_))));
    let huge = vec![KIND_FOCA; 5000];
    assert!(matches!(core.handle_data(now, &huge), Err(MembershipError::TooBig { len: 5000, .. })));
    assert_eq!(core.active_count(), 1);
    net.advance(Duration::from_secs(2));
    assert_eq!(net.core(0).active_count(), 1);
}

#[test]
fn a_peer_cannot_speak_in_another_members_name() {
    let mut net = Net::new(3);
    net.join_all();
    // n1's own gossip and join requests, delivered as if n2's certificate had sent them.
    let now = net.now + Duration::from_secs(1);
    net.core(1).handle_timeout(now).unwrap();
    let mut from_n1 = Vec::new();
    while let Some(output) = net.core(1).poll_output() {
        if let Output::Send { bytes, .. } = output {
            from_n1.push(bytes);
        }
    }
    let mut join = vec![KIND_JOIN];
    join.extend(postcard::to_allocvec(&(identity(1, 1), true)).unwrap());
    from_n1.push(join.into());
    assert!(from_n1.iter().any(|bytes| bytes[0] == KIND_FOCA), "n1 gossiped");
    let before = net.core(0).members();
    for bytes in &from_n1 {
        let error = net.core(0).handle_peer_data(now, "n2", bytes).unwrap_err();
        assert!(
            matches!(&error, MembershipError::Impersonation { claimed, certified } if claimed == "n1" && certified == "n2"),
            "{error}"
        );
    }
    assert_eq!(net.core(0).members(), before, "nothing changed");
    assert!(net.core(0).poll_output().is_none(), "nothing answered");
    // The same bytes under the right name are accepted.
    for bytes in &from_n1 {
        net.core(0).handle_peer_data(now, "n1", bytes).unwrap();
    }
}

#[test]
fn a_node_paused_for_less_than_the_suspicion_timeout_refutes_and_is_never_declared_down() {
    let mut net = Net::new(5);
    net.join_all();
    let timeout = net.core(0).config().suspect_to_down_after;
    net.paused[2] = true;
    // Long enough for probes of it to fail (suspicion), shorter than the timeout.
    net.advance(timeout * 2 / 3);
    assert!(
        (0..5).filter(|&i| i != 2).any(|i| net.state_of(i, 2) == Some(MemberState::Suspect)),
        "nobody suspected the paused node"
    );
    net.resume(2);
    net.advance(timeout * 4);
    for i in (0..5).filter(|&i| i != 2) {
        assert_eq!(net.state_of(i, 2), Some(MemberState::Alive), "n{i}");
        assert!(
            !net.events[i].iter().any(|e| matches!(e, Event::MemberDown(_) | Event::MemberReplaced { .. })),
            "n{i}: {:?}",
            net.events[i]
        );
    }
    assert!(!net.events[2].iter().any(|e| matches!(e, Event::Rejoined(_))), "{:?}", net.events[2]);
    assert_eq!(net.core(2).identity().incarnation(), 1);
}

#[test]
fn joining_oneself_is_skipped_and_seeds_are_retried_until_reached() {
    let now = Instant::now();
    let mut core = Membership::new(now, identity(1, 1), Config::lan(3), 1).unwrap();
    core.join(now, addr(1)).unwrap();
    assert!(std::iter::from_fn(|| core.poll_output()).all(|o| !matches!(o, Output::Send { .. })));
    core.join(now, addr(2)).unwrap();
    let sends = |core: &mut Membership| {
        std::iter::from_fn(|| core.poll_output())
            .filter(|o| matches!(o, Output::Send { to, .. } if *to == addr(2)))
            .count()
    };
    assert_eq!(sends(&mut core), 1);
    // Nobody answers: the join request is sent again every rejoin_interval (1 s).
    let mut at = now;
    let mut retries = 0;
    while at < now + Duration::from_millis(4500) {
        at = core.poll_timeout().unwrap();
        core.handle_timeout(at).unwrap();
        retries += sends(&mut core);
    }
    assert_eq!(retries, 4);
}

#[test]
fn a_big_roster_is_split_into_bounded_datagrams() {
    let now = Instant::now();
    let config = Config::lan(300);
    let max = config.max_packet_size;
    let mut seed = Membership::new(now, identity(0, 1), config.clone(), 0).unwrap();
    let long = "x".repeat(MAX_NAME_LEN);
    let members = (1..300u32).map(|i| {
        let a = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 7946));
        foca::Member::new(
            Identity::new(NodeId(u64::from(i)), &long, &long, a, a, u64::MAX).unwrap(),
            0,
            foca::State::Alive,
        )
    });
    seed.swim.apply_many(members, false, effects!(seed, now)).unwrap();
    while seed.poll_output().is_some() {}
    let joiner = identity(200, 1);
    let mut request = vec![KIND_JOIN];
    request.extend(postcard::to_allocvec(&(&joiner, true)).unwrap());
    seed.handle_data(now, &request).unwrap();
    let rosters: Vec<Bytes> = std::iter::from_fn(|| seed.poll_output())
        .filter_map(|o| match o {
            Output::Send { bytes, .. } if bytes[0] == KIND_ROSTER => Some(bytes),
            _ => None,
        })
        .collect();
    assert!(rosters.len() > 10, "{} datagrams", rosters.len());
    assert!(rosters.iter().all(|d| d.len() <= max + 1));
    let mut fresh = Membership::new(now, joiner, config, 7).unwrap();
    for roster in &rosters {
        fresh.handle_data(now, roster).unwrap();
    }
    // Everyone but the seed itself (it announces itself) and the member at the joiner's address.
    assert_eq!(fresh.active_count(), 298);
}

#[test]
fn poll_timeout_is_the_next_tick_before_anything_happens() {
    let now = Instant::now();
    let config = Config::lan(3);
    let core = Membership::new(now, identity(1, 1), config.clone(), 1).unwrap();
    assert_eq!(core.poll_timeout(), Some(now + config.view_refresh_interval));
    assert!(!core.is_connected());
    let mut bad = config;
    bad.probe_rtt = bad.probe_period;
    assert!(matches!(Membership::new(now, identity(1, 1), bad, 1), Err(MembershipError::Config(_))));
}
