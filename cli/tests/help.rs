//! Every verb's `--help` teaches: it runs, exits 0 and shows examples.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wedge")).args(args).output().unwrap();
    assert!(output.status.success(), "{args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn top_level_help_lists_the_verbs() {
    let text = help(&["--help"]);
    assert!(text.contains("serve"), "{text}");
    assert!(text.contains("wedge serve hello.wasm"), "{text}");
}

#[test]
fn serve_help_has_examples_and_every_limit() {
    let text = help(&["serve", "--help"]);
    for needle in [
        "Examples:",
        "--route",
        "--timeout",
        "--memory",
        "--max-body",
        "--max-concurrency",
        "--allow-outbound",
        "--config",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

#[test]
fn queue_help_and_each_queue_verb_have_examples() {
    let text = help(&["queue", "--help"]);
    for verb in ["ls", "peek", "retry-dead", "purge"] {
        assert!(text.contains(&format!("wedge queue {verb}")), "no example of {verb}:\n{text}");
        let verb_help = help(&["queue", verb, "--help"]);
        assert!(verb_help.contains("Examples:"), "queue {verb} --help:\n{verb_help}");
    }
    assert!(help(&["queue", "purge", "--help"]).contains("--yes"));
}
