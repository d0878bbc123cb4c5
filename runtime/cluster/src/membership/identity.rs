//! Who a member is: [`Identity`] (what foca gossips about every member) and [`NodeId`].
//!
//! An identity is sent in every gossip header (twice) and in every membership update, so
//! it is kept small: names are short shared strings, and the encoding is postcard.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest node name or site name an [`Identity`] accepts, in bytes.
///
/// Three identities (a header's source and destination plus a probe target) with names this
/// long still fit well inside the smallest allowed packet
/// ([`Config::MIN_PACKET_SIZE`](super::Config::MIN_PACKET_SIZE)).
pub const MAX_NAME_LEN: usize = 64;

/// A node's stable id: the same across restarts of the node (the caller chooses it once, e.g.
/// a random `u64` kept with the node's data, and passes it on every start).
///
/// Membership itself keys members by gossip address, not by this id (see [`Identity`]); the
/// id is for the layers above, which want to name "the same node" across address changes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What is wrong with the parts of an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The node name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("node name must be 1 to {MAX_NAME_LEN} bytes long, got {0} bytes")]
    BadName(usize),
    /// The site name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("site name must be 1 to {MAX_NAME_LEN} bytes long, got {0} bytes")]
    BadSite(usize),
}

/// One incarnation of one node, as the cluster sees it.
///
/// - `gossip_addr` is the member's **address** in foca's sense: two identities with the same
///   gossip address are the same member, and the one with the higher `incarnation` replaces
///   the other everywhere (a restart, or a rejoin after being declared down). A join seed is
///   reached by this address too, so it must be the address peers can send to.
/// - `incarnation` orders the lives of a node. **A restarted node must come back with a
///   higher incarnation than any it had before**, or the cluster keeps treating it as the old,
///   dead one. The core takes no clock, so the caller supplies it: the simplest choice is the
///   wall-clock time of the process start in milliseconds since the Unix epoch; a counter
///   persisted with the node's data and bumped on every start is immune to clock steps. After
///   the cluster declares this identity down (a false positive, or a healed partition), foca
///   calls [`renew`](foca::Identity::renew), which returns the same identity with
///   `incarnation + 1`, and the node rejoins under it.
///
///   This is not SWIM's own per-identity incarnation (a `u16` foca bumps to refute suspicion);
///   that one lives inside foca and restarts from zero with every new identity.
/// - `leaving` marks the identity a node declares down when it leaves gracefully
///   ([`Membership::leave`](super::Membership::leave)). It outranks the same incarnation without
///   it, so the "down" update that spreads the departure carries the mark to everyone who
///   learns of it: they record "left", not "failed".
/// - `id`, `name`, `site` and `ingress_addr` ride along so that every member knows them
///   without asking: the stable [`NodeId`], the node's name (its certificate name), the site
///   it runs in, and where it serves HTTP.
///
/// Two identities are equal when their gossip address, incarnation, leave mark and node id
/// are: the name, site and ingress address are attributes of one life of a node and cannot
/// change within it (a node restarted with other ones comes back with a higher incarnation).
/// foca compares identities constantly; this keeps it to a few integer comparisons.
///
/// Cloning is cheap (names are shared).
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    gossip_addr: SocketAddr,
    incarnation: u64,
    leaving: bool,
    id: NodeId,
    ingress_addr: SocketAddr,
    name: Arc<str>,
    site: Arc<str>,
}

impl Identity {
    /// An identity; `name` and `site` must be 1 to [`MAX_NAME_LEN`] bytes.
    pub fn new(
        id: NodeId,
        name: &str,
        site: &str,
        gossip_addr: SocketAddr,
        ingress_addr: SocketAddr,
        incarnation: u64,
    ) -> Result<Self, IdentityError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(IdentityError::BadName(name.len()));
        }
        if site.is_empty() || site.len() > MAX_NAME_LEN {
            return Err(IdentityError::BadSite(site.len()));
        }
        Ok(Self { gossip_addr, incarnation, leaving: false, id, ingress_addr, name: name.into(), site: site.into() })
    }

    /// The node's stable id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The site the node runs in.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Where the node receives gossip (and, over the same endpoint, peer RPC); the member's key.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Where the node serves HTTP.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress_addr
    }

    /// Which life of the node this is; higher replaces lower (see the type's docs).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether this is the identity of a node that left gracefully.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The same node with another incarnation (for a restart the caller manages itself).
    pub fn with_incarnation(&self, incarnation: u64) -> Self {
        Self { incarnation, leaving: false, ..self.clone() }
    }

    /// This identity marked as leaving.
    pub(crate) fn as_leaving(&self) -> Self {
        Self { leaving: true, ..self.clone() }
    }

    /// Total order among identities sharing a gossip address: the higher wins.
    fn conflict_key(&self) -> (u64, bool, NodeId, &str, &str, SocketAddr) {
        (self.incarnation, self.leaving, self.id, &self.name, &self.site, self.ingress_addr)
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.gossip_addr == other.gossip_addr
            && self.incarnation == other.incarnation
            && self.leaving == other.leaving
            && self.id == other.id
    }
}

impl Eq for Identity {}

impl std::hash::Hash for Identity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.gossip_addr, self.incarnation, self.leaving, self.id).hash(state);
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.gossip_addr, self.incarnation)?;
        if self.leaving { f.write_str("(leaving)") } else { Ok(()) }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    /// Auto-rejoin: when the cluster declares us down, come back one incarnation higher.
    fn renew(&self) -> Option<Self> {
        let incarnation = self.incarnation.checked_add(1)?;
        Some(self.with_incarnation(incarnation))
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Ties past the incarnation are broken by the other fields so that exactly one of two
        // different identities wins (two nodes misconfigured with one address still converge,
        // to one of them).
        self.conflict_key() > adversary.conflict_key()
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity as _;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn names_are_bounded() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            Identity::new(NodeId(1), &long, "a", addr(1), addr(2), 0).unwrap_err(),
            IdentityError::BadName(MAX_NAME_LEN + 1)
        );
        assert_eq!(Identity::new(NodeId(1), "n", "", addr(1), addr(2), 0).unwrap_err(), IdentityError::BadSite(0));
    }

    #[test]
    fn renew_wins_over_the_old_identity() {
        let old = Identity::new(NodeId(1), "n1", "a", addr(1), addr(2), 7).unwrap();
        let new = old.renew().unwrap();
        assert_eq!(new.incarnation(), 8);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert!(old.with_incarnation(u64::MAX).renew().is_none());
    }

    #[test]
    fn leaving_outranks_the_same_life_but_not_the_next() {
        let alive = Identity::new(NodeId(1), "n1", "a", addr(1), addr(2), 7).unwrap();
        let leaving = alive.as_leaving();
        assert_ne!(alive, leaving);
        assert!(leaving.win_addr_conflict(&alive));
        assert!(alive.with_incarnation(8).win_addr_conflict(&leaving));
        assert!(!alive.with_incarnation(8).is_leaving());
    }

    #[test]
    fn ties_have_exactly_one_winner() {
        let a = Identity::new(NodeId(1), "n1", "a", addr(1), addr(2), 7).unwrap();
        let b = Identity::new(NodeId(2), "n1", "a", addr(1), addr(2), 7).unwrap();
        assert!(a.win_addr_conflict(&b) != b.win_addr_conflict(&a));
    }

    #[test]
    fn encoding_is_compact() {
        let id =
            Identity::new(NodeId(u64::MAX), "node-17", "eu-west", addr(7946), addr(8080), 1_700_000_000_000).unwrap();
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert!(bytes.len() <= 48, "{} bytes", bytes.len());
        let back: Identity = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, id);
    }
}
