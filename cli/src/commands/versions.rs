//! `wedge versions`: every stored version of a function, oldest first, with
//! the active one marked.

use clap::Args;
use wedge_control::api::VersionRecord;

use crate::client::{Client, function_name};
use crate::output::{OutputArgs, Table, human_bytes, print_json, short_sha, utc_time};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge versions`.
#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The function.
    #[arg(value_name = "FUNCTION", value_parser = function_name)]
    function: String,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl VersionsArgs {
    /// Lists the versions.
    pub fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.connection.resolve()?);
        let versions = client.versions(&self.function)?;
        if self.output.json() {
            return print_json(&versions.raw);
        }
        let active = client.function(&self.function)?.value.summary.active_version;
        print!("{}", table(&versions.value, active).render());
        Ok(())
    }
}

/// The `wedge versions` table; `*` marks the active version.
pub fn table(versions: &[VersionRecord], active: u64) -> Table {
    let mut table = Table::new(&["VERSION", "ACTIVE", "ARTIFACT", "SIZE", "DEPLOYED (UTC)", "ROUTES"]);
    for record in versions {
        table.row(vec![
            record.version.to_string(),
            if record.version == active { "*".into() } else { String::new() },
            short_sha(&record.artifact).to_string(),
            human_bytes(record.artifact_bytes),
            utc_time(record.created_unix_ms),
            record.routes.join(", "),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_the_active_version() {
        let v = |version| crate::test_support::version_record("hello", version);
        assert_eq!(
            table(&[v(1), v(2)], 1).render(),
            "VERSION  ACTIVE  ARTIFACT      SIZE   DEPLOYED (UTC)       ROUTES\n\
             1        *       0123456789ab  100 B  1970-01-01 00:00:00  /hello\n\
             2                0123456789ab  100 B  1970-01-01 00:00:00  /hello\n"
        );
    }
}
