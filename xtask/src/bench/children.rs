//! The child processes a bench starts: `wedge` commands with a clean
//! environment, a guard that kills a child when it goes out of scope (on
//! success, error or panic alike), starting one and waiting for the line that
//! says it is ready, and free ports for the ones that need to be given one.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util;

/// How long a child may take to print its readiness line.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

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

/// The notes of every one of `procs` that has exited, one after another, or `None` if
/// none has.
pub fn exit_notes<'a>(procs: impl IntoIterator<Item = &'a mut Proc>) -> Option<String> {
    let notes: Vec<String> = procs.into_iter().filter_map(Proc::exit_note).collect();
    if notes.is_empty() { None } else { Some(notes.join("\n")) }
}

/// `err`, with what became of each of `procs` that has exited.
pub fn with_exit_notes<'a>(err: anyhow::Error, procs: impl IntoIterator<Item = &'a mut Proc>) -> anyhow::Error {
    match exit_notes(procs) {
        Some(notes) => err.context(notes),
        None => err,
    }
}

/// Hands `child` to a thread that runs `wait` on it and returns what that returns, or
/// `None` if it takes longer than `deadline`; then the child is killed by its id and
/// the thread reaped before returning.
pub fn wait_within<T: Send + 'static>(
    child: Child,
    deadline: Duration,
    wait: impl FnOnce(Child) -> T + Send + 'static,
) -> Option<T> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<T>();
    let waiter = thread::spawn(move || {
        let _ = tx.send(wait(child));
    });
    let done = match rx.recv_timeout(deadline) {
        Ok(done) => Some(done),
        Err(_) => {
            // The waiter owns the child: stop it by its id, then let the waiter reap it.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            None
        }
    };
    let _ = waiter.join();
    done
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

/// Starts `cmd` with its output in `log` and waits (at most [`START_DEADLINE`]) for the
/// stdout line starting with `ready`; returns the process and the lines up to that one.
pub fn spawn_ready(mut cmd: Command, name: &str, ready: &'static str, log: &Path) -> Result<(Proc, Vec<String>)> {
    let log_file = File::create(log).with_context(|| format!("could not create {}", log.display()))?;
    cmd.stdout(Stdio::piped()).stderr(log_file.try_clone()?);
    let shown = util::display(&cmd);
    let mut child = cmd.spawn().with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("the child has no stdout pipe")?;
    let proc = Proc { child, name: name.to_owned(), log: log.to_path_buf() };
    let (tx, rx) = mpsc::channel();
    // Copies stdout to the log for the life of the process (so the pipe never fills),
    // and hands over the lines up to the readiness line.
    thread::spawn(move || {
        let mut log_file = log_file;
        let mut tx = Some(tx);
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log_file, "{line}");
            if tx.is_some() {
                let is_ready = line.starts_with(ready);
                lines.push(line);
                if is_ready && let Some(tx) = tx.take() {
                    let _ = tx.send(std::mem::take(&mut lines));
                }
            }
        }
    });
    match rx.recv_timeout(START_DEADLINE) {
        Ok(lines) => Ok((proc, lines)),
        Err(RecvTimeoutError::Timeout) => {
            bail!(
                "`{shown}` did not print {ready:?} within {}s; its output:\n{}",
                START_DEADLINE.as_secs(),
                util::log_tail(log)
            )
        }
        Err(RecvTimeoutError::Disconnected) => {
            bail!("`{shown}` closed its stdout before printing {ready:?}; its output:\n{}", util::log_tail(log))
        }
    }
}

/// The rest of the first line in `lines` that starts with `prefix`.
pub fn after(lines: &[String], prefix: &str) -> Result<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|rest| rest.trim().to_owned())
        .with_context(|| format!("no line starting with {prefix:?} in {lines:?}"))
}

/// Asks the OS for a free port on 127.0.0.1. (Another process could take it before the
/// server binds it; on a bench machine that does not happen, and a failed bind shows.)
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not find a free port")?;
    Ok(listener.local_addr()?.port())
}
