//! Request rates, error ratios and latency quantiles of each function over a
//! recent window, from the counters nodes report ([`FunctionTraffic`] in
//! every [`crate::api::NodeReport`]). Sans-IO: [`TrafficWindows::record`]
//! takes a node's counters and the time they arrived, [`TrafficWindows::window`]
//! answers for a given `now`; no clock, task or lock inside.
//!
//! Nodes send monotonic counters since they started (requests, 5xx answers,
//! a cumulative latency histogram). Each (node, function) series keeps the
//! running totals with restarts taken out, as Prometheus' `increase` does: a
//! counter lower than before means the node restarted and counted again
//! from zero, so its new value is the increase. The rate of a series is the
//! increase between its newest sample and the newest one at or before the
//! start of the window (its oldest, when it is younger than the window),
//! divided by the time between the two; a function's rate is the sum over
//! its nodes. A series whose newest sample is older than the window (the
//! node stopped reporting, or stopped serving the function) counts no
//! more. Quantiles sum the histogram increases of a function's series and
//! interpolate within the bucket as Prometheus' `histogram_quantile` does;
//! series whose bucket bounds differ from the busiest one's are left out of
//! the quantiles (nodes of one build share their bounds).
//!
//! Bounded: a series keeps one sample before the window and the ones
//! inside it, at most two per [`SAMPLE_SPACING`] (reports that come faster
//! replace the newest sample), and there are at most `series_max` series
//! (the one heard from least recently goes first). What one report may
//! carry is bounded by `check_report` ([`TRAFFIC_BUCKETS_MAX`] buckets).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::api::FunctionTraffic;

/// Most latency buckets (bounds) one [`FunctionTraffic`] may carry.
pub(crate) const TRAFFIC_BUCKETS_MAX: usize = 64;

/// Samples of a series closer together than this are merged: of three in a
/// row, the middle one is dropped when the outer two are this close.
pub(crate) const SAMPLE_SPACING: Duration = Duration::from_secs(1);

/// One series' running totals at one time.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at: Instant,
    /// Requests since the series started, restarts taken out.
    requests: u64,
    /// 5xx answers, likewise.
    errors: u64,
    /// Cumulative bucket counts (one per bound), likewise.
    buckets: Vec<u64>,
}

/// The counters of one function on one node.
#[derive(Debug)]
struct Series {
    /// The bucket bounds, seconds; a change starts the series again.
    bounds: Vec<f64>,
    /// The counters as last reported (to see a restart).
    last_raw: FunctionTraffic,
    /// Oldest first; never empty.
    samples: VecDeque<Sample>,
}

/// What a function did over a window, all nodes together.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct WindowRates {
    /// Requests a second.
    pub(crate) requests_per_second: f64,
    /// 5xx answers over requests; `None` without requests.
    pub(crate) error_ratio: Option<f64>,
    /// Latency quantiles, seconds; `None` without requests.
    pub(crate) p50_seconds: Option<f64>,
    /// Ditto, 99th percentile.
    pub(crate) p99_seconds: Option<f64>,
}

/// The recent counters of every (node, function).
#[derive(Debug)]
pub(crate) struct TrafficWindows {
    window: Duration,
    series_max: usize,
    series: HashMap<(String, String), Series>,
}

impl TrafficWindows {
    /// Windows of `window`, keeping at most `series_max` series.
    pub(crate) fn new(window: Duration, series_max: usize) -> Self {
        Self { window, series_max: series_max.max(1), series: HashMap::new() }
    }

    /// Takes `node`'s counters, reported at `now`. Its series not in
    /// `traffic` are kept until they fall out of the window (the node may
    /// have stopped serving a function; its last requests still count).
    pub(crate) fn record(&mut self, node: &str, traffic: &[FunctionTraffic], now: Instant) {
        for counters in traffic {
            let key = (node.to_string(), counters.function.clone());
            match self.series.get_mut(&key) {
                Some(series) => series.push(counters, now, self.window),
                None => {
                    if self.series.len() >= self.series_max {
                        self.forget_stalest();
                    }
                    self.series.insert(key, Series::start(counters, now));
                }
            }
        }
        self.prune(now);
    }

    /// Forgets every series of `function` (it was removed).
    pub(crate) fn forget_function(&mut self, function: &str) {
        self.series.retain(|(_, f), _| f != function);
    }

    /// Drops series with nothing inside the window before `now`.
    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.series.retain(|_, series| series.newest().at + window > now);
    }

    fn forget_stalest(&mut self) {
        let stalest = self.series.iter().min_by_key(|(_, series)| series.newest().at).map(|(key, _)| key.clone());
        if let Some(key) = stalest {
            self.series.remove(&key);
        }
    }

    /// Each function's rates over the window ending at `now`. Functions
    /// without a series that has two samples are left out (no rate yet).
    pub(crate) fn rates(&self, now: Instant) -> BTreeMap<String, WindowRates> {
        /// One function's sums so far.
        #[derive(Default)]
        struct Sums<'a> {
            requests_per_second: f64,
            requests: u64,
            errors: u64,
            /// Bucket increases by bounds: quantiles use the busiest bounds.
            histograms: Vec<(&'a [f64], u64, Vec<u64>)>,
        }
        let start = now.checked_sub(self.window);
        let mut sums: BTreeMap<&str, Sums<'_>> = BTreeMap::new();
        for ((_, function), series) in &self.series {
            let newest = series.newest();
            if newest.at + self.window <= now {
                continue;
            }
            let base = series.base(start);
            let seconds = newest.at.saturating_duration_since(base.at).as_secs_f64();
            if seconds <= 0.0 {
                continue;
            }
            let requests = newest.requests - base.requests;
            let sum = sums.entry(function).or_default();
            sum.requests_per_second += requests as f64 / seconds;
            sum.requests += requests;
            sum.errors += newest.errors - base.errors;
            let increase: Vec<u64> = newest.buckets.iter().zip(&base.buckets).map(|(new, old)| new - old).collect();
            match sum.histograms.iter_mut().find(|(bounds, _, _)| *bounds == series.bounds.as_slice()) {
                Some((_, total, buckets)) => {
                    *total += requests;
                    buckets.iter_mut().zip(&increase).for_each(|(sum, add)| *sum += add);
                }
                None => sum.histograms.push((&series.bounds, requests, increase)),
            }
        }
        sums.into_iter()
            .map(|(function, sum)| {
                let ratio = |part: u64| (sum.requests > 0).then(|| part as f64 / sum.requests as f64);
                let busiest = sum.histograms.iter().max_by_key(|(_, total, _)| *total);
                let quantile =
                    |q| busiest.and_then(|(bounds, total, buckets)| histogram_quantile(q, bounds, buckets, *total));
                let rates = WindowRates {
                    requests_per_second: sum.requests_per_second,
                    error_ratio: ratio(sum.errors),
                    p50_seconds: quantile(0.5),
                    p99_seconds: quantile(0.99),
                };
                (function.to_string(), rates)
            })
            .collect()
    }
}

impl Series {
    fn start(counters: &FunctionTraffic, now: Instant) -> Self {
        let first = Sample {
            at: now,
            requests: counters.requests,
            errors: counters.errors,
            buckets: counters.duration_counts.clone(),
        };
        Self {
            bounds: counters.duration_bounds_seconds.clone(),
            last_raw: counters.clone(),
            samples: VecDeque::from([first]),
        }
    }

    fn newest(&self) -> &Sample {
        // Never empty: made with one sample, and pruning keeps one.
        &self.samples[self.samples.len() - 1]
    }

    /// The sample the window's increase starts from: the newest at or
    /// before `start`, else the oldest.
    fn base(&self, start: Option<Instant>) -> &Sample {
        let after = start.map_or(0, |start| self.samples.partition_point(|sample| sample.at <= start));
        &self.samples[after.saturating_sub(1)]
    }

    fn push(&mut self, counters: &FunctionTraffic, now: Instant, window: Duration) {
        if counters.duration_bounds_seconds != self.bounds {
            // Other buckets (a new build of the node): nothing to subtract from.
            *self = Series::start(counters, now);
            return;
        }
        let last = &self.last_raw;
        let restarted = counters.requests < last.requests
            || counters.errors < last.errors
            || counters.duration_counts.iter().zip(&last.duration_counts).any(|(new, old)| new < old);
        // Since the last report; after a restart, everything counted since.
        let increase = |new: u64, old: u64| if restarted { new } else { new - old };
        let newest = self.newest();
        let next = Sample {
            at: now.max(newest.at),
            requests: newest.requests.saturating_add(increase(counters.requests, last.requests)),
            errors: newest.errors.saturating_add(increase(counters.errors, last.errors)),
            buckets: newest
                .buckets
                .iter()
                .zip(counters.duration_counts.iter().zip(&last.duration_counts))
                .map(|(total, (new, old))| total.saturating_add(increase(*new, *old)))
                .collect(),
        };
        let len = self.samples.len();
        let crowded = len >= 2 && next.at.saturating_duration_since(self.samples[len - 2].at) < SAMPLE_SPACING;
        if crowded {
            self.samples[len - 1] = next;
        } else {
            self.samples.push_back(next);
        }
        self.last_raw = counters.clone();
        // One sample at or before the window's start is all that is needed.
        if let Some(start) = now.checked_sub(window) {
            while self.samples.len() >= 2 && self.samples[1].at <= start {
                self.samples.pop_front();
            }
        }
    }
}

/// The `q` quantile (0 to 1) of `total` observations whose cumulative
/// counts at the ascending upper `bounds` are `buckets` (the `+Inf` bucket
/// holds `total`), interpolated linearly within the bucket it falls in, as
/// Prometheus' `histogram_quantile`: the first bucket starts at 0 (or at its
/// bound, if that is not positive), and a quantile in the `+Inf` bucket is
/// the largest finite bound. `None` without observations.
pub(crate) fn histogram_quantile(q: f64, bounds: &[f64], buckets: &[u64], total: u64) -> Option<f64> {
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut below_count = 0u64;
    let mut below_bound = 0.0;
    for (index, (&bound, &count)) in bounds.iter().zip(buckets).enumerate() {
        if count as f64 >= rank {
            if index == 0 && bound <= 0.0 {
                return Some(bound);
            }
            let in_bucket = (count - below_count) as f64;
            if in_bucket == 0.0 {
                return Some(bound);
            }
            return Some(below_bound + (bound - below_bound) * (rank - below_count as f64) / in_bucket);
        }
        below_count = count;
        below_bound = bound;
    }
    // In the +Inf bucket: the largest finite bound is all that is known.
    Some(bounds.last().copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use super::*;

    const BOUNDS: [f64; 4] = [0.01, 0.1, 1.0, 10.0];

    fn traffic(function: &str, requests: u64, errors: u64, buckets: [u64; 4]) -> FunctionTraffic {
        FunctionTraffic {
            function: function.into(),
            requests,
            errors,
            duration_bounds_seconds: BOUNDS.to_vec(),
            duration_counts: buckets.to_vec(),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rates_are_the_increase_over_the_window_summed_over_nodes() {
        let mut windows = TrafficWindows::new(secs(10), 100);
        let t0 = Instant::now();
        // n1: 10 requests a second, 1 error a second; n2: 5 a second, none.
        for s in 0..=20 {
            windows.record("n1", &[traffic("f", 10 * s, s, [5 * s, 9 * s, 10 * s, 10 * s])], t0 + secs(s));
            windows.record("n2", &[traffic("f", 5 * s, 0, [5 * s, 5 * s, 5 * s, 5 * s])], t0 + secs(s));
        }
        let rates = &windows.rates(t0 + secs(20))["f"];
        assert!(close(rates.requests_per_second, 15.0), "{rates:?}");
        assert!(close(rates.error_ratio.unwrap(), 10.0 / 150.0), "{rates:?}");
        // Over the window: 150 requests, cumulative [100, 140, 150, 150].
        // p50: rank 75 in the first bucket (0..0.01): 0.01 * 75/100.
        assert!(close(rates.p50_seconds.unwrap(), 0.0075), "{rates:?}");
        // p99: rank 148.5 in the third bucket (0.1..1, 10 of them): 0.1 + 0.9 * 8.5/10.
        assert!(close(rates.p99_seconds.unwrap(), 0.865), "{rates:?}");
    }

    #[test]
    fn a_counter_going_down_is_a_restart_not_a_negative_rate() {
        let mut windows = TrafficWindows::new(secs(10), 100);
        let t0 = Instant::now();
        windows.record("n1", &[traffic("f", 1000, 10, [1000; 4])], t0);
        windows.record("n1", &[traffic("f", 1010, 10, [1010; 4])], t0 + secs(1));
        // Restarted: counting again from 0; 20 requests since (2 errors).
        windows.record("n1", &[traffic("f", 20, 2, [20; 4])], t0 + secs(2));
        windows.record("n1", &[traffic("f", 30, 2, [30; 4])], t0 + secs(3));
        let rates = &windows.rates(t0 + secs(3))["f"];
        // 10 + 20 + 10 requests in 3 s.
        assert!(close(rates.requests_per_second, 40.0 / 3.0), "{rates:?}");
        assert!(close(rates.error_ratio.unwrap(), 2.0 / 40.0), "{rates:?}");
        assert!(rates.p99_seconds.unwrap() <= 0.01, "{rates:?}");
    }

    #[test]
    fn a_window_without_requests_has_a_zero_rate_and_no_quantiles() {
        let mut windows = TrafficWindows::new(secs(10), 100);
        let t0 = Instant::now();
        windows.record("n1", &[traffic("f", 7, 1, [7; 4])], t0);
        assert!(windows.rates(t0).is_empty(), "one sample is no rate yet");
        windows.record("n1", &[traffic("f", 7, 1, [7; 4])], t0 + secs(5));
        let rates = &windows.rates(t0 + secs(5))["f"];
        assert_eq!(*rates, WindowRates { requests_per_second: 0.0, ..WindowRates::default() });
    }

    #[test]
    fn a_node_that_stops_reporting_counts_until_its_samples_leave_the_window() {
        let mut windows = TrafficWindows::new(secs(10), 100);
        let t0 = Instant::now();
        for s in 0..=4 {
            windows.record("gone", &[traffic("f", 10 * s, 0, [10 * s; 4])], t0 + secs(s));
            windows.record("kept", &[traffic("f", 2 * s, 0, [2 * s; 4])], t0 + secs(s));
        }
        for s in 5..=12 {
            windows.record("kept", &[traffic("f", 2 * s, 0, [2 * s; 4])], t0 + secs(s));
        }
        // At 12 s the window starts at 2 s: `gone` still has its last 2 s in it.
        assert!(close(windows.rates(t0 + secs(12))["f"].requests_per_second, 12.0));
        // At 14 s its newest sample (4 s) is out: only `kept` counts.
        assert!(close(windows.rates(t0 + secs(14))["f"].requests_per_second, 2.0));
        // And the next report forgets it.
        windows.record("kept", &[traffic("f", 28, 0, [28; 4])], t0 + secs(14));
        assert!(!windows.series.contains_key(&("gone".to_string(), "f".to_string())));
    }

    #[test]
    fn series_are_bounded_in_samples_and_in_number() {
        let mut windows = TrafficWindows::new(secs(10), 3);
        let t0 = Instant::now();
        // Ten reports a second for 30 s: at most two samples per second kept.
        for tenth in 0..=300u64 {
            windows.record("n1", &[traffic("f", tenth, 0, [tenth; 4])], t0 + Duration::from_millis(100 * tenth));
        }
        let series = &windows.series[&("n1".to_string(), "f".to_string())];
        assert!(series.samples.len() <= 2 * 10 + 2, "{} samples", series.samples.len());
        let rates = &windows.rates(t0 + secs(30))["f"];
        assert!(close(rates.requests_per_second, 10.0), "{rates:?}");

        for (i, node) in ["n2", "n3", "n4"].into_iter().enumerate() {
            windows.record(node, &[traffic("f", 1, 0, [1; 4])], t0 + secs(31 + i as u64));
        }
        assert_eq!(windows.series.len(), 3);
        assert!(!windows.series.contains_key(&("n1".to_string(), "f".to_string())), "the stalest went first");
    }

    #[test]
    fn removed_functions_and_new_bounds_start_over() {
        let mut windows = TrafficWindows::new(secs(10), 100);
        let t0 = Instant::now();
        windows.record("n1", &[traffic("f", 10, 0, [10; 4]), traffic("g", 10, 0, [10; 4])], t0);
        windows.record("n1", &[traffic("f", 20, 0, [20; 4]), traffic("g", 20, 0, [20; 4])], t0 + secs(1));
        windows.forget_function("g");
        assert_eq!(windows.rates(t0 + secs(1)).keys().collect::<Vec<_>>(), ["f"]);
        let other = FunctionTraffic {
            duration_bounds_seconds: vec![0.5],
            duration_counts: vec![25],
            ..traffic("f", 25, 0, [0; 4])
        };
        windows.record("n1", &[other], t0 + secs(2));
        assert!(windows.rates(t0 + secs(2)).is_empty(), "new bounds: one sample, no rate yet");
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let bounds = [0.1, 0.2, 0.4];
        // 10 in (0, 0.1], 10 in (0.1, 0.2], 0 in (0.2, 0.4], 5 above.
        let buckets = [10, 20, 20];
        assert_eq!(histogram_quantile(0.2, &bounds, &buckets, 25), Some(0.05));
        assert!(close(histogram_quantile(0.6, &bounds, &buckets, 25).unwrap(), 0.15));
        // Rank 20 exactly at the second bound.
        assert!(close(histogram_quantile(0.8, &bounds, &buckets, 25).unwrap(), 0.2));
        // In +Inf: the largest finite bound.
        assert_eq!(histogram_quantile(0.99, &bounds, &buckets, 25), Some(0.4));
        assert_eq!(histogram_quantile(0.5, &bounds, &buckets, 0), None);
        assert_eq!(histogram_quantile(1.5, &bounds, &buckets, 25), None);
        assert_eq!(histogram_quantile(0.5, &[], &[], 3), Some(0.0));
    }
}
