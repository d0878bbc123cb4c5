//! `wedge cluster init` and `wedge cluster issue-cert`, the real binary on a
//! temporary directory: what they write (and with which permissions), what
//! they print, and that bad input is one line on stderr, a non-zero exit and
//! nothing written.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn wedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wedge")).args(args).env_remove("WEDGE_CLUSTER_DIR").output().unwrap()
}

fn succeeds(args: &[&str]) -> String {
    let output = wedge(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `wedge ARGS` expecting a refusal: non-zero exit, nothing on stdout,
/// one line on stderr containing `needle`.
fn refused(args: &[&str], needle: &str) {
    let output = wedge(args);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(output.stdout.is_empty(), "it printed {:?}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {stderr}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

#[test]
fn init_then_issue_cert() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let d = dir.to_str().unwrap();

    let stdout = succeeds(&["cluster", "init", "--dir", d]);
    assert!(stdout.contains(&format!("{d}/ca.pem")), "{stdout}");
    assert!(stdout.contains(&format!("{d}/ca-key.pem")), "{stdout}");
    assert!(stdout.contains("warning: ca-key.pem must stay secret"), "{stdout}");
    assert!(stdout.contains("wedge cluster CA "), "{stdout}");
    assert_eq!(files(&dir), ["ca-key.pem", "ca.pem"]);
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);

    let stdout = succeeds(&[
        "cluster",
        "issue-cert",
        "--dir",
        d,
        "--name",
        "edge-1",
        "--san",
        "10.0.0.5",
        "--san",
        "edge-1.lan",
    ]);
    assert!(stdout.contains(&format!("{d}/nodes/edge-1.pem")), "{stdout}");
    assert!(stdout.contains(&format!("{d}/nodes/edge-1-key.pem")), "{stdout}");
    assert!(stdout.contains("edge-1, wedge-cluster, 10.0.0.5, edge-1.lan"), "{stdout}");
    assert_eq!(files(&dir), ["ca-key.pem", "ca.pem", "nodes/edge-1-key.pem", "nodes/edge-1.pem"]);
    assert_eq!(mode(&dir.join("nodes/edge-1-key.pem")), 0o600);

    // The files are what the library (and so `wedge node`) loads.
    let node = wedge_cluster::pki::NodeCert::load(&dir, "edge-1").unwrap();
    assert_eq!(node.name(), "edge-1");
    wedge_cluster::pki::ClusterCa::load(&dir).unwrap();

    // Issuing again needs --force (renewal), which replaces both files.
    let cert = std::fs::read(dir.join("nodes/edge-1.pem")).unwrap();
    refused(&["cluster", "issue-cert", "--dir", d, "--name", "edge-1"], "pass --force to replace it");
    assert_eq!(std::fs::read(dir.join("nodes/edge-1.pem")).unwrap(), cert);
    succeeds(&["cluster", "issue-cert", "--dir", d, "--name", "edge-1", "--force"]);
    assert_ne!(std::fs::read(dir.join("nodes/edge-1.pem")).unwrap(), cert);
    assert_eq!(mode(&dir.join("nodes/edge-1-key.pem")), 0o600);
}

#[test]
fn init_refuses_to_overwrite_a_ca() {
    let temp = tempfile::tempdir().unwrap();
    let d = temp.path().to_str().unwrap();
    succeeds(&["cluster", "init", "--dir", d]);
    let cert = std::fs::read(temp.path().join("ca.pem")).unwrap();
    let key = std::fs::read(temp.path().join("ca-key.pem")).unwrap();
    refused(&["cluster", "init", "--dir", d], "refusing to overwrite");
    assert_eq!(std::fs::read(temp.path().join("ca.pem")).unwrap(), cert);
    assert_eq!(std::fs::read(temp.path().join("ca-key.pem")).unwrap(), key);
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let temp = tempfile::tempdir().unwrap();

    // No CA there (the directory does not even exist).
    let missing = temp.path().join("nowhere");
    let m = missing.to_str().unwrap();
    refused(&["cluster", "issue-cert", "--dir", m, "--name", "edge-1"], "no cluster CA in");
    assert!(!missing.exists(), "nothing written");

    let dir = temp.path().join("cluster");
    let d = dir.to_str().unwrap();
    succeeds(&["cluster", "init", "--dir", d]);
    for bad in ["Edge-1", "edge_1", "-edge", "edge.1", "../../etc/x", ""] {
        refused(&["cluster", "issue-cert", "--dir", d, "--name", bad], "invalid node name");
    }
    refused(
        &["cluster", "issue-cert", "--dir", d, "--name", "ok", "--san", "not a host"],
        "invalid subject alternative name",
    );

    // A CA key that others can read is refused before anything is issued.
    std::fs::set_permissions(dir.join("ca-key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&["cluster", "issue-cert", "--dir", d, "--name", "ok"], "chmod 600");
    assert_eq!(files(&dir), ["ca-key.pem", "ca.pem"], "nothing written");

    // A file where the directory should be.
    let file = temp.path().join("file");
    std::fs::write(&file, "").unwrap();
    refused(&["cluster", "init", "--dir", file.to_str().unwrap()], "cannot make a cluster CA in");
}

#[test]
fn help_teaches() {
    let text = succeeds(&["cluster", "--help"]);
    assert!(text.contains("wedge cluster issue-cert --dir ./cluster --name edge-1"), "{text}");
    assert!(text.contains("ca-key.pem"), "{text}");
    let text = succeeds(&["cluster", "issue-cert", "--help"]);
    for needle in ["Examples:", "--san", "--force", "--name"] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    let text = succeeds(&["--help"]);
    assert!(text.contains("cluster"), "{text}");
}
