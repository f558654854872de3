//! The app manifest, `stratus.toml` at the root of an app folder, and its validation.
//!
//! Parsing is pure (text in, typed manifest or a list of errors out) so the CLI can check a
//! folder before uploading it and the API can refuse a bad bundle before storing anything.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::build::Builder;

pub const MANIFEST_FILE: &str = "stratus.toml";
pub const PROCFILE: &str = "Procfile";
pub const DEFAULT_PORT: u16 = 8080;
pub const MAX_REPLICAS: u32 = 100;
/// Most `[[routes]]` one app may have: enough for any real layout, few enough that one
/// manifest cannot bloat every ingress's route table.
pub const MAX_ROUTES: usize = 16;
/// Longest route path, in bytes.
pub const MAX_ROUTE_PATH_LEN: usize = 200;

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    pub name: String,
    /// `None`: the node's default image.
    pub image: Option<String>,
    /// Shell command that starts the app (from `cmd` or the Procfile's `web:` line).
    /// `None`: a built app's image starts it the way its builder chose; an app with no
    /// builder must have one (checked when its builder is known, at deploy).
    pub cmd: Option<String>,
    /// The port the app listens on, given to it as `$PORT`.
    pub port: u16,
    pub replicas: u32,
    pub resources: Resources,
    pub env: BTreeMap<String, String>,
    pub health: HealthCheck,
    pub domains: Vec<String>,
    /// Path prefixes the app serves on each of its hosts (the `[[routes]]` tables); empty:
    /// every path. Absent in releases recorded before it existed, and left out of the
    /// record when empty, so those records read and compare as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// How a new release replaces the old one. Absent in releases recorded before it
    /// existed: those get the defaults.
    #[serde(default)]
    pub rollout: Rollout,
    /// How the app is built from its folder; absent in releases recorded before builds.
    #[serde(default)]
    pub build: BuildSettings,
    /// `python-3.11`, `node-18`: the base image a builder starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The release phase: run once per release in a container of the new image, before
    /// the rollout (`release = "..."` or the Procfile's `release:` line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The container's root filesystem is read-only, with a writable `/tmp` (opt-in: by
    /// default it is writable and thrown away with the container). `[security]
    /// read_only_root`, or the older top-level `read_only_root`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
    /// `[security] user`: the user the app runs as, `uid[:gid]` or a name the image knows;
    /// `None`: the image's user (often root, with the capabilities Stratus leaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `build = "python"`, or a `[build]` table with `builder`, `args`, `target`, `cpu` and
/// `memory`: the builder (`None`: detected from the files), the Dockerfile's build args and
/// target stage, and what a build reserves on the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<Builder>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub resources: Resources,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            builder: None,
            args: BTreeMap::new(),
            target: None,
            resources: Resources {
                cpu_millis: 1_000,
                memory_bytes: 1 << 30,
            },
        }
    }
}

/// One `[[routes]]` table: the app answers requests whose path is `path` or lies under it
/// (whole segments: `/api` takes `/api` and `/api/users`, not `/apix`). When apps share a
/// host, the longest matching prefix wins in the ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Route {
    /// Starts with `/`, no trailing `/` (except the root `/` itself).
    pub path: String,
}

/// How a release rolls out: `max_surge` new replicas at a time beyond the desired count,
/// each given `health_timeout_ms` to become healthy before the rollout fails and the app
/// goes back to its previous release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    /// `None`: every new replica at once, as Heroku's preboot does (the old ones still
    /// retire one by one, as new ones settle); `Some(1)`: one at a time, for a cluster
    /// without room for a second copy of the app.
    #[serde(default)]
    pub max_surge: Option<u32>,
    pub health_timeout_ms: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_surge: None,
            health_timeout_ms: 60_000,
        }
    }
}

/// Reservations, enforced as limits too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What an app reserves, and is limited to, when its manifest says nothing.
pub const DEFAULT_RESOURCES: Resources = Resources {
    cpu_millis: 250,
    memory_bytes: 128 << 20,
};

impl Default for Resources {
    fn default() -> Self {
        DEFAULT_RESOURCES
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    /// HTTP path to GET; `None`: a TCP connect is enough.
    pub path: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: None,
            interval_ms: 2_000,
            timeout_ms: 1_000,
        }
    }
}

/// One problem in a manifest: which field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems found, so a developer fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {MANIFEST_FILE}: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ManifestErrors(pub Vec<ManifestError>);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<String>,
    image: Option<String>,
    cmd: Option<String>,
    port: Option<i64>,
    replicas: Option<i64>,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    rollout: RawRollout,
    build: Option<RawBuild>,
    runtime: Option<String>,
    release: Option<String>,
    /// Kept for manifests written before `[security]`.
    read_only_root: Option<bool>,
    #[serde(default)]
    security: RawSecurity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    read_only_root: Option<bool>,
    user: Option<String>,
}

/// `build = "python"` or a `[build]` table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawBuild {
    Name(String),
    Table(RawBuildTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuildTable {
    builder: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, String>,
    target: Option<String>,
    cpu: Option<f64>,
    memory: Option<toml_size::Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    max_surge: Option<i64>,
    health_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu: Option<f64>,
    memory: Option<toml_size::Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
}

mod toml_size {
    use serde::Deserialize;

    /// A memory size: a number of bytes, or a string like `"256MiB"`, `"1G"`, `"512m"`.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Size {
        Bytes(i64),
        Text(String),
    }
}

impl Manifest {
    /// Parses and validates `stratus.toml`; `procfile` is the content of a `Procfile` if
    /// the folder has one (used when the manifest has no `cmd`).
    pub fn parse(text: &str, procfile: Option<&str>) -> Result<Manifest, ManifestErrors> {
        let raw: RawManifest = toml::from_str(text).map_err(|err| {
            ManifestErrors(vec![ManifestError {
                field: "(file)".into(),
                message: format!("not valid TOML for a manifest: {}", err.message()),
            }])
        })?;
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(ManifestError {
                field: field.to_string(),
                message,
            });
        };

        let name = raw.name.unwrap_or_default();
        if let Err(message) = validate_app_name(&name) {
            fail("name", message);
        }
        let cmd = match (
            raw.cmd,
            procfile.and_then(|text| procfile_line(text, "web")),
        ) {
            (Some(cmd), _) if !cmd.trim().is_empty() => Some(cmd),
            (Some(_), _) => {
                fail(
                    "cmd",
                    "is empty: give the command that starts the app, or leave `cmd` out to let its builder choose".into(),
                );
                None
            }
            (None, web) => web,
        };
        let release = match (
            raw.release,
            procfile.and_then(|text| procfile_line(text, "release")),
        ) {
            (Some(release), _) if !release.trim().is_empty() => Some(release),
            (Some(_), _) => {
                fail(
                    "release",
                    "is empty: give the command to run before each rollout, or leave `release` out"
                        .into(),
                );
                None
            }
            (None, procfile_release) => procfile_release,
        };
        let port = match raw.port {
            None => DEFAULT_PORT,
            Some(port) if (1..=65_535).contains(&port) => port as u16,
            Some(port) => {
                fail("port", format!("{port} is not a TCP port: use 1 to 65535"));
                DEFAULT_PORT
            }
        };
        let replicas = match raw.replicas {
            None => 1,
            Some(n) if (1..=i64::from(MAX_REPLICAS)).contains(&n) => n as u32,
            Some(n) => {
                fail(
                    "replicas",
                    format!("{n} is out of range: use 1 to {MAX_REPLICAS}"),
                );
                1
            }
        };
        let defaults = Resources::default();
        let cpu_millis = match raw.resources.cpu {
            None => defaults.cpu_millis,
            Some(cpu) if cpu > 0.0 && cpu <= 256.0 => (cpu * 1000.0).round().max(1.0) as u64,
            Some(cpu) => {
                fail(
                    "resources.cpu",
                    format!("{cpu} cores is out of range: use e.g. 0.25 or 2"),
                );
                defaults.cpu_millis
            }
        };
        let memory_bytes = match raw.resources.memory.map(parse_size) {
            None => defaults.memory_bytes,
            Some(Ok(bytes)) if bytes >= 4 << 20 => bytes,
            Some(Ok(bytes)) => {
                fail(
                    "resources.memory",
                    format!("{bytes} bytes is too little: use at least \"4MiB\""),
                );
                defaults.memory_bytes
            }
            Some(Err(message)) => {
                fail("resources.memory", message);
                defaults.memory_bytes
            }
        };
        for key in raw.env.keys() {
            if !is_env_name(key) {
                fail(
                    &format!("env.{key}"),
                    "is not a valid variable name: use letters, digits and _".into(),
                );
            } else if key == "PORT" {
                fail(
                    "env.PORT",
                    "is set by Stratus from `port`: set `port = ...` instead".into(),
                );
            }
        }
        let health_defaults = HealthCheck::default();
        let path = match raw.health.path {
            Some(path) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
                Some(path)
            }
            Some(path) => {
                fail(
                    "health.path",
                    format!("{path:?} must start with / and contain no spaces"),
                );
                None
            }
            None => None,
        };
        let mut duration = |field: &str, value: Option<String>, default: u64| match value
            .map(|v| parse_duration_ms(&v))
        {
            None => default,
            Some(Ok(ms)) if (100..=600_000).contains(&ms) => ms,
            Some(Ok(ms)) => {
                fail(field, format!("{ms} ms is out of range: use 100ms to 10m"));
                default
            }
            Some(Err(message)) => {
                fail(field, message);
                default
            }
        };
        let interval_ms = duration(
            "health.interval",
            raw.health.interval,
            health_defaults.interval_ms,
        );
        let timeout_ms = duration(
            "health.timeout",
            raw.health.timeout,
            health_defaults.timeout_ms,
        );
        let rollout_defaults = Rollout::default();
        let max_surge = match raw.rollout.max_surge {
            None => rollout_defaults.max_surge,
            Some(n) if (1..=i64::from(MAX_REPLICAS)).contains(&n) => Some(n as u32),
            Some(n) => {
                fail(
                    "rollout.max_surge",
                    format!(
                        "{n} is out of range: use 1 (one new replica at a time) to {MAX_REPLICAS}"
                    ),
                );
                rollout_defaults.max_surge
            }
        };
        let health_timeout_ms = match raw.rollout.health_timeout.map(|v| parse_duration_ms(&v)) {
            None => rollout_defaults.health_timeout_ms,
            Some(Ok(ms)) if (1_000..=3_600_000).contains(&ms) => ms,
            Some(Ok(ms)) => {
                fail(
                    "rollout.health_timeout",
                    format!("{ms} ms is out of range: use 1s to 1h"),
                );
                rollout_defaults.health_timeout_ms
            }
            Some(Err(message)) => {
                fail("rollout.health_timeout", message);
                rollout_defaults.health_timeout_ms
            }
        };
        for domain in &raw.domains {
            if !is_domain(domain) {
                fail(
                    "domains",
                    format!("{domain:?} is not a host name like app.example.com"),
                );
            }
        }
        if raw.routes.len() > MAX_ROUTES {
            fail(
                "routes",
                format!(
                    "{} routes is too many: use at most {MAX_ROUTES} path prefixes",
                    raw.routes.len()
                ),
            );
        }
        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.iter().enumerate() {
            match validate_route_path(&route.path) {
                Ok(path) if routes.iter().any(|seen| seen.path == path) => fail(
                    &format!("routes[{i}].path"),
                    format!("{path:?} is listed twice: list each path prefix once"),
                ),
                Ok(path) => routes.push(Route { path }),
                Err(message) => fail(&format!("routes[{i}].path"), message),
            }
        }
        if let Some(image) = &raw.image
            && (image.trim().is_empty() || image.contains(char::is_whitespace))
        {
            fail("image", format!("{image:?} is not an image reference"));
        }
        let build = build_settings(raw.build, &mut fail);
        if let Some(runtime) = &raw.runtime {
            let valid = runtime.split_once('-').is_some_and(|(language, version)| {
                !language.is_empty()
                    && !version.is_empty()
                    && version.split('.').all(|part| part.parse::<u32>().is_ok())
            });
            if !valid {
                fail(
                    "runtime",
                    format!(
                        "{runtime:?} is not a runtime: write e.g. \"python-3.11\" or \"node-18\""
                    ),
                );
            }
        }
        let read_only_root = match (raw.read_only_root, raw.security.read_only_root) {
            (Some(_), Some(_)) => {
                fail(
                    "read_only_root",
                    "is given twice: keep `[security] read_only_root` and drop the top-level key"
                        .into(),
                );
                false
            }
            (top, security) => top.or(security).unwrap_or(false),
        };
        if let Some(user) = &raw.security.user
            && let Err(message) = validate_user(user)
        {
            fail("security.user", message);
        }
        if !errors.is_empty() {
            return Err(ManifestErrors(errors));
        }
        Ok(Manifest {
            name,
            image: raw.image,
            cmd,
            port,
            replicas,
            resources: Resources {
                cpu_millis,
                memory_bytes,
            },
            env: raw.env,
            health: HealthCheck {
                path,
                interval_ms,
                timeout_ms,
            },
            domains: raw
                .domains
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            routes,
            rollout: Rollout {
                max_surge,
                health_timeout_ms,
            },
            build,
            runtime: raw.runtime,
            release,
            read_only_root,
            user: raw.security.user,
        })
    }
}

/// `build = "python"`, or the `[build]` table, checked.
fn build_settings(raw: Option<RawBuild>, fail: &mut impl FnMut(&str, String)) -> BuildSettings {
    let mut settings = BuildSettings::default();
    let table = match raw {
        None => return settings,
        Some(RawBuild::Name(name)) => RawBuildTable {
            builder: Some(name),
            ..RawBuildTable::default()
        },
        Some(RawBuild::Table(table)) => table,
    };
    if let Some(name) = table.builder {
        match name.parse::<Builder>() {
            Ok(builder) => settings.builder = Some(builder),
            Err(err) => fail("build", err.to_string()),
        }
    }
    for key in table.args.keys() {
        if !is_env_name(key) {
            fail(
                &format!("build.args.{key}"),
                "is not a valid build argument name: use letters, digits and _".into(),
            );
        }
    }
    settings.args = table.args;
    if let Some(target) = &table.target
        && (target.is_empty() || target.contains(char::is_whitespace))
    {
        fail("build.target", format!("{target:?} is not a stage name"));
    }
    settings.target = table.target;
    match table.cpu {
        None => {}
        Some(cpu) if cpu > 0.0 && cpu <= 256.0 => {
            settings.resources.cpu_millis = (cpu * 1000.0).round().max(1.0) as u64
        }
        Some(cpu) => fail(
            "build.cpu",
            format!("{cpu} cores is out of range: use e.g. 0.5 or 2"),
        ),
    }
    match table.memory.map(parse_size) {
        None => {}
        Some(Ok(bytes)) if bytes >= 64 << 20 => settings.resources.memory_bytes = bytes,
        Some(Ok(bytes)) => fail(
            "build.memory",
            format!("{bytes} bytes is too little for a build: use at least \"64MiB\""),
        ),
        Some(Err(message)) => fail("build.memory", message),
    }
    settings
}

/// `[security] user`: `uid`, `uid:gid`, `name` or `name:group`, as Docker's `--user` takes
/// them (names must exist in the image). Root is refused: leaving the key out means the
/// image's user already.
fn validate_user(user: &str) -> Result<(), String> {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 32
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !part.starts_with('-')
    };
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    if !part_ok(name) || !group.is_none_or(part_ok) {
        return Err(format!(
            "{user:?} is not a user: write \"1000:1000\" (uid:gid) or a user name the image has"
        ));
    }
    if name == "0" || name == "root" {
        return Err(format!(
            "{user:?} is root: give a non-root user such as \"1000:1000\", or leave `user` out"
        ));
    }
    Ok(())
}

/// App names go into host names, container names and keys: lowercase DNS labels.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid app name: use 1 to 40 lowercase letters, digits and dashes, starting with a letter"
        ))
    }
}

/// A route's path prefix as the ingress matches it: the path of a request as sent (no
/// percent-encoding, which the ingress does not decode before matching), starting with `/`,
/// with no `.` or `..` segment (a proxy or the app may fold those, so the prefix would not
/// mean what it says) and no empty segment. A trailing `/` is dropped: `/api/` is `/api`.
fn validate_route_path(path: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c);
    let problem = if !path.starts_with('/') {
        Some("must start with /")
    } else if path.len() > MAX_ROUTE_PATH_LEN {
        Some("is too long")
    } else if !path.chars().all(allowed) {
        Some(
            "may hold only letters, digits, / and - . _ ~ ! $ & ' ( ) * + , ; = : @ (no spaces, ?, # or %-escapes)",
        )
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(format!(
            "{path:?} {problem}: use a path prefix like \"/api\""
        ));
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    let segments_ok = trimmed == "/"
        || trimmed
            .split('/')
            .skip(1)
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    if !segments_ok {
        return Err(format!(
            "{path:?} has an empty, . or .. segment: use a path prefix like \"/api\" or \"/api/v1\""
        ));
    }
    Ok(trimmed.to_string())
}

/// The command of a Procfile's `web:` or `release:` line.
fn procfile_line(procfile: &str, process: &str) -> Option<String> {
    procfile.lines().find_map(|line| {
        let (kind, cmd) = line.split_once(':')?;
        (kind.trim() == process && !cmd.trim().is_empty()).then(|| cmd.trim().to_string())
    })
}

fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn parse_size(size: toml_size::Size) -> Result<u64, String> {
    let text = match size {
        toml_size::Size::Bytes(bytes) if bytes > 0 => return Ok(bytes as u64),
        toml_size::Size::Bytes(bytes) => {
            return Err(format!("{bytes} is not a size: use e.g. \"256MiB\""));
        }
        toml_size::Size::Text(text) => text,
    };
    let not_a_size = || format!("{text:?} is not a size: use e.g. \"256MiB\" or \"1GiB\"");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.parse::<f64>().is_err() {
        return Err(not_a_size());
    }
    // bytesize reads k, m, g, kb, mb and gb as powers of 1000; in stratus.toml they have
    // always meant powers of 1024 (as in Docker's --memory), so the unit is named here by its
    // binary name and bytesize only reads the number and multiplies.
    let binary_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => "B",
        "k" | "kb" | "kib" => "KiB",
        "m" | "mb" | "mib" => "MiB",
        "g" | "gb" | "gib" => "GiB",
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit: use B, KiB, MiB or GiB"
            ));
        }
    };
    format!("{number} {binary_unit}")
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| not_a_size())
}

/// A size for people: `148.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// `"500ms"`, `"2s"`, `"1m"`, a bare number of seconds, or any other duration `humantime`
/// reads (`"1m 30s"`, `"1h"`), in milliseconds rounded to the nearest.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let invalid = |reason: &str| {
        format!("{text:?} is not a duration ({reason}): use e.g. \"2s\" or \"500ms\"")
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let duration = humantime::parse_duration(&as_humantime_reads_it(trimmed))
        .map_err(|err| invalid(&err.to_string()))?;
    let ms = duration.as_nanos().saturating_add(500_000) / 1_000_000;
    u64::try_from(ms).map_err(|_| invalid("it is too long"))
}

/// What the manifest has always accepted and humantime does not, written the way humantime
/// reads it: a bare number is seconds (`"2"` → `"2s"`), and a number may start or end with
/// its decimal point (`".5s"` → `"0.5s"`, `"2.s"` → `"2.0s"`).
fn as_humantime_reads_it(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 2);
    for (i, &c) in chars.iter().enumerate() {
        let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
        let digit_after = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c == '.' && digit_after && !digit_before {
            out.push('0');
        }
        out.push(c);
        if c == '.' && digit_before && !digit_after {
            out.push('0');
        }
    }
    if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        out.push('s');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_manifest_parses() {
        let manifest = Manifest::parse(
            r#"
            name = "hello"
            image = "stratus/busybox:latest"
            cmd = "httpd -f -p $PORT"
            port = 9000
            replicas = 2
            domains = ["Hello.Example.com"]
            [resources]
            cpu = 0.5
            memory = "256MiB"
            [env]
            GREETING = "hi"
            [health]
            path = "/healthz"
            interval = "1s"
            timeout = "500ms"
            [rollout]
            max_surge = 2
            health_timeout = "30s"
            "#,
            None,
        )
        .unwrap();
        assert_eq!(manifest.name, "hello");
        assert_eq!(
            manifest.rollout,
            Rollout {
                max_surge: Some(2),
                health_timeout_ms: 30_000
            }
        );
        assert_eq!(manifest.port, 9000);
        assert_eq!(manifest.replicas, 2);
        assert_eq!(
            manifest.resources,
            Resources {
                cpu_millis: 500,
                memory_bytes: 256 << 20
            }
        );
        assert_eq!(manifest.health.path.as_deref(), Some("/healthz"));
        assert_eq!(
            (manifest.health.interval_ms, manifest.health.timeout_ms),
            (1000, 500)
        );
        assert_eq!(manifest.domains, vec!["hello.example.com"]);
    }

    #[test]
    fn rollout_settings_default_and_are_checked() {
        let manifest = Manifest::parse("name = \"web\"\ncmd = \"x\"", None).unwrap();
        assert_eq!(manifest.rollout, Rollout::default());
        let errors = Manifest::parse(
            "name = \"web\"\ncmd = \"x\"\n[rollout]\nmax_surge = 0\nhealth_timeout = \"10ms\"",
            None,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rollout.max_surge", "rollout.health_timeout"]);
    }

    #[test]
    fn a_manifest_recorded_before_rollout_existed_still_reads() {
        let mut json =
            serde_json::to_value(Manifest::parse("name = \"web\"\ncmd = \"x\"", None).unwrap())
                .unwrap();
        json.as_object_mut().unwrap().remove("rollout");
        let manifest: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(manifest.rollout, Rollout::default());
    }

    #[test]
    fn the_procfile_web_line_is_the_command_when_cmd_is_absent() {
        let manifest = Manifest::parse(
            "name = \"web\"",
            Some("worker: x\nweb: ./serve --port $PORT\n"),
        )
        .unwrap();
        assert_eq!(manifest.cmd.as_deref(), Some("./serve --port $PORT"));
        assert_eq!(manifest.port, DEFAULT_PORT);
        assert_eq!(manifest.replicas, 1);
    }

    /// `build` is a builder's name or a `[build]` table; without `cmd` a manifest is valid
    /// (a builder may start the app); the Procfile's `release:` line is the release phase.
    #[test]
    fn builds_are_named_by_a_string_or_a_table_and_the_release_phase_comes_from_the_procfile() {
        let named = Manifest::parse(
            "name = \"web\"\nbuild = \"python\"\nruntime = \"python-3.11\"",
            None,
        )
        .unwrap();
        assert_eq!(named.build.builder, Some(Builder::Python));
        assert_eq!(named.runtime.as_deref(), Some("python-3.11"));
        assert_eq!(named.cmd, None);
        assert_eq!(named.build.resources.cpu_millis, 1_000);
        assert_eq!(named.build.resources.memory_bytes, 1 << 30);

        let table = Manifest::parse(
            r#"
            name = "web"
            release = "python manage.py migrate"
            read_only_root = true
            [build]
            builder = "dockerfile"
            target = "runtime"
            cpu = 2
            memory = "2GiB"
            [build.args]
            GREETING = "hi"
            "#,
            Some("web: ./serve\nrelease: ./ignored"),
        )
        .unwrap();
        assert_eq!(table.build.builder, Some(Builder::Dockerfile));
        assert_eq!(table.build.target.as_deref(), Some("runtime"));
        assert_eq!(table.build.args["GREETING"], "hi");
        assert_eq!(table.build.resources.cpu_millis, 2_000);
        assert_eq!(table.build.resources.memory_bytes, 2 << 30);
        assert_eq!(table.release.as_deref(), Some("python manage.py migrate"));
        assert!(table.read_only_root);

        let procfile = Manifest::parse(
            "name = \"web\"",
            Some("web: gunicorn app:app\nrelease: ./migrate\n"),
        )
        .unwrap();
        assert_eq!(procfile.cmd.as_deref(), Some("gunicorn app:app"));
        assert_eq!(procfile.release.as_deref(), Some("./migrate"));

        for (text, field) in [
            ("name = \"web\"\nbuild = \"cobol\"", "build"),
            ("name = \"web\"\nruntime = \"python3\"", "runtime"),
            ("name = \"web\"\nrelease = \" \"", "release"),
            (
                "name = \"web\"\n[build.args]\n\"A B\" = \"1\"",
                "build.args.A B",
            ),
            ("name = \"web\"\n[build]\ncpu = 0", "build.cpu"),
        ] {
            let errors = Manifest::parse(text, None).unwrap_err();
            assert!(
                errors.0.iter().any(|error| error.field == field),
                "{text:?}: {errors}"
            );
        }
        // Records written before builds existed still read.
        let old = r#"{"name":"web","image":null,"cmd":"./serve","port":8080,"replicas":1,
            "resources":{"cpu_millis":250,"memory_bytes":134217728},"env":{},
            "health":{"path":null,"interval_ms":2000,"timeout_ms":1000},"domains":[]}"#;
        let old: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(old.build, BuildSettings::default());
        assert_eq!(old.cmd.as_deref(), Some("./serve"));
    }

    #[test]
    fn every_error_names_its_field_and_all_are_reported_at_once() {
        let errors = Manifest::parse(
            r#"
            name = "Bad_Name"
            port = 70000
            replicas = 0
            [resources]
            cpu = -1
            memory = "lots"
            [env]
            PORT = "1"
            "1X" = "y"
            [health]
            path = "healthz"
            interval = "soon"
            [build]
            builder = "rust"
            memory = "1MiB"
            "#,
            None,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "name",
            "build",
            "build.memory",
            "port",
            "replicas",
            "resources.cpu",
            "resources.memory",
            "env.PORT",
            "env.1X",
            "health.path",
            "health.interval",
        ] {
            assert!(
                fields.contains(&field),
                "{field} not reported in {fields:?}"
            );
        }
        assert!(errors.to_string().contains("stratus.toml"));
    }

    #[test]
    fn unknown_keys_and_broken_toml_are_refused() {
        let typo = Manifest::parse("name = \"a\"\ncmd = \"x\"\nreplica = 2", None).unwrap_err();
        assert!(typo.to_string().contains("replica"), "{typo}");
        assert!(Manifest::parse("name = ", None).is_err());
    }

    /// Every form of size the hand-written parser accepted, and what it meant: the move to
    /// `bytesize` must not change one of them (k, m and g are binary, as they always were).
    #[test]
    fn memory_sizes_keep_their_meaning() {
        use toml_size::Size::{Bytes, Text};
        let text = |s: &str| Text(s.to_string());
        let cases: &[(toml_size::Size, u64)] = &[
            (Bytes(1), 1),
            (Bytes(268_435_456), 256 << 20),
            (text("0"), 0),
            (text("4194304"), 4 << 20),
            (text("100b"), 100),
            (text("100B"), 100),
            (text("1k"), 1 << 10),
            (text("1kb"), 1 << 10),
            (text("1KiB"), 1 << 10),
            (text("1K"), 1 << 10),
            (text("512m"), 512 << 20),
            (text("512M"), 512 << 20),
            (text("512mb"), 512 << 20),
            (text("512MB"), 512 << 20),
            (text("256MiB"), 256 << 20),
            (text("256mib"), 256 << 20),
            (text("256 MiB"), 256 << 20),
            (text("  256MiB  "), 256 << 20),
            (text("1g"), 1 << 30),
            (text("1G"), 1 << 30),
            (text("1GB"), 1 << 30),
            (text("1GiB"), 1 << 30),
            (text("1.5G"), 3 << 29),
            (text("0.5GiB"), 512 << 20),
            (text(".5g"), 512 << 20),
            (text("2."), 2),
            (text("1.5"), 1),
            (text("64 m"), 64 << 20),
        ];
        for (input, expected) in cases {
            let shown = format!("{input:?}");
            let input = match input {
                Bytes(n) => Bytes(*n),
                Text(t) => Text(t.clone()),
            };
            assert_eq!(parse_size(input), Ok(*expected), "{shown}");
        }
        for (bad, says) in [
            (text("lots"), "is not a size"),
            (text(""), "is not a size"),
            (text("1.2.3G"), "is not a size"),
            (text("-1G"), "is not a size"),
            (text("1T"), "unknown unit"),
            (text("1 gigabyte"), "unknown unit"),
            (text("1e3"), "unknown unit"),
            (Bytes(0), "is not a size"),
            (Bytes(-5), "is not a size"),
        ] {
            let shown = format!("{bad:?}");
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(says), "{shown}: {err}");
            assert!(
                err.contains("MiB"),
                "{shown}: the error shows a valid size: {err}"
            );
        }
    }

    /// Every form of duration the hand-written parser accepted (a bare number is seconds),
    /// and what it meant in milliseconds: the move to `humantime` must keep each of them.
    #[test]
    fn durations_keep_their_meaning() {
        for (input, ms) in [
            ("500ms", 500),
            ("2s", 2_000),
            ("1m", 60_000),
            ("10m", 600_000),
            ("2", 2_000),
            ("0", 0),
            ("1.5", 1_500),
            ("1.5s", 1_500),
            ("0.25s", 250),
            (".5s", 500),
            ("2.s", 2_000),
            ("3.", 3_000),
            ("1.5m", 90_000),
            ("2 s", 2_000),
            (" 500ms ", 500),
            ("100 ms", 100),
            ("0.5ms", 1),
            ("1.4ms", 1),
        ] {
            assert_eq!(parse_duration_ms(input), Ok(ms), "{input:?}");
        }
        // New with humantime: compound durations and more unit names.
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("750msec"), Ok(750));
        for bad in [
            "soon",
            "",
            ".",
            "-1s",
            "1.2.3s",
            "2S",
            "5 fortnights",
            "1e3s",
        ] {
            let err = parse_duration_ms(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
            assert!(
                err.contains("ms"),
                "{bad:?}: the error says what is valid: {err}"
            );
        }
    }

    #[test]
    fn routes_are_path_prefixes_checked_and_normalised() {
        let manifest = Manifest::parse(
            r#"
            name = "api"
            cmd = "x"
            domains = ["example.com"]
            [[routes]]
            path = "/api/"
            [[routes]]
            path = "/v1/users:search"
            "#,
            None,
        )
        .unwrap();
        let paths: Vec<&str> = manifest.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/api", "/v1/users:search"]);
        let root = Manifest::parse("name = \"a\"\ncmd = \"x\"\n[[routes]]\npath = \"/\"", None);
        assert_eq!(root.unwrap().routes[0].path, "/");
        assert!(
            Manifest::parse("name = \"a\"\ncmd = \"x\"", None)
                .unwrap()
                .routes
                .is_empty(),
            "no routes: every path"
        );

        for bad in [
            "api",
            "",
            "/api/../admin",
            "/./api",
            "/a//b",
            "/a b",
            "/api?x=1",
            "/api#top",
            "/caf%C3%A9",
            "/é",
        ] {
            let text = format!("name = \"a\"\ncmd = \"x\"\n[[routes]]\npath = {bad:?}");
            let errors = Manifest::parse(&text, None).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{bad:?}: {errors}");
            assert_eq!(errors.0[0].field, "routes[0].path", "{bad:?}");
            assert!(errors.0[0].message.contains("/api"), "{bad:?}: {errors}");
        }
        let long = format!("/{}", "a".repeat(MAX_ROUTE_PATH_LEN));
        let text = format!("name = \"a\"\ncmd = \"x\"\n[[routes]]\npath = {long:?}");
        assert!(Manifest::parse(&text, None).is_err());

        let twice =
            "name = \"a\"\ncmd = \"x\"\n[[routes]]\npath = \"/api\"\n[[routes]]\npath = \"/api/\"";
        let errors = Manifest::parse(twice, None).unwrap_err();
        assert_eq!(errors.0[0].field, "routes[1].path");
        assert!(errors.0[0].message.contains("twice"), "{errors}");

        let many: String = (0..=MAX_ROUTES)
            .map(|i| format!("[[routes]]\npath = \"/p{i}\"\n"))
            .collect();
        let errors =
            Manifest::parse(&format!("name = \"a\"\ncmd = \"x\"\n{many}"), None).unwrap_err();
        assert_eq!(errors.0[0].field, "routes");

        let typo = "name = \"a\"\ncmd = \"x\"\n[[routes]]\nprefix = \"/api\"";
        assert!(
            Manifest::parse(typo, None).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn a_manifest_without_routes_serialises_as_before() {
        let manifest = Manifest::parse("name = \"web\"\ncmd = \"x\"", None).unwrap();
        let json = serde_json::to_value(&manifest).unwrap();
        assert!(json.get("routes").is_none(), "{json}");
        let mut with_routes = manifest.clone();
        with_routes.routes = vec![Route {
            path: "/api".into(),
        }];
        let json = serde_json::to_string(&with_routes).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, with_routes);
    }

    #[test]
    fn security_takes_a_read_only_root_and_a_non_root_user() {
        let secured = Manifest::parse(
            "name = \"web\"\ncmd = \"x\"\n[security]\nread_only_root = true\nuser = \"1000:1000\"",
            None,
        )
        .unwrap();
        assert!(secured.read_only_root);
        assert_eq!(secured.user.as_deref(), Some("1000:1000"));

        let old =
            Manifest::parse("name = \"web\"\ncmd = \"x\"\nread_only_root = true", None).unwrap();
        assert!(old.read_only_root, "the top-level key still works");
        assert_eq!(old.user, None);

        let plain = Manifest::parse("name = \"web\"\ncmd = \"x\"", None).unwrap();
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("user").is_none(), "records read as before: {json}");

        for (text, field) in [
            (
                "read_only_root = true\n[security]\nread_only_root = true",
                "read_only_root",
            ),
            ("[security]\nuser = \"root\"", "security.user"),
            ("[security]\nuser = \"0:0\"", "security.user"),
            ("[security]\nuser = \"1000:\"", "security.user"),
            ("[security]\nuser = \"a b\"", "security.user"),
            ("[security]\nuser = \"-u\"", "security.user"),
        ] {
            let text = format!("name = \"web\"\ncmd = \"x\"\n{text}");
            let errors = Manifest::parse(&text, None).unwrap_err();
            assert_eq!(errors.0[0].field, field, "{text}");
        }
        assert!(
            Manifest::parse("name = \"web\"\n[security]\nprivileged = true", None).is_err(),
            "unknown security keys are refused"
        );
    }

    #[test]
    fn app_names_are_dns_labels() {
        assert!(validate_app_name("hello-2").is_ok());
        for bad in ["", "2hello", "hello-", "Hello", "he_llo", &"a".repeat(41)] {
            assert!(validate_app_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
