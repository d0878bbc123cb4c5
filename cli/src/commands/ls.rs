//! `wedge ls`: every deployed function with its active version, routes and
//! artifact, as a table or the API's JSON.

use clap::Args;
use wedge_control::api::FunctionSummary;

use crate::client::Client;
use crate::output::{OutputArgs, Table, print_json, routes_cell, short_sha, utc_time};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl LsArgs {
    /// Lists the functions.
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        let reply = client.list_functions()?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        if reply.value.is_empty() {
            println!("no functions deployed (deploy one with `wedge deploy COMPONENT.wasm`)");
            return Ok(());
        }
        print!("{}", table(&reply.value).render());
        Ok(())
    }
}

/// The `wedge ls` table; the version column reads `2 of 3` after a rollback.
/// A QUEUE column follows when a function handles a job queue.
pub fn table(functions: &[FunctionSummary]) -> Table {
    let queues = functions.iter().any(|function| function.queue.is_some());
    let mut columns = vec!["NAME", "VERSION", "ARTIFACT", "UPDATED (UTC)", "ROUTES"];
    if queues {
        columns.push("QUEUE");
    }
    let mut table = Table::new(&columns);
    for function in functions {
        let version = if function.active_version == function.latest_version {
            function.active_version.to_string()
        } else {
            format!("{} of {}", function.active_version, function.latest_version)
        };
        let mut row = vec![
            function.name.clone(),
            version,
            short_sha(&function.artifact).to_string(),
            utc_time(function.updated_unix_ms),
            routes_cell(&function.routes),
        ];
        if queues {
            row.push(function.queue.clone().unwrap_or_else(|| "-".to_string()));
        }
        table.row(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_row_per_function() {
        let f = |name: &str, active, latest| FunctionSummary {
            name: name.into(),
            active_version: active,
            latest_version: latest,
            routes: vec![format!("/{name}")],
            artifact: "0123456789abcdef".into(),
            updated_unix_ms: 0,
            queue: None,
        };
        let text = table(&[f("hello", 3, 3), f("json-api", 1, 2)]).render();
        assert_eq!(
            text,
            "NAME      VERSION  ARTIFACT      UPDATED (UTC)        ROUTES\n\
             hello     3        0123456789ab  1970-01-01 00:00:00  /hello\n\
             json-api  1 of 2   0123456789ab  1970-01-01 00:00:00  /json-api\n"
        );
    }
}
