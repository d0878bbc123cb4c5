//! `wedge-router`: the HTTP front door of a node.
//!
//! It owns the route table (optional host, exact or `*.example.com`, plus the
//! longest path prefix, mapping to a function), request ids, and the hyper
//! server with its protective limits (header read timeout, header size) and
//! graceful drain on shutdown.
//!
//! It also forwards requests to the nodes that run their function, over the
//! cluster's QUIC connections ([`Forwarder`], [`serve_forwarded`]: HTTP/1.1,
//! one stream per request, hop counting, one retry, refusals while draining),
//! choosing the replica
//! with a sans-IO power-of-two-choices balancer ([`Balancer`]: same site
//! first, live load times latency).
//!
//! In front of all that sits a per-node HTTP response cache
//! ([`ResponseCacheConfig`]; `Cache-Control`, `Vary`, `Age`, `x-wedge-cache`,
//! purged per function by [`Ingress::purge_response_cache`]): sans-IO policy
//! and store, a thin shell that copies bodies as they stream.
//!
//! It must not know how functions run (that is `wedge-host`) or where the
//! routes come from (that is `wedge-node`): the table maps to
//! [`wedge_host::Function`] handles.

mod balance;
mod forward;
mod ingress;
pub mod response_cache;
mod routes;

pub use balance::{Balancer, BalancerConfig, InvalidConfig, Replica, XorShift64};
pub use forward::{
    FORWARDED_BY_HEADER, ForwardConfig, ForwardStats, Forwarder, HOPS_HEADER, HOPS_MAX, HopLimitReached,
    INTERNAL_HEADER, REFUSED_HEADER, ServeConfig, check_hops, hops, remove_internal_headers, serve_forwarded,
};
pub use ingress::{Forwarding, Ingress, IngressConfig, IngressStats, ReplicaSource, Served, Target};
pub use response_cache::{CACHE_STATUS_HEADER, ResponseCacheConfig};
pub use routes::{Route, RouteError, RouteTable};
