//! Forwarding over real QUIC connections (mutual TLS on 127.0.0.1) and real
//! hyper on both ends: headers across a hop, bodies streamed both ways, the
//! hop limit, retries that happen and retries that must not, the error
//! answers, spreading load over two replicas, and no task left behind.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use wedge_cluster::pki::{ClusterCa, load_ca_cert};
use wedge_cluster::transport::{Peer, Transport, TransportConfig};
use wedge_host::ResponseBody;
use wedge_router::{
    ForwardConfig, Forwarder, HOPS_MAX, REFUSED_HEADER, Replica, ServeConfig, check_hops, serve_forwarded,
};

/// How long a test waits for something that should happen at once on loopback.
const DEADLINE: Duration = Duration::from_secs(5);

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

    /// A node's transport on 127.0.0.1; a dead address fails to connect
    /// within 300 ms.
    fn node(&self, name: &str) -> Arc<Transport> {
        let cert = self.ca.issue_node_cert(name, &[]).unwrap();
        let mut config = TransportConfig::new(load_ca_cert(self.dir.path()).unwrap(), cert.cert_der(), cert.key_der());
        config.connect_timeout = Duration::from_millis(300);
        Arc::new(Transport::bind("127.0.0.1:0".parse().unwrap(), config).unwrap())
    }
}

fn replica(transport: &Transport, site: &str, gossiped_in_flight: u32) -> Replica {
    Replica {
        node: transport.name().to_string(),
        site: site.to_string(),
        addr: transport.local_addr().unwrap(),
        gossiped_in_flight,
    }
}

fn forwarder(transport: &Arc<Transport>) -> Forwarder {
    Forwarder::new(Arc::clone(transport), "east", ForwardConfig::default()).unwrap()
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).header("host", "example.com").body(Empty::new()).unwrap()
}

/// A body fed from a channel, one frame per message.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// A body that never ends.
struct Endless;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[b'x'; 1024])))))
    }
}

/// Serves forwarded requests on `transport` with `handler`.
fn serve<H, F>(transport: &Transport, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let streams = transport.accept_streams().unwrap();
    tokio::spawn(serve_forwarded(streams, handler, ServeConfig::default(), std::future::pending()));
}

/// Serves [`echo`] on `transport`; returns how many requests it answered.
fn serve_echo(transport: &Transport) -> Arc<AtomicUsize> {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    serve(transport, move |request| {
        counter.fetch_add(1, Ordering::SeqCst);
        echo(request)
    });
    served
}

/// Answers with what it saw: as JSON for a bodiless request, in `x-seen`
/// with the request body streamed back for the others. `x-delay-ms` delays
/// the answer.
async fn echo(request: Request<Incoming>) -> Response<ResponseBody> {
    let header = |name: &str| request.headers().get(name).map(|value| value.to_str().unwrap().to_string());
    let mut names: Vec<String> = request.headers().keys().map(ToString::to_string).collect();
    names.sort();
    let seen = serde_json::json!({
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "hops": header("x-wedge-hops"),
        "request_id": header("x-request-id"),
        "forwarded_by": header("x-wedge-forwarded-by"),
        "peer": request.extensions().get::<Peer>().map(|peer| peer.name.to_string()),
        "host": header("host"),
        "headers": names,
    });
    if let Some(ms) = header("x-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if request.method() == Method::POST {
        let mut response = Response::new(request.into_body().map_err(Into::into).boxed_unsync());
        response.headers_mut().insert("x-seen", seen.to_string().parse().unwrap());
        return response;
    }
    let mut response = Response::new(full(seen.to_string()));
    let headers = response.headers_mut();
    headers.insert("connection", "x-resp-hop".parse().unwrap());
    headers.insert("x-resp-hop", "1".parse().unwrap());
    headers.insert("keep-alive", "timeout=5".parse().unwrap());
    headers.insert("x-resp-kept", "yes".parse().unwrap());
    response
}

async fn json_body(response: Response<ResponseBody>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
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
async fn get_crosses_a_hop_with_its_headers() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    let served = serve_echo(&b);
    let forwarder = forwarder(&a);

    let request = Request::get("/hello?x=1")
        .header("host", "example.com")
        .header("x-request-id", "req-1")
        .header("x-end-to-end", "kept")
        .header("connection", "x-private, keep-alive")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eDp5")
        .header("te", "gzip")
        .header("x-wedge-forwarded-by", "someone-else")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = forwarder.forward(request, vec![replica(&b, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers.get("x-resp-kept").unwrap(), "yes");
    for hop_by_hop in ["connection", "x-resp-hop", "keep-alive", "transfer-encoding"] {
        assert!(!headers.contains_key(hop_by_hop), "{hop_by_hop} came back: {headers:?}");
    }
    let seen = json_body(response).await;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["uri"], "/hello?x=1");
    assert_eq!(seen["host"], "example.com");
    assert_eq!(seen["hops"], "1");
    assert_eq!(seen["request_id"], "req-1");
    assert_eq!(seen["forwarded_by"], "node-a");
    assert_eq!(seen["peer"], "node-a");
    let names: Vec<&str> = seen["headers"].as_array().unwrap().iter().map(|name| name.as_str().unwrap()).collect();
    assert!(names.contains(&"x-end-to-end"), "{names:?}");
    for hop_by_hop in ["connection", "x-private", "keep-alive", "proxy-authorization", "te", "transfer-encoding"] {
        assert!(!names.contains(&hop_by_hop), "{hop_by_hop} was forwarded: {names:?}");
    }
    assert_eq!(served.load(Ordering::SeqCst), 1);
    let stats = forwarder.stats();
    assert_eq!((stats.forwarded, stats.retries, stats.failures), (1, 0, 0));
    assert_eq!(forwarder.in_flight("node-b"), 0, "released when the body ended");
}

/// Sends 5 MiB in 80 chunks and checks the echo: same length, same digest.
async fn echo_five_mebibytes(forwarder: &Forwarder, to: Replica, with_length: bool) {
    const CHUNK_BYTES: usize = 64 * 1024;
    const CHUNKS: usize = 80;
    let (tx, rx) = mpsc::channel(4);
    let producer = tokio::spawn(async move {
        let mut digest = Sha256::new();
        for i in 0..CHUNKS {
            let chunk: Vec<u8> = (0..CHUNK_BYTES).map(|j| ((i * 7919 + j * 31) % 251) as u8).collect();
            digest.update(&chunk);
            tx.send(Frame::data(Bytes::from(chunk))).await.unwrap();
        }
        digest.finalize()
    });
    let mut request = Request::post("/upload").header("host", "example.com");
    if with_length {
        request = request.header("content-length", (CHUNK_BYTES * CHUNKS).to_string());
    }
    let response = forwarder.forward(request.body(ChannelBody(rx)).unwrap(), vec![to]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_str(response.headers()["x-seen"].to_str().unwrap()).unwrap();
    assert_eq!(seen["hops"], "1");
    let mut body = response.into_body();
    let (mut length, mut digest, mut frames) = (0, Sha256::new(), 0);
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        length += data.len();
        digest.update(&data);
        frames += 1;
    }
    assert_eq!(length, CHUNK_BYTES * CHUNKS);
    assert_eq!(digest.finalize(), producer.await.unwrap(), "the echo differs");
    assert!(frames > 1, "the echo streamed");
}

#[tokio::test]
async fn post_streams_five_mebibytes_both_ways() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    serve_echo(&b);
    let forwarder = forwarder(&a);
    echo_five_mebibytes(&forwarder, replica(&b, "east", 0), false).await;
    echo_five_mebibytes(&forwarder, replica(&b, "east", 0), true).await;
    assert_eq!(forwarder.in_flight("node-b"), 0);
}

#[tokio::test]
async fn response_streams_incrementally() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    let gate = Arc::new(Notify::new());
    let handler_gate = Arc::clone(&gate);
    serve(&b, move |_request| {
        let gate = Arc::clone(&handler_gate);
        async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(Frame::data(Bytes::from_static(b"first"))).await.unwrap();
            tokio::spawn(async move {
                gate.notified().await;
                tx.send(Frame::data(Bytes::from_static(b"second"))).await.unwrap();
            });
            Response::new(ChannelBody(rx).map_err(|never| match never {}).boxed_unsync())
        }
    });
    let forwarder = forwarder(&a);
    let response = forwarder.forward(get("/stream"), vec![replica(&b, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame()).await.expect("the first chunk came alone");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first");
    gate.notify_one();
    let second = tokio::time::timeout(DEADLINE, body.frame()).await.unwrap();
    assert_eq!(second.unwrap().unwrap().into_data().unwrap(), "second");
    assert!(tokio::time::timeout(DEADLINE, body.frame()).await.unwrap().is_none());
}

#[tokio::test]
async fn trailers_come_back() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    serve(&b, |_request| async {
        let (tx, rx) = mpsc::channel(2);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        tx.send(Frame::data(Bytes::from_static(b"data"))).await.unwrap();
        tx.send(Frame::trailers(trailers)).await.unwrap();
        let mut response = Response::new(ChannelBody(rx).map_err(|never| match never {}).boxed_unsync());
        response.headers_mut().insert("trailer", "x-checksum".parse().unwrap());
        response
    });
    let response = forwarder(&a).forward(get("/"), vec![replica(&b, "east", 0)]).await;
    assert_eq!(response.headers()["trailer"], "x-checksum");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "data");
}

#[tokio::test]
async fn hop_limit() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    let served = serve_echo(&b);
    let forwarder = forwarder(&a);

    // One hop already made: one more is allowed, and counted.
    let mut request = get("/");
    request.headers_mut().insert("x-wedge-hops", "1".parse().unwrap());
    assert_eq!(check_hops(request.headers()), Ok(1));
    let seen = json_body(forwarder.forward(request, vec![replica(&b, "east", 0)]).await).await;
    assert_eq!(seen["hops"], "2");

    // At the limit: the ingress' check refuses, and so does the forwarder.
    let mut request = get("/");
    request.headers_mut().insert("x-wedge-hops", HOPS_MAX.to_string().parse().unwrap());
    let refused = check_hops(request.headers()).unwrap_err();
    assert_eq!(refused.response().status(), StatusCode::LOOP_DETECTED);
    let response = forwarder.forward(request, vec![replica(&b, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::LOOP_DETECTED);
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert_eq!(forwarder.stats().loops_refused, 1);
}

#[tokio::test]
async fn requests_a_peer_never_saw_are_tried_elsewhere() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    let served = serve_echo(&b);
    let dead_addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = Replica { node: "node-dead".into(), site: "east".into(), addr: dead_addr, gossiped_in_flight: 0 };
    // The live replica looks busier, so the dead one is chosen first.
    let live = replica(&b, "east", 100);

    let forwarder_1 = forwarder(&a);
    let response = forwarder_1.forward(get("/"), vec![dead.clone(), live.clone()]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(forwarder_1.stats().retries, 1);
    // The dead one is now skipped at once.
    let started = Instant::now();
    let response = forwarder_1.forward(get("/"), vec![dead.clone(), live.clone()]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
    assert_eq!(forwarder_1.stats().retries, 1);

    // Nothing was sent to the dead one, so even a POST goes elsewhere, its body intact.
    let forwarder_2 = forwarder(&a);
    let request = Request::post("/").body(Full::new(Bytes::from_static(b"payload"))).unwrap();
    let response = forwarder_2.forward(request, vec![dead.clone(), live.clone()]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "payload");
    assert_eq!(forwarder_2.stats().retries, 1);

    // An address where another node answers is not the replica asked for.
    let c = cluster.node("node-c");
    let served_c = serve_echo(&c);
    let imposter =
        Replica { node: "node-z".into(), site: "east".into(), addr: c.local_addr().unwrap(), gossiped_in_flight: 0 };
    let forwarder_3 = forwarder(&a);
    let response = forwarder_3.forward(get("/"), vec![imposter, live.clone()]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!((served.load(Ordering::SeqCst), served_c.load(Ordering::SeqCst)), (4, 0));

    // Nobody reachable: 502, after one retry.
    let forwarder_4 = forwarder(&a);
    let other_dead = Replica { node: "node-dead-2".into(), ..dead.clone() };
    let response = forwarder_4.forward(get("/"), vec![dead, other_dead]).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "application/json");
    let message = json_body(response).await;
    assert!(
        message["error"].as_str().unwrap().starts_with("none of the function's replicas could be reached"),
        "{message}"
    );
    let stats = forwarder_4.stats();
    assert_eq!((stats.retries, stats.failures), (1, 1));
}

#[tokio::test]
async fn requests_a_peer_took_are_retried_only_if_replayable() {
    let cluster = Cluster::new();
    let (a, b, c) = (cluster.node("node-a"), cluster.node("node-b"), cluster.node("node-c"));
    let served = serve_echo(&b);
    // node-c takes each stream, reads a little of the request and drops it.
    let taken = Arc::new(AtomicUsize::new(0));
    let mut streams = c.accept_streams().unwrap();
    let counter = Arc::clone(&taken);
    tokio::spawn(async move {
        while let Some(mut stream) = streams.recv().await {
            let mut buf = [0u8; 16];
            let _ = stream.recv.read(&mut buf).await;
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.send.reset(7u32.into());
            let _ = stream.recv.stop(7u32.into());
        }
    });
    let candidates = vec![replica(&c, "east", 0), replica(&b, "east", 100)];

    // Idempotent and bodiless: sent again, to node-b.
    for method in [Method::GET, Method::DELETE] {
        let forwarder = forwarder(&a);
        let request = Request::builder().method(method.clone()).uri("/").body(Empty::<Bytes>::new()).unwrap();
        let response = forwarder.forward(request, candidates.clone()).await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(json_body(response).await["method"], method.as_str());
        assert_eq!(forwarder.stats().retries, 1);
    }
    assert_eq!((taken.load(Ordering::SeqCst), served.load(Ordering::SeqCst)), (2, 2));

    // With a body node-c may have started on: not sent again.
    for method in [Method::POST, Method::PUT] {
        let forwarder = forwarder(&a);
        let request =
            Request::builder().method(method.clone()).uri("/").body(Full::new(Bytes::from(vec![1u8; 4096]))).unwrap();
        let response = forwarder.forward(request, candidates.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{method}");
        let stats = forwarder.stats();
        assert_eq!((stats.retries, stats.failures), (0, 1), "{method}");
        assert_eq!(forwarder.in_flight("node-c"), 0);
    }
    assert_eq!((taken.load(Ordering::SeqCst), served.load(Ordering::SeqCst)), (4, 2));
}

#[tokio::test]
async fn a_refusal_is_tried_elsewhere_when_the_body_is_empty() {
    let cluster = Cluster::new();
    let (a, b, c) = (cluster.node("node-a"), cluster.node("node-b"), cluster.node("node-c"));
    let served = serve_echo(&b);
    // node-c drains: it answers every forwarded request with a refusal, running nothing.
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    serve(&c, move |request: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            drop(request);
            let mut response = Response::new(full("draining\n"));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response.headers_mut().insert(REFUSED_HEADER, "draining".parse().unwrap());
            response.headers_mut().insert("retry-after", "1".parse().unwrap());
            response
        }
    });
    let candidates = vec![replica(&c, "east", 0), replica(&b, "east", 100)];

    // Bodiless, whatever the method: node-c ran nothing, so node-b gets it.
    for method in [Method::GET, Method::POST] {
        let forwarder = forwarder(&a);
        let request = Request::builder().method(method.clone()).uri("/").body(Empty::<Bytes>::new()).unwrap();
        let response = forwarder.forward(request, candidates.clone()).await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        // The echo answers a POST with its body and what it saw in `x-seen`.
        let seen: serde_json::Value = match response.headers().get("x-seen") {
            Some(seen) => serde_json::from_slice(seen.as_bytes()).unwrap(),
            None => json_body(response).await,
        };
        assert_eq!(seen["method"], method.as_str());
        assert_eq!(forwarder.stats().retries, 1, "{method}");
        assert_eq!(forwarder.in_flight("node-c"), 0);
    }
    assert_eq!((refused.load(Ordering::SeqCst), served.load(Ordering::SeqCst)), (2, 2));

    // A body that was streamed cannot be sent again: the refusal reaches the client.
    let forwarder = forwarder(&a);
    let request = Request::post("/").body(Full::new(Bytes::from(vec![1u8; 4096]))).unwrap();
    let response = forwarder.forward(request, candidates.clone()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(forwarder.stats().retries, 0);

    // The only replica refusing: its answer, not a 502.
    let response = forwarder.forward(get("/"), vec![replica(&c, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[REFUSED_HEADER], "draining");
    assert_eq!((refused.load(Ordering::SeqCst), served.load(Ordering::SeqCst)), (4, 2));
}

#[tokio::test]
async fn a_forwarded_request_never_goes_back_to_the_peer_it_came_from() {
    let cluster = Cluster::new();
    let (a, b, c) = (cluster.node("node-a"), cluster.node("node-b"), cluster.node("node-c"));
    let served_a = serve_echo(&a);
    let served_c = serve_echo(&c);
    // node-b got this from node-a (the receiving side set the header from node-a's
    // certificate) and does not run the function: its view lists node-a and node-c.
    let from_a = || {
        Request::get("/")
            .header("x-wedge-hops", "1")
            .header("x-wedge-forwarded-by", "node-a")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let forwarder = forwarder(&b);
    for _ in 0..5 {
        let response = forwarder.forward(from_a(), vec![replica(&a, "east", 0), replica(&c, "east", 0)]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_body(response).await["hops"], "2");
    }
    assert_eq!((served_a.load(Ordering::SeqCst), served_c.load(Ordering::SeqCst)), (0, 5));

    // Nowhere else to go: refused, so that node-a tries its next replica.
    let response = forwarder.forward(from_a(), vec![replica(&a, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[REFUSED_HEADER], "no-replica");
    assert_eq!(served_a.load(Ordering::SeqCst), 0);

    // A client's request (no hop yet) may go anywhere: the header means nothing then.
    let request = Request::get("/").header("x-wedge-forwarded-by", "node-a").body(Empty::<Bytes>::new()).unwrap();
    let response = forwarder.forward(request, vec![replica(&a, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_a.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stopping_the_server_lets_requests_in_flight_finish() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    let streams = b.accept_streams().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_forwarded(streams, echo, ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    let forwarder = Arc::new(forwarder(&a));
    let to = vec![replica(&b, "east", 0)];
    let slow = {
        let (forwarder, to) = (Arc::clone(&forwarder), to.clone());
        tokio::spawn(async move {
            let request = Request::get("/slow").header("x-delay-ms", "500").body(Empty::<Bytes>::new()).unwrap();
            forwarder.forward(request, to).await
        })
    };
    eventually("node-b takes the slow request", || b.stats().streams_accepted == 1).await;
    stop.send(()).unwrap();
    tokio::task::yield_now().await;
    assert!(!server.is_finished(), "the server returned with a request in flight");
    // The server waits for the slow request, then returns; the answer is whole.
    let response = slow.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["uri"], "/slow");
    tokio::time::timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_failing_request_body_is_the_clients_fault() {
    let cluster = Cluster::new();
    let (a, b, c) = (cluster.node("node-a"), cluster.node("node-b"), cluster.node("node-c"));
    let served_b = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served_b);
    // node-b reads the whole body before it answers.
    serve(&b, move |request| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match request.into_body().collect().await {
                Ok(body) => Response::new(full(body.to_bytes())),
                Err(_) => wedge_host::error_response(StatusCode::BAD_REQUEST, "incomplete body", None),
            }
        }
    });
    let served_c = serve_echo(&c);
    let candidates = vec![replica(&b, "east", 0), replica(&c, "east", 100)];
    let forwarder = forwarder(&a);

    let (tx, rx) = mpsc::channel(1);
    let body = ChannelBody(rx).map_err(|never| -> std::io::Error { match never {} });
    let failing = body.with_trailers(async { Some(Err(std::io::Error::other("client went away"))) });
    let request = Request::post("/").body(failing).unwrap();
    let sender = tokio::spawn(async move {
        tx.send(Frame::data(Bytes::from_static(b"part"))).await.unwrap();
    });
    let response = forwarder.forward(request, candidates.clone()).await;
    sender.await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let stats = forwarder.stats();
    assert_eq!((stats.request_body_failures, stats.failures, stats.retries), (1, 0, 0));

    // node-b was not blamed: the next request still goes to it, not to the busier node-c.
    let response = forwarder.forward(get("/"), candidates).await;
    assert_eq!(response.status(), StatusCode::OK);
    // (Whether node-b saw the head of the failed one depends on when hyper flushed it.)
    assert!(served_b.load(Ordering::SeqCst) >= 1);
    assert_eq!(served_c.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_replica_is_503() {
    let cluster = Cluster::new();
    let a = cluster.node("node-a");
    let forwarder = forwarder(&a);
    let response = forwarder.forward(get("/"), Vec::new()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    // This node itself is never a candidate.
    let response = forwarder.forward(get("/"), vec![replica(&a, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(forwarder.stats().no_replica, 2);
}

#[tokio::test]
async fn no_response_head_in_time_is_504() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    serve_echo(&b);
    let config = ForwardConfig { response_head_timeout: Duration::from_millis(200), ..ForwardConfig::default() };
    let forwarder = Forwarder::new(Arc::clone(&a), "east", config).unwrap();
    let mut request = get("/");
    request.headers_mut().insert("x-delay-ms", "2000".parse().unwrap());
    let started = Instant::now();
    let response = forwarder.forward(request, vec![replica(&b, "east", 0)]).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let stats = forwarder.stats();
    assert_eq!((stats.failures, stats.timeouts, stats.retries), (1, 1, 0));
    assert_eq!(forwarder.in_flight("node-b"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spreads_over_two_replicas() {
    let cluster = Cluster::new();
    let (a, b, c) = (cluster.node("node-a"), cluster.node("node-b"), cluster.node("node-c"));
    let (served_b, served_c) = (serve_echo(&b), serve_echo(&c));
    let forwarder = Arc::new(forwarder(&a));
    let candidates = vec![replica(&b, "east", 0), replica(&c, "east", 0)];
    const REQUESTS: usize = 400;
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        let (forwarder, candidates) = (Arc::clone(&forwarder), candidates.clone());
        tasks.spawn(async move {
            let mut request = get("/");
            request.headers_mut().insert("x-delay-ms", "5".parse().unwrap());
            let response = forwarder.forward(request, candidates).await;
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.unwrap();
            drop(permit);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (on_b, on_c) = (served_b.load(Ordering::SeqCst), served_c.load(Ordering::SeqCst));
    assert_eq!(on_b + on_c, REQUESTS);
    let share = on_b as f64 / REQUESTS as f64;
    assert!((0.4..=0.6).contains(&share), "node-b served {on_b}, node-c {on_c}");
    assert_eq!((forwarder.in_flight("node-b"), forwarder.in_flight("node-c")), (0, 0));
    assert_eq!(forwarder.stats().forwarded, REQUESTS as u64);
}

#[tokio::test]
async fn no_task_outlives_its_forward() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    serve(&b, |request| async move {
        if request.uri().path() == "/endless" {
            Response::new(Endless.map_err(|never| match never {}).boxed_unsync())
        } else {
            echo(request).await
        }
    });
    let config = ForwardConfig { response_head_timeout: Duration::from_millis(100), ..ForwardConfig::default() };
    let forwarder = Forwarder::new(Arc::clone(&a), "east", config).unwrap();
    let to = || vec![replica(&b, "east", 0)];
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    // The first forward makes the connection and its tasks; then settle.
    json_body(forwarder.forward(get("/"), to()).await).await;
    let mut last = (alive(), 0);
    eventually("the task count to settle", || {
        let now = alive();
        last = if now == last.0 { (now, last.1 + 1) } else { (now, 0) };
        last.1 >= 10
    })
    .await;
    let baseline = last.0;

    for _ in 0..5 {
        // Answered and read to the end.
        json_body(forwarder.forward(get("/"), to()).await).await;
        // A body that never ends, dropped after its first chunk.
        let response = forwarder.forward(get("/endless"), to()).await;
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        // A response dropped unread.
        drop(forwarder.forward(get("/"), to()).await);
    }
    // Timed out (the handler answers 300 ms later, into a closed stream).
    let mut request = get("/");
    request.headers_mut().insert("x-delay-ms", "300".parse().unwrap());
    assert_eq!(forwarder.forward(request, to()).await.status(), StatusCode::GATEWAY_TIMEOUT);

    eventually("every forward's tasks to end", || alive() <= baseline).await;
    assert_eq!(forwarder.in_flight("node-b"), 0);
}
