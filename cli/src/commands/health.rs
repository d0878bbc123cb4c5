//! `wedge health`: ask a health endpoint (`/healthz` or `/readyz` of a node's
//! admin listener or of the control plane) and exit 0 only on a 2xx answer.
//! It exists for container health checks and scripts on hosts that have no
//! curl: the image holds only `wedge`, so `wedge` checks itself.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use wedge_node::units::parse_duration;

/// Arguments of `wedge health` (its help text is on `Command::Health`).
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The endpoint to ask, e.g. http://127.0.0.1:7080/readyz (the
    /// container image sets WEDGE_HEALTH_URL for its HEALTHCHECK).
    #[arg(value_name = "URL", env = "WEDGE_HEALTH_URL", default_value = "http://127.0.0.1:7080/healthz")]
    url: String,

    /// Give up (and fail) after this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,

    /// Print nothing; only the exit code tells.
    #[arg(long, short)]
    quiet: bool,
}

impl HealthArgs {
    /// Asks the endpoint; Ok on a 2xx answer, an error naming the status
    /// and the answer's body otherwise.
    pub fn run(self) -> anyhow::Result<()> {
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            bail!("{:?} is not an http:// or https:// URL", self.url);
        }
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        let (status, body) = match agent.get(&self.url).call() {
            Ok(response) => (response.status(), response.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap_or_default()),
            Err(error) => bail!("{}: {error}", self.url),
        };
        if (200..300).contains(&status) {
            if !self.quiet {
                print!("{body}");
                if !body.ends_with('\n') {
                    println!();
                }
            }
            return Ok(());
        }
        bail!("{} answered {status}: {}", self.url, body.trim())
    }
}
