//! The Docker driver against the real Docker daemon: busybox httpd containers serving a
//! temporary bundle, published on loopback only (each test on its own 127.0.1.x address).
//!
//! Needs Docker and builds `stratus/busybox:latest` with `scripts/build-images.sh` if it is
//! missing. Set `STRATUS_SKIP_DOCKER_TESTS=1` to skip on a machine without Docker; nothing
//! is skipped silently otherwise. Every test removes its containers, even when it fails.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use node::workload::health::probe;
use node::workload::runtime::{
    ContainerSpec, DockerDriver, DockerOptions, RunningContainer, RuntimeDriver, RuntimeError,
};
use proto::ContainerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const IMAGE: &str = "stratus/busybox:latest";

fn skip() -> bool {
    node::testsuite::skip_docker_tests()
}

fn ensure_image() {
    node::testsuite::ensure_test_image().unwrap();
}

/// Removes the named containers when dropped, so a failing test leaves nothing running.
struct Cleanup(Vec<String>);

impl Cleanup {
    fn new(placements: &[&str]) -> Cleanup {
        let cleanup = Cleanup(placements.iter().map(|p| p.to_string()).collect());
        // Leftovers of an earlier run that was killed before its guard ran.
        cleanup.remove_all();
        cleanup
    }

    /// Removes every container of these placements, whatever node or cluster named it.
    fn remove_all(&self) {
        for placement in &self.0 {
            let listed = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=stratus.placement={placement}"),
                ])
                .output();
            let ids: Vec<String> = listed
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn driver(advertise_ip: &str, node_id: &str) -> DockerDriver {
    ensure_image();
    let options = DockerOptions {
        node_id: Some(node_id.to_string()),
        ..DockerOptions::new(ip(advertise_ip))
    };
    let driver = DockerDriver::connect(options).await.unwrap();
    assert!(driver.is_available().await);
    driver
}

/// A bundle folder holding `index.html`.
fn bundle(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), body).unwrap();
    dir
}

fn spec(placement: &str, node_id: &str, bundle_dir: &Path) -> ContainerSpec {
    ContainerSpec {
        placement_id: placement.to_string(),
        app: "web".into(),
        release: 7,
        replica: 2,
        node_id: node_id.to_string(),
        bundle_dir: bundle_dir.to_path_buf(),
        image: IMAGE.into(),
        cmd: "echo serving on $PORT; exec busybox httpd -f -p $PORT -h /app".into(),
        built: false,
        read_only_root: false,
        user: None,
        port: 8080,
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        tenant: None,
        isolation: Default::default(),
    }
}

/// Polls `probe` until the app answers HTTP, or fails after 15 s.
async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let result = probe(addr, Some("/"), Duration::from_secs(1)).await;
        if result.is_healthy() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never became healthy: {result}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn docker_inspect(name: &str, format: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["inspect", "--format", format, name])
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn find<'a>(list: &'a [RunningContainer], placement: &str) -> Option<&'a RunningContainer> {
    list.iter().find(|c| c.placement_id == placement)
}

#[tokio::test]
async fn serves_the_bundle_and_lists_it_with_labels() {
    if skip() {
        return;
    }
    let placement = "rt-docker-serve";
    let _cleanup = Cleanup::new(&[placement]);
    let driver = driver("127.0.1.1", "node-serve").await;
    let dir = bundle("hello from a stratus container\n");

    let running = driver
        .start(&spec(placement, "node-serve", dir.path()))
        .await
        .unwrap();
    assert_eq!(running.addr.ip(), ip("127.0.1.1"));
    assert_eq!(running.state, ContainerState::Running);
    wait_healthy(running.addr).await;
    let response = http_get(running.addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("hello from a stratus container"),
        "{response}"
    );

    let listed = driver.list().await.unwrap();
    assert_eq!(listed.len(), 1, "only this node's containers: {listed:?}");
    assert_eq!(listed[0], running);
    let name = driver.id_for(placement);
    for (label, value) in [
        ("stratus.app", "web"),
        ("stratus.release", "7"),
        ("stratus.replica", "2"),
        ("stratus.node", "node-serve"),
        ("stratus.placement", placement),
    ] {
        let found = docker_inspect(&name, &format!("{{{{index .Config.Labels \"{label}\"}}}}"));
        assert_eq!(found.as_deref(), Some(value), "label {label}");
    }
    let env = docker_inspect(&name, "{{json .Config.Env}}").unwrap();
    assert!(
        env.contains("PORT=8080") && env.contains("GREETING=hello"),
        "{env}"
    );
    let mounts = docker_inspect(&name, "{{range .Mounts}}{{.Destination}} {{.RW}}{{end}}");
    assert_eq!(
        mounts.as_deref(),
        Some("/app false"),
        "bundle mounted read-only"
    );

    let logs = driver.logs(&running.id, 10).await.unwrap();
    assert_eq!(logs, ["serving on 8080"]);

    driver
        .stop(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn start_is_idempotent_and_recreates_an_exited_container() {
    if skip() {
        return;
    }
    let placement = "rt-docker-idempotent";
    let _cleanup = Cleanup::new(&[placement]);
    let driver = driver("127.0.1.2", "node-idem").await;
    let dir = bundle("idempotent\n");
    let spec = spec(placement, "node-idem", dir.path());

    let first = driver.start(&spec).await.unwrap();
    let second = driver.start(&spec).await.unwrap();
    assert_eq!(second, first, "same placement, same container and address");
    assert_eq!(driver.list().await.unwrap().len(), 1);

    // The app dies; the driver reports it exited and starts a fresh copy on the next start.
    let status = Command::new("docker")
        .args(["kill", &first.id])
        .output()
        .unwrap();
    assert!(status.status.success());
    let listed = driver.list().await.unwrap();
    let exited = find(&listed, placement).unwrap();
    assert_eq!(exited.state, ContainerState::Exited);
    assert_eq!(exited.exit_code, Some(137), "killed by SIGKILL");

    let third = driver.start(&spec).await.unwrap();
    assert_ne!(third.id, first.id, "an exited container is replaced");
    assert_eq!(third.state, ContainerState::Running);
    wait_healthy(third.addr).await;
    assert_eq!(
        driver.list().await.unwrap().len(),
        1,
        "the exited one is gone"
    );

    driver
        .stop(&third.id, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_removes_the_container_and_is_idempotent() {
    if skip() {
        return;
    }
    let placement = "rt-docker-stop";
    let _cleanup = Cleanup::new(&[placement]);
    let driver = driver("127.0.1.3", "node-stop").await;
    let dir = bundle("stop me\n");
    let running = driver
        .start(&spec(placement, "node-stop", dir.path()))
        .await
        .unwrap();
    wait_healthy(running.addr).await;

    let started = Instant::now();
    driver
        .stop(&running.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the app got SIGTERM through Docker's init instead of waiting for the kill: {:?}",
        started.elapsed()
    );
    assert!(driver.list().await.unwrap().is_empty());
    assert_eq!(docker_inspect(&driver.id_for(placement), "{{.Id}}"), None);
    assert!(
        !probe(running.addr, None, Duration::from_secs(1))
            .await
            .is_healthy()
    );

    driver
        .stop(&running.id, Duration::from_secs(1))
        .await
        .unwrap();
    driver
        .stop("stratus-never-existed", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        driver.logs("stratus-never-existed", 5).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error_and_nothing_is_pulled() {
    if skip() {
        return;
    }
    let placement = "rt-docker-noimage";
    let _cleanup = Cleanup::new(&[placement]);
    let driver = driver("127.0.1.4", "node-noimage").await;
    let dir = bundle("never served\n");
    let mut spec = spec(placement, "node-noimage", dir.path());
    spec.image = "stratus/not-built-here:latest".into();

    let err = driver.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImageNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "image stratus/not-built-here:latest not found on this node: build it with \
         scripts/build-images.sh"
    );
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn cpu_and_memory_limits_are_applied() {
    if skip() {
        return;
    }
    let placement = "rt-docker-limits";
    let _cleanup = Cleanup::new(&[placement]);
    let driver = driver("127.0.1.5", "node-limits").await;
    let dir = bundle("limited\n");
    let mut spec = spec(placement, "node-limits", dir.path());
    spec.cpu_millis = 250;
    spec.memory_bytes = 48 << 20;

    let running = driver.start(&spec).await.unwrap();
    let name = driver.id_for(placement);
    assert_eq!(
        docker_inspect(&name, "{{.HostConfig.NanoCpus}}").as_deref(),
        Some("250000000")
    );
    assert_eq!(
        docker_inspect(&name, "{{.HostConfig.Memory}}").as_deref(),
        Some((48u64 << 20).to_string().as_str())
    );
    assert_eq!(
        docker_inspect(&name, "{{.HostConfig.Init}}").as_deref(),
        Some("true")
    );
    driver
        .stop(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
}

/// `stratus ps`'s figures: a container spinning a core under a quarter-core limit reads
/// about a quarter core, and its memory under its limit.
#[tokio::test]
async fn usage_reads_what_a_container_uses_under_its_limits() {
    if skip() {
        return;
    }
    let placement = "rt-docker-usage";
    let _cleanup = Cleanup::new(&[placement]);
    let driver = driver("127.0.1.7", "node-usage").await;
    let dir = bundle("busy\n");
    let mut spec = spec(placement, "node-usage", dir.path());
    spec.cpu_millis = 250;
    spec.memory_bytes = 48 << 20;
    spec.cmd = "while :; do :; done & exec busybox httpd -f -p $PORT -h /app".into();
    let running = driver.start(&spec).await.unwrap();
    // The first second of a container is its start: read once it has settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = driver.usage(&running.id).await.unwrap();
    let cpu = usage.cpu_millis.unwrap();
    assert!((150..=300).contains(&cpu), "{usage:?}");
    assert!(usage.memory_bytes.unwrap() > 0, "{usage:?}");
    assert_eq!(usage.memory_limit_bytes, Some(48 << 20));
    driver
        .stop(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(
        driver.usage(&running.id).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

/// With a network the container is not published; its address is its own IP on that
/// network. No traffic is sent to it: the network's addresses are not loopback.
#[tokio::test]
async fn on_a_network_the_address_is_the_container_ip() {
    if skip() {
        return;
    }
    let placement = "rt-docker-network";
    let network = "stratus-rt-test";
    let _cleanup = Cleanup::new(&[placement]);
    let _ = Command::new("docker")
        .args(["network", "create", "--internal", network])
        .output()
        .unwrap();
    struct RemoveNetwork(&'static str);
    impl Drop for RemoveNetwork {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args(["network", "rm", self.0])
                .output();
        }
    }
    let _network_guard = RemoveNetwork(network);

    ensure_image();
    let options = DockerOptions {
        network: Some(network.to_string()),
        node_id: Some("node-net".into()),
        ..DockerOptions::new(ip("127.0.1.6"))
    };
    let driver = DockerDriver::connect(options).await.unwrap();
    let dir = bundle("on a network\n");
    let running = driver
        .start(&spec(placement, "node-net", dir.path()))
        .await
        .unwrap();
    let name = driver.id_for(placement);
    let container_ip = docker_inspect(
        &name,
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    )
    .unwrap();
    assert_eq!(running.addr, SocketAddr::new(ip(&container_ip), 8080));
    let bindings = docker_inspect(&name, "{{json .HostConfig.PortBindings}}").unwrap();
    assert!(
        !bindings.contains("HostPort"),
        "nothing published: {bindings}"
    );
    assert_eq!(driver.list().await.unwrap(), std::slice::from_ref(&running));
    driver
        .stop(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
}
