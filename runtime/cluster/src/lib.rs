//! `wedge-cluster`: how the nodes of a wedge cluster find each other, agree
//! on who is alive, and talk to each other.
//!
//! - [`membership`]: a sans-IO state machine around `foca` (SWIM): it takes
//!   time and input and returns effects; no sockets, clocks or tokio inside.
//!   A member is a node id, a site, advertised addresses and an incarnation;
//!   custom broadcasts carry each node's load summary.
//! - [`sim`]: a deterministic simulator that runs many membership cores on a
//!   virtual clock with loss, delay, partitions, crashes and restarts, checks
//!   safety, detection and convergence after every step, and replays any run
//!   from its seed (`cargo xtask sim`, `SIM_SEED=<n>`).
//! - [`pki`]: the cluster CA and node certificates (rcgen).
//! - [`transport`]: one quinn endpoint per node, mutual TLS against the
//!   cluster CA; gossip as QUIC datagrams, peer RPC on streams.
//! - [`agent`]: the async shell that runs a membership core over a transport
//!   inside a node (one owner task, DNS seeds, snapshots, graceful leave).
//!
//! It must not know about functions, routes or the control plane.

pub mod agent;
pub mod membership;
pub mod pki;
pub mod sim;
pub mod transport;
