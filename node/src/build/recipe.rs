//! What each builder builds: a Dockerfile, the files it generates into the build context,
//! the start command, and the files whose content keys the dependency layer. For the
//! python, node and static builders the Dockerfile makes only the dependency image (base,
//! settings, installed dependencies, start command) and the code is not part of it: the
//! node adds the bundle as one more layer at [`Recipe::code_at`], so a change to the code
//! alone is a tar of the code, not a build.

use std::collections::BTreeMap;

use super::SourceTree;
use super::detect::Builder;

/// Where generated files go inside the build context (never a path an app would use).
pub const GENERATED_DIR: &str = ".stratus";

/// Where the python, node and static builders put the app's code (their `WORKDIR`).
pub const CODE_DIR: &str = "/app";

/// The image the static builder serves from: a static busybox with its `httpd`.
pub const STATIC_IMAGE: &str = "stratus/busybox:latest";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub builder: Builder,
    /// The runtime chosen (`python-3.11`), `None` for builders without one.
    pub runtime: Option<String>,
    /// The image the build starts from; for a Dockerfile, every `FROM` that is not a stage.
    pub base_images: Vec<String>,
    /// The Dockerfile to build with; `None`: the bundle's own. With `code_at`, it builds
    /// the dependency image, from the generated and dependency files alone.
    pub dockerfile: Option<String>,
    /// How the dependencies are installed (python, node): a command in a container of the
    /// base image, committed as the dependency image. `None`: the Dockerfile makes it.
    pub install: Option<Install>,
    /// Where the bundle goes in the image, as a layer on the dependency image; `None`: the
    /// Dockerfile puts the code where it wants (or the image runs the bundle mounted).
    pub code_at: Option<String>,
    /// Files written into the build context first, path (relative) and content.
    pub generated: Vec<(String, String)>,
    /// The bundle's files that key the dependency layer, besides the base image.
    pub dependency_files: Vec<String>,
    /// The start command, `None` when the image's own (a Dockerfile's `CMD`) is used.
    pub start: Option<String>,
}

/// A dependency install: `command` runs by `sh -c` in a container of the base image, with
/// the dependency and generated files at [`INSTALL_CONTEXT_DIR`] (read-only) and this node's
/// download cache for `cache` at [`INSTALL_CACHE_DIR`], so a second install of the same
/// packages downloads nothing. The container is committed with `env`, `PATH` prefixed by
/// `path_prefix`, `working_dir` and the start command: the dependency image. (Docker's
/// classic builder cannot mount a cache into a `RUN`; this is what BuildKit's cache mounts do.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Install {
    pub command: String,
    pub env: Vec<(String, String)>,
    pub path_prefix: Option<String>,
    pub working_dir: String,
    /// The download cache's name: `pip` or `npm`.
    pub cache: &'static str,
}

/// Where an install sees the dependency files.
pub const INSTALL_CONTEXT_DIR: &str = "/stratus/context";
/// Where an install sees this node's download cache.
pub const INSTALL_CACHE_DIR: &str = "/stratus/cache";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error(
        "no base image for {asked}: this cluster has {have}; set `runtime` to one of them, or map one with `--base-image {asked}=IMAGE` on the agents"
    )]
    UnknownRuntime { asked: String, have: String },
    #[error("{file} does not parse: {reason}")]
    Unparsable { file: String, reason: String },
    #[error("no start command for this {builder} app: {looked}")]
    NoStart { builder: Builder, looked: String },
    #[error("the Dockerfile has no FROM line")]
    NoFrom,
}

/// The base image of each runtime, newest version first when none is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImages {
    /// `python-3.11` → `stratus/python:3.11`.
    images: BTreeMap<String, String>,
}

impl BaseImages {
    /// The images `scripts/build-images.sh` builds from Debian's packages.
    pub fn local() -> BaseImages {
        let images = [
            ("python-3.11", "stratus/python:3.11"),
            ("node-18", "stratus/node:18"),
        ];
        BaseImages {
            images: images
                .into_iter()
                .map(|(runtime, image)| (runtime.to_string(), image.to_string()))
                .collect(),
        }
    }

    /// Maps a runtime to another image, `python-3.11=python:3.11-slim` (`--base-image`).
    pub fn set(&mut self, mapping: &str) -> Result<(), String> {
        let (runtime, image) = mapping
            .split_once('=')
            .filter(|(runtime, image)| !image.is_empty() && runtime_version(runtime).is_some())
            .ok_or_else(|| {
                format!("invalid base image {mapping:?}: write RUNTIME=IMAGE, e.g. python-3.11=python:3.11-slim")
            })?;
        self.images.insert(runtime.to_string(), image.to_string());
        Ok(())
    }

    /// The runtime and image for `language`: the one `asked` names (`3.11`, `3.11.4` and
    /// `python-3.11` all mean `python-3.11`), else the newest.
    fn resolve(
        &self,
        language: &str,
        asked: Option<&str>,
    ) -> Result<(String, String), RecipeError> {
        let mut known: Vec<(&String, &String)> = self
            .images
            .iter()
            .filter(|(runtime, _)| runtime_language(runtime) == Some(language))
            .collect();
        known.sort_by_key(|(runtime, _)| runtime_version(runtime));
        let prefix = format!("{language}-");
        let wanted = asked.map(|asked| {
            let asked = asked.trim();
            asked
                .strip_prefix(&prefix)
                .unwrap_or(asked)
                .trim_start_matches('v')
        });
        let found = match wanted {
            None => known.last().copied(),
            Some(wanted) => known.iter().copied().find(|(runtime, _)| {
                let version = &runtime[prefix.len()..];
                wanted == version || wanted.starts_with(&format!("{version}."))
            }),
        };
        found
            .map(|(runtime, image)| (runtime.clone(), image.clone()))
            .ok_or_else(|| RecipeError::UnknownRuntime {
                asked: format!("{prefix}{}", wanted.unwrap_or("(any)")),
                have: known
                    .iter()
                    .map(|(runtime, _)| runtime.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

fn runtime_language(runtime: &str) -> Option<&str> {
    runtime.split_once('-').map(|(language, _)| language)
}

fn runtime_version(runtime: &str) -> Option<Vec<u32>> {
    let (_, version) = runtime.split_once('-')?;
    version.split('.').map(|part| part.parse().ok()).collect()
}

/// What the manifest says that a recipe needs.
#[derive(Debug, Clone, Default)]
pub struct Asked<'a> {
    /// `runtime = "python-3.11"`.
    pub runtime: Option<&'a str>,
    /// `cmd`, or the Procfile's `web:` line.
    pub cmd: Option<&'a str>,
}

pub fn recipe(
    builder: Builder,
    tree: &impl SourceTree,
    asked: &Asked<'_>,
    bases: &BaseImages,
) -> Result<Recipe, RecipeError> {
    match builder {
        Builder::Dockerfile => dockerfile(tree),
        Builder::Python => python(tree, asked, bases),
        Builder::Node => node(tree, asked, bases),
        Builder::Static => Ok(static_site()),
        Builder::Image => Ok(Recipe {
            builder,
            runtime: None,
            base_images: Vec::new(),
            dockerfile: None,
            install: None,
            code_at: None,
            generated: Vec::new(),
            dependency_files: Vec::new(),
            start: asked.cmd.map(str::to_string),
        }),
    }
}

/// A file the builder cannot do without, as text.
fn read_text(tree: &impl SourceTree, file: &str) -> Result<String, RecipeError> {
    tree.read(file).ok_or_else(|| RecipeError::Unparsable {
        file: file.into(),
        reason: "not readable as text".into(),
    })
}

fn dockerfile(tree: &impl SourceTree) -> Result<Recipe, RecipeError> {
    let text = read_text(tree, "Dockerfile")?;
    let mut stages = Vec::new();
    let mut bases = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if !words
            .next()
            .is_some_and(|word| word.eq_ignore_ascii_case("from"))
        {
            continue;
        }
        let words: Vec<&str> = words.filter(|word| !word.starts_with("--")).collect();
        let Some(image) = words.first() else { continue };
        if !stages
            .iter()
            .any(|stage: &String| stage.eq_ignore_ascii_case(image))
            && !bases.iter().any(|base| base == image)
        {
            bases.push(image.to_string());
        }
        if let [_, as_word, stage] = words.as_slice()
            && as_word.eq_ignore_ascii_case("as")
        {
            stages.push(stage.to_string());
        }
    }
    if bases.is_empty() {
        return Err(RecipeError::NoFrom);
    }
    Ok(Recipe {
        builder: Builder::Dockerfile,
        runtime: None,
        base_images: bases,
        dockerfile: None,
        install: None,
        code_at: None,
        generated: Vec::new(),
        dependency_files: Vec::new(),
        start: None,
    })
}

fn python(
    tree: &impl SourceTree,
    asked: &Asked<'_>,
    bases: &BaseImages,
) -> Result<Recipe, RecipeError> {
    let pinned = tree.read(".python-version");
    let wanted = asked.runtime.or(pinned.as_deref().map(str::trim));
    let (runtime, image) = bases.resolve("python", wanted)?;
    let (requirements, dependency_files) = python_requirements(tree)?;
    let generated_requirements = format!("{GENERATED_DIR}/requirements.txt");
    let start = match asked.cmd {
        Some(cmd) => cmd.to_string(),
        None => python_start(tree, &requirements)?,
    };
    let install = Install {
        // The downloads are kept as wheel files, not in pip's HTTP cache: that one keeps
        // only responses whose headers allow it, which a proxy may strip. `pip wheel`
        // skips a file already in the folder (and keeps what it had to build from source).
        command: format!(
            "python3 -m venv /opt/venv && \
             pip wheel --wheel-dir {INSTALL_CACHE_DIR}/wheels --find-links {INSTALL_CACHE_DIR}/wheels \
             -r {INSTALL_CONTEXT_DIR}/{generated_requirements} && \
             pip install --no-index --find-links {INSTALL_CACHE_DIR}/wheels \
             -r {INSTALL_CONTEXT_DIR}/{generated_requirements}"
        ),
        env: vec![
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()),
        ],
        path_prefix: Some("/opt/venv/bin".into()),
        working_dir: CODE_DIR.into(),
        cache: "pip",
    };
    Ok(Recipe {
        builder: Builder::Python,
        runtime: Some(runtime),
        base_images: vec![image],
        dockerfile: None,
        install: Some(install),
        code_at: Some(CODE_DIR.into()),
        generated: vec![(generated_requirements, requirements)],
        dependency_files,
        start: Some(start),
    })
}

/// The requirements to install, as a requirements file, from whichever of the Python
/// project files is present, and the files that were read.
fn python_requirements(tree: &impl SourceTree) -> Result<(String, Vec<String>), RecipeError> {
    if let Some(text) = tree.read("requirements.txt") {
        return Ok((text, vec!["requirements.txt".into()]));
    }
    for (file, read) in [
        (
            "pyproject.toml",
            pyproject_dependencies as fn(&toml::Table) -> Result<_, String>,
        ),
        ("Pipfile", pipfile_packages),
    ] {
        let Some(text) = tree.read(file) else {
            continue;
        };
        let unparsable = |reason: String| RecipeError::Unparsable {
            file: file.into(),
            reason,
        };
        let doc: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| unparsable(err.to_string()))?;
        let lines = read(&doc).map_err(unparsable)?;
        return Ok((lines_text(&lines), vec![file.into()]));
    }
    Ok((String::new(), Vec::new()))
}

/// PEP 621's `[project] dependencies`.
fn pyproject_dependencies(doc: &toml::Table) -> Result<Vec<String>, String> {
    let project = doc.get("project").and_then(toml::Value::as_table);
    if project.is_none()
        && doc
            .get("tool")
            .and_then(|tool| tool.get("poetry"))
            .is_some()
    {
        return Err("a Poetry project without a [project] table: run `poetry export -o requirements.txt` and deploy that".into());
    }
    let Some(dependencies) = project.and_then(|project| project.get("dependencies")) else {
        return Ok(Vec::new());
    };
    let dependencies = dependencies
        .as_array()
        .ok_or("[project] dependencies is not a list")?;
    dependencies
        .iter()
        .map(|dependency| {
            dependency
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "a [project] dependency is not a string".to_string())
        })
        .collect()
}

/// Pipenv's `[packages]`: `name = "*"`, `name = "==1.0"` or `name = { version = ">=1" }`.
fn pipfile_packages(doc: &toml::Table) -> Result<Vec<String>, String> {
    let Some(packages) = doc.get("packages") else {
        return Ok(Vec::new());
    };
    let packages = packages.as_table().ok_or("[packages] is not a table")?;
    packages
        .iter()
        .map(|(name, spec)| {
            let version = match spec {
                toml::Value::String(version) => version.as_str(),
                toml::Value::Table(table) => table
                    .get("version")
                    .and_then(toml::Value::as_str)
                    .unwrap_or("*"),
                _ => return Err(format!("package {name} has no version")),
            };
            Ok(match version {
                "*" => name.clone(),
                version => format!("{name}{version}"),
            })
        })
        .collect()
}

fn lines_text(lines: &[String]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// As Railpack starts a Python app: gunicorn for a WSGI `app` when gunicorn is required,
/// else the script itself.
fn python_start(tree: &impl SourceTree, requirements: &str) -> Result<String, RecipeError> {
    let has_gunicorn = requirements.lines().any(|line| {
        let name: String = line
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        name.eq_ignore_ascii_case("gunicorn")
    });
    for module in ["app", "main"] {
        let Some(source) = tree.read(&format!("{module}.py")) else {
            continue;
        };
        let defines_app = source.lines().any(|line| {
            line.strip_prefix("app").is_some_and(|rest| {
                rest.trim_start().starts_with('=') && !rest.trim_start().starts_with("==")
            })
        });
        if has_gunicorn && defines_app {
            return Ok(format!("gunicorn --bind 0.0.0.0:$PORT {module}:app"));
        }
        return Ok(format!("python {module}.py"));
    }
    Err(RecipeError::NoStart {
        builder: Builder::Python,
        looked: "no Procfile `web:` line, no cmd, no app.py or main.py; add `cmd = \"...\"` to stratus.toml".into(),
    })
}

fn node(
    tree: &impl SourceTree,
    asked: &Asked<'_>,
    bases: &BaseImages,
) -> Result<Recipe, RecipeError> {
    let text = read_text(tree, "package.json")?;
    let package: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| RecipeError::Unparsable {
            file: "package.json".into(),
            reason: err.to_string(),
        })?;
    let pinned = tree.read(".nvmrc");
    let wanted = asked.runtime.or(pinned.as_deref().map(str::trim));
    let (runtime, image) = bases.resolve("node", wanted)?;
    let lockfile = ["package-lock.json", "npm-shrinkwrap.json"]
        .into_iter()
        .find(|file| tree.exists(file));
    let start = match asked.cmd {
        Some(cmd) => cmd.to_string(),
        None => node_start(tree, &package)?,
    };
    let mut dependency_files = vec!["package.json".to_string()];
    dependency_files.extend(lockfile.map(str::to_string));
    let npm = match lockfile {
        Some(_) => "npm ci --omit=dev",
        None => "npm install --omit=dev",
    };
    let copies: Vec<String> = dependency_files
        .iter()
        .map(|file| format!("{INSTALL_CONTEXT_DIR}/{file}"))
        .collect();
    let install = Install {
        command: format!(
            "mkdir -p {CODE_DIR} && cp {} {CODE_DIR}/ && {npm} --cache {INSTALL_CACHE_DIR}",
            copies.join(" ")
        ),
        env: vec![("NODE_ENV".into(), "production".into())],
        path_prefix: None,
        working_dir: CODE_DIR.into(),
        cache: "npm",
    };
    Ok(Recipe {
        builder: Builder::Node,
        runtime: Some(runtime),
        base_images: vec![image],
        dockerfile: None,
        install: Some(install),
        code_at: Some(CODE_DIR.into()),
        generated: Vec::new(),
        dependency_files,
        start: Some(start),
    })
}

fn node_start(tree: &impl SourceTree, package: &serde_json::Value) -> Result<String, RecipeError> {
    if package
        .pointer("/scripts/start")
        .is_some_and(serde_json::Value::is_string)
    {
        return Ok("npm start".into());
    }
    if let Some(main) = package.get("main").and_then(serde_json::Value::as_str) {
        return Ok(format!("node {}", shell_word(main)));
    }
    if tree.exists("index.js") {
        return Ok("node index.js".into());
    }
    Err(RecipeError::NoStart {
        builder: Builder::Node,
        looked: "package.json has no scripts.start or main, and there is no index.js".into(),
    })
}

fn static_site() -> Recipe {
    let start = "busybox httpd -f -p $PORT -h /app".to_string();
    let dockerfile = format!("FROM {STATIC_IMAGE}\nCMD {}\n", shell_cmd(&start));
    Recipe {
        builder: Builder::Static,
        runtime: None,
        base_images: vec![STATIC_IMAGE.into()],
        dockerfile: Some(dockerfile),
        install: None,
        code_at: Some(CODE_DIR.into()),
        generated: Vec::new(),
        dependency_files: Vec::new(),
        start: Some(start),
    }
}

/// `CMD` in exec form running `sh -c`, so `$PORT` is expanded when the container starts.
fn shell_cmd(command: &str) -> String {
    serde_json::json!(["/bin/sh", "-c", command]).to_string()
}

/// One word for `sh`, quoted when it needs to be.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::collections::BTreeMap;

    use super::*;

    fn tree(files: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        files.iter().copied().collect()
    }

    fn build(
        builder: Builder,
        files: &[(&'static str, &'static str)],
        asked: Asked<'_>,
    ) -> Result<Recipe, RecipeError> {
        recipe(builder, &tree(files), &asked, &BaseImages::local())
    }

    #[test]
    fn a_flask_app_with_gunicorn_runs_under_gunicorn_with_its_requirements_in_their_own_layer() {
        let recipe = build(
            Builder::Python,
            &[
                ("requirements.txt", "flask==3.0.3\ngunicorn>=22\n"),
                ("app.py", "from flask import Flask\napp = Flask(__name__)\n"),
            ],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(recipe.runtime.as_deref(), Some("python-3.11"));
        assert_eq!(recipe.base_images, ["stratus/python:3.11"]);
        assert_eq!(
            recipe.start.as_deref(),
            Some("gunicorn --bind 0.0.0.0:$PORT app:app")
        );
        assert_eq!(recipe.dependency_files, ["requirements.txt"]);
        assert_eq!(
            recipe.generated,
            [(
                ".stratus/requirements.txt".to_string(),
                "flask==3.0.3\ngunicorn>=22\n".to_string()
            )]
        );
        let install = recipe.install.unwrap();
        assert!(
            install
                .command
                .contains("pip install --no-index --find-links /stratus/cache/wheels -r /stratus/context/.stratus/requirements.txt"),
            "{install:?}"
        );
        assert_eq!(install.cache, "pip");
        assert_eq!(install.path_prefix.as_deref(), Some("/opt/venv/bin"));
        assert_eq!(recipe.dockerfile, None);
        assert_eq!(recipe.code_at.as_deref(), Some("/app"));
    }

    #[test]
    fn python_start_commands_in_order() {
        type Files<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Files, Option<&str>, &str)] = &[
            (
                &[("requirements.txt", "flask\n"), ("app.py", "app = 1")],
                None,
                "python app.py",
            ),
            (
                &[
                    ("requirements.txt", "gunicorn-extras\n"),
                    ("app.py", "app = 1"),
                ],
                None,
                "python app.py",
            ),
            (
                &[
                    ("requirements.txt", "Gunicorn==22\n"),
                    ("main.py", "app = make()"),
                ],
                None,
                "gunicorn --bind 0.0.0.0:$PORT main:app",
            ),
            (
                &[
                    ("requirements.txt", "gunicorn\n"),
                    ("app.py", "if app == 1: pass"),
                ],
                None,
                "python app.py",
            ),
            (
                &[("requirements.txt", ""), ("app.py", "")],
                Some("python -m web"),
                "python -m web",
            ),
        ];
        for (files, cmd, start) in cases {
            let tree: BTreeMap<&str, &str> = files.iter().copied().collect();
            let asked = Asked {
                runtime: None,
                cmd: *cmd,
            };
            let recipe = recipe(Builder::Python, &tree, &asked, &BaseImages::local()).unwrap();
            assert_eq!(recipe.start.as_deref(), Some(*start), "{files:?}");
        }
        let err = build(
            Builder::Python,
            &[("requirements.txt", "")],
            Asked::default(),
        )
        .unwrap_err();
        assert!(matches!(err, RecipeError::NoStart { .. }), "{err}");
        assert!(err.to_string().contains("cmd = "), "says what to do: {err}");
    }

    #[test]
    fn pyproject_and_pipfile_dependencies_become_requirements() {
        let recipe = build(
            Builder::Python,
            &[
                (
                    "pyproject.toml",
                    "[project]\nname = \"web\"\ndependencies = [\"flask>=3\", \"gunicorn\"]\n",
                ),
                ("app.py", "app = 1"),
            ],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(recipe.generated[0].1, "flask>=3\ngunicorn\n");
        assert_eq!(
            recipe.start.as_deref(),
            Some("gunicorn --bind 0.0.0.0:$PORT app:app")
        );

        let recipe = build(
            Builder::Python,
            &[
                ("Pipfile", "[packages]\nflask = \"==3.0.3\"\nrequests = \"*\"\nrich = { version = \">=13\" }\n"),
                ("main.py", ""),
            ],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(recipe.generated[0].1, "flask==3.0.3\nrequests\nrich>=13\n");

        let poetry = build(
            Builder::Python,
            &[
                (
                    "pyproject.toml",
                    "[tool.poetry.dependencies]\nflask = \"^3\"\n",
                ),
                ("app.py", ""),
            ],
            Asked::default(),
        )
        .unwrap_err();
        assert!(poetry.to_string().contains("poetry export"), "{poetry}");
        let broken = build(
            Builder::Python,
            &[("pyproject.toml", "[project"), ("app.py", "")],
            Asked::default(),
        )
        .unwrap_err();
        assert!(
            broken
                .to_string()
                .starts_with("pyproject.toml does not parse"),
            "{broken}"
        );
    }

    #[test]
    fn runtimes_come_from_the_manifest_or_the_version_file_and_unknown_ones_say_what_exists() {
        let files = [
            ("requirements.txt", ""),
            ("app.py", ""),
            (".python-version", "3.11.4\n"),
        ];
        let pinned = build(Builder::Python, &files, Asked::default()).unwrap();
        assert_eq!(pinned.runtime.as_deref(), Some("python-3.11"));
        let asked = Asked {
            runtime: Some("python-3.10"),
            cmd: None,
        };
        let err = build(Builder::Python, &files, asked).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no base image for python-3.10: this cluster has python-3.11; set `runtime` to one of them, or map one with `--base-image python-3.10=IMAGE` on the agents"
        );

        let mut bases = BaseImages::local();
        bases.set("python-3.12=python:3.12-slim").unwrap();
        let newest = recipe(
            Builder::Python,
            &tree(&files[..2]),
            &Asked::default(),
            &bases,
        )
        .unwrap();
        assert_eq!(
            newest.base_images,
            ["python:3.12-slim"],
            "the newest by default"
        );
        assert!(bases.set("python=python:3").is_err());
        assert!(bases.set("python-3.12=").is_err());
    }

    #[test]
    fn node_apps_install_from_the_lockfile_and_start_as_npm_would() {
        let recipe = build(
            Builder::Node,
            &[
                (
                    "package.json",
                    r#"{"name":"web","scripts":{"start":"node server.js"}}"#,
                ),
                ("package-lock.json", "{}"),
            ],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(recipe.runtime.as_deref(), Some("node-18"));
        assert_eq!(recipe.start.as_deref(), Some("npm start"));
        assert_eq!(
            recipe.dependency_files,
            ["package.json", "package-lock.json"]
        );
        let install = recipe.install.unwrap();
        assert!(
            install.command.contains(
                "cp /stratus/context/package.json /stratus/context/package-lock.json /app/ && npm ci --omit=dev --cache /stratus/cache"
            ),
            "{install:?}"
        );

        let main = build(
            Builder::Node,
            &[("package.json", r#"{"main":"src/app server.js"}"#)],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(main.start.as_deref(), Some("node 'src/app server.js'"));
        assert!(
            main.install
                .unwrap()
                .command
                .contains("npm install --omit=dev")
        );
        let index = build(
            Builder::Node,
            &[("package.json", "{}"), ("index.js", "")],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(index.start.as_deref(), Some("node index.js"));

        let none = build(Builder::Node, &[("package.json", "{}")], Asked::default()).unwrap_err();
        assert!(matches!(none, RecipeError::NoStart { .. }));
        let broken = build(
            Builder::Node,
            &[("package.json", "{\"name\": }")],
            Asked::default(),
        )
        .unwrap_err();
        assert!(
            broken
                .to_string()
                .starts_with("package.json does not parse: "),
            "{broken}"
        );
        assert!(
            broken.to_string().contains("line 1"),
            "says where: {broken}"
        );
    }

    #[test]
    fn a_dockerfile_names_its_base_images_but_not_its_own_stages() {
        let recipe = build(
            Builder::Dockerfile,
            &[(
                "Dockerfile",
                "FROM --platform=linux/amd64 stratus/python:3.11 AS deps\nRUN true\nfrom deps AS app\nFROM stratus/busybox:latest\nCOPY --from=app /x /x\n",
            )],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(
            recipe.base_images,
            ["stratus/python:3.11", "stratus/busybox:latest"]
        );
        assert_eq!(recipe.dockerfile, None, "the bundle's own");
        let err = build(
            Builder::Dockerfile,
            &[("Dockerfile", "RUN true\n")],
            Asked::default(),
        )
        .unwrap_err();
        assert_eq!(err, RecipeError::NoFrom);
    }

    #[test]
    fn a_static_site_is_served_by_busybox_httpd_on_port() {
        let recipe = build(
            Builder::Static,
            &[("index.html", "<h1>hi</h1>")],
            Asked::default(),
        )
        .unwrap();
        assert_eq!(recipe.base_images, [STATIC_IMAGE]);
        assert_eq!(
            recipe.start.as_deref(),
            Some("busybox httpd -f -p $PORT -h /app")
        );
    }
}
