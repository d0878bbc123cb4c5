//! Plumbing shared by the subcommands: where the workspace and its target directory
//! are, which packages it has, how child processes are started and reported, and how
//! sizes and durations are printed.
//!
//! Nothing here knows about a particular subcommand.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The cargo workspace as `cargo metadata --no-deps` describes it.
pub struct Workspace {
    /// The directory of the root `Cargo.toml`.
    pub root: PathBuf,
    /// Cargo's target directory: `$CARGO_TARGET_DIR`, `build.target-dir`, or `<root>/target`.
    /// Every artifact the xtask makes goes below it, so one `rm -rf` cleans everything.
    pub target_dir: PathBuf,
    /// Workspace members by the path of their `Cargo.toml`.
    members: HashMap<PathBuf, String>,
}

#[derive(Deserialize)]
struct Metadata {
    workspace_root: PathBuf,
    target_directory: PathBuf,
    workspace_members: Vec<String>,
    packages: Vec<MetadataPackage>,
}

#[derive(Deserialize)]
struct MetadataPackage {
    id: String,
    name: String,
    manifest_path: PathBuf,
}

impl Workspace {
    /// Reads the workspace around this xtask crate (not around the current directory,
    /// so `cargo xtask` behaves the same wherever it is started).
    pub fn load() -> Result<Self> {
        // `cargo run` sets CARGO_MANIFEST_DIR for the program too. Prefer it to the
        // compile-time value: cargo may reuse a binary built in another checkout that
        // shares the target directory (artifact hashes do not include the path).
        let xtask_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let manifest = xtask_dir.parent().context("the xtask crate has no parent directory")?.join("Cargo.toml");
        let json = output(
            cargo().args(["metadata", "--no-deps", "--format-version", "1"]).arg("--manifest-path").arg(&manifest),
        )?;
        let meta: Metadata = serde_json::from_str(&json).context("could not parse `cargo metadata` output")?;
        let members = meta
            .packages
            .into_iter()
            .filter(|p| meta.workspace_members.contains(&p.id))
            .map(|p| (p.manifest_path, p.name))
            .collect();
        Ok(Self { root: meta.workspace_root, target_dir: meta.target_directory, members })
    }

    /// The name of the workspace member whose manifest is `manifest`, if it is one.
    pub fn member_at(&self, manifest: &Path) -> Option<&str> {
        self.members.get(manifest).map(String::as_str)
    }

    /// Where compiled components are collected: `<target>/wasm/<package>.wasm`.
    /// Integration tests find them through `WEDGE_WASM_DIR` set to this directory.
    pub fn wasm_dir(&self) -> PathBuf {
        self.target_dir.join("wasm")
    }

    /// A binary built by `cargo build --release`.
    pub fn release_bin(&self, name: &str) -> PathBuf {
        self.target_dir.join("release").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }

    /// A `cargo` command that runs in the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = cargo();
        cmd.current_dir(&self.root);
        cmd
    }
}

/// The cargo that started us (`$CARGO`), so a `cargo +toolchain xtask` stays on that
/// toolchain; plain `cargo` when run some other way.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Runs `cmd` with inherited stdio after echoing it; fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("$ {shown}");
    let status = cmd.status().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure the error carries its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

/// Whether `cmd` runs and exits with 0, with all its output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The full path of `program` if it is on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Installs Debian packages with apt-get (through sudo when not root), running
/// `apt-get update` first only if the plain install fails (stale or absent lists).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("installing with apt-get: {}", packages.join(" "));
    with_fresh_apt_lists(|| run(apt_get().args(["install", "-y"]).args(packages)))
        .with_context(|| format!("could not install {} with apt-get", packages.join(" ")))
}

/// Downloads a Debian package's `.deb` into `dir` without installing it (for a
/// tool taken out of a package whose installation would do more, such as
/// start a service), and returns its path. Updates the apt lists as
/// [`apt_install`] does.
pub fn apt_download(package: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    eprintln!("downloading Debian package {package} into {}", dir.display());
    with_fresh_apt_lists(|| run(Command::new("apt-get").current_dir(dir).args(["download", package])))
        .with_context(|| format!("could not download {package} with apt-get"))?;
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(dir.join(name));
        }
    }
    bail!("`apt-get download {package}` left no {prefix}*.deb in {}", dir.display())
}

/// Runs an apt-get `attempt`, and once more after `apt-get update` if it fails.
fn with_fresh_apt_lists(attempt: impl Fn() -> Result<()>) -> Result<()> {
    if attempt().is_ok() {
        return Ok(());
    }
    run(apt_get().arg("update")).context("apt-get update failed")?;
    attempt()
}

fn apt_get() -> Command {
    let root = output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0");
    if !root && on_path("sudo").is_some() {
        // sudo resets the environment; it takes variables as arguments instead.
        let mut cmd = Command::new("sudo");
        cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        cmd
    } else {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }
}

/// A command as a shell line: the environment it sets, the program, the arguments.
pub fn display(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", key.to_string_lossy(), quote(&value.to_string_lossy()));
        }
    }
    line.push_str(&quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(&arg.to_string_lossy()));
    }
    line
}

fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else if s.chars().any(char::is_control) {
        // Bash's $'...' keeps a newline on one line.
        format!("$'{}'", s.escape_debug().to_string().replace("\\\"", "\""))
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A byte count for people: `812 B`, `95.3 KiB`, `2.41 MiB`.
pub fn fmt_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.2} MiB", b / (KIB * KIB))
    }
}

/// A duration for people: `850ms`, `12.3s`, `3m07s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// The last 20 lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The short commit hash of the workspace, `+dirty` when the tree has
/// changes: which code a bench report measured.
pub fn commit_name(ws: &Workspace) -> String {
    let git = |args: &[&str]| output(Command::new("git").current_dir(&ws.root).args(args)).unwrap_or_default();
    let hash = git(&["rev-parse", "--short", "HEAD"]).trim().to_owned();
    if git(&["status", "--porcelain"]).trim().is_empty() { hash } else { format!("{hash}+dirty") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_display_as_shell_lines() {
        let mut cmd = Command::new("cargo");
        cmd.env("A", "x y").args(["build", "--config", "k=[\"a\"]"]);
        assert_eq!(display(&cmd), r#"A='x y' cargo build --config 'k=["a"]'"#);
        let mut cmd = Command::new("native-hello");
        cmd.arg("it's\n");
        assert_eq!(display(&cmd), r"native-hello $'it\'s\n'");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(fmt_size(812), "812 B");
        assert_eq!(fmt_size(97_587), "95.3 KiB");
        assert_eq!(fmt_size(2_527_068), "2.41 MiB");
        assert_eq!(fmt_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(fmt_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_duration(Duration::from_secs(187)), "3m07s");
    }
}
