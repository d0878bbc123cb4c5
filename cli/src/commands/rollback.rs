//! `wedge rollback`: make an older stored version active again (no rebuild,
//! no upload): the previous one, or `--to N`.

use clap::Args;

use crate::client::{Client, function_name};
use crate::output::{OutputArgs, print_json, short_sha};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The function.
    #[arg(value_name = "FUNCTION", value_parser = function_name)]
    function: String,

    /// The version to make active [default: the newest one older than the
    /// active one]. Any stored version works, newer ones too.
    #[arg(long, value_name = "VERSION")]
    to: Option<u64>,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl RollbackArgs {
    /// Rolls back.
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        let reply = client.rollback(&self.function, self.to)?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        let record = reply.value;
        println!(
            "{} now serves version {} (sha256 {}) routes {}",
            record.function,
            record.version,
            short_sha(&record.artifact),
            record.routes.join(", ")
        );
        Ok(())
    }
}
