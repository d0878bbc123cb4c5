//! The node's admin listener (`wedge node --admin ADDR`): plain HTTP for operators and their
//! tools, separate from the ingress so that it can be bound to a private interface.
//!
//! - `GET /healthz`: `ok` while the process serves (liveness).
//! - `GET /v1/members`: the cluster members as this node sees them, a
//!   [`MembersReport`](wedge_cluster::agent::MembersReport) (what `wedge members` prints);
//!   404 when the node runs without a cluster.
//!
//! Read-only and unauthenticated: bind it to loopback or a management network. Bounded:
//! at most [`CONNECTIONS_MAX`] connections, request heads within [`HEADER_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wedge_cluster::agent::Agent;

/// Most admin connections open at once.
pub const CONNECTIONS_MAX: usize = 64;
/// How long a client has to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, agent: Option<Arc<Agent>>, mut stop: watch::Receiver<bool>) {
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
        let agent = agent.clone();
        let service = service_fn(move |request| {
            let answer = respond(&request, agent.as_deref());
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

fn respond(request: &Request<Incoming>, agent: Option<&Agent>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/v1/members") {
        return text(StatusCode::NOT_FOUND, format!("no such admin endpoint: {path}\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} only answers GET\n"));
    }
    match (path, agent) {
        ("/healthz", _) => text(StatusCode::OK, "ok\n".to_string()),
        (_, None) => text(StatusCode::NOT_FOUND, "this node runs without a cluster (no --cluster-dir)\n".to_string()),
        (_, Some(agent)) => match serde_json::to_vec_pretty(&agent.report()) {
            Ok(json) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the members: {error}\n")),
        },
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
