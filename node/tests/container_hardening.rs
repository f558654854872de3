//! The hardened defaults, checked from inside real containers the Docker driver started:
//! `no-new-privileges`, the capability set, the pids limit (a fork bomb stops at it), CPU
//! and memory limits always set, no Docker socket, and the `[security]` options
//! (read-only root with a writable `/tmp`, a non-root user).
//!
//! Needs Docker and `stratus/busybox:latest` (built by `scripts/build-images.sh` when
//! missing). Published on loopback only, 127.0.212.x. Every test removes its containers.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use node::workload::runtime::hardening::{CAPABILITIES, REPLICA_PIDS_LIMIT};
use node::workload::runtime::{ContainerSpec, DockerDriver, DockerOptions, RuntimeDriver};

const IMAGE: &str = "stratus/busybox:latest";

/// Removes every container of these placements when dropped.
struct Cleanup(Vec<String>);

impl Cleanup {
    fn new(placements: &[&str]) -> Cleanup {
        let cleanup = Cleanup(placements.iter().map(|p| p.to_string()).collect());
        cleanup.remove_all();
        cleanup
    }

    fn remove_all(&self) {
        for placement in &self.0 {
            let filter = format!("label=stratus.placement={placement}");
            let listed = Command::new("docker")
                .args(["ps", "-aq", "--filter", &filter])
                .output()
                .unwrap();
            let ids = String::from_utf8_lossy(&listed.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
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

async fn driver(advertise_ip: &str, node_id: &str) -> DockerDriver {
    node::testsuite::ensure_test_image().unwrap();
    let ip: IpAddr = advertise_ip.parse().unwrap();
    let options = DockerOptions {
        node_id: Some(node_id.to_string()),
        ..DockerOptions::new(ip)
    };
    DockerDriver::connect(options).await.unwrap()
}

fn spec(placement: &str, node_id: &str, bundle_dir: &Path) -> ContainerSpec {
    ContainerSpec {
        placement_id: placement.to_string(),
        app: "hardened".into(),
        release: 1,
        replica: 0,
        node_id: node_id.to_string(),
        bundle_dir: bundle_dir.to_path_buf(),
        image: IMAGE.into(),
        cmd: "exec busybox httpd -f -p $PORT -h /app".into(),
        built: false,
        read_only_root: false,
        user: None,
        port: 8080,
        env: BTreeMap::new(),
        cpu_millis: 500,
        // Room for the fork bomb's processes: each costs kernel memory, which the memory
        // cgroup counts, and the bomb must meet the pids limit before the memory limit.
        memory_bytes: 256 << 20,
        tenant: None,
        isolation: Default::default(),
    }
}

/// `docker exec` in the container: its exit status and its stdout and stderr together.
fn exec(container: &str, script: &str) -> (bool, String) {
    let output = Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn inspect(container: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .unwrap();
    assert!(output.status.success(), "docker inspect {container}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The `CapEff` bit mask of [`CAPABILITIES`], as `/proc/self/status` shows it.
fn expected_cap_eff() -> String {
    let bit = |cap: &str| match cap {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "FOWNER" => 3,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        other => panic!("no bit known for {other}"),
    };
    let mask: u64 = CAPABILITIES.iter().map(|cap| 1u64 << bit(cap)).sum();
    format!("{mask:016x}")
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_replica_has_no_new_privileges_few_capabilities_limits_and_no_docker_socket() {
    let placement = "hardening-defaults";
    let _cleanup = Cleanup::new(&[placement]);
    let node_id = "node-hardening-defaults";
    let driver = driver("127.0.212.1", node_id).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hardened\n").unwrap();
    let running = driver
        .start(&spec(placement, node_id, dir.path()))
        .await
        .unwrap();

    let (ok, status) = exec(&running.id, "cat /proc/self/status");
    assert!(ok, "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "CapEff"), expected_cap_eff());
    assert_eq!(
        status_field(&status, "CapBnd"),
        expected_cap_eff(),
        "nothing more can be gained"
    );
    // NET_RAW is gone: no raw socket, so no spoofing toward the neighbours.
    let (ok, ping) = exec(&running.id, "ping -c 1 -W 1 127.0.0.1");
    assert!(!ok, "ping needs a raw socket: {ping}");

    // Limits, as Docker holds them.
    assert_eq!(
        inspect(&running.id, "{{.HostConfig.NanoCpus}}"),
        "500000000"
    );
    assert_eq!(inspect(&running.id, "{{.HostConfig.Memory}}"), "268435456");
    assert_eq!(
        inspect(&running.id, "{{.HostConfig.PidsLimit}}"),
        REPLICA_PIDS_LIMIT.to_string()
    );
    assert_eq!(inspect(&running.id, "{{.HostConfig.Privileged}}"), "false");

    // No Docker socket: not among the mounts, not in the filesystem.
    let mounts = inspect(&running.id, "{{range .Mounts}}{{.Source}} {{end}}");
    assert!(!mounts.contains("docker.sock"), "{mounts}");
    assert!(!mounts.contains("/var/run/docker"), "{mounts}");
    let (found, _) = exec(
        &running.id,
        "test -e /var/run/docker.sock || test -e /run/docker.sock",
    );
    assert!(!found, "a docker socket inside the container");

    // A fork bomb stops at the pids limit: far fewer than the 2000 asked start.
    let (_, bomb) = exec(
        &running.id,
        "n=0; while [ $n -lt 2000 ]; do sleep 600 & n=$((n+1)); done; echo forked all",
    );
    assert!(!bomb.contains("forked all"), "{bomb}");
    let current = Command::new("docker")
        .args(["stats", "--no-stream", "--format", "{{.PIDs}}", &running.id])
        .output()
        .unwrap();
    let pids: i64 = String::from_utf8_lossy(&current.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        pids > REPLICA_PIDS_LIMIT / 2 && pids <= REPLICA_PIDS_LIMIT,
        "{pids} processes: the bomb ran into the limit and no further"
    );

    driver
        .stop(&running.id, std::time::Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_security_options_give_a_read_only_root_and_a_non_root_user() {
    let placement = "hardening-security";
    let _cleanup = Cleanup::new(&[placement]);
    let node_id = "node-hardening-security";
    let driver = driver("127.0.212.2", node_id).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "read-only\n").unwrap();
    let mut secured = spec(placement, node_id, dir.path());
    secured.read_only_root = true;
    secured.user = Some("1000:1000".into());
    secured.cpu_millis = 0;
    secured.memory_bytes = 0;
    let running = driver.start(&secured).await.unwrap();

    let (ok, id) = exec(&running.id, "id -u; id -g");
    assert!(ok, "{id}");
    assert_eq!(id.split_whitespace().collect::<Vec<_>>(), ["1000", "1000"]);
    let (ok, status) = exec(&running.id, "cat /proc/self/status");
    assert!(ok, "{status}");
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");

    let (wrote_root, refused) = exec(&running.id, "touch /stratus-was-here");
    assert!(!wrote_root, "the root filesystem took a write");
    assert!(refused.contains("Read-only file system"), "{refused}");
    let (wrote_tmp, tmp) = exec(&running.id, "echo ok > /tmp/x && cat /tmp/x");
    assert!(wrote_tmp, "{tmp}");
    let (wrote_app, _) = exec(&running.id, "touch /app/x");
    assert!(!wrote_app, "the bundle is read-only");

    // No limit asked is the default limit.
    assert_eq!(
        inspect(&running.id, "{{.HostConfig.NanoCpus}}"),
        "250000000"
    );
    assert_eq!(inspect(&running.id, "{{.HostConfig.Memory}}"), "134217728");

    driver
        .stop(&running.id, std::time::Duration::from_secs(1))
        .await
        .unwrap();
}
