//! The cluster CA and node certificates: files, permissions, refusals, and
//! that the certificates verify the way the transport uses them (as server
//! for the cluster name, as client) against their CA and no other.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use wedge_cluster::pki::{
    CA_CERT_FILE, CA_KEY_FILE, CLUSTER_SERVER_NAME, ClusterCa, NodeCert, NodeCertPaths, PkiError, San, load_ca_cert,
    node_name_of,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(roots)
}

/// Verifies `cert` as a TLS server certificate for `name` against `ca`.
fn verify_as_server(ca: &CertificateDer<'static>, cert: &CertificateDer<'static>, name: &str) -> Result<(), String> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider()).build().unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
}

/// Verifies `cert` as a TLS client certificate against `ca`.
fn verify_as_client(ca: &CertificateDer<'static>, cert: &CertificateDer<'static>) -> Result<(), String> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().unwrap();
    verifier.verify_client_cert(cert, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn create_writes_the_ca_with_a_private_key() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let ca = ClusterCa::create(&dir).unwrap();

    assert!(ca.name().starts_with("wedge cluster CA "), "{}", ca.name());
    assert_eq!(ca.cert_path(), dir.join(CA_CERT_FILE));
    assert_eq!(ca.key_path(), dir.join(CA_KEY_FILE));
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir), 0o700, "a directory made for the CA is private");
    let cert = std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(cert, ca.cert_pem());
    let key = std::fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    // No temporary files are left behind.
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, [CA_KEY_FILE, CA_CERT_FILE]);

    let years = ca.not_after().duration_since(SystemTime::now()).unwrap().as_secs() / (365 * 24 * 3600);
    assert_eq!(years, 9, "about 10 years left");

    // Two CAs have different names.
    let other = ClusterCa::create(&temp.path().join("other")).unwrap();
    assert_ne!(ca.name(), other.name());
}

#[test]
fn create_refuses_to_overwrite_anything() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    ClusterCa::create(dir).unwrap();
    let cert = std::fs::read(dir.join(CA_CERT_FILE)).unwrap();
    let key = std::fs::read(dir.join(CA_KEY_FILE)).unwrap();

    let error = ClusterCa::create(dir).unwrap_err();
    assert!(matches!(error, PkiError::CaExists { .. }), "{error:?}");
    assert!(error.to_string().contains("refusing to overwrite"), "{error}");
    assert_eq!(std::fs::read(dir.join(CA_CERT_FILE)).unwrap(), cert);
    assert_eq!(std::fs::read(dir.join(CA_KEY_FILE)).unwrap(), key);

    // Half a CA (a crash between the two files, or a stray key) is refused too.
    let half = tempfile::tempdir().unwrap();
    std::fs::write(half.path().join(CA_KEY_FILE), "stray").unwrap();
    let error = ClusterCa::create(half.path()).unwrap_err();
    assert!(matches!(error, PkiError::CaExists { .. }), "{error:?}");
    assert_eq!(std::fs::read_to_string(half.path().join(CA_KEY_FILE)).unwrap(), "stray");
    assert!(!half.path().join(CA_CERT_FILE).exists());
}

#[test]
fn node_certificates_verify_against_their_ca_only() {
    let temp = tempfile::tempdir().unwrap();
    ClusterCa::create(temp.path()).unwrap();
    // Issue from the CA as loaded from disk, the way `wedge cluster issue-cert` does.
    let ca = ClusterCa::load(temp.path()).unwrap();
    let ca_cert = load_ca_cert(temp.path()).unwrap();
    let sans: Vec<San> = ["10.1.2.3", "edge-1.example.com", "::1"].iter().map(|s| s.parse().unwrap()).collect();
    let node = ca.issue_node_cert("edge-1", &sans).unwrap();
    assert_eq!(node.name(), "edge-1");
    let cert = node.cert_der();
    assert_eq!(node_name_of(&cert).as_deref(), Some("edge-1"));

    for name in [CLUSTER_SERVER_NAME, "edge-1", "edge-1.example.com", "10.1.2.3", "::1"] {
        verify_as_server(&ca_cert, &cert, name).unwrap_or_else(|e| panic!("as server for {name}: {e}"));
    }
    assert!(verify_as_server(&ca_cert, &cert, "edge-2").is_err());
    verify_as_client(&ca_cert, &cert).unwrap();

    // A certificate from another CA verifies against that CA, not this one.
    let other_dir = tempfile::tempdir().unwrap();
    let other = ClusterCa::create(other_dir.path()).unwrap();
    let stranger = other.issue_node_cert("edge-1", &[]).unwrap().cert_der();
    verify_as_server(&load_ca_cert(other_dir.path()).unwrap(), &stranger, CLUSTER_SERVER_NAME).unwrap();
    assert!(verify_as_server(&ca_cert, &stranger, CLUSTER_SERVER_NAME).is_err());
    assert!(verify_as_client(&ca_cert, &stranger).is_err());

    // A node certificate cannot act as a CA.
    let leaf_as_ca = verify_as_server(&cert, &other.issue_node_cert("x", &[]).unwrap().cert_der(), "x");
    assert!(leaf_as_ca.is_err());

    let left = node.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(364 * 24 * 3600) && left <= Duration::from_secs(365 * 24 * 3600), "{left:?}");
}

#[test]
fn node_files_are_written_private_and_load_back() {
    let temp = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(temp.path()).unwrap();
    let node = ca.issue_node_cert("n1", &["192.168.1.10".parse().unwrap()]).unwrap();
    let paths = node.write(temp.path()).unwrap();
    assert_eq!(paths, NodeCertPaths::new(temp.path(), "n1"));
    assert_eq!(paths.cert, temp.path().join("nodes/n1.pem"));
    assert_eq!(paths.key, temp.path().join("nodes/n1-key.pem"));
    assert_eq!(mode(&paths.key), 0o600);
    assert_eq!(mode(&temp.path().join("nodes")), 0o700);

    let loaded = NodeCert::load(temp.path(), "n1").unwrap();
    assert_eq!(loaded.cert_pem(), node.cert_pem());
    assert_eq!(loaded.key_pem(), node.key_pem());
    assert_eq!(loaded.cert_der(), node.cert_der());
    assert!(!format!("{loaded:?}").contains("PRIVATE"), "Debug must not print the key");

    // Renewal: issuing again under the same name replaces both files.
    let renewed = ca.issue_node_cert("n1", &[]).unwrap();
    renewed.write(temp.path()).unwrap();
    let loaded = NodeCert::load(temp.path(), "n1").unwrap();
    assert_eq!(loaded.cert_pem(), renewed.cert_pem());
    assert_ne!(loaded.key_pem(), node.key_pem());
    let mut names: Vec<_> =
        std::fs::read_dir(temp.path().join("nodes")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["n1-key.pem", "n1.pem"], "no temporary files left");

    // A certificate renamed to another node's file is refused.
    std::fs::copy(&paths.cert, temp.path().join("nodes/n2.pem")).unwrap();
    std::fs::copy(&paths.key, temp.path().join("nodes/n2-key.pem")).unwrap();
    let error = NodeCert::load(temp.path(), "n2").unwrap_err();
    assert!(error.to_string().contains("not node \"n2\""), "{error}");

    // A key that does not belong to the certificate is refused.
    let other = ca.issue_node_cert("n1", &[]).unwrap();
    std::fs::write(&paths.key, other.key_pem()).unwrap();
    let error = NodeCert::load(temp.path(), "n1").unwrap_err();
    assert!(matches!(error, PkiError::KeyMismatch { .. }), "{error:?}");

    let error = NodeCert::load(temp.path(), "n3").unwrap_err();
    assert!(matches!(error, PkiError::NodeCertMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("n3.pem"), "{error}");
}

#[test]
fn load_says_what_is_wrong() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();

    let error = ClusterCa::load(dir).unwrap_err();
    assert!(matches!(error, PkiError::CaMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("no cluster CA in"), "{error}");
    assert!(matches!(load_ca_cert(dir).unwrap_err(), PkiError::CaMissing { .. }));

    ClusterCa::create(dir).unwrap();
    let key = dir.join(CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = ClusterCa::load(dir).unwrap_err();
    assert!(matches!(error, PkiError::KeyPermissions { mode: 0o644, .. }), "{error:?}");
    assert!(error.to_string().contains("chmod 600"), "{error}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ClusterCa::load(dir).unwrap();

    let saved_key = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    assert!(matches!(ClusterCa::load(dir).unwrap_err(), PkiError::CaKeyMissing { .. }));

    // A key of another CA.
    let other = tempfile::tempdir().unwrap();
    ClusterCa::create(other.path()).unwrap();
    std::fs::copy(other.path().join(CA_KEY_FILE), &key).unwrap();
    assert!(matches!(ClusterCa::load(dir).unwrap_err(), PkiError::KeyMismatch { .. }));
    std::fs::write(&key, &saved_key).unwrap();

    // Garbage where the key or the certificate should be.
    std::fs::write(&key, "not a key").unwrap();
    let error = ClusterCa::load(dir).unwrap_err();
    assert!(matches!(error, PkiError::Pem { what: "private key", .. }), "{error:?}");
    std::fs::write(&key, &saved_key).unwrap();
    std::fs::write(dir.join(CA_CERT_FILE), "not a certificate").unwrap();
    let error = ClusterCa::load(dir).unwrap_err();
    assert!(matches!(error, PkiError::Pem { what: "certificate", .. }), "{error:?}");
    assert!(error.to_string().contains("ca.pem is not a valid certificate"), "{error}");

    // A node certificate where the CA's should be.
    let ca = ClusterCa::create(other.path().join("again").as_path()).unwrap();
    let node = ca.issue_node_cert("n", &[]).unwrap();
    std::fs::write(dir.join(CA_CERT_FILE), node.cert_pem()).unwrap();
    assert!(matches!(load_ca_cert(dir).unwrap_err(), PkiError::NotACa { .. }));
}

#[test]
fn bad_names_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(temp.path()).unwrap();
    for bad in ["", "Node", "a_b", "-a", "a.b", "../x"] {
        let error = ca.issue_node_cert(bad, &[]).unwrap_err();
        assert!(matches!(error, PkiError::InvalidNodeName { .. }), "{bad}: {error:?}");
        assert!(error.to_string().contains("node names must be"), "{error}");
    }
    let error = "no spaces".parse::<San>().unwrap_err();
    assert!(error.to_string().contains("not an IP address or a DNS name"), "{error}");
    assert!(!temp.path().join("nodes").exists(), "nothing written");
}
