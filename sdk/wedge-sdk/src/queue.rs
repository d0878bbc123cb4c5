//! Background jobs (`wedge:function/queue`): hand work to a queue and answer
//! at once; a job function bound to the queue (see [`job_handler`](crate::job_handler))
//! does it later, on whichever node its replicas run.
//!
//! - [`send`] takes bytes, [`send_json`] any serde type; both return the
//!   job's id.
//! - A send returns only once the job is durable: on disk on the queue's
//!   primary node and on its backup when the cluster has two nodes or more,
//!   so losing any one node loses no job that `send` acknowledged. That
//!   takes a replication round trip (usually milliseconds).
//! - Delivery is at least once: a job may run twice, so make its effect
//!   idempotent. An [idempotency key](SendOptions::idempotency_key) also
//!   makes resending safe: a second send with a key the queue has seen
//!   stores nothing and returns the first job's id.
//! - [`Error::Unavailable`] means the send was not acknowledged and may or
//!   may not have been stored: resend with the same idempotency key.
//!
//! Answering `202 Accepted` with the job's id:
//!
//! ```no_run
//! use wedge_sdk::{Request, http, http_handler, queue};
//!
//! #[derive(serde::Serialize)]
//! struct Resize { image: String, width: u32 }
//!
//! #[http_handler]
//! fn handle(req: Request) -> Result<(http::StatusCode, String), queue::Error> {
//!     let image = req.uri().path().trim_start_matches('/').to_owned();
//!     let options = queue::SendOptions::new().idempotency_key(format!("resize:{image}"));
//!     let id = queue::send_json("thumbnails", &Resize { image, width: 128 }, &options)?;
//!     Ok((http::StatusCode::ACCEPTED, format!("{id}\n")))
//! }
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::bindings::wedge::function::queue as wit;

/// How to send a job: a delay, an idempotency key, both or neither
/// (`SendOptions::default()` runs the job as soon as a worker is free).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Run the job no earlier than this long after the send.
    pub delay: Option<Duration>,
    /// A key naming this piece of work (an order id, say): a second send
    /// with a key the queue has seen recently stores nothing and returns the
    /// first job's id. The job function receives it with the job.
    pub idempotency_key: Option<String>,
}

impl SendOptions {
    /// No delay, no idempotency key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the job no earlier than `delay` after the send.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Sends with an idempotency key (see the field).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Why a send failed. Unless the variant says otherwise, nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No queue of that name exists in the cluster.
    UnknownQueue,
    /// The payload is larger than the queue allows (`max_bytes`).
    PayloadTooLarge {
        /// The queue's limit in bytes.
        max_bytes: u32,
    },
    /// The queue holds as many jobs as it may; send again once it drained.
    QueueFull,
    /// The delay is longer than the queue allows (`max_ms`).
    DelayTooLong {
        /// The queue's limit in milliseconds.
        max_ms: u64,
    },
    /// The idempotency key is empty or longer than the queue allows.
    InvalidIdempotencyKey {
        /// The queue's limit in bytes.
        max_bytes: u32,
    },
    /// The send was not acknowledged (the message says why): the job may or
    /// may not have been stored. Resend with the same idempotency key to be
    /// sure of exactly one job.
    Unavailable(String),
    /// [`send_json`] could not serialize the value (nothing was sent).
    Encode(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::UnknownQueue => f.write_str("no queue of that name exists"),
            Error::PayloadTooLarge { max_bytes } => {
                write!(f, "job payload is larger than the queue's limit of {max_bytes} bytes")
            }
            Error::QueueFull => f.write_str("the queue is full"),
            Error::DelayTooLong { max_ms } => write!(f, "job delay is longer than the queue's limit of {max_ms} ms"),
            Error::InvalidIdempotencyKey { max_bytes } => {
                write!(f, "the idempotency key must be 1 to {max_bytes} bytes")
            }
            Error::Unavailable(message) => write!(f, "the send was not acknowledged: {message}"),
            Error::Encode(message) => write!(f, "cannot serialize the job payload: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::UnknownQueue => Error::UnknownQueue,
            wit::Error::PayloadTooLarge(max_bytes) => Error::PayloadTooLarge { max_bytes },
            wit::Error::QueueFull => Error::QueueFull,
            wit::Error::DelayTooLong(max_ms) => Error::DelayTooLong { max_ms },
            wit::Error::InvalidIdempotencyKey(max_bytes) => Error::InvalidIdempotencyKey { max_bytes },
            wit::Error::Unavailable(message) => Error::Unavailable(message),
        }
    }
}

/// Sends a job with `payload` to `queue` and returns its id once the job is
/// durable (see the module docs).
///
/// ```no_run
/// use std::time::Duration;
/// use wedge_sdk::queue::{self, SendOptions};
///
/// let id = queue::send("mail", b"to=ada@example.com", &SendOptions::new().delay(Duration::from_secs(60)))?;
/// println!("queued mail job {id}");
/// # Ok::<(), queue::Error>(())
/// ```
pub fn send(queue: &str, payload: impl AsRef<[u8]>, options: &SendOptions) -> Result<String, Error> {
    let options = wit::SendOptions {
        delay_ms: crate::cache::millis(options.delay),
        idempotency_key: options.idempotency_key.clone(),
    };
    Ok(wit::send(queue, payload.as_ref(), &options)?)
}

/// Sends `value` as a JSON payload (see [`send`]); the job function reads it
/// with [`Job::json`](crate::Job::json).
pub fn send_json<T: Serialize + ?Sized>(queue: &str, value: &T, options: &SendOptions) -> Result<String, Error> {
    let payload = serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string()))?;
    send(queue, payload, options)
}
