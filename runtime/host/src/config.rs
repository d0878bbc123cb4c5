//! Configuration of the host (per process) and of each function (per
//! deployment), with the defaults a laptop needs and `validate()` that says
//! what is wrong in words an operator understands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{HostError, LoadError};
use crate::guest_log::GuestLogSink;
use crate::outbound::{AllowListEntry, OutboundPolicy};
use crate::queue::QueueSender;

const MIB: u64 = 1024 * 1024;
/// Longest request deadline a function may ask for.
const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Settings of the one engine of a process.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Most instances alive at once across all functions of this process
    /// (pooling-allocator slots). Beyond it a request gets 503.
    pub instances_max: u32,
    /// Largest linear memory any one instance may have; the pool reserves
    /// slots of this size. A function's own limit must not exceed it.
    pub instance_memory_bytes_max: u64,
    /// Period of the epoch ticker: the granularity of deadlines and of
    /// yielding a busy guest back to the scheduler.
    pub epoch_tick: Duration,
    /// Where compiled components are cached (by sha256 of the component and
    /// a hash of the engine settings). `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Where guest output lines go besides the process log; `None` keeps
    /// them in the process log only.
    pub log_sink: Option<GuestLogSink>,
    /// The node's key-value cache (`wedge:function/cache`), shared by every
    /// function, each in its [key space](FunctionSpec::cache_key_space): by
    /// default its own (so versions of a function share entries and
    /// functions never see each other's), or a named namespace that the
    /// functions naming it share and no function's own namespace sees.
    /// `None`: cache calls fail with a `storage` error saying so.
    pub function_cache: Option<wedge_cache::Cache>,
    /// How `wedge:function/queue` sends reach the node's queues (see
    /// [`QueueSender`] for what it must guarantee). `None`: every send fails
    /// with `unavailable("this node has no queues")`.
    pub queue_sender: Option<Arc<dyn QueueSender>>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            instances_max: 1000,
            instance_memory_bytes_max: Limits::default().memory_bytes_max,
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
            log_sink: None,
            function_cache: None,
            queue_sender: None,
        }
    }
}

impl HostConfig {
    /// Checks the settings are usable.
    pub fn validate(&self) -> Result<(), HostError> {
        if self.instances_max == 0 {
            return Err(HostError::Config("instances_max must be at least 1".into()));
        }
        if self.instance_memory_bytes_max < MIB {
            return Err(HostError::Config("instance_memory_bytes_max must be at least 1 MiB".into()));
        }
        if self.epoch_tick.is_zero() || self.epoch_tick > Duration::from_secs(1) {
            return Err(HostError::Config("epoch_tick must be between 1 ns and 1 s".into()));
        }
        Ok(())
    }
}

/// Per-function limits. Every one is on by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear-memory cap of one instance (default 128 MiB).
    pub memory_bytes_max: u64,
    /// Wall-clock deadline of one request, host calls included (default 30 s).
    pub timeout: Duration,
    /// Largest request body accepted (default 10 MiB); beyond it, 413.
    pub body_bytes_max: u64,
    /// Most instances of this function running at once (default 100);
    /// beyond it, 503 with `Retry-After`.
    pub concurrency_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes_max: 128 * MIB,
            timeout: Duration::from_secs(30),
            body_bytes_max: 10 * MIB,
            concurrency_max: 100,
        }
    }
}

/// Everything the host needs to know about one function besides its bytes.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// DNS-label-like name, unique on the node.
    pub name: String,
    /// Limits for each request of this function.
    pub limits: Limits,
    /// Values the guest reads through `wedge:function/config`.
    pub config: BTreeMap<String, String>,
    /// The only environment variables the guest sees.
    pub env: BTreeMap<String, String>,
    /// Hosts the guest may call over HTTP; empty means none.
    pub allowed_outbound_hosts: Vec<String>,
    /// A named namespace of the node cache for the guest's
    /// `wedge:function/cache` calls, shared by every function given the same
    /// name (an HTTP function reading what a job function wrote). `None`: the
    /// function's own namespace, which only its versions see. A named
    /// namespace never shares keys with a function's own, even one whose
    /// function has that name ([`cache_key_space`](Self::cache_key_space)).
    /// It is a DNS label like a function name.
    pub cache_namespace: Option<String>,
}

impl FunctionSpec {
    /// A spec with default limits and no configuration, environment or
    /// outbound hosts.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            limits: Limits::default(),
            config: BTreeMap::new(),
            env: BTreeMap::new(),
            allowed_outbound_hosts: Vec::new(),
            cache_namespace: None,
        }
    }

    /// The name of the node-cache namespace this function uses, as the
    /// operator gave it: the named one, else the function's own name.
    pub fn cache_namespace(&self) -> &str {
        self.cache_namespace.as_deref().unwrap_or(&self.name)
    }

    /// The key space of the node cache this function's calls use: its own
    /// name, or `@` and the name of a named namespace. No function name
    /// contains `@`, so the named namespace `payments` and the function
    /// `payments` never see each other's keys.
    pub fn cache_key_space(&self) -> String {
        match &self.cache_namespace {
            Some(named) => format!("@{named}"),
            None => self.name.clone(),
        }
    }

    /// Checks the spec is one `host` can serve (name, cache namespace,
    /// limits within the host's, environment names, outbound allow-list),
    /// without compiling.
    pub fn validate(&self, host: &HostConfig) -> Result<(), LoadError> {
        validate_name(&self.name)?;
        let limits = &self.limits;
        let invalid = |reason: String| Err(LoadError::InvalidSpec { name: self.name.clone(), reason });
        if let Some(namespace) = &self.cache_namespace {
            validate_label("cache namespace", namespace).or_else(invalid)?;
        }
        if limits.memory_bytes_max < MIB {
            return invalid("memory limit must be at least 1 MiB".into());
        }
        if limits.memory_bytes_max > host.instance_memory_bytes_max {
            return invalid(format!(
                "memory limit {} MiB is above this node's per-instance maximum of {} MiB",
                limits.memory_bytes_max / MIB,
                host.instance_memory_bytes_max / MIB
            ));
        }
        if limits.timeout.is_zero() || limits.timeout > TIMEOUT_MAX {
            return invalid("timeout must be greater than zero and at most 24h".into());
        }
        if limits.concurrency_max == 0 {
            return invalid("max concurrency must be at least 1".into());
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return invalid(format!("environment variable {key:?} is not a valid name"));
            }
        }
        self.outbound_policy()?;
        Ok(())
    }

    pub(crate) fn outbound_policy(&self) -> Result<OutboundPolicy, LoadError> {
        let entries = self
            .allowed_outbound_hosts
            .iter()
            .map(|entry| AllowListEntry::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| LoadError::InvalidSpec { name: self.name.clone(), reason })?;
        Ok(OutboundPolicy::new(entries))
    }
}

/// Names of functions, queues, cache namespaces (and nodes) are DNS labels:
/// 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`. They appear
/// in URLs, logs and metric labels. The message names `what` was given
/// (`function name`, `queue name`, `cache namespace`) and the text, in the
/// one shape every check of a label uses.
pub fn validate_label(what: &str, text: &str) -> Result<(), String> {
    let is_label = !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if is_label {
        Ok(())
    } else {
        Err(format!("{what} {text:?}: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"))
    }
}

/// A function name is a [label](validate_label).
pub fn validate_name(name: &str) -> Result<(), LoadError> {
    validate_label("function name", name).map_err(LoadError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["hello", "json-api", "a", "x1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "x-", "Hello", "a_b", "a.b", "@x", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let message = validate_label("queue name", "Mail!").unwrap_err();
        assert_eq!(
            message,
            "queue name \"Mail!\": use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        );
    }

    #[test]
    fn spec_above_host_memory_is_refused() {
        let host = HostConfig::default();
        let mut spec = FunctionSpec::new("big");
        spec.limits.memory_bytes_max = host.instance_memory_bytes_max + MIB;
        let err = spec.validate(&host).unwrap_err().to_string();
        assert!(err.contains("per-instance maximum"), "{err}");
        spec.limits.memory_bytes_max = 64 * MIB;
        assert!(spec.validate(&host).is_ok());
    }

    #[test]
    fn cache_namespace_defaults_to_the_name_and_must_be_a_dns_label() {
        let host = HostConfig::default();
        let mut spec = FunctionSpec::new("api");
        assert_eq!(spec.cache_namespace(), "api");
        assert_eq!(spec.cache_key_space(), "api");
        spec.cache_namespace = Some("thumbnails".into());
        assert_eq!(spec.cache_namespace(), "thumbnails");
        assert_eq!(spec.cache_key_space(), "@thumbnails", "apart from the function named thumbnails");
        assert!(spec.validate(&host).is_ok());
        for bad in ["", "Thumbs", "a_b", "-x", &"a".repeat(64)] {
            spec.cache_namespace = Some(bad.into());
            let err = spec.validate(&host).unwrap_err().to_string();
            assert!(err.contains("cache namespace"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_outbound_entry_is_refused() {
        let mut spec = FunctionSpec::new("out");
        spec.allowed_outbound_hosts = vec!["http://".into()];
        assert!(spec.validate(&HostConfig::default()).is_err());
    }
}
