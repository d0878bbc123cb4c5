//! [`ControlConfig`]: every setting of a control plane, with defaults that
//! work on a laptop and [`ControlConfig::validate`] that says what is wrong.
//!
//! The library never reads the environment or files to fill it: the binary
//! layers defaults < `WEDGE_*` environment < flags and hands over the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::placement::SchedulerConfig;

use crate::api::COMPONENT_BYTES_MAX_DEFAULT;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Largest `spec` part of a deploy (the [`crate::api::DeploySpec`] JSON).
pub const SPEC_BYTES_MAX: u64 = MIB;

/// Largest node report body.
pub const REPORT_BYTES_MAX: u64 = 4 * MIB;

/// Settings of one control plane. `Debug` shows whether a token is given,
/// never the token.
#[derive(Clone)]
pub struct ControlConfig {
    /// Where the API listens (the binary binds it; the library serves on
    /// whatever listener it is given).
    pub listen: SocketAddr,
    /// Directory of the store (`store/`), the admin and node token files
    /// (`token`, `node-token`) and the lock file that keeps a second control
    /// plane out (`lock`).
    pub data_dir: PathBuf,
    /// The admin token: may call everything. `None`: read
    /// `<data_dir>/token`, or generate one and save it there.
    pub token: Option<String>,
    /// The node token: may only read desired state and artifacts and send
    /// node reports, so that edge nodes hold no credential that can deploy.
    /// `None`: read `<data_dir>/node-token`, or generate one and save it
    /// there. Must differ from the admin token.
    pub node_token: Option<String>,
    /// Largest component a deploy may upload.
    pub component_bytes_max: u64,
    /// Longest a deploy may wait for and spend compiling its component
    /// before it is answered 503.
    pub compile_timeout: Duration,
    /// Components compiled at once (each compile uses a core or more).
    pub compiles_max: usize,
    /// Deploys reading their upload at once; each holds up to
    /// `component_bytes_max` in memory. Beyond it, 503 with `Retry-After`.
    pub deploys_in_flight_max: usize,
    /// Largest per-instance memory a function may ask for; must match what
    /// the nodes' engines allow.
    pub instance_memory_bytes_max: u64,
    /// Nodes whose last report is kept; beyond it the one heard from least
    /// recently is forgotten. Each may keep up to 1 MiB (what it serves and
    /// its errors), so this bounds that memory.
    pub nodes_max: usize,
    /// A node whose last report is older than this is not counted as serving
    /// (or failing) a function in `GET /v1/functions/{name}`; `GET /v1/nodes`
    /// still lists it, with how long ago it was heard from. Nodes report at
    /// least every second, so this is several missed reports.
    pub node_stale_after: Duration,
    /// Guest log lines kept per function (the oldest go first).
    pub log_lines_per_function: usize,
    /// Guest log bytes kept per function (the oldest lines go first).
    pub log_bytes_per_function: u64,
    /// Client connections open at once; beyond it, accepting waits (new
    /// clients wait in the kernel's backlog). Every following node keeps a
    /// state long-poll open and reports on another connection, so leave
    /// room for a few per node.
    pub connections_max: usize,
    /// How long a client may take to send a request's head (and, on a new
    /// connection, to start its first request); then the connection is
    /// closed. Idle keep-alive connections are closed after it too.
    pub header_read_timeout: Duration,
    /// How long a graceful stop waits for requests in flight (uploads
    /// included) before it closes their connections. A change whose store
    /// call started is stored and announced either way.
    pub drain_timeout: Duration,
    /// The placement scheduler's settings (autoscaling targets and windows).
    pub placement: SchedulerConfig,
    /// How often the scheduler runs (also at once after every deploy,
    /// rollback or removal).
    pub placement_interval: Duration,
    /// A node not heard from for this long counts as down for placement
    /// (nodes report every second; a node the others see down is down at
    /// once). Also how long a started control plane listens to reports
    /// before it publishes placements, so that it adopts what nodes serve.
    pub placement_stale_after: Duration,
}

impl ControlConfig {
    /// Defaults for a control plane keeping its data in `data_dir`, listening
    /// on `127.0.0.1:7070`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: data_dir.into(),
            token: None,
            node_token: None,
            component_bytes_max: COMPONENT_BYTES_MAX_DEFAULT,
            compile_timeout: Duration::from_secs(60),
            compiles_max: 2,
            deploys_in_flight_max: 4,
            instance_memory_bytes_max: wedge_host::HostConfig::default().instance_memory_bytes_max,
            nodes_max: 1_000,
            node_stale_after: Duration::from_secs(10),
            log_lines_per_function: 10_000,
            log_bytes_per_function: 4 * MIB,
            connections_max: 4096,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            placement: SchedulerConfig::default(),
            placement_interval: Duration::from_millis(500),
            placement_stale_after: Duration::from_secs(4),
        }
    }

    /// Checks the settings are usable; the message names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError(reason));
        if self.data_dir.as_os_str().is_empty() {
            return invalid("the data directory must not be empty".into());
        }
        if let Some(token) = &self.token {
            validate_token("admin token", token).map_err(ConfigError)?;
        }
        if let Some(node_token) = &self.node_token {
            validate_token("node token", node_token).map_err(ConfigError)?;
            if self.token.as_ref() == Some(node_token) {
                return invalid(SAME_TOKENS.into());
            }
        }
        if self.component_bytes_max < KIB {
            return invalid("the largest component size must be at least 1 KiB".into());
        }
        if self.component_bytes_max > 4 * 1024 * MIB {
            return invalid("the largest component size must be at most 4 GiB".into());
        }
        if self.compile_timeout.is_zero() {
            return invalid("the compile timeout must be greater than zero".into());
        }
        if self.compiles_max == 0 || self.deploys_in_flight_max == 0 {
            return invalid("compiles and deploys in flight must be at least 1".into());
        }
        if self.instance_memory_bytes_max < MIB {
            return invalid("the per-instance memory maximum must be at least 1 MiB".into());
        }
        if self.placement_interval.is_zero() || self.placement_stale_after < self.placement_interval {
            return invalid("the placement interval must be more than zero and at most the placement staleness".into());
        }
        self.placement.validate().map_err(|error| ConfigError(format!("placement: {error}")))?;
        if self.node_stale_after < Duration::from_secs(1) {
            return invalid("the node staleness bound must be at least 1 s (nodes report every second)".into());
        }
        if self.nodes_max == 0 || self.log_lines_per_function == 0 || self.log_bytes_per_function < KIB {
            return invalid("nodes, log lines and log bytes kept must be at least 1 (log bytes 1 KiB)".into());
        }
        if self.connections_max == 0 {
            return invalid("the connection limit must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() || self.drain_timeout.is_zero() {
            return invalid("the header read timeout and the drain timeout must be greater than zero".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out by accident.
        let Self {
            listen,
            data_dir,
            token,
            node_token,
            component_bytes_max,
            compile_timeout,
            compiles_max,
            deploys_in_flight_max,
            instance_memory_bytes_max,
            nodes_max,
            node_stale_after,
            log_lines_per_function,
            log_bytes_per_function,
            connections_max,
            header_read_timeout,
            drain_timeout,
            placement,
            placement_interval,
            placement_stale_after,
        } = self;
        let redacted = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("ControlConfig")
            .field("listen", listen)
            .field("data_dir", data_dir)
            .field("token", &redacted(token))
            .field("node_token", &redacted(node_token))
            .field("component_bytes_max", component_bytes_max)
            .field("compile_timeout", compile_timeout)
            .field("compiles_max", compiles_max)
            .field("deploys_in_flight_max", deploys_in_flight_max)
            .field("instance_memory_bytes_max", instance_memory_bytes_max)
            .field("nodes_max", nodes_max)
            .field("node_stale_after", node_stale_after)
            .field("log_lines_per_function", log_lines_per_function)
            .field("log_bytes_per_function", log_bytes_per_function)
            .field("connections_max", connections_max)
            .field("header_read_timeout", header_read_timeout)
            .field("drain_timeout", drain_timeout)
            .field("placement", placement)
            .field("placement_interval", placement_interval)
            .field("placement_stale_after", placement_stale_after)
            .finish()
    }
}

/// Why a control plane refuses an admin and a node token that are equal.
pub(crate) const SAME_TOKENS: &str =
    "the node token must differ from the admin token (nodes must not hold a token that can deploy)";

/// A token must fit in an HTTP header unchanged: visible ASCII, no spaces.
/// `what` names it in the message (`admin token`, `node token`).
pub(crate) fn validate_token(what: &str, token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!("the {what} must not be empty"));
    }
    if token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the {what} must be at most 1024 visible ASCII characters (no spaces)"));
    }
    Ok(())
}

/// A setting that cannot work; the text says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ControlConfig::new("/tmp/x").validate(), Ok(()));
    }

    #[test]
    fn bad_settings_are_named() {
        let mut config = ControlConfig::new("/tmp/x");
        config.token = Some("has space".into());
        assert!(config.validate().is_err_and(|e| e.0.contains("token")));
        let mut config = ControlConfig::new("/tmp/x");
        config.component_bytes_max = 10;
        assert!(config.validate().is_err_and(|e| e.0.contains("component")));
        let mut config = ControlConfig::new("");
        config.compile_timeout = Duration::ZERO;
        assert!(config.validate().is_err_and(|e| e.0.contains("data directory")));
        let mut config = ControlConfig::new("/tmp/x");
        config.node_token = Some(String::new());
        assert!(config.validate().is_err_and(|e| e.0.contains("node token")));
        let mut config = ControlConfig::new("/tmp/x");
        config.node_stale_after = Duration::from_millis(500);
        assert!(config.validate().is_err_and(|e| e.0.contains("staleness")));
        let mut config = ControlConfig::new("/tmp/x");
        config.connections_max = 0;
        assert!(config.validate().is_err_and(|e| e.0.contains("connection")));
        let mut config = ControlConfig::new("/tmp/x");
        config.header_read_timeout = Duration::ZERO;
        assert!(config.validate().is_err_and(|e| e.0.contains("header read timeout")));
    }

    #[test]
    fn debug_hides_the_tokens() {
        let mut config = ControlConfig::new("/tmp/x");
        config.token = Some("admin-s3cret".into());
        config.node_token = Some("node-s3cret".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("/tmp/x"), "{shown}");
        let shown = format!("{:?}", ControlConfig::new("/tmp/x"));
        assert!(shown.contains("token: None"), "{shown}");
    }

    #[test]
    fn the_node_token_must_differ_from_the_admin_token() {
        let mut config = ControlConfig::new("/tmp/x");
        config.token = Some("same-token".into());
        config.node_token = Some("same-token".into());
        assert_eq!(config.validate(), Err(ConfigError(SAME_TOKENS.into())));
        config.node_token = Some("other-token".into());
        assert_eq!(config.validate(), Ok(()));
        config.token = None;
        assert_eq!(config.validate(), Ok(()), "a token from the data directory is compared when the plane opens");
    }
}
