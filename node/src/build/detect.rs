//! Which builder an app takes: the one `build = "..."` names in `stratus.toml`, or the
//! first that its files call for, in a fixed order so the same folder always gets the same
//! builder. `stratus deploy` prints the choice with its reason.

use super::SourceTree;

pub use proto::build::{Builder, UnknownBuilder};

/// The files that make an app a Python one, in the order they are reported.
pub const PYTHON_FILES: [&str; 3] = ["requirements.txt", "pyproject.toml", "Pipfile"];

/// The builder chosen, and why, in words for the deploy's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub builder: Builder,
    pub reason: String,
}

/// `declared` is the manifest's `build`; `has_cmd` whether the manifest or a Procfile gives
/// a start command (a folder with an `index.html` and a command is an app that serves it).
pub fn detect(tree: &impl SourceTree, declared: Option<Builder>, has_cmd: bool) -> Detection {
    let chose = |builder, reason: String| Detection { builder, reason };
    if let Some(builder) = declared {
        return chose(builder, format!("build = \"{builder}\" in stratus.toml"));
    }
    if tree.exists("Dockerfile") {
        return chose(Builder::Dockerfile, "found a Dockerfile".into());
    }
    if let Some(file) = PYTHON_FILES.into_iter().find(|file| tree.exists(file)) {
        return chose(Builder::Python, format!("found {file}"));
    }
    if tree.exists("package.json") {
        return chose(Builder::Node, "found package.json".into());
    }
    if tree.exists("index.html") && !has_cmd {
        return chose(Builder::Static, "found index.html and no cmd".into());
    }
    chose(
        Builder::Image,
        "no Dockerfile, Python or Node project, or static site: the manifest's image runs its cmd"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn files(names: &[&'static str]) -> BTreeMap<&'static str, &'static str> {
        names.iter().map(|name| (*name, "")).collect()
    }

    #[test]
    fn files_choose_the_builder_in_order() {
        let cases: &[(&[&str], bool, Builder, &str)] = &[
            (
                &["Dockerfile", "requirements.txt"],
                false,
                Builder::Dockerfile,
                "found a Dockerfile",
            ),
            (
                &["requirements.txt", "package.json"],
                false,
                Builder::Python,
                "found requirements.txt",
            ),
            (
                &["pyproject.toml"],
                false,
                Builder::Python,
                "found pyproject.toml",
            ),
            (
                &["Pipfile", "index.html"],
                false,
                Builder::Python,
                "found Pipfile",
            ),
            (
                &["package.json", "index.html"],
                false,
                Builder::Node,
                "found package.json",
            ),
            (
                &["index.html"],
                false,
                Builder::Static,
                "found index.html and no cmd",
            ),
            (&["index.html"], true, Builder::Image, "no Dockerfile"),
            (&["server.sh"], true, Builder::Image, "no Dockerfile"),
        ];
        for (names, has_cmd, builder, reason) in cases {
            let detection = detect(&files(names), None, *has_cmd);
            assert_eq!(detection.builder, *builder, "{names:?}");
            assert!(detection.reason.starts_with(reason), "{detection:?}");
        }
    }

    #[test]
    fn a_declared_builder_wins_over_the_files() {
        let detection = detect(&files(&["Dockerfile"]), Some(Builder::Static), false);
        assert_eq!(detection.builder, Builder::Static);
        assert_eq!(detection.reason, "build = \"static\" in stratus.toml");
    }

    #[test]
    fn builder_names_round_trip_and_unknown_ones_list_the_choices() {
        for builder in Builder::ALL {
            assert_eq!(builder.name().parse(), Ok(builder));
        }
        let err = "buildpack".parse::<Builder>().unwrap_err();
        assert!(
            err.to_string()
                .contains("dockerfile, python, node, static, image")
        );
    }
}
