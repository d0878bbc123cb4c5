//! `wedge-host`: the wasmtime component host of a wedge node.
//!
//! It owns everything between "here are the bytes of a component" and "here is
//! the HTTP response it produced":
//!
//! - one [`Host`] per process: a wasmtime `Engine` with the pooling allocator,
//!   copy-on-write memory images and epoch interruption, a `Linker` with all of
//!   WASI p2, `wasi:http` and the `wedge:function/*` interfaces, and an on-disk
//!   cache of compiled components keyed by sha256;
//! - one [`Function`] per deployed component: its `InstancePre`, its
//!   [`Limits`], configuration, environment and outbound allow-list, and the
//!   statistics of its requests ([`Function::stats`]);
//! - a fresh `Store` per request (or job), so no state leaks between them;
//! - the host side of `wedge:function/cache`: each function gets its own
//!   namespace of the node's [`wedge_cache::Cache`] ([`HostConfig::function_cache`]),
//!   or a named one it shares with the functions naming it
//!   ([`FunctionSpec::cache_key_space`]);
//! - the host side of `wedge:function/queue`: a guest's `send` goes to the
//!   node's [`QueueSender`] ([`HostConfig::queue_sender`]);
//! - job functions (world `wedge:function/job-handler`): a [`Function`] knows
//!   its [`FunctionKind`], and [`Function::handle_job`] runs one attempt of a
//!   [`Job`] under the same limits as a request.
//!
//! It must not know about routes, sockets, the cluster or the control plane:
//! it takes an `http::Request` and gives back an `http::Response`, or takes a
//! [`Job`] and says whether it completed.

mod cache;
mod compile;
mod config;
mod engine;
mod error;
mod function;
mod guest_log;
mod outbound;
mod queue;
mod state;
mod stats;

pub use cache::unix_now_ms;
pub use config::{FunctionSpec, HostConfig, Limits, validate_label, validate_name};
pub use error::{HostError, LoadError};
pub use function::{Function, FunctionKind, Instantiated, Job, JobFailure, ResponseBody, error_response};
pub use guest_log::{GuestLogLine, GuestLogSink, Stream};
pub use outbound::{AllowListEntry, Denied, OutboundPolicy};
pub use queue::{QueueMessage, QueueSendError, QueueSender, SendFuture};
pub use stats::{
    DURATION_BOUNDS_SECONDS, DurationHistogram, FunctionStatsSnapshot, JobOutcome, JobStatsSnapshot, StatusClass,
    TrapKind,
};

use std::sync::Arc;

/// The component host of one process: one engine, one linker, one compilation
/// cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Host {
    inner: Arc<engine::EngineHandle>,
}

impl Host {
    /// Creates the engine (pooling allocator sized from `config`) and starts
    /// the epoch ticker that enforces deadlines.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        config.validate()?;
        Ok(Self { inner: Arc::new(engine::EngineHandle::new(config)?) })
    }

    /// The configuration this host was created with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Validates and compiles `wasm` (or loads it from the compilation cache)
    /// and prepares it to serve requests as the function `spec` describes.
    ///
    /// Fails without side effects (other than a cache entry for a component
    /// that compiled) when the bytes are not a component of a supported world
    /// or the spec asks for more than this host allows.
    pub fn load(&self, spec: FunctionSpec, wasm: &[u8]) -> Result<Function, LoadError> {
        spec.validate(&self.inner.config)?;
        let compiled = compile::compile_cached(&self.inner, wasm)?;
        Function::prepare(&self.inner, spec, compiled)
    }
}
