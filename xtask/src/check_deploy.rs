//! `cargo xtask check-deploy`, also a step of `cargo xtask test`: checks what
//! `deploy/` gives operators with the tools they would run it with, without a
//! container engine, a Kubernetes cluster or a systemd boot.
//!
//! - **compose**: `docker-compose config` accepts `deploy/compose.yaml`, and
//!   every host path it mounts (`./…`, `../…`) exists, so the Prometheus and
//!   Grafana files it takes from `deploy/observability/` cannot go missing
//!   unnoticed (`config` does not look at them).
//! - **Kubernetes**: `kubectl kustomize deploy/kubernetes` renders, and checkov
//!   finds nothing in the rendered manifests nor in `deploy/Dockerfile`; every
//!   check skipped with a `checkov.io/skip` annotation says why. Without
//!   kubectl, checkov reads the unrendered files instead (and says so).
//! - **systemd**: `systemd-analyze verify` passes on the units, and `systemd-analyze
//!   security` rates their exposure at most 2.0 ([`SYSTEMD_EXPOSURE_MAX`]). Both run
//!   against a temporary root holding the host's stock units, ours, and a stub
//!   `/usr/local/bin/wedge` (verify only checks that `ExecStart` is executable),
//!   so nothing is installed on the machine.
//!
//! Tools come from `PATH`; `docker-compose` is installed with apt when
//! missing, checkov [`CHECKOV_VERSION`] with pip into a virtual environment
//! under the target directory (about 70 s the first time), `systemd-analyze`
//! must be there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::util::{self, Workspace};

/// The checkov release the checks are pinned to (a new one brings new checks).
const CHECKOV_VERSION: &str = "3.3.30";
/// The highest `systemd-analyze security` exposure a unit may have, in tenths
/// (its `--threshold`: 20 is an exposure of 2.0; 0 is best, 100 worst).
const SYSTEMD_EXPOSURE_MAX: u32 = 20;
/// The systemd units, in `deploy/systemd`, and the name each is verified as (a
/// template needs an instance).
const SYSTEMD_UNITS: [(&str, &str); 2] =
    [("wedge-control.service", "wedge-control.service"), ("wedge-node@.service", "wedge-node@edge-1.service")];

/// Check the container, compose, Kubernetes and systemd files under deploy/
///
/// docker-compose config on deploy/compose.yaml (and its mounted paths exist);
/// kubectl kustomize on deploy/kubernetes, then checkov on the rendered
/// manifests and deploy/Dockerfile; systemd-analyze verify and security on
/// deploy/systemd. Installs docker-compose (apt) and checkov (pip, pinned, in
/// a venv under the target directory) when missing.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    check(&Workspace::load()?)
}

/// Runs every check, stopping at the first that fails.
pub fn check(ws: &Workspace) -> Result<()> {
    let deploy = ws.root.join("deploy");
    let scratch = ws.target_dir.join("deploy-check");
    std::fs::create_dir_all(&scratch).with_context(|| format!("could not create {}", scratch.display()))?;
    compose(&deploy).context("deploy/compose.yaml")?;
    kubernetes_and_dockerfile(ws, &deploy, &scratch).context("deploy/kubernetes or deploy/Dockerfile")?;
    systemd(&deploy, &scratch).context("deploy/systemd")?;
    Ok(())
}

fn compose(deploy: &Path) -> Result<()> {
    if util::on_path("docker-compose").is_none() {
        util::apt_install(&["docker-compose"])?;
    }
    let file = deploy.join("compose.yaml");
    util::run(Command::new("docker-compose").arg("-f").arg(&file).args(["config", "--quiet"]))?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("could not read {}", file.display()))?;
    let missing: Vec<String> = bind_mount_sources(&text).filter(|source| !deploy.join(source).exists()).collect();
    ensure!(missing.is_empty(), "it mounts paths that do not exist (relative to deploy/): {}", missing.join(", "));
    Ok(())
}

/// The host paths of a compose file's bind mounts: volume entries that start
/// with `./` or `../`, up to the first `:`.
fn bind_mount_sources(compose: &str) -> impl Iterator<Item = String> + '_ {
    compose.lines().filter_map(|line| {
        let entry = line.trim().strip_prefix("- ")?.trim_matches(['"', '\'']);
        let source = entry.split(':').next()?;
        (source.starts_with("./") || source.starts_with("../")).then(|| source.to_string())
    })
}

fn kubernetes_and_dockerfile(ws: &Workspace, deploy: &Path, scratch: &Path) -> Result<()> {
    let kubernetes = deploy.join("kubernetes");
    check_skip_reasons(&kubernetes)?;
    let manifests = if util::on_path("kubectl").is_some() {
        let rendered = util::output(Command::new("kubectl").arg("kustomize").arg(&kubernetes))?;
        ensure!(rendered.contains("kind: StatefulSet"), "kubectl kustomize rendered no StatefulSet");
        let path = scratch.join("kubernetes.yaml");
        std::fs::write(&path, rendered).with_context(|| format!("could not write {}", path.display()))?;
        eprintln!("rendered deploy/kubernetes into {}", path.display());
        vec!["-f".into(), path.into_os_string()]
    } else {
        eprintln!("note: no kubectl on PATH: checkov reads deploy/kubernetes unrendered (overlays not applied)");
        vec!["-d".into(), kubernetes.into_os_string()]
    };
    let checkov = checkov(ws)?;
    util::run(
        Command::new(checkov)
            .args(manifests)
            .arg("-f")
            .arg(deploy.join("Dockerfile"))
            .args(["--framework", "kubernetes", "dockerfile", "--quiet", "--compact", "--skip-download"])
            .env("BC_SKIP_MAPPING", "TRUE"),
    )
    .context("checkov found problems (fix them, or skip a check with a `checkov.io/skip` annotation and a reason)")
}

/// Every `checkov.io/skipN: CHECK=reason` annotation under `dir` gives a reason.
fn check_skip_reasons(dir: &Path) -> Result<()> {
    let mut unexplained = Vec::new();
    for path in yaml_files(dir)? {
        let text = std::fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))?;
        for line in text.lines().filter(|line| line.trim_start().starts_with("checkov.io/skip")) {
            let reason = line.split_once('=').map_or("", |(_, reason)| reason.trim());
            if reason.len() < 10 {
                unexplained.push(format!("{}: {}", path.display(), line.trim()));
            }
        }
    }
    ensure!(unexplained.is_empty(), "checkov skips without a reason (CHECK=why):\n  {}", unexplained.join("\n  "));
    Ok(())
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(yaml_files(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            files.push(path);
        }
    }
    Ok(files)
}

/// checkov [`CHECKOV_VERSION`], installed into a virtual environment under the
/// target directory when it is not there yet.
fn checkov(ws: &Workspace) -> Result<PathBuf> {
    let venv = ws.target_dir.join("deploy-tools").join(format!("checkov-{CHECKOV_VERSION}"));
    let bin = venv.join("bin").join("checkov");
    // Written last: an interrupted install is not mistaken for a finished one.
    let installed = venv.join(".installed");
    if installed.is_file() && bin.is_file() {
        return Ok(bin);
    }
    eprintln!("installing checkov {CHECKOV_VERSION} into {} (about a minute)", venv.display());
    if !util::succeeds(Command::new("python3").args(["-m", "ensurepip", "--version"])) {
        util::apt_install(&["python3-venv"])?;
    }
    let _ = std::fs::remove_dir_all(&venv);
    util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let requirement = format!("checkov=={CHECKOV_VERSION}");
    util::run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &requirement,
    ]))
    .with_context(|| format!("could not install {requirement} with pip"))?;
    ensure!(bin.is_file(), "pip installed checkov but {} is missing", bin.display());
    std::fs::write(&installed, format!("{requirement}\n"))?;
    Ok(bin)
}

fn systemd(deploy: &Path, scratch: &Path) -> Result<()> {
    if util::on_path("systemd-analyze").is_none() {
        bail!("systemd-analyze is not on PATH (Debian: apt-get install systemd)");
    }
    let root = scratch.join("systemd-root");
    let _ = std::fs::remove_dir_all(&root);
    let stock = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|dir| dir.join("sysinit.target").exists())
        .context("no stock systemd units (sysinit.target) on this machine")?;
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(root.join("usr/lib/systemd"))?;
    std::fs::create_dir_all(&units)?;
    std::fs::create_dir_all(root.join("usr/local/bin"))?;
    util::run(Command::new("cp").arg("-a").arg(stock).arg(root.join("usr/lib/systemd/system")))?;
    let stub = root.join("usr/local/bin/wedge");
    std::fs::write(
        &stub,
        "#!/bin/sh\n# stands in for wedge: systemd-analyze verify checks that ExecStart is executable\n",
    )?;
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut verified = Vec::new();
    for (file, as_name) in SYSTEMD_UNITS {
        std::fs::copy(deploy.join("systemd").join(file), units.join(file))
            .with_context(|| format!("could not copy {file}"))?;
        if as_name != file {
            std::os::unix::fs::symlink(file, units.join(as_name))?;
        }
        verified.push(format!("/etc/systemd/system/{as_name}"));
    }
    let root_arg = format!("--root={}", root.display());
    // verify exits 0 on unknown or misspelt settings, only printing them: any output fails.
    let shown = format!("systemd-analyze verify {root_arg} {}", verified.join(" "));
    eprintln!("$ {shown}");
    let out = Command::new("systemd-analyze").arg("verify").arg(&root_arg).args(&verified).output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.trim().is_empty(), "`{shown}` failed ({}):\n{}", out.status, said.trim());
    for unit in &verified {
        let threshold = format!("--threshold={SYSTEMD_EXPOSURE_MAX}");
        let out = util::output(Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            &root_arg,
            &threshold,
            unit,
        ]))
        .with_context(|| format!("{unit}: exposure above {SYSTEMD_EXPOSURE_MAX}/100, or not analysable"))?;
        if let Some(line) = out.lines().find(|line| line.contains("Overall exposure level")) {
            eprintln!("{}", line.trim_start_matches(['→', ' ']));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounts_are_the_relative_volume_entries() {
        let compose = "volumes:\n  - ./observability:/etc/prometheus:ro\n  - prometheus:/prometheus\n  - \"../x:/y\"\ncommand:\n  - --flag=./not\n";
        assert_eq!(bind_mount_sources(compose).collect::<Vec<_>>(), ["./observability", "../x"]);
    }
}
