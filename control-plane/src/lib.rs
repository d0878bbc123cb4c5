//! `wedge-control`: the control plane of a wedge cluster.
//!
//! It owns the deploy API (HTTP/JSON under `/v1`, bearer-token auth), the
//! durable [`store`] of artifacts and versions, validation of uploads before
//! anything is stored, and the desired state that nodes follow (long-poll on
//! `GET /v1/state`). It also keeps what nodes report: what they serve, what
//! failed to load, and recent guest log lines for `wedge logs`. Its
//! [`placement`] scheduler decides which nodes run each function and how
//! many replicas it gets (spread over sites, autoscaled from node load).
//! It serves its own Prometheus metrics on `/metrics`, the
//! cluster overview (`GET /v1/overview`: nodes by site, functions with
//! replicas, request rates and latency from the nodes' traffic counters)
//! and the `/ui` page that shows it.
//!
//! It must not run guest requests or know about node internals: nodes pull
//! desired state and artifacts; the control plane never pushes.
//!
//! Start one with [`ControlPlane::open`] and [`ControlPlane::serve`].

pub mod api;
mod auth;
pub mod config;
mod metrics;
mod overview;
pub mod placement;
mod queue_commands;
mod reports;
mod scheduling;
mod server;
pub mod store;
mod traffic;
pub mod validate;

pub use auth::{Token, TokenError, TokenOrigin};
pub use config::{ConfigError, ControlConfig};
pub use server::{ControlError, ControlPlane};
