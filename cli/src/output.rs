//! How client verbs print results: aligned tables and short lines for people
//! (the default), or the control plane's JSON for scripts (`--output json`).
//! Also the small formatters they share: sizes, timestamps, short hashes,
//! and squeezing a multi-line error onto one line.
//!
//! Results go to stdout; progress, notes and warnings go to stderr.

use clap::{Args, ValueEnum};

/// The `--output` flag shared by client verbs.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct OutputArgs {
    /// Output format: `human` (tables) or `json` (the API's JSON, for scripts).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Human, value_name = "FORMAT")]
    pub format: Format,
}

/// Output formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned tables and sentences.
    #[default]
    Human,
    /// JSON as the control plane answered it.
    Json,
}

impl OutputArgs {
    /// True for `--output json`.
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Prints a JSON value, pretty, on stdout.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table with a header row; columns are padded to their widest cell and
/// separated by two spaces; the last column is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A size for people: `512 B`, `3.4 KiB`, `1.2 MiB`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in milliseconds for people: `250ms`, `5s`, `1500ms`, `2m`.
pub fn human_millis(ms: u64) -> String {
    if ms == 0 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// How long ago, the largest two units: `850ms`, `42s`, `3m12s`, `2h05m`, `4d03h`.
pub fn human_age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// `word`, with an `s` unless `count` is 1 (`2 jobs`, `1 job`).
pub fn plural(count: u64, word: &str) -> String {
    if count == 1 { word.to_string() } else { format!("{word}s") }
}

/// A function's routes in a table cell: `-` for a job function without any.
pub fn routes_cell(routes: &[String]) -> String {
    if routes.is_empty() { "-".to_string() } else { routes.join(", ") }
}

/// The first 12 hex digits of a sha256, as people quote it.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Milliseconds since the Unix epoch as UTC, `2026-11-28 04:19:25`.
pub fn utc_time(unix_ms: u64) -> String {
    let (date, secs) = split_unix(unix_ms);
    format!("{date} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Milliseconds since the Unix epoch as UTC with milliseconds, for log
/// lines: `2026-11-28T04:19:25.123Z`.
pub fn utc_time_ms(unix_ms: u64) -> String {
    let (date, secs) = split_unix(unix_ms);
    format!("{date}T{:02}:{:02}:{:02}.{:03}Z", secs / 3600, secs / 60 % 60, secs % 60, unix_ms % 1000)
}

/// The civil date (`YYYY-MM-DD`) and the second of the day.
fn split_unix(unix_ms: u64) -> (String, u64) {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's days_from_civil inverse (public domain).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), secs % 86_400)
}

/// Text from elsewhere (a guest's log line, a node's name) made safe to
/// print on a terminal: every control character but tab — C0 (below
/// 0x20), DEL (0x7f) and C1 (U+0080 to U+009F) — is written as an escape
/// (`\x1b`, `\u{9b}`), so what is printed cannot move the cursor, clear
/// the screen, set the window title or answer back through the terminal.
/// Everything else, non-ASCII text included, is kept as it is.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !text.contains(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        // Writing to a String cannot fail.
        let _ = match c {
            c if !unsafe_char(c) => out.write_char(c),
            c if c.is_ascii() => write!(out, "\\x{:02x}", u32::from(c)),
            c => write!(out, "\\u{{{:x}}}", u32::from(c)),
        };
    }
    std::borrow::Cow::Owned(out)
}

/// Puts a possibly multi-line message (a TOML error with its source excerpt)
/// on one line: excerpt lines dropped, the rest joined with `: `.
pub fn one_line(text: &str) -> String {
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | ")).collect();
    lines.join(": ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ages_read_like_durations() {
        assert_eq!(human_age(0), "0ms");
        assert_eq!(human_age(999), "999ms");
        assert_eq!(human_age(1_000), "1s");
        assert_eq!(human_age(59_999), "59s");
        assert_eq!(human_age(192_000), "3m12s");
        assert_eq!(human_age(7_500_000), "2h05m");
        assert_eq!(human_age(356_400_000), "4d03h");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "VERSION", "ROUTES"]);
        table.row(vec!["hello".into(), "3".into(), "/hello".into()]);
        table.row(vec!["json-api".into(), "12".into(), "/api, api.example.com/".into()]);
        table.row(vec!["x".into()]);
        assert_eq!(
            table.render(),
            "NAME      VERSION  ROUTES\n\
             hello     3        /hello\n\
             json-api  12       /api, api.example.com/\n\
             x\n"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_millis(5000), "5s");
        assert_eq!(human_millis(1500), "1500ms");
        assert_eq!(human_millis(120_000), "2m");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        // 2026-11-28T04:19:25.123Z
        assert_eq!(utc_time_ms(1_795_839_565_123), "2026-11-28T04:19:25.123Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert!(matches!(escape_controls("plain\ttext é ✓"), std::borrow::Cow::Borrowed("plain\ttext é ✓")));
        let hostile = "\x1b[2J\x1b]0;pwned\x07 ok\r\n\x08\x7f\u{9b}31m\u{85}end";
        assert_eq!(escape_controls(hostile), "\\x1b[2J\\x1b]0;pwned\\x07 ok\\x0d\\x0a\\x08\\x7f\\u{9b}31m\\u{85}end");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter(|&c| c != 0x09) {
            let text = char::from_u32(c).unwrap().to_string();
            assert!(escape_controls(&text).chars().all(|c| !c.is_control()), "{c:#x}");
        }
    }

    #[test]
    fn toml_errors_fit_on_one_line() {
        let text = "wedge.toml: invalid: TOML parse error at line 3, column 1\n  |\n3 | route = \"/x\"\n  | ^^^^^\nunknown field `route`, expected one of `name`, `component`\n";
        assert_eq!(
            one_line(text),
            "wedge.toml: invalid: TOML parse error at line 3, column 1: unknown field `route`, expected one of `name`, `component`"
        );
        assert_eq!(short_sha("abc"), "abc");
    }
}
