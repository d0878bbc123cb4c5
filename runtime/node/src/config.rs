//! What a node serves: the `functions.toml` format and its validation into
//! host specs and routes. Unknown keys are errors, not silence.
//!
//! ```toml
//! [[function]]
//! name = "hello"                 # optional; defaults to the file name
//! component = "hello.wasm"       # relative to this file
//! routes = ["/hello", "api.example.com/hello"]
//! allowed_outbound_hosts = ["api.example.com", "127.0.0.1:9000"]
//! cache = "shared"               # optional: the cache namespace; defaults to the name
//! [function.limits]              # all optional
//! memory = "64MiB"
//! timeout = "2s"
//! max_body = "10MiB"
//! max_concurrency = 100
//! [function.config]              # read with wedge_sdk::config::get
//! greeting = "hi"
//! [function.env]                 # the only environment the guest sees
//! RUST_BACKTRACE = "1"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use wedge_host::{FunctionSpec, Limits};
use wedge_router::Route;

use crate::LoadedFunction;
use crate::units::{parse_bytes, parse_duration};

/// Everything a node needs to start serving.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Address of the HTTP ingress.
    pub listen: SocketAddr,
    /// Directory for compiled components; `None` compiles in memory only.
    pub cache_dir: Option<PathBuf>,
    /// The functions to serve.
    pub functions: Vec<FunctionConfig>,
    /// Limits of the functions' cache (which lives in a temporary directory).
    pub function_cache: wedge_cache::CacheConfig,
}

/// A `functions.toml` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionsFile {
    /// One entry per function.
    #[serde(default)]
    pub function: Vec<FunctionConfig>,
}

impl FunctionsFile {
    /// Reads and parses `path`; component paths become relative to the
    /// file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut file: Self = toml::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
        if file.function.is_empty() {
            bail!("{}: no [[function]] entries", path.display());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for function in &mut file.function {
            if function.component.is_relative() {
                function.component = base.join(&function.component);
            }
        }
        Ok(file)
    }
}

/// One function as configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Name; defaults to the component's file name.
    pub name: Option<String>,
    /// Path of the component file.
    pub component: PathBuf,
    /// Routes; defaults to `/` for a lone function, `/<name>` otherwise.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Limits as human units; unset ones take the defaults.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Values for `wedge:function/config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The guest's whole environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Outbound HTTP allow-list.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// How many replicas a cluster runs (`[function.replicas] min = 2, max = 8`);
    /// `wedge deploy` sends it, `wedge serve` (one machine) has no use for it.
    #[serde(default)]
    pub replicas: wedge_control::api::ReplicasSpec,
    /// The job queue this function handles (`queue = "emails"`); `wedge deploy`
    /// binds it, `wedge serve` (one machine, no queues) has no use for it.
    #[serde(default)]
    pub queue: Option<String>,
    /// Attempts a job of that queue gets before it is dead-lettered.
    #[serde(default)]
    pub queue_max_attempts: Option<u32>,
    /// Jobs of that queue handled at once.
    #[serde(default)]
    pub queue_concurrency: Option<u32>,
    /// How long a job's lease lasts unless renewed, e.g. `30s`.
    #[serde(default)]
    pub queue_visibility_timeout: Option<String>,
    /// The node-cache namespace the function uses (`cache = "thumbnails"`);
    /// functions naming the same one share its entries. Default: the
    /// function's own name.
    #[serde(default)]
    pub cache: Option<String>,
}

/// Limits as written in TOML or on the command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory cap, e.g. `64MiB`.
    pub memory: Option<String>,
    /// Wall-clock deadline per request, e.g. `2s`.
    pub timeout: Option<String>,
    /// Largest request body, e.g. `10MiB`.
    pub max_body: Option<String>,
    /// Most concurrent instances.
    pub max_concurrency: Option<u32>,
}

impl LimitsConfig {
    fn resolve(&self) -> Result<Limits, String> {
        let mut limits = Limits::default();
        if let Some(memory) = &self.memory {
            limits.memory_bytes_max = parse_bytes(memory).map_err(|e| format!("limits.memory: {e}"))?;
        }
        if let Some(timeout) = &self.timeout {
            limits.timeout = parse_duration(timeout).map_err(|e| format!("limits.timeout: {e}"))?;
        }
        if let Some(max_body) = &self.max_body {
            limits.body_bytes_max = parse_bytes(max_body).map_err(|e| format!("limits.max_body: {e}"))?;
        }
        if let Some(concurrency) = self.max_concurrency {
            limits.concurrency_max = concurrency;
        }
        Ok(limits)
    }
}

impl FunctionConfig {
    /// The name: given, or derived from the file name (`json_api.wasm` →
    /// `json-api`).
    pub fn resolved_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.component
                .file_stem()
                .map(|s| s.to_string_lossy().to_ascii_lowercase().replace('_', "-"))
                .unwrap_or_default()
        })
    }
}

impl NodeConfig {
    /// Validates every function and route. Errors name the component file.
    pub fn functions(&self) -> anyhow::Result<Vec<LoadedFunction>> {
        if self.functions.is_empty() {
            bail!("no functions to serve");
        }
        let lone = self.functions.len() == 1;
        let mut names = BTreeSet::new();
        let mut loaded = Vec::new();
        for function in &self.functions {
            let source = function.component.display().to_string();
            let name = function.resolved_name();
            if !names.insert(name.clone()) {
                bail!("{source}: a second function is named {name:?}; give each a distinct name");
            }
            let limits = function.limits.resolve().map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            let route_texts = if function.routes.is_empty() {
                vec![if lone { "/".to_string() } else { format!("/{name}") }]
            } else {
                function.routes.clone()
            };
            let routes = route_texts
                .iter()
                .map(|r| Route::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| source.clone())?;
            let spec = FunctionSpec {
                name,
                limits,
                config: function.config.clone(),
                env: function.env.clone(),
                allowed_outbound_hosts: function.allowed_outbound_hosts.clone(),
                cache_namespace: function.cache.clone(),
            };
            loaded.push(LoadedFunction { spec, routes, source });
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<FunctionsFile> {
        Ok(toml::from_str(text)?)
    }

    #[test]
    fn full_entry_parses() {
        let file = parse(
            r#"
            [[function]]
            name = "hello"
            component = "hello.wasm"
            routes = ["/hello"]
            allowed_outbound_hosts = ["127.0.0.1:9000"]
            cache = "shared"
            [function.limits]
            memory = "64MiB"
            timeout = "2s"
            [function.config]
            greeting = "hi"
            "#,
        )
        .unwrap();
        let config = NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cache_dir: None,
            functions: file.function,
            function_cache: Default::default(),
        };
        let loaded = config.functions().unwrap();
        assert_eq!(loaded[0].spec.limits.memory_bytes_max, 64 << 20);
        assert_eq!(loaded[0].spec.limits.timeout, std::time::Duration::from_secs(2));
        assert_eq!(loaded[0].spec.config["greeting"], "hi");
        assert_eq!(loaded[0].spec.cache_namespace(), "shared");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("[[function]]\ncomponent = \"a.wasm\"\nroute = \"/x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `route`"), "{err:#}");
        assert!(parse("[[function]]\ncomponent = \"a.wasm\"\n[function.limits]\nmemroy = \"1MiB\"\n").is_err());
    }

    #[test]
    fn default_routes_and_names() {
        let f = |path: &str| FunctionConfig { component: path.into(), ..Default::default() };
        let config = NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cache_dir: None,
            functions: vec![f("/x/json_api.wasm"), f("hello.wasm")],
            function_cache: Default::default(),
        };
        let loaded = config.functions().unwrap();
        assert_eq!(loaded[0].spec.name, "json-api");
        assert_eq!(loaded[0].routes[0].prefix(), "/json-api");
        let lone = NodeConfig { functions: vec![f("hello.wasm")], ..config.clone() };
        assert_eq!(lone.functions().unwrap()[0].routes[0].prefix(), "/");
        let dup = NodeConfig { functions: vec![f("a/hello.wasm"), f("b/hello.wasm")], ..config };
        assert!(dup.functions().is_err());
    }

    #[test]
    fn bad_limits_name_the_file() {
        let mut function = FunctionConfig { component: "slow.wasm".into(), ..Default::default() };
        function.limits.timeout = Some("forever".into());
        let config = NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cache_dir: None,
            functions: vec![function],
            function_cache: Default::default(),
        };
        let err = config.functions().unwrap_err().to_string();
        assert!(err.starts_with("slow.wasm: limits.timeout"), "{err}");
    }
}
