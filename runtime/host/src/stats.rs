//! Per-function statistics: plain atomics that every clone of a [`Function`](crate::Function)
//! shares, written on the request path and read as a [`FunctionStatsSnapshot`] by whoever
//! exposes them (the node's `/metrics`, its reports to the control plane). Fixed sizes
//! only: a status-class array, a fixed-bucket latency histogram, a trap-kind array.
//! A job function's jobs count in flight and failures by kind the same way, and their
//! outcomes and durations apart ([`JobStatsSnapshot`]): they are not requests.
//!
//! It must not depend on an exposition format: names and labels are the node's business.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds (a last, implied bucket
/// holds everything above the last bound).
pub const DURATION_BOUNDS_SECONDS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The class of a response status, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusClass {
    /// 1xx and 2xx (an informational final status does not occur; counted with success).
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx (and anything out of range).
    ServerError,
}

impl StatusClass {
    /// Every class, in label order.
    pub const ALL: [StatusClass; 4] =
        [StatusClass::Success, StatusClass::Redirection, StatusClass::ClientError, StatusClass::ServerError];

    /// The class of `status`.
    pub fn of(status: http::StatusCode) -> StatusClass {
        match status.as_u16() {
            100..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// Why a request failed inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrapKind {
    /// The request's wall-time deadline passed.
    Deadline,
    /// The instance hit its memory limit.
    Memory,
    /// The guest overflowed its stack.
    StackOverflow,
    /// Any other wasm trap (a panic, `unreachable`, ...).
    Trap,
    /// The engine's instance pool had no free slot.
    NoSlot,
    /// Anything else (no response set, an error from the host's side of the call).
    Other,
}

impl TrapKind {
    /// Every kind, in label order.
    pub const ALL: [TrapKind; 6] = [
        TrapKind::Deadline,
        TrapKind::Memory,
        TrapKind::StackOverflow,
        TrapKind::Trap,
        TrapKind::NoSlot,
        TrapKind::Other,
    ];

    /// `deadline`, `memory`, `stack_overflow`, `trap`, `no_slot` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Deadline => "deadline",
            TrapKind::Memory => "memory",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Trap => "trap",
            TrapKind::NoSlot => "no_slot",
            TrapKind::Other => "other",
        }
    }
}

/// How one job run ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobOutcome {
    /// The guest returned `ok`.
    Succeeded,
    /// The guest returned `err` with a message.
    Failed,
    /// The run failed inside the sandbox (counted by kind in the traps too).
    Trapped,
    /// The job never started: the function was at its concurrency limit, or is not a
    /// job function.
    Refused,
}

impl JobOutcome {
    /// Every outcome, in label order.
    pub const ALL: [JobOutcome; 4] =
        [JobOutcome::Succeeded, JobOutcome::Failed, JobOutcome::Trapped, JobOutcome::Refused];

    /// `succeeded`, `failed`, `trapped` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Failed => "failed",
            JobOutcome::Trapped => "trapped",
            JobOutcome::Refused => "refused",
        }
    }
}

/// A job function's jobs at one moment; counters only grow while the function lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStatsSnapshot {
    /// Job runs by [`JobOutcome`] (in [`JobOutcome::ALL`] order).
    pub runs_by_outcome: [u64; 4],
    /// Time from the start of a run to its end, for runs that started.
    pub duration: DurationHistogram,
}

impl JobStatsSnapshot {
    /// Runs that ended with `outcome`.
    pub fn runs(&self, outcome: JobOutcome) -> u64 {
        self.runs_by_outcome[outcome as usize]
    }

    /// Runs, whatever their outcome.
    pub fn runs_total(&self) -> u64 {
        self.runs_by_outcome.iter().sum()
    }
}

/// A fixed-bucket latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationHistogram {
    /// Requests per bucket (not cumulative): one per bound of [`DURATION_BOUNDS_SECONDS`]
    /// (at most that bound, above the previous one), then the bucket above the last bound.
    pub bucket_counts: [u64; DURATION_BOUNDS_SECONDS.len() + 1],
    /// Sum of the observed durations, in seconds.
    pub sum_seconds: f64,
}

impl DurationHistogram {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.bucket_counts.iter().sum()
    }

    /// Observations at most each bound of [`DURATION_BOUNDS_SECONDS`] (cumulative; the
    /// implied `+Inf` bucket is [`DurationHistogram::count`]).
    pub fn cumulative_counts(&self) -> Vec<u64> {
        self.bucket_counts[..DURATION_BOUNDS_SECONDS.len()]
            .iter()
            .scan(0u64, |total, count| {
                *total += count;
                Some(*total)
            })
            .collect()
    }
}

/// One function's statistics at one moment; counters only grow while the function lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionStatsSnapshot {
    /// Requests answered, by [`StatusClass`] (in [`StatusClass::ALL`] order).
    pub requests_by_class: [u64; 4],
    /// Latency from arrival at the host to the response head.
    pub duration: DurationHistogram,
    /// Requests arrived whose response has not ended yet (body included).
    pub in_flight: u64,
    /// Failures inside the sandbox, by [`TrapKind`] (in [`TrapKind::ALL`] order).
    pub traps: [u64; 6],
    /// Request body bytes the guest read.
    pub request_bytes: u64,
    /// Response body bytes the guest produced.
    pub response_bytes: u64,
    /// `wedge:function/cache` gets that found a live entry.
    pub cache_hits: u64,
    /// `wedge:function/cache` gets that found none.
    pub cache_misses: u64,
}

impl FunctionStatsSnapshot {
    /// Requests answered with `class`.
    pub fn requests(&self, class: StatusClass) -> u64 {
        self.requests_by_class[class as usize]
    }

    /// Failures of `kind`.
    pub fn traps(&self, kind: TrapKind) -> u64 {
        self.traps[kind as usize]
    }

    /// Requests answered, whatever the status.
    pub fn requests_total(&self) -> u64 {
        self.requests_by_class.iter().sum()
    }
}

/// The live counters; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct FunctionStats {
    requests_by_class: [AtomicU64; 4],
    /// Requests' time to the response head.
    durations: AtomicHistogram,
    in_flight: AtomicU64,
    traps: [AtomicU64; 6],
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    job_runs_by_outcome: [AtomicU64; 4],
    /// Started jobs' run time.
    job_durations: AtomicHistogram,
}

/// A live duration histogram: a count per bucket of [`DURATION_BOUNDS_SECONDS`] (and
/// one above the last bound) and the sum of all observed durations, in nanoseconds.
#[derive(Debug, Default)]
struct AtomicHistogram {
    buckets: [AtomicU64; DURATION_BOUNDS_SECONDS.len() + 1],
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    /// Adds `took` to its bucket and to the sum.
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = DURATION_BOUNDS_SECONDS.iter().position(|&bound| seconds <= bound);
        bump(&self.buckets[bucket.unwrap_or(DURATION_BOUNDS_SECONDS.len())], 1);
        bump(&self.sum_ns, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    fn snapshot(&self) -> DurationHistogram {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DurationHistogram {
            bucket_counts: self.buckets.each_ref().map(get),
            sum_seconds: get(&self.sum_ns) as f64 / 1e9,
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl FunctionStats {
    /// Counts an answered request: its status class and its time to the response head.
    pub(crate) fn answered(&self, status: http::StatusCode, took: Duration) {
        bump(&self.requests_by_class[StatusClass::of(status) as usize], 1);
        self.durations.observe(took);
    }

    /// Counts a job run: its outcome and, when it started, how long it took.
    pub(crate) fn job_ran(&self, outcome: JobOutcome, took: Option<Duration>) {
        bump(&self.job_runs_by_outcome[outcome as usize], 1);
        if let Some(took) = took {
            self.job_durations.observe(took);
        }
    }

    pub(crate) fn trapped(&self, kind: TrapKind) {
        bump(&self.traps[kind as usize], 1);
    }

    pub(crate) fn request_bytes(&self, bytes: u64) {
        bump(&self.request_bytes, bytes);
    }

    pub(crate) fn response_bytes(&self, bytes: u64) {
        bump(&self.response_bytes, bytes);
    }

    pub(crate) fn cache_get(&self, hit: bool) {
        bump(if hit { &self.cache_hits } else { &self.cache_misses }, 1);
    }

    pub(crate) fn job_snapshot(&self) -> JobStatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        JobStatsSnapshot {
            runs_by_outcome: self.job_runs_by_outcome.each_ref().map(get),
            duration: self.job_durations.snapshot(),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn enter(self: &std::sync::Arc<Self>) -> InFlight {
        bump(&self.in_flight, 1);
        InFlight(std::sync::Arc::clone(self))
    }

    pub(crate) fn snapshot(&self) -> FunctionStatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FunctionStatsSnapshot {
            requests_by_class: self.requests_by_class.each_ref().map(get),
            duration: self.durations.snapshot(),
            in_flight: get(&self.in_flight),
            traps: self.traps.each_ref().map(get),
            request_bytes: get(&self.request_bytes),
            response_bytes: get(&self.response_bytes),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
        }
    }
}

/// One request (or job) in flight; dropping it ends it.
pub(crate) struct InFlight(std::sync::Arc<FunctionStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::StatusCode;

    use super::*;

    #[test]
    fn statuses_count_by_class() {
        let stats = FunctionStats::default();
        for status in [200, 204, 301, 404, 413, 500, 503, 504] {
            stats.answered(StatusCode::from_u16(status).unwrap(), Duration::ZERO);
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.requests_by_class, [2, 1, 2, 3]);
        assert_eq!(snapshot.requests(StatusClass::ServerError), 3);
        assert_eq!(snapshot.requests_total(), 8);
        let labels: Vec<&str> = StatusClass::ALL.iter().map(|class| class.as_str()).collect();
        assert_eq!(labels, ["2xx", "3xx", "4xx", "5xx"]);
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        let stats = FunctionStats::default();
        let ms = |n: u64| Duration::from_millis(n);
        // On a bound: that bucket. Between bounds: the next one up. Above the last: +Inf.
        for took in [ms(0), ms(1), Duration::from_micros(1_001), ms(10), ms(700), ms(10_000), ms(10_001)] {
            stats.answered(StatusCode::OK, took);
        }
        let histogram = stats.snapshot().duration;
        let mut expected = [0u64; 14];
        expected[0] = 2; // 0 and 1 ms
        expected[1] = 1; // 1.001 ms <= 2.5 ms
        expected[3] = 1; // 10 ms
        expected[9] = 1; // 700 ms <= 1 s
        expected[12] = 1; // 10 s
        expected[13] = 1; // above 10 s
        assert_eq!(histogram.bucket_counts, expected);
        assert_eq!(histogram.count(), 7);
        assert_eq!(histogram.cumulative_counts(), [2, 3, 3, 4, 4, 4, 4, 4, 4, 5, 5, 5, 6]);
        assert!((histogram.sum_seconds - 20.713_001).abs() < 1e-9, "{}", histogram.sum_seconds);
    }

    #[test]
    fn in_flight_follows_the_guards_and_traps_count_by_kind() {
        let stats = Arc::new(FunctionStats::default());
        let first = stats.enter();
        let second = stats.enter();
        assert_eq!(stats.snapshot().in_flight, 2);
        drop(first);
        assert_eq!(stats.snapshot().in_flight, 1);
        drop(second);
        assert_eq!(stats.snapshot().in_flight, 0);
        stats.trapped(TrapKind::Deadline);
        stats.trapped(TrapKind::Deadline);
        stats.trapped(TrapKind::Other);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.traps, [2, 0, 0, 0, 0, 1]);
        assert_eq!(snapshot.traps(TrapKind::Deadline), 2);
        let labels: Vec<&str> = TrapKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(labels, ["deadline", "memory", "stack_overflow", "trap", "no_slot", "other"]);
    }

    #[test]
    fn job_runs_count_by_outcome_and_only_started_ones_are_timed() {
        let stats = FunctionStats::default();
        stats.job_ran(JobOutcome::Succeeded, Some(Duration::from_millis(2)));
        stats.job_ran(JobOutcome::Succeeded, Some(Duration::from_millis(20)));
        stats.job_ran(JobOutcome::Failed, Some(Duration::from_millis(20)));
        stats.job_ran(JobOutcome::Trapped, Some(Duration::from_secs(30)));
        stats.job_ran(JobOutcome::Refused, None);
        let jobs = stats.job_snapshot();
        assert_eq!(jobs.runs_by_outcome, [2, 1, 1, 1]);
        assert_eq!(jobs.runs(JobOutcome::Refused), 1);
        assert_eq!(jobs.runs_total(), 5);
        let mut expected = [0u64; 14];
        expected[1] = 1; // 2 ms <= 2.5 ms
        expected[4] = 2; // 20 ms <= 25 ms
        expected[13] = 1; // 30 s
        assert_eq!(jobs.duration.bucket_counts, expected);
        assert_eq!(stats.snapshot(), FunctionStatsSnapshot::default(), "job runs are not requests");
        let labels: Vec<&str> = JobOutcome::ALL.iter().map(|outcome| outcome.as_str()).collect();
        assert_eq!(labels, ["succeeded", "failed", "trapped", "refused"]);
    }
}
