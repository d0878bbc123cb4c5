//! The node's admin listener (`wedge node --admin ADDR`): plain HTTP for operators and their
//! tools, separate from the ingress so that it can be bound to a private interface.
//!
//! - `GET /healthz`: `ok` while the process serves (liveness).
//! - `GET /readyz`: `200` once the node may take traffic, `503` until then; both with a
//!   JSON [`ReadyReport`] naming each condition and why it holds or not. The conditions
//!   ([`Readiness`]): the node has joined its cluster (when it was given `--join` seeds),
//!   and it has applied a desired state from the control plane since it started. Both
//!   latch: a node that later loses its peers or its control plane keeps serving what it
//!   has (static stability), so readiness does not drop out from under a load balancer.
//!   The one way back to `503` is shutting down: from SIGTERM on, the `serving` check fails
//!   (`draining`) while the node finishes what it has, so balancers stop sending to it.
//! - `GET /v1/members`: the cluster members as this node sees them, a
//!   [`MembersReport`](wedge_cluster::agent::MembersReport) (what `wedge members` prints);
//!   404 when the node runs without a cluster.
//! - `GET /v1/queues`: the job queues this node holds, a list of
//!   [`QueueView`](crate::jobs::QueueView) (role, epoch, depth by state, what it completed).
//! - `GET /metrics`: the node's Prometheus metrics ([`crate::metrics`], names in
//!   `deploy/observability/METRICS.md`).
//!
//! Read-only and unauthenticated: bind it to loopback or a management network. Bounded:
//! at most [`CONNECTIONS_MAX`] connections, request heads within [`HEADER_TIMEOUT`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wedge_cluster::agent::Agent;
use wedge_control::api::{ReadyCheck, ReadyReport};

use crate::jobs::Queues;
use crate::metrics::NodeMetrics;

/// Most admin connections open at once.
pub const CONNECTIONS_MAX: usize = 64;
/// How long a client has to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the node may take traffic; see the module docs. Shared by the follower (which
/// records applied states) and the admin listener (which asks).
pub struct Readiness {
    /// Membership, when the node must join a cluster through seeds before it is ready.
    joining: Option<Arc<Agent>>,
    /// Whether the node has been in the cluster since it started.
    joined: AtomicBool,
    /// Where following the control plane stands.
    following: Mutex<Following>,
    /// Whether the node is shutting down (set once, never cleared).
    draining: AtomicBool,
}

/// Where following the control plane stands, as far as readiness cares.
#[derive(Debug, Clone)]
enum Following {
    /// No desired state applied since start; why (for the report).
    Waiting(String),
    /// A desired state from the control plane was applied (or was already served).
    Applied { revision: u64 },
}

impl Readiness {
    /// A node that must join through seeds (`joining`, the membership agent) or not, and
    /// that follows the control plane at `control_url`.
    pub fn new(joining: Option<Arc<Agent>>, control_url: &str) -> Self {
        Readiness {
            joining,
            joined: AtomicBool::new(false),
            following: Mutex::new(Following::Waiting(format!(
                "no desired state from the control plane at {control_url} applied yet"
            ))),
            draining: AtomicBool::new(false),
        }
    }

    /// Records that the node is shutting down: not ready from now on.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Records that the desired state at `revision` is applied (or was already served).
    pub fn applied(&self, revision: u64) {
        *self.following.lock().unwrap_or_else(|p| p.into_inner()) = Following::Applied { revision };
    }

    /// Records why no desired state is applied yet; ignored once one was.
    pub fn waiting(&self, why: String) {
        let mut following = self.following.lock().unwrap_or_else(|p| p.into_inner());
        if let Following::Waiting(_) = *following {
            *following = Following::Waiting(why);
        }
    }

    /// The report `/readyz` answers.
    pub fn report(&self) -> ReadyReport {
        let joined = match &self.joining {
            None => ReadyCheck::ok("no --join seeds: nothing to join"),
            Some(agent) => {
                if agent.snapshot().joined {
                    self.joined.store(true, Ordering::Relaxed);
                }
                if self.joined.load(Ordering::Relaxed) {
                    ReadyCheck::ok("joined the cluster")
                } else {
                    ReadyCheck::missing("not in the cluster yet: no seed has answered")
                }
            }
        };
        let desired_state = match &*self.following.lock().unwrap_or_else(|p| p.into_inner()) {
            Following::Applied { revision } => {
                ReadyCheck::ok(format!("applied the desired state at revision {revision}"))
            }
            Following::Waiting(why) => ReadyCheck::missing(why.clone()),
        };
        let serving = if self.draining.load(Ordering::Relaxed) {
            ReadyCheck::missing("draining: shutting down, finishing the requests in flight")
        } else {
            ReadyCheck::ok("taking new requests")
        };
        ReadyReport::new([("joined", joined), ("desired_state", desired_state), ("serving", serving)])
    }
}

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    agent: Option<Arc<Agent>>,
    readiness: Arc<Readiness>,
    metrics: Arc<NodeMetrics>,
    queues: Arc<Queues>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot { Ok(slot) => slot, Err(_) => return },
            () = stopped(&mut stop) => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let (agent, readiness, metrics) = (agent.clone(), Arc::clone(&readiness), Arc::clone(&metrics));
        let queues = Arc::clone(&queues);
        let service = service_fn(move |request| {
            let answer = respond(&request, agent.as_deref(), &readiness, &metrics, &queues);
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "admin connection ended with an error");
            }
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    agent: Option<&Agent>,
    readiness: &Readiness,
    metrics: &NodeMetrics,
    queues: &Queues,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/v1/members" | "/v1/queues" | "/metrics") {
        return text(StatusCode::NOT_FOUND, format!("no such admin endpoint: {path}\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} only answers GET\n"));
    }
    match (path, agent) {
        ("/healthz", _) => text(StatusCode::OK, "ok\n".to_string()),
        ("/metrics", _) => match crate::metrics::encode(metrics.snapshot()) {
            Ok(exposition) => Response::builder()
                .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                .body(Full::new(Bytes::from(exposition)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {error}\n")),
        },
        ("/readyz", _) => {
            let report = readiness.report();
            let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json(status, &report, "readiness")
        }
        ("/v1/queues", _) => json(StatusCode::OK, &queues.views(), "the queues"),
        (_, None) => text(StatusCode::NOT_FOUND, "this node runs without a cluster (no --cluster-dir)\n".to_string()),
        (_, Some(agent)) => json(StatusCode::OK, &agent.report(), "the members"),
    }
}

fn json(status: StatusCode, value: &impl Serialize, what: &str) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(json) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode {what}: {error}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
