//! Job functions and queue sends through a real engine and real components
//! (`guest-job`, `guest-queue-send`, `hello`; built by `cargo xtask guests`):
//! a job's outcome for every way it can end, its statistics, the two kinds
//! of function refusing each other's calls, and `wedge:function/queue` sends
//! reaching the node's [`QueueSender`] and its answers reaching the guest.
//!
//! The sender here is an in-test implementation that records each call and
//! answers as the test scripts it: it stands where the node's real one (the
//! queue shell over `wedge-jobs`) will, which is tested with the node.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wedge_host::{
    Function, FunctionKind, FunctionSpec, Host, HostConfig, Job, JobFailure, JobOutcome, QueueMessage, QueueSendError,
    QueueSender, SendFuture, StatusClass, TrapKind,
};

const MIB: u64 = 1024 * 1024;

/// A guest component built by `cargo xtask guests`.
fn wasm(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("WEDGE_WASM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("wasm")
    });
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask guests` (or `cargo xtask test`) first", path.display()))
}

fn host(queue_sender: Option<Arc<dyn QueueSender>>, cache: Option<wedge_cache::Cache>) -> Host {
    Host::new(HostConfig { instances_max: 8, queue_sender, function_cache: cache, ..HostConfig::default() }).unwrap()
}

fn load(host: &Host, name: &str, component: &str, edit: impl FnOnce(&mut FunctionSpec)) -> Function {
    let mut spec = FunctionSpec::new(name);
    edit(&mut spec);
    host.load(spec, &wasm(component)).unwrap()
}

fn job(id: &str, payload: serde_json::Value) -> Job {
    Job {
        id: id.into(),
        queue: "work".into(),
        payload: payload.to_string().into_bytes(),
        attempt: 1,
        idempotency_key: None,
    }
}

/// POSTs `body` to `function` at `path_and_query`; returns status and body text.
async fn post(function: &Function, path_and_query: &str, body: &str) -> (u16, String) {
    let request = http::Request::post(format!("http://localhost{path_and_query}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = function.handle(request).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Polls `condition` every 5 ms until it holds; panics after `within`.
async fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Records every send and answers by queue name as scripted; a queue it has
/// no answer for never answers (the future stays pending until dropped).
#[derive(Debug, Default)]
struct RecordingSender {
    answers: BTreeMap<String, Result<String, QueueSendError>>,
    sent: Mutex<Vec<QueueMessage>>,
    /// Sends whose future was dropped before it answered.
    abandoned: Arc<AtomicUsize>,
}

impl RecordingSender {
    fn answering(answers: impl IntoIterator<Item = (&'static str, Result<String, QueueSendError>)>) -> Arc<Self> {
        Arc::new(Self {
            answers: answers.into_iter().map(|(queue, answer)| (queue.to_owned(), answer)).collect(),
            ..Self::default()
        })
    }

    fn sent(&self) -> Vec<QueueMessage> {
        self.sent.lock().unwrap().clone()
    }
}

/// Counts a send abandoned while pending.
struct Abandoned(Arc<AtomicUsize>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl QueueSender for RecordingSender {
    fn send(&self, message: QueueMessage) -> SendFuture<'_> {
        let answer = self.answers.get(&message.queue).cloned();
        self.sent.lock().unwrap().push(message);
        let abandoned = Abandoned(Arc::clone(&self.abandoned));
        Box::pin(async move {
            match answer {
                Some(answer) => {
                    std::mem::forget(abandoned);
                    answer
                }
                None => {
                    let _counted_when_dropped = abandoned;
                    std::future::pending().await
                }
            }
        })
    }
}

#[tokio::test]
async fn components_of_either_world_load_and_refuse_the_other_kinds_call() {
    let host = host(None, None);
    let worker = load(&host, "worker", "guest-job", |_| {});
    let hello = load(&host, "hello", "hello", |_| {});
    assert_eq!(worker.kind(), FunctionKind::JobHandler);
    assert_eq!(hello.kind(), FunctionKind::HttpHandler);

    // A job function asked to serve HTTP: 501 naming what it is.
    let (status, body) = post(&worker, "/", "").await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("function worker is a job function (world wedge:function/job-handler)"), "{body}");
    assert!(body.contains("does not answer HTTP requests"), "{body}");
    assert_eq!(worker.stats().requests(StatusClass::ServerError), 1);
    assert_eq!(worker.job_stats().runs_total(), 0);

    // An HTTP function handed a job: refused, nothing ran.
    let failure = hello.handle_job(job("1-1", serde_json::json!({"do": "succeed"}))).await.unwrap_err();
    assert_eq!(failure, JobFailure::NotAJobFunction { function: "hello".into() });
    assert_eq!(
        failure.to_string(),
        "function hello is an HTTP function (world wedge:function/http-handler): it does not run jobs"
    );
    assert_eq!(hello.job_stats().runs(JobOutcome::Refused), 1);
    assert_eq!(hello.stats().traps.iter().sum::<u64>(), 0);
    // ... and still serves requests.
    assert_eq!(post(&hello, "/", "").await.0, 200);
}

#[tokio::test]
async fn a_component_of_neither_world_is_refused_with_both_reasons() {
    let host = host(None, None);
    // A command (exports wasi:cli/run): valid, links, but exports neither handler.
    let Err(error) = host.load(FunctionSpec::new("cmd"), &wasm("guest-command")) else {
        panic!("a command component loaded as a function");
    };
    let error = error.to_string();
    assert!(error.contains("does not target a supported world"), "{error}");
    assert!(error.contains("wedge:function/job-handler"), "{error}");
    assert!(error.contains("neither wasi:http/incoming-handler"), "{error}");
}

#[tokio::test]
async fn a_job_runs_with_every_field_and_uses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = wedge_cache::Cache::open(dir.path(), wedge_cache::CacheConfig::default()).unwrap();
    let host = host(None, Some(cache.clone()));
    let worker = load(&host, "worker", "guest-job", |_| {});

    let record = Job {
        id: "4-17".into(),
        queue: "thumbnails".into(),
        payload: br#"{"do":"record"}"#.to_vec(),
        attempt: 3,
        idempotency_key: Some("order-9".into()),
    };
    worker.handle_job(record.clone()).await.unwrap();
    let stored = cache.namespace("worker").get(b"job:4-17", 0).unwrap().expect("the job recorded itself");
    let seen: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "id": "4-17",
            "queue": "thumbnails",
            "payload": record.payload,
            "attempt": 3,
            "idempotency_key": "order-9",
        })
    );

    for n in 1..=3 {
        worker.handle_job(job(&format!("5-{n}"), serde_json::json!({"do": "increment", "key": "runs"}))).await.unwrap();
    }
    assert_eq!(cache.namespace("worker").get(b"runs", 0).unwrap().as_deref(), Some(&b"3"[..]));

    let jobs = worker.job_stats();
    assert_eq!(jobs.runs(JobOutcome::Succeeded), 4);
    assert_eq!(jobs.runs_total(), 4);
    assert_eq!(jobs.duration.count(), 4);
    let stats = worker.stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.requests_total(), 0, "jobs are not requests");
    assert_eq!(stats.traps.iter().sum::<u64>(), 0);
}

#[tokio::test]
async fn errors_traps_and_limits_are_failures_of_their_kind() {
    let host = host(None, None);
    let worker = load(&host, "worker", "guest-job", |spec| {
        spec.limits.timeout = Duration::from_millis(300);
        spec.limits.memory_bytes_max = 16 * MIB;
    });

    let failed = worker.handle_job(job("1-1", serde_json::json!({"do": "fail", "message": "upstream said 503"}))).await;
    assert_eq!(failed, Err(JobFailure::Failed("upstream said 503".into())));

    let garbage = Job { payload: b"not json".to_vec(), ..job("1-2", serde_json::Value::Null) };
    match worker.handle_job(garbage).await {
        Err(JobFailure::Failed(message)) => assert!(message.starts_with("unknown payload: "), "{message}"),
        other => panic!("expected Failed, got {other:?}"),
    }

    match worker.handle_job(job("1-3", serde_json::json!({"do": "panic"}))).await {
        Err(JobFailure::Trapped(message)) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected Trapped, got {other:?}"),
    }

    let started = Instant::now();
    let deadline = worker.handle_job(job("1-4", serde_json::json!({"do": "loop"}))).await;
    assert_eq!(deadline, Err(JobFailure::Deadline(Duration::from_millis(300))));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the loop was stopped at its deadline: {:?}",
        started.elapsed()
    );

    let memory = worker.handle_job(job("1-5", serde_json::json!({"do": "memory"}))).await;
    assert_eq!(memory, Err(JobFailure::Memory { limit_mib: 16 }));

    // Every failure ran in its own instance: the function still works.
    worker.handle_job(job("1-6", serde_json::json!({"do": "succeed"}))).await.unwrap();

    let jobs = worker.job_stats();
    assert_eq!(jobs.runs(JobOutcome::Failed), 2);
    assert_eq!(jobs.runs(JobOutcome::Trapped), 3);
    assert_eq!(jobs.runs(JobOutcome::Succeeded), 1);
    assert_eq!(jobs.duration.count(), 6);
    let stats = worker.stats();
    assert_eq!(stats.traps(TrapKind::Trap), 1);
    assert_eq!(stats.traps(TrapKind::Deadline), 1);
    assert_eq!(stats.traps(TrapKind::Memory), 1);
    assert_eq!(stats.traps.iter().sum::<u64>(), 3, "a guest's Err is not a trap");
    assert_eq!(stats.in_flight, 0);
}

// Two workers: on one, the guest's epoch yields keep the scheduler busy and
// its timers (the test's polling) late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_the_concurrency_limit_is_refused_without_running() {
    let host = host(None, None);
    let worker = load(&host, "worker", "guest-job", |spec| {
        spec.limits.concurrency_max = 1;
        spec.limits.timeout = Duration::from_millis(500);
    });
    let busy = tokio::spawn({
        let worker = worker.clone();
        async move { worker.handle_job(job("1-1", serde_json::json!({"do": "loop"}))).await }
    });
    wait_until(Duration::from_secs(10), "the first job runs", || {
        assert!(!busy.is_finished(), "the first job ended early");
        worker.running_instances() == 1
    })
    .await;
    let refused = worker.handle_job(job("1-2", serde_json::json!({"do": "succeed"}))).await;
    assert_eq!(refused, Err(JobFailure::AtConcurrencyLimit { max: 1 }));
    assert_eq!(busy.await.unwrap(), Err(JobFailure::Deadline(Duration::from_millis(500))));
    // The permit came back with the instance.
    worker.handle_job(job("1-3", serde_json::json!({"do": "succeed"}))).await.unwrap();
    let jobs = worker.job_stats();
    assert_eq!(jobs.runs(JobOutcome::Refused), 1);
    assert_eq!(jobs.duration.count(), 2, "a refused job has no duration");
}

#[tokio::test]
async fn an_http_functions_sends_reach_the_sender_and_its_answers_reach_the_guest() {
    let sender = RecordingSender::answering([
        ("jobs", Ok("7-1".to_owned())),
        ("missing", Err(QueueSendError::UnknownQueue)),
        ("big", Err(QueueSendError::PayloadTooLarge { max_bytes: 1024 })),
        ("full", Err(QueueSendError::QueueFull)),
        ("later", Err(QueueSendError::DelayTooLong { max_ms: 60_000 })),
        ("keyed", Err(QueueSendError::InvalidIdempotencyKey { max_bytes: 64 })),
        ("down", Err(QueueSendError::Unavailable("the queue's primary is unreachable".into()))),
    ]);
    let host = host(Some(sender.clone()), None);
    let api = load(&host, "api", "guest-queue-send", |_| {});

    assert_eq!(post(&api, "/?queue=jobs&delay_ms=1500&key=order-7", "resize cat.png").await, (202, "7-1\n".into()));
    assert_eq!(post(&api, "/?queue=jobs", "").await, (202, "7-1\n".into()));
    assert_eq!(
        sender.sent(),
        [
            QueueMessage {
                sender: "api".into(),
                queue: "jobs".into(),
                payload: b"resize cat.png".to_vec(),
                delay_ms: Some(1500),
                idempotency_key: Some("order-7".into()),
            },
            QueueMessage {
                sender: "api".into(),
                queue: "jobs".into(),
                payload: Vec::new(),
                delay_ms: None,
                idempotency_key: None,
            },
        ]
    );

    let refusals = [
        ("missing", 404, "no queue of that name exists\n"),
        ("big", 413, "job payload is larger than the queue's limit of 1024 bytes\n"),
        ("full", 503, "the queue is full\n"),
        ("later", 400, "job delay is longer than the queue's limit of 60000 ms\n"),
        ("keyed", 400, "the idempotency key must be 1 to 64 bytes\n"),
        ("down", 503, "the send was not acknowledged: the queue's primary is unreachable\n"),
    ];
    for (queue, status, text) in refusals {
        assert_eq!(post(&api, &format!("/?queue={queue}"), "x").await, (status, text.to_owned()), "{queue}");
    }
    assert_eq!(sender.sent().len(), 2 + refusals.len());
    assert_eq!(api.stats().traps.iter().sum::<u64>(), 0, "refused sends are answers, not traps");
}

#[tokio::test]
async fn without_a_sender_every_send_is_unavailable() {
    let host = host(None, None);
    let api = load(&host, "api", "guest-queue-send", |_| {});
    assert_eq!(
        post(&api, "/?queue=jobs", "x").await,
        (503, "the send was not acknowledged: this node has no queues\n".into())
    );
}

#[tokio::test]
async fn a_send_that_never_answers_ends_at_the_request_deadline() {
    let sender = RecordingSender::answering([]);
    let host = host(Some(sender.clone()), None);
    let api = load(&host, "api", "guest-queue-send", |spec| spec.limits.timeout = Duration::from_millis(300));
    let (status, body) = post(&api, "/?queue=stuck", "x").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(sender.sent().len(), 1);
    // The pending send was dropped with the instance, not left behind.
    wait_until(Duration::from_secs(5), "the send is dropped", || sender.abandoned.load(Ordering::SeqCst) == 1).await;
    assert_eq!(api.stats().traps(TrapKind::Deadline), 1);
}

#[tokio::test]
async fn a_job_can_send_a_job() {
    let sender = RecordingSender::answering([("next", Ok("2-5".to_owned())), ("full", Err(QueueSendError::QueueFull))]);
    let host = host(Some(sender.clone()), None);
    let worker = load(&host, "worker", "guest-job", |_| {});

    let chained =
        serde_json::json!({"do": "send", "queue": "next", "payload": "step 2", "key": "k-1", "delay_ms": 250});
    worker.handle_job(job("1-1", chained)).await.unwrap();
    assert_eq!(
        sender.sent(),
        [QueueMessage {
            sender: "worker".into(),
            queue: "next".into(),
            payload: b"step 2".to_vec(),
            delay_ms: Some(250),
            idempotency_key: Some("k-1".into()),
        }]
    );

    let refused =
        worker.handle_job(job("1-2", serde_json::json!({"do": "send", "queue": "full", "payload": "x"}))).await;
    assert_eq!(refused, Err(JobFailure::Failed("the queue is full".into())));
}
