//! The child processes a bench starts: `wedge` commands with a clean
//! environment, and a guard that kills a child when it goes out of scope (on
//! success, error or panic alike).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::util;

/// A running child process; killed when dropped.
pub struct Proc {
    pub child: Child,
    /// What it is, for messages (`control`, `node-1`, …).
    pub name: String,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// A note on how the process ended, if it did.
    pub fn exit_note(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                Some(format!("{} exited ({status}); its output:\n{}", self.name, util::log_tail(&self.log)))
            }
            _ => None,
        }
    }
}

/// How to start `wedge` children: the release binary, an environment without the
/// caller's `WEDGE_*` variables but the bench's admin token, and an empty config
/// directory (no user profile).
pub struct Wedge {
    pub program: PathBuf,
    pub config_home: PathBuf,
    /// The bench cluster's admin token (`WEDGE_TOKEN`).
    pub token: &'static str,
}

impl Wedge {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WEDGE_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("WEDGE_TOKEN", self.token).env("XDG_CONFIG_HOME", &self.config_home).stdin(Stdio::null());
        cmd
    }
}
