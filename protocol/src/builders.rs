//! The builder configuration: which builders exist, what they build and how.
//!
//! People write it as TOML ([`BuilderConfig::from_toml`]); it is signed and replicated as CBOR
//! inside a [`crate::docs::SignedDoc`]. The newest `version` wins on every node; a file may leave
//! it out, and is then stamped with the time it is read (in milliseconds since the epoch, so it
//! orders after every hand-numbered version). A bad file is refused with the line and the field
//! named.
//!
//! Builder names are written as people write them ("AMD64 Debian root 3.x", "aarch64 Fedora
//! Rawhide LTO + PGO 3.14"): shown as written, and mapped to a [`safe_id`] where a name must be
//! a path or a URL segment.
//!
//! One module because it is one job, reading a builder file into a checked configuration: the
//! TOML form, its checks (each naming its line) and the types they produce must agree field by
//! field, and splitting them would put every field in three files; hence its length.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::health::{ConfirmMode, HealthSettings};
use crate::keys::Hash;

/// A builder configuration file that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {field}: {message}")]
pub struct ConfigError {
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field (or section) at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Every builder of the mesh, as signed by the maintainers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderConfig {
    /// The mesh it is for.
    pub mesh: Hash,
    /// Higher replaces lower everywhere.
    pub version: u64,
    /// The builders, in file order.
    pub builders: Vec<Builder>,
    /// When workers are quarantined (the `[health]` table). Not written when it is the
    /// default, so configurations without it encode as they always did.
    #[serde(default, skip_serializing_if = "HealthSettings::is_default")]
    pub health: HealthSettings,
}

/// One build configuration (CPython's "AMD64 Debian root 3.x" is one builder per branch pattern).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// Unique name.
    pub name: String,
    /// Any git URL the workers reach.
    pub repo: String,
    /// Branch patterns (`*` matches any run of characters, `?` one).
    pub branches: Vec<String>,
    /// Free tags; `stable` builders mail the list.
    pub tags: BTreeSet<String>,
    /// Worker labels that must match (`os = "linux"`; `"*"` means the label must exist).
    pub requires: BTreeMap<String, String>,
    /// Environment for every step.
    pub env: BTreeMap<String, String>,
    /// Higher runs first when workers are scarce.
    pub priority: i32,
    /// Steps, run in order; the first that fails ends the build.
    pub steps: Vec<Step>,
    /// Attempts a job of this builder gets before it is given up (exceptions, lost workers);
    /// the same on every node, since claims past it do not count. Default
    /// [`DEFAULT_MAX_ATTEMPTS`].
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How a red is confirmed before the list hears of it (the key `confirm`); `None` when the
    /// file leaves it out, and then [`Builder::confirm_mode`] gives the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<ConfirmMode>,
    /// How long its builds' step logs are kept, in milliseconds (the key `keep_logs`); `None`
    /// when the file leaves it out: [`DEFAULT_KEEP_LOGS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_logs_ms: Option<u64>,
    /// The same for its passing builds (success, warnings), usually shorter (the key
    /// `keep_passing_logs`); `None`: [`DEFAULT_KEEP_PASSING_LOGS`], at most `keep_logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_passing_logs_ms: Option<u64>,
}

/// Step logs are kept this long by default: 180 days, as CPython's buildbot keeps them.
pub const DEFAULT_KEEP_LOGS: std::time::Duration = std::time::Duration::from_secs(180 * 86_400);
/// Logs of passing builds are kept this long by default (and never longer than `keep_logs`).
pub const DEFAULT_KEEP_PASSING_LOGS: std::time::Duration =
    std::time::Duration::from_secs(30 * 86_400);

/// A builder without `max_attempts` gets this many.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// The most attempts a builder may set.
pub const MAX_MAX_ATTEMPTS: u32 = 20;

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// One command of a builder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Name shown in results.
    pub name: String,
    /// Shell command (`sh -c`).
    pub run: String,
    /// Time limit in milliseconds, before the worker's `timeout_factor`.
    pub timeout_ms: u64,
    /// Regular expressions; a matching output line turns a success orange.
    pub warn: Vec<String>,
    /// How often a failing step is run again; a later pass makes the build flaky.
    pub retries: u32,
    /// Exit codes by which the step itself says "failed, then passed on rerun" (CPython's
    /// test runner exits 5 for that): flaky (orange), not red. Default none (and then not
    /// written, so configurations without it encode as they always did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flaky_exit_codes: Vec<i32>,
    /// Whether the step may use the network. `false` (TOML `network = false`): a worker whose
    /// steps run in a sandbox cuts it off. Default true (and then not written).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub network: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Builder {
    /// Whether this builder builds `branch`.
    pub fn wants_branch(&self, branch: &str) -> bool {
        self.branches.iter().any(|p| glob_match(p, branch))
    }

    /// Whether a worker with `labels` may run this builder.
    pub fn accepts(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requires.iter().all(|(k, want)| match labels.get(k) {
            Some(have) => want == "*" || have == want,
            None => false,
        })
    }

    /// Whether this builder's failures go to the mailing list.
    pub fn is_stable(&self) -> bool {
        self.tags.contains("stable")
    }

    /// How its reds are confirmed: the key `confirm`, or the default for a builder that does
    /// or does not mail ([`ConfirmMode::default_for`]).
    pub fn confirm_mode(&self) -> ConfirmMode {
        self.confirm
            .unwrap_or_else(|| ConfirmMode::default_for(self.is_stable()))
    }

    /// How long the step logs of a build that ended `passing` (success or warnings) or not
    /// are kept: `keep_passing_logs` or `keep_logs`, or their defaults.
    pub fn keep_logs(&self, passing: bool) -> std::time::Duration {
        let all = self
            .keep_logs_ms
            .map_or(DEFAULT_KEEP_LOGS, std::time::Duration::from_millis);
        if !passing {
            return all;
        }
        self.keep_passing_logs_ms
            .map_or(DEFAULT_KEEP_PASSING_LOGS, std::time::Duration::from_millis)
            .min(all)
    }
}

/// `*` and `?` wildcards over the whole string.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

// The form people write. Spans let every later complaint name its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    version: Option<Spanned<u64>>,
    #[serde(default, rename = "builder")]
    builders: Vec<BuilderToml>,
    #[serde(default)]
    health: Option<Spanned<HealthToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthToml {
    #[serde(default)]
    unreproduced_reds: Option<u32>,
    #[serde(default)]
    window: Option<u32>,
    #[serde(default)]
    exceptions_in_row: Option<u32>,
    #[serde(default)]
    revalidations: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuilderToml {
    name: Spanned<String>,
    repo: Spanned<String>,
    branches: Spanned<Vec<String>>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    requires: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    max_attempts: Option<Spanned<u32>>,
    #[serde(default)]
    confirm: Option<Spanned<String>>,
    #[serde(default)]
    keep_logs: Option<Spanned<String>>,
    #[serde(default)]
    keep_passing_logs: Option<Spanned<String>>,
    #[serde(default, rename = "step")]
    steps: Vec<StepToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepToml {
    name: Spanned<String>,
    run: Spanned<String>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    warn: Vec<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<u32>>,
    #[serde(default)]
    flaky_exit_codes: Option<Spanned<Vec<i32>>>,
    #[serde(default)]
    network: Option<bool>,
}

/// The longest builder name, in characters.
pub const MAX_NAME_CHARS: usize = 120;

// A builder name: any printable text up to MAX_NAME_CHARS, with no control characters.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a builder needs a name".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "a builder name is at most {MAX_NAME_CHARS} characters"
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "`{}` is not a builder name: it holds the control character {c:?}",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The builder's safe id: the name itself when it is letters, digits and `. _ - +` (and not
/// `.` or `..`), so older names keep their directories; otherwise every run of other
/// characters becomes one `-` and a short hash of the name follows, so that two names never
/// share an id ("AMD64 Debian root 3.x" -> "AMD64-Debian-root-3.x-1a2b3c4d"). It names the
/// builder's workspace directory and stands for the name in URLs.
pub fn safe_id(name: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-+".contains(c);
    if name.chars().all(plain) && !matches!(name, "" | "." | "..") {
        return name.to_string();
    }
    let mut id = String::with_capacity(name.len() + 9);
    for c in name.chars() {
        if plain(c) {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    let id = id.trim_matches(['-', '.']);
    let hash = Hash::of(name.as_bytes()).to_string();
    if id.is_empty() {
        format!("builder-{}", &hash[..8])
    } else {
        format!("{id}-{}", &hash[..8])
    }
}

/// A step without a `timeout` gets this one.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 20 * 60 * 1000;

impl BuilderConfig {
    /// Parses and checks the TOML that people write, for the mesh `mesh`; a file without a
    /// `version` gets the present time's (see [`BuilderConfig::from_toml_at`]).
    pub fn from_toml(mesh: Hash, text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_at(mesh, text, crate::Timestamp::now()).map(|(c, _)| c)
    }

    /// Parses and checks the TOML that people write, for the mesh `mesh`. A file that leaves
    /// `version` out is stamped with `now` in milliseconds since the epoch; the flag says
    /// whether it was.
    pub fn from_toml_at(
        mesh: Hash,
        text: &str,
        now: crate::Timestamp,
    ) -> Result<(Self, bool), ConfigError> {
        let err = |span: Option<Range<usize>>, field: &str, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError {
                line,
                column,
                field: field.to_string(),
                message,
            }
        };
        let file: FileToml = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let field = message
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| "file".to_string());
            err(e.span(), &field, message)
        })?;
        if file.builders.is_empty() {
            return Err(err(
                None,
                "builder",
                "the file defines no [[builder]]".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        let mut builders = Vec::new();
        for b in file.builders {
            let name = b.name.get_ref().trim().to_string();
            if let Err(why) = check_name(&name) {
                return Err(err(Some(b.name.span()), "name", why));
            }
            if !names.insert(name.clone()) {
                return Err(err(
                    Some(b.name.span()),
                    "name",
                    format!("builder `{name}` is defined twice"),
                ));
            }
            // Workspaces and URLs go by the safe id: two builders may not share one.
            let id = safe_id(&name);
            if let Some(other) = ids.insert(id.clone(), name.clone()) {
                return Err(err(
                    Some(b.name.span()),
                    "name",
                    format!("builder `{name}` has the safe id `{id}` of builder `{other}`"),
                ));
            }
            if b.repo.get_ref().trim().is_empty() {
                return Err(err(
                    Some(b.repo.span()),
                    "repo",
                    "empty repository URL".into(),
                ));
            }
            if b.branches.get_ref().is_empty() {
                return Err(err(
                    Some(b.branches.span()),
                    "branches",
                    "no branch pattern".into(),
                ));
            }
            if b.steps.is_empty() {
                return Err(err(
                    Some(b.name.span()),
                    "step",
                    format!("builder `{name}` has no [[builder.step]]"),
                ));
            }
            let max_attempts = match &b.max_attempts {
                None => DEFAULT_MAX_ATTEMPTS,
                Some(m) if (1..=MAX_MAX_ATTEMPTS).contains(m.get_ref()) => *m.get_ref(),
                Some(m) => {
                    return Err(err(
                        Some(m.span()),
                        "max_attempts",
                        format!("{} is not between 1 and {MAX_MAX_ATTEMPTS}", m.get_ref()),
                    ));
                }
            };
            let confirm = match &b.confirm {
                None => None,
                Some(c) => Some(
                    c.get_ref()
                        .parse::<ConfirmMode>()
                        .map_err(|e| err(Some(c.span()), "confirm", e))?,
                ),
            };
            let keep = |field: &str, v: &Option<Spanned<String>>| match v {
                None => Ok(None),
                Some(t) => humantime::parse_duration(t.get_ref())
                    .map(|d| Some(d.as_millis() as u64))
                    .map_err(|e| {
                        err(
                            Some(t.span()),
                            field,
                            format!("`{}` is not a duration such as \"180d\": {e}", t.get_ref()),
                        )
                    }),
            };
            let keep_logs_ms = keep("keep_logs", &b.keep_logs)?;
            let keep_passing_logs_ms = keep("keep_passing_logs", &b.keep_passing_logs)?;
            let mut steps = Vec::new();
            for s in b.steps {
                if s.name.get_ref().trim().is_empty() {
                    return Err(err(Some(s.name.span()), "name", "empty step name".into()));
                }
                if s.run.get_ref().trim().is_empty() {
                    return Err(err(Some(s.run.span()), "run", "empty command".into()));
                }
                let timeout_ms = match &s.timeout {
                    None => DEFAULT_STEP_TIMEOUT_MS,
                    Some(t) => {
                        let d = humantime::parse_duration(t.get_ref()).map_err(|e| {
                            err(
                                Some(t.span()),
                                "timeout",
                                format!("`{}` is not a duration such as \"10m\": {e}", t.get_ref()),
                            )
                        })?;
                        // Limits are kept in milliseconds: "1ns" would become 0 and time out
                        // every step at once.
                        if d.as_millis() == 0 {
                            return Err(err(
                                Some(t.span()),
                                "timeout",
                                format!("`{}` is under a millisecond", t.get_ref()),
                            ));
                        }
                        d.as_millis().min(u64::MAX as u128) as u64
                    }
                };
                for w in &s.warn {
                    regex::Regex::new(w.get_ref()).map_err(|e| {
                        err(
                            Some(w.span()),
                            "warn",
                            format!("bad regular expression: {e}"),
                        )
                    })?;
                }
                let retries = match &s.retries {
                    Some(r) if *r.get_ref() > 10 => {
                        return Err(err(
                            Some(r.span()),
                            "retries",
                            "more than 10 retries".into(),
                        ));
                    }
                    Some(r) => *r.get_ref(),
                    None => 0,
                };
                let flaky_exit_codes = match s.flaky_exit_codes {
                    Some(c) if c.get_ref().contains(&0) => {
                        return Err(err(
                            Some(c.span()),
                            "flaky_exit_codes",
                            "0 is a pass, not a flaky exit".into(),
                        ));
                    }
                    Some(c) => c.into_inner(),
                    None => Vec::new(),
                };
                steps.push(Step {
                    name: s.name.into_inner(),
                    run: s.run.into_inner(),
                    timeout_ms,
                    warn: s.warn.into_iter().map(Spanned::into_inner).collect(),
                    retries,
                    flaky_exit_codes,
                    network: s.network.unwrap_or(true),
                });
            }
            builders.push(Builder {
                name,
                repo: b.repo.into_inner(),
                branches: b.branches.into_inner(),
                tags: b.tags.into_iter().collect(),
                requires: b.requires,
                env: b.env,
                priority: b.priority,
                steps,
                max_attempts,
                confirm,
                keep_logs_ms,
                keep_passing_logs_ms,
            });
        }
        let health = match file.health {
            None => HealthSettings::default(),
            Some(h) => {
                let span = h.span();
                let h = h.into_inner();
                let d = HealthSettings::default();
                let health = HealthSettings {
                    unreproduced_reds: h.unreproduced_reds.unwrap_or(d.unreproduced_reds),
                    window: h.window.unwrap_or(d.window),
                    exceptions_in_row: h.exceptions_in_row.unwrap_or(d.exceptions_in_row),
                    revalidations: h.revalidations.unwrap_or(d.revalidations),
                };
                let zero = [
                    ("unreproduced_reds", health.unreproduced_reds),
                    ("window", health.window),
                    ("exceptions_in_row", health.exceptions_in_row),
                    ("revalidations", health.revalidations),
                ]
                .into_iter()
                .find(|(_, v)| *v == 0 || *v > 1000);
                if let Some((field, v)) = zero {
                    return Err(err(
                        Some(span),
                        field,
                        format!("{v} is not between 1 and 1000"),
                    ));
                }
                if health.unreproduced_reds > health.window {
                    return Err(err(
                        Some(span),
                        "unreproduced_reds",
                        format!(
                            "{} unreproduced reds can never fit a window of {} results",
                            health.unreproduced_reds, health.window
                        ),
                    ));
                }
                health
            }
        };
        let stamped = file.version.is_none();
        let version = file.version.map_or(now.millis(), Spanned::into_inner);
        Ok((
            BuilderConfig {
                mesh,
                version,
                builders,
                health,
            },
            stamped,
        ))
    }

    /// The builder named `name`, as written or as its [`safe_id`].
    pub fn find(&self, name: &str) -> Option<&Builder> {
        self.builder(name)
            .or_else(|| self.builders.iter().find(|b| safe_id(&b.name) == name))
    }

    /// The builder named `name`.
    pub fn builder(&self, name: &str) -> Option<&Builder> {
        self.builders.iter().find(|b| b.name == name)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[[builder]]
name = "linux-debug"
repo = "https://example.org/project.git"
branches = ["main", "3.*"]
tags = ["stable", "tier-1"]
requires = { os = "linux" }

[[builder.step]]
name = "test"
run = "make test"
timeout = "10m"
warn = ["Re-running failed tests"]
retries = 1
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = BuilderConfig::from_toml(Hash::ZERO, GOOD).unwrap();
        let b = &c.builders[0];
        assert_eq!(b.name, "linux-debug");
        assert_eq!(b.steps[0].timeout_ms, 600_000);
        assert_eq!(b.steps[0].retries, 1);
        assert_eq!(b.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(b.is_stable());
        assert!(b.wants_branch("3.12") && b.wants_branch("main") && !b.wants_branch("feature"));
        let mut labels = BTreeMap::new();
        labels.insert("os".to_string(), "linux".to_string());
        assert!(b.accepts(&labels));
        labels.insert("os".to_string(), "freebsd".to_string());
        assert!(!b.accepts(&labels));
    }

    #[test]
    fn bad_timeout_names_line_and_field() {
        let bad = GOOD.replace("\"10m\"", "\"ten minutes\"");
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (14, "timeout"), "{e}");
    }

    #[test]
    fn bad_regex_and_unknown_field_name_their_line() {
        let bad = GOOD.replace("Re-running failed tests", "([unclosed");
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (15, "warn"), "{e}");
        let bad = GOOD.replace("retries = 1", "retires = 1");
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!(e.line, 16, "{e}");
        assert!(e.message.contains("retires"), "{e}");
    }

    #[test]
    fn max_attempts_is_bounded_and_older_configurations_get_the_default() {
        let c = GOOD.replace("priority", "x").replace(
            "requires = { os = \"linux\" }",
            "requires = { os = \"linux\" }\nmax_attempts = 2",
        );
        let b = &BuilderConfig::from_toml(Hash::ZERO, &c).unwrap().builders[0];
        assert_eq!(b.max_attempts, 2);
        let bad = GOOD.replace(
            "requires = { os = \"linux\" }",
            "requires = { os = \"linux\" }\nmax_attempts = 0",
        );
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (10, "max_attempts"), "{e}");
        // A configuration signed before the key existed decodes with the default.
        #[derive(Serialize)]
        struct OldBuilder<'a> {
            name: &'a str,
            repo: &'a str,
            branches: Vec<&'a str>,
            tags: BTreeSet<String>,
            requires: BTreeMap<String, String>,
            env: BTreeMap<String, String>,
            priority: i32,
            steps: Vec<Step>,
        }
        let old = OldBuilder {
            name: "b",
            repo: "r",
            branches: vec!["main"],
            tags: BTreeSet::new(),
            requires: BTreeMap::new(),
            env: BTreeMap::new(),
            priority: 0,
            steps: vec![],
        };
        let bytes = crate::codec::encode("old builder", &old).unwrap();
        let b: Builder = crate::codec::decode("builder", &bytes).unwrap();
        assert_eq!(b.max_attempts, DEFAULT_MAX_ATTEMPTS);
    }

    #[test]
    fn log_retention_defaults_in_one_place_encodes_as_before_and_bad_values_name_their_line() {
        let c = BuilderConfig::from_toml(Hash::ZERO, GOOD).unwrap();
        let b = &c.builders[0];
        assert_eq!(b.keep_logs(false), DEFAULT_KEEP_LOGS);
        assert_eq!(b.keep_logs(true), DEFAULT_KEEP_PASSING_LOGS);
        // Left out, the keys are not written: the signed bytes are what they always were.
        let text = String::from_utf8_lossy(&crate::codec::encode("c", &c).unwrap()).into_owned();
        assert!(!text.contains("keep_"), "{text}");
        let set = GOOD.replace(
            "requires = { os = \"linux\" }",
            "requires = { os = \"linux\" }\nkeep_logs = \"90d\"\nkeep_passing_logs = \"365d\"",
        );
        let b = &BuilderConfig::from_toml(Hash::ZERO, &set).unwrap().builders[0];
        assert_eq!(
            b.keep_logs(false),
            std::time::Duration::from_secs(90 * 86_400)
        );
        // Passing logs never outlive the others.
        assert_eq!(
            b.keep_logs(true),
            std::time::Duration::from_secs(90 * 86_400)
        );
        let bad = GOOD.replace(
            "requires = { os = \"linux\" }",
            "requires = { os = \"linux\" }\nkeep_passing_logs = \"a while\"",
        );
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (10, "keep_passing_logs"), "{e}");
    }

    #[test]
    fn confirm_and_health_keys_default_in_one_place_and_bad_ones_name_their_line() {
        let c = BuilderConfig::from_toml(Hash::ZERO, GOOD).unwrap();
        assert_eq!(c.builders[0].confirm, None);
        assert_eq!(
            c.builders[0].confirm_mode(),
            ConfirmMode::OtherHost,
            "stable mails"
        );
        assert!(c.health.is_default());
        // Without the keys, the configuration encodes as before they existed.
        let bytes = crate::codec::encode("config", &c).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("confirm") && !text.contains("health"));
        let set = GOOD.replace(
            "requires = { os = \"linux\" }\n",
            "requires = { os = \"linux\" }\nconfirm = \"same-host\"\n",
        ) + "\n[health]\nunreproduced_reds = 2\nwindow = 5\n";
        let c = BuilderConfig::from_toml(Hash::ZERO, &set).unwrap();
        assert_eq!(c.builders[0].confirm_mode(), ConfirmMode::SameHost);
        assert_eq!(
            (
                c.health.unreproduced_reds,
                c.health.window,
                c.health.revalidations
            ),
            (2, 5, 3)
        );
        let bad = GOOD.replace(
            "requires = { os = \"linux\" }\n",
            "requires = { os = \"linux\" }\nconfirm = \"elsewhere\"\n",
        );
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (10, "confirm"), "{e}");
        let bad = format!("{GOOD}\n[health]\nunreproduced_reds = 11\n");
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!(e.field, "unreproduced_reds", "{e}");
        let bad = format!("{GOOD}\n[health]\nwindow = 0\n");
        assert_eq!(
            BuilderConfig::from_toml(Hash::ZERO, &bad)
                .unwrap_err()
                .field,
            "window"
        );
    }

    #[test]
    fn a_timeout_under_a_millisecond_is_refused() {
        for t in ["0s", "1ns", "999us"] {
            let bad = GOOD.replace("\"10m\"", &format!("\"{t}\""));
            let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (14, "timeout"), "{e}");
        }
        let ok = GOOD.replace("\"10m\"", "\"1ms\"");
        let c = BuilderConfig::from_toml(Hash::ZERO, &ok).unwrap();
        assert_eq!(c.builders[0].steps[0].timeout_ms, 1);
    }

    #[test]
    fn a_step_may_say_it_needs_no_network_and_the_default_encodes_as_before() {
        let c = BuilderConfig::from_toml(Hash::ZERO, GOOD).unwrap();
        assert!(c.builders[0].steps.iter().all(|s| s.network));
        let plain = crate::codec::encode("step", &c.builders[0].steps[0]).unwrap();
        let off = GOOD.replace("retries = 1", "retries = 1\nnetwork = false");
        let c = BuilderConfig::from_toml(Hash::ZERO, &off).unwrap();
        assert!(!c.builders[0].steps[0].network);
        let mut on = c.builders[0].steps[0].clone();
        on.network = true;
        assert_eq!(crate::codec::encode("step", &on).unwrap(), plain);
        let bad = GOOD.replace("retries = 1", "retries = 1\nnetwork = \"no\"");
        assert!(BuilderConfig::from_toml(Hash::ZERO, &bad).is_err());
    }

    #[test]
    fn flaky_exit_codes_are_read_and_zero_is_refused() {
        let c = GOOD.replace("retries = 1", "retries = 1\nflaky_exit_codes = [5]");
        let b = &BuilderConfig::from_toml(Hash::ZERO, &c).unwrap().builders[0];
        assert_eq!(b.steps[0].flaky_exit_codes, [5]);
        let bad = GOOD.replace("retries = 1", "retries = 1\nflaky_exit_codes = [0]");
        let e = BuilderConfig::from_toml(Hash::ZERO, &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (17, "flaky_exit_codes"), "{e}");
    }

    #[test]
    fn duplicate_builder_is_refused() {
        let twice = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[builder]]").unwrap()..]);
        let e = BuilderConfig::from_toml(Hash::ZERO, &twice).unwrap_err();
        assert!(e.message.contains("defined twice"), "{e}");
        assert_eq!(e.line, 19, "{e}");
    }

    #[test]
    fn cpython_builder_names_are_taken_as_written_and_get_distinct_safe_ids() {
        let names = [
            "AMD64 Debian root 3.x",
            "aarch64 Fedora Rawhide LTO + PGO 3.14",
            "AMD64 Debian root 3.14",
            "x86 Gentoo Non-Debug with X 3.x",
        ];
        let mut toml = String::new();
        for n in names {
            toml.push_str(&format!(
                "[[builder]]\nname = \"{n}\"\nrepo = \"r\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n"
            ));
        }
        let now = crate::Timestamp(1_764_000_000_000);
        // No `version`: stamped with the time it is read, and said so.
        let (c, stamped) = BuilderConfig::from_toml_at(Hash::ZERO, &toml, now).unwrap();
        assert!(stamped);
        assert_eq!(c.version, now.millis());
        let written: Vec<&str> = c.builders.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(written, names);
        let ids: BTreeSet<String> = names.iter().map(|n| safe_id(n)).collect();
        assert_eq!(ids.len(), names.len(), "{ids:?}");
        for (n, id) in names.iter().map(|n| (n, safe_id(n))) {
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)),
                "{id}"
            );
            assert!(id.starts_with(&n[..5].replace(' ', "-")), "{n} -> {id}");
            assert_eq!(c.find(&id).map(|b| b.name.as_str()), Some(*n));
            assert_eq!(c.find(n).map(|b| b.name.as_str()), Some(*n));
        }
        // A name that was valid before is its own id; a written version is kept as it is.
        assert_eq!(safe_id("linux-debug"), "linux-debug");
        let (c, stamped) = BuilderConfig::from_toml_at(Hash::ZERO, GOOD, now).unwrap();
        assert!(!stamped);
        assert_eq!(c.version, 1);
    }

    #[test]
    fn a_name_that_is_another_builders_safe_id_is_refused_on_its_line() {
        let taken = safe_id("AMD64 Debian root 3.x");
        let mut toml = String::from("version = 1\n");
        for n in ["AMD64 Debian root 3.x", taken.as_str()] {
            toml.push_str(&format!(
                "[[builder]]\nname = \"{n}\"\nrepo = \"r\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n"
            ));
        }
        let e = BuilderConfig::from_toml(Hash::ZERO, &toml).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (10, "name"), "{e}");
        assert!(e.message.contains("safe id"), "{e}");
    }

    #[test]
    fn a_builder_name_with_a_control_character_or_too_long_is_refused_on_its_line() {
        let e = BuilderConfig::from_toml(Hash::ZERO, &GOOD.replace("linux-debug", "a\\tb"))
            .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (5, "name"), "{e}");
        assert!(e.message.contains("control character"), "{e}");
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let e =
            BuilderConfig::from_toml(Hash::ZERO, &GOOD.replace("linux-debug", &long)).unwrap_err();
        assert_eq!(e.field, "name", "{e}");
    }

    #[test]
    fn glob() {
        assert!(glob_match("3.*", "3.13"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("3.*", "main"));
        assert!(glob_match("*-stable-*", "x-stable-y"));
    }
}
