//! What `wedge deploy` deploys: either one component named on the command
//! line, or every `[[function]]` of a `wedge.toml` manifest, turned into
//! [`Deployment`]s (a name, a component file and a [`DeploySpec`]).
//!
//! `wedge.toml` has the same schema as `wedge serve --config`'s
//! `functions.toml` ([`wedge_node::config::FunctionsFile`]): unknown keys are
//! errors, component paths are relative to the file.
//!
//! ```toml
//! [[function]]
//! name = "hello"                 # optional; defaults to the file stem (json_api.wasm -> json-api)
//! component = "target/wasm/hello.wasm"
//! routes = ["/hello", "api.example.com/hello"]   # optional; defaults to /<name> (none with `queue`)
//! allowed_outbound_hosts = ["api.example.com"]
//! cache = "pages"                # optional: a cache namespace shared with the functions naming it,
//!                                # apart from the own namespace of a function named pages
//!                                # (default: the function's own, seen by no other function)
//! [function.limits]              # all optional; unset ones take the node defaults
//! memory = "64MiB"
//! timeout = "5s"
//! max_body = "10MiB"
//! max_concurrency = 100
//! [function.config]              # read with wedge_sdk::config::get
//! greeting = "hi"
//! [function.env]                 # the only environment the guest sees
//! RUST_LOG = "info"
//!
//! [[function]]
//! component = "target/wasm/mailer.wasm"
//! queue = "mail"                 # handles the jobs of this queue (one function per queue)
//! queue_max_attempts = 8         # all optional: the queue's defaults otherwise
//! queue_concurrency = 4
//! queue_visibility_timeout = "1m"
//! ```
//!
//! Everything is checked here, before anything is uploaded: names, routes,
//! units, duplicate names. It must not do IO beyond reading the manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use wedge_control::api::{DeploySpec, LimitsSpec, QueueBinding};
use wedge_node::config::{FunctionConfig, FunctionsFile, LimitsConfig};
use wedge_node::units::{parse_bytes, parse_duration};

use crate::output::one_line;

/// The manifest `wedge deploy` reads when given no component.
pub const DEFAULT_MANIFEST: &str = "wedge.toml";

/// One function to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The function's name (a DNS label).
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// Everything but the bytes (`artifact` is filled in once hashed).
    pub spec: DeploySpec,
}

/// Reads a manifest and checks every entry.
pub fn load(path: &Path) -> anyhow::Result<Vec<Deployment>> {
    let file = FunctionsFile::load(path).map_err(|error| anyhow::anyhow!(one_line(&format!("{error:#}"))))?;
    plan(&file.function).map_err(|error| anyhow::anyhow!("{}: {error:#}", path.display()))
}

/// Checks every function and turns it into a deployment; any error stops
/// them all.
pub fn plan(functions: &[FunctionConfig]) -> anyhow::Result<Vec<Deployment>> {
    let mut names = BTreeSet::new();
    let mut deployments = Vec::with_capacity(functions.len());
    for function in functions {
        let deployment = deployment(function)?;
        if !names.insert(deployment.name.clone()) {
            anyhow::bail!("two functions are named {:?}; give each a distinct name", deployment.name);
        }
        deployments.push(deployment);
    }
    Ok(deployments)
}

/// One function as configured, checked.
pub fn deployment(function: &FunctionConfig) -> anyhow::Result<Deployment> {
    let name = function.resolved_name();
    let source = function.component.display();
    wedge_host::validate_name(&name)
        .map_err(|error| anyhow::anyhow!("{source}: {error} (give a name with --name or name = \"...\")"))?;
    // A job function (bound to a queue) serves no route unless given one.
    let routes = if function.routes.is_empty() && function.queue.is_none() {
        vec![format!("/{name}")]
    } else {
        function.routes.clone()
    };
    for route in &routes {
        wedge_router::Route::parse(route).map_err(|error| anyhow::anyhow!("{source}: {error}"))?;
    }
    let limits = limits_spec(&function.limits).map_err(|error| anyhow::anyhow!("{source}: {error}"))?;
    function.replicas.resolve().map_err(|error| anyhow::anyhow!("{source}: {error}"))?;
    let queue = queue_binding(function).map_err(|error| anyhow::anyhow!("{source}: {error}"))?;
    if let Some(namespace) = &function.cache {
        wedge_host::validate_label("cache namespace", namespace)
            .map_err(|error| anyhow::anyhow!("{source}: {error}"))?;
    }
    Ok(Deployment {
        name,
        component: function.component.clone(),
        spec: DeploySpec {
            artifact: None,
            routes,
            limits,
            config: function.config.clone(),
            env: function.env.clone(),
            allowed_outbound_hosts: function.allowed_outbound_hosts.clone(),
            replicas: function.replicas,
            queue,
            cache: function.cache.clone(),
        },
    })
}

/// The function's queue binding, checked; queue settings without a queue
/// are an error.
fn queue_binding(function: &FunctionConfig) -> Result<Option<QueueBinding>, String> {
    let Some(name) = &function.queue else {
        let settings = function.queue_max_attempts.is_some()
            || function.queue_concurrency.is_some()
            || function.queue_visibility_timeout.is_some();
        return if settings { Err("queue settings need a queue (queue = \"NAME\")".into()) } else { Ok(None) };
    };
    let visibility_timeout_ms = function
        .queue_visibility_timeout
        .as_deref()
        .map(|t| {
            let duration = parse_duration(t).map_err(|e| format!("queue_visibility_timeout: {e}"))?;
            u64::try_from(duration.as_millis()).map_err(|_| format!("queue_visibility_timeout: {t:?} is too long"))
        })
        .transpose()?;
    let binding = QueueBinding {
        name: name.clone(),
        max_attempts: function.queue_max_attempts,
        concurrency: function.queue_concurrency,
        visibility_timeout_ms,
    };
    binding.validate()?;
    Ok(Some(binding))
}

/// Limits in human units as numbers for the API.
pub fn limits_spec(limits: &LimitsConfig) -> Result<LimitsSpec, String> {
    let bytes = |key: &str, text: &Option<String>| {
        text.as_deref().map(|t| parse_bytes(t).map_err(|e| format!("limits.{key}: {e}"))).transpose()
    };
    let timeout_ms = limits
        .timeout
        .as_deref()
        .map(|t| {
            let duration = parse_duration(t).map_err(|e| format!("limits.timeout: {e}"))?;
            u64::try_from(duration.as_millis()).map_err(|_| format!("limits.timeout: {t:?} is too long"))
        })
        .transpose()?;
    Ok(LimitsSpec {
        memory_bytes: bytes("memory", &limits.memory)?,
        timeout_ms,
        body_bytes: bytes("max_body", &limits.max_body)?,
        concurrency: limits.max_concurrency,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("wedge.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn entries_become_specs_with_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            r#"
            [[function]]
            component = "wasm/json_api.wasm"
            [[function]]
            name = "hi"
            component = "/abs/hello.wasm"
            routes = ["/hello", "api.example.com/hello"]
            allowed_outbound_hosts = ["127.0.0.1:9000"]
            [function.limits]
            memory = "64MiB"
            timeout = "5s"
            max_body = "1KiB"
            max_concurrency = 7
            [function.config]
            greeting = "hi"
            [function.env]
            RUST_LOG = "debug"
            "#,
        );
        let deployments = load(&path).unwrap();
        assert_eq!(deployments[0].name, "json-api");
        assert_eq!(deployments[0].component, dir.path().join("wasm/json_api.wasm"));
        assert_eq!(deployments[0].spec.routes, ["/json-api"]);
        assert_eq!(deployments[0].spec.limits, LimitsSpec::default());
        let hi = &deployments[1];
        assert_eq!(hi.component, Path::new("/abs/hello.wasm"));
        assert_eq!(hi.spec.routes, ["/hello", "api.example.com/hello"]);
        assert_eq!(
            hi.spec.limits,
            LimitsSpec {
                memory_bytes: Some(64 << 20),
                timeout_ms: Some(5000),
                body_bytes: Some(1024),
                concurrency: Some(7)
            }
        );
        assert_eq!(hi.spec.config["greeting"], "hi");
        assert_eq!(hi.spec.env["RUST_LOG"], "debug");
        assert_eq!(hi.spec.allowed_outbound_hosts, ["127.0.0.1:9000"]);
    }

    #[test]
    fn unknown_keys_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[[function]]\ncomponent = \"a.wasm\"\nroute = \"/x\"\n");
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("unknown field `route`"), "{error}");
        assert!(error.contains("wedge.toml"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        let path = write(dir.path(), "[[function]]\ncomponent = \"a.wasm\"\n[function.limits]\nmemroy = \"1MiB\"\n");
        assert!(load(&path).unwrap_err().to_string().contains("memroy"));
    }

    #[test]
    fn any_bad_entry_stops_all() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[[function]]\ncomponent = \"a.wasm\"\n[function.limits]\ntimeout = \"forever\"\n", "limits.timeout"),
            ("[[function]]\ncomponent = \"Bad_Name!.wasm\"\n", "function name \"bad-name!\": use 1-63"),
            ("[[function]]\ncomponent = \"a.wasm\"\nroutes = [\"/a//b\"]\n", "/a//b"),
            ("[[function]]\ncomponent = \"x/a.wasm\"\n[[function]]\ncomponent = \"y/a.wasm\"\n", "two functions"),
            ("", "no [[function]] entries"),
        ];
        for (text, needle) in cases {
            let error = load(&write(dir.path(), text)).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_queue_binds_the_function_with_its_settings() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[function]]\ncomponent = \"mailer.wasm\"\nqueue = \"mail\"\nqueue_max_attempts = 8\n\
                    queue_concurrency = 4\nqueue_visibility_timeout = \"1m\"\n[[function]]\ncomponent = \"web.wasm\"\n";
        let deployments = load(&write(dir.path(), text)).unwrap();
        let expected = QueueBinding {
            name: "mail".into(),
            max_attempts: Some(8),
            concurrency: Some(4),
            visibility_timeout_ms: Some(60_000),
        };
        assert_eq!(deployments[0].spec.queue, Some(expected));
        assert_eq!(deployments[1].spec.queue, None);
        let cases = [
            ("queue = \"Mail!\"\n", "queue name \"Mail!\""),
            ("queue = \"mail\"\nqueue_max_attempts = 0\n", "max_attempts"),
            ("queue = \"mail\"\nqueue_visibility_timeout = \"soon\"\n", "queue_visibility_timeout"),
            ("queue_concurrency = 4\n", "queue settings need a queue"),
            ("queue = \"mail\"\nqueue_priority = 1\n", "unknown field `queue_priority`"),
        ];
        for (keys, needle) in cases {
            let text = format!("[[function]]\ncomponent = \"a.wasm\"\n{keys}");
            let error = load(&write(dir.path(), &text)).unwrap_err().to_string();
            assert!(error.contains(needle), "{keys:?}: {error}");
        }
    }

    #[test]
    fn a_cache_namespace_is_passed_on_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "[[function]]\ncomponent = \"api.wasm\"\ncache = \"thumbnails\"\n[[function]]\ncomponent = \"web.wasm\"\n";
        let deployments = load(&write(dir.path(), text)).unwrap();
        assert_eq!(deployments[0].spec.cache.as_deref(), Some("thumbnails"));
        assert_eq!(deployments[1].spec.cache, None);
        let error = load(&write(dir.path(), "[[function]]\ncomponent = \"a.wasm\"\ncache = \"Thumbs\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a.wasm: cache namespace \"Thumbs\": use 1-63 characters"), "{error}");
    }

    #[test]
    fn a_missing_manifest_says_so() {
        let error = load(Path::new("/nonexistent/wedge.toml")).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/wedge.toml: cannot read"), "{error}");
    }
}
