//! Job functions: the [`Job`] a `#[job_handler]` receives, and the glue that
//! runs the handler for the `wedge:function/job` export. A handler's `Err`
//! fails the attempt (the queue retries it later, then dead-letters it); a
//! panic does too, as a trap.

use std::fmt::Display;
use std::future::Future;

use serde::de::DeserializeOwned;

use crate::bindings::job_handler::exports::wedge::function::job as wit;
use crate::executor::block_on;

/// One job, as the queue hands it to the job function.
///
/// Delivery is at least once: the same job (same `id`) may arrive again
/// after a failed attempt, a worker lost mid-job or a failover, with a
/// higher `attempt`. Make its effect idempotent, for example keyed by `id`
/// or by the sender's `idempotency_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id, as [`queue::send`](crate::queue::send) returned it.
    pub id: String,
    /// The queue it was sent to.
    pub queue: String,
    /// What the sender passed.
    pub payload: Vec<u8>,
    /// Which attempt this is, counting from 1.
    pub attempt: u32,
    /// The sender's idempotency key, if it gave one.
    pub idempotency_key: Option<String>,
}

impl Job {
    /// The payload deserialized from JSON (as [`queue::send_json`](crate::queue::send_json)
    /// sent it).
    ///
    /// ```no_run
    /// # fn f(job: wedge_sdk::Job) -> Result<(), serde_json::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Resize { image: String, width: u32 }
    /// let resize: Resize = job.json()?;
    /// # Ok(()) }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

impl From<wit::Job> for Job {
    fn from(job: wit::Job) -> Self {
        Job {
            id: job.id,
            queue: job.queue,
            payload: job.payload,
            attempt: job.attempt,
            idempotency_key: job.idempotency_key,
        }
    }
}

/// Runs a synchronous job handler; its error becomes the message the host logs.
pub fn run<F, E>(job: wit::Job, handler: F) -> Result<(), String>
where
    F: FnOnce(Job) -> Result<(), E>,
    E: Display,
{
    handler(job.into()).map_err(|error| error.to_string())
}

/// Runs an `async` job handler on [`block_on`].
pub fn run_async<F, Fut, E>(job: wit::Job, handler: F) -> Result<(), String>
where
    F: FnOnce(Job) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    block_on(handler(job.into())).map_err(|error| error.to_string())
}
