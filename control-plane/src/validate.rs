//! Checks a deploy passes before anything is stored: the name, the routes,
//! the spec (limits, environment, outbound hosts) and — for a component not
//! stored yet — that it compiles and links on an engine configured like the
//! nodes' engines as a component of a supported world: an HTTP function
//! (`wasi:http/proxy`, `wedge:function/http-handler`) or a job function
//! (`wedge:function/job-handler`). A component of neither is refused with
//! the host's message naming them. The kind of component must fit the
//! queue binding ([`check_kind`]): a job function exactly when bound to a
//! queue. The kind of a stored component is remembered from its check (a
//! bounded memory; one forgotten, or stored before this run, is compiled
//! again to learn it).
//!
//! Compiling is the expensive part: it runs on the blocking pool, at most
//! `compiles_max` at once, within `compile_timeout` (waiting for a turn
//! included).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use wedge_host::{FunctionKind, FunctionSpec, Host, HostConfig, HostError};
use wedge_router::Route;

use crate::api::is_sha256_hex;

/// Most routes one function may have.
pub const ROUTES_MAX: usize = 100;
/// Most component kinds a [`Compiler`] remembers (a sha256 and a kind
/// each: a few hundred KiB at most); when full it forgets them all and
/// learns again by compiling.
const KINDS_REMEMBERED_MAX: usize = 4096;

/// Why a deploy is refused before it reaches the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The request is wrong (400): the text says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// Compiling did not finish in time (503: the control plane is busy or
    /// the component is huge).
    #[error("compiling the component did not finish within {0:?}; try again later")]
    Timeout(Duration),
    /// The compile task failed (a bug in the host; 500).
    #[error("compiling the component failed unexpectedly: {0}")]
    Internal(String),
}

/// At least one route unless the function is bound to a job queue (then
/// it is a job function, [`check_kind`], which serves no HTTP and needs
/// none), at most [`ROUTES_MAX`], each parses, no two the same (after
/// parsing: `/api` and `/api/` are the same route).
pub fn check_routes(routes: &[String], bound_to_queue: bool) -> Result<(), ValidationError> {
    if routes.is_empty() && !bound_to_queue {
        return Err(ValidationError::Invalid(
            "a function needs at least one route, like /hello (only a job function bound with --queue needs none)"
                .into(),
        ));
    }
    if routes.len() > ROUTES_MAX {
        return Err(ValidationError::Invalid(format!("at most {ROUTES_MAX} routes per function")));
    }
    let mut seen = HashSet::new();
    for text in routes {
        let route = Route::parse(text).map_err(|error| ValidationError::Invalid(error.to_string()))?;
        if !seen.insert(route) {
            return Err(ValidationError::Invalid(format!("route {text:?} is given twice")));
        }
    }
    Ok(())
}

/// The component of function `name` is of the kind its queue binding
/// needs: a job function exactly when bound to a queue. Otherwise an HTTP
/// function bound to a queue would dead-letter every job, and a job
/// function without a queue would never run.
pub fn check_kind(name: &str, kind: FunctionKind, bound_to_queue: bool) -> Result<(), ValidationError> {
    let why = match (kind, bound_to_queue) {
        (FunctionKind::HttpHandler, true) => {
            "only a job function (world wedge:function/job-handler) can be bound to a queue"
        }
        (FunctionKind::JobHandler, false) => "a job function must be bound to a queue with --queue",
        (FunctionKind::HttpHandler, false) | (FunctionKind::JobHandler, true) => return Ok(()),
    };
    Err(ValidationError::Invalid(format!("the component of function {name} is {kind}; {why}")))
}

/// A lowercase hex sha256 ([`is_sha256_hex`]).
pub fn check_artifact_hash(hash: &str) -> Result<(), ValidationError> {
    if is_sha256_hex(hash) {
        Ok(())
    } else {
        Err(ValidationError::Invalid(format!("artifact {hash:?} is not a sha256 (64 lowercase hex characters)")))
    }
}

/// Compiles uploaded components to prove they load, a bounded number at a
/// time.
#[derive(Clone)]
pub struct Compiler {
    host: Host,
    turns: Arc<Semaphore>,
    timeout: Duration,
    /// The kind of every component checked, by sha256: a deploy of a
    /// stored component needs its kind but need not compile it again.
    kinds: Arc<Mutex<HashMap<String, FunctionKind>>>,
}

impl Compiler {
    /// An engine with the nodes' settings but few instance slots (it only
    /// compiles and links, never runs a guest); with `cache_dir`, compiled
    /// code is kept there, so checking a stored component again (its kind,
    /// after a restart) loads it instead of compiling it.
    pub fn new(
        instance_memory_bytes_max: u64,
        compiles_max: usize,
        timeout: Duration,
        cache_dir: Option<std::path::PathBuf>,
    ) -> Result<Self, HostError> {
        let config = HostConfig { instances_max: 2, instance_memory_bytes_max, cache_dir, ..HostConfig::default() };
        let host = Host::new(config)?;
        Ok(Self { host, turns: Arc::new(Semaphore::new(compiles_max)), timeout, kinds: Arc::default() })
    }

    /// The kind of the component with this sha256, if this compiler
    /// checked it and still remembers.
    pub fn checked_kind(&self, sha256: &str) -> Option<FunctionKind> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner).get(sha256).copied()
    }

    fn remember(&self, sha256: &str, kind: FunctionKind) {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        if kinds.len() >= KINDS_REMEMBERED_MAX {
            kinds.clear();
        }
        kinds.insert(sha256.to_owned(), kind);
    }

    /// The spec checks `check` makes, without compiling: for a component
    /// already stored (it compiled when it was first stored).
    pub fn check_spec(&self, spec: &FunctionSpec) -> Result<(), ValidationError> {
        spec.validate(self.host.config()).map_err(|error| ValidationError::Invalid(one_line(&error.to_string())))
    }

    /// Loads `wasm` as `spec` describes (compile, link, prepare), throws
    /// the result away and says (and remembers) which kind of function it
    /// is. A compile that outlives the timeout keeps its turn until it
    /// finishes, so at most `compiles_max` ever run at once.
    pub async fn check(&self, spec: FunctionSpec, wasm: Bytes) -> Result<FunctionKind, ValidationError> {
        let work = async {
            let turn = Arc::clone(&self.turns)
                .acquire_owned()
                .await
                .map_err(|_| ValidationError::Internal("the compiler is shut down".into()))?;
            let host = self.host.clone();
            let task = tokio::task::spawn_blocking(move || {
                let result = host.load(spec, &wasm);
                drop(turn);
                result
            });
            match task.await {
                Ok(Ok(function)) => {
                    self.remember(function.sha256(), function.kind());
                    Ok(function.kind())
                }
                Ok(Err(error)) => Err(ValidationError::Invalid(one_line(&error.to_string()))),
                Err(error) => Err(ValidationError::Internal(error.to_string())),
            }
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or(Err(ValidationError::Timeout(self.timeout)))
    }
}

/// Error texts from wasmtime can span lines; an API error is one line.
fn one_line(text: &str) -> String {
    text.split('\n').map(str::trim).filter(|part| !part.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MIB: u64 = 1024 * 1024;
    use crate::api::DeploySpec;

    #[test]
    fn routes_are_checked() {
        let routes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_routes(&routes(&["/a", "example.com/b"]), false).is_ok());
        assert!(check_routes(&routes(&[]), false).is_err());
        assert!(check_routes(&routes(&[]), true).is_ok());
        assert!(check_routes(&routes(&["no spaces/ x"]), true).is_err());
        let twice = check_routes(&routes(&["/api", "/api/"]), false).unwrap_err().to_string();
        assert!(twice.contains("twice"), "{twice}");
    }

    #[test]
    fn a_job_function_exactly_when_bound_to_a_queue() {
        assert!(check_kind("api", FunctionKind::HttpHandler, false).is_ok());
        assert!(check_kind("worker", FunctionKind::JobHandler, true).is_ok());
        let http = check_kind("api", FunctionKind::HttpHandler, true).unwrap_err().to_string();
        assert_eq!(
            http,
            "the component of function api is an HTTP function (world wedge:function/http-handler); \
             only a job function (world wedge:function/job-handler) can be bound to a queue"
        );
        let job = check_kind("worker", FunctionKind::JobHandler, false).unwrap_err().to_string();
        assert_eq!(
            job,
            "the component of function worker is a job function (world wedge:function/job-handler); \
             a job function must be bound to a queue with --queue"
        );
    }

    #[test]
    fn artifact_hashes_are_lowercase_hex() {
        assert!(check_artifact_hash(&"ab".repeat(32)).is_ok());
        assert!(check_artifact_hash(&"AB".repeat(32)).is_err());
        assert!(check_artifact_hash("abc").is_err());
        assert!(check_artifact_hash(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        assert_eq!(one_line("a\n  b\n\nc"), "a; b; c");
    }

    #[tokio::test]
    async fn a_compile_past_its_timeout_is_refused_as_busy() {
        let Some(wasm) = hello_wasm() else { return };
        let compiler = Compiler::new(128 * MIB, 1, Duration::from_micros(1), None).unwrap();
        let result = compiler.check(DeploySpec::default().function_spec("f"), Bytes::from(wasm)).await;
        assert!(matches!(result, Err(ValidationError::Timeout(_))), "{result:?}");
    }

    fn hello_wasm() -> Option<Vec<u8>> {
        guest_wasm("hello")
    }

    fn guest_wasm(name: &str) -> Option<Vec<u8>> {
        let wasm_dir = std::env::var_os("WEDGE_WASM_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm"));
        let wasm = std::fs::read(wasm_dir.join(format!("{name}.wasm"))).ok();
        if wasm.is_none() {
            eprintln!("skipped: {name}.wasm not built (cargo xtask guests)");
        }
        wasm
    }

    /// A job function is a supported world; a command (neither world) is
    /// refused with one line naming the worlds.
    #[tokio::test]
    async fn job_functions_pass_and_components_of_neither_world_are_refused() {
        let (Some(job), Some(command)) = (guest_wasm("guest-job"), guest_wasm("guest-command")) else { return };
        let compiler = Compiler::new(128 * MIB, 1, Duration::from_secs(120), None).unwrap();
        let spec = DeploySpec::default().function_spec("worker");
        assert_eq!(compiler.check(spec.clone(), Bytes::from(job.clone())).await, Ok(FunctionKind::JobHandler));
        let sha256 = crate::api::sha256_hex(&job);
        assert_eq!(compiler.checked_kind(&sha256), Some(FunctionKind::JobHandler));
        let Err(ValidationError::Invalid(message)) = compiler.check(spec, Bytes::from(command)).await else {
            panic!("a command component passed validation");
        };
        assert!(message.contains("does not target a supported world"), "{message}");
        assert!(message.contains("wedge:function/job-handler"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    /// The spec check without compiling refuses what loading refuses.
    #[tokio::test]
    async fn spec_checks_without_compiling_agree_with_loading() {
        let Some(wasm) = hello_wasm() else { return };
        let compiler = Compiler::new(128 * MIB, 1, Duration::from_secs(120), None).unwrap();
        let base = DeploySpec::default().function_spec("f");
        let mut cases = vec![base.clone()];
        let mut case = |edit: &dyn Fn(&mut FunctionSpec)| {
            let mut spec = base.clone();
            edit(&mut spec);
            cases.push(spec);
        };
        case(&|s| s.name = "Bad_Name".into());
        case(&|s| s.limits.memory_bytes_max = 129 * MIB);
        case(&|s| s.limits.timeout = Duration::ZERO);
        case(&|s| s.limits.concurrency_max = 0);
        case(&|s| _ = s.env.insert("A=B".into(), "x".into()));
        case(&|s| s.allowed_outbound_hosts = vec!["http://".into()]);
        case(&|s| s.allowed_outbound_hosts = vec!["api.example.com".into(), "*.example.com".into()]);
        let mut refused = 0;
        for spec in cases {
            let quick = compiler.check_spec(&spec);
            let loaded = compiler.check(spec.clone(), Bytes::from(wasm.clone())).await.map(drop);
            assert_eq!(quick, loaded, "{spec:?}");
            refused += usize::from(quick.is_err());
        }
        assert_eq!(refused, 6);
    }
}
