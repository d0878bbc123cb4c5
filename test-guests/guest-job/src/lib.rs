//! Test fixture: a job function (world `wedge:function/job-handler`) whose
//! JSON payload says what to do, for the host's job tests
//! (`runtime/host/tests/jobs.rs`). `{"do": …}` is one of:
//!
//! | payload                                              | the job                                                        |
//! |------------------------------------------------------|----------------------------------------------------------------|
//! | `{"do":"succeed"}`                                   | returns `Ok`                                                   |
//! | `{"do":"record"}`                                    | stores the job as it saw it (JSON) under cache key `job:<id>`  |
//! | `{"do":"fail","message":M}`                          | returns `Err(M)`                                               |
//! | `{"do":"panic"}`                                     | panics (a trap)                                                |
//! | `{"do":"loop"}`                                      | spins forever (past the deadline)                              |
//! | `{"do":"memory"}`                                    | allocates 1 MiB blocks forever (past the memory limit)         |
//! | `{"do":"increment","key":K}`                         | adds 1 to cache key `K`                                        |
//! | `{"do":"send","queue":Q,"payload":P,"key":K,"delay_ms":N}` | sends `P` (a string) to `Q` (`key`, `delay_ms` optional); `Err` with the SDK's message when refused |
//! | `{"do":"post","url":U}`                              | `POST`s the job's id, attempt and idempotency key (one line) to `U`; `Err` unless it answers 2xx |
//! | `{"do":"apply","url":U}`                             | applies the job's effect once per idempotency key `K`: `PUT`s the line `post` sends to `U/K` with `If-None-Match: *` (create, never overwrite); `Ok` when created (2xx) or already there (`412`), so a job run twice takes effect once; `Err` without a key or on any other answer |
//!
//! A payload that is not one of these fails the job with the decoding error.

use std::time::Duration;

use wedge_sdk::queue::{self, SendOptions};
use wedge_sdk::{Body, Job, cache, http, job_handler, outbound};

/// What a job asks this fixture to do.
#[derive(serde::Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
enum Action {
    Succeed,
    Record,
    Fail { message: String },
    Panic,
    Loop,
    Memory,
    Increment { key: String },
    Send { queue: String, payload: String, key: Option<String>, delay_ms: Option<u64> },
    Post { url: String },
    Apply { url: String },
}

/// The job as the guest saw it, as `record` stores it.
#[derive(serde::Serialize)]
struct Seen<'a> {
    id: &'a str,
    queue: &'a str,
    payload: &'a [u8],
    attempt: u32,
    idempotency_key: Option<&'a str>,
}

#[job_handler]
fn handle(job: Job) -> Result<(), String> {
    let action: Action = job.json().map_err(|e| format!("unknown payload: {e}"))?;
    match action {
        Action::Succeed => Ok(()),
        Action::Record => {
            let seen = Seen {
                id: &job.id,
                queue: &job.queue,
                payload: &job.payload,
                attempt: job.attempt,
                idempotency_key: job.idempotency_key.as_deref(),
            };
            cache::set_json(&format!("job:{}", job.id), &seen, None).map_err(|e| e.to_string())
        }
        Action::Fail { message } => Err(message),
        Action::Panic => panic!("guest-job fixture panics as asked"),
        Action::Loop => {
            let mut spins = 0u64;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        Action::Memory => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                blocks.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&blocks);
            }
        }
        Action::Increment { key } => cache::increment(&key, 1, None).map(drop).map_err(|e| e.to_string()),
        Action::Send { queue, payload, key, delay_ms } => {
            let mut options = SendOptions::new();
            options.idempotency_key = key;
            options.delay = delay_ms.map(Duration::from_millis);
            queue::send(&queue, payload, &options).map(drop).map_err(|e| e.to_string())
        }
        Action::Post { url } => {
            let request =
                http::Request::post(url.as_str()).body(Body::from(run_line(&job))).map_err(|e| e.to_string())?;
            let response = outbound::send(request).map_err(|e| e.to_string())?;
            if response.status().is_success() { Ok(()) } else { Err(format!("{url} answered {}", response.status())) }
        }
        Action::Apply { url } => {
            let key = job.idempotency_key.as_deref().ok_or("apply needs an idempotency key")?;
            let target = format!("{url}/{key}");
            let request = http::Request::put(target.as_str())
                .header(http::header::IF_NONE_MATCH, "*")
                .body(Body::from(run_line(&job)))
                .map_err(|e| e.to_string())?;
            let status = outbound::send(request).map_err(|e| e.to_string())?.status();
            if status.is_success() || status == http::StatusCode::PRECONDITION_FAILED {
                Ok(())
            } else {
                Err(format!("{target} answered {status}"))
            }
        }
    }
}

/// The job's id, attempt and idempotency key (`-` without one), as one line.
fn run_line(job: &Job) -> String {
    format!("{} {} {}\n", job.id, job.attempt, job.idempotency_key.as_deref().unwrap_or("-"))
}
