//! The cluster's public-key infrastructure: one cluster CA, one certificate
//! per node, and the files that hold them. It owns making, issuing, writing
//! and loading those files; it does not open sockets (that is
//! [`transport`](crate::transport)) and does not decide who is a member
//! (that is [`membership`](crate::membership)).
//!
//! # Trust model
//!
//! - **The cluster CA** (`ca.pem` and `ca-key.pem`, made once by
//!   `wedge cluster init`) is the root of trust, and the only one: nodes
//!   trust no system roots and no other CA. Its key does one thing, sign node
//!   certificates, so it lives only where certificates are issued (the
//!   operator's machine, a secrets store). No running node needs it. Every
//!   node holds `ca.pem`, the CA's certificate, which is public.
//! - **A node certificate** (`nodes/<name>.pem` and `nodes/<name>-key.pem`,
//!   made by `wedge cluster issue-cert`) is a node's identity. Its subject
//!   common name is the node's name, which is what the other nodes see as the
//!   verified sender of everything that node sends. Each node holds its own
//!   key and no other; keys never travel over the network.
//! - **What a node certificate allows**: everything a member may do. With it
//!   a node can connect to any other node's cluster port and accept their
//!   connections, gossip (say who is alive, suspect others), forward requests
//!   and fetch artifacts. There are no roles: holding a valid node
//!   certificate is being a member. The addresses in it (`--san`) are not
//!   checked against where a node connects from; they are there for tools
//!   that reach a node by one of its names or IPs.
//! - **Without one, nothing**: every connection, in both directions, is TLS
//!   1.3 with certificates on both sides checked against the cluster CA. A
//!   peer with no certificate, or one from another CA, fails the handshake:
//!   it cannot send a single gossip datagram or open a stream.
//! - **Lifetimes and renewal**: the CA is valid for [`CA_VALIDITY`] (10
//!   years), node certificates for [`NODE_CERT_VALIDITY`] (1 year, never past
//!   the CA's own end). Renew a node certificate by issuing it again under the
//!   same name (`wedge cluster issue-cert --force`: a new key and a new
//!   certificate replace the files) and restarting the node. The old
//!   certificate stays valid until it expires: there is no revocation list
//!   yet.
//! - **If a node key leaks**, its holder can join the cluster as that node
//!   until the certificate expires. Without revocation, the way to shut it
//!   out sooner is a new CA (below).
//! - **If the CA key leaks**, its holder can make certificates for any name
//!   and join as, or impersonate, any node; nothing in the cluster can tell
//!   those certificates from real ones. The only remedy is a new CA: `wedge
//!   cluster init` into a new directory, issue every node a certificate from
//!   it, and restart the nodes with the new `ca.pem`. Nodes on different CAs
//!   cannot talk to each other, so this is a cut-over. That is why
//!   `ca-key.pem` is written with mode 0600 and [`ClusterCa::load`] refuses a
//!   key file that others can read.
//!
//! # Names on the wire
//!
//! Besides its own name and its `--san` entries, every node certificate
//! carries the DNS name [`CLUSTER_SERVER_NAME`]. A node connecting to a peer
//! checks the peer's certificate against the cluster CA with that name, so it
//! needs only an address (no DNS, no knowing the peer's name beforehand),
//! and learns the peer's name from the verified certificate.
//!
//! # Files
//!
//! ```text
//! DIR/ca.pem               the CA certificate (public; every node needs it)
//! DIR/ca-key.pem           the CA key (mode 0600; secret; no node needs it)
//! DIR/nodes/<name>.pem     a node's certificate
//! DIR/nodes/<name>-key.pem that node's key (mode 0600; only that node needs it)
//! ```
//!
//! Every file is written atomically (a temporary file, synced, renamed or
//! linked into place, the directory synced): after a crash it is either
//! absent or complete. Keys are ECDSA P-256.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The CA certificate's file name in a cluster directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a cluster directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The subdirectory of a cluster directory that holds node certificates.
pub const NODES_DIR: &str = "nodes";
/// The DNS name every node certificate carries, and the server name a node
/// checks when it connects to a peer (see the module docs).
pub const CLUSTER_SERVER_NAME: &str = "wedge-cluster";
/// How long a new cluster CA is valid: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How long a new node certificate is valid: 1 year (or until the CA ends,
/// if that is sooner).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Certificates start this long before they are made, so that a node whose
/// clock is a little behind the issuer's accepts them at once.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(10 * 60);
/// The organisation name in every certificate wedge makes.
const ORGANIZATION: &str = "wedge";

/// What went wrong with the cluster's certificates or their files.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The directory holds no cluster CA.
    #[error("no cluster CA in {}: {} not found", dir.display(), CA_CERT_FILE)]
    CaMissing {
        /// The cluster directory.
        dir: PathBuf,
    },
    /// The CA certificate is there but its key is not.
    #[error("the cluster CA key {} is missing", path.display())]
    CaKeyMissing {
        /// Where the key should be.
        path: PathBuf,
    },
    /// `create` found a CA (or part of one) already there; nothing was written.
    #[error("a cluster CA already exists in {} ({} is there); refusing to overwrite it", dir.display(), path.display())]
    CaExists {
        /// The cluster directory.
        dir: PathBuf,
        /// The file that is already there.
        path: PathBuf,
    },
    /// A node certificate or its key is not there.
    #[error("no certificate for node {name:?}: {} not found", path.display())]
    NodeCertMissing {
        /// The node name.
        name: String,
        /// The missing file.
        path: PathBuf,
    },
    /// A key file can be read (or written) by users other than its owner.
    #[error("{} can be read by other users (mode {mode:04o}); a private key must not be: chmod 600 it", path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is not the PEM (certificate or key) it should be.
    #[error("{} is not a valid {what}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it should hold ("certificate", "private key").
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A key does not belong to the certificate beside it.
    #[error("{} is not the key of {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// `ca.pem` holds a certificate that may not sign others.
    #[error("{} is not a CA certificate", path.display())]
    NotACa {
        /// The certificate file.
        path: PathBuf,
    },
    /// A certificate is past its end of validity.
    #[error("{} expired at {not_after} (unix time)", path.display())]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its end of validity, in seconds since the Unix epoch.
        not_after: i64,
    },
    /// A node name that is not a DNS label.
    #[error(
        "invalid node name {name:?}: node names must be 1-63 characters of a-z, 0-9 and '-', \
         not starting or ending with '-'"
    )]
    InvalidNodeName {
        /// The name given.
        name: String,
    },
    /// A subject alternative name that is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {san:?}: not an IP address or a DNS name")]
    InvalidSan {
        /// The name given.
        san: String,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "create directory").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Making a key or signing a certificate failed.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Checks that `name` can be a node name: a DNS label (1-63 characters of
/// a-z, 0-9 and '-', not starting or ending with '-'), so that it fits in a
/// certificate's DNS name and a file name.
pub fn validate_node_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(PkiError::InvalidNodeName { name: name.to_string() }) }
}

/// A subject alternative name for a node certificate: another DNS name or an
/// IP address the node can be reached at. Parse one from a string with
/// [`str::parse`]: an IP address if it is one, else a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum San {
    /// A DNS name (stored lowercase).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl FromStr for San {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let lower = s.to_ascii_lowercase();
        match rustls_pki_types::DnsName::try_from(lower.as_str()) {
            Ok(_) if !lower.contains('*') => Ok(San::Dns(lower)),
            _ => Err(PkiError::InvalidSan { san: s.to_string() }),
        }
    }
}

impl From<IpAddr> for San {
    fn from(ip: IpAddr) -> Self {
        San::Ip(ip)
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(name) => f.write_str(name),
            San::Ip(ip) => ip.fmt(f),
        }
    }
}

/// The cluster CA, loaded with its key: it issues node certificates.
pub struct ClusterCa {
    /// The cluster directory it was made in or loaded from.
    dir: PathBuf,
    /// The subject common name, e.g. "wedge cluster CA 3f9a2c1e".
    name: String,
    /// `ca.pem`'s contents.
    cert_pem: String,
    /// When the CA stops being valid; node certificates never outlive it.
    not_after: OffsetDateTime,
    /// The CA's subject, key identifier and key: what signing needs.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Makes a new cluster CA in `dir` (created, mode 0700, if missing):
    /// an ECDSA P-256 key in `ca-key.pem` (mode 0600) and a self-signed CA
    /// certificate named "wedge cluster CA <random id>" in `ca.pem`, valid
    /// for [`CA_VALIDITY`].
    ///
    /// Refuses ([`PkiError::CaExists`]) when either file is already there:
    /// replacing a CA would orphan every certificate it issued. The key is
    /// written first and neither file ever overwrites an existing one, even
    /// if two `create`s race.
    pub fn create(dir: &Path) -> Result<ClusterCa, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&key_path, &cert_path] {
            if path.symlink_metadata().is_ok() {
                return Err(PkiError::CaExists { dir: dir.to_path_buf(), path: path.clone() });
            }
        }
        create_private_dir(dir)?;

        let mut id = [0u8; 4];
        fill_random(&mut id)?;
        let name = format!("wedge cluster CA {}", hex(&id));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();

        write_new_file(dir, &key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new_file(dir, &cert_path, cert_pem.as_bytes(), 0o644)?;
        let not_after = params.not_after;
        Ok(ClusterCa { dir: dir.to_path_buf(), name, cert_pem, not_after, issuer: Issuer::new(params, key) })
    }

    /// Loads the cluster CA of `dir`: `ca.pem` and `ca-key.pem`. Refuses a
    /// key that other users can read, a key that is not the certificate's, a
    /// certificate that is not a CA's, and an expired one.
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = match std::fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(PkiError::CaMissing { dir: dir.to_path_buf() });
            }
            Err(source) => return Err(PkiError::Io { action: "read", path: cert_path, source }),
        };
        let key_pem = match read_private_key_file(&key_path) {
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(PkiError::CaKeyMissing { path: key_path });
            }
            other => other?,
        };
        let cert_der = parse_cert_pem(&cert_path, &cert_pem)?;
        let info = CertInfo::parse(&cert_path, &cert_der)?;
        if !info.is_ca {
            return Err(PkiError::NotACa { path: cert_path });
        }
        info.check_not_expired(&cert_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| pem_error(&key_path, "private key", e))?;
        if key.subject_public_key_info() != info.public_key_der {
            return Err(PkiError::KeyMismatch { cert: cert_path, key: key_path });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| pem_error(&cert_path, "certificate", e))?;
        Ok(ClusterCa {
            dir: dir.to_path_buf(),
            name: info.common_name.unwrap_or_default(),
            cert_pem,
            not_after: info.not_after,
            issuer,
        })
    }

    /// The CA's name (its certificate's subject common name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the CA certificate is: `DIR/ca.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Where the CA key is: `DIR/ca-key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    /// The CA certificate, PEM: what every node needs to trust its peers.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    /// Issues a certificate and a new ECDSA P-256 key for node `name`.
    ///
    /// The certificate is good for both ends of a connection (TLS server
    /// and client authentication). Its subject common name is `name`; its
    /// DNS names are `name`, [`CLUSTER_SERVER_NAME`] and the DNS entries of
    /// `sans`; its IP addresses those of `sans`. It is valid from a few
    /// minutes ago for [`NODE_CERT_VALIDITY`], and never past the CA's end.
    /// Nothing is written: see [`NodeCert::write`].
    pub fn issue_node_cert(&self, name: &str, sans: &[San]) -> Result<NodeCert, PkiError> {
        validate_node_name(name)?;
        let mut names = vec![San::Dns(name.to_string()), San::Dns(CLUSTER_SERVER_NAME.to_string())];
        for san in sans {
            if !names.contains(san) {
                names.push(san.clone());
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.subject_alt_names = names
            .iter()
            .map(|san| match san {
                San::Dns(dns) => Ok(SanType::DnsName(dns.clone().try_into()?)),
                San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = (now + NODE_CERT_VALIDITY).min(self.not_after);
        params.serial_number = Some(random_serial()?);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            not_after: params.not_after,
        })
    }
}

/// Where a node's certificate and key live in a cluster directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertPaths {
    /// `DIR/nodes/<name>.pem`.
    pub cert: PathBuf,
    /// `DIR/nodes/<name>-key.pem` (mode 0600).
    pub key: PathBuf,
}

impl NodeCertPaths {
    /// The paths of node `name`'s files in the cluster directory `dir`.
    pub fn new(dir: &Path, name: &str) -> NodeCertPaths {
        let nodes = dir.join(NODES_DIR);
        NodeCertPaths { cert: nodes.join(format!("{name}.pem")), key: nodes.join(format!("{name}-key.pem")) }
    }
}

/// A node's certificate and key: its identity in the cluster.
pub struct NodeCert {
    /// The node name (the certificate's common name).
    name: String,
    /// The certificate, PEM.
    cert_pem: String,
    /// The key, PEM (PKCS#8). Secret.
    key_pem: String,
    /// The certificate, DER: what TLS uses.
    cert_der: CertificateDer<'static>,
    /// The key, DER: what TLS uses. Secret.
    key_der: PrivateKeyDer<'static>,
    /// When the certificate stops being valid.
    not_after: OffsetDateTime,
}

impl fmt::Debug for NodeCert {
    /// Leaves the key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert").field("name", &self.name).field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

impl NodeCert {
    /// The node name the certificate was issued for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM (PKCS#8). Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate, DER (for rustls).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The private key, DER (for rustls). Secret.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key_der.clone_key()
    }

    /// When the certificate stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    /// Writes the certificate and key into the cluster directory `dir`:
    /// `nodes/<name>.pem` and `nodes/<name>-key.pem` (mode 0600), replacing
    /// files of the same name (that is how a certificate is renewed). Each
    /// file is replaced atomically; the key is written first.
    pub fn write(&self, dir: &Path) -> Result<NodeCertPaths, PkiError> {
        let paths = NodeCertPaths::new(dir, &self.name);
        let nodes = dir.join(NODES_DIR);
        create_private_dir(&nodes)?;
        write_replacing_file(&nodes, &paths.key, self.key_pem.as_bytes(), 0o600)?;
        write_replacing_file(&nodes, &paths.cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok(paths)
    }

    /// Loads node `name`'s certificate and key from the cluster directory
    /// `dir`. Refuses a key others can read, a key that is not the
    /// certificate's, a certificate whose common name is not `name`, and an
    /// expired certificate. It does not check the certificate against the CA:
    /// the TLS handshake does, on both ends.
    pub fn load(dir: &Path, name: &str) -> Result<NodeCert, PkiError> {
        validate_node_name(name)?;
        let paths = NodeCertPaths::new(dir, name);
        let missing = |path: &Path| PkiError::NodeCertMissing { name: name.to_string(), path: path.to_path_buf() };
        let cert_pem = match std::fs::read_to_string(&paths.cert) {
            Ok(pem) => pem,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(missing(&paths.cert)),
            Err(source) => return Err(PkiError::Io { action: "read", path: paths.cert, source }),
        };
        let key_pem = match read_private_key_file(&paths.key) {
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing(&paths.key));
            }
            other => other?,
        };
        let cert_der = parse_cert_pem(&paths.cert, &cert_pem)?;
        let info = CertInfo::parse(&paths.cert, &cert_der)?;
        if info.common_name.as_deref() != Some(name) {
            return Err(PkiError::Pem {
                path: paths.cert,
                what: "certificate",
                reason: format!("it is for {:?}, not node {name:?}", info.common_name.unwrap_or_default()),
            });
        }
        info.check_not_expired(&paths.cert)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| pem_error(&paths.key, "private key", e))?;
        if key.subject_public_key_info() != info.public_key_der {
            return Err(PkiError::KeyMismatch { cert: paths.cert, key: paths.key });
        }
        Ok(NodeCert {
            name: name.to_string(),
            cert_pem,
            key_pem,
            cert_der,
            key_der: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            not_after: info.not_after,
        })
    }
}

/// Reads the CA certificate alone (`DIR/ca.pem`): what a node needs to
/// check its peers. Refuses a file that is not a CA certificate.
pub fn load_ca_cert(dir: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let path = dir.join(CA_CERT_FILE);
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(PkiError::CaMissing { dir: dir.to_path_buf() });
        }
        Err(source) => return Err(PkiError::Io { action: "read", path, source }),
    };
    let der = parse_cert_pem(&path, &pem)?;
    if !CertInfo::parse(&path, &der)?.is_ca {
        return Err(PkiError::NotACa { path });
    }
    Ok(der)
}

/// The node name a certificate was issued for: its subject common name, if
/// that is a valid node name. The transport uses it to name a verified peer.
pub fn node_name_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    validate_node_name(name).ok()?;
    Some(name.to_string())
}

/// What this module needs to know about a certificate.
struct CertInfo {
    common_name: Option<String>,
    is_ca: bool,
    public_key_der: Vec<u8>,
    not_after: OffsetDateTime,
}

impl CertInfo {
    fn parse(path: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| pem_error(path, "certificate", e))?;
        let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(String::from);
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| pem_error(path, "certificate", e))?;
        Ok(CertInfo { common_name, is_ca: cert.is_ca(), public_key_der: cert.public_key().raw.to_vec(), not_after })
    }

    fn check_not_expired(&self, path: &Path) -> Result<(), PkiError> {
        if self.not_after < OffsetDateTime::now_utc() {
            return Err(PkiError::Expired { path: path.to_path_buf(), not_after: self.not_after.unix_timestamp() });
        }
        Ok(())
    }
}

fn pem_error(path: &Path, what: &'static str, reason: impl fmt::Display) -> PkiError {
    PkiError::Pem { path: path.to_path_buf(), what, reason: reason.to_string() }
}

/// The one certificate in a PEM file.
fn parse_cert_pem(path: &Path, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    match (certs.next(), certs.next()) {
        (Some(Ok(cert)), None) => Ok(cert),
        (None, _) => Err(pem_error(path, "certificate", "no PEM CERTIFICATE block in it")),
        (Some(Err(error)), _) => Err(pem_error(path, "certificate", error)),
        (Some(Ok(_)), Some(_)) => Err(pem_error(path, "certificate", "more than one certificate in it")),
    }
}

/// Reads a private key file, refusing one that others can read or write.
fn read_private_key_file(path: &Path) -> Result<String, PkiError> {
    let io = |source| PkiError::Io { action: "read", path: path.to_path_buf(), source };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions { path: path.to_path_buf(), mode });
    }
    std::fs::read_to_string(path).map_err(io)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn fill_random(bytes: &mut [u8]) -> Result<(), PkiError> {
    ring::rand::SystemRandom::new().fill(bytes).map_err(|_| PkiError::Random)
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    // Positive, and no leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| PkiError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a new temporary file in `dir` with `mode`, synced.
fn write_temporary(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, PkiError> {
    let io = |source| PkiError::Io { action: "write", path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary).map_err(io)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(source));
    }
    Ok(temporary)
}

fn sync_dir(dir: &Path, path: &Path) -> Result<(), PkiError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| PkiError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that must not exist yet: the temporary file is hard-linked
/// into place, which fails (changing nothing) if `path` appeared meanwhile.
fn write_new_file(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let temporary = write_temporary(dir, path, bytes, mode)?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => sync_dir(dir, path),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(PkiError::CaExists { dir: dir.to_path_buf(), path: path.to_path_buf() })
        }
        Err(source) => Err(PkiError::Io { action: "write", path: path.to_path_buf(), source }),
    }
}

/// Writes a file, replacing any file of that name in one rename.
fn write_replacing_file(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let temporary = write_temporary(dir, path, bytes, mode)?;
    if let Err(source) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(PkiError::Io { action: "write", path: path.to_path_buf(), source });
    }
    sync_dir(dir, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_parse_as_ip_or_dns() {
        assert_eq!("10.0.0.1".parse::<San>().ok(), Some(San::Ip("10.0.0.1".parse().unwrap())));
        assert_eq!("::1".parse::<San>().ok(), Some(San::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))));
        assert_eq!("Edge-1.Example.com".parse::<San>().ok(), Some(San::Dns("edge-1.example.com".into())));
        for bad in ["", "a b", "*.example.com", "exa_mple..com", "-"] {
            assert!(bad.parse::<San>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names_are_dns_labels() {
        for good in ["a", "edge-1", "n0"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Edge", "a.b", "a_b", &"a".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }
}
