//! Where the control plane is and which token to show it: the connection
//! flags every client verb shares, their environment variables, the
//! profile file in the user's config directory, and the rule that combines
//! them.
//!
//! A token is a credential for one control plane, so the URL and the token
//! come as a pair from one place wherever they can, and a token is never
//! sent to a URL that another place pairs with a different token. The rule,
//! in order:
//!
//! 1. Flags win, each on its own: `--control URL`, and `--token TOKEN` or
//!    `--token-file PATH`. What is typed for this command is an explicit
//!    choice, even when it completes a pair from elsewhere
//!    (`--control URL` with a profile's token).
//! 2. `--profile NAME` on the command line: the rest of the connection comes
//!    from that profile (a profile without `control` means
//!    [`DEFAULT_CONTROL`]); `WEDGE_CONTROL` and `WEDGE_TOKEN` are not read.
//!    So `WEDGE_TOKEN=<prod> wedge ls --profile staging` sends staging's
//!    token to staging.
//! 3. Otherwise the environment (`WEDGE_CONTROL`, `WEDGE_TOKEN`), then the
//!    profile named by `WEDGE_PROFILE` (else `default`), then
//!    [`DEFAULT_CONTROL`] for the URL, each half from the first that has
//!    it. Halves from the environment and the profile are combined only when
//!    they do not contradict each other: `WEDGE_TOKEN` goes to a profile's
//!    `control` only if that profile has no token of its own (or the same
//!    one), and a profile's token goes to `WEDGE_CONTROL` only if that
//!    profile has no `control` of its own (or the same one). Anything else is
//!    an error that names both places, rather than a guess.
//!
//! There is no default token. The profile file is
//! `$XDG_CONFIG_HOME/wedge/config.toml` (else `~/.config/wedge/config.toml`):
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
//! A missing file is fine; unknown keys are errors; naming a profile the
//! file does not have (`--profile` or `WEDGE_PROFILE`) is an error (a
//! missing `default` is not). [`resolve`] is pure: the flags, the
//! environment and the file are passed in, so tests never touch the real
//! home or environment; [`ConnectionArgs::resolve`] is the one place that
//! reads `WEDGE_*`, `XDG_CONFIG_HOME` and `HOME` and the token file.

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
/// Their environment variables are read by [`ConnectionArgs::resolve`], not
/// by clap, so the rule of the module doc can tell a flag from the
/// environment.
#[derive(Clone, Default, Args)]
pub struct ConnectionArgs {
    /// URL of the control plane [env: WEDGE_CONTROL] [default: from the
    /// profile, else http://127.0.0.1:7070].
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,

    /// Bearer token for the control plane [env: WEDGE_TOKEN] [default: from
    /// the profile]. Prefer --token-file: a flag shows in the process list.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,

    /// Read the bearer token from this file (e.g. a copy of the control
    /// plane's DIR/token).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Profile of ~/.config/wedge/config.toml to take the URL and token from
    /// [env: WEDGE_PROFILE] [default: default].
    ///
    /// Where the connection comes from, first match wins: --control and
    /// --token/--token-file, each on its own; then, with --profile, that
    /// profile (WEDGE_CONTROL and WEDGE_TOKEN are then not read); else
    /// WEDGE_CONTROL and WEDGE_TOKEN, then the profile (WEDGE_PROFILE, else
    /// default), then http://127.0.0.1:7070. A token from the environment is
    /// never sent to the URL of a profile that has another token, nor a
    /// profile's token to a WEDGE_CONTROL other than the profile's own URL:
    /// that is an error instead.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}

/// Where and how to reach the control plane, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// Base URL without a trailing `/`, e.g. `http://127.0.0.1:7070`.
    pub control: String,
    /// The bearer token.
    pub token: String,
}

/// Everything a connection may come from besides the profile file, each
/// value non-empty when present.
#[derive(Clone, Default)]
pub struct Inputs {
    /// `--control`.
    pub control_flag: Option<String>,
    /// `--token`, or the contents of `--token-file`.
    pub token_flag: Option<String>,
    /// `--profile`.
    pub profile_flag: Option<String>,
    /// `WEDGE_CONTROL`.
    pub control_env: Option<String>,
    /// `WEDGE_TOKEN`.
    pub token_env: Option<String>,
    /// `WEDGE_PROFILE`.
    pub profile_env: Option<String>,
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
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
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

/// Stands in for a secret in `Debug` output: every type here that holds a
/// token writes its `Debug` by hand with this, so a token never reaches a
/// log line, a panic message or an error's debug print.
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Some(<redacted>)` for a secret that is there, `None` for one that is not.
pub fn redacted<T>(secret: &Option<T>) -> Option<Redacted> {
    secret.as_ref().map(|_| Redacted)
}

impl std::fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("control", &self.control)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("profile", &self.profile)
            .finish()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("control", &self.control).field("token", &Redacted).finish()
    }
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("control_flag", &self.control_flag)
            .field("token_flag", &redacted(&self.token_flag))
            .field("profile_flag", &self.profile_flag)
            .field("control_env", &self.control_env)
            .field("token_env", &redacted(&self.token_env))
            .field("profile_env", &self.profile_env)
            .finish()
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile").field("control", &self.control).field("token", &redacted(&self.token)).finish()
    }
}

/// Where one half of a connection came from (for the rule and for
/// messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Flag,
    Env,
    Profile,
    Default,
}

/// Applies the rule of the module doc to `inputs` and the profile file
/// (`None` when there is no config directory).
pub fn resolve(inputs: &Inputs, profiles: Option<&LoadedProfiles>) -> anyhow::Result<Connection> {
    let selected = inputs.profile_flag.as_deref().or(inputs.profile_env.as_deref());
    let name = selected.unwrap_or(DEFAULT_PROFILE);
    let profile = match profiles.and_then(|p| p.file.profile.get(name)) {
        Some(profile) => Profile {
            control: profile.control.clone().filter(|c| !c.is_empty()),
            token: profile.token.clone().filter(|t| !t.is_empty()),
        },
        None if selected.is_some() => match profiles {
            Some(p) => bail!("no profile {name:?} in {} (add a [profile.{name}] table)", p.path.display()),
            None => bail!("no profile {name:?}: there is no config directory (set HOME or XDG_CONFIG_HOME)"),
        },
        None => Profile::default(),
    };
    let file = profiles.map_or_else(|| "~/.config/wedge/config.toml".to_string(), |p| p.path.display().to_string());
    let profile_place = format!("[profile.{name}] of {file}");
    // With --profile, the environment is not a source at all.
    let env = |value: &Option<String>| if inputs.profile_flag.is_some() { None } else { value.clone() };
    let (control_env, token_env) = (env(&inputs.control_env), env(&inputs.token_env));

    let (token, token_origin) = match (&inputs.token_flag, &token_env, &profile.token) {
        (Some(token), _, _) => (token.clone(), Origin::Flag),
        (None, Some(token), _) => (token.clone(), Origin::Env),
        (None, None, Some(token)) => (token.clone(), Origin::Profile),
        (None, None, None) if inputs.profile_flag.is_some() => bail!(
            "no token for the control plane: {profile_place} has none; pass --token or --token-file, or put \
             token = \"...\" there (WEDGE_TOKEN is not read when --profile is given)"
        ),
        (None, None, None) => bail!(
            "no token for the control plane: pass --token or --token-file, set WEDGE_TOKEN, or put \
             token = \"...\" under [profile.{name}] in {file}"
        ),
    };
    let (control, control_origin) = match (&inputs.control_flag, &control_env, &profile.control) {
        (Some(url), _, _) => (normalize_url(url)?, Origin::Flag),
        (None, Some(url), _) => (normalize_url(url)?, Origin::Env),
        (None, None, Some(url)) => (normalize_url(url)?, Origin::Profile),
        (None, None, None) => (DEFAULT_CONTROL.to_string(), Origin::Default),
    };

    // Halves from the environment and the profile must not contradict:
    // each place's other half, if it has one, must be the one chosen.
    let mixed = control_origin != token_origin && control_origin != Origin::Flag && token_origin != Origin::Flag;
    if mixed {
        let profile_control = profile.control.as_deref().map(normalize_url).transpose()?;
        match (token_origin, control_origin) {
            (Origin::Env, Origin::Profile) if profile.token.as_ref().is_some_and(|t| *t != token) => bail!(
                "not sending the token in WEDGE_TOKEN to {control}: that URL comes from {profile_place}, which has a \
                 token of its own; set WEDGE_CONTROL too, or pass --profile {name} to use that profile, or \
                 --control/--token"
            ),
            (Origin::Profile, Origin::Env) if profile_control.as_ref().is_some_and(|url| *url != control) => bail!(
                "not sending the token of {profile_place} to {control} (WEDGE_CONTROL): that profile is for {}; \
                 set WEDGE_TOKEN too, or pass --profile {name} to use that profile, or --control/--token",
                profile_control.unwrap_or_default()
            ),
            _ => {}
        }
    }
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
    /// Resolves the connection: reads the token file, the `WEDGE_*`
    /// environment and the profile file from the user's config directory.
    /// Prints the permissions warnings, if any, to stderr.
    pub fn resolve(&self) -> anyhow::Result<Connection> {
        // The one place that reads the environment for the connection.
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let path = profile_path(std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"));
        let profiles = path.as_deref().map(LoadedProfiles::load).transpose()?;
        if let Some(warning) = profiles.as_ref().and_then(LoadedProfiles::warning) {
            eprintln!("{warning}");
        }
        let token_flag = match &self.token_file {
            Some(path) => Some(read_token_file(path)?),
            None => self.token.clone(),
        };
        let inputs = Inputs {
            control_flag: self.control.clone().filter(|c| !c.is_empty()),
            token_flag: token_flag.filter(|t| !t.is_empty()),
            profile_flag: self.profile.clone().filter(|p| !p.is_empty()),
            control_env: env("WEDGE_CONTROL"),
            token_env: env("WEDGE_TOKEN"),
            profile_env: env("WEDGE_PROFILE"),
        };
        resolve(&inputs, profiles.as_ref())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn some(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    fn profiles(text: &str) -> LoadedProfiles {
        LoadedProfiles::parse(Path::new("/cfg/wedge/config.toml"), text).unwrap()
    }

    const PROFILES: &str = r#"
        [profile.default]
        control = "http://default:7070/"
        token = "t-default"
        [profile.staging]
        control = "http://staging:7070"
        token = "t-staging"
        [profile.url-only]
        control = "http://url-only:7070"
        [profile.token-only]
        token = "t-token-only"
    "#;

    /// Every token the cases use: none may appear in an error message.
    const TOKENS: [&str; 6] = ["t-default", "t-staging", "t-token-only", "t-flag", "t-env", "t-prod"];

    fn ok(inputs: Inputs) -> (String, String) {
        let file = profiles(PROFILES);
        let c = resolve(&inputs, Some(&file)).unwrap_or_else(|e| panic!("{inputs:?}: {e}"));
        (c.control, c.token)
    }

    fn refused(inputs: Inputs) -> String {
        let file = profiles(PROFILES);
        let error = resolve(&inputs, Some(&file)).map(|c| c.control).expect_err("refused").to_string();
        assert!(!error.contains('\n'), "{error}");
        for token in TOKENS {
            assert!(!error.contains(token), "an error shows a token: {error}");
        }
        error
    }

    fn pair(control: &str, token: &str) -> (String, String) {
        (control.to_string(), token.to_string())
    }

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
    fn flags_win_each_on_its_own() {
        let both = Inputs {
            control_flag: some("http://flag:1"),
            token_flag: some("t-flag"),
            control_env: some("http://env:1"),
            token_env: some("t-env"),
            profile_flag: some("staging"),
            ..Inputs::default()
        };
        assert_eq!(ok(both), pair("http://flag:1", "t-flag"));
        // Typed on the command line, one flag completes a pair from elsewhere.
        let token = Inputs { token_flag: some("t-flag"), profile_flag: some("staging"), ..Inputs::default() };
        assert_eq!(ok(token), pair("http://staging:7070", "t-flag"));
        let control = Inputs { control_flag: some("http://flag:1"), ..Inputs::default() };
        assert_eq!(ok(control), pair("http://flag:1", "t-default"));
        let token = Inputs { token_flag: some("t-flag"), control_env: some("http://env:1"), ..Inputs::default() };
        assert_eq!(ok(token), pair("http://env:1", "t-flag"));
        let control = Inputs { control_flag: some("http://flag:1"), token_env: some("t-env"), ..Inputs::default() };
        assert_eq!(ok(control), pair("http://flag:1", "t-env"));
    }

    #[test]
    fn an_explicit_profile_beats_the_environment_for_both_halves() {
        // WEDGE_TOKEN=<prod> wedge ls --profile staging: staging's pair.
        let prod_env = Inputs {
            control_env: some("http://prod:7070"),
            token_env: some("t-prod"),
            profile_flag: some("staging"),
            ..Inputs::default()
        };
        assert_eq!(ok(prod_env), pair("http://staging:7070", "t-staging"));
        let token_env = Inputs { token_env: some("t-prod"), profile_flag: some("staging"), ..Inputs::default() };
        assert_eq!(ok(token_env), pair("http://staging:7070", "t-staging"));
        // --profile beats WEDGE_PROFILE.
        let named = Inputs { profile_flag: some("staging"), profile_env: some("default"), ..Inputs::default() };
        assert_eq!(ok(named), pair("http://staging:7070", "t-staging"));
        // A profile without a token does not borrow WEDGE_TOKEN.
        let no_token = Inputs { token_env: some("t-env"), profile_flag: some("url-only"), ..Inputs::default() };
        let error = refused(no_token);
        assert!(error.contains("[profile.url-only]") && error.contains("WEDGE_TOKEN is not read"), "{error}");
        // A profile without a URL means the default URL, not WEDGE_CONTROL.
        let no_url =
            Inputs { control_env: some("http://env:1"), profile_flag: some("token-only"), ..Inputs::default() };
        assert_eq!(ok(no_url), pair(DEFAULT_CONTROL, "t-token-only"));
    }

    #[test]
    fn without_an_explicit_profile_the_environment_comes_before_the_profile() {
        let env_pair = Inputs { control_env: some("http://env:1/"), token_env: some("t-env"), ..Inputs::default() };
        assert_eq!(ok(env_pair), pair("http://env:1", "t-env"));
        assert_eq!(ok(Inputs::default()), pair("http://default:7070", "t-default"));
        let by_env = Inputs { profile_env: some("staging"), ..Inputs::default() };
        assert_eq!(ok(by_env), pair("http://staging:7070", "t-staging"));
        // A complete pair in the environment needs nothing of the profile.
        let env_pair = Inputs {
            control_env: some("http://env:1"),
            token_env: some("t-env"),
            profile_env: some("staging"),
            ..Inputs::default()
        };
        assert_eq!(ok(env_pair), pair("http://env:1", "t-env"));
    }

    #[test]
    fn halves_that_do_not_contradict_combine() {
        // A profile with only a URL takes WEDGE_TOKEN; with only a token, WEDGE_CONTROL.
        let url_only = Inputs { token_env: some("t-env"), profile_env: some("url-only"), ..Inputs::default() };
        assert_eq!(ok(url_only), pair("http://url-only:7070", "t-env"));
        let token_only =
            Inputs { control_env: some("http://env:1"), profile_env: some("token-only"), ..Inputs::default() };
        assert_eq!(ok(token_only), pair("http://env:1", "t-token-only"));
        // The same other half is no contradiction (URLs compared normalized).
        let same_token = Inputs { token_env: some("t-default"), ..Inputs::default() };
        assert_eq!(ok(same_token), pair("http://default:7070", "t-default"));
        let same_url = Inputs { control_env: some("http://default:7070"), ..Inputs::default() };
        assert_eq!(ok(same_url), pair("http://default:7070", "t-default"));
        // No file: WEDGE_TOKEN goes to the default URL.
        let c = resolve(&Inputs { token_env: some("t-env"), ..Inputs::default() }, None).unwrap();
        assert_eq!((c.control, c.token), pair(DEFAULT_CONTROL, "t-env"));
    }

    #[test]
    fn halves_that_contradict_are_refused() {
        // WEDGE_TOKEN would go to the URL of a profile that has its own token.
        let error = refused(Inputs { token_env: some("t-prod"), ..Inputs::default() });
        assert!(error.contains("WEDGE_TOKEN") && error.contains("http://default:7070"), "{error}");
        assert!(error.contains("[profile.default] of /cfg/wedge/config.toml"), "{error}");
        let error = refused(Inputs { token_env: some("t-prod"), profile_env: some("staging"), ..Inputs::default() });
        assert!(error.contains("[profile.staging]") && error.contains("--profile staging"), "{error}");
        // A profile's token would go to WEDGE_CONTROL, not the profile's URL.
        let error = refused(Inputs { control_env: some("http://prod:7070"), ..Inputs::default() });
        assert!(error.contains("WEDGE_CONTROL") && error.contains("http://prod:7070"), "{error}");
        assert!(error.contains("http://default:7070"), "{error}");
    }

    #[test]
    fn no_file_means_default_url_and_a_token_is_required() {
        let c = resolve(&Inputs { token_flag: some("t"), ..Inputs::default() }, None).unwrap();
        assert_eq!(c.control, DEFAULT_CONTROL);
        let empty = profiles("");
        let err = resolve(&Inputs::default(), Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("--token") && err.contains("WEDGE_TOKEN") && err.contains("[profile.default]"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_named_profile_must_exist_but_default_need_not() {
        let file = profiles(PROFILES);
        let err =
            resolve(&Inputs { token_flag: some("t"), profile_flag: some("prod"), ..Inputs::default() }, Some(&file))
                .unwrap_err()
                .to_string();
        assert!(err.contains("no profile \"prod\""), "{err}");
        let err =
            resolve(&Inputs { token_env: some("t"), profile_env: some("prod"), ..Inputs::default() }, Some(&file))
                .unwrap_err()
                .to_string();
        assert!(err.contains("no profile \"prod\""), "{err}");
        let only_staging = profiles("[profile.staging]\ntoken = \"x\"\n");
        assert!(resolve(&Inputs { token_flag: some("t"), ..Inputs::default() }, Some(&only_staging)).is_ok());
    }

    #[test]
    fn debug_never_shows_a_token() {
        use clap::Parser;
        const SECRET: &str = "s3cret-token-4f2a";
        let cli = crate::commands::Cli::try_parse_from(["wedge", "ls", "--token", SECRET]).unwrap();
        let inputs = Inputs { token_flag: some(SECRET), token_env: some(SECRET), ..Inputs::default() };
        let connection = Connection { control: DEFAULT_CONTROL.into(), token: SECRET.into() };
        let file = profiles(&format!("[profile.default]\ntoken = \"{SECRET}\"\n"));
        for debug in [format!("{cli:?}"), format!("{inputs:#?}"), format!("{connection:?}"), format!("{file:?}")] {
            assert!(!debug.contains(SECRET), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
        }
        assert!(format!("{:?}", ConnectionArgs::default()).contains("token: None"));
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
