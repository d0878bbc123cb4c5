//! The host side of `wedge:function/queue`: a guest's `send` becomes one
//! call of the node's [`QueueSender`] ([`HostConfig::queue_sender`](crate::HostConfig::queue_sender)),
//! awaited without blocking the worker thread (it takes a replication round
//! trip), and the sender's [`QueueSendError`] becomes the WIT `error` the
//! guest can act on. Without a sender every send is `unavailable`.
//!
//! The host knows nothing of where queues live or how jobs are stored: that
//! is the node's business (`wedge-jobs` and its shell). This module is the
//! boundary the node plugs into.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::state::GuestState;
use crate::state::bindings::wedge::function::queue::{Error, Host, SendOptions};

/// What a guest is told when the node has no queues.
pub(crate) const NO_QUEUES: &str = "this node has no queues";

/// The future a [`QueueSender`] returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<String, QueueSendError>> + Send + 'a>>;

/// One `send` of a guest, as the node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// The function that sent it (for logs and metrics; queues are shared by
    /// the whole cluster, not per function).
    pub sender: Arc<str>,
    /// The queue's name, as the guest gave it (not checked by the host).
    pub queue: String,
    /// The job's payload.
    pub payload: Vec<u8>,
    /// Run no earlier than this many milliseconds after the send.
    pub delay_ms: Option<u64>,
    /// The sender's idempotency key, as given (not checked by the host).
    pub idempotency_key: Option<String>,
}

/// How the node enqueues the jobs that guests send. Implemented by the node
/// (which forwards each send to the queue's primary); the host calls it once
/// per guest `send` and hands its answer back to the guest.
///
/// What an implementation must guarantee, because the WIT contract promises
/// it to functions:
///
/// - **Return `Ok(job id)` only once the job is durable**: written and
///   flushed on the queue's primary node and acknowledged as written and
///   flushed by its backup when the queue has one (a cluster of two nodes or
///   more), so the loss of any one node loses no job that was acknowledged.
///   A resend with an idempotency key the queue has seen returns the first
///   job's id and stores nothing.
/// - **Map every failure onto a [`QueueSendError`]**: the refusals that
///   store nothing onto their own variants (with the queue's limit where the
///   variant carries one), and everything where the outcome is unknown (the
///   primary unreachable, a failover in progress, a timeout, a replication
///   backlog) onto [`QueueSendError::Unavailable`] with a message for the
///   function's log. Never `Ok` for a job that may not be durable.
/// - **Be cancel-safe and bounded**: the future is dropped when the calling
///   request or job reaches its deadline; dropping it must leave nothing
///   waiting. It should not take longer than the node's own send timeout.
pub trait QueueSender: Send + Sync + std::fmt::Debug + 'static {
    /// Enqueues `message`; see the trait's docs for what `Ok` means.
    fn send(&self, message: QueueMessage) -> SendFuture<'_>;
}

/// Why a [`QueueSender`] did not acknowledge a send; each variant is one case
/// of the WIT `error` of `wedge:function/queue`. Unless the variant says
/// otherwise, nothing was stored. Serializable, so that a node forwarding a
/// send to the queue's primary hands its answer back as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum QueueSendError {
    /// No queue of that name exists.
    #[error("no queue of that name exists")]
    UnknownQueue,
    /// The payload is longer than the queue's limit.
    #[error("the payload is larger than the queue's maximum of {max_bytes} bytes")]
    PayloadTooLarge {
        /// The queue's limit.
        max_bytes: u32,
    },
    /// The queue holds as many jobs as it may.
    #[error("the queue is full")]
    QueueFull,
    /// The delay is longer than the queue's limit.
    #[error("the delay is longer than the queue's maximum of {max_ms} ms")]
    DelayTooLong {
        /// The queue's limit.
        max_ms: u64,
    },
    /// The idempotency key is empty or longer than the queue's limit.
    #[error("the idempotency key must be 1 to {max_bytes} bytes")]
    InvalidIdempotencyKey {
        /// The queue's limit.
        max_bytes: u32,
    },
    /// The send was not acknowledged; the job may or may not have been
    /// stored (the message says why).
    #[error("the send was not acknowledged: {0}")]
    Unavailable(String),
}

impl From<QueueSendError> for Error {
    fn from(error: QueueSendError) -> Self {
        match error {
            QueueSendError::UnknownQueue => Error::UnknownQueue,
            QueueSendError::PayloadTooLarge { max_bytes } => Error::PayloadTooLarge(max_bytes),
            QueueSendError::QueueFull => Error::QueueFull,
            QueueSendError::DelayTooLong { max_ms } => Error::DelayTooLong(max_ms),
            QueueSendError::InvalidIdempotencyKey { max_bytes } => Error::InvalidIdempotencyKey(max_bytes),
            QueueSendError::Unavailable(message) => Error::Unavailable(message),
        }
    }
}

impl Host for GuestState {
    /// Does not borrow the store across the await: the sender and the
    /// message are taken out first, so the guest's instance is untouched
    /// while the node waits for the acknowledgement.
    fn send(
        &mut self,
        queue: String,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> impl Future<Output = Result<String, Error>> + Send {
        let sender = self.queue_sender().cloned();
        let message = QueueMessage {
            sender: self.function_name(),
            queue,
            payload,
            delay_ms: options.delay_ms,
            idempotency_key: options.idempotency_key,
        };
        let request_id = self.request_id().to_owned();
        async move {
            let Some(sender) = sender else {
                return Err(Error::Unavailable(NO_QUEUES.to_owned()));
            };
            let queue = message.queue.clone();
            match sender.send(message).await {
                Ok(id) => Ok(id),
                Err(error) => {
                    if let QueueSendError::Unavailable(_) = &error {
                        tracing::warn!(%request_id, %queue, "queue send failed: {error}");
                    }
                    Err(error.into())
                }
            }
        }
    }
}
