//! The HTTP load generator of the benches: `wrk` (installed with apt-get if missing),
//! run once per measurement, its text report parsed into numbers; and the statistics
//! the benches share (medians of rounds, percentiles of a series, microseconds for
//! people).

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::util;

/// How hard and how long to drive a server.
#[derive(Clone, Copy, Serialize)]
pub struct Load {
    /// wrk threads (`-t`); 1 leaves the other core to the server on a 2-core machine.
    pub threads: u32,
    /// Open connections (`-c`).
    pub connections: u32,
    /// Whole seconds (`-d`).
    pub seconds: u64,
}

/// One wrk run's results.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors plus non-2xx/3xx responses; anything but 0 spoils the sample.
    pub errors: u64,
}

/// Makes sure `wrk` is installed.
pub fn ensure_installed() -> Result<()> {
    if util::on_path("wrk").is_none() {
        util::apt_install(&["wrk"]).context("the benches need the load generator `wrk`")?;
    }
    Ok(())
}

/// wrk's version line, for reports.
pub fn version() -> String {
    // `wrk -v` prints its version and usage, and exits with 1.
    Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
        })
        .unwrap_or_else(|| "wrk".to_owned())
}

/// Drives `url` with `load` and returns what wrk measured.
pub fn run(url: &str, load: Load) -> Result<Sample> {
    let text = util::output(Command::new("wrk").args([
        format!("-t{}", load.threads),
        format!("-c{}", load.connections),
        format!("-d{}s", load.seconds),
        "--latency".to_owned(),
        url.to_owned(),
    ]))?;
    parse(&text).with_context(|| format!("could not read wrk's report:\n{text}"))
}

/// Parses wrk's `--latency` report.
fn parse(text: &str) -> Result<Sample> {
    let mut requests_per_sec = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(rest.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50_us = Some(micros(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99_us = Some(micros(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                let count = part.split_whitespace().nth(1).unwrap_or("0");
                errors += count.parse::<u64>().context("Socket errors")?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().context("Non-2xx responses")?;
        }
    }
    match (requests_per_sec, p50_us, p99_us) {
        (Some(requests_per_sec), Some(p50_us), Some(p99_us)) => Ok(Sample { requests_per_sec, p50_us, p99_us, errors }),
        _ => bail!("no Requests/sec, 50% or 99% line"),
    }
}

/// `812.00us`, `1.23ms`, `2.01s`, `1.50m` in microseconds.
fn micros(value: &str) -> Result<f64> {
    let split =
        value.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("latency {value:?} has no unit"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("latency {value:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("latency {value:?} has an unknown unit"),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 10s test @ http://127.0.0.1:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.77ms    3.34ms  20.26ms   67.22%
    Req/Sec     9.21k   265.69    9.86k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.69ms
     90%    2.37ms
     99%    1.02s
  92131 requests in 10.00s, 8.43MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   9211.05
Transfer/sec:    863.10KB
";

    #[test]
    fn parses_a_latency_report() -> Result<()> {
        let sample = parse(REPORT)?;
        assert_eq!(sample, Sample { requests_per_sec: 9211.05, p50_us: 812.0, p99_us: 1.02e6, errors: 7 });
        Ok(())
    }

    #[test]
    fn a_report_without_latency_is_an_error() {
        assert!(parse("Requests/sec: 1.0\n").is_err());
    }

    #[test]
    fn a_row_shows_the_median_and_every_round() {
        let round = |requests_per_sec| Sample { requests_per_sec, p50_us: 812.0, p99_us: 1234.0, errors: 0 };
        let rounds = [round(1200.4), round(1234.0)];
        let cells = row_cells(&median(&rounds), &rounds);
        assert_eq!(cells, format!("1217 | {} | {} | 0 | 1200 / 1234 |\n", fmt_us(812.0), fmt_us(1234.0)));
    }
}

/// The median of each metric of the rounds on its own; errors are summed.
pub fn median(rounds: &[Sample]) -> Sample {
    let of = |metric: fn(&Sample) -> f64| median_of(rounds.iter().map(metric).collect());
    Sample {
        requests_per_sec: of(|s| s.requests_per_sec),
        p50_us: of(|s| s.p50_us),
        p99_us: of(|s| s.p99_us),
        errors: rounds.iter().map(|s| s.errors).sum(),
    }
}

/// Latency percentiles (nearest rank) of one series (of requests, of operations).
#[derive(Clone, Copy, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(mut us: Vec<f64>) -> Self {
        us.sort_by(f64::total_cmp);
        let n = us.len();
        // Nearest rank: the smallest value with at least p of the samples at or below it.
        let rank = |p: f64| if n == 0 { f64::NAN } else { us[((p * n as f64).ceil() as usize).clamp(1, n) - 1] };
        Self { samples: n, p50_us: rank(0.5), p90_us: rank(0.9), p99_us: rank(0.99), max_us: rank(1.0) }
    }
}

/// The median of `values` (NaN when there are none).
pub fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The cells of a results-table row after its label: the median's req/s, p50, p99 and
/// errors, then req/s of every round (`1234 | 812 µs | … | 1201 / 1234 |`, and a newline).
pub fn row_cells(median: &Sample, rounds: &[Sample]) -> String {
    let per_round: Vec<String> = rounds.iter().map(|s| format!("{:.0}", s.requests_per_sec)).collect();
    format!(
        "{:.0} | {} | {} | {} | {} |\n",
        median.requests_per_sec,
        fmt_us(median.p50_us),
        fmt_us(median.p99_us),
        median.errors,
        per_round.join(" / ")
    )
}

/// Microseconds for people: `812 µs`, `1.23 ms`, `2.01 s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

#[cfg(test)]
mod median_tests {
    use super::*;

    fn sample(rps: f64, p50: f64) -> Sample {
        Sample { requests_per_sec: rps, p50_us: p50, p99_us: p50 * 3.0, errors: 1 }
    }

    #[test]
    fn median_takes_each_metric_on_its_own() {
        let m = median(&[sample(3.0, 10.0), sample(1.0, 30.0), sample(2.0, 20.0)]);
        assert_eq!((m.requests_per_sec, m.p50_us, m.p99_us, m.errors), (2.0, 20.0, 60.0, 3));
        let even = median(&[sample(1.0, 10.0), sample(4.0, 20.0)]);
        assert_eq!(even.requests_per_sec, 2.5);
    }

    #[test]
    fn latency_takes_nearest_rank_percentiles() {
        let l = Latency::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((l.samples, l.p50_us, l.p90_us, l.p99_us, l.max_us), (100, 50.0, 90.0, 99.0, 100.0));
        let one = Latency::of(vec![7.0]);
        assert_eq!((one.p50_us, one.p99_us), (7.0, 7.0));
        assert!(Latency::of(Vec::new()).p50_us.is_nan());
    }

    #[test]
    fn microseconds_read_well() {
        assert_eq!(
            (fmt_us(812.0), fmt_us(1234.0), fmt_us(2_010_000.0)),
            ("812 µs".into(), "1.23 ms".into(), "2.01 s".into())
        );
    }
}
