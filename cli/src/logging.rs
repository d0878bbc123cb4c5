//! Log output of the binary: human-readable by default, JSON lines with
//! `--log-format json`; the filter comes from `--log` / `WEDGE_LOG`.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Logging flags shared by every verb.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Which logs to show, as a tracing filter (`info`, `debug`,
    /// `wedge_host=debug,info`, ...).
    #[arg(long = "log", env = "WEDGE_LOG", default_value = "info", global = true)]
    pub filter: String,
    /// Log line format.
    #[arg(long, env = "WEDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber; logs go to stderr so stdout stays for
/// results.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|error| {
        eprintln!("warning: bad log filter {:?} ({error}); using \"info\"", args.filter);
        EnvFilter::new("info")
    });
    // Colours only on a terminal (and not under NO_COLOR): a log file or a
    // pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
