//! Where the control plane is and which token to show it: the connection
//! flags every client verb shares, the profile file in the user's config
//! directory, and the precedence between them.
//!
//! Precedence, highest first: `--control` / `--token` flags, then the
//! `WEDGE_CONTROL` / `WEDGE_TOKEN` environment (both resolved by clap), then
//! the selected profile of `$XDG_CONFIG_HOME/wedge/config.toml` (else
//! `~/.config/wedge/config.toml`), then the default control URL
//! [`DEFAULT_CONTROL`]. There is no default token.
//!
//! ```toml
//! [profile.default]
//! control = "http://127.0.0.1:7070"
//! token = "s3cret"
//!
//! [profile.staging]
//! control = "http://10.0.0.5:7070"
//! token = "other"
//! ```
//!
//! The profile is picked with `--profile NAME` (or `WEDGE_PROFILE`), else
//! `default`. A missing file is fine; unknown keys are errors; naming a
//! profile the file does not have is an error (a missing `default` is not).
//! The file is read here only through paths passed in, so tests never touch
//! the real home; [`ConnectionArgs::resolve`] is the one place that looks at
//! `XDG_CONFIG_HOME` / `HOME`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

/// The control URL used when no flag, environment or profile gives one.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:7070";

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";

/// Largest profile file read (it holds a few lines).
const PROFILE_FILE_BYTES_MAX: u64 = 1 << 20;

/// Largest token file read (a token is at most 1024 characters).
const TOKEN_FILE_BYTES_MAX: u64 = 4 << 10;

/// Connection flags shared by every verb that talks to the control plane.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectionArgs {
    /// URL of the control plane [default: from the profile, else http://127.0.0.1:7070].
    #[arg(long, env = "WEDGE_CONTROL", value_name = "URL")]
    pub control: Option<String>,

    /// Bearer token for the control plane [default: from the profile].
    #[arg(long, env = "WEDGE_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Profile of ~/.config/wedge/config.toml to take the URL and token from
    /// [default: default].
    #[arg(long, env = "WEDGE_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
}

/// Where and how to reach the control plane, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Base URL without a trailing `/`, e.g. `http://127.0.0.1:7070`.
    pub control: String,
    /// The bearer token.
    pub token: String,
}

/// The profile file: `[profile.NAME]` tables and nothing else.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// Profiles by name.
    #[serde(default)]
    pub profile: BTreeMap<String, Profile>,
}

/// One profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// URL of the control plane.
    pub control: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
}

/// A profile file as read: its contents and whether others can read it.
#[derive(Debug, Clone, Default)]
pub struct LoadedProfiles {
    /// The path it was read from (for messages).
    pub path: PathBuf,
    /// What it holds; empty when the file does not exist.
    pub file: ProfileFile,
    /// True when the file exists and group or others may read it.
    pub readable_by_others: bool,
}

/// The profile file's path: `$XDG_CONFIG_HOME/wedge/config.toml`, else
/// `$HOME/.config/wedge/config.toml`; `None` when neither is set.
pub fn profile_path(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = crate::daemon::xdg_dir(xdg_config_home, home, ".config")?;
    Some(base.join("wedge").join("config.toml"))
}

impl LoadedProfiles {
    /// Reads `path`; a missing file gives no profiles.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { path: path.to_path_buf(), ..Self::default() });
            }
            Err(error) => return Err(error).with_context(|| format!("{}: cannot read", path.display())),
        };
        let metadata = file.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
        let mut text = String::new();
        file.take(PROFILE_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let parsed = Self::parse(path, &text)?;
        Ok(Self { readable_by_others: readable_by_others(&metadata), ..parsed })
    }

    /// Parses the text of a profile file found at `path`.
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let file: ProfileFile = toml::from_str(text).map_err(|error| {
            anyhow::anyhow!("{}: invalid: {}", path.display(), crate::output::one_line(&error.to_string()))
        })?;
        Ok(Self { path: path.to_path_buf(), file, readable_by_others: false })
    }

    /// The one-line warning to print, if the file holds a token and others
    /// may read it.
    pub fn warning(&self) -> Option<String> {
        let holds_token = self.file.profile.values().any(|p| p.token.is_some());
        (holds_token && self.readable_by_others).then(|| {
            format!(
                "warning: {} holds a token and is readable by other users; run `chmod 600 {}`",
                self.path.display(),
                self.path.display()
            )
        })
    }
}

/// Reads a token from a file given with `--token-file` (`wedge control`
/// keeps its tokens in `DIR/token` and `DIR/node-token`), so the token
/// never appears on a command line (`/proc/PID/cmdline`, `ps`, shell
/// history). Surrounding whitespace is dropped; what is left must be 1 to
/// 1024 visible ASCII characters. Warns on stderr when other users may read
/// the file. No message includes the file's contents.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("token file {}: cannot read", path.display()))?;
    let metadata = file.metadata().with_context(|| format!("token file {}: cannot read", path.display()))?;
    let mut bytes = Vec::new();
    file.take(TOKEN_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("token file {}: cannot read", path.display()))?;
    if bytes.len() as u64 > TOKEN_FILE_BYTES_MAX {
        bail!("token file {}: larger than {TOKEN_FILE_BYTES_MAX} bytes; it should hold only a token", path.display());
    }
    let token = bytes.trim_ascii();
    if token.is_empty() {
        bail!("token file {}: empty", path.display());
    }
    if token.len() > 1024 || !token.iter().all(u8::is_ascii_graphic) {
        bail!("token file {}: not a token (1 to 1024 visible ASCII characters, no spaces)", path.display());
    }
    if readable_by_others(&metadata) {
        eprintln!(
            "warning: token file {} is readable by other users; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(String::from_utf8_lossy(token).into_owned())
}

#[cfg(unix)]
fn readable_by_others(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o044 != 0
}

#[cfg(not(unix))]
fn readable_by_others(_metadata: &std::fs::Metadata) -> bool {
    false
}

/// Combines the flags (already merged with the environment by clap) with a
/// profile file. `profiles` is `None` when there is no config directory.
pub fn resolve(args: &ConnectionArgs, profiles: Option<&LoadedProfiles>) -> anyhow::Result<Connection> {
    let name = args.profile.as_deref().unwrap_or(DEFAULT_PROFILE);
    let profile = match profiles.and_then(|p| p.file.profile.get(name)) {
        Some(profile) => profile.clone(),
        None if args.profile.is_some() => match profiles {
            Some(p) => bail!("no profile {name:?} in {} (add a [profile.{name}] table)", p.path.display()),
            None => bail!("no profile {name:?}: there is no config directory (set HOME or XDG_CONFIG_HOME)"),
        },
        None => Profile::default(),
    };
    let control = args.control.clone().or(profile.control).unwrap_or_else(|| DEFAULT_CONTROL.to_string());
    let control = normalize_url(&control)?;
    let Some(token) = args.token.clone().or(profile.token).filter(|t| !t.is_empty()) else {
        let file = profiles.map_or_else(|| "~/.config/wedge/config.toml".to_string(), |p| p.path.display().to_string());
        bail!(
            "no token for the control plane: pass --token, set WEDGE_TOKEN, or put token = \"...\" under [profile.{name}] in {file}"
        );
    };
    Ok(Connection { control, token })
}

/// Checks a control URL and drops trailing slashes.
fn normalize_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    if let Some(rest) = trimmed.strip_prefix("http://") {
        if rest.is_empty() || rest.contains(['?', '#', ' ']) {
            bail!("control URL {url:?} is not like http://HOST:PORT");
        }
        return Ok(trimmed.to_string());
    }
    if trimmed.starts_with("https://") {
        bail!(
            "control URL {url:?}: this wedge speaks plain http only; reach a TLS control plane through a local proxy"
        );
    }
    bail!("control URL {url:?} is not like http://HOST:PORT");
}

impl ConnectionArgs {
    /// Resolves the connection, reading the profile file from the user's
    /// config directory. Prints the permissions warning, if any, to stderr.
    pub fn resolve(&self) -> anyhow::Result<Connection> {
        // The one place that reads the environment for the profile path.
        let path = profile_path(std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"));
        let profiles = path.as_deref().map(LoadedProfiles::load).transpose()?;
        if let Some(warning) = profiles.as_ref().and_then(LoadedProfiles::warning) {
            eprintln!("{warning}");
        }
        resolve(self, profiles.as_ref())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(control: Option<&str>, token: Option<&str>, profile: Option<&str>) -> ConnectionArgs {
        ConnectionArgs {
            control: control.map(Into::into),
            token: token.map(Into::into),
            profile: profile.map(Into::into),
        }
    }

    fn profiles(text: &str) -> LoadedProfiles {
        LoadedProfiles::parse(Path::new("/cfg/wedge/config.toml"), text).unwrap()
    }

    const TWO: &str = r#"
        [profile.default]
        control = "http://default:7070/"
        token = "t-default"
        [profile.staging]
        control = "http://staging:7070"
        token = "t-staging"
    "#;

    #[test]
    fn path_prefers_xdg_then_home() {
        let p = profile_path(Some("/x".into()), Some("/h".into())).unwrap();
        assert_eq!(p, Path::new("/x/wedge/config.toml"));
        let p = profile_path(None, Some("/h".into())).unwrap();
        assert_eq!(p, Path::new("/h/.config/wedge/config.toml"));
        // The XDG spec says a relative XDG_CONFIG_HOME is ignored.
        let p = profile_path(Some("rel".into()), Some("/h".into())).unwrap();
        assert_eq!(p, Path::new("/h/.config/wedge/config.toml"));
        assert!(profile_path(None, None).is_none());
        assert!(profile_path(Some("".into()), Some("".into())).is_none());
    }

    #[test]
    fn flags_beat_profile_and_profile_beats_default() {
        let file = profiles(TWO);
        let c = resolve(&args(Some("http://flag:1"), Some("t-flag"), None), Some(&file)).unwrap();
        assert_eq!(c, Connection { control: "http://flag:1".into(), token: "t-flag".into() });
        let c = resolve(&args(None, None, None), Some(&file)).unwrap();
        assert_eq!(c, Connection { control: "http://default:7070".into(), token: "t-default".into() });
        let c = resolve(&args(None, Some("t-flag"), Some("staging")), Some(&file)).unwrap();
        assert_eq!(c, Connection { control: "http://staging:7070".into(), token: "t-flag".into() });
    }

    #[test]
    fn no_file_means_default_url_and_a_token_is_required() {
        let c = resolve(&args(None, Some("t"), None), None).unwrap();
        assert_eq!(c.control, DEFAULT_CONTROL);
        let empty = profiles("");
        let err = resolve(&args(None, None, None), Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("--token") && err.contains("WEDGE_TOKEN") && err.contains("[profile.default]"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_named_profile_must_exist_but_default_need_not() {
        let file = profiles(TWO);
        let err = resolve(&args(None, Some("t"), Some("prod")), Some(&file)).unwrap_err().to_string();
        assert!(err.contains("no profile \"prod\""), "{err}");
        let only_staging = profiles("[profile.staging]\ntoken = \"x\"\n");
        assert!(resolve(&args(None, Some("t"), None), Some(&only_staging)).is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let path = Path::new("/cfg/wedge/config.toml");
        let err = LoadedProfiles::parse(path, "[profile.default]\ntokn = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `tokn`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(LoadedProfiles::parse(path, "control = \"http://x\"\n").is_err());
    }

    #[test]
    fn urls_are_checked_and_trimmed() {
        assert_eq!(normalize_url("http://h:1/").unwrap(), "http://h:1");
        assert!(normalize_url("h:1").is_err());
        assert!(normalize_url("https://h:1").unwrap_err().to_string().contains("plain http"));
        assert!(normalize_url("http://").is_err());
    }

    #[test]
    fn token_files_hold_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret-token");
        for (contents, why) in [
            ("\n \n".to_string(), "empty"),
            ("two words\n".to_string(), "not a token"),
            ("x".repeat(1025), "not a token"),
            ("x".repeat(5000), "larger than"),
        ] {
            std::fs::write(&path, &contents).unwrap();
            let error = read_token_file(&path).unwrap_err().to_string();
            assert!(error.contains(why) && error.contains("token file"), "{error}");
            // The contents are never echoed: a wrong file may hold a secret.
            assert!(!error.contains("words") && !error.contains("xxx"), "{error}");
        }
        let missing = read_token_file(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{missing:#}").contains("cannot read"), "{missing:#}");
    }

    #[test]
    fn missing_file_is_fine_and_loose_permissions_warn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let loaded = LoadedProfiles::load(&path).unwrap();
        assert!(loaded.file.profile.is_empty() && loaded.warning().is_none());

        std::fs::write(&path, "[profile.default]\ntoken = \"t\"\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let warning = LoadedProfiles::load(&path).unwrap().warning().unwrap();
            assert!(warning.contains("chmod 600"), "{warning}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(LoadedProfiles::load(&path).unwrap().warning().is_none());
            // No token, no secret to warn about.
            std::fs::write(&path, "[profile.default]\ncontrol = \"http://x:1\"\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(LoadedProfiles::load(&path).unwrap().warning().is_none());
        }
    }
}
