//! `wedge logs`: the guest output lines nodes shipped to the control plane
//! for one function (time, node, request id, stream, line), the most recent
//! `--lines N`; with `-f`, then every new line as it arrives (long-polling
//! `after=next`) until Ctrl-C. With `--output json`, one JSON object per
//! line (JSON Lines), as the API sent it.
//!
//! Catch-up pages through what the control plane retains and keeps only
//! the last N lines (a bounded ring), so it shows the most recent lines
//! whether the API answers a request without `after` with the oldest or
//! the newest lines. Following survives a control-plane restart: transient
//! failures are retried with a capped backoff.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use wedge_control::api::LogLine;

use crate::client::{Client, ClientError, function_name};
use crate::output::{OutputArgs, escape_controls, utc_time_ms};
use crate::profile::ConnectionArgs;

/// Lines asked for per request.
const PAGE_LINES: u32 = 1000;
/// Most pages read while catching up (bounds a misbehaving server).
const CATCH_UP_PAGES_MAX: usize = 10_000;
/// How long one follow request waits for new lines.
const FOLLOW_WAIT_MS: u64 = 30_000;
/// Longest pause between retries while following.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(10);

/// Arguments of `wedge logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The function.
    #[arg(value_name = "FUNCTION", value_parser = function_name)]
    function: String,

    /// Keep printing new lines as they arrive, until Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,

    /// How many recent lines to print first.
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    lines: u32,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

/// A line as typed and as sent.
type Entry = (LogLine, serde_json::Value);

impl LogsArgs {
    /// Prints the recent lines, then follows if asked.
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        let (recent, mut after) = self.catch_up(&client)?;
        for entry in &recent {
            if !self.print(entry)? {
                return Ok(());
            }
        }
        if !self.follow {
            return Ok(());
        }
        let mut delay = Duration::from_secs(1);
        let mut failing = false;
        loop {
            match client.logs(&self.function, Some(after), FOLLOW_WAIT_MS, PAGE_LINES) {
                Ok(page) => {
                    if failing {
                        eprintln!("note: reconnected to the control plane");
                        failing = false;
                        delay = Duration::from_secs(1);
                    }
                    for entry in entries(page.value.lines, &page.raw) {
                        if !self.print(&entry)? {
                            return Ok(());
                        }
                    }
                    after = after.max(page.value.next);
                }
                Err(error) if error.is_transient() => {
                    if !failing {
                        eprintln!("note: {error}; retrying until Ctrl-C");
                        failing = true;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The last `--lines` lines retained, and the position after them.
    fn catch_up(&self, client: &Client) -> Result<(VecDeque<Entry>, u64), ClientError> {
        let keep = self.lines as usize;
        let mut recent: VecDeque<Entry> = VecDeque::with_capacity(keep.min(PAGE_LINES as usize));
        let mut after = None;
        for _ in 0..CATCH_UP_PAGES_MAX {
            let page = client.logs(&self.function, after, 0, PAGE_LINES)?;
            let advanced = after.is_none_or(|a| page.value.next > a);
            let empty = page.value.lines.is_empty();
            let next = page.value.next;
            for entry in entries(page.value.lines, &page.raw) {
                if recent.len() == keep {
                    recent.pop_front();
                }
                if keep > 0 {
                    recent.push_back(entry);
                }
            }
            after = Some(after.map_or(next, |a| a.max(next)));
            if empty || !advanced {
                break;
            }
        }
        Ok((recent, after.unwrap_or(0)))
    }

    /// Prints one line; false when stdout is gone (`| head`), to stop quietly.
    fn print(&self, (line, raw): &Entry) -> anyhow::Result<bool> {
        let text = if self.output.json() { raw.to_string() } else { human_line(line) };
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

/// Pairs each typed line with its JSON from the page.
fn entries(lines: Vec<LogLine>, raw: &serde_json::Value) -> impl Iterator<Item = Entry> {
    let raws = raw.get("lines").and_then(|l| l.as_array()).cloned().unwrap_or_default();
    let mut raws = raws.into_iter();
    lines.into_iter().map(move |line| {
        let raw = raws.next().unwrap_or_else(|| serde_json::to_value(&line).unwrap_or_default());
        (line, raw)
    })
}

/// `2026-11-28T04:19:25.123Z node-a 7f3a… stdout hello`. Every field but
/// the time comes from a guest, a node or a client's request header, so
/// control characters are escaped: a guest must not be able to drive the
/// operator's terminal (JSON output is escaped by JSON itself).
pub fn human_line(line: &LogLine) -> String {
    let node = if line.node.is_empty() { "-" } else { &line.node };
    let request_id = if line.request_id.is_empty() { "-" } else { &line.request_id };
    format!(
        "{} {} {} {} {}",
        utc_time_ms(line.unix_ms),
        escape_controls(node),
        escape_controls(request_id),
        escape_controls(&line.stream),
        escape_controls(&line.line)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_for_people() {
        let line = LogLine {
            seq: 7,
            unix_ms: 1_795_839_565_123,
            node: "node-a".into(),
            function: "hello".into(),
            request_id: "req-1".into(),
            stream: "stderr".into(),
            line: "boom".into(),
        };
        assert_eq!(human_line(&line), "2026-11-28T04:19:25.123Z node-a req-1 stderr boom");
        let anonymous = LogLine { node: String::new(), request_id: String::new(), ..line.clone() };
        assert_eq!(human_line(&anonymous), "2026-11-28T04:19:25.123Z - - stderr boom");
        // A guest (or a node) cannot drive the operator's terminal.
        let hostile = LogLine {
            node: "node\x1b[31m".into(),
            request_id: "r\x07".into(),
            line: "\x1b]0;owned\x07\x1b[2J\tdone\r".into(),
            ..line
        };
        let text = human_line(&hostile);
        assert_eq!(text, "2026-11-28T04:19:25.123Z node\\x1b[31m r\\x07 stderr \\x1b]0;owned\\x07\\x1b[2J\tdone\\x0d");
        assert!(!text.chars().any(|c| c.is_control() && c != '\t'), "{text:?}");
    }
}
