//! The app manifest, `stratus.toml` at the root of an app folder, and its validation.
//!
//! Parsing is pure (text in, typed manifest or a list of errors out) so the CLI can check a
//! folder before uploading it and the API can refuse a bad bundle before storing anything.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "stratus.toml";
pub const PROCFILE: &str = "Procfile";
pub const DEFAULT_PORT: u16 = 8080;
pub const MAX_REPLICAS: u32 = 100;

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    pub name: String,
    /// `None`: the node's default image.
    pub image: Option<String>,
    /// Shell command that starts the app (from `cmd` or the Procfile's `web:` line).
    pub cmd: String,
    /// The port the app listens on, given to it as `$PORT`.
    pub port: u16,
    pub replicas: u32,
    pub resources: Resources,
    pub env: BTreeMap<String, String>,
    pub health: HealthCheck,
    pub domains: Vec<String>,
    /// How a new release replaces the old one. Absent in releases recorded before it
    /// existed: those get the defaults.
    #[serde(default)]
    pub rollout: Rollout,
}

/// How a release rolls out: `max_surge` new replicas at a time beyond the desired count,
/// each given `health_timeout_ms` to become healthy before the rollout fails and the app
/// goes back to its previous release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    pub max_surge: u32,
    pub health_timeout_ms: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_surge: 1,
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

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_millis: 250,
            memory_bytes: 128 << 20,
        }
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
    rollout: RawRollout,
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
        let cmd = match (raw.cmd, procfile.and_then(procfile_web)) {
            (Some(cmd), _) if !cmd.trim().is_empty() => cmd,
            (Some(_), _) => {
                fail(
                    "cmd",
                    "is empty: give the command that starts the app".into(),
                );
                String::new()
            }
            (None, Some(web)) => web,
            (None, None) => {
                fail(
                    "cmd",
                    "missing: set `cmd = \"...\"` or add a Procfile with a `web:` line".into(),
                );
                String::new()
            }
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
            Some(n) if (1..=i64::from(MAX_REPLICAS)).contains(&n) => n as u32,
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
        if let Some(image) = &raw.image
            && (image.trim().is_empty() || image.contains(char::is_whitespace))
        {
            fail("image", format!("{image:?} is not an image reference"));
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
            rollout: Rollout {
                max_surge,
                health_timeout_ms,
            },
        })
    }
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

fn procfile_web(procfile: &str) -> Option<String> {
    procfile.lines().find_map(|line| {
        let (kind, cmd) = line.split_once(':')?;
        (kind.trim() == "web" && !cmd.trim().is_empty()).then(|| cmd.trim().to_string())
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
    let (number, unit) = number_and_unit(&text)
        .ok_or_else(|| format!("{text:?} is not a size: use e.g. \"256MiB\" or \"1GiB\""))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit: use B, KiB, MiB or GiB"
            ));
        }
    };
    Ok((number * multiplier as f64) as u64)
}

/// `"256 MiB"` → `(256.0, "MiB")`; `None` if it does not start with a number.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// `"500ms"`, `"2s"`, `"1m"`, or a bare number of seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("{text:?} is not a duration: use e.g. \"2s\" or \"500ms\""))?;
    let ms = match unit {
        "ms" => number,
        "" | "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return Err(format!("{text:?} has an unknown unit: use ms, s or m")),
    };
    Ok(ms.round() as u64)
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
                max_surge: 2,
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
        assert_eq!(manifest.cmd, "./serve --port $PORT");
        assert_eq!(manifest.port, DEFAULT_PORT);
        assert_eq!(manifest.replicas, 1);
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
            "#,
            None,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "name",
            "cmd",
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

    #[test]
    fn app_names_are_dns_labels() {
        assert!(validate_app_name("hello-2").is_ok());
        for bad in ["", "2hello", "hello-", "Hello", "he_llo", &"a".repeat(41)] {
            assert!(validate_app_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
