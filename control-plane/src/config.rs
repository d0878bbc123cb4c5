//! [`ControlConfig`]: every setting of a control plane, with defaults that
//! work on a laptop and [`ControlConfig::validate`] that says what is wrong.
//!
//! The library never reads the environment or files to fill it: the binary
//! layers defaults < `WEDGE_*` environment < flags and hands over the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::COMPONENT_BYTES_MAX_DEFAULT;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Largest `spec` part of a deploy (the [`crate::api::DeploySpec`] JSON).
pub const SPEC_BYTES_MAX: u64 = MIB;

/// Largest node report body.
pub const REPORT_BYTES_MAX: u64 = 4 * MIB;

/// Settings of one control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where the API listens (the binary binds it; the library serves on
    /// whatever listener it is given).
    pub listen: SocketAddr,
    /// Directory of the store (`store/`), the admin token file (`token`) and
    /// the lock file that keeps a second control plane out (`lock`).
    pub data_dir: PathBuf,
    /// The admin token. `None`: read `<data_dir>/token`, or generate one and
    /// save it there.
    pub token: Option<String>,
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
    /// recently is forgotten.
    pub nodes_max: usize,
    /// Guest log lines kept per function (the oldest go first).
    pub log_lines_per_function: usize,
    /// Guest log bytes kept per function (the oldest lines go first).
    pub log_bytes_per_function: u64,
}

impl ControlConfig {
    /// Defaults for a control plane keeping its data in `data_dir`, listening
    /// on `127.0.0.1:7070`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: data_dir.into(),
            token: None,
            component_bytes_max: COMPONENT_BYTES_MAX_DEFAULT,
            compile_timeout: Duration::from_secs(60),
            compiles_max: 2,
            deploys_in_flight_max: 4,
            instance_memory_bytes_max: wedge_host::HostConfig::default().instance_memory_bytes_max,
            nodes_max: 10_000,
            log_lines_per_function: 10_000,
            log_bytes_per_function: 4 * MIB,
        }
    }

    /// Checks the settings are usable; the message names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError(reason));
        if self.data_dir.as_os_str().is_empty() {
            return invalid("the data directory must not be empty".into());
        }
        if let Some(token) = &self.token {
            validate_token(token).map_err(ConfigError)?;
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
        if self.nodes_max == 0 || self.log_lines_per_function == 0 || self.log_bytes_per_function < KIB {
            return invalid("nodes, log lines and log bytes kept must be at least 1 (log bytes 1 KiB)".into());
        }
        Ok(())
    }
}

/// A token must fit in an HTTP header unchanged: visible ASCII, no spaces.
pub(crate) fn validate_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("the admin token must not be empty".into());
    }
    if token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token must be at most 1024 visible ASCII characters (no spaces)".into());
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
    }
}
