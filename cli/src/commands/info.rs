//! `wedge info`: one function in detail: its active version's routes,
//! artifact, limits, config and outbound hosts, the job queue it handles,
//! the shared cache namespace it uses, and which nodes serve it or failed
//! to load it.

use clap::Args;
use wedge_control::api::{FunctionInfo, LimitsSpec};

use crate::client::{Client, function_name};
use crate::output::{OutputArgs, human_bytes, human_millis, print_json, routes_cell, utc_time};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The function.
    #[arg(value_name = "FUNCTION", value_parser = function_name)]
    function: String,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl InfoArgs {
    /// Shows the function.
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        let reply = client.function(&self.function)?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        print!("{}", render(&reply.value));
        Ok(())
    }
}

/// The limits in words; unset ones are the node's defaults.
pub fn limits_text(limits: &LimitsSpec) -> String {
    let mut parts = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        parts.push(format!("memory {}", human_bytes(bytes)));
    }
    if let Some(ms) = limits.timeout_ms {
        parts.push(format!("timeout {}", human_millis(ms)));
    }
    if let Some(bytes) = limits.body_bytes {
        parts.push(format!("max body {}", human_bytes(bytes)));
    }
    if let Some(n) = limits.concurrency {
        parts.push(format!("max concurrency {n}"));
    }
    if parts.is_empty() { "node defaults".to_string() } else { format!("{} (others: node defaults)", parts.join(", ")) }
}

/// The `wedge info` text: one `key: value` line per fact. Environment
/// values are not shown (they may be secrets; `-o json` has them).
pub fn render(info: &FunctionInfo) -> String {
    let summary = &info.summary;
    let active = &info.active;
    let none = |list: String| if list.is_empty() { "none".to_string() } else { list };
    let mut lines = vec![
        ("name", summary.name.clone()),
        ("version", format!("{} (latest {})", summary.active_version, summary.latest_version)),
        ("routes", routes_cell(&active.routes)),
        ("artifact", format!("sha256 {} ({})", active.artifact, human_bytes(active.artifact_bytes))),
        ("deployed", format!("{} UTC", utc_time(active.created_unix_ms))),
        ("limits", limits_text(&active.limits)),
        ("config", none(active.config.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))),
        ("env", none(active.env.keys().cloned().collect::<Vec<_>>().join(", "))),
        ("outbound", none(active.allowed_outbound_hosts.join(", "))),
        (
            "serving",
            if info.serving_nodes.is_empty() {
                "no node has reported serving it yet".to_string()
            } else {
                info.serving_nodes.join(", ")
            },
        ),
    ];
    if let Some(queue) = &active.queue {
        let config = queue.config();
        let text = format!(
            "{} (max attempts {}, concurrency {}, visibility timeout {})",
            queue.name,
            config.max_attempts,
            config.concurrency_max,
            human_millis(config.visibility_timeout_ms)
        );
        lines.insert(lines.len() - 1, ("queue", text));
    }
    if let Some(namespace) = &active.cache {
        lines
            .insert(lines.len() - 1, ("cache", format!("namespace {namespace} (shared with the functions naming it)")));
    }
    for failure in &info.failing_nodes {
        lines.push(("failing", format!("{} (version {}): {}", failure.node, failure.version, failure.error)));
    }
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    lines.iter().map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:"), width = width)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wedge_control::api::{FunctionSummary, NodeFunctionError, VersionRecord};

    #[test]
    fn renders_every_fact() {
        let active = VersionRecord {
            artifact: "ab".repeat(32),
            artifact_bytes: 2048,
            limits: LimitsSpec { timeout_ms: Some(5000), ..Default::default() },
            config: [("greeting".to_string(), "hi".to_string())].into(),
            env: [("SECRET".to_string(), "hunter2".to_string())].into(),
            cache: Some("pages".into()),
            ..crate::test_support::version_record("hello", 2)
        };
        let info = FunctionInfo {
            summary: FunctionSummary {
                name: "hello".into(),
                active_version: 2,
                latest_version: 3,
                routes: active.routes.clone(),
                artifact: active.artifact.clone(),
                updated_unix_ms: 0,
                queue: None,
            },
            active,
            serving_nodes: vec!["node-a".into()],
            failing_nodes: vec![NodeFunctionError {
                node: "node-b".into(),
                function: "hello".into(),
                version: 2,
                error: "out of memory".into(),
            }],
        };
        let text = render(&info);
        assert!(text.starts_with("name:     hello\nversion:  2 (latest 3)\nroutes:   /hello\n"), "{text}");
        assert!(text.contains("limits:   timeout 5s (others: node defaults)\n"), "{text}");
        assert!(text.contains("config:   greeting=hi\n"), "{text}");
        assert!(text.contains("env:      SECRET\n") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("outbound: none\n"), "{text}");
        assert!(text.contains("cache:    namespace pages (shared with the functions naming it)\nserving:"), "{text}");
        assert!(text.contains("artifact: sha256 abab"), "{text}");
        assert!(text.contains("failing:  node-b (version 2): out of memory\n"), "{text}");
    }
}
