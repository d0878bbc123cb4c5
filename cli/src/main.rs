//! `wedge`: one binary for every verb. `main` only parses, sets up logging,
//! runs the verb and turns an error into one clear line and exit code 1.

mod client;
mod commands;
mod daemon;
mod logging;
mod manifest;
mod output;
mod profile;
#[cfg(test)]
mod test_support;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = commands::Cli::parse();
    logging::init(&cli.log);
    match cli.command.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
