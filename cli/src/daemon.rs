//! What the long-running verbs (`serve`, `node`, `control`) share: the
//! multi-threaded async runtime they run on, graceful shutdown, and where
//! they keep their files by default (XDG base directories; the client
//! verbs find their profile file with the same [`xdg_dir`]).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;

/// The async runtime of a long-running verb; its worker threads are named
/// `thread_name` (seen in `top -H` and in panics).
pub fn runtime(thread_name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .context("starting the async runtime")
}

/// Installs the SIGTERM and Ctrl-C handlers now; the returned future
/// completes when either arrives. Call it before announcing readiness, so a
/// supervisor that stops the process right away still gets a graceful drain.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

/// Where a long-running verb keeps its data by default:
/// `$XDG_DATA_HOME/wedge/LEAF`, else `~/.local/share/wedge/LEAF`; `None`
/// when neither gives an absolute directory.
pub fn default_data_dir(leaf: &str) -> Option<PathBuf> {
    let dir = xdg_dir(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"), ".local/share")?;
    Some(dir.join("wedge").join(leaf))
}

/// Where `wedge serve` keeps compiled components by default:
/// `$XDG_CACHE_HOME/wedge/LEAF`, else `~/.cache/wedge/LEAF`.
pub fn default_cache_dir(leaf: &str) -> Option<PathBuf> {
    let dir = xdg_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"), ".cache")?;
    Some(dir.join("wedge").join(leaf))
}

/// An XDG base directory: `xdg` (the value of `XDG_*_HOME`) when it is an
/// absolute path, else `home/home_relative`. The XDG spec says a relative
/// (or empty) value is ignored; a relative or empty `HOME` is ignored too,
/// so a default never lands in whatever the working directory happens to
/// be.
pub fn xdg_dir(xdg: Option<OsString>, home: Option<OsString>, home_relative: &str) -> Option<PathBuf> {
    let absolute = |value: OsString| Some(PathBuf::from(value)).filter(|path| path.is_absolute());
    xdg.and_then(absolute).or_else(|| Some(home.and_then(absolute)?.join(home_relative)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;

    #[test]
    fn xdg_dirs_ignore_empty_and_relative_values() {
        let dir = |xdg: Option<&str>, home: Option<&str>| xdg_dir(xdg.map(Into::into), home.map(Into::into), ".x/y");
        assert_eq!(dir(Some("/xdg"), Some("/home/u")).unwrap(), Path::new("/xdg"));
        assert_eq!(dir(None, Some("/home/u")).unwrap(), Path::new("/home/u/.x/y"));
        assert_eq!(dir(Some(""), Some("/home/u")).unwrap(), Path::new("/home/u/.x/y"));
        assert_eq!(dir(Some("rel"), Some("/home/u")).unwrap(), Path::new("/home/u/.x/y"));
        assert_eq!(dir(Some(""), Some("")), None);
        assert_eq!(dir(None, Some("rel")), None);
        assert_eq!(dir(None, None), None);
    }
}
