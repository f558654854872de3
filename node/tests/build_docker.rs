//! The source builders' recipes built by the real Docker daemon (`node::build`): a static
//! site (its dependency image built, the code composed onto it as a layer and loaded) and
//! Dockerfile apps from `stratus/busybox:latest` (built by `scripts/build-images.sh` if
//! missing), build args and targets, the classic builder's layer cache, and the failures: a
//! failing step, a missing base image, a build over its time limit and one over its memory
//! limit. Set `STRATUS_SKIP_DOCKER_TESTS=1` to skip without Docker.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use node::build::docker_build::{BuildError, BuildSpec, Built, build};
use node::build::recipe::{Asked, BaseImages, Recipe, recipe};
use node::build::{Folder, detect::Builder, image_layers};

fn skip() -> bool {
    node::testsuite::skip_docker_tests()
}

fn ensure_image() {
    node::testsuite::ensure_test_image().unwrap();
}

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// Removes the test's images when dropped, so a failed run leaves none behind.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

fn app(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn spec(tag: &str) -> BuildSpec {
    BuildSpec {
        tag: tag.into(),
        args: HashMap::new(),
        target: None,
        cpu_millis: 1_000,
        memory_bytes: 256 << 20,
        timeout: Duration::from_secs(120),
        labels: HashMap::from([("stratus.test".to_string(), "build".to_string())]),
    }
}

fn recipe_for(builder: Builder, dir: &Path) -> Recipe {
    recipe(
        builder,
        &Folder(dir),
        &Asked::default(),
        &BaseImages::local(),
    )
    .unwrap()
}

async fn run_build(
    dir: &Path,
    recipe: &Recipe,
    spec: &BuildSpec,
) -> (Result<Built, BuildError>, Vec<String>) {
    let mut seen = Vec::new();
    let built = build(&docker().await, dir, recipe, spec, |line| {
        seen.push(line.to_string())
    })
    .await;
    (built, seen)
}

/// What `cmd` prints in a throwaway container of `image`.
fn run(image: &str, cmd: &str) -> String {
    let out = Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "/bin/sh", image, "-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn image_cmd(image: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{json .Config.Cmd}}", image])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_static_site_builds_into_an_image_that_serves_its_folder() {
    if skip() {
        return;
    }
    ensure_image();
    let tag = "stratus-test/static:1";
    let _images = Images(vec![tag.into()]);
    let dir = app(&[
        ("index.html", "<h1>hello</h1>\n"),
        ("css/site.css", "h1 {}\n"),
    ]);
    let recipe = recipe_for(Builder::Static, dir.path());
    assert_eq!(recipe.code_at.as_deref(), Some("/app"));
    // The dependency image: the base and the start command, none of the site's files.
    let deps = "stratus-test/static-deps:1";
    let _deps = Images(vec![deps.into()]);
    let (built, seen) = run_build(dir.path(), &recipe, &spec(deps)).await;
    let built = built.unwrap();
    assert!(built.image_id.starts_with("sha256:"), "{built:?}");
    assert_eq!(seen, built.log, "every line was shown as it came");
    assert_eq!(built.steps.len(), 3, "FROM, CMD, LABEL: {:?}", built.steps);
    assert_eq!(
        run(deps, "ls -A /app 2>/dev/null"),
        "",
        "the code is not in the dependency image (busybox has an empty /app)"
    );

    // The code composed onto it as one layer, without Docker, and loaded into Docker.
    let docker = docker().await;
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = node::bundle::BlobStore::open(store_dir.path()).unwrap();
    let parent = image_layers::export(&docker, deps, &blobs).await.unwrap();
    assert_eq!(parent.id, built.image_id);
    let again = image_layers::export(&docker, deps, &blobs).await.unwrap();
    assert_eq!(
        again, parent,
        "exported once: the blobs are found the second time"
    );
    let composed = image_layers::compose(&blobs, &parent, dir.path(), "app", "the site").unwrap();
    assert_eq!(composed.layers.len(), parent.layers.len() + 1);
    image_layers::load(&docker, &blobs, &composed, tag)
        .await
        .unwrap();
    assert_eq!(
        run(tag, "cat /app/index.html /app/css/site.css"),
        "<h1>hello</h1>\nh1 {}\n"
    );
    assert_eq!(
        image_cmd(tag),
        r#"["/bin/sh","-c","busybox httpd -f -p $PORT -h /app"]"#
    );
    // Docker's own id for what it loaded is the config's digest.
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", tag])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), composed.id);

    // A layer Docker lacks must come from the store: without its blob the load fails
    // and says so, and nothing is tagged.
    let other = "stratus-test/static:2";
    let _other = Images(vec![other.into()]);
    std::fs::write(dir.path().join("index.html"), "<h1>changed</h1>\n").unwrap();
    let changed = image_layers::compose(&blobs, &parent, dir.path(), "app", "the site").unwrap();
    let code = &changed.layers.last().unwrap().sha256;
    std::fs::remove_file(blobs.path(code).unwrap()).unwrap();
    let err = image_layers::load(&docker, &blobs, &changed, other)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot load image"), "{err}");
    let inspect = Command::new("docker")
        .args(["image", "inspect", other])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "nothing tagged after a failed load"
    );
}

#[tokio::test]
async fn a_dockerfile_app_takes_build_args_and_a_target_stage() {
    if skip() {
        return;
    }
    ensure_image();
    let tag = "stratus-test/dockerfile:1";
    let _images = Images(vec![tag.into()]);
    let dir = app(&[(
        "Dockerfile",
        "FROM stratus/busybox:latest AS base\nARG GREETING=none\nRUN echo \"$GREETING\" > /greeting\n\
         FROM base AS app\nCMD [\"cat\", \"/greeting\"]\n\
         FROM base AS debug\nRUN echo debug > /greeting\n",
    )]);
    let recipe = recipe_for(Builder::Dockerfile, dir.path());
    assert_eq!(recipe.base_images, ["stratus/busybox:latest"]);
    let mut spec = spec(tag);
    spec.args.insert("GREETING".into(), "bonjour".into());
    spec.target = Some("app".into());
    let (built, _) = run_build(dir.path(), &recipe, &spec).await;
    built.unwrap();
    assert_eq!(
        run(tag, "cat /greeting"),
        "bonjour\n",
        "the arg, and not the later stage"
    );
}

#[tokio::test]
async fn a_code_only_change_reuses_the_dependency_layer() {
    if skip() {
        return;
    }
    ensure_image();
    let tags = ["stratus-test/layers:1", "stratus-test/layers:2"];
    let _images = Images(tags.iter().map(|tag| tag.to_string()).collect());
    // The shape of the Python and Node recipes: the dependency file alone, installed, then
    // the code. The install step records when it ran.
    let dockerfile = "FROM stratus/busybox:latest\nCOPY deps.txt /deps.txt\n\
                      RUN date +%s%N > /installed-at\nCOPY . /app\n";
    let dir = app(&[
        ("Dockerfile", dockerfile),
        ("deps.txt", "flask\n"),
        ("app.py", "v1\n"),
    ]);
    let recipe = recipe_for(Builder::Dockerfile, dir.path());
    run_build(dir.path(), &recipe, &spec(tags[0]))
        .await
        .0
        .unwrap();
    std::fs::write(dir.path().join("app.py"), "v2\n").unwrap();
    let (second, _) = run_build(dir.path(), &recipe, &spec(tags[1])).await;
    let second = second.unwrap();
    let install = second
        .log
        .iter()
        .position(|line| line.contains("RUN date"))
        .unwrap();
    assert!(
        second.log[install + 1].contains("Using cache"),
        "the install step is reused: {:?}",
        second.log
    );
    assert_eq!(
        run(tags[0], "cat /installed-at"),
        run(tags[1], "cat /installed-at")
    );
    assert_eq!(run(tags[1], "cat /app/app.py"), "v2\n");
}

#[tokio::test]
async fn a_failing_step_names_itself_and_leaves_no_image() {
    if skip() {
        return;
    }
    ensure_image();
    let tag = "stratus-test/failing:1";
    let _images = Images(vec![tag.into()]);
    let dir = app(&[(
        "Dockerfile",
        "FROM stratus/busybox:latest\nRUN echo installing && echo 'no such package' >&2 && exit 3\n",
    )]);
    let recipe = recipe_for(Builder::Dockerfile, dir.path());
    let (built, _) = run_build(dir.path(), &recipe, &spec(tag)).await;
    let err = built.unwrap_err();
    let BuildError::Failed { reason, log_tail } = &err else {
        panic!("{err}");
    };
    assert!(reason.contains("returned a non-zero code: 3"), "{reason}");
    assert!(
        log_tail.contains(&"no such package".to_string()),
        "stderr, without its colour codes: {log_tail:?}"
    );
    assert!(
        err.to_string().contains("Step 2/3 : RUN echo installing"),
        "{err}"
    );
    let inspect = Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "no image tagged after a failure");
}

#[tokio::test]
async fn a_missing_base_image_is_named_with_what_to_do() {
    if skip() {
        return;
    }
    let dir = app(&[("Dockerfile", "FROM stratus/no-such-base:9\nRUN true\n")]);
    let recipe = recipe_for(Builder::Dockerfile, dir.path());
    let (built, seen) = run_build(dir.path(), &recipe, &spec("stratus-test/nobase:1")).await;
    let err = built.unwrap_err();
    assert!(
        matches!(err, BuildError::MissingBase { ref image } if image == "stratus/no-such-base:9")
    );
    assert!(
        err.to_string().contains("scripts/build-base-images.sh"),
        "{err}"
    );
    assert!(seen.is_empty(), "refused before any build started");
}

#[tokio::test]
async fn a_build_over_its_time_limit_is_stopped() {
    if skip() {
        return;
    }
    ensure_image();
    let tag = "stratus-test/slow:1";
    let _images = Images(vec![tag.into()]);
    let dir = app(&[(
        "Dockerfile",
        "FROM stratus/busybox:latest\nRUN echo started && sleep 60\n",
    )]);
    let recipe = recipe_for(Builder::Dockerfile, dir.path());
    let mut spec = spec(tag);
    spec.timeout = Duration::from_secs(3);
    let (built, _) = run_build(dir.path(), &recipe, &spec).await;
    let err = built.unwrap_err();
    // Only the deadline gives TimedOut: the step itself would run for a minute.
    assert!(matches!(err, BuildError::TimedOut { .. }), "{err}");
    // The daemon stops the build when the request goes: its container is removed.
    let mut left = String::from("?");
    for _ in 0..100 {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=stratus.test=build"])
            .output()
            .unwrap();
        left = String::from_utf8(out.stdout).unwrap();
        if left.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left.trim(), "", "the build's container is gone");
}

#[tokio::test]
async fn a_build_over_its_memory_limit_fails_and_says_so() {
    if skip() {
        return;
    }
    ensure_image();
    let tag = "stratus-test/hungry:1";
    let _images = Images(vec![tag.into()]);
    // `tail` keeps a line that never ends in memory: 400 MiB against a 64 MiB limit.
    let dir = app(&[(
        "Dockerfile",
        "FROM stratus/busybox:latest
RUN set -o pipefail; head -c 400m /dev/zero | tail > /dev/null
",
    )]);
    let recipe = recipe_for(Builder::Dockerfile, dir.path());
    let mut spec = spec(tag);
    spec.memory_bytes = 64 << 20;
    let (built, _) = run_build(dir.path(), &recipe, &spec).await;
    let err = built.unwrap_err();
    assert!(matches!(err, BuildError::Failed { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("137"), "{text}");
    assert!(text.contains("memory limit of 64"), "{text}");
    assert!(text.contains("[build] memory"), "{text}");
}
