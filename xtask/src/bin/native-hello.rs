//! `native-hello ADDR [BODY]`: the native baseline of `cargo xtask bench serve`.
//!
//! A plain hyper 1 server (tokio multi-thread runtime, HTTP/1 and HTTP/2 auto-detected)
//! that answers every request with exactly what the `hello` example answers:
//! `Hello, wedge!\n` (or BODY) as `text/plain; charset=utf-8`. It is the ceiling a Wasm
//! host can approach on this machine: same network stack and HTTP library, no guest at
//! all. It stops when killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .context("usage: native-hello ADDR [BODY] (e.g. 127.0.0.1:8080)")?
        .parse()
        .context("ADDR must be an IP address and port, e.g. 127.0.0.1:8080")?;
    let body = Bytes::from(args.next().unwrap_or_else(|| "Hello, wedge!\n".to_owned()));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?
        .block_on(serve(addr, body))
}

async fn serve(addr: SocketAddr, body: Bytes) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("could not listen on {addr}"))?;
    eprintln!("native-hello listening on http://{addr}/");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(err) => {
                eprintln!("accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                std::future::ready(Ok::<_, Infallible>(response))
            });
            // A client that goes away mid-request is not an error worth reporting here.
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
