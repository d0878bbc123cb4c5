//! The node-to-node transport: one quinn endpoint on one UDP port, server and
//! client at once, every connection mutual TLS against the cluster CA. It
//! carries gossip as QUIC datagrams and peer RPC (request forwarding,
//! artifact transfer) on bidirectional streams. It owns sockets, TLS and
//! connections; it does not know what the bytes mean (membership decides
//! that) and it never reads the environment or files on its own
//! ([`TransportConfig::from_cluster_dir`] reads what it is told to).
//!
//! # Who may talk
//!
//! Both ends present a certificate, and both are checked against the cluster
//! CA alone (no system roots): the server requires a client certificate
//! (rustls `WebPkiClientVerifier`), the client checks the server's with the
//! DNS name [`CLUSTER_SERVER_NAME`], which every node certificate carries
//! (see [`pki`](crate::pki)). So a node connects to a peer knowing only its
//! address, no DNS and no name. A peer without a certificate from the
//! cluster CA fails the handshake in both directions: none of its datagrams
//! or streams ever reach the application. TLS 1.3 only, ALPN [`ALPN`].
//!
//! Every connection is labelled with its peer's verified node name, the
//! common name of its certificate, and so is every datagram and stream that
//! arrives on it ([`Peer`]). The transport does not check that the peer at
//! an address has the name someone expected there: a caller that expected a
//! particular node compares [`Peer::name`].
//!
//! # Gossip: datagrams
//!
//! [`Transport::send_datagram`] is fire-and-forget, like UDP, which is what
//! SWIM expects: it never waits. With a live connection to the address the
//! datagram goes out at once. Without one, a connection is started in the
//! background and the datagram waits in a small per-peer queue
//! ([`TransportConfig::pending_datagrams_max`]) until the handshake ends;
//! if it fails, the queue is dropped and counted. A datagram is at most
//! [`MAX_DATAGRAM_BYTES`] long (what fits in one QUIC packet at the minimum
//! QUIC MTU), checked before anything is sent ([`TransportError::TooLarge`]).
//!
//! Datagrams that arrive go into one bounded channel ([`Transport::datagrams`]);
//! when it is full, new ones are dropped and counted
//! ([`TransportStats::datagrams_dropped_full`]): a slow reader loses gossip,
//! as over a lossy network, and never grows memory.
//!
//! # Peer RPC: streams
//!
//! [`Transport::open_stream`] opens a bidirectional stream to a peer
//! (connecting first if needed) and writes a two-byte header, version
//! ([`STREAM_VERSION`]) then kind ([`StreamKind`]); what follows is the
//! caller's protocol. The peer's transport reads the header and hands the
//! stream to [`Transport::accept_streams`]'s bounded channel; a stream with
//! an unknown version, a header that does not arrive within
//! [`TransportConfig::stream_header_timeout`], or no room in the channel is
//! reset. Each connection allows at most
//! [`TransportConfig::max_concurrent_streams`] open streams each way: an
//! `open_stream` beyond that waits until one closes (back-pressure).
//!
//! # Connections
//!
//! One connection per peer address is preferred for sending: the newest
//! established one, outgoing or incoming, so that a peer that restarted and
//! connected to us is answered on its new connection. Connections are kept
//! alive by QUIC keep-alives, and at most [`TransportConfig::max_connections`]
//! are kept: past that, the least recently used one is closed (and its open
//! streams fail). A connection whose peer vanished closes after
//! [`TransportConfig::idle_timeout`] of silence. A peer that restarted on the
//! same address closes our old connection at once, with a stateless reset:
//! its reset and connection-id keys are derived from its node key, so they
//! survive restarts. A send on a connection found closed reconnects.
//! Connection migration is off: a peer is its address.
//!
//! LAN defaults ([`TransportConfig::new`]): keep-alive every 3 s, idle
//! timeout 10 s (three keep-alives lost in a row), connect timeout 3 s
//! (enough for the handshake's loss recovery on a LAN; SWIM's own
//! timeouts, not these, decide when a member is down).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendDatagramError, SendStream, VarInt};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};

use crate::pki::{self, CLUSTER_SERVER_NAME, NodeCert, PkiError};

/// The ALPN protocol of node-to-node connections.
pub const ALPN: &[u8] = b"wedge/1";

/// The version byte that starts every stream header.
pub const STREAM_VERSION: u8 = 1;

/// The largest gossip datagram: what fits in one QUIC packet at QUIC's
/// minimum MTU of 1200 bytes, after the short header (with quinn's 8-byte
/// connection ids), the AEAD tag and the DATAGRAM frame's own header. Every
/// QUIC path carries this much; larger messages belong on a stream.
pub const MAX_DATAGRAM_BYTES: usize = 1200 - (1 + 8 + 4) - 16 - 9;

/// Application close and stream error codes that this module sends.
mod code {
    use quinn::VarInt;
    /// The transport is closing.
    pub(super) const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// The connection was the least recently used one past the limit.
    pub(super) const EVICTED: VarInt = VarInt::from_u32(1);
    /// The peer's certificate carries no valid node name.
    pub(super) const NO_NODE_NAME: VarInt = VarInt::from_u32(2);
    /// Membership declared the peer down.
    pub(super) const PEER_DOWN: VarInt = VarInt::from_u32(3);
    /// Stream refused: the receiving side's channel is full.
    pub(super) const STREAM_BUSY: VarInt = VarInt::from_u32(1);
    /// Stream refused: bad, late or unknown-version header.
    pub(super) const STREAM_BAD_HEADER: VarInt = VarInt::from_u32(2);
}

/// What a stream is for: the second byte of its header. The receiver
/// dispatches on it; this crate gives a few kinds names and lets any other
/// value through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKind(pub u8);

impl StreamKind {
    /// A request forwarded to a node that runs the function.
    pub const FORWARD: StreamKind = StreamKind(1);
    /// An artifact (a component) fetched from a peer by its hash.
    pub const ARTIFACT: StreamKind = StreamKind(2);
}

/// A connected peer: its address and the node name its certificate (checked
/// against the cluster CA) carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's UDP address (its cluster port).
    pub addr: SocketAddr,
    /// The node name in the peer's certificate.
    pub name: Arc<str>,
}

/// A datagram received from a peer.
#[derive(Clone, Debug)]
pub struct Datagram {
    /// Who sent it.
    pub peer: Peer,
    /// What it said.
    pub bytes: Bytes,
}

/// A bidirectional stream to or from a peer, past its header.
#[derive(Debug)]
pub struct PeerStream {
    /// The other end.
    pub peer: Peer,
    /// What the stream is for.
    pub kind: StreamKind,
    /// Bytes to the peer; `finish()` it when done.
    pub send: SendStream,
    /// Bytes from the peer.
    pub recv: RecvStream,
}

/// A transport's settings: its identity and limits. [`TransportConfig::new`]
/// gives LAN defaults; change fields, then [`Transport::bind`] validates.
pub struct TransportConfig {
    /// The cluster CA's certificate: the only root trusted, both ways.
    pub ca_cert: CertificateDer<'static>,
    /// This node's certificate, issued by the cluster CA.
    pub node_cert: CertificateDer<'static>,
    /// This node's private key.
    pub node_key: PrivateKeyDer<'static>,
    /// A connection with no packet from its peer for this long is closed
    /// (QUIC idle timeout; also bounds the handshake). Default 10 s.
    pub idle_timeout: Duration,
    /// A connection with nothing to send pings this often, so that a live
    /// peer's connection never idles out. Default 3 s; less than
    /// `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// How long a connection attempt may take. Default 3 s.
    pub connect_timeout: Duration,
    /// How many connections are kept; past it the least recently used one
    /// is closed. Default 256.
    pub max_connections: usize,
    /// Open streams per connection, each way. Default 64.
    pub max_concurrent_streams: u32,
    /// Received datagrams waiting for the application. Default 1024.
    pub datagram_channel_capacity: usize,
    /// Accepted streams waiting for the application. Default 64.
    pub stream_channel_capacity: usize,
    /// Datagrams waiting, per peer, for a connection being made. Default 16.
    pub pending_datagrams_max: usize,
    /// How long an incoming stream may take to send its header. Default 5 s.
    pub stream_header_timeout: Duration,
}

impl fmt::Debug for TransportConfig {
    /// Leaves the key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("node", &pki::node_name_of(&self.node_cert))
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("datagram_channel_capacity", &self.datagram_channel_capacity)
            .field("stream_channel_capacity", &self.stream_channel_capacity)
            .field("pending_datagrams_max", &self.pending_datagrams_max)
            .field("stream_header_timeout", &self.stream_header_timeout)
            .finish_non_exhaustive()
    }
}

impl TransportConfig {
    /// A configuration with this identity and the LAN defaults.
    pub fn new(
        ca_cert: CertificateDer<'static>,
        node_cert: CertificateDer<'static>,
        node_key: PrivateKeyDer<'static>,
    ) -> TransportConfig {
        TransportConfig {
            ca_cert,
            node_cert,
            node_key,
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            max_connections: 256,
            max_concurrent_streams: 64,
            datagram_channel_capacity: 1024,
            stream_channel_capacity: 64,
            pending_datagrams_max: 16,
            stream_header_timeout: Duration::from_secs(5),
        }
    }

    /// A configuration with LAN defaults and the identity of node `name` in
    /// the cluster directory `dir`: `ca.pem`, `nodes/<name>.pem` and
    /// `nodes/<name>-key.pem` (the CA key is not needed).
    pub fn from_cluster_dir(dir: &Path, name: &str) -> Result<TransportConfig, PkiError> {
        let ca_cert = pki::load_ca_cert(dir)?;
        let node = NodeCert::load(dir, name)?;
        Ok(TransportConfig::new(ca_cert, node.cert_der(), node.key_der()))
    }

    /// Checks the limits make sense together.
    pub fn validate(&self) -> Result<(), BindError> {
        let invalid = |reason: &str| Err(BindError::InvalidConfig { reason: reason.to_string() });
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return invalid("keep_alive_interval must be more than zero and less than idle_timeout");
        }
        if self.connect_timeout.is_zero() || self.stream_header_timeout.is_zero() {
            return invalid("connect_timeout and stream_header_timeout must be more than zero");
        }
        if self.max_connections == 0
            || self.max_concurrent_streams == 0
            || self.datagram_channel_capacity == 0
            || self.stream_channel_capacity == 0
            || self.pending_datagrams_max == 0
        {
            return invalid(
                "max_connections, max_concurrent_streams, the channel capacities and pending_datagrams_max \
                 must be more than zero",
            );
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return invalid("idle_timeout is too long");
        }
        Ok(())
    }
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The configuration's limits do not make sense.
    #[error("invalid transport configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// This node's certificate carries no valid node name.
    #[error("the node certificate carries no valid node name (its common name)")]
    NoNodeName,
    /// The certificates or key cannot be used for TLS.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why a datagram, a connection or a stream failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The datagram is longer than a datagram may be.
    #[error("datagram of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The transport has been closed.
    #[error("the transport is closed")]
    Closed,
    /// A connection could not even be started (e.g. an unusable address).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectError,
    },
    /// The handshake failed or the connection was lost: the peer is down,
    /// refused us (its CA is not ours), or its certificate is not from our CA.
    #[error("connection to {addr} failed: {source}")]
    Connection {
        /// The peer's address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectionError,
    },
    /// The handshake did not finish in time.
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The connect timeout.
        after: Duration,
    },
    /// The peer's certificate, although from the cluster CA, names no valid node.
    #[error("the certificate of {addr} carries no valid node name")]
    NoPeerName {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The peer does not accept datagrams.
    #[error("{addr} does not accept datagrams")]
    DatagramsUnsupported {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// Writing a stream header failed.
    #[error("cannot open a stream to {addr}: {source}")]
    Stream {
        /// The peer's address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::WriteError,
    },
}

/// Counters since the transport started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Datagrams handed to a connection.
    pub datagrams_sent: u64,
    /// Datagrams that never got a connection (its handshake failed, or the
    /// per-peer queue was full).
    pub datagrams_dropped_unsent: u64,
    /// Datagrams received and delivered to the channel.
    pub datagrams_received: u64,
    /// Datagrams received and dropped because the channel was full.
    pub datagrams_dropped_full: u64,
    /// Connections established by us.
    pub connects: u64,
    /// Connection attempts by us that failed.
    pub connect_failures: u64,
    /// Connections accepted from peers.
    pub accepts: u64,
    /// Incoming handshakes that failed (wrong CA, no certificate, timeout).
    pub accept_failures: u64,
    /// Connections closed because there were too many.
    pub evictions: u64,
    /// Streams opened by us.
    pub streams_opened: u64,
    /// Streams accepted and delivered to the channel.
    pub streams_accepted: u64,
    /// Incoming streams reset (full channel, bad or late header).
    pub streams_refused: u64,
    /// Connections open now.
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    datagrams_sent: AtomicU64,
    datagrams_dropped_unsent: AtomicU64,
    datagrams_received: AtomicU64,
    datagrams_dropped_full: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    accepts: AtomicU64,
    accept_failures: AtomicU64,
    evictions: AtomicU64,
    streams_opened: AtomicU64,
    streams_accepted: AtomicU64,
    streams_refused: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// One node's transport. Share it as an `Arc<Transport>` (gossip, request
/// forwarding and artifact transfer all use the one endpoint). Dropping it
/// closes the endpoint at once; call [`Transport::close`] to close it
/// gracefully.
pub struct Transport {
    shared: Arc<Shared>,
    /// Handed out once by [`Transport::datagrams`].
    datagram_rx: Mutex<Option<mpsc::Receiver<Datagram>>>,
    /// Handed out once by [`Transport::accept_streams`].
    stream_rx: Mutex<Option<mpsc::Receiver<PeerStream>>>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("name", &self.shared.name)
            .field("local_addr", &self.shared.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// What the tasks of a transport share.
struct Shared {
    endpoint: Endpoint,
    /// This node's name (from its certificate), for logs.
    name: Arc<str>,
    limits: Limits,
    pool: Mutex<Pool>,
    datagram_tx: mpsc::Sender<Datagram>,
    stream_tx: mpsc::Sender<PeerStream>,
    counters: Counters,
    closed: AtomicBool,
}

/// The numbers of [`TransportConfig`] the tasks need.
#[derive(Clone, Copy)]
struct Limits {
    connect_timeout: Duration,
    max_connections: usize,
    pending_datagrams_max: usize,
    stream_header_timeout: Duration,
}

/// The connections of a transport.
#[derive(Default)]
struct Pool {
    /// Every open connection, by quinn's stable id.
    connections: HashMap<usize, Entry>,
    /// The connection to send on, per peer address.
    preferred: HashMap<SocketAddr, usize>,
    /// Connections being made by us, per peer address.
    connecting: HashMap<SocketAddr, Attempt>,
    /// A logical clock for least-recently-used eviction.
    tick: u64,
}

struct Entry {
    connection: Connection,
    peer: Peer,
    last_used: u64,
}

/// A connection being made: what waits for it.
struct Attempt {
    /// Datagrams to send once connected (at most `pending_datagrams_max`).
    pending: Vec<Bytes>,
    /// Gets the outcome; `connect` callers wait on it.
    outcome: watch::Receiver<Option<Result<(Connection, Peer), TransportError>>>,
}

type Outcome = Result<(Connection, Peer), TransportError>;

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // Nothing in the pool is left half-changed by a panic: keep going.
    pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    fn touch(&mut self, id: usize) {
        self.tick += 1;
        if let Some(entry) = self.connections.get_mut(&id) {
            entry.last_used = self.tick;
        }
    }

    /// The live connection to send to `addr` on, marked as used.
    fn preferred(&mut self, addr: SocketAddr) -> Option<(Connection, Peer)> {
        let id = *self.preferred.get(&addr)?;
        let entry = self.connections.get(&id)?;
        if entry.connection.close_reason().is_some() {
            self.remove(id);
            return self.preferred(addr);
        }
        let found = (entry.connection.clone(), entry.peer.clone());
        self.touch(id);
        Some(found)
    }

    /// Forgets a connection; if it was preferred for its address, another
    /// open connection with that address takes its place.
    fn remove(&mut self, id: usize) {
        let Some(entry) = self.connections.remove(&id) else { return };
        let addr = entry.peer.addr;
        if self.preferred.get(&addr) == Some(&id) {
            self.preferred.remove(&addr);
            let next = self
                .connections
                .iter()
                .filter(|(_, e)| e.peer.addr == addr && e.connection.close_reason().is_none())
                .max_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| *id);
            if let Some(next) = next {
                self.preferred.insert(addr, next);
            }
        }
    }
}

impl Transport {
    /// Binds a UDP socket at `addr` (port 0 for any) and starts serving:
    /// accepting connections from peers with a certificate from the
    /// cluster CA and connecting to peers on demand. Must be called inside
    /// a tokio runtime.
    pub fn bind(addr: SocketAddr, config: TransportConfig) -> Result<Transport, BindError> {
        config.validate()?;
        let name: Arc<str> = pki::node_name_of(&config.node_cert).ok_or(BindError::NoNodeName)?.into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |e: &dyn fmt::Display| BindError::Tls(e.to_string());
        let mut roots = RootCertStore::empty();
        roots.add(config.ca_cert.clone()).map_err(|e| tls(&e))?;
        let roots = Arc::new(roots);

        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls(&e))?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![config.node_cert.clone()], config.node_key.clone_key())
            .map_err(|e| tls(&e))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![config.node_cert.clone()], config.node_key.clone_key())
            .map_err(|e| tls(&e))?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];

        let quic = Arc::new(quic_transport_config(&config)?);
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).map_err(|e| tls(&e))?));
        server.transport_config(quic.clone());
        server.migration(false);
        let mut client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).map_err(|e| tls(&e))?));
        client.transport_config(quic);

        let socket = std::net::UdpSocket::bind(addr).map_err(|source| BindError::Bind { addr, source })?;
        let (reset_key, cid_key) = restart_keys(&config.node_key);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        let mut endpoint = Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))
            .map_err(|source| BindError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);

        let (datagram_tx, datagram_rx) = mpsc::channel(config.datagram_channel_capacity);
        let (stream_tx, stream_rx) = mpsc::channel(config.stream_channel_capacity);
        let shared = Arc::new(Shared {
            endpoint,
            name,
            limits: Limits {
                connect_timeout: config.connect_timeout,
                max_connections: config.max_connections,
                pending_datagrams_max: config.pending_datagrams_max,
                stream_header_timeout: config.stream_header_timeout,
            },
            pool: Mutex::new(Pool::default()),
            datagram_tx,
            stream_tx,
            counters: Counters::default(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(shared.clone()));
        Ok(Transport { shared, datagram_rx: Mutex::new(Some(datagram_rx)), stream_rx: Mutex::new(Some(stream_rx)) })
    }

    /// The UDP address the transport is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// This node's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The largest datagram [`Transport::send_datagram`] takes:
    /// [`MAX_DATAGRAM_BYTES`].
    pub fn max_datagram_size(&self) -> usize {
        MAX_DATAGRAM_BYTES
    }

    /// The receiver of incoming datagrams, the first time it is called;
    /// `None` after. Its channel is bounded: when it is full, new datagrams
    /// are dropped and counted.
    pub fn datagrams(&self) -> Option<mpsc::Receiver<Datagram>> {
        self.datagram_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// The receiver of incoming streams (past their header), the first time
    /// it is called; `None` after. Its channel is bounded: when it is full,
    /// new streams are reset.
    pub fn accept_streams(&self) -> Option<mpsc::Receiver<PeerStream>> {
        self.stream_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Sends a datagram to the peer at `addr` without waiting: at once on a
    /// live connection, else once the connection being made is up (see the
    /// module docs). `Ok` means sent or queued, not delivered: like UDP, a
    /// datagram can be lost (and when a connection's send buffer is full,
    /// quinn drops its oldest unsent datagram).
    pub fn send_datagram(&self, addr: SocketAddr, bytes: Bytes) -> Result<(), TransportError> {
        if bytes.len() > MAX_DATAGRAM_BYTES {
            return Err(TransportError::TooLarge { len: bytes.len(), max: MAX_DATAGRAM_BYTES });
        }
        let shared = &self.shared;
        if shared.closed.load(Ordering::Relaxed) {
            return Err(TransportError::Closed);
        }
        // At most two rounds: a connection found closed is forgotten and the
        // second round starts a new one.
        for _ in 0..2 {
            let connection = {
                let mut pool = lock(&shared.pool);
                match pool.preferred(addr) {
                    Some((connection, _)) => connection,
                    None => {
                        shared.queue_or_connect(&mut pool, addr, Some(bytes));
                        return Ok(());
                    }
                }
            };
            match connection.send_datagram(bytes.clone()) {
                Ok(()) => {
                    bump(&shared.counters.datagrams_sent, 1);
                    return Ok(());
                }
                Err(SendDatagramError::ConnectionLost(_)) => lock(&shared.pool).remove(connection.stable_id()),
                Err(SendDatagramError::TooLarge) => {
                    let max = connection.max_datagram_size().unwrap_or(0);
                    return Err(TransportError::TooLarge { len: bytes.len(), max });
                }
                Err(SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled) => {
                    return Err(TransportError::DatagramsUnsupported { addr });
                }
            }
        }
        bump(&shared.counters.datagrams_dropped_unsent, 1);
        Ok(())
    }

    /// Connects to the peer at `addr`, or finds the connection already
    /// there, and returns who it is.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Peer, TransportError> {
        self.shared.connection(addr).await.map(|(_, peer)| peer)
    }

    /// Opens a stream of `kind` to the peer at `addr` (connecting first if
    /// needed) and writes its header. Waits while the connection already
    /// has its maximum of open streams.
    pub async fn open_stream(&self, addr: SocketAddr, kind: StreamKind) -> Result<PeerStream, TransportError> {
        let shared = &self.shared;
        let mut retried = false;
        loop {
            let (connection, peer) = shared.connection(addr).await?;
            let (mut send, recv) = match connection.open_bi().await {
                Ok(pair) => pair,
                Err(source) => {
                    lock(&shared.pool).remove(connection.stable_id());
                    if retried || shared.closed.load(Ordering::Relaxed) {
                        return Err(TransportError::Connection { addr, source });
                    }
                    retried = true;
                    continue;
                }
            };
            send.write_all(&[STREAM_VERSION, kind.0])
                .await
                .map_err(|source| TransportError::Stream { addr, source })?;
            lock(&shared.pool).touch(connection.stable_id());
            bump(&shared.counters.streams_opened, 1);
            return Ok(PeerStream { peer, kind, send, recv });
        }
    }

    /// Closes every connection to the peer at `addr` (membership declared
    /// it down): streams waiting on it fail at once instead of at the idle
    /// timeout, so their callers can go elsewhere. A later send connects
    /// anew.
    pub fn drop_peer(&self, addr: SocketAddr) {
        let mut pool = lock(&self.shared.pool);
        let ids: Vec<usize> = pool.connections.iter().filter(|(_, e)| e.peer.addr == addr).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(entry) = pool.connections.get(&id) {
                entry.connection.close(code::PEER_DOWN, b"declared down");
            }
            pool.remove(id);
        }
    }

    /// The counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            datagrams_sent: get(&c.datagrams_sent),
            datagrams_dropped_unsent: get(&c.datagrams_dropped_unsent),
            datagrams_received: get(&c.datagrams_received),
            datagrams_dropped_full: get(&c.datagrams_dropped_full),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            accepts: get(&c.accepts),
            accept_failures: get(&c.accept_failures),
            evictions: get(&c.evictions),
            streams_opened: get(&c.streams_opened),
            streams_accepted: get(&c.streams_accepted),
            streams_refused: get(&c.streams_refused),
            connections: lock(&self.shared.pool).connections.len() as u64,
        }
    }

    /// Closes every connection (peers see an orderly close, not a timeout)
    /// and waits, at most a second, for the peers to acknowledge. Sends and
    /// connects fail with [`TransportError::Closed`] afterwards.
    pub async fn close(&self) {
        self.shared.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Shared {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.endpoint.close(code::SHUTDOWN, b"shutdown");
        let mut pool = lock(&self.pool);
        pool.connections.clear();
        pool.preferred.clear();
    }

    /// The live connection to `addr`: the preferred one, or the one being
    /// made, or a new one.
    async fn connection(self: &Arc<Self>, addr: SocketAddr) -> Outcome {
        if self.closed.load(Ordering::Relaxed) {
            return Err(TransportError::Closed);
        }
        let mut outcome = {
            let mut pool = lock(&self.pool);
            if let Some(found) = pool.preferred(addr) {
                return Ok(found);
            }
            self.queue_or_connect(&mut pool, addr, None)
        };
        match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Err(TransportError::Closed)),
            Err(_) => Err(TransportError::Closed),
        }
    }

    /// Queues `datagram` (if any) for the connection being made to `addr`,
    /// starting one if there is none; returns where its outcome will be.
    /// Called with the pool locked, so that there is one attempt per address.
    fn queue_or_connect(
        self: &Arc<Self>,
        pool: &mut Pool,
        addr: SocketAddr,
        datagram: Option<Bytes>,
    ) -> watch::Receiver<Option<Outcome>> {
        if let Some(attempt) = pool.connecting.get_mut(&addr) {
            if let Some(datagram) = datagram {
                if attempt.pending.len() < self.limits.pending_datagrams_max {
                    attempt.pending.push(datagram);
                } else {
                    bump(&self.counters.datagrams_dropped_unsent, 1);
                }
            }
            return attempt.outcome.clone();
        }
        let (done, outcome) = watch::channel(None);
        pool.connecting.insert(addr, Attempt { pending: datagram.into_iter().collect(), outcome: outcome.clone() });
        tokio::spawn(connect_task(self.clone(), addr, done));
        outcome
    }

    /// Adds an established connection to the pool, making it the preferred
    /// one for its address, closing the least recently used ones past the
    /// limit, and starts serving it.
    fn register(self: &Arc<Self>, pool: &mut Pool, connection: Connection, peer: Peer) {
        while pool.connections.len() >= self.limits.max_connections {
            let Some(oldest) = pool.connections.iter().min_by_key(|(_, e)| e.last_used).map(|(id, _)| *id) else {
                break;
            };
            if let Some(entry) = pool.connections.get(&oldest) {
                let (peer, addr) = (&entry.peer.name, entry.peer.addr);
                tracing::debug!(%peer, %addr, "closing the least recently used connection");
                entry.connection.close(code::EVICTED, b"too many connections");
            }
            pool.remove(oldest);
            bump(&self.counters.evictions, 1);
        }
        pool.tick += 1;
        let id = connection.stable_id();
        pool.preferred.insert(peer.addr, id);
        pool.connections.insert(id, Entry { connection: connection.clone(), peer: peer.clone(), last_used: pool.tick });
        tokio::spawn(read_datagrams(self.clone(), connection.clone(), peer.clone()));
        tokio::spawn(accept_streams(self.clone(), connection, peer));
    }
}

/// The identity of a connection's peer: the node name in its certificate.
fn peer_of(connection: &Connection) -> Option<Peer> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let name = pki::node_name_of(chain.first()?)?;
    Some(Peer { addr: connection.remote_address(), name: name.into() })
}

/// Makes one connection attempt to `addr` and settles it: registers the
/// connection, sends the queued datagrams, tells the waiters.
async fn connect_task(shared: Arc<Shared>, addr: SocketAddr, done: watch::Sender<Option<Outcome>>) {
    let outcome = handshake(&shared, addr).await;
    let pending = {
        let mut pool = lock(&shared.pool);
        let pending = pool.connecting.remove(&addr).map(|attempt| attempt.pending).unwrap_or_default();
        if let Ok((connection, peer)) = &outcome {
            if shared.closed.load(Ordering::Relaxed) {
                connection.close(code::SHUTDOWN, b"shutdown");
            } else {
                shared.register(&mut pool, connection.clone(), peer.clone());
            }
        }
        pending
    };
    match &outcome {
        Ok((connection, peer)) => {
            bump(&shared.counters.connects, 1);
            tracing::debug!(peer = %peer.name, %addr, "connected");
            for datagram in pending {
                match connection.send_datagram(datagram) {
                    Ok(()) => bump(&shared.counters.datagrams_sent, 1),
                    Err(_) => bump(&shared.counters.datagrams_dropped_unsent, 1),
                }
            }
        }
        Err(error) => {
            bump(&shared.counters.connect_failures, 1);
            bump(&shared.counters.datagrams_dropped_unsent, pending.len() as u64);
            tracing::debug!(%addr, %error, "connection attempt failed");
        }
    }
    let _ = done.send(Some(outcome));
}

async fn handshake(shared: &Shared, addr: SocketAddr) -> Outcome {
    let connecting = shared
        .endpoint
        .connect(addr, CLUSTER_SERVER_NAME)
        .map_err(|source| TransportError::Connect { addr, source })?;
    let after = shared.limits.connect_timeout;
    let connection = match tokio::time::timeout(after, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(source)) => return Err(TransportError::Connection { addr, source }),
        Err(_) => return Err(TransportError::Timeout { addr, after }),
    };
    match peer_of(&connection) {
        Some(peer) => Ok((connection, peer)),
        None => {
            connection.close(code::NO_NODE_NAME, b"no node name in certificate");
            Err(TransportError::NoPeerName { addr })
        }
    }
}

/// Accepts incoming connections until the endpoint closes; each handshake
/// runs in its own task.
async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.closed.load(Ordering::Relaxed) {
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let connection = match tokio::time::timeout(shared.limits.connect_timeout, incoming).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    bump(&shared.counters.accept_failures, 1);
                    tracing::debug!(%addr, %error, "incoming handshake failed");
                    return;
                }
                Err(_) => {
                    bump(&shared.counters.accept_failures, 1);
                    tracing::debug!(%addr, "incoming handshake timed out");
                    return;
                }
            };
            let Some(peer) = peer_of(&connection) else {
                bump(&shared.counters.accept_failures, 1);
                connection.close(code::NO_NODE_NAME, b"no node name in certificate");
                return;
            };
            bump(&shared.counters.accepts, 1);
            tracing::debug!(peer = %peer.name, %addr, "accepted");
            let mut pool = lock(&shared.pool);
            if shared.closed.load(Ordering::Relaxed) {
                connection.close(code::SHUTDOWN, b"shutdown");
            } else {
                shared.register(&mut pool, connection, peer);
            }
        });
    }
}

/// Delivers a connection's datagrams until it closes, then forgets it.
async fn read_datagrams(shared: Arc<Shared>, connection: Connection, peer: Peer) {
    let id = connection.stable_id();
    let reason = loop {
        match connection.read_datagram().await {
            Ok(bytes) => {
                lock(&shared.pool).touch(id);
                match shared.datagram_tx.try_send(Datagram { peer: peer.clone(), bytes }) {
                    Ok(()) => bump(&shared.counters.datagrams_received, 1),
                    Err(_) => bump(&shared.counters.datagrams_dropped_full, 1),
                }
            }
            Err(reason) => break reason,
        }
    };
    tracing::debug!(peer = %peer.name, addr = %peer.addr, %reason, "connection closed");
    lock(&shared.pool).remove(id);
}

/// Accepts a connection's incoming streams until it closes; each header is
/// read in its own task (at most `max_concurrent_streams` per connection).
async fn accept_streams(shared: Arc<Shared>, connection: Connection, peer: Peer) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        lock(&shared.pool).touch(connection.stable_id());
        tokio::spawn(read_header(shared.clone(), peer.clone(), send, recv));
    }
}

async fn read_header(shared: Arc<Shared>, peer: Peer, mut send: SendStream, mut recv: RecvStream) {
    let mut header = [0u8; 2];
    let read = tokio::time::timeout(shared.limits.stream_header_timeout, recv.read_exact(&mut header)).await;
    if !matches!(read, Ok(Ok(()))) || header[0] != STREAM_VERSION {
        tracing::debug!(peer = %peer.name, ?header, "stream refused: bad, late or unknown-version header");
        bump(&shared.counters.streams_refused, 1);
        let _ = send.reset(code::STREAM_BAD_HEADER);
        let _ = recv.stop(code::STREAM_BAD_HEADER);
        return;
    }
    let stream = PeerStream { peer, kind: StreamKind(header[1]), send, recv };
    match shared.stream_tx.try_send(stream) {
        Ok(()) => bump(&shared.counters.streams_accepted, 1),
        Err(error) => {
            let mut stream = error.into_inner();
            bump(&shared.counters.streams_refused, 1);
            let _ = stream.send.reset(code::STREAM_BUSY);
            let _ = stream.recv.stop(code::STREAM_BUSY);
        }
    }
}

/// QUIC settings: see the module docs.
fn quic_transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, BindError> {
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| BindError::InvalidConfig { reason: "idle_timeout is too long".into() })?;
    let mut quic = quinn::TransportConfig::default();
    quic.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .max_concurrent_bidi_streams(VarInt::from_u32(config.max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // Datagrams read but not yet taken by `read_datagrams`, per
        // connection; also the largest datagram frame we accept (64 KiB).
        .datagram_receive_buffer_size(Some(64 * 1024))
        .datagram_send_buffer_size(64 * 1024);
    Ok(quic)
}

/// The stateless-reset key and the connection-id key, both derived from the
/// node key, so that they survive a restart. A peer still holding a
/// connection to the previous run sends it packets; the new run recognises
/// the connection ids as its own (same key) and answers with a stateless
/// reset that the peer accepts (same reset key): the peer drops the stale
/// connection at once and reconnects, instead of sending into it until the
/// idle timeout. No one without the node key can make those resets.
fn restart_keys(node_key: &PrivateKeyDer<'_>) -> (ring::hmac::Key, u64) {
    let derive = |label: &[u8]| {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(label);
        context.update(node_key.secret_der());
        context.finish()
    };
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"wedge stateless reset key v1\0").as_ref());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derive(b"wedge connection id key v1\0").as_ref()[..8]);
    (reset_key, u64::from_le_bytes(cid_key))
}
