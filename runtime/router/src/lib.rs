//! `wedge-router`: the HTTP front door of a node.
//!
//! It owns the route table (optional host, exact or `*.example.com`, plus the
//! longest path prefix, mapping to a function), request ids, and the hyper
//! server with its protective limits (header read timeout, header size) and
//! graceful drain on shutdown.
//!
//! It must not know how functions run (that is `wedge-host`) or where the
//! routes come from (that is `wedge-node`): the table maps to
//! [`wedge_host::Function`] handles.

mod ingress;
mod routes;

pub use ingress::{Ingress, IngressConfig};
pub use routes::{Route, RouteError, RouteTable};
