//! The process driver with real process groups: a Python HTTP server serving a temporary
//! bundle, shell loops that spawn children, and apps that ignore SIGTERM. Each test uses
//! its own 127.0.2.x address; dropping the driver (also when a test panics) kills every
//! group it started.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use node::workload::health::probe;
use node::workload::runtime::{
    ContainerSpec, ProcessDriver, ProcessOptions, RunningContainer, RuntimeDriver, RuntimeError,
};
use proto::ContainerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn driver(advertise_ip: &str, dir: &Path) -> ProcessDriver {
    ProcessDriver::new(ProcessOptions::new(
        advertise_ip.parse().unwrap(),
        dir.join("logs"),
    ))
    .unwrap()
}

fn spec(placement: &str, bundle_dir: &Path, cmd: &str) -> ContainerSpec {
    ContainerSpec {
        placement_id: placement.to_string(),
        app: "web".into(),
        release: 3,
        replica: 1,
        node_id: "node-process".into(),
        bundle_dir: bundle_dir.to_path_buf(),
        image: String::new(),
        cmd: cmd.to_string(),
        built: false,
        read_only_root: false,
        user: None,
        port: 8080,
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        cpu_millis: 0,
        memory_bytes: 0,
        tenant: None,
        isolation: Default::default(),
    }
}

/// A temporary folder with a `bundle/index.html`; logs go beside it.
fn workdir(body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("index.html"), body).unwrap();
    (dir, bundle)
}

/// Polls `check` every 50 ms until it holds, or fails after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn healthy(addr: SocketAddr) -> bool {
    probe(addr, Some("/"), Duration::from_secs(1))
        .await
        .is_healthy()
}

async fn http_get(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Whether `pid` runs (a zombie does not: nobody may reap it, but it runs nothing).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

/// Reads a pid the app wrote to `file` in its bundle.
async fn read_pid(file: &Path) -> i32 {
    wait_for(
        "the app to write its pid",
        Duration::from_secs(5),
        || async { std::fs::read_to_string(file).is_ok_and(|text| text.ends_with('\n')) },
    )
    .await;
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn state_of(driver: &ProcessDriver, placement: &str) -> Option<RunningContainer> {
    driver
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.placement_id == placement)
}

#[tokio::test]
async fn serves_http_on_the_allocated_port_and_stops() {
    let (dir, bundle) = workdir("hello from a stratus process\n");
    let driver = driver("127.0.2.1", dir.path());
    let spec = spec(
        "rt-proc-serve",
        &bundle,
        "exec python3 -m http.server $PORT --bind 127.0.2.1",
    );

    let running = driver.start(&spec).await.unwrap();
    assert_eq!(
        running.addr.ip(),
        "127.0.2.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert!((20000..=29999).contains(&running.addr.port()));
    assert_eq!(running.state, ContainerState::Running);
    wait_for("the server to answer", Duration::from_secs(15), || {
        healthy(running.addr)
    })
    .await;
    let response = http_get(running.addr).await;
    assert!(
        response.contains("hello from a stratus process"),
        "{response}"
    );
    assert_eq!(driver.start(&spec).await.unwrap(), running, "idempotent");
    assert_eq!(driver.list().await.unwrap(), std::slice::from_ref(&running));

    // http.server logs each request to stderr, which goes to the placement's log file.
    wait_for(
        "the request in the logs",
        Duration::from_secs(5),
        || async {
            let logs = driver.logs(&running.id, 10).await.unwrap();
            logs.iter()
                .any(|line| line.contains("\"GET / HTTP/1.0\" 200"))
        },
    )
    .await;

    driver
        .stop(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(driver.list().await.unwrap().is_empty());
    assert!(
        !probe(running.addr, None, Duration::from_secs(1))
            .await
            .is_healthy()
    );
    // The log file outlives the process; stopping again or an unknown id is fine.
    assert!(!driver.logs(&running.id, 10).await.unwrap().is_empty());
    driver
        .stop(&running.id, Duration::from_secs(1))
        .await
        .unwrap();
    driver
        .stop("stratus-unknown", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        driver.logs("../../etc/passwd", 1).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn stop_terminates_the_whole_process_group() {
    let (dir, bundle) = workdir("");
    let driver = driver("127.0.2.2", dir.path());
    // The shell waits on a child it spawned: SIGTERM to the shell alone would orphan it.
    let spec = spec(
        "rt-proc-group",
        &bundle,
        "sleep 300 & echo $! > child.pid; wait",
    );
    let running = driver.start(&spec).await.unwrap();
    let child = read_pid(&bundle.join("child.pid")).await;
    assert!(alive(child));

    let started = Instant::now();
    driver
        .stop(&running.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!alive(child), "the child in the group got SIGTERM too");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM was enough, no need to wait for the grace period: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stop_kills_what_ignores_sigterm_after_the_grace_period() {
    let (dir, bundle) = workdir("");
    let driver = driver("127.0.2.3", dir.path());
    // The background child ignores SIGTERM (an ignored signal survives exec).
    let spec = spec(
        "rt-proc-stubborn",
        &bundle,
        "trap '' TERM; sleep 300 & echo $! > child.pid; wait",
    );
    let running = driver.start(&spec).await.unwrap();
    let child = read_pid(&bundle.join("child.pid")).await;

    let grace = Duration::from_millis(500);
    let started = Instant::now();
    driver.stop(&running.id, grace).await.unwrap();
    let took = started.elapsed();
    assert!(!alive(child), "SIGKILL after the grace period");
    assert!(took >= grace, "waited the grace period first: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn reports_an_exit_and_restarts_on_the_next_start() {
    let (dir, bundle) = workdir("");
    let driver = driver("127.0.2.4", dir.path());
    let spec = spec(
        "rt-proc-exit",
        &bundle,
        "echo \"greeting=$GREETING port=$PORT pkg=${CARGO_PKG_NAME:-unset}\"; exit 3",
    );
    let first = driver.start(&spec).await.unwrap();
    wait_for("the process to exit", Duration::from_secs(5), || async {
        state_of(&driver, "rt-proc-exit")
            .await
            .is_some_and(|c| c.state == ContainerState::Exited)
    })
    .await;
    let exited = state_of(&driver, "rt-proc-exit").await.unwrap();
    assert_eq!(exited.exit_code, Some(3));

    // The spec's environment and PORT reach the app; the agent's own variables do not
    // (cargo sets CARGO_PKG_NAME for this test process).
    let logs = driver.logs(&first.id, 5).await.unwrap();
    assert_eq!(
        logs,
        [format!(
            "greeting=hello port={} pkg=unset",
            first.addr.port()
        )]
    );

    let second = driver.start(&spec).await.unwrap();
    assert_eq!(second.state, ContainerState::Running, "started afresh");
    assert_eq!(second.exit_code, None);
    assert_ne!(second.addr.port(), first.addr.port(), "round-robin ports");
    driver
        .stop(&second.id, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn dropping_the_driver_kills_its_groups() {
    let (dir, bundle) = workdir("");
    let driver = driver("127.0.2.5", dir.path());
    let spec = spec("rt-proc-drop", &bundle, "echo $$ > shell.pid; sleep 300");
    driver.start(&spec).await.unwrap();
    let shell = read_pid(&bundle.join("shell.pid")).await;
    assert!(alive(shell));
    drop(driver);
    wait_for("the group to die", Duration::from_secs(5), || async {
        !alive(shell)
    })
    .await;
}
