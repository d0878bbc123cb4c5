//! `wedge top`: a live view of the cluster in the terminal, from the control
//! plane's `GET /v1/overview` — nodes by site with their state, requests in
//! flight and CPU; functions with replicas, requests a second, 5xx share and
//! p99; the latest placement decisions — redrawn in place every
//! `--interval` until `q`, Esc or Ctrl-C.
//!
//! The live view runs in the terminal's alternate screen with raw mode on
//! (crossterm); a guard restores the terminal on every way out: quitting,
//! an error, and a panic (through the panic hook). Fetching runs on its own
//! thread, so keys are answered at once even while the control plane is
//! slow; a failed fetch keeps the last frame and says why on top, except a
//! refused token, which ends `wedge top` with that error. `--once` prints
//! one frame as plain text (for scripts and tests); so does a stdout that
//! is not a terminal. Drawing is [`render`], a pure function of the
//! overview and the width.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use wedge_control::api::{NodeState, Overview};
use wedge_control::placement::Decision;

use crate::client::{Client, ClientError};
use crate::output::{Table, escape_controls, utc_time};
use crate::profile::ConnectionArgs;

/// Width of a frame printed when stdout is not a terminal.
const PLAIN_WIDTH: usize = 160;
/// Deadline of one overview request: a stuck control plane shows as an
/// error line soon, not after the 30 s of other verbs.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the live view checks for keys and new frames.
const TICK: Duration = Duration::from_millis(50);
/// Decisions shown under the tables.
const DECISIONS_SHOWN: usize = 5;

/// Arguments of `wedge top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = interval)]
    interval: Duration,

    /// Print one frame as plain text and exit.
    #[arg(long)]
    once: bool,

    #[command(flatten)]
    connection: ConnectionArgs,
}

/// A refresh interval: 100ms to 1h.
fn interval(text: &str) -> Result<Duration, String> {
    let duration = wedge_node::units::parse_duration(text)?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&duration) {
        return Err(format!("{text:?} is outside 100ms..1h"));
    }
    Ok(duration)
}

impl TopArgs {
    /// Shows the cluster until the user quits (or one frame with `--once`).
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        // The first answer before anything else: an unreachable control
        // plane or a wrong token is one line and exit code 1.
        let first = client.overview(FETCH_TIMEOUT)?.value;
        if self.once || !std::io::stdout().is_terminal() {
            let mut out = std::io::stdout().lock();
            for line in render(&first, PLAIN_WIDTH) {
                writeln!(out, "{line}")?;
            }
            return Ok(());
        }
        live(client, first, self.interval)
    }
}

/// What the fetching thread sends.
type Fetched = Result<Overview, ClientError>;

/// The live view: fetches on a thread every `interval`, redraws on each
/// answer and on resizes, quits on `q`, Esc or Ctrl-C.
fn live(client: Client, first: Overview, interval: Duration) -> anyhow::Result<()> {
    // One frame in flight at most: the thread waits until it is taken.
    let (frames, fetched) = mpsc::sync_channel::<Fetched>(1);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(interval);
            let answer = client.overview(FETCH_TIMEOUT).map(|reply| reply.value);
            if frames.send(answer).is_err() {
                return;
            }
        }
    });
    let screen = Screen::enter()?;
    let mut overview = first;
    let mut problem: Option<String> = None;
    let mut redraw = true;
    loop {
        if redraw {
            screen.draw(&overview, problem.as_deref())?;
            redraw = false;
        }
        let until = Instant::now() + TICK;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        match fetched.try_recv() {
            Ok(Ok(next)) => {
                overview = next;
                problem = None;
                redraw = true;
            }
            Ok(Err(ClientError::Unauthorized)) => return Err(ClientError::Unauthorized.into()),
            Ok(Err(error)) => {
                problem = Some(format!("{error}; showing the last answer, retrying"));
                redraw = true;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => anyhow::bail!("the fetching thread stopped"),
        }
    }
}

fn quits(key: &KeyEvent) -> bool {
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// The terminal in raw mode on the alternate screen, cursor hidden, for as
/// long as this lives; dropped (or panicked through), it is put back.
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode()?;
        // From here on every way out restores: the guard's drop on return
        // and on unwinding, the hook before a panic message is printed.
        let screen = Screen;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(screen)
    }

    fn draw(&self, overview: &Overview, problem: Option<&str>) -> anyhow::Result<()> {
        // A terminal that does not know its size (a bare pty) says 0x0.
        let (columns, rows) = match terminal::size()? {
            (0, _) | (_, 0) => (80, 24),
            size => size,
        };
        let width = usize::from(columns).max(20);
        let mut lines = render(overview, width);
        if let Some(problem) = problem {
            lines.insert(1, truncate(&format!("! {problem}"), width));
        }
        lines.push(String::new());
        lines.push("q quits".to_string());
        // Each line overwritten in place, then the rest cleared: no flicker.
        let mut out = std::io::stdout().lock();
        let shown = lines.len().min(usize::from(rows));
        for (row, line) in lines.iter().take(shown).enumerate() {
            let row = u16::try_from(row).unwrap_or(u16::MAX);
            queue!(
                out,
                cursor::MoveTo(0, row),
                style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        queue!(out, cursor::MoveTo(0, u16::try_from(shown).unwrap_or(u16::MAX)))?;
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor, turns raw mode off.
/// Harmless when already done.
fn restore() {
    let _ = execute!(std::io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

/// One frame: a summary line, nodes by site, functions, the newest
/// decisions; every line at most `width` characters.
pub fn render(overview: &Overview, width: usize) -> Vec<String> {
    let nodes: usize = overview.sites.iter().map(|site| site.nodes.len()).sum();
    let mut lines = vec![format!(
        "wedge top — {} sites, {nodes} nodes, {} functions · rates over {} s · {} UTC{}",
        overview.sites.len(),
        overview.functions.len(),
        overview.window_ms / 1000,
        utc_time(overview.generated_unix_ms),
        if overview.placement_published { "" } else { " · placements not given to nodes yet" }
    )];
    lines.push(String::new());
    if overview.sites.is_empty() {
        lines.push("no node has reported to the control plane".to_string());
    } else {
        let mut table = Table::new(&["SITE", "NODE", "STATE", "IN FLIGHT", "CPU", "FUNCTIONS", "SEEN"]);
        for site in &overview.sites {
            for (index, node) in site.nodes.iter().enumerate() {
                let state = match (node.state, node.sees_down.is_empty()) {
                    (NodeState::Reporting, false) => format!("reporting (sees {} down)", node.sees_down.len()),
                    (state, _) => state.as_str().to_string(),
                };
                table.row(vec![
                    if index == 0 { escape_controls(&site.name).into_owned() } else { String::new() },
                    escape_controls(&node.name).into_owned(),
                    state,
                    node.in_flight.to_string(),
                    format!("{:.1}%", f64::from(node.cpu_permille) / 10.0),
                    node.serving.len().to_string(),
                    format!("{} ago", seconds(node.last_seen_ms_ago as f64 / 1000.0)),
                ]);
            }
        }
        lines.extend(table.render().lines().map(str::to_string));
    }
    lines.push(String::new());
    if overview.functions.is_empty() {
        lines.push("no functions deployed (deploy one with `wedge deploy COMPONENT.wasm`)".to_string());
    } else {
        let mut table = Table::new(&["FUNCTION", "VERSION", "REPLICAS", "REQ/S", "5XX", "P50", "P99", "NODES"]);
        for function in &overview.functions {
            let replicas = function.replicas;
            let short = if replicas.placed < replicas.min { " (below min)" } else { "" };
            table.row(vec![
                function.name.clone(),
                function.active_version.to_string(),
                format!("{}/{}{short}", replicas.placed, replicas.target),
                rate(function.requests_per_second),
                function.error_ratio.map_or_else(|| "–".to_string(), |ratio| format!("{:.1}%", ratio * 100.0)),
                function.p50_seconds.map_or_else(|| "–".to_string(), seconds),
                function.p99_seconds.map_or_else(|| "–".to_string(), seconds),
                function.nodes.iter().map(|node| escape_controls(node)).collect::<Vec<_>>().join(", "),
            ]);
        }
        lines.extend(table.render().lines().map(str::to_string));
    }
    if !overview.decisions.is_empty() {
        lines.push(String::new());
        lines.push("recent placement decisions (newest first):".to_string());
        lines.extend(overview.decisions.iter().take(DECISIONS_SHOWN).map(decision));
    }
    lines.into_iter().map(|line| truncate(&line, width)).collect()
}

fn decision(decision: &Decision) -> String {
    let action = super::placement::action(&decision.action);
    let time = utc_time(decision.at_unix_ms);
    let clock = time.split(' ').nth(1).unwrap_or(&time);
    format!("  {clock}  {} {} — {}", decision.function, escape_controls(&action), escape_controls(&decision.reason))
}

/// Requests a second, with fewer decimals as it grows.
fn rate(per_second: f64) -> String {
    match per_second {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    }
}

/// A duration in seconds for people: `850µs`, `12.3ms`, `1.50s`.
fn seconds(value: f64) -> String {
    match value {
        v if v < 0.001 => format!("{:.0}µs", v * 1e6),
        v if v < 1.0 => format!("{:.1}ms", v * 1e3),
        v => format!("{v:.2}s"),
    }
}

/// `line` cut to `width` characters, the cut marked with `…`.
fn truncate(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use wedge_control::api::{OverviewFunction, OverviewNode, OverviewSite, ReplicaCounts};
    use wedge_control::placement::Action;

    use super::*;

    fn node(name: &str, site: &str, state: NodeState) -> OverviewNode {
        OverviewNode {
            name: name.into(),
            site: site.into(),
            state,
            ingress: "127.0.0.1:8081".into(),
            incarnation: 3,
            in_flight: 4,
            cpu_permille: 125,
            serving: vec!["hello".into()],
            sees_down: vec![],
            last_seen_ms_ago: 400,
        }
    }

    fn overview() -> Overview {
        Overview {
            generated_unix_ms: 1_764_300_000_000,
            window_ms: 10_000,
            placement_published: true,
            sites: vec![
                OverviewSite {
                    name: "east".into(),
                    nodes: vec![node("node-1", "east", NodeState::Reporting), node("node-3", "east", NodeState::Stale)],
                },
                OverviewSite { name: "west".into(), nodes: vec![node("node-2", "west", NodeState::Down)] },
            ],
            functions: vec![
                OverviewFunction {
                    name: "hello".into(),
                    active_version: 2,
                    routes: vec!["/hello".into()],
                    replicas: ReplicaCounts { placed: 2, target: 2, min: 2, max: 8 },
                    nodes: vec!["node-1".into(), "node-2".into()],
                    requests_per_second: 12.345,
                    error_ratio: Some(0.025),
                    p50_seconds: Some(0.0012),
                    p99_seconds: Some(0.0456),
                },
                OverviewFunction {
                    name: "idle".into(),
                    active_version: 1,
                    routes: vec!["/idle".into()],
                    replicas: ReplicaCounts { placed: 1, target: 2, min: 2, max: 8 },
                    nodes: vec!["node-1".into()],
                    ..OverviewFunction::default()
                },
            ],
            decisions: vec![Decision {
                at_unix_ms: 1_764_300_000_000,
                function: "hello".into(),
                action: Action::Place { node: "node-2".into() },
                reason: "site west had none\u{1b}[2J".into(),
            }],
        }
    }

    fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn a_frame_shows_nodes_by_site_and_functions_with_rates() {
        let lines = render(&overview(), 200);
        assert!(lines[0].starts_with("wedge top — 2 sites, 3 nodes, 2 functions · rates over 10 s"), "{lines:#?}");
        assert_eq!(words(&lines[2]), ["SITE", "NODE", "STATE", "IN", "FLIGHT", "CPU", "FUNCTIONS", "SEEN"]);
        assert_eq!(words(&lines[3]), ["east", "node-1", "reporting", "4", "12.5%", "1", "400.0ms", "ago"]);
        assert_eq!(words(&lines[4]), ["node-3", "stale", "4", "12.5%", "1", "400.0ms", "ago"]);
        assert_eq!(words(&lines[5]), ["west", "node-2", "down", "4", "12.5%", "1", "400.0ms", "ago"]);
        assert_eq!(words(&lines[7]), ["FUNCTION", "VERSION", "REPLICAS", "REQ/S", "5XX", "P50", "P99", "NODES"]);
        assert_eq!(words(&lines[8]), ["hello", "2", "2/2", "12.3", "2.5%", "1.2ms", "45.6ms", "node-1,", "node-2"]);
        assert_eq!(words(&lines[9]), ["idle", "1", "1/2", "(below", "min)", "0.00", "–", "–", "–", "node-1"]);
        assert_eq!(lines[11], "recent placement decisions (newest first):");
        assert!(lines[12].contains("hello placed on node-2 — site west had none\\x1b[2J"), "{}", lines[12]);
        assert!(lines.iter().all(|line| !line.contains('\u{1b}')), "control characters are escaped");
    }

    #[test]
    fn lines_fit_the_width() {
        for width in [20, 40, 80] {
            let lines = render(&overview(), width);
            assert!(lines.iter().all(|line| line.chars().count() <= width), "{width}: {lines:#?}");
            assert!(lines[0].ends_with('…'));
        }
    }

    #[test]
    fn an_empty_cluster_says_what_to_do() {
        let lines = render(&Overview { window_ms: 10_000, ..Overview::default() }, 100);
        assert!(lines.contains(&"no node has reported to the control plane".to_string()), "{lines:#?}");
        assert!(lines.iter().any(|line| line.starts_with("no functions deployed")), "{lines:#?}");
    }

    #[test]
    fn quitting_keys() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(interval("2s"), Ok(Duration::from_secs(2)));
        assert!(interval("10ms").unwrap_err().contains("outside"));
        assert!(interval("soon").is_err());
    }
}
