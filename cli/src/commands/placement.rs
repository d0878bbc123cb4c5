//! `wedge placement [FUNCTION]`: where each function runs and why — the
//! nodes the control plane's scheduler placed it on, its replica target,
//! and the scheduler's recent decisions with their reasons.

use clap::Args;
use wedge_control::api::PlacementReport;
use wedge_control::placement::{Action, Decision};

use crate::client::{Client, function_name};
use crate::output::{OutputArgs, Table, escape_controls, print_json, utc_time_ms};
use crate::profile::ConnectionArgs;

/// How many decisions the human view shows (the JSON has all the control
/// plane keeps).
const DECISIONS_SHOWN: usize = 20;

/// Arguments of `wedge placement`.
#[derive(Debug, Args)]
pub struct PlacementArgs {
    /// Only this function (default: every function).
    #[arg(value_name = "FUNCTION", value_parser = function_name)]
    function: Option<String>,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl PlacementArgs {
    /// Prints the placements and the latest decisions.
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        let reply = client.placement(self.function.as_deref())?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        print!("{}", render(&reply.value));
        Ok(())
    }
}

/// The human view: a table of functions, then the newest decisions.
fn render(report: &PlacementReport) -> String {
    if report.placements.is_empty() {
        return "no functions placed (deploy one with `wedge deploy COMPONENT.wasm`)\n".to_string();
    }
    let mut table = Table::new(&["FUNCTION", "REPLICAS", "NODES"]);
    for (function, nodes) in &report.placements {
        let target = report.targets.get(function).copied().unwrap_or(0);
        table.row(vec![function.clone(), format!("{} of {target}", nodes.len()), nodes.join(", ")]);
    }
    let mut text = table.render();
    if !report.published {
        text.push_str("(not given to the nodes yet: the control plane just started and is hearing from them first)\n");
    }
    let recent: Vec<&Decision> = report.decisions.iter().rev().take(DECISIONS_SHOWN).collect();
    if !recent.is_empty() {
        text.push_str("\nrecent decisions (newest first):\n");
        for decision in recent {
            text.push_str(&format!(
                "  {}  {:<12} {:<24} {}\n",
                utc_time_ms(decision.at_unix_ms),
                decision.function,
                action(&decision.action),
                escape_controls(&decision.reason)
            ));
        }
    }
    text
}

/// An action in a few words (also in `wedge top`).
pub(super) fn action(action: &Action) -> String {
    match action {
        Action::Place { node } => format!("placed on {node}"),
        Action::Remove { node } => format!("removed from {node}"),
        Action::ScaleUp { replicas } => format!("scaled up to {replicas}"),
        Action::ScaleDown { replicas } => format!("scaled down to {replicas}"),
        Action::Unplaceable { wanted, placed } => format!("short: {placed} of {wanted}"),
        Action::Refused { min_replicas, max_replicas } => format!("refused {min_replicas}..{max_replicas}"),
        Action::QueueAssign { queue, epoch, primary, backup } => {
            format!("queue {queue} epoch {epoch}: primary {primary}, backup {}", backup.as_deref().unwrap_or("none"))
        }
        Action::QueueWait { queue } => format!("queue {queue} waits"),
        Action::QueueUnassign { queue } => format!("queue {queue} unassigned"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn shows_nodes_targets_and_the_newest_decisions_first() {
        let decision = |at, action, reason: &str| Decision {
            at_unix_ms: at,
            function: "hello".into(),
            action,
            reason: reason.into(),
        };
        let report = PlacementReport {
            generation: 7,
            published: true,
            placements: BTreeMap::from([("hello".to_string(), vec!["n1".to_string(), "n3".to_string()])]),
            targets: BTreeMap::from([("hello".to_string(), 2)]),
            decisions: vec![
                decision(1_000, Action::Place { node: "n1".into() }, "min replicas 2; site a had none"),
                decision(2_000, Action::Place { node: "n3".into() }, "site b had none\u{1b}[31m"),
            ],
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["FUNCTION", "REPLICAS", "NODES"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["hello", "2", "of", "2", "n1,", "n3"]);
        assert!(lines[4].contains("placed on n3") && lines[4].contains("site b had none"), "{text}");
        assert!(lines[5].contains("placed on n1"), "{text}");
        assert!(!text.contains('\u{1b}'), "control characters from the server are escaped: {text}");
    }

    #[test]
    fn says_when_nothing_is_placed() {
        assert!(render(&PlacementReport::default()).starts_with("no functions placed"));
    }
}
