//! What a `Store` holds for one request: the WASI and `wasi:http` contexts
//! (with the function's environment and nothing else), the resource table
//! (bounded), the memory limiter, the host side of `wedge:function/config`,
//! and the function's namespace of the node cache (used by [`crate::cache`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wedge_cache::Namespace;

use crate::guest_log::GuestLog;
use crate::outbound::OutboundHooks;
use crate::queue::QueueSender;
use crate::stats::FunctionStats;

/// Most resources (streams, headers, pollables, ...) one request may hold
/// at once: far above what a real handler uses, far below what would let a
/// guest grow the host's heap without bound.
const RESOURCES_MAX: usize = 10_000;
/// Largest in-memory size of one set of HTTP fields a guest may build.
const FIELDS_BYTES_MAX: usize = 64 * 1024;

/// Host bindings generated from `wit/` (the same WIT the guest SDK uses).
/// World `job-handler` imports everything `http-handler` does, so its
/// bindings serve both: the `wedge:function/*` imports for the linker and
/// the `job` export; `wasi:http`'s own bindings give the HTTP export.
#[allow(missing_docs)]
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wedge:function/job-handler",
        require_store_data_send: true,
        // `send` waits for the queue's replication round trip; every other
        // wedge import answers from memory and stays synchronous.
        imports: { "wedge:function/queue.send": async },
        exports: { default: async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:cli": wasmtime_wasi::p2::bindings::cli,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
        },
    });
}

/// The data of one request's `Store`.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    pub(crate) limiter: MemoryLimiter,
    services: Arc<Services>,
    request_id: Arc<str>,
}

/// What the function's instances share, handed to each store: the host
/// sides of the `wedge:function/*` imports and the statistics they count in.
/// Built once per function; every store holds the same `Arc`.
pub(crate) struct Services {
    /// The function's name (queue sends say who sent them).
    pub(crate) function_name: Arc<str>,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    /// This function's part of the node cache; `None` when the node has none.
    pub(crate) cache: Option<Namespace>,
    /// The node's way to enqueue jobs; `None` when the node has no queues.
    pub(crate) queue_sender: Option<Arc<dyn QueueSender>>,
    /// The function's statistics (the cache counts its hits and misses there).
    pub(crate) stats: Arc<FunctionStats>,
}

impl GuestState {
    pub(crate) fn new(
        env: &[(String, String)],
        services: Arc<Services>,
        hooks: OutboundHooks,
        memory_bytes_max: u64,
        (stdout, stderr): (GuestLog, GuestLog),
    ) -> Self {
        // Deny by default: no preopened directories, no sockets, no name
        // lookups, no inherited environment or arguments. Standard output
        // and error become log events tagged with function and request id.
        let request_id = stdout.request_id();
        let wasi = WasiCtx::builder()
            .envs(env)
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELDS_BYTES_MAX);
        let mut table = ResourceTable::new();
        table.set_max_capacity(RESOURCES_MAX);
        Self {
            wasi,
            http,
            table,
            hooks,
            limiter: MemoryLimiter { bytes_max: memory_bytes_max, bytes_used: 0, refused: false },
            services,
            request_id,
        }
    }

    /// This function's namespace of the node cache, if the node has one.
    pub(crate) fn cache(&self) -> Option<&Namespace> {
        self.services.cache.as_ref()
    }

    /// The node's queue sender, if the node has queues.
    pub(crate) fn queue_sender(&self) -> Option<&Arc<dyn QueueSender>> {
        self.services.queue_sender.as_ref()
    }

    /// The name of the function this store runs.
    pub(crate) fn function_name(&self) -> Arc<str> {
        Arc::clone(&self.services.function_name)
    }

    /// The statistics of the function this store runs.
    pub(crate) fn stats(&self) -> &FunctionStats {
        &self.services.stats
    }

    /// The id of the request this store serves.
    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl bindings::wedge::function::config::Host for GuestState {
    fn get(&mut self, key: String) -> Option<String> {
        self.services.config.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.services.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Caps the linear memory of an instance — all its memories together — and
/// remembers whether it had to refuse, so a trap that follows can be
/// reported as "memory limit" rather than a generic trap.
pub(crate) struct MemoryLimiter {
    bytes_max: u64,
    bytes_used: u64,
    pub(crate) refused: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let total = self.bytes_used.saturating_add(growth);
        if total > self.bytes_max {
            self.refused = true;
            return Ok(false);
        }
        self.bytes_used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; 1M entries is far beyond any real
        // guest and keeps a hostile one from growing them without bound.
        Ok(desired <= 1 << 20)
    }
}
