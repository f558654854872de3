//! gVisor tenants against a real daemon: a sandbox dockerd (`node::sandbox_dockerd`) with
//! gVisor's `runsc` (ptrace platform, no KVM needed) among its runtimes, the Docker driver
//! on it, and a replica of a gVisor tenant checked from inside to really run on gVisor's
//! kernel, not the host's.
//!
//! Needs root, Docker and `runsc` (`scripts/install-deps.sh` installs Debian's); the image
//! is copied from the host's daemon, which builds it with `scripts/build-images.sh` when
//! missing. Published on 127.0.213.1.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;

use node::sandbox_dockerd::{SandboxDockerd, SandboxRuntime};
use node::workload::health::probe;
use node::workload::runtime::{ContainerSpec, DockerDriver, DockerOptions, RuntimeDriver};
use proto::tenancy::Isolation;

const IMAGE: &str = "stratus/busybox:latest";

fn sandbox(name: &str) -> SandboxDockerd {
    node::testsuite::ensure_test_image().unwrap();
    let runsc = SandboxRuntime::gvisor_ptrace().unwrap();
    let sandbox = SandboxDockerd::start_with(name, &[runsc]).unwrap();
    sandbox.copy_image_from_system(IMAGE).unwrap();
    sandbox
}

#[tokio::test]
async fn a_daemon_with_runsc_says_so_and_runs_containers_on_gvisor() {
    let sandbox = sandbox("gvisor-runtime");
    let options = DockerOptions {
        docker_host: Some(sandbox.host()),
        node_id: Some("node-gvisor".into()),
        ..DockerOptions::new("127.0.213.1".parse().unwrap())
    };
    let driver = DockerDriver::connect(options).await.unwrap();
    assert!(driver.has_gvisor(), "runsc is among the sandbox's runtimes");

    // What the driver asks for, by hand: the runsc runtime runs gVisor's own kernel.
    let out = sandbox.docker(&[
        "run",
        "--rm",
        "--runtime",
        "runsc",
        IMAGE,
        "sh",
        "-c",
        "dmesg; cat /proc/version",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gVisor"), "{text}");

    let host = Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output();
    let host_driver = DockerDriver::connect(DockerOptions::new("127.0.213.1".parse().unwrap()))
        .await
        .unwrap();
    let host_runtimes = String::from_utf8_lossy(&host.unwrap().stdout).to_string();
    assert_eq!(
        host_driver.has_gvisor(),
        host_runtimes.contains("runsc"),
        "{host_runtimes}"
    );
}

fn gvisor_spec(placement: &str, bundle_dir: &std::path::Path) -> ContainerSpec {
    ContainerSpec {
        placement_id: placement.to_string(),
        app: "sandboxed".into(),
        release: 1,
        replica: 0,
        node_id: "node-gvisor".into(),
        bundle_dir: bundle_dir.to_path_buf(),
        image: IMAGE.into(),
        cmd: "exec busybox httpd -f -p $PORT -h /app".into(),
        built: false,
        read_only_root: false,
        user: None,
        port: 8080,
        env: Default::default(),
        cpu_millis: 500,
        memory_bytes: 128 << 20,
        tenant: Some("gvisortest".into()),
        isolation: Isolation::Gvisor,
    }
}

/// Deletes the driver's nftables table when dropped (the sandbox daemon's table is of no
/// use once the sandbox is gone).
struct DropTable(String);

impl Drop for DropTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .output();
    }
}

#[tokio::test]
async fn a_gvisor_tenants_replica_runs_on_gvisor_and_a_node_without_runsc_refuses_it() {
    let sandbox = sandbox("gvisor-replica");
    let options = DockerOptions {
        docker_host: Some(sandbox.host()),
        node_id: Some("node-gvisor".into()),
        ..DockerOptions::new("127.0.213.2".parse().unwrap())
    };
    let driver = DockerDriver::connect(options).await.unwrap();
    let _table = DropTable(driver.isolation_table());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "under gvisor\n").unwrap();
    let running = driver
        .start(&gvisor_spec("gvisor-replica", dir.path()))
        .await
        .unwrap();

    // From inside: gVisor's kernel, not the host's.
    let out = sandbox.docker(&["exec", &running.id, "sh", "-c", "dmesg; cat /proc/version"]);
    let inside = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(inside.contains("Starting gVisor"), "{inside}");
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    assert!(!inside.contains(host_version.trim()), "{inside}");
    let runtime = sandbox.docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.Runtime}}",
        &running.id,
    ]);
    assert_eq!(String::from_utf8_lossy(&runtime.stdout).trim(), "runsc");

    // The host (where agents and ingresses connect from) reaches it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let result = probe(running.addr, Some("/"), std::time::Duration::from_secs(2)).await;
        if result.is_healthy() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never answered: {result}",
            running.addr
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    driver
        .stop(&running.id, std::time::Duration::from_secs(1))
        .await
        .unwrap();

    // The host's daemon has no runsc: the same replica is refused there, never run on runc.
    let host_driver = DockerDriver::connect(DockerOptions::new("127.0.213.3".parse().unwrap()))
        .await
        .unwrap();
    if !host_driver.has_gvisor() {
        let refused = host_driver
            .start(&gvisor_spec("gvisor-refused", dir.path()))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("runsc"), "{refused}");
        let listed = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                "label=stratus.placement=gvisor-refused",
            ])
            .output()
            .unwrap();
        assert!(listed.stdout.is_empty(), "a container was made anyway");
    }
}
