//! Flags several verbs share: a function's settings (`wedge serve` and
//! `wedge deploy` take the same ones, with the same help), and the parsers
//! of their values (`--memory 64MiB`, `--timeout 2s`, `--set KEY=VALUE`):
//! each checks the text when the command line is parsed, so a typo is a
//! usage error before anything runs.

use std::path::PathBuf;

use clap::Args;
use wedge_node::config::{FunctionConfig, LimitsConfig};
use wedge_node::function_cache::CacheConfig;
use wedge_node::units::{parse_bytes, parse_duration};

/// A function's settings given as flags: its limits, configuration values,
/// environment and outbound hosts (in a functions file or `wedge.toml`,
/// the same keys of a `[[function]]`). The defaults are the host's, which
/// nodes use too.
#[derive(Debug, Clone, Default, Args)]
pub struct FunctionFlags {
    /// Deadline per request, wall clock, host calls included; beyond it,
    /// 504 (default 30s).
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Linear-memory cap per instance (default 128MiB).
    #[arg(long, value_parser = bytes, value_name = "SIZE")]
    pub memory: Option<String>,

    /// Largest request body; beyond it, 413 (default 10MiB).
    #[arg(long, value_parser = bytes, value_name = "SIZE")]
    pub max_body: Option<String>,

    /// Most concurrent instances per function on a node; beyond it, 503
    /// (default 100).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<u32>,

    /// A configuration value the function reads with `config::get`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = pair)]
    pub config_values: Vec<(String, String)>,

    /// An environment variable for the function (it sees no others).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = pair)]
    pub env: Vec<(String, String)>,

    /// A host the function may call over HTTP: `api.example.com`,
    /// `*.example.com`, `127.0.0.1:9000`, `https://*`. None by default.
    #[arg(long = "allow-outbound", value_name = "HOST")]
    pub allowed_outbound_hosts: Vec<String>,
}

impl FunctionFlags {
    /// True when any of these flags was given.
    pub fn any(&self) -> bool {
        self.timeout.is_some()
            || self.memory.is_some()
            || self.max_body.is_some()
            || self.max_concurrency.is_some()
            || !self.config_values.is_empty()
            || !self.env.is_empty()
            || !self.allowed_outbound_hosts.is_empty()
    }

    /// The function `component` with these settings.
    pub fn function(&self, name: Option<String>, component: PathBuf, routes: Vec<String>) -> FunctionConfig {
        FunctionConfig {
            name,
            component,
            routes,
            limits: LimitsConfig {
                memory: self.memory.clone(),
                timeout: self.timeout.clone(),
                max_body: self.max_body.clone(),
                max_concurrency: self.max_concurrency,
            },
            config: self.config_values.iter().cloned().collect(),
            env: self.env.iter().cloned().collect(),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            replicas: Default::default(),
            queue: None,
            queue_max_attempts: None,
            queue_concurrency: None,
            queue_visibility_timeout: None,
            cache: None,
        }
    }
}

/// The node's function cache (`wedge_sdk::cache`), for `wedge serve` and
/// `wedge node`.
#[derive(Debug, Clone, Args)]
pub struct FunctionCacheFlags {
    /// Most bytes (keys and values) the functions' cache on this node holds;
    /// beyond it, expired entries and then the least recently used ones are
    /// evicted.
    #[arg(long, env = "WEDGE_CACHE_BYTES_MAX", value_name = "SIZE", default_value = "256MiB",
          value_parser = cache_bytes_max)]
    pub cache_bytes_max: u64,
}

impl FunctionCacheFlags {
    /// The cache's limits: this cap, the default key and value maximums.
    pub fn config(&self) -> CacheConfig {
        CacheConfig { bytes_max: self.cache_bytes_max, ..CacheConfig::default() }
    }
}

/// A cache size: at least the largest value a function may store.
fn cache_bytes_max(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    let value_max = CacheConfig::default().value_bytes_max as u64;
    if bytes < value_max {
        return Err(format!("{text:?} is less than 1MiB, the largest value a function may store"));
    }
    Ok(bytes)
}

/// A duration like `2s` or `500ms`, kept as written.
pub fn duration(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.to_string())
}

/// A size like `64MiB`, kept as written.
pub fn bytes(text: &str) -> Result<String, String> {
    parse_bytes(text).map(|_| text.to_string())
}

/// `KEY=VALUE` with a non-empty key.
pub fn pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}
