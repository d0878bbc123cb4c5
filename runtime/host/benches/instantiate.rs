//! In-process cost of serving the `hello` example: instantiating it in a
//! fresh store (what every request pays before the guest runs), and a whole
//! request (instantiate, handle, collect the body). Needs the guests built:
//! `cargo xtask guests` (or run through `cargo xtask bench instantiate`).

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use wedge_host::{FunctionSpec, Host, HostConfig};

fn hello_component() -> Vec<u8> {
    let dir = std::env::var_os("WEDGE_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm"));
    let path = dir.join("hello.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask guests` first", path.display()))
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let function = host.load(FunctionSpec::new("hello"), &hello_component()).unwrap();

    let mut group = c.benchmark_group("hello");
    group.bench_function("store", |b| b.iter(|| function.store_only()));
    // What a request waits for before its guest runs: instantiation into a
    // slot that is ready. Freeing the slot (which resets it) happens after
    // the response, off the request's path, so it is left out of the timing.
    group.bench_function("instantiate", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let function = function.clone();
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    let instance = function.instantiate_only().await.unwrap();
                    timed += started.elapsed();
                    drop(instance);
                }
                timed
            }
        })
    });
    group.bench_function("request", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = http::Request::builder().uri("http://localhost/").body(Empty::<Bytes>::new()).unwrap();
            let response = function.handle(request).await;
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap().to_bytes()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
