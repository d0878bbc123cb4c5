//! `wedge rm`: remove a function and all its versions; its routes stop
//! being served. Asks first when stdin is a terminal; anywhere else it
//! needs `--yes`, so a script cannot remove by accident (nor hang on a
//! prompt nobody sees).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context, bail};
use clap::Args;

use crate::client::{Client, function_name};
use crate::output::{OutputArgs, plural, print_json};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The function.
    #[arg(value_name = "FUNCTION", value_parser = function_name)]
    function: String,

    /// Remove without asking (needed when stdin is not a terminal).
    #[arg(short = 'y', long)]
    yes: bool,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl RmArgs {
    /// Removes the function, once confirmed.
    pub fn run(self) -> anyhow::Result<()> {
        if !self.yes && !std::io::stdin().is_terminal() {
            bail!("not removing {}: stdin is not a terminal, so pass --yes to confirm", self.function);
        }
        let client = Client::new(&self.connection.resolve()?);
        if !self.yes {
            let versions = client.versions(&self.function)?.value.len();
            let question = format!(
                "remove function {} and its {versions} {}? [y/N] ",
                self.function,
                plural(versions as u64, "version")
            );
            if !confirm(&question)? {
                bail!("nothing removed");
            }
        }
        let reply = client.remove(&self.function)?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        let removed = reply.value;
        println!("removed {} and its {} {}", removed.function, removed.versions, plural(removed.versions, "version"));
        Ok(())
    }
}

/// Asks on stderr; true only for `y` or `yes`.
pub(super) fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush().context("writing the question")?;
    let mut answer = String::new();
    std::io::stdin().lock().take(1024).read_line(&mut answer).context("reading the answer")?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_is_yes() {
        for yes in ["y\n", "Y", " yes \n", "YES"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y y"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
