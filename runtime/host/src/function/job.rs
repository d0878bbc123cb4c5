//! One job through a job function: admission (its kind, the concurrency
//! permits requests use too), a fresh `Store` with the function's deadline
//! and memory limit, the `wedge:function/job` export called once, and every
//! way it can end turned into `Ok` or a [`JobFailure`] that says whether the
//! guest refused the job, failed running it, or never ran it. Counted in
//! the function's statistics: in flight and failures by kind like requests,
//! outcomes and durations as jobs.
//!
//! Retrying, backing off and dead-lettering are the queue's business
//! (`wedge-jobs`): this only runs one attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Function, GuestFailure, Pre};
use crate::state::bindings::exports::wedge::function::job::Job as WitJob;
use crate::stats::JobOutcome;

/// One job to run, as the queue hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id, as `send` returned it.
    pub id: String,
    /// The queue it was sent to.
    pub queue: String,
    /// What the sender passed.
    pub payload: Vec<u8>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The sender's idempotency key, if any.
    pub idempotency_key: Option<String>,
}

/// Why a job run did not complete the job. Every variant but
/// [`JobFailure::AtConcurrencyLimit`] and [`JobFailure::NotAJobFunction`]
/// means the guest ran (and may have had effects before it stopped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    /// The guest returned `err` with this message: it asks to be retried.
    #[error("the job function failed: {0}")]
    Failed(String),
    /// The run passed the function's deadline and was stopped.
    #[error("exceeded its deadline of {0:?}")]
    Deadline(Duration),
    /// The instance hit the function's memory limit.
    #[error("exceeded its memory limit of {limit_mib} MiB")]
    Memory {
        /// The limit.
        limit_mib: u64,
    },
    /// The guest overflowed its stack.
    #[error("trapped: stack overflow")]
    StackOverflow,
    /// Any other trap (a panic, `unreachable`, ...), with wasmtime's description.
    #[error("trapped: {0}")]
    Trapped(String),
    /// The node's instance pool had no free slot; the guest did not run.
    #[error("no free instance slot on this node")]
    NoSlot,
    /// Every instance the function may run at once is busy; the guest did
    /// not run. Try again when one finishes.
    #[error("the function is at its limit of {max} concurrent instances")]
    AtConcurrencyLimit {
        /// The function's concurrency limit.
        max: u32,
    },
    /// The function is an HTTP handler, not a job handler; nothing ran.
    #[error("function {function} is {kind}: it does not run jobs", kind = crate::FunctionKind::HttpHandler)]
    NotAJobFunction {
        /// The function's name.
        function: String,
    },
    /// Anything else (an error from the host's side of the call).
    #[error("failed: {0}")]
    Other(String),
}

impl From<GuestFailure> for JobFailure {
    fn from(failure: GuestFailure) -> Self {
        match failure {
            GuestFailure::Deadline(timeout) => JobFailure::Deadline(timeout),
            GuestFailure::Memory(limit_mib) => JobFailure::Memory { limit_mib },
            GuestFailure::StackOverflow => JobFailure::StackOverflow,
            GuestFailure::Trap(message) => JobFailure::Trapped(message),
            GuestFailure::NoSlot => JobFailure::NoSlot,
            GuestFailure::NoResponse | GuestFailure::Other(_) => JobFailure::Other(failure.to_string()),
        }
    }
}

impl Function {
    /// Runs one attempt of `job` in a fresh instance, within the function's
    /// deadline, memory limit and concurrency limit (shared with nothing
    /// else: a job function serves no requests). Does not wait for a free
    /// permit: at the limit it answers [`JobFailure::AtConcurrencyLimit`]
    /// at once, so a worker never holds a leased job while it queues.
    pub async fn handle_job(&self, job: Job) -> Result<(), JobFailure> {
        let stats = &self.inner.services.stats;
        let Pre::Job(pre) = &self.inner.pre else {
            stats.job_ran(JobOutcome::Refused, None);
            return Err(JobFailure::NotAJobFunction { function: self.name().to_owned() });
        };
        let Ok(_permit) = Arc::clone(&self.inner.running).try_acquire_owned() else {
            stats.job_ran(JobOutcome::Refused, None);
            return Err(JobFailure::AtConcurrencyLimit { max: self.inner.limits.concurrency_max });
        };
        let _in_flight = stats.enter();
        let started = Instant::now();
        let timeout = self.inner.limits.timeout;
        // Guest output and failures are logged with the job's id where a
        // request's would be.
        let job_id: Arc<str> = format!("job:{}", job.id).into();
        let mut store = self.new_store(started + timeout, Arc::clone(&job_id));
        let wit_job = WitJob {
            id: job.id,
            queue: job.queue,
            payload: job.payload,
            attempt: job.attempt,
            idempotency_key: job.idempotency_key,
        };
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.wedge_function_job().call_handle(&mut store, &wit_job).await
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        let memory_refused = store.data().limiter.refused;
        let result = match outcome {
            Err(_elapsed) => Err(GuestFailure::Deadline(timeout)),
            Ok(Ok(returned)) => Ok(returned),
            Ok(Err(error)) => Err(self.classify(&error, memory_refused)),
        };
        let took = Some(started.elapsed());
        match result {
            Ok(Ok(())) => {
                stats.job_ran(JobOutcome::Succeeded, took);
                Ok(())
            }
            Ok(Err(message)) => {
                stats.job_ran(JobOutcome::Failed, took);
                tracing::info!(function = %self.name(), request_id = %job_id, "job failed: {message}");
                Err(JobFailure::Failed(message))
            }
            Err(failure) => {
                stats.trapped(failure.kind());
                stats.job_ran(JobOutcome::Trapped, took);
                tracing::warn!(function = %self.name(), request_id = %job_id, "guest failed: {failure}");
                Err(failure.into())
            }
        }
    }
}
