//! The sandboxed second Docker daemon (`node::sandbox_dockerd`) against the real `dockerd`:
//! two start at once, each with its own image store and bridge; an image copied from the
//! host's daemon runs in one and is absent from the other; the host's `docker0` survives;
//! dropping a sandbox removes its bridge and folder; a sandbox pulls from the local registry
//! (`scripts/start-registry.sh`, started if it is not running) what the host pushed there.
//!
//! Needs root and Docker, and builds `stratus/busybox:latest` with
//! `scripts/build-images.sh` if it is missing. Set `STRATUS_SKIP_DOCKER_TESTS=1` to skip on
//! a machine without Docker.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

use node::sandbox_dockerd::SandboxDockerd;

const IMAGE: &str = "stratus/busybox:latest";

fn skip() -> bool {
    node::testsuite::skip_docker_tests()
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{} (stdout {:?}, stderr {:?})",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn two_sandboxes_run_at_once_each_with_its_own_images_and_bridge() {
    if skip() {
        return;
    }
    node::testsuite::ensure_test_image().unwrap();
    assert!(
        interface_exists("docker0"),
        "the host's docker0 is missing before the test"
    );

    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| SandboxDockerd::start("sandbox-test-a"));
        let b = scope.spawn(|| SandboxDockerd::start("sandbox-test-b"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(a.host(), b.host());
    assert_ne!(a.bridge(), b.bridge());
    assert_ne!(a.subnet(), b.subnet());
    for sandbox in [&a, &b] {
        assert!(sandbox.socket_path().exists(), "{}", sandbox.host());
        assert!(interface_exists(&sandbox.bridge()), "{}", sandbox.bridge());
        let info = sandbox.docker(&["info", "--format", "{{.DockerRootDir}}"]);
        assert!(info.status.success(), "{}", text(&info));
        assert!(
            String::from_utf8_lossy(&info.stdout).contains("/tmp/stratus-sbx/"),
            "{} runs with the host's data root: {}",
            sandbox.name(),
            text(&info)
        );
        assert!(
            !sandbox.has_image(IMAGE),
            "a fresh sandbox already has {IMAGE}"
        );
    }

    a.copy_image_from_system(IMAGE).unwrap();
    assert!(a.has_image(IMAGE));
    assert!(
        !b.has_image(IMAGE),
        "an image loaded into one sandbox shows in another"
    );

    let ran = a.docker(&["run", "--rm", IMAGE, "echo", "hi"]);
    assert!(ran.status.success(), "{}", text(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "hi");
    // The container is on the sandbox's own bridge.
    let address = a.docker(&["run", "--rm", IMAGE, "ip", "-4", "addr", "show", "eth0"]);
    assert!(address.status.success(), "{}", text(&address));
    let prefix = a.subnet().trim_end_matches("0/24").to_string();
    assert!(
        String::from_utf8_lossy(&address.stdout).contains(&prefix),
        "not on {}: {}",
        a.subnet(),
        text(&address)
    );
    // `--rm` removed them from the sandbox.
    let left = a.docker(&["ps", "-aq"]);
    assert!(left.stdout.is_empty(), "{}", text(&left));

    assert!(
        interface_exists("docker0"),
        "the host's docker0 is gone after a sandbox ran a container"
    );

    // A container still running when the sandbox is dropped is removed with it.
    let detached = a.docker(&["run", "-d", IMAGE, "sleep", "600"]);
    assert!(detached.status.success(), "{}", text(&detached));

    let (bridge_a, bridge_b) = (a.bridge(), b.bridge());
    let (socket_a, socket_b) = (a.socket_path(), b.socket_path());
    drop(a);
    drop(b);
    for (bridge, socket) in [(bridge_a, socket_a), (bridge_b, socket_b)] {
        assert!(!interface_exists(&bridge), "{bridge} is left after drop");
        let dir = socket.parent().unwrap();
        assert!(!dir.exists(), "{} is left after drop", dir.display());
    }
    assert!(
        interface_exists("docker0"),
        "the host's docker0 is gone after the sandboxes stopped"
    );
    let host = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "the host's daemon lost {IMAGE}: {}",
        text(&host)
    );
}

/// Removes a tag from the host's daemon when dropped.
struct HostTag(String);

impl Drop for HostTag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.0])
            .output();
    }
}

/// What the image pull tests rely on: a sandbox, whose store lacks the image, pulls it from
/// the local registry (`scripts/start-registry.sh`, insecure on loopback by Docker's default).
#[test]
fn a_sandbox_pulls_from_the_local_registry_what_the_host_pushed() {
    if skip() {
        return;
    }
    node::testsuite::ensure_test_image().unwrap();
    let script = node::testsuite::examples_dir().join("../scripts/start-registry.sh");
    let started = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "cannot start the registry: {}",
        text(&started)
    );
    let registry = String::from_utf8_lossy(&started.stdout).trim().to_string();

    let reference = format!("{registry}/sandbox-test/busybox:{}", std::process::id());
    let host = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap()
    };
    let tagged = host(&["tag", IMAGE, &reference]);
    assert!(tagged.status.success(), "{}", text(&tagged));
    let _tag = HostTag(reference.clone());
    let pushed = host(&["push", &reference]);
    assert!(pushed.status.success(), "{}", text(&pushed));

    let sandbox = SandboxDockerd::start("sandbox-test-pull").unwrap();
    assert!(!sandbox.has_image(&reference));
    let pulled = sandbox.docker(&["pull", &reference]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert!(sandbox.has_image(&reference));
    let ran = sandbox.docker(&["run", "--rm", &reference, "echo", "pulled"]);
    assert!(ran.status.success(), "{}", text(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "pulled");
}
