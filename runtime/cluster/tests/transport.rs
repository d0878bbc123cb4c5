//! The QUIC transport over real UDP on 127.0.0.1: datagrams both ways with
//! the sender's verified name, stream RPC, mutual TLS that keeps out peers
//! of another CA or with no certificate (in both directions), bounded
//! channels that drop and count, size limits, eviction, restart and close.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wedge_cluster::pki::{ClusterCa, load_ca_cert};
use wedge_cluster::transport::{
    ALPN, Datagram, MAX_DATAGRAM_BYTES, StreamKind, Transport, TransportConfig, TransportError,
};

/// How long a test waits for something that should happen at once on loopback.
const DEADLINE: Duration = Duration::from_secs(10);

/// A cluster CA in a temporary directory.
struct Cluster {
    dir: tempfile::TempDir,
    ca: ClusterCa,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path()).unwrap();
        Cluster { dir, ca }
    }

    /// The configuration of node `name`, its certificate issued now.
    fn config(&self, name: &str) -> TransportConfig {
        let node = self.ca.issue_node_cert(name, &[]).unwrap();
        TransportConfig::new(load_ca_cert(self.dir.path()).unwrap(), node.cert_der(), node.key_der())
    }

    fn node(&self, name: &str) -> Transport {
        Transport::bind(localhost(), self.config(name)).unwrap()
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn addr(transport: &Transport) -> SocketAddr {
    transport.local_addr().unwrap()
}

async fn next_datagram(rx: &mut mpsc::Receiver<Datagram>) -> Datagram {
    tokio::time::timeout(DEADLINE, rx.recv()).await.expect("no datagram in time").expect("channel closed")
}

/// Waits until `condition` holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn datagrams_go_both_ways_named_by_certificate() {
    let cluster = Cluster::new();
    let a = cluster.node("node-a");
    let b = cluster.node("node-b");
    let mut a_rx = a.datagrams().unwrap();
    let mut b_rx = b.datagrams().unwrap();
    assert!(a.datagrams().is_none(), "the receiver is handed out once");
    assert_eq!(a.name(), "node-a");

    // Sent before any connection exists: queued, then delivered.
    a.send_datagram(addr(&b), Bytes::from_static(b"ping")).unwrap();
    let got = next_datagram(&mut b_rx).await;
    assert_eq!(&got.bytes[..], b"ping");
    assert_eq!(&*got.peer.name, "node-a", "the name in the sender's certificate");
    assert_eq!(got.peer.addr, addr(&a));

    // The reply goes back on the connection a made: no second handshake.
    b.send_datagram(got.peer.addr, Bytes::from_static(b"pong")).unwrap();
    let got = next_datagram(&mut a_rx).await;
    assert_eq!(&got.bytes[..], b"pong");
    assert_eq!(&*got.peer.name, "node-b");
    assert_eq!(got.peer.addr, addr(&b));
    assert_eq!((a.stats().connects, b.stats().connects, b.stats().accepts), (1, 0, 1));

    for i in 0..100u32 {
        a.send_datagram(addr(&b), Bytes::copy_from_slice(&i.to_be_bytes())).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(u32::from_be_bytes(next_datagram(&mut b_rx).await.bytes[..].try_into().unwrap()));
    }
    seen.sort();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    assert_eq!(a.stats().datagrams_sent, 101);
    assert_eq!(b.stats().datagrams_received, 101);
}

#[tokio::test]
async fn datagram_size_limit() {
    let cluster = Cluster::new();
    let a = cluster.node("a");
    let b = cluster.node("b");
    let mut b_rx = b.datagrams().unwrap();
    assert_eq!(a.max_datagram_size(), MAX_DATAGRAM_BYTES);

    let too_big = Bytes::from(vec![0u8; MAX_DATAGRAM_BYTES + 1]);
    let error = a.send_datagram(addr(&b), too_big).unwrap_err();
    assert_eq!(error, TransportError::TooLarge { len: MAX_DATAGRAM_BYTES + 1, max: MAX_DATAGRAM_BYTES });
    assert!(error.to_string().contains("larger than the maximum"), "{error}");

    // The largest allowed fits in one packet at QUIC's minimum MTU, and arrives.
    a.connect(addr(&b)).await.unwrap();
    let largest = Bytes::from(vec![7u8; MAX_DATAGRAM_BYTES]);
    a.send_datagram(addr(&b), largest.clone()).unwrap();
    assert_eq!(next_datagram(&mut b_rx).await.bytes, largest);
}

#[tokio::test]
async fn stream_round_trip_echoes_one_mebibyte() {
    let cluster = Cluster::new();
    let a = cluster.node("client");
    let b = cluster.node("server");
    let mut incoming = b.accept_streams().unwrap();
    let server = tokio::spawn(async move {
        let mut stream = incoming.recv().await.unwrap();
        assert_eq!(stream.kind, StreamKind(42));
        assert_eq!(&*stream.peer.name, "client");
        let body = stream.recv.read_to_end(2 << 20).await.unwrap();
        stream.send.write_all(&body).await.unwrap();
        stream.send.finish().unwrap();
        stream.send.stopped().await.unwrap();
        body.len()
    });

    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut stream = a.open_stream(addr(&b), StreamKind(42)).await.unwrap();
    assert_eq!(&*stream.peer.name, "server");
    assert_eq!(stream.kind, StreamKind(42));
    stream.send.write_all(&body).await.unwrap();
    stream.send.finish().unwrap();
    let echoed = stream.recv.read_to_end(2 << 20).await.unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echo differs");
    assert_eq!(server.await.unwrap(), 1 << 20);
    assert_eq!((a.stats().streams_opened, b.stats().streams_accepted), (1, 1));
}

#[tokio::test]
async fn a_full_stream_channel_resets_new_streams() {
    let cluster = Cluster::new();
    let a = cluster.node("a");
    let mut config = cluster.config("b");
    config.stream_channel_capacity = 1;
    let b = Transport::bind(localhost(), config).unwrap();
    let _incoming = b.accept_streams().unwrap(); // held, never read

    let first = a.open_stream(addr(&b), StreamKind::FORWARD).await.unwrap();
    eventually("the first stream to be queued", || b.stats().streams_accepted == 1).await;
    let mut second = a.open_stream(addr(&b), StreamKind::FORWARD).await.unwrap();
    let error = second.recv.read_to_end(1024).await.unwrap_err();
    assert!(error.to_string().contains("reset by peer"), "{error}");
    assert_eq!(b.stats().streams_refused, 1);
    drop(first);
}

#[tokio::test]
async fn streams_per_connection_are_bounded() {
    let cluster = Cluster::new();
    let mut a_config = cluster.config("a");
    a_config.max_concurrent_streams = 2;
    let a = Transport::bind(localhost(), a_config).unwrap();
    let mut b_config = cluster.config("b");
    b_config.max_concurrent_streams = 2;
    let b = Transport::bind(localhost(), b_config).unwrap();
    let mut incoming = b.accept_streams().unwrap();
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.recv().await {
            tokio::spawn(async move {
                let _ = stream.recv.read_to_end(1024).await;
                let _ = stream.send.finish();
            });
        }
    });

    let mut first = a.open_stream(addr(&b), StreamKind(1)).await.unwrap();
    let _second = a.open_stream(addr(&b), StreamKind(1)).await.unwrap();
    // A third waits for one of the two to end.
    let third = a.open_stream(addr(&b), StreamKind(1));
    tokio::pin!(third);
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut third).await.is_err(), "a third stream opened");
    first.send.finish().unwrap();
    first.recv.read_to_end(1024).await.unwrap();
    tokio::time::timeout(DEADLINE, third).await.expect("the third stream never opened").unwrap();
}

#[tokio::test]
async fn a_stream_with_an_unknown_header_version_is_reset() {
    let cluster = Cluster::new();
    let a = cluster.node("a");
    let mut streams = a.accept_streams().unwrap();

    // A raw QUIC client with a good certificate, writing version 9.
    let node = cluster.ca.issue_node_cert("raw", &[]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(load_ca_cert(cluster.dir.path()).unwrap()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![node.cert_der()], node.key_der())
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client(localhost()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let connection = endpoint.connect(addr(&a), "wedge-cluster").unwrap().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&[9, 1, 0, 0]).await.unwrap();
    let error = tokio::time::timeout(DEADLINE, recv.read_to_end(1024)).await.unwrap().unwrap_err();
    assert!(error.to_string().contains("reset by peer: error 2"), "{error}");
    assert_eq!(a.stats().streams_refused, 1);
    assert!(streams.try_recv().is_err());

    // The same connection with the right header is served.
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&[1, 5]).await.unwrap();
    let stream = tokio::time::timeout(DEADLINE, streams.recv()).await.unwrap().unwrap();
    assert_eq!((stream.kind, &*stream.peer.name), (StreamKind(5), "raw"));
}

#[tokio::test]
async fn a_full_datagram_channel_drops_and_counts() {
    let cluster = Cluster::new();
    let a = cluster.node("a");
    let mut config = cluster.config("b");
    config.datagram_channel_capacity = 4;
    let b = Transport::bind(localhost(), config).unwrap();
    let mut b_rx = b.datagrams().unwrap(); // not read until the end

    a.connect(addr(&b)).await.unwrap();
    for i in 0..20u8 {
        a.send_datagram(addr(&b), Bytes::from(vec![i])).unwrap();
    }
    eventually("all 20 datagrams to arrive", || {
        let stats = b.stats();
        stats.datagrams_received + stats.datagrams_dropped_full == 20
    })
    .await;
    let stats = b.stats();
    assert_eq!((stats.datagrams_received, stats.datagrams_dropped_full), (4, 16));
    for _ in 0..4 {
        next_datagram(&mut b_rx).await;
    }
    assert!(b_rx.try_recv().is_err());
    // Room again: new datagrams are delivered.
    a.send_datagram(addr(&b), Bytes::from_static(b"again")).unwrap();
    assert_eq!(&next_datagram(&mut b_rx).await.bytes[..], b"again");
}

#[tokio::test]
async fn a_node_of_another_ca_cannot_connect_or_be_connected_to() {
    let ours = Cluster::new();
    let theirs = Cluster::new();
    let a = ours.node("a");
    // Same name, other CA: the name alone proves nothing.
    let x = theirs.node("a");
    let mut a_rx = a.datagrams().unwrap();
    let mut a_streams = a.accept_streams().unwrap();
    let mut x_rx = x.datagrams().unwrap();
    let mut x_streams = x.accept_streams().unwrap();

    // x as the client: refused by a (a does not trust x's certificate, and x
    // does not trust a's).
    let error = x.connect(addr(&a)).await.unwrap_err();
    assert!(matches!(error, TransportError::Connection { .. }), "{error:?}");
    assert!(x.open_stream(addr(&a), StreamKind::ARTIFACT).await.is_err());
    x.send_datagram(addr(&a), Bytes::from_static(b"let me in")).unwrap();

    // a as the client: x's certificate is refused.
    let error = a.connect(addr(&x)).await.unwrap_err();
    assert!(matches!(error, TransportError::Connection { .. }), "{error:?}");
    assert!(error.to_string().contains(&addr(&x).to_string()), "{error}");
    assert!(a.open_stream(addr(&x), StreamKind::ARTIFACT).await.is_err());
    a.send_datagram(addr(&x), Bytes::from_static(b"hello?")).unwrap();

    eventually("every attempt to fail", || x.stats().connect_failures >= 3 && a.stats().connect_failures >= 3).await;
    eventually("every incoming handshake to fail", || a.stats().accept_failures >= 3 && x.stats().accept_failures >= 3)
        .await;
    for stats in [a.stats(), x.stats()] {
        assert_eq!((stats.accepts, stats.connects, stats.connections), (0, 0, 0), "{stats:?}");
        assert_eq!(stats.datagrams_dropped_unsent, 1, "the queued datagram was dropped: {stats:?}");
    }
    assert!(a_rx.try_recv().is_err() && x_rx.try_recv().is_err(), "no datagram was delivered");
    assert!(a_streams.try_recv().is_err() && x_streams.try_recv().is_err(), "no stream was delivered");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let cluster = Cluster::new();
    let a = cluster.node("a");
    let mut a_rx = a.datagrams().unwrap();
    let mut a_streams = a.accept_streams().unwrap();

    // A QUIC client that trusts the cluster CA but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(load_ca_cert(cluster.dir.path()).unwrap()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client(localhost()).unwrap();
    endpoint.set_default_client_config(config);

    let result = endpoint.connect(addr(&a), "wedge-cluster").unwrap().await;
    // TLS 1.3 lets the client finish before the server has checked its
    // certificate: then the server closes the connection straight away.
    if let Ok(connection) = result {
        let _ = connection.send_datagram(Bytes::from_static(b"sneaky"));
        let _ = connection.open_bi().await;
        let reason = tokio::time::timeout(DEADLINE, connection.closed()).await.unwrap();
        assert!(reason.to_string().contains("certificate"), "{reason}");
    }
    eventually("the handshake to be refused", || a.stats().accept_failures == 1).await;
    assert_eq!(a.stats().accepts, 0);
    assert!(a_rx.try_recv().is_err());
    assert!(a_streams.try_recv().is_err());
}

#[tokio::test]
async fn least_recently_used_connections_are_closed_past_the_limit() {
    let cluster = Cluster::new();
    let mut config = cluster.config("hub");
    config.max_connections = 2;
    let hub = Transport::bind(localhost(), config).unwrap();
    let spokes: Vec<Transport> = (0..3).map(|i| cluster.node(&format!("spoke-{i}"))).collect();
    for spoke in &spokes {
        hub.connect(addr(spoke)).await.unwrap();
    }
    let stats = hub.stats();
    assert_eq!((stats.connects, stats.evictions, stats.connections), (3, 1, 2));
    // spoke-0 was the least recently used: it sees its connection closed.
    eventually("spoke-0's connection to close", || spokes[0].stats().connections == 0).await;
    // Talking to it again reconnects.
    let mut rx = spokes[0].datagrams().unwrap();
    hub.send_datagram(addr(&spokes[0]), Bytes::from_static(b"back")).unwrap();
    assert_eq!(&next_datagram(&mut rx).await.bytes[..], b"back");
    assert_eq!(hub.stats().connects, 4);
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again_at_once() {
    let cluster = Cluster::new();
    // Idle timeouts far longer than the test may take: only the restarted
    // peer's stateless reset can end a's old connection in time.
    let long_idle = |mut config: TransportConfig| {
        config.idle_timeout = Duration::from_secs(60);
        config
    };
    let a = Transport::bind(localhost(), long_idle(cluster.config("a"))).unwrap();
    cluster.ca.issue_node_cert("b", &[]).unwrap().write(cluster.dir.path()).unwrap();
    let b_config = || long_idle(TransportConfig::from_cluster_dir(cluster.dir.path(), "b").unwrap());

    // b runs on a runtime of its own, so that it can die without a word:
    // shutting that runtime down stops its tasks before any close is sent.
    let b_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let b = {
        let _context = b_runtime.enter();
        Transport::bind(localhost(), b_config()).unwrap()
    };
    let b_addr = addr(&b);
    let mut rx = b.datagrams().unwrap();
    a.send_datagram(b_addr, Bytes::from_static(b"one")).unwrap();
    next_datagram(&mut rx).await;
    assert_eq!(a.stats().connects, 1);

    b_runtime.shutdown_background();
    drop(rx);
    drop(b);
    // It comes back on the same port, with the same key.
    let start = Instant::now();
    let b = loop {
        match Transport::bind(b_addr, b_config()) {
            Ok(b) => break b,
            Err(_) if start.elapsed() < DEADLINE => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => panic!("cannot rebind {b_addr}: {error}"),
        }
    };
    let mut rx = b.datagrams().unwrap();
    // a still holds its old connection; the new b resets it, a reconnects.
    let start = Instant::now();
    let got = loop {
        a.send_datagram(b_addr, Bytes::from_static(b"two")).unwrap();
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            break got;
        }
        assert!(start.elapsed() < DEADLINE, "the restarted peer was never reached");
    };
    assert_eq!(&got.bytes[..], b"two");
    assert_eq!(a.stats().connects, 2, "a reconnected");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    println!("reached the restarted peer after {:?}", start.elapsed());
}

#[tokio::test]
async fn close_is_seen_by_peers_and_ends_sending() {
    let cluster = Cluster::new();
    let a = cluster.node("a");
    let b = cluster.node("b");
    a.connect(addr(&b)).await.unwrap();
    eventually("b to accept", || b.stats().connections == 1).await;
    a.close().await;
    eventually("b to see the close", || b.stats().connections == 0).await;
    assert_eq!(a.send_datagram(addr(&b), Bytes::from_static(b"x")), Err(TransportError::Closed));
    assert_eq!(a.connect(addr(&b)).await, Err(TransportError::Closed));
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let cluster = Cluster::new();
    let mut config = cluster.config("a");
    config.keep_alive_interval = config.idle_timeout;
    let error = Transport::bind(localhost(), config).unwrap_err();
    assert!(error.to_string().contains("keep_alive_interval"), "{error}");
    let mut config = cluster.config("a");
    config.datagram_channel_capacity = 0;
    assert!(Transport::bind(localhost(), config).is_err());
    // A CA certificate where the node's should be: no node name, no TLS identity.
    let ca = load_ca_cert(cluster.dir.path()).unwrap();
    let node = cluster.ca.issue_node_cert("a", &[]).unwrap();
    let error = Transport::bind(localhost(), TransportConfig::new(ca.clone(), ca, node.key_der())).unwrap_err();
    assert!(error.to_string().contains("node name"), "{error}");
}

/// Loopback numbers: handshake time, datagram round trip, 1 MiB echo.
/// `cargo test -p wedge-cluster --test transport -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints measurements"]
async fn loopback_measurements() {
    let cluster = Cluster::new();
    let b = cluster.node("b");
    let b_addr = addr(&b);
    let mut b_rx = b.datagrams().unwrap();
    let echo = {
        let b = Arc::new(b);
        let b2 = b.clone();
        tokio::spawn(async move {
            while let Some(datagram) = b_rx.recv().await {
                let _ = b2.send_datagram(datagram.peer.addr, datagram.bytes);
            }
        });
        b
    };

    let mut handshakes = Vec::new();
    for i in 0..20 {
        let a = cluster.node(&format!("h{i}"));
        let start = Instant::now();
        a.connect(b_addr).await.unwrap();
        handshakes.push(start.elapsed());
        a.close().await;
    }
    let a = cluster.node("a");
    let mut a_rx = a.datagrams().unwrap();
    a.connect(b_addr).await.unwrap();
    let mut round_trips = Vec::new();
    for i in 0..1000u32 {
        let start = Instant::now();
        a.send_datagram(b_addr, Bytes::copy_from_slice(&i.to_be_bytes())).unwrap();
        loop {
            let got = next_datagram(&mut a_rx).await;
            if got.bytes[..] == i.to_be_bytes() {
                break;
            }
        }
        round_trips.push(start.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (hs50, hs99) = median(&mut handshakes);
    let (rt50, rt99) = median(&mut round_trips);
    println!("handshake (mutual TLS 1.3, P-256): median {hs50:?}, max-ish {hs99:?}");
    println!("datagram round trip: median {rt50:?}, p99 {rt99:?}");

    // 1 MiB echoed on a stream, ten times.
    let mut incoming = echo.accept_streams().unwrap();
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.recv().await {
            tokio::spawn(async move {
                let body = stream.recv.read_to_end(2 << 20).await.unwrap();
                stream.send.write_all(&body).await.unwrap();
                stream.send.finish().unwrap();
                let _ = stream.send.stopped().await;
            });
        }
    });
    let body = vec![1u8; 1 << 20];
    let mut echoes = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let mut stream = a.open_stream(b_addr, StreamKind(9)).await.unwrap();
        stream.send.write_all(&body).await.unwrap();
        stream.send.finish().unwrap();
        assert_eq!(stream.recv.read_to_end(2 << 20).await.unwrap().len(), body.len());
        echoes.push(start.elapsed());
    }
    let (echo50, _) = median(&mut echoes);
    println!("1 MiB stream echo (open, send, receive back): median {echo50:?}");
    drop(echo);
}

#[tokio::test]
async fn dropping_a_peer_fails_its_waiting_streams_at_once() {
    let cluster = Cluster::new();
    let a = cluster.node("client");
    let b = cluster.node("server");
    // The server takes the stream and never answers (think: a peer that froze).
    let mut incoming = b.accept_streams().unwrap();
    let held = tokio::spawn(async move { incoming.recv().await });
    let mut stream = a.open_stream(addr(&b), StreamKind(7)).await.unwrap();
    stream.send.write_all(b"hello").await.unwrap();
    let _held = held.await.unwrap();
    let waiting = tokio::spawn(async move { stream.recv.read_to_end(1024).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the read ended before the peer was dropped");
    let dropped = Instant::now();
    a.drop_peer(addr(&b));
    let read = tokio::time::timeout(DEADLINE, waiting).await.expect("the read still waits").unwrap();
    assert!(read.is_err(), "the read of a dropped peer succeeded: {read:?}");
    assert!(dropped.elapsed() < Duration::from_secs(1), "{:?}", dropped.elapsed());
    // A later stream connects anew.
    let mut again = b.accept_streams();
    assert!(again.take().is_none(), "streams were taken once");
    a.open_stream(addr(&b), StreamKind(7)).await.unwrap();
    assert_eq!(a.stats().connects, 2);
}
