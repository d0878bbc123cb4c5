//! Load summaries and how they travel: each node's [`LoadSummary`] is a foca custom
//! broadcast, versioned so that a newer summary replaces an older one everywhere, and read
//! back into a table of the latest summary per member.
//!
//! The table is shared between the core and the [`foca::BroadcastHandler`] that foca owns
//! (foca gives no access to its handler), behind a mutex that only the core's own thread
//! ever takes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::Identity;

/// What a node tells the cluster about how busy it is and how current it is.
///
/// Kept small: it is gossiped by every node, compactly encoded (postcard varints: typically
/// 10 to 20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Requests being served right now.
    pub in_flight: u32,
    /// Wasm instances alive right now.
    pub instances: u32,
    /// CPU use estimate, in thousandths of the node's capacity (0 to 1000).
    pub cpu_permille: u16,
    /// Functions compiled and ready to serve here.
    pub functions_ready: u32,
    /// The revision of the desired state (from the control plane) this node has applied.
    pub applied_revision: u64,
}

/// The one kind of custom broadcast so far; an enum so that new kinds can be added without
/// breaking old decoders (postcard writes the variant index first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Broadcast {
    /// A node's status, see [`Status`].
    Status(Status),
}

/// One node's status as broadcast: its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Status {
    /// The node's gossip address: which member this is about.
    pub addr: SocketAddr,
    /// The identity's incarnation, so a restarted node's statuses replace its old life's.
    pub incarnation: u64,
    /// Bumped on every broadcast of this incarnation.
    pub version: u64,
    /// The node's load.
    pub load: LoadSummary,
}

impl Status {
    fn key(&self) -> StatusKey {
        StatusKey { addr: self.addr, incarnation: self.incarnation, version: self.version }
    }
}

/// How foca tells broadcasts apart: a newer status of the same member invalidates older ones
/// still waiting to be re-sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusKey {
    addr: SocketAddr,
    incarnation: u64,
    version: u64,
}

impl foca::Invalidates for StatusKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.addr == other.addr && (self.incarnation, self.version) >= (other.incarnation, other.version)
    }
}

/// The latest status known per member, and which changed since the core last looked.
#[derive(Debug, Default)]
pub(crate) struct StatusTable {
    /// One entry per gossip address; pruned by the core against foca's member list.
    pub latest: BTreeMap<SocketAddr, Status>,
    /// Addresses whose status changed since the core drained this. Bounded by the number of
    /// broadcasts one packet carries, since the core drains it after every input.
    pub changed: Vec<SocketAddr>,
}

impl StatusTable {
    /// Records `status` if it is newer than what the table holds for its member.
    fn offer(&mut self, status: Status) -> bool {
        let newer = self
            .latest
            .get(&status.addr)
            .is_none_or(|old| (status.incarnation, status.version) > (old.incarnation, old.version));
        if newer {
            self.changed.push(status.addr);
            self.latest.insert(status.addr, status);
        }
        newer
    }
}

/// A handle on the table, shared by the core and its broadcast handler.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedTable(Arc<Mutex<StatusTable>>);

impl SharedTable {
    /// Locks the table. Only the core's thread takes this lock, never twice at once; a panic
    /// while holding it cannot leave it half-written in a way that matters (each write is one
    /// insert), so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, StatusTable> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a received broadcast was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BroadcastError {
    /// The bytes are not a broadcast this version understands.
    #[error("undecodable broadcast: {0}")]
    Decode(#[from] postcard::Error),
    /// The broadcast decoded but bytes were left over.
    #[error("broadcast has {0} trailing bytes")]
    Trailing(usize),
}

/// foca's view of the status table: decodes broadcasts, keeps the newer ones.
#[derive(Debug)]
pub(crate) struct StatusHandler {
    pub table: SharedTable,
}

impl foca::BroadcastHandler<Identity> for StatusHandler {
    type Key = StatusKey;
    type Error = BroadcastError;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&Identity>) -> Result<Option<StatusKey>, BroadcastError> {
        let (broadcast, rest): (Broadcast, _) = postcard::take_from_bytes(data)?;
        if !rest.is_empty() {
            return Err(BroadcastError::Trailing(rest.len()));
        }
        let Broadcast::Status(status) = broadcast;
        let key = status.key();
        Ok(self.table.lock().offer(status).then_some(key))
    }
}

/// Encodes a status for [`foca::Foca::add_broadcast`].
pub(crate) fn encode(status: &Status) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&Broadcast::Status(status.clone()))
}

#[cfg(test)]
mod tests {
    use foca::{BroadcastHandler, Invalidates};

    use super::*;

    fn status(incarnation: u64, version: u64) -> Status {
        Status {
            addr: SocketAddr::from(([10, 0, 0, 1], 7946)),
            incarnation,
            version,
            load: LoadSummary {
                in_flight: 12,
                instances: 3,
                cpu_permille: 455,
                functions_ready: 7,
                applied_revision: 1234,
            },
        }
    }

    #[test]
    fn newer_replaces_older_and_older_is_dropped() {
        let mut handler = StatusHandler { table: SharedTable::default() };
        let v2 = encode(&status(5, 2)).unwrap();
        let v1 = encode(&status(5, 1)).unwrap();
        let restarted = encode(&status(6, 1)).unwrap();
        assert!(handler.receive_item(&v2, None).unwrap().is_some());
        assert!(handler.receive_item(&v1, None).unwrap().is_none(), "older version");
        assert!(handler.receive_item(&v2, None).unwrap().is_none(), "same version");
        assert!(handler.receive_item(&restarted, None).unwrap().is_some(), "newer incarnation");
        let table = handler.table.lock();
        assert_eq!(table.latest.len(), 1);
        assert_eq!(table.changed.len(), 2);
    }

    #[test]
    fn keys_invalidate_older_versions_of_the_same_member() {
        assert!(status(5, 2).key().invalidates(&status(5, 1).key()));
        assert!(status(6, 0).key().invalidates(&status(5, 9).key()));
        assert!(!status(5, 1).key().invalidates(&status(5, 2).key()));
        let mut other = status(9, 9);
        other.addr = SocketAddr::from(([10, 0, 0, 2], 7946));
        assert!(!other.key().invalidates(&status(5, 1).key()));
    }

    #[test]
    fn encoding_is_compact_and_strict() {
        let bytes = encode(&status(1_700_000_000_000, 42)).unwrap();
        assert!(bytes.len() <= 32, "{} bytes", bytes.len());
        let mut handler = StatusHandler { table: SharedTable::default() };
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(handler.receive_item(&trailing, None), Err(BroadcastError::Trailing(1))));
        assert!(handler.receive_item(&bytes[..bytes.len() - 1], None).is_err());
    }
}
